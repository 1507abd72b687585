"""Runs a parsed program, recording every operation on a tape.

Expressions are evaluated with an explicit stack (post-order), so a
10,000-link method chain or deeply nested parentheses never meet Python's
recursion limit. Sub-expressions built only from literals and constructor
functions are folded into constants; a bound constant becomes an *input*
leaf, the things gradients are usually asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import syntax as ast
from .data import load_array
from .diagnostics import Diagnostics, Source, Span, SpireadError, did_you_mean, shape_str
from .limits import check_shape, max_bytes
from .ops import METHODS, OPS, Op, ShapeError
from .tape import Node, Run, Tape


# ------------------------------------------------------------ value kinds
# What an expression evaluates to before it is on the tape.


@dataclass(slots=True)
class Const:
    """A value that depends on no input: folded now, put on the tape when used."""
    value: np.ndarray


@dataclass(slots=True)
class Pairs:
    """(row, col) index pairs: `Array((0, 0), (1, 1))`."""
    rows: np.ndarray
    cols: np.ndarray


@dataclass(slots=True)
class Symbol:
    """A reduction named as an argument: `sum`, `ReductionOps.Sum`."""
    name: str


@dataclass(slots=True)
class Text:
    value: str


@dataclass(slots=True)
class TupleValue:
    items: list


REDUCTIONS = {"sum": "rowSum", "mean": "rowMean", "product": "rowProduct"}
QUALIFIED_SYMBOLS = {f"ReductionOps.{k.capitalize()}": k for k in REDUCTIONS}
OPERATORS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "@@": "matmul", "**": "pow"}


class Interpreter:
    def __init__(self, source: Source, overrides: dict[str, np.ndarray] | None = None,
                 base_dir: Path | None = None):
        self.source = source
        self.overrides = dict(overrides or {})
        self.base_dir = base_dir or Path.cwd()
        self.tape = Tape(source=source)
        self.diagnostics = Diagnostics()
        self.env: dict[str, Node] = {}
        self.binding_spans: dict[str, Span] = {}
        self.later: dict[str, Span] = {}
        self.max_bytes = max_bytes()

    # ------------------------------------------------------- statements

    def run(self, module: ast.Module, of: str | None = None) -> Run:
        self.later = {s.name: s.at for s in reversed(module.statements) if isinstance(s, ast.Binding)}
        unknown = [name for name in self.overrides if name not in self.later]
        if unknown:
            raise SpireadError(f"`--set {unknown[0]}=…`: the program binds no `{unknown[0]}`",
                               notes=did_you_mean(unknown[0], self.later), exit_code=2)
        output = output_name = backward_wrt = declared = None
        for statement in module.statements:
            if isinstance(statement, ast.Binding):
                node = self.bind(statement)
                output, output_name = node, statement.name
            elif _is_backward(statement.value):
                declared = self.backward_statement(statement.value)
            else:
                output = self.materialize(self.evaluate(statement.value), statement.value)
                output_name = self.text(statement.value)
        if declared is not None:  # `.backward(...)` names the output, whatever follows it
            output, output_name, backward_wrt = declared
        if of is not None:
            if of not in self.env:
                raise SpireadError(f"`--of {of}`: the program binds no `{of}`",
                                   notes=did_you_mean(of, self.env), exit_code=2)
            output, output_name = self.env[of], of
        if output is None:
            raise SpireadError("the program computes nothing", None,
                               ["write an expression, e.g. `loss = (x * x).sum`"], origin=self.source.name)
        return Run(self.source, self.tape, {n: v.id for n, v in self.env.items()}, self.binding_spans,
                   output.id, output_name, backward_wrt, self.diagnostics)

    def bind(self, statement: ast.Binding) -> Node:
        name = statement.name
        if name in self.env:
            first = self.binding_spans[name]
            raise SpireadError(f"`{name}` is already bound, at {first.line}:{first.column}", statement.at,
                               [f"names are bound once; give this value another name, e.g. `{name}2`"],
                               related=[(first, "first bound here")])
        if name in self.overrides:
            node = self.tape.leaf(self.overrides.pop(name), "input", statement.at, name)
        else:
            value = self.evaluate(statement.value)
            if isinstance(value, Const):
                node = self.tape.leaf(value.value, "input", statement.at, name)
            else:
                node = self.materialize(value, statement.value)
                if node.name is None:
                    node.name = name
        self.env[name] = node
        self.binding_spans[name] = statement.at
        return node

    def backward_statement(self, call):
        receiver = call.callee.receiver if isinstance(call, ast.Call) else call.receiver
        output = self.materialize(self.evaluate(receiver), receiver)
        names = []
        for arg in (call.args if isinstance(call, ast.Call) else []):
            items = [k.value for k in arg.items] if isinstance(arg, ast.NamedTuple) else [arg]
            for item in items:
                if not isinstance(item, ast.Name):
                    raise SpireadError("`.backward(...)` takes the names of the values to differentiate by",
                                       item.span, ["e.g. `loss.backward(weights)` or `loss.backward((weights = weights))`"])
                self.lookup(item)
                names.append(item.id)
        return output, self.text(receiver), names or None

    # ------------------------------------------------------ expressions

    def evaluate(self, root):
        """Post-order evaluation with an explicit stack."""
        stack = [(root, -1)]  # (node, -1) to expand; (node, n) to visit with its n children's values
        results = []
        while stack:
            node, n = stack.pop()
            if n >= 0:
                args = results[len(results) - n:] if n else []
                del results[len(results) - n:]
                results.append(self.visit(node, args))
            else:
                children = self.children(node)
                stack.append((node, len(children)))
                stack.extend((child, -1) for child in reversed(children))
        return results[0]

    def children(self, node) -> list:
        match node:
            case ast.BinOp():
                return [node.left, node.right]
            case ast.UnaryOp():
                return [node.operand]
            case ast.Attribute():
                return [] if self.qualified(node) else [node.receiver]
            case ast.Call():
                rest = node.args + [k.value for k in node.keywords]
                if self.is_method_call(node):
                    return [node.callee.receiver] + rest
                if self.function_name(node.callee):
                    return rest
                return [node.callee] + rest
            case ast.Subscript():
                return [node.receiver] + node.args
            case ast.TupleLit() | ast.ListLit():
                return node.items
            case ast.NamedTuple():
                return [k.value for k in node.items]
        return []

    def is_method_call(self, call: ast.Call) -> bool:
        """`x.m(args)`, as against `Matrix.fromRows(args)` or `(x.T)(pairs)`."""
        callee = call.callee
        return isinstance(callee, ast.Attribute) and not callee.grouped and not self.qualified(callee)

    def qualified(self, node) -> str | None:
        """`Matrix.fromRows`, `ReductionOps.Sum`: a dotted name, not a method call."""
        if isinstance(node, ast.Attribute) and isinstance(node.receiver, ast.Name) and node.receiver.id not in self.env:
            name = f"{node.receiver.id}.{node.name}"
            if name in FUNCTIONS or name in QUALIFIED_SYMBOLS or node.receiver.id in ("Matrix", "ReductionOps"):
                return name
        return None

    def function_name(self, callee) -> str | None:
        if isinstance(callee, ast.Name) and callee.id not in self.env:
            return callee.id
        return self.qualified(callee)

    def visit(self, node, args):
        match node:
            case ast.Number():
                return Const(np.array(node.value))
            case ast.String():
                return Text(node.value)
            case ast.Name():
                return self.lookup(node)
            case ast.BinOp():
                return self.apply(OPS[OPERATORS[node.op]], args, {}, node, [node.left, node.right], node.op)
            case ast.UnaryOp():
                if node.op == "+":
                    return self.tensor(args[0], node.operand)
                return self.apply(OPS["neg"], args, {}, node, [node.operand], "-")
            case ast.Attribute():
                qualified = self.qualified(node)
                if qualified:
                    if qualified in QUALIFIED_SYMBOLS:
                        return Symbol(QUALIFIED_SYMBOLS[qualified])
                    if qualified in FUNCTIONS:
                        raise SpireadError(f"`{qualified}` is a function; call it with arguments", node.span)
                    raise SpireadError(f"unknown name `{qualified}`", node.span,
                                       did_you_mean(qualified, list(FUNCTIONS) + list(QUALIFIED_SYMBOLS)))
                return self.method(args[0], node, [], {}, [])
            case ast.Call():
                kw_count = len(node.keywords)
                positional = args[:len(args) - kw_count]
                keywords = {k.name: v for k, v in zip(node.keywords, args[len(args) - kw_count:])}
                if self.is_method_call(node):
                    return self.method(positional[0], node.callee, positional[1:], keywords, node.args, node)
                function = self.function_name(node.callee)
                if function:
                    return self.call_function(function, positional, keywords, node)
                return self.selection(positional[0], positional[1:], node.callee, node, "select")
            case ast.Subscript():
                return self.subscript(args[0], args[1:], node)
            case ast.TupleLit():
                return TupleValue(args)
            case ast.ListLit():
                return self.array_literal(args, node)
            case ast.NamedTuple():
                raise SpireadError("a named tuple `(a = …)` is only for `.backward((a = a))`", node.span)
        raise AssertionError(f"no rule for {type(node).__name__}")

    def lookup(self, name: ast.Name):
        if name.id in self.env:
            return self.env[name.id]
        if name.id in REDUCTIONS:
            return Symbol(name.id)
        if name.id in self.later:
            at = self.later[name.id]
            raise SpireadError(f"`{name.id}` is used before it is bound (at {at.line}:{at.column})", name.span,
                               related=[(at, "bound here, later")])
        raise SpireadError(f"unknown name `{name.id}`", name.span, did_you_mean(name.id, self.env))

    # ----------------------------------------------------------- tensors

    def text(self, node) -> str:
        return self.source.snippet(node.span)

    def tensor(self, value, node) -> Node | Const:
        """An array operand, or an error saying what `node` is instead."""
        if isinstance(value, (Node, Const)):
            return value
        if isinstance(value, TupleValue):
            return Const(self.stacked_constants(value.items, node))
        kind = {Pairs: "index pairs", Symbol: "a reduction name", Text: "a string"}[type(value)]
        hint = [f"to read a file, write `load({self.text(node)})`"] if isinstance(value, Text) else []
        raise SpireadError(f"`{self.text(node)}` is {kind}, not an array", node.span, hint)

    def stacked_constants(self, items, node) -> np.ndarray:
        if all(isinstance(v, Const) and v.value.ndim == 0 for v in items):
            return np.array([float(v.value) for v in items])
        raise SpireadError("a tuple here must hold numbers", node.span)

    def materialize(self, value, node) -> Node:
        value = self.tensor(value, node)
        if isinstance(value, Const):
            return self.tape.leaf(value.value, "const", node.span)
        return value

    def apply(self, op: Op, args, params: dict, node, operands: list, label: str):
        """Check shapes, then fold constants or record the op on the tape."""
        args = [self.tensor(a, o) for a, o in zip(args, operands)]
        shapes = [a.value.shape for a in args]
        try:
            shape = op.shape(*shapes, **params)
        except ShapeError as err:
            texts = {str(i): f"`{self.text(o)}`" for i, o in enumerate(operands)}
            texts.update({f"s{i}": shape_str(s) for i, s in enumerate(shapes)})
            message = str(err).format(*[texts[str(i)] for i in range(len(operands))], **texts)
            raise SpireadError(f"`{self.text(node)}`: {message}", node.at) from None
        self.check_size(shape, node)
        if all(isinstance(a, Const) for a in args):
            return Const(self.tape.fold(op, [a.value for a in args], params, node.at, label, self.diagnostics))
        inputs = tuple(self.materialize(a, o).id for a, o in zip(args, operands))
        return self.tape.record(op, inputs, params, node.at, label, self.diagnostics)

    def check_size(self, shape, node) -> None:
        check_shape(shape, f"`{self.text(node)}`", node.at, self.max_bytes)

    # ---------------------------------------------------------- methods

    def method(self, receiver, attr: ast.Attribute, args, keywords, arg_nodes, call=None):
        name = attr.name
        node = call or attr
        at_node = _At(node.span, attr.at if call is None else attr.at.to(call.span))
        if keywords:
            raise SpireadError(f"`.{name}` takes no `name=value` arguments", node.span)
        if name == "backward":
            raise SpireadError("`.backward(...)` must be a statement of its own", attr.at,
                               ["e.g. `loss.backward(weights)` on its own line"])
        if name == "tej":
            self.arity(name, args, 0, attr)
            return self.tensor(receiver, attr.receiver)
        if name in SUGAR:
            return SUGAR[name](self, receiver, args, attr, node, arg_nodes)
        op = METHODS.get(name)
        if op is None:
            raise SpireadError(f"unknown method `.{name}`", attr.at,
                               did_you_mean(name, list(METHODS) + list(SUGAR) + ["tej", "backward"]))
        operands = op.arity - 1  # after the receiver
        self.arity(name, args, operands + len(op.params), attr)
        params = {p: self.number(v, n, f"the argument of `.{name}`")
                  for p, v, n in zip(op.params, args[operands:], arg_nodes[operands:])}
        return self.apply(op, [receiver, *args[:operands]], params, at_node, [attr.receiver, *arg_nodes[:operands]], name)

    def arity(self, name, args, expected, attr) -> None:
        if len(args) != expected:
            wanted = "no arguments" if expected == 0 else f"{expected} argument{'s' * (expected > 1)}"
            raise SpireadError(f"`.{name}` takes {wanted}, got {len(args)}", attr.at)

    def number(self, value, node, what) -> float:
        value = self.tensor(value, node)
        if value.value.ndim != 0:
            raise SpireadError(f"{what} must be a number, but `{self.text(node)}` is {shape_str(value.value.shape)}",
                               node.span)
        return float(value.value)

    def integer(self, value, node, what) -> int:
        x = self.number(value, node, what)
        if not float(x).is_integer():
            raise SpireadError(f"{what} must be a whole number, but `{self.text(node)}` is {x:g}", node.span)
        return int(x)

    def integers(self, value, node, what) -> np.ndarray:
        array = self.tensor(value, node).value
        if array.ndim != 1:
            raise SpireadError(f"{what} must be a vector of positions, but `{self.text(node)}` is {shape_str(array.shape)}",
                               node.span)
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise SpireadError(f"{what} must hold whole numbers: `{self.text(node)}`", node.span)
        return array.astype(np.intp)

    # -------------------------------------------------------- selection

    def pairs(self, args, arg_nodes, call) -> Pairs:
        """(row, col) pairs from `(i, j), …`, `Array((i, j), …)`, or `rows, cols`."""
        if len(args) == 1 and isinstance(args[0], Pairs):
            return args[0]
        if args and all(isinstance(a, TupleValue) for a in args):
            return self.tuples_to_pairs(args, arg_nodes)
        if len(args) == 2:
            rows = self.integers(args[0], arg_nodes[0], "the row positions")
            cols = self.integers(args[1], arg_nodes[1], "the column positions")
            if len(rows) != len(cols):
                raise SpireadError(f"the row positions `{self.text(arg_nodes[0])}` and the column positions "
                                   f"`{self.text(arg_nodes[1])}` differ in length: {len(rows)} and {len(cols)}",
                                   call.span, ["entry k is taken from row rows[k] and column cols[k]"])
            return Pairs(rows, cols)
        raise SpireadError("a selection takes (row, col) pairs, or a vector of rows and one of columns",
                           call.span, ["e.g. `x[(0, 0), (1, 1)]`, `x(Array((0, 0)))` or `x.select(rows, cols)`"])

    def tuples_to_pairs(self, tuples, nodes) -> Pairs:
        rows, cols = [], []
        for t, n in zip(tuples, nodes):
            if len(t.items) != 2:
                raise SpireadError(f"an index pair has two positions, `{self.text(n)}` has {len(t.items)}", n.span)
            rows.append(self.integer(t.items[0], n.items[0], "a row position"))
            cols.append(self.integer(t.items[1], n.items[1], "a column position"))
        return Pairs(np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp))

    def selection(self, receiver, args, receiver_node, call, op_name):
        pairs = self.pairs(args, call.args, call)
        x = self.tensor(receiver, receiver_node)
        shape = x.value.shape
        if len(shape) == 2:
            outside = ((pairs.rows < -shape[0]) | (pairs.rows >= shape[0])
                       | (pairs.cols < -shape[1]) | (pairs.cols >= shape[1]))
            if outside.any():
                first = int(np.argmax(outside))
                r, c = int(pairs.rows[first]), int(pairs.cols[first])
                raise SpireadError(f"index ({r}, {c}) is out of range for `{self.text(receiver_node)}`, "
                                   f"which is {shape_str(shape)}", call.span,
                                   [f"rows count from 0 to {shape[0] - 1}, columns from 0 to {shape[1] - 1}"])
        shown = " ".join(f"({r},{c})" for r, c in zip(pairs.rows[:4], pairs.cols[:4]))
        label = f"{op_name} {shown}{' …' if len(pairs.rows) > 4 else ''}"
        return self.apply(OPS[op_name], [x], {"rows": pairs.rows, "cols": pairs.cols},
                          _At(call.span, call.at), [receiver_node], label)

    def subscript(self, receiver, args, node: ast.Subscript):
        if args and all(isinstance(a, (TupleValue, Pairs)) for a in args):
            return self.selection(receiver, args, node.receiver, node, "select")
        x = self.tensor(receiver, node.receiver)
        positions = [self.integer(a, n, "a position") for a, n in zip(args, node.args)]
        return self.index(x, tuple(positions), node.receiver, node, "[]")

    def index(self, x, key: tuple, receiver_node, node, label):
        shape = x.value.shape
        if not shape:
            raise SpireadError(f"`{self.text(receiver_node)}` is a scalar; it has no positions to index",
                               node.span, _missing_comma(receiver_node, node))
        if len(key) > len(shape):
            raise SpireadError(f"`{self.text(receiver_node)}` is {shape_str(shape)}; it takes at most "
                               f"{len(shape)} position{'s' * (len(shape) != 1)}, got {len(key)}", node.span,
                               _missing_comma(receiver_node, node))
        for axis, k in enumerate(key):
            if isinstance(k, int) and not -shape[axis] <= k < shape[axis]:
                raise SpireadError(f"index {k} is out of range for `{self.text(receiver_node)}`, which is "
                                   f"{shape_str(shape)}", node.span,
                                   _missing_comma(receiver_node, node) or
                                   [f"positions count from 0, so the last of {shape[axis]} is {shape[axis] - 1}"])
        return self.apply(OPS["index"], [x], {"key": key}, node, [receiver_node], label)

    # -------------------------------------------------------- functions

    def call_function(self, name, args, keywords, call):
        function = FUNCTIONS.get(name)
        if function is None:
            raise SpireadError(f"unknown function `{name}`", call.callee.span,
                               did_you_mean(name, list(FUNCTIONS) + list(self.env)))
        return function(self, args, keywords, call)

    def array_literal(self, items, node):
        """`[1, 2]`, `[[1, 2], [3, 4]]`, `Array(1, 2)`: stack the items (a
        differentiable op when an item depends on an input)."""
        if not items:
            return Const(np.zeros(0))
        if all(isinstance(v, TupleValue) for v in items):
            return self.tuples_to_pairs(items, node.args if isinstance(node, ast.Call) else node.items)
        item_nodes = node.args if isinstance(node, ast.Call) else node.items
        return self.apply(OPS["stack"], items, {"axis": 0}, node, item_nodes, "stack")


@dataclass(frozen=True, slots=True)
class _At:
    """An AST-like place for ops written as methods: `span` is the whole
    expression (its source text), `at` where diagnostics point."""
    span: Span
    at: Span


def _missing_comma(receiver_node, node) -> list[str]:
    """`[[1, 2]\n [3, 4]]` parses as indexing the row `[1, 2]` by `3, 4`: say so."""
    if isinstance(receiver_node, ast.ListLit) and isinstance(node, ast.Subscript):
        return ["is a `,` missing between two rows? Without it, a `[...]` right after a list picks entries from it"]
    return []


def _is_backward(expr) -> bool:
    callee = expr.callee if isinstance(expr, ast.Call) else expr
    return isinstance(callee, ast.Attribute) and callee.name == "backward"


# --------------------------------------------------- sugar methods
# Methods that are other syntax for ops in the table (row → index, …).


def _map_rows(self: Interpreter, receiver, args, attr, node, arg_nodes):
    self.arity(attr.name, args, 1, attr)
    if not isinstance(args[0], Symbol):
        raise SpireadError(f"`.{attr.name}` takes a reduction: `sum`, `mean` or `product`", arg_nodes[0].span,
                           ["e.g. `x.mapRowsToScalar(ReductionOps.Sum)`"])
    op = OPS[REDUCTIONS[args[0].name]]
    return self.apply(op, [receiver], {}, _At(node.span, attr.at), [attr.receiver], f"mapRowsToScalar({args[0].name})")


def _row_or_col(self: Interpreter, receiver, args, attr, node, arg_nodes):
    self.arity(attr.name, args, 1, attr)
    x = self.tensor(receiver, attr.receiver)
    if x.value.ndim != 2:
        raise SpireadError(f"`.{attr.name}` needs a matrix, but `{self.text(attr.receiver)}` is "
                           f"{shape_str(x.value.shape)}", attr.at)
    i = self.integer(args[0], arg_nodes[0], f"the argument of `.{attr.name}`")
    key = (i, slice(None)) if attr.name == "row" else (slice(None), i)
    axis = 0 if attr.name == "row" else 1
    if not -x.value.shape[axis] <= i < x.value.shape[axis]:
        raise SpireadError(f"{attr.name} {i} is out of range for `{self.text(attr.receiver)}`, which is "
                           f"{shape_str(x.value.shape)}", node.span)
    return self.apply(OPS["index"], [x], {"key": key}, _At(node.span, attr.at), [attr.receiver], f"{attr.name}({i})")


def _select_method(op_name):
    def method(self: Interpreter, receiver, args, attr, node, arg_nodes):
        if not isinstance(node, ast.Call):
            raise SpireadError(f"`.{attr.name}` needs (row, col) pairs", attr.at)
        return self.selection(receiver, args, attr.receiver, node, op_name)
    return method


SUGAR = {
    "mapRowsToScalar": _map_rows,
    "row": _row_or_col,
    "col": _row_or_col,
    "select": _select_method("select"),
    "arrange": _select_method("arrange"),
}


# ----------------------------------------------------------- functions
# Each takes (interpreter, positional values, keyword values, call node).


def _positional(self: Interpreter, name, args, keywords, call, counts, allowed_keywords=()):
    extra = set(keywords) - set(allowed_keywords)
    if extra:
        raise SpireadError(f"`{name}` has no argument `{sorted(extra)[0]}`", call.span,
                           did_you_mean(sorted(extra)[0], allowed_keywords))
    if len(args) not in counts:
        if isinstance(counts, range):
            wanted, most = f"at least {counts.start}", counts.start
        else:
            wanted, most = " or ".join(str(c) for c in counts), max(counts)
        raise SpireadError(f"`{name}` takes {wanted} argument{'s' * (most != 1)}, got {len(args)}", call.span)


def _sizes(self: Interpreter, name, args, call, counts=(1, 2)):
    _positional(self, name, args, {}, call, counts)
    sizes = tuple(self.integer(a, n, f"a size for `{name}`") for a, n in zip(args, call.args))
    if any(s < 0 for s in sizes):
        raise SpireadError(f"`{name}`: sizes cannot be negative", call.span)
    self.check_size(sizes, call)
    return sizes


def _constant(maker):
    def function(self: Interpreter, args, keywords, call):
        name = self.text(call.callee)
        if keywords:
            _positional(self, name, args, keywords, call, (len(args),))
        return Const(maker(_sizes(self, name, args, call)))
    return function


def _full(self, args, keywords, call):
    _positional(self, "full", args, keywords, call, (2, 3))
    sizes = _sizes(self, "full", args[:-1], _Args(call, call.args[:-1]), (1, 2))
    return Const(np.full(sizes, self.number(args[-1], call.args[-1], "the fill value of `full`")))


@dataclass(frozen=True, slots=True)
class _Args:
    """A call node seen with only some of its arguments."""
    call: ast.Call
    args: list

    @property
    def span(self):
        return self.call.span

    @property
    def at(self):
        return self.call.at


def _random(kind):
    def function(self: Interpreter, args, keywords, call):
        name = self.text(call.callee)
        _positional(self, name, args, keywords, call, (1, 2), ("seed",))
        sizes = _sizes(self, name, args, call)
        seed = self.integer(keywords["seed"], call.keywords[0].value, "the seed") if "seed" in keywords else 0
        rng = np.random.default_rng(seed)
        return Const(rng.standard_normal(sizes) if kind == "normal" else rng.random(sizes))
    return function


def _onehot(self: Interpreter, args, keywords, call):
    _positional(self, "onehot", args, keywords, call, (2,))
    labels = self.integers(args[0], call.args[0], "the labels of `onehot`")
    n = self.integer(args[1], call.args[1], "the width of `onehot`")
    if len(labels) and (labels.min() < 0 or labels.max() >= n):
        bad = labels[(labels < 0) | (labels >= n)][0]
        raise SpireadError(f"`onehot`: label {bad} is out of range for width {n}", call.args[0].span)
    self.check_size((len(labels), n), call)
    out = np.zeros((len(labels), n))
    out[np.arange(len(labels)), labels] = 1.0
    return Const(out)


def _load(self: Interpreter, args, keywords, call):
    _positional(self, "load", args, keywords, call, (1,))
    if not isinstance(args[0], Text):
        raise SpireadError("`load` takes a path in quotes, e.g. `load(\"x.csv\")`", call.span)
    path = Path(args[0].value)
    return Const(load_array(path if path.is_absolute() else self.base_dir / path, call.args[0].span))


def _measure(what):
    def function(self: Interpreter, args, keywords, call):
        _positional(self, what, args, keywords, call, (1,))
        shape = self.tensor(args[0], call.args[0]).value.shape
        return Const(np.array(float({"rows": shape[0] if shape else 1,
                                     "cols": shape[1] if len(shape) == 2 else (shape[0] if shape else 1),
                                     "size": int(np.prod(shape))}[what])))
    return function


def _from(axis):
    def function(self: Interpreter, args, keywords, call):
        _positional(self, self.text(call.callee), args, keywords, call, range(1, 1 << 30))
        return self.apply(OPS["stack"], args, {"axis": axis}, call, call.args, self.text(call.callee))
    return function


def _array(self: Interpreter, args, keywords, call):
    _positional(self, "Array", args, keywords, call, range(0, 1 << 30))
    return self.array_literal(args, call)


FUNCTIONS = {
    "Array": _array,
    "Matrix.fromRows": _from(0),
    "Matrix.fromColumns": _from(1),
    "zeros": _constant(np.zeros),
    "ones": _constant(np.ones),
    "full": _full,
    "eye": lambda self, args, keywords, call: Const(np.eye(*_sizes(self, "eye", args, call, (1,)))),
    "arange": lambda self, args, keywords, call: Const(np.arange(*_sizes(self, "arange", args, call, (1,)), dtype=float)),
    "randn": _random("normal"),
    "rand": _random("uniform"),
    "onehot": _onehot,
    "load": _load,
    "rows": _measure("rows"),
    "cols": _measure("cols"),
    "size": _measure("size"),
}
