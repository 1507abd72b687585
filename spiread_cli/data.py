"""Reading arrays from files: `load("path")` in programs and `--set NAME=PATH`.

Data files may be hostile or careless, so every failure is a SpireadError
naming the file, in one sentence of bounded length, and nothing is allocated
before its size is known to be within the limit (limits.py). The readers
live by format: data_npy.py (.npy, .npz), data_text.py (JSON and text
tables); data_open.py opens a file and names it.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .data_npy import from_npy, from_npz
from .data_open import SET_PATH_SUFFIXES, SUFFIXES, Unreadable, clip, open_regular, shown
from .data_text import decode, from_json, from_text, read_text_bytes
from .diagnostics import SpireadError, Span


def load_array(path: Path, span: Span | None = None, name: str | None = None) -> np.ndarray:
    """Read a rank-0, -1 or -2 float64 array; `name` picks one from an `.npz`."""
    prefix = f"cannot load `{shown(path)}`"
    suffix = path.suffix.lower()
    if suffix == ".zarr" and path.exists():  # the dask backend opens an existing .zarr itself (chunks.ZarrRows)
        raise SpireadError(f"{prefix}: a zarr array is read by `--backend dask` only", span,
                           ['run with `--backend dask` (docs/scaling.md), or save the array as .npy'])
    if suffix not in SET_PATH_SUFFIXES and not path.is_dir():
        raise SpireadError(f"{prefix}: unknown file type `{clip(suffix or path.name)}`", span,
                           [f"spiread reads {', '.join(SUFFIXES)}"])
    with open_regular(path, prefix, span) as file:
        try:
            if suffix == ".npy":
                array = from_npy(file, os.fstat(file.fileno()).st_size, prefix, span)
            elif suffix == ".npz":
                (array,) = from_npz(file, name, prefix, span).values()
            else:
                raw = read_text_bytes(file, suffix, prefix, span)
                array = from_json(raw) if suffix == ".json" else from_text(decode(raw), suffix)
        except Unreadable as err:
            raise SpireadError(f"{prefix}: {err}", span) from None
        except MemoryError:
            raise SpireadError(f"{prefix}: there is not enough memory to read it", span,
                               ["the data may be too big for one process"]) from None
    return as_float64(array, path, span)


def load_archive(path: Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` archive (as `train --save` writes), by name,
    as float64 arrays of rank ≤ 2: read whole, with the checks `load_array` makes."""
    prefix = f"cannot load `{shown(path)}`"
    with open_regular(path, prefix, None) as file:
        try:
            arrays = from_npz(file, None, prefix, None, every=True)
        except Unreadable as err:
            raise SpireadError(f"{prefix}: {err}") from None
        except MemoryError:
            raise SpireadError(f"{prefix}: there is not enough memory to read it") from None
    return {name: as_float64(array, path) for name, array in arrays.items()}


def as_float64(array: np.ndarray, path, span: Span | None = None) -> np.ndarray:
    """float64 in C order, its rank kept (np.ascontiguousarray would make a
    scalar a vector of 1); a long double beyond float64's range is refused."""
    with np.errstate(all="ignore"):
        result = np.asarray(array, dtype=np.float64, order="C")
    if array.dtype.itemsize > 8 and np.isinf(result).any():  # long double: its range is wider
        beyond = np.argwhere(np.isinf(result) & ~np.isinf(array))
        if beyond.size:
            raise SpireadError(f"cannot load `{shown(path)}`: the number at {beyond[0].tolist()} is beyond the range "
                               f"spiread can hold (a float64 reaches about ±1.8e308)", span)
    return result


def parse_set_option(option: str, flag: str = "--set") -> tuple[str | None, str]:
    """`NAME=VALUE` → (NAME, VALUE), or `FILE.npz` → (None, FILE.npz): an
    archive whose arrays bind the names they have. The error, a usage error
    (exit 2), names `flag`, the option given (`--set`, `--hvp`)."""
    name, sep, value = option.partition("=")
    name = name.strip()
    if not sep and is_archive(option):
        return None, option.strip()
    if not sep or not name.isidentifier() or not value.strip():
        raise SpireadError(f"`{flag} {option}`: expected NAME=VALUE, e.g. `{flag} W=[[1,2],[3,4]]` or "
                           f"`{flag} W=w.npy`, or an archive of arrays by name, `{flag} w.npz`", exit_code=2)
    return name, value.strip()


def is_archive(text: str) -> bool:
    return Path(text.strip()).suffix.lower() == ".npz"
