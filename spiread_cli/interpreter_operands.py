"""Operands: an argument as an array (or a message saying what it is
instead), as a number or positions; and `apply`, where every operation is
checked by its shape rule and the size limit, then folded when all its
operands are constants, pushed through a Jet's parts, or recorded on the
tape."""

from __future__ import annotations

import numpy as np

from . import syntax_tree as ast
from .diagnostics import Span, SpireadError, in_calls, shape_str
from .limits import check_shape
from .ops import Op, ShapeError
from .tape_nodes import Node
from .values import (NO_CHUNKS, Arg, Const, Function, Jet, JetDim, Made, Pairs, Record, SliceValue, Symbol, Text,
                     TupleValue, Unit, is_pieces)


class Operands:
    """How the interpreter reads operands and applies ops: a part of
    `interpreter.Interpreter` (a mixin: `self` is the interpreter)."""

    def text(self, node) -> str:
        return self.source.snippet(node.span)

    def tensor(self, arg: Arg) -> Node | Const:
        """An array operand, or an error saying what the argument is instead."""
        value = arg.value
        if isinstance(value, (Node, Const, Jet)):
            return value
        if isinstance(value, TupleValue):
            if not is_pieces(value):
                return Const(np.array([float(a.value.value) for a in value.items]),
                             fixed=all(a.value.fixed for a in value.items))
            if all(isinstance(a.value, (Node, Const)) for a in value.items):
                text = self.text(arg.expr)
                raise SpireadError(f"`{text}` holds {len(value.items)} values, not one array", arg.expr.span,
                                   [f"pick one by its position, e.g. `{self.operand_text(arg.expr)}[0]`"])
            raise SpireadError("a tuple here must hold numbers", arg.expr.span)
        self.refuse_unit(arg, "it")
        text = self.text(arg.expr)
        kind = {Pairs: "index pairs", SliceValue: "a slice", Symbol: "a reduction name", Text: "a string", Record: "a record of gradients",
                Function: "a function", JetDim: "a JetDim"}[type(value)]
        hint = {Text: [f"to read a file, write `load({text})`" if value.written else self.printed_text_note(arg)]
                if isinstance(value, Text) else [],
                Record: [f"pick one gradient: {', '.join(f'`{text}.{k}`' for k in value.fields)}"]
                if isinstance(value, Record) else [],
                Function: [f"call it, e.g. `{text}(x)`, or apply it to each entry with `v.map({text})`"],
                JetDim: ["give it to the program with `given jd: JetDim = JetDim(1)`"]}.get(type(value), [])
        raise SpireadError(f"`{text}` is {kind}, not an array", arg.expr.span, hint)

    def printed_text_note(self, arg: Arg) -> str:
        """What to write instead of a value's text, `x.printMat`, where an array is wanted."""
        expr = arg.expr
        if isinstance(expr, ast.Attribute) and expr.name == "printMat":
            receiver = self.text(expr.receiver)
            return f"`.printMat` gives the text of `{receiver}`, for `println`; compute with `{receiver}` itself"
        return "it is a value's text (`.printMat` gives one, for `println`); compute with the value itself"

    def refuse_unit(self, arg: Arg, what: str) -> None:
        if isinstance(arg.value, Unit):
            raise SpireadError(f"`{self.text(arg.expr)}` gives no value for {what} to use", arg.expr.span,
                               ["`println(x)` prints `x` and gives nothing back"])

    def materialize(self, arg: Arg) -> Node:
        value = self.tensor(arg)
        if isinstance(value, Jet):  # its real part goes on the tape; the run shows its infinitesimal parts too
            node = self.tape.leaf(value.value, "const", arg.expr.span)
            self.jets[node.id] = value.tangents
            return node
        if isinstance(value, Const):
            return self.leaf(value, "const", arg.expr.span)
        return value

    def leaf(self, value: Const, kind: str, span: Span, name: str | None = None) -> Node:
        """A constant put on the tape: a leaf, noted with how a chunk made it (`made_leaves`)."""
        node = self.tape.leaf(value.value, kind, span, name, fixed=value.fixed and kind == "const")
        if value.made is not None:
            self.made_leaves[node.id] = value.made
        return node

    def made(self, kind: str, seed: int = 0, read: np.ndarray | None = None) -> Made | None:
        """How a row chunk's recording made a constant (values.Made); None
        outside one, and for an array read (`read`) that is not the data rows."""
        if self.row_data is None or (read is not None and not self.row_data(read)):
            return None
        return Made(kind, seed)

    def refuse_row_count(self, arg: Arg, what: str) -> None:
        """In a row chunk's recording, refuse a number read to decide a value
        (`what`: a fill, a seed) that is computed from the data rows' number:
        the chunk reads its own rows' number, and what it decides is not made
        again per chunk as positions and draws are (values.Made)."""
        if self.row_data is None:
            return
        value = arg.value
        if isinstance(value, Const):
            counted = value.made is not None and value.value.shape == ()
        else:
            feeds = self.tape.feeding(value.id) if isinstance(value, Node) else []
            counted = any(feeds[i] and made.kind == "rows" and self.tape.nodes[i].value.shape == ()
                          for i, made in self.made_leaves.items())
        if counted:  # the count is the one scalar a chunk makes from its rows (a file's numbers are not its rows)
            raise SpireadError(f"cannot run by row chunks: {what} `{self.text(arg.expr)}` is computed from the "
                               "number of data rows, which a chunk knows only as its own", arg.expr.span, [NO_CHUNKS])

    def made_of_positions(self, arg: Arg) -> bool:
        """Whether an argument is positions or draws a row chunk made along its own rows."""
        value = arg.value
        made = value.made if isinstance(value, Const) else self.made_leaves.get(getattr(value, "id", None))
        return made is not None and made.positions

    def apply(self, op: Op, operands: list[Arg], params: dict, span: Span, at: Span, label: str):
        """Check shapes, then fold constants or record the op on the tape.
        `span` is the whole expression (quoted in messages), `at` where they point."""
        values = [self.tensor(a) for a in operands]
        shapes = [v.shape for v in values]
        kinds = {type(v) for v in values}
        try:
            shape = op.shape(*shapes, **params)
        except ShapeError as err:
            texts = {str(i): f"`{self.text(a.expr)}`" for i, a in enumerate(operands)}
            texts.update({f"s{i}": shape_str(s) for i, s in enumerate(shapes)})
            message = str(err).format(*[texts[str(i)] for i in range(len(operands))], **texts)
            raise SpireadError(f"`{self.source.snippet(span)}`: {message}", at) from None
        self.check_size(shape, span, at)
        at = in_calls(at, self.inside)  # what it records is this call's: its warnings show the calls (diagnostics)
        if Jet in kinds:
            return self.jet_apply(op, values, params, span, at, label)
        if kinds == {Const} and all(v.made is None for v in values):  # in a chunk, the plan judges ops on rows
            return Const(self.tape.fold(op, [v.value for v in values], params, at, label, self.diagnostics),
                         fixed=all(v.fixed for v in values))
        inputs = tuple([v.id if type(v) is Node else self.materialize(a).id for v, a in zip(values, operands)])
        node = self.tape.record(op, inputs, params, at, label, self.diagnostics, shape)
        if all(type(v) is Const or v.id in self.unfolded for v in values):
            self.unfolded.add(node.id)
        return node

    def jet_apply(self, op: Op, values: list, params: dict, span: Span, at: Span, label: str) -> Jet:
        """An op on Jets: the real part by the op's primal rule, the
        infinitesimal parts by its forward-mode (jvp) rule, one per JetDim
        direction (the tangents' batch axis). Other operands are constants."""
        reals = [self.read(v) for v in values]
        value = self.tape.fold(op, reals, params, at, label, self.diagnostics)
        if value.shape != ():
            raise SpireadError(f"`{self.source.snippet(span)}` would be a Jet of {shape_str(value.shape)}; "
                               "a Jet is a number", at)
        with np.errstate(all="ignore"):
            tangents = op.jvp([v.tangents if isinstance(v, Jet) else None for v in values], value, *reals, **params)
        return Jet(value, np.asarray(tangents, dtype=np.float64))

    def read(self, value: Node | Const | Jet) -> np.ndarray:
        """An operand's value as the elaborator itself uses it (a number, a
        size, positions, a printed text, a Jet's real part): where a value
        decides what is recorded instead of flowing through the tape. The
        nodes read are noted (`Run.read`): a kept run is replayed only for the
        same values of the bindings they are computed from (kept_runs.py)."""
        if isinstance(value, Node):
            self.read_ids.append(value.id)
        return value.value

    def check_size(self, shape, span: Span, at: Span) -> None:
        check_shape(shape, lambda: f"`{self.source.snippet(span)}`", at, self.max_bytes)

    def number(self, arg: Arg, what: str) -> float:
        value = self.tensor(arg)
        if value.shape != ():
            raise SpireadError(f"{what} must be a number, but `{self.text(arg.expr)}` is "
                               f"{shape_str(value.shape)}", arg.expr.span)
        return float(self.read(value))

    def integer(self, arg: Arg, what: str) -> int:
        x = self.number(arg, what)
        if not float(x).is_integer():
            raise SpireadError(f"{what} must be a whole number, but `{self.text(arg.expr)}` is {x:g}", arg.expr.span)
        return int(x)

    def integers(self, arg: Arg, what: str) -> np.ndarray:
        array = self.read(self.tensor(arg))
        if array.ndim != 1:
            raise SpireadError(f"{what} must be a vector of positions, but `{self.text(arg.expr)}` is "
                               f"{shape_str(array.shape)}", arg.expr.span)
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise SpireadError(f"{what} must hold whole numbers: `{self.text(arg.expr)}`", arg.expr.span)
        if array.size and np.abs(array).max() > np.iinfo(np.intp).max:  # cast, it would wrap around
            raise SpireadError(f"{what} are out of range of any array: `{self.text(arg.expr)}` holds "
                               f"{np.abs(array).max():g}", arg.expr.span)
        return array.astype(np.intp)
