"""The AST builder: the grammar's rule callbacks, each building one
syntax_tree node from its rule's children (tokens read into numbers,
strings and number arrays), with its span. Run inline with the LALR parse
(syntax.py), bottom-up, so nothing recurses over the tree; the fast path
(parse_driver.py) and Lark's own parser call the same methods."""

from __future__ import annotations

import math
import re

import numpy as np

from .diagnostics import BEYOND_FLOAT64, SpireadError, Span, refuse_repeats
from .syntax_errors import reserved_note
from .syntax_tree import (Attribute, BinOp, Binding, Block, Call, Definition, ExprStmt, Given, Keyword, Lambda,
                          ListLit, Name, NamedTuple, Number, NumberArray, Slice, String, Subscript, TupleLit,
                          TypeName, UnaryOp)

# Not `from typing import TYPE_CHECKING` (see __init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark import Token


_ESCAPE = re.compile(r"\\(.)")


def _unescape(match: re.Match) -> str:
    """`\\"`, `\\\\`, `\\n`, `\\t`; any other backslash stays as written, so a
    Windows path like "C:\\data\\x.csv" means what it says."""
    char = match.group(1)
    return {"n": "\n", "t": "\t", '"': '"', "\\": "\\"}.get(char, "\\" + char)


_COMMENT = re.compile(r"(?:#|//)[^\n]*")
_BRACKET_OR_COMMENT = re.compile(r"(?:#|//)[^\n]*|[\[\]\n]")


def _numbers(text: str) -> np.ndarray:
    """The entries of one NUMBERS row, `[1, -2.5, 3,]`: between the brackets
    there are only signed numbers, commas, blanks and comments."""
    parts = text[text.index("[") + 1:text.rindex("]")].split(",")
    if not parts[-1].strip():
        parts.pop()  # a trailing comma
    return np.fromiter(map(float, parts), dtype=np.float64, count=len(parts))


_NUMBER_OR_COMMENT = re.compile(r"(?:#|//)[^\n]*|(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?")
# After `import`: a name (Scala's `import a.b.{c, d}`, `import a.*`), else the line is not an import.
_IMPORT_PATH = re.compile(r"[ \t]+[A-Za-z_`]")


def _refuse_out_of_range(tok: Token) -> None:
    """A number literal (alone, or an entry of a NUMBERS token) too large for
    a float64 is an error at that number, as it is in a JSON file."""
    for match in _NUMBER_OR_COMMENT.finditer(tok):
        if match.group()[0] in "#/" or float(match.group()) != math.inf:
            continue
        before = tok[:match.start()]
        line = tok.line + before.count("\n")
        column = tok.column + len(before) if line == tok.line else len(before) - before.rindex("\n")
        start = tok.start_pos + match.start()
        raise SpireadError(f"the number `{match.group()}` is {BEYOND_FLOAT64}", Span(
            line, column, line, column + len(match.group()), start, start + len(match.group())))


def _rows(tok: Token) -> list[tuple[str, Span]]:
    """The rows of a NUMBERS matrix token, each with its text and span."""
    rows, line, line_start, depth, opened = [], tok.line, tok.start_pos - (tok.column - 1), 0, None
    for match in _BRACKET_OR_COMMENT.finditer(tok.value):
        char, pos = match.group(), tok.start_pos + match.start()
        if char == "\n":
            line, line_start = line + 1, pos + 1
        elif char == "[":
            depth += 1
            if depth == 2:
                opened = (line, pos - line_start + 1, pos)
        elif char == "]":
            if depth == 2:
                start = opened[2] - tok.start_pos
                span = Span(opened[0], opened[1], line, pos - line_start + 2, opened[2], pos + 1)
                rows.append((tok.value[start:match.end()], span))
            depth -= 1
    return rows


def _span(node) -> Span:
    return node.span if not isinstance(node, str) else Span.of_token(node)


class AstBuilder:
    """Each method gets the children of one rule as a list, tokens as Lark's
    Tokens (from Lark's parser) or `_Token`s (from the fast path): both are
    str with the same attributes. A plain class, not a Lark Transformer, so
    that the fast path needs no Lark; Lark calls its methods the same way."""

    def number(self, children):
        tok, = children
        value = float(tok)
        if value == math.inf:
            _refuse_out_of_range(tok)
        return Number(value, Span.of_token(tok))

    def numbers(self, children):
        tok, = children
        text = _COMMENT.sub("", tok.value) if "#" in tok.value or "/" in tok.value else tok.value
        span = Span.of_token(tok)
        if text[text.index("[") + 1:].lstrip()[0] != "[":
            values = _numbers(text)
            if np.isinf(values).any():
                _refuse_out_of_range(tok)
            return NumberArray(values, span)
        rows = _rows(tok)
        values = [_numbers(_COMMENT.sub("", row)) for row, _ in rows]
        if any(np.isinf(v).any() for v in values):
            _refuse_out_of_range(tok)
        if len({len(v) for v in values}) == 1:
            return NumberArray(np.array(values), span, tuple(at for _, at in rows))  # rows of one length: np.stack's checks are not needed
        # Rows of different lengths: a list of rows, so the error is the one
        # any other list of vectors gets.
        return ListLit([NumberArray(v, row_span) for v, (_, row_span) in zip(values, rows)], span)

    def string(self, children):
        tok, = children
        return String(_ESCAPE.sub(_unescape, tok[1:-1]), Span.of_token(tok))

    def name(self, children):
        tok, = children
        return Name(str(tok), Span.of_token(tok))

    def binop(self, children):
        left, op, right = children
        return BinOp("@@" if op == "@" else str(op), left, right, left.span.to(right.span), Span.of_token(op))

    def unop(self, children):
        op, operand = children
        at = Span.of_token(op)
        return UnaryOp(str(op), operand, at.to(operand.span), at)

    def attribute(self, children):
        receiver, name = children
        at = Span.of_token(name)
        return Attribute(receiver, str(name), receiver.span.to(at), at)

    @staticmethod
    def _split(arguments):
        args = [a for a in (arguments or []) if not isinstance(a, Keyword)]
        keywords = [a for a in (arguments or []) if isinstance(a, Keyword)]
        return args, keywords

    def call(self, children):
        callee, lpar, arguments, rpar = children
        args, keywords = self._split(arguments)
        refuse_repeats(((k.name, k.span) for k in keywords), "the argument `{name}` is given twice",
                       "give each argument once", "first given here")
        end = Span.of_token(rpar)
        at = callee.at.to(end) if isinstance(callee, Attribute) else Span.of_token(lpar).to(end)
        return Call(callee, args, keywords, callee.span.to(end), at)

    def subscript(self, children):
        receiver, lsqb, arguments, rsqb = children
        args, keywords = self._split(arguments)
        end = Span.of_token(rsqb)
        if keywords:
            raise SpireadError("`[...]` takes positions, not `name=value` arguments", keywords[0].span)
        return Subscript(receiver, args, receiver.span.to(end), Span.of_token(lsqb).to(end))

    def arguments(self, children):
        return children

    def positions(self, children):
        return children

    def slice(self, children):
        start, colon, stop, second_colon, step = children
        ends = [p.span if hasattr(p, "span") else Span.of_token(p) for p in (colon, stop, second_colon, step)
                if p is not None]
        first = start.span if start is not None else Span.of_token(colon)
        return Slice(start, stop, step, first.to(max(ends, key=lambda s: s.end)))

    def keyword(self, children):
        name, value = children
        return Keyword(str(name), value, Span.of_token(name).to(value.span))

    def paren(self, children):
        lpar, expr, rpar = children
        # The span takes in the brackets, so `(x * x).sum` is quoted whole.
        # `expr` was made by the reduction just before and is held nowhere
        # else, so it is changed in place rather than copied.
        expr.span = Span.of_token(lpar).to(Span.of_token(rpar))
        if isinstance(expr, Attribute):
            expr.grouped = True
        return expr

    def tuple(self, children):
        lpar, *items, rpar = children
        return TupleLit(items, Span.of_token(lpar).to(Span.of_token(rpar)))

    def named_tuple(self, children):
        lpar, *items, rpar = children
        refuse_repeats(((k.name, k.span) for k in items), "the key `{name}` is given twice in this named tuple",
                       "each key names one value; give this one another name", "first given here")
        return NamedTuple(items, Span.of_token(lpar).to(Span.of_token(rpar)))

    def list(self, children):
        lsqb, *items, rsqb = children
        return ListLit([item for item in items if item is not None], Span.of_token(lsqb).to(Span.of_token(rsqb)))

    def binding(self, children):
        name, type_, value = children
        at = Span.of_token(name)
        return Binding(str(name), value, at.to(value.span), at)

    def type(self, children):
        names = [p for p in children if isinstance(p, str) and p.type == "NAME"]
        end = children[-1] if children[-1] is not None else names[-1]
        return TypeName(".".join(str(n) for n in names), Span.of_token(names[0]).to(_span(end)))

    def param(self, children):
        name, type_ = children
        return Name(str(name), Span.of_token(name))

    def params(self, children):
        return children

    def type_params(self, children):
        return None

    def type_param(self, children):
        return None

    def block(self, children):
        lbrace, *bindings, value, rbrace = children
        refuse_repeats(((b.name, b.at) for b in bindings), "`{name}` is already bound in this block",
                       "names are bound once; give this value another name, e.g. `{name}2`", "first bound here")
        return Block(bindings, value, Span.of_token(lbrace).to(Span.of_token(rbrace)))

    def definition(self, children):
        name, type_params, lpar, params, rpar, result_type, body = children
        refuse_repeats(((p.id, p.span) for p in params or ()), f"`{name}` has two parameters named `{{name}}`",
                       "give each parameter its own name", "the first")
        return Definition(str(name), params or [], body, Span.of_token(name).to(body.span), Span.of_token(name))

    def given(self, children):
        keyword, name, type_, value = children
        at = Span.of_token(keyword)
        return Given(type_, value, at.to(value.span), at)

    def lambda_(self, children):
        name, arrow, body = children
        param = Name(str(name), Span.of_token(name))
        return Lambda(param, body, param.span.to(body.span))

    def expr_stmt(self, children):
        value, = children
        return ExprStmt(value, value.span)

    def ignored(self, children):
        tok, = children
        if not _IMPORT_PATH.match(tok, len("import")):
            raise SpireadError(f"`{tok.strip()}` is not an import line: `import` must be followed by a name",
                               Span.of_token(tok),
                               [reserved_note("import")])
        return None

    def start(self, children):
        return [s for s in children if s is not None]
