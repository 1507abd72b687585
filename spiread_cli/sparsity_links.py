"""How a sparsity pattern is held and pushed through an op's rules
(sparsity.py's sweeps): J(node) as `Columns` — a few index arrays a row, a
slice's as a `Progression` — or a scipy.sparse 0/1 matrix; J pulled through
an op's first-order links (`pulled`, `union_of`), the output's adjoint
entries pushed back (`pushed_back`), and the pairs an op's second-order
links meet collected into the Hessian's pattern (`met`, `HessianPairs`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .structure import Links

# A pattern with more differentiated entries a row than this is a CSR matrix.
MAX_COLUMNS = 16


def _csr(shape: tuple[int, int], rows: np.ndarray, cols: np.ndarray) -> sp.csr_array:
    return sp.csr_array((np.ones(len(rows), dtype=bool), (rows, cols)), shape=shape)


def _grouping(groups: np.ndarray, count: int) -> sp.csr_array:
    """The groups × entries 0/1 matrix that sums each group's entries (a group of -1: none)."""
    valid = np.flatnonzero(groups >= 0)
    return _csr((count, len(groups)), groups[valid], valid)


def _spreading(groups: np.ndarray, count: int) -> sp.csr_array:
    """The entries × groups 0/1 matrix that gives each entry its group's row."""
    valid = np.flatnonzero(groups >= 0)
    return _csr((len(groups), count), valid, groups[valid])


@dataclass(frozen=True, slots=True)
class Progression:
    """The entries start, start + step, … (`length` of them): a slice's
    columns, not listed."""
    start: int
    step: int
    length: int

    def array(self) -> np.ndarray:
        return self.start + self.step * np.arange(self.length, dtype=np.int64)


def _array(column) -> np.ndarray:
    return column.array() if type(column) is Progression else column


@dataclass(slots=True)
class Columns:
    """A pattern with a few entries a row: row r holds columns[c][r] for
    each c (-1: none; an entry may repeat), each an index array or a
    `Progression`."""
    size: int
    columns: list

    def rows_used(self) -> np.ndarray:
        used = np.zeros(self.size, dtype=bool)
        for column in self.columns:
            used |= True if type(column) is Progression else column >= 0
        return used

    def listed(self) -> int:
        return self.size * sum(type(c) is not Progression for c in self.columns)

    def csr(self, n: int) -> sp.csr_array:
        if not self.columns:
            return sp.csr_array((self.size, n), dtype=bool)
        table = np.stack([_array(c) for c in self.columns], axis=1)
        used = table >= 0
        indptr = np.zeros(self.size + 1, dtype=np.int64)
        np.cumsum(used.sum(axis=1), out=indptr[1:])
        m = sp.csr_array((np.ones(int(indptr[-1]), dtype=bool), table[used], indptr), shape=(self.size, n))
        m.sum_duplicates()
        return m


def csr_of(pattern, n: int) -> sp.csr_array:
    return pattern.csr(n) if type(pattern) is Columns else pattern


def _picked(column, cols: np.ndarray, missing: bool) -> np.ndarray:
    """column[cols], -1 where cols is -1 (`missing`: there are such)."""
    if type(column) is Progression:
        out = column.start + column.step * cols
        if missing:
            out[cols < 0] = -1
        return out
    if not missing:
        return column[cols]
    out = np.full(len(cols), -1, dtype=np.int64)
    there = cols >= 0
    out[there] = column[cols[there]]
    return out


def _strided(column, start: int, step: int, length: int):
    """column[start + step·r] for r < length."""
    if type(column) is Progression:
        return Progression(column.start + column.step * start, column.step * step, length)
    if step == 0:
        return np.full(length, column[start] if length else 0, dtype=np.int64)
    stop = start + step * length
    return column[start:stop if stop >= 0 else None:step]


def _as_copies(links: Links) -> Links | None:
    """Pairs with one column a row at most, as "copies"; else None."""
    rows = links.rows
    if len(rows) and np.bincount(rows, minlength=links.shape[0]).max() > 1:
        return None
    cols = np.full(links.shape[0], -1, dtype=np.int64)
    cols[rows] = links.cols
    return Links.copies(links.shape, cols)


def _links_csr(links: Links) -> sp.csr_array:
    if links.kind == "strided":
        rows = np.arange(links.shape[0])
        return _csr(links.shape, rows, links.start + links.step * rows)
    if links.kind == "copies":
        rows = np.flatnonzero(links.cols >= 0)
        return _csr(links.shape, rows, links.cols[rows])
    return _csr(links.shape, links.rows, links.cols)


def pulled(links: Links, j, n: int):
    """links · J: for each entry of the result, the union of the rows of J of
    the entries it is linked to."""
    if links.kind == "same":
        return j
    if links.kind == "pairs" and type(j) is Columns:
        links = _as_copies(links) or links
    if type(j) is Columns:
        size = links.shape[0]
        if links.kind == "strided":
            return Columns(size, [_strided(c, links.start, links.step, size) for c in j.columns])
        if links.kind == "copies":
            missing = bool(len(links.cols)) and links.cols.min() < 0
            return Columns(size, [_picked(c, links.cols, missing) for c in j.columns])
    j = csr_of(j, n)
    if links.kind == "groups":
        return _spreading(links.rows, links.groups) @ (_grouping(links.cols, links.groups) @ j)
    return _links_csr(links) @ j


def union_of(terms: list, size: int, n: int):
    """The union of patterns of the same rows."""
    if len(terms) == 1:
        return terms[0]
    if all(type(t) is Columns for t in terms):
        columns: list = []
        for t in terms:
            for c in t.columns:
                if not any(c is d or (type(c) is Progression and type(d) is Progression and c == d) for d in columns):
                    columns.append(c)
        if len(columns) <= MAX_COLUMNS:
            return Columns(size, columns)
    total = csr_of(terms[0], n)
    for t in terms[1:]:
        total = total + csr_of(t, n)
    return total


def pushed_back(links: Links, adj: np.ndarray) -> np.ndarray:
    """Linksᵀ · adj as booleans: the operand entries linked to an entry in adj."""
    if links.kind == "same":
        return adj
    result = np.zeros(links.shape[1], dtype=bool)
    if links.kind == "strided":
        if links.step == 0:
            result[links.start] = adj.any()
        else:
            stop = links.start + links.step * len(adj)
            result[links.start:stop if stop >= 0 else None:links.step] = adj
        return result
    if links.kind == "copies":
        cols = links.cols[adj]
        result[cols[cols >= 0]] = True
        return result
    if links.kind == "pairs":
        result[links.cols[adj[links.rows]]] = True
        return result
    live = np.zeros(links.groups + 1, dtype=bool)  # the last slot stands for "no group"
    live[links.rows[adj & (links.rows >= 0)]] = True
    return live[np.where(links.cols >= 0, links.cols, links.groups)]


class HessianPairs:
    """The pairs (a, b) of differentiated entries a second derivative
    couples, gathered node by node and made one symmetric CSR matrix at the
    end: through a band of booleans around the diagonal when they lie near
    it (a chain's Hessian: no sort), else by scipy's COO → CSR."""

    def __init__(self, n: int):
        self.n = n
        self.diagonals: list[tuple[int, int, int, int]] = []  # (row start, row step, length, column − row)
        self.listed: list[tuple[np.ndarray, np.ndarray]] = []  # (rows ≤ columns, column − row)
        self.entries = 0

    def add(self, a, b) -> None:
        """Entry a[p] meets entry b[p], for every p (-1: none)."""
        if type(a) is Progression and type(b) is Progression and a.step == b.step != 0:
            step, start = a.step, min(a.start, b.start)
            if step < 0:
                start, step = start + step * (a.length - 1), -step
            self.diagonals.append((start, step, a.length, abs(b.start - a.start)))
        else:
            a, b = _array(a), _array(b)
            if len(a) and (a.min() < 0 or b.min() < 0):
                both = (a >= 0) & (b >= 0)
                a, b = a[both], b[both]
            self.listed.append((np.minimum(a, b), np.abs(b - a)))
        self.entries += len(a) if type(a) is not Progression else a.length

    def add_matrix(self, m: sp.csr_array) -> None:
        coo = m.tocoo()
        self.add(coo.row.astype(np.int64), coo.col.astype(np.int64))

    def matrix(self) -> sp.csr_array:
        n = self.n
        widths = [d for *_, d in self.diagonals] + [int(d.max()) for _, d in self.listed if len(d)]
        if not widths:
            return sp.csr_array((n, n), dtype=bool)
        band = max(widths)
        if n * (2 * band + 1) > 8 * self.entries + 4096:
            return self._scattered()
        # One row of booleans per distance from the diagonal, d = column − row:
        # upper[d, r] is the pair (r, r + d); full[band + d, r] the entry (r, r + d).
        upper = np.zeros((band + 1, n), dtype=bool)
        for start, step, length, d in self.diagonals:
            upper[d, start:start + step * length:step] = True
        flat = upper.reshape(-1)
        for low, d in self.listed:
            flat[d * n + low] = True
        width = 2 * band + 1
        full = np.zeros((width, n), dtype=bool)
        full[band:] = upper
        for d in range(1, band + 1):
            full[band - d, d:] = upper[d, :n - d]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(full.sum(axis=0), out=indptr[1:])
        at = np.flatnonzero(full.T)  # row by row, d ascending: CSR order
        rows = at // width
        rows *= width - 1
        at -= rows
        at -= band  # r·width + band + d − r·(width − 1) − band = r + d
        return sp.csr_array((np.ones(len(at), dtype=bool), at, indptr), shape=(n, n))

    def _scattered(self) -> sp.csr_array:
        lows = [start + step * np.arange(length) for start, step, length, _ in self.diagonals]
        ds = [np.full(length, d) for *_, length, d in self.diagonals]
        lows += [low for low, _ in self.listed]
        ds += [d for _, d in self.listed]
        low, d = np.concatenate(lows), np.concatenate(ds)
        return _csr((self.n, self.n), np.concatenate([low, low + d]), np.concatenate([low + d, low]))


def met(links: Links, ja, jb, found: HessianPairs, n: int) -> None:
    """Add Jaᵀ · links · Jb to `found`: the pairs of differentiated entries
    that a second derivative of the op couples."""
    if type(ja) is Columns and type(jb) is Columns and links.kind in ("same", "pairs"):
        if links.kind == "same":
            left, right = ja.columns, jb.columns
        else:
            left = [_picked(c, links.rows, False) for c in ja.columns]
            right = [_picked(c, links.cols, False) for c in jb.columns]
        symmetric = links.kind == "same" and ja is jb  # (a, b) and (b, a) are one pair
        for s, a in enumerate(left):
            for t, b in enumerate(right):
                if not (symmetric and t < s):
                    found.add(a, b)
        return
    ja, jb = csr_of(ja, n), csr_of(jb, n)
    if links.kind == "groups":
        found.add_matrix(((_grouping(links.rows, links.groups) @ ja).T @ (_grouping(links.cols, links.groups) @ jb)))
    else:
        found.add_matrix(ja.T @ pulled(links, jb, n))
