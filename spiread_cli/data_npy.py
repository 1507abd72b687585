"""Reading `.npy` files and `.npz` archives, checked before anything is
allocated: the shape in an `.npy` header, a zip member's uncompressed size
and the archive's list of members are held to the limit (limits.py) first.
Pickled `.npy` files are refused: loading one can run arbitrary code.
"""

from __future__ import annotations

import ast
import lzma
import math
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from .data_open import CHUNKS_NOTE, Unreadable, clip, open_regular, shown
from .diagnostics import SpireadError, Span, shape_str
from .limits import LIMIT_NOTE, check_shape, human_bytes, max_bytes

# zipfile keeps a ZipInfo of ~500 bytes for each member its directory lists in ≥ 46.
_MEMORY_PER_ZIP_DIRECTORY_BYTE = 16

# `.npy` headers written by numpy are ~100 bytes; the format allows more, and
# anything up to this is read (its literal is parsed safely, without eval).
_NPY_MAX_HEADER = 1 << 16
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_LENGTH = {1: ("<H", "latin1"), 2: ("<I", "latin1"), 3: ("<I", "utf8")}
_SHOWN_NAMES = 5  # how many names an error lists before saying how many more


def _kind_of(dtype: np.dtype) -> str:
    if dtype.hasobject:
        return "Python objects"
    if dtype.fields is not None:
        return "records with named fields"
    if dtype.subdtype is not None:
        return "nested arrays"
    return {"U": "text", "S": "text", "c": "complex numbers", "M": "dates", "m": "time spans",
            "V": "raw bytes"}.get(
        dtype.kind, f"{dtype} values")


def _read_header(stream, size: int, where: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise Unreadable(f"{where} is cut short in its .npy header")
    return data


# ------------------------------------------------------------------ .npy


def from_npy(stream, size: int, prefix: str, span: Span | None, member: str = "") -> np.ndarray:
    """An array from an `.npy` stream of `size` bytes (a file or a zip member),
    its declared size checked against the limit before the data is read."""
    where = f"its member `{clip(member)}`" if member else "it"
    shape, fortran_order, dtype = _npy_layout(stream, where)
    check_shape(shape, f"{prefix}: {'its array' if not member else where}", span, notes=(CHUNKS_NOTE,))
    wanted = math.prod(shape) * dtype.itemsize
    if size - stream.tell() < wanted:  # before allocating: a header may promise more than the file has
        _cut_short(where, shape, wanted, size - stream.tell())
    try:
        array = np.empty(shape[::-1] if fortran_order else shape, dtype=dtype)  # within the limit, checked above
    except MemoryError:
        raise SpireadError(f"{prefix}: {'its array' if not member else where} would be {shape_str(shape)} "
                           f"({human_bytes(math.prod(shape) * dtype.itemsize)}), and there is not that much memory",
                           span, ["the data may be too big for one process"]) from None
    got = stream.readinto(array.reshape(-1).view(np.uint8)) if wanted else 0
    if got != wanted:
        _cut_short(where, shape, wanted, got)
    return array.T if fortran_order else array


def _npy_layout(stream, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """An `.npy` stream's shape, order and element type, checked; the stream
    is left at the start of the data."""
    start = stream.read(8)
    if not start:
        raise Unreadable(f"{where} is empty")
    if not start.startswith(_NPY_MAGIC):
        raise Unreadable(f"{where} is not a NumPy .npy file")
    major = start[6] if len(start) > 6 else None
    if major not in _NPY_HEADER_LENGTH:
        raise Unreadable(f"{where} is a .npy file of a version spiread does not know ({major})")
    length_format, encoding = _NPY_HEADER_LENGTH[major]
    (length,) = struct.unpack(length_format, _read_header(stream, struct.calcsize(length_format), where))
    if length > _NPY_MAX_HEADER:
        raise Unreadable(f"{where} has a .npy header of {length:,} bytes, more than the "
                          f"{_NPY_MAX_HEADER:,} spiread reads; it is probably damaged")
    shape, fortran_order, dtype = _npy_header(_read_header(stream, length, where), encoding, where)
    if dtype.hasobject:
        raise Unreadable(f"{where} holds Python objects (pickled), which spiread never loads")
    if dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise Unreadable(f"{where} holds {_kind_of(dtype)}, not real numbers")
    if len(shape) > 2:
        raise Unreadable(f"{where} is {len(shape)}-dimensional, spiread handles at most 2")
    return shape, fortran_order, dtype


def npy_layout(path: Path, span: Span | None = None) -> tuple[int, tuple[int, ...], bool, np.dtype]:
    """Where an `.npy` file's data start, its shape, order and element type,
    checked as `load_array` checks them, without reading the data (the
    `--backend dask` reader, spiread_cli/row_data.py, reads rows from there)."""
    prefix = f"cannot load `{shown(path)}`"
    with open_regular(path, prefix, span) as file:
        try:
            shape, fortran_order, dtype = _npy_layout(file, "it")
            offset = file.tell()
        except Unreadable as err:
            raise SpireadError(f"{prefix}: {err}", span) from None
        size = os.fstat(file.fileno()).st_size
    wanted = math.prod(shape) * dtype.itemsize
    if size - offset < wanted:
        raise SpireadError(f"{prefix}: it is cut short: its {'×'.join(map(str, shape)) or 'scalar'} array needs "
                           f"{wanted:,} bytes, but only {max(size - offset, 0):,} are there", span)
    return offset, shape, fortran_order, dtype


def _cut_short(where: str, shape: tuple[int, ...], wanted: int, there: int):
    raise Unreadable(f"{where} is cut short: its {'×'.join(map(str, shape)) or 'scalar'} array needs "
                      f"{wanted:,} bytes, but only {max(there, 0):,} are there")


def _npy_header(header: bytes, encoding: str, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    bad = Unreadable(f"{where} has a damaged .npy header")
    try:
        fields = ast.literal_eval(header.decode(encoding))
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError, UnicodeDecodeError):
        raise bad from None
    if not isinstance(fields, dict) or set(fields) != {"descr", "fortran_order", "shape"}:
        raise bad
    shape, fortran_order = fields["shape"], fields["fortran_order"]
    if (not isinstance(shape, tuple) or not isinstance(fortran_order, bool)
            or not all(type(n) is int for n in shape)):
        raise bad
    if not all(0 <= n < 1 << 63 for n in shape):
        raise Unreadable(f"{where} has a .npy header declaring an impossible size")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except Exception:  # numpy's dtype parser raises many kinds on hostile descriptors
        raise Unreadable(f"{where} has a .npy header naming no valid element type") from None
    return shape, fortran_order, dtype


# ------------------------------------------------------------------ .npz


def from_npz(file, name: str | None, prefix: str, span: Span | None, every: bool = False) -> dict[str, np.ndarray]:
    """The array called `name`, or the only one when `name` is None; with
    `every`, all of them; by name."""
    start = file.read(2)
    if start != b"PK":
        raise Unreadable("it is not a NumPy .npz archive" if start else "it is empty")
    file.seek(0)
    try:
        # the end record says how long the list of members is, before zipfile reads it all
        end = zipfile._EndRecData(file)
        limit = max_bytes()
        if end and end[zipfile._ECD_SIZE] * _MEMORY_PER_ZIP_DIRECTORY_BYTE > limit:
            raise SpireadError(f"{prefix}: its list of {end[zipfile._ECD_ENTRIES_TOTAL]:,} members may take up to "
                               f"{human_bytes(end[zipfile._ECD_SIZE] * _MEMORY_PER_ZIP_DIRECTORY_BYTE)} to read, "
                               f"more than the limit of {human_bytes(limit)}", span, [LIMIT_NOTE])
        with zipfile.ZipFile(file) as archive:
            arrays = {info.filename.removesuffix(".npy"): info
                      for info in archive.infolist() if info.filename.endswith(".npy")}
            if not arrays:
                count = len(archive.infolist())
                raise Unreadable("it holds no arrays" + ("" if not count else " (its only member is not a .npy file)"
                                                          if count == 1 else f" (none of its {count:,} members is a .npy file)"))
            if every:
                chosen = arrays
            elif name is not None and name in arrays:
                chosen = {name: arrays[name]}
            elif name is None and len(arrays) == 1:
                chosen = arrays
            else:
                wanted = f"no array called `{clip(name)}`" if name else "more than one array"
                every = [] if name else ["`--set FILE.npz`, with no NAME=, binds each array to the name it has there"]
                raise SpireadError(f"{prefix}: it has {wanted}", span, [f"it holds: {_listed(arrays)}", *every])
            for info in chosen.values():
                if info.flag_bits & 0x1:
                    raise Unreadable(f"its member `{clip(info.filename)}` is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    # numpy writes only these; LZMA's decoder allocates what the file asks for
                    raise Unreadable(f"its member `{clip(info.filename)}` is compressed in a way numpy never "
                                      f"writes (zip method {info.compress_type})")
            total = sum(info.file_size for info in chosen.values())
            if total > limit + _NPY_MAX_HEADER * len(chosen):
                what = (f"its member `{clip(next(iter(chosen.values())).filename)}` unpacks" if len(chosen) == 1
                        else f"its {len(chosen):,} members unpack")
                raise SpireadError(f"{prefix}: {what} to {human_bytes(total)}, more than the limit of "
                                   f"{human_bytes(limit)}", span, [LIMIT_NOTE])
            read = {}
            for key, info in chosen.items():
                with archive.open(info) as member:
                    read[key] = from_npy(member, info.file_size, prefix, span, info.filename)
            return read
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, struct.error,
            NotImplementedError, RuntimeError) as err:
        # damaged, encrypted, or compressed in a way Python cannot undo
        raise Unreadable(f"it is a damaged or unsupported .npz archive ({clip(_first_line(str(err)), 80)})") from None


def _listed(names) -> str:
    names = [f"{clip(n)}" for n in names]
    more = len(names) - _SHOWN_NAMES
    return ", ".join(names[:_SHOWN_NAMES]) + (f" and {more:,} more" if more > 0 else "")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"
