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
        raise SpireadError("this file is UTF-16 text; save it as UTF-8", origin=name)
    if b"\0" in raw:
        raise SpireadError("this file holds a NUL byte; it looks like a binary file, not a program",
                           _byte_span(raw, raw.index(b"\0")), origin=name)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise SpireadError(f"this file is not UTF-8 text: the byte 0x{raw[err.start]:02x} cannot be read here",
                           _byte_span(raw, err.start), ["save the file as UTF-8"], origin=name) from None
    return Source(name, text)


def _byte_span(raw: bytes, offset: int) -> Span:
    """Where a byte sits, as a line and column of the (undecodable) text."""
    line_start = raw.rfind(b"\n", 0, offset) + 1
    line = raw.count(b"\n", 0, offset) + 1
    column = len(raw[line_start:offset].decode("utf-8", errors="replace")) + 1
    return Span(line, column, line, column + 1, offset, offset + 1)


def base_dir_of(source: Source) -> Path:
    """Relative paths in a program resolve from its file's folder (stdin: the working directory)."""
    return Path.cwd() if source.name == "<stdin>" else Path(source.name).resolve().parent


def parse(source: Source) -> syntax.Module:
    try:
        return syntax.parse(source)
    except SpireadError as err:
        raise err.located_in(source)
