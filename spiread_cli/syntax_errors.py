"""Syntax errors in a user's words. Lark reports terminals by grammar name and
an LALR "expected" set that is often wider than what could really come
next; these turn both into the words a user knows, at the right place."""

from __future__ import annotations

import unicodedata

from .diagnostics import SpireadError, Source, Span

# Not `from typing import TYPE_CHECKING` (see __init__.py); Lark is imported
# where it is used.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from lark import Token
    from lark.exceptions import UnexpectedCharacters, UnexpectedInput

BRACKETS = {"LPAR": "RPAR", "LSQB": "RSQB"}  # each opener's closer, by terminal


_WORDS = {
    "PLUS": "`+`", "MINUS": "`-`", "STAR": "`*`", "SLASH": "`/`", "POW": "`**`", "MATMUL": "`@@`",
    "PERCENT": "`%`", "COMPARE": "a comparison",
    "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`", "DOT": "`.`",
    "EQUAL": "`=`", "SEMICOLON": "`;`", "NUMBER": "a number", "STRING": "a string", "NAME": "a name",
    "IGNORED": "an import", "LBRACE": "`{`", "RBRACE": "`}`", "COLON": "`:`", "ARROW": "`=>`",
    "GIVEN": "`given`", "DEF": "`def`", "VAL": "`val`",
}
_BINARY = {"PLUS", "MINUS", "STAR", "SLASH", "POW", "MATMUL", "PERCENT", "COMPARE"}
_POSTFIX = {"DOT", "LPAR", "LSQB"}
_STATEMENT_END = {"_NL", "SEMICOLON", "$END"}
_VALUE_TOKENS = {"NUMBER", "NAME", "STRING", "LPAR", "LSQB"}

# Characters people type from other languages or word processors.
_CHARACTER_HINTS = {
    "×": "multiply with `*`", "·": "multiply with `*`", "÷": "divide with `/`",
    "−": "subtract with `-` (this is a Unicode minus)", "–": "subtract with `-` (this is a dash)",
    "—": "subtract with `-` (this is a dash)", "“": 'strings use plain double quotes `"`',
    "”": 'strings use plain double quotes `"`', "'": 'strings use double quotes: `"x.csv"`',
    "^": "powers are written `x ** 2`", "!": "`!=` compares; there is no `!` on its own",
    "&": "for both of two 0/1 conditions, multiply them: `(a > 0) * (b > 0)`",
    "|": "for either of two 0/1 conditions, take their maximum: `maximum(a > 0, b > 0)`",
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


def syntax_error(err: UnexpectedInput, source: Source, opened: list[Token], recent: list[Token]) -> SpireadError:
    """The located error for Lark's `err`, given the brackets still open and
    the last tokens read when it was raised (the post-lexer's memory)."""
    from lark.exceptions import UnexpectedCharacters
    if isinstance(err, UnexpectedCharacters):
        return _bad_character(err, source)
    token = getattr(err, "token", None)
    at_end = token is None or token.type == "$END"
    recent = [t for t in recent if at_end or t is not token]
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
    if token.type == "COMPARE" and previous is not None:
        return ["comparisons do not chain: for `a < b < c` write `(a < b) * (b < c)`"]
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
    if BRACKETS[inner.type] != token.type:
        closer = ")" if inner.type == "LPAR" else "]"
        return SpireadError(f"`{token}` cannot close the `{inner}` opened at {inner.line}:{inner.column}",
                            Span.of_token(token), [f"close the `{inner}` with `{closer}` first"],
                            related=[(Span.of_token(inner), "opened here")])
    return None
