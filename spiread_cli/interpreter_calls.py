"""Calls: a method (the table's ops and method sugar), a builtin
function, and a `def` or lambda inlined — the same function applied to the
same values within one statement computed once, and `.map`'s trial of a
function on a whole array kept only if it acts entry by entry."""

from __future__ import annotations

from typing import Callable

from . import syntax_tree as ast
from .builtin_functions import FUNCTIONS
from .builtin_methods import METHOD_SUGAR
from .builtins import check_arguments, other_spelling
from .diagnostics import SpireadError, did_you_mean
from .ops import METHODS
from .tape_nodes import Node
from .values import Arg, Function, Record


class Calls:
    """How the interpreter calls: a part of `interpreter.Interpreter` (a
    mixin: `self` is the interpreter)."""

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
        if keywords:
            args = self.by_position(function, args, keywords, call)
        check_arguments(f"`{function.name}`", (len(function.params),), len(args), call.span)
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

    @staticmethod
    def by_position(function: Function, args: list[Arg], keywords: dict[str, Arg], call) -> list[Arg]:
        """The arguments of a call with some given by name (`f(2, y = 3)`), in
        the order of the function's parameters."""
        params = [p.id for p in function.params]
        check_arguments(f"`{function.name}`", (len(params),), len(args) + len(keywords), call.span, keywords,
                        tuple(params))
        twice = [name for name in params[:len(args)] if name in keywords]
        if twice:
            raise SpireadError(f"`{function.name}` is given `{twice[0]}` twice: by position and by name",
                               keywords[twice[0]].expr.span)
        return args + [keywords[name] for name in params[len(args):]]

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
        # A value the trial read still decided something (that the trial is not kept): its leaves stay read.
        for i in [i for i in self.read_ids if i >= mark]:
            feeds = tape.feeding(i)
            self.read_ids.extend(j for j in range(mark) if feeds[j] and tape.nodes[j].op is None)
        self.read_ids[:] = [i for i in self.read_ids if i < mark]
        tape.forget(mark)
        return None
