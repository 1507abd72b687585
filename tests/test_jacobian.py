"""Jacobians of any output (`spiread jacobian`, `Program.jacobian`): every
op's statement applied to a batch of cotangents against the op's vjp one
cotangent at a time; Jacobians of random programs' vector and matrix
outputs against HIPS autograd's `jacobian` in both modes; the mode chosen
from the sizes; batches within the memory limit; the command line end to end
(text, JSON and its schema, --out, errors); `check` of a non-scalar output
checks its Jacobian against central differences."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spiread_cli
from conftest import Agreement, program_fd, run, spiread, strict_json
from programs import programs
from spiread_cli.check import check_gradients
from spiread_cli.diagnostics import SpireadError
from spiread_cli.forward import TANGENT_BUDGET_BYTES
from spiread_cli.jacobian import jacobian
from spiread_cli.ops import OPS
from spiread_cli.rules_forward import Diagonal, dense, diagonal_jvp, diagonal_vjp
from test_ops import CASES

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# y is a vector of 3 computed from x (2 entries) and W (3×2 entries).
VECTOR = """x = [0.5, -1.0]
W = [[1.0, 2.0], [0.3, -0.7], [-1.2, 0.4]]
y = (W @@ x).tanh * x.sum + (W @@ x.exp)
"""


# ------------------------------------------------ one statement, a batch of g


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_ops_statement_applied_to_a_batch_is_its_vjp_one_cotangent_at_a_time(case):
    """Reverse-mode Jacobians carry k cotangents at once through each op's
    statement (`Op.batched_vjp`); for every op of the table (test_ops'
    cases cover it) that equals the op's vjp (statement or fast path) of
    each cotangent alone."""
    op = OPS[case.op]
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    out = op.impl(*xs, **case.params)
    batch = np.random.default_rng(5).normal(size=(3,) + np.shape(out))
    for i in range(len(xs)):
        got = op.batched_vjp(i, batch, out, *xs, **case.params)
        expected = np.stack([np.broadcast_to(op.vjp(i, g, out, *xs, **case.params), np.shape(xs[i]))
                             for g in batch])
        assert np.shape(got) == expected.shape, f"operand {i}"
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13, err_msg=f"operand {i}")


# ------------------------------- batches each nonzero at one entry (Diagonal)


def _diagonal_batches(shape: tuple, rng) -> list[Diagonal]:
    """Batches over a value of `shape`: the identity's rows (every entry, as
    a dense Jacobian's seeds), a block of them shifted past the entries (rows
    with none, as a later block or another value's seeds), and random
    entries with repeats and random values (what a sum leaves)."""
    size = math.prod(shape)
    shifted = Diagonal.identity_rows(shape, size - 2, 4)
    entries = rng.integers(-1, size, 5) if size else np.full(5, -1)
    repeats = Diagonal(entries, np.where(entries >= 0, rng.normal(size=5), 0.0), (5,) + shape, False)
    return [Diagonal.identity_rows(shape, 0, size), shifted,
            Diagonal(shifted.entries, shifted.values * rng.normal(size=4), shifted.shape, True), repeats]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_ops_rule_for_a_diagonal_batch_is_its_rule_for_the_batch_as_an_array(case):
    """The sweeps step a batch each nonzero at one entry (`Diagonal`) by
    `diagonal_jvp` / `diagonal_vjp`: an elementwise op's own rule on the
    batch spread into one value, or the op's Diagonal rules. For every op,
    operand and kind of batch (with another operand's tangents an array
    beside it), that equals the op's jvp / batched vjp of the batch as an
    array; where there is no rule (None) the sweep uses exactly those."""
    op = OPS[case.op]
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    out = op.impl(*xs, **case.params)
    rng = np.random.default_rng(7)
    stepped = 0
    for i in range(len(xs)):
        for t in _diagonal_batches(xs[i].shape, rng):
            k = t.shape[0]
            for others in (False, True):
                ts = [t if j == i else rng.normal(size=(k,) + x.shape) if others else None for j, x in enumerate(xs)]
                got = diagonal_jvp(op, ts, out, xs, case.params)
                if got is None:
                    continue
                stepped += 1
                expected = op.jvp([dense(t) for t in ts], out, *xs, **case.params)
                np.testing.assert_allclose(dense(got), np.broadcast_to(expected, (k,) + out.shape), rtol=1e-12,
                                           atol=1e-13, err_msg=f"jvp, operand {i}, {t.entries}")
        for g in _diagonal_batches(out.shape, rng):
            got = diagonal_vjp(op, i, g, out, xs, case.params)
            if got is not None:
                stepped += 1
                expected = op.batched_vjp(i, g.dense(), out, *xs, **case.params)
                np.testing.assert_allclose(dense(got), np.broadcast_to(expected, g.shape[:1] + xs[i].shape),
                                           rtol=1e-12, atol=1e-13, err_msg=f"vjp, operand {i}, {g.entries}")
    # An op with rules of its own, and an elementwise op whose operands have
    # its shape, steps a Diagonal batch without making it an array.
    same = all(x.shape == out.shape for x in xs)
    assert stepped or not (op.diagonal_jvp or op.diagonal_vjp or (op.structure.kind == "elementwise" and same))


def test_identity_seeds_stay_diagonal_until_an_op_needs_them_whole(monkeypatch):
    """The identity's rows stay one value per direction through elementwise
    ops, sums, reshapes and transposes, and a product with a constant reads
    them without an array of them: the batch is made an array (`dense`)
    only where an op has no rule for it (a sum's spread back, an elementwise
    op after a sum has made two directions share an entry), or as the
    Jacobian itself."""
    made = []
    monkeypatch.setattr(Diagonal, "dense", lambda self, real=Diagonal.dense: made.append(self.shape) or real(self))
    text = "x = [0.5, -1.0, 2.0, 0.1]\nA = [[1.0, 2.0, 0.0, 1.0], [0.3, -0.7, 1.0, 0.5]]\n"
    arrays = {  # output: the batches made arrays by forward mode, by reverse mode
        "x.tanh * x.exp + x * x": ([(4, 4)], [(4, 4)]),
        "A @@ (x.sin * 2.0)": ([], []),
        "(x * x).sum": ([(4,)], [(1,)]),
        "x.reshape(2, 2).T.colSum.exp": ([(4, 2)], [(2, 2)]),
    }
    for output, by_mode in arrays.items():
        found = []
        for mode, expected in zip(("forward", "reverse"), by_mode):
            made.clear()
            found.append(jacobian(run(text + f"y = {output}\n", of="y"), ["x"], mode).blocks["x"])
            assert made == expected, (output, mode)
        np.testing.assert_allclose(found[0], found[1], rtol=1e-14, atol=1e-15)


# -------------------------------------------------------- random programs


def test_jacobians_of_vector_and_matrix_outputs_match_autograd(record_property):
    """The output is an intermediate of a random program (a scalar, vector or
    matrix); its Jacobian with respect to the inputs it depends on, by each
    mode, equals HIPS autograd's `jacobian` (output shape + input shape).
    The identity's rows go through as one batch, or in blocks of one or two
    (rows shifted past a value's entries: a later block's seeds)."""
    worst = Agreement()
    ranks = set()

    @SETTINGS
    @given(programs(), st.data())
    def check(program, data):
        program, wrt = program.draw_jacobian(data)
        output = program.output
        budget = data.draw(st.sampled_from([TANGENT_BUDGET_BYTES, 1, 200]), label="budget_bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # autograd: "Output seems independent of input"
            expected = program.autograd_jacobian(wrt)
        for mode in ("forward", "reverse"):
            r = run(program.source, of=output, name="generated.ad")
            result = jacobian(r, wrt, mode, budget)
            assert result.mode == mode
            for name in wrt:
                got = result.blocks[name]
                assert got.shape == r.value.shape + r.node(name).value.shape
                scale = 1.0 + np.max(np.abs(expected[name]), initial=0.0)
                np.testing.assert_allclose(got, expected[name].reshape(got.shape), rtol=1e-9, atol=1e-12 * scale,
                                           err_msg=f"∂{output}/∂{name} by {mode} mode in\n{program.source}")
                worst.update(got, expected[name].reshape(got.shape))
        ranks.add(r.value.ndim)

    check()
    assert ranks >= {1, 2}, ranks  # vector and matrix outputs were met
    worst.record(record_property, "jacobian vs autograd")


def test_the_mode_follows_the_sizes_and_both_agree():
    r = run(VECTOR)
    # x and W have 8 entries, y 3: reverse (3 rows) is cheaper.
    assert jacobian(r).mode == "reverse"
    assert jacobian(run(VECTOR), ["x"]).mode == "forward"  # 2 entries against 3
    both = [jacobian(run(VECTOR), None, mode).blocks for mode in ("forward", "reverse")]
    for name in ("x", "W"):
        np.testing.assert_allclose(both[0][name], both[1][name], rtol=1e-14, atol=1e-15)


def test_a_scalar_outputs_jacobian_is_its_gradient():
    text = VECTOR + "loss = (y * y).sum\n"
    reverse = spiread_cli.compile(text).grad()
    for mode in ("forward", "reverse"):
        j = spiread_cli.compile(text).jacobian(mode=mode)
        assert j.output == "loss" and isinstance(j.value, float)
        for name in ("x", "W"):
            np.testing.assert_allclose(j[name], reverse[name], rtol=1e-13)


def test_jacobian_matches_central_differences():
    """Row i of each block is the gradient of ⟨y, eᵢ⟩, by central differences."""
    j = jacobian(run(VECTOR), ["x", "W"]).blocks
    for row in range(3):
        picked = VECTOR + f"out = (y * {_unit(3, row)}).sum\n"
        for name in ("x", "W"):
            np.testing.assert_allclose(j[name][row], program_fd(picked, name, of="out"), rtol=1e-7, atol=1e-9)


def _unit(size: int, row: int) -> str:
    return "[" + ", ".join("1.0" if k == row else "0.0" for k in range(size)) + "]"


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_small_batches_give_the_same_jacobian(mode):
    """One direction at a time (a budget of one byte) equals all at once."""
    whole = jacobian(run(VECTOR), None, mode).blocks
    one_by_one = jacobian(run(VECTOR), None, mode, budget_bytes=1).blocks
    for name in whole:
        np.testing.assert_array_equal(whole[name], one_by_one[name])


def test_an_intermediate_can_be_differentiated_by():
    """`--wrt h` of an intermediate: every path through it; x's block is the
    total derivative, through h too (as grad does)."""
    text = "x = [0.5, 2.0]\nh = x.exp\ny = h * h + x\n"
    for mode in ("forward", "reverse"):
        j = jacobian(run(text), ["h", "x"], mode).blocks
        h = np.exp([0.5, 2.0])
        np.testing.assert_allclose(j["h"], np.diag(2 * h))
        np.testing.assert_allclose(j["x"], np.diag(2 * h * h + 1))


def test_a_name_the_output_does_not_depend_on_gets_zeros_and_a_warning():
    r = run("x = [1.0, 2.0]\nz = [3.0]\ny = x.exp\n")
    result = jacobian(r, ["x", "z"])
    assert result.blocks["z"].shape == (2, 1) and not result.blocks["z"].any()
    assert [w.message for w in r.diagnostics.warnings] == \
        ["the output `y` does not depend on `z`; its Jacobian is zero"]


def test_a_non_finite_derivative_is_located_in_either_mode():
    for mode in ("forward", "reverse"):
        r = run("x = [0.0, 1.0]\ny = x.sqrt\n")
        jacobian(r, ["x"], mode)
        (warning,) = r.diagnostics.warnings
        assert "the derivative of `sqrt`" in warning.message and warning.span.column == 7, warning.message


# ----------------------------------------------------------- memory limit


def test_a_jacobian_over_the_limit_is_refused_naming_a_wrt_that_fits(monkeypatch):
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "600")  # 75 entries
    text = "a = ones(3)\nB = ones(5, 5)\ny = (B @@ (a.sum * ones(5))) * 2\n"
    with pytest.raises(SpireadError) as caught:
        jacobian(run(text))  # 5 × (3 + 25) = 140 entries
    diagnostic = caught.value.diagnostic
    assert diagnostic.message.startswith("the Jacobian block ∂y/∂B would be 5×5×5 (1000 bytes)")
    assert diagnostic.span.line == 2  # at B's binding
    assert "without `--wrt NAME`, `jacobian` differentiates by every input `y` depends on: `a`, `B`" in \
        diagnostic.notes
    assert "`--wrt a` would fit" in diagnostic.notes


# ------------------------------------------------------------ command line


def test_the_command_writes_each_block_as_text_json_and_npz(tmp_program, tmp_path):
    path = tmp_program(VECTOR)
    done = spiread("jacobian", path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("y  3  [")
    assert "∂y/∂x  3×2" in done.stdout and "∂y/∂W  3×3×2" in done.stdout
    assert done.stdout.rstrip().endswith("reverse mode")

    done = spiread("jacobian", path, "--wrt", "x,W", "--mode", "forward", "--format", "json")
    document = strict_json(done.stdout)
    assert document["schema"] == "spiread/jacobian/1" and document["mode"] == "forward"
    assert list(document["jacobian"]) == ["x", "W"]
    expected = jacobian(run(VECTOR), ["x", "W"], "reverse").blocks
    for name, block in document["jacobian"].items():
        assert block["shape"] == list(expected[name].shape)
        np.testing.assert_allclose(block["value"], expected[name], rtol=1e-14)

    out = tmp_path / "J.npz"
    done = spiread("jacobian", path, "--of", "y", "--wrt", "W", "--out", out)
    assert done.returncode == 0 and f"wrote {out}" in done.stdout
    with np.load(out) as archive:
        assert list(archive) == ["W"]
        np.testing.assert_allclose(archive["W"], expected["W"], rtol=1e-14)


def test_the_python_api_returns_fresh_arrays_by_name():
    prog = spiread_cli.compile(VECTOR)
    j = prog.jacobian({"x": [1.0, 2.0]}, wrt=["W"])
    assert j.output == "y" and j.mode == "reverse" and list(j.blocks) == ["W"]
    assert j.value.shape == (3,) and j["W"].shape == (3, 3, 2)
    # y_i = tanh(W_i·x) Σx + W_i·exp(x): ∂y_i/∂W_i = (1 − tanh²) Σx · x + exp(x); other rows 0.
    x, W = np.array([1.0, 2.0]), np.array([[1.0, 2.0], [0.3, -0.7], [-1.2, 0.4]])
    for i in range(3):
        expected = np.zeros((3, 2))
        expected[i] = (1 - np.tanh(W[i] @ x) ** 2) * x.sum() * x + np.exp(x)
        np.testing.assert_allclose(j["W"][i], expected, rtol=1e-13)
    j["W"][0, 0, 0] = 99.0  # the caller's own
    assert prog.jacobian({"x": [1.0, 2.0]}, wrt=["W"])["W"][0, 0, 0] != 99.0


@pytest.mark.parametrize("args, code, says", [
    (["--mode", "sideways"], 2, "'sideways' is not one of 'reverse', 'forward'"),
    (["--wrt", "q"], 2, "`--wrt q`: the program binds no `q`"),
    (["--of", "nothing"], 2, "`--of nothing`: the program binds no `nothing`"),
    (["--out", "J.csv"], 2, "`--out J.csv`: it writes .npz, not .csv"),
])
def test_usage_errors(tmp_program, args, code, says):
    done = spiread("jacobian", tmp_program(VECTOR), *args)
    assert done.returncode == code and says in done.stderr, done.stderr
    assert done.stdout == ""


def test_the_python_api_names_its_keyword_arguments():
    prog = spiread_cli.compile(VECTOR)
    with pytest.raises(SpireadError, match='`mode="sideways"`: the mode is "forward" or "reverse"'):
        prog.jacobian(mode="sideways")
    with pytest.raises(SpireadError, match=r'`wrt="q"`: the program binds no `q`'):
        prog.jacobian(wrt="q")


def test_grad_of_a_vector_output_points_at_jacobian(tmp_program):
    done = spiread("grad", tmp_program(VECTOR))
    assert done.returncode == 1
    assert "note: `spiread jacobian` gives the derivatives of every entry of `y`" in done.stderr
    with pytest.raises(SpireadError) as caught:
        spiread_cli.compile(VECTOR).grad()
    assert "`Program.jacobian(...)` gives the derivatives of every entry of `y`" in str(caught.value)


# -------------------------------------------------------------- check


def test_check_of_a_vector_or_matrix_output_checks_its_jacobian(tmp_program):
    """Every entry of each block ∂Y/∂X, reverse and forward mode, against
    central differences of ⟨Y, u⟩ along unit directions."""
    text = VECTOR + "M = W * x.exp\n"
    for output, shapes in (("y", {"∂y/∂x": (3, 2), "∂y/∂W": (3, 3, 2)}),
                           ("M", {"∂M/∂x": (3, 2, 2), "∂M/∂W": (3, 2, 3, 2)})):
        report = check_gradients(run(text, of=output))
        assert report.ok and report.what == "Jacobian"
        assert {n: r.shape for n, r in report.results.items()} == shapes
        assert all(r.method == "elementwise" and r.checked == math.prod(r.shape) for r in report.results.values())
    done = spiread("check", tmp_program(text), "--of", "M", "--format", "json")
    document = strict_json(done.stdout)
    assert done.returncode == 0 and document["ok"] and document["value"]["shape"] == [3, 2]
    done = spiread("check", tmp_program(text), "--of", "y")
    assert done.returncode == 0 and done.stdout.startswith("Jacobian check of `y` (3)")


def test_check_catches_a_wrong_batched_rule_at_its_entry():
    """Break `cos`'s reverse rule at one node (for one cotangent, which steps
    the identity's rows spread into one value, and for a batch): the reverse
    Jacobian is wrong, the check fails at that entry, and forward mode
    disagrees with reverse there."""
    r = run("v = [0.3, 1.2, -0.7]\ny = (v * [1, 0, 0]).cos + v.sin\n")
    node = next(n for n in r.tape.nodes if n.op is not None and n.op.name == "cos")
    wrong = lambda i, g, out, x: g * np.sin(x)  # noqa: E731  (sign flipped)
    node.op = dataclasses.replace(node.op, vjp=wrong, batched_vjp=wrong)
    report = check_gradients(r)
    (result,) = report.results.values()
    assert not result.ok and result.worst == (0, 0) and "AD gives" in result.problem
    assert result.forward_vs_reverse == pytest.approx(2 * math.sin(0.3))
    (failure,) = report.failures(r)
    assert failure.message.startswith("Jacobian check failed for `∂y/∂v[0, 0]`: AD gives")


def test_check_of_a_large_jacobian_goes_along_random_directions():
    text = "x = randn(40, seed=1)\nA = randn(30, 40, seed=2)\ny = (A @@ x).tanh\n"
    report = check_gradients(run(text), ["x"])
    (result,) = report.results.values()
    assert report.ok and result.method == "directional" and result.checked == 8


@pytest.mark.parametrize("t, d", [
    (np.array([0.0, 1.0, 2.0]), np.array([np.inf, -np.inf, 3.0])),             # same sizes
    (np.array([[0.0, 1.0], [0.0, 0.0], [2.0, 0.0]]), np.array([np.inf, 2.0])),  # a batch of t, a small d
    (np.array([np.nan, 0.0]), np.array([[np.inf, 1.0], [2.0, -np.inf], [0.5, 0.5]])),  # a small t with a zero
    (np.array([1.0, -2.0]), np.array([[np.inf, 1.0], [np.nan, 3.0]])),          # a small t without zeros
])
def test_scale_keeps_a_zero_zero_against_a_non_finite_partial_whichever_operand_is_small(t, d):
    """`scale` (every rule's (co)tangent · partial) guards 0 · inf as 0; it
    asks the smaller operand whether the guard is needed, so a batch of
    tangents or cotangents is not summed first: the same values either way."""
    from spiread_cli.ops import scale
    with np.errstate(all="ignore"):
        expected = np.where(np.broadcast_to(t, np.broadcast_shapes(t.shape, d.shape)) == 0, 0.0, t * d)
        np.testing.assert_array_equal(scale(t, d), expected)
