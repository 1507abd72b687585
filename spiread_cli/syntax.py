"""Source text to the AST (syntax_tree.py), every node carrying its span.

The grammar (grammar/spiread.lark) holds all syntax. The AST builder's
methods (syntax_builder.py) run inline with the LALR parse and build the nodes bottom-up, so no
recursion is needed however deeply the program nests. A program that parses
is read by the fast driver (parse_driver.py) over Lark's tables, made once
(lark_tables.py) and kept in this user's cache (user_cache.py); Lark itself
is imported only to make those tables and for a syntax error, whose words
come from syntax_errors.py.
"""

from __future__ import annotations

import os
import sys
import threading
from collections import deque

from . import lark_tables, syntax_builder, user_cache
from .diagnostics import SpireadError, Source
from .limits import no_cyclic_gc
from .parse_driver import NotOnTheFastPath, TableDriver
from .syntax_builder import AstBuilder
from .syntax_errors import BRACKETS, syntax_error
from .syntax_tree import ExprStmt, Module

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
    return Lark(grammar_text(), parser="lalr", postlex=_postlexer, transformer=AstBuilder(),
                maybe_placeholders=True)


def _get_driver() -> TableDriver | None:
    """The fast path, or None under a Lark whose internals are not the ones
    it reads, or outside the tested range (then Lark's own parser reads
    every program, slower and never different)."""
    global _driver
    with _making:
        if _driver is None:
            try:
                _driver = TableDriver(_load_tables(), AstBuilder())
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
    which holds its version), the adapter that reads Lark, the AST builder,
    whose methods the tables name, and this module."""
    from importlib.util import find_spec
    parts = [sys.version, grammar_text()]
    for path in (find_spec("lark").origin, lark_tables.__file__, syntax_builder.__file__, __file__):
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
