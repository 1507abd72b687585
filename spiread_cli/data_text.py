"""Reading text data: JSON, and tables of numbers (.csv, .tsv, .txt) whole
or a block of rows at a time (`TextTable`, for `--backend dask`). Nothing is
read before the most numbers a file of its size could hold is known to be
within the limit (limits.py).
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data_open import CHUNKS_NOTE, Unreadable, clip, open_regular, shown
from .diagnostics import BEYOND_FLOAT64, SpireadError, Span
from .formatting import NON_FINITE
from .limits import LIMIT_NOTE, human_bytes, max_bytes

# The most memory reading a byte of text may take: a number takes at least
# 2 bytes (`1,`) and 8 as float64; JSON is parsed into Python objects first,
# and `[]` (2 bytes) is a list of 56 bytes plus its 8-byte pointer.
_MEMORY_PER_TEXT_BYTE = {".json": 32}
_MEMORY_PER_TEXT_BYTE_DEFAULT = 4


def read_text_bytes(file, suffix: str, prefix: str, span: Span | None) -> bytes:
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
                                      ".npy holds large arrays compactly", CHUNKS_NOTE])

    refuse_if_too_big(os.fstat(file.fileno()).st_size)
    raw = file.read(limit // per_byte + 1)  # one byte more than the largest size allowed
    refuse_if_too_big(len(raw))
    return raw


# ------------------------------------------------------------------ JSON


class _OutOfRange:
    """A JSON number too large for a float64, kept so the walk can say where it is."""

    def __init__(self, text: str):
        self.text = text


def _json_number(text: str):
    number = float(text)
    return _OutOfRange(text) if math.isinf(number) else number


def from_json(raw: bytes) -> np.ndarray:
    try:
        data = json.loads(decode(raw), parse_float=_json_number, parse_int=_json_number)
    except json.JSONDecodeError as err:
        raise Unreadable(f"it is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}") from None
    except RecursionError:
        raise Unreadable("its lists nest too deeply") from None
    if type(data) is str and data in NON_FINITE:
        data = NON_FINITE[data]
    if type(data) is float:
        return np.array(data)
    if not isinstance(data, list):
        raise Unreadable(_not_a_number("it", data) if isinstance(data, _OutOfRange) else
                          f"it holds {_json_kind(data)}, not a number or lists of numbers")
    rank = 2 if data and isinstance(data[0], list) else 1
    rows = data if rank == 2 else [data]
    for i, row in enumerate(rows):
        at = f"[{i}]" if rank == 2 else ""
        if not isinstance(row, list):
            raise Unreadable(f"`{at}` is {_json_kind(row)}, but `[0]` is a list (a row)")
        if rank == 2 and len(row) != len(rows[0]):
            raise Unreadable(f"its rows have different lengths: `{at}` has {_entries(len(row))}, `[0]` has {_entries(len(rows[0]))}")
        if not all(type(x) is float for x in row):
            row[:] = [NON_FINITE.get(x, x) if type(x) is str else x for x in row]  # as spiread writes them
        if not all(type(x) is float for x in row):
            j, x = next((j, x) for j, x in enumerate(row) if type(x) is not float)
            if isinstance(x, list):
                raise Unreadable(f"`[{j}]` is a list, but `[0]` is a number" if rank == 1 else
                                  f"`{at}[{j}]` is a list: it is 3-dimensional, spiread handles at most 2")
            raise Unreadable(_not_a_number(f"`{at}[{j}]`", x))
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
        return f"text (`{clip(value, 20)}`)"
    return {dict: "an object (`{…}`)", list: "a list"}.get(type(value), "a number")


# ------------------------------------------------------------------ text


def decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise Unreadable(f"it is not UTF-8 text (line {line} holds the byte 0x{raw[err.start]:02x})") from None


def _is_number(cell: str) -> bool:
    try:
        float(cell)
        return True
    except ValueError:
        return False


def from_text(text: str, suffix: str) -> np.ndarray:
    """A table of numbers. Its first row is a header, skipped, only when none
    of its cells is a number; one column is a vector (LANGUAGE.md §7), of
    one number too: a scalar is a .json number or a rank-0 .npy."""
    delimiter, header_line = _table_start(text, suffix)
    return _table_shaped(_parse_rows(text, delimiter, header_line))


def _table_start(text: str, suffix: str, first_line: int = 1) -> tuple[str | None, int]:
    """The delimiter, and the header's line number (0: no header), from the
    first line with content: the header rule every text table is read by."""
    first = next(((number, content) for number, content in _contents(text, first_line) if content.strip()), None)
    if first is None:
        raise Unreadable("it holds no numbers")
    delimiter = "\t" if suffix == ".tsv" else "," if (suffix == ".csv" or "," in first[1]) else None
    cells = first[1].split(delimiter)
    numeric = [_is_number(cell) for cell in cells]
    if not any(numeric):
        return delimiter, first[0]
    if not all(numeric):
        column = numeric.index(False)
        raise Unreadable(f"line {first[0]}, column {column + 1}: `{clip(cells[column].strip())}` is not a number")
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
        raise Unreadable(_text_problem(text, delimiter, header_line, first_line, width)) from None
    if width is not None and array.shape[1] != width[1]:
        raise Unreadable(_text_problem(text, delimiter, header_line, first_line, width))
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
                    raise Unreadable(f"line {number}, column {column}: `{clip(cell.strip())}` is {BEYOND_FLOAT64}")


def _table_shaped(array: np.ndarray) -> np.ndarray:
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
                return f"line {number}, column {column}: `{clip(cell.strip())}` is not a number"
        if width is None:
            width = (number, len(cells))
        elif len(cells) != width[1]:
            return f"line {number} has {len(cells)} column{'s' * (len(cells) != 1)}, but line {width[0]} has {width[1]}"
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
    shape: tuple[int, ...]       # as load_array gives it: (n,) for one column
    blocks: tuple[TextBlock, ...]

    @staticmethod
    def scan(path: Path, span: Span | None = None, block_bytes: int | None = None) -> "TextTable":
        block_bytes = block_bytes or TEXT_BLOCK_BYTES
        prefix = f"cannot load `{shown(path)}`"
        suffix = path.suffix.lower()
        blocks, start, width, rows = [], None, None, 0
        with open_regular(path, prefix, span) as file:
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
            except Unreadable as err:
                raise SpireadError(f"{prefix}: {err}", span) from None
        if width is None:
            raise SpireadError(f"{prefix}: it holds no numbers", span)
        shape = (rows, width[1]) if width[1] > 1 else (rows,)
        return TextTable(str(path), *start, shape, tuple(blocks))

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop), parsing only the blocks that hold them."""
        first, row, wanted = 0, 0, []
        for block in self.blocks:
            if block.rows and row < stop and row + block.rows > start:
                first = first if wanted else row
                wanted.append(block)
            row += block.rows
        if not wanted:
            return np.empty((0,) + self.shape[1:])
        prefix = f"cannot load `{shown(self.path)}`"
        with open_regular(Path(self.path), prefix, None) as file:
            file.seek(wanted[0].offset)
            raw = file.read(wanted[-1].offset + wanted[-1].size - wanted[0].offset)
        try:
            text = _decode_block(raw, wanted[0].line, wanted[0].offset == 0)
            array = _parse_rows(text, self.delimiter, self.header_line, wanted[0].line)[start - first:stop - first]
        except Unreadable as err:  # the file changed since it was scanned
            raise SpireadError(f"{prefix}: {err}") from None
        return _table_shaped(array) if len(self.shape) == 1 else array


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
        raise Unreadable(f"it is not UTF-8 text (line {line} holds the byte 0x{raw[err.start]:02x})") from None
