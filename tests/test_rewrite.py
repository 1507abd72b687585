"""Graph rewrites (spiread_cli/rewrite.py): each rule fires where it should,
not where it must not, and gives the unfused path's value and gradients, in
reverse and forward mode, also after the leaves change and the tape is replayed
(as `train` does)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import lit
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.diagnostics import Diagnostics, Source
from spiread_cli.forward import jacobian_forward
from spiread_cli.rewrite import fuse, one_hot_labels

SEEDS = st.integers(0, 2**32 - 1)
FEW = settings(max_examples=20, deadline=None)


def compiled(text: str, wrt: list[str], hoist: bool = True):
    run = Program.parse(Source("rewrite.ad", text)).run()
    return fuse(run.tape, run.output, [run.bindings[n] for n in wrt], hoist)


def unfused(text: str, wrt: list[str]) -> tuple[np.ndarray, dict]:
    result = run_gradients(Program.parse(Source("plain.ad", text)).run(), wrt)
    return result.value, result.gradients


def ops_on(fused) -> list[str]:
    return [n.op.name for n in fused.tape.nodes if n.op is not None]


def assert_same(text: str, wrt: list[str], hoist: bool = True):
    """The rewritten tape's output and gradients (both modes) equal the unfused ones."""
    want_value, want = unfused(text, wrt)
    fused = compiled(text, wrt, hoist)
    tape, output, ids = fused.tape, fused.output, fused.wrt
    np.testing.assert_allclose(tape.nodes[output].value, want_value, rtol=1e-10, atol=1e-12)
    reverse = tape.backward(output, ids, Diagnostics())
    forward = jacobian_forward(tape, output, ids, Diagnostics())
    for name, i in zip(wrt, ids):
        np.testing.assert_allclose(reverse[i], want[name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(forward[i], want[name], rtol=1e-9, atol=1e-12)
    return fused


def bigram_text(xs, ys, w, k) -> str:
    # The examples/bigram/bigram.ad model, data inline.
    return (f"xs = {lit(xs)}\nys = {lit(ys)}\nW = {lit(w)}\n"
            f"probs = (onehot(xs, {k}) @@ W).exp.normaliseRowsL1\n"
            "picked = probs.select(arange(rows(xs)), ys).mapRowsToScalar(ReductionOps.Sum)\n"
            "loss = picked.log.mean * -1.0\n")


def bigram_data(seed: int, n: int, k: int):
    rng = np.random.default_rng(seed)
    return rng.integers(0, k, n), rng.integers(0, k, n), rng.standard_normal((k, k)) * 2


# ------------------------------------------------------------- the rules


@FEW
@given(SEEDS, st.integers(1, 6), st.integers(2, 5))
def test_onehot_matmul_is_a_row_gather_with_scatter_add_backward(seed, n, k):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)  # repeats: the scatter must add them up
    text = (f"W = {lit(rng.standard_normal((k, 3)))}\nC = {lit(rng.standard_normal((n, 3)))}\n"
            f"loss = ((onehot({lit(labels)}, {k}) @@ W) * C).sum\n")
    run = assert_same(text, ["W"])
    assert "gatherRows" in ops_on(run) and "matmul" not in ops_on(run)


def test_a_matrix_that_is_not_one_hot_stays_a_matmul():
    text = "W = [[1, 2], [3, 4]]\nloss = ([[1, 0], [1, 1]] @@ W).sum\n"
    assert "matmul" in ops_on(assert_same(text, ["W"]))
    assert one_hot_labels(np.array([[0.0, 2.0]])) is None
    assert one_hot_labels(np.array([[1.0, 1.0]])) is None
    np.testing.assert_array_equal(one_hot_labels(np.array([[0.0, 1.0], [1.0, 0.0]])), [1, 0])


def test_a_one_hot_we_differentiate_by_stays_a_matmul():
    text = "A = onehot([0, 1, 1], 2)\nW = [[1, 2], [3, 4]]\nloss = (A @@ W).exp.sum\n"
    assert "matmul" in ops_on(assert_same(text, ["A", "W"]))


@FEW
@given(SEEDS)
def test_exp_then_normalise_l1_is_softmax(seed):
    rng = np.random.default_rng(seed)
    text = (f"x = {lit(rng.standard_normal((3, 4)) * 3)}\nC = {lit(rng.standard_normal((3, 4)))}\n"
            "loss = (x.exp.normaliseRowsL1 * C).sum\n")
    run = assert_same(text, ["x"])
    assert "softmaxRows" in ops_on(run) and "exp" not in ops_on(run)


def test_the_fused_softmax_is_stable_where_the_unfused_overflows():
    text = "x = [[1000, 1001], [0, 1]]\nloss = (x.exp.normaliseRowsL1 * [[1, 2], [3, 4]]).sum\n"
    fused = compiled(text, ["x"])
    e = np.exp([-1.0, 0.0])
    expected = (e / e.sum()) @ [1, 2] + (e / e.sum()) @ [3, 4]
    assert fused.tape.nodes[fused.output].value == pytest.approx(expected)
    assert np.all(np.isfinite(fused.tape.backward(fused.output, fused.wrt)[fused.wrt[0]]))


@FEW
@given(SEEDS, st.integers(1, 5))
def test_selection_then_row_sum_is_a_gather(seed, m):
    rng = np.random.default_rng(seed)
    rows, cols = rng.permutation(m), rng.integers(0, 3, m)
    text = (f"x = {lit(rng.standard_normal((m, 3)))}\nc = {lit(rng.standard_normal(m))}\n"
            f"loss = (x.select({lit(rows)}, {lit(cols)}).mapRowsToScalar(sum) * c).sum\n")
    run = assert_same(text, ["x"])
    assert "arrange" in ops_on(run) and "select" not in ops_on(run)


def test_a_selection_that_misses_a_row_stays_a_selection():
    # Row 2 picks nothing (the seed's case); a repeated row would pick twice.
    for pairs in ("(0, 0), (1, 1)", "(0, 0), (0, 1), (1, 1)"):
        text = f"x = [[1, 2], [3, 4], [5, 6]]\nloss = (x[{pairs}].mapRowsToScalar(sum) * [1, 2, 3]).sum\n"
        assert "select" in ops_on(assert_same(text, ["x"]))


@FEW
@given(SEEDS, st.integers(3, 12), st.integers(2, 4))
def test_the_bigram_model_fuses_to_one_log_likelihood_on_the_weights(seed, n, k):
    xs, ys, w = bigram_data(seed, n, k)
    text = bigram_text(xs, ys, w, k)
    for hoist in (True, False):
        run = assert_same(text, ["W"], hoist)
        assert "meanLogSoftmaxPick" in ops_on(run)
    # Hoisted: the softmax runs on W itself, before (instead of) the gather.
    assert ops_on(compiled(text, ["W"])) == ["meanLogSoftmaxPick", "mul"] or n <= k


def test_a_gather_with_fewer_rows_than_its_source_is_not_hoisted():
    text = "W = [[1, 2], [3, 4], [5, 6]]\nloss = (onehot([2], 3) @@ W).tanh.sum\n"
    assert ops_on(assert_same(text, ["W"])) == ["gatherRows", "tanh", "sum"]


def test_row_wise_ops_are_hoisted_above_a_bigger_gather():
    text = "W = [[1, 2], [3, 4]]\nloss = ((onehot([0, 1, 1, 0, 1], 2) @@ W).tanh.sin * [1, 2]).sum\n"
    assert ops_on(assert_same(text, ["W"]))[:3] == ["tanh", "sin", "gatherRows"]


@FEW
@given(SEEDS)
def test_log_softmax_then_pick_then_mean_is_the_log_likelihood(seed):
    rng = np.random.default_rng(seed)
    text = (f"X = {lit(rng.standard_normal((5, 3)))}\nW = {lit(rng.standard_normal((3, 4)))}\n"
            f"loss = -(X @@ W).logSoftmaxRows.arrange({lit(np.arange(5))}, {lit(rng.integers(0, 4, 5))}).mean\n")
    run = assert_same(text, ["W", "X"])
    assert "meanLogSoftmaxPick" in ops_on(run)


@pytest.mark.parametrize("rows", ["[0, 1, 2, 3, 4]", "[0, 0, 1, 4, 4]"])
def test_the_log_likelihoods_recorded_derivative_adds_at_its_picks_by_position(rows):
    """Recorded (a Hessian's or an export's gradient), meanLogSoftmaxPick's
    derivative adds count / n at its picks by their positions (`addPairs`): no
    constant it makes is an array of the logits' shape (the bigram's would
    be 49 MB), and it gives the gradient the numeric sweep gives."""
    rng = np.random.default_rng(3)
    text = (f"X = {lit(rng.standard_normal((5, 3)))}\nW = {lit(rng.standard_normal((3, 4)))}\n"
            f"loss = -(X @@ W).logSoftmaxRows.arrange({rows}, {lit(rng.integers(0, 4, 5))}).mean\n")
    fused = compiled(text, ["W"])
    tape, (w,) = fused.tape, fused.wrt
    recorded = len(tape.nodes)
    grad = tape.backward_graph(fused.output, [w])[w]
    made = tape.nodes[recorded:]
    assert "addPairs" in [n.op.name for n in made if n.op is not None]
    assert not [n for n in made if n.op is None and n.value.shape == (5, 4) and any(n.value.strides)]
    np.testing.assert_allclose(tape.nodes[grad].value, tape.backward(fused.output, [w], Diagnostics())[w],
                               rtol=1e-12, atol=1e-15)


def test_an_interior_node_asked_for_blocks_the_fusion():
    xs, ys, w = bigram_data(0, 6, 3)
    text = bigram_text(xs, ys, w, 3)
    run = assert_same(text, ["W", "probs"])
    assert {"softmaxRows", "log", "mean"} <= set(ops_on(run)) and "meanLogSoftmaxPick" not in ops_on(run)


# ------------------------------------------------------------- replaying


def test_a_replayed_rewritten_tape_follows_new_weights_like_a_fresh_run():
    xs, ys, w = bigram_data(1, 40, 5)
    text = bigram_text(xs, ys, w, 5)
    fused = compiled(text, ["W"])
    tape, output, (wid,) = fused.tape, fused.output, fused.wrt
    weights = tape.nodes[wid]
    for _ in range(3):  # SGD steps, as `train` takes them
        weights.set_value(weights.value - 2.0 * tape.backward(output, [wid])[wid])
        tape.replay(tape.nodes, Diagnostics())
    value, grads = unfused(bigram_text(xs, ys, weights.value, 5), ["W"])
    assert tape.nodes[output].value == pytest.approx(float(value), rel=1e-12)
    np.testing.assert_allclose(tape.backward(output, [wid])[wid], grads["W"], rtol=1e-9, atol=1e-13)


def test_the_new_tape_holds_only_what_the_output_and_gradients_need():
    fused = compiled("x = [1, 2]\nunused = x.exp\nloss = (x * x).sum\n", ["x"])
    assert ops_on(fused) == ["mul", "sum"] and [n.id for n in fused.tape.nodes] == [0, 1, 2]
    fused.tape.replay(fused.tape.nodes)
    assert fused.tape.nodes[fused.output].value == 5.0


def test_a_pass_leaves_the_callers_tape_as_written():
    xs, ys, w = bigram_data(2, 12, 4)
    run = Program.parse(Source("bigram.ad", bigram_text(xs, ys, w, 4))).run()
    before = [(n.op, n.inputs, n.value) for n in run.tape.nodes]
    want = run_gradients(run, ["probs"]).gradients["probs"]
    fused = fuse(run.tape, run.output, [run.bindings["W"]])
    fused.tape.nodes[fused.wrt[0]].set_value(np.zeros((4, 4)))
    fused.tape.replay(fused.tape.nodes)
    assert [(n.op, n.inputs, n.value) for n in run.tape.nodes] == before
    np.testing.assert_array_equal(run_gradients(run, ["probs"]).gradients["probs"], want)


def test_the_seed_program_is_unchanged_by_rewriting():
    run = Program.open("examples/seed.ad").run()
    fused = fuse(run.tape, run.output, [run.bindings["weights"]])
    np.testing.assert_allclose(fused.tape.backward(fused.output, fused.wrt)[fused.wrt[0]],
                               [[-0.291882, 0.291882], [-0.583765, 0.583765]], atol=1e-6)


def test_fuse_computes_only_what_the_rewrites_changed():
    """On a computed tape, `fuse` shares the values of the nodes the rewrites
    left as they were and computes the rewritten ones and what they feed;
    with compute=False it leaves those without values (a chunk's first share
    computes them)."""
    run = Program.parse(Source("f.ad", "x = [[1.0, 2.0], [3.0, 4.0]]\nW = [[0.5, -1.0], [2.0, 0.25]]\n"
                                        "h = (x @@ W).tanh\np = h.exp.normaliseRowsL1\nloss = (p * 2.0).sum\n")).run()
    w = run.bindings["W"]
    fused = fuse(run.tape, run.output, [w])
    by_label = {node.label: node for node in fused.tape.nodes}
    assert by_label["tanh"].value is run.node("h").value          # left as written: shared
    assert by_label["softmax (exp → normaliseRowsL1)"].value is not run.node("p").value
    np.testing.assert_allclose(by_label["softmax (exp → normaliseRowsL1)"].value, run.node("p").value)
    assert fused.tape.nodes[fused.output].value == pytest.approx(float(run.value))
    lazy = fuse(run.tape, run.output, [w], compute=False)
    assert [n.label for n in lazy.tape.nodes if n.op is not None and n.value is None] == \
        ["softmax (exp → normaliseRowsL1)", "*", "sum"]
