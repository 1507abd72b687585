"""Elaboration: runs a parsed program, recording every operation on a tape.

Expressions are evaluated with an explicit stack (post-order), so a
10,000-link method chain, deeply nested parentheses or a chain of `def`s
(inlined on the same stack) never meet Python's recursion limit; each value travels paired with its expression (`Arg`), so
every message can quote and point at what produced it. What a call is (a
method, a function, a selection) is decided once, when it is expanded.
Sub-expressions built only from literals and constructor functions are
folded into constants (through the tape's own evaluator, so they warn
alike); a bound constant becomes an *input* leaf, the things gradients are
usually asked for. Builtin functions and method sugar live in
builtin_functions.py and builtin_methods.py, declared by builtins.py.

This module runs the statements and holds the evaluation stack (`evaluate`:
what a node is, `expand`, and its value, `visit`); the interpreter's other
jobs are parts of the same class, each in a module of its own: resolving
names (interpreter_names.py), reading operands and applying ops — shape
checks, folding, recording (interpreter_operands.py), calls
(interpreter_calls.py) and indexing (interpreter_indexing.py).
"""

from __future__ import annotations

from pathlib import Path
from types import GeneratorType
from typing import Callable

import numpy as np

from . import syntax_tree as ast
from .builtin_functions import FUNCTIONS
from .data import load_array
from .diagnostics import Diagnostics, Source, Span, SpireadError, did_you_mean, option, refuse_repeats, shape_str
from .interpreter_calls import Calls
from .interpreter_indexing import Indexing
from .interpreter_names import QUALIFIED_SYMBOLS, Names
from .interpreter_operands import Operands
from .limits import max_bytes, no_cyclic_gc
from .ops import OPS
from .run import Run
from .tape import Tape
from .tape_nodes import Node
from .values import (Arg, Const, Function, JetDim, Made, Record, SliceValue, Symbol, Text, TupleValue, Unit,
                     is_pieces)

# Each operator's op and parameters: the comparisons are the 0/1 masks of `indicator`.
OPERATORS = {"+": ("add", {}), "-": ("sub", {}), "*": ("mul", {}), "/": ("div", {}), "%": ("remainder", {}),
             "@@": ("matmul", {}), "**": ("pow", {}),
             **{relation: ("indicator", {"relation": relation}) for relation in (">", ">=", "<", "<=", "==", "!=")}}
_EXPAND, _RESUME = -1, -2  # what `evaluate` does with a stack entry, besides visiting a node with n >= 0 values


class Interpreter(Names, Operands, Calls, Indexing):
    """Runs a program onto a tape (`run`): the builtins' `Elaborator`."""

    def __init__(self, source: Source, overrides: dict[str, np.ndarray] | None = None,
                 base_dir: Path | None = None, loader: Callable[[Path, Span], np.ndarray] = load_array,
                 row_data: Callable[[np.ndarray], bool] | None = None):
        self.source = source
        self.overrides = dict(overrides or {})
        self.base_dir = base_dir or Path.cwd()
        # How `load(path)` reads a file: whole, or (spiread_cli/chunked.py) one row chunk of it.
        self.reader = loader
        self.tape = Tape(source=source)
        self.diagnostics = Diagnostics()
        self.env: dict[str, object] = {}            # name -> value: a Node, a Record, a Jet or a Function
        self.bindings: dict[str, int] = {}          # the tape nodes a run shows by name: `w`, `g.w`
        self.binding_spans: dict[str, Span] = {}
        self.later: dict[str, ast.Binding | ast.Definition] = {}  # what each name is bound by, in the program
        self.scope: dict[str, object] | None = None  # a function's parameters and a block's `val`s, inside one
        self.inlining: list[Function] = []          # the functions being inlined, outermost first
        self.calls: dict[tuple, tuple] = {}          # (function, argument values) -> result, within one statement
        self.inside: tuple[Span, ...] = ()           # the calls being evaluated (`evaluate`'s), outermost first
        self.printed: list[str] = []                # `println` lines, in program order
        self.jets: dict[int, np.ndarray] = {}       # node id -> the infinitesimal parts of a Jet shown by name
        self.jet_dim: tuple[int, Span] | None = None  # from `given jd: JetDim = JetDim(n)`
        self.declared = None                        # (output node, its text, wrt names) from `.backward(...)`
        self.max_bytes = max_bytes()
        self.read_ids: list[int] = []               # the nodes whose values decided what is recorded (`read`)
        self.files: list[tuple[Path, Span, np.ndarray]] = []  # each file `load` read, and what it read
        # Recording a row chunk (chunk_plan.Job.record): whether an array read holds the data rows; and
        # the leaves of constants made from the rows, by how (values.Made).
        self.row_data = row_data
        self.made_leaves: dict[int, Made] = {}
        self.unfolded: set[int] = set()  # the op nodes computed from such constants alone

    def loader(self, path: Path, span: Span) -> np.ndarray:
        """`load(path)`: the file read, and noted with what it held (`Run.files`)."""
        array = self.reader(path, span)
        self.files.append((path, span, array))
        return array

    # ------------------------------------------------------- statements

    def run(self, module: ast.Module, of: str | None = None, evaluate: bool = True) -> Run:
        """Record the program. Its ops are computed when the run ends, in tape
        order; with `evaluate=False`, each only when its value is first read
        (`Tape.defer`), which `train` uses so the values only the program as
        written has, and not its fused form, are never computed."""
        with no_cyclic_gc():  # the tape is long-lived and acyclic once computed (limits.py)
            deferral = self.tape.defer(self.diagnostics)
            try:
                run = self._run(module, of)
            finally:
                self.tape.stop_deferring()
            if evaluate:
                deferral.compute_through(len(self.tape.nodes) - 1)
            return run

    def _run(self, module: ast.Module, of: str | None) -> Run:
        self.later = {s.name: s for s in reversed(module.statements) if isinstance(s, (ast.Binding, ast.Definition))}
        values = module.bound_names()
        unknown = [name for name in self.overrides if name not in values]
        if unknown:
            raise SpireadError(f"{option('set', unknown[0])}: the program binds no `{unknown[0]}`",
                               notes=did_you_mean(unknown[0], values), exit_code=2)
        output = output_name = backward_wrt = None
        for statement in module.statements:
            match statement:
                case ast.Binding():
                    node = self.bind(statement)
                    if node is not None:
                        output, output_name = node, statement.name
                case ast.Definition():
                    self.define(statement)
                case ast.Given():
                    self.given(statement)
                case ast.ExprStmt() if _is_backward(statement.value):
                    self.declare_backward(statement.value)
                case ast.ExprStmt():
                    arg = self.evaluate(statement.value)
                    if not isinstance(arg.value, Unit):  # `println(x)` shows nothing
                        output, output_name = self.materialize(arg), self.text(statement.value)
        if self.declared is not None:  # `.backward(...)` names the output, whatever follows it
            output, output_name, backward_wrt = self.declared
        if of is not None:
            if of not in self.bindings:
                raise SpireadError(f"{option('of', of)}: the program binds no `{of}`",
                                   notes=did_you_mean(of, self.bindings, records=True), exit_code=2)
            output, output_name = self.tape.nodes[self.bindings[of]], of
        if output is None:
            raise SpireadError("the program computes nothing", self.source.end(),
                               ["write an expression, e.g. `loss = (x * x).sum`"])
        return Run(self.source, self.tape, self.bindings, self.binding_spans, output.id, output_name,
                   backward_wrt, self.diagnostics, self.printed, self.jets, self.read_ids, self.files,
                   made=self.made_leaves)

    def bind(self, statement: ast.Binding) -> Node | None:
        """Bind a top-level name; returns the node it names, if it names one."""
        name = statement.name
        if name in self.env:
            first = self.binding_spans[name]
            raise SpireadError(f"`{name}` is already bound, at {first.line}:{first.column}", statement.at,
                               [f"names are bound once; give this value another name, e.g. `{name}2`"],
                               related=[(first, "first bound here")])
        self.binding_spans[name] = statement.at
        if name in self.overrides and _is_backward(statement.value):
            raise SpireadError(f"{option('set', name)}: `{name}` is bound to gradients, which the program computes",
                               notes=[f"replace the values `{self.text(statement.value)}` is computed from"],
                               exit_code=2)
        if name in self.overrides:
            value = node = self.tape.leaf(self.overrides.pop(name), "input", statement.at, name)
        elif _is_backward(statement.value):
            value, node = self.gradient_record(name, statement.value), None
        else:
            arg = self.evaluate(statement.value)
            value = arg.value
            if isinstance(value, Node) and value.id in self.unfolded:  # numpy's backend folds it: an input
                value = Const(value.value, made=Made("copy", of=value.id))
            if isinstance(value, Const):
                value = node = self.leaf(value, "input", statement.at, name)
            elif isinstance(value, (Record, Function)) or is_pieces(value):
                node = None
            else:
                self.refuse_unit(arg, f"`{name}`")
                node = self.materialize(arg)
                if node.name is None:
                    node.name = name
        self.env[name] = value
        if isinstance(value, Record):
            self.bindings.update((f"{name}.{key}", field.id) for key, field in value.fields.items())
        if node is not None:
            self.bindings[name] = node.id
        return node

    def define(self, definition: ast.Definition) -> None:
        if definition.name in self.env:
            first = self.binding_spans[definition.name]
            raise SpireadError(f"`{definition.name}` is already bound, at {first.line}:{first.column}", definition.at,
                               related=[(first, "first bound here")])
        self.env[definition.name] = Function(definition.name, definition.params, definition.body)
        self.binding_spans[definition.name] = definition.at

    def given(self, statement: ast.Given) -> None:
        """Scala's `given`s are context for the compiler; the one that changes
        what a program computes is a JetDim, the number of a Jet's parts."""
        if statement.type.name != "JetDim":
            return
        value = self.evaluate(statement.value)
        if not isinstance(value.value, JetDim):
            raise SpireadError(f"a given JetDim is made by `JetDim(n)`, not `{self.text(statement.value)}`",
                               statement.value.span, ["e.g. `given jd: JetDim = JetDim(1)`"])
        if self.jet_dim is not None:
            first = self.jet_dim[1]
            raise SpireadError(f"a JetDim is already given, at {first.line}:{first.column}", statement.at,
                               related=[(first, "given here")])
        self.jet_dim = (value.value.n, statement.at)

    # ---------------------------------------------------------- gradients

    def declare_backward(self, call) -> tuple[Node, list[tuple[str, Node]]]:
        """`f.backward(a, b)` / `f.backward((x = a))`: names `f` the output and
        `a`, `b` the default --wrt. Returns `f` and each (key, value) asked for."""
        if self.scope is not None:
            raise SpireadError("`.backward(...)` is for the program's own statements, not inside a function",
                               call.span)
        receiver = call.callee.receiver if isinstance(call, ast.Call) else call.receiver
        output = self.materialize(self.evaluate(receiver))
        pairs, keys = [], []  # keys: each key and where it is given
        for arg in (call.args if isinstance(call, ast.Call) else []):
            items = [(k.name, k.value, k.span) for k in arg.items] if isinstance(arg, ast.NamedTuple) \
                else [(None, arg, arg.span)]
            for key, item, at in items:
                if not isinstance(item, ast.Name) or not isinstance(self.lookup(item), Node):
                    raise SpireadError("`.backward(...)` takes the names of the values to differentiate by",
                                       item.span, ["e.g. `loss.backward(weights)` or `loss.backward((weights = weights))`"])
                pairs.append((key or item.id, item))
                keys.append((key or item.id, at))
        refuse_repeats(keys, "`.backward(...)` is given the key `{name}` twice",
                       "name each value to differentiate by once", "first given here")
        self.declared = (output, self.text(receiver), [item.id for _, item in pairs] or None)
        return output, [(key, self.lookup(item)) for key, item in pairs]

    def gradient_record(self, name: str, call) -> Record:
        """`g = f.backward((a = a))`: the gradients of the scalar `f`, as values."""
        output, pairs = self.declare_backward(call)
        receiver = call.callee.receiver if isinstance(call, ast.Call) else call.receiver
        if output.shape != ():
            text = self.text(receiver)
            shown = text if isinstance(receiver, ast.Name) else f"({text})"
            raise SpireadError(f"`{text}` is {shape_str(output.shape)}, but a gradient is taken of a scalar",
                               receiver.span, [f"reduce it first, e.g. `{shown}.sum.backward(…)` or `.mean`"])
        if not pairs:
            raise SpireadError("`.backward()` bound to a name needs the values to differentiate by", call.span,
                               [f"e.g. `{name} = {self.text(receiver)}.backward((w = w))`"])
        # The backward pass is recorded on the tape (each op's derivative statement), so
        # a gradient is a value like any other and can be differentiated again.
        recorded_from = len(self.tape.nodes)
        ids = self.tape.backward_graph(output.id, [node.id for _, node in pairs], self.diagnostics)
        fields = {}
        for key, node in pairs:
            field = fields[key] = self.tape.nodes[ids[node.id]]
            # A gradient may be a value the program computed (∂(x · y)/∂x is y): its node keeps its own name.
            if field.name is None and field.id >= recorded_from:
                field.name = f"{name}.{key}"
        return Record(fields)

    # ------------------------------------------------------ expressions

    def evaluate(self, root) -> Arg:
        """Post-order evaluation with an explicit stack. A call that needs more
        expressions evaluated (a `def` inlined, `.map`) is a generator: it
        yields each expression and is sent back its value, and this loop
        evaluates it on the same stack, so a chain of a thousand `def`s nests
        no Python calls. Calls are shared within one statement (`calls`)."""
        self.calls = {}
        inside = self.inside  # a trial's evaluation (`inline_tentatively`) is inside the calls that began it
        # (node, kind, _EXPAND): expand; (node, kind, n): visit with n values; (node, call, _RESUME): resume the call
        stack = [(root, None, _EXPAND)]
        results: list[Arg] = []
        try:
            while stack:
                node, kind, n = stack.pop()
                if n == _RESUME:  # send a waiting call the value it asked for (None to start it)
                    try:
                        expr = kind.send(results.pop())
                    except StopIteration as done:
                        results.append(Arg(done.value, node))
                        self.inside = self.inside[:-1]
                        continue
                    stack.append((node, kind, _RESUME))
                    stack.append((expr, None, _EXPAND))  # the next expression it asks for
                    continue
                if n == _EXPAND:
                    kind, children = self.expand(node)
                    if children:
                        stack.append((node, kind, len(children)))
                        stack.extend([(child, None, _EXPAND) for child in reversed(children)])
                        continue
                if n > 0:
                    args = results[-n:]
                    del results[-n:]
                else:
                    args = []  # a leaf: visited as soon as it is reached
                value = self.visit(node, kind, args)
                if type(value) is GeneratorType:
                    stack.append((node, value, _RESUME))
                    results.append(None)
                    self.inside += (node.span,)
                else:
                    results.append(Arg(value, node))
        except BaseException as err:
            # Close the calls still waiting, innermost first, so each restores the scope it replaced.
            for _, call, n in reversed(stack):
                if n == _RESUME:
                    call.close()
            self.inside = inside
            if isinstance(err, SpireadError) and err.diagnostic.span is not None:
                err.called_from([node.span for node, _, n in stack if n == _RESUME])
            raise
        return results[0]

    def expand(self, node) -> tuple[str | None, list]:
        """What a node is, decided once, and the children to evaluate first."""
        match node:
            case ast.BinOp():
                return "operator", [node.left, node.right]
            case ast.Name() | ast.Number():
                return None, []
            case ast.Call() | ast.Attribute() if _is_backward(node):
                at = (node.callee if isinstance(node, ast.Call) else node).at
                raise SpireadError("`.backward(...)` must be a statement of its own, or the value of a binding", at,
                                   ["e.g. `loss.backward(weights)` on its own line, or `g = loss.backward(weights)` "
                                    "and then `g.weights`"])
            case ast.UnaryOp():
                return "operator", [node.operand]
            case ast.Attribute():
                return ("qualified", []) if self.qualified(node) else ("method", [node.receiver])
            case ast.Call():
                rest = node.args + [k.value for k in node.keywords]
                callee = node.callee
                if isinstance(callee, ast.Attribute) and not callee.grouped and not self.qualified(callee):
                    return "method", [callee.receiver] + rest   # `x.m(args)`
                if isinstance(callee, ast.Name) and isinstance(self.find(callee.id), Function):
                    return "apply", rest                          # `sq(2.0)`: a `def` or a lambda
                if self.function_name(callee):
                    function = FUNCTIONS.get(self.function_name(callee))
                    listed = ast.listed(node.args[0]) if len(node.args) == 1 else None
                    if function is not None and function.pieces and listed is not None:
                        rest = listed + [k.value for k in node.keywords]  # numpy's `hstack([a, b])`: a, b the pieces
                    return "function", rest                       # `zeros(2)`, `Matrix.fromRows(…)`
                return "selection", [callee] + rest               # `x(pairs)`, `(x.T)(pairs)`
            case ast.Subscript():
                return "subscript", [node.receiver] + node.args
            case ast.TupleLit() | ast.ListLit():
                return None, node.items
            case ast.Slice():
                return None, [p for p in (node.start, node.stop, node.step) if p is not None]
            case ast.NamedTuple():
                return None, [k.value for k in node.items]
        return None, []

    def visit(self, node, kind: str | None, args: list[Arg]):
        match node:
            # The commonest first: each case is an isinstance test.
            case ast.BinOp():  # quoted as `a @@ b`, without brackets around the whole
                name, params = OPERATORS[node.op]
                return self.apply(OPS[name], args, params, node.left.span.to(node.right.span), node.at, node.op)
            case ast.Name():
                return self.lookup(node)
            case ast.Number():
                return Const(np.array(node.value), fixed=True)
            case ast.NumberArray():
                self.check_size(node.value.shape, node.span, node.span)
                return Const(node.value.copy(), fixed=True)  # the tape may update it in place; the AST stays as parsed
            case ast.String():
                return Text(node.value)
            case ast.UnaryOp():
                if node.op == "+":
                    return self.tensor(args[0])
                return self.apply(OPS["neg"], args, {}, node.at.to(node.operand.span), node.at, "-")
            case ast.Attribute() if kind == "qualified":
                qualified = self.qualified(node)
                if qualified in QUALIFIED_SYMBOLS:
                    return Symbol(QUALIFIED_SYMBOLS[qualified])
                if qualified in FUNCTIONS:
                    raise SpireadError(f"`{qualified}` is a function; call it with arguments", node.span)
                raise SpireadError(f"unknown name `{qualified}`", node.span,
                                   did_you_mean(qualified, list(FUNCTIONS) + list(QUALIFIED_SYMBOLS)))
            case ast.Attribute():
                return self.method(args[0], node, [], {}, None)
            case ast.Call():
                count = len(args) - len(node.keywords)
                positional = args[:count]
                keywords = {k.name: a for k, a in zip(node.keywords, args[count:])}
                if kind == "method":
                    return self.method(positional[0], node.callee, positional[1:], keywords, node)
                if kind == "function":
                    return self.call_function(self.function_name(node.callee), positional, keywords, node)
                if kind == "apply":
                    return self.inline(self.find(node.callee.id), positional, node, keywords)
                if isinstance(positional[0].value, Function):  # `mk(3.0)(2.0)`: a call of the function a call gave
                    return self.inline(positional[0].value, positional[1:], node, keywords)
                if isinstance(node.callee, ast.Name):
                    self.refuse_hidden_function(node.callee, node.callee.id)
                return self.selection(positional[0], positional[1:], node, "select")
            case ast.Subscript():
                return self.subscript(args[0], args[1:], node)
            case ast.TupleLit():
                return TupleValue(args)
            case ast.Slice():
                parts = iter(args)
                return SliceValue(*[None if p is None else next(parts) for p in (node.start, node.stop, node.step)])
            case ast.ListLit():
                return self.array_literal(args, node)
            case ast.NamedTuple():
                raise SpireadError("a named tuple `(a = …)` is only for `.backward((a = a))`", node.span)
            case ast.Lambda():
                return Function(self.text(node), [node.param], node.body, dict(self.scope or {}))
        raise AssertionError(f"no rule for {type(node).__name__}")


def _is_backward(expr) -> bool:
    callee = expr.callee if isinstance(expr, ast.Call) else expr
    return isinstance(callee, ast.Attribute) and callee.name == "backward"
