"""A forward sweep's steps: one op's tangent from its operands'
(`jvp_step`, the loop's), which operands' tangents a step may write its
result into (`spare_positions`, `sole_spares`), and the checks a sweep
makes of its batches. forward_written.py writes a sweep's steps out as one
function."""

from __future__ import annotations

import sys
from sys import getrefcount
from typing import Callable

import numpy as np

from .rules_forward import Diagonal, Scaled, dense, diagonal_jvp, scaled_jvp
from .tape_nodes import Node, all_finite

# A written push with a result this small, or no larger than the values its guarded steps guard, calls
# its ops' unguarded rules (`Op.unguarded`) and checks the result once: a pass over it costs less than
# the guards (about 2 us a call, on the smaller operand).
UNGUARDED_ENTRIES = 1 << 16
# A written push writes a step's result with this many entries or more into an operand's tangent that
# dies at that step, where the sweep alone holds it: fewer distinct arrays passed over, in the caches at once.
IN_PLACE_ENTRIES = 1 << 14


def jvp_step(op, ts: list, out: np.ndarray, args: list, params: dict, k: int, owned: Callable[[np.ndarray], bool],
             unguarded: bool = False, spares: list | None = None):
    """One op's tangent from its operands' `ts` (None: no tangent; a
    `Diagonal` batch stays one where the op has a rule for it, and a
    `Scaled` one through an elementwise op, else an array, or no tangent
    where its coefficient is zero: the rules' guards give a zero tangent's
    term as 0), shape (k,) + out's; `owned(a)`: whether no other tangent or
    seed shares memory with a. `unguarded`: arrays are stepped by the
    function the op's jvp runs with its unguarded value rules
    (`jvp.resolve`, as a written push's), for a caller that checks what the
    sweep gives and steps it guarded where that is not finite. `spares`:
    arrays, a spare (or None) for each tangent given, that the step may
    write its result into (`sole_spares`), as a written push's does."""
    t = None
    if any(type(given) is Scaled for given in ts):
        t = scaled_jvp(op, ts, out, args, params)
        if t is not None:
            return t
        ts = [(given.dense() if given.coefficient.any() else None) if type(given) is Scaled else given
              for given in ts]
        if all(given is None for given in ts):
            return np.zeros((k,) + out.shape)
    if any(type(given) is Diagonal for given in ts):
        t = diagonal_jvp(op, ts, out, args, params, owned)
        ts = [dense(given) for given in ts] if t is None else ts
    if t is None:
        resolve = getattr(op.jvp, "resolve", None) if unguarded or spares else None
        function = None if resolve is None else resolve(ts, out, args, params, unguarded, into=bool(spares))
        if function is None and spares:  # no writing into a spare: its own result
            spares, function = None, resolve(ts, out, args, params, True) if unguarded else None
        t = op.jvp(ts, out, *args, **params) if function is None else \
            function(*[given for given in ts if given is not None], out, *args, *(spares or ()))
        if np.shape(t) != (k,) + out.shape:
            t = np.broadcast_to(t, (k,) + out.shape)
    return t


class Untraced(Exception):
    """A written push met a batch of another kind than when it was written."""


def _sole_references() -> int:
    """What `sys.getrefcount` says of an array that one local name alone refers to, with no trace
    function that reads frames' locals (a debugger's: its copy of them is one reference more) and
    never more than CPython's 2 (the name and the call's argument): a count too high would take a
    seed, which `seeds` also holds, for the sweep's alone."""
    tracing, profiling = sys.gettrace(), sys.getprofile()
    sys.settrace(None)
    sys.setprofile(None)
    try:
        local = np.empty(0)
        return min(sys.getrefcount(local), 2)
    finally:
        sys.settrace(tracing)
        sys.setprofile(profiling)


def _listed_sole_references() -> int:
    """What `sys.getrefcount` says of an array held by a dict and a list alone, read from the list as
    `sole_spares` reads a step's tangents (untraced, as `_sole_references`; never more than CPython's 3)."""
    tracing, profiling = sys.gettrace(), sys.getprofile()
    sys.settrace(None)
    sys.setprofile(None)
    try:
        held = {0: np.empty(0)}
        listed = [held[0]]
        return min(sys.getrefcount(listed[0]), 3)
    finally:
        sys.settrace(tracing)
        sys.setprofile(profiling)


SOLE_REFERENCES = _sole_references()
LISTED_SOLE = _listed_sole_references()


def spare_positions(plan: list[Node], free_after: list[list[int]], nodes: list[Node]) -> list[frozenset[int]]:
    """For each step of a sweep's plan, its operands (by position) whose tangents it may write its result
    into, by their kind: each dies at that step and is read once there (`x * x`'s is read twice), of the
    result's shape and float64. Whether the sweep alone holds it, and the result is large
    (`IN_PLACE_ENTRIES`), is known when it runs."""
    positions = []
    for p, node in enumerate(plan):
        inputs, dying = node.inputs, free_after[p]
        positions.append(frozenset(
            pos for pos, i in enumerate(inputs) if node.op is not None and i in dying and inputs.count(i) == 1
            and nodes[i].value.shape == node.value.shape and nodes[i].value.dtype == node.value.dtype == np.float64))
    return positions


def sole_spares(ts: list, positions: frozenset[int]) -> list | None:
    """A step's spares for `jvp_step` as the loop holds its tangents (a dict of them and the step's list
    `ts`, no other name): for each tangent given, itself where its position is in `positions` and the loop
    alone holds its memory (as `forward_written._sole`: no seed, value, view's base or tangent under two names), else
    None; None where none is, or a tangent is not an array (a batch that stays a `Diagonal` or `Scaled`)."""
    spares, found = [], False
    for pos in range(len(ts)):
        if ts[pos] is None:
            continue
        if type(ts[pos]) is not np.ndarray:
            return None
        sole = pos in positions and ts[pos].base is None and ts[pos].flags.writeable and \
            getrefcount(ts[pos]) == LISTED_SOLE
        spares.append(ts[pos] if sole else None)
        found = found or sole
    return spares if found else None


def shares_none(a: np.ndarray, live, seeds: dict) -> bool:
    """Whether no tangent in `live` (those needed after the step) and no seed
    that is an array shares memory with `a` (a jvp may return a tangent it
    was given, or a view of one): so a step may write into it."""
    return not any(np.may_share_memory(a, t) for t in live if type(t) is np.ndarray) \
        and not any(np.may_share_memory(a, s) for s in seeds.values() if type(s) is np.ndarray)


def finite_batch(batch) -> bool:
    """Whether every entry of a batch of derivatives is finite (a Diagonal's by its values)."""
    return all_finite(batch.values if type(batch) is Diagonal else dense(batch))
