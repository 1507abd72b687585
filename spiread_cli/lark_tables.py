"""The one place that reads Lark's private structures: its LALR table,
rule callbacks, child filters and contextual lexers, as plain data for the
fast parse driver (parse_driver.py).

These are not Lark's public API, so the range of Lark versions the driver is
tested against is pinned in pyproject.toml and named here (`TESTED`); under
any other Lark, or wherever a structure is not what this reads, the tables
are not made and Lark's own parser reads every program (slower, never
different: tests/test_fast_parse.py holds the two to the same ASTs and
messages).
"""

from __future__ import annotations

# Not `from typing import TYPE_CHECKING` (see __init__.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark import Lark

# The Lark releases the driver is tested against (pyproject.toml pins the same).
TESTED = ((1, 3), (1, 4))  # from 1.3 up to, not including, 1.4


class Unsupported(Exception):
    """This Lark is not one the fast driver reads: Lark parses alone."""


def tested(version: str) -> bool:
    """Whether a Lark version string lies in the tested range."""
    try:
        release = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return TESTED[0] <= release < TESTED[1]


def tables_of(lark: Lark) -> dict:
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
    Anything it does not recognise raises `Unsupported`: then Lark parses alone."""
    from lark import Tree, __version__
    from lark.parse_tree_builder import ChildFilterLALR, ChildFilterLALR_NoPlaceholders, ExpandSingleChild
    from lark.parsers.lalr_analysis import Shift
    if not tested(__version__):
        raise Unsupported(f"Lark {__version__}")
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
            raise Unsupported
    root = contextual.root_lexer.scanner
    if len(root._mres) != 1:
        raise Unsupported
    lexers: dict[int, int] = {}  # id -> position in `alternations`
    alternations, keywords, shared = [], [], []
    for lexer in contextual.lexers.values():
        if id(lexer) in lexers:
            continue
        lexers[id(lexer)] = len(alternations)
        scanner = lexer.scanner
        if len(scanner._mres) != 1 or scanner._mres[0].flags != root._mres[0].flags:
            raise Unsupported
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
            raise Unsupported
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
