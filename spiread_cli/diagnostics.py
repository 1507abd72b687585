"""Errors and warnings as values: a span, a message, optional notes.

Every diagnostic spiread emits points at a place in the user's source and is
rendered the same way, compiler style::

    model.ad:3:17: error: `data @@ weights`: inner sizes differ, `data` is 3×2, `weights` is 3×2
        3 | probits = (data @@ weights).exp
          |                 ^^
          = note: ...

On a terminal the same text is coloured (rich); anywhere else it is plain.
"""

from __future__ import annotations

import difflib
import re
import sys
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Iterable


@dataclass(slots=True, unsafe_hash=True)
class Span:
    """A half-open range of source text; lines and columns count from 1.

    Never changed once made, and hashable. Not `frozen=True`: every token and
    AST node has a span, and a frozen dataclass takes five times as long to
    make (about a tenth of loading a program)."""

    line: int
    column: int
    end_line: int
    end_column: int
    start: int  # offsets into the source text
    end: int

    @staticmethod
    def of_token(token) -> "Span":
        return Span(token.line, token.column, token.end_line, token.end_column,
                    token.start_pos, token.end_pos)

    def to(self, other: "Span") -> "Span":
        """The span from the start of this one to the end of `other`."""
        return Span(self.line, self.column, other.end_line, other.end_column,
                    self.start, other.end)


@dataclass(slots=True, unsafe_hash=True)
class CalledSpan(Span):
    """A place in the body of a function, as inlined at `calls` (the calls'
    own spans, outermost first): what is recorded there is this call's, so
    a warning about it shows each call beside the body (`beside`), as an
    error raised there does."""

    calls: tuple[Span, ...] = ()


def in_calls(span: Span, calls: tuple[Span, ...]) -> Span:
    """`span` as met inside `calls` (none: the span itself)."""
    if not calls or span is None:
        return span
    return CalledSpan(span.line, span.column, span.end_line, span.end_column, span.start, span.end, calls)


IN_THIS_CALL = "in this call"  # the label of a call shown beside a diagnostic in its function's body


def beside(at: Span | None, calls: Iterable[Span]) -> tuple[tuple[Span, str], ...]:
    """The calls to show beside a diagnostic at `at` in a function's body:
    each it is not part of (an argument's or a lambda's own text is in its
    call), so a body called from several places says from which."""
    if at is None:
        return ()
    return tuple((call, IN_THIS_CALL) for call in calls if not call.start <= at.start <= at.end <= call.end)


@dataclass(frozen=True, slots=True)
class Source:
    """A program's text and the name to show for it (a path, or `<stdin>`)."""

    name: str
    text: str

    def snippet(self, span: Span) -> str:
        return self.text[span.start:span.end]

    def end(self) -> Span:
        """The place just after the last text that is not blank (1:1 in an empty file)."""
        offset = len(self.text.rstrip())
        line_start = self.text.rfind("\n", 0, offset) + 1
        line, column = self.text.count("\n", 0, offset) + 1, offset - line_start + 1
        return Span(line, column, line, column, offset, offset)

    def line_text(self, line: int) -> str:
        # Lines end at "\n" only, as the parser counts them (str.splitlines
        # would also split at form feeds and other separators).
        start = 0
        for _ in range(line - 1):
            start = self.text.find("\n", start) + 1
            if start == 0:
                return ""
        end = self.text.find("\n", start)
        return (self.text[start:] if end < 0 else self.text[start:end]).rstrip("\r")


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: str                                  # "error" | "warning"
    message: str
    span: Span | None = None
    notes: tuple[str, ...] = ()
    related: tuple[tuple[Span, str], ...] = ()     # other places worth showing, with a label
    origin: str | None = None                      # the file, when there is no source to show

    def as_json(self) -> dict:
        # The calls the text shows beside a function body's place are named in the message: a body met in
        # two calls gives two entries, which would otherwise be the same.
        calls = [f"{span.line}:{span.column}" for span, label in self.related if label == IN_THIS_CALL]
        where = f" (in the call{'s' if len(calls) > 1 else ''} at {', '.join(calls)})" if calls else ""
        return {"line": self.span.line if self.span else None,
                "column": self.span.column if self.span else None,
                "message": tidy(self.message) + where}


class SpireadError(Exception):
    """An error in the user's program, data or command line (never a bug of ours).

    `exit_code`: 1 for the program or its data, 2 for usage. `source` is the
    program the span points into, once known (`located_in`).
    """

    def __init__(self, message: str, span: Span | None = None, notes: Iterable[str] = (),
                 exit_code: int = 1, related: Iterable[tuple[Span, str]] = (), origin: str | None = None):
        super().__init__(message)
        self.diagnostic = Diagnostic("error", message, span, tuple(notes),
                                     tuple(related) + beside(span, getattr(span, "calls", ())), origin)
        self.exit_code = exit_code
        self.source: Source | None = None
        self.printed: list[str] = []  # what the program's println wrote before the error

    def called_from(self, calls: list[Span]) -> None:
        """An error in the body of a function, inlined at `calls` (outermost
        first): each call it is not part of is shown beside it, so a body
        called from several places says from which."""
        related = self.diagnostic.related
        shown = tuple(place for place in beside(self.diagnostic.span, calls) if place not in related)
        self.diagnostic = replace(self.diagnostic, related=related + shown)

    def __str__(self) -> str:
        # The same text the command line prints (plain), so a traceback or a
        # notebook shows the located message; `.diagnostic.message` is the bare one.
        return self.render()

    @property
    def span(self) -> Span | None:
        return self.diagnostic.span

    @property
    def notes(self) -> tuple[str, ...]:
        return self.diagnostic.notes

    def located_in(self, source: Source) -> "SpireadError":
        """This error, with `source` as the program its span points into
        (unless it already has one, or has no span)."""
        if self.source is None and self.diagnostic.span is not None:
            self.source = source
        return self

    def render(self) -> str:
        """The plain-text rendering, as the command line prints it without colour."""
        return render(self.diagnostic, self.source)

    @staticmethod
    def from_warning(warning: Diagnostic) -> "SpireadError":
        """A warning promoted to an error (`--strict`)."""
        error = SpireadError(warning.message, warning.span, warning.notes, related=warning.related,
                             origin=warning.origin)
        error.diagnostic = Diagnostic("error", warning.message, warning.span,
                                      warning.notes + ("--strict makes this warning an error",),
                                      warning.related, warning.origin)
        return error


class BackendLost(SpireadError):
    """What computes the program went away in the middle of a run (a Dask
    scheduler lost): an error in the user's environment, not in the program.
    `train` stops on it keeping the values of the last finished step, and the
    command saves them even without --save (spiread_cli/train.py)."""


# Which front end is asking: messages name what its user wrote, the command
# line's options (`--wrt w`) or the Python API's keyword arguments (`wrt="w"`).
# program.py sets PYTHON for the length of each public call.
COMMAND_LINE, PYTHON = "command line", "python"
FRONT_END: ContextVar[str] = ContextVar("spiread_front_end", default=COMMAND_LINE)


def listed_names(given: Iterable[str]) -> list[str] | None:
    """Names as either front end takes them: `--wrt a,b` is `--wrt a --wrt b`,
    and `wrt="a,b"` is `wrt=["a", "b"]` (no name holds a comma). None where
    a name is empty (`''`, an empty shell variable; `,`; `a,,b`; `a,`): the
    front ends refuse it, not read it as no name or drop it."""
    names = [name.strip() for text in given for name in text.split(",")]
    return names if names and "" not in names else None


def option(keyword: str, value: object = None) -> str:
    """An option as the user of this front end writes it, in backticks:
    `--wrt w` on the command line, `wrt="w"` from Python. `set` is a binding
    (`--set w=…`; from Python, binding `w`), `hvp` a direction (`--hvp w=…`,
    `hvp={"w": …}`); no value stands for a name (`--of NAME`, `of="NAME"`)."""
    python = FRONT_END.get() == PYTHON
    if keyword == "set":
        return f"binding `{value}`" if python else f"`--set {value}=…`"
    if keyword == "hvp":
        return f'`hvp={{"{value}": …}}`' if python else f"`--hvp {value}=…`"
    if keyword == "strict":
        return '`warnings.simplefilter("error", SpireadWarning)`' if python else "`--strict`"
    if python:
        shown = f'"{value or "NAME"}"' if value is None or isinstance(value, str) \
            else f"{value:g}" if isinstance(value, float) else str(value)
        return f"`{keyword}={shown}`"
    if isinstance(value, bool):  # a flag: `--sparse`, `--no-sparse`
        return f"`--{keyword}`" if value else f"`--no-{keyword}`"
    shown = "NAME" if value is None else f"{value:g}" if isinstance(value, float) else value
    return f"`--{keyword.replace('_', '-')} {shown}`"


def command(name: str) -> str:
    """A command as the user of this front end calls it: `spiread jacobian`
    on the command line, `Program.jacobian(...)` from Python."""
    return f"`Program.{name}(...)`" if FRONT_END.get() == PYTHON else f"`spiread {name}`"


def usage_error(message: str, notes: Iterable[str] = ()) -> SpireadError:
    return SpireadError(message, None, notes, exit_code=2)


def did_you_mean(name: str, known: Iterable[str], records: bool = False) -> tuple[str, ...]:
    """A note suggesting the closest known spelling, or nothing.

    Case slips (`Exp` for `exp`) count as close, whatever the length. With
    `records` (where a gradient record's entry is asked for by name: `--of`,
    `--wrt`), the name of a record means its entries (`g` for `g.w`, `g.b`);
    elsewhere a dotted name is not one (`Matrix.fromRows`, or `--set g.w`,
    which no option takes)."""
    known = sorted(set(known))
    entries = [k for k in known if k.startswith(f"{name}.")] if records else []
    folded = [k for k in known if k.lower() == name.lower() and k != name]
    close = entries or folded or difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if not close:
        return ()
    record = f"`{name}` is a record of gradients: " if entries else ""
    return (record + "did you mean " + " or ".join(f"`{c}`" for c in close) + "?",)


# What a number too large for a float64 is, in a program or a data file.
BEYOND_FLOAT64 = "beyond the range spiread can hold (a float64 reaches about ±1.8e308)"


def refuse_repeats(named: Iterable[tuple[str, Span]], message: str, note: str, first_here: str) -> None:
    """A name given twice where each must be one of its own (a keyword
    argument, a key of a named tuple, a parameter): an error at the second,
    pointing back at the first. `message` and `note` are formatted with the
    name as `{name}`."""
    first: dict[str, Span] = {}
    for name, span in named:
        if name in first:
            raise SpireadError(message.format(name=name), span, [note.format(name=name)],
                               related=[(first[name], first_here)])
        first[name] = span


@dataclass
class Diagnostics:
    """The warnings collected during one run."""

    warnings: list[Diagnostic] = field(default_factory=list)

    def warn(self, message: str, span: Span | None, notes: Iterable[str] = ()) -> None:
        """Record a warning; the same warning at the same place is kept once
        (a query asked twice, or a replay, does not repeat it). At a place in
        a function's body (`CalledSpan`), each call is shown beside it."""
        warning = Diagnostic("warning", message, span, tuple(notes), beside(span, getattr(span, "calls", ())))
        if warning not in self.warnings:
            self.warnings.append(warning)


# ------------------------------------------------------------- rendering

MAX_SHOWN_WIDTH = 100   # longer source lines are shown as a window around the span
MAX_QUOTED = 48         # longer `code` in a message is shortened in the middle
_QUOTED = re.compile(r"`([^`]*)`")


def tidy(message: str) -> str:
    """One line, with long quoted source shortened: messages quote the user's
    code, which may span lines or run to thousands of characters."""
    def shorten(match: re.Match) -> str:
        code = " ".join(match.group(1).split())
        if len(code) > MAX_QUOTED:
            half = MAX_QUOTED // 2 - 1
            code = f"{code[:half]} … {code[-half:]}"
        return f"`{code}`"
    return _QUOTED.sub(shorten, " ".join(message.split()) if "\n" in message else message)


def _printable(text: str) -> str:
    """Source shown to a terminal: tabs and control characters become spaces
    (one character each, so columns still line up) and never reach the terminal."""
    return "".join(c if c.isprintable() else " " for c in text)


def _window(text: str, column: int) -> tuple[str, int]:
    """The part of a long line to show, around `column` (1-based), and how far
    the text's column 1 moves in it (negative when the window starts later)."""
    if len(text) <= MAX_SHOWN_WIDTH:
        return text, 0
    start = max(0, min(column - 1 - MAX_SHOWN_WIDTH // 3, len(text) - MAX_SHOWN_WIDTH))
    lead = "…" if start > 0 else ""
    tail = "…" if start + MAX_SHOWN_WIDTH < len(text) else ""
    return lead + text[start:start + MAX_SHOWN_WIDTH] + tail, len(lead) - start


def _source_line(source: Source, line: int, places: list, gutter: int) -> list[tuple[str, str]]:
    """One source line, an underline row marking each place on it (`^` for the
    error, `-` for related places), and the places' labels."""
    text = _printable(source.line_text(line))
    places = sorted(places, key=lambda p: p[0].column)
    shown, shift = _window(text, places[0][0].column)
    marks = []  # (offset in the shown text, width, mark, style, label)
    for place, label, mark, style in places:
        width = place.end_column - place.column if place.end_line == place.line else len(text) - place.column + 1
        offset = max(0, place.column - 1 + shift)
        marks.append((offset, max(1, min(width, len(shown) - offset)), mark, style, label))
    # Each mark in the first underline row it fits in after the marks there (a call inside another's text
    # on the same line: a row below), each row's last label after it and the others' below.
    rows: list[list] = []
    for place in marks:
        row = next((row for row in rows if place[0] >= row[-1][0] + row[-1][1]), None)
        if row is None:
            rows.append([place])
        else:
            row.append(place)
    blank = (f"{'':>{gutter}} | ", "bold blue")
    out = [("\n", ""), (f"{line:>{gutter}} | ", "bold blue"), (shown, "")]
    for row in rows:
        out += [("\n", ""), blank]
        at = 0
        for offset, fits, mark, style, _ in row:
            out += [(" " * (offset - at), ""), (mark * fits, f"bold {style}")]
            at = offset + fits
        *earlier, (_, _, _, last_style, last_label) = row
        if last_label:
            out.append((f" {last_label}", f"bold {last_style}"))
        for offset, _, _, style, label in earlier:
            if label:
                out += [("\n", ""), blank, (" " * offset + label, f"bold {style}")]
    return out


def _segments(diagnostic: Diagnostic, source: Source | None) -> list[tuple[str, str]]:
    """The rendering as (text, style) pieces; styles are rich style names."""
    colour = "red" if diagnostic.severity == "error" else "yellow"
    span = diagnostic.span
    where = source.name if source is not None else (diagnostic.origin or "spiread")
    if span is not None and (source is not None or diagnostic.origin):
        where = f"{where}:{span.line}:{span.column}"
    out = [(f"{where}: ", "bold"), (f"{diagnostic.severity}:", f"bold {colour}"),
           (f" {tidy(diagnostic.message)}", "bold")]
    if source is not None:
        places = ([(span, "", "^", colour)] if span is not None else []) + \
                 [(s, label, "-", "cyan") for s, label in diagnostic.related]
        gutter = max((len(str(s.line)) for s, *_ in places), default=1) + 1
        for line in sorted({place[0].line for place in places}):
            out += _source_line(source, line, [p for p in places if p[0].line == line], gutter)
    indent = " " * (max(len(str(span.line)) + 1, 2) if span is not None else 2)
    for note in diagnostic.notes:
        out += [("\n", ""), (f"{indent}= ", "bold blue"), ("note:", "bold"), (f" {tidy(note)}", "")]
    return out


def render(diagnostic: Diagnostic, source: Source | None) -> str:
    """Plain text: header, the source line(s), an underline under the whole span, notes."""
    return "".join(text for text, _ in _segments(diagnostic, source))


def emit(diagnostic: Diagnostic, source: Source | None, file=None) -> None:
    """Write a diagnostic to stderr: coloured on a terminal, plain otherwise."""
    file = file or sys.stderr
    if not file.isatty():
        file.write(render(diagnostic, source) + "\n")
        file.flush()
        return
    from rich.console import Console
    from rich.text import Text
    text = Text()
    for piece, style in _segments(diagnostic, source):
        text.append(piece, style=style or None)
    Console(file=file, highlight=False, soft_wrap=True).print(text)


def shape_str(shape: tuple[int, ...]) -> str:
    """3×2 for a matrix, `a vector of 3` for a vector, `a scalar` for rank 0."""
    if len(shape) == 0:
        return "a scalar"
    if len(shape) == 1:
        return f"a vector of {_count(shape[0])}"
    return "×".join(_count(n) for n in shape)


def _count(n: int) -> str:
    """A size in at most about 15 characters (1.23e+300 when longer)."""
    digits = str(n)
    return digits if len(digits) <= 15 else f"{digits[0]}.{digits[1:3]}e+{len(digits) - 1}"
