"""Random well-shaped `.ad` programs, for property tests.

`programs()` is a hypothesis strategy. Each example is a `Program`: the `.ad`
source text, the values of its inputs, and an expression tree per binding that
`Program.evaluate` runs with plain numpy or with `autograd.numpy`, so the same
program can be differentiated by an independent AD library::

    @given(programs())
    def test_something(program):
        run = spiread_cli.compile(program.source, "gen.ad").run()
        expected = program.autograd_gradients(["w0", "h1"])

A program binds inputs (`w0`, `w1`, … as literals, `Matrix.fromRows`,
`randn(…, seed=…)`, …), then intermediates (`h0`, `h1`, … which later
statements reuse, so the graph is a DAG, not a tree), then a scalar `loss`,
sometimes declared with `loss.backward(…)`. Shapes are chosen first and every
expression is generated to have its shape (broadcasting r×c with c, r×1, 1×c
and scalars; matmul of every rank pair; selections, row reductions, stacking).
Values are kept in the smooth interior of every op: denominators and
logarithms see values bounded away from 0, `exp`/`sinh`/`cosh` see bounded
arguments, so any disagreement is a real bug, not a rounding accident.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass, field, replace

import numpy as np
from hypothesis import strategies as st

from spiread_cli.ops import METHODS, OPS

# ------------------------------------------------------------------ the tree


@dataclass(frozen=True)
class Var:
    name: str


@dataclass(frozen=True)
class Num:
    value: float


@dataclass(frozen=True)
class Const:
    """An inline constant from a constructor function: `ones(2, 3)`, `eye(2)`…"""
    text: str
    value: np.ndarray = field(compare=False)


@dataclass(frozen=True)
class Bin:
    op: str            # an operator (+ - * / ** @@ @) or a method spelling (div pow matmul dot)
    left: object
    right: object


@dataclass(frozen=True)
class Neg:
    operand: object


@dataclass(frozen=True)
class Method:
    """`x.name` / `x.name()` / `x.name(t)` for a unary op, a number parameter `t`."""
    name: str
    receiver: object
    param: float | None = None
    parens: bool = False


@dataclass(frozen=True)
class Call:
    """`name(a, b, …)`: a function of the table (maximum, minimum, logaddexp, where)."""
    name: str
    args: tuple


@dataclass(frozen=True)
class RowReduce:
    op: str            # rowSum rowMean rowProduct rowMax rowMin
    spelling: str      # how the argument is written: `sum`, `ReductionOps.Sum`
    receiver: object


@dataclass(frozen=True)
class Index:
    receiver: object
    key: tuple         # ints and slices: x[i, j], v[i], x[1:, ::2]; or ("row", i) / ("col", j)


@dataclass(frozen=True)
class Select:
    form: str          # brackets, call, method, rowscols
    receiver: object
    rows: tuple
    cols: tuple


@dataclass(frozen=True)
class Arrange:
    form: str          # pairs, rowscols
    receiver: object
    rows: tuple
    cols: tuple


@dataclass(frozen=True)
class Stack:
    form: str          # list, Array, fromRows, fromColumns
    items: tuple


@dataclass(frozen=True)
class Reshape:
    receiver: object
    sizes: tuple | None  # `x.reshape(*sizes)` (one may be -1); None: `x.flatten`


@dataclass(frozen=True)
class Join:
    word: str          # hstack, vstack, concat
    items: tuple
    axis: int | None = None  # concat's `axis=` when written


@dataclass(frozen=True)
class Diagonal:
    word: str          # diag (the function), .diag, trace, triu, tril
    receiver: object
    k: int | None = None


@dataclass(frozen=True)
class Cumsum:
    word: str          # cumsum (all entries, flattened), rowCumsum
    receiver: object


@dataclass(frozen=True)
class Einsum:
    spec: str          # as written (explicit or implicit)
    items: tuple


# ---------------------------------------------------------------- rendering


def fmt(x: float) -> str:
    text = repr(float(x))
    return f"({text})" if text.startswith("-") else text


def _position(k) -> str:
    """An int, or a slice as numpy writes it (`1:`, `:-1`, `::2`, `:`)."""
    if not isinstance(k, slice):
        return str(k)
    text = f"{'' if k.start is None else k.start}:{'' if k.stop is None else k.stop}"
    return text if k.step is None else f"{text}:{k.step}"


def render(e) -> str:
    """The `.ad` text. Operators are fully parenthesised (precedence has its
    own tests); postfix chains attach directly."""
    match e:
        case Var(name):
            return name
        case Num(value):
            return fmt(value)
        case Const(text):
            return text
        case Bin(op, a, b) if op in METHODS:
            return f"{render(a)}.{op}({render(b)})"
        case Call(name, args):
            return f"{name}({', '.join(render(a) for a in args)})"
        case Bin(op, a, b):
            return f"({render(a)} {op} {render(b)})"
        case Neg(a):
            return f"(-{render(a)})"
        case Method(name, r, param, parens):
            args = f"({fmt(param)})" if param is not None else ("()" if parens else "")
            return f"{render(r)}.{name}{args}"
        case RowReduce(_, spelling, r):
            return f"{render(r)}.mapRowsToScalar({spelling})"
        case Index(r, ("row", i)) | Index(r, ("col", i)):
            return f"{render(r)}.{e.key[0]}({i})"
        case Index(r, key):
            return f"{render(r)}[{', '.join(map(_position, key))}]"
        case Select(form, r, rows, cols):
            pairs = ", ".join(f"({i}, {j})" for i, j in zip(rows, cols))
            if form == "brackets":
                return f"{render(r)}[{pairs}]"
            if form == "call":  # x(Array(...)) needs a name or parentheses before it
                target = render(r) if isinstance(r, Var) else f"({render(r)})"
                return f"{target}(Array({pairs}))"
            if form == "method":
                return f"{render(r)}.select({pairs})"
            return f"{render(r)}.select({list(rows)}, Array({', '.join(map(str, cols))}))"
        case Arrange(form, r, rows, cols):
            if form == "pairs":
                return f"{render(r)}.arrange({', '.join(f'({i}, {j})' for i, j in zip(rows, cols))})"
            return f"{render(r)}.arrange({list(rows)}, {list(cols)})"
        case Stack(form, items):
            inner = ", ".join(render(i) for i in items)
            return {"list": f"[{inner}]", "Array": f"Array({inner})",
                    "fromRows": f"Matrix.fromRows({inner})", "fromColumns": f"Matrix.fromColumns({inner})"}[form]
        case Reshape(r, None):
            return f"{render(r)}.flatten"
        case Reshape(r, sizes):
            return f"{render(r)}.reshape({', '.join(map(str, sizes))})"
        case Join(word, items, axis):
            # One piece is written in a list, as numpy would: a lone `[a]` would be read as the list of pieces.
            pieces = ', '.join(render(i) for i in items)
            return f"{word}({f'[{pieces}]' if len(items) == 1 else pieces}{'' if axis is None else f', axis={axis}'})"
        case Diagonal("diag", r, k):
            return f"diag({render(r)}{'' if k is None else f', {k}'})"
        case Diagonal(word, r, k):
            return f"{render(r)}.{word.lstrip('.')}{'' if k is None else f'({k})'}"
        case Cumsum(word, r):
            return f"{render(r)}.{word}"
        case Einsum(spec, items):
            return f'einsum("{spec}", {", ".join(render(i) for i in items)})'
    raise TypeError(e)


def _diagonal(xp, x, k):
    """x's k-th diagonal by a gather (autograd differentiates only the main
    diagonal of a square matrix, and no `ii` einsum)."""
    rows, cols = x.shape
    n = max(0, min(rows - max(-k, 0), cols - max(k, 0)))
    return x[np.arange(n) + max(-k, 0), np.arange(n) + max(k, 0)]


def _einsum(xp, spec, xs):
    """numpy's einsum, a repeated letter (`ii`) by a gather for autograd."""
    inputs = spec.split("->")[0].split(",")
    if any(len(set(s)) < len(s) for s in inputs):
        (x,) = xs
        diagonal = _diagonal(xp, x, 0)
        return xp.sum(diagonal) if spec.replace(" ", "") in ("ii->", "ii") else diagonal
    return xp.einsum(spec, *xs)


# --------------------------------------------------------------- evaluation


def _product(xp, x, axis):
    """Product by repeated multiplication: exact at zeros, and differentiable by
    autograd there (autograd's own prod divides by x)."""
    if axis is None:
        x = xp.reshape(x, (-1,))
        axis = 0
    parts = [x[..., i] if axis == 1 else x[i] for i in range(x.shape[axis])]
    return functools.reduce(operator.mul, parts, 1.0)


def _unary(xp, spelling, x, t):
    """The reference for a method `x.spelling` or `x.spelling(t)`, written
    here by op (the table only says which op a spelling names)."""
    if spelling == "tej":  # the interpreter's identity method, no op of the table
        return x
    row_total = functools.partial(xp.sum, axis=-1, keepdims=True)
    match name := METHODS[spelling].name:
        case "exp" | "log" | "sin" | "cos" | "tan" | "tanh" | "sinh" | "cosh" | "sqrt" | "abs" | "square" | "log1p":
            return getattr(xp, name)(x)
        case "asin" | "acos" | "atan" | "asinh" | "acosh" | "atanh":
            return getattr(xp, "arc" + name[1:])(x)
        case "softplus":
            return xp.logaddexp(0.0, x)
        case "logSigmoid":
            return -xp.logaddexp(0.0, -x)
        case _ if name in AXIS_REDUCTIONS:
            return _reduce(xp, name, x)
        case "sigmoid":
            return 1.0 / (1.0 + xp.exp(-x))
        case "relu":
            return xp.where(x > 0, x, 0.0)
        case "neg":
            return -x
        case "clampMin":
            return xp.where(x >= t, x, t)
        case "clampMax":
            return xp.where(x <= t, x, t)
        case "transpose":
            return xp.transpose(x)
        case "normaliseRowsL1":
            return x / row_total(xp.abs(x))
        case "normaliseRowsL2":
            return x / xp.sqrt(row_total(x * x))
        case "softmaxRows":
            e = xp.exp(x - xp.max(x, axis=-1, keepdims=True))
            return e / row_total(e)
        case "rowCumsum":
            return xp.cumsum(x, axis=-1)
        case "logSoftmaxRows":
            shifted = x - xp.max(x, axis=-1, keepdims=True)
            return shifted - xp.log(row_total(xp.exp(shifted)))
    raise ValueError(f"no reference for `.{spelling}`")


# Every reduction, by op: (word, axis). The references reduce by xp's own
# functions (autograd's max and min split ties evenly, as spiread and
# torch.amax do, but the generator keeps clear of ties anyway: finite
# differences see one side there).
AXIS_REDUCTIONS = {prefix + (word[0].upper() + word[1:] if prefix else word): (word, axis)
                   for word in ("sum", "mean", "product", "max", "min", "logSumExp")
                   for prefix, axis in (("", None), ("row", 1), ("col", 0))}


def _reduce(xp, name, x):
    word, axis = AXIS_REDUCTIONS[name]
    if word == "product":
        return _product(xp, x, axis) if axis != 0 else _product(xp, xp.transpose(x), 1)
    if word == "logSumExp":  # the generator keeps values within MAX_MAGNITUDE: no exp overflows
        return xp.log(xp.sum(xp.exp(x), axis=axis))
    return getattr(xp, word)(x, axis=axis)


# The operators that write binary ops; their method spellings are the table's.
OPERATORS = {"add": ("+",), "sub": ("-",), "mul": ("*",), "div": ("/",), "pow": ("**",), "matmul": ("@@", "@"),
             "remainder": ("%",)}
BINARY = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
          "pow": operator.pow, "remainder": operator.mod}
# Comparisons: 0/1 masks (the op `indicator`), no gradient.
COMPARISONS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq,
               "!=": operator.ne}
FUNCTIONS = ("maximum", "minimum", "logaddexp", "where")


def written(*names: str) -> list[str]:
    """Every way a program writes these ops: operators, then method spellings."""
    return [s for name in names for s in OPERATORS.get(name, ()) + OPS[name].methods]


def binary_op(spelling: str) -> str:
    return next(name for name in OPERATORS if spelling in written(name))


def evaluate(e, env: dict, xp=np):
    """The value of `e` with `xp` (numpy or autograd.numpy); names from `env`."""
    ev = functools.partial(evaluate, env=env, xp=xp)
    match e:
        case Var(name):
            return env[name]
        case Num(value):
            return value
        case Const(_, value):
            return value
        case Bin(op, a, b) if op in COMPARISONS:
            return xp.where(COMPARISONS[op](ev(a), ev(b)), 1.0, 0.0)
        case Bin(op, a, b) if binary_op(op) == "matmul":
            return xp.matmul(ev(a), ev(b))
        case Call("where", (c, a, b)):  # broadcast by adding zeros: autograd's where does not sum g back
            c, a, b = ev(c), ev(a), ev(b)
            zeros = np.zeros(np.broadcast_shapes(*(np.shape(v) for v in (c, a, b))))
            return xp.where(c + zeros != 0, a + zeros, b + zeros)
        case Call(name, args):
            return getattr(xp, name)(*[ev(a) for a in args])
        case Bin(op, a, b):
            return BINARY[binary_op(op)](ev(a), ev(b))
        case Neg(a):
            return -ev(a)
        case Method(name, r, param, _):
            return _unary(xp, name, ev(r), param)
        case RowReduce(op, _, r):
            x = ev(r)
            return _reduce(xp, op, x)
        case Index(r, ("row", i)):
            return ev(r)[i, :]
        case Index(r, ("col", j)):
            return ev(r)[:, j]
        case Index(r, key):
            return ev(r)[key]
        case Select(_, r, rows, cols):
            x = ev(r)
            mask = np.zeros(np.shape(x))
            mask[list(rows), list(cols)] = 1.0
            return x * mask
        case Arrange(_, r, rows, cols):
            return ev(r)[list(rows), list(cols)]
        case Stack(form, items):
            return xp.stack([ev(i) for i in items], axis=1 if form == "fromColumns" else 0)
        case Reshape(r, sizes):
            return xp.reshape(ev(r), (-1,) if sizes is None else sizes)
        case Join(word, items, axis):
            xs = [ev(i) for i in items]
            if word == "concat":
                return xp.concatenate(xs, axis=axis or 0)
            return (xp.hstack if word == "hstack" else xp.vstack)(xs)
        case Diagonal(word, r, k):
            x = ev(r)
            if word in ("diag", ".diag") and np.ndim(x) == 1:
                return xp.diag(x, k or 0)
            if word in ("diag", ".diag"):
                return _diagonal(xp, x, k or 0)
            if word == "trace":
                return xp.sum(_diagonal(xp, x, k or 0))
            return (xp.triu if word == "triu" else xp.tril)(x, k or 0)
        case Cumsum(word, r):
            return xp.cumsum(ev(r)) if word == "cumsum" else _unary(xp, word, ev(r), None)
        case Einsum(spec, items):
            return _einsum(xp, spec, [ev(i) for i in items])
    raise TypeError(e)


NODES = (Var, Num, Const, Bin, Call, Neg, Method, RowReduce, Index, Select, Arrange, Stack, Reshape, Join, Diagonal,
         Cumsum, Einsum)


def free_names(e) -> set[str]:
    """The bound names an expression reads."""
    if isinstance(e, Var):
        return {e.name}
    out = set()
    for value in vars(e).values():
        for item in (value if isinstance(value, tuple) else (value,)):
            if isinstance(item, NODES):
                out |= free_names(item)
    return out


# ------------------------------------------------------------------ programs


@dataclass
class Program:
    source: str
    bindings: list[tuple[str, object]]   # (name, expression), in the order bound
    inputs: dict[str, np.ndarray]        # the values of the input leaves
    output: str = "loss"
    backward_names: list[str] | None = None

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.bindings]

    def evaluate(self, xp=np, replace: dict | None = None) -> dict:
        """Every binding's value; names in `replace` take the given values."""
        replace = replace or {}
        env = {}
        for name, e in self.bindings:
            env[name] = replace[name] if name in replace else (
                self.inputs[name] if name in self.inputs else evaluate(e, env, xp))
        return env

    def depends_on(self, name: str) -> bool:
        """Does the output depend on the binding `name`, structurally?"""
        reach = {self.output}
        for bound, e in reversed(self.bindings):
            if bound in reach:
                reach |= free_names(e)
        return name in reach

    def default_wrt(self) -> list[str]:
        if self.backward_names:
            return list(self.backward_names)
        return [n for n in self.names if n in self.inputs and self.depends_on(n)]

    def autograd_gradients(self, wrt: list[str]) -> dict[str, np.ndarray]:
        """∂output/∂name for each name, each binding seen as a variable: an
        intermediate's gradient sums over every path from it to the output."""
        import autograd
        import autograd.numpy as anp

        values = self.evaluate()
        grads = {}
        for name in wrt:  # one at a time: replacing several would cut the paths between them
            def output(x, name=name):
                return self.evaluate(anp, {name: x})[self.output]
            grads[name] = np.asarray(autograd.grad(output)(np.asarray(values[name], dtype=float)), dtype=float)
        return grads


    def autograd_jacobian(self, wrt: list[str], output: str | None = None) -> dict[str, np.ndarray]:
        """∂output/∂name for each name by HIPS autograd's `jacobian` (shape
        shape(output) + shape(name)), `output` any binding (default the
        program's), each name seen as a variable as in `autograd_gradients`."""
        import autograd
        import autograd.numpy as anp

        output = output or self.output
        values = self.evaluate()
        blocks = {}
        for name in wrt:
            def of(x, name=name):
                return self.evaluate(anp, {name: x})[output]
            blocks[name] = np.asarray(autograd.jacobian(of)(np.asarray(values[name], dtype=float)), dtype=float)
        return blocks

    def outputs(self) -> list[str]:
        """The bindings that can be an output: those computed from an input."""
        return [name for name, e in self.bindings if name not in self.inputs and free_names(e)]

    def draw_jacobian(self, data) -> tuple[Program, list[str]]:
        """For a Jacobian test: the program with one of its `outputs()` (a
        scalar, vector or matrix) drawn as the output, and 1 to 3 inputs it
        depends on to differentiate by (none: the example is rejected)."""
        from hypothesis import assume
        output = data.draw(st.sampled_from(self.outputs()), label="output")
        program = replace(self, output=output, backward_names=None)
        names = [n for n in program.names if n in program.inputs and program.depends_on(n)]
        assume(names)
        return program, data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="wrt")


# --------------------------------------------------------------- generation

# Every op of the table (spiread_cli.ops.OPS) is generated, in the way
# written beside it, or is in NOT_GENERATED; method spellings come from the
# table. test_autograd.py checks that this covers the table, so a new op is
# a failing test until it is placed here.
UNARY_DOMAINS = {  # elementwise ops, by the arguments they are kept to
    "sin": "free", "cos": "free", "tanh": "free", "abs": "free", "square": "free", "sigmoid": "free",
    "relu": "free", "neg": "free", "atan": "free", "asinh": "free", "softplus": "free", "logSigmoid": "free",
    "asin": "unit", "acos": "unit", "atanh": "unit",           # within ±0.8
    "acosh": "above one",                                      # above 1 + POSITIVE
    "exp": "bounded", "sinh": "bounded", "cosh": "bounded",   # within ±BOUND_EXP
    "log": "positive", "sqrt": "positive", "log1p": "positive",  # above POSITIVE
    "tan": "tan",                                              # within ±1.2
}
ROW_NORMS = {"normaliseRowsL1": "rows not small", "normaliseRowsL2": "rows not small",
             "softmaxRows": "any rows", "logSoftmaxRows": "any rows"}
ROW_REDUCTIONS = {  # `x.mapRowsToScalar(arg)`: how the argument is written
    "rowSum": ["sum", "ReductionOps.Sum"], "rowMean": ["mean", "ReductionOps.Mean"],
    "rowProduct": ["product", "ReductionOps.Product"], "rowMax": ["max", "ReductionOps.Max"],
    "rowMin": ["min", "ReductionOps.Min"]}
OTHER_OPS = {  # op: the generator's `kind` that writes it
    "add": "binary", "sub": "binary", "mul": "binary", "div": "binary", "pow": "power", "matmul": "matmul",
    "clampMin": "clamp", "clampMax": "clamp", "transpose": "T", "sum": "reduce", "mean": "reduce",
    "product": "reduce", "index": "index, rowcol, slice", "select": "select, likelihood",
    "arrange": "arrange, likelihood, diagonal", "stack": "stack", "reshape": "reshape, cumsum", "concat": "join",
    "scatterPairs": "diagonal", "rowCumsum": "cumsum", "einsum": "einsum",
    "indicator": "compare, function", "max": "reduce", "min": "reduce", "logSumExp": "reduce", "remainder": "remainder",
    **{name: "function" for name in FUNCTIONS},
    **{name: "axisreduce" for name, (_, axis) in AXIS_REDUCTIONS.items() if axis is not None and name not in ROW_REDUCTIONS},
}
NOT_GENERATED = {  # op: why no program writes it
    "gatherRows": "fused by rewrite.py from `onehot(labels, n) @@ W`; it has no syntax of its own",
    "meanLogSoftmaxPick": "fused by rewrite.py from the log-likelihood pattern; it has no syntax of its own",
    **{name: "recorded by the derivative rules (Tape.backward_graph), for second derivatives; no syntax"
       for name in ("sumTo", "broadcastTo", "rowTotal", "sign", "isNan", "scale",
                    "exclusiveProducts", "indexScatter", "scatterRows", "addPairs")},
    "stopGradient": "`x.value`: its derivative is 0 by definition, which finite differences cannot check",
}
GENERATED = {**UNARY_DOMAINS, **ROW_NORMS, **ROW_REDUCTIONS, **OTHER_OPS}

UNARY = {domain: written(*(n for n, d in UNARY_DOMAINS.items() if d == domain))
         for domain in set(UNARY_DOMAINS.values())}
UNARY["free"] += ["tej"]  # the interpreter's identity method
UNARY_CHOICES = [(domain, s) for domain in sorted(UNARY) for s in UNARY[domain]] + [("-", "-")]
BINARY_SPELLINGS = written("add", "sub", "mul", "div")
POWER_SPELLINGS = written("pow")
MATMUL_SPELLINGS = written("matmul")
CLAMP_SPELLINGS = written("clampMin", "clampMax")
REDUCE_SPELLINGS = written("sum", "mean", "product", "max", "min", "logSumExp")
AXIS_SPELLINGS = written(*(name for name, (_, axis) in AXIS_REDUCTIONS.items() if axis is not None))
ROW_NORM_SPELLINGS = written(*ROW_NORMS)
TRANSPOSE_SPELLINGS = written("transpose")
# Every method spelling and operator the generator draws.
DRAWN = {*(s for spellings in UNARY.values() for s in spellings), *BINARY_SPELLINGS, *POWER_SPELLINGS, "rowCumsum",
         *MATMUL_SPELLINGS, *CLAMP_SPELLINGS, *REDUCE_SPELLINGS, *ROW_NORM_SPELLINGS, *TRANSPOSE_SPELLINGS,
         *AXIS_SPELLINGS, *written("remainder"), *COMPARISONS}
BOUND_EXP = 3.0
POSITIVE = 0.2
MAX_MAGNITUDE = 50.0
MAX_INPUTS = 5


class _Builder:
    """Draws one program; keeps the names bound so far and their values."""

    def __init__(self, draw, max_dim: int = 3):
        self.draw = draw
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.dims = [draw(st.integers(1, max_dim)) for _ in range(3)]
        self.bindings: list[tuple[str, object]] = []
        self.inputs: dict[str, np.ndarray] = {}
        self.lines: list[str] = []
        self.env: dict[str, np.ndarray] = {}
        self.used: set[str] = set()

    # -- values and safety

    def value(self, e):
        with np.errstate(all="ignore"):
            return np.asarray(evaluate(e, self.env), dtype=float)

    def magnitude(self, e) -> float:
        v = self.value(e)
        return float(np.max(np.abs(v))) if v.size else 0.0

    def bounded(self, e, limit):
        """`e`, or `e.tanh` (scaled) when its values can reach past `limit`."""
        if self.magnitude(e) <= limit:
            return e
        return Bin("*", Method("tanh", e), Num(limit / 2))

    def positive(self, e):
        """`e` when all its values exceed POSITIVE, else a positive expression of it."""
        v = self.value(e)
        if v.size == 0 or np.min(v) > POSITIVE:
            return e
        choice = self.draw(st.sampled_from(["square", "exp", "sigmoid", "abs"]))
        if choice == "square":
            return Bin("+", Method("square", e), Num(0.5))
        if choice == "exp":
            return Method("exp", self.bounded(e, BOUND_EXP))
        if choice == "sigmoid":
            return Bin("+", Method("sigmoid", e), Num(0.25))
        return Bin("+", Method("abs", e), Num(0.5))

    def away_from_zero(self, e):
        v = self.value(e)
        return e if v.size == 0 or np.min(np.abs(v)) > POSITIVE else self.positive(e)

    def rows_not_small(self, e):
        """Row norms bounded away from zero (for the row normalisations)."""
        v = self.value(e)
        norms = np.abs(np.atleast_2d(v)).sum(axis=-1) if v.size else np.ones(1)
        return e if np.min(norms) > 0.5 else self.positive(e)

    # -- leaves

    def new_input(self, shape) -> Var:
        name = f"w{len(self.inputs)}"
        form = self.draw(st.sampled_from(["literal", "literal", "array", "random"] if shape else ["literal"]))
        if form == "random":  # numpy.random.default_rng(seed), as LANGUAGE.md §7 promises
            seed = self.draw(st.integers(0, 1000))
            normal = self.draw(st.booleans())
            rng = np.random.default_rng(seed)
            value = rng.standard_normal(shape) if normal else rng.random(shape)
            text = f"{'randn' if normal else 'rand'}({', '.join(map(str, shape))}, seed={seed})"
        else:
            value = np.round(self.rng.normal(size=shape) * 1.5, self.draw(st.sampled_from([2, 17])))
            text = self.literal(value, array_form=form == "array")
        value = np.asarray(value, dtype=float)
        keyword = self.draw(st.sampled_from(["", "val "]))
        self.lines.append(f"{keyword}{name} = {text}")
        self.inputs[name] = value
        self.env[name] = value
        self.bindings.append((name, Var(name)))
        return Var(name)

    def literal(self, value, array_form: bool) -> str:
        if value.ndim == 0:
            return fmt(value)
        if value.ndim == 1:
            inner = ", ".join(fmt(x) for x in value)
            return f"Array({inner})" if array_form else f"[{inner}]"
        rows = [", ".join(fmt(x) for x in row) for row in value]
        if array_form:
            if self.draw(st.booleans()):
                return "Matrix.fromRows(" + ", ".join(f"Array({r})" for r in rows) + ")"
            cols = [", ".join(fmt(x) for x in col) for col in value.T]
            return "Matrix.fromColumns(" + ", ".join(f"Array({c})" for c in cols) + ")"
        return "[" + ",\n  ".join(f"[{r}]" for r in rows) + "]"

    def constant(self, shape):
        if shape == ():
            return Num(self.draw(st.sampled_from([0.5, -1.5, 2.0, 3.0, 0.25])))
        size = ", ".join(map(str, shape))
        options = [(f"ones({size})", np.ones(shape)),
                   (f"full({size}, 0.75)", np.full(shape, 0.75)),
                   (f"randn({size}, seed=3)", np.random.default_rng(3).standard_normal(shape))]
        if len(shape) == 1:
            options.append((f"arange({shape[0]})", np.arange(shape[0], dtype=float)))
        if len(shape) == 2 and shape[0] == shape[1]:
            options.append((f"eye({shape[0]})", np.eye(shape[0])))
        text, value = self.draw(st.sampled_from(options))
        return Const(text, value)

    def leaf(self, shape):
        existing = [Var(n) for n, _ in self.bindings if np.shape(self.env[n]) == shape]
        unused = [v for v in existing if v.name not in self.used]
        existing = unused or existing  # prefer what nothing reads yet: a denser graph
        choices = ["new"] * (2 * (len(self.inputs) < MAX_INPUTS)) + ["old"] * (3 * bool(existing)) + ["const"]
        kind = self.draw(st.sampled_from(choices))
        if kind == "old":
            var = self.draw(st.sampled_from(existing))
            self.used.add(var.name)
            return var
        if kind == "new":
            return self.new_input(shape)
        return self.constant(shape)

    # -- expressions

    def shape_choice(self):
        d = self.dims
        return self.draw(st.sampled_from([(), (d[0],), (d[1],), (d[0], d[1]), (d[1], d[2]), (d[0], d[2])]))

    def expr(self, shape, depth, composite=False):
        if depth <= 0 and not composite:
            return self.leaf(shape)
        kinds = ["leaf"] * (not composite) + ["unary"] * 3 + ["binary"] * 3 + ["power", "clamp", "matmul"]
        kinds += ["function", "remainder", "compare"]
        kinds += {0: ["reduce", "reduce", "index", "likelihood", "slice", "diagonal", "einsum"],
                  1: ["rowreduce", "rowreduce", "axisreduce", "rowcol", "arrange", "stack", "rownorm", "T", "slice",
                      "reshape", "join", "diagonal", "cumsum", "einsum"],
                  2: ["T", "select", "rownorm", "rownorm", "stack", "slice", "reshape", "join", "diagonal", "cumsum",
                      "einsum"]}[len(shape)]
        kind = self.draw(st.sampled_from(kinds))
        sub = functools.partial(self.expr, depth=depth - 1)
        d = self.dims
        if kind == "leaf":
            return self.leaf(shape)
        if kind == "unary":
            domain, name = self.draw(st.sampled_from(UNARY_CHOICES))
            x = sub(shape)
            if domain == "-":
                return Neg(x)
            if domain == "bounded":
                x = self.bounded(x, BOUND_EXP)
            elif domain == "positive":
                x = self.positive(x)
            elif domain == "tan":
                x = self.bounded(x, 1.2)
            elif domain == "unit":
                x = self.bounded(x, 0.8)
            elif domain == "above one":
                x = Bin("+", self.positive(x), Num(1.0))
            return Method(name, x, parens=self.draw(st.booleans()))
        if kind == "binary":
            a_shape, b_shape = self.broadcast_pair(shape)
            op = self.draw(st.sampled_from(BINARY_SPELLINGS))
            a, b = sub(a_shape), sub(b_shape)
            if binary_op(op) == "div":
                b = self.away_from_zero(b)
            if binary_op(op) == "mul":
                a, b = self.bounded(a, 10.0), self.bounded(b, 10.0)
            return Bin(op, a, b)
        if kind == "power":
            form = self.draw(st.sampled_from(["int", "real", "tensor"]))
            spelling = self.draw(st.sampled_from(POWER_SPELLINGS))
            if form == "int":
                return Bin(spelling, self.bounded(sub(shape), 5.0), Num(self.draw(st.sampled_from([2.0, 3.0]))))
            base = self.positive(self.bounded(sub(shape), 5.0))
            if form == "real":
                return Bin(spelling, base, Num(self.draw(st.sampled_from([0.5, -1.0, 1.5]))))
            _, e_shape = self.broadcast_pair(shape)
            return Bin(spelling, base, self.bounded(sub(e_shape), 2.0))
        if kind == "clamp":
            name = self.draw(st.sampled_from(CLAMP_SPELLINGS))
            return Method(name, sub(shape), param=self.draw(st.sampled_from([0.0, 0.5, -0.3])))
        if kind == "matmul":
            k = self.draw(st.sampled_from(d))
            if len(shape) == 0:
                a_shape, b_shape = (k,), (k,)                           # vector · vector
            elif len(shape) == 1:                                       # matrix · vector, vector · matrix
                a_shape, b_shape = self.draw(st.sampled_from([((shape[0], k), (k,)), ((k,), (k, shape[0]))]))
            else:
                a_shape, b_shape = (shape[0], k), (k, shape[1])         # matrix · matrix
            op = self.draw(st.sampled_from(MATMUL_SPELLINGS))
            if len(shape) == 2 and self.draw(st.booleans()):  # a constant one-hot @@ W: a row gather
                labels = [self.draw(st.integers(0, k - 1)) for _ in range(shape[0])]
                onehot = Const(f"onehot({labels}, {k})", np.eye(k)[labels])
                return Bin(op, onehot, self.bounded(sub(b_shape), 5.0))
            return Bin(op, self.bounded(sub(a_shape), 5.0), self.bounded(sub(b_shape), 5.0))
        if kind == "reduce":
            name = self.draw(st.sampled_from(REDUCE_SPELLINGS))
            x = self.reduced(sub(self.shape_choice()), METHODS[name].name)
            return Method(name, x, parens=self.draw(st.booleans()))
        if kind == "axisreduce":
            name = self.draw(st.sampled_from(AXIS_SPELLINGS))
            other = self.draw(st.sampled_from(d))
            x = sub((shape[0], other) if AXIS_REDUCTIONS[METHODS[name].name][1] == 1 else (other, shape[0]))
            return Method(name, self.reduced(x, METHODS[name].name))
        if kind == "compare":
            return self.comparison(shape, sub)
        if kind == "function":
            name = self.draw(st.sampled_from(FUNCTIONS))
            a_shape, b_shape = self.broadcast_pair(shape)
            a, b = sub(a_shape), sub(b_shape)
            if name == "where":
                return Call(name, (self.comparison(self.draw(st.sampled_from(self.broadcast_options(shape))), sub), a, b))
            return Call(name, (a, self.apart(a, b) if name in ("maximum", "minimum") else b))
        if kind == "remainder":
            b = self.away_from_zero(sub(self.draw(st.sampled_from(self.broadcast_options(shape)))))
            return Bin("%", self.off_jumps(self.bounded(sub(shape), 10.0), b), b)
        if kind == "likelihood":
            return self.log_likelihood(sub((self.draw(st.sampled_from(d)), self.draw(st.sampled_from(d)))))
        if kind == "index":
            x_shape = self.draw(st.sampled_from([(d[0],), (d[0], d[1])]))
            key = tuple(self.draw(st.integers(0, n - 1)) for n in x_shape)
            return Index(sub(x_shape), key)
        if kind == "slice":
            return self.sliced(shape, sub)
        if kind == "reshape":
            return self.reshaped(shape, sub)
        if kind == "join":
            return self.joined(shape, sub)
        if kind == "diagonal":
            return self.diagonal(shape, sub)
        if kind == "cumsum":
            if len(shape) == 2 or self.draw(st.booleans()):
                return Cumsum("rowCumsum", sub(shape))
            n = shape[0]
            return Cumsum("cumsum", sub(self.draw(st.sampled_from([(n,), (1, n), (n, 1)] + [(2, n // 2)] * (n % 2 == 0)))))
        if kind == "einsum":
            return self.einsum(shape, sub)
        if kind == "rowreduce":
            op = self.draw(st.sampled_from(sorted(ROW_REDUCTIONS)))
            x = self.reduced(sub((shape[0], self.draw(st.sampled_from(d)))), op)
            return RowReduce(op, self.draw(st.sampled_from(ROW_REDUCTIONS[op])), x)
        if kind == "rowcol":
            other = self.draw(st.sampled_from(d))
            if self.draw(st.booleans()):
                return Index(sub((other, shape[0])), ("row", self.draw(st.integers(0, other - 1))))
            return Index(sub((shape[0], other)), ("col", self.draw(st.integers(0, other - 1))))
        if kind == "arrange":
            x_shape = (self.draw(st.sampled_from(d)), self.draw(st.sampled_from(d)))
            rows, cols = self.positions(x_shape, shape[0])
            return Arrange(self.draw(st.sampled_from(["pairs", "rowscols"])), sub(x_shape), rows, cols)
        if kind == "select":
            rows, cols = self.positions(shape, self.draw(st.integers(1, 4)))
            form = self.draw(st.sampled_from(["brackets", "call", "method", "rowscols"]))
            return Select(form, sub(shape), rows, cols)
        if kind == "stack":
            if len(shape) == 1:
                return Stack(self.draw(st.sampled_from(["list", "Array"])),
                             tuple(sub(()) for _ in range(shape[0])))
            form = self.draw(st.sampled_from(["list", "fromRows", "fromColumns"]))
            if form == "fromColumns":
                return Stack(form, tuple(sub((shape[0],)) for _ in range(shape[1])))
            return Stack(form, tuple(sub((shape[1],)) for _ in range(shape[0])))
        if kind == "rownorm":
            name = self.draw(st.sampled_from(ROW_NORM_SPELLINGS))
            x = self.bounded(sub(shape), 10.0)
            return Method(name, self.rows_not_small(x) if ROW_NORMS[METHODS[name].name] == "rows not small" else x)
        if kind == "T":
            spelling = self.draw(st.sampled_from(TRANSPOSE_SPELLINGS))
            return Method(spelling, sub(shape[::-1]), parens=spelling != "T" and self.draw(st.booleans()))
        raise AssertionError(kind)

    def log_likelihood(self, logits):
        """The seed's pattern: probabilities by rows, pick entries (at least one
        per row, so no log of 0), row sums, log, mean; or the same through
        logSoftmaxRows and a gather."""
        logits = self.bounded(logits, 5.0)
        r, c = self.value(logits).shape
        rows = list(range(r)) + [self.draw(st.integers(0, r - 1)) for _ in range(self.draw(st.integers(0, 2)))]
        cols = [self.draw(st.integers(0, c - 1)) for _ in rows]
        form = self.draw(st.sampled_from(["exp", "softmax", "logsoftmax"]))
        if form == "logsoftmax":
            picked = Arrange(self.draw(st.sampled_from(["pairs", "rowscols"])), Method("logSoftmaxRows", logits),
                             tuple(rows), tuple(cols))
            return Method("mean", picked)
        probs = Method("normaliseRowsL1", Method("exp", logits)) if form == "exp" else Method("softmaxRows", logits)
        picked = Select(self.draw(st.sampled_from(["brackets", "call", "method", "rowscols"])), probs,
                        tuple(rows), tuple(cols))
        spelling = self.draw(st.sampled_from(ROW_REDUCTIONS["rowSum"]))
        return Method("mean", Method("log", RowReduce("rowSum", spelling, picked)))

    def sliced(self, shape, sub):
        """`x[…]` with numpy's slices (steps, negative steps, bounds counted
        from the end, bounds left out) and negative positions, giving `shape`:
        each axis of the result a slice of a longer axis, and sometimes a
        position taking an axis away."""
        key, x_shape = [], []
        for n in shape:
            step = self.draw(st.sampled_from([None, 1, 2, -1, -2]))
            extra = self.draw(st.integers(0, 2))
            stride = abs(step or 1)
            m = (n - 1) * stride + 1 + extra
            offset = self.draw(st.integers(0, extra))
            if (step or 1) > 0:
                start, stop = offset, offset + (n - 1) * stride + 1
                start = self.draw(st.sampled_from([start, start - m] + [None] * (start == 0)))
                stop = self.draw(st.sampled_from([stop] + [stop - m] * (stop < m) + [None] * (stop >= m)))
            else:
                first = m - 1 - offset
                last = first - (n - 1) * stride
                start = self.draw(st.sampled_from([first, first - m] + [None] * (first == m - 1)))
                stop = None if last - stride < 0 else self.draw(st.sampled_from([last - stride, last - stride - m]))
            key.append(slice(start, stop, step))
            x_shape.append(m)
        if len(shape) < 2 and self.draw(st.booleans()):  # a position takes an axis away: X[:, j], X[i, 1:], v[-1]
            m = self.draw(st.sampled_from(self.dims))
            axis = self.draw(st.integers(0, len(shape)))
            key.insert(axis, self.draw(st.integers(-m, m - 1)))
            x_shape.insert(axis, m)
        if not key:  # a scalar from a vector
            m = self.draw(st.sampled_from(self.dims))
            key, x_shape = [self.draw(st.integers(-m, m - 1))], [m]
        return Index(sub(tuple(x_shape)), tuple(key))

    def reshaped(self, shape, sub):
        """`x.reshape(…)` (a size sometimes -1) or `x.flatten`, from another
        shape with as many entries."""
        n = int(np.prod(shape))
        sources = [(n,), (n, 1), (1, n)] + [(a, n // a) for a in (2, 3) if n % a == 0 and a < n]
        if len(shape) == 2:
            sources.append(shape[::-1])
        x_shape = self.draw(st.sampled_from([s for s in sources if s != shape] or sources))
        if len(shape) == 1 and len(x_shape) == 2 and self.draw(st.booleans()):
            return Reshape(sub(x_shape), None)
        sizes = list(shape)
        if self.draw(st.booleans()):
            sizes[self.draw(st.integers(0, len(sizes) - 1))] = -1
        return Reshape(sub(x_shape), tuple(sizes))

    def joined(self, shape, sub):
        """hstack, vstack or concat of pieces whose sizes add up to `shape`'s
        along the axis joined; vstack's vectors and hstack's scalars promoted."""
        axis = 0 if len(shape) == 1 else self.draw(st.integers(0, 1))
        total = shape[axis]
        cuts = sorted(self.draw(st.lists(st.integers(1, total - 1), max_size=2, unique=True))) if total > 1 else []
        lengths = [b - a for a, b in zip([0] + cuts, cuts + [total])]
        if len(shape) == 1:
            word = self.draw(st.sampled_from(["hstack", "concat"]))
            items = tuple(sub(()) if n == 1 and word == "hstack" and self.draw(st.booleans()) else sub((n,))
                          for n in lengths)
            return Join(word, items, None if word == "hstack" or self.draw(st.booleans()) else 0)
        word = self.draw(st.sampled_from(["vstack" if axis == 0 else "hstack", "concat"]))
        pieces = []
        for n in lengths:
            piece = shape[:axis] + (n,) + shape[axis + 1:]
            if word == "vstack" and n == 1 and self.draw(st.booleans()):
                piece = (shape[1],)  # a vector is a row to vstack
            pieces.append(sub(piece))
        return Join(word, tuple(pieces), axis if word == "concat" and (axis or self.draw(st.booleans())) else None)

    def diagonal(self, shape, sub):
        """`diag(v, k)` (a square matrix), `A.diag(k)` / `diag(A)` (a vector),
        `A.trace(k)` (a scalar), `A.triu(k)` / `A.tril(k)` (a matrix)."""
        k = self.draw(st.sampled_from([None, 0, 1, -1]))
        if len(shape) == 0:
            return Diagonal("trace", sub((self.draw(st.sampled_from(self.dims)), self.draw(st.sampled_from(self.dims)))), k)
        if len(shape) == 1:
            n, k0, extra = shape[0], k or 0, self.draw(st.integers(0, 1))
            x_shape = self.draw(st.sampled_from([(n, n + k0 + extra), (n + extra, n + k0)] if k0 >= 0
                                                else [(n - k0, n + extra), (n - k0 + extra, n)]))
            return Diagonal(self.draw(st.sampled_from(["diag", ".diag"])), sub(x_shape), k)
        if shape[0] == shape[1] and shape[0] > abs(k or 0) and self.draw(st.booleans()):
            return Diagonal("diag", sub((shape[0] - abs(k or 0),)), k)
        return Diagonal(self.draw(st.sampled_from(["triu", "tril"])), sub(shape), k)

    def einsum(self, shape, sub):
        """numpy's einsum subscripts that give `shape`, explicit or implicit."""
        d = self.dims
        n, m = self.draw(st.sampled_from(d)), self.draw(st.sampled_from(d))
        if len(shape) == 0:
            options = [("ij,ij->", [(n, m), (n, m)]), ("ii->", [(n, n)]), ("ii", [(n, n)]), ("i,i", [(n,), (n,)]),
                       ("ij,ij", [(n, m), (n, m)])]
        elif len(shape) == 1:
            (r,) = shape
            options = [("ij,j->i", [(r, m), (m,)]), ("ij->j", [(n, r)]), ("ii->i", [(r, r)]),
                       ("ij,ij->i", [(r, m), (r, m)]), ("i,->i", [shape, ()]), ("ji,j", [(m, r), (m,)])]
        else:
            r, c = shape
            options = [("ik,kj->ij", [(r, m), (m, c)]), ("ij->ji", [(c, r)]), ("i,j->ij", [(r,), (c,)]),
                       ("ij,jk", [(r, m), (m, c)]), ("ji", [(c, r)]), ("ij,ij->ij", [shape, shape])]
        spec, shapes = self.draw(st.sampled_from(options))
        return Einsum(spec, tuple(self.bounded(sub(s), 5.0) for s in shapes))

    def reduced(self, x, op):
        """x kept where the reduction `op` is smooth: products of small
        numbers, max and min off ties."""
        word, axis = AXIS_REDUCTIONS[op]
        if word == "product":
            return self.bounded(x, 1.5)
        if word in ("max", "min"):
            for seed in range(10):
                v = np.sort(np.atleast_2d(self.value(x)) if axis is not None else np.ravel(self.value(x)).reshape(1, -1),
                            axis=axis if axis == 0 else -1)
                gaps = np.diff(v, axis=0 if axis == 0 else -1)
                if gaps.size == 0 or np.min(np.abs(gaps)) > 1e-3:
                    return x
                shape = np.shape(self.value(x))
                x = Bin("+", x, Const(f"randn({', '.join(map(str, shape))}, seed={seed})",
                                      np.random.default_rng(seed).standard_normal(shape)))
        return x

    def apart(self, a, b):
        """b, or b moved by a number, so that no entry of a and b are tied
        (maximum, minimum, comparisons: finite differences see one side at a tie)."""
        for shift in (0.0, 0.5, 0.75, 1.25, 2.5):
            moved = Bin("+", b, Num(shift)) if shift else b
            if np.min(np.abs(self.value(a) - self.value(moved)), initial=1.0) > 1e-3:
                return moved
        return moved

    def comparison(self, shape, sub):
        a_shape, b_shape = self.broadcast_pair(shape)
        a = sub(a_shape)
        return Bin(self.draw(st.sampled_from(sorted(COMPARISONS))), a, self.apart(a, sub(b_shape)))

    def off_jumps(self, a, b):
        """a, moved by half of b where a / b is near a whole number (where a % b jumps)."""
        va, vb = self.value(a), np.broadcast_to(self.value(b), np.shape(self.value(a)))
        q = va / vb
        near = np.abs(q - np.round(q)) < 1e-3
        if not near.any():
            return a
        offset = np.where(near, 0.5 * vb, 0.0)
        return Bin("+", a, Const(self.literal(offset, array_form=False), offset))

    def broadcast_options(self, shape):
        """The shapes that broadcast to `shape`: itself, r×c with c, r×1, 1×c, scalars."""
        options = [shape, shape, ()]
        if len(shape) == 2:
            options += [shape, (shape[1],), (shape[0], 1), (1, shape[1])]
        return options

    def broadcast_pair(self, shape):
        """Operand shapes that broadcast to `shape`: r×c with c, r×1, 1×c, scalars."""
        options = self.broadcast_options(shape)
        while True:
            a, b = self.draw(st.sampled_from(options)), self.draw(st.sampled_from(options))
            if np.broadcast_shapes(a, b) == shape:
                return (a, b) if self.draw(st.booleans()) else (b, a)

    def positions(self, shape, n):
        pairs = [(self.draw(st.integers(0, shape[0] - 1)), self.draw(st.integers(0, shape[1] - 1)))
                 for _ in range(n)]
        return tuple(p[0] for p in pairs), tuple(p[1] for p in pairs)

    # -- statements

    def bind(self, name, e) -> None:
        if isinstance(e, Method) and e.name == "tej":  # `h = w.tej` would alias `w`'s node
            e = Bin("*", e, Num(2.0))
        value = self.value(e)
        assert np.all(np.isfinite(value)), (render(e), value)
        self.bindings.append((name, e))
        self.env[name] = value
        self.lines.append(f"{name} = {render(e)}")

    def program(self) -> Program:
        for k in range(self.draw(st.integers(1, 4))):
            shape = self.shape_choice()
            self.bind(f"h{k}", self.bounded(self.expr(shape, self.draw(st.integers(1, 3)), composite=True),
                                            MAX_MAGNITUDE))
        loss = self.expr((), self.draw(st.integers(2, 4)), composite=True)
        # Most intermediates feed the loss; sometimes one is left over (a zero gradient).
        for name, e in self.bindings:
            if name.startswith("h") and name not in self.used and self.draw(st.integers(0, 3)):
                loss = Bin("+", loss, Method(self.draw(st.sampled_from(["sum", "mean"])), Var(name)))
        if not free_names(loss):
            last = Var(self.bindings[-1][0]) if self.bindings else self.new_input(self.shape_choice())
            loss = Bin("+", loss, Method("mean", last))
        self.bind("loss", self.bounded(loss, 1e6))
        backward = None
        if self.draw(st.integers(0, 3)) == 0:
            candidates = [n for n, _ in self.bindings[:-1]]
            backward = self.draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=3, unique=True))
            if self.draw(st.booleans()):
                self.lines.append(f"loss.backward({', '.join(backward)})")
            else:
                self.lines.append(f"loss.backward(({', '.join(f'{n} = {n}' for n in backward)}))")
        # Constant intermediates are inputs too: the interpreter folds them into leaves.
        for name, e in self.bindings:
            if name not in self.inputs and not free_names(e):
                self.inputs[name] = self.env[name]
        return Program("\n".join(self.lines) + "\n", self.bindings, self.inputs, "loss", backward)


@st.composite
def programs(draw, max_dim: int = 3) -> Program:
    """A random well-shaped program with a scalar output `loss`; every size is
    at most `max_dim` (tests/test_dask.py needs enough rows to chunk)."""
    return _Builder(draw, max_dim).program()
