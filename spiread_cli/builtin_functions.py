"""Builtin functions (`zeros`, `load`, `onehot`, `hstack`, `einsum`, `Jet`,
…): each body, and `FUNCTIONS`, the table of them with their signatures
(builtins.py declares them and checks every call)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from .builtins import ANY, Builtin, Elaborator
from .diagnostics import Span, SpireadError, shape_str
from .formatting import format_array
from .limits import check_shape
from .ops import OPS
from .values import Arg, Const, Jet, JetDim, Made, Record, Text, TupleValue, Unit, jet_text


# Each body takes (interpreter, positional args, keyword args, call node).


def _sizes(self: Elaborator, args: list[Arg], name: str, call) -> tuple[int, ...]:
    sizes = tuple(self.integer(a, f"a size for `{name}`") for a in args)
    if any(s < 0 for s in sizes):
        raise SpireadError(f"`{name}`: sizes cannot be negative", call.span)
    return sizes


def _literal(arg: Arg) -> bool:
    """Whether an argument is made of the program's literals alone (`Const.fixed`), not of data."""
    value = arg.value
    return (isinstance(value, Const) and value.fixed) or (
        isinstance(value, TupleValue) and all(_literal(item) for item in value.items))


def _filled(name: str, maker: Callable) -> Callable:
    """zeros, ones: a constant of the given sizes."""
    def body(self: Elaborator, args, keywords, call):
        sizes = _sizes(self, args, name, call)
        self.check_size(sizes, call.span, call.at)
        return Const(maker(sizes), fixed=True, made=self.made("rows"))  # its entries whatever the sizes
    return body


def _full(self: Elaborator, args, keywords, call):
    sizes = _sizes(self, args[:-1], "full", call)
    self.check_size(sizes, call.span, call.at)
    self.refuse_row_count(args[-1], "the fill value")
    return Const(np.full(sizes, self.number(args[-1], "the fill value of `full`")), fixed=_literal(args[-1]),
                 made=self.made("rows"))


def _eye(self: Elaborator, args, keywords, call):
    (n,) = _sizes(self, args, "eye", call)
    self.check_size((n, n), call.span, call.at)
    return Const(np.eye(n), fixed=True, made=self.made("rows"))


def _arange(self: Elaborator, args, keywords, call):
    (n,) = _sizes(self, args, "arange", call)
    self.check_size((n,), call.span, call.at)
    return Const(np.arange(n, dtype=float), fixed=True, made=self.made("arange"))


def _random(name: str, kind: str) -> Callable:
    def body(self: Elaborator, args, keywords, call):
        sizes = _sizes(self, args, name, call)
        if "seed" in keywords:
            self.refuse_row_count(keywords["seed"], "the seed")
        seed = self.integer(keywords["seed"], "the seed") if "seed" in keywords else 0
        if seed < 0:
            raise SpireadError(f"the seed must be 0 or more, but `{self.text(keywords['seed'].expr)}` is {seed}",
                               keywords["seed"].expr.span)
        self.check_size(sizes, call.span, call.at)
        return Const(_drawing(kind, seed)(sizes), fixed=True, made=self.made(kind, seed))
    return body


def _drawing(kind: str, seed: int) -> Callable:
    """`randn`'s (kind "normal") or `rand`'s ("uniform") draws: a function of the sizes."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal if kind == "normal" else rng.random


DRAW_BLOCK = 1 << 20  # the draws a chunk skips at a time (rows_of_made)


def rows_of_made(made: Made, shape: tuple[int, ...], axis: int, start: int, stop: int, total: int) -> np.ndarray:
    """Rows [start, stop) along `axis` of the positions or draws `made`
    makes where that axis holds all `total` data rows (`shape`: a chunk's):
    a chunk's part of the whole program's value. A draw along the first
    axis skips the draws before the chunk's in blocks, never drawing whole."""
    if made.kind == "arange":
        return np.arange(start, stop, dtype=float)
    draw = _drawing(made.kind, made.seed)
    if axis:
        whole = draw(shape[:axis] + (total,) + shape[axis + 1:])
        return whole[(slice(None),) * axis + (slice(start, stop),)]
    skip = start * math.prod(shape[1:])
    while skip:
        skip -= draw(min(skip, DRAW_BLOCK)).size
    return draw((stop - start, *shape[1:]))


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
    made = self.made("derived" if self.made_of_positions(args[0]) else "rows")  # labels made from positions: derived
    return Const(out, fixed=_literal(args[0]), made=made)


def _load(self: Elaborator, args, keywords, call):
    if not isinstance(args[0].value, Text) or not args[0].value.written:
        raise SpireadError("`load` takes a path in quotes, e.g. `load(\"x.csv\")`", call.span)
    if not args[0].value.value.strip():
        raise SpireadError("`load` names no file: the path is empty", args[0].expr.span,
                           ["e.g. `load(\"data.csv\")`, relative to the program's folder"])
    path = Path(args[0].value.value)
    array = self.loader(path if path.is_absolute() else self.base_dir / path, args[0].expr.span)
    return Const(array, made=self.made("rows", read=array))


def _measure(what: str) -> Callable:
    def body(self: Elaborator, args, keywords, call):
        shape = self.tensor(args[0]).shape
        return Const(np.array(float({"rows": shape[0] if shape else 1,
                                     "cols": shape[1] if len(shape) == 2 else (shape[0] if shape else 1),
                                     "size": int(np.prod(shape))}[what])),
                     made=self.made("rows") if what == "rows" else None)  # the total N in every chunk
    return body


def _from(axis: int) -> Callable:
    """Matrix.fromRows (axis 0) and Matrix.fromColumns (axis 1): stack
    vectors into a matrix (the `stack` op of `[a, b]`, which makes a vector
    of scalars: Matrix.fromRows(1, 2) is refused, as fromColumns is)."""
    def body(self: Elaborator, args, keywords, call):
        if axis == 0 and (scalar := next((a for a in args if not self.tensor(a).shape), None)) is not None:
            raise SpireadError(f"`{self.text(call)}`: rows are vectors, but `{self.text(scalar.expr)}` is a scalar",
                               call.at, ["a vector is `[a, b]`; a matrix of one column, `Matrix.fromColumns([a, b])`"])
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


def diagonal_positions(rows: int, cols: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the k-th diagonal of a rows × cols matrix (above the
    main one for k > 0), as numpy's diagonal takes them."""
    n = max(0, min(rows - max(-k, 0), cols - max(k, 0)))
    return np.arange(n) + max(-k, 0), np.arange(n) + max(k, 0)


def diag_of(self: Elaborator, x: Arg, k_arg: Arg | None, span: Span, at: Span):
    """numpy's diag: a vector on the k-th diagonal of a square matrix of zeros
    (scatterPairs), or a matrix's k-th diagonal as a vector (arrange)."""
    shape = self.tensor(x).shape
    k = 0 if k_arg is None else self.integer(k_arg, "the diagonal of `diag`")
    if len(shape) == 1:
        n = shape[0] + abs(k)
        rows, cols = diagonal_positions(n, n, k)
        return self.apply(OPS["scatterPairs"], [x], {"rows": rows, "cols": cols, "shape": (n, n)}, span, at, "diag")
    if len(shape) == 2:
        rows, cols = diagonal_positions(*shape, k)
        return self.apply(OPS["arrange"], [x], {"rows": rows, "cols": cols}, span, at, "diag")
    raise SpireadError(f"`diag` needs a vector (to place on a diagonal) or a matrix (to take its diagonal), but "
                       f"`{self.text(x.expr)}` is a scalar", at)


def _diag(self: Elaborator, args, keywords, call):
    return diag_of(self, args[0], args[1] if len(args) > 1 else None, call.span, call.at)


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
        return "\n".join(f"{key}: {format_array(self.read(node))}" for key, node in value.fields.items())
    value = self.tensor(arg)
    return jet_text(value.value, value.tangents) if isinstance(value, Jet) else format_array(self.read(value))


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
