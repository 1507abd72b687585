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
"""

from __future__ import annotations

from pathlib import Path
from types import GeneratorType
from typing import Callable

import numpy as np

from . import syntax_tree as ast
from .builtin_functions import FUNCTIONS
from .builtin_methods import METHOD_SUGAR, ROWS_TO_SCALAR
from .builtins import check_arguments, other_spelling
from .data import load_array
from .diagnostics import Diagnostics, Source, Span, SpireadError, did_you_mean, option, refuse_repeats, shape_str
from .limits import check_shape, max_bytes, no_cyclic_gc
from .ops import METHODS, OPS, Op, ShapeError
from .rules_printed import key_text
from .run import Run
from .syntax_errors import RESERVED_WORDS, reserved_note
from .tape import Tape
from .tape_nodes import Node
from .values import Arg, Const, Function, Jet, JetDim, Pairs, Record, SliceValue, Symbol, Text, TupleValue, Unit

QUALIFIED_SYMBOLS = {f"ReductionOps.{k.capitalize()}": k for k in ROWS_TO_SCALAR}
# Each operator's op and parameters: the comparisons are the 0/1 masks of `indicator`.
OPERATORS = {"+": ("add", {}), "-": ("sub", {}), "*": ("mul", {}), "/": ("div", {}), "%": ("remainder", {}),
             "@@": ("matmul", {}), "**": ("pow", {}),
             **{relation: ("indicator", {"relation": relation}) for relation in (">", ">=", "<", "<=", "==", "!=")}}
_EXPAND, _RESUME = -1, -2  # what `evaluate` does with a stack entry, besides visiting a node with n >= 0 values


class Interpreter:
    def __init__(self, source: Source, overrides: dict[str, np.ndarray] | None = None,
                 base_dir: Path | None = None, loader: Callable[[Path, Span], np.ndarray] = load_array):
        self.source = source
        self.overrides = dict(overrides or {})
        self.base_dir = base_dir or Path.cwd()
        # How `load(path)` reads a file: whole, or (spiread_cli/chunked.py) one row chunk of it.
        self.loader = loader
        self.tape = Tape(source=source)
        self.diagnostics = Diagnostics()
        self.env: dict[str, object] = {}            # name -> value: a Node, a Record, a Jet or a Function
        self.bindings: dict[str, int] = {}          # the tape nodes a run shows by name: `w`, `g.w`
        self.binding_spans: dict[str, Span] = {}
        self.later: dict[str, ast.Binding | ast.Definition] = {}  # what each name is bound by, in the program
        self.scope: dict[str, object] | None = None  # a function's parameters and a block's `val`s, inside one
        self.inlining: list[Function] = []          # the functions being inlined, outermost first
        self.calls: dict[tuple, tuple] = {}          # (function, argument values) -> result, within one statement
        self.printed: list[str] = []                # `println` lines, in program order
        self.jets: dict[int, np.ndarray] = {}       # node id -> the infinitesimal parts of a Jet shown by name
        self.jet_dim: tuple[int, Span] | None = None  # from `given jd: JetDim = JetDim(n)`
        self.declared = None                        # (output node, its text, wrt names) from `.backward(...)`
        self.max_bytes = max_bytes()

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
        values = [s.name for s in module.statements if isinstance(s, ast.Binding)]
        unknown = [name for name in self.overrides if name not in values]
        if unknown:
            raise SpireadError(f"`--set {unknown[0]}=…`: the program binds no `{unknown[0]}`",
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
                raise SpireadError(f"`--of {of}`: the program binds no `{of}`",
                                   notes=did_you_mean(of, self.bindings), exit_code=2)
            output, output_name = self.tape.nodes[self.bindings[of]], of
        if output is None:
            raise SpireadError("the program computes nothing", None,
                               ["write an expression, e.g. `loss = (x * x).sum`"], origin=self.source.name)
        return Run(self.source, self.tape, self.bindings, self.binding_spans, output.id, output_name,
                   backward_wrt, self.diagnostics, self.printed, self.jets)

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
            if isinstance(value, Const):
                value = node = self.tape.leaf(value.value, "input", statement.at, name)
            elif isinstance(value, (Record, Function)) or _pieces(value):
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
        ids = self.tape.backward_graph(output.id, [node.id for _, node in pairs], self.diagnostics)
        fields = {}
        for key, node in pairs:
            field = fields[key] = self.tape.nodes[ids[node.id]]
            if field.name is None:
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
                else:
                    results.append(Arg(value, node))
        except BaseException:
            # Close the calls still waiting, innermost first, so each restores the scope it replaced.
            for _, call, n in reversed(stack):
                if n == _RESUME:
                    call.close()
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
                    if function is not None and function.pieces and len(node.args) == 1 and isinstance(
                            node.args[0], (ast.ListLit, ast.TupleLit)):  # numpy's `hstack([a, b])`: a, b the pieces
                        rest = node.args[0].items + [k.value for k in node.keywords]
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

    def qualified(self, node) -> str | None:
        """`Matrix.fromRows`, `ReductionOps.Sum`: a dotted name, not a method call."""
        if isinstance(node, ast.Attribute) and isinstance(node.receiver, ast.Name) and self.find(node.receiver.id) is None:
            name = f"{node.receiver.id}.{node.name}"
            if name in FUNCTIONS or name in QUALIFIED_SYMBOLS or node.receiver.id in ("Matrix", "ReductionOps", "Jet"):
                return name
        return None

    def function_name(self, callee) -> str | None:
        if isinstance(callee, ast.Name) and self.find(callee.id) is None:
            return callee.id
        if isinstance(callee, ast.Subscript) and callee.args and all(
                isinstance(a, ast.Name) and self.find(a.id) is None for a in callee.args):
            return self.qualified(callee.receiver)  # `Jet.h[Double](0)`: Scala's type argument, ignored
        return self.qualified(callee)

    def visit(self, node, kind: str | None, args: list[Arg]):
        match node:
            # The commonest first: each case is an isinstance test.
            case ast.BinOp():  # quoted as `a @@ b`, without brackets around the whole
                name, params = OPERATORS[node.op]
                return self.apply(OPS[name], args, params, node.left.span.to(node.right.span), node.at, node.op)
            case ast.Name():
                return self.lookup(node)
            case ast.Number():
                return Const(np.array(node.value))
            case ast.NumberArray():
                self.check_size(node.value.shape, node.span, node.span)
                return Const(node.value.copy())  # the tape may update it in place; the AST stays as parsed
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

    def refuse_hidden_function(self, name: ast.Name, function: str) -> None:
        """`zeros = 3` then `zeros(2, 2)`: the binding hides the function; say
        so rather than treat the call as a selection from the value."""
        if function in FUNCTIONS and name.id in self.env:
            bound = self.binding_spans[name.id]
            raise SpireadError(f"`{name.id}` here is the value bound at {bound.line}:{bound.column}, which hides "
                               f"the function `{function}`", name.span,
                               [f"give the value another name, e.g. `{name.id}2`, to call `{function}`"],
                               related=[(bound, "bound here")])

    def find(self, name: str):
        """What a name means here: a parameter or block `val`, else a program binding."""
        if self.scope is not None and name in self.scope:
            return self.scope[name]
        return self.env.get(name)

    def lookup(self, name: ast.Name):
        found = self.find(name.id)
        if found is not None:
            return found
        if name.id in ROWS_TO_SCALAR:
            return Symbol(name.id)
        raise self.unknown(name.id, "name", name.span, did_you_mean(name.id, self.env))

    def unknown(self, name: str, what: str, span: Span, guesses: tuple[str, ...], args: list[Arg] = ()) -> SpireadError:
        """An unknown name or function (`what`): say where it is bound, if
        later, or what it is, if it is a method or a reserved word; else guess."""
        later = self.later.get(name)
        if isinstance(later, ast.Definition):
            return SpireadError(f"`{name}` is defined below, on line {later.at.line}", span,
                                ["a `def` can be called only after it; move it above this line"],
                                related=[(later.at, "defined here")])
        if later is not None:
            return SpireadError(f"`{name}` is used before it is bound (at {later.at.line}:{later.at.column})", span,
                                related=[(later.at, "bound here, later")])
        spelled = other_spelling(name)
        if (name in METHODS or name in METHOD_SUGAR) and not (spelled and len(args) > 1):  # `max(a, b)`: maximum
            if args:
                receiver, *rest = args
                call = f"({', '.join(self.text(a.expr) for a in rest)})" if rest else ""
                spelled = f"{self.operand_text(receiver.expr)}.{name}{call}"
            else:
                spelled = f"x.{name}"
            return SpireadError(f"unknown {what} `{name}`", span,
                                [f"`{name}` is a method: it follows its value, `{spelled}`"])
        if name in FUNCTIONS:  # a function named without its arguments: `v.map(zeros)`
            return SpireadError(f"`{name}` is a function; call it with arguments, e.g. `{name}(…)`", span)
        if name in RESERVED_WORDS:
            return SpireadError(f"unknown {what} `{name}`", span, [reserved_note(name)])
        return SpireadError(f"unknown {what} `{name}`", span, spelled or guesses)

    def operand_text(self, expr) -> str:
        """An expression's text, bracketed if it needs brackets before a `.method`."""
        text = self.text(expr)
        loose = isinstance(expr, ast.BinOp | ast.UnaryOp | ast.Lambda) and not text.startswith("(")
        return f"({text})" if loose else text

    # ----------------------------------------------------------- tensors

    def text(self, node) -> str:
        return self.source.snippet(node.span)

    def tensor(self, arg: Arg) -> Node | Const:
        """An array operand, or an error saying what the argument is instead."""
        value = arg.value
        if isinstance(value, (Node, Const, Jet)):
            return value
        if isinstance(value, TupleValue):
            if not _pieces(value):
                return Const(np.array([float(a.value.value) for a in value.items]))
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
            return self.tape.leaf(value.value, "const", arg.expr.span)
        return value

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
        if Jet in kinds:
            return self.jet_apply(op, values, params, span, at, label)
        if kinds == {Const}:
            return Const(self.tape.fold(op, [v.value for v in values], params, at, label, self.diagnostics))
        inputs = tuple([v.id if type(v) is Node else self.materialize(a).id for v, a in zip(values, operands)])
        return self.tape.record(op, inputs, params, at, label, self.diagnostics, shape)

    def jet_apply(self, op: Op, values: list, params: dict, span: Span, at: Span, label: str) -> Jet:
        """An op on Jets: the real part by the op's primal rule, the
        infinitesimal parts by its forward-mode (jvp) rule, one per JetDim
        direction (the tangents' batch axis). Other operands are constants."""
        reals = [v.value for v in values]
        value = self.tape.fold(op, reals, params, at, label, self.diagnostics)
        if value.shape != ():
            raise SpireadError(f"`{self.source.snippet(span)}` would be a Jet of {shape_str(value.shape)}; "
                               "a Jet is a number", at)
        with np.errstate(all="ignore"):
            tangents = op.jvp([v.tangents if isinstance(v, Jet) else None for v in values], value, *reals, **params)
        return Jet(value, np.asarray(tangents, dtype=np.float64))

    def check_size(self, shape, span: Span, at: Span) -> None:
        check_shape(shape, lambda: f"`{self.source.snippet(span)}`", at, self.max_bytes)

    # ---------------------------------------------------------- methods

    def method(self, receiver: Arg, attr: ast.Attribute, args: list[Arg], keywords: dict[str, Arg], call):
        name = attr.name
        span = (call or attr).span
        if isinstance(receiver.value, Record) and call is None:
            return self.gradient_field(receiver, attr)
        sugar = METHOD_SUGAR.get(name)
        op = METHODS.get(name)
        if isinstance(attr.receiver, ast.Name):
            self.refuse_hidden_function(attr.receiver, f"{attr.receiver.id}.{name}")
        if sugar is None and op is None:
            if FUNCTIONS.get(name) and FUNCTIONS[name].counts == (1,):  # `x.rows`, `3.eye`
                notes = [f"`{name}` is a function: it takes its value in brackets, "
                         f"`{name}({self.text(receiver.expr)})`"]
            else:
                notes = other_spelling(name) or did_you_mean(name, list(METHODS) + list(METHOD_SUGAR) + ["backward"])
            raise SpireadError(f"unknown method `.{name}`", attr.at, notes)
        counts = sugar.counts if sugar else (op.arity - 1 + len(op.params),)
        check_arguments(f"`.{name}`", counts, len(args), attr.at if not keywords else span, keywords)
        if sugar is not None:
            return sugar.body(self, receiver, args, attr, call)
        operands = op.arity - 1  # after the receiver
        params = {p: self.number(a, f"the argument of `.{name}`") for p, a in zip(op.params, args[operands:])}
        at = attr.at if call is None else attr.at.to(call.span)
        return self.apply(op, [receiver, *args[:operands]], params, span, at, name)

    def gradient_field(self, record: Arg, attr: ast.Attribute) -> Node:
        """`g.a`: the gradient of `g`'s output with respect to `a`."""
        fields = record.value.fields
        if attr.name not in fields:
            raise SpireadError(f"`{self.text(record.expr)}` holds no gradient `{attr.name}`; it holds "
                               + ", ".join(f"`{k}`" for k in fields), attr.at, did_you_mean(attr.name, fields))
        return fields[attr.name]

    def number(self, arg: Arg, what: str) -> float:
        value = self.tensor(arg)
        if value.shape != ():
            raise SpireadError(f"{what} must be a number, but `{self.text(arg.expr)}` is "
                               f"{shape_str(value.shape)}", arg.expr.span)
        return float(value.value)

    def integer(self, arg: Arg, what: str) -> int:
        x = self.number(arg, what)
        if not float(x).is_integer():
            raise SpireadError(f"{what} must be a whole number, but `{self.text(arg.expr)}` is {x:g}", arg.expr.span)
        return int(x)

    def integers(self, arg: Arg, what: str) -> np.ndarray:
        array = self.tensor(arg).value
        if array.ndim != 1:
            raise SpireadError(f"{what} must be a vector of positions, but `{self.text(arg.expr)}` is "
                               f"{shape_str(array.shape)}", arg.expr.span)
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise SpireadError(f"{what} must hold whole numbers: `{self.text(arg.expr)}`", arg.expr.span)
        return array.astype(np.intp)

    # -------------------------------------------------------- selection

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
            rows.append(self.integer(t.value.items[0], "a row position"))
            cols.append(self.integer(t.value.items[1], "a column position"))
        return Pairs(np.array(rows, dtype=np.intp), np.array(cols, dtype=np.intp))

    def selection(self, receiver: Arg, args: list[Arg], call, op_name: str):
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
        if _pieces(receiver.value):
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
                                      f"{n if k > 0 else -n}, as numpy does", bound.expr.span,
                                      [f"`{self.text(receiver.expr)}` has {n} {where}: a bound runs from {-n} to {n}"])
            bounds.append(k)
        return slice(bounds[0], bounds[1], None if part.step is None else step)

    # -------------------------------------------------------- functions

    def call_function(self, name: str, args: list[Arg], keywords: dict[str, Arg], call):
        function = FUNCTIONS.get(name)
        if function is None:
            raise self.unknown(name, "function", call.callee.span, did_you_mean(name, list(FUNCTIONS) + list(self.env)),
                               args)
        check_arguments(f"`{name}`", function.counts, len(args), call.span, keywords, function.keywords)
        return function.body(self, args, keywords, call)

    def inline(self, function: Function, args: list[Arg], call, keywords: dict[str, Arg] | None = None):
        """A call of a `def` or a lambda: its body is evaluated here, with its
        parameters bound to the arguments, so its ops go on the tape pointing
        at the body's source. A generator (see `evaluate`): it yields the
        body's expressions and returns the call's value.

        The same function applied to the same values within one statement is
        computed once (`f(x) + f(x)`, and a chain of `def`s each calling the
        previous twice, stay linear): a function sees only its arguments and
        names bound once, so the result is the same. A call that printed is
        not shared, so each call prints."""
        check_arguments(f"`{function.name}`", (len(function.params),), len(args), call.span, keywords)
        key = (id(function), *[id(a.value) for a in args])
        shared = self.calls.get(key)
        if shared is not None:
            return shared[0]
        if any(f is function for f in self.inlining):
            raise SpireadError(f"`{function.name}` calls itself; functions are inlined, so they cannot be recursive",
                               call.span)
        printed = len(self.printed)
        saved = self.scope
        self.scope = {**(function.scope or {}), **{p.id: a.value for p, a in zip(function.params, args)}}
        self.inlining.append(function)
        try:
            body = function.body
            if isinstance(body, ast.Block):
                for statement in body.bindings:
                    arg = yield statement.value
                    self.refuse_unit(arg, f"`{statement.name}`")
                    self.scope[statement.name] = arg.value
                body = body.value
            value = (yield body).value
        finally:
            self.scope = saved
            self.inlining.pop()
        if len(self.printed) == printed:
            # The arguments are kept with the result, so the ids in the key stay theirs.
            self.calls[key] = (value, function, args)
        return value

    def inline_tentatively(self, function: Function, args: list[Arg], call, keep: Callable):
        """`inline` on an evaluation stack of its own, its value kept if
        `keep(tape nodes, first node it recorded, value)` holds (`.map` tries
        f on a whole array). Otherwise, or if it fails with an error, nothing
        of it stays — nodes, warnings, printed lines, Jets, shared calls —
        and None."""
        tape, calls = self.tape, self.calls
        mark, printed = len(tape.nodes), len(self.printed)
        trial = self.inline(function, args, call)
        try:
            asked = next(trial)
            while True:
                asked = trial.send(self.evaluate(asked))
        except StopIteration as done:
            value = done.value
        except SpireadError:
            trial.close()
            value = None
        finally:
            self.calls = calls  # `evaluate` began its own; the trial's are not kept
        if value is not None and keep(tape.nodes, mark, value):
            return value
        dropped = {n.span for n in tape.nodes[mark:]}
        self.diagnostics.warnings[:] = [w for w in self.diagnostics.warnings if w.span not in dropped]
        del self.printed[printed:]
        for i in [i for i in self.jets if i >= mark]:
            del self.jets[i]
        tape.forget(mark)
        return None

    def array_literal(self, items: list[Arg], node):
        """`[1, 2]`, `[[1, 2], [3, 4]]`, `Array(1, 2)`: stack the items (a
        differentiable op when an item depends on an input)."""
        if not items:
            return Const(np.zeros(0))
        if all(isinstance(a.value, TupleValue) for a in items):
            return self.tuples_to_pairs(items)
        return self.apply(OPS["stack"], items, {"axis": 0}, node.span, node.at, "stack")


def _pieces(value) -> bool:
    """A tuple of values that is not a list of numbers: `split`'s pieces."""
    return isinstance(value, TupleValue) and not all(
        isinstance(a.value, Const) and a.value.value.ndim == 0 for a in value.items)


def _is_backward(expr) -> bool:
    callee = expr.callee if isinstance(expr, ast.Call) else expr
    return isinstance(callee, ast.Attribute) and callee.name == "backward"
