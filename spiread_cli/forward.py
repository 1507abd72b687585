"""Forward mode: push tangents through the tape with each op's jvp rule.

All seed directions travel together as a leading batch axis, so one sweep of
vectorised jvp calls computes a whole block of directional derivatives; the
block size is chosen so the live tangents fit a memory budget, and a tangent
is freed as soon as its last consumer has run. Forward mode costs one sweep per
block of input entries, reverse mode one sweep in all: `benchmarks/` and
docs/forward-vs-reverse.md show where each wins. Both the tangents pushed at
once and the derivatives a sweep returns are sized against the memory limit
(limits.py) before they are allocated.
"""

from __future__ import annotations

import collections
import itertools
import math
from typing import Callable

import numpy as np

from .diagnostics import Diagnostics, shape_str
from .limits import check_bytes, limit_for, reuse_freed_memory
from . import forward_steps
from .forward_steps import Untraced, finite_batch, jvp_step, shares_none, sole_spares, spare_positions
from .forward_written import written_push
from .rules_forward import Diagonal, added, dense
from .tape import SweepObserver, Tape
from .tape_nodes import Births, Node, rule_params

TANGENT_BUDGET_BYTES = 256 << 20


class ForwardSweep:
    """The part of the tape that carries tangents from the `seeded` nodes to
    `output`, planned once and pushed through block after block."""

    def __init__(self, tape: Tape, output: int, seeded: list[int]):
        reuse_freed_memory()
        nodes = tape.nodes
        self.nodes = nodes
        self.output = output
        self.seeded = set(seeded)
        self.plan: list[Node] = tape.between(seeded, output)
        # A node that repeats an earlier computation takes its tangent (Tape.repeats).
        self.same = tape.repeats(self.plan, keep=seeded)
        # After plan[p] has run, the tangents of free_after[p] are needed no more.
        last_use = {n.id: len(self.plan) for n in self.plan}  # never used: kept to the end
        for p, node in enumerate(self.plan):
            for i in (*node.inputs, self.same[node.id]) if node.id in self.same else node.inputs:
                if i in last_use:
                    last_use[i] = p
        last_use[output] = len(self.plan)
        self.free_after: list[list[int]] = [[] for _ in self.plan]
        for i, p in last_use.items():
            if p < len(self.plan):
                self.free_after[p].append(i)
        self.bytes_per_direction = 8 * self._peak_live_entries()
        # Each step's operands whose tangents it may write into (`forward_steps.spare_positions`).
        self.spare_positions = spare_positions(self.plan, self.free_after, nodes)
        # By the seeds' kind: 1 once pushed, then the steps written out (`written_push`), or
        # None where those met another kind of batch than written (pushed step by step).
        self.written: dict[tuple, int | Callable | None] = {}
        self.finite = False  # whether the last push's result was checked finite (`push`)
        self.folded = self._scatters_folded()  # {a scatter's id: the add's that alone reads it}

    @property
    def reads(self) -> set[int]:
        """The nodes whose values a push reads: the plan's (a jvp may read its
        own value) and their operands (a replayed kept run computes them: `Run.reading`)."""
        return {i for node in self.plan for i in (node.id, *node.inputs)}

    def _peak_live_entries(self) -> int:
        """Entries of tangent alive at once, at worst, for one direction; plus
        room for the temporaries of the largest jvp (about two results' worth)."""
        live = peak = 0
        for p, node in enumerate(self.plan):
            live += node.value.size
            peak = max(peak, live + 2 * node.value.size)
            live -= sum(self.nodes[i].value.size for i in self.free_after[p])
        return max(peak, 1)

    def _scatters_folded(self) -> dict[int, int]:
        """The plan's indexScatter nodes at a key of slices and integers that an add (or a subtraction, as
        its second operand) of their shape alone reads, where the other operand's tangent dies: by id, the
        add's id. A written push adds the scattered entries into that tangent where the sweep alone holds it
        (forward_written.written_push)."""
        nodes, plan, same = self.nodes, self.plan, self.same
        readers = collections.Counter(i for node in plan for i in node.inputs) + collections.Counter(same.values())
        planned = {node.id for node in plan}
        folded: dict[int, int] = {}
        for p, node in enumerate(plan):
            if node.op is None or node.op.name not in ("add", "sub") or node.id in same or node.id in self.seeded \
                    or len(set(node.inputs)) != 2:
                continue
            for s in node.inputs[::-1] if node.op.name == "add" else node.inputs[1:]:
                scatter, other = nodes[s], nodes[node.inputs[node.inputs[0] == s]]
                if (s in planned and scatter.op is not None and scatter.op.name == "indexScatter" and readers[s] == 1
                        and s not in same and s not in self.seeded and other.id in planned
                        and other.id in self.free_after[p] and scatter.inputs[0] in planned
                        and all(type(part) in (slice, int) for part in scatter.params["key"])
                        and scatter.value.shape == other.value.shape == node.value.shape
                        and scatter.value.dtype == other.value.dtype == node.value.dtype == np.float64):
                    folded[s] = node.id
                    break
        return folded

    def block_size(self, total: int, budget_bytes: int, limit: int | None = None) -> int:
        """How many directions to push at once: as many as keep the live
        tangents within the budget and the limit (limits.py; found now if not
        given); when one direction's alone are over the limit, none (refused,
        at the output)."""
        limit = limit_for(total * self.bytes_per_direction) if limit is None else limit
        check_bytes(self.bytes_per_direction,
                    lambda: f"forward mode would hold {self.bytes_per_direction // 8} tangent entries at once "
                            "along each direction", self.nodes[self.output].span, limit)
        return max(1, min(total, min(budget_bytes, limit) // self.bytes_per_direction))

    def push(self, seeds: dict[int, np.ndarray], observe: SweepObserver | None = None,
             checked: bool = False) -> np.ndarray:
        """Tangents of the output, shape (k,) + output shape, for seed tangents
        seeds[id] of shape (k,) + that node's shape (one per seeded node).
        `observe(node, ts, t)`, if given, sees each node's tangent t as it is
        made, from the input tangents ts (None for an input without one; all
        None where t is a seed). A seed may be a `Diagonal` batch (rows of
        the identity), which stays one through the ops with a rule for it
        (`diagonal_jvp`), and so may the result; an observer sees each as an
        array, while the sweep it watches steps the seeds it was given, so an
        explained sweep makes the unexplained one's bits. Seeds of a kind
        pushed twice are pushed, from the third time on, by the steps written
        out as one function (`written_push`); the first push of a kind, where
        its result is small (`UNGUARDED_ENTRIES`), steps arrays by the ops'
        unguarded rules as a written push does, and is pushed again guarded
        where that result is not finite. `finite`, after it: whether its
        result was checked finite on the way (by an unguarded push's check).
        `checked`: the caller checks the result where the push has not
        (`push_blocks`, to warn), so the push's own check costs nothing: the
        first push and the written one run unguarded and check, whatever the
        result's size."""
        self.finite = False
        if observe is not None:
            return self._pushed(seeds, observe)
        kind = (checked, *((i, type(s), s.shape, getattr(s, "full", None), getattr(s, "ordered", None))
                           for i, s in seeds.items()))
        written = self.written.get(kind, 0)
        if callable(written):
            try:
                result = _quietly(written, seeds)
                if result is None:  # not finite: guarded, step by step
                    return self._pushed(seeds)
                self.finite = getattr(written, "checks", False)  # its own check (written_push)
                return result
            except Untraced:  # a step's batch came out of another kind than written: step by step from now
                self.written[kind] = None
        elif written == 1:  # the second push of this kind: written as it runs
            trace: list = []
            result = self._pushed(seeds, trace=trace)
            self.written[kind] = written_push(self, seeds, trace, checked)
            return result
        elif written == 0:  # the first: unguarded where one check of its result is cheap, as a written push
            self.written[kind] = 1
            if checked or next(iter(seeds.values())).shape[0] * self.nodes[self.output].value.size <= \
                    forward_steps.UNGUARDED_ENTRIES:
                result = self._pushed(seeds, unguarded=True)
                if finite_batch(result):
                    self.finite = True
                    return result
        return self._pushed(seeds)

    def _pushed(self, seeds: dict, observe: SweepObserver | None = None, trace: list | None = None,
                unguarded: bool = False):
        """`push`, step by step; `trace`: given, the kinds (classes) of each op step's input tangents
        and result, in order; `unguarded`: array steps by their unguarded rules (`jvp_step`)."""
        nodes, same = self.nodes, self.same
        k = next(iter(seeds.values())).shape[0]
        tangents: dict[int, np.ndarray] = {}
        with np.errstate(all="ignore"):
            for p, node in enumerate(self.plan):
                ts = [tangents.get(i) for i in node.inputs]
                if node.id in same:
                    t = tangents[same[node.id]]
                elif node.op is None or all(t is None for t in ts):
                    t = seeds[node.id]
                else:
                    args = [nodes[i].value for i in node.inputs]
                    params = node.params if node.op.fwd is None else rule_params(node, args)
                    positions = self.spare_positions[p]
                    spares = sole_spares(ts, positions) if positions and observe is None and \
                        k * node.value.size >= forward_steps.IN_PLACE_ENTRIES else None
                    t = jvp_step(node.op, ts, node.value, args, params, k,
                                 lambda a: shares_none(a, [t for i, t in tangents.items() if i not in self.free_after[p]],
                                                        seeds), unguarded, spares)
                    del spares
                    # A seeded node that is an intermediate gets its own seed on top
                    # of what flows into it, as reverse mode's adjoints add up.
                    if node.id in self.seeded:
                        t = added(t, seeds[node.id])
                    if trace is not None:
                        trace.append(([type(given) for given in ts], type(t)))
                if observe is not None:
                    observe(node, [dense(given) for given in ts], dense(t))
                tangents[node.id] = t
                t = None  # held by `tangents` alone: a later step may write into it (`sole_spares`)
                for i in self.free_after[p]:
                    tangents.pop(i, None)
        if self.output in tangents:
            return tangents[self.output]
        return np.zeros((k,) + nodes[self.output].value.shape)

    def push_blocks(self, total: int, seed_block: Callable[[int, int], dict[int, np.ndarray]],
                    diagnostics: Diagnostics | None = None, budget_bytes: int = TANGENT_BUDGET_BYTES,
                    observe: SweepObserver | None = None, what: Callable[[], str] | None = None,
                    kinds: list[type] | None = None, as_arrays: bool = False) -> np.ndarray:
        """Directional derivatives of the output for `total` directions,
        seed_block(start, k) giving directions start..start+k; shape (total,)
        + the output's shape, refused (at the output) when over the limit:
        `what()` says what it is and its shape for the message. As in reverse
        mode, a block whose result is not finite is pushed again with checks,
        to warn where the first non-finite derivative was born. `kinds`,
        given, gets the kind (class) of each block's batch: where each is a
        `Diagonal`, the result holds no −0.0 (its dense form adds the values
        into +0.0 zeros). `as_arrays`: a block whose result is not finite is
        pushed again from its seeds as arrays, where seeds kept as their
        values (`Diagonal`) step a direction at its entry alone and so lose
        a 0 · inf elsewhere (a dense Hessian, as its H·v and its compressed
        sweeps, which push arrays, keep it: docs/design.md)."""
        output = self.nodes[self.output]
        limit = limit_for(max(8 * total * output.value.size, total * self.bytes_per_direction))
        check_bytes(8 * total * output.value.size,
                    what or (lambda: f"the derivatives along {total} directions would be "
                                     f"{shape_str((total,) + output.value.shape)}"), output.span, limit)
        block = self.block_size(total, budget_bytes, limit)
        # One block's tangents are the result as they come (no copy); several are copied in.
        result = None if block >= total else np.empty((total,) + output.value.shape)
        for start in range(0, total, block):
            k = min(block, total - start)
            seeds = seed_block(start, k)
            checked = diagnostics is not None or as_arrays  # the result is checked here where the push has not
            batch = self.push(seeds, observe, checked)
            finite = self.finite or not checked or finite_batch(batch)
            if not finite and as_arrays and any(type(s) is not np.ndarray for s in seeds.values()):
                seeds = {i: dense(s) for i, s in seeds.items()}
                batch = self.push(seeds, observe, checked)
            if kinds is not None:
                kinds.append(type(batch))
            if result is None:
                result = dense(batch)
                if type(result) is not np.ndarray or not result.flags.writeable or any(
                        np.may_share_memory(result, s) for s in seeds.values() if type(s) is np.ndarray):
                    result = np.array(result)  # a broadcast view, a seed, or not an array: one of its own
            else:
                result[start:start + k] = dense(batch)
            if diagnostics is not None and not finite:
                births = Births(self.nodes)
                self.push(seeds, births.forward)
                births.warn(diagnostics)
                diagnostics = None  # one warning about the derivative is enough
        return np.zeros((0,) + output.value.shape) if result is None else result


@np.errstate(all="ignore")  # as a decorator, np.errstate costs half what a `with` costs
def _quietly(push: Callable[[dict], np.ndarray | None], seeds: dict) -> np.ndarray | None:
    """A written push, numpy's floating-point warnings off (the sweep's own diagnostics say what is not finite)."""
    return push(seeds)


def jacobian_forward(tape: Tape, output: int, wrt: list[int], diagnostics: Diagnostics | None = None,
                     budget_bytes: int = TANGENT_BUDGET_BYTES, observe: SweepObserver | None = None,
                     sweep: ForwardSweep | None = None, kinds: list[type] | None = None,
                     as_arrays: bool = False) -> dict[int, np.ndarray]:
    """The Jacobian of `output` with respect to each node W in `wrt`, shaped
    shape(output) + shape(W) (for a scalar output, the gradient): one
    direction per input entry (rows of the identity), in blocks; `observe`
    as for `ForwardSweep.push`; `sweep`: this sweep, planned before; `kinds`
    and `as_arrays` as for `push_blocks`."""
    nodes = tape.nodes
    sweep = ForwardSweep(tape, output, wrt) if sweep is None else sweep
    sizes = [nodes[i].value.size for i in wrt]
    offsets = list(itertools.accumulate(sizes, initial=0))

    def seed_block(start: int, k: int) -> dict[int, Diagonal]:
        return {i: Diagonal.identity_rows(nodes[i].value.shape, start - offsets[p], k) for p, i in enumerate(wrt)}

    out_shape = nodes[output].value.shape

    def what() -> str:
        names = ", ".join(f"`{nodes[i].name or nodes[i].label}`" for i in wrt)
        shape = out_shape + (nodes[wrt[0]].value.shape if len(wrt) == 1 else (offsets[-1],))
        of = nodes[output].name or nodes[output].label
        return f"the Jacobian of `{of}` with respect to {names} would be {shape_str(shape)}"

    rows = sweep.push_blocks(offsets[-1], seed_block, diagnostics, budget_bytes, observe, what, kinds, as_arrays)
    # Row j is the derivative along entry j: a W's rows, transposed, are its
    # block (a transposed view where the shapes allow, as numpy's reshape does).
    return {i: rows[offsets[p]:offsets[p + 1]].reshape(sizes[p], math.prod(out_shape)).T
            .reshape(out_shape + nodes[i].value.shape) for p, i in enumerate(wrt)}


def directional_forward(tape: Tape, output: int, node: int, directions: np.ndarray,
                        budget_bytes: int = TANGENT_BUDGET_BYTES) -> np.ndarray:
    """Derivatives of the scalar `output` along each of `directions` (shape
    (k,) + the node's shape) in the value of `node`: k Jacobian-vector products."""
    sweep = ForwardSweep(tape, output, [node])
    return sweep.push_blocks(len(directions), lambda start, k: {node: directions[start:start + k]},
                             budget_bytes=budget_bytes)

