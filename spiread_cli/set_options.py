"""`--set NAME=VALUE` (and `--hvp NAME=V`) options read as values: a number,
a literal, or a data file's array; `--set FILE.npz` binds each of the
archive's arrays by its name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from . import syntax
from .data import load_archive, load_array, parse_set_option
from .data_open import SET_PATH_SUFFIXES
from .diagnostics import Source, SpireadError, did_you_mean
from .formatting import NON_FINITE
from .interpreter import Const, Interpreter


def parse_overrides(options: list[str], base_dir: Path | None = None, flag: str = "--set",
                    bound: Iterable[str] | None = None, row_files: bool = False) -> dict[str, np.ndarray | Path]:
    """`--set NAME=VALUE` options (or, as `flag` says, `--hvp`'s): a number,
    a literal, or a path to a data file; `--set FILE.npz` binds each of the
    archive's arrays by its name. Every message names the option as given.
    With `bound` (the program's names), a name it does not bind is refused.
    With `row_files` (`--backend dask`), `NAME=FILE` is left a path: row
    data, which the chunks read a block of rows at a time."""
    overrides = {}
    for option in options:
        given = f"`{flag} {option}`"
        name, text = parse_set_option(option, flag)
        if name and row_files and Path(text).suffix.lower() in SET_PATH_SUFFIXES:
            read = {name: Path(text)}
        elif Path(text).suffix.lower() in SET_PATH_SUFFIXES:
            try:
                read = {name: load_array(Path(text), name=name)} if name else load_archive(Path(text))
            except SpireadError as err:  # no program to point into: name the option
                raise SpireadError(f"{given}: {err.diagnostic.message}", notes=err.diagnostic.notes) from None
        else:
            read = {name: _literal(text, name, given, base_dir, flag)}
        for key in read:
            if bound is not None and key not in bound:
                what = f"`{flag} {key}=…`: the program binds no `{key}`" if name else \
                    f"{given}: the program binds no `{key}`, an array in it"
                raise SpireadError(what, notes=did_you_mean(key, bound), exit_code=2)
        overrides.update(read)
    return overrides


def _literal(text: str, name: str, given: str, base_dir: Path | None, flag: str) -> np.ndarray:
    """VALUE of `--set NAME=VALUE` (or `flag`'s) when it is not a file: a number or a literal.
    A non-finite number is spelled as spiread's JSON writes it: `inf`, `-inf`, `nan`."""
    if text in NON_FINITE:
        return np.array(NON_FINITE[text])
    try:
        expr = syntax.parse_expression(text)
        interpreter = Interpreter(Source(f"--set {name}", text), base_dir=base_dir)
        value = interpreter.evaluate(expr).value
    except SpireadError as err:
        if os.path.isfile(text):  # not of arrays, e.g. `--set w=model.ad` (isfile: False for a name too long)
            raise SpireadError(f"{given}: `{text}` is a file, but not one of arrays: {flag} reads "
                               f"{'/'.join(s for s in SET_PATH_SUFFIXES if s != '.zarr')} files", exit_code=2) from None
        raise SpireadError(f"{given}: {err.diagnostic.message}", exit_code=2,
                           notes=["VALUE is a number (`inf`, `-inf` and `nan` too), a literal like [[1,2],[3,4]], "
                                  "or a .npy/.npz/.csv/.json path (a list holding inf or nan: a file, such as the "
                                  "JSON spiread writes)"]) from None
    if not isinstance(value, Const):
        raise SpireadError(f"{given}: the value must be a constant", exit_code=2)
    return value.value
