"""LANGUAGE.md read again by a stranger, line by line: the statements the
rest of the suite did not yet hold spiread to, through the real `spiread`
binary (few processes, many lines of the contract each)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import spiread

# `sqrt`'s derivative is inf at 0: a warning in every command that
# differentiates, an error under --strict.
SQRT_AT_ZERO = "w = [1.0, 0.0]\nr = w.sqrt * 2\nloss = r.sum\n"


@pytest.mark.parametrize("args, written", [
    (["jacobian", "--of", "r", "--wrt", "w", "--out", "J.npz"], "J.npz"),
    (["jacobian", "--of", "r", "--wrt", "w", "--sparse", "--out", "J.npz"], "J.npz"),
    (["hessian", "--wrt", "w", "--sparse", "--out", "H.npz"], "H.npz"),
    (["export", "--to", "python", "-o", "m.py"], "m.py"),
    (["export", "--to", "onnx", "-o", "m.onnx"], "m.onnx"),
])
def test_a_strict_error_leaves_no_output_file(tmp_path, args, written):
    # §8: "Output files (--save, --out) are written whole or not at all" and a
    # --strict warning is an error (exit 1). export wrote its module, then
    # failed on the warning its gradient had raised.
    (tmp_path / "f.ad").write_text(SQRT_AT_ZERO)
    done = spiread(args[0], "f.ad", *args[1:], "--strict", cwd=tmp_path)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("f.ad:2:7: error: the derivative of `sqrt` gave inf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.ad"]
    relaxed = spiread(args[0], "f.ad", *args[1:], cwd=tmp_path)  # without --strict: a warning, and the file
    assert relaxed.returncode == 0 and "f.ad:2:7: warning: the derivative of `sqrt` gave inf" in relaxed.stderr
    assert (tmp_path / written).is_file()


def test_an_exported_module_takes_dask_arrays_as_it_takes_numpys(tmp_path):
    # §10: the Python module is array API code for "numpy, PyTorch, CuPy, Dask";
    # numpy and PyTorch are tried op by op in test_export, Dask was never given.
    da = pytest.importorskip("dask.array")
    from test_export import load_module
    program = ("X = [[1.0, 2.0, -1.0], [0.5, -0.3, 2.0]]\nw = [0.3, -0.2, 0.1]\nb = 0.25\n"
               "z = X @@ w + b\np = (X * w).softmaxRows\n"
               "loss = z.logSumExp + (p[:, 1:] * X[::-1, ::2]).sum + where(z > 0, z, z * 0.1).sum "
               "+ maximum(w, 0.0).square.sum + (X.T @@ X @@ w).tanh.mean\n")
    (tmp_path / "f.ad").write_text(program)
    done = spiread("export", "f.ad", "--wrt", "w,b", "--hvp", "--to", "python", "-o", "f.py", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    module = load_module(tmp_path / "f.py")
    inputs = module.inputs()
    direction = {"w": np.array([1.0, -0.5, 2.0]), "b": np.array(0.5)}
    value, gradients = module.value_and_grad(**inputs)
    products = module.hvp(direction, **inputs)
    lazy = {name: da.from_array(np.asarray(v)) for name, v in inputs.items()}
    lazy_value, lazy_gradients = module.value_and_grad(**lazy)
    lazy_products = module.hvp({name: da.from_array(v) for name, v in direction.items()}, **lazy)
    assert isinstance(lazy_value, da.Array) and isinstance(lazy_gradients["w"], da.Array)
    np.testing.assert_allclose(np.asarray(module.value(**lazy)), value, rtol=1e-14)
    np.testing.assert_allclose(np.asarray(lazy_value), value, rtol=1e-14)
    for name in ("w", "b"):
        np.testing.assert_allclose(np.asarray(lazy_gradients[name]), gradients[name], rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(np.asarray(lazy_products[name]), products[name], rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("content, says", [
    ("1,2\n3\n", "line 2 has 1 column, but line 1 has 2"),  # said "1 columns"
    ("1\n2,3\n", "line 2 has 2 columns, but line 1 has 1"),
    ("1,2\n3,x\n", "line 2, column 2: `x` is not a number"),
])
def test_a_table_that_is_not_one_says_where_in_the_words_of_its_counts(tmp_path, content, says):
    (tmp_path / "t.csv").write_text(content)
    (tmp_path / "f.ad").write_text('X = load("t.csv")\n')
    done = spiread("eval", "f.ad", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"f.ad:1:10: error: cannot load `t.csv`: {says}\n 1 | X = load(\"t.csv\")\n")


@pytest.mark.parametrize("call, note", [
    ("x(0, 1)", "for the entry in row 0, column 1, write `x[0, 1]`; as a selection, `x[(0, 1)]`, zeros elsewhere"),
    ("x.select(1, -1)", "for the entry in row 1, column -1, write `x[1, -1]`; as a selection, `x[(1, -1)]`, zeros "
                        "elsewhere"),
    ("x.arrange(1, 0)", "for the entry in row 1, column 0, write `x[1, 0]`; as a selection, `x.arrange((1, 0))`"),
    # No spelling that would itself be an error (rev-b): outside the 2 × 2 matrix, or not whole numbers.
    ("x(5, 7)", None), ("x(0, -3)", None), ("x(0.5, 1)", None), ("x.select(1, 0 / 0)", None),
])
def test_a_selection_by_two_numbers_shows_the_entry_and_the_selection_it_may_mean(call, note):
    # §6: `x.select(rows, cols)` takes vectors; vecxt's `m(0, 1)` (one entry) pasted from Scala was told only
    # "the row positions must be a vector of positions, but `0` is a scalar".
    from spiread_cli import compile
    from spiread_cli.diagnostics import SpireadError
    program = "x = [[1.0, 2.0], [3.0, 4.0]]\ny = "
    with pytest.raises(SpireadError) as refused:
        compile(program + call).eval()
    row, column = call[call.index("(") + 1:-1].split(", ")
    assert refused.value.diagnostic.message.endswith(f"but `{row}` and `{column}` are numbers")
    assert refused.value.diagnostic.notes == ((note,) if note else ())
    for spelling in (note or "").split("`")[1::2]:
        assert compile(program + spelling).eval()["y"] is not None


def test_an_error_in_a_function_body_shows_the_calls_it_was_met_in():
    # §8: an error points at FILE:LINE:COL. In a `def`'s body, inlined at several calls, it pointed at the body
    # alone: which call, with which shapes, was left to guess. Each call it was met in is shown beside it.
    from spiread_cli import compile
    from spiread_cli.diagnostics import SpireadError
    program = ("def g(a) = a @@ [1.0, 2.0]\n"
               "def f(a) = g(a * 2) + 1\n"
               "z = f([1.0, 2.0]) + f([1.0, 2.0, 3.0])\n")
    with pytest.raises(SpireadError) as refused:
        compile(program).eval()
    assert str(refused.value).splitlines() == [
        "<string>:1:14: error: `a @@ [1.0, 2.0]`: inner sizes differ, `a` is a vector of 3, `[1.0, 2.0]` is a vector "
        "of 2",
        " 1 | def g(a) = a @@ [1.0, 2.0]",
        "   |              ^^",
        " 2 | def f(a) = g(a * 2) + 1",
        "   |            -------- in this call",
        " 3 | z = f([1.0, 2.0]) + f([1.0, 2.0, 3.0])",
        "   |                     ------------------ in this call"]
    # An error in a call's own arguments, or in a lambda written inside the call, is in the call: nothing beside it.
    for text in ("def f(a) = a\nz = f([1.0, 2.0, 3.0] + [1.0, 2.0])", "z = [1.0, 2.0].map(x => x @@ [1.0])"):
        with pytest.raises(SpireadError) as refused:
            compile(text).eval()
        assert refused.value.diagnostic.related == ()


@pytest.mark.parametrize("task", ["eval", "grad", "hessian"])
def test_a_warning_in_a_function_body_shows_the_calls_it_was_met_in_as_an_error_does(task):
    # §8: "Warnings the same" as errors, which show each call of a `def`'s body they were met in. A warning
    # pointed at the body alone, so which call made the inf was left to guess: each warning about what a call
    # records (its values, at recording; its derivatives, in the sweeps; a slice's bound) shows that call's chain.
    import warnings
    from spiread_cli import compile
    program = ("def g(a) = a.log + a[0:3].sum\n"
               "def f(a) = g(a * 2.0) + 1.0\n"
               "x = [1.0, 2.0, 3.0]\n"
               "loss = f(x).sum + f(x * [1.0, 0.0, 3.0]).sum\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        getattr(compile(program), task)(wrt=["x"]) if task != "eval" else compile(program).eval()
    chain = [" 1 | def g(a) = a.log + a[0:3].sum",
             "   |              ^^^",
             " 2 | def f(a) = g(a * 2.0) + 1.0",
             "   |            ---------- in this call",
             " 4 | loss = f(x).sum + f(x * [1.0, 0.0, 3.0]).sum",
             "   |                   ---------------------- in this call"]
    assert [str(w.message).splitlines()[1:] for w in caught] == [chain] * (1 + (task != "eval"))
    assert "the derivative of `log` gave inf" in str(caught[-1].message) or task == "eval"
    caught.clear()
    with warnings.catch_warnings(record=True) as caught:  # a slice's bound past the end, in the second call only
        warnings.simplefilter("always")
        compile("def h(a) = a[0:3]\nz = h([1.0, 2.0, 3.0]) + h([1.0, 2.0])[0]\n").eval()
    assert [str(w.message).splitlines()[-3:-1] for w in caught] == [
        [" 2 | z = h([1.0, 2.0, 3.0]) + h([1.0, 2.0])[0]", "   |                          ------------- in this call"]]


def test_a_warning_met_in_two_calls_is_two_json_entries_each_naming_its_call(tmp_path):
    # §8's W is line, column and message: a body's place met in two calls gave two entries alike, so a script
    # could not tell them apart (or took them for one repeated); each message names its calls, outermost first.
    import json
    (tmp_path / "f.ad").write_text("def g(a) = a.log\ndef f(a) = g(a) + 1.0\n"
                                   "y = f([0.0, 1.0]).sum + g([2.0, 0.0]).sum + [3.0].log.sum\n")
    done = spiread("eval", "f.ad", "--format", "json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = "`log` gave -inf at 1 of 2 entries, first at [{}]; its input was 0 there"
    assert json.loads(done.stdout)["warnings"] == [
        {"line": 1, "column": 14, "message": said.format(0) + " (in the calls at 3:5, 2:12)"},
        {"line": 1, "column": 14, "message": said.format(1) + " (in the call at 3:25)"}]


def test_a_call_inside_another_call_on_one_line_is_underlined_on_a_row_of_its_own():
    # Both calls are shown beside an error in a lambda's `def`, each with its underline: the renderer drew one
    # mark where they overlap and left the inner call's label under nothing.
    from spiread_cli import compile
    from spiread_cli.diagnostics import SpireadError
    with pytest.raises(SpireadError) as refused:
        compile("def f(v) = v @@ [1.0, 2.0]\nx = [[1.0, 0.0, 3.0]]\nloss = x.map(r => f(r)).sum\n").eval()
    assert str(refused.value).splitlines()[-3:] == [
        " 3 | loss = x.map(r => f(r)).sum",
        "   |        ---------------- in this call",
        "   |                   ---- in this call"]


@pytest.mark.parametrize("program, suggested", [
    ("w = [1.0, 2.0]\nloss = w * w\n", "total = loss.sum"),  # said `loss = loss.sum`
    ("w = [1.0, 2.0]\ny = w * w\n", "loss = y.sum"),
    ("w = [1.0, 2.0]\nloss = w * w\ntotal = 2.0\n", "loss2 = loss.sum"),
    ("def loss(a: Double) = a * 1.0\nw = [1.0, 2.0]\ny = w * loss(w)\n", "total = y.sum"),  # a def binds its name
])
def test_the_reduction_grad_suggests_for_a_vector_output_runs_as_written(program, suggested):
    # §8: grad of a non-scalar "is an error that says how to reduce it"; §3: a second binding is an error.
    from spiread_cli import compile
    from spiread_cli.diagnostics import SpireadError
    output = suggested.split(" = ")[1][:-len(".sum")]
    with pytest.raises(SpireadError) as refused:
        compile(program).grad(of=output)
    assert f"reduce it, e.g. `{suggested}` or `.mean`" in refused.value.diagnostic.notes[0]
    assert compile(program + suggested + "\n").grad(of=suggested.split(" = ")[0])["w"].tolist() == [2.0, 4.0]
