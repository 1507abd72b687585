"""Compressed evaluation of a sparse Jacobian or Hessian: colourings of
its pattern's columns and the recovery of every nonzero from one product per
colour (Curtis, Powell & Reid 1974; Coleman & Moré 1984; Gebremedhin, Manne
& Pothen 2005): columns of a sparse matrix that share no row can be found
from one product with the sum of their unit vectors; a colouring groups
them, and one sweep per colour recovers every nonzero."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import scipy.sparse as sp


# Seeds of this size or less are made once for every call of a kept sparse
# evaluation (a pass over colours × columns each call, else); larger ones a
# block at a time (limits.py's size under which nothing is refused).
KEPT_SEEDS_BYTES = 8 << 20


# What scipy's constructor leaves on a CSR matrix besides its parts (its print
# limit), read from one it made: `sorted_csr` sets the same attributes.
_MADE = vars(sp.csr_array(((True,), (0,), (0, 1)), shape=(1, 1)))


def sorted_csr(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: tuple[int, int]) -> sp.csr_array:
    """The CSR matrix of these parts, whose every row's indices ascend, once
    each, within the columns (canonical, as scipy says), and whose indices
    and indptr share one integer dtype: made as scipy's constructor leaves
    it, without its checks of the parts (their types, the index dtype chosen
    from their contents), ~11 µs a call whatever the size, for parts the
    caller made valid."""
    m = sp.csr_array.__new__(sp.csr_array)
    m.__dict__.update(_MADE)
    m.__dict__.update(_shape=shape, data=data, indices=indices, indptr=indptr)
    m.has_canonical_format = True
    return m


def csr_copy(m: sp.csr_array) -> sp.csr_array:
    """A copy of a CSR matrix that owns its parts: made by `sorted_csr`
    where it is canonical with one index dtype (a kept pattern, each call's
    own), else by scipy's `copy`, which checks them."""
    if m.indices.dtype == m.indptr.dtype and m.has_canonical_format:
        return sorted_csr(m.data.copy(), m.indices.copy(), m.indptr.copy(), m.shape)
    return m.copy()


@dataclass
class Colouring:
    """colour[j] for each column; `kind` "columns" (structurally orthogonal
    columns: direct recovery, any matrix) or "star" (a symmetric matrix's
    star colouring: each nonzero read from the column of i's or of j's
    colour, whichever is unique in the other's row). A pattern with no entry
    has no colour (every column -1): it takes no sweep."""
    colours: np.ndarray
    kind: str
    count: int = -1  # the colours: one sweep each (counted when not given)
    periodic: bool = False  # colour j is j mod count (the banded colouring's)

    def __post_init__(self):
        if self.count < 0:
            self.count = int(self.colours.max()) + 1 if len(self.colours) else 0

    def seeds(self, start: int = 0, count: int | None = None) -> np.ndarray:
        """The seed directions of colours start … start + count − 1 (all of
        them by default), colours × columns: the sum of each colour's unit
        vectors (a periodic colouring's every count-th column from the
        colour on, written as strided ones, with no pass over the colours)."""
        count = self.count - start if count is None else count
        if not self.periodic:
            return (self.colours[None, :] == np.arange(start, start + count)[:, None]).astype(np.float64)
        seeds = np.zeros((count, len(self.colours)))
        for row, colour in enumerate(range(start, start + count)):
            seeds[row, colour::self.count] = 1.0
        return seeds

    def seed_blocks(self) -> Callable[[int, int], np.ndarray]:
        """`seeds(start, count)` for a sweep that pushes its colours a block at
        a time, again and again (Newton's steps, a kept run): the seeds made
        once and kept when they are small (KEPT_SEEDS_BYTES), else each block's
        made as it is asked for, so colours × columns is never held at once
        beyond the block's own tangents, which the sweep sizes against the limit."""
        if self.count * len(self.colours) * 8 > KEPT_SEEDS_BYTES:
            return self.seeds
        whole = self.seeds()
        return lambda start, count: whole[start:start + count]


def _lists(m: sp.csr_array) -> list[list[int]]:
    indptr, indices = m.indptr.tolist(), m.indices.tolist()
    return [indices[indptr[r]:indptr[r + 1]] for r in range(m.shape[0])]


def _banded(pattern: sp.csr_array, counts: np.ndarray, symmetric: bool = False,
            reach: int | None = None) -> tuple[np.ndarray, int] | None:
    """Columns coloured j mod (lower + upper + 1) when every nonzero lies
    within `lower` below and `upper` above the diagonal (Curtis–Powell–Reid):
    columns of one colour are further apart than any row reaches; and how
    many colours. `counts`: each row's entries; `symmetric`: the pattern
    is, so it reaches as far below as above; `reach`: how far, if known
    (the largest |column − row| of a symmetric pattern's entries)."""
    if pattern.nnz == 0:  # nothing to recover: no colour, no sweep
        return np.full(pattern.shape[1], -1, dtype=np.int64), 0
    if symmetric and reach is not None:
        upper = lower = reach
    elif pattern.has_sorted_indices:  # each row's first and last entry say how far it reaches
        starts, ends = pattern.indptr[:-1], pattern.indptr[1:]
        if counts.min() > 0:
            rows = np.arange(len(starts), dtype=starts.dtype)
        else:
            rows = np.flatnonzero(counts > 0)
            starts, ends = starts[rows], ends[rows]
        upper = int((np.take(pattern.indices, ends - 1) - rows).max())
        lower = upper if symmetric else -int((np.take(pattern.indices, starts) - rows).min())
    else:
        coo = pattern.tocoo()
        reach = coo.col.astype(np.int64) - coo.row
        upper, lower = int(reach.max()), -int(reach.min())
    width = upper + lower + 1
    n = pattern.shape[1]
    return (_repeating(width, n), width) if width < n else None


def _repeating(width: int, n: int) -> np.ndarray:
    """0, 1, …, width − 1 over and over, n entries: a first block of whole
    periods (a few hundred entries), then what is written so far copied
    after itself (contiguous copies, 3× faster than np.tile's at 10⁵)."""
    out = np.empty(n, dtype=np.int64)
    done = min(n, width * max(1, 256 // width))
    out[:done] = np.arange(done) % width
    while done < n:
        more = min(done, n - done)
        out[done:done + more] = out[:more]
        done += more
    return out


# At most this many (column, earlier neighbour) pairs are held at once: a row
# that is nearly full makes ~n²/2 of them, which the columns are walked in
# blocks to keep within reach of the pattern's own size.
PAIRS_AT_ONCE = 1 << 20


def _greedy_columns(pattern: sp.csr_array) -> np.ndarray:
    """Greedy distance-1 colouring of the column intersection graph, in
    natural order: each column takes the least colour no column sharing a
    row with it has. The columns sharing a row with each are found by a
    sparse product (each neighbour once, however many rows it shares), a
    block of columns at a time, and only the earlier ones are looked at:
    they alone have a colour yet."""
    n = pattern.shape[1]
    counts = np.diff(pattern.indptr).astype(np.int64)
    if counts.max(initial=0) >= n:  # a full row: every column its own colour, the fewest there can be
        return np.arange(n, dtype=np.int64)
    ones = sp.csr_array((np.ones(pattern.nnz, dtype=bool), pattern.indices, pattern.indptr), shape=pattern.shape)
    columns = ones.T.tocsr()
    # A column's neighbours (with repeats) number at most the entries of its rows: blocks of columns under the bound.
    reach = np.cumsum(columns @ counts)
    budget = max(PAIRS_AT_ONCE, 4 * pattern.nnz)
    colour = [-1] * n
    forbidden = [-1] * (n + 1)
    lo = 0
    while lo < n:
        hi = max(lo + 1, int(np.searchsorted(reach, (reach[lo - 1] if lo else 0) + budget, side="right")))
        earlier = sp.tril(columns[lo:hi] @ ones, k=lo - 1, format="csr")  # row r is column lo + r
        indptr, indices = earlier.indptr.tolist(), earlier.indices.tolist()
        for r, j in enumerate(range(lo, hi)):
            for k in indices[indptr[r]:indptr[r + 1]]:
                forbidden[colour[k]] = j
            c = 0
            while forbidden[c] == j:
                c += 1
            colour[j] = c
        lo = hi
    return np.asarray(colour, dtype=np.int64)


def _greedy_star(pattern: sp.csr_array) -> np.ndarray:
    """Greedy star colouring of a symmetric pattern's adjacency graph
    (Gebremedhin, Manne & Pothen 2005, Algorithm 4.1): neighbours differ,
    and no path on four vertices has only two colours."""
    n = pattern.shape[0]
    adjacent = [[k for k in row if k != v] for v, row in enumerate(_lists(pattern))]
    colour = [-1] * n
    forbidden = [-1] * (n + 1)
    # around[x][c]: how many of x's coloured neighbours have colour c, so "x has a
    # neighbour other than w coloured as w" is one look-up, not a walk of x's row
    around: list[dict[int, int]] = [{} for _ in range(n)]
    for v in range(n):
        for w in adjacent[v]:
            if colour[w] >= 0:
                forbidden[colour[w]] = v
        for w in adjacent[v]:
            cw = colour[w]
            for x in adjacent[w]:
                cx = colour[x]
                if x == v or cx < 0:
                    continue
                if cw < 0 or around[x].get(cw, 0) >= 2:  # w itself is one of x's neighbours coloured cw
                    forbidden[cx] = v
        c = 0
        while forbidden[c] == v:
            c += 1
        colour[v] = c
        for x in adjacent[v]:
            around[x][c] = around[x].get(c, 0) + 1
    return np.asarray(colour, dtype=np.int64)


def colour_columns(pattern: sp.csr_array, symmetric: bool = False, reach: int | None = None) -> Colouring:
    """Structurally orthogonal column groups: the banded colouring when the
    pattern is banded and that needs no more colours than its fullest row
    (the least any colouring needs), else the fewer of it and the greedy one.
    `symmetric`: the pattern is (its band read from one side, or told: `reach`, as `_banded`)."""
    counts = np.diff(pattern.indptr)
    fullest = int(counts.max(initial=0))
    banded, count = _banded(pattern, counts, symmetric, reach) or (None, None)
    if banded is not None and count <= fullest:
        return Colouring(banded, "columns", count, periodic=count > 0)
    greedy = Colouring(_greedy_columns(pattern), "columns")
    return greedy if banded is None or greedy.count <= count else Colouring(banded, "columns", count, periodic=True)


def colour_symmetric(pattern: sp.csr_array, reach: int | None = None) -> Colouring:
    """For a symmetric pattern: the fewer colours of a star colouring and of
    structurally orthogonal columns (a tridiagonal pattern's 3 by the
    latter, which no star colouring beats when the graph has a path of
    four vertices; an arrowhead's 2 by a star colouring, against n).
    `reach`: the largest |column − row| of its entries, if known (as the
    sweep that made it knows it: `sparsity.Sweep.reach`), else read."""
    columns = colour_columns(pattern, symmetric=True, reach=reach)
    if columns.count <= 3:
        return columns
    star = Colouring(_greedy_star(pattern), "star")
    return star if star.count < columns.count else columns


class Recovery:
    """Where each nonzero of `pattern` is read from the products of the
    matrix with the colours' seeds, worked out once for every evaluation
    (Newton's steps): reading is then one gather."""

    def __init__(self, pattern: sp.csr_array, colouring: Colouring):
        if type(pattern) is not sp.csr_array:
            pattern = sp.csr_array(pattern)
        if not pattern.has_canonical_format:  # summed on a copy: the caller's pattern stays as it is
            pattern = pattern.copy()
            pattern.sum_duplicates()
        self.shape, self.indptr, self.indices = pattern.shape, pattern.indptr, pattern.indices
        colours = colouring.colours.astype(np.int64, copy=False)
        if colouring.kind == "columns" and colouring.periodic:
            self.at = _periodic_positions(pattern, colours, colouring.count)
            return
        rows = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(self.indptr))
        cols = self.indices
        if colouring.kind == "columns":
            # Entry (i, j) is H·seed[colour j] at i: the colours scaled once per column, not per entry.
            self.at = np.take(colours * pattern.shape[0], cols)
            self.at += rows
            return
        # Entry (i, j) is H·seed[colour j] at i when no other entry of row i
        # has j's colour; else (a star colouring guarantees it) H·seed[colour i] at j.
        colour, k = np.take(colours, cols), colouring.count
        counts = np.bincount(rows * k + colour, minlength=pattern.shape[0] * k)
        unique_in_row = counts[rows * k + colour] == 1
        rows, colour = (np.where(unique_in_row, rows, cols),
                        np.where(unique_in_row, colour, np.take(colours, rows)))
        colour *= pattern.shape[0]
        colour += rows
        self.at = colour  # in the products laid out colours × rows

    def __call__(self, products: np.ndarray) -> sp.csr_array:
        """The matrix from `products` = (matrix · seeds)ᵀ, colours × rows."""
        return sorted_csr(np.take(products, self.at), self.indices.copy(), self.indptr.copy(), self.shape)


def _periodic_positions(pattern: sp.csr_array, colours: np.ndarray, count: int) -> np.ndarray:
    """`Recovery`'s positions for a periodic (banded) column colouring:
    entry (i, j) at colour(j) · rows + i. Every entry of a row lies within
    `count` consecutive columns (the band the colouring is periodic over), so
    a row of `count` entries holds all of them, and across a run of such
    rows the positions repeat every `count` rows, each raised by the rows
    between: written as a first block of whole periods, then copied after
    themselves, raised (contiguous passes, no gather); the rows outside the
    run entry by entry."""
    rows, indptr, indices = pattern.shape[0], pattern.indptr, pattern.indices
    counts = np.diff(indptr)
    full = counts == count
    top = int(np.argmax(full)) if count else 0
    bottom = top + (int(np.argmin(full[top:])) if not full[top:].all() else rows - top)
    if bottom - top < 2 * count:  # no run to speak of: every entry by its row and colour
        top = bottom = rows
    at = np.empty(len(indices), dtype=np.int64)
    for first, end in ((0, top), (bottom, rows)):
        begin, stop = int(indptr[first]), int(indptr[end])
        if stop > begin:
            at[begin:stop] = np.take(colours, indices[begin:stop]) * rows
            at[begin:stop] += np.repeat(np.arange(first, end, dtype=np.int64), counts[first:end])
    if bottom > top:
        run = at[indptr[top]:indptr[bottom]]
        low = int(indices[indptr[top]]) - top  # row r holds columns r + low … r + low + count − 1
        block = min(bottom - top, count * max(1, 256 // count))  # whole periods of rows
        r = np.arange(top, top + block, dtype=np.int64)
        first = np.add.outer(r, np.arange(low, low + count)) % count
        first *= rows
        first += r[:, None]
        done = block * count
        run[:done] = first.ravel()
        while done < len(run):  # rows done (a whole number of periods) later, the same colours
            more = min(done, len(run) - done)
            np.add(run[:more], done // count, out=run[done:done + more])
            done += more
    return at
