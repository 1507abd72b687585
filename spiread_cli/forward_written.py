"""A forward sweep's steps written out as one function (`written_push`),
which writes a large step's result into an operand's tangent that dies
there where the sweep alone holds its memory, adds a scatter into the other
operand of a sum, and steps Diagonal batches on their values."""

from __future__ import annotations

import math
import sys
from typing import Callable

import numpy as np

from . import forward_steps
from .forward_steps import SOLE_REFERENCES, Untraced, finite_batch, jvp_step, shares_none
from .rules_code import guarded
from .rules_forward import Diagonal, Scaled, added, spreads
from .tape_nodes import Node, rule_params


def written_push(sweep, seeds: dict, trace: list, checked: bool = False) -> Callable[[dict], np.ndarray]:
    """The sweep's push for seeds of this kind as one function, a line per
    step, from `trace` (`ForwardSweep._pushed`'s, at these seeds): a step
    whose tangents were arrays calls the function its op's jvp runs for them
    (`jvp.resolve`: the same primal rules in the same order, so the same
    bits) with no look-up, and so does an elementwise step on `Diagonal`
    batches over the same entries, or on `Scaled` ones over one base (on
    their values or coefficients spread into one value each, as
    `diagonal_jvp` and `scaled_jvp` step them, after their own check; a
    coefficient that comes out not finite returns None, and the caller
    pushes step by step, guarded, even where the push checks its result: a
    later op may drop the column it would make not finite, and the steps
    then round as (base · u) · p where the coefficient would round as
    base · (u · p), so a kept call would not give a fresh one's bits; a run of
    Diagonal steps is lines over the values alone, `_spread_step`); a step an
    op's Diagonal rule takes calls it (`_ruled`); any other runs
    `jvp_step`, as the loop does, and raises `Untraced` if its batch is of
    another kind than traced (the caller pushes step by step then). Values
    are read from the nodes at each call; a tangent is dropped after its last
    reader, as the loop drops it. `sweep` is a forward.ForwardSweep.

    In place: a step on arrays with a large result (`forward_steps.IN_PLACE_ENTRIES`)
    is given, as spares (`jvp.resolve(into=True)`), its operands' tangents
    of its shape that die at that step, each read once (`x * x`'s is read
    twice), and writes into them (`out=`: each operand's product by its
    partial into its tangent, the sum into the first) where, when it runs,
    the sweep alone holds that array's memory (`_sole`) and it and the
    operands lie in C order (`rules_code.c_ordered`: a new result would lie
    as they do, and a later sum adds in memory order). A ufunc reads its
    operands whole before it writes, whatever memory they share. A sum (or
    difference) of a tangent and a scatter that it alone reads is stepped
    with the scatter (`_Push.folded_step`).

    Unguarded: the array steps run their ops' unguarded rules (`scale` as a
    multiply) where one check of the result costs less than their guards (a
    pass over each guarded step's value, at least) or the result is small
    (`forward_steps.UNGUARDED_ENTRIES`; a Diagonal's is its values), or its caller checks it
    anyway (`checked`), and the function returns None where the result is
    not finite (the caller pushes step by step): a finite result is the
    guarded one up to the sign of a zero (which every result's 0.0 rule
    removes: python_args.result_value), since an unguarded 0 · inf is a nan
    that every later step keeps (the tangents' maps are linear) or drops
    with its entry, and the guard differs from a multiply only in giving 0.0
    for a zero tangent."""
    push = _Push(sweep, next(iter(seeds.values())).shape[0])
    folded = sweep.folded  # {a scatter's id: the add's that alone reads it}
    postponed: dict[int, list[int]] = {}  # an add's id: the tangents to drop after it (its scatter's)
    steps = iter(trace)
    for p, node in enumerate(sweep.plan):
        if node.id in sweep.same:
            push.alias(node.id, sweep.same[node.id])
        elif node.op is None or not any(push.has(i) for i in node.inputs):
            push.lines.append(f"t{node.id} = seeds[{node.id}]")
        elif node.id in folded:  # stepped with the add that alone reads it
            push.deferred[node.id] = (p, next(steps))
            postponed[folded[node.id]] = sweep.free_after[p]
            continue
        else:
            traced_ts, traced = next(steps)
            scatter = next((i for i in node.inputs if i in push.deferred), None)
            if scatter is None:
                push.step(p, node, traced_ts, traced)
            else:
                push.folded_step(p, node, scatter, traced_ts, traced)
        push.live.append(node.id)
        push.drop(sweep.free_after[p] + postponed.pop(node.id, []))
    return push.function(sweep.output, checked)


class _Push:
    """A written push as it is written: its lines, the names they call
    (`namespace`), the values read so far and the tangents live after the
    last line, in the order they were made."""

    def __init__(self, sweep, k: int):
        self.sweep, self.nodes, self.k = sweep, sweep.nodes, k
        self.namespace = {"nodes": sweep.nodes, "jvp_step": jvp_step, "added": added, "Untraced": Untraced,
                          "broadcast_to": np.broadcast_to, "shares_none": shares_none, "ndarray": np.ndarray,
                          "Diagonal": Diagonal, "Scaled": Scaled, "spreads": spreads, "getrefcount": sys.getrefcount,
                          "SOLE": SOLE_REFERENCES}
        self.lines: list[str] = []
        self.read: set[int] = set()
        self.live: list[int] = []
        self.deferred: dict[int, tuple] = {}  # a scatter stepped with its add: its place in the plan, traced kinds
        self.guards, self.rebound = 0, {}  # entries of the values the guarded steps guard; their functions unguarded
        # Diagonal tangents held spread (`u{id}`: their values in one value, as an elementwise step's rule steps
        # them) by id: the name of a Diagonal over their entries (`gathered` makes theirs from it, kept to the end).
        self.spread: dict[int, str] = {}
        self.made: set[int] = set()  # of those, the ones whose Diagonal is made (`t{id}`)
        self.checked: set[tuple] = set()  # the Diagonals, by name, and the shape that `spreads` was asked of
        self.traced: dict[int, type] = {}  # each step's kind of tangent, as traced

    def value(self, i: int) -> str:
        if i not in self.read:
            self.read.add(i)
            self.lines.append(f"x{i} = nodes[{i}].value")
        return f"x{i}"

    def has(self, i: int) -> bool:
        return i in self.live or i in self.deferred

    def tangent(self, i: int) -> str:
        """Tangent i's name in the lines (its Diagonal gathered from its spread values first, if not yet made)."""
        if not self.has(i):
            return "None"
        if i in self.spread and i not in self.made:
            self.lines.append(f"t{i} = {self.spread[i]}.gathered(u{i})")
            self.made.add(i)
        return f"t{i}"

    def alias(self, i: int, same: int) -> None:
        """Node i repeats node `same`: the one tangent, in the forms it has."""
        if same in self.spread:
            self.lines.append(f"u{i} = u{same}")
            self.spread[i] = self.spread[same]
        if same not in self.spread or same in self.made:
            self.lines.append(f"t{i} = t{same}")
            self.made.add(i)

    def step(self, p: int, node: Node, traced_ts: list, traced: type) -> None:
        """The lines of plan[p]'s step, its operands' tangents traced as `traced_ts` and its own as `traced`."""
        self.traced[node.id] = traced
        if self._spread_step(p, node, traced_ts, traced):
            return
        t = f"t{node.id}"
        called = not self._mixed_step(p, node, traced_ts, traced) and self._called(p, node, traced_ts, traced)
        if node.id in self.sweep.seeded:
            self.lines.append(f"{t} = added({t}, seeds[{node.id}])")
        if not called or node.id in self.sweep.seeded:
            self.lines.append(f"if {t}.__class__ is not {traced.__name__}: raise Untraced")

    def _called(self, p: int, node: Node, traced_ts: list, traced: type) -> bool:
        """plan[p]'s lines but `step`'s; whether they call the function its op's jvp runs for the traced kinds."""
        t, ts = f"t{node.id}", [self.tangent(i) for i in node.inputs]
        args = ", ".join(self.value(i) for i in node.inputs)
        out = self.value(node.id)
        self.namespace[f"op{p}"] = node.op
        function, dying = self._resolved(p, node, traced_ts, traced)
        moving = [given for given in ts if given != "None"]
        if function is not None and traced in (Diagonal, Scaled):
            stepped = f"jvp{p}({', '.join(f'{m}.spread()[None]' for m in moving)}, {out}, {args})[0]"
            self.lines.extend([
                f"if not spreads(op{p}, [{', '.join(moving)}], {node.value.shape!r}): raise Untraced",
                f"{t} = {moving[0]}.gathered({stepped})"])
            if traced is Scaled:  # a coefficient not finite (Scaled.gathered): this push step by step, guarded
                self.lines.append(f"if {t} is None: return None")
        elif function is not None:
            shape = (self.k,) + node.value.shape
            spares = [f"into{i}" if i is not None else "None" for i in dying]
            # Bound before the call: its own arguments are references too.
            self.lines.extend(f"into{i} = t{i} if {_sole(i)} else None" for i in dying if i is not None)
            self.lines.extend([f"{t} = jvp{p}({', '.join(moving + [out, args] + spares)})",
                               *(f"del into{i}" for i in dying if i is not None),
                               f"if {t}.shape != {shape!r}: {t} = broadcast_to({t}, {shape!r})"])
        elif not self._ruled(p, node, ts, traced_ts, traced, args, out):
            self._looped(p, node, ts, args, out)
        return function is not None

    def _spread_step(self, p: int, node: Node, traced_ts: list, traced: type) -> bool:
        """plan[p], an elementwise step on Diagonal batches over one value's entries, as a line over their
        spread values (`u{id}`), where it is: its op's jvp on them, as `diagonal_jvp` steps them, with no
        batch made or checked at each step. `spreads` is asked once of the Diagonals a run of such steps
        starts from (every batch it makes is over their entries), and a batch is gathered from its values
        only where a line reads it as one (`tangent`): an entry of the result depends on that entry alone,
        so the values at the batch's entries are the per-step batches' bits."""
        moving = [i for i, kind in zip(node.inputs, traced_ts) if kind is not type(None)]
        if traced is not Diagonal or node.id in self.sweep.seeded or node.op.structure.kind != "elementwise" \
                or any(kind not in (Diagonal, type(None)) for kind in traced_ts) or not moving \
                or any(self.nodes[i].value.shape != node.value.shape for i in moving):
            return False
        function, _ = self._resolved(p, node, traced_ts, traced)
        if function is None:
            return False
        bases = tuple(sorted({self.spread.get(i, f"t{i}") for i in moving}))
        if (bases, node.value.shape) not in self.checked:
            self.checked.add((bases, node.value.shape))
            self.namespace[f"op{p}"] = node.op
            self.lines.append(f"if not spreads(op{p}, [{', '.join(bases)}], {node.value.shape!r}): raise Untraced")
        for i in dict.fromkeys(moving):
            if i not in self.spread:  # a Diagonal a run starts from: its values spread
                self.lines.append(f"u{i} = t{i}.spread()")
                self.spread[i] = f"t{i}"
                self.made.add(i)
        args = ", ".join(self.value(i) for i in node.inputs)
        values = ", ".join(f"u{i}[None]" for i in moving)
        self.lines.append(f"u{node.id} = jvp{p}({values}, {self.value(node.id)}, {args})[0]")
        self.spread[node.id] = self.spread[moving[0]]
        return True

    def _mixed_step(self, p: int, node: Node, traced_ts: list, traced: type) -> bool:
        """plan[p], an elementwise step on Diagonal tangents held spread, over one value's entries, and arrays,
        whose result is an array: as `diagonal_jvp` steps it, the op's jvp on the values, gathered, added into
        its jvp on the arrays (`added`: in place where no live tangent or seed shares that array's memory)."""
        spread = [i for i, kind in zip(node.inputs, traced_ts) if kind is Diagonal]
        arrays = [i for i, kind in zip(node.inputs, traced_ts) if kind is np.ndarray]
        if traced is not np.ndarray or node.op.structure.kind != "elementwise" or not spread or not arrays \
                or any(kind not in (Diagonal, np.ndarray, type(None)) for kind in traced_ts) \
                or any(i not in self.spread for i in spread) or len({self.spread[i] for i in spread}) != 1 \
                or any(self.nodes[i].value.shape != node.value.shape for i in spread + arrays):
            return False
        functions = [self._bound(f"jvp{p}{part}", node, [kind if kind is moved else None for kind in traced_ts])
                     for part, moved in (("d", Diagonal), ("a", np.ndarray))]
        if None in functions:
            return False
        args = ", ".join([self.value(node.id)] + [self.value(i) for i in node.inputs])
        others = ", ".join(self._live_names(p))
        self.lines.append(f"t{node.id} = added({self.spread[spread[0]]}.gathered(jvp{p}d("
                          f"{', '.join(f'u{i}[None]' for i in spread)}, {args})[0]), "
                          f"jvp{p}a({', '.join(f't{i}' for i in arrays)}, {args}), "
                          f"lambda a: shares_none(a, ({others}{',' if others else ''}), seeds))")
        return True

    def _bound(self, name: str, node: Node, moves: list, into: bool = False) -> Callable | None:
        """The function node's jvp runs for tangents of the operands `moves` (None: none), bound as `name`,
        and its unguarded one where it is guarded (`rebound`); None where the statement is evaluated."""
        resolve = getattr(node.op.jvp, "resolve", None)
        xs = [self.nodes[i].value for i in node.inputs]
        function = None if resolve is None else resolve(moves, node.value, xs, node.params, False, into=into)
        if function is not None:
            self.namespace[name] = function
            if guarded(function):
                self.guards += node.value.size
                self.rebound[name] = resolve(moves, node.value, xs, node.params, True, into=into)
        return function

    def _live_names(self, p: int) -> list[str]:
        """The names of the tangents live after plan[p] (a spread one's values where its batch is not made)."""
        return [f"u{i}" if i in self.spread and i not in self.made else f"t{i}"
                for i in self.live if i not in self.sweep.free_after[p]]

    def _resolved(self, p: int, node: Node, traced_ts: list, traced: type) -> tuple[Callable | None, list]:
        """The function plan[p]'s jvp runs for its traced kinds, bound as `jvp{p}` (None: the step runs
        `jvp_step`), and the operands whose tangents it is given as spares (None where one is not):
        arrays in and out, or Diagonal (or Scaled) batches in and out of an elementwise op, which steps
        them spread into one value each (rules_forward.diagonal_jvp, scaled_jvp), checked as it does. Its unguarded function
        too where its own is guarded (`rebound`)."""
        resolve = getattr(node.op.jvp, "resolve", None)
        spread = traced in (Diagonal, Scaled) and node.op.structure.kind == "elementwise" and \
            all(kind in (traced, type(None)) for kind in traced_ts)
        arrays = traced is np.ndarray and all(kind in (np.ndarray, type(None)) for kind in traced_ts)
        if resolve is None or not (spread or arrays):
            return None, []
        moves = [None if kind is type(None) else kind for kind in traced_ts]
        # Results are written into operands' tangents that die here, if the sweep alone holds them: each
        # tangent given once (two operands' one tangent is read twice), large, of the result's shape.
        large = self.k * node.value.size >= forward_steps.IN_PLACE_ENTRIES
        spare = self.sweep.spare_positions[p] if arrays and large else ()
        dying = [node.inputs[pos] if pos in spare else None
                 for pos, kind in enumerate(traced_ts) if kind is not type(None)]
        dying = dying if any(i is not None for i in dying) else []
        function = self._bound(f"jvp{p}", node, moves, into=True) if dying else None
        if function is None:
            dying, function = [], self._bound(f"jvp{p}", node, moves)
        return function, dying

    def _ruled(self, p: int, node: Node, ts: list, traced_ts: list, traced: type, args: str, out: str) -> bool:
        """plan[p], an op that is not elementwise with one Diagonal tangent, as a line calling its rule for it
        (`Op.diagonal_jvp`), as `diagonal_jvp` does, where it was traced so (the caller checks its kind)."""
        moving = [j for j, kind in enumerate(traced_ts) if kind is not type(None)]
        if len(moving) != 1 or traced_ts[moving[0]] is not Diagonal or traced not in (Diagonal, np.ndarray) \
                or node.op.diagonal_jvp is None or node.op.structure.kind == "elementwise" or node.op.fwd is not None:
            return False
        self.namespace[f"params{p}"] = node.params
        shape, params = (self.k,) + node.value.shape, f", **params{p}" if node.params else ""
        self.lines.append(f"t{node.id} = op{p}.diagonal_jvp({moving[0]}, {ts[moving[0]]}, {out}, {args}{params})")
        if traced is np.ndarray:
            self.lines.append(f"if t{node.id}.__class__ is ndarray and t{node.id}.shape != {shape!r}: "
                              f"t{node.id} = broadcast_to(t{node.id}, {shape!r})")
        return True

    def _looped(self, p: int, node: Node, ts: list, args: str, out: str) -> None:
        """plan[p]'s step as the loop runs it (`jvp_step`), told which arrays it may write into."""
        params = f"params{p}"
        self.namespace[params] = node.params
        if node.op.fwd is not None:
            self.namespace["rule_params"] = rule_params
            params = f"rule_params(nodes[{node.id}], [{args}])"
        others = ", ".join(self._live_names(p))
        self.lines.append(f"t{node.id} = jvp_step(op{p}, [{', '.join(ts)}], {out}, [{args}], {params}, {self.k}, "
                          f"lambda a: shares_none(a, ({others}{',' if others else ''}), seeds))")

    def folded_step(self, p: int, node: Node, scatter: int, traced_ts: list, traced: type) -> None:
        """plan[p], a ± s where s = (zeros with v at key) is a scatter that it alone reads (`ForwardSweep.folded`),
        stepped with s: where a's and v's tangents are arrays (as traced, and s's and the sum's) and, when it
        runs, the sweep alone holds a's (`_sole`) in C order, v's added into (subtracted from) it at key, and
        that is the sum's; else s's step and the sum's. The same values but the sign of a zero: a + (+0.0)
        where a is −0.0."""
        q, (scatter_ts, scatter_traced) = self.deferred[scatter]
        scattered = self.nodes[scatter]
        other, v = node.inputs[1 - node.inputs.index(scatter)], scattered.inputs[0]
        kinds = [*traced_ts, traced, *scatter_ts, scatter_traced]
        folds = self.tangent(other) != "None" and self.tangent(v) != "None" and \
            all(kind is np.ndarray for kind in kinds)
        if folds:
            for i in (*scattered.inputs, scatter, *node.inputs, node.id):
                self.value(i)  # read before the branches: later steps may read them too
            key, name = f"key{p}", node.op.name
            self.namespace[key], self.namespace[name] = (slice(None),) + scattered.params["key"], node.op.impl
            self.lines.extend([f"if {_sole(other)} and t{other}.flags.c_contiguous:", f"    into = t{other}[{key}]",
                               f"    {name}(into, t{v}, out=into)", "    del into", f"    t{node.id} = t{other}",
                               "else:"])
        start = len(self.lines)
        self.step(q, scattered, scatter_ts, scatter_traced)
        self.step(p, node, traced_ts, traced)
        self.lines.append(f"del t{scatter}")
        del self.deferred[scatter]
        if folds:
            self.lines[start:] = [f"    {line}" for line in self.lines[start:]]

    def drop(self, dead: list[int]) -> None:
        bases = set(self.spread.values())  # kept to the end: a batch is gathered from one
        for i in dead:
            if i in self.live:
                self.live.remove(i)
                if i in self.spread:
                    self.lines.append(f"del u{i}")
                if (i not in self.spread or i in self.made) and f"t{i}" not in bases:
                    self.lines.append(f"del t{i}")

    def function(self, output: int, checked: bool = False) -> Callable[[dict], np.ndarray]:
        """The push, returning the output's tangent, checked if its steps run unguarded: only where that
        check costs no more than their guards, or the result is small (`forward_steps.UNGUARDED_ENTRIES`;
        a Diagonal's entries are its values), or the caller checks it anyway (`checked`). Its `checks`
        says whether it checks: what such a push returns is finite."""
        shape = (self.k,) + self.nodes[output].value.shape
        entries = self.k if output in self.spread or self.traced.get(output) is Diagonal else math.prod(shape)
        self.tangent(output)
        checks = output in self.live and bool(self.rebound) and \
            (checked or entries <= max(self.guards, forward_steps.UNGUARDED_ENTRIES))
        if checks:
            self.namespace.update(self.rebound)
            self.namespace["finite_batch"] = finite_batch
            self.lines.append(f"return t{output} if finite_batch(t{output}) else None")
        elif output in self.live:
            self.lines.append(f"return t{output}")
        else:
            self.namespace["zeros"] = np.zeros
            self.lines.append(f"return zeros({shape!r})")
        code = "def push(seeds):\n" + "".join(f"    {line}\n" for line in self.lines)
        exec(code, self.namespace)
        self.namespace["push"].checks = checks  # what it returns is known finite
        return self.namespace["push"]


def _sole(i: int) -> str:
    """Whether tangent i's memory is the sweep's alone, as a written push tests it: the array owns its
    memory (`base` is None: not a view of a seed, a value or another tangent, as a reshape's or a slice's
    jvp gives) and its one name in the function is the only reference to it (`SOLE_REFERENCES`: not a
    seed, which the caller and `seeds` hold, nor a node's value, nor the tangent of a `same` node, nor one
    a jvp returned as it was given, `scale(t, 1.0)`, still named as its operand's, nor an array a live
    view is of), and is writeable (not a `Scaled` batch's array, which its readers share)."""
    return f"t{i}.base is None and t{i}.flags.writeable and getrefcount(t{i}) == SOLE"
