"""Forward mode from the one derivative statement (rules.py), and the
statement evaluated on batches.

The statement is linear in `g`; tracing it with `g` symbolic (`Linear`,
`LinearTrace`) separates the coefficients, computed at once, from the
linear steps, and running those steps backwards, each through its own op's
statement, applies the transpose — the Jacobian itself — to a tangent
(`jvp_term`: JAX's transposition, in the other direction). Tangents carry a
leading batch axis (one slice per seed direction): `Batched` evaluates a
statement on such batches, the linear ops applying to them by their
`batched` value rule, elementwise ops by broadcasting, any other op one
direction at a time (`apply_batched`); `batched_interpreted_vjp` is the
same for a batch of cotangents (the rows of a Jacobian in reverse mode).

A batch whose every direction is zero but at one entry (`Diagonal`: rows of
the identity, the seeds of a dense Jacobian or Hessian) is kept as its k
values: the sweeps step it by `diagonal_jvp` / `diagonal_vjp`, an O(k) pass
where the batch as an array costs O(k · size), and make it an array only
where an op has no rule for it. A product's tangents from those seeds, a
matrix's columns (`Scaled`: a batch that one value scales entry by entry),
are kept as that value through a run of elementwise steps, which scale it
alone (`scaled_jvp`), and made an array once, where another op reads them.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .rules import IMPLS, NUMERIC, OPS


class Linear:
    """A value linear in the traced cotangent g: known only by its shape."""
    __slots__ = ("shape",)

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)


class NotLinear(Exception):
    """A statement used its cotangent other than linearly."""


class LinearTrace:
    """Traces a statement with g symbolic (`Linear`): a step none of whose
    inputs depends on g is a coefficient, left to `base` (computed at once,
    or printed); a step that does is recorded, to be transposed."""

    def __init__(self, base):
        self.base = base
        self.steps: list[tuple] = []  # (op, inputs, params, result)

    def __call__(self, name: str, inputs: list, **params):
        if not any(type(v) is Linear for v in inputs):
            return self.base(name, inputs, **params)
        op = OPS[name]
        result = Linear(op.shape(*[self.shape(v) for v in inputs], **params))
        self.steps.append((op, inputs, params, result))
        return result

    def const(self, value, name: str | None = None):
        return self.base.const(value, name)

    def shape(self, v) -> tuple:
        return v.shape if type(v) is Linear else self.base.shape(v)

    def once(self, key, make):
        return make()  # a traced statement records nothing to share (Emitter.once)

    def transpose(self, g: Linear, result, tangent, emit):
        """The transpose of the traced map g ↦ result, applied to `tangent`
        (the result's shape): each recorded step, last first, pulls its
        output's tangent back to its linear inputs by its op's statement,
        interpreted by `emit`. Returns what reaches g, or None for 0."""
        if result is None:
            return None
        if type(result) is not Linear:
            raise NotLinear("the derivative does not depend on the cotangent")
        reached = {id(result): tangent}
        for op, inputs, params, out in reversed(self.steps):
            t = reached.pop(id(out), None)
            if t is None:
                continue
            for j, v in enumerate(inputs):
                if type(v) is Linear:
                    pulled = op.derivative(j, t, out, *inputs, emit=emit, **params)
                    if pulled is not None:
                        reached[id(v)] = pulled if id(v) not in reached else emit("add", [reached[id(v)], pulled])
        return reached.get(id(g))


def jvp_term(derivative: Callable, i: int, tangent, out, xs, params: dict, base, emit):
    """Operand i's share of the jvp: the transpose of operand i's vjp
    statement applied to its tangent, or None for 0. `base` interprets the
    coefficients, `emit` the tangent's steps."""
    trace = LinearTrace(base)
    g = Linear(base.shape(out))
    result = derivative(i, g, out, *xs, emit=trace, **params)
    return trace.transpose(g, result, tangent, emit)


class Tangents:
    """A batch of tangents (k, *shape) inside `Batched`."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Batched:
    """Evaluates a statement on tangents with a leading batch axis
    (`Tangents`) among plain values: an op with no tangent operand by its
    primal rule, else by `apply_batched`."""

    def __call__(self, name: str, inputs: list, **params):
        if any(type(v) is Linear for v in inputs):
            raise NotLinear(f"`{name}` applied to a value linear in the cotangent")
        which = tuple(type(v) is Tangents for v in inputs)
        if not any(which):
            return IMPLS[name](*inputs, **params)
        return Tangents(apply_batched(OPS[name], which, *[v.value if b else v for v, b in zip(inputs, which)],
                                      **params))

    @staticmethod
    def const(value, name: str | None = None):
        return NUMERIC.const(value)

    @staticmethod
    def shape(v) -> tuple:
        if type(v) is Tangents:
            return np.shape(v.value)[1:]
        return v.shape if type(v) is Linear else np.shape(v)


BATCHED = Batched()


def apply_batched(op, which: tuple[bool, ...], *args, **params):
    """An op applied to operands of which those marked in `which` carry a
    leading batch axis: by its `batched` value rule, or an elementwise op by
    broadcasting, or one direction at a time."""
    if op.batched is not None:
        return op.batched(list(args), which, **params)
    if op.structure.kind == "elementwise":
        ndim = len(op.shape(*[np.shape(a)[1:] if b else np.shape(a) for a, b in zip(args, which)], **params))
        return op.impl(*[lift(a, ndim) if b else a for a, b in zip(args, which)], **params)
    k = next(a for a, b in zip(args, which) if b).shape[0]
    return np.stack([op.impl(*[a[d] if b else a for a, b in zip(args, which)], **params) for d in range(k)])


def lift(t, ndim: int):
    """A batched tangent (k, *s) with singleton axes after the batch axis, so
    it broadcasts against values of rank `ndim` as its primal does."""
    missing = ndim - (t.ndim - 1)
    return t.reshape(t.shape[:1] + (1,) * missing + t.shape[1:]) if missing > 0 else t


def derived_jvp(derivative: Callable) -> Callable:
    """The numeric jvp an op gets from its statement: the sum over operands
    with a tangent of `jvp_term`, tangents batched along a leading axis."""
    def jvp(ts, out, *xs, **params):
        k = next(t for t in ts if t is not None).shape[0]
        total = None
        for i, t in enumerate(ts):
            if t is None:
                continue
            term = jvp_term(derivative, i, Tangents(t), out, xs, params, NUMERIC, BATCHED)
            if term is not None:
                term = term.value if type(term) is Tangents else np.broadcast_to(term, (k,) + np.shape(out))
                total = term if total is None else total + term
        return np.zeros((k,) + np.shape(out)) if total is None else total
    return jvp


def batched_interpreted_vjp(derivative: Callable) -> Callable:
    """The vjp for a batch of cotangents (k, *shape), evaluated step by step
    (`Batched`): for statements whose parameters cannot key a cache."""
    def vjp(i, g, out, *xs, **params):
        result = derivative(i, Tangents(g), out, *xs, emit=BATCHED, **params)
        whole = (np.shape(g)[0],) + np.shape(xs[i])
        if result is None:
            return np.zeros(whole)
        return result.value if type(result) is Tangents else np.broadcast_to(result, whole)
    return vjp


class Diagonal:
    """A batch of k tangents or cotangents, shape (k,) + a value's, in which
    direction d is zero but at one entry: `values[d]` at flat entry
    `entries[d]` (-1: nowhere, and values[d] is 0). Rows of the identity over
    a value's entries, the seeds of a dense Jacobian or Hessian, are one; an
    elementwise op keeps one (each value times the op's partial at its
    entry), a sum or a reshape moves its entries, and a product with a
    constant matrix reads k of its columns instead of multiplying k·size
    zeros. `distinct`: no two directions share an entry, so the batch fits
    in one value of that shape (`spread`), which an elementwise op's own
    rule steps at once. `full`: every direction has its entry; `ordered`:
    direction d's entry is d, over all of them (the whole identity), so the
    values are the batch spread as they stand. Both are known, not found
    again, for a batch over another's entries."""
    __slots__ = ("entries", "values", "shape", "distinct", "full", "ordered")

    def __init__(self, entries: np.ndarray, values: np.ndarray, shape: tuple, distinct: bool,
                 full: bool | None = None, ordered: bool = False):
        self.entries, self.values, self.shape, self.distinct = entries, values, tuple(shape), distinct
        self.full = bool(len(entries) == 0 or entries.min() >= 0) if full is None else full
        self.ordered = ordered

    @classmethod
    def identity_rows(cls, shape: tuple, first: int, k: int) -> "Diagonal":
        """Rows first … first + k − 1 of the identity over the entries of a
        value of `shape` (a row outside them is zero)."""
        entries = np.arange(first, first + k)
        size = math.prod(shape)
        if first == 0 and k == size:
            return cls(entries, np.ones(k), (k,) + tuple(shape), True, True, True)
        inside = (entries >= 0) & (entries < size)
        return cls(np.where(inside, entries, -1), inside.astype(np.float64), (k,) + tuple(shape), True)

    def over(self, values: np.ndarray) -> "Diagonal":
        """The batch over the same entries with these values."""
        return Diagonal(self.entries, values, self.shape, self.distinct, self.full, self.ordered)

    def hits(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(the directions that have an entry, their entries, their values)."""
        if self.full:
            return np.arange(len(self.entries)), self.entries, self.values
        rows = np.flatnonzero(self.entries >= 0)
        return rows, self.entries[rows], self.values[rows]

    def dense(self) -> np.ndarray:
        """The batch as an array."""
        out = np.zeros(self.shape)
        self.add_into(out)
        return out

    def add_into(self, out: np.ndarray) -> None:
        """out += the batch, for a writeable array `out` of the batch's shape (in any layout)."""
        if self.ordered and out.flags.c_contiguous:  # direction d's entry is d: the diagonal, a strided view
            diagonal = out.reshape(-1)[::math.prod(self.shape[1:]) + 1]
            diagonal += self.values
            return
        rows, entries, values = self.hits()
        if out.flags.c_contiguous:
            out.reshape(self.shape[0], math.prod(self.shape[1:]))[rows, entries] += values
        elif len(self.shape) == 1:
            out[rows] += values
        else:
            out[(rows, *np.unravel_index(entries, self.shape[1:]))] += values

    def spread(self) -> np.ndarray:
        """Every direction's entry in its place, in one value (distinct batches only): for the whole
        identity in order, the values as they lie (a rule reads it and never writes it; `gathered`
        copies what it is given)."""
        if self.ordered:
            return self.values.reshape(self.shape[1:])
        rows, entries, values = self.hits()
        u = np.zeros(math.prod(self.shape[1:]))
        u[entries] = values
        return u.reshape(self.shape[1:])

    def gathered(self, u) -> "Diagonal":
        """The batch over the same entries whose values are u's there (u: one value of the batch's shape)."""
        if type(u) is np.ndarray and u.shape == self.shape[1:]:  # an elementwise step's usual result
            if self.ordered:  # its values as they lie, copied in one call
                return Diagonal(self.entries, u.flatten(), self.shape, self.distinct, self.full, True)
            flat = u.reshape(-1)  # np.ravel's, without its wrapper
        else:
            flat = np.ravel(u if np.shape(u) == self.shape[1:] else np.broadcast_to(u, self.shape[1:]))
        if self.ordered:
            return self.over(np.array(flat))
        if self.full:
            return self.over(flat[self.entries])
        rows, entries, _ = self.hits()
        values = np.zeros(len(self.entries))
        values[rows] = flat[entries]
        return self.over(values)

    def moved(self, where: Callable[[np.ndarray], np.ndarray], shape: tuple, distinct: bool,
              factor: float = 1.0) -> "Diagonal":
        """The batch over a value of `shape` with each direction's entry e
        moved to where(e) (a linear map that sends each entry to one, or to
        none: -1), its value times `factor`; `distinct`: the map sends no two
        entries to one."""
        if self.full:
            entries = where(self.entries)
        else:
            entries = np.full(len(self.entries), -1)
            hit = self.entries >= 0
            entries[hit] = where(self.entries[hit])
        values = self.values if factor == 1.0 else self.values * factor
        if len(entries) and entries.min() < 0:
            values = np.where(entries >= 0, values, 0.0)
        return Diagonal(entries, values, (self.shape[0],) + tuple(shape), distinct and self.distinct)


class Scaled:
    """A batch of k tangents, shape (k,) + a value's, that is a fixed batch
    `base` times one value `coefficient` entry by entry: t[d, e] = base[d, e]
    · coefficient[e]. A product's tangents along the identity's rows are its
    matrix's columns, as they lie (`base`: a view, never written), times
    ones; an elementwise op, whose jvp is its partials times the tangents,
    entry by entry, steps the coefficient alone as one value (`spread`,
    `gathered`), where a batch's own step is k passes over it. The array
    (`dense`) is made once, at the first op that reads it as one, and shared
    by every reader, so it is read-only. Its bits are the batch's made step
    by step up to rounding: base · (c₁ · c₂) where the steps make
    (base · c₁) · c₂."""
    __slots__ = ("base", "coefficient", "shape", "made")

    def __init__(self, base: np.ndarray, coefficient: np.ndarray):
        self.base, self.coefficient, self.shape, self.made = base, coefficient, base.shape, None

    @np.errstate(all="ignore")  # made wherever it is read, as the sweeps' steps are: a non-finite entry is theirs to report
    def dense(self) -> np.ndarray:
        if self.made is None:  # a zero coefficient is zeros: its base is finite (`gathered`)
            self.made = np.multiply(self.base, self.coefficient) if self.coefficient.any() else np.zeros(self.shape)
            self.made.flags.writeable = False
        return self.made

    def spread(self) -> np.ndarray:
        return self.coefficient

    def over(self, u) -> "Scaled":
        """The batch over the same base scaled by u (one value of the batch's shape)."""
        if not (type(u) is np.ndarray and u.shape == self.shape[1:] and u.dtype == np.float64):
            u = np.array(np.broadcast_to(u, self.shape[1:]), dtype=np.float64)
        return Scaled(self.base, u)

    def gathered(self, u) -> "Scaled | None":
        """`over`, or None where base · u would differ from the steps' batch:
        where u is not finite and base is 0 (their guards keep a zero tangent
        zero against an infinite partial; a coefficient cannot), and where u
        is all zero and base is not finite: a partial of 0 times an infinite
        tangent is nan in the steps' batch, but a rule that reads no tangent
        (sign's, a condition's) gives zeros, and a zero coefficient cannot
        tell the two apart. Rare: base's test runs only at a zero u."""
        total = np.add.reduce(u, axis=None)
        if not math.isfinite(total):
            return None
        if total == 0 and not u.any() and not math.isfinite(np.add.reduce(self.base, axis=None)):
            return None
        return self.over(u)


def scaled_jvp(op, ts: list, out, xs: list, params: dict) -> Scaled | None:
    """The jvp of an elementwise op whose tangents are all `Scaled` over one
    base, of the result's shape: its own jvp on their coefficients, as one
    value each; None where it cannot (the caller makes them arrays)."""
    moving = [t for t in ts if t is not None]
    if not spreads(op, moving, np.shape(out)):
        return None
    return moving[0].gathered(op.jvp([None if t is None else t.spread()[None] for t in ts], out, *xs, **params)[0])


def dense(t):
    """A batch as an array (a Diagonal or a Scaled made one; anything else as it is)."""
    return t.dense() if type(t) is Diagonal or type(t) is Scaled else t


def added(a, b, owned: Callable[[np.ndarray], bool] | None = None):
    """a + b for batches that may be Diagonal: a Diagonal when both are over
    the same entries, else an array: a Diagonal added into the other, in
    place where `owned` says nothing else holds it, else into a copy."""
    if type(a) is Scaled or type(b) is Scaled:
        a, b = dense(a), dense(b)
    if type(a) is Diagonal and type(b) is Diagonal and (a.entries is b.entries or np.array_equal(a.entries, b.entries)):
        return Diagonal(a.entries, a.values + b.values, a.shape, a.distinct and b.distinct, a.full, a.ordered)
    if type(b) is Diagonal:
        a, b = b, a
    if type(a) is not Diagonal:
        return a + b
    if type(b) is Diagonal:
        total = b.dense()
    elif owned is not None and b.shape == a.shape and b.flags.writeable and owned(b):
        total = b
    else:
        total = np.array(np.broadcast_to(b, a.shape))
    a.add_into(total)
    return total


def spreads(op, batches: list, shape: tuple) -> bool:
    """Whether an elementwise op's rule can step these batches as one value
    each, of the result's shape: Diagonal ones all over the same distinct
    entries, or Scaled ones all over the same base."""
    if op.structure.kind != "elementwise":
        return False
    if type(batches[0]) is Scaled:
        base = batches[0].base
        for t in batches:
            if not (type(t) is Scaled and t.base is base and t.shape[1:] == shape):
                return False
        return True
    if type(batches[0]) is not Diagonal:
        return False
    first = batches[0].entries
    for t in batches:  # a loop, not all() of a generator: a written push asks at every elementwise step
        if not (type(t) is Diagonal and t.distinct and t.shape[1:] == shape
                and (t.entries is first or np.array_equal(t.entries, first))):
            return False
    return True


def diagonal_jvp(op, ts: list, out, xs: list, params: dict, owned: Callable[[np.ndarray], bool] | None = None):
    """The jvp for tangents `ts` of which some are `Diagonal`, or None where
    the op has no rule for them (the caller makes them arrays and runs
    `op.jvp`). An elementwise op's own jvp steps the Diagonal tangents
    spread into one value each (entry e of its result depends on entry e
    alone); another op's `diagonal_jvp(i, t, out, *xs, **params)` gives
    operand i's term; the tangents that are arrays go through `op.jvp`, and
    the Diagonal terms are added into theirs (`added`; `owned`: whether the
    caller holds an array nowhere else, so it may be written into)."""
    shape = np.shape(out)
    diagonal = [t for t in ts if type(t) is Diagonal]
    if spreads(op, diagonal, shape):
        total = diagonal[0].gathered(
            op.jvp([t.spread()[None] if type(t) is Diagonal else None for t in ts], out, *xs, **params)[0])
    elif op.diagonal_jvp is not None:
        total = None
        for i, t in enumerate(ts):
            if type(t) is Diagonal:
                term = op.diagonal_jvp(i, t, out, *xs, **params)
                if term is None:
                    return None
                total = term if total is None else added(total, term)
    else:
        return None
    rest = [None if type(t) is Diagonal else t for t in ts]
    if any(t is not None for t in rest):
        total = added(total, op.jvp(rest, out, *xs, **params), owned)
    return total


def diagonal_vjp(op, i: int, g: Diagonal, out, xs: list, params: dict):
    """Operand i's part of a `Diagonal` batch of cotangents g, or None where
    the op has no rule for it (the caller makes g an array and runs
    `op.batched_vjp`): an elementwise op's own vjp on g spread into one value,
    where the operand has the result's shape; else the op's `diagonal_vjp`."""
    if np.shape(xs[i]) == g.shape[1:] and spreads(op, [g], g.shape[1:]):
        return g.gathered(op.vjp(i, g.spread(), out, *xs, **params))
    return None if op.diagonal_vjp is None else op.diagonal_vjp(i, g, out, *xs, **params)
