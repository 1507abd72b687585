"""The public Python API (spiread_cli.load / compile, docs/python.md): its
doctests, values against independent numpy references, bindings, results
that share no memory, errors with the command line's exact text, warnings
through Python's `warnings`, training, graphs, and a light `import`."""

from __future__ import annotations

import doctest
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import typing
import warnings
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import spiread_cli
from spiread_cli import (CheckResult, Gradients, Graph, Program, SpireadError, SpireadWarning, Training,
                         TrainingStopped, compile, load)
from conftest import EXAMPLES, REPO, spiread

BAD = Path(__file__).parent / "bad"
GOLDEN = Path(__file__).parent / "golden"

LEAST_SQUARES = EXAMPLES / "least_squares.ad"
X = np.array([[1, 0.5], [1, -1.2], [1, 2.3], [1, 0.1]])
Y = np.array([1.2, -0.8, 3.1, 0.4])


def reference_loss(w: np.ndarray) -> float:
    return float(np.mean((X @ w - Y) ** 2))


def reference_gradient(w: np.ndarray) -> np.ndarray:
    return 2 / len(Y) * X.T @ (X @ w - Y)


# ------------------------------------------------------------------ doctests


@pytest.mark.parametrize("page, examples", [("docs/python.md", 40), ("README.md", 6), ("docs/check.md", 4),
                                            ("docs/sparsity.md", 4)])
def test_the_pages_python_runs(page, examples, monkeypatch):
    """Every `>>>` example of the page (docs/python.md is the tutorial), from
    the repository's root."""
    monkeypatch.chdir(REPO)
    result = doctest.testfile(str(REPO / page), module_relative=False,
                              optionflags=doctest.ELLIPSIS, raise_on_error=False, verbose=False)
    assert result.attempted >= examples
    assert result.failed == 0


def test_the_module_doctests_run(monkeypatch):
    import spiread_cli.program
    monkeypatch.chdir(REPO)
    result = doctest.testmod(spiread_cli.program, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# ------------------------------------------------------------------ values


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, 2, elements=st.floats(-10, 10)))
def test_eval_and_grad_match_numpy(w):
    prog = load(LEAST_SQUARES)
    values = prog.eval(w=w)
    assert values["loss"] == pytest.approx(reference_loss(w), rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(values["residual"], X @ w - Y, rtol=1e-12, atol=1e-12)
    for mode in ("reverse", "forward"):
        g = prog.grad(w=w, mode=mode)
        np.testing.assert_allclose(g["w"], reference_gradient(w), rtol=1e-10, atol=1e-10)
        assert g.value == values["loss"] and g.output == "loss"


def test_eval_lists_bindings_then_an_unbound_output():
    prog = compile("x = [1, 2]\nx.sum * 2", name="<cell>")
    values = prog.eval(x=[3, 4])
    assert list(values) == ["x", "x.sum * 2"]
    assert values["x.sum * 2"] == 14.0 and type(values["x.sum * 2"]) is float


def test_of_picks_the_output():
    prog = load(LEAST_SQUARES)
    assert prog.grad(of="loss", wrt="residual")["residual"].shape == (4,)
    with pytest.raises(SpireadError) as caught:
        prog.eval(of="los")
    assert caught.value.diagnostic.message == '`of="los"`: the program binds no `los`'
    assert caught.value.notes == ("did you mean `loss`?",) and caught.value.exit_code == 2


@pytest.mark.parametrize("given_as", [
    [[1, 2], [3, 4]], ((1, 2), (3, 4)), np.array([[1, 2], [3, 4]], dtype=np.int32),
    np.array([[1, 2], [3, 4]], dtype=np.float32), np.array([[1, 3], [2, 4]]).T])
def test_bindings_become_float64(given_as):
    values = compile("a = [[0, 0], [0, 0]]\nb = a * 2", name="<cell>").eval(a=given_as)
    assert values["b"].dtype == np.float64 and values["b"].flags.c_contiguous
    np.testing.assert_array_equal(values["b"], [[2, 4], [6, 8]])


def test_scalar_bindings_and_results():
    values = compile("s = 1\nt = s * 3", name="<cell>").eval(s=True)
    assert values == {"s": 1.0, "t": 3.0} and all(type(v) is float for v in values.values())


def test_a_mapping_binds_names_that_clash_with_parameters():
    prog = compile("of = 1\nwrt = 2\nsteps = of + wrt", name="<cell>")
    assert prog.eval({"of": 10}, wrt=5)["steps"] == 15.0


@pytest.mark.parametrize("value, message", [
    ([[1, 2], [3]], "binding `a`: its rows differ in length"),
    ([[1, 2], 3], "binding `a`: its rows differ in length"),
    ([1, None], "binding `a`: the value must be real numbers, not Python objects"),
    ([[[1.0]]], "binding `a`: the value is 3-dimensional; spiread values are scalars, vectors and matrices"),
    (["1", "2"], "binding `a`: the value must be real numbers, not text"),
    (1 + 2j, "binding `a`: the value must be real numbers, not complex numbers"),
    ({"x": 1}, "binding `a`: the value must be real numbers, not Python objects"),
])
def test_bad_bindings_are_refused_naming_the_binding(value, message):
    with pytest.raises(SpireadError) as caught:
        compile("a = 1\nb = a", name="<cell>").eval(a=value)
    assert caught.value.diagnostic.message == message
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("given_as", [
    [[1, 2], [3, 4]], ((1, 2), (3, 4)), np.array([[1, 2], [3, 4]], dtype=np.int32),
    np.array([[1, 2], [3, 4]], dtype=np.float32), np.array([[1, 3], [2, 4]]).T])
def test_program_run_takes_what_the_calls_take(given_as):
    """`Program.run`, the run every call works on, takes a binding as the
    calls do (a list was an AttributeError inside the interpreter), as a
    float64 array of the run's own: the caller's is neither held nor written."""
    prog = compile("a = [[0, 0], [0, 0]]\nb = a * 2", name="<cell>")
    run = prog.run({"a": given_as})
    np.testing.assert_array_equal(run.value, prog.eval(a=given_as)["b"])
    held = run.node("a").value
    assert held.dtype == np.float64 and held.flags.c_contiguous
    if isinstance(given_as, np.ndarray):
        assert not np.shares_memory(held, given_as)


@pytest.mark.parametrize("value, message", [
    ([[1, 2], [3]], "binding `a`: its rows differ in length"),
    (["1", "2"], "binding `a`: the value must be real numbers, not text"),
    ([[[1.0]]], "binding `a`: the value is 3-dimensional; spiread values are scalars, vectors and matrices"),
])
def test_program_run_refuses_what_the_calls_refuse(value, message):
    with pytest.raises(SpireadError) as caught:
        compile("a = 1\nb = a", name="<cell>").run({"a": value})
    assert caught.value.diagnostic.message == message and caught.value.exit_code == 2
    with pytest.raises(SpireadError) as caught:
        compile("a = 1\nb = a", name="<cell>").run({"c": 1})
    assert caught.value.diagnostic.message == "binding `c`: the program binds no `c`"
    with pytest.raises(TypeError, match="overrides=\\[1, 2\\]: the overrides passed first are a mapping"):
        compile("a = 1\nb = a", name="<cell>").run([1, 2])
    with pytest.raises(SpireadError) as caught:  # in the API's words, as prog.eval(of=…) says it
        compile("a = 1\nb = a", name="<cell>").run(None, of="bb")
    assert caught.value.diagnostic.message == '`of="bb"`: the program binds no `bb`' and caught.value.exit_code == 2


def test_an_unknown_binding_suggests_a_name():
    with pytest.raises(SpireadError) as caught:
        load(LEAST_SQUARES).grad(W=[1, 2])
    assert caught.value.diagnostic.message == "binding `W`: the program binds no `W`"
    assert caught.value.notes == ("did you mean `w`?",)


@pytest.mark.parametrize("value, expected", [
    (2 ** 70, 2.0 ** 70), ([2 ** 70, 1], [2.0 ** 70, 1.0]), (Fraction(1, 3), 1 / 3),
    ([Decimal("1.5"), 2], [1.5, 2.0]), (np.int64(7), 7.0), (True, 1.0),
])
def test_any_python_number_is_a_binding(value, expected):
    assert compile("a = 0\nb = a * 1", name="<cell>").eval(a=value)["b"] == pytest.approx(expected, rel=1e-15)


def test_a_number_beyond_float64_is_refused_naming_the_binding():
    with pytest.raises(SpireadError) as caught:
        compile("a = 0\nb = a", name="<cell>").eval(a=[10 ** 400, 1])
    assert caught.value.diagnostic.message.startswith("binding `a`: a number is beyond the range")


@pytest.mark.parametrize("call, message", [
    (lambda p: p.eval({1: 2}), "bindings={1: 2}: a name is a string, not 1 (int)"),
    (lambda p: p.eval([1, 2]), 'bindings=[1, 2]: the bindings passed first are a mapping of names to values, '
                               'e.g. {"w": [1, 2]}, not list'),
    (lambda p: p.eval(of=3), "of=3: a name is a string, not int"),
    (lambda p: p.grad(wrt=["w", 3]), "wrt=['w', 3]: a name is a string, not 3 (int)"),
    (lambda p: p.grad(wrt=3), "wrt=3: the names are a string or a list of strings, not int"),
    (lambda p: p.hessian(hvp=[1, 2]), 'hvp=[1, 2]: the directions are a mapping of names to values, '
                                      'e.g. {"w": [1, 0]}, not list'),
    (lambda p: p.hessian(hvp={1: [1, 0]}), "hvp={1: [1, 0]}: a name is a string, not 1 (int)"),
    (lambda p: p.check(eps="small"), "eps='small': a number, not str"),
    (lambda p: p.train(wrt="w", lr="fast"), "lr='fast': a number, not str"),
])
def test_an_argument_of_the_wrong_type_is_a_type_error_naming_it(call, message):
    """Raised where the call is made (one frame of spiread's, its boundary), never an AttributeError from inside."""
    with pytest.raises(TypeError) as caught:
        call(load(LEAST_SQUARES))
    assert str(caught.value) == message
    ours = [f for f in traceback.extract_tb(caught.value.__traceback__) if "spiread_cli" in f.filename]
    assert [(Path(f.filename).name, f.name) for f in ours] == [("python_args.py", "public")]


@pytest.mark.parametrize("call", [
    lambda: load(LEAST_SQUARES).grad(w=[1, 2, 3]),                    # a shape error deep in the interpreter
    lambda: load(LEAST_SQUARES).grad(wrt="ww"),                       # an unknown name, in the tape
    lambda: load(LEAST_SQUARES).train(wrt="w", steps=-1),            # an option, at the method
    lambda: compile("x = [1, 2]\ny = x @@ [1, 2, 3]", name="<cell>").eval(),  # fine to parse ...
    lambda: compile("x = (1", name="<cell>"),                                   # ... not this
])
def test_an_error_shows_the_callers_line_and_not_spireads_stack(call):
    with pytest.raises(SpireadError) as caught:
        call()
    error = caught.value
    frames = traceback.extract_tb(error.__traceback__)
    rendered = "".join(traceback.format_exception(error))
    assert [(Path(f.filename).name, f.name) for f in frames if "spiread_cli" in f.filename] == [("python_args.py", "public")]
    assert [f.name for f in frames[:2]] == ["test_an_error_shows_the_callers_line_and_not_spireads_stack", "<lambda>"]
    assert "During handling" not in rendered and rendered.count("  File ") == len(frames) == 3
    assert rendered.rstrip().endswith(str(error).splitlines()[-1])


def test_errors_speak_the_apis_words_and_the_command_lines_after():
    """The same library message names `wrt="ww"` to a Python caller and `--wrt ww` on the command line."""
    from spiread_cli.gradients import gradients as run_gradients
    from spiread_cli.program import Program
    with pytest.raises(SpireadError) as caught:
        load(LEAST_SQUARES).grad(wrt="ww")
    assert caught.value.diagnostic.message == '`wrt="ww"`: the program binds no `ww`'
    assert caught.value.notes == ("did you mean `w`?",
                                  "the output depends on the inputs `X`, `y`, `w`; it also binds `residual`, `loss`")
    with pytest.raises(SpireadError) as caught:
        load(LEAST_SQUARES).hessian(hvp={"w": [1, 2, 3]})
    assert caught.value.diagnostic.message.startswith('`hvp={"w": …}`: the direction is a vector of 3')
    with pytest.raises(SpireadError) as caught:  # from inside the interpreter
        compile("w = [1.0, 2]\nloss = (w * w).sum\ng = loss.backward(w)", name="<cell>").eval(g=1)
    assert caught.value.diagnostic.message == "binding `g`: `g` is bound to gradients, which the program computes"
    with pytest.raises(SpireadError) as caught:  # after a Python call, the library speaks the command line's again
        run_gradients(Program.open(str(LEAST_SQUARES)).run(), ["ww"])
    assert caught.value.diagnostic.message == "`--wrt ww`: the program binds no `ww`"
    done = spiread("grad", LEAST_SQUARES, "--wrt", "ww")
    assert done.returncode == 2 and "error: `--wrt ww`: the program binds no `ww`" in done.stderr


def test_println_lines_are_printed_before_the_result_and_before_an_error(capsys):
    cell = compile("x = [1, 2]\nprintln(x)\nprintln(\"then\")\ny = x.sum", name="<cell>")
    assert cell.eval()["y"] == 3.0
    assert capsys.readouterr().out == "[1. 2.]\nthen\n"
    with pytest.raises(SpireadError, match="inner sizes differ"):
        compile("x = [1, 2]\nprintln(x)\ny = x @@ [1, 2, 3]", name="<cell>").eval()
    assert capsys.readouterr().out == "[1. 2.]\n"


def test_a_scalar_is_a_float_from_every_call():
    """One rule: a scalar comes back as a float, anything else as an array, whichever call returns it."""
    cell = compile("w = 2\nv = [1, 3]\nloss = w * w * (v * v).sum", name="<cell>")
    assert type(cell.eval()["w"]) is float
    assert type(cell.grad()["w"]) is float and type(cell.grad()["v"]) is np.ndarray
    assert type(cell.grad(mode="forward")["w"]) is float
    blocks = cell.hessian().blocks
    assert type(blocks["w"]["w"]) is float and blocks["w"]["v"].shape == (2,) and blocks["v"]["v"].shape == (2, 2)
    assert type(cell.hessian(hvp={"w": 1.0}).products["w"]) is float
    assert type(cell.train(wrt=["w", "v"], steps=1, progress=False).values["w"]) is float


def test_zero_is_never_negative_in_results():
    """Forward mode reaches ∂/∂w₁ = 0 as −0.0 here; reverse mode as 0.0: both are 0.0."""
    cell = compile("w = [1, 0]\nloss = (w * w * -1).sum", name="<cell>")
    for mode in ("forward", "reverse"):
        gradient = cell.grad(mode=mode)["w"]
        assert gradient.tolist() == [-2.0, 0.0] and not np.signbit(gradient[1])
    assert spiread("grad", "-", "--mode", "forward", stdin="w = [1, 0]\nloss = (w * w * -1).sum\n").stdout.endswith(
        "[-2.  0.]\n")


@pytest.mark.parametrize("program, blocks", [
    ("y = x * (zeros(300) * -1)", "diagonal"),         # forward mode's batch stays Diagonal: its −0.0s added into +0.0
    ("W = zeros(300, 300) * -1\ny = W @@ x", "dense"),  # an array batch: W itself, −0.0 everywhere
])
def test_a_large_jacobian_given_in_place_has_no_negative_zero(program, blocks):
    """A Jacobian of 90,000 entries is handed over in place (python_args.OWNED_ENTRIES): without its −0.0
    pass where the forward sweep's batches were Diagonal (their dense form adds into +0.0 zeros), with it
    otherwise; either way, each call's blocks are 0.0 where they are zero, never −0.0."""
    prog = compile("x = zeros(300)\n" + program, name="<cell>")
    x = np.linspace(-1, 1, 300)
    for mode in ("forward", "reverse", "forward"):  # the last one kept
        jacobian = prog.jacobian(x=x, wrt="x", mode=mode)["x"]
        assert jacobian.shape == (300, 300) and not np.signbit(jacobian).any() and not jacobian.any()


@pytest.mark.parametrize("text, call", [
    ("1 + 2", "grad"), ("1 + 2", "check"), ("1 + 2", "hessian"),
    ("given jd: JetDim = JetDim(1)\nval y = Jet(10.0) + Jet.h[Double](0)\ny * y", "grad"),
    ("given jd: JetDim = JetDim(1)\nval y = Jet(10.0) + Jet.h[Double](0)\ny * y", "check"),
])
def test_nothing_to_differentiate_is_an_error(text, call):
    with pytest.raises(SpireadError) as caught:
        getattr(compile(text, name="<cell>"), call)()
    assert "nothing to differentiate: the output" in caught.value.diagnostic.message
    assert "computed from no input" in caught.value.diagnostic.message


def test_checking_only_values_the_output_does_not_depend_on_is_an_error():
    cell = compile("w = [1, 2]\nz = 3\nloss = (w * w).sum", name="<cell>")
    with pytest.raises(SpireadError) as caught:
        cell.check(wrt="z")
    assert caught.value.diagnostic.message == "nothing to differentiate: the output `loss` does not depend on `z`"
    with pytest.warns(SpireadWarning, match="does not depend on `z`"):
        assert cell.check(wrt=["w", "z"]).ok  # one value the output depends on is something to check
    with pytest.warns(SpireadWarning, match="does not depend on `z`"):
        assert cell.grad(wrt="z")["z"] == 0.0  # a gradient that is zero is still an answer


def test_nothing_returned_shares_memory():
    """Not with the caller's inputs, not with the program, not between calls."""
    prog = compile("a = [1, 2]\nb = a\nc = (b * 1).sum", name="<cell>")
    mine = np.array([5.0, 6.0])
    first = prog.eval(a=mine)
    assert not np.shares_memory(first["a"], mine) and not np.shares_memory(first["a"], first["b"])
    mine[:] = 0
    first["a"][:] = -1
    first["b"][:] = -1
    again = prog.eval()
    np.testing.assert_array_equal(again["a"], [1, 2])
    assert prog.eval(a=[5, 6])["c"] == 11.0
    g = prog.grad(wrt=["a", "b"])
    assert not np.shares_memory(g["a"], g["b"])
    trained = prog.train(wrt="a", steps=2, lr=0.5)
    trained.values["a"][:] = 100
    assert prog.eval()["c"] == 3.0


def test_a_program_is_parsed_once():
    """Repeated calls reuse the parsed module: parse is not called again."""
    import spiread_cli.syntax as syntax
    prog = load(LEAST_SQUARES)
    calls = []
    original = syntax.parse
    syntax.parse = lambda source: calls.append(source) or original(source)
    try:
        for k in range(3):
            assert prog.eval(w=[k, k])["loss"] == pytest.approx(reference_loss(np.array([k, k])))
    finally:
        syntax.parse = original
    assert calls == []


# ------------------------------------------------------------------ errors


def _golden_cases(command: str) -> list[Path]:
    return [p for p in sorted(BAD.glob("*.ad")) if p.read_bytes().split(b"\n")[0] == f"# args: {command}".encode()]


@pytest.mark.parametrize("path", _golden_cases("eval") + _golden_cases("grad"), ids=lambda p: p.stem)
def test_errors_read_as_the_command_line_prints_them(path, monkeypatch):
    """str(err) of every bad program in the corpus is the golden rendering
    the command line prints (tests/golden), whether the error comes when
    loading or when running, in the API's words where it names an option."""
    monkeypatch.chdir(BAD)
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "1e9")
    command = path.read_bytes().split(b"\n")[0].decode().split()[-1]
    with pytest.raises(SpireadError) as caught:
        getattr(load(path.name), command)()
    golden = (GOLDEN / f"{path.stem}.txt").read_text("utf-8")
    assert str(caught.value) + "\n" == golden.replace("`--of NAME`", '`of="NAME"`').replace(
        "`spiread jacobian`", "`Program.jacobian(...)`")
    assert caught.value.span == caught.value.diagnostic.span
    assert caught.value.notes == caught.value.diagnostic.notes


@pytest.mark.parametrize("path", _golden_cases("eval --strict") + _golden_cases("grad --strict")
                         + _golden_cases("grad --mode forward --strict"), ids=lambda p: p.stem)
def test_the_error_filter_is_strict(path, monkeypatch):
    """`simplefilter("error", SpireadWarning)` raises where `--strict` fails,
    with the same message and place."""
    monkeypatch.chdir(BAD)
    words = path.read_bytes().split(b"\n")[0].decode().split()[2:]
    golden = (GOLDEN / f"{path.stem}.txt").read_text("utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpireadWarning)
        with pytest.raises(SpireadWarning) as caught:
            prog = load(path.name)
            getattr(prog, words[0])(**({"mode": "forward"} if "forward" in words else {}))
    err = caught.value
    assert isinstance(err, SpireadError)
    assert golden.splitlines()[0] == f"{path.name}:{err.span.line}:{err.span.column}: error: {err.diagnostic.message}"


def test_error_text_matches_a_real_process(monkeypatch):
    monkeypatch.chdir(REPO)
    done = spiread("grad", "examples/least_squares.ad", "--set", "w=[1, 2, 3]")
    with pytest.raises(SpireadError) as caught:
        load("examples/least_squares.ad").grad(w=[1, 2, 3])
    assert done.returncode == caught.value.exit_code == 1
    assert done.stderr == str(caught.value) + "\n"


def test_a_compiled_cell_names_itself():
    with pytest.raises(SpireadError) as caught:
        compile("a = [1, 2]\nb = a @@ a @@ [[1]]", name="<cell 3>").eval()
    assert str(caught.value).startswith("<cell 3>:2:")


# ------------------------------------------------------------------ warnings


LOG_OF_ZERO = "x = [1, 0]\ny = x.log.sum"


def test_warnings_point_at_the_callers_line():
    prog = compile(LOG_OF_ZERO, name="<cell>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        prog.eval()
        prog.grad()
        prog.check()
        prog.dot(wrt="x")
    assert [w.category for w in caught] == [SpireadWarning] * len(caught) and len(caught) >= 4
    assert {w.filename for w in caught} == {__file__}
    assert str(caught[0].message) == ("<cell>:2:7: warning: `log` gave -inf at 1 of 2 entries, first at [1]; "
                                      "its input was 0 there\n 2 | y = x.log.sum\n   |       ^^^")


def test_the_default_filter_shows_a_warning_once_per_place():
    prog = compile(LOG_OF_ZERO, name="<cell>")
    with warnings.catch_warnings(record=True) as caught:
        warnings.resetwarnings()
        warnings.simplefilter("default")
        for _ in range(3):
            prog.eval()
    assert len(caught) == 1


def test_a_gradient_warning_and_its_error_form():
    prog = compile("a = 1\nb = 2\nc = a * 3", name="<cell>")
    with pytest.warns(SpireadWarning, match="does not depend on `b`"):
        assert prog.grad(wrt=["a", "b"]).gradients == {"a": 3.0, "b": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpireadWarning)
        with pytest.raises(SpireadError, match="does not depend on `b`"):
            prog.grad(wrt=["a", "b"])


# ------------------------------------------------------------------ check


def test_check_result():
    result = load(EXAMPLES / "two_layer.ad").check()
    assert isinstance(result, CheckResult) and result.ok and result.failures == []
    assert list(result.report.results) == ["W1", "b1", "W2", "b2"]
    assert result.table.splitlines()[0].startswith("gradient check of `loss` = ")
    assert result.table.splitlines()[-1] == "check passed: 4 value(s) agree"
    cli = spiread("check", "examples/two_layer.ad")
    assert [line.rstrip() for line in cli.stdout.rstrip("\n").splitlines()] == result.table.splitlines()


def test_a_failed_check_reports_like_the_command_line(tmp_program):
    path = tmp_program("x = [1, 0, -2]\ny = x.abs.sum\n")
    result = load(path).check()
    assert not result.ok
    cli = spiread("check", path)
    assert cli.returncode == 1
    assert cli.stderr == "".join(f + "\n" for f in result.failures)
    assert str(result) == result.table + "\n" + result.failures[0]


# ------------------------------------------------------------------ train


def test_training_follows_sgd_with_momentum_by_hand():
    w, velocity, losses = np.array([0.1, 0.2]), None, []
    for _ in range(30):
        losses.append(reference_loss(w))
        g = reference_gradient(w)
        velocity = g if velocity is None else 0.9 * velocity + g
        w = w - 0.05 * velocity
    trained = load(LEAST_SQUARES).train(wrt=["w"], steps=30, lr=0.05, momentum=0.9, progress=False)
    assert isinstance(trained, Training) and trained.status == "done" and trained.names == ["w"]
    np.testing.assert_allclose(trained.losses, losses, rtol=1e-10)
    np.testing.assert_allclose(trained.values["w"], w, rtol=1e-10)


def test_training_matches_the_command_line(tmp_path):
    saved = tmp_path / "w.npz"
    done = spiread("train", "examples/regression.ad", "--wrt", "weights", "--steps", "40",
                   "--optimizer", "adam", "--lr", "0.1", "--save", saved, "--format", "json")
    trained = load(EXAMPLES / "regression.ad").train(wrt="weights", steps=40, optimizer="adam", lr=0.1)
    import json
    assert json.loads(done.stdout)["loss"] == trained.losses
    np.testing.assert_array_equal(np.load(saved)["weights"], trained.values["weights"])


def test_training_that_diverges_raises_located_and_keeps_what_was_done():
    prog = load(LEAST_SQUARES)
    with pytest.raises(TrainingStopped) as caught:
        prog.train(wrt="w", steps=2000, lr=10.0)
    err = caught.value
    assert isinstance(err, SpireadError) and err.exit_code == 1
    assert err.diagnostic.message.startswith(f"training stopped at step {len(err.training.losses) + 1}: the loss is ")
    assert str(err).startswith(f"{LEAST_SQUARES}:{err.span.line}:{err.span.column}: error: training stopped")
    assert err.training.status == "stopped" and all(np.isfinite(err.training.losses))
    assert prog.eval(**err.training.values)["loss"] == err.training.losses[-1]


@pytest.mark.parametrize("options, message", [
    ({"optimizer": "lbfgs"}, '`optimizer="lbfgs"`: the optimizer is one of "sgd", "adam", "newton"'),
    ({"steps": -1}, "`steps=-1`: the number of steps is a whole number, at least 0"),
    ({"steps": 2.5}, "`steps=2.5`: the number of steps is a whole number, at least 0"),
    ({"lr": -1.0}, "`lr=-1`: the learning rate must be a positive number"),
    ({"momentum": 1}, "`momentum=1`: momentum must be at least 0 and below 1"),
    ({"optimizer": "adam", "momentum": 0.5}, "`momentum=0.5` is for sgd; adam has its own (beta1 = 0.9)"),
    ({"wrt": "residual"}, '`wrt="residual"`: `residual` is computed from other values, so training cannot set it'),
    ({"wrt": "ww"}, '`wrt="ww"`: the program binds no `ww`'),
])
def test_training_options_are_checked(options, message):
    with pytest.raises(SpireadError) as caught:
        load(LEAST_SQUARES).train(**{"wrt": "w", **options})
    assert caught.value.diagnostic.message == message and caught.value.exit_code == 2


def test_the_error_filter_makes_training_strict(tmp_program):
    """A warning in a later step (exp overflows where the loss does not look)
    stops training under the filter, as `train --strict` does."""
    path = tmp_program("w = [[1, 709]]\nloss = w.exp.select([0], [0]).sum - (w * [[0, 1]]).sum\n")
    prog = load(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert prog.train(wrt="w", steps=3, lr=1.0).status == "done"
    assert caught == []  # the question asked of the filters is never shown
    with warnings.catch_warnings():
        warnings.simplefilter("error", SpireadWarning)
        with pytest.raises(TrainingStopped) as caught_error:
            prog.train(wrt="w", steps=3, lr=1.0)
    cli = spiread("train", path, "--wrt", "w", "--steps", "3", "--lr", "1", "--strict")
    assert cli.returncode == caught_error.value.exit_code == 1
    assert "training stopped at step 2: `exp` gave inf" in caught_error.value.diagnostic.message
    assert cli.stderr.endswith(str(caught_error.value) + "\n")


def test_an_interrupt_stops_training_after_the_step_in_progress():
    """Ctrl-C (a notebook's stop button sends the same SIGINT) returns what
    was trained so far instead of losing it."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signals reach only the main thread")
    before = signal.getsignal(signal.SIGINT)

    def interrupt_once_training_listens():
        for _ in range(10_000):  # until train() has put its handler in place
            if signal.getsignal(signal.SIGINT) is not before:
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.001)

    interrupter = threading.Thread(target=interrupt_once_training_listens)
    interrupter.start()
    trained = load(LEAST_SQUARES).train(wrt="w", steps=10**8, lr=0.01, progress=False)
    interrupter.join()
    assert trained.status == "interrupted" and 0 < len(trained.losses) < 10**8
    assert trained.summary.startswith("interrupted: trained w")
    assert signal.getsignal(signal.SIGINT) is before


def test_progress_is_off_unless_asked_when_not_interactive(capfd):
    prog = load(LEAST_SQUARES)
    prog.train(wrt="w", steps=5)
    assert capfd.readouterr().err == ""
    prog.train(wrt="w", steps=5, progress=True)
    assert "5/5" in capfd.readouterr().err


# ------------------------------------------------------------------ dot


def test_the_graph_is_the_command_lines():
    graph = load(EXAMPLES / "two_layer.ad").dot(wrt=["W1"])
    assert isinstance(graph, Graph)
    assert graph.source == spiread("dot", "examples/two_layer.ad", "--wrt", "W1").stdout


@pytest.mark.skipif(not __import__("shutil").which("dot"), reason="Graphviz's dot is not installed")
def test_the_graph_draws_itself_as_svg():
    graph = load(LEAST_SQUARES).dot()
    svg = graph._repr_svg_()
    assert svg.startswith("<?xml") and "<svg" in svg and "residual" in svg
    assert graph._repr_markdown_() is None  # Jupyter would prefer markdown to SVG
    assert graph.pipe("png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_graphviz_the_graph_says_so(monkeypatch):
    import shutil
    graph = load(LEAST_SQUARES).dot()
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert graph._repr_svg_() is None
    text = graph._repr_markdown_()
    assert "Graphviz's `dot` is not installed" in text and graph.source in text
    with pytest.raises(SpireadError, match="not installed"):
        graph.pipe()


# ------------------------------------------------------------------ the package


def test_importing_the_package_loads_nothing_heavy():
    code = ("import sys, spiread_cli\n"
            "print(sorted(m for m in ('numpy', 'lark', 'rich', 'spiread_cli.program') if m in sys.modules))\n"
            "print(spiread_cli.load.__module__, 'compile' in dir(spiread_cli))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.stdout.splitlines() == ["[]", "spiread_cli.program True"], done.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        spiread_cli.nothing  # noqa: B018


def test_python_dash_m_is_the_command():
    done = subprocess.run([sys.executable, "-m", "spiread_cli", "grad", "examples/least_squares.ad"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert done.returncode == 0 and done.stdout == spiread("grad", "examples/least_squares.ad").stdout


def test_the_public_surface_is_typed():
    """Every public callable's hints resolve (no name missing at run time),
    every parameter and return is annotated, and py.typed ships."""
    from importlib.resources import files
    assert files("spiread_cli").joinpath("py.typed").is_file()
    callables = [load, compile, *(getattr(Program, name) for name in ("eval", "grad", "check", "train", "dot")),
                 Graph.pipe]
    for function in callables:
        hints = typing.get_type_hints(function)
        import inspect
        parameters = [p for p in inspect.signature(function).parameters if p != "self"]
        assert set(parameters) | {"return"} <= set(hints), function.__qualname__
    for cls in (Gradients, CheckResult, Training):
        assert typing.get_type_hints(cls)


# ------------------------------------------------------------------ a notebook


NOTEBOOK = [
    "import sys\nfrom spiread_cli import load, compile\nprog = load('examples/least_squares.ad')\nsys.executable",
    "prog.dot(wrt='w')",
    "cell = compile('x = [1, 0]\\ny = x.log.sum', name='<cell>')\nfor _ in range(3):\n    y = cell.eval()['y']\ny",
    "trained = prog.train(wrt='w', steps=50, lr=0.1)\ntrained.losses[-1]",
    "prog.eval(w=[1, 2, 3])",
]
NOTEBOOK.append(NOTEBOOK[2])  # the warning's cell, run again


def test_a_notebook_run_headless(monkeypatch):
    """The API in a real Jupyter kernel: the graph is drawn as SVG, a warning
    shows once per run of its cell, the progress bar is a live widget that ends at the last step,
    an error reads as on the command line."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code) for code in NOTEBOOK])
    nbclient.NotebookClient(notebook, timeout=60, kernel_name="python3", allow_errors=True,
                            resources={"metadata": {"path": str(REPO)}}).execute()
    start, graph, warned, trained, failed, warned_again = [cell.outputs for cell in notebook.cells]
    assert start[-1]["data"]["text/plain"] == repr(sys.executable)  # the kernel runs this interpreter
    if __import__("shutil").which("dot"):
        assert "<svg" in graph[0]["data"]["image/svg+xml"] and "text/markdown" not in graph[0]["data"]
    shown = "".join(o.get("text", "") for o in warned if o["output_type"] == "stream")
    assert shown.count("SpireadWarning: <cell>:2:7: warning: `log` gave -inf") == 1
    assert warned[-1]["data"]["text/plain"] == "-inf"
    # Each run of a cell is a new place to Python's filter, as for numpy's warnings: shown once again.
    assert "".join(o.get("text", "") for o in warned_again).count("SpireadWarning: <cell>:2:7") == 1
    # The bar, then the result: no empty output between (rich shows its console's empty buffer on stopping).
    assert [o["output_type"] for o in trained] == ["display_data", "execute_result"]
    bar = trained[0]["data"]["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert float(trained[-1]["data"]["text/plain"]) == pytest.approx(0.0166514, rel=1e-5)
    # The widget as saved shows the end of the run, not its last timed refresh.
    widgets = notebook.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    drawn = "".join(o["data"]["text/plain"] for o in widgets[bar]["state"]["outputs"])
    assert "step \x1b[32m50/50" in drawn and "loss 0.0166514" in drawn
    error = failed[-1]
    monkeypatch.chdir(REPO)
    assert error["ename"] == "SpireadError"
    with pytest.raises(SpireadError) as caught:
        load("examples/least_squares.ad").eval(w=[1, 2, 3])
    assert error["evalue"] == str(caught.value)


def test_paths_in_a_program_resolve_from_its_folder(tmp_path, monkeypatch):
    (tmp_path / "a.csv").write_text("1,2\n3,4\n")
    (tmp_path / "model.ad").write_text('a = load("a.csv")\ntotal = a.sum\n')
    monkeypatch.chdir(REPO)
    assert load(tmp_path / "model.ad").eval()["total"] == 10.0
    assert compile('a = load("a.csv")\ntotal = a.sum', base_dir=tmp_path).eval()["total"] == 10.0
    with pytest.raises(SpireadError) as caught:
        compile('a = load("a.csv")\ntotal = a.sum', name="<cell>").eval()
    assert str(caught.value).startswith("<cell>:1:10: error: cannot load `a.csv`: no such file")


def test_hessian_and_hvp_are_the_closed_form_of_least_squares():
    rng = np.random.default_rng(3)
    X, y, w = rng.standard_normal((6, 3)), rng.standard_normal(6), rng.standard_normal(3)
    prog = compile("X = zeros(6, 3)\ny = zeros(6)\nw = zeros(3)\nloss = ((X @@ w - y) ** 2).mean\n")
    h = prog.hessian(X=X, y=y, w=w, wrt=["w"])
    expected = 2 / 6 * X.T @ X
    np.testing.assert_allclose(h.blocks["w"]["w"], expected, rtol=1e-12)
    v = rng.standard_normal(3)
    np.testing.assert_allclose(prog.hessian(X=X, y=y, w=w, hvp={"w": v}).products["w"], expected @ v, rtol=1e-12)
    h.blocks["w"]["w"][:] = 0  # results are the caller's own
    np.testing.assert_allclose(prog.hessian(X=X, y=y, w=w, wrt=["w"]).blocks["w"]["w"], expected, rtol=1e-12)
