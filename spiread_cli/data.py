"""Reading arrays from files: `load("path")` in programs and `--set NAME=PATH`.

Data files may be hostile or careless, so every failure is a SpireadError
naming the file, in one sentence of bounded length, and nothing is allocated
before its size is known to be within the limit (limits.py): the shape in an
`.npy` header, a zip member's uncompressed size, and for text the most
numbers a file of its size could hold. Only regular files are read (a FIFO
would block forever, a device never ends), and never more bytes than the
limit allows. Pickled `.npy` files are refused: loading one can run
arbitrary code.
"""

from __future__ import annotations

import ast
import io
import json
import lzma
import math
import os
import stat
import struct
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .diagnostics import BEYOND_FLOAT64, SpireadError, Span, shape_str
from .limits import LIMIT_NOTE, check_shape, human_bytes, max_bytes

SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt", ".json")
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
SET_PATH_SUFFIXES = SUFFIXES + (".zarr",)  # `--set NAME=VALUE` reads VALUE as a path (.zarr: --backend dask only)

# The most memory reading a byte of text may take: a number takes at least
# 2 bytes (`1,`) and 8 as float64; JSON is parsed into Python objects first,
# and `[]` (2 bytes) is a list of 56 bytes plus its 8-byte pointer.
_MEMORY_PER_TEXT_BYTE = {".json": 32}
_MEMORY_PER_TEXT_BYTE_DEFAULT = 4
# zipfile keeps a ZipInfo of ~500 bytes for each member its directory lists in ≥ 46.
_MEMORY_PER_ZIP_DIRECTORY_BYTE = 16

# `.npy` headers written by numpy are ~100 bytes; the format allows more, and
# anything up to this is read (its literal is parsed safely, without eval).
_NPY_MAX_HEADER = 1 << 16
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADER_LENGTH = {1: ("<H", "latin1"), 2: ("<I", "latin1"), 3: ("<I", "utf8")}

_CHUNKS_NOTE = ("for data larger than memory, `--backend dask` reads .npy, .zarr and text (.csv, .tsv, .txt) "
                "files a chunk of rows at a time (docs/scaling.md)")
_SHOWN_NAMES = 5  # how many names an error lists before saying how many more


def load_array(path: Path, span: Span | None = None, name: str | None = None) -> np.ndarray:
    """Read a rank-0, -1 or -2 float64 array; `name` picks one from an `.npz`."""
    prefix = f"cannot load `{shown(path)}`"
    suffix = path.suffix.lower()
    if suffix == ".zarr" and path.exists():  # the dask backend opens an existing .zarr itself (chunks.ZarrRows)
        raise SpireadError(f"{prefix}: a zarr array is read by `--backend dask` only", span,
                           ['run with `--backend dask` (docs/scaling.md), or save the array as .npy'])
    if suffix not in SET_PATH_SUFFIXES and not path.is_dir():
        raise SpireadError(f"{prefix}: unknown file type `{_clip(suffix or path.name)}`", span,
                           [f"spiread reads {', '.join(SUFFIXES)}"])
    with _open_regular(path, prefix, span) as file:
        try:
            if suffix == ".npy":
                array = _from_npy(file, os.fstat(file.fileno()).st_size, prefix, span)
            elif suffix == ".npz":
                (array,) = _from_npz(file, name, prefix, span).values()
            else:
                raw = _read_text_bytes(file, suffix, prefix, span)
                array = _from_json(raw) if suffix == ".json" else _from_text(_decode(raw), suffix)
        except _Unreadable as err:
            raise SpireadError(f"{prefix}: {err}", span) from None
        except MemoryError:
            raise SpireadError(f"{prefix}: there is not enough memory to read it", span,
                               ["the data may be too big for one process"]) from None
    return as_float64(array, path, span)


def load_archive(path: Path) -> dict[str, np.ndarray]:
    """Every array of an `.npz` archive (as `train --save` writes), by name,
    as float64 arrays of rank ≤ 2: read whole, with the checks `load_array` makes."""
    prefix = f"cannot load `{shown(path)}`"
    with _open_regular(path, prefix, None) as file:
        try:
            arrays = _from_npz(file, None, prefix, None, every=True)
        except _Unreadable as err:
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


def shown(path) -> str:
    """A path as messages show it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        text = str(Path(os.path.abspath(path)).relative_to(Path.cwd()))  # links not followed: the name given
    except (ValueError, OSError):
        text = str(path)
    return _clip(text, 200)


def _clip(text: str, width: int = 40) -> str:
    """At most `width` characters of `text` from a file, with its control characters visible."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= width else text[:width - 1] + "…"


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


class _Unreadable(Exception):
    """Why a data file cannot be read, in words for its owner."""


# ------------------------------------------------------------ opening a file


def _open_regular(path: Path, prefix: str, span: Span | None) -> io.BufferedReader:
    """`path` opened for reading if (after following links) it is a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpireadError(f"{prefix}: no such file", span) from None
    except OSError as err:
        raise SpireadError(f"{prefix}: {err.strerror or err}", span) from None
    except ValueError:  # a NUL byte in the name
        raise SpireadError(f"{prefix}: a file name cannot hold a NUL byte", span) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise SpireadError(f"{prefix}: it is a directory", span)
        what = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "something")
        raise SpireadError(f"{prefix}: it is {what}, not a regular file", span)
    return os.fdopen(fd, "rb")


def _read_header(stream, size: int, where: str) -> bytes:
    data = stream.read(size)
    if len(data) != size:
        raise _Unreadable(f"{where} is cut short in its .npy header")
    return data


def _read_text_bytes(file, suffix: str, prefix: str, span: Span | None) -> bytes:
    """The whole of a text file, refused before reading if a file of its size
    could hold more numbers than the limit allows. The read is capped too, in
    case the file grows or the system does not report its size (/proc)."""
    limit = max_bytes()
    per_byte = _MEMORY_PER_TEXT_BYTE.get(suffix, _MEMORY_PER_TEXT_BYTE_DEFAULT)

    def refuse_if_too_big(size: int) -> None:
        most = size * per_byte
        if most > limit:
            raise SpireadError(f"{prefix}: reading {human_bytes(size)} of {'JSON' if suffix == '.json' else 'text'} "
                               f"may take up to {human_bytes(most)}, more than the limit of {human_bytes(limit)}",
                               span, [LIMIT_NOTE, "a number can be as short as 2 bytes (`1,`); "
                                      ".npy holds large arrays compactly", _CHUNKS_NOTE])

    refuse_if_too_big(os.fstat(file.fileno()).st_size)
    raw = file.read(limit // per_byte + 1)  # one byte more than the largest size allowed
    refuse_if_too_big(len(raw))
    return raw


# ------------------------------------------------------------------ .npy


def _from_npy(stream, size: int, prefix: str, span: Span | None, member: str = "") -> np.ndarray:
    """An array from an `.npy` stream of `size` bytes (a file or a zip member),
    its declared size checked against the limit before the data is read."""
    where = f"its member `{_clip(member)}`" if member else "it"
    shape, fortran_order, dtype = _npy_layout(stream, where)
    check_shape(shape, f"{prefix}: {'its array' if not member else where}", span, notes=(_CHUNKS_NOTE,))
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
        raise _Unreadable(f"{where} is empty")
    if not start.startswith(_NPY_MAGIC):
        raise _Unreadable(f"{where} is not a NumPy .npy file")
    major = start[6] if len(start) > 6 else None
    if major not in _NPY_HEADER_LENGTH:
        raise _Unreadable(f"{where} is a .npy file of a version spiread does not know ({major})")
    length_format, encoding = _NPY_HEADER_LENGTH[major]
    (length,) = struct.unpack(length_format, _read_header(stream, struct.calcsize(length_format), where))
    if length > _NPY_MAX_HEADER:
        raise _Unreadable(f"{where} has a .npy header of {length:,} bytes, more than the "
                          f"{_NPY_MAX_HEADER:,} spiread reads; it is probably damaged")
    shape, fortran_order, dtype = _npy_header(_read_header(stream, length, where), encoding, where)
    if dtype.hasobject:
        raise _Unreadable(f"{where} holds Python objects (pickled), which spiread never loads")
    if dtype.kind not in "biuf" or dtype.subdtype is not None:
        raise _Unreadable(f"{where} holds {_kind_of(dtype)}, not real numbers")
    if len(shape) > 2:
        raise _Unreadable(f"{where} is {len(shape)}-dimensional, spiread handles at most 2")
    return shape, fortran_order, dtype


def npy_layout(path: Path, span: Span | None = None) -> tuple[int, tuple[int, ...], bool, np.dtype]:
    """Where an `.npy` file's data start, its shape, order and element type,
    checked as `load_array` checks them, without reading the data (the
    `--backend dask` reader, spiread_cli/chunks.py, reads rows from there)."""
    prefix = f"cannot load `{shown(path)}`"
    with _open_regular(path, prefix, span) as file:
        try:
            shape, fortran_order, dtype = _npy_layout(file, "it")
            offset = file.tell()
        except _Unreadable as err:
            raise SpireadError(f"{prefix}: {err}", span) from None
        size = os.fstat(file.fileno()).st_size
    wanted = math.prod(shape) * dtype.itemsize
    if size - offset < wanted:
        raise SpireadError(f"{prefix}: it is cut short: its {'×'.join(map(str, shape)) or 'scalar'} array needs "
                           f"{wanted:,} bytes, but only {max(size - offset, 0):,} are there", span)
    return offset, shape, fortran_order, dtype


def _cut_short(where: str, shape: tuple[int, ...], wanted: int, there: int):
    raise _Unreadable(f"{where} is cut short: its {'×'.join(map(str, shape)) or 'scalar'} array needs "
                      f"{wanted:,} bytes, but only {max(there, 0):,} are there")


def _npy_header(header: bytes, encoding: str, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    bad = _Unreadable(f"{where} has a damaged .npy header")
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
        raise _Unreadable(f"{where} has a .npy header declaring an impossible size")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dtype = np.lib.format.descr_to_dtype(fields["descr"])
    except Exception:  # numpy's dtype parser raises many kinds on hostile descriptors
        raise _Unreadable(f"{where} has a .npy header naming no valid element type") from None
    return shape, fortran_order, dtype


# ------------------------------------------------------------------ .npz


def _from_npz(file, name: str | None, prefix: str, span: Span | None, every: bool = False) -> dict[str, np.ndarray]:
    """The array called `name`, or the only one when `name` is None; with
    `every`, all of them; by name."""
    start = file.read(2)
    if start != b"PK":
        raise _Unreadable("it is not a NumPy .npz archive" if start else "it is empty")
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
                raise _Unreadable("it holds no arrays" + ("" if not count else " (its only member is not a .npy file)"
                                                          if count == 1 else f" (none of its {count:,} members is a .npy file)"))
            if every:
                chosen = arrays
            elif name is not None and name in arrays:
                chosen = {name: arrays[name]}
            elif name is None and len(arrays) == 1:
                chosen = arrays
            else:
                wanted = f"no array called `{_clip(name)}`" if name else "more than one array"
                every = [] if name else ["`--set FILE.npz`, with no NAME=, binds each array to the name it has there"]
                raise SpireadError(f"{prefix}: it has {wanted}", span, [f"it holds: {_listed(arrays)}", *every])
            for info in chosen.values():
                if info.flag_bits & 0x1:
                    raise _Unreadable(f"its member `{_clip(info.filename)}` is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    # numpy writes only these; LZMA's decoder allocates what the file asks for
                    raise _Unreadable(f"its member `{_clip(info.filename)}` is compressed in a way numpy never "
                                      f"writes (zip method {info.compress_type})")
            total = sum(info.file_size for info in chosen.values())
            if total > limit + _NPY_MAX_HEADER * len(chosen):
                what = (f"its member `{_clip(next(iter(chosen.values())).filename)}` unpacks" if len(chosen) == 1
                        else f"its {len(chosen):,} members unpack")
                raise SpireadError(f"{prefix}: {what} to {human_bytes(total)}, more than the limit of "
                                   f"{human_bytes(limit)}", span, [LIMIT_NOTE])
            read = {}
            for key, info in chosen.items():
                with archive.open(info) as member:
                    read[key] = _from_npy(member, info.file_size, prefix, span, info.filename)
            return read
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError, ValueError, struct.error,
            NotImplementedError, RuntimeError) as err:
        # damaged, encrypted, or compressed in a way Python cannot undo
        raise _Unreadable(f"it is a damaged or unsupported .npz archive ({_clip(_first_line(str(err)), 80)})") from None


def _listed(names) -> str:
    names = [f"{_clip(n)}" for n in names]
    more = len(names) - _SHOWN_NAMES
    return ", ".join(names[:_SHOWN_NAMES]) + (f" and {more:,} more" if more > 0 else "")


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unreadable"


# ------------------------------------------------------------------ JSON


class _OutOfRange:
    """A JSON number too large for a float64, kept so the walk can say where it is."""

    def __init__(self, text: str):
        self.text = text


def _json_number(text: str):
    number = float(text)
    return _OutOfRange(text) if math.isinf(number) else number


def _from_json(raw: bytes) -> np.ndarray:
    try:
        data = json.loads(_decode(raw), parse_float=_json_number, parse_int=_json_number)
    except json.JSONDecodeError as err:
        raise _Unreadable(f"it is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise _Unreadable("its lists nest too deeply") from None
    if type(data) is float:
        return np.array(data)
    if not isinstance(data, list):
        raise _Unreadable(_not_a_number("it", data) if isinstance(data, _OutOfRange) else
                          f"it holds {_json_kind(data)}, not a number or lists of numbers")
    rank = 2 if data and isinstance(data[0], list) else 1
    rows = data if rank == 2 else [data]
    for i, row in enumerate(rows):
        at = f"[{i}]" if rank == 2 else ""
        if not isinstance(row, list):
            raise _Unreadable(f"`{at}` is {_json_kind(row)}, but `[0]` is a list (a row)")
        if rank == 2 and len(row) != len(rows[0]):
            raise _Unreadable(f"its rows have different lengths: `{at}` has {_entries(len(row))}, `[0]` has {_entries(len(rows[0]))}")
        if not all(type(x) is float for x in row):
            j, x = next((j, x) for j, x in enumerate(row) if type(x) is not float)
            if isinstance(x, list):
                raise _Unreadable(f"`[{j}]` is a list, but `[0]` is a number" if rank == 1 else
                                  f"`{at}[{j}]` is a list: it is 3-dimensional, spiread handles at most 2")
            raise _Unreadable(_not_a_number(f"`{at}[{j}]`", x))
    return np.array(data, dtype=np.float64)


def _entries(n: int) -> str:
    return f"{n} entr{'y' if n == 1 else 'ies'}"


def _not_a_number(where: str, value) -> str:
    if isinstance(value, _OutOfRange):
        text = value.text if len(value.text) <= 20 else f"{value.text[:12]}… ({len(value.text)} characters)"
        return f"{where} is {text}, {BEYOND_FLOAT64}"
    return f"{where} is {_json_kind(value)}, not a number"


def _json_kind(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f"text (`{_clip(value, 20)}`)"
    return {dict: "an object (`{…}`)", list: "a list"}.get(type(value), "a number")


# ------------------------------------------------------------------ text


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise _Unreadable(f"it is not UTF-8 text (line {line} holds the byte 0x{raw[err.start]:02x})") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def _from_text(text: str, suffix: str) -> np.ndarray:
    """A table of numbers. Its first row is a header, skipped, only when none
    of its cells is a number; a single number is a scalar; one column a vector."""
    delimiter, header_line = _table_start(text, suffix)
    return _table_shaped(_parse_rows(text, delimiter, header_line))


def _table_start(text: str, suffix: str, first_line: int = 1) -> tuple[str | None, int]:
    """The delimiter, and the header's line number (0: no header), from the
    first line with content: the header rule every text table is read by."""
    first = next(((number, content) for number, content in _contents(text, first_line) if content.strip()), None)
    if first is None:
        raise _Unreadable("it holds no numbers")
    delimiter = "\t" if suffix == ".tsv" else "," if (suffix == ".csv" or "," in first[1]) else None
    cells = first[1].split(delimiter)
    numeric = [_is_number(cell) for cell in cells]
    if not any(numeric):
        return delimiter, first[0]
    if not all(numeric):
        column = numeric.index(False)
        raise _Unreadable(f"line {first[0]}, column {column + 1}: `{_clip(cells[column].strip())}` is not a number")
    return delimiter, 0


def _parse_rows(text: str, delimiter: str | None, header_line: int, first_line: int = 1,
                width: tuple[int, int] | None = None) -> np.ndarray:
    """The rows of a table (or of a block of one whose first line is line
    `first_line` of the file) as a 2-D array; `width` is (line, columns) of the
    table's first row when it is in an earlier block."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy only warns about a file with no rows
            array = np.loadtxt(_rows(text, header_line, first_line), delimiter=delimiter, dtype=np.float64,
                               ndmin=2, comments=None)
    except (ValueError, UserWarning):
        raise _Unreadable(_text_problem(text, delimiter, header_line, first_line, width)) from None
    if width is not None and array.shape[1] != width[1]:
        raise _Unreadable(_text_problem(text, delimiter, header_line, first_line, width))
    if np.isinf(array).any():
        _refuse_out_of_range(text, delimiter, header_line, first_line)
    return array


def _refuse_out_of_range(text: str, delimiter: str | None, header_line: int, first_line: int) -> None:
    """A cell written as a number too large for a float64 (`1e400`, not
    `inf`) is an error, as in a JSON file or a program (the slow path, taken
    only when a table holds an infinity)."""
    for number, content in _contents(text, first_line):
        if number > header_line and content.strip():
            for column, cell in enumerate(content.split(delimiter), start=1):
                if math.isinf(float(cell)) and "inf" not in cell.lower():
                    raise _Unreadable(f"line {number}, column {column}: `{_clip(cell.strip())}` is {BEYOND_FLOAT64}")


def _table_shaped(array: np.ndarray) -> np.ndarray:
    if array.shape == (1, 1):
        return array.reshape(())
    return array[:, 0] if array.shape[1] == 1 else array


def _contents(text: str, first_line: int = 1):
    """(line number, the line without its comment), one line at a time."""
    for number, line in enumerate(io.StringIO(text), start=first_line):
        yield number, line.split("#", 1)[0]


def _rows(text: str, header_line: int, first_line: int = 1):
    """The lines of the table proper: not the header, nor blank or comment-only
    lines (numpy would read a line of spaces in a CSV as an empty cell)."""
    for number, content in _contents(text, first_line):
        if number > header_line and content.strip():
            yield content


def _text_problem(text: str, delimiter: str | None, header_line: int, first_line: int = 1,
                  width: tuple[int, int] | None = None) -> str:
    """What is wrong with a table numpy refused, by line and column (the
    slow path, taken only on error)."""
    for number, content in _contents(text, first_line):
        if number <= header_line or not content.strip():
            continue  # as _rows skips
        cells = content.split(delimiter)
        for column, cell in enumerate(cells, start=1):
            if not _is_number(cell):
                return f"line {number}, column {column}: `{_clip(cell.strip())}` is not a number"
        if width is None:
            width = (number, len(cells))
        elif len(cells) != width[1]:
            return f"line {number} has {len(cells)} columns, but line {width[0]} has {width[1]}"
    return "it holds no numbers" if width is None else "it is not a table of numbers"


# ------------------------------------------------------------------ text, a block of rows at a time

TEXT_BLOCK_BYTES = 1 << 20  # a text table is scanned, and its rows found, a block of about this many bytes at a time


@dataclass(frozen=True)
class TextBlock:
    offset: int        # where its bytes start in the file
    size: int          # its bytes: whole lines
    line: int          # the file's line number of its first line
    rows: int          # the table rows in it


@dataclass(frozen=True)
class TextTable:
    """A CSV (or other text) table read a block of rows at a time, for
    `--backend dask`: `scan` reads the file once, in blocks of whole lines,
    applying the header rule and checking every row as `load_array` does
    (the same messages, the same line numbers), and keeps where each block
    starts and how many rows it holds; `read` then parses only the blocks that
    hold the rows asked for. Nothing holds more than a block and the rows read."""
    path: str
    delimiter: str | None
    header_line: int
    shape: tuple[int, ...]       # as load_array gives it: () for one number, (n,) for one column
    blocks: tuple[TextBlock, ...]

    @staticmethod
    def scan(path: Path, span: Span | None = None, block_bytes: int | None = None) -> "TextTable":
        block_bytes = block_bytes or TEXT_BLOCK_BYTES
        prefix = f"cannot load `{shown(path)}`"
        suffix = path.suffix.lower()
        blocks, start, width, rows = [], None, None, 0
        with _open_regular(path, prefix, span) as file:
            try:
                for offset, raw, line in _line_blocks(file, block_bytes):
                    text = _decode_block(raw, line, offset == 0)
                    if start is None and any(c.strip() for _, c in _contents(text, line)):
                        start = _table_start(text, suffix, line)  # (delimiter, header line)
                    first_row = _first_row(text, start[1], line) if start else None
                    if first_row is None:  # blank lines, comments or the header only
                        blocks.append(TextBlock(offset, len(raw), line, 0))
                        continue
                    array = _parse_rows(text, *start, line, width)
                    width = width or (first_row, array.shape[1])
                    blocks.append(TextBlock(offset, len(raw), line, len(array)))
                    rows += len(array)
            except _Unreadable as err:
                raise SpireadError(f"{prefix}: {err}", span) from None
        if width is None:
            raise SpireadError(f"{prefix}: it holds no numbers", span)
        shape = (rows, width[1]) if width[1] > 1 else (rows,) if rows > 1 else ()
        return TextTable(str(path), *start, shape, tuple(blocks))

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) (the whole of a one-number table), parsing only
        the blocks that hold them."""
        if not self.shape:
            start, stop = 0, 1
        first, row, wanted = 0, 0, []
        for block in self.blocks:
            if block.rows and row < stop and row + block.rows > start:
                first = first if wanted else row
                wanted.append(block)
            row += block.rows
        if not wanted:
            return np.empty((0,) + self.shape[1:])
        prefix = f"cannot load `{shown(self.path)}`"
        with _open_regular(Path(self.path), prefix, None) as file:
            file.seek(wanted[0].offset)
            raw = file.read(wanted[-1].offset + wanted[-1].size - wanted[0].offset)
        try:
            text = _decode_block(raw, wanted[0].line, wanted[0].offset == 0)
            array = _parse_rows(text, self.delimiter, self.header_line, wanted[0].line)[start - first:stop - first]
        except _Unreadable as err:  # the file changed since it was scanned
            raise SpireadError(f"{prefix}: {err}") from None
        if len(self.shape) == 2:
            return array
        return array[:, 0] if self.shape else array.reshape(())


def _first_row(text: str, header_line: int, first_line: int) -> int | None:
    """The line number of the first table row in a block, if it has one."""
    return next((number for number, content in _contents(text, first_line)
                 if number > header_line and content.strip()), None)


def _line_blocks(file, block_bytes: int):
    """(offset, bytes, first line number) of blocks of whole lines, each about
    `block_bytes` long (longer when one line is)."""
    offset, line, carry = 0, 1, b""
    while True:
        more = file.read(block_bytes)
        raw = carry + more
        if not more:
            if raw:
                yield offset, raw, line
            return
        cut = raw.rfind(b"\n") + 1
        if cut == 0:  # no line ends in it yet: read on
            carry = raw
            continue
        block, carry = raw[:cut], raw[cut:]
        yield offset, block, line
        offset += len(block)
        line += block.count(b"\n")


def _decode_block(raw: bytes, line: int, at_start: bool) -> str:
    try:
        return raw.decode("utf-8-sig" if at_start else "utf-8")
    except UnicodeDecodeError as err:
        line += raw[:err.start].count(b"\n")
        raise _Unreadable(f"it is not UTF-8 text (line {line} holds the byte 0x{raw[err.start]:02x})") from None


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
