"""Source text to a small typed AST, every node carrying its span.

The grammar (grammar/spiread.lark) holds all syntax. The AST builder's
methods run inline with the LALR parse and build the nodes bottom-up, so no
recursion is needed however deeply the program nests. Lark is imported only
to make the parse tables (once; they are cached) and for a syntax error.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import unicodedata
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

import numpy as np

from .diagnostics import BEYOND_FLOAT64, SpireadError, Source, Span, refuse_repeats
from .limits import no_cyclic_gc

# Not `from typing import TYPE_CHECKING` (see __init__.py); Lark is imported
# where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark import Lark, Token
    from lark.exceptions import UnexpectedCharacters, UnexpectedInput

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


@dataclass(slots=True, eq=False)
class NumberArray(_WholeSpan):
    """A literal of plain numbers, `[1, -2.5]` or `[[1, 2], [3, 4]]`, read as
    one array (the NUMBERS terminal): a long literal is data."""
    value: np.ndarray
    span: Span


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


# ------------------------------------------------------------------ parsing

_BRACKETS = {"LPAR": "RPAR", "LSQB": "RSQB"}
_CLOSERS = frozenset(_BRACKETS.values())


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
            elif kind in _BRACKETS:
                opened.append(token)
            elif kind in _CLOSERS and opened and _BRACKETS[opened[-1].type] == kind:
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
_driver: "_TableDriver | bool | None" = None  # False: this Lark cannot be driven
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


def _get_driver() -> "_TableDriver | None":
    """The fast path, or None under a Lark whose internals are not the ones
    it reads (then Lark's own parser reads every program, as it used to;
    tests/test_fast_parse.py fails loudly there)."""
    global _driver
    with _making:
        if _driver is None:
            try:
                _driver = _TableDriver(_load_tables())
            except (AttributeError, KeyError, TypeError, _NotOnTheFastPath):
                _driver = False
    return _driver or None


class _NotOnTheFastPath(Exception):
    """The fast driver met something it leaves to Lark: a syntax error."""


# ------------------------------------------------- Lark's tables, as data
# What the fast path reads of Lark's parser is plain data (lists, dicts,
# strings), so it is kept in a file in this user's own cache folder: a
# program that parses is read without importing Lark at all (its import and
# table making are a sixth of a cold start). The file is used only when it
# was made from this same grammar, Lark and module.

_CACHE_NAME = "parse-tables"
_CACHE_MOST_BYTES = 16 << 20  # the tables are ~100 kB; anything far larger is not ours


def _cache_key() -> tuple[str, ...]:
    """What the tables are made from: the grammar, Lark (its `__init__.py`,
    which holds its version) and this module, which reads them."""
    from importlib.util import find_spec
    parts = [sys.version, grammar_text()]
    for path in (find_spec("lark").origin, __file__):
        with open(path, encoding="utf-8") as f:
            parts.append(f.read())
    return tuple(parts)


def _load_tables() -> dict:
    """The tables from the cache file when it was made from what is here now,
    else from Lark (written to the cache for the next process)."""
    import marshal
    try:
        key = _cache_key()
    except (OSError, ValueError):  # no source to key on (bytecode only, a zip): no cache
        return _tables(_get_parser())
    folder = _open_cache_folder()
    if folder is None:
        return _tables(_get_parser())
    try:
        stored = _read_ours(folder, _CACHE_NAME)
        if stored is not None:
            with suppress(EOFError, ValueError, TypeError):
                stored_key, tables = marshal.loads(stored)
                if stored_key == key:
                    return tables
        tables = _tables(_get_parser())
        _write_ours(folder, _CACHE_NAME, marshal.dumps((key, tables)))
        return tables
    finally:
        os.close(folder)


def _open_cache_folder() -> int | None:
    """A descriptor of this user's cache folder for spiread
    ($XDG_CACHE_HOME/spiread, else ~/.cache/spiread), made owner-only if
    missing; None (no cache) where it is not a real folder of this user's
    that only this user may write. Never the shared temporary folder: what
    is read from the cache is trusted, so no one else may have put it there.
    Files are then opened relative to the descriptor, so the folder cannot
    be swapped between the check and the open."""
    if not hasattr(os, "getuid") or os.open not in os.supports_dir_fd:
        return None  # no owners to check (Windows): no cache
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "spiread")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (OSError, ValueError):
        return None
    if not _only_ours(os.fstat(folder)):
        os.close(folder)
        return None
    return folder


def _only_ours(status: os.stat_result) -> bool:
    """Whether a file or folder is this user's and no one else may write it."""
    return status.st_uid == os.getuid() and not status.st_mode & 0o022


def _read_ours(folder: int, name: str) -> bytes | None:
    """The bytes of `name` in `folder` if it is a regular file of this
    user's that no one else may write; else None. O_NONBLOCK, so that a
    named pipe at that name cannot hang the run; O_NOFOLLOW, no link."""
    import stat
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=folder)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or not _only_ours(status) or status.st_size > _CACHE_MOST_BYTES:
            return None
        return f.read(_CACHE_MOST_BYTES)


def _write_ours(folder: int, name: str, data: bytes) -> None:
    """Writes `name` in `folder` whole or not at all (another process may be
    reading it), owner-only, never through a file or link already at the
    temporary name. A failure (no room, a read-only folder) leaves no file:
    the tables are made again next time."""
    partial = f"{name}.{os.getpid()}"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        with suppress(OSError):
            os.remove(partial, dir_fd=folder)


def _tables(lark: Lark) -> dict:
    """Lark's LALR table, rule callbacks and contextual lexer, as data:
    - `actions[state][symbol]`: the state shifted to (≥ 0), or ~rule reduced;
    - per rule: its length, its nonterminal, what builds its value (a
      transformer method's name; "" for a `_rule`, whose children its parent
      splices in, as Lark's Tree does; None for a unit step of a `?` rule,
      whose callback hands its one child back), and Lark's child filter
      (which children, which spliced, how many None placeholders before each
      and after them all; None when all are kept as they are);
    - per lexer (one per set of terminals a state accepts): its alternation
      and its keywords (Lark's `unless` callbacks, as a table: NAME ->
      {"val": "VAL", …}); and the root lexer's alternation, which holds every
      terminal, with the terminals of each state it lexes as that state's own
      would (see `_shared`).
    Anything it does not recognise raises: then Lark parses alone."""
    from lark import Tree
    from lark.parse_tree_builder import ChildFilterLALR, ChildFilterLALR_NoPlaceholders, ExpandSingleChild
    from lark.parsers.lalr_analysis import Shift
    frontend = lark.parser
    contextual = frontend.lexer.lexer
    parser = frontend.parser.parser
    table = parser.parse_table
    rules = list(parser.callbacks)
    index = {rule: i for i, rule in enumerate(rules)}
    actions: list = [None] * (max(table.states) + 1)
    for state, moves in table.states.items():
        actions[state] = {symbol: (arg if action is Shift else ~index[arg]) for symbol, (action, arg) in moves.items()}
    builders, filters = [], []
    for rule in rules:
        callback, size = parser.callbacks[rule], len(rule.expansion)
        if size == 1 and type(callback) is ExpandSingleChild:
            builders.append(None)
            filters.append(None)
            continue
        if type(callback) is ChildFilterLALR:
            filters.append((tuple(callback.to_include), callback.append_none))
            callback = callback.node_builder
        elif type(callback) is ChildFilterLALR_NoPlaceholders:
            filters.append((tuple((i, spliced, 0) for i, spliced in callback.to_include), 0))
            callback = callback.node_builder
        else:
            filters.append(None)
        if getattr(callback, "__self__", None) is lark.options.transformer:
            builders.append(callback.__name__)
        elif getattr(callback, "func", None) is Tree and rule.origin.name.startswith("_"):
            builders.append("")  # every parent splices a `_rule`'s children
        else:
            raise _NotOnTheFastPath
    root = contextual.root_lexer.scanner
    if len(root._mres) != 1:
        raise _NotOnTheFastPath
    lexers: dict[int, int] = {}  # id -> position in `alternations`
    alternations, keywords, shared = [], [], []
    for lexer in contextual.lexers.values():
        if id(lexer) in lexers:
            continue
        lexers[id(lexer)] = len(alternations)
        scanner = lexer.scanner
        if len(scanner._mres) != 1 or scanner._mres[0].flags != root._mres[0].flags:
            raise _NotOnTheFastPath
        alternations.append(scanner._mres[0].pattern)
        keywords.append(_keywords(lexer.callback))
        shared.append(_shared([t.name for t in scanner.terminals], [t.name for t in root.terminals]))
    kept = {symbol.name for rule in rules for symbol in rule.expansion
            if symbol.is_term and (rule.options.keep_all_tokens or not symbol.filter_out)}
    return _plain({
        "start": table.start_states["start"], "end": table.end_states["start"], "actions": actions,
        "sizes": [len(rule.expansion) for rule in rules], "origins": [rule.origin.name for rule in rules],
        "builders": builders, "filters": filters,
        # Terminals no rule keeps (`=`, `,`, `.`, `_NL`): their children are
        # dropped by every rule's child filter, so no token is made for them.
        "kept": frozenset(kept), "ignore": frozenset(contextual.root_lexer.ignore_types),
        "newlines": frozenset(contextual.root_lexer.newline_types),
        "root": root._mres[0].pattern, "flags": root._mres[0].flags,
        "lexer_of": [lexers[id(contextual.lexers[state])] if state in contextual.lexers else None
                     for state in range(len(actions))],
        "alternations": alternations, "keywords": keywords, "shared": shared,
    })


def _plain(value):
    """The tables with every string a plain str: Lark names terminals and
    rules with its Tokens (str subclasses) unless it loaded them from its
    cache, and marshal takes only plain types."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, frozenset)):
        return type(value)(_plain(v) for v in value)
    return value


def _keywords(callbacks: dict) -> dict:
    """Lark's `unless` callbacks as a table: NAME -> {"val": "VAL", …}.
    They full-match literal strings only, so a lookup is the same test."""
    from lark.lexer import UnlessCallback
    out = {}
    for kind, callback in callbacks.items():
        terminals = callback.scanner.terminals if type(callback) is UnlessCallback else []
        if not terminals or not all(t.pattern.type == "str" and not t.pattern.flags for t in terminals):
            raise _NotOnTheFastPath
        out[kind] = {t.pattern.value: t.name for t in terminals}
    return out


def _shared(own: list[str], root: list[str]) -> frozenset[str]:
    """The terminals for which the root lexer's alternation answers as a
    state's own would. Both try their terminals in one order (Lark sorts
    every lexer's by the same key), and an alternation takes the first that
    matches; so where the root's match is terminal X, the state's would be X
    too if every terminal before X in the state's order also comes before it
    in the root's (had one matched, the root would have taken it). Where the
    root's match is not in this set, the state's own alternation is asked."""
    where = {name: i for i, name in enumerate(root)}
    shared, last = set(), -1
    for name in own:
        if name not in where:
            break  # a keyword the root reads as a NAME: it and all after it are the state's own
        if where[name] > last:
            shared.add(name)
            last = where[name]
    return frozenset(shared)


def _children(children: list) -> list:
    """A `_rule`'s value: its children, for its parent to splice in."""
    return children


def _splicing(steps: tuple, append_none: int, build):
    """Lark's child filter for a rule some of whose children are `_rule`s,
    whose children it splices in (extending the left one in place, as Lark's
    LALR filter does for left recursion)."""
    def reduce(children):
        kept = []
        for i, spliced, nones in steps:
            if nones:
                kept += [None] * nones
            if not spliced:
                kept.append(children[i])
            elif kept:
                kept += children[i]
            else:
                kept = children[i]
        if append_none:
            kept += [None] * append_none
        return build(kept)
    return reduce


class _Token(str):
    """A token of the fast path: its text, with the attributes of Lark's
    Token that the AST builder reads (Lark's own parse hands it Lark's)."""
    __slots__ = ("type", "value", "start_pos", "line", "column", "end_line", "end_column", "end_pos")


class _TableDriver:
    """Lark's own LALR tables, lexers and rule callbacks (`_tables`), driven
    by a tighter loop: Lark's parser stays the parser of record (the grammar
    file is the only statement of the syntax, and every syntax error is
    Lark's own), but a program that parses is read in about half the time,
    without importing Lark.

    What it does the same as Lark's contextual lexer, bracket post-lexer and
    LALR parser, and how it is faster:
    - each token is matched as the parser state's own scanner would match
      it: where an operand may start, by the root lexer's alternation where
      that gives the same answer (`_shared`), else by the state's own,
      compiled only then (those states' alternations each hold the long
      NUMBERS pattern, and compiling them all cost a small program more than
      parsing it; see `_lexer`); keywords come from the same `unless`
      tables, and newlines inside () and [] are dropped as
      `_BracketPostLexer` drops them; but it is one loop, not three
      generators and a method call per token;
    - a token is a `_Token`, made only for terminals some rule keeps;
    - a reduction calls the transformer method Lark would, after Lark's child
      filter read as the positions to pick (one comprehension instead of a
      loop of tuple unpacking), or as `_splicing` where `_rule`s are spliced;
    - the unit steps of `?` rules (`?sum: product`), whose callback would
      only hand its one child back, change the state and nothing else, and
      a run of them (two of every three reductions, down the precedence
      chain) depends only on the two states on top and the next token, so
      it is one lookup.
    Anything it cannot take (no action for a token, no token at a position)
    raises `_NotOnTheFastPath`, and `parse` reads the program again with Lark
    for the error message.
    """

    def __init__(self, tables: dict):
        import re
        self.start, self.end, self.actions = tables["start"], tables["end"], tables["actions"]
        self.sizes, self.origins = tables["sizes"], tables["origins"]
        self.kept, self.ignore, self.newlines = tables["kept"], tables["ignore"], tables["newlines"]
        builder = _ToAst()
        self.callbacks: list = []
        self.picks: list[tuple[int, ...] | None] = []
        for size, name, kept in zip(self.sizes, tables["builders"], tables["filters"]):
            build = None if name is None else getattr(builder, name) if name else _children
            picks = None
            if kept is not None:
                steps, append_none = kept
                if any(spliced for _, spliced, _ in steps):
                    build = _splicing(steps, append_none, build)
                else:  # the positions to pick, `size` standing for a None
                    picks = tuple(p for i, _, nones in steps for p in [size] * nones + [i]) + (size,) * append_none
            self.callbacks.append(build)
            self.picks.append(picks)
        self.root = re.compile(tables["root"], tables["flags"]).match
        self.flags, self.lexer_of, self.alternations = tables["flags"], tables["lexer_of"], tables["alternations"]
        self.shared, self.keywords = tables["shared"], tables["keywords"]
        self.lexing: list = [None] * len(self.actions)  # per state, when first met: see `_lexer`
        self.own: list = [None] * len(self.alternations)  # a lexer's own scanner, compiled when first asked
        self.units: dict[tuple[int, int, str], int] = {}

    def _unit_steps(self, key: tuple[int, int, str]) -> int:
        """Where a run of unit steps ends: from state `top` over `below`,
        with `kind` next, follow the unit reductions the table asks for until
        it asks for anything else. The run depends on those three alone, so
        it is worked out once (`self.units`)."""
        below, top, kind = key
        while True:
            action = self.actions[top].get(kind)
            if action is None or action >= 0 or self.callbacks[~action] is not None:
                break
            top = self.actions[below][self.origins[~action]]
        self.units[key] = top
        return top

    def _lexer(self, state: int) -> tuple:
        """How a state lexes: the scanner asked first, the terminals taken from
        it, the keyword table, and which lexer's own scanner answers for the
        rest. A short alternation (after an operand: the operators, brackets,
        ends of line) is the state's own, cheap to compile and with fewer
        alternatives to try per token than the root's; a long one (where an
        operand may start, with the long NUMBERS pattern) would cost about as
        much to compile as the root's, so the root's is asked first."""
        which = self.lexer_of[state]
        if which is None:
            raise _NotOnTheFastPath
        if 2 * len(self.alternations[which]) < len(self.root.__self__.pattern):
            own = self._own(which)
            first, taken = own, frozenset(own.__self__.groupindex)
        else:
            first, taken = self.root, self.shared[which]
        self.lexing[state] = (first, taken, self.keywords[which], which)
        return self.lexing[state]

    def _own(self, which: int):
        import re
        self.own[which] = re.compile(self.alternations[which], self.flags).match
        return self.own[which]

    def parse(self, text: str):
        actions, sizes, origins, callbacks = self.actions, self.sizes, self.origins, self.callbacks
        lexing, own, ignore, newlines = self.lexing, self.own, self.ignore, self.newlines
        new, token_class, kept, units, picks = str.__new__, _Token, self.kept, self.units, self.picks
        states, values = [self.start], []
        opened: list[str] = []  # the closers of the open brackets, innermost last
        pos, line, line_start, end = 0, 1, 0, len(text)
        token = None
        while True:
            # ---- the next token, lexed in the current state
            if pos < end:
                state = states[-1]
                first, taken, keywords, which = lexing[state] or self._lexer(state)
                match = first(text, pos)
                if match is None or match.lastgroup not in taken:
                    match = (own[which] or self._own(which))(text, pos)
                    if match is None:
                        raise _NotOnTheFastPath
                kind, value = match.lastgroup, match.group()
                start, start_line, column = pos, line, pos - line_start + 1
                pos = match.end()
                if kind in newlines:
                    count = value.count("\n")
                    if count:
                        line += count
                        line_start = start + value.rindex("\n") + 1
                if kind in ignore:
                    continue
                if kind == "_NL":
                    if opened:
                        continue
                elif kind == "LPAR":
                    opened.append("RPAR")
                elif kind == "LSQB":
                    opened.append("RSQB")
                elif opened and kind == opened[-1]:
                    opened.pop()
                known = keywords.get(kind)
                if known is not None:
                    kind = known.get(value, kind)
                if kind in kept:
                    token = new(token_class, value)
                    token.type, token.value, token.start_pos, token.line, token.column = \
                        kind, value, start, start_line, column
                    token.end_line, token.end_column, token.end_pos = line, pos - line_start + 1, pos
                else:
                    token = kind  # a placeholder its rule's child filter drops
                at_end = False
            else:
                kind, at_end = "$END", True
            # ---- reduce as far as the token allows, then shift it
            while True:
                action = actions[states[-1]].get(kind)
                if action is None:
                    raise _NotOnTheFastPath
                if action >= 0:
                    if at_end:
                        raise _NotOnTheFastPath  # Lark never shifts $END
                    states.append(action)
                    values.append(token)
                    break
                rule = ~action
                callback = callbacks[rule]
                if callback is None:  # unit steps: the value stays, the state moves
                    key = (states[-2], states[-1], kind)
                    top = units.get(key)
                    states[-1] = top if top is not None else self._unit_steps(key)
                    continue
                size = sizes[rule]
                if size:
                    children = values[-size:]
                    del states[-size:]
                    del values[-size:]
                else:
                    children = []
                if picks[rule] is not None:
                    children.append(None)
                    children = [children[i] for i in picks[rule]]
                states.append(actions[states[-1]][origins[rule]])
                values.append(callback(children))
                if at_end and states[-1] == self.end:
                    return values[-1]


# ------------------------------------------------------- syntax errors
# Lark reports terminals by grammar name and an LALR "expected" set that is
# often wider than what could really come next; these turn both into the
# words a user knows.

_WORDS = {
    "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`", "POW": "`**`", "MATMUL": "`@@`",
    "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`", "DOT": "`.`",
    "EQUAL": "`=`", "SEMICOLON": "`;`", "NUMBER": "a number", "STRING": "a string", "NAME": "a name",
    "IGNORED": "an import", "LBRACE": "`{`", "RBRACE": "`}`", "COLON": "`:`", "ARROW": "`=>`",
    "GIVEN": "`given`", "DEF": "`def`", "VAL": "`val`",
}
_BINARY = {"PLUS", "MINUS", "STAR", "SLASH", "POW", "MATMUL"}
_POSTFIX = {"DOT", "LPAR", "LSQB"}
_STATEMENT_END = {"_NL", "SEMICOLON", "$END"}
_VALUE_TOKENS = {"NUMBER", "NAME", "STRING", "LPAR", "LSQB"}

# Characters people type from other languages or word processors.
_CHARACTER_HINTS = {
    "×": "multiply with `*`", "·": "multiply with `*`", "÷": "divide with `/`",
    "−": "subtract with `-` (this is a Unicode minus)", "–": "subtract with `-` (this is a dash)",
    "—": "subtract with `-` (this is a dash)", "“": 'strings use plain double quotes `"`',
    "”": 'strings use plain double quotes `"`', "'": 'strings use double quotes: `"x.csv"`',
    "^": "powers are written `x ** 2`", "%": "there is no `%` operator", "!": "there is no `!` operator",
    "@": "the matrix product is `@@` (or `@`) between two values",
}


_BRACE_NOTE = ["a block `{ … }` is only the body of a `def`, e.g. `def f(x: Double) = { val y = x * x; y + 1 }`"]
# Reserved words: a statement that starts with one is not a binding of it
# (`import = 2` is: a binding is the one thing an import line cannot be).
# Elsewhere they are ordinary names. docs/language.md lists them.
RESERVED_WORDS = {
    "val": ("binds a name", "val x = 3"),
    "def": ("defines a function", "def sq(x: Double) = x * x"),
    "given": ("is a Scala given", "given jd: JetDim = JetDim(1)"),
    "import": ("is a Scala import line, which is ignored", "import spire.implicits.*"),
}


def reserved_note(word: str) -> str:
    """What a reserved word's misuse says: what the word starts, and how to bind it as a name."""
    does, example = RESERVED_WORDS[word]
    return (f"`{word}` is a reserved word: a statement that starts with it {does}, e.g. `{example}`; "
            f"to bind the name `{word}`, write `val {word} = …`")


def _describe(token: Token | None) -> str:
    if token is None or token.type == "$END":
        return "the end of the file"
    if token.type == "_NL":
        return "the end of the line"
    return f"`{token}`"


def _describe_char(char: str) -> str:
    if char.isprintable() and not char.isspace():
        return f"`{char}`"
    return f"U+{ord(char):04X} ({unicodedata.name(char, 'a control character').lower()})"


def _words(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _plausible(expected: set[str], opened: list[Token]) -> set[str]:
    """Drop what cannot come next given the open brackets: a `)` only inside
    `(`, a `,` only inside brackets, an end of line only outside them."""
    keep = set(expected)
    inner = opened[-1].type if opened else None
    if inner != "LPAR":
        keep.discard("RPAR")
    if inner != "LSQB":
        keep.discard("RSQB")
    if inner is None:
        keep.discard("COMMA")
    else:
        keep -= _STATEMENT_END
    return keep or set(expected)


def _expected_words(expected: set[str]) -> list[str]:
    """A short list in a user's words: operators are one item, not six."""
    words = []
    if len(expected & _BINARY) >= 2:
        words.append("an operator")
        expected = expected - _BINARY - _POSTFIX
    for terminal in ("RPAR", "RSQB", "COMMA", "EQUAL", "NAME", "NUMBER", "STRING", "LPAR", "LSQB", "DOT"):
        if terminal in expected:
            words.append(_WORDS[terminal])
    if expected & _STATEMENT_END:
        words.append("the end of the line")
    return words


def _end_span(source: Source, last: Token | None) -> Span:
    """Just after the last token: where the missing piece should have been."""
    if last is None:
        return Span(1, 1, 1, 2, 0, 0)
    return Span(last.end_line, last.end_column, last.end_line, last.end_column + 1, last.end_pos, last.end_pos)


def _bad_character(err: UnexpectedCharacters, source: Source) -> SpireadError:
    pos = err.pos_in_stream
    char = source.text[pos] if pos < len(source.text) else ""
    span = Span(err.line, err.column, err.line, err.column + 1, pos, pos + 1)
    if char == '"':
        line_end = source.text.find("\n", pos)
        line_end = len(source.text) if line_end < 0 else line_end
        return SpireadError("unterminated string: no closing `\"` on this line",
                            Span(err.line, err.column, err.line, err.column + line_end - pos, pos, line_end),
                            ['a string ends with `"` on the line where it starts'])
    hint = _CHARACTER_HINTS.get(char)
    return SpireadError(f"unexpected character {_describe_char(char)}", span, [hint] if hint else [])


def _bracket_of(token: Token | None, closing: bool) -> Token | None:
    """A NUMBERS token stands for its `[` where it was unexpected and for its
    `]` where it came just before the error: a message never quotes a whole
    literal, and reads as it would had the literal been read token by token."""
    if token is None or token.type != "NUMBERS":
        return token
    from lark import Token
    if closing:
        return Token("RSQB", "]", token.end_pos - 1, token.end_line, token.end_column - 1,
                     token.end_line, token.end_column, token.end_pos)
    return Token("LSQB", "[", token.start_pos, token.line, token.column,
                 token.line, token.column + 1, token.start_pos + 1)


def _syntax_error(err: UnexpectedInput, source: Source) -> SpireadError:
    from lark.exceptions import UnexpectedCharacters
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(err, source)
    token = getattr(err, "token", None)
    at_end = token is None or token.type == "$END"
    opened = list(_postlexer.open)
    recent = [t for t in _postlexer.recent if at_end or t is not token]
    previous = _bracket_of(recent[-1], closing=True) if recent else None
    token = _bracket_of(token, closing=False)
    span = _end_span(source, previous) if at_end else Span.of_token(token)
    found = _describe(None if at_end else token)

    if at_end and opened:
        return _unclosed(opened[-1])
    if not at_end and token.type in ("RPAR", "RSQB"):
        closer = _unmatched(token, opened)
        if closer is not None:
            return closer
    expected = _plausible(set(getattr(err, "expected", ()) or ()), opened)
    after = f" after `{previous}`" if previous is not None and previous.type != "_NL" else ""
    if {"NAME", "NUMBER"} <= expected:
        return SpireadError(f"expected an expression{after}, found {found}", span,
                            _BRACE_NOTE if token is not None and token.type == "LBRACE" else [])
    if previous is not None and previous.type in ("VAL", "DEF", "GIVEN"):
        return SpireadError(f"unexpected {found} after `{previous}`", span, [reserved_note(str(previous))])
    if previous is not None and previous.type == "DOT":
        return SpireadError(f"expected a method name after `.`, found {found}", span,
                            ["e.g. `x.exp` or `x.pow(2)`"])
    words = _expected_words(expected)
    message = f"unexpected {found}{after}" + (f"; expected {_words(words)}" if words else "")
    still_open = opened and not at_end and token.line != opened[-1].line
    related = [(Span.of_token(opened[-1]), "opened here")] if still_open else []
    return SpireadError(message, span, _syntax_notes(token, previous, opened, expected), related=related)


def _syntax_notes(token: Token | None, previous: Token | None, opened: list[Token], expected: set[str]) -> list[str]:
    """A hint for the usual causes of an unexpected token."""
    if token is None or token.type == "$END":
        return []
    if token.type == "LBRACE":
        return _BRACE_NOTE
    if opened and token.line != opened[-1].line:
        inner = opened[-1]
        return [f"the `{inner}` opened at {inner.line}:{inner.column} is still open here; "
                f"is a `,` or a closing `{')' if inner.type == 'LPAR' else ']'}` missing?"]
    if token.type in _VALUE_TOKENS and expected & _BINARY:
        if opened:
            return ["is a `,` or an operator missing between them?"]
        return ["two values side by side need an operator between them, e.g. `a * b`"]
    if token.type == "EQUAL":
        if opened:
            return ["a `name=value` argument needs a plain name before `=`"]
        return ["`=` binds a name and comes first on its line, e.g. `y = x * 2`; "
                "each binding is a statement of its own"]
    if token.type == "COMMA" and not opened:
        return ["to make a vector, write `[1, 2]`; a statement holds one expression"]
    return []


def _unclosed(opener: Token) -> SpireadError:
    closer = ")" if opener.type == "LPAR" else "]"
    return SpireadError(f"unclosed `{opener}` opened at {opener.line}:{opener.column}",
                        Span.of_token(opener), [f"add a `{closer}` to close it"])


def _unmatched(token: Token, opened: list[Token]) -> SpireadError | None:
    """A closing bracket that closes nothing, or closes the wrong thing."""
    opener = "(" if token.type == "RPAR" else "["
    if not opened:
        return SpireadError(f"unmatched `{token}`: there is no `{opener}` to close", Span.of_token(token),
                            [f"remove it, or add the `{opener}` it should close"])
    inner = opened[-1]
    if _BRACKETS[inner.type] != token.type:
        closer = ")" if inner.type == "LPAR" else "]"
        return SpireadError(f"`{token}` cannot close the `{inner}` opened at {inner.line}:{inner.column}",
                            Span.of_token(token), [f"close the `{inner}` with `{closer}` first"],
                            related=[(Span.of_token(inner), "opened here")])
    return None

def parse(source: Source) -> Module:
    """Parse a whole program; raises SpireadError with a located message."""
    with no_cyclic_gc():
        driver = _get_driver()
        try:
            if driver is None:
                raise _NotOnTheFastPath
            statements = driver.parse(source.text)
        except _NotOnTheFastPath:
            statements = _lark_parse(source)  # Lark's own parse, for its error
    return Module(statements, source)


def _lark_parse(source: Source) -> list:
    from lark.exceptions import UnexpectedInput
    try:
        return _get_parser().parse(source.text)
    except UnexpectedInput as err:
        raise _syntax_error(err, source) from None
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
