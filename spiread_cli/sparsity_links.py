"""How a sparsity pattern is held and pushed through an op's rules
(sparsity.py's sweeps): J(node) as `Columns` — a few index arrays a row, a
slice's as a `Progression` — or a scipy.sparse 0/1 matrix; J pulled through
an op's first-order links (`pulled`, `union_of`), the output's adjoint
entries pushed back (`pushed_back`), and the pairs an op's second-order
links meet collected into the Hessian's pattern (`met`, `HessianPairs`);
a pattern of diagonals (a chain's Hessian, a stencil's Jacobian) becomes
CSR through sparsity_csr.py."""

from __future__ import annotations

from dataclasses import dataclass
import numpy as np
import scipy.sparse as sp

from .sparsity_csr import band_csr, empty_csr, runs_csr
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


@dataclass(slots=True, init=False)
class Progression:
    """The entries start + step·r of the rows lo ≤ r < hi (the other rows of
    the `length` have none; hi None: all of them): a slice's columns, or a
    block of a concatenation's, not listed."""
    start: int
    step: int
    length: int
    lo: int
    hi: int

    def __init__(self, start: int, step: int, length: int, lo: int = 0, hi: int | None = None):
        self.start, self.step, self.length, self.lo, self.hi = start, step, length, lo, length if hi is None else hi

    @property
    def whole(self) -> bool:
        return self.lo == 0 and self.hi == self.length

    def array(self) -> np.ndarray:
        out = self.start + self.step * np.arange(self.length, dtype=np.int64)
        if not self.whole:
            out[:self.lo] = -1
            out[max(self.hi, self.lo):] = -1
        return out


def _array(column) -> np.ndarray:
    return column.array() if type(column) is Progression else column


def _rows_within(start: int, step: int, length: int, lo: int, hi: int) -> tuple[int, int]:
    """The run of rows r < length with lo ≤ start + step·r < hi, as (first, end)."""
    if step == 0:
        first, end = (0, length) if lo <= start < hi else (0, 0)
    elif step > 0:
        first, end = -((start - lo) // step), -((start - hi) // step)  # ceilings of (lo − start) / step, …
    else:
        first, end = (start - hi) // -step + 1, (start - lo) // -step + 1
    first, end = max(first, 0), min(end, length)
    return (first, end) if first < end else (0, 0)


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
            if type(column) is Progression:
                used[column.lo:column.hi] = True
            else:
                used |= column >= 0
        return used

    def listed(self) -> int:
        listed = 0
        for c in self.columns:
            if type(c) is not Progression:
                listed += self.size
        return listed

    def csr(self, n: int) -> sp.csr_array:
        if not self.columns:
            return sp.csr_array((self.size, n), dtype=bool)
        offsets = [c.start for c in self.columns if type(c) is Progression and c.step == 1]
        if len(offsets) == len(self.columns) and max(offsets) - min(offsets) < 8 * len(offsets):
            # Each column a diagonal (row r at r + start), near each other: a band.
            runs: dict[int, list[tuple[int, int]]] = {}
            for c in self.columns:
                runs.setdefault(c.start, []).append((c.lo, c.hi))
            return runs_csr(runs, self.size, n)  # a stencil's: no table of cells
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
        if not column.whole:
            out[(cols < column.lo) | (cols >= column.hi)] = -1
        elif missing:
            out[cols < 0] = -1
        return out
    if not missing:
        return column[cols]
    out = np.full(len(cols), -1, dtype=np.int64)
    there = cols >= 0
    out[there] = column[cols[there]]
    return out


def _strided(column, start: int, step: int, length: int, lo: int, hi: int):
    """column[start + step·r] for the rows lo ≤ r < hi of `length` (the others none)."""
    if type(column) is Progression:
        first, end = _rows_within(start, step, length, column.lo, column.hi)
        first, end = max(first, lo), min(end, hi)
        return Progression(column.start + column.step * start, column.step * step, length, first, max(end, first))
    if lo >= hi:
        return np.full(length, -1, dtype=np.int64)
    begin, count = start + step * lo, hi - lo
    if step == 0:
        picked = np.full(count, column[begin], dtype=np.int64)
    else:
        stop = begin + step * count
        picked = column[begin:stop if stop >= 0 else None:step]
    if lo == 0 and hi == length:
        return picked
    out = np.full(length, -1, dtype=np.int64)
    out[lo:hi] = picked
    return out


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
        rows = np.arange(links.lo, links.hi)
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
            return Columns(size, [_strided(c, links.start, links.step, size, links.lo, links.hi) for c in j.columns])
        if links.kind == "copies":
            missing = bool(len(links.cols)) and links.cols.min() < 0
            return Columns(size, [_picked(c, links.cols, missing) for c in j.columns])
    j = csr_of(j, n)
    if links.kind == "groups":
        rows, cols = links.listed_groups()
        return _spreading(rows, links.groups) @ (_grouping(cols, links.groups) @ j)
    return _links_csr(links) @ j


def union_of(terms: list, size: int, n: int):
    """The union of patterns of the same rows."""
    first = terms[0]
    for t in terms:
        if t is not first:
            break
    else:  # one pattern (`y * y`'s operands)
        return first
    columns: dict = {}  # each column once: a progression by its fields, an index array by its identity
    for t in terms:
        if type(t) is not Columns:
            break
        for c in t.columns:
            columns.setdefault((c.start, c.step, c.lo, c.hi) if type(c) is Progression else id(c), c)
    else:
        if len(columns) <= MAX_COLUMNS:
            return Columns(size, list(columns.values()))
    total = csr_of(terms[0], n)
    for t in terms[1:]:
        total = total + csr_of(t, n)
    return total


def pushed_back(links: Links, adj: np.ndarray) -> np.ndarray:
    """Linksᵀ · adj as booleans: the operand entries linked to an entry in adj."""
    if links.kind == "same":
        return adj
    if links.kind == "groups":
        if links.rows is None:  # one group of every entry
            return np.ones(links.shape[1], dtype=bool) if adj.any() else np.zeros(links.shape[1], dtype=bool)
        live = np.zeros(links.groups + 1, dtype=bool)  # the last slot stands for "no group"
        live[links.rows[adj & (links.rows >= 0)]] = True
        if live[:-1].all():  # a sum's whole operand, or every row of a softmax: one pass
            return links.cols >= 0
        return live[np.where(links.cols >= 0, links.cols, links.groups)]
    result = np.zeros(links.shape[1], dtype=bool)
    if links.kind == "strided":
        lo, hi = links.lo, links.hi
        begin = links.start + links.step * lo
        if hi <= lo:
            pass
        elif links.step == 0:
            result[begin] = adj[lo:hi].any()
        else:
            stop = begin + links.step * (hi - lo)
            result[begin:stop if stop >= 0 else None:links.step] = adj[lo:hi]
        return result
    if links.kind == "copies":
        cols = links.cols[adj]
        result[cols[cols >= 0]] = True
        return result
    result[links.cols[adj[links.rows]]] = True  # "pairs"
    return result


class HessianPairs:
    """The pairs (a, b) of differentiated entries a second derivative
    couples, gathered node by node and made one symmetric CSR matrix at the
    end: through a band of booleans around the diagonal when they lie near
    it (a chain's Hessian: no sort), else by scipy's COO → CSR."""

    def __init__(self, n: int):
        self.n = n
        self.runs: dict[int, list[tuple[int, int]]] = {}  # column − row (≥ 0) -> runs of rows (first, end)
        self.diagonals: list[tuple[int, int, int, int]] = []  # (row start, row step > 1, length, column − row)
        self.listed: list[tuple[np.ndarray, np.ndarray]] = []  # (rows ≤ columns, column − row)
        self.entries = 0
        self.band = -1  # the largest column − row

    def add_all(self, left: list, right: list, symmetric: bool) -> None:
        """Each column of `left` meets each of `right` (`add`); `symmetric`: the two are one list, each pair met once."""
        runs = self.runs
        for s, a in enumerate(left):
            for b in right[s:] if symmetric else right:
                if type(a) is not Progression or type(b) is not Progression or a.step != 1 or b.step != 1:
                    self.add(a, b)
                    continue
                first, end = (a.lo if a.lo > b.lo else b.lo), (a.hi if a.hi < b.hi else b.hi)
                if first < end:  # a run of one diagonal (steps of 1: `add`'s commonest case, without its call)
                    low, d = (a.start, b.start - a.start) if a.start < b.start else (b.start, a.start - b.start)
                    if d in runs:
                        runs[d].append((low + first, low + end))
                    else:
                        runs[d] = [(low + first, low + end)]
                    self.entries += end - first
                    if d > self.band:
                        self.band = d

    def add(self, a, b) -> None:
        """Entry a[p] meets entry b[p], for every p (-1: none)."""
        if type(a) is Progression and type(b) is Progression and a.step == b.step != 0:
            first = a.lo if a.lo > b.lo else b.lo
            end = a.hi if a.hi < b.hi else b.hi
            if first >= end:
                return
            step, length = a.step, end - first
            start = (a.start if a.start < b.start else b.start) + step * first
            if step < 0:
                start, step = start + step * (length - 1), -step
            d = b.start - a.start if b.start > a.start else a.start - b.start
            if step == 1:
                self.runs.setdefault(d, []).append((start, start + length))
            else:
                self.diagonals.append((start, step, length, d))
            self.entries += length
            self.band = max(self.band, d)
            return
        a, b = _array(a), _array(b)
        if len(a) and (a.min() < 0 or b.min() < 0):
            both = (a >= 0) & (b >= 0)
            a, b = a[both], b[both]
        d = np.abs(b - a)
        self.listed.append((np.minimum(a, b), d))
        self.entries += len(a)
        if len(d):
            self.band = max(self.band, int(d.max()))

    def add_matrix(self, m: sp.csr_array) -> None:
        coo = m.tocoo()
        self.add(coo.row.astype(np.int64), coo.col.astype(np.int64))

    def matrix(self) -> sp.csr_array:
        n, band = self.n, self.band
        if band < 0:
            return empty_csr(n, n)
        if n * (2 * band + 1) > 8 * self.entries + 4096:
            return self._scattered()
        if not self.listed and not self.diagonals:  # a chain's Hessian: no cells
            return runs_csr(self.runs, n, n, mirrored=True)
        # cells[band + d, r]: the entry (r, r + d), set for each pair and its mirror.
        cells = np.zeros((2 * band + 1, n), dtype=bool)
        for start, step, length, d in self._all_diagonals():
            cells[band + d, start:start + step * length:step] = True
            cells[band - d, start + d:start + d + step * length:step] = True
        flat = cells.reshape(-1)
        for low, d in self.listed:
            flat[(band + d) * n + low] = True
            flat[(band - d) * n + low + d] = True
        return band_csr(cells, -band, n)

    def _all_diagonals(self) -> list[tuple[int, int, int, int]]:
        return [(first, 1, end - first, d) for d, runs in self.runs.items() for first, end in runs] + self.diagonals

    def _scattered(self) -> sp.csr_array:
        diagonals = self._all_diagonals()
        lows = [start + step * np.arange(length) for start, step, length, _ in diagonals]
        ds = [np.full(length, d) for *_, length, d in diagonals]
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
        found.add_all(left, right, links.kind == "same" and ja is jb)  # symmetric: (a, b) and (b, a) are one pair
        return
    ja, jb = csr_of(ja, n), csr_of(jb, n)
    if links.kind == "groups":
        rows, cols = links.listed_groups()
        found.add_matrix((_grouping(rows, links.groups) @ ja).T @ (_grouping(cols, links.groups) @ jb))
    else:
        found.add_matrix(ja.T @ pulled(links, jb, n))
