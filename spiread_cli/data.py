"""Reading arrays from files: `load("path")` in programs and `--set NAME=PATH`.

Every failure is a SpireadError naming the file. Pickled `.npy` files are
refused: loading one can run arbitrary code.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np

from .diagnostics import SpireadError, Span

SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt", ".json")


def load_array(path: Path, span: Span | None = None, name: str | None = None) -> np.ndarray:
    """Read a rank-0, -1 or -2 float64 array; `name` picks one from an `.npz`."""
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise SpireadError(f"cannot load `{path}`: unknown file type `{suffix or path.name}`", span,
                           [f"spiread reads {', '.join(SUFFIXES)}"])
    if path.is_dir():
        raise SpireadError(f"cannot load `{path}`: it is a directory", span)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SpireadError(f"cannot load `{path}`: no such file", span) from None
    except OSError as err:
        raise SpireadError(f"cannot load `{path}`: {err.strerror or err}", span) from None
    try:
        if suffix == ".npy":
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        elif suffix == ".npz":
            array = _from_npz(raw, path, name, span)
        elif suffix == ".json":
            array = np.array(json.loads(raw.decode("utf-8")), dtype=np.float64)
        else:
            array = _from_text(raw.decode("utf-8"), suffix)
    except SpireadError:
        raise
    except ValueError as err:
        reason = str(err)
        if "pickle" in reason.lower():
            reason = "it holds Python objects (pickled), which spiread never loads"
        raise SpireadError(f"cannot load `{path}`: {_first_line(reason)}", span) from None
    except (UnicodeDecodeError, json.JSONDecodeError, zipfile.BadZipFile, OSError, TypeError) as err:
        raise SpireadError(f"cannot load `{path}`: {_first_line(str(err))}", span) from None
    return checked(array, path, span)


def checked(array: np.ndarray, path, span: Span | None) -> np.ndarray:
    if array.dtype.kind not in "biuf":
        raise SpireadError(f"cannot load `{path}`: it holds {array.dtype} data, not numbers", span)
    if array.ndim > 2:
        raise SpireadError(f"cannot load `{path}`: it is {array.ndim}-dimensional, spiread handles at most 2", span)
    return np.ascontiguousarray(array, dtype=np.float64)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"


def _from_npz(raw: bytes, path: Path, name: str | None, span: Span | None) -> np.ndarray:
    with np.load(io.BytesIO(raw), allow_pickle=False) as archive:
        keys = list(archive.keys())
        if name is not None and name in keys:
            return archive[name]
        if name is None and len(keys) == 1:
            return archive[keys[0]]
    wanted = f"no array called `{name}`" if name else "more than one array"
    raise SpireadError(f"cannot load `{path}`: it has {wanted}", span,
                       [f"it holds: {', '.join(keys) or 'nothing'}"])


def _from_text(text: str, suffix: str) -> np.ndarray:
    lines = text.splitlines()
    first = next((line for line in lines if line.strip()), "")
    delimiter = "\t" if suffix == ".tsv" else "," if (suffix == ".csv" or "," in first) else None
    try:
        [float(cell) for cell in first.split(delimiter)]
        skip = 0
    except ValueError:
        skip = 1  # a non-numeric first row is a header
    array = np.loadtxt(io.StringIO(text), delimiter=delimiter, skiprows=skip, dtype=np.float64, ndmin=2)
    return array[:, 0] if array.shape[1] == 1 else array


def parse_set_option(option: str) -> tuple[str, str]:
    """`NAME=VALUE` → (NAME, VALUE); the error is a usage error (exit 2)."""
    name, sep, value = option.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier() or not value.strip():
        raise SpireadError(f"`--set {option}`: expected NAME=VALUE, e.g. `--set W=[[1,2],[3,4]]` or `--set W=w.npy`",
                           exit_code=2)
    return name, value.strip()
