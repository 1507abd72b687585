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
"""

from __future__ import annotations

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
