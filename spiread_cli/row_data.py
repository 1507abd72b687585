"""The row data of a program run by row chunks: which files are row-chunked
(those a program loads, or `--set NAME=PATH` gives, that have the most rows,
N) and how to read any of them, a block of rows at a time.

`.npy` and `.zarr` files are read at an offset, text (CSV) files by the
blocks of lines one scan found (data_text.TextTable); a reader carries the
path and the layout, never the data, so a task that holds one sends little
to a worker. `.npz` and JSON are read whole once and sliced.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import syntax_tree as ast
from .data import as_float64, load_array
from .data_npy import npy_layout
from .data_open import TEXT_SUFFIXES, shown
from .data_text import TextTable
from .diagnostics import Span, SpireadError


@dataclass(frozen=True)
class NpyRows:
    """Rows of a `.npy` file, read at an offset: pickling this (to send a
    task to a worker) sends the path, never the data."""
    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    fortran: bool

    @staticmethod
    def open(path: Path, span: Span | None) -> "NpyRows":
        offset, shape, fortran, dtype = npy_layout(path, span)
        return NpyRows(str(path), offset, tuple(shape), dtype.str, fortran)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if not self.shape:
            return load_array(Path(self.path))
        dtype = np.dtype(self.dtype)
        if self.fortran:  # rows are strided: let a memory map pick them out
            whole = np.memmap(self.path, dtype, "r", self.offset, self.shape, order="F")
            part = np.array(whole[start:stop])
            del whole
        else:
            row_bytes = math.prod(self.shape[1:]) * dtype.itemsize
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * row_bytes)
                raw = f.read((stop - start) * row_bytes)
            part = np.frombuffer(raw, dtype).reshape((stop - start,) + self.shape[1:])
        return as_float64(part, self.path)


@dataclass(frozen=True)
class ZarrRows:
    """Rows of a `.zarr` array (a directory), read through zarr."""
    path: str
    shape: tuple[int, ...]

    @staticmethod
    def open(path: Path, span: Span | None) -> "ZarrRows":
        try:
            import zarr
        except ImportError:
            raise SpireadError(f"cannot load `{shown(path)}`: reading .zarr needs zarr", span,
                               ['pip install zarr (or pip install ".[dask]" in spiread\'s checkout)']) from None
        try:
            array = zarr.open_array(str(path), mode="r")
        except Exception as err:  # zarr raises many kinds for a path that is not an array
            raise SpireadError(f"cannot load `{shown(path)}`: not a zarr array ({err})", span) from None
        if array.ndim > 2 or np.dtype(array.dtype).kind not in "biuf":
            raise SpireadError(f"cannot load `{shown(path)}`: spiread reads zarr arrays of real numbers "
                               f"with at most 2 dimensions; this one is {array.dtype}, {array.ndim}-dimensional", span)
        return ZarrRows(str(path), tuple(array.shape))

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        import zarr
        array = zarr.open_array(self.path, mode="r")
        return as_float64(np.asarray(array[start:stop] if self.shape else array[...]), self.path)


@dataclass(frozen=True)
class TextRows:
    """Rows of a CSV (or other text) table, found by one scan of the file
    (data_text.TextTable: the row count, the header rule and every row checked);
    a task carries the path and the blocks' offsets, never the data."""
    table: TextTable

    @staticmethod
    def open(path: Path, span: Span | None) -> "TextRows":
        return TextRows(TextTable.scan(path, span))

    @property
    def rows(self) -> int:
        return self.table.rows

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.table.read(start, stop)


@dataclass(frozen=True)
class ArrayRows:
    """A file read whole (`.npz`, JSON): sliced in memory."""
    array: np.ndarray

    @property
    def rows(self) -> int:
        return self.array.shape[0] if self.array.ndim else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop] if self.array.ndim else self.array


def open_rows(path: Path, span: Span | None, name: str | None = None):
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return ZarrRows.open(path, span)
    if suffix == ".npy" and path.is_file():
        return NpyRows.open(path, span)
    if suffix in TEXT_SUFFIXES and path.is_file():
        return TextRows.open(path, span)
    return ArrayRows(load_array(path, span, name))


def loaded_paths(module: ast.Module, base_dir: Path) -> list[tuple[Path, Span]]:
    """The files `load("…")` calls name (the path is always a literal), with
    the literal's span (where a message about the file points), found by
    walking the syntax tree with an explicit stack."""
    found, stack = [], [module]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if (isinstance(node, ast.Call) and isinstance(node.callee, ast.Name) and node.callee.id == "load"
                and node.args and isinstance(node.args[0], ast.String)):
            path = Path(node.args[0].value)
            found.append((path if path.is_absolute() else base_dir / path, node.args[0].span))
        for slot in getattr(type(node), "__slots__", ()):
            child = getattr(node, slot, None)
            if isinstance(child, list) or hasattr(type(child), "__slots__") and not isinstance(child, (str, Span)):
                stack.append(child)
    return found


@dataclass
class Data:
    """The data files of one program: which are row-chunked (those with N
    rows, the most) and how to read any of them."""
    files: dict[str, object]                   # resolved path -> rows reader
    sets: dict[str, object]                    # --set NAME -> rows reader
    rows: int                                  # N

    @staticmethod
    def open(module: ast.Module, base_dir: Path, set_files: dict[str, Path]) -> "Data":
        files = {}
        for path, span in loaded_paths(module, base_dir):
            key = str(path.resolve())
            if key not in files and (path.exists()):
                files[key] = open_rows(path, span)
        sets = {name: open_rows(path, None, name) for name, path in set_files.items()}
        return Data(files, sets, max([r.rows for r in [*files.values(), *sets.values()]], default=0))

    def chunked(self, reader) -> bool:
        return self.rows > 0 and reader.rows == self.rows

    def window(self, reader, start: int, stop: int) -> np.ndarray:
        return reader.read(start, stop) if self.chunked(reader) else reader.read(0, reader.rows)

    def loader(self, start: int, stop: int):
        def load(path: Path, span: Span | None) -> np.ndarray:
            reader = self.files.get(str(path.resolve()))
            if reader is None:  # not found by the syntax walk (missing, or a directory): the ordinary message
                return load_array(path, span)
            return self.window(reader, start, stop)
        return load

    def overrides(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: self.window(reader, start, stop) for name, reader in self.sets.items()}

    def row_bounds(self, chunk_rows: int) -> list[tuple[int, int]]:
        return [(start, min(start + chunk_rows, self.rows)) for start in range(0, self.rows, chunk_rows)]
