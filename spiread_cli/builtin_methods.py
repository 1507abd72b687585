"""Method sugar: methods that are other syntax for ops in the table
(`x.row(i)`, `.select`, `.map(f)`, `.reshape`, `A.trace`, …): each body,
and `METHOD_SUGAR`, the table of them with their signatures (builtins.py
declares them and checks every call)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from .builtin_functions import diag_of, diagonal_positions, shown
from .builtins import ANY, Builtin, Elaborator
from .diagnostics import SpireadError, shape_str
from .ops import OPS
from .tape_nodes import Node
from .values import Arg, Const, Function, Symbol, Text


# Each body takes (interpreter, receiver, args, attribute node, call node or None).

# `mapRowsToScalar(ReductionOps.Sum)`: the symbols it takes, and the op along each row each names
ROWS_TO_SCALAR = {"sum": "rowSum", "mean": "rowMean", "product": "rowProduct", "max": "rowMax", "min": "rowMin"}


def _map_rows(self: Elaborator, receiver: Arg, args: list[Arg], attr, call):
    if not isinstance(args[0].value, Symbol):
        *others, last = [f"`{r}`" for r in ROWS_TO_SCALAR]
        raise SpireadError(f"`.{attr.name}` takes a reduction: {', '.join(others)} or {last}",
                           args[0].expr.span,
                           ["e.g. `x.mapRowsToScalar(ReductionOps.Sum)`"])
    name = args[0].value.name
    return self.apply(OPS[ROWS_TO_SCALAR[name]], [receiver], {}, call.span, attr.at, f"mapRowsToScalar({name})")


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


def _called(function: str) -> str:
    """A function's text as the callee of a call: a lambda in parentheses."""
    return function if function.isidentifier() else f"({function})"


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
                           attr.at, [f"call the function on it instead: `{_called(self.text(args[0].expr))}"
                                     f"({self.text(receiver.expr)})`"])
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
    return diag_of(self, receiver, args[0] if args else None, (call or attr).span, attr.at)


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
    rows, cols = diagonal_positions(*shape, k)
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
