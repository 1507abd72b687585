"""The op table: every primitive's value, shape and derivative, together.

Each `Op` is a name with its rules side by side, one entry per primitive
(micrograd's and `torch.autograd.Function`'s style):

- ``impl(*xs, **params)`` computes the value (numpy), the primal rule;
- ``shape(*shapes, **params)`` gives the output shape or raises ShapeError, so
  bad programs are refused (and huge results sized) before anything is computed;
- ``derivative(i, g, out, *xs, emit, **params)`` is the op's one derivative
  statement: its vjp written over the table's own ops, which
  spiread_cli/rules.py interprets in every way a derivative is used —
  computed (`vjp`), recorded on the tape for second and third derivatives,
  transposed into the forward-mode `jvp`, printed for `grad --explain`,
  written as code. ``emit(op_name, inputs, **params)`` applies an op,
  ``emit.const(value, name=None)`` makes a constant and ``emit.shape(v)``
  gives a value's shape; it returns operand i's cotangent, or None where it
  is zero;
- ``vjp(i, g, out, *xs, **params)`` and ``jvp(ts, out, *xs, **params)`` are
  the numeric rules the sweeps call, derived from the statement: the vjp
  evaluates it, the jvp transposes it. Tangents carry one extra *leading*
  batch axis, one slice per seed direction; ``ts[i]`` is None for an input
  with no tangent. A few ops keep a hand-written numeric rule as a *fast
  path* (`FastPath`), each naming the benchmark that shows the interpreted
  statement measurably slower; tests/test_rules.py holds each equal to the
  statement;
- ``fwd(*xs, **params) -> (value, residual)``, for the fast paths that
  reuse what the forward pass computed anyway (JAX's fwd/bwd pairs: the
  softmax's exponentials and row totals): it replaces `impl` (which `defop`
  derives from it), and the fast rules take the residual as the keyword
  `residual`. The tape keeps it on the node, a replay refreshes it, and the
  reverse sweep hands it to the vjp and drops it; a caller without one (a
  test, a second sweep) gets it recomputed by `fwd`. A vjp may overwrite
  the residual it is handed (only one-operand ops do: each operand's vjp
  would see the same one); a jvp only reads it.

Each op also says how it is written out of spiread (`export`, an
`Export`): as an expression of the Python array API and as ONNX nodes, so
the value, gradient and Hessian-vector-product graphs, all graphs of table
ops, are exported op by op (spiread_cli/export_python.py, export_onnx.py).

Per-op facts live on the op too: `kink` (where it has no derivative),
`row_wise` (it commutes with a row gather), `structure` (how its entries
depend on its operands') and `batched` (its value with a leading batch axis,
for the ops forward mode applies to tangents).

Adding a primitive means adding one entry here: its value, shape rule and
derivative statement. Broadcasting is undone by one shared op, `sumTo`, as
HIPS autograd's `unbroadcast`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .rules import IMPLS, OPS, without_residual
from .rules_code import compiled_jvp, compiled_vjp
from .rules_forward import Diagonal, Scaled
from .structure import (COPIES, JOINED, LINEAR_SUMS, MAX_LISTED_PAIRS, SLICED, SUMS, Entries, Links, Structure, named,
                        rows, whole, within_groups)
from .structure import along as reduction_structure
from .structure import elementwise as elementwise_structure

WHOLE = whole()


class ShapeError(Exception):
    """A shape rule refused its operands. `{0}`, `{1}` in the message stand for
    the operands as they appear in the source; the caller fills them in."""


@dataclass(frozen=True, slots=True)
class FastPath:
    """Hand-written numeric rules kept beside an op's statement because
    `benchmark` (a workload of benchmarks/run.py) runs measurably slower with
    the interpreted statement; tests/test_rules.py holds them equal to it."""
    benchmark: str
    vjp: Callable | None = None
    jvp: Callable | None = None


@dataclass(frozen=True, slots=True)
class Export:
    """How an op is written out of spiread (`spiread export`: spiread_cli/export_python.py, export_onnx.py).

    `python`: an expression over the array API namespace `xp`; a template
    whose `{0}`, `{1}`, … are the operands and `{name}` the parameters, or
    `python(w, *operands, **params) -> str`, where `w.literal(value)` writes
    a value (an array becomes a named constant of the module) and
    `w.shape(operand)` gives an operand's shape. A name starting with `_` is
    a helper of spiread_cli/export_runtime.py, copied into the module that
    calls it. `w.value(operand)` is an operand's value where it is a
    constant of the export (else None), for forms that simplify then.
    `w.shared(code, stem)` names `code` computed once on a line of its own
    that every form of the function asking for it reads (the softmax
    family's exponentials).
    `numbers`: the form takes Python numbers as operands (the arithmetic
    operators do; any other form is given 0-d arrays).

    `onnx`: an ONNX operator applied to the operands, or `onnx(b, *operands,
    **params) -> name` building nodes with `b(op_type, inputs,
    **attributes)`, `b.const(array)` (float64, or int64 for integers),
    `b.ints(values)`, `b.zeros(shape)`, `b.shape(operand)` and
    `b.value(operand)`; None where the op has no ONNX form (exporting it to
    ONNX is then an error at its span).

    `refused(**params) -> (why, what to do)`: for an op that cannot be
    written out at all (it runs tapes of its own), why, in the user's
    words; exporting it is an error at its span.

    `view`: the Python form may give its first operand, or a view of it
    (`.T`, a slice, `reshape`, `broadcast_to`), which a function returns
    as a copy when that operand is an argument, a constant or another result.

    `update`: the numpy ufunc the op is (`"subtract"`), or `"out"` for a
    Python form that takes the array to write into (`python(w, *operands,
    out=name, **params)`, a helper's `out=`). Where an operand is a large
    intermediate the function made, of the result's shape and read by
    nothing after, the result is written into its array on numpy (`_into`:
    `out=`), as a step written by hand works in place; any other namespace
    gets a new array (PyTorch's autograd may have kept the operand, JAX's
    arrays cannot change)."""
    python: str | Callable | None
    onnx: str | Callable | None
    numbers: bool = False
    refused: Callable | None = None
    view: bool = False
    update: str | None = None


@dataclass(frozen=True, slots=True)
class Op:
    name: str
    impl: Callable
    shape: Callable
    derivative: Callable  # the one derivative statement (see the module docstring)
    vjp: Callable         # the numeric rules, derived from it (or a fast path)
    jvp: Callable
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
    # How its entries depend on its operands' (spiread_cli/structure.py):
    # the kind forward mode's batching and the row chunks read, and the exact
    # first- and second-order rules sparsity patterns are read from.
    structure: Structure = WHOLE
    # batched(args, which, **params): the value when the operands marked in
    # `which` carry a leading batch axis; for the linear ops forward mode
    # applies to tangents. Without it, an elementwise op broadcasts and any
    # other runs one direction at a time.
    batched: Callable | None = None
    fast: FastPath | None = None
    # The forward rule that also returns a residual for the fast paths (see
    # the module docstring); None for most ops.
    fwd: Callable | None = None
    # How it is written out of spiread: array API Python and ONNX.
    export: Export | None = None
    # vjp(i, g, out, *xs, **params) for a batch of cotangents g (k, *out
    # shape): the Jacobian's rows in reverse mode. Derived from the statement.
    batched_vjp: Callable | None = None
    # What the row-chunk planner (spiread_cli/chunk_plan.py) reads of an op
    # whose operands hold the data rows: `row_axes[i]` is the axis of operand
    # i along which its data rows run (None: no data rows, used whole),
    # `ndims[i]` its rank. For an op neither `row_wise` nor elementwise:
    # on_rows(row_axes, ndims, row_params, **params) -> the axis of its value
    # whose entry k depends only on data row k of the operands, or None
    # (`row_params` names the params holding a position per row); -1 is the
    # last axis.
    on_rows: Callable | None = None
    # across_rows(row_axes, ndims, **params) -> an `Across` when the op sums
    # (or takes the max, …, of) its operands' data rows away, so its value is
    # its values over row chunks combined; None otherwise.
    across_rows: Callable | None = None
    # For an op that runs tapes of its own (a sum over row chunks,
    # spiread_cli/row_totals.py): reports(**params) -> the warnings its
    # evaluations made inside since last asked (where an inf or nan was born,
    # in which rows), which the tape gives in place of its own.
    reports: Callable | None = None
    # For a batch of tangents or cotangents each nonzero at one entry
    # (rules_forward.Diagonal: the identity seeds of a dense Jacobian or
    # Hessian): diagonal_jvp(i, t, out, *xs, **params) -> operand i's term of
    # the jvp, and diagonal_vjp(i, g, out, *xs, **params) -> operand i's
    # cotangents, as a Diagonal or an array, None where there is no cheaper
    # form (the sweep makes the batch an array and runs jvp/batched_vjp). An
    # elementwise op needs none: its own rule steps the batch in one value.
    diagonal_jvp: Callable | None = None
    diagonal_vjp: Callable | None = None
    # The value rule without its guard for operands that are not finite
    # (`scale`'s: multiply), for code whose every result is checked finite
    # and computed again with `impl` where one is not (a written forward sweep).
    unguarded: Callable | None = None
    # The operands each of whose inf or nan entries makes one in the value
    # (where it has entries), guarded or not: a sum's, a product's (IEEE: inf
    # · 0 is nan), a quotient's numerator; not a BLAS product's (which may
    # skip a zero's column). A replay that checks the value need not check them.
    keeps_nonfinite: tuple[int, ...] = ()


METHODS: dict[str, Op] = {}


def defop(name: str, impl: Callable | None, shape: Callable, derivative: Callable, *, methods=None, params=(),
          arity: int = 1, kink=None, row_wise: bool = False, structure: Structure | str = "dense", batched=None,
          fast: FastPath | None = None, fwd: Callable | None = None, export: Export | None = None,
          on_rows: Callable | None = None, across_rows: Callable | None = None,
          diagonal: tuple[Callable | None, Callable | None] = (None, None), unguarded: Callable | None = None,
          keeps_nonfinite: tuple[int, ...] = ()) -> Op:
    if isinstance(structure, str):
        structure = named(structure)
    vjp, jvp, batched_vjp = compiled_vjp(derivative), compiled_jvp(derivative), compiled_vjp(derivative, batched=True)
    if fwd is not None:  # impl is fwd's value; the fast rules get a residual whoever calls them
        impl, vjp, jvp = _value_of(fwd), without_residual(vjp), without_residual(jvp)
        batched_vjp = without_residual(batched_vjp)
    if fast is not None:
        vjp = vjp if fast.vjp is None else fast.vjp if fwd is None else _given_residual(fwd, fast.vjp, 3)
        jvp = jvp if fast.jvp is None else fast.jvp if fwd is None else _given_residual(fwd, fast.jvp, 2)
    op = Op(name, impl, shape, derivative, vjp, jvp, (name,) if methods is None else methods, params, arity, kink,
            row_wise, structure, batched, fast, fwd, export, batched_vjp, on_rows=on_rows,
            across_rows=across_rows, diagonal_jvp=diagonal[0], diagonal_vjp=diagonal[1], unguarded=unguarded,
            keeps_nonfinite=keeps_nonfinite)
    OPS[name], IMPLS[name] = op, impl
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
    """Sum `g` over the axes that broadcasting added or stretched to reach `shape`
    (by np.add.reduce: the sum without its Python wrapper)."""
    while g.ndim > len(shape):
        g = np.add.reduce(g, 0)
    for axis, size in enumerate(shape):
        if size == 1 and g.shape[axis] != 1:
            g = np.add.reduce(g, axis, keepdims=True)
    return g


def lift(t: np.ndarray, ndim: int) -> np.ndarray:
    """Give a batched tangent (k, *s) singleton axes after the batch axis so it
    broadcasts against values of rank `ndim` the way its primal does."""
    missing = ndim - (t.ndim - 1)
    return t.reshape(t.shape[:1] + (1,) * missing + t.shape[1:]) if missing > 0 else t


def scale(t: np.ndarray, d, out: np.ndarray | None = None) -> np.ndarray:
    """t * d, except that a zero (co)tangent stays zero where d is infinite or
    nan: an entry that does not move has no derivative to scale. This keeps a
    gradient finite when it flows around a -inf that the output never sees
    (the seed example's empty row), in both modes alike. `out`: an array of
    the result's shape to write it into, as a ufunc's (t or d may be it)."""
    if type(d) is float:  # a constant partial (add, sub): nothing to guard, often nothing to do
        return t if d == 1.0 else t * d if out is None else np.multiply(t, d, out=out)
    # The guard changes nothing where t has no zero, or where d is finite (0 ·
    # d is 0 then); one sum is finite exactly when every entry is (bar
    # overflow, which only sends us down the slower, still correct path).
    # Asking it of the smaller operand costs a pass over it, not over the
    # product, which may be a batch of (co)tangents many times larger (a
    # Jacobian's, a Hessian's). Callers hold np.errstate.
    if (type(t) is ndarray and t.size < getattr(d, "size", 1) and t.all()) or math.isfinite(_finite_if_all_are(d)):
        return t * d if out is None else np.multiply(t, d, out=out)
    if out is None:
        return np.where(t == 0, 0.0, t * d)
    still = t == 0  # before `out`, which may be t, is written
    np.copyto(np.multiply(t, d, out=out), 0.0, where=still)
    return out


scale.takes_out = True  # rules_code.takes_out


def _finite_if_all_are(d) -> float:
    """A number that is finite exactly when every entry of d is (bar
    overflow, which only sends `scale` down its slower path): d's sum of
    squares by BLAS over its memory as it lies (3× faster than np.sum), or,
    for an array not contiguous either way (a broadcast, which vdot would
    copy whole, as it copies a column-major one it is given as it is), its sum."""
    if type(d) is ndarray and (d.flags.c_contiguous or d.flags.f_contiguous):
        entries = d.ravel(order="K")  # a view in memory order
        return np.vdot(entries, entries)
    return np.sum(d)


def same_shape(s, **_):
    return s


@dataclass(frozen=True)
class Across:
    """How a value over all the data rows is made of its values over row
    chunks (`Op.across_rows`): `combine` two chunks' values (associative);
    a mean's are weighted first, each by its chunk's share of the rows."""
    word: str
    combine: Callable
    weighted: bool = False


ACROSS = {"sum": Across("sum", np.add), "mean": Across("mean", np.add, weighted=True),
          "product": Across("product", np.multiply), "max": Across("max", np.maximum),
          "min": Across("min", np.minimum), "logSumExp": Across("logSumExp", np.logaddexp)}


def _on_own_rows(row_axes, ndims, row_params, **params) -> int | None:
    """`Op.on_rows` of an op that maps each row of a matrix to its own row or
    entry (rowSum, a column `x[:, j]`): the rows must run along axis 0."""
    return 0 if row_axes == [0] else None


def _picks_in_each_row(row_axes, ndims, row_params, **params) -> int | None:
    """`Op.on_rows` of a pick by positions (select, arrange): one pick in each
    row when both positions come one per row (row chunks check each chunk's,
    and that the columns are the rows' own: not 0, 1, 2, … of a diagonal)."""
    return 0 if "rows" in row_params and "cols" in row_params and row_axes[0] in (0, None) else None


def _matmul_rows(row_axes, ndims, row_params, **params) -> int | None:
    """`Op.on_rows` of `a @@ b`: a's rows (axis 0 of a matrix) are the
    value's; so are b's columns (a transposed row value's rows), as its last axis."""
    if row_axes == [0, None] and ndims[0] == 2:
        return 0
    if row_axes == [None, 1]:
        return -1
    return None


def _matmul_across(row_axes, ndims, **params) -> Across | None:
    """`a @@ b` sums over the data rows when they run along the axes it
    contracts: a's last (`X.T @@ Y`, `x @@ y`) and b's first."""
    return ACROSS["sum"] if row_axes == [ndims[0] - 1, 0] else None


def _reduction_across(word: str, axis: int | None) -> Callable:
    """`Op.across_rows` of a reduction: over every entry, or along the axis the data rows run."""
    def across(row_axes, ndims, **params) -> Across | None:
        return ACROSS[word] if axis is None or row_axes == [axis] else None
    return across


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


def elementwise(name: str, f: Callable, dgraph: Callable, export: Export, kink: Callable | None = None,
                bounded: bool = False, fast: FastPath | None = None, linear: bool = False,
                keeps_nonfinite: bool = False) -> Op:
    """A unary elementwise op from its function and its derivative as table
    ops, dgraph(x, out, emit) -> value (or a constant factor): the statement
    is g · dgraph. `bounded`: the derivative is finite at every input, ±inf
    included, so a zero (co)tangent needs no guard and the product is a
    plain one (`mul`, else `scale`). `linear`: linear, or linear on each
    side of a kink, so its second derivative is 0 (its sparsity structure).
    `keeps_nonfinite`: an inf or nan gives one (Op.keeps_nonfinite)."""
    def derivative(i, g, out, x, emit):
        return times_graph(emit, g, dgraph(x, out, emit), not bounded)
    return defop(name, f, same_shape, derivative, kink=kink, row_wise=True, fast=fast, export=export,
                 structure=elementwise_structure(couples=() if linear else ((0, 0),)),
                 keeps_nonfinite=(0,) if keeps_nonfinite else ())


# Below this many entries writing in place saves nothing measurable, and
# numpy's `out=` costs more than the allocation it saves (the chain
# benchmark's 4-vectors): the reverse sweep's sums and the fast paths work in
# place only from this size on.
IN_PLACE_ENTRIES = 4096
ndarray = np.ndarray


def times_graph(emit, g, d, guarded: bool = True):
    """g · d for a value d or a constant factor d. `guarded` uses `scale` (a
    zero cotangent stays zero where d is not finite) rather than `mul`."""
    if type(d) is float:
        if d == 1.0:
            return g
        return emit("neg", [g]) if d == -1.0 else emit("mul", [g, emit.const(d)])
    return emit("scale" if guarded else "mul", [g, d])


def _tanh_vjp(i, g, out, x):
    """g · (1 − out²) in one array allocated rather than two: numpy reuses a
    temporary only as the first operand of a non-commutative ufunc, and the
    second page-faulted array was half of tanh's vjp in the mlp step."""
    d = out * out
    if type(d) is not ndarray or type(g) is not ndarray or d.size < IN_PLACE_ENTRIES:
        return g * (1.0 - d)
    np.subtract(1.0, d, out=d)
    return np.multiply(g, d, out=d)


def _sigmoid(x):
    # exp of a negative number only, so neither branch overflows.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _one(emit):
    return emit.const(1.0)


def _unary(name: str) -> Export:
    """An op that is one function of the array API and one ONNX operator of the same name."""
    return Export(f"xp.{name}({{0}})", name.capitalize())


def _onnx_log1p(b, x):
    """log(1 + x), accurate for small x without a Log1p operator: log(u) · x / (u − 1)
    for u = 1 + x rounded, which cancels the rounding of u (Goldberg's trick)."""
    u = b("Add", [x, b.const(1.0)])
    return b("Where", [b("Equal", [u, b.const(1.0)]), x,
                       b("Div", [b("Mul", [b("Log", [u]), x]), b("Sub", [u, b.const(1.0)])])])


def _onnx_sinh(b, x):
    """sinh without a float64 Sinh in onnxruntime: 2t / (1 − t²), t = tanh(x/2),
    where |x| < 1 (no cancellation), else (eˣ − e⁻ˣ) / 2 (at most a bit lost)."""
    t = b("Tanh", [b("Mul", [x, b.const(0.5)])])
    small = b("Div", [b("Mul", [t, b.const(2.0)]), b("Sub", [b.const(1.0), b("Mul", [t, t])])])
    large = b("Mul", [b("Sub", [b("Exp", [x]), b("Exp", [b("Neg", [x])])]), b.const(0.5)])
    return b("Where", [b("Less", [b("Abs", [x]), b.const(1.0)]), small, large])


def _onnx_sigmoid(b, x):
    """As `_sigmoid`: exp of a negative number only."""
    e = b("Exp", [b("Neg", [b("Abs", [x])])])
    total = b("Add", [b.const(1.0), e])
    return b("Where", [b("GreaterOrEqual", [x, b.const(0.0)]), b("Div", [b.const(1.0), total]), b("Div", [e, total])])


elementwise("exp", np.exp, lambda x, out, e: out, _unary("exp"))
elementwise("log", np.log, lambda x, out, e: e("div", [_one(e), x]), _unary("log"))
elementwise("sin", np.sin, lambda x, out, e: e("cos", [x]), _unary("sin"), bounded=True)
elementwise("cos", np.cos, lambda x, out, e: e("neg", [e("sin", [x])]), _unary("cos"), bounded=True)
elementwise("tan", np.tan, lambda x, out, e: e("add", [_one(e), e("square", [out])]),
            Export("xp.tan({0})", lambda b, x: b("Div", [b("Sin", [x]), b("Cos", [x])])))
elementwise("tanh", np.tanh, lambda x, out, e: e("sub", [_one(e), e("square", [out])]), _unary("tanh"), bounded=True,
            fast=FastPath("mlp", vjp=_tanh_vjp))
elementwise("sinh", np.sinh, lambda x, out, e: e("cosh", [x]), Export("xp.sinh({0})", _onnx_sinh))
elementwise("cosh", np.cosh, lambda x, out, e: e("sinh", [x]),
            Export("xp.cosh({0})", lambda b, x: b("Mul", [b("Add", [b("Exp", [x]), b("Exp", [b("Neg", [x])])]),
                                                          b.const(0.5)])))
elementwise("sqrt", np.sqrt, lambda x, out, e: e("div", [e.const(0.5), out]), _unary("sqrt"))
elementwise("abs", np.abs, lambda x, out, e: e("sign", [x]), _unary("abs"), kink=lambda x: x == 0, bounded=True, linear=True)
elementwise("square", np.square, lambda x, out, e: e("mul", [e.const(2.0), x]),
            Export("xp.square({0})", lambda b, x: b("Mul", [x, x])), keeps_nonfinite=True)
elementwise("sigmoid", _sigmoid, lambda x, out, e: e("mul", [out, e("sub", [_one(e), out])]),
            Export("_sigmoid({0})", _onnx_sigmoid), bounded=True)
# relu'(x) is 1 − [x ≤ 0]: 0 at 0 (the contract's relu'(0) = 0), 1 at a nan, as torch.relu's.
elementwise("relu", lambda x: np.maximum(x, 0.0),
            lambda x, out, e: e("sub", [_one(e), e("indicator", [x, e.const(0.0)], relation="<=")]),
            Export("xp.clip({0}, min=0.0)", lambda b, x: b("Max", [x, b.const(0.0)])),
            kink=lambda x: x == 0, bounded=True, linear=True)
elementwise("log1p", np.log1p, lambda x, out, e: e("div", [_one(e), e("add", [_one(e), x])]),
            Export("xp.log1p({0})", _onnx_log1p))
elementwise("neg", np.negative, lambda x, out, e: -1.0, Export("-{0}", "Neg"), linear=True, keeps_nonfinite=True)


def _one_over_root(e, x, sign: float):
    """1 / sqrt(sign · (1 − x²)), the inverse sines' and cosh's derivatives (nan off their domains)."""
    inside = e("sub", [_one(e), e("square", [x])]) if sign > 0 else e("sub", [e("square", [x]), _one(e)])
    return e("div", [_one(e), e("sqrt", [inside])])


def _onnx_atan(b, x):
    """atan without a float64 Atan in onnxruntime: |x| > 1 is reflected
    (atan x = π/2 − atan 1/x), the angle halved five times (atan y =
    2 atan(y / (1 + √(1 + y²)))) to at most π/128, where six terms of the
    series y − y³/3 + y⁵/5 − … leave less than 1e-21; a few ulps in all."""
    a = b("Abs", [x])
    reflected = b("Greater", [a, b.const(1.0)])
    y = b("Where", [reflected, b("Div", [b.const(1.0), a]), a])
    for _ in range(5):
        y = b("Div", [y, b("Add", [b.const(1.0), b("Sqrt", [b("Add", [b.const(1.0), b("Mul", [y, y])])])])])
    z = b("Mul", [y, y])
    series = b.const(-1.0 / 11)
    for k in (9, 7, 5, 3, 1):
        series = b("Add", [b.const((-1.0) ** (k // 2) / k), b("Mul", [z, series])])
    angle = b("Mul", [b("Mul", [y, series]), b.const(32.0)])
    angle = b("Where", [reflected, b("Sub", [b.const(math.pi / 2), angle]), angle])
    return b("Mul", [angle, b("Sign", [x])])


def _onnx_asin(b, x):
    """asin x = atan(x / √((1 − x)(1 + x))): no cancellation near ±1."""
    return _onnx_atan(b, b("Div", [x, b("Sqrt", [b("Mul", [b("Sub", [b.const(1.0), x]), b("Add", [b.const(1.0), x])])])]))


def _onnx_acos(b, x):
    """acos x = 2 atan √((1 − x) / (1 + x)): accurate near 1, where acos is small."""
    return b("Mul", [b.const(2.0), _onnx_atan(b, b("Sqrt", [b("Div", [b("Sub", [b.const(1.0), x]),
                                                                       b("Add", [b.const(1.0), x])])]))])


def _onnx_asinh(b, x):
    """asinh |x| = log1p(|x| + x² / (1 + √(1 + x²))), signed: accurate near 0."""
    a = b("Abs", [x])
    root = b("Sqrt", [b("Add", [b.const(1.0), b("Mul", [a, a])])])
    return b("Mul", [_onnx_log1p(b, b("Add", [a, b("Div", [b("Mul", [a, a]), b("Add", [b.const(1.0), root])])])),
                     b("Sign", [x])])


def _onnx_acosh(b, x):
    """acosh x = log1p(t + √(t (t + 2))), t = x − 1: accurate near 1."""
    t = b("Sub", [x, b.const(1.0)])
    return _onnx_log1p(b, b("Add", [t, b("Sqrt", [b("Mul", [t, b("Add", [t, b.const(2.0)])])])]))


def _onnx_atanh(b, x):
    """atanh x = log1p(2x / (1 − x)) / 2."""
    return b("Mul", [b.const(0.5), _onnx_log1p(b, b("Div", [b("Mul", [b.const(2.0), x]), b("Sub", [b.const(1.0), x])]))])


def _onnx_log_sigmoid_tail(b, x):
    """log1p(exp(−|x|)), the part softplus and log sigmoid share."""
    return _onnx_log1p(b, b("Exp", [b("Neg", [b("Abs", [x])])]))


elementwise("asin", np.arcsin, lambda x, out, e: _one_over_root(e, x, 1.0), Export("xp.asin({0})", _onnx_asin))
elementwise("acos", np.arccos, lambda x, out, e: e("neg", [_one_over_root(e, x, 1.0)]),
            Export("xp.acos({0})", _onnx_acos))
elementwise("atan", np.arctan, lambda x, out, e: e("div", [_one(e), e("add", [_one(e), e("square", [x])])]),
            Export("xp.atan({0})", _onnx_atan), bounded=True)
elementwise("asinh", np.arcsinh, lambda x, out, e: e("div", [_one(e), e("sqrt", [e("add", [e("square", [x]), _one(e)])])]),
            Export("xp.asinh({0})", _onnx_asinh), bounded=True)
elementwise("acosh", np.arccosh, lambda x, out, e: _one_over_root(e, x, -1.0), Export("xp.acosh({0})", _onnx_acosh))
elementwise("atanh", np.arctanh, lambda x, out, e: e("div", [_one(e), e("sub", [_one(e), e("square", [x])])]),
            Export("xp.atanh({0})", _onnx_atanh))
# log(1 + exp(x)) and log sigmoid(x) = −softplus(−x), by np.logaddexp: no exp
# overflows, so both stay finite at ±1000, and so do their derivatives,
# sigmoid(±x) (computed stably). Exported as max(x, 0) + log1p(exp(−|x|))
# and min(x, 0) − log1p(exp(−|x|)), which overflow no more.
elementwise("softplus", lambda x: np.logaddexp(0.0, x), lambda x, out, e: e("sigmoid", [x]),
            Export("xp.clip({0}, min=0.0) + xp.log1p(xp.exp(-xp.abs({0})))",
                   lambda b, x: b("Add", [b("Max", [x, b.const(0.0)]), _onnx_log_sigmoid_tail(b, x)])), bounded=True)
elementwise("logSigmoid", lambda x: -np.logaddexp(0.0, -x), lambda x, out, e: e("sigmoid", [e("neg", [x])]),
            Export("xp.clip({0}, max=0.0) - xp.log1p(xp.exp(-xp.abs({0})))",
                   lambda b, x: b("Sub", [b("Min", [x, b.const(0.0)]), _onnx_log_sigmoid_tail(b, x)])), bounded=True)
# clamps: the gradient passes where the bound is not active, and at the bound
# itself, as torch.clamp does.
defop("clampMin", lambda x, t: np.maximum(x, t), same_shape,
      lambda i, g, out, x, emit, t: emit("mul", [g, emit("indicator", [x, emit.const(t)], relation=">=")]),
      params=("t",), kink=lambda x, t: x == t, structure=elementwise_structure(couples=()),
      export=Export("xp.clip({0}, min={t})", lambda b, x, t: b("Max", [x, b.const(t)])))
defop("clampMax", lambda x, t: np.minimum(x, t), same_shape,
      lambda i, g, out, x, emit, t: emit("mul", [g, emit("indicator", [x, emit.const(t)], relation="<=")]),
      params=("t",), kink=lambda x, t: x == t, structure=elementwise_structure(couples=()),
      export=Export("xp.clip({0}, max={t})", lambda b, x, t: b("Min", [x, b.const(t)])))


# Ops with a derivative of 0 wherever they have one: the masks that the
# derivative rules of relu, abs, the clamps and L1 normalisation multiply by.
# At the jump itself the derivative is taken as 0 too (PyTorch's choice), so a
# second derivative through a kink is 0 away from it; `check` reports the jump.
# The same masks are the comparisons a program writes, `x > y` (0/1, broadcast).
_RELATIONS = {">": np.greater, ">=": np.greater_equal, "<": np.less, "<=": np.less_equal, "==": np.equal,
              "!=": np.not_equal}
_ONNX_RELATIONS = {">": "Greater", ">=": "GreaterOrEqual", "<": "Less", "<=": "LessOrEqual", "==": "Equal"}


def _flat(i, g, out, x, emit):
    return None


FLAT = elementwise_structure(flat=True)


def _sign(x):
    """torch.sign's: [x > 0] − [x < 0], so 0 at a nan (np.sign's is nan): abs'(nan) = 0, as torch.abs's."""
    return np.subtract(np.greater(x, 0.0), np.less(x, 0.0), dtype=np.float64)


defop("sign", _sign, same_shape, _flat, methods=(), kink=lambda x: x == 0, structure=FLAT,
      export=Export("xp.astype({0} > 0, xp.float64) - xp.astype({0} < 0, xp.float64)",
                    lambda b, x: b("Sub", [b("Cast", [b("Greater", [x, b.const(0.0)])], to=b.FLOAT64),
                                           b("Cast", [b("Less", [x, b.const(0.0)])], to=b.FLOAT64)])))
# 1 at a nan, else 0: where max and min send their subgradient when a nan is the result.
defop("isNan", lambda x: np.isnan(x).astype(np.float64), same_shape, _flat, methods=(), structure=FLAT,
      export=Export("xp.astype(xp.isnan({0}), xp.float64)", lambda b, x: b("Cast", [b("IsNaN", [x])], to=b.FLOAT64)))


def _onnx_relation(b, a, c, relation):
    """The 0/1 mask a `relation` c, as float64 (`!=` is the negation of Equal)."""
    mask = b("Not", [b("Equal", [a, c])]) if relation == "!=" else b(_ONNX_RELATIONS[relation], [a, c])
    return b("Cast", [mask], to=b.FLOAT64)


defop("indicator", lambda a, b, relation: _RELATIONS[relation](a, b).astype(np.float64), broadcast_shape,
      lambda i, g, out, a, b, emit, relation: None, methods=(), arity=2, kink=lambda a, b, relation: a == b,
      structure=FLAT,
      export=Export(lambda w, a, b, relation: f"xp.astype({a} {relation} {b}, xp.float64)", _onnx_relation))
# `x.value`: x without its history. Its value is x, its derivative 0.
defop("stopGradient", lambda x: np.array(x), same_shape, _flat, methods=(), structure=FLAT,
      export=Export("{0}", "Identity", view=True))


def elementwise2(name: str, f: Callable, partials: tuple[Callable, Callable], export: Export, couples: tuple,
                 methods=(), guarded: bool = True, vanishes_with: tuple[int | None, int | None] | None = None,
                 kink: Callable | None = None, keeps_nonfinite: tuple[int, ...] = ()) -> Op:
    """A broadcasting binary op from its function and its partial derivative
    with respect to each operand as table ops, partials[i](out, a, b, emit)
    (or a constant factor): the statement is g · partial, summed to the
    operand's shape. `guarded`: see times_graph. `couples` and
    `vanishes_with`: its sparsity structure (structure.elementwise); `keeps_nonfinite`: Op's."""
    def derivative(i, g, out, a, b, emit):
        return sum_to_graph(emit, times_graph(emit, g, partials[i](out, a, b, emit), guarded), emit.shape((a, b)[i]))
    return defop(name, f, broadcast_shape, derivative, methods=methods, arity=2, kink=kink, export=export,
                 structure=elementwise_structure(couples, vanishes_with=vanishes_with), keeps_nonfinite=keeps_nonfinite)


def sum_to_graph(emit, g, shape: tuple):
    """unbroadcast as an op, when there is broadcasting to undo."""
    return g if emit.shape(g) == shape else emit("sumTo", [g], shape=shape)


def _pow_exponent(out, a, b, e):
    """d(a**b)/db = a**b log a, held at 0 where a == 0 and b >= 0 (the limit
    of 0**b log 0 from above; `scale` by the mask keeps it 0 against the
    log's -inf). For a < 0 it is nan: a**b has no real derivative in b."""
    zero = e.const(0.0)
    held = e("mul", [e("indicator", [a, zero], relation="=="), e("indicator", [b, zero], relation=">=")])
    return e("scale", [e("sub", [_one(e), held]), e("mul", [out, e("log", [a])])])


elementwise2("add", np.add, (lambda out, a, b, e: 1.0, lambda out, a, b, e: 1.0), Export("{0} + {1}", "Add", True, update="add"), couples=(),
             keeps_nonfinite=(0, 1))
elementwise2("sub", np.subtract, (lambda out, a, b, e: 1.0, lambda out, a, b, e: -1.0),
             Export("{0} - {1}", "Sub", True, update="subtract"), couples=(), keeps_nonfinite=(0, 1))
elementwise2("mul", np.multiply, (lambda out, a, b, e: b, lambda out, a, b, e: a), Export("{0} * {1}", "Mul", True, update="multiply"), couples=((0, 1),), vanishes_with=(1, 0),
             keeps_nonfinite=(0, 1))
# −a / b² with b² as `square` (b · b, the same bits): differentiated again, one
# product by 2b where `mul` is two products and their sum.
elementwise2("div", np.divide, (lambda out, a, b, e: e("div", [_one(e), b]),
                                lambda out, a, b, e: e("div", [e("neg", [a]), e("square", [b])])),
             Export("{0} / {1}", "Div", True, update="divide"), methods=("div",), couples=((0, 1), (1, 1)), vanishes_with=(None, 0),
             keeps_nonfinite=(0,))  # x / inf is 0


def _power(a, b):
    """a ** b (np.power), for a whole-number exponent as |a| ** b given a's
    sign where b is odd: the same number (an even power is even in a, an
    odd one odd), and numpy's fast loop, where libm's scalar pow takes a slow
    path for every negative base (a vector of 100 entries: 2.5 µs against 12;
    10⁶: 6.8 ms against 227). So x ** 4 is exactly (-x) ** 4. np.power's
    bits for every base that is not negative, up to the sign of a nan;
    within one unit in the last place for a negative one. x ** 2 is x · x
    (np.square, one pass: 0.8 -> 0.2 µs at 100 entries, 1.05 -> 0.30 ms at
    10⁶), np.power's own bits, a nan's sign included: numpy's power loop
    computes x · x for a scalar exponent of 2 (DOUBLE_power's fast path in
    numpy/_core/src/umath/loops_umath_fp.dispatch.c.src, numpy ≥ 2.1; its
    `x ** 2` with an int 2 squares too), so the emitter records a
    derivative's x ** 2 as `square` (emitter._squared)."""
    if (type(b) is ndarray and b.ndim == 0 or type(b) is float) and type(a) is ndarray and a.ndim and \
            a.dtype.kind == "f" and float(b).is_integer():
        if b == 2.0:
            return np.square(a)
        out = np.abs(a)
        np.power(out, b, out=out)
        return np.copysign(out, a, out=out) if float(b) % 2 else out
    return np.power(a, b)


# The partials of a**b follow PyTorch's autograd (pow_backward_self and
# pow_backward_exponent) at every input, 0, negative and non-finite ones
# included: d/da is 0 wherever b == 0 (a**0 is 1 for every a, so the 0 · a**-1
# the formula gives at a = 0 is no nan: `scale` by b); d/db as _pow_exponent.
elementwise2("pow", _power, (lambda out, a, b, e: e("scale", [b, e("pow", [a, e("sub", [b, _one(e)])])]),
                               _pow_exponent), Export("{0} ** {1}", "Pow", True), methods=("pow",),
             couples=((0, 0), (0, 1), (1, 1)), vanishes_with=(1, None))


def _wins(a, b, e, behind: str):
    """1 − [a behind b] − ½[a = b] (`behind` is "<" for the larger, ">" for
    the smaller): maximum and minimum send g to the operand that wins and
    split it evenly at a tie (infinite ones too), as torch.maximum's and
    torch.minimum's backward do; where either is nan, neither is behind
    nor tied, so both get g, as there."""
    return e("sub", [_one(e), e("add", [e("indicator", [a, b], relation=behind),
                                        e("mul", [e.const(0.5), e("indicator", [a, b], relation="==")])])])


elementwise2("maximum", np.maximum, (lambda out, a, b, e: _wins(a, b, e, "<"), lambda out, a, b, e: _wins(b, a, e, "<")),
             Export("xp.maximum({0}, {1})", "Max"), couples=(), guarded=False, kink=np.equal)
elementwise2("minimum", np.minimum, (lambda out, a, b, e: _wins(a, b, e, ">"), lambda out, a, b, e: _wins(b, a, e, ">")),
             Export("xp.minimum({0}, {1})", "Min"), couples=(), guarded=False, kink=np.equal)
# log(exp(a) + exp(b)), stable: its partials exp(a − out) = sigmoid(a − b) and
# sigmoid(b − a) are at most 1, and the sigmoids are exact to rounding at
# ±1000 (out's own rounding there would cost exp(a − out) 13 digits of 16).
elementwise2("logaddexp", np.logaddexp, (lambda out, a, b, e: e("sigmoid", [e("sub", [a, b])]),
                                         lambda out, a, b, e: e("sigmoid", [e("sub", [b, a])])),
             Export("xp.maximum({0}, {1}) + xp.log1p(xp.exp(-xp.abs({0} - {1})))",
                    lambda b, x, y: b("Add", [b("Max", [x, y]), _onnx_log_sigmoid_tail(b, b("Sub", [x, y]))])),
             couples=((0, 0), (0, 1), (1, 1)), guarded=False)
# `a % b`, numpy's remainder (the sign of b): a − b·floor(a/b). As
# torch.remainder, ∂/∂a = 1 and ∂/∂b = −floor(a/b), written (out − a)/b
# without history: it is piecewise constant, so the second derivatives are
# exactly 0 (differentiating (out − a)/b leaves rounding that grows as
# 1/b²). At b = 0 (out is nan) it is −a/b, −floor(±inf): ∓inf, nan at a = 0,
# as torch's. It jumps where a/b is a whole number (out = 0): the kink `check` names.
# ONNX's Mod takes floats only as C's fmod (the sign of a), so the export
# writes the remainder out.
elementwise2("remainder", np.remainder, (lambda out, a, b, e: 1.0,
                                         lambda out, a, b, e: e("stopGradient", [e("where", [
                                             e("indicator", [b, e.const(0.0)], relation="=="),
                                             e("neg", [e("div", [a, b])]), e("div", [e("sub", [out, a]), b])])])),
             Export("xp.remainder({0}, {1})",
                    lambda b, x, y: b("Sub", [x, b("Mul", [y, b("Floor", [b("Div", [x, y])])])])),
             couples=(), kink=lambda a, b: np.remainder(a, b) == 0)


def _where_shape(c, a, b, **_):
    try:
        return np.broadcast_shapes(c, a, b)
    except ValueError:
        raise ShapeError("shapes do not broadcast, {0} is {s0}, {1} is {s1}, {2} is {s2}") from None


def _where_derivative(i, g, out, cond, a, b, emit):
    """g where the condition picks the operand, else 0 (a `where` itself, so
    an infinite g at an entry not picked stays out, as in PyTorch), summed to
    the operand's shape. The condition has no derivative: it is 0/1 wherever
    it is not a tie, and a tie is a choice between values, not a kink."""
    if i == 0:
        return None
    zero = emit.const(0.0)
    picked = emit("where", [cond, g, zero] if i == 1 else [cond, zero, g])
    return sum_to_graph(emit, picked, emit.shape((cond, a, b)[i]))


# `where(cond, a, b)`: a where cond is nonzero, else b (numpy.where, broadcast).
defop("where", np.where, _where_shape, _where_derivative, methods=(), arity=3,
      structure=elementwise_structure(couples=(), flat_operands=(0,)),
      export=Export("xp.where({0} != 0, {1}, {2})",
                    lambda b, c, x, y: b("Where", [b("Not", [b("Equal", [c, b.const(0.0)])]), x, y])))


def _plain_product(w, t, d) -> bool:
    """`scale` is a plain product when its guard cannot apply: d is a finite
    constant, or t a constant without zeros (w: an exporter, ops.Export)."""
    dv, tv = w.value(d), w.value(t)
    return (dv is not None and bool(np.isfinite(dv).all())) or (tv is not None and bool(np.all(tv != 0)))


# `scale` is `mul` whose zero first operand stays zero against an infinite or
# nan second (the numeric `scale` helper): the product of a (co)tangent and a
# partial. Its partial in d is scaled by t, so it is 0 wherever t is too.
defop("scale", scale, broadcast_shape,
      lambda i, g, out, t, d, emit: sum_to_graph(emit, emit("scale", [g, d]) if i == 0 else emit("scale", [t, g]),
                                                 emit.shape((t, d)[i])),
      methods=(), arity=2, structure=elementwise_structure(((0, 1),), vanishes_with=(1, 0)), unguarded=np.multiply,
      keeps_nonfinite=(0,),  # not d: the guard makes 0 · inf a 0
      export=Export(lambda w, t, d: f"{t} * {d}" if _plain_product(w, t, d) else f"_scale({t}, {d})",
                    lambda b, t, d: b("Mul", [t, d]) if _plain_product(b, t, d) else
                    b("Where", [b("Equal", [t, b.const(0.0)]), b.const(0.0), b("Mul", [t, d])]), True))


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
    rule meets its value and cotangent in one layout), else in its
    operands' layout, or, where they differ (a recorded backward pass's
    product with a transpose), with the longer side contiguous as the
    compute-bound products its result meets are. Column-major is the
    transpose of the transposed product, no copy."""
    if type(a) is ndarray and type(b) is ndarray and a.ndim == 2 and b.ndim == 2:
        m, n = a.shape[0], b.shape[1]
        if a.shape[1] >= COMPUTE_BOUND_INNER:
            column_major = m > n or (m == n and _column_major(a) and _column_major(b))
        elif like is not None:
            column_major = _column_major(like)
        else:
            column_major = _column_major(a) if _column_major(a) == _column_major(b) else m > n
        if column_major:
            return np.matmul(b.T, a.T).T
    return np.matmul(a, b)


def _column_major(x: np.ndarray) -> bool:
    return x.flags.f_contiguous and not x.flags.c_contiguous


def _matmul_vjp(i, g, out, a, b):
    """The statement's products, each laid out like the primal its result
    stands for (`_product`'s `like`), which the interpreted statement cannot
    know."""
    a2, b2 = _as_matrices(a, b)
    g2 = np.reshape(g, (a2.shape[0], b2.shape[1]))
    return _product(g2, b2.T, a2).reshape(a.shape) if i == 0 else _product(a2.T, g2, b2).reshape(b.shape)


def _matmul_batched(args, which):
    """A product with a batch of tangents on one side: one BLAS product over
    the whole batch, not k small ones (the batch folded into the rows).
    Sizes are spelled out, never -1: reshape cannot infer one when a size is 0."""
    a, b = args
    if which == (True, False) and a.ndim >= 2:  # every row of every a_k times b, as one product
        rows = a.reshape(math.prod(a.shape[:-1]), a.shape[-1])
        return (rows @ b).reshape(a.shape[:-1] + b.shape[1:])
    if which == (False, True) and b.ndim == 2:  # a batch of vectors b: a b_k is row k of b aᵀ
        return b @ a.T
    if which == (False, True) and a.ndim == 2 and b.ndim == 3:  # (tb_k aᵀ)ᵀ for each k, as one (k·c)×n by n×r product
        k, n, c = b.shape
        tb = np.swapaxes(b, 1, 2).reshape(k * c, n)
        return np.swapaxes((tb @ a.T).reshape(k, c, a.shape[0]), 1, 2)
    return np.stack([np.matmul(a[d] if which[0] else a, b[d] if which[1] else b)
                     for d in range((a if which[0] else b).shape[0])])


def _placed(k: int, rows: np.ndarray, shape: tuple, at: np.ndarray, lines: np.ndarray, column: bool) -> np.ndarray:
    """A batch (k,) + shape (a matrix's), zero but in directions `rows`: each
    one's line of `lines` as column at[j] (`column`) or as row at[j]."""
    if len(rows) == k and shape[1 if column else 0] == 1:  # every direction's one line: the batch itself
        return lines.reshape((k,) + shape)
    result = np.zeros((k,) + shape)
    if column:
        result[rows, :, at] = lines
    else:
        result[rows, at, :] = lines
    return result


# A product's tangents along the identity's rows are kept `Scaled` where they are at least this many
# entries: below, a pass over the batch costs less than a Scaled step's Python (about 3 us), and the
# steps after stay in C order, as arrays.
SCALED_ENTRIES = 1 << 14


def _matmul_diagonal_jvp(i, t: Diagonal, out, a, b):
    """a @@ (tangents each moving one entry (j, q) of b): a's column j, scaled,
    as column q (and (r, j) of a: b's row j as row r). k·m work, not a k·m·n
    product of mostly zeros."""
    a2, b2 = _as_matrices(a, b)
    (m, n), p = a2.shape, b2.shape[1]
    if i == 1 and p == 1 and t.ordered and n * m >= SCALED_ENTRIES and not (t.values != 1.0).any():
        # The identity over a vector's entries: a's columns as they lie, which elementwise steps scale (Scaled).
        return Scaled(a2.T.reshape(t.shape[:1] + np.shape(out)), np.ones(np.shape(out)))
    if i == 1 and p == 1 and t.ordered:  # j is every column, in order: a's columns, scaled, are the batch
        return (a2 * t.values).T.reshape(t.shape[:1] + np.shape(out))
    rows, entries, values = t.hits()
    if i == 1:
        j, q = np.divmod(entries, p)
        result = _placed(t.shape[0], rows, (m, p), q, (a2[:, j] * values).T, column=True)
    else:
        r, j = np.divmod(entries, n)
        result = _placed(t.shape[0], rows, (m, p), r, b2[j] * values[:, None], column=False)
    return result.reshape(t.shape[:1] + np.shape(out))


def _matmul_diagonal_vjp(i, g: Diagonal, out, a, b):
    """Cotangents each on one entry (r, q) of the product: a's row r, scaled,
    as column q of b's (aᵀ @@ g), or b's column q as row r of a's (g @@ bᵀ)."""
    a2, b2 = _as_matrices(a, b)
    (m, n), p = a2.shape, b2.shape[1]
    rows, entries, values = g.hits()
    r, q = np.divmod(entries, p)
    if i == 1:
        result = _placed(g.shape[0], rows, (n, p), q, a2[r] * values[:, None], column=True)
    else:
        result = _placed(g.shape[0], rows, (m, n), r, b2[:, q].T * values[:, None], column=False)
    return result.reshape(g.shape[:1] + np.shape((a, b)[i]))


def _matmul_shape(a, b, **_):
    if len(a) == 0 or len(b) == 0:
        raise ShapeError("`@@` needs vectors or matrices, but {0} is {s0} and {1} is {s1}; use `*` to scale")
    inner_a, inner_b = a[-1], (b[0] if len(b) == 1 else b[-2])
    if inner_a != inner_b:
        raise ShapeError("inner sizes differ, {0} is {s0}, {1} is {s1}")
    return a[:-1] + b[1:] if len(b) == 2 else a[:-1]


def _matmul_derivative(i, g, out, a, b, emit):
    """g @@ bᵀ and aᵀ @@ g, as products of the operands' own ranks: with a
    matrix and a vector, the vector's is the product it stands in — g @@ a
    for a vector g, b @@ g for g @@ bᵀ: numpy's one BLAS call for either
    form, so the bits are those of the product of matrices made of them —
    and the matrix's (or, for two vectors, either's) an outer product,
    a column times a row: each entry one product (and +0 for −0, as any
    product of matrices), where a reshape and a transpose back and forth
    were a step each."""
    sa, sb = emit.shape(a), emit.shape(b)
    if len(sa) == 2 and len(sb) == 2:
        return emit("matmul", [g, emit("transpose", [b])]) if i == 0 else emit("matmul", [emit("transpose", [a]), g])
    if i == 0 and len(sb) == 2:
        return emit("matmul", [b, g])
    if i == 1 and len(sa) == 2:
        return emit("matmul", [g, a])
    if len(sa) == 1 and len(sb) == 1:  # two vectors: the other times g, its column first for a's and its row last
        one = reshape_graph(emit, g, (1,))  # for b's, so the statement transposed is ȧ @@ b and a @@ ḃ
        return emit("matmul", [reshape_graph(emit, b, (sb[0], 1)), one] if i == 0 else
                    [one, reshape_graph(emit, a, (1, sa[0]))])
    if i == 0:  # a's entries: g's column times b as a row
        return emit("matmul", [reshape_graph(emit, g, (sa[0], 1)), reshape_graph(emit, b, (1, sb[0]))])
    return emit("matmul", [reshape_graph(emit, a, (sa[0], 1)), reshape_graph(emit, g, (1, sb[1]))])  # b's: a's column times g's row


def reshape_graph(emit, x, shape: tuple):
    return x if emit.shape(x) == shape else emit("reshape", [x], shape=shape)


def _onnx_matmul(b, x, y):
    """A product of matrices, vectors made ones: onnxruntime's optimizer
    fuses a Transpose into a MatMul wrongly when the MatMul's second operand
    is a vector (1.32: it computes another product)."""
    sx, sy = b.shape(x), b.shape(y)
    if len(sx) == 2 and len(sy) == 2:
        return b("MatMul", [x, y])
    product = b("MatMul", [b("Reshape", [x, b.ints((1, sx[0]) if len(sx) == 1 else sx)]),
                           b("Reshape", [y, b.ints((sy[0], 1) if len(sy) == 1 else sy)])])
    return b("Reshape", [product, b.ints(_matmul_shape(sx, sy))])


def _matrix_sizes(e: Entries) -> tuple[int, int, int]:
    """A product's r × k by k × c, vectors promoted as numpy.matmul does."""
    sa, sb = e.shapes
    return (sa[0] if len(sa) == 2 else 1), sa[-1], (sb[1] if len(sb) == 2 else 1)


def _matmul_first(i: int, e: Entries) -> Links:
    """out[p, q] depends on a[p, t] where b[t, q] may be nonzero, and on
    b[t, q] where a[p, t] may be: a constant's zeros are structural. Every
    entry of a row of a (a column of b) when the other has no zeros."""
    r, k, c = _matrix_sizes(e)
    other = e.nonzero(1 - i)
    out = np.arange(r * c)
    if other.all():
        if i == 0:
            return Links.grouped((r * c, r * k), out // c, np.arange(r * k) // max(k, 1), r)
        return Links.grouped((r * c, k * c), out % max(c, 1), np.arange(k * c) % max(c, 1), c)
    if i == 0:
        t, q = np.nonzero(other.reshape(k, c))
        p = np.repeat(np.arange(r), len(t))
        return Links.pairs((r * c, r * k), p * c + np.tile(q, r), p * k + np.tile(t, r))
    p, t = np.nonzero(other.reshape(r, k))
    q = np.repeat(np.arange(c), len(p))
    return Links.pairs((r * c, k * c), np.tile(p, c) * c + q, np.tile(t, c) * c + q)


def _matmul_second(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
    """Bilinear: a[p, t] meets b[t, q] for each out[p, q] with an adjoint."""
    if (i, j) != (0, 1):
        return None
    r, k, c = _matrix_sizes(e)
    p, q = np.divmod(np.flatnonzero(adj), max(c, 1))
    if len(p) * k > MAX_LISTED_PAIRS:  # every row of a met with every column of b: conservative
        rows_a, cols_b = np.zeros(r, bool), np.zeros(c, bool)
        rows_a[p], cols_b[q] = True, True
        return Links.grouped((r * k, k * c), np.where(np.repeat(rows_a, k), 0, -1), np.where(np.tile(cols_b, k), 0, -1), 1)
    t = np.tile(np.arange(k), len(p))
    p, q = np.repeat(p, k), np.repeat(q, k)
    return Links.pairs((r * k, k * c), p * k + t, t * c + q)


defop("matmul", _product, _matmul_shape, _matmul_derivative, methods=("matmul", "dot"), arity=2,
      batched=_matmul_batched, fast=FastPath("mlp", vjp=_matmul_vjp), export=Export("{0} @ {1}", _onnx_matmul),
      on_rows=_matmul_rows, across_rows=_matmul_across, diagonal=(_matmul_diagonal_jvp, _matmul_diagonal_vjp),
      structure=Structure("dense", _matmul_first, _matmul_second))


def _transposed(t: Diagonal, shape: tuple) -> Diagonal:
    """A Diagonal batch over a value of `shape`, transposed: entry (r, c) to (c, r)."""
    if len(shape) < 2:
        return t
    m, n = shape
    return t.moved(lambda e: (e % n) * m + e // n, (n, m), True)


def _summed(t: Diagonal, shape: tuple, kept: tuple, out_shape: tuple, factor: float = 1.0) -> Diagonal:
    """A Diagonal batch over a value of `shape` summed to `kept` (each axis
    shape's, or 1: summed over), whose entries, in order, are the result's
    (`out_shape`); times `factor` (a mean's 1 / count)."""
    if math.prod(kept) == 1:
        return t.moved(np.zeros_like, out_shape, t.shape[0] <= 1, factor)

    def where(entries):
        index = np.unravel_index(entries, shape)
        return np.ravel_multi_index(tuple(ix if k == n else 0 for ix, k, n in zip(index, kept, shape)), kept)
    return t.moved(where, out_shape, tuple(kept) == tuple(shape), factor)


def _transpose_shape(s, **_):
    return s[::-1]


defop("transpose", lambda x: x.T, _transpose_shape, lambda i, g, out, x, emit: emit("transpose", [g]),
      methods=("T", "transpose"), on_rows=lambda row_axes, ndims, row_params: ndims[0] - 1 - row_axes[0],
      batched=lambda args, which: np.swapaxes(args[0], -1, -2) if args[0].ndim == 3 else args[0],
      export=Export(lambda w, x: f"{x}.T" if len(w.shape(x)) == 2 else x,
                    lambda b, x: b("Transpose", [x]) if len(b.shape(x)) == 2 else b("Identity", [x]), view=True),
      structure=COPIES,
      diagonal=(lambda i, t, out, x: _transposed(t, x.shape), lambda i, g, out, x: _transposed(g, out.shape)))


# --------------------------------------------------------------- reductions


def _exclusive_products(x: np.ndarray, axis: int) -> np.ndarray:
    """For each entry, the product of the others along `axis`, without
    dividing (so zeros are handled exactly)."""
    ones = np.ones(x.shape[:axis] + (1,) + x.shape[axis + 1:])
    left = np.cumprod(np.concatenate([ones, x], axis=axis), axis=axis)
    right = np.flip(np.cumprod(np.flip(np.concatenate([x, ones], axis=axis), axis), axis=axis), axis)
    n = x.shape[axis]
    return np.take(left, range(n), axis=axis) * np.take(right, range(1, n + 1), axis=axis)


# Every reduction is one rule over an axis: None (all entries, a scalar), 1
# (along each row: `rowSum`, a vector of one entry per row) or 0 (along each
# column: `colSum`). The statement sees the result with the reduced axis kept
# (`_kept`), so it broadcasts back over x the same way for every axis.
AXES = {None: "", 1: "row", 0: "col"}


def _kept(shape: tuple, axis: int | None) -> tuple:
    """A reduction's result shape with the reduced axis kept, as size 1."""
    return () if axis is None else (shape[0], 1) if axis == 1 else (1, shape[1])


def _spread_graph(emit, v, x, axis: int | None):
    """A reduction's result (or cotangent) `v`, shaped to broadcast back over x."""
    return reshape_graph(emit, v, _kept(emit.shape(x), axis))


def _divide_by_count(emit, g, x, axis: int | None):
    """g / the number of entries a mean (over everything, or along `axis`) averages."""
    shape = emit.shape(x)
    return emit("div", [g, emit.const(float(max(math.prod(shape) if axis is None else shape[axis], 1)))])


def _reduced_shape(axis: int | None) -> Callable:
    if axis is None:
        return scalar_shape
    what = "a row reduction" if axis == 1 else "a column reduction"

    def shape(s, **_):
        require_matrix(s, what)
        return s[:1] if axis == 1 else s[1:]
    return shape


def _extreme(f: Callable, identity: float) -> Callable:
    """np.max or np.min along an axis; of no entries, the identity (−inf for
    the maximum, +inf for the minimum), as log-sum-exp of nothing is −inf."""
    def value(x, axis=None, keepdims=False):
        if x.size == 0:
            shape = np.sum(np.zeros(x.shape), axis=axis, keepdims=keepdims).shape
            return np.full(shape, identity)
        return f(x, axis=axis, keepdims=keepdims)
    return value


_max, _min = _extreme(np.max, -np.inf), _extreme(np.min, np.inf)


def _log_sum_exp(x, axis=None):
    """log Σ exp(x), shifted by the maximum so no exp overflows: finite at
    ±1000. An infinite maximum is not subtracted (−inf − −inf is nan)."""
    m = _max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    total = np.sum(np.exp(x - m), axis=axis, keepdims=True)
    return np.squeeze(np.log(total) + m, axis=axis) if axis is not None else (np.log(total) + m).reshape(())


def _ties_derivative(i, g, out, x, emit, axis):
    """max and min: g goes to the entries equal to the result, split evenly
    among ties (torch.amax's and torch.max(x)'s subgradient; JAX's too). A
    nan is the result wherever there is one, and then the nans are the
    entries that win (torch.max(x)'s, and torch.max(x, dim)'s pick; `==`
    finds none, so amax's share is nan everywhere)."""
    winners = emit("add", [emit("indicator", [x, _spread_graph(emit, out, x, axis)], relation="=="),
                           emit("isNan", [x])])
    share = emit("div", [winners, emit("sumTo", [winners], shape=_kept(emit.shape(x), axis))])
    return emit("mul", [_spread_graph(emit, g, x, axis), share])


def _tied(extreme: Callable, axis: int | None) -> Callable:
    """The kink of max or min: the entries tied for the result (two or more)."""
    def kink(x):
        winners = x == extreme(x, axis=axis, keepdims=True)
        return winners & (np.sum(winners, axis=axis, keepdims=True) > 1)
    return kink


def _product_derivative(i, g, out, x, emit, axis):
    """g · the product of the other entries (exclusiveProducts, which divides
    by nothing, so zeros are exact); along columns, that of the transpose."""
    if axis == 0:
        others = emit("transpose", [emit("exclusiveProducts", [emit("transpose", [x])], over="rows")])
    else:
        others = emit("exclusiveProducts", [x], over="all" if axis is None else "rows")
    return emit("mul", [_spread_graph(emit, g, x, axis), others])


def _reduce(function: str, operator: str, axis: int | None = None, divide: bool = False) -> Export:
    """A sum, product, maximum or minimum over all entries or along `axis`;
    `divide`: by the number of entries (a mean), as the value rules compute it."""
    along = "" if axis is None else f", axis={axis}"

    def python(w, x):
        count = math.prod(w.shape(x)) if axis is None else w.shape(x)[axis]
        return f"xp.{function}({x}{along})" + (f" / {float(count)!r}" if divide else "")

    def onnx(b, x):
        axes = [] if axis is None else [b.ints([axis])]
        total = b(operator, [x, *axes], keepdims=0)
        if operator in ("ReduceMax", "ReduceMin"):  # onnxruntime's skip a nan; numpy's, and spiread's, are nan
            nans = b("ReduceMax", [b("Cast", [b("IsNaN", [x])], to=b.FLOAT64), *axes], keepdims=0)
            return b("Where", [b("Greater", [nans, b.const(0.0)]), b.const(np.nan), total])
        if not divide:
            return total
        return b("Div", [total, b.const(float(math.prod(b.shape(x)) if axis is None else b.shape(x)[axis]))])
    return Export(python, onnx)


def _log_sum_exp_export(axis: int | None) -> Export:
    """As the value rule: shifted by the maximum (ONNX's ReduceLogSumExp is not)."""
    def onnx(b, x):
        axes = [] if axis is None else [b.ints([axis])]
        m = b("ReduceMax", [x, *axes], keepdims=1)
        m = b("Where", [b("IsInf", [m]), b.const(0.0), m])  # an infinite maximum is not subtracted
        total = b("ReduceSum", [b("Exp", [b("Sub", [x, m])]), *axes], keepdims=1)
        shape = () if axis is None else tuple(n for k, n in enumerate(b.shape(x)) if k != axis)
        return b("Reshape", [b("Add", [b("Log", [total]), m]), b.ints(shape)])
    return Export(f"_log_sum_exp({{0}}, {axis})", onnx)


# np.add.reduce is np.sum without its Python wrapper (0.9 µs a call against 2.1 on 100 entries).
REDUCTIONS = {  # word: (its value along an axis, its derivative statement along it, its export along it)
    "sum": (lambda x, axis: np.add.reduce(x, axis),
            lambda i, g, out, x, emit, axis: emit("broadcastTo", [_spread_graph(emit, g, x, axis)],
                                                  shape=emit.shape(x)),
            lambda axis: _reduce("sum", "ReduceSum", axis)),
    # A mean is a sum divided by the count, not np.mean, which warns about an
    # empty slice through Python's warnings, past np.errstate.
    "mean": (lambda x, axis: np.add.reduce(x, axis) / (x.size if axis is None else x.shape[axis]),
             lambda i, g, out, x, emit, axis: emit("broadcastTo", [_spread_graph(
                 emit, _divide_by_count(emit, g, x, axis), x, axis)], shape=emit.shape(x)),
             lambda axis: _reduce("sum", "ReduceSum", axis, divide=True)),
    "product": (lambda x, axis: np.prod(x, axis=axis), _product_derivative,
                lambda axis: _reduce("prod", "ReduceProd", axis)),
    "max": (lambda x, axis: _max(x, axis=axis), _ties_derivative, lambda axis: _reduce("max", "ReduceMax", axis)),
    "min": (lambda x, axis: _min(x, axis=axis), _ties_derivative, lambda axis: _reduce("min", "ReduceMin", axis)),
    "logSumExp": (_log_sum_exp,
                  lambda i, g, out, x, emit, axis: emit("mul", [_spread_graph(emit, g, x, axis), emit("exp", [
                      emit("sub", [x, _spread_graph(emit, out, x, axis)])])]),
                  _log_sum_exp_export),
}
KINKS = {"max": _max, "min": _min}
# Which entries meet in a second derivative (structure.along): none for the
# linear and the piecewise linear ones, all but an entry with itself for a
# product (linear in each entry), all for a log-sum-exp.
SECOND_ORDER = {"sum": None, "mean": None, "product": "off-diagonal", "max": None, "min": None, "logSumExp": "all"}


def _reduction_diagonal(word: str, axis: int | None) -> Callable | None:
    """A sum's or a mean's jvp of a Diagonal batch: each entry moved to the one it is summed into."""
    if word not in ("sum", "mean"):
        return None

    def jvp(i, t, out, x):
        count = math.prod(x.shape) if axis is None else x.shape[axis]
        kept = (1,) * x.ndim if axis is None else _kept(x.shape, axis)
        return _summed(t, x.shape, kept, out.shape, 1.0 / max(count, 1) if word == "mean" else 1.0)
    return jvp


def _reduction(word: str, axis: int | None, batched=None) -> Op:
    value, derivative, export = REDUCTIONS[word]
    name = AXES[axis] + (word[0].upper() + word[1:] if axis is not None else word)
    kink = _tied(KINKS[word], axis) if word in KINKS else None
    return defop(name, lambda x: value(x, axis), _reduced_shape(axis),
                 lambda i, g, out, x, emit: derivative(i, g, out, x, emit, axis), kink=kink,
                 structure=reduction_structure(axis, SECOND_ORDER[word]), batched=batched, export=export(axis),
                 on_rows=_on_own_rows if axis == 1 else None, across_rows=_reduction_across(word, axis),
                 diagonal=(_reduction_diagonal(word, axis), None),
                 keeps_nonfinite=(0,) if word in ("sum", "mean", "product") else ())  # max(-inf, 1) is 1


# Of nothing, as numpy has it: the sum is 0, the product 1, the mean nan, the
# maximum −inf and the minimum +inf (PyTorch refuses the last two).
# Derivatives over no entries are empty sums: 0, whatever the value.
for _word in REDUCTIONS:
    for _axis in AXES:
        _reduction(_word, _axis, batched=(lambda args, which: batch_sum(args[0]))
                   if (_word, _axis) == ("sum", None) else None)
del _word, _axis


def _row_cumsum(x, reverse=False):
    """Running sums along each row (a vector is one row); `reverse`: from
    the end, the transpose of the running sums."""
    if reverse:
        return np.flip(np.cumsum(np.flip(x, -1), axis=-1), -1)
    return np.cumsum(x, axis=-1)


def _running_shape(s, reverse=False):
    if not s:
        raise ShapeError("running sums need a vector or matrix, but {0} is {s0}")
    return s


def _running_first(i: int, e: Entries) -> Links:
    """Entry j of a row on entries 0..j of it (j..end, reversed)."""
    group, count = (np.arange(e.size(0)) // max(e.shapes[0][-1], 1)), math.prod(e.shapes[0][:-1])
    position = np.arange(e.size(0)) % max(e.shapes[0][-1], 1)
    reverse = e.params.get("reverse", False)
    pairs = within_groups(e.size(0), group, count, diagonal=True,
                          keep=lambda a, b: position[b] >= position[a] if reverse else position[b] <= position[a])
    return pairs


# `X.rowCumsum`; `x.cumsum` is it on the entries flattened, as numpy's cumsum.
defop("rowCumsum", _row_cumsum, _running_shape,
      lambda i, g, out, x, emit, reverse=False: emit("rowCumsum", [g], reverse=not reverse),
      row_wise=True, structure=Structure("rows", _running_first, lambda i, j, e, adj: None), batched=lambda args, which, reverse=False: _row_cumsum(args[0], reverse),
      export=Export(lambda w, x, reverse=False: f"_row_cumsum({x}, {reverse})",
                    lambda b, x, reverse=False: b("CumSum", [x, b.const(np.array(-1))], reverse=int(reverse))))


# --------------------------------------------------------------------- einsum
# `einsum("ij,jk->ik", A, B)` over operands of rank ≤ 2. The interpreter
# checks the subscripts and writes them explicitly ("ij,jk->ik", never
# implicit), so `spec` always has its `->`.


def _einsum_parts(spec: str) -> tuple[list[str], str]:
    inputs, _, output = spec.partition("->")
    return inputs.split(","), output


def _einsum(*xs, spec):
    out = np.einsum(spec, *xs)
    # A diagonal ("ii->i") is a view of its operand: a value of its own, as every op's.
    return np.array(out) if isinstance(out, np.ndarray) and out.base is not None else out


def _einsum_shape(*shapes, spec):
    inputs, output = _einsum_parts(spec)
    if len(inputs) != len(shapes):
        raise ShapeError(f'"{spec}" has subscripts for {len(inputs)} operands, but there are {len(shapes)}')
    sizes: dict[str, tuple[int, int]] = {}  # letter -> (its size, the operand it was first met in)
    for k, (letters, shape) in enumerate(zip(inputs, shapes)):
        if len(letters) != len(shape):
            raise ShapeError(f'"{letters or "(none)"}" has {len(letters)} axes, but {{{k}}} is {{s{k}}}')
        for letter, n in zip(letters, shape):
            m, first = sizes.setdefault(letter, (n, k))
            if m != n:
                raise ShapeError(f'`{letter}` is {m} long in {{{first}}}, which is {{s{first}}}, '
                                 f'but {n} long in {{{k}}}, which is {{s{k}}}')
    return tuple(sizes[letter][0] for letter in output)


def _einsum_derivative(i, g, out, *xs, emit, spec):
    """An einsum of g and the other operands onto operand i's letters (each
    once); then g spread along the letters only operand i has and the
    output sums away, and a diagonal ("ii") placed back on the matrix."""
    inputs, output = _einsum_parts(spec)
    own = inputs[i]
    letters = "".join(dict.fromkeys(own))
    others = [(s, x) for j, (s, x) in enumerate(zip(inputs, xs)) if j != i]
    reached = set(output).union(*[s for s, _ in others])
    kept = "".join(letter for letter in letters if letter in reached)
    if others or output != kept:
        g = emit("einsum", [g] + [x for _, x in others], spec=",".join([output] + [s for s, _ in others]) + "->" + kept)
    shape = emit.shape(xs[i])
    size = dict(zip(own, shape))
    if kept != letters:
        spread = tuple(size[letter] if letter in kept else 1 for letter in letters)
        g = emit("broadcastTo", [emit("reshape", [g], shape=spread)], shape=tuple(size[letter] for letter in letters))
    if letters != own:
        positions = np.arange(shape[0])
        g = emit("scatterPairs", [g], rows=positions, cols=positions, shape=shape)
    return g


def _einsum_batched(args, which, spec):
    """The einsum with a letter of its own for the batch axis."""
    inputs, output = _einsum_parts(spec)
    batch = next(letter for letter in "zyxwvutsrqponmlkjihgfedcbaZYXWVUTSRQPONMLKJIHGFEDCBA" if letter not in spec)
    batched = ",".join(batch + s if b else s for s, b in zip(inputs, which)) + "->" + batch + output
    return np.einsum(batched, *args)


def _einsum_links(e: Entries, i: int, j: int | None = None, adj: np.ndarray | None = None) -> Links | None:
    """Every assignment of the letters, where the other operands' entries
    may be nonzero: out entry with operand i's entry (first order), or
    operand i's entry with operand j's where the out entry has an adjoint
    (second order: multilinear, so only different operands meet). None
    when there are more assignments than MAX_LISTED_PAIRS."""
    inputs, output = _einsum_parts(e.params["spec"])
    size: dict[str, int] = {}
    for letters, shape in zip(inputs, e.shapes):
        size.update(zip(letters, shape))
    names = sorted(size)
    if math.prod(size[n] for n in names) > MAX_LISTED_PAIRS:
        return None
    grid = dict(zip(names, np.indices([size[n] for n in names]).reshape(len(names), -1)))
    total = math.prod(size[n] for n in names)

    def flat(letters: str, shape: tuple) -> np.ndarray:
        return (np.ravel_multi_index([grid[n] for n in letters], shape) if letters
                else np.zeros(total, dtype=np.int64))

    keep = np.ones(total, dtype=bool)
    for k, (letters, shape) in enumerate(zip(inputs, e.shapes)):
        if k not in (i, j):
            keep &= e.nonzero(k)[flat(letters, shape)]
    if j is None:
        return Links.pairs((e.size(), e.size(i)), flat(output, e.out_shape)[keep], flat(inputs[i], e.shapes[i])[keep])
    keep &= adj[flat(output, e.out_shape)]
    return Links.pairs((e.size(i), e.size(j)), flat(inputs[i], e.shapes[i])[keep], flat(inputs[j], e.shapes[j])[keep])


def _einsum_first(i: int, e: Entries) -> Links:
    found = _einsum_links(e, i)
    return WHOLE.first(i, e) if found is None else found


def _einsum_second(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
    if i == j:  # linear in each operand
        return None
    found = _einsum_links(e, i, j, adj)
    return WHOLE.second(i, j, e, adj) if found is None else found


defop("einsum", _einsum, _einsum_shape, _einsum_derivative, methods=(), batched=_einsum_batched,
      structure=Structure("dense", _einsum_first, _einsum_second),
      export=Export(lambda w, *xs, spec: f"xp.einsum({spec!r}, {', '.join(xs)})",
                    lambda b, *xs, spec: b("Einsum", list(xs), equation=spec), view=True))


# ------------------------------------------------------- row normalisations
# A vector is normalised as a single row; the value rules work along the last
# axis, so a leading batch axis passes through.


def _row_total(x):
    """np.sum(x, axis=-1, keepdims=True). Narrow rows sum faster by einsum
    (228,146 rows of 27: 1.7 ms against 5.3); long ones keep numpy's
    pairwise summation, and so does a vector, one row, where einsum's
    parsing is most of the cost (50 entries: 0.9 µs against 2.0)."""
    if x.shape[-1] <= 64 and x.ndim > 1:
        return np.einsum("...j->...", x)[..., None]
    return np.add.reduce(x, -1, keepdims=True)


def _l1(x):
    return _row_total(np.abs(x))


def _exp_shifted(x):
    """exp(x − rowmax(x)) (the maximum of an empty row is −inf), C-ordered
    whatever x's layout (the residuals' users index it flat), and its row
    totals: the softmax is their ratio and
    log-sum-exp is rowmax + log(total); what the softmax ops keep for their
    derivatives."""
    m = _max(x, axis=-1, keepdims=True)
    e = np.subtract(x, m, order="C")
    np.exp(e, out=e)
    return m, e, _row_total(e)


def _exp_rows_shared(w, x: str) -> str:
    """The exported line of `_exp_rows(x)` (the rows' maxima, exp(x − max)
    and its totals, export_runtime.py) that every softmax op of x in a
    function reads (ops.Export: `w.shared`)."""
    return w.shared(f"_exp_rows({x})", f"exp_rows_{x}")


def _softmax_export(w, x: str) -> str:
    """e / total from the shared parts, into e where this line reads them last."""
    parts = _exp_rows_shared(w, x)
    return f"_softmax_of({parts}, in_place=True)" if w.last_reads(parts) else f"_softmax_of({parts})"


def _softmax(x):
    _, e, total = _exp_shifted(x)
    return np.divide(e, total, out=e)


def _log_softmax_fwd(x):
    m, e, total = _exp_shifted(x)
    return (x - m) - np.log(total), (e, total)


def _log_softmax_vjp(i, g, out, x, *, residual):
    """The statement from the residual: the softmax (exp(out)) is e / total,
    e computed by the forward pass and overwritten here."""
    e, total = residual
    spread = np.multiply(e, _row_total(g) / total, out=e)
    return np.subtract(g, spread, out=spread)


def _row_shape(s, **_):
    if len(s) == 0:
        raise ShapeError("a row normalisation needs a vector or matrix, but {0} is {s0}")
    return s


def _normalise_l1_derivative(i, g, out, x, emit):
    spread = emit("mul", [emit("sign", [x]), emit("rowTotal", [emit("mul", [g, out])])])
    return emit("div", [emit("sub", [g, spread]), emit("rowTotal", [emit("abs", [x])])])


def _onnx_row_total(b, x):
    return b("ReduceSum", [x, b.ints([-1])], keepdims=1)


def _onnx_shifted(b, x):
    """x − rowmax(x) and its exponentials (`_exp_shifted`)."""
    shifted = b("Sub", [x, b("ReduceMax", [x, b.ints([-1])], keepdims=1)])
    return shifted, b("Exp", [shifted])


def _onnx_softmax(b, x):
    _, e = _onnx_shifted(b, x)
    return b("Div", [e, _onnx_row_total(b, e)])


def _onnx_log_softmax(b, x):
    shifted, e = _onnx_shifted(b, x)
    return b("Sub", [shifted, b("Log", [_onnx_row_total(b, e)])])


defop("normaliseRowsL1", lambda x: x / _l1(x), _row_shape, _normalise_l1_derivative,
      methods=("normaliseRowsL1", "normalizeRowsL1"), kink=lambda x: x == 0, row_wise=True, structure=rows(),
      export=Export("{0} / xp.sum(xp.abs({0}), axis=-1, keepdims=True)",
                    lambda b, x: b("Div", [x, _onnx_row_total(b, b("Abs", [x]))])))
defop("normaliseRowsL2", lambda x: x / np.sqrt(_row_total(x * x)), _row_shape,
      lambda i, g, out, x, emit: emit("div", [
          emit("sub", [g, emit("mul", [out, emit("rowTotal", [emit("mul", [g, out])])])]),
          emit("sqrt", [emit("rowTotal", [emit("mul", [x, x])])])]),
      methods=("normaliseRowsL2", "normalizeRowsL2"), row_wise=True, structure=rows(),
      export=Export("{0} / xp.sqrt(xp.sum({0} * {0}, axis=-1, keepdims=True))",
                    lambda b, x: b("Div", [x, b("Sqrt", [_onnx_row_total(b, b("Mul", [x, x]))])])))
defop("softmaxRows", _softmax, _row_shape,
      lambda i, g, out, x, emit: emit("mul", [out, emit("sub", [g, emit("rowTotal", [emit("mul", [g, out])])])]),
      row_wise=True, structure=rows(), export=Export(_softmax_export, _onnx_softmax))
defop("logSoftmaxRows", None, _row_shape,
      lambda i, g, out, x, emit: emit("sub", [g, emit("mul", [emit("exp", [out]), emit("rowTotal", [g])])]),
      row_wise=True, structure=rows(), fwd=_log_softmax_fwd, fast=FastPath("mlp: spiread, no rewrites", vjp=_log_softmax_vjp),
      export=Export(lambda w, x: f"_log_softmax_of({x}, {_exp_rows_shared(w, x)})", _onnx_log_softmax))


# ---------------------------------------------------------------- indexing
# Index parameters are fixed when the tape is recorded. `key` is a tuple of
# ints and slices (basic indexing); `rows`/`cols` are int arrays.


def _index_shape(s, key):
    return np.broadcast_to(np.empty((), np.bool_), s)[key].shape  # a view of one byte: sizes only


def _key_code(key: tuple) -> str:
    """A basic index as Python writes it: `1:3, ::2, 0`."""
    def one(k):
        if isinstance(k, slice):
            text = ":".join("" if v is None else str(v) for v in (k.start, k.stop, k.step))
            return text[:-1] if k.step is None else text
        return "..." if k is Ellipsis else str(k)
    return ", ".join(map(one, key)) if key else "()"


def key_positions(shape: tuple, key: tuple) -> np.ndarray:
    """The flat positions in a `shape` array of the entries `key` picks, in the shape it gives them."""
    return np.arange(math.prod(shape)).reshape(shape)[key]


def pair_positions(shape: tuple, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """The flat positions of (row, col) pairs in a `shape` matrix (negative ones count from the end)."""
    return np.ravel_multi_index((np.asarray(rows, np.intp), np.asarray(cols, np.intp)), shape, mode="wrap")


def _index_code(w, x: str, key: tuple) -> str:
    """x[key] as Python writes it; with a slice stepping backwards (which
    PyTorch refuses), a gather of the flat positions it picks."""
    if not any(isinstance(k, slice) and (k.step or 1) < 0 for k in key):
        return f"{x}[{_key_code(key)}]"
    positions = key_positions(w.shape(x), key)
    return (f"xp.reshape(xp.take(xp.reshape({x}, (-1,)), {w.literal(positions.reshape(-1), 'positions')}), "
            f"{positions.shape})")


def _onnx_pick(b, x, positions: np.ndarray):
    """The entries of x at flat positions, in the positions' shape."""
    return b("Gather", [b("Reshape", [x, b.ints([-1])]), b.const(positions)], axis=0)


def _onnx_scatter(b, x, positions: np.ndarray, shape: tuple, into=None):
    """A `shape` array of zeros (or `into`) with x's entries added at their flat positions."""
    flat = b("ScatterND", [b.zeros((math.prod(shape),)) if into is None else b("Reshape", [into, b.ints([-1])]),
                           b.const(positions.reshape(-1, 1)), b("Reshape", [x, b.ints([-1])])], reduction="add")
    return b("Reshape", [flat, b.ints(shape)])


def _picked(t: Diagonal, shape: tuple, key: tuple, picked: tuple) -> Diagonal:
    """A Diagonal batch over a value of `shape`, at the entries a basic `key`
    picks (each once): an entry picked moves to where the pick puts it, one
    not picked leaves its direction zero."""
    where = np.full(math.prod(shape), -1)
    where[key_positions(shape, key).reshape(-1)] = np.arange(math.prod(picked))
    return t.moved(lambda e: where[e], picked, True)


def _put_back(t: Diagonal, shape: tuple, key: tuple) -> Diagonal:
    """A Diagonal batch over the entries a basic `key` picks from a value of
    `shape`, put back where they were picked from (index's transpose)."""
    positions = key_positions(shape, key).reshape(-1)
    return t.moved(lambda e: positions[e], shape, True)


defop("index", lambda x, key: np.array(x[key]), _index_shape,
      lambda i, g, out, x, emit, key: emit("indexScatter", [g], key=key, shape=emit.shape(x)),
      methods=(), structure=SLICED,
      batched=lambda args, which, key: args[0][(slice(None),) + key],  # a view: the sweeps write into none
      diagonal=(lambda i, t, out, x, key: _picked(t, x.shape, key, out.shape),
                lambda i, g, out, x, key: _put_back(g, x.shape, key)),
      export=Export(lambda w, x, key: _index_code(w, x, key),
                    lambda b, x, key: _onnx_pick(b, x, key_positions(b.shape(x), key)), view=True),
      on_rows=lambda row_axes, ndims, row_params, key: _on_own_rows(row_axes, ndims, row_params)
      if key[:1] == (slice(None),) else None)


def _select(x, rows, cols):
    """vecxt selection: zeros except the chosen entries."""
    out = np.zeros_like(x)
    out[rows, cols] = x[rows, cols]
    return out


def _select_batched(args, which, rows, cols):
    t = args[0]
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
def _chosen(shape: tuple, rows, cols) -> np.ndarray:
    """The mask of the (row, col) pairs in a `shape` matrix."""
    chosen = np.zeros(shape, dtype=bool)
    chosen[rows, cols] = True
    return chosen


defop("select", _select, _pairs_shape,
      lambda i, g, out, x, emit, rows, cols: emit("select", [g], rows=rows, cols=cols),
      methods=(), structure=COPIES, batched=_select_batched,
      export=Export(lambda w, x, rows, cols: f"xp.where({w.literal(_chosen(w.shape(x), rows, cols), 'chosen')}, {x}, 0.0)",
                    lambda b, x, rows, cols: b("Where", [b.const(_chosen(b.shape(x), rows, cols)), x, b.const(0.0)])),
      on_rows=_picks_in_each_row)


def _scatter_pairs(shape: tuple, rows: np.ndarray, cols: np.ndarray, weights=None) -> np.ndarray:
    """A `shape` matrix of zeros with each weight (1 if none) added at its
    (row, col): an entry chosen twice gets both. np.add.at's result, by one
    bincount over flat positions, which is several times faster."""
    flat = np.ravel_multi_index((rows, cols), shape, mode="wrap")  # wrap: negative positions count from the end
    return np.bincount(flat, weights=weights, minlength=shape[0] * shape[1]).reshape(shape).astype(np.float64)


defop("arrange", lambda x, rows, cols: x[rows, cols], lambda s, rows, cols: _pairs_shape(s, rows, cols, (len(rows),)),
      lambda i, g, out, x, emit, rows, cols: emit("scatterPairs", [g], rows=rows, cols=cols, shape=emit.shape(x)),
      methods=(), structure=COPIES,
      batched=lambda args, which, rows, cols: args[0][:, rows, cols],
      export=Export(lambda w, x, rows, cols:
                    f"xp.take(xp.reshape({x}, (-1,)), {w.literal(pair_positions(w.shape(x), rows, cols), 'picks')})",
                    lambda b, x, rows, cols: _onnx_pick(b, x, pair_positions(b.shape(x), rows, cols))),
      on_rows=_picks_in_each_row)


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


# `[a, b]`, `Array(a, b)`, `Matrix.fromRows(r1, r2)` (axis 0) and
# `Matrix.fromColumns(c1, c2)` (axis 1).
defop("stack", lambda *xs, axis: np.stack(xs, axis=axis), _stack_shape,
      lambda i, g, out, *xs, emit, axis: emit("index", [g], key=(slice(None),) * axis + (i,)),
      methods=(), structure=COPIES,
      export=Export(lambda w, *xs, axis: f"xp.stack([{', '.join(xs)}], axis={axis})",
                    lambda b, *xs, axis: b("Concat", [b("Unsqueeze", [x, b.ints([axis])]) for x in xs], axis=axis)),
      on_rows=lambda row_axes, ndims, row_params, axis: 0 if axis == 1 and row_axes == [0] * len(row_axes) else None)


def _concat_shape(*shapes, axis):
    pieces = ", ".join("{%d} is {s%d}" % (i, i) for i in range(len(shapes)))
    if not shapes:
        raise ShapeError("there is nothing to join")
    rank = len(shapes[0])
    if rank == 0 or any(len(s) != rank for s in shapes):
        raise ShapeError(f"the pieces must be all vectors or all matrices: {pieces}")
    if axis >= rank:
        raise ShapeError(f"vectors are joined end to end (axis 0), not along axis {axis}: {pieces}")
    rest = shapes[0][:axis] + shapes[0][axis + 1:]
    if any(s[:axis] + s[axis + 1:] != rest for s in shapes):
        raise ShapeError(f"the pieces must have as many {'rows' if axis == 1 else 'columns'}: {pieces}")
    return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1:]


def _concat_derivative(i, g, out, *xs, emit, axis):
    """Operand i's part of g: the slice of the positions it was put at."""
    start = sum(emit.shape(x)[axis] for x in xs[:i])
    return emit("index", [g], key=(slice(None),) * axis + (slice(start, start + emit.shape(xs[i])[axis]),))


# `concat(a, b, axis=k)`, `hstack`, `vstack`: pieces of one rank end to end
# along an axis (numpy's concatenate; the interpreter promotes hstack's and
# vstack's pieces as numpy does).
defop("concat", lambda *xs, axis: np.concatenate(xs, axis=axis), _concat_shape, _concat_derivative,
      methods=(), structure=JOINED,
      export=Export(lambda w, *xs, axis: f"xp.concat([{', '.join(xs)}], axis={axis})",
                    lambda b, *xs, axis: b("Concat", list(xs), axis=axis)),
      on_rows=lambda row_axes, ndims, row_params, axis: 0 if axis == 1 and row_axes == [0] * len(row_axes) else None)


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
defop("gatherRows", lambda x, index: np.take(x, index, axis=0), _gather_shape,
      lambda i, g, out, x, emit, index: emit("scatterRows", [g], index=index, rows=emit.shape(x)[0]),
      methods=(), structure=COPIES, batched=lambda args, which, index: np.take(args[0], index, axis=1),
      export=Export(lambda w, x, index: f"xp.take({x}, {w.literal(np.asarray(index, np.intp), 'index')}, axis=0)",
                    lambda b, x, index: b("Gather", [x, b.const(np.asarray(index, np.intp))], axis=0)))


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


def _mean_log_softmax_pick_vjp(i, g, out, z, rows, cols, *, residual):
    """The statement in one pass over the residual, written into it; an
    infinite or nan g scales the finite gradient afterwards, as the statement
    does (folded into the pass, its picks would meet inf − inf)."""
    if math.isfinite(g):
        return _log_likelihood_grad(g, *residual, rows, cols, out=residual[0])
    return np.multiply(_log_likelihood_grad(1.0, *residual, rows, cols, out=residual[0]), g, out=residual[0])


def _mean_log_softmax_pick_derivative(i, g, out, z, emit, rows, cols):
    """g · (picks − counts · softmax(z)) / n, as the fast path computes it:
    −counts · (1 / n) · softmax(z) with count · (1 / n) added once at each
    picked position (`addPairs`: no dense array of them), times g last (an
    infinite g meets no inf − inf). Once a position: 1 / n added there c
    times rounds apart from the c · (1 / n) it cancels where the softmax is
    1 (a one-wide row), and an infinite g then gave ±inf where the fast path
    gives nan. The picks and counts[r], how often row r is picked, are fixed
    with the tape; softmax(z) is an op."""
    per_pick = 1.0 / max(len(rows), 1)  # no picks: the mean is nan, a constant; its gradient is 0
    counts = np.bincount(rows, minlength=emit.shape(z)[0]).astype(np.float64)[:, None]
    # A number where every row is picked as often (a batch: once), which scales a matrix in one pass.
    weights = counts[0, 0] * -per_pick if counts.size and (counts == counts[0, 0]).all() else counts * -per_pick
    spread = emit("mul", [emit.const(weights, "−counts / n"), emit("softmaxRows", [z])])
    if counts.max(initial=0) > 1:  # rows picked many times: each position once, with its count
        shape = emit.shape(z)
        times = np.bincount(pair_positions(shape, rows, cols), minlength=shape[0] * shape[1])
        rows, cols = np.divmod(np.flatnonzero(times), shape[1])
        added = times[times > 0] * per_pick
    else:
        added = np.full(len(rows), per_pick)
    picked = emit("addPairs", [spread, emit.const(added, "count / n")], rows=rows, cols=cols)
    return emit("mul", [g, picked])


def _picked_rows(e: Entries) -> tuple[np.ndarray, int]:
    """The row of each entry of z that is picked at least once, else -1."""
    group, count = np.arange(e.size(0)) // max(e.shapes[0][1], 1), e.shapes[0][0]
    picked = np.zeros(count, dtype=bool)
    picked[e.params["rows"]] = True
    return np.where(picked[group] if len(group) else group.astype(bool), group, -1), count


def _picked_rows_first(i: int, e: Entries) -> Links:
    """The mean depends on every entry of a picked row (its log-sum-exp)."""
    group, _ = _picked_rows(e)
    return Links.grouped((1, e.size(0)), [0], np.where(group >= 0, 0, -1), 1)


def _picked_rows_second(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
    """A log-sum-exp couples the entries of its row."""
    group, count = _picked_rows(e)
    return Links.grouped((e.size(0), e.size(0)), group, group, count) if adj.any() else None


# `softmaxRows(z)` (or `exp` → `normaliseRowsL1`) → pick (rows, cols) → `log`
# → `mean`, and `logSoftmaxRows(z)` → pick → `mean`: the mean log-likelihood
# (minus the cross-entropy), computed with log-sum-exp so it stays finite. Its
# fast vjp is one pass over the softmax's pieces the forward pass kept, in place.
defop("meanLogSoftmaxPick", None, lambda s, rows, cols: _pairs_shape(s, rows, cols, ()),
      _mean_log_softmax_pick_derivative, methods=(), fwd=_mean_log_softmax_pick_fwd,
      fast=FastPath("bigram, dense inputs", vjp=_mean_log_softmax_pick_vjp),
      export=Export(lambda w, z, rows, cols:
                    f"_mean_log_softmax_pick({z}, {w.literal(pair_positions(w.shape(z), rows, cols), 'picks')}, "
                    f"{_exp_rows_shared(w, z)})",
                    lambda b, z, rows, cols: b("Div", [
                        b("ReduceSum", [_onnx_pick(b, _onnx_log_softmax(b, z), pair_positions(b.shape(z), rows, cols))],
                          keepdims=0), b.const(float(len(rows)))])), structure=Structure("dense", _picked_rows_first, _picked_rows_second))


# ------------------------------------------------ the ops statements record
# Beyond the ones programs write: each is the transpose of another op (so its
# statement is that op), except `exclusiveProducts`, the partials of
# `product`, whose statement is itself over a larger matrix.


def _sum_to_batched(t: np.ndarray, shape: tuple) -> np.ndarray:
    """unbroadcast for a batched tangent (k, *s): the batch axis stays."""
    extra = t.ndim - 1 - len(shape)
    if extra > 0:  # np.add.reduce: ndarray.sum's own call, without its wrapper (the same bits)
        t = np.add.reduce(t, axis=tuple(range(1, 1 + extra)))
    for axis, size in enumerate(shape):
        if size == 1 and t.shape[axis + 1] != 1:
            t = np.add.reduce(t, axis=axis + 1, keepdims=True)
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
        shown = "×".join(map(str, shape)) or "a scalar"
        raise ShapeError(f"{{0}} is {{s0}}, {math.prod(s)} entries, which cannot be laid out as {shown} "
                         f"({math.prod(shape)} entries)")
    return tuple(shape)


def summed_axes(s: tuple, shape: tuple) -> tuple:
    """The axes of an `s` array that summing it to `shape` adds up: those
    broadcasting added in front, and those it stretched from 1."""
    lead = len(s) - len(shape)
    return tuple(range(lead)) + tuple(lead + a for a, n in enumerate(shape) if n == 1 and s[lead + a] != 1)


def _python_sum_to(x: str, s: tuple, shape: tuple) -> str:
    axes = summed_axes(s, shape)
    if not axes:
        return f"xp.reshape({x}, {shape})"
    total = f"xp.sum({x}, axis={axes[0] if len(axes) == 1 else axes})"
    kept = tuple(n for a, n in enumerate(s) if a not in axes)
    return total if kept == shape else f"xp.reshape({total}, {shape})"


def _onnx_sum_to(b, x, shape):
    axes = summed_axes(b.shape(x), tuple(shape))
    total = b("ReduceSum", [x, b.ints(axes)], keepdims=0) if axes else x
    return b("Reshape", [total, b.ints(shape)])


# unbroadcast and its transpose, broadcasting.
defop("sumTo", lambda x, shape: unbroadcast(x, shape), _sum_to_shape,
      lambda i, g, out, x, emit, shape: emit("broadcastTo", [g], shape=emit.shape(x)),
      methods=(), batched=lambda args, which, shape: _sum_to_batched(args[0], shape), keeps_nonfinite=(0,),
      diagonal=(lambda i, t, out, x, shape: _summed(t, x.shape, (1,) * (x.ndim - len(shape)) + tuple(shape), out.shape),
                None),
      export=Export(lambda w, x, shape: _python_sum_to(x, w.shape(x), tuple(shape)), _onnx_sum_to, view=True),
      structure=LINEAR_SUMS)
# Results of up to this many entries broadcast by a copy: np.broadcast_to's
# Python (an nditer) costs 2.5 µs a call, a copy of 50 entries 0.6.
COPIED_BROADCAST_ENTRIES = 1024


def _broadcast_to(x, shape):
    """np.broadcast_to's values: a small result copied, a larger one a read-only view."""
    if math.prod(shape) > COPIED_BROADCAST_ENTRIES:
        return broadcast_view(x, shape)
    out = np.empty(shape)
    np.copyto(out, x)
    return out


def broadcast_view(x, shape: tuple) -> np.ndarray:
    """np.broadcast_to(x, shape), the same read-only view (x's memory, 0 strides where it broadcasts),
    made by the array's constructor where x is a float64 array in C order: 0.5 µs, where np.broadcast_to's
    nditer and Python cost 2–3 µs a call (a batched tangent's, at every sweep's step)."""
    if type(x) is not ndarray or x.dtype != np.float64 or not x.flags.c_contiguous or x.ndim > len(shape) \
            or x.size == 0:
        return np.broadcast_to(x, shape)
    lead = len(shape) - x.ndim
    strides = [0] * lead
    for size, given, stride in zip(shape[lead:], x.shape, x.strides):
        if given != size and given != 1:
            return np.broadcast_to(x, shape)  # which says why not
        strides.append(0 if given == 1 else stride)
    view = ndarray(shape, np.float64, x, 0, tuple(strides))
    view.flags.writeable = False
    return view


defop("broadcastTo", _broadcast_to, _broadcast_to_shape,
      lambda i, g, out, x, emit, shape: sum_to_graph(emit, g, emit.shape(x)),
      methods=(), batched=lambda args, which, shape: broadcast_view(
          lift(args[0], len(shape)), args[0].shape[:1] + tuple(shape)),
      export=Export("xp.broadcast_to({0}, {shape})", lambda b, x, shape: b("Expand", [x, b.ints(shape)]), view=True),
      structure=COPIES)
# `X.reshape(r, c)`, `X.flatten` (row by row, as numpy's C order), and the
# statements' own reshapes.
defop("reshape", lambda x, shape: x.reshape(shape), _reshape_shape,  # the method: np.reshape's wrapper is 0.6 µs
      lambda i, g, out, x, emit, shape: emit("reshape", [g], shape=emit.shape(x)),
      methods=(), structure=COPIES,
      batched=lambda args, which, shape: args[0].reshape(args[0].shape[:1] + tuple(shape)),
      diagonal=(lambda i, t, out, x, shape: t.moved(lambda e: e, out.shape, True),
                lambda i, g, out, x, shape: g.moved(lambda e: e, x.shape, True)),
      export=Export("xp.reshape({0}, {shape})", lambda b, x, shape: b("Reshape", [x, b.ints(shape)], allowzero=1),
                    view=True))


def _row_total_shape(s, **_):
    if len(s) == 0:
        raise ShapeError("a row total needs a vector or matrix, but {0} is {s0}")
    return s[:-1] + (1,)


# The sum of each row, kept as a column: the row normalisations' statements use it.
defop("rowTotal", _row_total, _row_total_shape,
      lambda i, g, out, x, emit: emit("broadcastTo", [g], shape=emit.shape(x)),
      methods=(), structure=rows(second=None), batched=lambda args, which: _row_total(args[0]), keeps_nonfinite=(0,),
      diagonal=(lambda i, t, out, x: _summed(t, x.shape, out.shape, out.shape), None),
      export=Export("_row_total({0})", _onnx_row_total))


def _exclusive_derivative(i, g, out, x, emit, over):
    """∂(the product of the entries other than k)/∂x_j is the product of the
    entries other than k and j (0 at j = k): along each row, the exclusive
    products of n copies of the row, copy k with entry k set to 1, masked
    off the diagonal, summed against g — exclusiveProducts of a larger
    matrix, so the statement can itself be differentiated."""
    shape = emit.shape(x)
    r, n = (1, math.prod(shape)) if over == "all" else shape
    eye = np.eye(n)
    copies = emit("broadcastTo", [emit("reshape", [x], shape=(r, 1, n))], shape=(r, n, n))
    copies = emit("add", [emit("mul", [copies, emit.const(1.0 - eye, "1 − I")]), emit.const(eye, "I")])
    others = emit("exclusiveProducts", [emit("reshape", [copies], shape=(r * n, n))], over="rows")
    others = emit("mul", [emit("reshape", [others], shape=(r, n, n)), emit.const(1.0 - eye, "1 − I")])
    pulled = emit("sumTo", [emit("mul", [emit("reshape", [g], shape=(r, n, 1)), others])], shape=(r, 1, n))
    return emit("reshape", [pulled], shape=shape)


def _exclusive_shape(s, over):
    if over == "rows":
        require_matrix(s, "products along rows")
    return s


def _onnx_exclusive_products(b, x, over):
    """Along each row of n, the product of the row with entry k set to 1, for
    each k: an n × n product per row (ONNX has no cumulative product)."""
    shape = b.shape(x)
    r, n = (1, math.prod(shape)) if over == "all" else shape
    copies = b("Expand", [b("Reshape", [x, b.ints((r, 1, n))]), b.ints((r, n, n))])
    others = b("Where", [b.const(np.eye(n, dtype=bool)), b.const(1.0), copies])
    return b("Reshape", [b("ReduceProd", [others, b.ints([-1])], keepdims=0), b.ints(shape)])


def _exclusive_groups(e: Entries) -> tuple[np.ndarray, int]:
    if e.params["over"] == "all":
        return np.zeros(e.size(0), dtype=np.int64), 1
    return np.arange(e.size(0)) // max(e.shapes[0][1], 1), e.shapes[0][0]


def _exclusive_first(i: int, e: Entries) -> Links:
    """Entry k on the other entries of its group, not itself."""
    group, count = _exclusive_groups(e)
    return within_groups(e.size(0), group, count, diagonal=False)


def _exclusive_second(i: int, j: int, e: Entries, adj: np.ndarray) -> Links:
    """x[a] meets x[b] (a ≠ b) in the product of the entries other than k
    for each k other than a and b: where a group has an adjoint elsewhere."""
    group, count = _exclusive_groups(e)
    adj = adj.astype(np.int64)
    live = np.bincount(group, weights=adj, minlength=count)
    return within_groups(e.size(0), group, count, diagonal=False,
                         keep=lambda a, b: live[group[a]] - adj[a] - adj[b] > 0)


# `product`'s partials: each entry's product of the others (over "all"
# entries, or along each of the "rows"), without dividing, so zeros are exact.
defop("exclusiveProducts",
      lambda x, over: (_exclusive_products(x.ravel(), 0).reshape(x.shape) if over == "all"
                       else _exclusive_products(x, 1)),
      _exclusive_shape, _exclusive_derivative, methods=(),
      export=Export("_exclusive_products({0}, {over})", lambda b, x, over: _onnx_exclusive_products(b, x, over)), structure=Structure("dense", _exclusive_first, _exclusive_second))


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


def _index_scatter(x, key, shape, lead=()):
    """Zeros of `shape` (after `lead` axes) with the entries at `key` set to x."""
    out = np.zeros(lead + tuple(shape))
    out[(slice(None),) * len(lead) + key] = x
    return out


# index's transpose: zeros with the entries at `key` set.
defop("indexScatter", _index_scatter,
      lambda s, key, shape: _placed_shape(_key_shape(tuple(shape), key), s, shape),
      lambda i, g, out, x, emit, key, shape: emit("index", [g], key=key),
      methods=(), structure=SUMS,
      batched=lambda args, which, key, shape: _index_scatter(args[0], key, shape, args[0].shape[:1]),
      diagonal=(lambda i, t, out, x, key, shape: _put_back(t, tuple(shape), key),
                lambda i, g, out, x, key, shape: _picked(g, tuple(shape), key, x.shape)),
      export=Export(lambda w, x, key, shape: f"_scatter_flat({x}, {w.literal(key_positions(tuple(shape), key), 'placed')}, "
                                             f"{tuple(shape)})",
                    lambda b, x, key, shape: _onnx_scatter(b, x, key_positions(tuple(shape), key), tuple(shape))))


def _add_pairs(x, v, rows, cols):
    """x with each entry of v added at its (row, col), as x + scatterPairs(v)
    gives it (an entry chosen twice gets both), without a dense array of
    the pairs where no row is chosen twice (a likelihood's picks)."""
    out = np.array(x, dtype=np.float64, order="C")
    if np.bincount(np.asarray(rows, np.intp) % max(out.shape[0], 1), minlength=1).max(initial=0) <= 1:
        out.reshape(-1)[pair_positions(out.shape, rows, cols)] += v
    else:
        out += _scatter_pairs(out.shape, rows, cols, v)
    return out


def _add_pairs_shape(s, v, rows, cols):
    require_matrix(s, "adding at (row, col) entries")
    if v != (len(rows),):
        raise ShapeError(f"{{1}} is {{s1}}, but {len(rows)} (row, col) entries are added to")
    return s


def _add_pairs_batched(args, which, rows, cols):
    x, v = args
    shape = x.shape[1:] if which[0] else x.shape
    return x + (_scatter_pairs_batched([v], which, rows, cols, shape) if which[1] else _scatter_pairs(shape, rows, cols, v))


def _add_pairs_code(w, x: str, v: str, rows, cols, out: str | None = None) -> str:
    positions = pair_positions(w.shape(x), rows, cols)
    distinct = len(np.unique(positions)) == len(positions)
    return f"_add_flat({x}, {v}, {w.literal(positions, 'picks')}, {distinct}{'' if out is None else f', out={out}'})"


# x + scatterPairs(v) as one op: the mean log-likelihood's derivative adds
# at its picks by their positions (a dense array of them is 49 MB for the
# bigram's data).
defop("addPairs", _add_pairs, _add_pairs_shape,
      lambda i, g, out, x, v, emit, rows, cols: g if i == 0 else emit("arrange", [g], rows=rows, cols=cols),
      methods=(), arity=2, structure=SUMS, batched=_add_pairs_batched,
      export=Export(_add_pairs_code, lambda b, x, v, rows, cols: _onnx_scatter(
          b, v, pair_positions(b.shape(x), rows, cols), b.shape(x), into=x), update="out"))


def _scatter_pairs_batched(args, which, rows, cols, shape):
    t = args[0]
    result = np.zeros(t.shape[:1] + tuple(shape))
    np.add.at(result, (slice(None), rows, cols), t)
    return result


# arrange's transpose: each entry added at its (row, col).
defop("scatterPairs", lambda x, rows, cols, shape: _scatter_pairs(shape, rows, cols, x),
      lambda s, rows, cols, shape: _placed_shape((len(rows),), s, _pairs_shape(tuple(shape), rows, cols)),
      lambda i, g, out, x, emit, rows, cols, shape: emit("arrange", [g], rows=rows, cols=cols),
      methods=(), structure=SUMS, batched=_scatter_pairs_batched,
      export=Export(lambda w, x, rows, cols, shape: f"_scatter_flat({x}, "
                                                    f"{w.literal(pair_positions(tuple(shape), rows, cols), 'picks')}, "
                                                    f"{tuple(shape)})",
                    lambda b, x, rows, cols, shape: _onnx_scatter(b, x, pair_positions(tuple(shape), rows, cols),
                                                                  tuple(shape))))


def _scatter_rows_batched(args, which, index, rows):
    t = args[0]
    result = np.zeros((t.shape[0], rows) + t.shape[2:])
    np.add.at(result, (slice(None), index), t)
    return result


# gatherRows's transpose: each row added into the row `index` sends it to.
defop("scatterRows", lambda x, index, rows: _scatter_rows(x, index, rows),
      lambda s, index, rows: _placed_shape((len(index),) + s[1:], s, (rows,) + s[1:]),
      lambda i, g, out, x, emit, index, rows: emit("gatherRows", [g], index=index),
      methods=(), structure=SUMS, batched=_scatter_rows_batched,
      export=Export(lambda w, x, index, rows: f"_scatter_add({x}, {w.literal(np.asarray(index, np.intp), 'index')}, {rows})",
                    lambda b, x, index, rows: b("ScatterND", [b.zeros((rows,) + b.shape(x)[1:]),
                                                              b.const(np.asarray(index, np.intp).reshape(-1, 1)), x],
                                                reduction="add")))
