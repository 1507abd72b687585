"""max and min at their ties, the stable log-sums at ±1000, comparisons and
`where`, the remainder's jumps and the inverse trigonometric functions'
domains: the conventions a user of PyTorch expects, as expected values read
off torch 2.13 once and written here (ties cannot be checked by finite
differences, which see one side; the smooth interior is covered by
tests/test_ops.py and the random programs of tests/programs.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from conftest import gradients, lit, program_fd, run, spiread, value
from spiread_cli import compile, second
from spiread_cli.check import check_gradients
from spiread_cli.diagnostics import SpireadError

# Matrices with ties along rows and over all entries (X), and along columns (Y).
X = [[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [5.0, -1.0, 5.0]]
Y = [[1.0, 0.0, 2.0], [1.0, 4.0, 2.0], [3.0, 4.0, -1.0]]
W = [1.0, 2.0, 3.0]


# (expression of X, its gradient by torch.amax / torch.amin along the same axis)
TIES = [
    ("x.max * 2", [[0, 0, 0], [0, 0, 0], [1, 0, 1]]),
    ("x.min * 2", [[0, 0, 0], [0, 0, 0], [0, 2, 0]]),
    ("(x.rowMax * w).sum", [[0, 0.5, 0.5], [1, 1, 0], [1.5, 0, 1.5]]),
    ("(x.mapRowsToScalar(max) * w).sum", [[0, 0.5, 0.5], [1, 1, 0], [1.5, 0, 1.5]]),
    ("(x.colMax * w).sum", [[0, 2, 0], [0, 0, 0], [1, 0, 3]]),
    ("(x.rowMin * w).sum", [[1, 0, 0], [0, 0, 2], [0, 3, 0]]),
    ("(x.mapRowsToScalar(ReductionOps.Min) * w).sum", [[1, 0, 0], [0, 0, 2], [0, 3, 0]]),
    ("(x.colMin * w).sum", [[1, 0, 0], [0, 0, 3], [0, 2, 0]]),
    ("(y.colMax * w).sum", [[0, 0, 1.5], [0, 1, 1.5], [1, 1, 0]]),
    ("(y.colMin * w).sum", [[0.5, 2, 0], [0.5, 0, 0], [0, 0, 3]]),
]


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("expr, expected", TIES, ids=[t[0] for t in TIES])
def test_max_and_min_split_ties_as_pytorch(expr, expected, mode):
    name = expr.lstrip("(")[0]
    got = gradients(f"x = {X}\ny = {Y}\nw = {W}\nloss = {expr}", [name], mode=mode).gradients[name]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_maximum_and_minimum_split_a_tie_half_and_half_as_pytorch(mode):
    """torch.maximum(a, b) and torch.minimum(a, b), b broadcast along rows."""
    setup = "a = [[1, 2], [3, 3]]\nb = [2, 3]\nw = [[1, 2], [4, 5]]"
    for function, da, db in (("maximum", [[0, 0], [4, 2.5]], [1, 4.5]), ("minimum", [[1, 2], [0, 2.5]], [4, 2.5])):
        got = gradients(f"{setup}\nloss = ({function}(a, b) * w).sum", ["a", "b"], mode=mode).gradients
        np.testing.assert_array_equal(got["a"], da)
        np.testing.assert_array_equal(got["b"], db)


def test_second_derivatives_through_ties_are_zero():
    """The subgradient is piecewise constant: its derivative is 0, at ties too (as in PyTorch)."""
    r = run(f"x = {X}\ny = [1.0, 3.0, 0.5]\nloss = x.max + x.rowMin.sum + maximum(x, y).sum + x.colMax.sum")
    h = second.hessian(r, ["x", "y"]).blocks
    for a in ("x", "y"):
        for b in ("x", "y"):
            np.testing.assert_array_equal(h[a][b], 0.0)


def test_check_names_the_ties_of_max_min_maximum_and_the_jumps_of_remainder_as_kinks():
    for expr, label in (("x.max", "max"), ("x.rowMax.sum", "rowMax"), ("y.colMin.sum", "colMin"),
                        ("maximum(x, 3).sum", "maximum"), ("(x % 2.5).sum", "%")):
        text = f"x = {X}\ny = {Y}\nloss = {expr}\n"
        report = check_gradients(run(text))
        assert not report.ok, expr
        notes = [note for failure in report.failures(run(text)) for note in failure.notes]
        assert any(note.startswith(f"`{label}` (line 3") and "no derivative" in note for note in notes), (expr, notes)


def test_check_passes_off_the_ties():
    text = "x = [[0.5, 2.0], [-1.0, 0.25]]\ny = [1.5, 0.1]\n" \
           "loss = (where(x >= y, x * y, x.exp) + maximum(x, y + 0.1) + (x * 3) % 1.75).sum + x.rowLogSumExp.sum\n"
    assert check_gradients(run(text)).ok


# -------------------------------------------------------- stable log-sums

BIG = "[-1000.0, -1.0, 0.0, 1000.0]"
# (expression of x, its value, gradient and Hessian's diagonal by torch: softplus,
# logsigmoid, logsumexp; every one finite)
LOG_SUMS = [
    ("x.softplus", [0.0, 0.31326168751822286, 0.6931471805599453, 1000.0], [0.0, 0.2689414213699951, 0.5, 1.0],
     [0.0, 0.19661193324148185, 0.25, 0.0]),
    ("x.logSigmoid", [-1000.0, -1.3132616875182228, -0.6931471805599453, 0.0], [1.0, 0.7310585786300049, 0.5, 0.0],
     [0.0, -0.19661193324148185, -0.25, 0.0]),
]


@pytest.mark.parametrize("expr, values, grad, curvature", LOG_SUMS, ids=[c[0] for c in LOG_SUMS])
def test_softplus_and_log_sigmoid_are_finite_at_a_thousand(expr, values, grad, curvature):
    r = run(f"x = {BIG}\ny = {expr}\nloss = y.sum")
    np.testing.assert_allclose(r.node("y").value, values, rtol=1e-15)
    assert r.diagnostics.warnings == []
    for mode in ("reverse", "forward"):
        np.testing.assert_allclose(gradients(f"x = {BIG}\nloss = {expr}.sum", ["x"], mode=mode).gradients["x"], grad,
                                   rtol=1e-15)
    np.testing.assert_allclose(np.diag(second.hessian(r, ["x"]).blocks["x"]["x"]), curvature, rtol=1e-14, atol=1e-300)


def test_log_sum_exp_over_all_rows_and_columns_is_finite_at_a_thousand():
    big = np.array([[1000.0, -1000.0, 0.0], [999.0, 1000.0, -1000.0]])
    r = run(f"x = {lit(big)}\na = x.logSumExp\nb = x.rowLogSumExp\nc = x.colLogSumExp\nloss = a + b.sum + c.sum")
    np.testing.assert_allclose(r.node("a").value, 1000.0 + np.log(2 + np.exp(-1.0)), rtol=1e-15)
    np.testing.assert_allclose(r.node("b").value, [1000.0, 1000.0 + np.log1p(np.exp(-1.0))], rtol=1e-15)
    np.testing.assert_allclose(r.node("c").value, [1000.0 + np.log1p(np.exp(-1.0)), 1000.0, 0.0], rtol=1e-15)
    assert r.diagnostics.warnings == []
    g = gradients(f"x = {lit(big)}\nloss = x.logSumExp", ["x"]).gradients["x"]
    e = np.exp(big - big.max())
    np.testing.assert_allclose(g, e / e.sum(), rtol=1e-12)  # the softmax of all entries
    h = second.hessian(run(f"x = {lit(big)}\nloss = x.rowLogSumExp.sum + x.colLogSumExp.sum"), ["x"]).blocks["x"]["x"]
    assert np.isfinite(h).all()
    np.testing.assert_allclose(h.reshape(6, 6), h.reshape(6, 6).T, atol=1e-15)


def test_logaddexp_is_finite_at_a_thousand_as_pytorch():
    text = "a = [1000.0, -1000.0, 0.0]\nb = [999.0, -1000.0, 1000.0]\ny = logaddexp(a, b)\nloss = y.sum"
    np.testing.assert_allclose(run(text).node("y").value, [1000.3132616875182, -999.3068528194401, 1000.0], rtol=1e-15)
    for mode in ("reverse", "forward"):
        g = gradients(text, ["a", "b"], mode=mode).gradients
        np.testing.assert_allclose(g["a"], [0.7310585786300049, 0.5, 0.0], rtol=1e-15)
        np.testing.assert_allclose(g["b"], [0.2689414213699951, 0.5, 1.0], rtol=1e-15)
    assert np.isfinite(second.hessian(run(text), ["a", "b"]).blocks["a"]["b"]).all()


# ------------------------------------------------------ masks and choice


@pytest.mark.parametrize("text, expected", [
    ("x + 1 > y", [0.0, 1.0, 1.0]),            # the sum is compared
    ("x > y - 1", [0.0, 1.0, 1.0]),
    ("x * 2 >= y * 2", [0.0, 1.0, 1.0]),
    ("-x < 0", [0.0, 1.0, 1.0]),               # unary minus binds tighter
    ("x ** 2 == 1", [1.0, 0.0, 0.0]),
    ("x != x.T", [0.0, 0.0, 0.0]),
    ("x % 2 <= 0.5", [0.0, 1.0, 0.0]),
    ("(x > 0) * (x < 2)", [0.0, 0.0, 0.0]),
    ("(x > 0) + (x < 2) * 2", [2.0, 1.0, 1.0]),
])
def test_comparisons_bind_looser_than_arithmetic_as_in_numpy(text, expected):
    x, y = np.array([-1.0, 2.0, 3.0]), np.array([0.5, 2.0, 2.5])
    np.testing.assert_array_equal(value(f"x = {lit(x)}\ny = {lit(y)}\n{text}"), expected)
    assert eval(text, {}, {"x": x, "y": y, "__builtins__": {}}).astype(float).tolist() == expected  # numpy's reading


def test_comparisons_broadcast_and_have_no_gradient():
    text = "a = [[1.0, 2.0], [3.0, 4.0]]\nb = [2.0, 3.0]\nloss = ((a > b) * a + (a == b) + (b != a.T)).sum"
    for mode in ("reverse", "forward"):
        g = gradients(text, ["a", "b"], mode=mode).gradients
        np.testing.assert_array_equal(g["a"], [[0, 0], [1, 1]])  # only through the factor `* a`
        np.testing.assert_array_equal(g["b"], [0, 0])


def test_comparisons_do_not_chain():
    with pytest.raises(SpireadError) as err:
        run("x = [1, 2]\ny = 0 < x < 3")
    d = err.value.diagnostic
    assert (d.span.line, d.span.column) == (2, 11)
    assert any("(a < b) * (b < c)" in note for note in d.notes)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_where_sends_the_gradient_to_the_chosen_operand_and_broadcasts(mode):
    text = "c = [[1.0, 0.0, -2.0], [0.0, 0.0, 5.0]]\na = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]\nb = 0.5\n" \
           "w = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]\nloss = (where(c, a * a, b) * w).sum"
    r = run(text)
    np.testing.assert_array_equal(r.tape.nodes[r.output].value, (np.where([[1, 0, 1], [0, 0, 1]], [[1, 4, 9], [16, 25, 36]],
                                                                          0.5) * [[1, 2, 3], [4, 5, 6]]).sum())
    g = gradients(text, ["c", "a", "b"], mode=mode).gradients
    np.testing.assert_array_equal(g["c"], np.zeros((2, 3)))
    np.testing.assert_array_equal(g["a"], [[2.0, 0, 18.0], [0, 0, 72.0]])
    assert g["b"] == 4.0 + 5.0 + 2.0


def test_where_keeps_an_infinite_gradient_of_the_other_branch_out():
    """As torch.where: the branch not chosen gets 0, even where its own
    derivative is infinite (sqrt at 0)."""
    g = gradients("x = [0.0, 4.0]\nloss = where(x > 0, x.sqrt, 0).sum", ["x"]).gradients["x"]
    np.testing.assert_array_equal(g, [0.0, 0.25])


def test_shape_errors_of_the_new_words_say_what_was_expected():
    cases = [("maximum([1, 2], [1, 2, 3])", "shapes do not broadcast", "vector of 2", "vector of 3"),
             ("where([1, 0], [[1, 2, 3]], 0)", "shapes do not broadcast", "vector of 2", "1×3"),
             ("[1, 2, 3].rowMax", "a row reduction needs a matrix", "vector of 3", ""),
             ("[1, 2, 3].colLogSumExp", "a column reduction needs a matrix", "vector of 3", ""),
             ("[1, 2] > [1, 2, 3]", "shapes do not broadcast", "vector of 2", "vector of 3")]
    for text, *says in cases:
        with pytest.raises(SpireadError) as err:
            run(f"x = 1\ny = {text}")
        d = err.value.diagnostic
        assert d.span.line == 2, text
        for phrase in says:
            assert phrase in d.message, (text, d.message)


# -------------------------------------------------- more elementwise


@pytest.mark.parametrize("expr, bad", [("asin", "[0.5, 2.0]"), ("acos", "[-3.0, 0.5]"), ("acosh", "[0.5, 2.0]"),
                                       ("atanh", "[1.0, 0.5]")])
def test_inverse_functions_outside_their_domains_warn_where_they_are(expr, bad):
    r = run(f"x = {bad}\ny = x.{expr}\nloss = y.sum")
    [warning, *_] = r.diagnostics.warnings
    assert warning.span.line == 2 and warning.message.startswith(f"`{expr}` gave "), warning.message
    assert "at 1 of 2 entries" in warning.message, warning.message


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_remainder_is_numpys_and_differentiates_as_torch_remainder(mode):
    """numpy's remainder has the sign of the divisor; torch.remainder's
    gradient is 1 in a and −floor(a / b) in b."""
    a, b = [-1.5, -1.0, 0.3, 1.0, 2.5, 3.2], 1.5
    text = f"a = {a}\nb = {b}\ny = a % b\nloss = y.sum"
    np.testing.assert_allclose(run(text).node("y").value, np.remainder(a, b), rtol=1e-15)
    g = gradients(text, ["a", "b"], mode=mode).gradients
    np.testing.assert_array_equal(g["a"], np.ones(6))
    np.testing.assert_allclose(g["b"], -np.floor(np.divide(a, b)).sum(), rtol=1e-12)
    signs = "a = [2.5, -2.5]\nb = [-2.0, 2.0]\nloss = (a % b).sum"  # off the jumps: central differences agree
    np.testing.assert_allclose(value(signs.replace("loss = (a % b).sum", "a % b")), [-1.5, 1.5])
    for name in ("a", "b"):
        np.testing.assert_allclose(gradients(signs, [name], mode=mode).gradients[name], program_fd(signs, name),
                                   rtol=1e-6)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_remainder_by_zero_and_of_infinities_differentiates_as_torch_remainder(mode):
    """∂(a % b)/∂b = −floor(a / b) wherever torch.remainder's gradient is: ∓inf at b = 0
    (nan at a = 0), where (out − a) / b was nan (the value is nan there); read off torch 2.13."""
    a = [1.0, -1.0, 0.0, 5.0, np.inf, 1.0, -7.5, 1.0]
    b = [0.0, 0.0, 0.0, -3.0, 2.0, np.inf, 2.0, 0.1]
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the nans of the value and the infinities of the gradient warn
        g = compile(f"a = {[0.0] * 8}\nb = {[1.0] * 8}\nloss = (a % b).sum").grad(a=a, b=b, mode=mode)
    np.testing.assert_array_equal(g["a"], np.ones(8))
    np.testing.assert_array_equal(g["b"], [-np.inf, np.inf, np.nan, 2.0, np.nan, 0.0, 4.0, -9.0])


# ------------------------------------------------ words from elsewhere


@pytest.mark.parametrize("text, note", [
    ("x.amax", "spiread writes it `x.max`, `X.rowMax`, `X.colMax` or `maximum(a, b)`"),
    ("x.max(1)", "takes no arguments"),
    ("x.arcsin", "spiread writes it `x.asin`"),
    ("x.logsumexp", "`x.logSumExp`"),
    ("x.clip(0)", "`x.clampMin(lo).clampMax(hi)`"),
    ("x.log_softmax", "`X.logSoftmaxRows`"),
    ("x.colsum", "did you mean `colSum`?"),
    ("max(x, 0)", "`maximum(a, b)`"),
    ("fmax(x, 0)", "spiread writes it `maximum(a, b)`"),
    ("remainder(x, 2)", "spiread writes it `x % y`"),
    ("x.mod(2)", "spiread writes it `x % y`"),
    ("max(x)", "`max` is a method: it follows its value, `x.max`"),
])
def test_words_from_numpy_and_pytorch_point_at_spireads(text, note):
    """The class of `x.max` offered `map`: a word spiread spells otherwise is
    pointed at spiread's word, not at the nearest spelling."""
    with pytest.raises(SpireadError) as err:
        run(f"x = [[1.0, 2.0], [3.0, 4.0]]\ny = {text}")
    d = err.value.diagnostic
    assert d.span.line == 2
    assert any(note in n for n in (d.message, *d.notes)), (text, d.message, d.notes)
    assert not any("`map`" in n for n in d.notes)


def test_the_command_line_evaluates_and_checks_the_new_words(tmp_program):
    path = tmp_program("x = [[0.5, -2.0], [1.5, 0.25]]\n"
                       "loss = x.colMax.sum + x.rowLogSumExp.sum + logaddexp(x, 0.5).sum + where(x > 0, x.atan, x.softplus).sum\n")
    result = spiread("check", path)
    assert result.returncode == 0, result.stderr
    result = spiread("grad", path, "--mode", "forward", "--format", "json")
    assert result.returncode == 0, result.stderr
