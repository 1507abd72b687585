"""The op table: every primitive's forward, derivative and shape rules, together.

Each `Op` is a name with its rules side by side, one entry per primitive
(micrograd's and `torch.autograd.Function`'s style: the forward rule and the
derivative rules of an op written together):

- ``impl(*xs, **params)`` computes the value (numpy), the primal rule;
- ``vjp(i, g, out, *xs, **params)`` pulls the output cotangent `g` back to
  input `i` (reverse mode); it is only called for inputs that need a gradient;
- ``jvp(ts, out, *xs, **params)`` pushes input tangents forward (forward mode).
  Tangents carry one extra *leading* batch axis, one slice per seed direction,
  so a single call computes every directional derivative; ``ts[i]`` is None for
  an input with no tangent;
- ``shape(*shapes, **params)`` gives the output shape or raises ShapeError, so
  bad programs are refused (and huge results sized) before anything is computed;
- ``vjp_graph(i, g, out, *xs, emit, **params)`` is the vjp written over the
  table's own ops, so a backward pass can be *recorded* on the tape and
  differentiated again (PyTorch's create_graph, JAX's grad-of-grad). `g`,
  `out` and `xs` are node ids; ``emit(op_name, inputs, **params)`` records an
  op and returns its id, ``emit.const(value)`` a constant, ``emit.shape(id)``
  a node's shape. It returns the id of the cotangent for input `i`, or None
  where it is zero. The numeric `vjp` stays the fast path for first order;
  tests/test_second_order.py holds the two equal for every op;
- ``rule`` is the vjp and jvp in words (`Rule`), shown by `grad --explain`;
- ``fwd(*xs, **params) -> (value, residual)``, for the few ops whose
  derivative rules need what the forward pass computed anyway (JAX's
  fwd/bwd pairs: the softmax's exponentials and row totals): it replaces
  `impl` (which `defop` derives from it), and the vjp and jvp take the
  residual as the keyword `residual`. The tape keeps it on the node, a
  replay refreshes it, and the reverse sweep hands it to the vjp and drops
  it; a caller without one (a test, a second sweep) gets it recomputed by
  `fwd`. A vjp may overwrite the residual it is handed (only one-operand
  ops do: each operand's vjp would see the same one); a jvp only reads it.

Adding a primitive means adding one entry here. Broadcasting is undone by one
shared helper, `unbroadcast`, as in HIPS autograd.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


class ShapeError(Exception):
    """A shape rule refused its operands. `{0}`, `{1}` in the message stand for
    the operands as they appear in the source; the caller fills them in."""


@dataclass(frozen=True, slots=True)
class Rule:
    """An op's derivative rules in words, for `spiread grad --explain`: what
    the vjp sends back to each operand, in terms of the incoming adjoint g, the
    op's value `out` and its operands (x; a, b; x0, x1, …), and the tangent the
    jvp makes from the operands' tangents ẋ, ȧ, ḃ."""
    vjp: tuple[str, ...]  # one per operand (a variadic op: one for all)
    jvp: str


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    impl: Callable
    vjp: Callable
    jvp: Callable
    shape: Callable
    # How the op is written as a method `x.m(args)`: its spellings, and the
    # names of the number parameters its arguments bind (after the tensor
    # operands). Ops reached only through other syntax have no spellings.
    methods: tuple[str, ...] = ()
    params: tuple[str, ...] = ()
    arity: int = 1  # array operands, the receiver included
    # Where the op has no derivative: kink(*xs, **params) -> bool mask over the
    # first operand. `check` names these points when finite differences and
    # AD disagree there.
    kink: Callable | None = None
    # Acts on each row of a matrix on its own, so it commutes with a row
    # gather (spiread_cli/rewrite.py hoists it before one).
    row_wise: bool = False
    # The vjp as recorded ops (see the module docstring); None only for the
    # ops in BACKWARD_ONLY.
    vjp_graph: Callable | None = None
    # The vjp and jvp in words (`grad --explain`); every op has them.
    rule: Rule | None = None
    # The forward rule that also returns a residual for the derivative rules
    # (see the module docstring); None for most ops.
    fwd: Callable | None = None


OPS: dict[str, Op] = {}
METHODS: dict[str, Op] = {}


def defop(name, impl, vjp, jvp, shape, methods=None, params=(), arity=1, kink=None, row_wise=False,
          vjp_graph=None, *, rule: Rule, fwd: Callable | None = None) -> Op:
    if fwd is not None:  # impl is fwd's value; the derivative rules get a residual whoever calls them
        impl, vjp, jvp = _value_of(fwd), _given_residual(fwd, vjp, 3), _given_residual(fwd, jvp, 2)
    op = Op(name, impl, vjp, jvp, shape, (name,) if methods is None else methods, params, arity, kink, row_wise,
            vjp_graph, rule, fwd)
    OPS[name] = op
    METHODS.update((spelling, op) for spelling in op.methods)
    return op


def _value_of(fwd: Callable) -> Callable:
    def impl(*xs, **params):
        return fwd(*xs, **params)[0]
    return impl


def _given_residual(fwd: Callable, rule: Callable, lead: int) -> Callable:
    """A derivative rule taking `residual=`; a caller that has none (tests,
    a sweep after the residual was used) gets it recomputed from the
    operands, which follow the rule's `lead` leading arguments."""
    @functools.wraps(rule)
    def with_residual(*args, residual=None, **params):
        if residual is None:
            residual = fwd(*args[lead:], **params)[1]
        return rule(*args, residual=residual, **params)
    return with_residual


# ------------------------------------------------------------------ helpers


def unbroadcast(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum `g` over the axes that broadcasting added or stretched to reach `shape`."""
    while g.ndim > len(shape):
        g = g.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = g.sum(axis=axis, keepdims=True)
    return g


def lift(t: np.ndarray, ndim: int) -> np.ndarray:
    """Give a batched tangent (k, *s) singleton axes after the batch axis so it
    broadcasts against values of rank `ndim` the way its primal does."""
    missing = ndim - (t.ndim - 1)
    return t.reshape(t.shape[:1] + (1,) * missing + t.shape[1:]) if missing > 0 else t


def scale(t: np.ndarray, d) -> np.ndarray:
    """t * d, except that a zero (co)tangent stays zero where d is infinite or
    nan: an entry that does not move has no derivative to scale. This keeps a
    gradient finite when it flows around a -inf that the output never sees
    (the seed example's empty row), in both modes alike."""
    if type(d) is float:  # a constant partial (add, sub): nothing to guard, often nothing to do
        return t if d == 1.0 else t * d
    r = t * d
    # One sum is finite exactly when every entry is (bar overflow, which only
    # sends us down the slower, still correct path). Callers hold np.errstate.
    # A lazy product is not summed here (that would compute it): guarded as it stands.
    if not is_lazy(r) and math.isfinite(r.sum()):
        return r
    return np.where(t == 0, 0.0, r)


def same_shape(s, **_):
    return s


def is_lazy(value) -> bool:
    """A Dask array (`--backend dask`'s fallback, spiread_cli/dask_lazy.py):
    computed later, so a rule never inspects its values."""
    return hasattr(value, "__dask_graph__")


def _copied(x):
    """x as a new array (a lazy one is never written to, so it stays as it is)."""
    return x if is_lazy(x) else np.array(x)


def broadcast_shape(a, b, **_):
    if a == b or not b:  # the usual cases, answered without numpy's general rule (a tenth of recording)
        return a
    if not a:
        return b
    try:
        return np.broadcast_shapes(a, b)
    except ValueError:
        raise ShapeError("shapes do not broadcast, {0} is {s0}, {1} is {s1}") from None


def scalar_shape(s, **_):
    return ()


def require_matrix(s, what: str):
    if len(s) != 2:
        raise ShapeError(f"{what} needs a matrix, but {{0}} is {{s0}}")


def batch_sum(t: np.ndarray) -> np.ndarray:
    """Sum a batched tangent over everything but its batch axis."""
    return batch_rows(t).sum(axis=1)


def batch_rows(t: np.ndarray) -> np.ndarray:
    """A batched tangent (k, *s) as a k × size(s) matrix. The sizes are
    spelled out: reshape cannot infer a -1 when either one is 0."""
    return t.reshape(t.shape[0], math.prod(t.shape[1:]))


# ------------------------------------------------------------ elementwise


def elementwise(name: str, f: Callable, df: Callable, dgraph: Callable, kink: Callable | None = None,
                bounded: bool = False, *, derivative: str) -> Op:
    """A unary elementwise op from its function, its derivative df(x, out),
    and the same derivative as recorded ops, dgraph(x, out, emit) -> node id
    (or a constant factor); `derivative` is df in words. `bounded`: df is
    finite at every input, ±inf included, so a zero (co)tangent needs no guard
    and the product is a plain one."""
    times = np.multiply if bounded else scale

    def vjp_in_place(i, g, out, x):
        d = df(x, out)
        if type(d) is ndarray and d.size >= IN_PLACE_ENTRIES and _made_here(d, x, out, g):
            return np.multiply(g, d, out=d)  # one array allocated rather than two
        return np.multiply(g, d)

    return defop(name, f, vjp=vjp_in_place if bounded else lambda i, g, out, x: scale(g, df(x, out)),
                 jvp=lambda ts, out, x: times(ts[0], df(x, out)),
                 shape=same_shape, kink=kink, row_wise=True,
                 vjp_graph=lambda i, g, out, x, emit: times_graph(emit, g, dgraph(x, out, emit), not bounded),
                 rule=Rule((f"g · ∂{name}/∂x = g · {derivative}",), f"ẋ · ∂{name}/∂x = ẋ · {derivative}"))


# Below this many entries writing in place saves nothing measurable, and
# numpy's `out=` costs more than the allocation it saves (the chain
# benchmark's 4-vectors): the elementwise vjps and the reverse sweep's sums
# work in place only from this size on.
IN_PLACE_ENTRIES = 4096
ndarray = np.ndarray


def _made_here(d: np.ndarray, x: np.ndarray, out: np.ndarray, g: np.ndarray) -> bool:
    """Whether a derivative rule's result d is an array it made just now, so
    its vjp may write the product with g into it: g's shape, neither x nor
    out, and no view of anything (and g no Dask array, which numpy would
    compute to write it here)."""
    return d.base is None and d is not x and d is not out and type(g) is ndarray and d.shape == g.shape


def times_graph(emit, g: int, d, guarded: bool = True) -> int:
    """g · d as recorded ops, for a node d or a constant factor d. `guarded`
    records `scale` (a zero cotangent stays zero where d is not finite, as the
    numeric rules' `scale` helper) rather than a plain `mul`."""
    if type(d) is float:
        if d == 1.0:
            return g
        return emit("neg", [g]) if d == -1.0 else emit("mul", [g, emit.const(d)])
    return emit("scale" if guarded else "mul", [g, d])


def _reusing(ufunc: np.ufunc, a, made):
    """ufunc(a, made) written into `made`, an array the derivative rule has
    just made. numpy reuses a temporary by itself only as the first operand
    (or either, for a commutative ufunc): `1 - out * out` allocates twice,
    and a second fresh array is page-faulted in (half of tanh's vjp in the
    mlp step)."""
    return ufunc(a, made, out=made) if type(made) is ndarray else ufunc(a, made)


def _sigmoid(x):
    # exp of a negative number only, so neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _one(emit):
    return emit.const(1.0)


elementwise("exp", np.exp, lambda x, out: out, lambda x, out, e: out, derivative="out")
elementwise("log", np.log, lambda x, out: 1 / x, lambda x, out, e: e("div", [_one(e), x]), derivative="1/x")
elementwise("sin", np.sin, lambda x, out: np.cos(x), lambda x, out, e: e("cos", [x]), bounded=True,
            derivative="cos x")
elementwise("cos", np.cos, lambda x, out: -np.sin(x), lambda x, out, e: e("neg", [e("sin", [x])]), bounded=True,
            derivative="−sin x")
elementwise("tan", np.tan, lambda x, out: 1 + out * out, lambda x, out, e: e("add", [_one(e), e("square", [out])]),
            derivative="1 + out²")
elementwise("tanh", np.tanh, lambda x, out: _reusing(np.subtract, 1.0, out * out),
            lambda x, out, e: e("sub", [_one(e), e("square", [out])]),
            bounded=True, derivative="1 − out²")
elementwise("sinh", np.sinh, lambda x, out: np.cosh(x), lambda x, out, e: e("cosh", [x]), derivative="cosh x")
elementwise("cosh", np.cosh, lambda x, out: np.sinh(x), lambda x, out, e: e("sinh", [x]), derivative="sinh x")
elementwise("sqrt", np.sqrt, lambda x, out: 0.5 / out, lambda x, out, e: e("div", [e.const(0.5), out]),
            derivative="0.5/out")
elementwise("abs", np.abs, lambda x, out: np.sign(x), lambda x, out, e: e("sign", [x]), kink=lambda x: x == 0,
            bounded=True, derivative="sign x")
elementwise("square", np.square, lambda x, out: 2 * x, lambda x, out, e: e("mul", [e.const(2.0), x]),
            derivative="2x")
elementwise("sigmoid", _sigmoid, lambda x, out: out * (1 - out),
            lambda x, out, e: e("mul", [out, e("sub", [_one(e), out])]), bounded=True,
            derivative="out · (1 − out)")
elementwise("relu", lambda x: np.maximum(x, 0.0), lambda x, out: (x > 0).astype(float),
            lambda x, out, e: e("indicator", [x], relation=">", t=0.0), kink=lambda x: x == 0, bounded=True,
            derivative="(x > 0)")
elementwise("log1p", np.log1p, lambda x, out: _reusing(np.divide, 1.0, 1 + x),
            lambda x, out, e: e("div", [_one(e), e("add", [_one(e), x])]), derivative="1/(1 + x)")
elementwise("neg", np.negative, lambda x, out: -1.0, lambda x, out, e: -1.0, derivative="−1")
# clamps: the gradient passes where the bound is not active, and at the bound
# itself, as torch.clamp does.
defop("clampMin", lambda x, t: np.maximum(x, t),
      vjp=lambda i, g, out, x, t: g * (x >= t),
      jvp=lambda ts, out, x, t: ts[0] * (x >= t),
      shape=same_shape, params=("t",), kink=lambda x, t: x == t,
      vjp_graph=lambda i, g, out, x, emit, t: emit("mul", [g, emit("indicator", [x], relation=">=", t=t)]),
      rule=Rule(("g · (x ≥ t)",), "ẋ · (x ≥ t)"))
defop("clampMax", lambda x, t: np.minimum(x, t),
      vjp=lambda i, g, out, x, t: g * (x <= t),
      jvp=lambda ts, out, x, t: ts[0] * (x <= t),
      shape=same_shape, params=("t",), kink=lambda x, t: x == t,
      vjp_graph=lambda i, g, out, x, emit, t: emit("mul", [g, emit("indicator", [x], relation="<=", t=t)]),
      rule=Rule(("g · (x ≤ t)",), "ẋ · (x ≤ t)"))


# Ops with a derivative of 0 wherever they have one: the masks that the
# derivative rules of relu, abs, the clamps and L1 normalisation multiply by.
# At the jump itself the derivative is taken as 0 too (PyTorch's choice), so a
# second derivative through a kink is 0 away from it; `check` reports the jump.
_RELATIONS = {">": np.greater, ">=": np.greater_equal, "<=": np.less_equal}


def _zero_jvp(ts, out):
    return np.zeros((ts[0].shape[0],) + out.shape)


defop("sign", np.sign, lambda i, g, out, x: np.zeros_like(x), lambda ts, out, x: _zero_jvp(ts, out),
      same_shape, methods=(), kink=lambda x: x == 0, vjp_graph=lambda i, g, out, x, emit: None,
      rule=Rule(("0: sign is flat wherever it has a derivative",), "0"))
defop("indicator", lambda x, relation, t: _RELATIONS[relation](x, t).astype(np.float64),
      lambda i, g, out, x, relation, t: np.zeros_like(x), lambda ts, out, x, relation, t: _zero_jvp(ts, out),
      same_shape, methods=(), kink=lambda x, relation, t: x == t,
      vjp_graph=lambda i, g, out, x, emit, relation, t: None,
      rule=Rule(("0: a step is flat wherever it has a derivative",), "0"))
# `x.value`: x without its history. Its value is x, its derivative 0.
defop("stopGradient", lambda x: _copied(x), lambda i, g, out, x: np.zeros_like(x),
      lambda ts, out, x: _zero_jvp(ts, out), same_shape, methods=(), vjp_graph=lambda i, g, out, x, emit: None,
      rule=Rule(("0: x.value has no history",), "0"))


def elementwise2(name: str, f: Callable, partials: tuple[Callable, Callable], methods=(),
                 partials_graph: tuple[Callable, Callable] | None = None, times: Callable = scale, *,
                 rule: Rule) -> Op:
    """A broadcasting binary op from its function and the partial derivative
    with respect to each operand, partials[i](out, a, b); partials_graph[i](out,
    a, b, emit) is the same partial as recorded ops (or a constant factor).
    `times` multiplies a (co)tangent by a partial."""
    def vjp(i, g, out, a, b):
        return unbroadcast(times(g, partials[i](out, a, b)), (a, b)[i].shape)

    def jvp(ts, out, a, b):
        total = None
        for i, t in enumerate(ts):
            if t is not None:
                term = times(lift(t, out.ndim), partials[i](out, a, b))
                total = term if total is None else total + term
        return np.broadcast_to(total, total.shape[:1] + out.shape)

    def vjp_graph(i, g, out, a, b, emit):
        return sum_to_graph(emit, times_graph(emit, g, partials_graph[i](out, a, b, emit)), emit.shape((a, b)[i]))

    return defop(name, f, vjp, jvp, broadcast_shape, methods, arity=2,
                 vjp_graph=vjp_graph if partials_graph else None, rule=rule)


def sum_to_graph(emit, g: int, shape: tuple) -> int:
    """unbroadcast as a recorded op, when there is broadcasting to undo."""
    return g if emit.shape(g) == shape else emit("sumTo", [g], shape=shape)


# The partials of a**b follow PyTorch's autograd (pow_backward_self and
# pow_backward_exponent) at every input, 0, negative and non-finite ones
# included: d/da is 0 wherever b == 0 (a**0 is 1 for every a, so the 0 · a**-1
# that the formula gives at a = 0 is no nan); d/db = a**b log a is 0 where
# a == 0 and b >= 0 (the limit of 0**b log 0 from above), and nan for a < 0,
# where a**b has no real derivative in b.
def _pow_base(out, a, b):
    return _zero_where(b == 0, b * np.power(a, b - 1))


def _pow_exponent(out, a, b):
    return _zero_where((a == 0) & (b >= 0), out * np.log(a))


def _zero_where(mask: np.ndarray, d: np.ndarray) -> np.ndarray:
    """`d`, 0 where `mask` holds. np.where costs 20× the product itself on a
    million entries (for a scalar mask too), so it runs only when needed."""
    return np.where(mask, 0.0, d) if is_lazy(mask) or mask.any() else d


def _scale_either(t: np.ndarray, d: np.ndarray) -> np.ndarray:
    """`scale`'s own derivative products: 0 where either factor is 0. scale(t, d)
    is 0 wherever t is, whatever d does, so an infinite change of d there moves
    nothing (the seed example's log(0), which a selection drops)."""
    r = t * d
    if not is_lazy(r) and math.isfinite(r.sum()):
        return r
    return np.where((t == 0) | (d == 0), 0.0, r)


def _pow_log_partials(out, a, b):
    """The partials of powLog(a, b) = d(a**b)/db = a**b log a: a**(b-1)(b log a + 1)
    and a**b (log a)², 0 where powLog itself is held at 0."""
    held = (a == 0) & (b >= 0)  # where _pow_exponent holds the partial at 0
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log(a)
        return (np.where(held, 0.0, np.power(a, b - 1) * (b * log + 1)),
                np.where(held, 0.0, np.power(a, b) * log * log))


elementwise2("add", np.add, (lambda out, a, b: 1.0, lambda out, a, b: 1.0),
             partials_graph=(lambda out, a, b, e: 1.0, lambda out, a, b, e: 1.0),
             rule=Rule(("g, summed to a's shape", "g, summed to b's shape"), "ȧ + ḃ"))
elementwise2("sub", np.subtract, (lambda out, a, b: 1.0, lambda out, a, b: -1.0),
             partials_graph=(lambda out, a, b, e: 1.0, lambda out, a, b, e: -1.0),
             rule=Rule(("g, summed to a's shape", "−g, summed to b's shape"), "ȧ − ḃ"))
elementwise2("mul", np.multiply, (lambda out, a, b: b, lambda out, a, b: a),
             partials_graph=(lambda out, a, b, e: b, lambda out, a, b, e: a),
             rule=Rule(("g · b, summed to a's shape", "g · a, summed to b's shape"), "ȧ · b + a · ḃ"))
elementwise2("div", np.divide, (lambda out, a, b: 1 / b, lambda out, a, b: -a / (b * b)), methods=("div",),
             partials_graph=(lambda out, a, b, e: e("div", [_one(e), b]),
                             lambda out, a, b, e: e("div", [e("neg", [a]), e("mul", [b, b])])),
             rule=Rule(("g / b, summed to a's shape", "−g · a / b², summed to b's shape"), "ȧ / b − a · ḃ / b²"))
elementwise2("pow", np.power, (_pow_base, _pow_exponent), methods=("pow",),
             partials_graph=(lambda out, a, b, e: e("scale", [b, e("pow", [a, e("sub", [b, _one(e)])])]),
                             lambda out, a, b, e: e("powLog", [a, b])),
             rule=Rule(("g · b · a^(b−1), summed to a's shape", "g · out · log a, summed to b's shape"),
                       "ȧ · b · a^(b−1) + ḃ · out · log a"))
# Only in recorded backward passes: `scale` is `mul` whose zero first operand
# stays zero against an infinite second (the numeric rules' `scale` helper);
# `powLog` is pow's partial in the exponent.
elementwise2("scale", scale, (lambda out, t, d: d, lambda out, t, d: t),
             partials_graph=(lambda out, t, d, e: d, lambda out, t, d, e: t), times=_scale_either,
             rule=Rule(("g · b (0 where a is), summed to a's shape", "g · a, summed to b's shape"),
                       "ȧ · b + a · ḃ (0 where a is)"))
elementwise2("powLog", lambda a, b: _pow_exponent(np.power(a, b), a, b),
             (lambda out, a, b: _pow_log_partials(out, a, b)[0], lambda out, a, b: _pow_log_partials(out, a, b)[1]),
             rule=Rule(("g · a^(b−1) · (b log a + 1), summed to a's shape",
                        "g · a^b · (log a)², summed to b's shape"),
                       "ȧ · a^(b−1) · (b log a + 1) + ḃ · a^b · (log a)²"))


# ------------------------------------------------------------------ matmul


def _as_matrices(a, b):
    """numpy.matmul's promotion of vectors: a (n,) is (1, n), b (n,) is (n, 1)."""
    return (a[None, :] if a.ndim == 1 else a), (b[:, None] if b.ndim == 1 else b)


# A matrix product with an inner size of at least this is compute-bound, and
# OpenBLAS runs it 10–25% faster with the longer side of its result
# contiguous (a 4,096 × 256 result column-major: the mlp's products); below
# it a product is bound by memory and the layouts around it matter more.
COMPUTE_BOUND_INNER = 64


def _product(a, b, like=None):
    """a @ b for matrices, laid out for speed: a compute-bound product with
    the longer side of its result contiguous (column-major if it is taller
    than wide, or square from two column-major operands); any other in the
    layout of `like`, the primal a cotangent stands for (so an elementwise
    rule meets its value and cotangent in one layout), else column-major if
    an operand is (a recorded backward pass's product with a transpose),
    else row-major. Column-major is the transpose of the transposed product,
    no copy."""
    if type(a) is ndarray and type(b) is ndarray and a.ndim == 2 and b.ndim == 2:
        if a.shape[1] >= COMPUTE_BOUND_INNER:
            m, n = a.shape[0], b.shape[1]
            column_major = m > n or (m == n and _column_major(a) and _column_major(b))
        else:
            column_major = _column_major(like) if like is not None else _column_major(a) or _column_major(b)
        if column_major:
            return np.matmul(b.T, a.T).T
    return np.matmul(a, b)


def _column_major(x: np.ndarray) -> bool:
    return x.flags.f_contiguous and not x.flags.c_contiguous


def _matmul_vjp(i, g, out, a, b):
    a2, b2 = _as_matrices(a, b)
    g2 = np.reshape(g, (a2.shape[0], b2.shape[1]))
    return _product(g2, b2.T, a2).reshape(a.shape) if i == 0 else _product(a2.T, g2, b2).reshape(b.shape)


def _matmul_jvp(ts, out, a, b):
    # Each term is one BLAS product over the whole tangent batch, not k small
    # ones: the batch axis is folded into the rows of the product.
    # Sizes are spelled out, never -1: reshape cannot infer one when a size is 0.
    a2, b2 = _as_matrices(a, b)
    (r, n), c = a2.shape, b2.shape[1]
    k = next(t for t in ts if t is not None).shape[0]
    terms = []  # added, not accumulated in place: a term may be lazy (a Dask array)
    if ts[0] is not None:
        terms.append((ts[0].reshape(k * r, n) @ b2).reshape(k, r, c))
    if ts[1] is not None:  # (tb_k a2ᵀ)ᵀ for each k, as one (k·c)×n by n×r product
        tb = np.swapaxes(ts[1].reshape(k, n, c), 1, 2).reshape(k * c, n)
        terms.append(np.swapaxes((tb @ a2.T).reshape(k, c, r), 1, 2))
    total = terms[0] if len(terms) == 1 else terms[0] + terms[1]
    return total.reshape((k,) + out.shape)


def _matmul_shape(a, b, **_):
    if len(a) == 0 or len(b) == 0:
        raise ShapeError("`@@` needs vectors or matrices, but {0} is {s0} and {1} is {s1}; use `*` to scale")
    inner_a, inner_b = a[-1], (b[0] if len(b) == 1 else b[-2])
    if inner_a != inner_b:
        raise ShapeError("inner sizes differ, {0} is {s0}, {1} is {s1}")
    return a[:-1] + b[1:] if len(b) == 2 else a[:-1]


def _matmul_vjp_graph(i, g, out, a, b, emit):
    """The numeric rule's products, with vectors reshaped to matrices and back."""
    sa, sb = emit.shape(a), emit.shape(b)
    r, c = (sa[0] if len(sa) == 2 else 1), (sb[1] if len(sb) == 2 else 1)
    g2 = reshape_graph(emit, g, (r, c))
    if i == 0:
        b2 = reshape_graph(emit, b, (sb[0], c))
        return reshape_graph(emit, emit("matmul", [g2, emit("transpose", [b2])]), sa)
    a2 = reshape_graph(emit, a, (r, sa[-1]))
    return reshape_graph(emit, emit("matmul", [emit("transpose", [a2]), g2]), sb)


def reshape_graph(emit, x: int, shape: tuple) -> int:
    return x if emit.shape(x) == shape else emit("reshape", [x], shape=shape)


defop("matmul", _product, _matmul_vjp, _matmul_jvp, _matmul_shape, methods=("matmul", "dot"), arity=2,
      vjp_graph=_matmul_vjp_graph,
      rule=Rule(("g @@ bᵀ", "aᵀ @@ g"), "ȧ @@ b + a @@ ḃ"))


def _transpose_shape(s, **_):
    return s[::-1]


defop("transpose", lambda x: x.T,
      vjp=lambda i, g, out, x: g.T,
      jvp=lambda ts, out, x: np.swapaxes(ts[0], -1, -2) if x.ndim == 2 else ts[0],
      shape=_transpose_shape, methods=("T", "transpose"),
      vjp_graph=lambda i, g, out, x, emit: emit("transpose", [g]),
      rule=Rule(("gᵀ",), "ẋᵀ"))


# --------------------------------------------------------------- reductions


def _exclusive_products(x: np.ndarray, axis: int) -> np.ndarray:
    """For each entry, the product of the others along `axis`, without
    dividing (so zeros are handled exactly)."""
    ones = np.ones(x.shape[:axis] + (1,) + x.shape[axis + 1:])
    left = np.cumprod(np.concatenate([ones, x], axis=axis), axis=axis)
    right = np.flip(np.cumprod(np.flip(np.concatenate([x, ones], axis=axis), axis), axis=axis), axis)
    n = x.shape[axis]
    return np.take(left, range(n), axis=axis) * np.take(right, range(1, n + 1), axis=axis)


# Of nothing, as numpy and PyTorch have it: the sum is 0, the product 1 and
# the mean nan. A mean is a sum divided by the count, not np.mean, which
# warns about an empty slice through Python's warnings, past np.errstate.
# Derivatives over no entries are empty sums: 0, whatever the value.
defop("sum", lambda x: np.sum(x),
      vjp=lambda i, g, out, x: np.broadcast_to(g, x.shape),
      jvp=lambda ts, out, x: batch_sum(ts[0]),
      shape=scalar_shape,
      vjp_graph=lambda i, g, out, x, emit: emit("broadcastTo", [g], shape=emit.shape(x)),
      rule=Rule(("g, copied to every entry of x",), "sum(ẋ)"))
defop("mean", lambda x: np.sum(x) / x.size,
      vjp=lambda i, g, out, x: np.broadcast_to(g / max(x.size, 1), x.shape),
      jvp=lambda ts, out, x: batch_sum(ts[0]) / max(x.size, 1),
      shape=scalar_shape,
      vjp_graph=lambda i, g, out, x, emit: emit("broadcastTo", [_divide_by_count(emit, g, x, None)],
                                                shape=emit.shape(x)),
      rule=Rule(("g / size(x), copied to every entry of x",), "mean(ẋ)"))
defop("product", lambda x: np.prod(x),
      vjp=lambda i, g, out, x: g * _exclusive_products(x.ravel(), 0).reshape(x.shape),
      jvp=lambda ts, out, x: batch_rows(ts[0]) @ _exclusive_products(x.ravel(), 0),
      shape=scalar_shape,
      vjp_graph=lambda i, g, out, x, emit: emit("mul", [g, emit("exclusiveProducts", [x], over="all")]),
      rule=Rule(("g · (the product of x's other entries)",), "Σ ẋ · (the product of x's other entries)"))


def _divide_by_count(emit, g: int, x: int, axis: int | None) -> int:
    """g / the number of entries a mean (over everything, or along `axis`) averages."""
    shape = emit.shape(x)
    return emit("div", [g, emit.const(float(max(math.prod(shape) if axis is None else shape[axis], 1)))])


def _per_row_graph(emit, g: int, x: int) -> int:
    """A row reduction's cotangent (r,) as a column (r, 1), to broadcast along rows."""
    return emit("reshape", [g], shape=(emit.shape(x)[0], 1))


def _rows_shape(s, **_):
    require_matrix(s, "a row reduction")
    return s[:1]


defop("rowSum", lambda x: x.sum(axis=1),
      vjp=lambda i, g, out, x: np.broadcast_to(g[:, None], x.shape),
      jvp=lambda ts, out, x: ts[0].sum(axis=-1),
      shape=_rows_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit: emit("broadcastTo", [_per_row_graph(emit, g, x)], shape=emit.shape(x)),
      rule=Rule(("g[r], copied along row r of x",), "rowSum(ẋ)"))
defop("rowMean", lambda x: x.sum(axis=1) / x.shape[1],
      vjp=lambda i, g, out, x: np.broadcast_to(g[:, None] / max(x.shape[1], 1), x.shape),
      jvp=lambda ts, out, x: ts[0].sum(axis=-1) / max(x.shape[1], 1),
      shape=_rows_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit: emit(
          "broadcastTo", [_per_row_graph(emit, _divide_by_count(emit, g, x, 1), x)], shape=emit.shape(x)),
      rule=Rule(("g[r] / columns, copied along row r of x",), "rowMean(ẋ)"))
defop("rowProduct", lambda x: x.prod(axis=1),
      vjp=lambda i, g, out, x: g[:, None] * _exclusive_products(x, 1),
      jvp=lambda ts, out, x: (ts[0] * _exclusive_products(x, 1)).sum(axis=-1),
      shape=_rows_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit: emit("mul", [_per_row_graph(emit, g, x),
                                                       emit("exclusiveProducts", [x], over="rows")]),
      rule=Rule(("g[r] · (the product of the row's other entries)",),
                "rowSum(ẋ · (the product of the row's other entries))"))


# ------------------------------------------------------- row normalisations
# A vector is normalised as a single row. The jvp rules use axis=-1 so the
# leading tangent batch axis passes through.


def _row_total(x):
    """np.sum(x, axis=-1, keepdims=True). Narrow rows sum faster by einsum
    (228,146 rows of 27: 1.7 ms against 5.3); long ones keep numpy's
    pairwise summation."""
    if x.shape[-1] <= 64 and not is_lazy(x):
        return np.einsum("...j->...", x)[..., None]
    return np.sum(x, axis=-1, keepdims=True)


def _l1(x):
    return _row_total(np.abs(x))


def _l2(x):
    return np.sqrt(_row_total(x * x))


def _row_max(x):
    """np.max(x, axis=-1, keepdims=True); the maximum of an empty row is
    -inf, max's identity (so log-sum-exp of nothing is -inf)."""
    if x.shape[-1] == 0:
        return np.full(x.shape[:-1] + (1,), -np.inf)
    return np.max(x, axis=-1, keepdims=True)


def _exp_shifted(x):
    """exp(x − rowmax(x)), C-ordered whatever x's layout (the residuals'
    users index it flat), and its row totals: the softmax is their ratio and
    log-sum-exp is rowmax + log(total); what the softmax ops keep for their
    derivatives."""
    m = _row_max(x)
    if is_lazy(x):  # a Dask array is not written to
        e = np.exp(x - m)
    else:
        e = np.subtract(x, m, order="C")
        np.exp(e, out=e)
    return m, e, _row_total(e)


def _softmax(x):
    _, e, total = _exp_shifted(x)
    return e / total if is_lazy(e) else np.divide(e, total, out=e)


def _log_softmax_fwd(x):
    m, e, total = _exp_shifted(x)
    return (x - m) - np.log(total), (e, total)


def _log_softmax_vjp(i, g, out, x, *, residual):
    """g − softmax · rowSum(g), the softmax's exponentials (the residual) overwritten."""
    e, total = residual
    if is_lazy(e) or is_lazy(g):
        return g - e * (_row_total(g) / total)
    spread = np.multiply(e, _row_total(g) / total, out=e)
    return np.subtract(g, spread, out=spread)


def _normalise_fwd(norm: Callable) -> Callable:
    """A row normalisation's forward rule: x / norm(x), keeping the norms."""
    def fwd(x):
        n = norm(x)
        return x / n, n
    return fwd


def _row_shape(s, **_):
    if len(s) == 0:
        raise ShapeError("a row normalisation needs a vector or matrix, but {0} is {s0}")
    return s


defop("normaliseRowsL1", None, methods=("normaliseRowsL1", "normalizeRowsL1"), fwd=_normalise_fwd(_l1),
      vjp=lambda i, g, out, x, *, residual: (g - np.sign(x) * _row_total(g * out)) / residual,
      jvp=lambda ts, out, x, *, residual: (ts[0] - out * _row_total(np.sign(x) * ts[0])) / residual,
      shape=_row_shape, kink=lambda x: x == 0, row_wise=True,
      vjp_graph=lambda i, g, out, x, emit: emit("div", [
          emit("sub", [g, emit("mul", [emit("sign", [x]), emit("rowTotal", [emit("mul", [g, out])])])]),
          emit("rowTotal", [emit("abs", [x])])]),
      rule=Rule(("(g − sign(x) · rowSum(g · out)) / rowSum(|x|)",),
                "(ẋ − out · rowSum(sign(x) · ẋ)) / rowSum(|x|)"))
defop("normaliseRowsL2", None, methods=("normaliseRowsL2", "normalizeRowsL2"), fwd=_normalise_fwd(_l2),
      vjp=lambda i, g, out, x, *, residual: (g - out * _row_total(g * out)) / residual,
      jvp=lambda ts, out, x, *, residual: (ts[0] - out * _row_total(out * ts[0])) / residual,
      shape=_row_shape, row_wise=True,
      vjp_graph=lambda i, g, out, x, emit: emit("div", [
          emit("sub", [g, emit("mul", [out, emit("rowTotal", [emit("mul", [g, out])])])]),
          emit("sqrt", [emit("rowTotal", [emit("mul", [x, x])])])]),
      rule=Rule(("(g − out · rowSum(g · out)) / ‖row of x‖",),
                "(ẋ − out · rowSum(out · ẋ)) / ‖row of x‖"))
defop("softmaxRows", _softmax,
      vjp=lambda i, g, out, x: out * (g - _row_total(g * out)),
      jvp=lambda ts, out, x: out * (ts[0] - _row_total(out * ts[0])),
      shape=_row_shape, row_wise=True,
      vjp_graph=lambda i, g, out, x, emit: emit("mul", [out, emit("sub", [g, emit("rowTotal", [emit("mul", [g, out])])])]),
      rule=Rule(("out · (g − rowSum(g · out))",), "out · (ẋ − rowSum(out · ẋ))"))
defop("logSoftmaxRows", None, fwd=_log_softmax_fwd,
      vjp=_log_softmax_vjp,
      jvp=lambda ts, out, x, *, residual: ts[0] - _row_total(residual[0] / residual[1] * ts[0]),
      shape=_row_shape, row_wise=True,
      vjp_graph=lambda i, g, out, x, emit: emit("sub", [g, emit("mul", [emit("exp", [out]), emit("rowTotal", [g])])]),
      rule=Rule(("g − exp(out) · rowSum(g)",), "ẋ − rowSum(exp(out) · ẋ)"))


# ---------------------------------------------------------------- indexing
# Index parameters are fixed when the tape is recorded. `key` is a tuple of
# ints and slices (basic indexing); `rows`/`cols` are int arrays.


def _index_vjp(i, g, out, x, key):
    grad = np.zeros_like(x)
    grad[key] = g
    return grad


def _index_shape(s, key):
    return np.broadcast_to(np.empty((), np.bool_), s)[key].shape  # a view of one byte: sizes only


defop("index", lambda x, key: _copied(x[key]),
      vjp=_index_vjp,
      jvp=lambda ts, out, x, key: ts[0][(slice(None),) + key],
      shape=_index_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit, key: emit("indexScatter", [g], key=key, shape=emit.shape(x)),
      rule=Rule(("g at the indexed entries, 0 elsewhere",), "ẋ[index]"))


def _select(x, rows, cols):
    """vecxt selection: zeros except the chosen entries."""
    if is_lazy(x):  # a lazy array is not written to: the chosen entries as a mask
        chosen = np.zeros(x.shape, dtype=bool)
        chosen[rows, cols] = True
        return np.where(chosen, x, 0.0)
    out = np.zeros_like(x)
    out[rows, cols] = x[rows, cols]
    return out


def _select_jvp(ts, out, x, rows, cols):
    t = ts[0]
    if is_lazy(t):
        return _select(t.transpose(1, 2, 0), rows, cols).transpose(2, 0, 1)  # the batch axis last, then back
    result = np.zeros_like(t)
    result[:, rows, cols] = t[:, rows, cols]
    return result


def _pairs_shape(s, rows, cols, picked=None):
    """The shape of (row, col) entries picked from a matrix: a matrix like it
    (select), a vector (arrange) or a scalar (their mean)."""
    require_matrix(s, "selecting (row, col) entries")
    return s if picked is None else picked


# The gradient of a selection is a scatter of the upstream gradient onto the
# chosen entries. It never multiplies the rest by zero, so an infinite
# upstream gradient at an unchosen entry stays out of the result.
defop("select", _select,
      vjp=lambda i, g, out, x, rows, cols: _select(g, rows, cols),
      jvp=_select_jvp,
      shape=_pairs_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit, rows, cols: emit("select", [g], rows=rows, cols=cols),
      rule=Rule(("g at the chosen entries, 0 elsewhere",), "ẋ at the chosen entries, 0 elsewhere"))


def _scatter_pairs(shape: tuple, rows: np.ndarray, cols: np.ndarray, weights=None) -> np.ndarray:
    """A `shape` matrix of zeros with each weight (1 if none) added at its
    (row, col): an entry chosen twice gets both. np.add.at's result, by one
    bincount over flat positions, which is several times faster."""
    flat = np.ravel_multi_index((rows, cols), shape, mode="wrap")  # wrap: negative positions count from the end
    if is_lazy(weights):
        from .dask_lazy import scatter_add
        return scatter_add(flat, weights, shape)
    return np.bincount(flat, weights=weights, minlength=shape[0] * shape[1]).reshape(shape).astype(np.float64)


def _arrange_vjp(i, g, out, x, rows, cols):
    return _scatter_pairs(x.shape, rows, cols, g)


def _pick(x, rows, cols):
    """x[rows, cols] (on further axes too); a Dask array picks by `vindex`."""
    return x.vindex[rows, cols] if is_lazy(x) else x[rows, cols]


defop("arrange", _pick,
      vjp=_arrange_vjp,
      jvp=lambda ts, out, x, rows, cols: _pick(ts[0].transpose(1, 2, 0), rows, cols).T if is_lazy(ts[0])
      else ts[0][:, rows, cols],
      shape=lambda s, rows, cols: _pairs_shape(s, rows, cols, (len(rows),)), methods=(),
      vjp_graph=lambda i, g, out, x, emit, rows, cols: emit("scatterPairs", [g], rows=rows, cols=cols,
                                                            shape=emit.shape(x)),
      rule=Rule(("g[j] added at the j-th chosen (row, col)",), "ẋ[rows, cols]"))


# ------------------------------------------------------------- construction


def _stack_shape(*shapes, axis):
    if not shapes:
        raise ShapeError("there is nothing to stack")
    if any(s != shapes[0] for s in shapes):
        raise ShapeError("the pieces differ in shape: " + ", ".join("{%d} is {s%d}" % (i, i) for i in range(len(shapes))))
    if len(shapes[0]) > 1:
        raise ShapeError("only scalars and vectors can be stacked, but {0} is {s0}")
    if axis > len(shapes[0]):  # columns of scalars
        raise ShapeError("columns are vectors, but {0} is {s0}")
    shape = list(shapes[0])
    shape.insert(axis, len(shapes))
    return tuple(shape)


def _stack_jvp(ts, out, *xs, axis):
    k = next(t for t in ts if t is not None).shape[0]
    parts = [t if t is not None else np.zeros((k,) + x.shape) for t, x in zip(ts, xs)]
    return np.stack(parts, axis=axis + 1)


# `[a, b]`, `Array(a, b)`, `Matrix.fromRows(r1, r2)` (axis 0) and
# `Matrix.fromColumns(c1, c2)` (axis 1).
defop("stack", lambda *xs, axis: np.stack(xs, axis=axis),
      vjp=lambda i, g, out, *xs, axis: np.take(g, i, axis=axis),
      jvp=_stack_jvp,
      shape=_stack_shape, methods=(),
      vjp_graph=lambda i, g, out, *xs, emit, axis: emit("index", [g], key=(slice(None),) * axis + (i,)),
      rule=Rule(("g's slice along the stacking axis",), "stack(ẋ0, ẋ1, …)"))


# ------------------------------------------------------------- fused ops
# Never written in a program: spiread_cli/rewrite.py puts them on a tape in
# place of the slower patterns named below.


def _scatter_rows(g: np.ndarray, index: np.ndarray, rows: int) -> np.ndarray:
    """The sum of the rows of `g` that `index` sends to each of `rows` rows
    (np.add.at's result). bincount over flat positions is several times
    faster than np.add.at or a one-hot matmul. It runs over blocks of rows:
    the positions of all of g at once took as much memory as g itself (the
    bigram step's peak), and a block's stay in cache."""
    if g.ndim == 1:
        return np.bincount(index, weights=g, minlength=rows)
    k = g.shape[1]
    total = np.zeros(rows * k)
    columns = np.arange(k)
    block = max(SCATTER_BLOCK_ROWS, rows)  # each block adds rows · k entries into the total
    for start in range(0, len(index), block):
        flat = (index[start:start + block, None] * k + columns).ravel()
        total += np.bincount(flat, weights=g[start:start + block].ravel(), minlength=rows * k)
    return total.reshape(rows, k)


SCATTER_BLOCK_ROWS = 4096


def _gather_shape(s, index):
    if not s:
        raise ShapeError("gathering rows needs a vector or matrix, but {0} is {s0}")
    return (len(index),) + s[1:]


# `onehot(labels, n) @@ W` with a constant one-hot: a row gather, W[index].
defop("gatherRows", lambda x, index: np.take(x, index, axis=0),
      vjp=lambda i, g, out, x, index: _scatter_rows(g, index, x.shape[0]),
      jvp=lambda ts, out, x, index: np.take(ts[0], index, axis=1),
      shape=_gather_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit, index: emit("scatterRows", [g], index=index, rows=emit.shape(x)[0]),
      rule=Rule(("g's rows added to the rows of x they were gathered from",), "ẋ[index]"))


def _mean_log_softmax_pick_fwd(z, rows, cols):
    m, e, total = _exp_shifted(z)
    log_sum_exp = (m + np.log(total))[:, 0]
    # The picks by flat position where z is C-ordered: 3× faster than 2-D fancy indexing.
    picked = np.take(z.reshape(-1), rows * z.shape[1] + cols) if z.flags.c_contiguous else z[rows, cols]
    value = np.sum(picked - log_sum_exp[rows]) / len(rows)  # nan for no picks, as `mean`
    return value, (e, total)


def _log_likelihood_grad(weight, e, total, rows, cols, out=None):
    """weight · d/dz mean(log softmax(z)[rows, cols]) = weight · (picks −
    counts · softmax(z)) / n, where counts[r] is how often row r is picked,
    from the residual: e = exp(z − rowmax) and its row totals. Written into
    `out` (the vjp's e) or a new array."""
    n = max(len(rows), 1)  # no picks: the mean is nan, a constant; its gradient is 0
    counts = np.bincount(rows, minlength=e.shape[0])
    grad = np.multiply(e, counts[:, None] * (-weight / n) / total, out=out)
    if counts.max(initial=0) <= 1:  # each row picked once at most (a batch): the pairs are distinct
        grad.reshape(-1)[rows * e.shape[1] + cols] += weight / n  # a view: e is C-ordered
    else:  # rows picked many times (z is a small table): count the picks
        grad += _scatter_pairs(e.shape, rows, cols) * (weight / n)
    return grad


# `softmaxRows(z)` (or `exp` → `normaliseRowsL1`) → pick (rows, cols) → `log`
# → `mean`, and `logSoftmaxRows(z)` → pick → `mean`: the mean log-likelihood
# (minus the cross-entropy), computed with log-sum-exp so it stays finite. Its
# residual is the softmax's pieces, so the vjp is one pass over them, in place.
defop("meanLogSoftmaxPick", None, fwd=_mean_log_softmax_pick_fwd,
      vjp=lambda i, g, out, z, rows, cols, *, residual: _log_likelihood_grad(g, *residual, rows, cols, out=residual[0]),
      jvp=lambda ts, out, z, rows, cols, *, residual: batch_sum(ts[0] * _log_likelihood_grad(1.0, *residual, rows, cols)),
      shape=lambda s, rows, cols: _pairs_shape(s, rows, cols, ()), methods=(),
      vjp_graph=lambda i, g, out, z, emit, rows, cols: emit("mul", [g, _mean_log_softmax_pick_grad_graph(
          emit, z, rows, cols)]),
      rule=Rule(("g · (picks − counts · softmax(x)) / picks",),
                "sum(ẋ · (picks − counts · softmax(x))) / picks"))


def _mean_log_softmax_pick_grad_graph(emit, z: int, rows: np.ndarray, cols: np.ndarray) -> int:
    """_log_likelihood_grad as recorded ops: the picks and their counts
    are fixed with the tape, softmax(z) is an op."""
    shape = emit.shape(z)
    counts = np.bincount(rows, minlength=shape[0]).astype(np.float64)[:, None]
    picks = emit.const(_scatter_pairs(shape, rows, cols))
    spread = emit("mul", [emit.const(counts), emit("softmaxRows", [z])])
    return emit("div", [emit("sub", [picks, spread]), emit.const(float(max(len(rows), 1)))])


# ------------------------------------------- transposes for recorded passes
# The ops that the graph rules above record, beyond the ones programs write:
# each is the transpose of another op (so its own graph rule is that op),
# except `exclusiveProducts` and `powLog`, the derivatives of `product`'s and
# `pow`'s rules. Those two have numeric vjp and jvp rules, which is what a
# second derivative sweeps through, and no graph rule of their own: a third
# derivative through them is refused (BACKWARD_ONLY).


def _sum_to_batched(t: np.ndarray, shape: tuple) -> np.ndarray:
    """unbroadcast for a batched tangent (k, *s): the batch axis stays."""
    extra = t.ndim - 1 - len(shape)
    if extra > 0:
        t = t.sum(axis=tuple(range(1, 1 + extra)))
    for axis, size in enumerate(shape):
        if size == 1 and t.shape[axis + 1] != 1:
            t = t.sum(axis=axis + 1, keepdims=True)
    return t


def _sum_to_shape(s, shape):
    if not _broadcasts(shape, s) or np.broadcast_shapes(tuple(shape), s) != s:
        raise ShapeError(f"{{0}} is {{s0}}, which does not sum to {tuple(shape)}")
    return tuple(shape)


def _broadcast_to_shape(s, shape):
    if not _broadcasts(s, shape) or np.broadcast_shapes(s, tuple(shape)) != tuple(shape):
        raise ShapeError(f"{{0}} is {{s0}}, which does not broadcast to {tuple(shape)}")
    return tuple(shape)


def _broadcasts(a, b) -> bool:
    try:
        np.broadcast_shapes(tuple(a), tuple(b))
        return True
    except ValueError:
        return False


def _reshape_shape(s, shape):
    if math.prod(s) != math.prod(shape):
        raise ShapeError(f"{{0}} is {{s0}}, which has another number of entries than {tuple(shape)}")
    return tuple(shape)


# unbroadcast and its transpose, broadcasting.
defop("sumTo", lambda x, shape: unbroadcast(x, shape),
      vjp=lambda i, g, out, x, shape: np.broadcast_to(g, x.shape),
      jvp=lambda ts, out, x, shape: _sum_to_batched(ts[0], shape),
      shape=_sum_to_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit, shape: emit("broadcastTo", [g], shape=emit.shape(x)),
      rule=Rule(("g, copied back over the axes x was summed along",), "ẋ summed to the shape"))
defop("broadcastTo", lambda x, shape: np.broadcast_to(x, shape),
      vjp=lambda i, g, out, x, shape: unbroadcast(g, x.shape),
      jvp=lambda ts, out, x, shape: np.broadcast_to(lift(ts[0], len(shape)), ts[0].shape[:1] + tuple(shape)),
      shape=_broadcast_to_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit, shape: sum_to_graph(emit, g, emit.shape(x)),
      rule=Rule(("g, summed to x's shape",), "ẋ broadcast to the shape"))
defop("reshape", lambda x, shape: x.reshape(shape),
      vjp=lambda i, g, out, x, shape: g.reshape(x.shape),
      jvp=lambda ts, out, x, shape: ts[0].reshape(ts[0].shape[:1] + tuple(shape)),
      shape=_reshape_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit, shape: emit("reshape", [g], shape=emit.shape(x)),
      rule=Rule(("g, reshaped to x's shape",), "ẋ, reshaped"))


def _row_total_shape(s, **_):
    if len(s) == 0:
        raise ShapeError("a row total needs a vector or matrix, but {0} is {s0}")
    return s[:-1] + (1,)


# The sum of each row, kept as a column: the row normalisations' rules use it.
defop("rowTotal", _row_total,
      vjp=lambda i, g, out, x: np.broadcast_to(g, x.shape),
      jvp=lambda ts, out, x: _row_total(ts[0]),
      shape=_row_total_shape, methods=(),
      vjp_graph=lambda i, g, out, x, emit: emit("broadcastTo", [g], shape=emit.shape(x)),
      rule=Rule(("g[r], copied along row r of x",), "rowTotal(ẋ)"))


def _pairwise_exclusive(rows: np.ndarray) -> np.ndarray:
    """For a (r, n) matrix, P[r, j, i] = the product of row r's entries other
    than i and j (0 where i == j): ∂(product of the others than i)/∂x_j."""
    r, n = rows.shape
    tiled = np.repeat(rows[:, None, :], n, axis=1)
    diagonal = np.arange(n)
    tiled[:, diagonal, diagonal] = 1.0
    pairwise = _exclusive_products(tiled, 2)
    pairwise[:, diagonal, diagonal] = 0.0
    return pairwise


def _as_rows(x: np.ndarray, over: str) -> np.ndarray:
    return x.reshape(1, x.size) if over == "all" else x


def _exclusive_vjp(i, g, out, x, over):
    pairwise = _pairwise_exclusive(_as_rows(x, over))
    return np.einsum("rji,ri->rj", pairwise, _as_rows(g, over)).reshape(x.shape)


def _exclusive_jvp(ts, out, x, over):
    t = ts[0]
    pairwise = _pairwise_exclusive(_as_rows(x, over))
    k = t.shape[0]
    rows = t.reshape(k, 1, x.size) if over == "all" else t
    return np.einsum("krj,rji->kri", rows, pairwise).reshape((k,) + x.shape)


def _exclusive_shape(s, over):
    if over == "rows":
        require_matrix(s, "products along rows")
    return s


# `product`'s partials: each entry's product of the others (over "all"
# entries, or along each of the "rows"), without dividing, so zeros are exact.
defop("exclusiveProducts",
      lambda x, over: (_exclusive_products(x.ravel(), 0).reshape(x.shape) if over == "all"
                       else _exclusive_products(x, 1)),
      vjp=_exclusive_vjp, jvp=_exclusive_jvp, shape=_exclusive_shape, methods=(),
      rule=Rule(("Σ_i g_i · (the product of the entries other than i and j), at each j",),
                "Σ_j ẋ_j · (the product of the entries other than i and j), at each i"))


def _placed_shape(expected: tuple, s: tuple, result: tuple) -> tuple:
    """A scatter's result shape, when its operand has the shape the positions
    say it places (`expected`)."""
    if s != expected:
        raise ShapeError(f"{{0}} is {{s0}}, but the positions place {expected}")
    return tuple(result)


def _key_shape(shape: tuple, key: tuple) -> tuple:
    if len(key) > len(shape):
        raise ShapeError(f"{len(key)} positions do not fit {shape}")
    return _index_shape(shape, key)


def _index_scatter(x, key, shape):
    out = np.zeros(shape)
    out[key] = x
    return out


def _index_scatter_jvp(ts, out, x, key, shape):
    t = ts[0]
    result = np.zeros(t.shape[:1] + tuple(shape))
    result[(slice(None),) + key] = t
    return result


# index's transpose: zeros with the entries at `key` set.
defop("indexScatter", _index_scatter,
      vjp=lambda i, g, out, x, key, shape: np.array(g[key]),
      jvp=_index_scatter_jvp,
      shape=lambda s, key, shape: _placed_shape(_key_shape(tuple(shape), key), s, shape), methods=(),
      vjp_graph=lambda i, g, out, x, emit, key, shape: emit("index", [g], key=key),
      rule=Rule(("g at the indexed entries",), "ẋ placed at the indexed entries, 0 elsewhere"))


def _scatter_pairs_jvp(ts, out, x, rows, cols, shape):
    t = ts[0]
    result = np.zeros(t.shape[:1] + tuple(shape))
    np.add.at(result, (slice(None), rows, cols), t)
    return result


# arrange's transpose: each entry added at its (row, col).
defop("scatterPairs", lambda x, rows, cols, shape: _scatter_pairs(shape, rows, cols, x),
      vjp=lambda i, g, out, x, rows, cols, shape: g[rows, cols],
      jvp=_scatter_pairs_jvp,
      shape=lambda s, rows, cols, shape: _placed_shape((len(rows),), s, _pairs_shape(tuple(shape), rows, cols)),
      methods=(),
      vjp_graph=lambda i, g, out, x, emit, rows, cols, shape: emit("arrange", [g], rows=rows, cols=cols),
      rule=Rule(("g[rows, cols]",), "ẋ[j] added at the j-th (row, col)"))


def _scatter_rows_jvp(ts, out, x, index, rows):
    t = ts[0]
    result = np.zeros((t.shape[0], rows) + x.shape[1:])
    np.add.at(result, (slice(None), index), t)
    return result


# gatherRows's transpose: each row added into the row `index` sends it to.
defop("scatterRows", lambda x, index, rows: _scatter_rows(x, index, rows),
      vjp=lambda i, g, out, x, index, rows: np.take(g, index, axis=0),
      jvp=_scatter_rows_jvp,
      shape=lambda s, index, rows: _placed_shape((len(index),) + s[1:], s, (rows,) + s[1:]), methods=(),
      vjp_graph=lambda i, g, out, x, emit, index, rows: emit("gatherRows", [g], index=index),
      rule=Rule(("g's rows, gathered as x's rows were sent",),
                "ẋ's rows added into the rows index sends them to"))

# The ops a backward pass records that have no graph rule of their own.
BACKWARD_ONLY = frozenset({"exclusiveProducts", "powLog"})
