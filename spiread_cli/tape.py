"""The tape: a flat, topologically ordered list of nodes, and the sweeps over it.

A program is recorded once; evaluation order is tape order, so the reverse
sweep is a plain loop backwards over the nodes (micrograd's topological sort
comes for free). The same tape can be replayed forward with new leaf values,
which is how `train` runs without re-parsing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .diagnostics import Diagnostics, Span
from .ops import Op


@dataclass(slots=True, eq=False)
class Node:
    id: int
    kind: str                     # "input" (a bound leaf), "const" (an unnamed literal) or "op"
    op: Op | None
    inputs: tuple[int, ...]
    params: dict
    value: np.ndarray
    span: Span | None             # where diagnostics about this node point
    text: str                     # the source text that produced it
    label: str                    # how the op is written: `log`, `@@`, `select`; the value for a leaf
    name: str | None = None       # the name it is bound to, if any
    known_finite: bool | None = None  # cache for `finite`; None until someone asks

    @property
    def finite(self) -> bool:
        """Every entry is finite. Computed when first asked, so a replay that
        nobody inspects pays no extra pass over its values."""
        if self.known_finite is None:
            self.known_finite = all_finite(self.value)
        return self.known_finite

    @finite.setter
    def finite(self, value: bool) -> None:
        self.known_finite = value


def all_finite(value: np.ndarray) -> bool:
    # A sum is finite exactly when every entry is, unless it overflows; only
    # then is the full elementwise check needed. This keeps the check to one
    # cheap pass over large arrays.
    with np.errstate(over="ignore", invalid="ignore"):
        return _all_finite(value)


def _all_finite(value: np.ndarray) -> bool:
    """all_finite for callers already inside np.errstate(all="ignore"): the
    sweeps, where this check runs once per node and its overhead counts."""
    return math.isfinite(value.sum()) or bool(np.isfinite(value).all())


def first_bad(value: np.ndarray) -> tuple[int, tuple[int, ...], float]:
    """How many entries are not finite, where the first is, and what it is."""
    bad = ~np.isfinite(value)
    where = tuple(int(i) for i in np.argwhere(bad)[0]) if value.ndim else ()
    return int(bad.sum()), where, float(value[where])


def describe_nonfinite(what: str, value: np.ndarray, inputs: list[np.ndarray]) -> str:
    count, where, bad = first_bad(value)
    ins = [x for x in inputs if x.shape == value.shape]
    if value.ndim == 0:
        message = f"{what} gave {_fmt_float(bad)}"
        return message + (f"; its input was {_fmt_float(float(ins[0]))}" if len(ins) == 1 else "")
    message = f"{what} gave {_fmt_float(bad)} at {count} of {value.size} entries, first at {list(where)}"
    if len(ins) == 1:
        message += f"; its input was {_fmt_float(float(ins[0][where]))} there"
    return message


def _fmt_float(x: float) -> str:
    return f"{x:g}"


@dataclass
class Tape:
    nodes: list[Node] = field(default_factory=list)

    def leaf(self, value: np.ndarray, kind: str, span: Span | None, text: str, name: str | None = None) -> Node:
        node = Node(len(self.nodes), kind, None, (), {}, value, span, text, text, name)
        self.nodes.append(node)
        return node

    def apply(self, op: Op, inputs: tuple[int, ...], params: dict, span: Span | None, text: str,
              label: str, diagnostics: Diagnostics) -> Node:
        node = Node(len(self.nodes), "op", op, inputs, params, None, span, text, label)
        self.nodes.append(node)
        with np.errstate(all="ignore"):
            self._compute(node, diagnostics)
        return node

    def _compute(self, node: Node, diagnostics: Diagnostics | None) -> None:
        """Evaluate one op node; the caller holds np.errstate(all="ignore")."""
        nodes = self.nodes
        args = [nodes[i].value for i in node.inputs]
        value = node.op.impl(*args, **node.params)
        if type(value) is not np.ndarray or value.dtype != np.float64:
            value = np.asarray(value, dtype=np.float64)
        node.value = value
        if diagnostics is None:
            node.known_finite = None  # found out if anyone asks
            return
        node.known_finite = _all_finite(value)
        if not node.known_finite and all([nodes[i].finite for i in node.inputs]):
            diagnostics.warn(describe_nonfinite(f"`{node.label}`", value, args), node.span)

    def replay(self, diagnostics: Diagnostics | None = None, start: int = 0, stop: int | None = None) -> None:
        """Recompute the op nodes from `start` up to (not including) `stop`
        from the current leaf values."""
        compute = self._compute
        with np.errstate(all="ignore"):
            for node in self.nodes[start:stop]:
                if node.op is not None:
                    compute(node, diagnostics)

    def feeding(self, output: int) -> list[bool]:
        """For each node, whether `output` is computed from it (itself included)."""
        feeds = [False] * len(self.nodes)
        feeds[output] = True
        for node in reversed(self.nodes[:output + 1]):
            if feeds[node.id]:
                for i in node.inputs:
                    feeds[i] = True
        return feeds

    def fed_by(self, sources: list[int], stop: int) -> list[bool]:
        """For each node up to `stop`, whether it is one of `sources` or is
        computed from one; nodes after `stop` are left False."""
        fed = [False] * len(self.nodes)
        for s in sources:
            fed[s] = True
        for node in self.nodes[min(sources, default=stop + 1):stop + 1]:
            if node.op is not None and not fed[node.id]:
                fed[node.id] = any([fed[i] for i in node.inputs])
        return fed

    def backward(self, output: int, wrt: list[int], diagnostics: Diagnostics | None = None) -> dict[int, np.ndarray]:
        """Reverse sweep: the gradient of the (scalar) output with respect to
        each node in `wrt`. Only nodes between `wrt` and the output are visited,
        and a vjp is evaluated only for inputs that lead back to a `wrt` node."""
        needs = self.fed_by(wrt, output)
        with np.errstate(all="ignore"):
            result = self._sweep(output, wrt, needs, None)
            # Finiteness is checked only when a gradient came out non-finite:
            # then a second, checking sweep finds the op that made it.
            if diagnostics is not None and not all(_all_finite(g) for g in result.values()):
                births: list = []
                self._sweep(output, wrt, needs, births)
                if births:
                    node, gi, args = births[0]  # the first op, sweeping back from the output, to make one
                    diagnostics.warn(describe_nonfinite(f"the derivative of `{node.label}`", gi, args), node.span)
        return result

    def _sweep(self, output: int, wrt: list[int], needs: list[bool], births: list | None) -> dict[int, np.ndarray]:
        """The reverse loop. With a `births` list, also record each (node,
        gradient, inputs) whose vjp turned finite values into non-finite ones."""
        nodes = self.nodes
        lowest = min(wrt, default=output + 1)
        grads: dict[int, np.ndarray] = {}
        if needs[output]:
            grads[output] = np.ones_like(nodes[output].value)
        wanted = set(wrt)
        for node in reversed(nodes[lowest:output + 1]):
            g = grads.get(node.id) if node.id in wanted else grads.pop(node.id, None)
            if g is None or node.op is None:
                continue
            args = [nodes[i].value for i in node.inputs]
            vjp, out, params = node.op.vjp, node.value, node.params
            check = births is not None and node.finite and _all_finite(g)
            for k, i in enumerate(node.inputs):
                if not needs[i]:
                    continue
                gi = vjp(k, g, out, *args, **params)
                if check and not _all_finite(gi):
                    births.append((node, gi, args))
                grads[i] = gi if i not in grads else grads[i] + gi
        return {w: grads.get(w, np.zeros_like(nodes[w].value)) for w in wrt}
