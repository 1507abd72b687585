"""The AST: small typed nodes, each carrying `span` (the whole expression,
whose source text appears in messages) and `at` (where a diagnostic
points: the operator, the method name). Built by syntax.py's AST builder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .diagnostics import Source, Span


class _WholeSpan:
    """For nodes whose diagnostics point at the whole node."""
    __slots__ = ()

    @property
    def at(self) -> Span:
        return self.span


@dataclass(slots=True)
class Number(_WholeSpan):
    value: float
    span: Span


@dataclass(slots=True)
class String(_WholeSpan):
    value: str
    span: Span


@dataclass(slots=True)
class Name(_WholeSpan):
    id: str
    span: Span


@dataclass(slots=True)
class BinOp:
    op: str          # "+", "-", "*", "/", "@@", "**"
    left: object
    right: object
    span: Span       # the whole expression
    at: Span         # the operator, where diagnostics point


@dataclass(slots=True)
class UnaryOp:
    op: str          # "-" or "+"
    operand: object
    span: Span
    at: Span


@dataclass(slots=True)
class Attribute:
    """`receiver.name`: a method without arguments, or a qualified name."""
    receiver: object
    name: str
    span: Span
    at: Span         # the name after the dot
    grouped: bool = False  # written `(x.m)`: then `(x.m)(args)` selects from its value


@dataclass(slots=True)
class Keyword:
    name: str
    value: object
    span: Span


@dataclass(slots=True)
class Call:
    """`callee(args)`: a function, a method with arguments, or a selection."""
    callee: object
    args: list
    keywords: list[Keyword]
    span: Span
    at: Span


@dataclass(slots=True)
class Subscript:
    """`receiver[args]`: an entry, a slice, or a selection of (row, col) pairs."""
    receiver: object
    args: list
    span: Span
    at: Span


@dataclass(slots=True)
class Slice(_WholeSpan):
    """`a:b:k` in `x[...]`, numpy's slice; each part may be left out (None)."""
    start: object
    stop: object
    step: object
    span: Span


@dataclass(slots=True)
class TupleLit(_WholeSpan):
    items: list
    span: Span


@dataclass(slots=True)
class NamedTuple(_WholeSpan):
    """`(w1 = w1, w2 = w2)`, as in `loss.backward((weights = weights))`."""
    items: list[Keyword]
    span: Span


@dataclass(slots=True)
class ListLit(_WholeSpan):
    items: list
    span: Span


@dataclass(slots=True, eq=False)
class NumberArray(_WholeSpan):
    """A literal of plain numbers, `[1, -2.5]` or `[[1, 2], [3, 4]]`, read as
    one array (the NUMBERS terminal): a long literal is data."""
    value: np.ndarray
    span: Span
    rows: tuple = ()  # a matrix literal's rows' spans, for messages about one row


def listed(node) -> list | None:
    """The items of a bracket literal read as numpy reads a list (the pieces
    of `hstack([a, b])`): a literal of numbers gives its rows, or its numbers;
    None for anything else."""
    if isinstance(node, (ListLit, TupleLit)):
        return node.items
    if isinstance(node, NumberArray):
        if node.value.ndim == 2:
            return [NumberArray(row, at) for row, at in zip(node.value, node.rows)]
        return [Number(float(entry), node.span) for entry in node.value]
    return None


@dataclass(slots=True)
class Binding:
    name: str
    value: object
    span: Span       # the whole statement
    at: Span         # the bound name


@dataclass(slots=True)
class TypeName(_WholeSpan):
    """A Scala type, read and ignored but for its name: `JetDim`, `Tej[Double]` (`Tej`)."""
    name: str
    span: Span


@dataclass(slots=True)
class Block(_WholeSpan):
    """`{ val a = …; a * a }`: bindings, then the expression that is its value."""
    bindings: list[Binding]
    value: object
    span: Span


@dataclass(slots=True)
class Definition:
    """`def name(x: Double, y) = body`: inlined wherever it is called."""
    name: str
    params: list[Name]
    body: object         # an expression or a Block
    span: Span
    at: Span             # the name


@dataclass(slots=True)
class Lambda(_WholeSpan):
    """`x => x * x`, as an argument of `.map`."""
    param: Name
    body: object
    span: Span


@dataclass(slots=True)
class Given:
    """`given jd: JetDim = JetDim(1)`: only a JetDim's is read."""
    type: TypeName
    value: object
    span: Span
    at: Span             # the word `given`


@dataclass(slots=True)
class ExprStmt:
    value: object
    span: Span


@dataclass(slots=True)
class Module:
    statements: list
    source: Source

    def bound_names(self) -> list[str]:
        """The names the program binds, in order: what `--set` and bindings may replace."""
        return [s.name for s in self.statements if isinstance(s, Binding)]
