"""Indexing: `x[i, j]`, numpy's slices, selections by (row, col) pairs,
a tuple's pieces, and array literals."""

from __future__ import annotations

import numpy as np

from . import syntax_tree as ast
from .diagnostics import SpireadError, in_calls, shape_str
from .ops import OPS
from .rules_printed import key_text
from .values import Arg, Const, Pairs, SliceValue, TupleValue, is_pieces


class Indexing:
    """How the interpreter indexes and selects: a part of
    `interpreter.Interpreter` (a mixin: `self` is the interpreter)."""

    def pairs(self, args: list[Arg], call) -> Pairs:
        """(row, col) pairs from `(i, j), …`, `Array((i, j), …)`, or `rows, cols`."""
        if len(args) == 1 and isinstance(args[0].value, Pairs):
            return args[0].value
        if args and all(isinstance(a.value, TupleValue) for a in args):
            return self.tuples_to_pairs(args)
        if len(args) == 2:
            rows = self.integers(args[0], "the row positions")
            cols = self.integers(args[1], "the column positions")
            if len(rows) != len(cols):
                raise SpireadError(f"the row positions `{self.text(args[0].expr)}` and the column positions "
                                   f"`{self.text(args[1].expr)}` differ in length: {len(rows)} and {len(cols)}",
                                   call.span, ["entry k is taken from row rows[k] and column cols[k]"])
            return Pairs(rows, cols)
        raise SpireadError("a selection takes (row, col) pairs, or a vector of rows and one of columns",
                           call.span, ["e.g. `x[(0, 0), (1, 1)]`, `x(Array((0, 0)))` or `x.select(rows, cols)`"])

    def tuples_to_pairs(self, tuples: list[Arg]) -> Pairs:
        rows, cols = [], []
        for t in tuples:
            if len(t.value.items) != 2:
                raise SpireadError(f"an index pair has two positions, `{self.text(t.expr)}` has "
                                   f"{len(t.value.items)}", t.expr.span)
            for item, what, positions in ((t.value.items[0], "a row position", rows),
                                          (t.value.items[1], "a column position", cols)):
                position = self.integer(item, what)
                if abs(position) > np.iinfo(np.intp).max:
                    raise SpireadError(f"{what} is out of range of any array: `{self.text(item.expr)}` is "
                                       f"{position:g}", item.expr.span)
                positions.append(position)
        return Pairs(np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp))

    def selection(self, receiver: Arg, args: list[Arg], call, op_name: str):
        if len(args) == 2 and all(self.tensor(a).shape == () for a in args) and len(self.tensor(receiver).shape) == 2:
            # vecxt's entry, `x(0, 1)`: said only that `0` was not a vector of rows
            x, i, j = (self.text(a.expr) for a in (receiver, *args))
            kept = f"`{x}[({i}, {j})]`, zeros elsewhere" if op_name == "select" else f"`{x}.arrange(({i}, {j}))`"
            # The spellings only where they would run: whole numbers within the matrix's shape.
            positions = [float(self.read(self.tensor(a))) for a in args]
            fits = all(v.is_integer() and -n <= v < n for v, n in zip(positions, self.tensor(receiver).shape))
            raise SpireadError(f"a selection takes (row, col) pairs, or a vector of rows and one of columns, but "
                               f"`{i}` and `{j}` are numbers", call.span,
                               [f"for the entry in row {i}, column {j}, write `{x}[{i}, {j}]`; as a selection, {kept}"]
                               if fits else [])
        pairs = self.pairs(args, call)
        shape = self.tensor(receiver).shape
        rows, cols = pairs.rows, pairs.cols
        if len(shape) == 2 and len(rows) and (rows.min() < -shape[0] or rows.max() >= shape[0]
                                              or cols.min() < -shape[1] or cols.max() >= shape[1]):
            outside = (rows < -shape[0]) | (rows >= shape[0]) | (cols < -shape[1]) | (cols >= shape[1])
            first = int(np.argmax(outside))
            r, c = int(rows[first]), int(cols[first])
            raise SpireadError(f"index ({r}, {c}) is out of range for `{self.text(receiver.expr)}`, "
                               f"which is {shape_str(shape)}", call.span,
                               [f"rows count from 0 to {shape[0] - 1}, columns from 0 to {shape[1] - 1}"])
        shown = " ".join(f"({r},{c})" for r, c in zip(rows[:4].tolist(), cols[:4].tolist()))
        label = f"{op_name} {shown}{' …' if len(rows) > 4 else ''}"
        return self.apply(OPS[op_name], [receiver], {"rows": rows, "cols": cols},
                          call.span, call.at, label)

    def subscript(self, receiver: Arg, args: list[Arg], node: ast.Subscript):
        """`x[i, j]`, `v[i]`, numpy's slices `x[a:b:k]`, `X[:, j]`, and
        selections `x[(i, j), …]`: basic indexing is the `index` op, whose
        gradient scatters into zeros (`indexScatter`)."""
        if args and all(isinstance(a.value, (TupleValue, Pairs)) for a in args):
            return self.selection(receiver, args, node, "select")
        if is_pieces(receiver.value):
            return self.piece(receiver, args, node)
        shape = self.tensor(receiver).shape
        hint = ["is a `,` missing between two rows? Without it, a `[...]` right after a list picks entries from it"] \
            if isinstance(receiver.expr, (ast.ListLit, ast.NumberArray)) else []
        if not shape:
            raise SpireadError(f"`{self.text(receiver.expr)}` is a scalar; it has no positions to index",
                               node.span, hint)
        if len(args) > len(shape):
            raise SpireadError(f"`{self.text(receiver.expr)}` is {shape_str(shape)}; it takes at most "
                               f"{len(shape)} position{'s' * (len(shape) != 1)}, got {len(args)}", node.span, hint)
        key = []
        for axis, a in enumerate(args):
            if isinstance(a.value, SliceValue):
                key.append(self.slice_of(a, shape, axis, receiver))
                continue
            k = self.integer(a, "a position")
            if not -shape[axis] <= k < shape[axis]:
                raise SpireadError(f"index {k} is out of range for `{self.text(receiver.expr)}`, which is "
                                   f"{shape_str(shape)}", node.span,
                                   hint or [f"positions count from 0, so the last of {shape[axis]} is {shape[axis] - 1}"])
            key.append(k)
        key = tuple(key)
        return self.apply(OPS["index"], [receiver], {"key": key}, node.span, node.at, f"[{key_text(key)}]")

    def piece(self, receiver: Arg, args: list[Arg], node: ast.Subscript):
        """`parts[i]`: one of the values a tuple holds (`split`'s pieces)."""
        items = receiver.value.items
        if len(args) != 1 or isinstance(args[0].value, SliceValue):
            raise SpireadError(f"`{self.text(receiver.expr)}` holds {len(items)} values: pick one by its position, "
                               f"e.g. `{self.text(receiver.expr)}[0]`", node.span)
        i = self.integer(args[0], "a position")
        if not -len(items) <= i < len(items):
            raise SpireadError(f"index {i} is out of range for `{self.text(receiver.expr)}`, which holds "
                               f"{len(items)} values", node.span,
                               [f"positions count from 0, so the last is {len(items) - 1}"])
        return items[i].value

    def slice_of(self, arg: Arg, shape: tuple, axis: int, receiver: Arg) -> slice:
        """numpy's slice from `a:b:k`: its parts whole numbers and its step
        not 0, else an error. A bound past either end is clipped, as numpy
        and PyTorch clip it, with a warning there: it often hides a wrong count."""
        part = arg.value
        step = 1 if part.step is None else self.integer(part.step, "a slice's step")
        if step == 0:
            raise SpireadError("a slice's step cannot be 0", part.step.expr.span,
                               ["`::2` takes every other entry, `::-1` reverses"])
        n = shape[axis]
        bounds = []
        for bound in (part.start, part.stop):
            k = None if bound is None else self.integer(bound, "a slice's bound")
            if k is not None and not -n <= k <= n:
                where = f"row{'s' * (n != 1)}" if len(shape) == 2 and axis == 0 else (
                    f"column{'s' * (n != 1)}" if len(shape) == 2 else f"entr{'ies' if n != 1 else 'y'}")
                self.diagnostics.warn(f"the slice bound {k} is past the {'end' if k > 0 else 'start'} of "
                                      f"`{self.text(receiver.expr)}`, which is {shape_str(shape)}; it is taken as "
                                      f"{n if k > 0 else -n}, as numpy does", in_calls(bound.expr.span, self.inside),
                                      [f"`{self.text(receiver.expr)}` has {n} {where}: a bound runs from {-n} to {n}"])
            bounds.append(k)
        return slice(bounds[0], bounds[1], None if part.step is None else step)

    def array_literal(self, items: list[Arg], node):
        """`[1, 2]`, `[[1, 2], [3, 4]]`, `Array(1, 2)`: stack the items (a
        differentiable op when an item depends on an input)."""
        if not items:
            return Const(np.zeros(0))
        if all(isinstance(a.value, TupleValue) for a in items):
            return self.tuples_to_pairs(items)
        return self.apply(OPS["stack"], items, {"axis": 0}, node.span, node.at, "stack")
