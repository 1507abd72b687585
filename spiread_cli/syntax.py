"""Source text to a small typed AST, every node carrying its span.

The grammar (grammar/spiread.lark) holds all syntax. A Lark Transformer run
inline with the LALR parser builds the nodes bottom-up, so no recursion is
needed however deeply the program nests.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .diagnostics import SpireadError, Source, Span

# ---------------------------------------------------------------- AST nodes


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
    """`receiver[args]`: an entry, or a selection of (row, col) pairs."""
    receiver: object
    args: list
    span: Span
    at: Span


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


@dataclass(slots=True)
class Binding:
    name: str
    value: object
    span: Span       # the whole statement
    at: Span         # the bound name


@dataclass(slots=True)
class ExprStmt:
    value: object
    span: Span


@dataclass(slots=True)
class Module:
    statements: list
    source: Source


# ------------------------------------------------------------------ parsing

_BRACKETS = {"LPAR": "RPAR", "LSQB": "RSQB"}


class _BracketPostLexer:
    """Drops newlines inside () and [] and remembers what is still open,
    so an unclosed bracket can be reported where it was opened."""

    always_accept = ("_NL",)

    def __init__(self):
        self.open: list[Token] = []
        self.last: Token | None = None

    def process(self, stream):
        self.open = []
        self.last = None
        for token in stream:
            if token.type in _BRACKETS:
                self.open.append(token)
            elif token.type in ("RPAR", "RSQB") and self.open and _BRACKETS[self.open[-1].type] == token.type:
                self.open.pop()
            elif token.type == "_NL" and self.open:
                continue
            self.last = token
            yield token


def _span(node) -> Span:
    return node.span if not isinstance(node, Token) else Span.of_token(node)


@v_args(inline=True)
class _ToAst(Transformer):
    def number(self, tok):
        return Number(float(tok), Span.of_token(tok))

    def string(self, tok):
        return String(bytes(tok[1:-1], "utf-8").decode("unicode_escape"), Span.of_token(tok))

    def name(self, tok):
        return Name(str(tok), Span.of_token(tok))

    def binop(self, left, op, right):
        return BinOp("@@" if op == "@" else str(op), left, right, left.span.to(right.span), Span.of_token(op))

    def unop(self, op, operand):
        return UnaryOp(str(op), operand, Span.of_token(op).to(operand.span), Span.of_token(op))

    def attribute(self, receiver, name):
        return Attribute(receiver, str(name), receiver.span.to(Span.of_token(name)), Span.of_token(name))

    def _split(self, arguments):
        args = [a for a in (arguments or []) if not isinstance(a, Keyword)]
        keywords = [a for a in (arguments or []) if isinstance(a, Keyword)]
        return args, keywords

    def call(self, callee, lpar, arguments, rpar):
        args, keywords = self._split(arguments)
        at = callee.at.to(Span.of_token(rpar)) if isinstance(callee, Attribute) else Span.of_token(lpar).to(Span.of_token(rpar))
        return Call(callee, args, keywords, callee.span.to(Span.of_token(rpar)), at)

    def subscript(self, receiver, lsqb, arguments, rsqb):
        args, keywords = self._split(arguments)
        at = Span.of_token(lsqb).to(Span.of_token(rsqb))
        if keywords:
            raise SpireadError("`[...]` takes positions, not `name=value` arguments", keywords[0].span)
        return Subscript(receiver, args, receiver.span.to(Span.of_token(rsqb)), at)

    def arguments(self, *items):
        return list(items)

    def keyword(self, name, value):
        return Keyword(str(name), value, Span.of_token(name).to(value.span))

    def paren(self, lpar, expr, rpar):
        return expr

    def tuple(self, lpar, *rest):
        return TupleLit(list(rest[:-1]), Span.of_token(lpar).to(Span.of_token(rest[-1])))

    def named_tuple(self, lpar, *rest):
        return NamedTuple(list(rest[:-1]), Span.of_token(lpar).to(Span.of_token(rest[-1])))

    def list(self, lsqb, *rest):
        items = [item for item in rest[:-1] if item is not None]
        return ListLit(items, Span.of_token(lsqb).to(Span.of_token(rest[-1])))

    def binding(self, name, value):
        return Binding(str(name), value, Span.of_token(name).to(value.span), Span.of_token(name))

    def expr_stmt(self, value):
        return ExprStmt(value, value.span)

    def ignored(self, tok):
        return None

    def start(self, *statements):
        return [s for s in statements if s is not None]


_parser: Lark | None = None
_postlexer = _BracketPostLexer()


def _get_parser() -> Lark:
    global _parser
    if _parser is None:
        grammar = resources.files("spiread_cli.grammar").joinpath("spiread.lark").read_text("utf-8")
        _parser = Lark(grammar, parser="lalr", postlex=_postlexer, transformer=_ToAst(),
                       maybe_placeholders=True, cache=True)
    return _parser


# What users call the terminals Lark reports.
_WORDS = {
    "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`", "POW": "`**`", "MATMUL": "`@@`",
    "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`", "DOT": "`.`",
    "EQUAL": "`=`", "SEMICOLON": "`;`", "NUMBER": "a number", "STRING": "a string", "NAME": "a name",
    "_NL": "end of line", "$END": "end of file", "VAL": "`val`", "IGNORED": "an import",
}
_EXPRESSION_STARTS = {"NUMBER", "NAME", "LPAR", "LSQB", "MINUS", "STRING"}
_OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "POW", "MATMUL", "EQUAL", "COMMA"}


def _describe(token: Token) -> str:
    if token.type in ("$END",):
        return "end of file"
    if token.type == "_NL":
        return "end of line"
    return f"`{token}`"


def _syntax_error(err: UnexpectedInput, source: Source) -> SpireadError:
    if isinstance(err, UnexpectedCharacters):
        char = source.text[err.pos_in_stream] if err.pos_in_stream < len(source.text) else ""
        span = Span(err.line, err.column, err.line, err.column + 1, err.pos_in_stream, err.pos_in_stream + 1)
        if char == '"':
            return SpireadError("unterminated string", span, ["a string ends with `\"` on the same line"])
        return SpireadError(f"unexpected character `{char}`", span)

    token = getattr(err, "token", None)
    expected = set(getattr(err, "expected", ()) or ())
    at_end = token is None or token.type == "$END"
    if at_end or (isinstance(err, UnexpectedEOF)):
        pos = len(source.text)
        lines = source.text.splitlines() or [""]
        span = Span(len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2, pos, pos)
    else:
        span = Span.of_token(token)
    if _postlexer.open and (at_end or token.type in ("RPAR", "RSQB")):
        opener = _postlexer.open[-1]
        closer = ")" if opener.type == "LPAR" else "]"
        return SpireadError(f"unclosed `{opener}` opened at {opener.line}:{opener.column}",
                            Span.of_token(opener), [f"add a `{closer}` to close it"])
    found = "end of file" if at_end else _describe(token)
    if expected & _EXPRESSION_STARTS and expected >= {"NUMBER", "NAME"}:
        prev = previous_token(source, span)
        after = f" after `{prev}`" if prev else ""
        return SpireadError(f"expected an expression{after}, found {found}", span)
    words = sorted({_WORDS.get(e, f"`{e}`") for e in expected})
    hint = f"; expected {', '.join(words[:-1]) + ' or ' + words[-1] if len(words) > 1 else words[0]}" if words else ""
    return SpireadError(f"unexpected {found}{hint}", span)


def previous_token(source: Source, span: Span) -> str:
    """The last non-blank piece of text before `span` on the same line (for messages)."""
    before = source.text[:span.start].rstrip(" \t")
    if not before or before.endswith("\n"):
        return ""
    for op in ("**", "@@", "+", "-", "*", "/", "@", "=", ",", "(", "["):
        if before.endswith(op):
            return op
    return ""


def parse(source: Source) -> Module:
    """Parse a whole program; raises SpireadError with a located message."""
    try:
        statements = _get_parser().parse(source.text)
    except UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    except Exception as err:  # errors raised inside transformer callbacks arrive wrapped
        inner = getattr(err, "orig_exc", None)
        if isinstance(inner, SpireadError):
            raise inner from None
        raise
    return Module(statements, source)


def parse_expression(text: str, source_name: str = "<--set>"):
    """Parse a single expression (for `--set NAME=[[1,2],[3,4]]`)."""
    module = parse(Source(source_name, text))
    if len(module.statements) != 1 or not isinstance(module.statements[0], ExprStmt):
        raise SpireadError(f"expected one expression, got `{text}`")
    return module.statements[0].value
