"""The tape: a flat, topologically ordered list of nodes, and the sweeps over it.

A program is recorded once; evaluation order is tape order, so the reverse
sweep is a plain loop backwards over the nodes (micrograd's topological sort
comes for free). The tape is the one evaluator: recording, constant folding,
replay with new leaf values (`train`, `check`'s probes) and the rewrites all
compute an op through `Tape.evaluate`/`Tape.fold`, so every op is converted
to float64 and checked for inf and nan the same way, wherever it runs.

`Run` (run.py) is the result of running a program: its tape, its names and
its output. The nodes and the one call of an op are in tape_nodes.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np

from .diagnostics import Diagnostics, Source, Span
from .limits import reuse_freed_memory
from .ops import IN_PLACE_ENTRIES, Op
from .rules import comparable
from .emitter import Emitter, Shared, rule_label, unread_dropped
from .reverse_steps import sweeps_before_writing, written_sweep
from .rules_forward import Diagonal, added, dense, diagonal_vjp
from .tape_nodes import (Births, DeferredNode, Node, Residual, all_finite_unguarded, all_finite_values, born_entries,
                         compute, describe_nonfinite, rule_params, straight_line, warn_all)


# Told of each step of a sweep as it runs, without changing it: the finiteness
# check (where a non-finite derivative was born) and `--explain` watch this way.
SweepObserver = Callable[..., None]


class Deferral:
    """The op nodes a tape recorded without computing them (`Tape.defer`),
    and how to compute them: in tape order, each with the diagnostics it was
    recorded with, so the values, the warnings and their order are those of
    a tape that computed every node as it was recorded. A node waiting for
    its value holds this, and this the tape's node list, until it is
    computed (or released)."""

    __slots__ = ("nodes", "diagnostics", "quiet", "done")

    def __init__(self, nodes: list[Node], diagnostics: Diagnostics | None):
        self.nodes, self.diagnostics = nodes, diagnostics
        self.quiet: set[int] = set()  # recorded without diagnostics (a derivative rule's nodes): they never warn
        self.done = 0                 # every node before this one is computed

    def compute_through(self, stop: int) -> None:
        """Compute every deferred node up to node `stop`, in tape order."""
        nodes, evaluate = self.nodes, Tape._evaluate
        with np.errstate(all="ignore"):
            for node in nodes[self.done:stop + 1]:
                if node.deferred is self:
                    evaluate(node, nodes, None if node.id in self.quiet else self.diagnostics)
        self.done = max(self.done, stop + 1)


@dataclass
class Tape:
    nodes: list[Node] = field(default_factory=list)
    source: Source | None = None  # the program, for the source text of a node's span
    deferral: Deferral | None = None  # while set, `record` defers (`defer`)
    # The unobserved reverse sweeps made on this tape, by output, wrt and whether batched: how many times
    # the loop made each, then the sweep written out as one function (reverse_steps.written_sweep).
    sweeps: dict[tuple, int | Callable] = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------ recording

    def leaf(self, value: np.ndarray, kind: str, span: Span | None, name: str | None = None,
             fixed: bool = False) -> Node:
        """A leaf; `fixed`: its value is never set again (`Node.fixed`)."""
        node = Node(len(self.nodes), kind, None, (), {}, value, value.shape, span,
                    "input" if kind == "input" else "constant", name, fixed=fixed)
        self.nodes.append(node)
        return node

    def record(self, op: Op, inputs: tuple[int, ...], params: dict, span: Span | None, label: str,
               diagnostics: Diagnostics | None, shape: tuple[int, ...] | None = None) -> Node:
        """Append an op node and evaluate it, warning if it makes inf or nan;
        while the tape defers (`defer`), it is evaluated when first read.
        `shape` is the op's shape rule's, if the caller has it already."""
        nodes, deferral = self.nodes, self.deferral
        node = Node(len(nodes), "op", op, inputs, params, None, shape, span, label)
        nodes.append(node)
        if deferral is not None and (diagnostics is None or diagnostics is deferral.diagnostics):
            if shape is None:
                node.shape = op.shape(*[nodes[i].shape for i in inputs], **params)
            del node.value
            node.deferred, node.__class__ = deferral, DeferredNode
            if diagnostics is None:
                deferral.quiet.add(node.id)
            return node
        with np.errstate(all="ignore"):
            self._evaluate(node, nodes, diagnostics)
        node.shape = node.value.shape
        return node

    def defer(self, diagnostics: Diagnostics | None) -> Deferral:
        """Record op nodes from now on without computing them: each is
        computed, with every deferred node before it, when its value is first
        read. A program recorded this way and then fused (`train`) never
        computes the values only the program as written has (the bigram's
        five 228,146 × 27 arrays). Ends with `stop_deferring`."""
        self.deferral = Deferral(self.nodes, diagnostics)
        return self.deferral

    def forget(self, length: int) -> None:
        """Drop the nodes recorded from node `length` on: a trial recording
        that is not kept (`.map`'s, spiread_cli/builtin_methods.py)."""
        del self.nodes[length:]
        self.sweeps = {key: sweep for key, sweep in self.sweeps.items() if max((key[0], *key[1])) < length}
        if self.deferral is not None:
            self.deferral.quiet = {i for i in self.deferral.quiet if i < length}
            self.deferral.done = min(self.deferral.done, length)

    def stop_deferring(self) -> None:
        """Record computing again; the nodes already deferred still wait to be read."""
        self.deferral = None

    def fold(self, op: Op, args: list[np.ndarray], params: dict, span: Span | None, label: str,
             diagnostics: Diagnostics | None) -> np.ndarray:
        """Evaluate an op of constants without recording it (constant
        folding), warning exactly as a recorded op would."""
        inputs = [Node(-1, "const", None, (), {}, a, a.shape, None, "constant") for a in args]
        node = Node(-1, "op", op, tuple(range(len(args))), params, None, None, span, label)
        deferral = self.deferral
        folded = Diagnostics() if diagnostics is not None and deferral is not None else diagnostics
        with np.errstate(all="ignore"):
            self._evaluate(node, inputs, folded)
        if folded is not diagnostics and folded.warnings:
            # The ops recorded before this one warn first, as computed eagerly.
            deferral.compute_through(len(self.nodes) - 1)
            for warning in folded.warnings:
                diagnostics.warn(warning.message, warning.span, warning.notes)
        return node.value

    def text(self, node: Node) -> str:
        """The source text that produced a node (sliced when asked, never stored)."""
        if self.source is None or node.span is None:
            return node.name or node.label
        return self.source.snippet(node.span)

    # ----------------------------------------------------------- evaluation

    def replay(self, nodes: Iterable[Node], diagnostics: Diagnostics | None = None) -> None:
        """Recompute the op nodes among `nodes` (in tape order) from their
        inputs' current values. With `diagnostics`, an op that turns finite
        inputs into inf or nan warns at its span."""
        evaluate, tape_nodes = self._evaluate, self.nodes
        with np.errstate(all="ignore"):
            for node in nodes:
                if node.op is not None:
                    evaluate(node, tape_nodes, diagnostics)

    def replay_function(self, ops: list[Node], dropped: dict[int, list[Node]] | None = None, unguarded: bool = False,
                        checked: bool = False) -> Callable[[], bool | None]:
        """A function recomputing `ops` (in tape order), dropping what `dropped` lists for a node once it is computed:
        written once (tape_nodes.straight_line, `checked` as there, its `repeats` unless values are dropped), else this tape's loop."""
        written = straight_line(self.nodes, ops, dropped, unguarded, checked, None if dropped else self.repeats(ops))
        evaluate, tape_nodes, dropped = self._evaluate, self.nodes, dropped or {}

        def looped() -> bool | None:
            with np.errstate(all="ignore"):
                for node in ops:
                    evaluate(node, tape_nodes, None)
                    for done in dropped.get(node.id, ()):
                        done.value = done.residual = None
                return all_finite_values([node.value for node in ops]) if checked else None
        return written or looped

    @staticmethod
    def _evaluate(node: Node, nodes: list[Node], diagnostics: Diagnostics | None) -> None:
        args = [nodes[i].value for i in node.inputs]
        value, kept = compute(node.op, args, node.params)
        node.value = value
        if node.deferred is not None:
            node.deferred, node.__class__ = None, Node
        if kept is not None:  # an op with `fwd` always keeps one
            node.residual = Residual(value, kept)
        if diagnostics is None:
            node.known_finite = None  # found out if anyone asks
            return
        node.known_finite = all_finite_unguarded(value)
        if node.op.reports is not None:  # it says what was born inside it, if anything
            warn_all(diagnostics, node.born_inside())
        elif not node.known_finite:
            born = born_entries(node.op, value, args, [nodes[i].finite for i in node.inputs])
            if born is not None:
                diagnostics.warn(describe_nonfinite(f"`{node.label}`", value, args, born), node.span)

    def first_nonfinite(self, nodes: Iterable[Node]) -> tuple[Node, np.ndarray] | None:
        """The first of `nodes` where an inf or nan was born, and where in its
        value (`born_entries`; a leaf is its own origin)."""
        tape_nodes = self.nodes
        for node in nodes:
            if not node.finite:
                operands = [tape_nodes[i] for i in node.inputs]
                born = born_entries(node.op, node.value, [n.value for n in operands], [n.finite for n in operands])
                if born is not None:
                    return node, born
        return None

    # ---------------------------------------------------------- graph queries

    def feeding(self, *outputs: int) -> list[bool]:
        """For each node, whether an output is computed from it (itself included)."""
        feeds = [False] * len(self.nodes)
        for output in outputs:
            feeds[output] = True
        for node in reversed(self.nodes[:max(outputs) + 1]):
            if feeds[node.id]:
                for i in node.inputs:
                    feeds[i] = True
        return feeds

    def fed_by(self, sources: Iterable[int], stop: int, copies: dict[int, int] | None = None) -> list[bool]:
        """For each node up to `stop`, whether it is one of `sources` or is computed from one; nodes after
        `stop` are left False. `copies`: leaves holding an earlier node's value (a row chunk's, Plan.copies)."""
        fed = [False] * len(self.nodes)
        sources = list(sources)
        for s in sources:
            fed[s] = True
        for node in self.nodes[min(sources, default=stop + 1):stop + 1]:
            if node.op is not None and not fed[node.id]:
                fed[node.id] = any([fed[i] for i in node.inputs])
            elif copies and node.id in copies:
                fed[node.id] = fed[node.id] or fed[copies[node.id]]
        return fed

    def between(self, sources: Iterable[int], output: int) -> list[Node]:
        """The nodes that are computed from `sources` (or are one) and that
        `output` is computed from, in tape order: what a change of the sources moves, and what a
        derivative flows through. (A path from a source into `output` runs through such nodes alone.)"""
        fed, moved = set(sources), []
        for node in self.nodes[min(fed, default=output + 1):output + 1]:
            if node.id in fed or node.op is not None and not fed.isdisjoint(node.inputs):
                fed.add(node.id)
                moved.append(node)
        feeds, kept = {output}, []
        for node in reversed(moved):
            if node.id in feeds:
                kept.append(node)
                feeds.update(node.inputs)
        return kept[::-1]

    @staticmethod
    def repeats(nodes: Iterable[Node], keep: Iterable[int] = ()) -> dict[int, int]:
        """Among `nodes` (in tape order), each op node that computes what an
        earlier one does — the same op with the same parameters on the same
        inputs, or on inputs that are themselves repeats — mapped to that
        earlier node: `(A @@ w).tanh + (A @@ w).exp` computes `A @@ w` twice.
        Their values are equal, so are their derivatives: a sweep computes
        them once (and the recorded gradient sums the two paths' cotangents
        before the product's rule, one product instead of two). Nodes in
        `keep` (the values differentiated by, the seeds) are never merged:
        a derivative by one of them follows the paths through it alone.
        Parameters that cannot be compared as a key (arrays) merge nothing."""
        keep = set(keep)
        first: dict[tuple, int] = {}
        same: dict[int, int] = {}
        for node in nodes:
            if node.op is None or node.id in keep:
                continue
            try:
                key = (node.op.name, *[same.get(i, i) for i in node.inputs])
                if node.params:
                    key += tuple(sorted((k, comparable(v)) for k, v in node.params.items()))
                earlier = first.setdefault(key, node.id)
            except TypeError:  # an unhashable parameter
                continue
            if earlier != node.id:
                same[node.id] = earlier
        return same

    # --------------------------------------------------------- reverse mode

    @np.errstate(all="ignore")  # as a decorator, np.errstate costs half what a `with` costs
    def backward(self, output: int, wrt: list[int], diagnostics: Diagnostics | None = None,
                 observe: SweepObserver | None = None, cotangents: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """Reverse sweep: the gradient of the (scalar) output with respect to
        each node in `wrt`. Only nodes between `wrt` and the output are visited,
        and a vjp is evaluated only for inputs that lead back to a `wrt` node.
        `observe(node, g, k, gi)` is told of each contribution as it is made
        (`--explain`): node's adjoint g sent gi to its input number k.
        With `cotangents` (shape (k,) + the output's, any output), the sweep
        carries that batch of k cotangents at once, each op applying its
        statement to the batch (`Op.batched_vjp`), and each result has shape
        (k,) + the node's: k rows of the Jacobian. A `Diagonal` batch (rows of
        the identity) stays one through the ops with a rule for it
        (`diagonal_vjp`), and a result may be one. A sweep made again
        (unobserved, of the same output and `wrt`, batched or not) runs the
        loop written out as one function (`sweeps`), with the loop's bits:
        from the second time, or over many nodes once the loop has run it
        about as often as writing it costs (`sweeps_before_writing`)."""
        if cotangents is not None:
            reuse_freed_memory()
        needs = None
        written = self.sweeps.get(key := (output, tuple(wrt), cotangents is not None), 0) if observe is None else 0
        if callable(written):
            result = written(cotangents)
        else:
            needs = self.fed_by(wrt, output)
            if observe is None and written + 1 >= sweeps_before_writing(output + 1 - min(wrt, default=output + 1)):
                # from now on by the sweep written out, which gives the loop's bits
                written = self.sweeps[key] = written_sweep(self.nodes, output, wrt, needs, cotangents is not None)
                result = written(cotangents)
            else:
                result = self._sweep(output, wrt, needs, observe, cotangents)
                if observe is None:
                    self.sweeps[key] = written + 1
        # Finiteness is checked only when a gradient came out non-finite:
        # then a second, checking sweep finds the op that made it.
        if diagnostics is not None and not all([all_finite_unguarded(g) for g in result.values()]):
            births = Births(self.nodes)
            self._sweep(output, wrt, needs or self.fed_by(wrt, output), births.reverse, cotangents)
            births.warn(diagnostics)  # the first op, sweeping back from the output
        return result

    def _sweep(self, output: int, wrt: list[int], needs: list[bool],
               observe: SweepObserver | None, cotangents: np.ndarray | None = None) -> dict[int, np.ndarray]:
        """The reverse loop; `observe`, if given, sees every contribution.
        An adjoint is dropped once its node has passed it on, and a residual
        once its vjp has used it. Contributions meeting at a node are summed
        in place into a sum the sweep made itself (never into a cotangent a
        vjp returned, which may be another adjoint passed on unchanged, or a
        view of one). A batch of `cotangents` goes through each op's
        statement, which reads no residual: the residuals stay for the next
        batch; a Diagonal one is made an array where an op has no rule for
        it, and for an observer."""
        nodes = self.nodes
        if observe is not None and type(cotangents) is Diagonal:
            cotangents = cotangents.dense()
        lowest = min(wrt, default=output + 1)
        grads: dict[int, np.ndarray] = {}
        # Nodes whose adjoint is a sum this sweep allocated, which nothing else
        # holds until the node passes it on; no contribution comes after that.
        sums: set[int] = set()
        ndarray, in_place = np.ndarray, IN_PLACE_ENTRIES
        batched = cotangents is not None
        if needs[output]:
            grads[output] = cotangents if batched else np.ones_like(nodes[output].value)
        wanted = set(wrt)
        for node in reversed(nodes[lowest:output + 1]):
            g = grads.get(node.id) if node.id in wanted else grads.pop(node.id, None)
            if g is None or node.op is None:
                continue
            op, args = node.op, [nodes[i].value for i in node.inputs]
            keeps = op.fwd is not None and not batched
            vjp, out, params = op.batched_vjp if batched else op.vjp, node.value, \
                rule_params(node, args) if keeps else node.params
            for k, i in enumerate(node.inputs):
                if not needs[i]:
                    continue
                gi = diagonal_vjp(op, k, g, out, args, params) if type(g) is Diagonal else None
                if gi is None:
                    g = dense(g)
                    gi = vjp(k, g, out, *args, **params)
                if observe is not None:
                    observe(node, g, k, gi)
                if i not in grads:
                    grads[i] = gi
                elif i in sums and type(gi) is ndarray:  # a number (a scalar's gradient) is added below
                    np.add(grads[i], gi, out=grads[i])
                elif i in sums and type(gi) is Diagonal:
                    gi.add_into(grads[i])
                else:
                    total = grads[i] = added(grads[i], gi)
                    if type(total) is ndarray and total.size >= in_place:  # not worth it below
                        sums.add(i)
            if keeps:
                node.residual.data = None  # handed to the vjp, which may have written into it
        if batched:
            return {w: grads[w] if w in grads else np.zeros(cotangents.shape[:1] + nodes[w].value.shape) for w in wrt}
        return {w: grads.get(w, np.zeros_like(nodes[w].value)) for w in wrt}

    # ------------------------------------------------- recorded reverse mode

    def backward_graph(self, output: int, wrt: list[int], diagnostics: Diagnostics | None = None,
                       checked: list[int] | None = None) -> dict[int, int]:
        """Reverse sweep that records instead of computing: for each node in
        `wrt`, the id of a node on this tape whose value is the gradient of
        the (scalar) output, built from the table's ops by each op's graph
        statement (`Op.derivative`) without identity work (emitter.py), so it
        can be differentiated again (to any order: every statement is made of
        ops with one). It visits the same nodes as `backward`; contributions
        meeting at a node are summed by `add` nodes. Each recorded node has
        the span of the op whose rule made it, its label the rule (`∂log/∂x`).
        With `diagnostics`, each rule's result is checked (where one is born
        not finite, it warns); `checked` is given their ids (a kept run's
        replay computes them: `Run.reading`)."""
        needs, nodes = self.fed_by(wrt, output), self.nodes
        start, lowest, out_node = len(nodes), min(wrt, default=output + 1), nodes[output]
        # A repeated computation's cotangents go to its first occurrence, whose rule runs once for both.
        same = self.repeats(self.between(wrt, output), keep=[*wrt, output])
        # A warning about a merged rule names the last occurrence: the one a sweep of the repeats met first.
        met_first = {i: j for j, i in same.items()}
        adjoints: dict[int, int] = {}
        if needs[output]:
            adjoints[output] = self.leaf(np.ones(out_node.shape), "const", out_node.span, fixed=True).id
        wanted = set(wrt)
        shared = Shared(frozenset([*wrt, output]))  # this recording's emitters
        births = Births(nodes) if diagnostics is not None else None
        results: list[int] = []  # the rules' results, checked
        for node in reversed(nodes[lowest:output + 1]):
            g = adjoints.get(node.id) if node.id in wanted else adjoints.pop(node.id, None)
            if g is None or node.op is None:
                continue
            for k, i in enumerate(node.inputs):
                if not needs[i]:
                    continue
                emit = Emitter(self, node.span, rule_label(node, k), shared)
                gi = node.op.derivative(k, g, node.id, *node.inputs, emit=emit, **node.params)
                if gi is None:  # a derivative that is 0 (stopGradient, a mask)
                    continue
                if births is not None:
                    results.append(gi)
                    if not nodes[gi].finite:  # (`finite` is kept: a node's result is read once)
                        births.reverse(nodes[met_first.get(node.id, node.id)], nodes[g].value, k, nodes[gi].value)
                i = same.get(i, i)
                if i in adjoints:
                    gi = Emitter(self, nodes[i].span, f"Σ∂ {nodes[i].name or nodes[i].label}", shared)(
                        "add", [adjoints[i], gi])
                adjoints[i] = gi
        if births is not None:
            births.warn(diagnostics)  # the first op, sweeping back from the output
        grads = {w: adjoints[w] if w in adjoints else self.leaf(np.zeros(nodes[w].shape), "const", nodes[w].span,
                                                                 fixed=True).id for w in wrt}
        # A result no gradient reads (a derivative into a comparison's) stays, for a replay to check as this
        # did, unless it is of constants alone (a seed's ones broadcast), which hold the values checked now.
        if results:
            moving = self.fed_by([n.id for n in nodes if n.op is None and not n.fixed], len(nodes) - 1)
            results = [i for i in results if moving[i]]
        grads, moved = unread_dropped(self, start, grads, results)
        if checked is not None:
            checked += [moved.get(i, i) for i in results]
        if self.deferral is not None and moved:  # its nodes moved down: it computes them from there, each quietly
            self.deferral.done = min(self.deferral.done, start)
            self.deferral.quiet = {i for i in self.deferral.quiet if i < start} | set(moved.values())
        return grads


def made_by_rule(node: Node) -> bool:
    """Whether a node was recorded by a derivative rule (`backward_graph`):
    part of a backward pass, which `dot` draws as such."""
    return node.label.startswith(("∂", "Σ∂"))
