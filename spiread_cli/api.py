"""The library API: what the commands do, callable without the command line.

    >>> from spiread_cli import api
    >>> run = api.run_file("examples/seed.ad")
    >>> result = api.gradients(run, ["weights"])
    >>> result.gradients["weights"]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterable

import numpy as np

from . import syntax
from .data import load_archive, load_array, parse_set_option
from .data_open import SET_PATH_SUFFIXES
from .diagnostics import Source, Span, SpireadError, did_you_mean
from .interpreter import Const, Interpreter
from .gradients import gradients  # noqa: F401  (re-exported: api.gradients)
from .tape import Run

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


def parse_overrides(options: list[str], base_dir: Path | None = None, flag: str = "--set",
                    bound: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """`--set NAME=VALUE` options (or, as `flag` says, `--hvp`'s): a number,
    a literal, or a path to a data file; `--set FILE.npz` binds each of the
    archive's arrays by its name. Every message names the option as given.
    With `bound` (the program's names), a name it does not bind is refused."""
    overrides = {}
    for option in options:
        given = f"`{flag} {option}`"
        name, text = parse_set_option(option, flag)
        if Path(text).suffix.lower() in SET_PATH_SUFFIXES:
            try:
                read = {name: load_array(Path(text), name=name)} if name else load_archive(Path(text))
            except SpireadError as err:  # no program to point into: name the option
                raise SpireadError(f"{given}: {err.diagnostic.message}", notes=err.diagnostic.notes) from None
        else:
            read = {name: _literal(text, name, given, base_dir)}
        for key in read:
            if bound is not None and key not in bound:
                what = f"`{flag} {key}=…`: the program binds no `{key}`" if name else \
                    f"{given}: the program binds no `{key}`, an array in it"
                raise SpireadError(what, notes=did_you_mean(key, bound), exit_code=2)
        overrides.update(read)
    return overrides


def _literal(text: str, name: str, given: str, base_dir: Path | None) -> np.ndarray:
    """VALUE of `--set NAME=VALUE` when it is not a file: a number or a literal."""
    try:
        expr = syntax.parse_expression(text)
        interpreter = Interpreter(Source(f"--set {name}", text), base_dir=base_dir)
        value = interpreter.evaluate(expr).value
    except SpireadError as err:
        raise SpireadError(f"{given}: {err.diagnostic.message}", exit_code=2,
                           notes=["VALUE is a number, a literal like [[1,2],[3,4]], or a .npy/.npz/.csv/.json "
                                  "path"]) from None
    if not isinstance(value, Const):
        raise SpireadError(f"{given}: the value must be a constant", exit_code=2)
    return value.value


def run_source(source: Source, overrides: dict[str, np.ndarray] | None = None, of: str | None = None,
               base_dir: Path | None = None, evaluate: bool = True) -> Run:
    """Parse and run a program. An error carries the source it points into.
    With `evaluate=False` an op is computed only when its value is first read
    (`Interpreter.run`)."""
    return run_module(source, parse(source), overrides, of, base_dir, evaluate)


def parse(source: Source) -> syntax.Module:
    try:
        return syntax.parse(source)
    except SpireadError as err:
        raise err.located_in(source)


def run_module(source: Source, module: syntax.Module, overrides: dict[str, np.ndarray] | None = None,
               of: str | None = None, base_dir: Path | None = None, evaluate: bool = True) -> Run:
    """Run a parsed program. What its `println` wrote before an error is
    kept on the error (`.printed`), to be shown before it."""
    interpreter = Interpreter(source, overrides, base_dir or base_dir_of(source))
    try:
        return interpreter.run(module, of, evaluate)
    except SpireadError as err:
        err.printed = list(interpreter.printed)
        raise err.located_in(source)


def run_file(path: str, sets: list[str] = (), of: str | None = None, evaluate: bool = True) -> Run:
    source = read_source(path)
    base = base_dir_of(source)
    module = parse(source)
    return run_module(source, module, parse_overrides(list(sets), base, bound=bound_names(module)), of, base,
                      evaluate)


def bound_names(module: syntax.Module) -> list[str]:
    """The names a program binds, in order: what `--set` may replace."""
    return [s.name for s in module.statements if isinstance(s, syntax.Binding)]
