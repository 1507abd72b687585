"""How an op's output entries depend on its operands' entries: `Op.structure`.

Every op of the table (spiread_cli/ops.py) declares a `Structure` beside its
value and derivative rules. Its `kind` is the coarse fact forward mode's
batching, `.map` and the row chunks read (each entry on the same entry of
each operand, broadcast: "elementwise"; on its own row: "rows"; on every
entry: "dense"; entries picked, placed or summed by positions fixed with the
tape: "selection"). Its two rules are the exact facts spiread_cli/sparsity.py
propagates over a tape to read the sparsity pattern of a Jacobian or Hessian
without probing:

- ``first(i, entries) -> Links | None``: which entries of operand i each
  output entry depends on (the pattern of the op's own Jacobian ∂out/∂x_i),
  None where it is zero everywhere (`stopGradient`, the masks);
- ``second(i, j, entries, adj) -> Links | None`` (i ≤ j): which pairs of an
  entry of operand i and one of operand j meet in a second derivative of
  an output entry the result depends on (`adj`, flat bool over the output):
  None for a linear op, the same entry for a nonlinear elementwise one, the
  entries of a row for a softmax, (a[p, t], b[t, q]) for a product.

`entries` (`Entries`) tells a rule the shapes, the params, and which operand
entries may be nonzero: a constant's zeros are structural (a matrix product
by a constant banded matrix is banded).

A new op declares its rule with its entry: one of the makers below, and
tests/test_sparsity.py holds every op's declared pattern to its numeric
derivatives (nothing missed, nothing reported that is zero at every point).
A plain kind name ("elementwise", "rows", "dense", "selection") is accepted
for a quick start and means the conservative rule of that kind (nonlinear,
every operand coupled; a selection copies entries).

Imports nothing of spiread's (layer 0): the rules run numpy only (scipy is sparsity.py's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

STRUCTURES = ("elementwise", "rows", "dense", "selection")

# Above this many pairs, a rule that could list pairs within groups exactly
# (a product's partials: every pair of a row but the diagonal) states the
# groups instead, diagonal included: conservative, and a size the pattern's
# propagation handles without listing size² pairs.
MAX_LISTED_PAIRS = 1 << 22


@dataclass(slots=True)
class Links:
    """A 0/1 matrix between the entries (flat, C order) of two values, of
    `shape` (entries of the one, entries of the other). `kind`:

    - "same": the identity (an elementwise op on an operand of the output's shape);
    - "copies": one 1 a row at most: row r at column cols[r] (-1: none), a
      gather or a broadcast, each output entry a copy of one operand entry;
    - "strided": row r at column start + step·r for rows lo ≤ r < hi (the
      others none), a slice or a block of a concatenation, without listing it;
    - "pairs": ones at (rows[k], cols[k]);
    - "groups": ones between every row entry and every column entry of the
      same group; rows[r] and cols[c] are the groups (-1: none) of `groups`.
      A softmax's rows or a sum's whole operand, without listing size² pairs;
      rows and cols None: every entry in one group (`every`, no pass over it).
    """
    kind: str
    shape: tuple[int, int]
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None
    groups: int = 0
    start: int = 0
    step: int = 0
    lo: int = 0
    hi: int = 0

    @staticmethod
    def same(n: int) -> Links:
        return Links("same", (n, n))

    @staticmethod
    def copies(shape: tuple[int, int], cols) -> Links:
        return Links("copies", shape, cols=np.asarray(cols, dtype=np.int64))

    @staticmethod
    def strided(shape: tuple[int, int], start: int, step: int, lo: int = 0, hi: int | None = None) -> Links:
        return Links("strided", shape, start=int(start), step=int(step), lo=int(lo),
                     hi=shape[0] if hi is None else int(hi))

    @staticmethod
    def gathered(shape: tuple[int, int], cols: np.ndarray) -> Links:
        """"copies" of cols (-1: none), or "strided" when the rows with a column are one run and their
        columns one progression (a block of a concatenation): a chain through it then lists nothing."""
        cols = np.asarray(cols, dtype=np.int64)
        there = np.flatnonzero(cols >= 0)
        if len(there) and there[-1] - there[0] + 1 == len(there):
            lo, hi = int(there[0]), int(there[-1]) + 1
            step = int(cols[lo + 1] - cols[lo]) if hi - lo > 1 else 0
            start = int(cols[lo]) - step * lo
            if hi - lo == 1 or (np.diff(cols[lo:hi]) == step).all():
                return Links.strided(shape, start, step, lo, hi)
        return Links.copies(shape, cols)

    @staticmethod
    def viewed(shape: tuple[int, int], picked: np.ndarray, numbers: np.ndarray) -> Links | None:
        """"strided" when `picked`, taken from the operand's entries numbered
        in the flat array `numbers`, is a view of it with one stride (a
        slice, a broadcast scalar, a contiguous block), so a chain of slices
        lists nothing; else None."""
        if not (isinstance(picked, np.ndarray) and picked.size and picked.base is not None
                and np.may_share_memory(picked, numbers) and (picked.ndim <= 1 or picked.flags.c_contiguous)):
            return None
        size = numbers.itemsize
        step = picked.strides[0] // size if picked.ndim == 1 else int(picked.size > 1)
        return Links.strided(shape, (picked.ctypes.data - numbers.ctypes.data) // size, step)

    @staticmethod
    def pairs(shape: tuple[int, int], rows, cols) -> Links:
        return Links("pairs", shape, np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64))

    @staticmethod
    def grouped(shape: tuple[int, int], rows, cols, groups: int) -> Links:
        return Links("groups", shape, np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64), groups)

    @staticmethod
    def every(shape: tuple[int, int]) -> Links:
        """Every entry of the one linked to every entry of the other: "groups" of one, not listed."""
        return Links("groups", shape, groups=1)

    def listed_groups(self) -> tuple[np.ndarray, np.ndarray]:
        """A "groups" link's rows and cols, listed (every entry in group 0 where not given)."""
        return tuple(np.zeros(size, dtype=np.int64) if given is None else given
                     for given, size in ((self.rows, self.shape[0]), (self.cols, self.shape[1])))


@dataclass(slots=True)
class Entries:
    """What a structure rule is told of one op node: the op, its operands' shapes, the output's, its
    params, and `nonzero(k)`: which entries of operand k may be nonzero (flat bool; an entry that moves
    with the values differentiated by may always be)."""
    op: object
    shapes: tuple[tuple[int, ...], ...]
    out_shape: tuple[int, ...]
    params: dict
    nonzero: Callable[[int], np.ndarray]
    sizes: tuple[int, ...] = ()  # the operands' sizes, then the output's (made from the shapes when not given)

    def __post_init__(self):
        if not self.sizes:
            self.sizes = (*map(math.prod, self.shapes), math.prod(self.out_shape))

    def size(self, k: int = -1) -> int:
        """Operand k's number of entries; the output's without k."""
        return self.sizes[k]


def _linear(i: int, j: int, entries: Entries, adj: np.ndarray) -> None:
    return None


@dataclass(frozen=True, slots=True)
class Elementwise:
    """An elementwise op's rule as data (`elementwise`'s arguments): what a sweep reads to link a node whose
    moving operands are of its output's shape without asking the rules (sparsity.Sweep's shortcut)."""
    couples: tuple[tuple[int, int], ...] | None
    flat: bool
    vanishes_with: tuple[int | None, ...] | None
    flat_operands: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Structure:
    kind: str
    first: Callable[[int, Entries], Links | None]
    second: Callable[[int, int, Entries, np.ndarray], Links | None]
    elementwise: Elementwise | None = None  # the rules' data, for an op made by `elementwise`
    # `first`'s links as the shapes and params alone say them: shaped(i, operand shapes, output shape, params)
    # (a slice's, a joined block's, a whole reduction's), asked with no `Entries` made; None: ask `first`.
    shaped: Callable[[int, tuple, tuple, dict], Links | None] | None = None
    linear: bool = field(init=False)  # no second derivative anywhere: a pattern's sweep need not ask

    def __post_init__(self):
        assert self.kind in STRUCTURES, self.kind
        object.__setattr__(self, "linear", self.second is _linear)


# ---------------------------------------------------------- elementwise


def broadcast_positions(shape: tuple, to: tuple) -> np.ndarray:
    """For each entry of a `to`-shaped result, the entry of a `shape`-shaped
    operand broadcast to it (numpy's rule)."""
    return np.broadcast_to(np.arange(math.prod(shape)).reshape(shape), to).ravel()


def elementwise(couples: tuple[tuple[int, int], ...] | None = None, flat: bool = False,
                vanishes_with: tuple[int | None, ...] | None = None, flat_operands: tuple[int, ...] = ()) -> Structure:
    """Each output entry on the same entry of each operand, broadcast.
    `couples`: the pairs of operands (i ≤ j) whose second partial is not
    zero, (0, 0) for a nonlinear unary op, (0, 1) for a product, () for a
    linear or piecewise linear op; None: every pair (the conservative
    default). `flat`: the derivative is 0 (a mask, `x.value`).
    `vanishes_with[i]`: the partial in operand i is a factor of operand
    vanishes_with[i] (a product's partial in a is b), so it is zero wherever
    that operand is a constant zero. `flat_operands`: operands the output
    does not vary with (where's condition)."""

    def first(i: int, e: Entries) -> Links | None:
        if flat or i in flat_operands:
            return None
        shape, out = e.shapes[i], e.out_shape
        keep = None
        factor = None if vanishes_with is None else vanishes_with[i]
        if factor is not None:
            nonzero = e.nonzero(factor)
            if not nonzero.all():
                keep = np.broadcast_to(nonzero.reshape(e.shapes[factor]), out).ravel()
        size = e.sizes[-1]
        if shape == out and keep is None:
            return Links("same", (size, size))
        if keep is None and e.sizes[i] == 1:
            return Links.strided((size, 1), 0, 0)
        cols = broadcast_positions(shape, out)
        if keep is not None:
            cols = np.where(keep, cols, -1)
        return Links.copies((size, e.sizes[i]), cols)

    def second(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
        if flat or (couples is not None and (i, j) not in couples):
            return None
        if e.shapes[i] == e.shapes[j] == e.out_shape and adj.all():
            return Links("same", (e.sizes[-1],) * 2)
        at = np.flatnonzero(adj)
        return Links.pairs((e.size(i), e.size(j)), broadcast_positions(e.shapes[i], e.out_shape)[at],
                           broadcast_positions(e.shapes[j], e.out_shape)[at])

    return Structure("elementwise", first, _linear if flat or couples == () else second,
                     Elementwise(couples, flat, vanishes_with, flat_operands))


# ------------------------------------------------------- rows and wholes


def _row_groups(shape: tuple) -> tuple[np.ndarray, int]:
    """The row of each entry of a vector (one row) or matrix, and how many rows."""
    size = math.prod(shape)
    width = shape[-1] if shape else 1
    return np.arange(size) // max(width, 1), math.prod(shape[:-1])


def _groups_with_adjoint(group_in: np.ndarray, group_out: np.ndarray, groups: int, adj: np.ndarray) -> np.ndarray:
    """group_in with -1 for the groups no output entry with an adjoint is in."""
    live = np.zeros(groups, dtype=bool)
    live[group_out[adj]] = True
    return np.where(live[group_in] if len(group_in) else np.zeros(0, bool), group_in, -1)


def within_groups(size: int, group: np.ndarray, groups: int, diagonal: bool,
                  keep: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None) -> Links:
    """Every pair of entries of the same group (-1: none), without the
    diagonal unless `diagonal`, filtered by `keep(a, b)`: listed, or stated
    as groups (diagonal included: conservative) when there would be more
    than MAX_LISTED_PAIRS."""
    members = np.flatnonzero(group >= 0)
    order = members[np.argsort(group[members], kind="stable")]
    counts = np.bincount(group[members], minlength=groups)
    if int((counts.astype(np.int64) ** 2).sum()) > MAX_LISTED_PAIRS:
        return Links.grouped((size, size), group, group, groups)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # For each member, pair it with every member of its group.
    per = counts[group[order]]
    a = np.repeat(order, per)
    first_of = np.repeat(starts[group[order]], per)
    offset = np.arange(len(a)) - np.repeat(np.cumsum(per) - per, per)
    b = order[first_of + offset]
    chosen = np.ones(len(a), dtype=bool) if diagonal else a != b
    if keep is not None:
        chosen &= keep(a, b)
    return Links.pairs((size, size), a[chosen], b[chosen])


def _column_groups(shape: tuple) -> tuple[np.ndarray, int]:
    """The column of each entry of a matrix, and how many columns (a vector's
    column reduction takes all its entries: one group)."""
    size = math.prod(shape)
    if len(shape) < 2:
        return np.zeros(size, dtype=np.int64), 1
    return np.arange(size) % max(shape[1], 1), shape[1]


def rows(second: str | None = "all", groups: Callable = _row_groups, kind: str = "rows") -> Structure:
    """Each output entry on the entries of its own row (a vector is one row):
    a row normalisation (output shaped as the operand; constant on rows of
    one entry), or a row reduction (one entry per row). `second`: "all" pairs of a row's entries meet (a
    softmax), "off-diagonal" all but an entry with itself (a row product,
    linear in each entry), None (a linear op: row sums). `groups` (and the
    kind the planner reads) make the same rule a column reduction's."""

    def groups_of(e: Entries):
        group_in, count = groups(e.shapes[0])
        group_out = groups(e.out_shape)[0] if e.out_shape == e.shapes[0] else np.arange(e.size())
        return group_in, group_out, count

    def constant(e: Entries) -> bool:
        """A normalisation of rows of one entry is constant (1, ±1 or 0)."""
        return e.out_shape == e.shapes[0] and (e.shapes[0][-1] if e.shapes[0] else 1) == 1

    def first(i: int, e: Entries) -> Links | None:
        if constant(e):
            return None
        group_in, group_out, count = groups_of(e)
        return Links.grouped((e.size(), e.size(0)), group_out, group_in, count)

    def pairs(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
        if second is None or constant(e):
            return None
        group_in, group_out, count = groups_of(e)
        group = _groups_with_adjoint(group_in, group_out, count, adj)
        if second == "all":
            return Links.grouped((e.size(0), e.size(0)), group, group, count)
        return within_groups(e.size(0), group, count, diagonal=False)

    return Structure(kind, first, _linear if second is None else pairs)


def whole(second: str | None = "all") -> Structure:
    """Each output entry on every entry of every operand (a sum, a mean, a
    product, or an op that says no more); `second` as for `rows`."""

    def shaped(i: int, shapes: tuple, out_shape: tuple, params: dict) -> Links:
        return Links.every((math.prod(out_shape), math.prod(shapes[i])))

    def first(i: int, e: Entries) -> Links:
        return shaped(i, e.shapes, e.out_shape, e.params)

    def pairs(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
        if second is None or not adj.any():
            return None
        if second == "all":
            return Links.every((e.size(i), e.size(j)))
        return within_groups(e.size(0), np.zeros(e.size(0), dtype=np.int64), 1, diagonal=False)

    return Structure("dense", first, _linear if second is None else pairs, shaped=shaped)


def along(axis: int | None, second: str | None) -> Structure:
    """A reduction over all entries (axis None), each row (1) or each column
    (0). A reduction over groups of one entry is that entry: linear."""
    groups = {None: lambda shape: (None, 1), 1: _row_groups, 0: _column_groups}[axis]
    base = whole(second) if axis is None else rows(second, groups, "rows" if axis == 1 else "dense")

    def pairs(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
        return None if groups(e.shapes[0])[1] == e.size(0) else base.second(i, j, e, adj)

    return Structure(base.kind, base.first, _linear if second is None else pairs, shaped=base.shaped)


# ------------------------------------------------------------ selections


def _numbered(shapes: tuple, start: int = 1) -> list[np.ndarray]:
    """Each operand's entries numbered, from `start` on across the operands (0: no entry)."""
    numbered, offset = [], start
    for shape in shapes:
        size = math.prod(shape)
        numbered.append((np.arange(size, dtype=np.float64) + offset).reshape(shape))
        offset += size
    return numbered


def _copies_first(i: int, e: Entries) -> Links:
    """Each output entry a copy of one operand entry, or 0: found by running
    the op's own value rule on the operands' entry numbers."""
    numbered = _numbered(e.shapes)
    out = e.op.impl(*numbered, **e.params)
    shape = (e.size(), e.size(i))
    if len(numbered) == 1:
        viewed = Links.viewed(shape, out, numbered[0])
        if viewed is not None:
            return viewed
    out = np.asarray(out, dtype=np.float64).ravel()
    low = sum(math.prod(s) for s in e.shapes[:i]) + 1
    cols = out.astype(np.int64) - low
    cols[(cols < 0) | (cols >= e.size(i))] = -1
    return Links.gathered(shape, cols)


def _sliced_links(i: int, shapes: tuple, out_shape: tuple, params: dict) -> Links | None:
    """v[a:b:c]'s, said by the slice; None for another key."""
    key = params["key"]
    if len(shapes[0]) == 1 and len(key) == 1 and isinstance(key[0], slice):
        start, _, step = key[0].indices(shapes[0][0])
        return Links.strided((math.prod(out_shape), shapes[0][0]), start, step)
    return None


def _sliced_first(i: int, e: Entries) -> Links:
    """x[key]'s: the key applied to x's entry numbers, a view for a slice (whose place and strides say
    it all, so the numbers are not written unless the key picks a copy)."""
    said = _sliced_links(i, e.shapes, e.out_shape, e.params)
    if said is not None:
        return said
    shape, key = (e.size(), e.size(0)), e.params["key"]
    places = np.empty(e.size(0), dtype=np.int64)
    viewed = Links.viewed(shape, places.reshape(e.shapes[0])[key], places)
    if viewed is not None:
        return viewed
    return Links.gathered(shape, np.ravel(np.arange(e.size(0)).reshape(e.shapes[0])[key]))


def _sums_first(i: int, e: Entries) -> Links:
    """Each operand entry added into one output entry, or none (a scatter,
    the transpose of a copy): found by pulling the output's entry numbers
    back through the op's derivative, which copies them."""
    numbered = _numbered((e.out_shape,))[0]
    operands = [np.zeros(s) for s in e.shapes]
    pulled = np.asarray(e.op.vjp(i, numbered, np.zeros(e.out_shape), *operands, **e.params),
                        dtype=np.float64).ravel()
    cols = np.flatnonzero(pulled > 0)
    return Links.pairs((e.size(), e.size(i)), pulled[cols].astype(np.int64) - 1, cols)


def _joined_links(i: int, shapes: tuple, out_shape: tuple, params: dict) -> Links | None:
    """concat's along the first axis: operand i's entries one run of the output's; None along another."""
    if params["axis"] != 0:
        return None
    before, size = sum(math.prod(s) for s in shapes[:i]), math.prod(shapes[i])
    return Links.strided((math.prod(out_shape), size), -before, 1, before, before + size)


def _joined_first(i: int, e: Entries) -> Links:
    """concat's: operand i is one block of the output (unnumbered along the first axis)."""
    said = _joined_links(i, e.shapes, e.out_shape, e.params)
    return _copies_first(i, e) if said is None else said


# A gather, slice, reshape, transpose, broadcast or stack: linear, each
# output entry a copy of one operand entry (or zero).
COPIES = Structure("selection", _copies_first, _linear)
JOINED = Structure("selection", _joined_first, _linear, shaped=_joined_links)  # concat's pieces end to end
SLICED = Structure("selection", _sliced_first, _linear, shaped=_sliced_links)  # x[key] (`index`): a copy of the view
# A scatter or an unbroadcast: linear, each operand entry added into one output entry.
SUMS = Structure("selection", _sums_first, _linear)
LINEAR_SUMS = Structure("dense", _sums_first, _linear)  # the same, for ops that are not selections (sumTo)


def named(kind: str) -> Structure:
    """The conservative rule of a kind, for an op that names only its kind."""
    return {"elementwise": elementwise(), "rows": rows(), "dense": whole(), "selection": COPIES}[kind]
