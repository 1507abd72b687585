"""Errors and warnings as values: a span, a message, optional notes.

Every diagnostic spiread emits points at a place in the user's source and is
rendered the same way, compiler style::

    model.ad:3:17: error: `data @@ weights`: inner sizes differ, data is 3×2, weights is 3×2
        3 | probits = (data @@ weights).exp
          |                 ^^
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Iterable


@dataclass(frozen=True, slots=True)
class Span:
    """A half-open range of source text; lines and columns count from 1."""

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


@dataclass(frozen=True, slots=True)
class Source:
    """A program's text and the name to show for it (a path, or `<stdin>`)."""

    name: str
    text: str

    def snippet(self, span: Span) -> str:
        return self.text[span.start:span.end]

    def line_text(self, line: int) -> str:
        lines = self.text.splitlines()
        return lines[line - 1] if 0 < line <= len(lines) else ""


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: str  # "error" | "warning"
    message: str
    span: Span | None = None
    notes: tuple[str, ...] = ()

    def as_json(self) -> dict:
        return {"line": self.span.line if self.span else None,
                "column": self.span.column if self.span else None,
                "message": self.message}


class SpireadError(Exception):
    """An error in the user's program, data or command line (never a bug of ours).

    `exit_code` follows LANGUAGE.md §8: 1 for the program or its data, 2 for usage.
    """

    def __init__(self, message: str, span: Span | None = None, notes: Iterable[str] = (),
                 exit_code: int = 1):
        super().__init__(message)
        self.diagnostic = Diagnostic("error", message, span, tuple(notes))
        self.exit_code = exit_code


def usage_error(message: str, notes: Iterable[str] = ()) -> SpireadError:
    return SpireadError(message, None, notes, exit_code=2)


def did_you_mean(name: str, known: Iterable[str]) -> tuple[str, ...]:
    """A note suggesting the closest known spelling, or nothing."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return (f"did you mean `{close[0]}`?",) if close else ()


@dataclass
class Diagnostics:
    """The warnings collected during one run."""

    warnings: list[Diagnostic] = field(default_factory=list)

    def warn(self, message: str, span: Span | None, notes: Iterable[str] = ()) -> None:
        self.warnings.append(Diagnostic("warning", message, span, tuple(notes)))


def render(diagnostic: Diagnostic, source: Source | None) -> str:
    """Plain-text rendering: header, source line, caret underline, notes."""
    where = source.name if source else "spiread"
    span = diagnostic.span
    if span is not None and source is not None:
        where = f"{where}:{span.line}:{span.column}"
    out = [f"{where}: {diagnostic.severity}: {diagnostic.message}"]
    if span is not None and source is not None:
        text = source.line_text(span.line).replace("\t", " ")
        gutter = f"{span.line:>5} | "
        width = (span.end_column - span.column) if span.end_line == span.line else len(text) - span.column + 1
        out.append(gutter + text)
        out.append(" " * (len(gutter) - 2) + "| " + " " * (span.column - 1) + "^" * max(1, width))
    out.extend(f"      = note: {note}" for note in diagnostic.notes)
    return "\n".join(out)


def shape_str(shape: tuple[int, ...]) -> str:
    """3×2 for a matrix, `vector of 3` for a vector, `scalar` for rank 0."""
    if len(shape) == 0:
        return "a scalar"
    if len(shape) == 1:
        return f"a vector of {shape[0]}"
    return "×".join(str(n) for n in shape)
