"""Every op in the op table, and every method spelling, against independent
references and central finite differences.

Two layers:
- the op table itself (`spiread_cli.ops.OPS`): forward against a reference
  written here, the shape rule against the value, each operand's vjp and the
  jvp against central differences;
- the language: each method spelling, operator and broadcasting case as a
  program, its gradient against finite differences of the whole program.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from conftest import Agreement, central_difference, gradients, program_fd, value
from spiread_cli.ops import METHODS, OPS

RNG = np.random.default_rng(20240611)
S, V, M = (), (3,), (2, 3)


def normal(shape):
    return RNG.normal(size=shape)


def positive(shape):
    return 0.5 + 1.5 * RNG.random(shape)


def signed_away_from_zero(shape):
    """Entries of either sign, at least 0.3 from zero (kinks, poles)."""
    return RNG.choice([-1.0, 1.0], size=shape) * (0.3 + RNG.random(shape))


def small(shape):
    return RNG.uniform(-1.0, 1.0, size=shape)


# ----------------------------------------------------------- references
# Written independently of spiread_cli/ops.py: textbook formulas, loops.


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


UNARY = {  # name: (reference, domain)
    "exp": (np.exp, normal), "log": (np.log, positive), "sin": (np.sin, normal), "cos": (np.cos, normal),
    "tan": (lambda x: np.sin(x) / np.cos(x), small), "tanh": (lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1), normal),
    "sinh": (lambda x: (np.exp(x) - np.exp(-x)) / 2, normal), "cosh": (lambda x: (np.exp(x) + np.exp(-x)) / 2, normal),
    "sqrt": (lambda x: x ** 0.5, positive), "abs": (lambda x: np.where(x < 0, -x, x), signed_away_from_zero),
    "square": (lambda x: x * x, normal), "sigmoid": (_sigmoid, normal),
    "relu": (lambda x: np.where(x > 0, x, 0.0), signed_away_from_zero),
    "log1p": (lambda x: np.log(1 + x), positive), "neg": (lambda x: 0.0 - x, normal),
}


def _rows(x):
    return np.atleast_2d(x)


def _per_row(f):
    """Apply a row function to each row (a vector is one row)."""
    def apply(x):
        out = np.array([f(row) for row in _rows(x)])
        return out.reshape(x.shape)
    return apply


ROW_NORMS = {
    "normaliseRowsL1": _per_row(lambda r: r / sum(abs(v) for v in r)),
    "normaliseRowsL2": _per_row(lambda r: r / np.sqrt(sum(v * v for v in r))),
    "softmaxRows": _per_row(lambda r: np.exp(r) / np.exp(r).sum()),
    "logSoftmaxRows": _per_row(lambda r: r - np.log(np.exp(r).sum())),
}


def _matmul_reference(a, b):
    a2 = a.reshape(1, -1) if a.ndim == 1 else a
    b2 = b.reshape(-1, 1) if b.ndim == 1 else b
    out = np.array([[sum(a2[i, k] * b2[k, j] for k in range(a2.shape[1])) for j in range(b2.shape[1])]
                    for i in range(a2.shape[0])])
    if a.ndim == 1 and b.ndim == 1:
        return out[0, 0]
    return out[0] if a.ndim == 1 else (out[:, 0] if b.ndim == 1 else out)


def _select_reference(x, rows, cols):
    out = np.zeros_like(x)
    for r, c in zip(rows, cols):
        out[r, c] = x[r, c]
    return out


def _mean_log_softmax_pick_reference(z, rows, cols):
    logp = ROW_NORMS["logSoftmaxRows"](z)
    return np.mean([logp[r, c] for r, c in zip(rows, cols)])


# ---------------------------------------------------------------- cases


@dataclass
class Case:
    op: str
    xs: list
    reference: object
    params: dict = field(default_factory=dict)

    @property
    def id(self):
        shapes = ",".join("×".join(map(str, x.shape)) or "s" for x in self.xs)
        extra = ",".join(f"{k}={v!r}" for k, v in self.params.items() if k in ("axis", "t"))
        return f"{self.op}({shapes}{';' + extra if extra else ''})"


BROADCASTS = [(M, M), (M, (3,)), ((3,), M), (M, (2, 1)), ((1, 3), M), ((2, 1), M), (M, S), (S, M),
              ((2, 1), (1, 3)), ((2, 1), (3,)), (V, V), (V, S), (S, V), (S, S)]
BINARY = {"add": (lambda a, b: a + b, normal), "sub": (lambda a, b: a - b, normal),
          "mul": (lambda a, b: a * b, normal), "div": (lambda a, b: a / b, signed_away_from_zero),
          "pow": (lambda a, b: np.exp(b * np.log(a)), normal)}


def _cases() -> list[Case]:
    cases = []
    for name, (ref, domain) in UNARY.items():
        cases += [Case(name, [domain(s)], ref) for s in (S, V, M)]
    for name, ref in (("clampMin", lambda x, t: np.where(x < t, t, x)), ("clampMax", lambda x, t: np.where(x > t, t, x))):
        cases += [Case(name, [0.1 + signed_away_from_zero(s)], ref, {"t": 0.1}) for s in (S, V, M)]
    for name, (ref, second) in BINARY.items():
        for sa, sb in BROADCASTS:
            first = positive(sa) if name == "pow" else normal(sa)
            cases.append(Case(name, [first, second(sb)], ref))
    for sa, sb in [(V, V), (V, (3, 2)), ((2, 3), V), ((2, 3), (3, 4)), ((1, 3), (3, 1))]:
        cases.append(Case("matmul", [normal(sa), normal(sb)], _matmul_reference))
    cases += [Case("transpose", [normal(s)], lambda x: np.einsum("ij->ji", x) if x.ndim == 2 else x) for s in (V, M)]
    for name, ref in (("sum", lambda x: sum(np.ravel(x))), ("mean", lambda x: sum(np.ravel(x)) / np.size(x)),
                      ("product", lambda x: np.prod(np.ravel(x)))):
        cases += [Case(name, [normal(s)], ref) for s in (S, V, M)]
    with_zero = normal(M)
    with_zero[0, 1] = 0.0
    two_zeros = normal((4,))
    two_zeros[[1, 3]] = 0.0
    cases += [Case("product", [with_zero], lambda x: np.prod(np.ravel(x))),
              Case("product", [two_zeros], lambda x: np.prod(x))]
    for name, f in (("rowSum", sum), ("rowMean", lambda r: sum(r) / len(r)), ("rowProduct", np.prod)):
        cases += [Case(name, [x], lambda x, f=f: np.array([f(list(r)) for r in x])) for x in (normal(M), with_zero)]
    for name, ref in ROW_NORMS.items():
        domain = signed_away_from_zero if name.startswith("normalise") else normal
        cases += [Case(name, [domain(s)], ref) for s in (V, M)]
    x = normal(M)
    cases += [Case("index", [normal(M)], lambda x, key: x[key[0]][key[1]], {"key": (1, 2)}),
              Case("index", [normal(V)], lambda x, key: x[key[0]], {"key": (2,)}),
              Case("index", [normal(M)], lambda x, key: np.array(list(x[key[0]])), {"key": (1, slice(None))}),
              Case("index", [normal(M)], lambda x, key: np.array([r[key[1]] for r in x]), {"key": (slice(None), 2)}),
              Case("select", [x], _select_reference,
                   {"rows": np.array([0, 1, 1, 0]), "cols": np.array([0, 2, 2, 1])}),
              Case("arrange", [x], lambda x, rows, cols: np.array([x[r, c] for r, c in zip(rows, cols)]),
                   {"rows": np.array([1, 0, 1]), "cols": np.array([2, 0, 2])})]
    for axis in (0, 1):
        cases.append(Case("stack", [normal(V), normal(V)], lambda *xs, axis: np.array([list(v) for v in xs]).T
                          if axis else np.array([list(v) for v in xs]), {"axis": axis}))
    cases.append(Case("stack", [normal(S), normal(S), normal(S)], lambda *xs, axis: np.array([float(v) for v in xs]),
                      {"axis": 0}))
    index = np.array([2, 0, 2, 2])
    cases += [Case("gatherRows", [normal((3, 4))], lambda x, index: np.array([x[i] for i in index]), {"index": index}),
              Case("gatherRows", [normal(V)], lambda x, index: np.array([x[i] for i in index]), {"index": index})]
    cases.append(Case("meanLogSoftmaxPick", [normal((3, 4))], _mean_log_softmax_pick_reference,
                      {"rows": np.array([0, 2, 2, 1]), "cols": np.array([3, 0, 0, 1])}))
    return cases


CASES = _cases()


def test_every_op_has_cases():
    assert set(OPS) <= {c.op for c in CASES}, "add cases for the new ops"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_op_forward_shape_vjp_jvp(case, record_property):
    op = OPS[case.op]
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    out = np.asarray(op.impl(*xs, **case.params), dtype=float)
    np.testing.assert_allclose(out, case.reference(*xs, **case.params), rtol=1e-12, atol=1e-13)
    assert tuple(op.shape(*[x.shape for x in xs], **case.params)) == out.shape

    g = RNG.normal(size=out.shape)  # a random cotangent: ⟨g, f(x)⟩ is a scalar
    worst = Agreement()
    for i, x in enumerate(xs):
        def pulled(xi, i=i):
            args = list(xs)
            args[i] = xi
            return np.sum(g * op.impl(*args, **case.params))

        fd = central_difference(pulled, x)
        vjp = np.asarray(op.vjp(i, g, out, *xs, **case.params), dtype=float)
        assert vjp.shape == x.shape, f"vjp {i} has shape {vjp.shape}, operand {x.shape}"
        np.testing.assert_allclose(vjp, fd, rtol=1e-6, atol=1e-7, err_msg=f"vjp of operand {i}")
        worst.update(vjp, fd)

        # jvp: a batch of two tangent directions for operand i, none for the rest.
        ts = [None] * len(xs)
        ts[i] = RNG.normal(size=(2,) + x.shape)
        jvp = np.asarray(op.jvp(ts, out, *xs, **case.params), dtype=float)
        assert jvp.shape == (2,) + out.shape
        for k in range(2):
            eps = 1e-6
            step = list(xs)
            step[i] = x + eps * ts[i][k]
            back = list(xs)
            back[i] = x - eps * ts[i][k]
            fd_dir = (op.impl(*step, **case.params) - op.impl(*back, **case.params)) / (2 * eps)
            np.testing.assert_allclose(jvp[k], fd_dir, rtol=1e-6, atol=1e-7, err_msg=f"jvp of operand {i}")
    worst.record(record_property, "op vjp vs central FD")


def test_jvp_adds_the_tangents_of_both_operands():
    a, b = normal(M), normal((3,))
    for name in ("add", "mul", "div", "matmul"):
        x, y = (a, a.T[:, :1].ravel() + 2.0) if name == "matmul" else (a, b + 2.0)
        op = OPS[name]
        out = op.impl(x, y)
        tx, ty = RNG.normal(size=(1,) + x.shape), RNG.normal(size=(1,) + y.shape)
        both = op.jvp([tx, ty], out, x, y)
        separate = op.jvp([tx, None], out, x, y) + op.jvp([None, ty], out, x, y)
        np.testing.assert_allclose(both, separate, rtol=1e-12)


# ------------------------------------------------------------- language


def lit(x) -> str:
    """An `.ad` literal for an array, exact (shortest round-trip floats)."""
    x = np.asarray(x, dtype=float)
    if x.ndim == 0:
        return repr(float(x))
    return "[" + ", ".join(lit(v) for v in x) + "]"


def assert_program_gradients(text: str, names: list[str], record_property=None, kind="program vs central FD"):
    """Every name's gradient through the API equals finite differences of the program."""
    result = gradients(text, names)
    worst = Agreement()
    for name in names:
        fd = program_fd(text, name)
        np.testing.assert_allclose(result.gradients[name], fd, rtol=1e-6, atol=1e-7, err_msg=f"∂/∂{name}\n{text}")
        worst.update(result.gradients[name], fd)
    if record_property is not None:
        worst.record(record_property, kind)
    return result


def _weighted_sum(expr: str, shape) -> str:
    """A scalar from `expr` that weighs each entry differently."""
    return f"({expr} * {lit(RNG.normal(size=shape))}).sum" if shape else f"({expr}) * 1.7"


def _method_case(spelling):
    """(program text, inputs to differentiate, reference value of the expression)."""
    op = METHODS[spelling].name
    if op in UNARY:
        x = UNARY[op][1](M)
        return f"x = {lit(x)}", f"x.{spelling}", ["x"], UNARY[op][0](x)
    if op in ("clampMin", "clampMax"):
        x = 0.25 + signed_away_from_zero(M)
        return f"x = {lit(x)}", f"x.{spelling}(0.25)", ["x"], np.clip(x, 0.25, None) if op == "clampMin" else np.clip(x, None, 0.25)
    if op in ("div", "pow"):
        x, y = positive(M), signed_away_from_zero((3,))
        return f"x = {lit(x)}\ny = {lit(y)}", f"x.{spelling}(y)", ["x", "y"], BINARY[op][0](x, y)
    if op == "matmul":
        a, b = normal((2, 3)), normal((3, 2))
        return f"a = {lit(a)}\nb = {lit(b)}", f"a.{spelling}(b)", ["a", "b"], _matmul_reference(a, b)
    if op == "transpose":
        a = normal((2, 3))
        return f"a = {lit(a)}", f"a.{spelling}", ["a"], a.T
    if op in ("sum", "mean", "product"):
        x = normal(M)
        return f"x = {lit(x)}", f"x.{spelling}()", ["x"], {"sum": np.sum, "mean": np.mean, "product": np.prod}[op](x)
    if op in ROW_NORMS:
        x = signed_away_from_zero(M)
        return f"x = {lit(x)}", f"x.{spelling}", ["x"], ROW_NORMS[op](x)
    raise AssertionError(f"no language case for `.{spelling}`: add one")


@pytest.mark.parametrize("spelling", sorted(METHODS))
def test_method_spelling(spelling, record_property):
    setup, expr, names, expected = _method_case(spelling)
    np.testing.assert_allclose(value(f"{setup}\n{expr}"), expected, rtol=1e-12, atol=1e-13)
    text = f"{setup}\nloss = {_weighted_sum(expr, np.shape(expected))}"
    assert_program_gradients(text, names, record_property)


OPERATORS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "**": np.power}
BROADCAST_SHAPES = [((2, 3), (2, 3)), ((2, 3), (3,)), ((3,), (2, 3)), ((2, 3), (2, 1)), ((1, 3), (2, 3)),
                    ((2, 3), ()), ((), (2, 3)), ((2, 1), (1, 3)), ((3,), ()), ((), ())]


@pytest.mark.parametrize("operator", list(OPERATORS))
@pytest.mark.parametrize("shapes", BROADCAST_SHAPES, ids=lambda s: f"{s[0]}-{s[1]}")
def test_operator_broadcasting(operator, shapes, record_property):
    sa, sb = shapes
    a = positive(sa) if operator == "**" else normal(sa)
    b = signed_away_from_zero(sb)
    setup = f"a = {lit(a)}\nb = {lit(b)}"
    expected = OPERATORS[operator](a, b)
    got = value(f"{setup}\na {operator} b")
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert_program_gradients(f"{setup}\nloss = {_weighted_sum(f'a {operator} b', expected.shape)}", ["a", "b"],
                             record_property)


@pytest.mark.parametrize("shapes", [((2, 3), (3,)), ((2, 3), (2, 1)), ((2, 3), (1, 3)), ((2, 3), ())])
def test_broadcast_gradient_sums_over_the_broadcast_dimensions(shapes):
    """d/db Σ (a + b) counts how often each entry of b was used; d/db Σ (a * b)
    sums a over the broadcast dimensions."""
    sa, sb = shapes
    a, b = normal(sa), normal(sb)
    setup = f"a = {lit(a)}\nb = {lit(b)}"
    plus = gradients(f"{setup}\nloss = (a + b).sum", ["a", "b"]).gradients
    np.testing.assert_array_equal(plus["a"], np.ones(sa))
    np.testing.assert_array_equal(plus["b"], np.full(sb, a.size / max(np.size(b), 1)))
    times = gradients(f"{setup}\nloss = (a * b).sum", ["b"]).gradients["b"]
    axes = {(3,): 0, (2, 1): 1, (1, 3): 0, (): None}[sb]
    expected = a.sum(axis=axes, keepdims=sb != (3,)) if axes is not None else a.sum()
    np.testing.assert_allclose(times, expected.reshape(sb), rtol=1e-12)


def test_shape_mismatch_is_an_error_naming_both_shapes():
    from spiread_cli.diagnostics import SpireadError
    with pytest.raises(SpireadError) as err:
        value("a = [[1, 2], [3, 4], [5, 6]]\nb = [1, 2, 3]\na + b")
    message = err.value.diagnostic.message
    assert "3×2" in message and "vector of 3" in message
    assert err.value.diagnostic.span.line == 3 and err.value.diagnostic.span.column == 3


@pytest.mark.parametrize("operator", ["@@", "@"])
@pytest.mark.parametrize("shapes", [((3,), (3,)), ((3,), (3, 2)), ((2, 3), (3,)), ((2, 3), (3, 4))],
                         ids=["vector·vector", "vector·matrix", "matrix·vector", "matrix·matrix"])
def test_matmul_follows_numpy(operator, shapes, record_property):
    a, b = normal(shapes[0]), normal(shapes[1])
    setup = f"a = {lit(a)}\nb = {lit(b)}"
    got = value(f"{setup}\na {operator} b")
    expected = np.matmul(a, b)
    assert got.shape == expected.shape  # vector·vector is a scalar
    np.testing.assert_allclose(got, _matmul_reference(a, b), rtol=1e-12)
    assert_program_gradients(f"{setup}\nloss = {_weighted_sum(f'a {operator} b', expected.shape)}", ["a", "b"],
                             record_property)


def test_unary_minus_and_plus(record_property):
    x = normal(M)
    np.testing.assert_allclose(value(f"x = {lit(x)}\n-x"), -x)
    np.testing.assert_allclose(value(f"x = {lit(x)}\n+x"), x)
    assert_program_gradients(f"x = {lit(x)}\nloss = {_weighted_sum('-x', M)}", ["x"], record_property)


SUGAR = [  # (expression on x, a 2×3 matrix; reference)
    ("x.mapRowsToScalar(sum)", lambda x: x.sum(axis=1)),
    ("x.mapRowsToScalar(ReductionOps.Mean)", lambda x: x.mean(axis=1)),
    ("x.mapRowsToScalar(ReductionOps.Product)", lambda x: x.prod(axis=1)),
    ("x.row(1)", lambda x: x[1]),
    ("x.col(2)", lambda x: x[:, 2]),
    ("x[1, 2]", lambda x: x[1, 2]),
    ("x.row(0)[1]", lambda x: x[0, 1]),
    ("x[(0, 0), (1, 2)]", lambda x: _select_reference(x, [0, 1], [0, 2])),
    ("x(Array((0, 1), (1, 1)))", lambda x: _select_reference(x, [0, 1], [1, 1])),
    ("x.select((1, 0))", lambda x: _select_reference(x, [1], [0])),
    ("x.select([0, 1, 1], [2, 2, 0])", lambda x: _select_reference(x, [0, 1, 1], [2, 2, 0])),
    ("x.arrange((1, 2), (0, 0), (1, 2))", lambda x: np.array([x[1, 2], x[0, 0], x[1, 2]])),
    ("x.arrange([0, 1], [1, 1])", lambda x: np.array([x[0, 1], x[1, 1]])),
    ("Matrix.fromRows(x.row(1), x.row(0))", lambda x: x[::-1]),
    ("Matrix.fromColumns(x.col(2), x.col(0))", lambda x: x[:, [2, 0]]),
    ("[x[0, 0], x[1, 1]]", lambda x: np.array([x[0, 0], x[1, 1]])),
    ("x.tej", lambda x: x),
]


@pytest.mark.parametrize("expr,reference", SUGAR, ids=[s[0] for s in SUGAR])
def test_sugar_value_and_gradient(expr, reference, record_property):
    x = normal(M)
    np.testing.assert_allclose(value(f"x = {lit(x)}\n{expr}"), reference(x), rtol=1e-12)
    assert_program_gradients(f"x = {lit(x)}\nloss = {_weighted_sum(expr, np.shape(reference(x)))}", ["x"],
                             record_property)


@pytest.mark.parametrize("expr,expected", [
    ("x.relu", [0.0, 1.0, 0.0]),           # relu'(0) = 0
    ("x.clampMin(0)", [1.0, 1.0, 0.0]),    # passes where x >= t, the bound included (torch.clamp)
    ("x.clampMax(0)", [1.0, 0.0, 1.0]),    # passes where x <= t
    ("x.abs", [0.0, 1.0, -1.0]),
])
def test_gradient_at_kinks(expr, expected):
    got = gradients(f"x = [0.0, 2.0, -2.0]\nloss = {expr}.sum", ["x"]).gradients["x"]
    np.testing.assert_array_equal(got, expected)
