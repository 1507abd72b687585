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

import contextlib
import math
import inspect
import itertools
import warnings
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import Agreement, central_difference, gradients, lit, program_fd, run, spiread, strict_json, value
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.ops import METHODS, OPS, ShapeError

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


def inside_unit(shape):
    """Within ±0.8: inside the domains of asin, acos and atanh, away from their poles."""
    return RNG.uniform(-0.8, 0.8, size=shape)


def above_one(shape):
    """Above 1.2: acosh's domain, away from its pole at 1."""
    return 1.2 + 1.5 * RNG.random(shape)


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
    "asin": (lambda x: np.arctan2(x, np.sqrt(1 - x * x)), inside_unit),
    "acos": (lambda x: np.arctan2(np.sqrt(1 - x * x), x), inside_unit),
    "atan": (lambda x: np.arcsin(x / np.sqrt(1 + x * x)), normal),
    "asinh": (lambda x: np.log(x + np.sqrt(x * x + 1)), normal),
    "acosh": (lambda x: np.log(x + np.sqrt(x * x - 1)), above_one),
    "atanh": (lambda x: 0.5 * np.log((1 + x) / (1 - x)), inside_unit),
    "softplus": (lambda x: np.log(1 + np.exp(x)), normal), "logSigmoid": (lambda x: -np.log(1 + np.exp(-x)), normal),
}


def _along(f, axis):
    """A reduction by `f` over a list of entries: of all of them (axis None),
    of each row (1) or of each column (0)."""
    if axis is None:
        return lambda x: f(list(np.ravel(x)))
    return lambda x: np.array([f(list(line)) for line in (x if axis == 1 else x.T)])


REDUCTION_WORDS = {  # word: the reduction of a list of entries, written out
    "sum": sum, "mean": lambda v: sum(v) / len(v), "product": lambda v: math.prod(v),
    "max": lambda v: sorted(v)[-1], "min": lambda v: sorted(v)[0],
    "logSumExp": lambda v: math.log(sum(math.exp(e) for e in v)),
}
REDUCTIONS = {prefix + (word if not prefix else word[0].upper() + word[1:]): (_along(f, axis), axis)
              for word, f in REDUCTION_WORDS.items() for prefix, axis in (("", None), ("row", 1), ("col", 0))}


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
        extra = ",".join(f"{k}={v!r}" for k, v in self.params.items() if k in ("axis", "t", "spec", "reverse"))
        return f"{self.op}({shapes}{';' + extra if extra else ''})"


BROADCASTS = [(M, M), (M, (3,)), ((3,), M), (M, (2, 1)), ((1, 3), M), ((2, 1), M), (M, S), (S, M),
              ((2, 1), (1, 3)), ((2, 1), (3,)), (V, V), (V, S), (S, V), (S, S)]
BINARY = {"add": (lambda a, b: a + b, normal), "sub": (lambda a, b: a - b, normal),
          "mul": (lambda a, b: a * b, normal), "div": (lambda a, b: a / b, signed_away_from_zero),
          "pow": (lambda a, b: np.exp(b * np.log(a)), normal),
          "maximum": (lambda a, b: np.where(a > b, a, b), normal), "minimum": (lambda a, b: np.where(a < b, a, b), normal),
          "logaddexp": (lambda a, b: np.log(np.exp(a) + np.exp(b)), normal),
          "remainder": (lambda a, b: a - b * np.floor(a / b), signed_away_from_zero)}


COMPARISONS = {">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "<": lambda a, b: a < b,
               "<=": lambda a, b: a <= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b}
# Operands whose derivative is 0 by definition, not by the values around
# them: a condition, which finite differences would flip at its zeros.
FLAT_OPERANDS = {("where", 0)}


def _where_reference(c, a, b):
    shape = np.broadcast_shapes(c.shape, a.shape, b.shape)
    c, a, b = (np.broadcast_to(v, shape) for v in (c, a, b))
    return np.array([x if k != 0 else y for k, x, y in zip(c.ravel(), a.ravel(), b.ravel())]).reshape(shape)


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
    for sc, sa, sb in [(M, M, M), (M, S, (3,)), ((2, 1), (1, 3), S), ((3,), (2, 1), M), (S, V, V)]:
        cases.append(Case("where", [RNG.choice([0.0, 1.0, -2.0], size=sc), normal(sa), normal(sb)], _where_reference))
    for sa, sb in [(V, V), (V, (3, 2)), ((2, 3), V), ((2, 3), (3, 4)), ((1, 3), (3, 1))]:
        cases.append(Case("matmul", [normal(sa), normal(sb)], _matmul_reference))
    cases += [Case("transpose", [normal(s)], lambda x: np.einsum("ij->ji", x) if x.ndim == 2 else x) for s in (V, M)]
    for name, (ref, axis) in REDUCTIONS.items():
        cases += [Case(name, [normal(s)], ref) for s in ((S, V, M) if axis is None else (M, (3, 1), (1, 3)))]
    with_zero = normal(M)
    with_zero[0, 1] = 0.0
    two_zeros = normal((4,))
    two_zeros[[1, 3]] = 0.0
    cases += [Case("product", [with_zero], lambda x: np.prod(np.ravel(x))),
              Case("product", [two_zeros], lambda x: np.prod(x))]
    cases += [Case(name, [x], REDUCTIONS[name][0]) for name in ("rowProduct", "colProduct") for x in (with_zero, two_zeros.reshape(2, 2))]
    # Ties of max and min are held to PyTorch by test_max_and_min_split_ties_as_pytorch: central
    # differences see one side there.
    for name, ref in ROW_NORMS.items():
        domain = signed_away_from_zero if name.startswith("normalise") else normal
        cases += [Case(name, [domain(s)], ref) for s in (V, M)]
    x = normal(M)
    cases += [Case("index", [normal(M)], lambda x, key: x[key[0]][key[1]], {"key": (1, 2)}),
              Case("index", [normal(V)], lambda x, key: x[key[0]], {"key": (2,)}),
              Case("index", [normal(M)], lambda x, key: np.array(list(x[key[0]])), {"key": (1, slice(None))}),
              Case("index", [normal(M)], lambda x, key: np.array([r[key[1]] for r in x]), {"key": (slice(None), 2)}),
              # numpy's slices: the entries at range(start, stop, step) of each axis, as a loop takes them.
              Case("index", [normal((5,))], lambda x, key: np.array([x[i] for i in range(1, 5)]), {"key": (slice(1, None),)}),
              Case("index", [normal((5,))], lambda x, key: np.array([x[i] for i in range(0, 4)]), {"key": (slice(None, -1),)}),
              Case("index", [normal((5,))], lambda x, key: np.array([x[i] for i in (4, 2, 0)]),
                   {"key": (slice(None, None, -2),)}),
              Case("index", [normal((4, 3))], lambda x, key: np.array([[x[i][j] for j in (0, 1)] for i in range(4)]),
                   {"key": (slice(None), slice(0, 2))}),
              Case("index", [normal((4, 3))], lambda x, key: np.array([x[i][1] for i in (3, 1)]),
                   {"key": (slice(-1, 0, -2), 1)}),
              Case("index", [normal((4, 3))], lambda x, key: np.array([list(x[i]) for i in (1, 2)]),
                   {"key": (slice(1, 3), slice(None))}),
              Case("select", [x], _select_reference,
                   {"rows": np.array([0, 1, 1, 0]), "cols": np.array([0, 2, 2, 1])}),
              Case("arrange", [x], lambda x, rows, cols: np.array([x[r, c] for r, c in zip(rows, cols)]),
                   {"rows": np.array([1, 0, 1]), "cols": np.array([2, 0, 2])})]
    for axis in (0, 1):
        cases.append(Case("stack", [normal(V), normal(V)], lambda *xs, axis: np.array([list(v) for v in xs]).T
                          if axis else np.array([list(v) for v in xs]), {"axis": axis}))
    cases.append(Case("stack", [normal(S), normal(S), normal(S)], lambda *xs, axis: np.array([float(v) for v in xs]),
                      {"axis": 0}))
    # concat: the pieces' entries one after another along the axis, by loops.
    cases += [Case("concat", [normal(V), normal((2,)), normal((1,))], lambda *xs, axis: np.array([v for x in xs for v in x]),
                   {"axis": 0}),
              Case("concat", [normal(M), normal((1, 3))], lambda *xs, axis: np.array([list(r) for x in xs for r in x]),
                   {"axis": 0}),
              Case("concat", [normal(M), normal((2, 1)), normal((2, 2))],
                   lambda *xs, axis: np.array([[v for x in xs for v in x[i]] for i in range(2)]), {"axis": 1})]

    def running(row, reverse):
        return [sum(row[j:]) if reverse else sum(row[:j + 1]) for j in range(len(row))]

    for reverse in (False, True):
        cases += [Case("rowCumsum", [normal(s)], lambda x, reverse: np.array(running(list(x), reverse)) if x.ndim == 1
                       else np.array([running(list(r), reverse) for r in x]), {"reverse": reverse}) for s in (V, M)]
    a, b, square = normal((2, 3)), normal((3, 4)), normal((3, 3))
    loops = {  # spec: its sums written as loops
        "ij,jk->ik": lambda a, b: np.array([[sum(a[i][j] * b[j][k] for j in range(3)) for k in range(4)] for i in range(2)]),
        "ii->": lambda s: sum(s[i][i] for i in range(3)),
        "ii->i": lambda s: np.array([s[i][i] for i in range(3)]),
        "ij,ij->i": lambda a, c: np.array([sum(a[i][j] * c[i][j] for j in range(3)) for i in range(2)]),
        "ij->ji": lambda a: np.array([[a[i][j] for i in range(2)] for j in range(3)]),
        "ij->j": lambda a: np.array([sum(a[i][j] for i in range(2)) for j in range(3)]),
        "ij,kl->": lambda a, b: sum(np.ravel(a)) * sum(np.ravel(b)),
        "i,j->ij": lambda u, v: np.array([[u[i] * v[j] for j in range(3)] for i in range(2)]),
        ",ij->ij": lambda s, a: np.array([[float(s) * a[i][j] for j in range(3)] for i in range(2)]),
    }
    operands = {"ij,jk->ik": [a, b], "ii->": [square], "ii->i": [square], "ij,ij->i": [a, normal((2, 3))],
                "ij->ji": [a], "ij->j": [a], "ij,kl->": [a, b], "i,j->ij": [normal((2,)), normal(V)],
                ",ij->ij": [normal(S), a]}
    cases += [Case("einsum", operands[spec], lambda *xs, spec, f=f: f(*xs), {"spec": spec}) for spec, f in loops.items()]
    index = np.array([2, 0, 2, 2])
    cases += [Case("gatherRows", [normal((3, 4))], lambda x, index: np.array([x[i] for i in index]), {"index": index}),
              Case("gatherRows", [normal(V)], lambda x, index: np.array([x[i] for i in index]), {"index": index})]
    cases.append(Case("meanLogSoftmaxPick", [normal((3, 4))], _mean_log_softmax_pick_reference,
                      {"rows": np.array([0, 2, 2, 1]), "cols": np.array([3, 0, 0, 1])}))
    return cases


def _backward_pass_cases() -> list[Case]:
    """The ops that only recorded backward passes use (spiread_cli/second.py)."""
    cases = [Case("sumTo", [normal(M)], lambda x, shape: np.array([sum(col) for col in x.T]), {"shape": (3,)}),
             Case("sumTo", [normal(M)], lambda x, shape: np.array([[sum(col) for col in x.T]]), {"shape": (1, 3)}),
             Case("sumTo", [normal(M)], lambda x, shape: np.array([[sum(row)] for row in x]), {"shape": (2, 1)}),
             Case("sumTo", [normal(M)], lambda x, shape: sum(np.ravel(x)), {"shape": ()}),
             Case("broadcastTo", [normal(V)], lambda x, shape: np.array([list(x), list(x)]), {"shape": M}),
             Case("broadcastTo", [normal((2, 1))], lambda x, shape: np.array([[r[0]] * 3 for r in x]), {"shape": M}),
             Case("broadcastTo", [normal(S)], lambda x, shape: np.full(shape, float(x)), {"shape": M}),
             Case("reshape", [normal(M)], lambda x, shape: np.array(list(np.ravel(x))).reshape(shape), {"shape": (3, 2)}),
             Case("reshape", [normal((6,))], lambda x, shape: np.array([list(x[:3]), list(x[3:])]), {"shape": M}),
             Case("rowTotal", [normal(M)], lambda x: np.array([[sum(r)] for r in x])),
             Case("rowTotal", [normal(V)], lambda x: np.array([sum(x)])),
             Case("sign", [signed_away_from_zero(M)], lambda x: np.where(x > 0, 1.0, -1.0)),
             Case("isNan", [np.array([[1.0, np.nan, -np.inf], [np.inf, 0.0, np.nan]])],
                  lambda x: np.array([[float(v != v) for v in row] for row in x])),
             Case("stopGradient", [normal(M)], lambda x: x)]
    for relation, ref in COMPARISONS.items():
        for sa, sb in [(M, M), (M, S), ((2, 1), (3,))]:  # off the ties, where it is flat
            cases.append(Case("indicator", [normal(sa), normal(sb)],
                              lambda a, b, relation, ref=ref: ref(a, b).astype(float), {"relation": relation}))
    for sa, sb in [(M, M), (M, (3,)), (S, M), ((2, 1), (1, 3))]:
        cases.append(Case("scale", [normal(sa), normal(sb)], lambda t, d: t * d))
    others = lambda v: np.array([np.prod(np.delete(v, i)) for i in range(len(v))])  # noqa: E731
    with_zero = normal(M)
    with_zero[1, 1] = 0.0
    for x in (normal(V), normal(M), with_zero):
        cases.append(Case("exclusiveProducts", [x], lambda x, over: others(np.ravel(x)).reshape(x.shape),
                          {"over": "all"}))
    cases += [Case("exclusiveProducts", [x], lambda x, over: np.array([others(r) for r in x]), {"over": "rows"})
              for x in (normal(M), with_zero)]
    cases += [Case("indexScatter", [normal(S)], lambda x, key, shape: np.where(np.arange(6).reshape(M) == 5, x, 0.0),
                   {"key": (1, 2), "shape": M}),
              Case("indexScatter", [normal(V)], lambda x, key, shape: np.array([[0.0] * 3, list(x)]),
                   {"key": (1, slice(None)), "shape": M}),
              Case("indexScatter", [normal((2,))], lambda x, key, shape: np.array([0.0, x[1], 0.0, x[0]]),
                   {"key": (slice(None, None, -2),), "shape": (4,)})]

    def scatter_pairs(x, rows, cols, shape):
        out = np.zeros(shape)
        for v, r, c in zip(x, rows, cols):
            out[r, c] += v
        return out

    def scatter_rows(x, index, rows):
        out = np.zeros((rows,) + x.shape[1:])
        for v, r in zip(x, index):
            out[r] += v
        return out

    index = np.array([2, 0, 2, 2])
    cases += [Case("scatterPairs", [normal(V)], scatter_pairs,
                   {"rows": np.array([1, 0, 1]), "cols": np.array([2, 0, 2]), "shape": M}),
              Case("addPairs", [normal(M), normal(V)], lambda x, v, rows, cols: x + scatter_pairs(v, rows, cols, M),
                   {"rows": np.array([1, 0, -1]), "cols": np.array([2, 0, 1])}),
              Case("addPairs", [normal(M), normal(V)], lambda x, v, rows, cols: x + scatter_pairs(v, rows, cols, M),
                   {"rows": np.array([1, 0, 1]), "cols": np.array([2, 0, 2])}),
              Case("scatterRows", [normal((4, 3))], scatter_rows, {"index": index, "rows": 3}),
              Case("scatterRows", [normal((4,))], scatter_rows, {"index": index, "rows": 3})]
    return cases


CASES = _cases() + _backward_pass_cases()


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

        # stopGradient's derivative is 0 by definition, not by its values.
        flat = case.op == "stopGradient" or (case.op, i) in FLAT_OPERANDS
        fd = np.zeros_like(x) if flat else central_difference(pulled, x)
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
            if flat:
                fd_dir = np.zeros_like(fd_dir)
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
    if op in REDUCTIONS:
        x = normal(M)
        return f"x = {lit(x)}", f"x.{spelling}()", ["x"], REDUCTIONS[op][0](x)
    if op in ROW_NORMS:
        x = signed_away_from_zero(M)
        return f"x = {lit(x)}", f"x.{spelling}", ["x"], ROW_NORMS[op](x)
    if op == "rowCumsum":
        x = normal(M)
        return f"x = {lit(x)}", f"x.{spelling}", ["x"], np.array([[sum(r[:j + 1]) for j in range(3)] for r in x])
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
    # Sums in another order agree to rounding relative to Σ|a||b|, not to a
    # result that cancels to near zero.
    np.testing.assert_allclose(got, _matmul_reference(a, b), rtol=1e-12,
                               atol=1e-14 * float(np.max(np.abs(a) @ np.abs(b))))
    assert_program_gradients(f"{setup}\nloss = {_weighted_sum(f'a {operator} b', expected.shape)}", ["a", "b"],
                             record_property)


def _layout(x: np.ndarray) -> str:
    return "C" if x.flags.c_contiguous else "F" if x.flags.f_contiguous else "strided"


def _laid_out(shape: tuple, layout: str) -> np.ndarray:
    return normal(shape[::-1]).T if layout == "F" else normal(shape)


@pytest.mark.parametrize("layouts", ["CC", "CF", "FC", "FF"])
@pytest.mark.parametrize("m, k, n", [(70, 64, 5), (5, 64, 70), (66, 64, 66), (70, 3, 5), (5, 3, 70), (66, 3, 66)],
                         ids=["tall", "wide", "square", "tall, memory-bound", "wide, memory-bound",
                              "square, memory-bound"])
def test_matrix_products_in_every_layout_are_numpys(m, k, n, layouts):
    """matmul lays a product out for BLAS's speed (ops.COMPUTE_BOUND_INNER):
    whatever the operands' layouts and shapes, the value and both cotangents
    are numpy's products; a compute-bound taller-than-wide value is
    column-major, a memory-bound value is in its operands' layout, or with
    its longer side contiguous where their layouts differ (row-major when
    square), and a memory-bound cotangent has its primal's layout."""
    from spiread_cli.ops import COMPUTE_BOUND_INNER
    op = OPS["matmul"]
    a, b = _laid_out((m, k), layouts[0]), _laid_out((k, n), layouts[1])
    out = op.impl(a, b)
    g = _laid_out((m, n), "F" if _layout(out) == "C" else "C")
    for got, want in [(out, a @ b), (op.vjp(0, g, out, a, b), g @ b.T), (op.vjp(1, g, out, a, b), a.T @ g)]:
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13 * k)
    if k >= COMPUTE_BOUND_INNER and m > n:
        assert _layout(out) == "F"
    if k < COMPUTE_BOUND_INNER:
        assert _layout(out) == (layouts[0] if layouts[0] == layouts[1] else "F" if m > n else "C")
    for i, primal in enumerate([a, b]):
        inner = n if i == 0 else m  # the cotangent's product sums over the result's other side
        if inner < COMPUTE_BOUND_INNER:
            assert _layout(op.vjp(i, g, out, a, b)) == _layout(primal)


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


# ------------------------------------------------- every op at its edges
# Swept over the whole table, so a new op is covered without being listed
# here: its operands and parameters are read off its derivative statement's signature, its
# operand shapes drawn from SHAPES, its parameters from EDGE_PARAMS (a new
# kind of parameter fails until it is given edge values there).


def operands_and_params(op) -> tuple[int | None, tuple[str, ...]]:
    """How many array operands `op` takes (None: any number) and the names of
    its parameters, from derivative(i, g, out, *operands, emit, *params)
    (`emit` is the statement's interpreter, not a parameter)."""
    after = [p for p in inspect.signature(op.derivative).parameters.values() if p.name != "emit"][3:]
    if after[0].kind is inspect.Parameter.VAR_POSITIONAL:
        return None, tuple(p.name for p in after[1:])
    assert len(after) >= op.arity, f"`{op.name}`: its derivative takes fewer operands than its arity {op.arity}"
    return op.arity, tuple(p.name for p in after[op.arity:])


def _keys(shape):
    """Basic-indexing keys into `shape`: an int (first and last), a whole
    axis, or a slice (from 1, every other backwards), for one axis or more."""
    options = [[slice(None), slice(1, None), slice(None, None, -2)] + ([0, -1] if n else []) for n in shape]
    return [{"key": key} for depth in range(1, len(shape) + 1) for key in itertools.product(*options[:depth])]


# Positions are the first and the last, counted from 0: the fused ops take
# them so (rewrite.py turns positions counted from the end into these).
def _pairs(shape):
    none = np.zeros(0, dtype=np.intp)
    if len(shape) != 2 or 0 in shape:
        return [{"rows": none, "cols": none}]
    return [{"rows": none, "cols": none}, {"rows": np.array([0, shape[0] - 1, 0]), "cols": np.array([shape[1] - 1, 0, 0])}]


EDGE_PARAMS = {  # parameter names -> the values to try, given the first operand's shape
    (): lambda shape: [{}],
    ("t",): lambda shape: [{"t": 0.0}, {"t": -np.inf}, {"t": np.nan}],
    ("key",): _keys,
    ("rows", "cols"): _pairs,
    ("axis",): lambda shape: [{"axis": 0}, {"axis": 1}],
    ("index",): lambda shape: [{"index": np.zeros(0, dtype=np.intp)}]
    + ([{"index": np.array([0, shape[0] - 1, 0])}] if shape and shape[0] else []),
    # The ops that recorded backward passes use (their shape rules refuse
    # parameters that do not fit the operand).
    ("shape",): lambda shape: [{"shape": shape}, {"shape": ()}, {"shape": (1,) + shape}, {"shape": (2,) + shape},
                               {"shape": shape[1:]}, {"shape": shape[::-1]}, {"shape": (math.prod(shape),)}],
    ("relation",): lambda shape: [{"relation": r} for r in COMPARISONS],
    ("over",): lambda shape: [{"over": "all"}, {"over": "rows"}],
    ("key", "shape"): lambda shape: [{"key": (0,), "shape": (2,) + shape}, {"key": (-1,), "shape": (1,) + shape},
                                     {"key": (slice(None),), "shape": shape}],
    ("rows", "cols", "shape"): lambda shape: [{**pairs, "shape": (2, 3)} for pairs in _pairs((2, 3))],
    ("index", "rows"): lambda shape: [{"index": np.arange(shape[0] if shape else 0) % 2, "rows": 2}],
    ("reverse",): lambda shape: [{"reverse": False}, {"reverse": True}],
    ("spec",): lambda shape: [{"spec": spec} for spec in ("ij,jk->ik", "ii->", "ii->i", "ij->ji", "ij,ij->i", "i,j->ij",
                                                          "i,i->", "ij->", ",i->i", "->", "ij,j->i")],
}

SHAPES = [(), (1,), (3,), (0,), (1, 0), (0, 1), (0, 0), (0, 3), (3, 0), (3, 1), (1, 3), (2, 3)]
# What an op gives for operands with no entries, where its result has some:
# numpy's and PyTorch's conventions (torch 2.13 gives the same for
# zeros(0).sum/prod/mean, zeros(3, 0).sum(1)/prod(1)/mean(1), and a matmul
# over an inner size of 0).
VALUE_OF_NOTHING = {"sum": 0.0, "rowSum": 0.0, "colSum": 0.0, "matmul": 0.0, "einsum": 0.0, "product": 1.0,
                    "rowProduct": 1.0, "colProduct": 1.0, "mean": np.nan, "rowMean": np.nan, "colMean": np.nan,
                    "meanLogSoftmaxPick": np.nan,
                    # max's and min's identities (PyTorch refuses them); log Σ of nothing is log 0
                    "max": -np.inf, "rowMax": -np.inf, "colMax": -np.inf, "min": np.inf, "rowMin": np.inf,
                    "colMin": np.inf, "logSumExp": -np.inf, "rowLogSumExp": -np.inf, "colLogSumExp": -np.inf,
                    "sumTo": 0.0, "rowTotal": 0.0, "indexScatter": 0.0, "scatterPairs": 0.0, "scatterRows": 0.0}
ADDS_NOTHING = {"addPairs"}  # nothing added to an operand: the result is that operand


def operand_shapes(op, pool):
    count, _ = operands_and_params(op)
    if count is not None:
        return list(itertools.product(pool, repeat=count))
    return [()] + [(s,) * k for s in pool for k in (1, 2, 3)] + [(pool[0], pool[-1])]


def calls(op, pool):
    """(operand shapes, params, output shape) for each call the shape rule
    accepts; a refusal must be a ShapeError whose message formats."""
    _, names = operands_and_params(op)
    assert names in EDGE_PARAMS, f"`{op.name}` takes parameters {names}: give them edge values in EDGE_PARAMS"
    accepted = []
    for shapes in operand_shapes(op, pool):
        for params in EDGE_PARAMS[names](shapes[0] if shapes else ()):
            try:
                accepted.append((shapes, params, tuple(op.shape(*shapes, **params))))
            except ShapeError as err:  # formatted as the interpreter does, with every operand named
                str(err).format(*[f"`x{i}`" for i in range(len(shapes))],
                                **{f"s{i}": str(s) for i, s in enumerate(shapes)})
    return accepted


@contextlib.contextmanager
def numerics_as_on_the_tape():
    """The tape's numpy state (np.errstate(all="ignore")), with every Python
    warning an error: ops report nothing themselves; the tape reports
    non-finite values as spiread's own located warnings."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("error")
        yield


def call_rules(op, xs, params, out_shape, g, tangent):
    """impl, every vjp and jvp (each operand's tangent alone, then all at
    once) and the kink mask, with their shapes checked; returns the values
    for more checks."""
    out = np.asarray(op.impl(*xs, **params), dtype=float)
    assert out.shape == out_shape, f"impl gives {out.shape}, the shape rule {out_shape}"
    vjps = []
    for i, x in enumerate(xs):
        vjps.append(np.asarray(op.vjp(i, g, out, *xs, **params), dtype=float))
        assert vjps[-1].shape == x.shape, f"vjp {i} gives {vjps[-1].shape} for an operand of {x.shape}"
    jvps = {}
    for k in (2, 0):  # forward mode seeds one direction per entry of its inputs: an empty one seeds none
        alone = []
        for i, x in enumerate(xs):
            ts = [None] * len(xs)
            ts[i] = tangent((k,) + x.shape)
            alone.append((ts[i], np.asarray(op.jvp(ts, out, *xs, **params), dtype=float)))
            assert alone[-1][1].shape == (k,) + out.shape, f"jvp {i} gives {alone[-1][1].shape}"
        if len(xs) > 1:
            together = np.asarray(op.jvp([t for t, _ in alone], out, *xs, **params), dtype=float)
            assert together.shape == (k,) + out.shape
            if np.isfinite(together).all():
                np.testing.assert_allclose(together, sum(jvp for _, jvp in alone), rtol=1e-12, atol=1e-300,
                                           err_msg="the jvp of all operands at once is the sum of each one's")
        jvps[k] = alone
    if op.kink is not None:  # `check` asks where the operands sit on a kink, entry by entry of the output
        assert np.shape(op.kink(*xs, **params)) == (out_shape if op.structure.kind == "elementwise" else xs[0].shape)
    return out, vjps, jvps


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_handles_operands_with_no_entries(name):
    """Operands of size 0: the value follows numpy's and PyTorch's
    conventions, each vjp is finite differences' answer (an empty sum: 0) and
    a jvp from an empty operand is 0, in the shapes of the operands and the
    output. The shape rule may refuse, with a ShapeError."""
    op = OPS[name]
    cases = [c for c in calls(op, SHAPES) if any(0 in s for s in c[0])]
    assert cases or name in OPS_THAT_REFUSE_EVERY_EMPTY_OPERAND, f"`{name}` accepts no empty operand"
    with numerics_as_on_the_tape():
        for shapes, params, out_shape in cases:
            where = f"{name}{shapes} {params}"
            xs = [positive(s) for s in shapes]
            g = RNG.normal(size=out_shape)
            out, vjps, jvps = call_rules(op, xs, params, out_shape, g, normal)
            if out.size and name in ADDS_NOTHING:
                np.testing.assert_array_equal(out, xs[0], err_msg=where)
            elif out.size:
                assert name in VALUE_OF_NOTHING, f"{where}: give its value of nothing in VALUE_OF_NOTHING"
                np.testing.assert_array_equal(out, np.full(out_shape, VALUE_OF_NOTHING[name]), err_msg=where)
            for i, x in enumerate(xs):
                if x.size:  # nothing reaches it through an empty operand: finite differences give 0
                    def pulled(xi, i=i):
                        return np.sum(g * op.impl(*xs[:i], xi, *xs[i + 1:], **params))
                    np.testing.assert_allclose(vjps[i], central_difference(pulled, x), atol=1e-7, err_msg=where)
            for k, alone in jvps.items():
                for i, (t, jvp) in enumerate(alone):
                    if xs[i].size == 0:  # a linear map from no entries is 0
                        np.testing.assert_array_equal(jvp, np.zeros_like(jvp), err_msg=f"{where} jvp {i}")
                    else:
                        for j in range(k):
                            eps = 1e-6
                            step = op.impl(*xs[:i], xs[i] + eps * t[j], *xs[i + 1:], **params)
                            back = op.impl(*xs[:i], xs[i] - eps * t[j], *xs[i + 1:], **params)
                            np.testing.assert_allclose(jvp[j], (step - back) / (2 * eps), atol=1e-7,
                                                       err_msg=f"{where} jvp {i}")


# Ops whose shape rule turns down every operand with no entries (none yet):
# each must say why here.
OPS_THAT_REFUSE_EVERY_EMPTY_OPERAND: dict[str, str] = {}

EDGE_VALUES = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1.0, -1.0, 1e308, -1e-308])
EDGE_SHAPES = [(), (1,), (4,), (2, 4), (4, 1), (1, 4), (0,), (2, 0)]


def edge_filled(shape, shift=0):
    """Every edge value in turn (from `shift` on), as many times as `shape` holds."""
    return np.resize(np.roll(EDGE_VALUES, shift), shape)


@pytest.mark.parametrize("name", list(OPS))
def test_every_op_is_silent_and_shaped_at_edge_values(name):
    """0, -0, ±inf, nan, huge and tiny entries (all alike, or mixed; zero
    rows among them), with edge cotangents and tangents: no rule raises or
    warns (Python warnings are errors here), and every result has its shape.
    Non-finite results are the tape's to report, not the ops'."""
    op = OPS[name]
    with numerics_as_on_the_tape():
        for shapes, params, out_shape in calls(op, EDGE_SHAPES):
            fills = [[np.full(s, v) for s in shapes] for v in EDGE_VALUES]
            fills.append([edge_filled(s, 3 * i + 1) for i, s in enumerate(shapes)])
            for xs in fills:
                for g, tangent in ((np.ones(out_shape), np.ones), (edge_filled(out_shape), edge_filled)):
                    try:
                        call_rules(op, xs, params, out_shape, g, tangent)
                    except Exception as err:
                        raise AssertionError(f"{name}{shapes} {params} at {xs}: {err!r}") from err


# ------------------------------------------------ pow at 0 and below 0
# (a, b, ∂(a**b)/∂a, ∂(a**b)/∂b): these match torch 2.13's autograd of
# `a ** b` for float64 tensors a and b (pow_backward_self and
# pow_backward_exponent), read off once and written here in closed form.
LN2, R2 = math.log(2.0), math.sqrt(2.0)
INF, NAN = math.inf, math.nan
POW_PARTIALS = [
    # a = 0: a**0 is 1 for every a, so ∂a is 0 there; ∂b is 0 wherever b >= 0.
    (0.0, 0.0, 0.0, 0.0), (0.0, 1.0, 1.0, 0.0), (0.0, 2.0, 0.0, 0.0), (0.0, 3.0, 0.0, 0.0),
    (0.0, -1.0, -INF, -INF), (0.0, -2.0, -INF, -INF), (0.0, 0.5, INF, 0.0), (0.0, -0.5, -INF, -INF),
    (0.0, 1.5, 0.0, 0.0), (-0.0, 0.0, 0.0, 0.0), (-0.0, 1.0, 1.0, 0.0), (-0.0, -1.0, -INF, INF),
    # a < 0: integer exponents have ∂a; ∂b (a**b log a) is nan, log of a negative number.
    (-2.0, 0.0, 0.0, NAN), (-2.0, 1.0, 1.0, NAN), (-2.0, 2.0, -4.0, NAN), (-2.0, 3.0, 12.0, NAN),
    (-2.0, -1.0, -0.25, NAN), (-2.0, -2.0, 0.25, NAN), (-2.0, 0.5, NAN, NAN), (-2.0, -0.5, NAN, NAN),
    (-0.5, 2.0, -1.0, NAN), (-0.5, -1.0, -4.0, NAN), (-0.5, -2.0, 16.0, NAN), (-1.0, 3.0, 3.0, NAN),
    # a > 0, integer and fractional exponents.
    (2.0, 0.0, 0.0, LN2), (2.0, 1.0, 1.0, 2 * LN2), (2.0, 2.0, 4.0, 4 * LN2), (2.0, 3.0, 12.0, 8 * LN2),
    (2.0, -1.0, -0.25, LN2 / 2), (2.0, -2.0, -0.25, LN2 / 4), (2.0, 0.5, 0.5 / R2, R2 * LN2),
    (2.0, -0.5, -0.25 / R2, LN2 / R2), (2.0, 1.5, 1.5 * R2, 2 * R2 * LN2), (0.5, -1.0, -4.0, -2 * LN2),
    (1.0, NAN, NAN, 0.0),
    # Non-finite operands.
    (INF, 0.0, 0.0, INF), (INF, 2.0, INF, INF), (INF, -1.0, 0.0, NAN), (-INF, 2.0, -INF, NAN),
    (-INF, 3.0, INF, NAN), (NAN, 0.0, 0.0, NAN), (0.0, NAN, NAN, NAN),
]


def test_pow_partials_match_pytorch_at_zero_negative_and_integer_points():
    """Both partials of `a ** b`, through the vjp and the jvp alike."""
    a, b, da, db = (np.array(column) for column in zip(*POW_PARTIALS))
    op = OPS["pow"]
    with numerics_as_on_the_tape():
        out = op.impl(a, b)
        ones = np.ones_like(out)
        reverse = [op.vjp(i, ones, out, a, b) for i in (0, 1)]
        forward = [op.jvp([ones[None], None], out, a, b)[0], op.jvp([None, ones[None]], out, a, b)[0]]
    for got in (reverse, forward):
        np.testing.assert_allclose(got[0], da, rtol=1e-15, err_msg="∂/∂a")
        np.testing.assert_allclose(got[1], db, rtol=1e-15, err_msg="∂/∂b")


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("p, expected", [(0, [0.0, 0.0, 0.0]), (1, [1.0, 1.0, 1.0]), (2, [0.0, -4.0, 4.0]),
                                         (3, [0.0, 12.0, 12.0])])
def test_integer_powers_differentiate_at_zero_and_below(p, expected, mode):
    """`x ** p` in a program, at 0 and at ±2, as PyTorch differentiates it."""
    got = gradients(f"x = [0, -2, 2]\nloss = (x ** {p}).sum", ["x"], mode=mode).gradients["x"]
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(allow_nan=True, allow_infinity=True, width=64), min_size=1, max_size=40),
       st.integers(-8, 8) | st.sampled_from([0.5, -1.5, 2.0**60, 3.25]))
def test_a_power_is_numpys_and_even_or_odd_in_its_base(base, exponent):
    """`pow`'s value rule takes a whole-number power of a negative base as
    ±|a| ** b (ops._power: libm's pow is ten times slower there): np.power's
    value for every base that is not negative, within one unit in the last
    place of it for those that are, and exactly even (or odd) in the base."""
    a, b = np.array(base), np.array(float(exponent))
    op = OPS["pow"]
    with np.errstate(all="ignore"):
        got, want, mirrored = op.impl(a, b), np.power(a, b), op.impl(-a, b)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    settled = ~np.isnan(want)
    assert np.array_equal(np.signbit(got[settled]), np.signbit(want[settled]))
    assert np.array_equal(got[~(a < 0)], want[~(a < 0)], equal_nan=True)
    close = settled & np.isfinite(want) & np.isfinite(got)
    np.testing.assert_array_max_ulp(got[close], want[close], maxulp=1)
    assert np.array_equal(np.isinf(got), np.isinf(want))
    if float(exponent).is_integer():
        sign = 1.0 if float(exponent) % 2 == 0 else -1.0
        assert np.array_equal(mirrored[settled], sign * got[settled])


def test_a_square_is_numpys_power_of_two_bit_for_bit():
    """x ** 2 is np.square (ops._power), which is np.power's own x · x for
    a scalar exponent of 2 (numpy ≥ 2.1), the sign of a nan included."""
    x = np.array([-np.nan, np.nan, -0.0, 0.0, -3.5, 1e200, -1.5e154, 5e-324, -np.inf, np.inf])
    with np.errstate(all="ignore"):
        got, want = OPS["pow"].impl(x, np.array(2.0)), np.power(x, 2.0)
    assert got.tobytes() == want.tobytes() == np.square(x).tobytes()


@pytest.mark.parametrize("shape, to", [((1,), (3,)), ((2, 1), (2, 5)), ((), (4, 4)), ((1, 3), (0, 3)),
                                       ((1,), (1025,)), ((33, 1), (33, 32)), ((1, 40), (40, 40))])
def test_broadcast_to_copies_a_small_result_and_views_a_large_one(shape, to):
    """broadcastTo's value rule (ops._broadcast_to) gives np.broadcast_to's
    values: a result of up to COPIED_BROADCAST_ENTRIES as a copy, a larger
    one as np.broadcast_to's read-only view of its operand."""
    from spiread_cli.ops import COPIED_BROADCAST_ENTRIES
    x = RNG.standard_normal(shape)
    got = OPS["broadcastTo"].impl(x, shape=to)
    assert got.shape == to and np.array_equal(got, np.broadcast_to(x, to))
    assert np.shares_memory(got, x) == (math.prod(to) > COPIED_BROADCAST_ENTRIES > 0 and x.size > 0)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 4), max_size=3), st.lists(st.booleans(), max_size=3), st.integers(0, 2),
       st.sampled_from(["C", "F", "strided", "int", "float32"]), st.data())
def test_a_broadcast_view_is_numpys(shape, stretched, lead, layout, data):
    """`ops.broadcast_view` (broadcastTo's larger results, and its batched
    rule, every forward sweep's broadcast tangent) is np.broadcast_to: the
    same shape, strides, values and memory, read-only, for operands in any
    layout and dtype (those not float64 in C order are np.broadcast_to's own),
    and the same error where the shapes do not broadcast."""
    from spiread_cli.ops import broadcast_view
    to = tuple([data.draw(st.integers(0, 3), label="new axis") for _ in range(lead)] + shape)
    given_shape = tuple(1 if i < len(stretched) and stretched[i] else n for i, n in enumerate(shape))
    x = RNG.standard_normal(given_shape)
    if layout == "F":
        x = np.array(x, order="F")
    elif layout == "strided":
        x = RNG.standard_normal(tuple(2 * n for n in given_shape))[tuple(slice(None, None, 2) for _ in given_shape)]
    elif layout in ("int", "float32"):
        x = (x * 10).astype(int if layout == "int" else np.float32)
    if data.draw(st.booleans(), label="a shape it does not broadcast to") and to and to[-1] > 1:
        wrong = to[:-1] + (to[-1] + 1,)
        if x.ndim and x.shape[-1] == to[-1]:
            with pytest.raises(ValueError):
                np.broadcast_to(x, wrong)
            with pytest.raises(ValueError):
                broadcast_view(x, wrong)
        return
    got, want = broadcast_view(x, to), np.broadcast_to(x, to)
    assert got.shape == want.shape and got.dtype == want.dtype and not got.flags.writeable
    assert got.tobytes() == want.tobytes() and (got.strides == want.strides or got.size == 0)
    assert np.shares_memory(got, x) == np.shares_memory(want, x)


# ------------------------------------------- programs on empty values
EMPTY_PROGRAMS = [  # (program, its value, the shape of x; its gradient is zeros of that shape)
    ("x = zeros(3, 0)\nloss = x.softmaxRows.sum", 0.0, (3, 0)),
    ("x = zeros(3, 0)\nloss = x.logSoftmaxRows.sum", 0.0, (3, 0)),
    ("x = zeros(0)\nloss = x.product", 1.0, (0,)),
    ("x = zeros(3, 0)\nloss = x.mapRowsToScalar(product).sum", 3.0, (3, 0)),
    ("x = zeros(3, 0)\nloss = x.mapRowsToScalar(mean).mean", math.nan, (3, 0)),
    ("x = zeros(0)\nloss = x.mean", math.nan, (0,)),
    ("x = zeros(3, 0)\nloss = (x @@ zeros(0, 2)).sum + 1", 1.0, (3, 0)),
    ("x = zeros(0)\nloss = Matrix.fromColumns(x, x).sum", 0.0, (0,)),
    ("x = zeros(2, 3)\nloss = x.select([], []).sum + x.arrange([], []).sum", 0.0, (2, 3)),
    ("x = zeros(3, 0)\nloss = x.normaliseRowsL2.sum + x.normaliseRowsL1.sum", 0.0, (3, 0)),
]


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("text, expected, shape", EMPTY_PROGRAMS, ids=[p[0].split("\n")[1] for p in EMPTY_PROGRAMS])
def test_programs_on_empty_values(text, expected, shape, mode):
    """The issue's examples and their kind: a value, a zero gradient of x's
    shape, and nothing from numpy on the way (its warnings are errors here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = run(text)
        result = run_gradients(r, ["x"], mode)
    np.testing.assert_array_equal(result.value, expected)
    np.testing.assert_array_equal(result.gradients["x"], np.zeros(shape))
    if math.isnan(expected):  # the tape's own warning, located at the op
        first = r.diagnostics.warnings[0]
        assert first.message.startswith("`") and " gave nan" in first.message and first.span.line == 2


def test_the_command_line_differentiates_an_empty_softmax(tmp_program):
    path = tmp_program("x = zeros(3, 0)\nloss = x.softmaxRows.sum\n")
    result = spiread("grad", path, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["gradients"]["x"] == {"shape": [3, 0], "value": [[], [], []]}


@pytest.mark.parametrize("spelling", sorted(METHODS))
def test_every_method_on_empty_receivers_through_the_language(spelling):
    """Each method spelling of the table on values with no entries, evaluated
    and differentiated in both modes: a result with a gradient of the
    receiver's shape, or a located error, and no numpy warning."""
    from spiread_cli.diagnostics import SpireadError
    op = METHODS[spelling]
    argument = "(0.5)" if op.params else ("(zeros(0, 2))" if op.name == "matmul" else ("(2)" if op.arity == 2 else ""))
    for receiver, shape in (("zeros(0)", (0,)), ("zeros(3, 0)", (3, 0)), ("zeros(0, 3)", (0, 3))):
        text = f"x = {receiver}\nloss = x.{spelling}{argument}.sum"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            try:
                r = run(text)
            except SpireadError as err:  # a shape rule's refusal, at the method
                assert err.diagnostic.span is not None and err.diagnostic.span.line == 2, text
                continue
            for mode in ("reverse", "forward"):
                assert run_gradients(r, ["x"], mode).gradients["x"].shape == shape, (text, mode)


def test_scatter_rows_over_many_blocks_adds_every_row():
    """gatherRows' vjp sums rows block by block (ops.SCATTER_BLOCK_ROWS): over
    several blocks and a partial last one it is np.add.at's sum."""
    from spiread_cli import ops
    rows = 2 * ops.SCATTER_BLOCK_ROWS + 17
    index = RNG.integers(0, 5, rows)
    g = RNG.normal(size=(rows, 3))
    expected = np.zeros((5, 3))
    np.add.at(expected, index, g)
    np.testing.assert_allclose(OPS["gatherRows"].vjp(0, g, None, np.zeros((5, 3)), index=index), expected,
                               rtol=1e-12, atol=1e-12)


KEEPING = [(case, k) for case in CASES for k in OPS[case.op].keeps_nonfinite]


@pytest.mark.parametrize("case, k", KEEPING, ids=lambda c: c.id if isinstance(c, Case) else str(c))
def test_an_operand_whose_nonfinite_entries_an_op_keeps_makes_its_value_not_finite(case, k):
    """`Op.keeps_nonfinite`: an inf, -inf or nan at any entry of operand k
    gives the value one (a written replay that checks the value checks the
    operand so: tape_nodes.straight_line), the other operands as given or
    zero (inf · 0 is nan), by the op's rule and its unguarded one."""
    op = OPS[case.op]
    assert op.structure.kind != "copies" and op.name != "matmul"
    for others in ("given", "zero"):
        for at in range(np.size(case.xs[k])):
            for poison in (np.inf, -np.inf, np.nan):
                xs = [np.array(x, dtype=float) if i == k or others == "given" else np.zeros(np.shape(x))
                      for i, x in enumerate(case.xs)]
                xs[k].flat[at] = poison
                for rule in filter(None, (op.impl, op.unguarded)):
                    with np.errstate(all="ignore"):
                        value = np.asarray(rule(*xs, **case.params))
                    assert value.size == 0 or not np.isfinite(value).all(), (case.id, at, poison, others)
