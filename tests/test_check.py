"""`spiread check`: AD against central finite differences, kinks, directional
mode, the tolerance rule, JSON and exit codes."""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import CONSTANT_EXAMPLES, EXAMPLES, REPO, run, spiread, strict_json
from programs import programs
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.check import Probe, check_gradients, check_second_order
from spiread_cli.diagnostics import SpireadError


def example_files():
    return sorted(p.relative_to(REPO) for p in EXAMPLES.rglob("*.ad"))


@pytest.mark.parametrize("path", example_files(), ids=str)
def test_every_example_checks_out(path, request):
    """Every example with a finite output passes; a non-finite output (the
    spireAD seed's `inf` loss) cannot be checked and must fail, saying why.
    The bigram model runs on data prepared from a slice of the names."""
    if path.parent.name == "bigram":
        path = request.getfixturevalue("bigram_slice") / path.name
    r = Program.open(str(REPO / path)).run()
    if path.name in CONSTANT_EXAMPLES:
        assert r.inputs_of_output() == [] and r.backward_wrt is None
        return
    report = check_gradients(r)
    assert report.results, path
    if math.isfinite(report.value):
        assert report.ok, {n: v.problem for n, v in report.results.items()}
        for result in report.results.values():
            assert result.max_rel_error <= report.tol
    else:
        assert not report.ok and "finite differences need a finite output" in report.problem


def only_kinks_fail(report) -> bool:
    """Each value that fails, fails at an entry whose one-sided slopes
    differ, with an op's input exactly on its kink."""
    failed = [v for v in report.results.values() if not v.ok]
    return report.problem is None and bool(report.kink_sites) and all(v.kink for v in failed)


def test_random_smooth_programs_pass_unless_a_kink_is_hit():
    """On generated programs check passes, except at a kink: then only kinks
    fail, and the AD gradient of each failed value is still the conventional
    one there (HIPS autograd's), so no wrong derivative hides behind a kink."""
    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(programs())
    def check(program):
        r = run(program.source, name="generated.ad")
        report = check_gradients(r, [n for n in program.names if n != "loss"])
        if report.ok:
            return
        failed = [v.name for v in report.results.values() if not v.ok]
        context = (program.source, [v.problem for v in report.results.values()])
        assert only_kinks_fail(report), context
        got = run_gradients(r, failed).gradients
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # autograd: "Output seems independent of input"
            expected = program.autograd_gradients(failed)
        for name in failed:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-7, atol=1e-10, err_msg=str(context))

    check()


def test_a_kink_does_not_excuse_a_wrong_gradient_elsewhere():
    """`x` fails at relu's kink; `v` fails because cos's reverse rule is
    broken: that failure is not a kink's, and `only_kinks_fail` says so."""
    r = run("x = [1, 0, -2]\nv = [0.3, 1.2]\nloss = x.relu.sum + v.cos.sum")
    kinked = check_gradients(r)
    assert not kinked.ok and only_kinks_fail(kinked)
    node = next(n for n in r.tape.nodes if n.op is not None and n.op.name == "cos")
    node.op = dataclasses.replace(node.op, vjp=lambda i, g, out, x: g * np.sin(x))  # sign flipped
    broken = check_gradients(r)
    assert broken.results["x"].kink and not broken.results["v"].ok and not broken.results["v"].kink
    assert not only_kinks_fail(broken)


# --------------------------------------------------------------------- kinks


@pytest.mark.parametrize("text, entry, op, ad, fd", [
    ("x = [1, 0, -2]\nloss = x.relu.sum", (1,), "relu", 0.0, 0.5),
    ("x = [[1, 0.5], [0.25, 2]]\nloss = (x.clampMin(0.5) * 3).sum", (0, 1), "clampMin", 3.0, 1.5),
    ("x = [[1, 0.5], [0.25, 2]]\nloss = x.clampMax(0.25).sum", (1, 0), "clampMax", 1.0, 0.5),
    # Central differences of |x| at 0 are 0, as AD says: only the one-sided
    # slopes show the kink.
    ("x = [0.5, 0]\nloss = (x.abs * 2 + x.square).sum", (1,), "abs", 0.0, 0.0),
    ("x = 0\nloss = x.abs + x * 2", (), "abs", 2.0, 2.0),
])
def test_kinks_fail_with_the_entry_and_the_op_named(text, entry, op, ad, fd):
    r = run(text)
    report = check_gradients(r, ["x"])
    result = report.results["x"]
    assert not report.ok and not result.ok and result.kink
    assert result.method == "elementwise" and result.worst == entry
    assert result.ad == pytest.approx(ad) and result.fd == pytest.approx(fd, abs=1e-5)
    assert [s.node.label for s in report.kink_sites] == [op]
    (failure,) = report.failures(r)
    assert f"`x{list(entry) if entry else ''}`" in failure.message and "not differentiable" in failure.message
    assert failure.span == report.kink_sites[0].node.span  # the caret goes under the op
    assert any(f"`{op}`" in note and "no derivative" in note for note in failure.notes)


def test_a_kink_the_output_does_not_see_is_no_failure():
    report = check_gradients(run("x = [1, 0, -2]\nloss = (x.relu * 0).sum + x.sin.sum"), ["x"])
    assert report.ok


def test_directional_mode_for_large_values():
    text = "x = randn(40, 30, seed=1)\nloss = (x.tanh @@ x.T).sin.mean + x.square.sum * 0.5"
    report = check_gradients(run(text), ["x"])
    result = report.results["x"]
    assert report.ok and result.method == "directional" and result.checked == 8
    assert result.max_rel_error < report.tol and result.forward_vs_reverse < 1e-12


def test_directions_whose_identity_is_over_the_memory_limit_are_random(monkeypatch):
    """Entry by entry pushes the n×n identity as a batch of directions: over
    SPIREAD_MAX_BYTES (here 2 MB for 500 entries), random directions instead."""
    text = "x = randn(500, seed=1)\nv = randn(30, seed=2)\nloss = (x.tanh * x).sum + (v.sin * v).sum\n"
    for limit, method in ((8 * 500 * 500, "elementwise"), (8 * 500 * 500 - 1, "directional")):
        monkeypatch.setenv("SPIREAD_MAX_BYTES", str(limit))
        report = check_gradients(run(text), ["x"])
        assert report.ok and report.results["x"].method == method
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(8 * 30 * 30 - 1))
    report = check_second_order(run(text), ["v"])
    assert report.ok and report.results["∂²loss/∂v∂v"].method == "directional"
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(8 * 30 * 30))
    assert check_second_order(run(text), ["v"]).results["∂²loss/∂v∂v"].method == "elementwise"


def test_directional_mode_still_finds_a_kink():
    report = check_gradients(run("x = zeros(40, 30)\nloss = (x.relu + x.sin).sum"), ["x"])
    result = report.results["x"]
    assert result.method == "directional" and not result.ok
    assert [s.node.label for s in report.kink_sites] == ["relu"] and report.kink_sites[0].count == 1200


def test_directional_mode_can_be_asked_for_small_values():
    r = run("M = [[1, 2], [3, 0.5]]\nloss = (M @@ M.T).logSoftmaxRows.mean")
    report = check_gradients(r, ["M"], max_entries=0)
    assert report.ok and report.results["M"].method == "directional"


def test_the_method_follows_the_work_not_the_clock(monkeypatch):
    """Entry by entry or along directions is decided by the entries an
    evaluation computes, so a loaded machine checks as a quiet one does."""
    import time
    clock = iter(range(0, 10**9, 100))  # every timing would say 100 s
    monkeypatch.setattr(time, "perf_counter", lambda: float(next(clock)))
    small = check_gradients(run("W = randn(4, 16, seed=1)\nloss = (W @@ W.T).tanh.mean"), ["W"])
    assert small.results["W"].method == "elementwise" and small.results["W"].checked == 64
    # 100 entries, but each evaluation computes two 1000×1000 arrays: 2·100·2·10⁶ entries is over the budget
    costly = check_gradients(run("x = randn(100, seed=2)\nbig = zeros(1000, 1000) + x.sum\nloss = big.tanh.mean"),
                             ["x"])
    assert costly.ok and costly.results["x"].method == "directional"
# -------------------------------------------------------- wrong gradients


def test_a_wrong_vjp_is_caught_at_the_right_entry():
    """Break `cos`'s reverse rule for one node: check fails for the value that
    flows through it, forward mode disagrees with reverse, and the worst entry
    is the one whose derivative is wrong."""
    r = run("v = [0.3, 1.2, -0.7]\nu = [2, 1]\nloss = (v * [1, 0, 0]).cos.sum + v.sin.sum + u.exp.sum")
    node = next(n for n in r.tape.nodes if n.op is not None and n.op.name == "cos")
    node.op = dataclasses.replace(node.op, vjp=lambda i, g, out, x: g * np.sin(x))  # sign flipped
    report = check_gradients(r)
    v, u = report.results["v"], report.results["u"]
    assert u.ok and not v.ok
    assert v.worst == (0,) and "AD gives" in v.problem
    assert v.forward_vs_reverse == pytest.approx(2 * math.sin(0.3))


def test_scalars_vectors_matrices_and_intermediates():
    text = """
s = 0.5
v = [0.1, -0.4, 0.9]
M = [[1, 0.2, -0.3], [0.4, -1, 0.6]]
h = (M @@ v.exp) * s
loss = h.logSoftmaxRows.sum + s.cos
"""
    report = check_gradients(run(text), ["s", "v", "M", "h"])
    assert report.ok
    assert {n: r.shape for n, r in report.results.items()} == {"s": (), "v": (3,), "M": (2, 3), "h": (2,)}
    assert all(r.method == "elementwise" and r.checked == max(1, math.prod(r.shape)) for r in report.results.values())


def test_an_empty_value_has_nothing_to_disagree_with():
    report = check_gradients(run("x = zeros(0)\ny = [1, 2]\nloss = x.sum + y.exp.sum"), ["x", "y"])
    assert report.ok and report.results["x"].checked == 0 and report.results["x"].worst == ()


@pytest.mark.parametrize("empty", ["zeros(0)", "zeros(3, 0)", "zeros(0, 2)"])
@pytest.mark.parametrize("more", ["", " + (v * v * v).sum"])
def test_second_order_over_an_empty_value_checks_the_blocks_hessian_gives(empty, more, tmp_program):
    """`check --order 2` as `hessian` does: an empty value's blocks are empty,
    shaped, and have nothing to disagree with; the others are checked."""
    from spiread_cli import second
    text = f"w = {empty}\nv = [1.0, 2.0]\nloss = (w * w).sum{more}\n"
    blocks = second.hessian(run(text)).blocks
    report = check_second_order(run(text))
    assert report.ok
    assert {name: r.shape for name, r in report.results.items()} == \
        {f"∂²loss/∂{a}∂{b}": block.shape for a, row in blocks.items() for b, block in row.items()}
    assert all(r.checked == block.size for r, block in
               zip(report.results.values(), [block for row in blocks.values() for block in row.values()]))
    done = spiread("check", "--order", "2", str(tmp_program(text)), "--format", "json")
    assert done.returncode == 0, done.stderr
    assert strict_json(done.stdout)["results"]["∂²loss/∂w∂w"]["checked"] == 0


def test_a_value_the_output_does_not_depend_on_passes_with_zero_gradient():
    r = run("a = [1, 2]\nb = 3\nloss = a.sum")
    report = check_gradients(r, ["a", "b"])
    assert report.ok and report.results["b"].ad == 0 and report.results["b"].fd == 0
    assert any("does not depend on `b`" in w.message for w in r.diagnostics.warnings)


# ------------------------------------------------------------ tolerance rule


def test_eps_and_tol_follow_the_documented_rule():
    """exp at 1 with eps 1e-2: the central difference is off by eps²/6 · e
    (relative 1.7e-5). That passes tol 1e-4 as it stands. Against tol 1e-5
    it fails at eps, so it is measured again at eps/100, where the error has
    shrunk 10⁴-fold as truncation error does: it passes, with that error
    reported."""
    text = "x = 1\nloss = x.exp"
    loose = check_gradients(run(text), eps=1e-2, tol=1e-4)
    tight = check_gradients(run(text), eps=1e-2, tol=1e-5)
    assert loose.ok and tight.ok
    assert loose.results["x"].max_abs_error == pytest.approx(math.e * 1e-4 / 6, rel=1e-3)
    assert tight.results["x"].max_abs_error == pytest.approx(math.e * 1e-8 / 6, rel=1e-2)


def broken(r, op: str, derivative):
    """The run with the derivative of its (first) elementwise `op` node
    replaced by `derivative(x, out)` in both the reverse and the forward
    rule, so forward mode agrees with reverse and only finite differences
    can tell."""
    node = next(n for n in r.tape.nodes if n.op is not None and n.op.name == op)
    node.op = dataclasses.replace(node.op, vjp=lambda i, g, out, x: g * derivative(x, out),
                                  jvp=lambda ts, out, x: ts[0] * derivative(x, out))
    return r


@pytest.mark.parametrize("tol, ok", [(1e-4, True), (1e-5, False)])
def test_tol_decides_for_a_gradient_slightly_off(tol, ok):
    """exp's reverse rule off by a relative 3e-5: that error stays as the
    step shrinks, so `tol` alone decides."""
    r = broken(run("x = 1\nloss = x.exp"), "exp", lambda x, out: out * (1 + 3e-5))
    result = check_gradients(r, tol=tol).results["x"]
    assert result.ok == ok and result.max_rel_error == pytest.approx(3e-5, rel=1e-3)
    if not ok:
        assert result.problem.startswith("AD gives 2.71836 but finite differences 2.71828 at a step of 1e-08 (")


# --------------------------------------------- the differences' own error


@pytest.mark.parametrize("check, text, refined_error", [
    (check_gradients, "x = [0, 0.01]\nloss = x.clampMin(0).square.sum", 5e-9),
    (check_gradients, "x = [0, -0.01]\nloss = x.clampMax(0).square.sum", 5e-9),
    (check_gradients, "x = [0, 0.01]\nloss = (x.abs * x).sum", 1e-8),
    (check_second_order, "x = [0, 0.01]\nloss = (x.relu * x.relu * x.relu).sum", 1.5e-8),
    (check_second_order, "x = [0, 0.01]\nloss = (x.abs * x * x).sum", 3e-8),
], ids=lambda p: p.split("loss = ")[-1] if isinstance(p, str) else getattr(p, "__name__", None))
def test_a_curvature_jump_is_no_failure(check, text, refined_error):
    """At x[0] = 0 the (checked) derivative is C¹ but its own derivative
    jumps by k: AD is exact, while the central difference is off by k·eps/4,
    more than the rule allows next to a gradient of 0.02. That error is ∝ the
    step: at eps/100 it is k·eps/400, the value passes, and that is the
    error reported (so the refinement made the verdict)."""
    report = check(run(text))
    (result,) = report.results.values()
    assert report.ok, result.problem
    assert result.max_abs_error == pytest.approx(refined_error, rel=0.05)


def test_the_generated_program_that_found_it():
    """The program hypothesis found: h2's entries are all 0, so every AD
    entry is 0 and the rule allows only rounding (5e-12), but the central
    difference through clampMin(0).square is eps/2. At eps/100 it is eps/200:
    the difference's own error, shrinking with the step."""
    r = run("w4 = [[1.96, 1.42, (-1.06)], [(-1.9), (-0.93), 0.06]]\n"
            "h2 = w4[(0, 1)].arrange((0, 0), (0, 0), (0, 0))\n"
            "h3 = h2.clampMin(0.0).square\n"
            "loss = h3[0]\n", name="generated.ad")
    result = check_gradients(r, ["h2"]).results["h2"]
    assert result.ok, result.problem
    assert result.ad == 0 and result.fd == pytest.approx(5e-9, rel=1e-6)


@pytest.mark.parametrize("offset", [0.1, 1e-4, 1e-6, -1e-6])
def test_a_wrong_gradient_at_a_curvature_jump_still_fails(offset):
    """relu(x)² at 0 with square's reverse rule off by `offset` there, down
    to twice the central difference's own error at eps (5e-7): at eps/100 the
    error stays while the difference's own shrinks, so the value fails, saying
    so at that step."""
    r = broken(run("x = [0, 0.01]\nloss = x.clampMin(0).square.sum"), "square",
               lambda x, out: 2 * x + offset * (x == 0))
    result = check_gradients(r).results["x"]
    assert not result.ok and not result.kink and result.worst == (0,)
    assert result.ad == offset and result.fd == pytest.approx(5e-9, rel=1e-3)
    assert re.fullmatch(rf"AD gives {offset:.6g} but finite differences 5\.000\d*e-09 at a step of 1e-08 "
                        r"\(error \S+, allowed \S+; \S+ at 1e-06: "
                        r"a difference's own error would have shrunk at least 10-fold\)", result.problem), result.problem


def test_only_failing_entries_are_measured_again(monkeypatch):
    """Two evaluations per entry; two more for each entry that fails the rule
    at eps or may be a kink (one evaluation at eps/100 serves both), and none
    where everything passes."""
    calls = []
    evaluate = Probe.__call__
    monkeypatch.setattr(Probe, "__call__", lambda probe, value: calls.append(1) or evaluate(probe, value))

    def evaluations(r) -> int:
        calls.clear()
        check_gradients(r, ["x"])
        return len(calls)

    assert evaluations(run("x = [0.3, 1, -2]\nloss = x.sin.sum")) == 6
    assert evaluations(run("x = [0, 0.01, 0.02]\nloss = x.clampMin(0).square.sum")) == 6 + 2
    flipped = broken(run("x = [0.3, 1, -2]\nloss = x.cos.sum"), "cos", lambda x, out: np.sin(x))
    assert evaluations(flipped) == 6 + 6


def test_a_curvature_jump_is_no_failure_on_dask_either(tmp_path):
    """Over row chunks too (check.Subject): every row of X @@ w sits on
    clampMin's threshold at w = 0, where AD's gradient 0 is exact."""
    np.save(tmp_path / "X.npy", np.random.default_rng(3).normal(size=(120, 3)))
    (tmp_path / "c.ad").write_text('X = load("X.npy")\nw = [0.0, 0.0, 0.0]\n'
                                   'loss = (X @@ w).clampMin(0).square.mean\n')
    result = spiread("check", "c.ad", "--wrt", "w", "--format", "json", "--backend", "dask", "--chunk-rows", "50",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert doc["ok"] and doc["results"]["w"]["ad"] == 0 and abs(doc["results"]["w"]["fd"]) < 1e-8


def test_bad_eps_and_tol_are_usage_errors():
    for kwargs in ({"eps": 0.0}, {"eps": -1e-6}, {"tol": float("nan")}):
        with pytest.raises(SpireadError) as err:
            check_gradients(run("x = 1\nloss = x.exp"), **kwargs)
        assert err.value.exit_code == 2


def test_non_finite_gradient_fails():
    report = check_gradients(run("x = [0, 1]\nloss = x.sqrt.sum"), ["x"])
    assert not report.ok and report.results["x"].worst == (0,)


# ---------------------------------------------------------- command line


def test_cli_pass_prints_a_table_and_exits_0():
    result = spiread("check", "examples/least_squares.ad")
    assert result.returncode == 0, result.stderr
    assert "check passed" in result.stdout and "w" in result.stdout and "\x1b[" not in result.stdout


def test_cli_kink_fails_with_a_located_error(tmp_program):
    path = tmp_program("x = [1, 0, -2]\nloss = x.relu.sum\n")
    result = spiread("check", path)
    assert result.returncode == 1
    assert "FAIL" in result.stdout
    assert f"{path}:2:10: error: gradient check failed for `x[1]`" in result.stderr
    assert "^^^^" in result.stderr and "`relu`" in result.stderr and "Traceback" not in result.stderr


def test_cli_json_follows_the_contract(tmp_program):
    path = tmp_program("W = [[1, 2], [3, 4]]\nb = 0.5\nloss = ((W * b).tanh).sum\n")
    result = spiread("check", path, "--format", "json", "--eps", "1e-5", "--tol", "1e-6")
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert doc["file"] == str(path) and doc["output"] == "loss" and doc["ok"] is True
    assert list(doc["results"]) == ["W", "b"]
    for entry in doc["results"].values():
        assert entry["ok"] is True and 0 <= entry["max_abs_error"] and 0 <= entry["max_rel_error"] < 1e-6
    assert doc["results"]["W"]["worst_entry"] in ([0, 0], [0, 1], [1, 0], [1, 1])


def test_cli_non_finite_output_fails_in_json_too():
    result = spiread("check", "examples/seed.ad", "--format", "json")
    assert result.returncode == 1
    doc = strict_json(result.stdout)
    assert doc["ok"] is False and doc["results"]["weights"]["ok"] is False
    assert doc["results"]["weights"]["max_abs_error"] == "nan"
    assert "error: the output `loss` is inf" in result.stderr


@pytest.mark.parametrize("args, code, words", [
    (["--wrt", "nope"], 2, "binds no `nope`"),
    (["--eps", "-1"], 2, "positive"),
    (["--of", "residual", "--order", "2"], 1, "gradients need a scalar"),
    (["--strict", "--set", "w=[1e200, 1e200]"], 1, "error: `**` gave inf"),
])
def test_cli_exit_codes(args, code, words):
    result = spiread("check", "examples/least_squares.ad", *args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert words in result.stderr and "Traceback" not in result.stderr


def test_rounding_deep_in_the_program_is_allowed_for():
    """The loss is log(1) = 0 up to rounding: every row keeps all of its
    normalised probabilities. Finite differences see only rounding noise
    (~1e-11) and AD gives exactly 0; the allowance must come from the row
    sums that are 1, not from the output's own operands, which are all 0."""
    r = run("w = [[0.96, 0.16], [-0.8, 0.54]]\n"
            "loss = w.exp.normaliseRowsL1[(0, 0), (1, 0), (0, 1), (1, 1)].mapRowsToScalar(sum).log.mean\n")
    report = check_gradients(r, ["w"])
    assert report.ok, {n: v.problem for n, v in report.results.items()}
    assert report.results["w"].max_abs_error < 1e-9


@pytest.mark.parametrize("bad", [np.inf, np.nan, 1e308])
@pytest.mark.parametrize("output", ["y = M @@ w", "y = (M @@ w).tanh * w", "y = (M @@ w).sum"])
def test_a_check_over_data_not_finite_lets_no_numpy_warning_out(output, bad):
    """Whatever the blocks hold, `check` reports through its results and
    spiread's located warnings, never numpy's RuntimeWarning (an error
    here): a Jacobian's block met its directions outside the sweeps' error
    state (rev-d)."""
    import spiread_cli
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", RuntimeWarning)
        spiread_cli.compile(f"M = zeros(2, 2)\nw = zeros(2)\n{output}\n").check(M=[[bad, 1.0], [1.0, 2.0]], w=[1.0, 1.0],
                                                                                  wrt="w")
