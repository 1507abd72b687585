"""`spiread grad --explain`: the sweep that made the gradients, step by step.

The seed example against a trace written out by hand (its numbers worked
through independently below), and on random programs the properties every
trace has: reverse topological order, adjoints that are the sum of what was
sent to them, and the gradients it ends with."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import run, spiread, strict_json
from programs import programs
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.diagnostics import Source
from spiread_cli.explain import SHOWN_ENTRIES, explain
from spiread_cli.ops import OPS
from spiread_cli.rules_printed import jvp_text, vjp_text

SEED = "examples/seed_native.ad"  # as typed in the repository, so the trace names it so

# The backward pass of examples/seed_native.ad,
# loss = -mean(log(rowSum(select(normaliseRowsL1(exp(data @@ weights)))))).
# By hand: mean sends -1/3 to each log; log divides by the picked
# probabilities p = (0.5622, 0.5622, 0.6682) (e^0.5 / (e^0.5 + e^0.25) and
# e^1.4 / (e^1.4 + e^0.7)), so -1/3 / p = (-0.5929, -0.5929, -0.4989);
# rowSum copies that along each row and select keeps the picked entries;
# normaliseRowsL1's row 0 is (g - rowSum(g · out)) / rowSum(x) =
# (-0.5929 + 1/3, 0 + 1/3) / (e^0.5 + e^0.25) = (-0.0885, 0.1137); exp
# multiplies by e^x; and the product sends dataᵀ @@ g to weights: the
# gradient docs/language.md and the README print.
SEED_TRACE = """\
The tape, in the order it was evaluated (v0, v1, … name its values):
    v0 = input                         data     examples/seed_native.ad:6:1
    v1 = input                         weights  examples/seed_native.ad:7:1
    v2 = v0 @@ v1                               examples/seed_native.ad:9:17
    v3 = exp(v2)                                examples/seed_native.ad:9:29
    v4 = normaliseRowsL1(v3)           probits  examples/seed_native.ad:9:33
    v5 = select(v4) (0,0) (1,1) (2,0)  picked   examples/seed_native.ad:10:17
    v6 = rowSum(v5)                             examples/seed_native.ad:11:16
    v7 = log(v6)                                examples/seed_native.ad:11:37
    v8 = mean(v7)                               examples/seed_native.ad:11:41
    v9 = -v8                           loss     examples/seed_native.ad:11:8

The backward pass of `loss` with respect to `weights`, in reverse topological order.
g is a node's adjoint, ∂loss/∂node. Each op sends g times its own derivative back to each
of its inputs (the chain rule); what reaches a node from several ops adds up.

v9 = -v8   (loss)
    g = 1.0   (the seed: ∂loss/∂loss = 1)
    → v8 (x) gets −g
        = -1.0
v8 = mean(v7)
    g from v9 = -1.0
    → v7 (x) gets broadcastTo(g / 3, 3)
        = (3) [-0.333333 -0.333333 -0.333333]
v7 = log(v6)
    g from v8 = (3) [-0.333333 -0.333333 -0.333333]
    → v6 (x) gets g / x
        = (3) [-0.592934 -0.592934 -0.498862]
v6 = rowSum(v5)
    g from v7 = (3) [-0.592934 -0.592934 -0.498862]
    → v5 (x) gets broadcastTo(reshape(g, 3×1), 3×2)
        = (3×2) [[-0.592934 -0.592934]
                 [-0.592934 -0.592934]
                 [-0.498862 -0.498862]]
v5 = select(v4) (0,0) (1,1) (2,0)   (picked)
    g from v6 = (3×2) [[-0.592934 -0.592934]
                       [-0.592934 -0.592934]
                       [-0.498862 -0.498862]]
    → v4 (x) gets select(g, rows, cols)
        = (3×2) [[-0.592934  0.      ]
                 [ 0.       -0.592934]
                 [-0.498862  0.      ]]
v4 = normaliseRowsL1(v3)   (probits)
    g from v5 = (3×2) [[-0.592934  0.      ]
                       [ 0.       -0.592934]
                       [-0.498862  0.      ]]
    → v3 (x) gets (g − sign(x) · rowTotal(g · out)) / rowTotal(|x|)
        = (3×2) [[-0.088518  0.113659]
                 [ 0.240616 -0.187392]
                 [-0.027275  0.054924]]
v3 = exp(v2)
    g from v4 = (3×2) [[-0.088518  0.113659]
                       [ 0.240616 -0.187392]
                       [-0.027275  0.054924]]
    → v2 (x) gets g · out
        = (3×2) [[-0.145941  0.145941]
                 [ 0.145941 -0.145941]
                 [-0.110604  0.110604]]
v2 = v0 @@ v1
    g from v3 = (3×2) [[-0.145941  0.145941]
                       [ 0.145941 -0.145941]
                       [-0.110604  0.110604]]
    → v1 (b) gets aᵀ @@ g
        = (2×2) [[-0.734299  0.734299]
                 [-1.136785  1.136785]]
v1 = input   (weights)
    g from v2 = (2×2) [[-0.734299  0.734299]
                       [-1.136785  1.136785]]
    so ∂loss/∂weights is this g
"""


def test_the_seed_examples_backward_pass_reads_as_written_by_hand():
    done = spiread("grad", SEED, "--explain")
    assert done.returncode == 0 and done.stderr == ""
    explained, results = done.stdout.split("\n\nloss  scalar")
    assert explained + "\n" == SEED_TRACE
    assert results.startswith("  0.5183549628810483\n")  # then the gradients, as without --explain
    assert "∂loss/∂weights  2×2  [[-0.734299  0.734299]" in results


def test_the_seed_examples_steps_in_json_hold_the_hand_worked_values():
    doc = strict_json(spiread("grad", SEED, "--explain", "--format", "json").stdout)
    steps = doc["explain"]
    assert [s["node"] for s in steps] == [f"v{i}" for i in range(9, 0, -1)]
    assert [s["op"] for s in steps] == ["neg", "mean", "log", "rowSum", "select", "normaliseRowsL1", "exp",
                                        "matmul", "input"]
    assert steps[0]["from"] == [] and steps[0]["adjoint"] == {"shape": [], "value": 1.0}
    e = np.exp
    p = np.array([e(0.5) / (e(0.5) + e(0.25)), e(-0.25) / (e(-0.5) + e(-0.25)), e(1.4) / (e(1.4) + e(0.7))])
    log_adjoint = np.array(steps[2]["adjoint"]["value"])
    np.testing.assert_allclose(log_adjoint, [-1 / 3] * 3, rtol=1e-15)
    np.testing.assert_allclose(steps[2]["sends"][0]["value"]["value"], -1 / 3 / p, rtol=1e-12)
    matmul = steps[7]
    assert matmul["formula"] == "v0 @@ v1" and [s["to"] for s in matmul["sends"]] == ["v1"]  # data needs none
    assert matmul["sends"][0]["rule"] == "aᵀ @@ g" and matmul["sends"][0]["operand"] == "b"
    np.testing.assert_allclose(steps[8]["adjoint"]["value"], doc["gradients"]["weights"]["value"], rtol=0)
    np.testing.assert_allclose(doc["gradients"]["weights"]["value"],
                               [[-0.734299, 0.734299], [-1.136785, 1.136785]], atol=5e-7)


def test_forward_mode_explains_a_products_tangent_as_the_product_written(tmp_path):
    """A product with a vector operand: `ȧ @@ b + a @@ ḃ` as for matrices,
    not the matrices its statement makes of the vector (`reshape(ȧ @@
    reshape(b, 1×2)ᵀ, 2)`)."""
    program = tmp_path / "products.ad"
    program.write_text("A = [[1.0, 2.0], [3.0, 4.0]]\nb = [0.5, -1.0]\ny = A @@ b\nz = b @@ A\n"
                       "loss = y.sum + z.sum + b @@ b\n")
    done = spiread("grad", str(program), "--mode", "forward", "--explain")
    assert done.returncode == 0, done.stderr
    products = [line.strip() for line in done.stdout.splitlines() if "@@ " in line and "tangent from" in line]
    assert products == ["tangent from v0, v1: ȧ @@ b + a @@ ḃ", "tangent from v1, v0: ȧ @@ b + a @@ ḃ",
                        "tangent from v1, v1: ȧ @@ b + a @@ ḃ"]


def test_forward_mode_explains_the_tangents_in_tape_order():
    done = spiread("grad", SEED, "--mode", "forward", "--explain")
    assert done.returncode == 0, done.stderr
    assert "The forward pass of tangents from `weights` to `loss`, in tape order." in done.stdout
    assert "v1 = input   (weights)\n    seed: one direction per entry\n        = (4 directions × 2×2) [[[1. 0.]" \
        in done.stdout
    assert "    tangent from v2: ẋ · out\n" in done.stdout
    assert ("v9 = -v8   (loss)\n    tangent from v8: −ẋ\n"
            "        = (4 directions × scalar) [-0.734299  0.734299 -1.136785  1.136785]\n") in done.stdout
    doc = strict_json(spiread("grad", SEED, "--mode", "forward", "--explain", "--format", "json").stdout)
    steps = doc["explain"]
    assert [s["node"] for s in steps] == [f"v{i}" for i in range(1, 10)]
    assert steps[0]["rule"] == "seed" and steps[0]["from"] == []
    np.testing.assert_allclose(steps[-1]["tangent"]["value"],
                               np.ravel(doc["gradients"]["weights"]["value"]), rtol=1e-14)


def test_contributions_that_meet_at_a_shared_input_add_up():
    text = "x = [1.0, 2.0]\ny = x * x + x.exp\nloss = y.sum\n"
    _, explanation = explain(run(text), ["x"])
    x_step = explanation.steps[-1]
    assert x_step.node == 0 and x_step.sources == [2, 1, 1]  # from exp (v2), then x * x (v1) to both operands
    np.testing.assert_allclose(x_step.value, 2 * np.array([1.0, 2.0]) + np.exp([1.0, 2.0]))
    shown = spiread("grad", "-", "--explain", stdin=text).stdout
    assert "v0 = input   (x)\n    g = v2 + v1 + v1, added up = (2) [ 4.718282 11.389056]\n" in shown


def test_large_values_are_shown_by_shape_and_norm():
    text = "w = randn(5, 6, seed=1)\nloss = (w * w).sum\n"
    doc = strict_json(spiread("grad", "-", "--explain", "--format", "json", stdin=text).stdout)
    w = run(text).node("w").value
    assert 5 * 6 > SHOWN_ENTRIES
    sent = doc["explain"][-1]["adjoint"]
    assert sent["shape"] == [5, 6] and set(sent) == {"shape", "norm"}
    np.testing.assert_allclose(sent["norm"], np.linalg.norm(2 * w), rtol=1e-12)
    shown = spiread("grad", "-", "--explain", stdin=text).stdout
    assert f"    g = v1 + v1, added up = (5×6, norm {np.linalg.norm(2 * w):.6g})\n" in shown


def test_every_op_in_the_table_has_its_rules_in_words():
    """Printed from each op's statement, at the shapes of test_ops.py's cases
    (which cover the table)."""
    from test_ops import CASES
    assert {c.op for c in CASES} == set(OPS)
    for case in CASES:
        op, shapes = OPS[case.op], [np.shape(x) for x in case.xs]
        out = np.shape(op.impl(*[np.asarray(x, dtype=float) for x in case.xs], **case.params))
        for i in range(len(shapes)):
            assert vjp_text(op, i, shapes, out, case.params).strip(), case.id
        assert jvp_text(op, list(range(len(shapes))), shapes, out, case.params).strip(), case.id


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_every_trace_is_the_sweep_that_made_the_gradients(mode, program):
    r = Program.parse(Source("gen.ad", program.source)).run()
    wrt = r.inputs_of_output()
    expected = run_gradients(Program.parse(Source("gen.ad", program.source)).run(), wrt, mode).gradients
    result, explanation = explain(r, wrt, mode)
    for name in wrt:
        np.testing.assert_array_equal(result.gradients[name], expected[name])  # explaining changes nothing
    order = [s.node for s in explanation.steps]
    if mode == "forward":
        assert order == sorted(order)
        return
    assert order == sorted(order, reverse=True) and len(set(order)) == len(order)
    sent: dict[int, list] = {}
    for step in explanation.steps:
        node = r.tape.nodes[step.node]
        if step.node == r.output:
            assert step.sources == []
            np.testing.assert_array_equal(step.value, np.ones_like(node.value))
        else:  # an adjoint is what reached it, added up
            assert sorted(step.sources) == sorted(i for i, _ in sent[step.node])
            np.testing.assert_allclose(step.value, sum(v for _, v in sent[step.node]), rtol=1e-12, atol=1e-12)
        for c in step.sends:
            assert c.to == node.inputs[c.operand]
            sent.setdefault(c.to, []).append((step.node, c.value))
    for name in wrt:
        ends = [s for s in explanation.steps if s.node == r.bindings[name]]
        if ends:
            np.testing.assert_array_equal(ends[0].value, result.gradients[name])


def test_an_explained_forward_sweep_steps_the_identity_as_the_plain_one_does():
    """The plain forward sweep pushes the identity as a Diagonal batch, which an
    einsum steps otherwise than a dense one (1 ulp apart here, found by the
    test above); the explained sweep must push the same batch, not a dense copy."""
    source = ('w1 = [[0.16, -0.8, 0.54], [1.96, 1.42, -1.06], [-1.9, -0.93, 0.06]]\n'
              'h1 = einsum("ik,kj->ij", ones(1, 3), w1).exp\n'
              'w2 = [[-3.49, -0.33, -1.87], [-1.1, -0.82, -0.47], [0.62, 1.56, -0.19]]\n'
              'loss = einsum("ij,ij->", w2, (h1 + w1))\n')
    expected = run_gradients(Program.parse(Source("e.ad", source)).run(), ["w1"], "forward").gradients["w1"]
    result, explanation = explain(Program.parse(Source("e.ad", source)).run(), ["w1"], "forward")
    np.testing.assert_array_equal(result.gradients["w1"], expected)


def test_docs_show_the_trace_the_command_prints():
    from conftest import REPO
    page = (REPO / "docs" / "explain.md").read_text("utf-8")
    assert SEED_TRACE in page


def test_a_value_the_output_does_not_depend_on_gets_nothing():
    text = "x = [1.0, 2.0]\nz = 3.0\nloss = x.sum\n"
    done = spiread("grad", "-", "--wrt", "z", "--wrt", "x", "--explain", stdin=text)
    assert done.returncode == 0 and "does not depend on `z`" in done.stderr
    assert "v1 = input   (z)\n    g = 0.0   (nothing reaches it: `loss` does not depend on it)\n" in done.stdout
    steps = strict_json(spiread("grad", "-", "--wrt", "z", "--explain", "--format", "json", stdin=text).stdout)["explain"]
    assert [(s["node"], s["from"], s["sends"]) for s in steps] == [("v1", [], [])]


def test_a_recorded_backward_pass_is_explained_by_the_rules_that_made_it():
    """Differentiating a gradient value: its nodes are named by their rule."""
    text = ("w = [1.0, 2.0]\nv = [1.0, 0.0]\nf = (w * w * w).sum\ng = f.backward(w)\n"
            "h = (g.w * v).sum\nh.backward(w)\n")
    done = spiread("grad", "-", "--explain", stdin=text)
    assert done.returncode == 0, done.stderr
    assert "v8 = add(v6, v7)   [Σ∂ w]       g.w  <stdin>:1:1\n" in done.stdout
    assert "v5 = scale(v0, v0)   [∂(*)/∂a]" in done.stdout
    # ∂/∂b of the outer product is the program's own w * w (v2): no product with the sum's ones (nor the
    # ones themselves: what the recorded gradient does not read is dropped, emitter.unread_dropped)
    assert "v6 = add(v2, v5)   [Σ∂ w]" in done.stdout
    result, explanation = explain(run(text))
    np.testing.assert_allclose(result.gradients["w"], [6.0, 0.0])  # H·v of Σw³: 6w·v
    assert explanation.steps[-1].node == 0 and len(explanation.steps[-1].sources) == 6
