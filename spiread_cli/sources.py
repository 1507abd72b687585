"""A program's text: read from a file or standard input (refused when it is
not UTF-8 text of a program's size), parsed, and the folder its relative
paths resolve from."""

from __future__ import annotations

import sys
from pathlib import Path

from . import syntax
from .diagnostics import Source, Span, SpireadError

MAX_SOURCE_BYTES = 64 << 20


def read_source(path: str) -> Source:
    """Read a program from a path, or from standard input for `-`."""
    if path == "-":
        if sys.stdin is None:  # started with `<&-`
            raise SpireadError("-: standard input is closed; there is no program to read")
        raw = sys.stdin.buffer.read()
        name = "<stdin>"
    else:
        p = Path(path)
        if p.is_dir():
            raise SpireadError(f"{path}: is a directory, not a program", exit_code=1)
        try:
            with open(p, "rb") as f:
                raw = f.read(MAX_SOURCE_BYTES + 1)
        except FileNotFoundError:
            raise SpireadError(f"{path}: no such file") from None
        except OSError as err:
            raise SpireadError(f"{path}: cannot read it: {err.strerror or err}") from None
        name = path
    if len(raw) > MAX_SOURCE_BYTES:
        raise SpireadError(f"{name}: larger than {MAX_SOURCE_BYTES >> 20} MB; this is not a program")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise _bad_byte("this file is UTF-16 text; save it as UTF-8", raw, 0, name)
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark; positions count from after it
    try:  # the first bad byte is reported: a NUL, or one that is not UTF-8
        text, bad = raw.decode("utf-8"), len(raw)
    except UnicodeDecodeError as err:
        text, bad = None, err.start
    nul = raw.find(b"\0", 0, bad)
    if nul >= 0:
        raise _bad_byte("this file holds a NUL byte; it looks like a binary file, not a program", raw, nul, name)
    if text is None:
        raise _bad_byte(f"this file is not UTF-8 text: the byte 0x{raw[bad]:02x} cannot be read here",
                        raw, bad, name, ["save the file as UTF-8"])
    return Source(name, text)


def _bad_byte(message: str, raw: bytes, offset: int, name: str, notes: list[str] = ()) -> SpireadError:
    """An error at a byte that cannot be program text, shown as every error
    is, with its line and a caret: in the text as far as it can be read
    (each bad byte, NUL too, as U+FFFD)."""
    shown = raw.decode("utf-8", errors="replace").replace("\0", "\ufffd")
    before = raw[:offset].decode("utf-8", errors="replace")
    line_start = before.rfind("\n") + 1
    line, column = before.count("\n") + 1, len(before) - line_start + 1
    span = Span(line, column, line, column + 1, len(before), len(before) + 1)
    return SpireadError(message, span, list(notes), origin=name).located_in(Source(name, shown))


def base_dir_of(source: Source) -> Path:
    """Relative paths in a program resolve from its file's folder (stdin: the working directory)."""
    return Path.cwd() if source.name == "<stdin>" else Path(source.name).resolve().parent


def parse(source: Source) -> syntax.Module:
    try:
        return syntax.parse(source)
    except SpireadError as err:
        raise err.located_in(source)
