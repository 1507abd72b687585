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

import itertools
import math
from typing import Callable

import numpy as np

from .diagnostics import Diagnostics, shape_str
from .limits import check_bytes, limit_for, reuse_freed_memory
from .rules_forward import Diagonal, added, dense, diagonal_jvp, spreads
from .tape import Births, SweepObserver, Tape
from .tape_nodes import Node, all_finite, rule_params

TANGENT_BUDGET_BYTES = 256 << 20
# A written push with a result this small calls its ops' unguarded rules (`Op.unguarded`) and checks
# the result once: a pass over it costs less than the guards (about 2 us a call, on the smaller operand).
UNGUARDED_ENTRIES = 1 << 16


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
        # By the seeds' kind: 1 once pushed, then the steps written out (`written_push`), or
        # None where those met another kind of batch than written (pushed step by step).
        self.written: dict[tuple, int | Callable | None] = {}

    def _peak_live_entries(self) -> int:
        """Entries of tangent alive at once, at worst, for one direction; plus
        room for the temporaries of the largest jvp (about two results' worth)."""
        live = peak = 0
        for p, node in enumerate(self.plan):
            live += node.value.size
            peak = max(peak, live + 2 * node.value.size)
            live -= sum(self.nodes[i].value.size for i in self.free_after[p])
        return max(peak, 1)

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

    def push(self, seeds: dict[int, np.ndarray], observe: SweepObserver | None = None) -> np.ndarray:
        """Tangents of the output, shape (k,) + output shape, for seed tangents
        seeds[id] of shape (k,) + that node's shape (one per seeded node).
        `observe(node, ts, t)`, if given, sees each node's tangent t as it is
        made, from the input tangents ts (None for an input without one; all
        None where t is a seed). A seed may be a `Diagonal` batch (rows of
        the identity), which stays one through the ops with a rule for it
        (`diagonal_jvp`), and so may the result; an observer sees arrays.
        Seeds of a kind pushed twice are pushed, from the third time on, by
        the steps written out as one function (`written_push`)."""
        if observe is not None:
            return self._pushed({i: dense(s) for i, s in seeds.items()}, observe)
        kind = tuple((i, type(s), s.shape, getattr(s, "full", None), getattr(s, "ordered", None))
                     for i, s in seeds.items())
        written = self.written.get(kind, 0)
        if callable(written):
            with np.errstate(all="ignore"):
                try:
                    result = written(seeds)
                    return self._pushed(seeds) if result is None else result  # not finite: guarded, step by step
                except Untraced:  # a step's batch came out of another kind than written: step by step from now
                    self.written[kind] = None
        elif written == 1:  # the second push of this kind: written as it runs
            trace: list = []
            result = self._pushed(seeds, trace=trace)
            self.written[kind] = written_push(self, seeds, trace)
            return result
        elif written == 0:
            self.written[kind] = 1
        return self._pushed(seeds)

    def _pushed(self, seeds: dict, observe: SweepObserver | None = None, trace: list | None = None):
        """`push`, step by step; `trace`: given, the kinds (classes) of each op step's input tangents
        and result, in order."""
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
                    t = jvp_step(node.op, ts, node.value, args, params, k,
                                 lambda a: _shares_none(a, [t for i, t in tangents.items() if i not in self.free_after[p]],
                                                        seeds))
                    # A seeded node that is an intermediate gets its own seed on top
                    # of what flows into it, as reverse mode's adjoints add up.
                    if node.id in self.seeded:
                        t = added(t, seeds[node.id])
                    if trace is not None:
                        trace.append(([type(given) for given in ts], type(t)))
                if observe is not None:
                    observe(node, ts, t)
                tangents[node.id] = t
                for i in self.free_after[p]:
                    tangents.pop(i, None)
        if self.output in tangents:
            return tangents[self.output]
        return np.zeros((k,) + nodes[self.output].value.shape)

    def push_blocks(self, total: int, seed_block: Callable[[int, int], dict[int, np.ndarray]],
                    diagnostics: Diagnostics | None = None, budget_bytes: int = TANGENT_BUDGET_BYTES,
                    observe: SweepObserver | None = None, what: Callable[[], str] | None = None) -> np.ndarray:
        """Directional derivatives of the output for `total` directions,
        seed_block(start, k) giving directions start..start+k; shape (total,)
        + the output's shape, refused (at the output) when over the limit:
        `what()` says what it is and its shape for the message. As in reverse
        mode, a block whose result is not finite is pushed again with checks,
        to warn where the first non-finite derivative was born."""
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
            batch = self.push(seeds, observe)
            if result is None:
                result = batch.dense() if type(batch) is Diagonal else batch
                if type(result) is not np.ndarray or not result.flags.writeable or any(
                        np.may_share_memory(result, s) for s in seeds.values() if type(s) is np.ndarray):
                    result = np.array(result)  # a broadcast view, a seed, or not an array: one of its own
            else:
                result[start:start + k] = dense(batch)
            if diagnostics is not None and not finite_batch(batch):
                births = Births(self.nodes)
                self.push(seeds, births.forward)
                births.warn(diagnostics)
                diagnostics = None  # one warning about the derivative is enough
        return np.zeros((0,) + output.value.shape) if result is None else result


def jvp_step(op, ts: list, out: np.ndarray, args: list, params: dict, k: int, owned: Callable[[np.ndarray], bool]):
    """One op's tangent from its operands' `ts` (None: no tangent; a
    `Diagonal` batch stays one where the op has a rule for it), shape (k,) +
    out's; `owned(a)`: whether no other tangent or seed shares memory with a."""
    t = None
    if any(type(given) is Diagonal for given in ts):
        t = diagonal_jvp(op, ts, out, args, params, owned)
        ts = [dense(given) for given in ts] if t is None else ts
    if t is None:
        t = op.jvp(ts, out, *args, **params)
        if np.shape(t) != (k,) + out.shape:
            t = np.broadcast_to(t, (k,) + out.shape)
    return t


class Untraced(Exception):
    """A written push met a batch of another kind than when it was written."""


def written_push(sweep: ForwardSweep, seeds: dict, trace: list) -> Callable[[dict], np.ndarray]:
    """The sweep's push for seeds of this kind as one function, a line per
    step, from `trace` (`ForwardSweep._pushed`'s, at these seeds): a step
    whose tangents were arrays calls the function its op's jvp runs for them
    (`jvp.resolve`: the same primal rules in the same order, so the same
    bits) with no look-up, and so does an elementwise step on `Diagonal`
    batches over the same entries (on their values spread into one value
    each, as `diagonal_jvp` steps them, after its own check); any other runs
    `jvp_step`, as the loop does, and raises `Untraced` if its batch is of
    another kind than traced (the caller pushes step by step then). Values are read from the nodes at each
    call; a tangent is dropped after its last reader, as the loop drops it.
    Where the result is small (`UNGUARDED_ENTRIES`), the array steps run
    their ops' unguarded rules (`scale` as a multiply) and the function
    returns None where the result is not finite (the caller pushes step by
    step): a finite result is the guarded one up to the sign of a zero
    (which every result's 0.0 rule removes: python_args.result_value), since
    an unguarded 0 · inf is a nan that every later step keeps (the tangents'
    maps are linear) or drops with its entry, and the guard differs from a
    multiply only in giving 0.0 for a zero tangent."""
    nodes, plan, same = sweep.nodes, sweep.plan, sweep.same
    k = next(iter(seeds.values())).shape[0]
    unguarded = k * nodes[sweep.output].value.size <= UNGUARDED_ENTRIES
    direct = False
    namespace = {"nodes": nodes, "jvp_step": jvp_step, "added": added, "broadcast_to": np.broadcast_to,
                 "Untraced": Untraced, "shares_none": _shares_none, "ndarray": np.ndarray, "Diagonal": Diagonal,
                 "spreads": spreads}
    lines, read, live, steps = [], set(), [], iter(trace)

    def value(i: int) -> str:
        if i not in read:
            read.add(i)
            lines.append(f"x{i} = nodes[{i}].value")
        return f"x{i}"

    def tangent(i: int) -> str:
        return f"t{i}" if i in live else "None"

    for p, node in enumerate(plan):
        t = f"t{node.id}"
        ts = [tangent(i) for i in node.inputs]
        if node.id in same:
            lines.append(f"{t} = t{same[node.id]}")
        elif node.op is None or all(given == "None" for given in ts):
            lines.append(f"{t} = seeds[{node.id}]")
        else:
            traced_ts, traced = next(steps)
            args = ", ".join(value(i) for i in node.inputs)
            out, op = value(node.id), f"op{p}"
            namespace[op] = node.op
            resolve = getattr(node.op.jvp, "resolve", None)
            function = None
            # Arrays in and out; or Diagonal batches in and out of an elementwise op, which steps
            # them spread into one value each (rules_forward.diagonal_jvp), checked as it does.
            spread = traced is Diagonal and node.op.structure.kind == "elementwise" and \
                all(kind in (Diagonal, type(None)) for kind in traced_ts)
            if resolve is not None and (spread or traced is np.ndarray and all(
                    kind in (np.ndarray, type(None)) for kind in traced_ts)):
                moves = [None if kind is type(None) else kind for kind in traced_ts]
                function = resolve(moves, node.value, [nodes[i].value for i in node.inputs], node.params, unguarded)
            if function is not None:
                namespace[f"jvp{p}"] = function
                direct = True
                moving = [given for given in ts if given != "None"]
            if function is not None and spread:
                lines += [f"if not spreads({op}, [{', '.join(moving)}], {node.value.shape!r}): raise Untraced",
                          f"{t} = {moving[0]}.gathered(jvp{p}({', '.join(f'{m}.spread()[None]' for m in moving)}, "
                          f"{out}, {args})[0])"]
            elif function is not None:
                shape = (k,) + node.value.shape
                lines += [f"{t} = jvp{p}({', '.join(moving)}, {out}, {args})",
                          f"if {t}.shape != {shape!r}: {t} = broadcast_to({t}, {shape!r})"]
            else:
                params = f"params{p}"
                namespace[params] = node.params
                if node.op.fwd is not None:
                    namespace["rule_params"] = rule_params
                    params = f"rule_params(nodes[{node.id}], [{args}])"
                others = ", ".join(f"t{i}" for i in live if i not in sweep.free_after[p])
                lines.append(f"{t} = jvp_step({op}, [{', '.join(ts)}], {out}, [{args}], {params}, {k}, "
                             f"lambda a: shares_none(a, ({others}{',' if others else ''}), seeds))")
            if node.id in sweep.seeded:
                lines.append(f"{t} = added({t}, seeds[{node.id}])")
            if function is None or node.id in sweep.seeded:
                lines.append(f"if {t}.__class__ is not {traced.__name__}: raise Untraced")
        live.append(node.id)
        for i in sweep.free_after[p]:
            if i in live:
                live.remove(i)
                lines.append(f"del t{i}")
    output = sweep.output
    if output in live and unguarded and direct:
        namespace["finite_batch"] = finite_batch
        lines.append(f"return t{output} if finite_batch(t{output}) else None")
    elif output in live:
        lines.append(f"return t{output}")
    else:
        namespace["zeros"] = np.zeros
        lines.append(f"return zeros({(k,) + nodes[output].value.shape!r})")
    code = "def push(seeds):\n" + "".join(f"    {line}\n" for line in lines)
    exec(code, namespace)
    return namespace["push"]


def _shares_none(a: np.ndarray, live, seeds: dict) -> bool:
    """Whether no tangent in `live` (those needed after the step) and no seed
    that is an array shares memory with `a` (a jvp may return a tangent it
    was given, or a view of one): so a step may write into it."""
    return not any(np.may_share_memory(a, t) for t in live if type(t) is np.ndarray) \
        and not any(np.may_share_memory(a, s) for s in seeds.values() if type(s) is np.ndarray)


def finite_batch(batch) -> bool:
    """Whether every entry of a batch of derivatives is finite (a Diagonal's by its values)."""
    return all_finite(batch.values if type(batch) is Diagonal else batch)


def jacobian_forward(tape: Tape, output: int, wrt: list[int], diagnostics: Diagnostics | None = None,
                     budget_bytes: int = TANGENT_BUDGET_BYTES, observe: SweepObserver | None = None,
                     sweep: ForwardSweep | None = None) -> dict[int, np.ndarray]:
    """The Jacobian of `output` with respect to each node W in `wrt`, shaped
    shape(output) + shape(W) (for a scalar output, the gradient): one
    direction per input entry (rows of the identity), in blocks; `observe`
    as for `ForwardSweep.push`; `sweep`: this sweep, planned before."""
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

    rows = sweep.push_blocks(offsets[-1], seed_block, diagnostics, budget_bytes, observe, what)
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

