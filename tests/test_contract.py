"""/work/shared/LANGUAGE.md read line by line, end to end: what the rest of
the suite did not yet hold spiread to, through the real `spiread` binary
(few subprocesses, each checking many lines of the contract) and the
Python API."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import EXAMPLES, run, spiread, strict_json
from spiread_cli.diagnostics import SpireadError
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.results import SpireadWarning
from test_export import load_module
from test_fuzz import FUZZ

# spireAD's "Backward Mode" page (github.com/Quafadas/inspireRAD,
# site/docs/backward.md): examples/backward_mode.ad is its code block as
# published now; its older version ended at `loss.backward(...)` (§3: both
# are valid files as they stand).
PAGE_NOW = (EXAMPLES / "backward_mode.ad").read_text()
PAGE_BEFORE = PAGE_NOW[:PAGE_NOW.index("val gradient")] + "loss.backward((weights = weights))\n\n\n\n"


def page_loss_and_gradient(w: np.ndarray) -> tuple[float, np.ndarray]:
    """The page's loss and its gradient by hand: softmax rows' chosen entries."""
    data = np.array([[1.0, 2.0], [-1.0, -2.0], [4.0, 5.0]])
    p = np.exp(data @ w)
    p /= p.sum(1, keepdims=True)
    chosen = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    loss = -np.log((p * chosen).sum(1)).mean()
    return loss, data.T @ (p - chosen) / 3  # ∂/∂(data @ w) of −mean log softmax is (p − onehot)/rows


def test_the_backward_mode_page_as_published_now_and_before_read_from_stdin():
    w = np.array([[0.1, 0.05], [0.2, 0.1]])
    loss, gradient = page_loss_and_gradient(w)
    now = spiread("eval", "-", "--format", "json", stdin=PAGE_NOW)
    assert now.returncode == 0 and now.stderr == ""
    doc = strict_json(now.stdout)
    assert doc["file"] == "-" and doc["output"] == "loss"
    np.testing.assert_allclose(doc["values"]["loss"]["value"], loss, rtol=1e-14)
    np.testing.assert_allclose(doc["values"]["gradient.weights"]["value"], gradient, rtol=1e-12)
    np.testing.assert_allclose(doc["values"]["updated"]["value"], w - 0.1 * gradient, rtol=1e-12)
    assert doc["printed"] == ["[[0.1  0.05]\n [0.2  0.1 ]]", "[[-0.734299  0.734299]\n [-1.136785  1.136785]]",
                              "[[ 0.17343  -0.02343 ]\n [ 0.313679 -0.013679]]"]
    before = spiread("grad", "-", "--format", "json", stdin=PAGE_BEFORE)
    assert before.returncode == 0 and before.stderr == ""
    doc = strict_json(before.stdout)
    assert doc["output"] == "loss" and list(doc["gradients"]) == ["weights"]
    np.testing.assert_allclose(doc["gradients"]["weights"]["value"], gradient, rtol=1e-12)


# Every spelling of §2, §4, §6 and §7 in one program, each bound to a name
# and compared with numpy.
X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
P = np.abs(X) + 0.1
SPELLINGS = """
import whatever.you.like.*
given jd: JetDim = JetDim(1)
X = [[0.5, -1.0, 2.0],
     [1.5, 0.25, -0.75]]   // a comment
P = X.abs + 0.1            # another
one = 1.0.tej; two = 2.tej; half = .5; small = 1e-3; big = 1.5E+2
negsq = -two ** 2
prec = 2 * X @@ X.T
at = X @ X.T
vec = Array(1, 2) @@ X
sum_ = X.mapRowsToScalar(ReductionOps.Sum)
mean_ = X.mapRowsToScalar(ReductionOps.Mean)
prod_ = X.mapRowsToScalar(ReductionOps.Product)
sum2 = X.mapRowsToScalar(sum)
mean2 = X.mapRowsToScalar(mean)
prod2 = X.mapRowsToScalar(product)
l1 = P.normalizeRowsL1
l1b = P.normaliseRowsL1
l2 = X.normalizeRowsL2
l2b = X.normaliseRowsL2
pick = X(Array((0, 1), (1, 2)))
pick1 = X(Array((0, 1)))
pick2 = X[(0, 1), (1, 2)]
pick3 = X.select((0, 1), (1, 2))
pick4 = X.select([0, 1], [1, 2])
gather = X.arrange((0, 1), (1, 2))
gather2 = X.arrange([0, 1], [1, 2])
byCols = Matrix.fromColumns(Array(1, 2), [3, 4])
byRows = Matrix.fromRows(Array(1, 2), [3, 4])
tr = X.transpose()
tr2 = X.T
d = X.div(2)
t = X.tej
e = X.exp()
cmin = X.clampMin(0.3)
cmax = X.clampMax(0.3)
entry = X[1, 2]
ventry = X.row(1)[0]
sizes = Array(rows(X), cols(X), size(X))
rn = randn(2, 3, seed=5)
r0 = rand(2, 2)
oh = onehot([0, 2], 3)
f = full(1, 2, 7)
z = zeros(2) + ones(2) + arange(2)
eye(2)
"""


def test_every_spelling_of_the_contract_in_one_program():
    done = spiread("eval", "-", "--format", "json", stdin=SPELLINGS)
    assert done.returncode == 0, done.stderr
    got = {name: np.array(v["value"]) for name, v in strict_json(done.stdout)["values"].items()}
    chosen = np.zeros_like(X)
    chosen[0, 1], chosen[1, 2] = X[0, 1], X[1, 2]
    chosen1 = np.zeros_like(X)
    chosen1[0, 1] = X[0, 1]
    rng = np.random.default_rng
    expected = {
        "one": 1.0, "two": 2.0, "half": 0.5, "small": 1e-3, "big": 150.0, "negsq": -4.0,
        "prec": 2 * (X @ X.T), "at": X @ X.T, "vec": np.array([1, 2]) @ X,
        "sum_": X.sum(1), "mean_": X.mean(1), "prod_": X.prod(1), "sum2": X.sum(1), "mean2": X.mean(1),
        "prod2": X.prod(1), "l1": P / P.sum(1, keepdims=True), "l1b": P / P.sum(1, keepdims=True),
        "l2": X / np.linalg.norm(X, axis=1, keepdims=True), "l2b": X / np.linalg.norm(X, axis=1, keepdims=True),
        "pick": chosen, "pick1": chosen1, "pick2": chosen, "pick3": chosen, "pick4": chosen,
        "gather": np.array([X[0, 1], X[1, 2]]), "gather2": np.array([X[0, 1], X[1, 2]]),
        "byCols": np.array([[1.0, 3.0], [2.0, 4.0]]), "byRows": np.array([[1.0, 2.0], [3.0, 4.0]]),
        "tr": X.T, "tr2": X.T, "d": X / 2, "t": X, "e": np.exp(X),
        "cmin": np.maximum(X, 0.3), "cmax": np.minimum(X, 0.3), "entry": X[1, 2], "ventry": X[1, 0],
        "sizes": np.array([2.0, 3.0, 6.0]), "rn": rng(5).standard_normal((2, 3)), "r0": rng(0).random((2, 2)),
        "oh": np.eye(3)[[0, 2]], "f": np.full((1, 2), 7.0), "z": np.array([1.0, 2.0]), "eye(2)": np.eye(2),
    }
    for name, want in expected.items():
        assert got[name].shape == np.shape(want), name
        np.testing.assert_allclose(got[name], want, rtol=1e-14, err_msg=name)


def test_a_mixed_non_finite_result_is_counted_by_kind():
    # log of [1, 0, -1, 0]: -inf twice and nan once. It said "-inf at 3 of 4".
    [warning] = run("x = [1.0, 0.0, -1.0, 0.0]\ny = x.log").diagnostics.warnings
    assert warning.message == ("`log` gave -inf or nan at 3 of 4 entries (-inf at 2, nan at 1), first at [1]; "
                               "its input was 0 there")
    [warning] = run("x = [[-1.0, 2.0], [0.0, 1.0]]\ny = x.log").diagnostics.warnings
    assert "gave nan or -inf at 2 of 4 entries (nan at 1, -inf at 1), first at [0, 0]" in warning.message
    [warning] = run("x = [0.0, 2.0]\ny = 1 / x").diagnostics.warnings  # one kind: as before
    assert warning.message == "`/` gave inf at 1 of 2 entries, first at [0]; its input was 0 there"


def test_an_entrywise_op_warns_for_the_entries_it_makes_bad_beside_an_inf_it_passes_on():
    # §8: "an operation that turns finite inputs into inf or nan raises a
    # warning". `1 / t` meets a -inf (passed on quietly) and three finite zeros
    # (made inf: born here); `(y - 1).log` a -inf and a finite negative.
    # Whole-array checks missed both. Ops that only pass an inf on stay quiet.
    program = ("x = [1.0, 0.0]\nu = x.log\nt = hstack(u, [0.0, 0.0])\nr = 1 / t\n"
               "y = [0.0, 2.0].log\nz = (y - 1).log\nq = (r * 2 + z.sum).sum\n")
    done = spiread("eval", "-", "--format", "json", stdin=program)
    assert done.returncode == 0, done.stderr
    warnings = strict_json(done.stdout)["warnings"]
    assert [(w["line"], w["column"]) for w in warnings] == [(2, 7), (4, 7), (5, 16), (6, 13)]
    assert warnings[1]["message"] == "`/` gave inf at 3 of 4 entries, first at [0]; its input was 0 there"
    assert warnings[3]["message"] == "`log` gave nan at 1 of 2 entries, first at [1]; its input was -0.306853 there"
    strict = spiread("eval", "-", "--strict", stdin=program.replace("u = x.log", "u = [-1e308, 0] * 1e10"))
    assert strict.returncode == 1 and strict.stderr.startswith("<stdin>:2:17: error: `*` gave -inf at 1 of 2 entries")
    assert "Traceback" not in strict.stderr


def test_an_exported_hvp_takes_the_direction_alone_when_one_value_is_differentiated(tmp_path):
    source = tmp_path / "f.ad"
    source.write_text("w = [1.0, 2.0]\nc = 3.0\nloss = (w * w * w).sum * c\n")
    done = spiread("export", source, "--wrt", "w", "--hvp", "--to", "python", "-o", tmp_path / "one.py")
    assert done.returncode == 0, done.stderr
    both = spiread("export", source, "--wrt", "w,c", "--hvp", "--to", "python", "-o", tmp_path / "two.py")
    assert both.returncode == 0, both.stderr
    one, two = load_module(tmp_path / "one.py"), load_module(tmp_path / "two.py")
    hessian = np.diag(6 * 3.0 * np.array([1.0, 2.0]))  # ∂²(c Σ w³)/∂w² = 6 c w
    for direction in ([1.0, -1.0], np.array([1.0, -1.0]), {"w": [1.0, -1.0]}):
        np.testing.assert_allclose(one.hvp(direction)["w"], hessian @ [1.0, -1.0], rtol=1e-15)
    np.testing.assert_allclose(two.hvp({"w": [1.0, -1.0]})["c"], 3 * np.array([1.0, 4.0]) @ [1.0, -1.0])
    try:
        two.hvp([1.0, -1.0])
    except TypeError as refused:
        assert "dict of names to values" in str(refused) and "['c', 'w']" in str(refused)
    else:
        raise AssertionError("a bare direction for two values was taken")


def test_the_python_api_of_section_9_with_bindings_as_keywords():
    from spiread_cli import compile, load
    prog = compile("w = [0.0, 0.0]\nX = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]\nr = X @@ w - 1\nloss = (r ** 2).sum\n")
    X, w = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), np.array([0.5, -0.25])
    values = prog.eval(w=w)
    assert isinstance(values["loss"], float) and values["loss"] == ((X @ w - 1) ** 2).sum()
    np.testing.assert_allclose(prog.grad(w=w)["w"], 2 * X.T @ (X @ w - 1), rtol=1e-15)
    hessian = prog.hessian(w=w, wrt="w")
    assert isinstance(hessian["w"]["w"], np.ndarray)  # h["A"]["B"] as the JSON's "hessian": {A: {B: …}}
    np.testing.assert_allclose(hessian["w"]["w"], 2 * X.T @ X, rtol=1e-15)
    np.testing.assert_allclose(prog.hessian(w=w, hvp={"w": [1.0, 0.0]})["w"], 2 * X.T @ X[:, 0], rtol=1e-15)
    np.testing.assert_allclose(prog.hessian(w=w, wrt="w", sparse=True).toarray(), 2 * X.T @ X, rtol=1e-15)
    assert prog.check(w=w).ok
    np.testing.assert_array_equal(prog.jacobian(of="r", w=w, wrt="w")["w"], X)
    assert load(EXAMPLES / "least_squares.ad").grad().output == "loss"


def test_a_def_takes_its_arguments_by_name_as_keyword_arguments():
    # §4: `f(args)` with keyword arguments `k=v`; a def's were refused ("`f` has no argument `y`").
    program = "w = [1.0, 2.0]\ndef f(x: Double, y) = (x * y).sum - y.sum\nf(3.0, y = w) + f(y = w, x = 2.0)"
    r = run(program)
    assert r.tape.nodes[r.output].value == (3 * 3 - 3) + (2 * 3 - 3)
    np.testing.assert_array_equal(run_gradients(r, ["w"]).gradients["w"], [(3 - 1) + (2 - 1)] * 2)
    for call, says in (("f(2.0, x = w)", "`f` is given `x` twice: by position and by name"),
                       ("f(2.0, z = w)", "`f` has no argument `z`"), ("f(y = w)", "`f` takes 2 arguments, got 1")):
        try:
            run(program.replace("f(3.0, y = w) + f(y = w, x = 2.0)", call))
        except SpireadError as refused:
            assert refused.diagnostic.message == says
        else:
            raise AssertionError(call)


# `t` is -0 at x = 1 and +inf at x = 0 (log's -inf, passed on by the
# product): sqrt's derivative, 0.5 / sqrt(t), is then -inf at entry 1 from
# finite values, beside an entry where t was already inf.
BESIDE = "x = [0.0, 1.0]\nt = x.log * -1\ns = t.sqrt\nloss = s.sum\n"
SQRT_DERIVATIVE = "the derivative of `sqrt` gave -inf at 1 of 2 entries, first at [1]; its input was -0 there"


def test_a_derivative_born_beside_an_inf_it_passes_on_is_found_by_every_sweep():
    # One rule (tape_nodes.born_entries) for values and both sweeps' derivatives.
    # Reverse mode warned of nothing before: every op past log had an inf operand.
    from spiread_cli import compile
    done = spiread("grad", "-", "--format", "json", stdin=BESIDE)
    warnings = strict_json(done.stdout)["warnings"]
    assert [w["message"] for w in warnings][1:] == [SQRT_DERIVATIVE] and warnings[1]["line"] == 3
    prog = compile(BESIDE)
    with pytest.warns(SpireadWarning) as hessian:
        prog.hessian(wrt="x")  # the recorded sweep
    assert SQRT_DERIVATIVE in [str(w.message).splitlines()[0].split(": warning: ")[1] for w in hessian]
    with pytest.warns(SpireadWarning) as jacobian:
        prog.jacobian(of="s", wrt="x", mode="reverse")  # a batch of cotangents
    assert any("the derivative of `sqrt` gave -inf at 1 of 4 entries" in str(w.message) for w in jacobian)
    assert np.isfinite(prog.grad(x=[0.5, 0.25])["x"]).all()  # finite: kept, then replayed afresh
    with pytest.warns(SpireadWarning) as replayed:
        prog.grad(x=[0.0, 1.0])
    assert [str(w.message).splitlines()[0].split(": warning: ")[1] for w in replayed][1:] == [SQRT_DERIVATIVE]


def test_a_binding_not_finite_is_no_internal_error_where_a_batch_of_derivatives_is_not_finite():
    """The search for where a non-finite derivative was born (tape_nodes.Births)
    with a scalar binding of nan: a dense Hessian's tangents of it (a batch
    of k numbers, lined up now with the batch of matrices it makes) and a
    reverse Jacobian's cotangents summed to it (which cannot be lined up
    with its matrices: born_entries cannot tell) were a numpy ValueError;
    now each sweep gives its derivatives, the Jacobian's those of the other
    mode, with no warning (nothing was born from finite values)."""
    from spiread_cli import compile
    prog = compile("c = 0.5\nW = [[0.87, 0.55], [0.44, 0.04]]\nS = (W / c).square\nloss = S.sum\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        hessian = prog.hessian(c=np.nan, wrt=["c", "W"])
        by_mode = {mode: prog.jacobian(c=np.nan, of="S", wrt=["c", "W"], mode=mode) for mode in ("reverse", "forward")}
    assert all(np.isnan(hessian[a][b]).all() for a in ("c", "W") for b in ("c", "W"))  # each is 2 / c² times …
    for name in ("c", "W"):
        np.testing.assert_array_equal(by_mode["reverse"][name], by_mode["forward"][name])
    assert np.isnan(by_mode["reverse"]["c"]).all()


def test_matrix_from_rows_of_numbers_is_refused_as_from_columns_is():
    # §7: `Matrix.fromRows(r1, r2, …)` makes a matrix from vectors. Of numbers it made a vector
    # (the `[a, b]` it shares its op with), while `Matrix.fromColumns(1, 2)` was refused.
    for call, pieces in (("Matrix.fromRows(1, 2)", "rows"), ("Matrix.fromColumns(1, 2)", "columns")):
        done = spiread("eval", "-", stdin=f"v = {call}\n")
        assert done.returncode == 1 and done.stdout == ""
        assert done.stderr.startswith(f"<stdin>:1:12: error: `{call}`: {pieces} are vectors, but `1` is a scalar\n")
    np.testing.assert_array_equal(run("a = [1.0]\nv = Matrix.fromRows(a, [2.0])").tape.nodes[-1].value, [[1.0], [2.0]])


def test_mapping_a_number_says_how_to_call_the_function_on_it():
    for program, call in (("v = 3.0.map(x => x * 2)", "(x => x * 2)(3.0)"),
                          ("def sq(x) = x * x\nv = 3.0\nw = v.map(sq)", "sq(v)")):
        done = spiread("eval", "-", stdin=program)
        assert done.returncode == 1 and f"= note: call the function on it instead: `{call}`" in done.stderr
        assert spiread("eval", "-", stdin=program.rsplit("= ", 1)[0] + "= " + call).returncode == 0


# §9's Python front door fuzzed: any keyword argument, of any type, to any
# method: a result, or a SpireadError or TypeError naming the argument (never
# numpy's "truth value of an array is ambiguous" from a check that asked
# `if sparse:` first, nor pathlib's "has an empty name" for `out=""`).
ODD_VALUES = [None, 0, 1.5, -1, True, "w", "w,X", "", [1.0, 2.0], [[1.0, 2.0], [3.0, 4.0]], np.ones(2), np.ones((2, 2)),
              np.ones((2, 2, 2)), np.array([np.nan]), {"w": 1.0}, ("w",), float("inf"), 2 ** 70, 10 ** 400, b"w",
              [1.0, [2.0]],
              1j, object(), ".", "/"]
ARGUMENTS = ["wrt", "of", "mode", "hvp", "sparse", "pattern", "eps", "tol", "order", "steps", "lr", "optimizer",
             "momentum", "to", "out", "w", "X", "y", "nope"]


@pytest.fixture(scope="module")
def least_squares():
    from spiread_cli import load
    return load(EXAMPLES / "least_squares.ad")


@settings(FUZZ, max_examples=150)
@given(st.sampled_from(["eval", "grad", "hessian", "jacobian", "check", "train", "dot", "export"]),
       st.dictionaries(st.sampled_from(ARGUMENTS), st.sampled_from(ODD_VALUES), max_size=3))
def test_any_keyword_argument_of_any_type_is_a_result_or_a_named_refusal(least_squares, tmp_path_factory, method,
                                                                          arguments):
    if method == "export":
        arguments.setdefault("to", "python")
        arguments.setdefault("out", str(tmp_path_factory.mktemp("export") / "m.py"))
    if method == "train":
        arguments.setdefault("steps", 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(least_squares, method)(**arguments)
    except SpireadError as refused:
        assert refused.diagnostic.message and "internal error" not in refused.diagnostic.message
    except TypeError as refused:  # a Python type error names the argument, as Python's own do
        assert any(f"{name}=" in str(refused) or f"'{name}'" in str(refused) for name in ARGUMENTS), refused


@pytest.mark.parametrize("method, arguments, refusal", [
    ("grad", {"mode": np.ones(2)}, 'mode=array([1., 1.]): the mode is "reverse" or "forward", not ndarray'),
    ("jacobian", {"of": "residual", "mode": 3}, 'mode=3: the mode is "forward" or "reverse", not int'),
    ("check", {"sparse": np.ones(2)}, "sparse=array([1., 1.]): True or False, not ndarray"),
    ("hessian", {"pattern": np.zeros(2)}, "pattern=array([0., 0.]): True or False, not ndarray"),
    ("train", {"wrt": "w", "optimizer": ["sgd"]}, "optimizer=['sgd']: the optimizer is one of \"sgd\", \"adam\", "
                                                 "\"newton\", not list"),
    ("export", {"to": np.ones(2), "out": "m.py"}, 'to=array([1., 1.]): the target is "python" or "onnx", not ndarray'),
    ("train", {"wrt": "w", "momentum": None}, "momentum=None: a number, not NoneType"),
    ("train", {"wrt": "w", "steps": None}, "steps=None: a number, not NoneType"),
    ("check", {"eps": 10 ** 400}, "spiread: error: `eps=100000000000000000...0000000000000000000`: the number is "
                                  "beyond the range spiread can hold (a float64 reaches about ±1.8e308)"),
    ("export", {"to": "python", "out": ""}, 'spiread: error: `out=""`: the path to write names a file, e.g. `out="model.py"`'),
    ("export", {"to": "onnx", "out": "."}, 'spiread: error: `out="."`: the path to write names a file, e.g. '
                                           '`out="model.onnx"`'),
])
def test_an_argument_of_the_wrong_kind_is_refused_by_name(least_squares, method, arguments, refusal):
    # Each raised numpy's ValueError ("the truth value of an array … is ambiguous"), pathlib's ("has an empty
    # name"), a bare TypeError ("must be real number, not NoneType") or OverflowError, or (steps=None) said
    # `steps="NAME"`; check(eps=2**70) raised numpy's "ufunc 'isfinite' not supported".
    with pytest.raises((SpireadError, TypeError)) as refused:
        getattr(least_squares, method)(**arguments)
    assert str(refused.value) == refusal


@pytest.mark.parametrize("out", ["", ".", "/"])
def test_export_to_a_path_with_no_file_name_is_a_usage_error(out):
    # `-o ""` and `-o .` printed a Python traceback (exit 1): pathlib's "has an empty name".
    done = spiread("export", EXAMPLES / "least_squares.ad", "--to", "python", "-o", out)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr == f"spiread: error: `-o {out or '.'}`: it is a directory\n"


def test_a_python_int_beyond_int64_is_a_number(least_squares):
    assert least_squares.check(eps=2 ** 70).ok  # a quadratic: central differences are exact at any step
