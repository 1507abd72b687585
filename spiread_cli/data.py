"""Reading arrays from files: `load("path")` in programs and `--set NAME=PATH`.

Every failure is a SpireadError naming the file. Pickled `.npy` files are
refused: loading one can run arbitrary code.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np

from .diagnostics import SpireadError, Span

SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt", ".json")


def load_array(path: Path, span: Span | None = None, name: str | None = None) -> np.ndarray:
    """Read a rank-0, -1 or -2 float64 array; `name` picks one from an `.npz`."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpireadError(f"cannot load `{shown(path)}`: unknown file type `{suffix or path.name}`", span,
                           [f"spiread reads {', '.join(SUFFIXES)}"])
    if path.is_dir():
        raise SpireadError(f"cannot load `{shown(path)}`: it is a directory", span)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpireadError(f"cannot load `{shown(path)}`: no such file", span) from None
    except OSError as err:
        raise SpireadError(f"cannot load `{shown(path)}`: {err.strerror or err}", span) from None
    try:
        if suffix == ".npy":
            array = _from_npy(raw)
        elif suffix == ".npz":
            array = _from_npz(raw, path, name, span)
        elif suffix == ".json":
            array = _from_json(raw)
        else:
            array = _from_text(_decode(raw), suffix)
    except _Unreadable as err:
        raise SpireadError(f"cannot load `{shown(path)}`: {err}", span) from None
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as err:
        raise SpireadError(f"cannot load `{shown(path)}`: {_first_line(str(err))}", span) from None
    return checked(array, path, span)


def checked(array: np.ndarray, path, span: Span | None) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        kind = {"U": "text", "S": "text", "c": "complex numbers", "M": "dates", "m": "time spans"}.get(
            array.dtype.kind, f"{array.dtype} values")
        raise SpireadError(f"cannot load `{shown(path)}`: it holds {kind}, not real numbers", span)
    if array.ndim > 2:
        raise SpireadError(f"cannot load `{shown(path)}`: it is {array.ndim}-dimensional, spiread handles at most 2", span)
    return np.ascontiguousarray(array, dtype=np.float64)


def shown(path) -> str:
    """A path as messages show it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except (ValueError, OSError):
        return str(path)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"


class _Unreadable(Exception):
    """Why a data file cannot be read, in words for its owner."""


_NPY_MAGIC = b"\x93NUMPY"


def _from_npy(raw: bytes) -> np.ndarray:
    if not raw.startswith(_NPY_MAGIC):
        raise _Unreadable("it is not a NumPy .npy file")
    try:
        return np.load(io.BytesIO(raw), allow_pickle=False)
    except ValueError as err:
        if "pickle" in str(err).lower():
            raise _Unreadable("it holds Python objects (pickled), which spiread never loads") from None
        raise


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise _Unreadable(f"it is not UTF-8 text (line {line} holds the byte 0x{raw[err.start]:02x})") from None


def _from_json(raw: bytes) -> np.ndarray:
    try:
        data = json.loads(_decode(raw))
    except json.JSONDecodeError as err:
        raise _Unreadable(f"it is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise _Unreadable("its lists nest too deeply") from None
    try:
        return np.array(data, dtype=np.float64)
    except (ValueError, TypeError) as err:
        if "inhomogeneous" in str(err):
            raise _Unreadable("its rows have different lengths") from None
        raise _Unreadable("it must hold a number, a list of numbers, or a list of equal-length lists") from None
    except RecursionError:
        raise _Unreadable("its lists nest too deeply") from None


def _from_npz(raw: bytes, path: Path, name: str | None, span: Span | None) -> np.ndarray:
    if not raw.startswith(b"PK"):
        raise _Unreadable("it is not a NumPy .npz archive")
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        keys = list(archive.keys())
        if name is not None and name in keys:
            return archive[name]
        if name is None and len(keys) == 1:
            return archive[keys[0]]
    wanted = f"no array called `{name}`" if name else "more than one array"
    raise SpireadError(f"cannot load `{shown(path)}`: it has {wanted}", span,
                       [f"it holds: {', '.join(keys) or 'nothing'}"])


def _from_text(text: str, suffix: str) -> np.ndarray:
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    if not first:
        raise _Unreadable("it holds no numbers")
    delimiter = "\t" if suffix == ".tsv" else "," if (suffix == ".csv" or "," in first) else None
    try:
        [float(cell) for cell in first.split(delimiter)]
        skip = 0
    except ValueError:
        skip = 1  # a non-numeric first row is a header
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns about a file with no rows
            array = np.loadtxt(io.StringIO(text), delimiter=delimiter, skiprows=skip, dtype=np.float64, ndmin=2)
    except (ValueError, UserWarning):
        raise _Unreadable(_text_problem(lines, delimiter, skip)) from None
    return array[:, 0] if array.shape[1] == 1 else array


def _text_problem(lines: list[str], delimiter: str | None, skip: int) -> str:
    """What is wrong with a table numpy refused, by line and column (the
    slow path, taken only on error)."""
    width = None
    skipped = 0
    for number, line in enumerate(lines, start=1):
        content = line.split("#", 1)[0]
        if not content.strip():
            continue
        if skipped < skip:
            skipped += 1
            continue
        cells = content.split(delimiter)
        for column, cell in enumerate(cells, start=1):
            try:
                float(cell)
            except ValueError:
                return f"line {number}, column {column}: `{cell.strip()}` is not a number"
        if width is None:
            width = (number, len(cells))
        elif len(cells) != width[1]:
            return f"line {number} has {len(cells)} columns, but line {width[0]} has {width[1]}"
    return "it holds no numbers" if width is None else "it is not a table of numbers"


def parse_set_option(option: str) -> tuple[str, str]:
    """`NAME=VALUE` → (NAME, VALUE); the error is a usage error (exit 2)."""
    name, sep, value = option.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier() or not value.strip():
        raise SpireadError(f"`--set {option}`: expected NAME=VALUE, e.g. `--set W=[[1,2],[3,4]]` or `--set W=w.npy`",
                           exit_code=2)
    return name, value.strip()
