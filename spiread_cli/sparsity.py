"""Exact sparsity patterns of Jacobians and Hessians, read from the tape.

Every op declares how its output entries depend on its operands' entries
(`Op.structure`, spiread_cli/structure.py), first and second order. Pushing
those rules over the nodes between the values differentiated by and the
output gives, with no probing and no derivative computed:

- the Jacobian pattern: J(node) = ∪ over operands of first(i) · J(operand),
  starting from the identity at the values differentiated by (a forward
  sweep of 0/1 matrices);
- the Hessian pattern of a scalar output: H = ∪ over nonlinear op nodes of
  J(a)ᵀ · second(a, b; adj) · J(b), where adj marks the node's entries the
  output depends on (a reverse sweep of 0/1 vectors) — the Hessian is
  Σ_v Σ_k ∂f/∂v_k · J_inᵀ ∇²v_k J_in, and a term is structurally zero
  exactly when ∂f/∂v_k is, or the op is linear in that pair.

An entry of the pattern may be zero at a particular point (a product of two
terms that cancel, tanh'' at 0); no entry outside it is ever nonzero. A
constant's zeros are structural: `A @@ x` with a constant banded A is banded.

Reading a pattern should cost about what one gradient does, so a J with a
few entries a row (a chain of elementwise ops, slices and gathers, the
usual case for sparse Hessians) is kept as `Columns` — the row's entries
in a few index arrays, a slice's kept as a `Progression` without listing
it — which elementwise ops share, a copy slices or gathers, and a product
of two of them reads pair by pair; only the other ops (sums, rows, matrix
products, scatters) multiply scipy.sparse 0/1 matrices. J(node) is found
only for the nodes a second derivative or the Jacobian needs, and the
Hessian's pairs become one CSR matrix at the end, through a band of
booleans when they lie near the diagonal (no sort).

Patterns come out as scipy.sparse boolean CSR matrices (the `sparse`
extra); this module is imported only by the options that need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from .diagnostics import SpireadError
from .limits import check_bytes, max_bytes
from .structure import Entries, Links
from .tape import Node, Tape

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


def _csr_of(pattern, n: int) -> sp.csr_array:
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
    j = _csr_of(j, n)
    if links.kind == "groups":
        return _spreading(links.rows, links.groups) @ (_grouping(links.cols, links.groups) @ j)
    return _links_csr(links) @ j


def _union(terms: list, size: int, n: int):
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
    total = _csr_of(terms[0], n)
    for t in terms[1:]:
        total = total + _csr_of(t, n)
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
    ja, jb = _csr_of(ja, n), _csr_of(jb, n)
    if links.kind == "groups":
        found.add_matrix(((_grouping(links.rows, links.groups) @ ja).T @ (_grouping(links.cols, links.groups) @ jb)))
    else:
        found.add_matrix(ja.T @ pulled(links, jb, n))


@dataclass
class Sweep:
    """The first-order links of every op node between `wrt` and `output`,
    and J(node) (node entries × differentiated entries) as it is asked
    for (`pattern`), for the Jacobian and the reverse sweep of the Hessian."""
    tape: Tape
    output: int
    wrt: list[int]

    def __post_init__(self):
        nodes = self.tape.nodes
        self.sizes = [math.prod(nodes[i].shape) for i in self.wrt]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.plan: list[Node] = self.tape.between(self.wrt, self.output)
        self.moving = {node.id for node in self.plan}
        self.limit = max_bytes()
        self.patterns: dict[int, Columns | sp.csr_array] = {}
        self.links: dict[tuple[int, int], Links] = {}
        self.entries: dict[int, Entries] = {}
        # Nodes whose values move with the inputs through an op with no
        # derivative (a comparison, x.value): their zeros are not structural.
        self.moving_flat: set[int] = set()
        self.seeds = {i: p for p, i in enumerate(self.wrt)}
        for node in self.plan:
            if node.op is None:
                continue
            entries = self.entries[node.id] = self._entries(node)
            for k, i in enumerate(node.inputs):
                if i not in self.moving:
                    continue
                links = node.op.structure.first(k, entries)
                if links is None or i in self.moving_flat:
                    self.moving_flat.add(node.id)
                if links is not None:
                    self.links[node.id, k] = links

    def pattern(self, node_id: int):
        """J(node), found with the patterns of the nodes it is computed from."""
        if node_id in self.patterns:
            return self.patterns[node_id]
        nodes, needed, stack = self.tape.nodes, set(), [node_id]
        while stack:
            i = stack.pop()
            if i not in self.patterns and i not in needed:
                needed.add(i)
                node = nodes[i]
                if node.op is not None:
                    stack.extend(j for k, j in enumerate(node.inputs) if (i, k) in self.links)
        for i in sorted(needed):  # tape order: operands first
            self.patterns[i] = self._pattern_of(nodes[i])
        return self.patterns[node_id]

    def _pattern_of(self, node: Node):
        size = math.prod(node.shape)
        terms = [] if node.op is None else [pulled(self.links[node.id, k], self.patterns[i], self.n)
                                            for k, i in enumerate(node.inputs) if (node.id, k) in self.links]
        if node.id in self.seeds:  # a seeded intermediate gets its own seed on top, as in forward mode
            terms.append(Columns(size, [Progression(int(self.offsets[self.seeds[node.id]]), 1, size)]))
        pattern = _union(terms, size, self.n) if terms else Columns(size, [])
        listed = pattern.listed() if type(pattern) is Columns else pattern.nnz
        self._check(listed, node)
        return pattern

    def _entries(self, node: Node) -> Entries:
        nodes = self.tape.nodes

        def nonzero(k: int) -> np.ndarray:
            i = node.inputs[k]
            if i in self.moving_flat:
                return np.ones(math.prod(nodes[i].shape), dtype=bool)
            value = np.ravel(nodes[i].value) != 0
            if i in self.moving:
                j = self.pattern(i)
                value |= j.rows_used() if type(j) is Columns else np.diff(j.indptr) > 0
            return value

        return Entries(node.op, tuple(nodes[i].shape for i in node.inputs), node.shape, node.params, nonzero)

    def _check(self, entries: int, node: Node) -> None:
        check_bytes(entries * 9, lambda: f"the sparsity pattern at `{node.name or node.label}` would hold "
                                         f"{entries} entries", node.span, self.limit)

    def jacobian(self) -> sp.csr_array:
        """The pattern of ∂output/∂wrt: output entries × differentiated entries."""
        if self.output not in self.moving:
            return sp.csr_array((math.prod(self.tape.nodes[self.output].shape), self.n), dtype=bool)
        return _csr_of(self.pattern(self.output), self.n)

    def hessian(self) -> sp.csr_array:
        """The pattern of the Hessian of the scalar output, symmetric."""
        nodes = self.tape.nodes
        adjoints: dict[int, np.ndarray] = {}
        if self.output in self.moving:
            adjoints[self.output] = np.ones(math.prod(nodes[self.output].shape), dtype=bool)
        found = HessianPairs(self.n)
        for node in reversed(self.plan):
            adj = adjoints.get(node.id)
            if adj is None or node.op is None or not adj.any():
                continue
            inputs = node.inputs
            for k, i in enumerate(inputs):
                links = self.links.get((node.id, k))
                if links is not None:
                    back = pushed_back(links, adj)
                    adjoints[i] = back if i not in adjoints else adjoints[i] | back
            second = node.op.structure.second
            for k, i in enumerate(inputs):
                if i not in self.moving:
                    continue
                for m in range(k, len(inputs)):
                    j = inputs[m]
                    if j not in self.moving:
                        continue
                    links = second(k, m, self.entries[node.id], adj)
                    if links is not None:
                        before = found.entries
                        met(links, self.pattern(i), self.pattern(j), found, self.n)
                        self._check(found.entries - before, node)
        return found.matrix()


def jacobian_pattern(tape: Tape, output: int, wrt: list[int]) -> sp.csr_array:
    return Sweep(tape, output, wrt).jacobian()


def hessian_pattern(tape: Tape, output: int, wrt: list[int]) -> sp.csr_array:
    return Sweep(tape, output, wrt).hessian()


def scipy_missing(what: str) -> SpireadError:
    """The error for an option that needs the `sparse` extra."""
    return SpireadError(f"{what} needs scipy, which is not installed",
                        notes=['pip install scipy (or pip install ".[sparse]" in spiread\'s checkout)'], exit_code=2)


# ------------------------------------------------------------- colouring
# Compressed evaluation (Curtis, Powell & Reid 1974; Coleman & Moré 1984;
# Gebremedhin, Manne & Pothen 2005): columns of a sparse matrix that share
# no row can be found from one product with the sum of their unit vectors;
# a colouring groups them, and one sweep per colour recovers every nonzero.


@dataclass
class Colouring:
    """colour[j] for each column; `kind` "columns" (structurally orthogonal
    columns: direct recovery, any matrix) or "star" (a symmetric matrix's
    star colouring: each nonzero read from the column of i's or of j's
    colour, whichever is unique in the other's row)."""
    colours: np.ndarray
    kind: str

    @property
    def count(self) -> int:
        return int(self.colours.max()) + 1 if len(self.colours) else 0

    def seeds(self) -> np.ndarray:
        """The colours' seed directions, colours × columns: the sum of each colour's unit vectors."""
        seeds = np.zeros((self.count, len(self.colours)))
        seeds[self.colours, np.arange(len(self.colours))] = 1.0
        return seeds


def _lists(m: sp.csr_array) -> list[list[int]]:
    indptr, indices = m.indptr.tolist(), m.indices.tolist()
    return [indices[indptr[r]:indptr[r + 1]] for r in range(m.shape[0])]


def _banded(pattern: sp.csr_array) -> np.ndarray | None:
    """Columns coloured j mod (lower + upper + 1) when every nonzero lies
    within `lower` below and `upper` above the diagonal (Curtis–Powell–Reid):
    columns of one colour are further apart than any row reaches."""
    coo = pattern.tocoo()
    if coo.nnz == 0:
        return np.zeros(pattern.shape[1], dtype=np.int64)
    offsets = coo.col.astype(np.int64) - coo.row
    width = int(offsets.max()) - int(offsets.min()) + 1
    return np.arange(pattern.shape[1]) % width if width < pattern.shape[1] else None


def _greedy_columns(pattern: sp.csr_array) -> np.ndarray:
    """Greedy distance-1 colouring of the column intersection graph, in
    natural order: each column takes the least colour no column sharing a
    row with it has."""
    n = pattern.shape[1]
    cols_of_row, rows_of_col = _lists(pattern), _lists(pattern.T.tocsr())
    colour = [-1] * n
    forbidden = [-1] * (n + 1)
    for j in range(n):
        for r in rows_of_col[j]:
            for k in cols_of_row[r]:
                c = colour[k]
                if c >= 0:
                    forbidden[c] = j
        c = 0
        while forbidden[c] == j:
            c += 1
        colour[j] = c
    return np.asarray(colour, dtype=np.int64)


def _greedy_star(pattern: sp.csr_array) -> np.ndarray:
    """Greedy star colouring of a symmetric pattern's adjacency graph
    (Gebremedhin, Manne & Pothen 2005, Algorithm 4.1): neighbours differ,
    and no path on four vertices has only two colours."""
    n = pattern.shape[0]
    adjacent = [[k for k in row if k != v] for v, row in enumerate(_lists(pattern))]
    colour = [-1] * n
    forbidden = [-1] * (n + 1)
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
                if cw < 0:
                    forbidden[cx] = v
                else:
                    for y in adjacent[x]:
                        if y != w and colour[y] == cw:
                            forbidden[cx] = v
                            break
        c = 0
        while forbidden[c] == v:
            c += 1
        colour[v] = c
    return np.asarray(colour, dtype=np.int64)


def colour_columns(pattern: sp.csr_array) -> Colouring:
    """Structurally orthogonal column groups: the banded colouring when the
    pattern is banded and that needs no more colours than its fullest row
    (the least any colouring needs), else the fewer of it and the greedy one."""
    fullest = int(np.diff(pattern.indptr).max(initial=0))
    banded = _banded(pattern)
    if banded is not None and (len(banded) == 0 or banded.max() + 1 <= fullest):
        return Colouring(banded, "columns")
    greedy = _greedy_columns(pattern)
    best = greedy if banded is None or greedy.max(initial=0) <= banded.max(initial=0) else banded
    return Colouring(best, "columns")


def colour_symmetric(pattern: sp.csr_array) -> Colouring:
    """For a symmetric pattern: the fewer colours of a star colouring and of
    structurally orthogonal columns (a tridiagonal pattern's 3 by the
    latter, which no star colouring beats when the graph has a path of
    four vertices; an arrowhead's 2 by a star colouring, against n)."""
    columns = colour_columns(pattern)
    if columns.count <= 3:
        return columns
    star = Colouring(_greedy_star(pattern), "star")
    return star if star.count < columns.count else columns


class Recovery:
    """Where each nonzero of `pattern` is read from the products of the
    matrix with the colours' seeds, worked out once for every evaluation
    (Newton's steps): reading is then one gather."""

    def __init__(self, pattern: sp.csr_array, colouring: Colouring):
        pattern = sp.csr_array(pattern)
        if not pattern.has_canonical_format:  # summed on a copy: the caller's pattern stays as it is
            pattern = pattern.copy()
            pattern.sum_duplicates()
        self.shape, self.indptr, self.indices = pattern.shape, pattern.indptr, pattern.indices
        rows = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(self.indptr))
        cols = self.indices.astype(np.int64)
        colours = colouring.colours
        colour = colours[cols]
        if colouring.kind != "columns":
            # Entry (i, j) is H·seed[colour j] at i when no other entry of row i
            # has j's colour; else (a star colouring guarantees it) H·seed[colour i] at j.
            k = colouring.count
            counts = np.bincount(rows * k + colour, minlength=pattern.shape[0] * k)
            unique_in_row = counts[rows * k + colour] == 1
            rows, colour = np.where(unique_in_row, rows, cols), np.where(unique_in_row, colour, colours[rows])
        self.at = colour * pattern.shape[0] + rows  # in the products laid out colours × rows

    def __call__(self, products: np.ndarray) -> sp.csr_array:
        """The matrix from `products` = (matrix · seeds)ᵀ, colours × rows."""
        values = np.take(products, self.at)
        return sp.csr_array((values, self.indices.copy(), self.indptr.copy()), shape=self.shape)


def recover(pattern: sp.csr_array, colouring: Colouring, products: np.ndarray) -> sp.csr_array:
    """Every nonzero of the matrix from `products` = matrix · seeds (rows ×
    colours), as a CSR matrix with the pattern's entries."""
    return Recovery(pattern, colouring)(np.ascontiguousarray(products.T))
