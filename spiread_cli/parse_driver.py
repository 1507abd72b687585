"""The fast parse path: a tight LALR loop over Lark's tables as plain data
(lark_tables.py), calling the AST builder's methods as Lark's parser would.
Imports nothing of Lark's."""

from __future__ import annotations

import re


class NotOnTheFastPath(Exception):
    """The fast driver met something it leaves to Lark: a syntax error."""


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


class TableDriver:
    """Lark's own LALR tables, lexers and rule callbacks (`lark_tables`), driven
    into `builder` (the AST builder, whose methods the tables name)
    by a tighter loop: Lark's parser stays the parser of record (the grammar
    file is the only statement of the syntax, and every syntax error is
    Lark's own), but a program that parses is read in about half the time,
    without importing Lark.

    What it does the same as Lark's contextual lexer, bracket post-lexer and
    LALR parser, and how it is faster:
    - each token is matched as the parser state's own scanner would match
      it: where an operand may start, by the root lexer's alternation where
      that gives the same answer (`lark_tables._shared`), else by the state's own,
      compiled only then (those states' alternations each hold the long
      NUMBERS pattern, and compiling them all cost a small program more than
      parsing it; see `_lexer`); keywords come from the same `unless`
      tables, and newlines inside () and [] are dropped as
      syntax.py's bracket post-lexer drops them; but it is one loop, not three
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
    raises `NotOnTheFastPath`, and `syntax.parse` reads the program again with Lark
    for the error message.
    """

    def __init__(self, tables: dict, builder):
        self.start, self.end, self.actions = tables["start"], tables["end"], tables["actions"]
        self.sizes, self.origins = tables["sizes"], tables["origins"]
        self.kept, self.ignore, self.newlines = tables["kept"], tables["ignore"], tables["newlines"]
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
            raise NotOnTheFastPath
        if 2 * len(self.alternations[which]) < len(self.root.__self__.pattern):
            own = self._own(which)
            first, taken = own, frozenset(own.__self__.groupindex)
        else:
            first, taken = self.root, self.shared[which]
        self.lexing[state] = (first, taken, self.keywords[which], which)
        return self.lexing[state]

    def _own(self, which: int):
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
                        raise NotOnTheFastPath
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
                    raise NotOnTheFastPath
                if action >= 0:
                    if at_end:
                        raise NotOnTheFastPath  # Lark never shifts $END
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
