"""What a name means where it is used: a function's parameters and a
block's `val`s, else the program's bindings; a dotted name (`Matrix.fromRows`,
`ReductionOps.Sum`) or a function's; and, for a name that means nothing
here, what it might be instead (bound later, a method, a reserved word,
another language's spelling)."""

from __future__ import annotations

from . import syntax_tree as ast
from .builtin_functions import FUNCTIONS
from .builtin_methods import METHOD_SUGAR, ROWS_TO_SCALAR
from .builtins import other_spelling
from .diagnostics import Span, SpireadError, did_you_mean
from .ops import METHODS
from .syntax_errors import RESERVED_WORDS, reserved_note
from .values import Arg, Symbol

QUALIFIED_SYMBOLS = {f"ReductionOps.{k.capitalize()}": k for k in ROWS_TO_SCALAR}


class Names:
    """How the interpreter resolves names: a part of `interpreter.Interpreter`
    (a mixin: `self` is the interpreter)."""

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
