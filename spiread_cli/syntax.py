"""Source text to the AST (syntax_tree.py), every node carrying its span.

The grammar (grammar/spiread.lark) holds all syntax. The AST builder's
methods run inline with the LALR parse and build the nodes bottom-up, so no
recursion is needed however deeply the program nests. A program that parses
is read by the fast driver (parse_driver.py) over Lark's tables, made once
(lark_tables.py) and kept in this user's cache (user_cache.py); Lark itself
is imported only to make those tables and for a syntax error, whose words
come from syntax_errors.py.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
from collections import deque

import numpy as np

from . import lark_tables, user_cache
from .diagnostics import BEYOND_FLOAT64, SpireadError, Source, Span, refuse_repeats
from .limits import no_cyclic_gc
from .parse_driver import NotOnTheFastPath, TableDriver
from .syntax_errors import BRACKETS, reserved_note, syntax_error
from .syntax_tree import (Attribute, BinOp, Binding, Block, Call, Definition, ExprStmt, Given, Keyword, Lambda,
                          ListLit, Module, Name, NamedTuple, Number, NumberArray, Slice, String, Subscript, TupleLit,
                          TypeName, UnaryOp)

# Not `from typing import TYPE_CHECKING` (see __init__.py); Lark is imported
# where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark import Lark, Token

# ------------------------------------------------------------------ parsing

_CLOSERS = frozenset(BRACKETS.values())


class _BracketPostLexer:
    """Drops newlines inside () and [] and remembers what is still open, so an
    unclosed bracket can be reported where it was opened; also keeps the last
    two tokens, so a syntax error can say what came before the bad one. One
    instance serves Lark's parser in every thread, so what it remembers is
    the calling thread's own: a syntax error reports its own program's
    brackets while another thread parses."""

    always_accept = ("_NL",)

    def __init__(self):
        self._mine = threading.local()

    @property
    def open(self) -> list[Token]:
        return getattr(self._mine, "open", [])

    @property
    def recent(self) -> deque[Token]:
        return getattr(self._mine, "recent", deque())

    def process(self, stream):
        # Runs once per token: locals and one dict test per token type.
        self._mine.open = opened = []
        self._mine.recent = recent = deque(maxlen=2)
        remember = recent.append
        for token in stream:
            kind = token.type
            if kind == "_NL":
                if opened:
                    continue
            elif kind in BRACKETS:
                opened.append(token)
            elif kind in _CLOSERS and opened and BRACKETS[opened[-1].type] == kind:
                opened.pop()
            remember(token)
            yield token


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


class _ToAst:
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
            return NumberArray(np.array(values), span)  # rows of one length: np.stack's checks are not needed
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

_parser: Lark | None = None
_driver: "TableDriver | bool | None" = None  # False: this Lark cannot be driven
_postlexer = _BracketPostLexer()
_making = threading.RLock()  # the parser and the driver are made once, whichever thread asks first
_HERE = os.path.dirname(os.path.abspath(__file__))


def grammar_text() -> str:
    """The grammar file. Installed, it travels inside the package
    (spiread_cli/grammar/); in a source checkout it sits in grammar/ beside
    the package. Read by path: `importlib.resources` costs more start-up
    than the whole read."""
    for folder in (os.path.join(_HERE, "grammar"), os.path.join(os.path.dirname(_HERE), "grammar")):
        path = os.path.join(folder, "spiread.lark")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                return f.read()
    raise FileNotFoundError(f"spiread.lark is neither in {_HERE}/grammar nor in the checkout's grammar/")


def _get_parser() -> Lark:
    global _parser
    with _making:
        if _parser is None:
            _parser = _lark()
    return _parser


def _lark() -> Lark:
    """Lark's parser for the grammar. Never with Lark's own cache: it is a
    pickle at a predictable name in the shared temporary folder, and a
    pickle another user planted there would run as code (~80 ms to make
    instead, paid only for a syntax error or new parse tables)."""
    from lark import Lark
    return Lark(grammar_text(), parser="lalr", postlex=_postlexer, transformer=_ToAst(),
                maybe_placeholders=True)


def _get_driver() -> TableDriver | None:
    """The fast path, or None under a Lark whose internals are not the ones
    it reads, or outside the tested range (then Lark's own parser reads
    every program, slower and never different)."""
    global _driver
    with _making:
        if _driver is None:
            try:
                _driver = TableDriver(_load_tables(), _ToAst())
            except (AttributeError, KeyError, TypeError, lark_tables.Unsupported):
                _driver = False
    return _driver or None

# ------------------------------------------------- Lark's tables, as data
# What the fast path reads of Lark's parser is plain data (lists, dicts,
# strings), so it is kept in this user's cache: a program that parses is
# read without importing Lark at all (its import and table making are a
# sixth of a cold start). The file is used only when it was made from this
# same grammar, Lark and the modules that read it.



def _cache_key() -> tuple[str, ...]:
    """What the tables are made from: the grammar, Lark (its `__init__.py`,
    which holds its version), the adapter that reads Lark, and this module,
    whose AST builder the tables name."""
    from importlib.util import find_spec
    parts = [sys.version, grammar_text()]
    for path in (find_spec("lark").origin, lark_tables.__file__, __file__):
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
    return tuple(parts)


def _cache_name(key: tuple[str, ...]) -> str:
    """A name from the key (a clash costs only a remake: the key is compared whole)."""
    import zlib
    return f"parse-tables-{zlib.crc32(chr(0).join(key).encode('utf-8', 'replace')):08x}"


def _load_tables() -> dict:
    """The tables from the cache when they were made from what is here now,
    else from Lark (and cached for the next process)."""
    import marshal
    try:
        key = _cache_key()
    except (OSError, ValueError):  # no source to key on (bytecode only, a zip): no cache
        return lark_tables.tables_of(_get_parser())
    # Named by the key, so that two installs (two virtual environments, two
    # checkouts) keep their own tables rather than replace each other's.
    name = _cache_name(key)
    stored = user_cache.read(name)
    if stored is not None:
        try:
            stored_key, tables = marshal.loads(stored)
            if stored_key == key:
                return tables
        except (EOFError, ValueError, TypeError):
            pass
    tables = lark_tables.tables_of(_get_parser())
    user_cache.write(name, marshal.dumps((key, tables)))
    return tables


def parse(source: Source) -> Module:
    """Parse a whole program; raises SpireadError with a located message."""
    with no_cyclic_gc():
        driver = _get_driver()
        try:
            if driver is None:
                raise NotOnTheFastPath
            statements = driver.parse(source.text)
        except NotOnTheFastPath:
            statements = _lark_parse(source)  # Lark's own parse, for its error
    return Module(statements, source)


def _lark_parse(source: Source) -> list:
    from lark.exceptions import UnexpectedInput
    try:
        return _get_parser().parse(source.text)
    except UnexpectedInput as err:
        raise syntax_error(err, source, list(_postlexer.open), list(_postlexer.recent)) from None
    except Exception as err:  # errors raised inside the AST builder's methods arrive wrapped
        inner = getattr(err, "orig_exc", None)
        if isinstance(inner, SpireadError):
            raise inner from None
        raise


def parse_expression(text: str, source_name: str = "<--set>"):
    """Parse a single expression (for `--set NAME=[[1,2],[3,4]]`)."""
    module = parse(Source(source_name, text))
    if len(module.statements) != 1 or not isinstance(module.statements[0], ExprStmt):
        raise SpireadError(f"expected one expression, got `{text}`")
    return module.statements[0].value
