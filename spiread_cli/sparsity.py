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

Patterns are scipy.sparse boolean CSR matrices (the `sparse` extra); this
module is imported only by the options that need it.
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


def pulled(links: Links, j: sp.csr_array) -> sp.csr_array:
    """links · J: for each entry of the result, the union of the rows of J of
    the entries it is linked to."""
    if links.kind == "same":
        return j
    if links.kind == "pairs":
        return _csr(links.shape, links.rows, links.cols) @ j
    return _spreading(links.rows, links.groups) @ (_grouping(links.cols, links.groups) @ j)


def pushed_back(links: Links, adj: np.ndarray) -> np.ndarray:
    """Linksᵀ · adj as booleans: the operand entries linked to an entry in adj."""
    if links.kind == "same":
        return adj
    result = np.zeros(links.shape[1], dtype=bool)
    if links.kind == "pairs":
        result[links.cols[adj[links.rows]]] = True
        return result
    live = np.zeros(links.groups + 1, dtype=bool)  # the last slot stands for "no group"
    live[links.rows[adj & (links.rows >= 0)]] = True
    return live[np.where(links.cols >= 0, links.cols, links.groups)]


def met(links: Links, ja: sp.csr_array, jb: sp.csr_array) -> sp.csr_array:
    """Jaᵀ · links · Jb: the pairs of differentiated entries that a second
    derivative of the op couples."""
    if links.kind == "groups":
        return ((_grouping(links.rows, links.groups) @ ja).T @ (_grouping(links.cols, links.groups) @ jb)).tocsr()
    return (ja.T @ pulled(links, jb)).tocsr()


@dataclass
class Sweep:
    """The first-order patterns of every node between `wrt` and `output`:
    J(node) (node entries × differentiated entries), and each op node's
    first-order links, for the reverse sweep of the Hessian."""
    tape: Tape
    output: int
    wrt: list[int]

    def __post_init__(self):
        nodes = self.tape.nodes
        self.sizes = [math.prod(nodes[i].shape) for i in self.wrt]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n = int(self.offsets[-1])
        self.plan: list[Node] = self.tape.between(self.wrt, self.output)
        self.limit = max_bytes()
        self.patterns: dict[int, sp.csr_array] = {}
        self.links: dict[tuple[int, int], Links] = {}
        self.entries: dict[int, Entries] = {}
        # Nodes whose values move with the inputs through an op with no
        # derivative (a comparison, x.value): their zeros are not structural.
        self.moving_flat: set[int] = set()
        seeds = {i: p for p, i in enumerate(self.wrt)}
        for node in self.plan:
            pattern = None
            if node.op is not None:
                entries = self.entries[node.id] = self._entries(node)
                for k, i in enumerate(node.inputs):
                    if i not in self.patterns:
                        continue
                    links = node.op.structure.first(k, entries)
                    if links is None or i in self.moving_flat:
                        self.moving_flat.add(node.id)
                    if links is None:
                        continue
                    self.links[node.id, k] = links
                    term = pulled(links, self.patterns[i])
                    pattern = term if pattern is None else pattern + term
            if node.id in seeds:  # a seeded intermediate gets its own seed on top, as in forward mode
                p = seeds[node.id]
                size = self.sizes[p]
                seed = _csr((size, self.n), np.arange(size), self.offsets[p] + np.arange(size))
                pattern = seed if pattern is None else pattern + seed
            if pattern is None:
                pattern = sp.csr_array((math.prod(node.shape), self.n), dtype=bool)
            self._check(pattern, node)
            self.patterns[node.id] = pattern

    def _entries(self, node: Node) -> Entries:
        nodes, patterns = self.tape.nodes, self.patterns

        def nonzero(k: int) -> np.ndarray:
            i = node.inputs[k]
            if i in self.moving_flat:
                return np.ones(math.prod(nodes[i].shape), dtype=bool)
            value = np.ravel(nodes[i].value) != 0
            if i in patterns:
                value |= np.diff(patterns[i].indptr) > 0
            return value

        return Entries(node.op, tuple(nodes[i].shape for i in node.inputs), node.shape, node.params, nonzero)

    def _check(self, pattern: sp.csr_array, node: Node) -> None:
        check_bytes(pattern.nnz * 9, lambda: f"the sparsity pattern at `{node.name or node.label}` would hold "
                                             f"{pattern.nnz} entries", node.span, self.limit)

    def jacobian(self) -> sp.csr_array:
        """The pattern of ∂output/∂wrt: output entries × differentiated entries."""
        out = self.tape.nodes[self.output]
        return self.patterns.get(self.output, sp.csr_array((math.prod(out.shape), self.n), dtype=bool))

    def hessian(self) -> sp.csr_array:
        """The pattern of the Hessian of the scalar output, symmetric."""
        nodes = self.tape.nodes
        adjoints: dict[int, np.ndarray] = {}
        if self.output in self.patterns:
            adjoints[self.output] = np.ones(math.prod(nodes[self.output].shape), dtype=bool)
        terms: list[sp.csr_array] = []  # summed once at the end: a running sum would copy it at every node
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
                if i not in self.patterns or self.patterns[i].nnz == 0:
                    continue
                for m in range(k, len(inputs)):
                    j = inputs[m]
                    if j not in self.patterns or self.patterns[j].nnz == 0:
                        continue
                    links = second(k, m, self.entries[node.id], adj)
                    if links is not None:
                        terms.append(met(links, self.patterns[i], self.patterns[j]))
                        self._check(terms[-1], node)
        if not terms:
            return sp.csr_array((self.n, self.n), dtype=bool)
        parts = [term.tocoo() for term in terms]
        rows = np.concatenate([p.row for p in parts] + [p.col for p in parts]).astype(np.int64)
        cols = np.concatenate([p.col for p in parts] + [p.row for p in parts]).astype(np.int64)
        return _csr((self.n, self.n), rows, cols)  # H and Hᵀ: duplicates meet in one entry


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


def recover(pattern: sp.csr_array, colouring: Colouring, products: np.ndarray) -> sp.csr_array:
    """Every nonzero of the matrix from `products` = matrix · seeds (rows ×
    colours), as a CSR matrix with the pattern's entries."""
    coo = pattern.tocoo()
    rows, cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
    colours = colouring.colours
    if colouring.kind == "columns":
        values = products[rows, colours[cols]]
    else:
        # Entry (i, j) is H·seed[colour j] at i when no other entry of row i
        # has j's colour; else (a star colouring guarantees it) H·seed[colour i] at j.
        k = colouring.count
        counts = np.bincount(rows * k + colours[cols], minlength=pattern.shape[0] * k)
        unique_in_row = counts[rows * k + colours[cols]] == 1
        values = np.where(unique_in_row, products[rows, colours[cols]], products[cols, colours[rows]])
    return sp.csr_array((values, (rows, cols)), shape=pattern.shape)
