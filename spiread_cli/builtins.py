"""Builtin functions (`zeros`, `load`, `onehot`, …) and method sugar (`row`,
`select`, `mapRowsToScalar`, …): what a program can call that is not an op
of the table itself.

Each entry declares its signature — how many positional arguments it takes
and which keywords — and `check_arguments`, the one routine that checks every
call (table ops' methods included), refuses a call that does not fit before
the body runs. Bodies turn their arguments into constants or into table ops
recorded through the interpreter's `apply`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .diagnostics import Span, SpireadError, did_you_mean, shape_str
from .limits import check_shape
from .formatting import format_array
from .ops import OPS, Op
from .tape_nodes import Node
from .values import Arg, Const, Function, Jet, JetDim, Record, Symbol, Text, TupleValue, Unit, jet_text



class Elaborator(Protocol):
    """What a builtin asks of the interpreter that calls it
    (`interpreter.Interpreter`, the layer above, is the one implementation)."""
    source: Any                        # diagnostics.Source: the program's text
    base_dir: Path                     # where relative file names resolve
    loader: Callable                   # reads a data file: (path, span) -> array
    printed: list[str]                 # `println` lines, in program order
    jet_dim: tuple[int, Span] | None   # from `given jd: JetDim = JetDim(n)`
    max_bytes: int

    def text(self, node) -> str: ...
    def tensor(self, arg: Arg) -> Any: ...
    def apply(self, op: Op, operands: list[Arg], params: dict, span: Span, at: Span, label: str) -> Any: ...
    def check_size(self, shape, span: Span, at: Span) -> None: ...
    def number(self, arg: Arg, what: str) -> float: ...
    def integer(self, arg: Arg, what: str) -> int: ...
    def integers(self, arg: Arg, what: str) -> np.ndarray: ...
    def selection(self, receiver: Arg, args: list[Arg], call, op_name: str) -> Any: ...
    def inline(self, function: Function, args: list[Arg], call, keywords: dict[str, Arg] | None = None) -> Any: ...
    def inline_tentatively(self, function: Function, args: list[Arg], call, keep: Callable) -> Any: ...
    def array_literal(self, items: list[Arg], node) -> Any: ...

ANY = range(0, 1 << 30)


@dataclass(frozen=True, slots=True)
class Builtin:
    """body(interpreter, positional args, keyword args, call) -> a value."""
    body: Callable
    counts: tuple[int, ...] | range      # how many positional arguments it takes
    keywords: tuple[str, ...] = ()
    # Takes its pieces one by one, `hstack(a, b)`, or as numpy does, in one
    # list or tuple, `hstack([a, b])`: the same call.
    pieces: bool = False


def check_arguments(what: str, counts: tuple[int, ...] | range, given: int, at: Span | None,
                    keywords: dict[str, Arg] | None = None, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a call whose arguments do not fit its signature. `what` is how
    the callee is written in messages: `` `zeros` ``, `` `.pow` ``."""
    extra = sorted(set(keywords) - set(allowed)) if keywords else ()
    if extra:
        raise SpireadError(f"{what} has no argument `{extra[0]}`", at, did_you_mean(extra[0], allowed))
    if given in counts:
        return
    if isinstance(counts, range):
        wanted, most = f"at least {counts.start}", counts.start
    else:
        wanted, most = " or ".join(str(c) for c in counts), max(counts)
    wanted = "no arguments" if counts == (0,) else f"{wanted} argument{'s' * (most != 1)}"
    raise SpireadError(f"{what} takes {wanted}, got {given}", at)


# ------------------------------------------------------------- functions
# Each body takes (interpreter, positional args, keyword args, call node).


def _sizes(self: Elaborator, args: list[Arg], name: str, call) -> tuple[int, ...]:
    sizes = tuple(self.integer(a, f"a size for `{name}`") for a in args)
    if any(s < 0 for s in sizes):
        raise SpireadError(f"`{name}`: sizes cannot be negative", call.span)
    return sizes


def _filled(name: str, maker: Callable) -> Callable:
    """zeros, ones: a constant of the given sizes."""
    def body(self: Elaborator, args, keywords, call):
        sizes = _sizes(self, args, name, call)
        self.check_size(sizes, call.span, call.at)
        return Const(maker(sizes))
    return body


def _full(self: Elaborator, args, keywords, call):
    sizes = _sizes(self, args[:-1], "full", call)
    self.check_size(sizes, call.span, call.at)
    return Const(np.full(sizes, self.number(args[-1], "the fill value of `full`")))


def _eye(self: Elaborator, args, keywords, call):
    (n,) = _sizes(self, args, "eye", call)
    self.check_size((n, n), call.span, call.at)
    return Const(np.eye(n))


def _arange(self: Elaborator, args, keywords, call):
    (n,) = _sizes(self, args, "arange", call)
    self.check_size((n,), call.span, call.at)
    return Const(np.arange(n, dtype=float))


def _random(name: str, kind: str) -> Callable:
    def body(self: Elaborator, args, keywords, call):
        sizes = _sizes(self, args, name, call)
        seed = self.integer(keywords["seed"], "the seed") if "seed" in keywords else 0
        if seed < 0:
            raise SpireadError(f"the seed must be 0 or more, but `{self.text(keywords['seed'].expr)}` is {seed}",
                               keywords["seed"].expr.span)
        self.check_size(sizes, call.span, call.at)
        rng = np.random.default_rng(seed)
        return Const(rng.standard_normal(sizes) if kind == "normal" else rng.random(sizes))
    return body


def _onehot(self: Elaborator, args, keywords, call):
    labels = self.integers(args[0], "the labels of `onehot`")
    n = self.integer(args[1], "the width of `onehot`")
    if n < 0:
        raise SpireadError(f"`onehot`: the width cannot be negative, but it is {n}", args[1].expr.span)
    if len(labels) and (labels.min() < 0 or labels.max() >= n):
        bad = labels[(labels < 0) | (labels >= n)][0]
        raise SpireadError(f"`onehot`: label {bad} is out of range for width {n}", args[0].expr.span)
    self.check_size((len(labels), n), call.span, call.at)
    out = np.zeros((len(labels), n))
    out[np.arange(len(labels)), labels] = 1.0
    return Const(out)


def _load(self: Elaborator, args, keywords, call):
    if not isinstance(args[0].value, Text) or not args[0].value.written:
        raise SpireadError("`load` takes a path in quotes, e.g. `load(\"x.csv\")`", call.span)
    if not args[0].value.value.strip():
        raise SpireadError("`load` names no file: the path is empty", args[0].expr.span,
                           ["e.g. `load(\"data.csv\")`, relative to the program's folder"])
    path = Path(args[0].value.value)
    return Const(self.loader(path if path.is_absolute() else self.base_dir / path, args[0].expr.span))


def _measure(what: str) -> Callable:
    def body(self: Elaborator, args, keywords, call):
        shape = self.tensor(args[0]).shape
        return Const(np.array(float({"rows": shape[0] if shape else 1,
                                     "cols": shape[1] if len(shape) == 2 else (shape[0] if shape else 1),
                                     "size": int(np.prod(shape))}[what])))
    return body


def _from(axis: int) -> Callable:
    """Matrix.fromRows (axis 0) and Matrix.fromColumns (axis 1): stack vectors."""
    def body(self: Elaborator, args, keywords, call):
        return self.apply(OPS["stack"], args, {"axis": axis}, call.span, call.at, self.text(call.callee))
    return body


def _join(word: str) -> Callable:
    """`hstack(a, b, …)`, `vstack(a, b, …)`, `concat(a, b, …, axis=0)`: the
    `concat` op, the pieces promoted as numpy's hstack (scalars to vectors;
    vectors end to end, matrices side by side) and vstack (scalars and
    vectors to rows) promote them."""
    def body(self: Elaborator, args, keywords, call):
        ranks = [len(self.tensor(a).shape) for a in args]
        label = self.text(call.callee)
        if word == "concat":
            axis = self.integer(keywords["axis"], "the axis of `concat`") if "axis" in keywords else 0
            if axis not in (0, 1):
                raise SpireadError(f"`concat`: the axis is 0 (rows after rows) or 1 (columns after columns), "
                                   f"not {axis}", keywords["axis"].expr.span)
            pieces = args
        elif word == "hstack":
            axis = 0 if all(r <= 1 for r in ranks) else 1
            pieces = [_promoted(self, a, (1,), call) if r == 0 else a for a, r in zip(args, ranks)]
        else:
            axis = 0
            pieces = [_promoted(self, a, (1, self.tensor(a).shape[0] if r else 1), call) if r < 2 else a
                      for a, r in zip(args, ranks)]
        return self.apply(OPS["concat"], pieces, {"axis": axis}, call.span, call.at, label)
    return body


def _promoted(self: Elaborator, arg: Arg, shape: tuple, call) -> Arg:
    """A piece reshaped as numpy's atleast_1d/atleast_2d reshape it, still
    quoted as written."""
    return Arg(self.apply(OPS["reshape"], [arg], {"shape": shape}, arg.expr.span, arg.expr.span, "reshape"), arg.expr)


def _split(self: Elaborator, args, keywords, call):
    """`split(x, k, axis=0)`: k equal pieces; `split(x, [i, j], axis=0)`: the
    pieces before i, from i to j and from j, as numpy's split. The pieces
    are slices (`index`), given back as a tuple: `parts = split(x, 2)`, then
    `parts[0]`."""
    x, where = args
    shape = self.tensor(x).shape
    axis = self.integer(keywords["axis"], "the axis of `split`") if "axis" in keywords else 0
    if not 0 <= axis < len(shape):
        at = keywords["axis"].expr.span if "axis" in keywords else call.span
        raise SpireadError(f"`split`: `{self.text(x.expr)}` is {shape_str(shape)}, which has no axis {axis}", at,
                           ["axis 0 splits a matrix's rows (a vector's entries), axis 1 its columns"])
    n = shape[axis]
    if len(self.tensor(where).shape) == 0:
        k = self.integer(where, "the number of pieces of `split`")
        if k < 1 or n % k:
            raise SpireadError(f"`split`: {n} {'rows' if axis == 0 and len(shape) == 2 else 'columns' if axis else 'entries'} "
                               f"do not split into {k} equal pieces", where.expr.span,
                               ["give the positions to cut at instead, e.g. `split(x, [2, 5])`"])
        cuts = list(range(n // k, n, n // k))
    else:
        # numpy's: a position counts from the end when negative and stops at either end.
        cuts = [min(max(int(c) + n if c < 0 else int(c), 0), n) for c in self.integers(where, "the positions `split` cuts at")]
    bounds = [0] + cuts + [n]
    pieces = []
    for start, stop in zip(bounds, bounds[1:]):
        key = (slice(None),) * axis + (slice(start, max(start, stop)),)
        piece = self.apply(OPS["index"], [x], {"key": key}, call.span, call.at, f"split [{start}:{stop}]")
        pieces.append(Arg(piece, call))
    return TupleValue(pieces)


def _diagonal(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the k-th diagonal of a rows × cols matrix (above the
    main one for k > 0), as numpy's diagonal takes them."""
    n = max(0, min(rows - max(-k, 0), cols - max(k, 0)))
    return np.arange(n) + max(-k, 0), np.arange(n) + max(k, 0)


def _diag_of(self: Elaborator, x: Arg, k_arg: Arg | None, span: Span, at: Span):
    """numpy's diag: a vector on the k-th diagonal of a square matrix of zeros
    (scatterPairs), or a matrix's k-th diagonal as a vector (arrange)."""
    shape = self.tensor(x).shape
    k = 0 if k_arg is None else self.integer(k_arg, "the diagonal of `diag`")
    if len(shape) == 1:
        n = shape[0] + abs(k)
        rows, cols = _diagonal(n, n, k)
        return self.apply(OPS["scatterPairs"], [x], {"rows": rows, "cols": cols, "shape": (n, n)}, span, at, "diag")
    if len(shape) == 2:
        rows, cols = _diagonal(*shape, k)
        return self.apply(OPS["arrange"], [x], {"rows": rows, "cols": cols}, span, at, "diag")
    raise SpireadError(f"`diag` needs a vector (to place on a diagonal) or a matrix (to take its diagonal), but "
                       f"`{self.text(x.expr)}` is a scalar", at)


def _diag(self: Elaborator, args, keywords, call):
    return _diag_of(self, args[0], args[1] if len(args) > 1 else None, call.span, call.at)


def _einsum(self: Elaborator, args, keywords, call):
    spec = args[0]
    if not isinstance(spec.value, Text) or not spec.value.written:
        raise SpireadError("`einsum` takes its subscripts first, in quotes", spec.expr.span,
                           ["e.g. `einsum(\"ij,jk->ik\", A, B)`"])
    explicit = einsum_subscripts(spec.value.value, len(args) - 1, spec.expr.span)
    return self.apply(OPS["einsum"], args[1:], {"spec": explicit}, call.span, call.at, f'einsum("{explicit}")')


def einsum_subscripts(written: str, operands: int, at: Span) -> str:
    """numpy's einsum subscripts, checked and made explicit: "ij,jk" is
    "ij,jk->ik" (the letters met once, in alphabetical order, as numpy)."""
    text = written.replace(" ", "")
    inputs, arrow, output = text.partition("->")
    example = ["e.g. `einsum(\"ij,jk->ik\", A, B)`: a letter per axis, `,` between operands, `->` before the result"]
    stray = next((c for c in inputs + output if not (c.isascii() and c.isalpha()) and c != ","), None)
    if "." in text:
        raise SpireadError("`...` is not needed: every value has at most 2 axes; name each one by a letter", at, example)
    if stray is not None or "," in output:
        raise SpireadError(f"`{stray or ','}` is not a subscript" + (" of the result" if stray is None else ""), at, example)
    subscripts = inputs.split(",")
    if len(subscripts) != operands:
        raise SpireadError(f"\"{written}\" has subscripts for {len(subscripts)} operand{'s' * (len(subscripts) != 1)}, "
                           f"but `einsum` is given {operands}", at, example)
    for letters in subscripts + [output]:
        if len(letters) > 2:
            raise SpireadError(f"\"{letters}\" names {len(letters)} axes, but a value has at most 2", at, example)
    if not arrow:
        output = "".join(sorted(c for c in set(inputs) - {","} if inputs.count(c) == 1))
    for c in output:
        if output.count(c) > 1:
            raise SpireadError(f"`{c}` is twice in the result: each of its axes has a letter of its own", at,
                               ["take a diagonal with `diag` after the einsum"])
        if c not in inputs:
            raise SpireadError(f"`{c}` is in the result but in no operand", at, example)
    return ",".join(subscripts) + "->" + output



def _op_function(op_name: str) -> Callable:
    """A function that is an op of the table, its arguments the operands:
    `maximum(a, b)`, `where(cond, a, b)`."""
    def body(self: Elaborator, args, keywords, call):
        return self.apply(OPS[op_name], args, {}, call.span, call.at, op_name)
    return body


def _array(self: Elaborator, args, keywords, call):
    return self.array_literal(args, call)


def shown(self: Elaborator, arg: Arg) -> str:
    """A value's text, as `eval` shows it (a Jet as spire does): what
    `println` writes and `.printMat` gives."""
    value = arg.value
    if isinstance(value, Text):
        return value.value
    if isinstance(value, Record):
        return "\n".join(f"{key}: {format_array(node.value)}" for key, node in value.fields.items())
    value = self.tensor(arg)
    return jet_text(value.value, value.tangents) if isinstance(value, Jet) else format_array(value.value)


def _println(self: Elaborator, args, keywords, call):
    self.printed.append(shown(self, args[0]))
    return Unit()


def _jet_dim(self: Elaborator, call) -> int:
    if self.jet_dim is None:
        raise SpireadError(f"`{self.text(call.callee)}` needs to know how many infinitesimal parts a Jet has",
                           call.span, ["give it first: `given jd: JetDim = JetDim(1)`"])
    return self.jet_dim[0]


def _jet(self: Elaborator, args, keywords, call):
    """`Jet(c)`: the number c, with no infinitesimal part."""
    n = _jet_dim(self, call)
    return Jet(np.array(self.number(args[0], "the real part of `Jet`")), np.zeros(n))


def _jet_h(self: Elaborator, args, keywords, call):
    """`Jet.h[Double](k)`: the k-th infinitesimal, h_k (real part 0)."""
    n = _jet_dim(self, call)
    k = self.integer(args[0], "the part of `Jet.h`")
    if not 0 <= k < n:
        raise SpireadError(f"`Jet.h`: part {k} is out of range for a JetDim of {n}", args[0].expr.span,
                           [f"parts count from 0 to {n - 1}"])
    parts = np.zeros(n)
    parts[k] = 1.0
    return Jet(np.array(0.0), parts)


def _make_jet_dim(self: Elaborator, args, keywords, call):
    n = self.integer(args[0], "the dimension of `JetDim`")
    if n < 1:
        raise SpireadError(f"`JetDim`: a Jet has at least 1 infinitesimal part, not {n}", args[0].expr.span)
    # Every Jet holds its n parts (jvp rules push them as one batch of tangents).
    check_shape((n,), lambda: f"the infinitesimal parts of a Jet of `{self.source.snippet(call.span)}`", call.span,
                self.max_bytes)
    return JetDim(n)


FUNCTIONS: dict[str, Builtin] = {
    "Array": Builtin(_array, ANY),
    "List": Builtin(_array, ANY),
    "println": Builtin(_println, (1,)),
    "Jet": Builtin(_jet, (1,)),
    "Jet.h": Builtin(_jet_h, (1,)),
    "JetDim": Builtin(_make_jet_dim, (1,)),
    "Matrix.fromRows": Builtin(_from(0), range(1, 1 << 30)),
    "Matrix.fromColumns": Builtin(_from(1), range(1, 1 << 30)),
    "zeros": Builtin(_filled("zeros", np.zeros), (1, 2)),
    "ones": Builtin(_filled("ones", np.ones), (1, 2)),
    "full": Builtin(_full, (2, 3)),
    "eye": Builtin(_eye, (1,)),
    "arange": Builtin(_arange, (1,)),
    "randn": Builtin(_random("randn", "normal"), (1, 2), ("seed",)),
    "rand": Builtin(_random("rand", "uniform"), (1, 2), ("seed",)),
    "onehot": Builtin(_onehot, (2,)),
    "load": Builtin(_load, (1,)),
    "hstack": Builtin(_join("hstack"), range(1, 1 << 30), pieces=True),
    "vstack": Builtin(_join("vstack"), range(1, 1 << 30), pieces=True),
    "concat": Builtin(_join("concat"), range(1, 1 << 30), ("axis",), pieces=True),
    "diag": Builtin(_diag, (1, 2)),
    "einsum": Builtin(_einsum, range(2, 1 << 30)),
    "split": Builtin(_split, (2,), ("axis",)),
    "rows": Builtin(_measure("rows"), (1,)),
    "cols": Builtin(_measure("cols"), (1,)),
    "size": Builtin(_measure("size"), (1,)),
    **{name: Builtin(_op_function(name), (OPS[name].arity,)) for name in ("maximum", "minimum", "logaddexp", "where")},
}


# What numpy, PyTorch and Scala call words that spiread spells otherwise:
# an unknown method or function with one of these names is pointed at
# spiread's words, rather than at whatever is spelled closest (`x.amax` was
# offered `max`, and `x.max`, before there was one, `map`). Keyed by the
# name as written, in lower case.
_EXTREMES = {word: (f"x.{word}", f"X.row{word.capitalize()}", f"X.col{word.capitalize()}", f"{word}imum(a, b)")
             for word in ("max", "min")}
OTHER_SPELLINGS: dict[str, tuple[str, ...]] = {
    **_EXTREMES, "amax": _EXTREMES["max"], "amin": _EXTREMES["min"], "fmax": _EXTREMES["max"][3:],
    "fmin": _EXTREMES["min"][3:],
    **{f"arc{f}": (f"x.a{f}",) for f in ("sin", "cos", "tan", "sinh", "cosh", "tanh")},
    "prod": ("x.product", "X.rowProduct", "X.colProduct"),
    "logsumexp": ("x.logSumExp", "X.rowLogSumExp", "X.colLogSumExp"),
    "softmax": ("X.softmaxRows",), "log_softmax": ("X.logSoftmaxRows",), "logsoftmax": ("X.logSoftmaxRows",),
    "log_sigmoid": ("x.logSigmoid",), "logsigmoid": ("x.logSigmoid",),
    "clip": ("x.clampMin(lo).clampMax(hi)",), "clamp": ("x.clampMin(lo).clampMax(hi)",),
    "mod": ("x % y",), "remainder": ("x % y",), "fmod": ("x % y",), "t": ("x.T",), "absolute": ("x.abs",),
    "negative": ("-x",), "greater": ("x > y",), "less": ("x < y",), "equal": ("x == y",), "not_equal": ("x != y",),
    "greater_equal": ("x >= y",), "less_equal": ("x <= y",), "nansum": ("x.sum",),
}


def other_spelling(name: str) -> tuple[str, ...]:
    """The note for a word spiread spells otherwise, or nothing."""
    words = [f"`{w}`" for w in OTHER_SPELLINGS.get(name.lower(), ())]
    if not words:
        return ()
    return (f"spiread writes it {', '.join(words[:-1])} or {words[-1]}" if len(words) > 1
            else f"spiread writes it {words[0]}",)


# --------------------------------------------------------- method sugar
# Methods that are other syntax for ops in the table. Each body takes
# (interpreter, receiver, args, attribute node, call node or None).

REDUCTIONS = {"sum": "rowSum", "mean": "rowMean", "product": "rowProduct", "max": "rowMax", "min": "rowMin"}


def _map_rows(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    if not isinstance(args[0].value, Symbol):
        *others, last = [f"`{r}`" for r in REDUCTIONS]
        raise SpireadError(f"`.{attr.name}` takes a reduction: {', '.join(others)} or {last}",
                           args[0].expr.span,
                           ["e.g. `x.mapRowsToScalar(ReductionOps.Sum)`"])
    name = args[0].value.name
    return self.apply(OPS[REDUCTIONS[name]], [receiver], {}, call.span, attr.at, f"mapRowsToScalar({name})")


def _row_or_col(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    x = self.tensor(receiver)
    if len(x.shape) != 2:
        raise SpireadError(f"`.{attr.name}` needs a matrix, but `{self.text(receiver.expr)}` is "
                           f"{shape_str(x.shape)}", attr.at)
    i = self.integer(args[0], f"the argument of `.{attr.name}`")
    key = (i, slice(None)) if attr.name == "row" else (slice(None), i)
    axis = 0 if attr.name == "row" else 1
    if not -x.shape[axis] <= i < x.shape[axis]:
        raise SpireadError(f"{attr.name} {i} is out of range for `{self.text(receiver.expr)}`, which is "
                           f"{shape_str(x.shape)}", call.span)
    return self.apply(OPS["index"], [receiver], {"key": key}, call.span, attr.at, f"{attr.name}({i})")


def _selection(op_name: str) -> Callable:
    def body(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
        if call is None:
            raise SpireadError(f"`.{attr.name}` needs (row, col) pairs", attr.at)
        return self.selection(receiver, args, call, op_name)
    return body


def _tej(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    return self.tensor(receiver)


def _stop_gradient(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    return self.apply(OPS["stopGradient"], [receiver], {}, (call or attr).span, attr.at, "value")


def _print_mat(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    return Text(shown(self, receiver), written=False)


def _map(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    """`v.map(f)`: f applied to each entry (each is a scalar), the results
    stacked back into v's shape: f inlined once on the whole of v when that
    gives the same (`_map_whole`), else once per entry. A generator, as
    `Interpreter.inline` is, whose expressions it passes on."""
    f = args[0].value
    if not isinstance(f, Function):
        raise SpireadError(f"`.map` takes a function, but `{self.text(args[0].expr)}` is not one", args[0].expr.span,
                           ["e.g. `v.map(sq)` after `def sq(x: Double) = x * x`, or `v.map(x => x * x)`"])
    shape = self.tensor(receiver).shape
    if not shape:
        raise SpireadError(f"`.map` needs a vector or a matrix, but `{self.text(receiver.expr)}` is a scalar",
                           attr.at, [f"call the function on it instead: `{self.text(args[0].expr)}(…)`"])
    whole = _map_whole(self, f, receiver, call)
    if whole is not None:
        return whole

    entries = []
    for key in np.ndindex(*shape):
        x = self.apply(OPS["index"], [receiver], {"key": key}, call.span, attr.at, f"[{', '.join(map(str, key))}]")
        y = Arg((yield from self.inline(f, [Arg(x, receiver.expr)], call)), call)
        if self.tensor(y).shape != ():
            raise SpireadError(f"`.map`: `{self.text(args[0].expr)}` must give a number for each entry, but it gives "
                               f"{shape_str(self.tensor(y).shape)}", call.span)
        entries.append(y)
    if not entries:
        return Const(np.zeros(shape))

    def stacked(items: list[Arg]) -> Arg:
        return Arg(self.apply(OPS["stack"], items, {"axis": 0}, call.span, attr.at, "map"), call)

    if len(shape) == 2:  # a matrix: each row stacked, then the rows
        entries = [stacked(entries[i:i + shape[1]]) for i in range(0, len(entries), shape[1])]
    return stacked(entries).value


def _map_whole(self: Elaborator, f: Function, receiver: Arg, call):
    """`v.map(f)` as f applied once to all of v, when that is what applying
    it entry by entry gives: every op f records on its argument acts on each
    entry alone (`Op.structure` "elementwise"), with nothing else of v's
    shape (a number from outside f is used alike by every entry). The tape
    then holds f's ops once, not once per entry, so the map costs what an op
    costs and runs by row chunks on `--backend dask` (entry by entry, each
    entry's gradient is an array as large as v: time grows with the square
    of the entries). Otherwise nothing of the trial stays, and None."""
    x = self.tensor(receiver)
    if not isinstance(x, Node):  # constants fold entry by entry, recording nothing
        return None
    return self.inline_tentatively(f, [receiver], call, lambda nodes, mark, y: _acts_entrywise(nodes, x, mark, y))


def _acts_entrywise(nodes: list[Node], x: Node, mark: int, y) -> bool:
    """Whether `y`, recorded from node `mark` on, is computed from x entry by
    entry (see _map_whole)."""
    if not isinstance(y, Node):
        return False
    from_x = {x.id}
    for node in nodes[mark:]:
        if not any(i in from_x for i in node.inputs):
            continue  # the same for every entry (`k * 2` of a `k` outside f)
        if node.op.structure.kind != "elementwise" or node.shape != x.shape:
            return False
        if any(i not in from_x and nodes[i].shape != () for i in node.inputs):
            return False
        from_x.add(node.id)
    return y.id in from_x and y.id != x.id


def _reshape(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    """`x.reshape(r, c)`, `x.reshape(n)` (one size may be -1: what the
    entries leave, as numpy), `x.flatten`: the entries row by row."""
    shape = self.tensor(receiver).shape
    entries = int(np.prod(shape))
    if attr.name == "flatten":
        sizes = (entries,)
    else:
        sizes = tuple(self.integer(a, "a size for `.reshape`") for a in args)
        if sizes.count(-1) > 1 or any(n < -1 for n in sizes):
            raise SpireadError("`.reshape`: sizes are whole numbers from 0 up, and at most one is -1 (what the "
                               "entries leave)", call.span)
        if -1 in sizes:
            known = int(np.prod([n for n in sizes if n != -1]))
            if known == 0 or entries % known:
                raise SpireadError(f"`.reshape`: `{self.text(receiver.expr)}` is {shape_str(shape)}, {entries} "
                                   f"entries, which do not fill rows of {known}", call.span)
            sizes = tuple(entries // known if n == -1 else n for n in sizes)
    span = (call or attr).span
    return self.apply(OPS["reshape"], [receiver], {"shape": sizes}, span, attr.at if call is None else attr.at.to(span),
                      attr.name)


def _diag_method(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    return _diag_of(self, receiver, args[0] if args else None, (call or attr).span, attr.at)


def _matrix_shape(self: Elaborator, receiver: Arg, attr) -> tuple[int, int]:
    shape = self.tensor(receiver).shape
    if len(shape) != 2:
        raise SpireadError(f"`.{attr.name}` needs a matrix, but `{self.text(receiver.expr)}` is {shape_str(shape)}",
                           attr.at)
    return shape


def _trace(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    """`A.trace`, `A.trace(k)`: the sum of A's (k-th) diagonal, as numpy's trace."""
    shape = _matrix_shape(self, receiver, attr)
    k = self.integer(args[0], "the diagonal of `.trace`") if args else 0
    rows, cols = _diagonal(*shape, k)
    span = (call or attr).span
    diagonal = self.apply(OPS["arrange"], [receiver], {"rows": rows, "cols": cols}, span, attr.at, "diag")
    return self.apply(OPS["sum"], [Arg(diagonal, call or attr)], {}, span, attr.at, "trace")


def _triangle(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    """`A.triu(k)`, `A.tril(k)`: A with zeros below (above) its k-th diagonal,
    as numpy: a selection of the entries kept, so the gradient passes to them
    alone."""
    r, c = _matrix_shape(self, receiver, attr)
    k = self.integer(args[0], f"the diagonal of `.{attr.name}`") if args else 0
    rows, cols = (np.triu_indices if attr.name == "triu" else np.tril_indices)(r, k, c)
    return self.apply(OPS["select"], [receiver], {"rows": rows, "cols": cols}, (call or attr).span, attr.at, attr.name)


def _cumsum(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    """`x.cumsum`: the running sums of all entries, row by row (numpy's
    cumsum without an axis); a matrix is flattened first."""
    shape = self.tensor(receiver).shape
    span = (call or attr).span
    if len(shape) == 2:
        flat = self.apply(OPS["reshape"], [receiver], {"shape": (shape[0] * shape[1],)}, span, attr.at, "flatten")
        receiver = Arg(flat, receiver.expr)
    return self.apply(OPS["rowCumsum"], [receiver], {}, span, attr.at, "cumsum")


METHOD_SUGAR: dict[str, Builtin] = {
    "mapRowsToScalar": Builtin(_map_rows, (1,)),
    "row": Builtin(_row_or_col, (1,)),
    "col": Builtin(_row_or_col, (1,)),
    "select": Builtin(_selection("select"), ANY),
    "arrange": Builtin(_selection("arrange"), ANY),
    "tej": Builtin(_tej, (0,)),   # spire's Jet conversion: a no-op on numbers
    "value": Builtin(_stop_gradient, (0,)),
    "printMat": Builtin(_print_mat, (0,)),
    "map": Builtin(_map, (1,)),
    "reshape": Builtin(_reshape, (1, 2)),
    "flatten": Builtin(_reshape, (0,)),
    "diag": Builtin(_diag_method, (0, 1)),
    "trace": Builtin(_trace, (0, 1)),
    "triu": Builtin(_triangle, (0, 1)),
    "tril": Builtin(_triangle, (0, 1)),
    "cumsum": Builtin(_cumsum, (0,)),
}
