"""A sparsity pattern of diagonals written out as a 0/1 CSR matrix
(sparsity_links.py's, for a chain's Hessian or a stencil's Jacobian): whole
runs of rows on each diagonal (`runs_csr`) without a table of cells, else a
band's table of cells (`band_csr`), with sorted int32 indices made as
scipy's constructor leaves them (`sparsity_colouring.sorted_csr`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .sparsity_colouring import sorted_csr


# The first block of rows `_windows` writes, r + offsets for r < rows, by the offsets and index dtype: made
# once, as the same diagonals recur (a chain's Hessian, a stencil's Jacobian), and kept for a few of them.
_FIRST_ROWS: dict[tuple, np.ndarray] = {}
FIRST_ENTRIES = 1 << 13


def _first_rows(offsets: tuple, kind) -> np.ndarray:
    key = (offsets, kind)
    rows = _FIRST_ROWS.get(key)
    if rows is None:
        count = max(FIRST_ENTRIES // len(offsets), 1)
        rows = np.add.outer(np.arange(count, dtype=kind), np.array(offsets, dtype=kind)).ravel()
        if len(offsets) <= FIRST_ENTRIES:  # (a band wider than that is not kept)
            if len(_FIRST_ROWS) >= 32:
                _FIRST_ROWS.clear()
            _FIRST_ROWS[key] = rows
    return rows


def _windows(out: np.ndarray, first: int, offsets: tuple) -> None:
    """Fill `out` with the rows first + r + offsets (r = 0, 1, …) end to
    end: a first block of rows (`_first_rows`, raised by `first`), then the
    rows so far copied, each raised by their count, doubling (contiguous
    passes, where a column at a time would write with a stride)."""
    width = len(offsets)
    block = _first_rows(offsets, out.dtype.type)
    done = min(len(out) // width * width, len(block))
    np.add(block[:done], first, out=out[:done])
    while done < len(out):
        more = min(done, len(out) - done)
        np.add(out[:more], done // width, out=out[done:done + more])
        done += more


def band_csr(cells: np.ndarray, low: int, n: int) -> sp.csr_array:
    """The 0/1 CSR matrix (rows × n) whose row r has column r + low + c
    wherever cells[c, r] (width × rows booleans, a diagonal a row; a cell
    must be a column within 0..n-1), sorted as CSR keeps them."""
    width, rows = cells.shape
    kind = _index_kind(rows * width, n)
    indptr = np.empty(rows + 1, dtype=kind)
    indptr[0] = 0
    np.cumsum(cells.sum(axis=0, dtype=kind), out=indptr[1:])
    columns = np.empty((rows, width), dtype=kind)
    _windows(columns.reshape(-1), low, tuple(range(width)))
    return _canonical(columns[cells.T], indptr, rows, n)


def _index_kind(entries: int, n: int):
    return np.int32 if max(n, entries) < 2 ** 31 else np.int64


def runs_csr(runs: dict[int, list[tuple[int, int]]], rows: int, n: int, mirrored: bool = False) -> sp.csr_array:
    """The 0/1 CSR matrix (rows × n) whose row r has column r + d wherever
    a run (first, end) of runs[d] holds r (each cell within the matrix;
    `mirrored`: and column r + d of row r + d for each, a symmetric matrix's
    other side): diagonals over runs of rows, as a chain's Hessian or a
    stencil's Jacobian has them, gaps between diagonals allowed. When each
    diagonal's runs make one run and the rows that some diagonal leaves out
    are few, the rows every diagonal holds are written out without a table
    of cells (`_windows`) and the few others one by one; else through one (`band_csr`)."""
    spans = {}
    for d, found in runs.items():
        if len(found) > 1:
            found = sorted(found)
        first, end = found[0]
        for a, b in found[1:]:
            if a > end:  # a diagonal with a gap: the table
                return _cells_csr(runs, rows, n, mirrored)
            if b > end:
                end = b
        if end > first:
            spans[d] = (first, end)
            if mirrored and d:
                spans[-d] = (first + d, end + d)
    diagonals = sorted(spans)
    top, bottom = 0, rows
    for first, end in spans.values():
        top, bottom = max(top, first), min(bottom, end)
    if not diagonals or bottom <= top or rows - (bottom - top) > 64:
        return _cells_csr(runs, rows, n, mirrored)
    # The rows some diagonal leaves out (above `top`, from `bottom` on): their columns listed.
    width = len(diagonals)
    bounds = [(d, *spans[d]) for d in diagonals]
    head_columns, head_ends = _listed_rows(bounds, 0, top, 0)
    head = len(head_columns)
    middle = head + (bottom - top) * width
    tail_columns, tail_ends = _listed_rows(bounds, bottom, rows, middle)
    kind = _index_kind(rows * width, n)
    # Made as the middle rows' (width apart), the rows above and below then set.
    indptr = np.arange(head - top * width, middle + (rows - bottom) * width + 1, width, dtype=kind)
    if top:
        indptr[0] = 0
        indptr[1:top + 1] = head_ends
    if tail_ends:
        indptr[bottom + 1:] = tail_ends
    indices = np.empty(middle + len(tail_columns), dtype=kind)
    _windows(indices[head:middle], top, tuple(diagonals))
    if head:
        indices[:head] = head_columns
    if tail_columns:
        indices[middle:] = tail_columns
    return _canonical(indices, indptr, rows, n)


def _listed_rows(bounds: list[tuple[int, int, int]], lo: int, hi: int, before: int) -> tuple[list[int], list[int]]:
    """Rows lo ≤ r < hi of the diagonals d whose runs (d, first, end) hold them: their columns
    in order, and where each row ends (after `before` entries)."""
    columns, ends = [], []
    for r in range(lo, hi):
        for d, first, end in bounds:
            if first <= r < end:
                columns.append(r + d)
        ends.append(before + len(columns))
    return columns, ends


def _cells_csr(runs: dict[int, list[tuple[int, int]]], rows: int, n: int, mirrored: bool) -> sp.csr_array:
    low, high = min(runs), max(runs)
    low = -high if mirrored else low
    cells = np.zeros((high - low + 1, rows), dtype=bool)
    for d, spans in runs.items():
        for first, end in spans:
            cells[d - low, first:end] = True
            if mirrored:
                cells[-d - low, first + d:end + d] = True
    return band_csr(cells, low, n)


def _canonical(indices: np.ndarray, indptr: np.ndarray, rows: int, n: int) -> sp.csr_array:
    return sorted_csr(np.ones(len(indices), dtype=bool), indices, indptr, (rows, n))


def empty_csr(rows: int, n: int) -> sp.csr_array:
    """The rows × n 0/1 CSR matrix with no entry."""
    kind = _index_kind(0, n)
    return _canonical(np.zeros(0, dtype=kind), np.zeros(rows + 1, dtype=kind), rows, n)
