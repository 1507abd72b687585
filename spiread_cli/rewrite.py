"""Graph rewrites: a recorded tape, specialised to one output and its
gradient, with slow patterns replaced by fused ops (spiread_cli/ops.py).

`fuse(tape, output, wrt)` is a pass: it returns a new tape (the node list
copied, the arrays shared) and leaves the caller's as written, as a JAX
transformation returns a new jaxpr. The new tape holds only what the output
and the gradients with respect to `wrt` need, renumbered; `Fused` says where
the output and the `wrt` nodes went. It assumes what `train` guarantees:
between replays only the `wrt` leaves change.

The rules, each proved equal to the unfused path in tests/test_rewrite.py:

- `onehot @@ W` with a constant one-hot matrix is a row gather `W[labels]`,
  whose backward is a scatter-add (`gatherRows`).
- `exp` → `normaliseRowsL1` is `softmaxRows`, computed stably.
- `select(rows, cols)` → `mapRowsToScalar(sum)`, one pick per row, is the
  gather `arrange`.
- A row-wise op (`Op.row_wise`) of a row gather is the gather of the row-wise
  op, computed on the smaller source: `softmax(W[labels]) = softmax(W)[labels]`.
  Applied only when the gather makes more rows than its source has.
- A pick from a row gather is a pick from its source.
- `softmaxRows` → pick → `log` → `mean` (and `logSoftmaxRows` → pick →
  `mean`) is the mean log-likelihood, computed with log-sum-exp
  (`meanLogSoftmaxPick`).

A rewrite only fuses nodes whose values nothing else needs: an interior node
that is the output, a `wrt` node, or used twice blocks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .ops import OPS
from .diagnostics import Diagnostics
from .tape import Tape
from .tape_nodes import Node


@dataclass
class Fused:
    tape: Tape          # a new tape; the one given to `fuse` is unchanged
    output: int         # the output's id on it
    wrt: list[int]      # the `wrt` nodes' ids on it, in the order given


def fuse(tape: Tape, output: int, wrt: list[int], hoist: bool = True,
         diagnostics: Diagnostics | None = None, compute: bool = True) -> Fused:
    """A new tape for computing `output` and its gradient with respect to the
    nodes `wrt`, with the fused rewrites applied, and computed (warning in
    `diagnostics`): the nodes the rewrites made and those the given tape had
    not computed; the others share its values. It reads the values of leaves
    only, so the op nodes of a tape recorded with `Tape.defer` stay
    uncomputed. With `compute=False` the nodes without a value are left for
    the caller to replay (a chunk's first share, with its own diagnostics).
    `hoist=False` keeps every gather where it was written (the benchmarks
    measure both)."""
    copy = Tape([node.copy(residual=None) for node in tape.nodes[:max([output, *wrt]) + 1]], tape.source)
    rewriter = Rewriter(copy, output, set(wrt), hoist)
    rewriter.run()
    needed = copy.feeding(output)
    for i in wrt:  # a `wrt` node the output does not read is kept, with what it is computed from
        if not needed[i]:
            needed = [a or b for a, b in zip(needed, copy.feeding(i))]
    kept = [node for node in copy.nodes if needed[node.id]]
    where = {node.id: new_id for new_id, node in enumerate(kept)}
    for node in kept:
        node.id, node.inputs = where[node.id], tuple(where[i] for i in node.inputs)
    fused = Tape(kept, tape.source)
    # What a rewritten or uncomputed node feeds is computed anew too (a fused
    # softmax's `log` is finite where the unfused one's was not).
    fed = fused.fed_by([node.id for node in kept if node.op is not None and node.value is None], len(kept) - 1)
    for node in kept:
        if fed[node.id]:
            node.value = None
    if compute:  # so backward may run before the next replay
        fused.replay([node for node in kept if node.value is None], diagnostics)
    return Fused(fused, where[output], [where[i] for i in wrt])


class Rewriter:
    def __init__(self, tape: Tape, output: int, wrt: set[int], hoist: bool = True):
        self.tape = tape
        self.nodes = tape.nodes
        self.hoist = hoist
        self.output = output
        self.wrt = wrt
        self.users: list[int] = []

    def run(self) -> None:
        local = (self.onehot_matmul, self.exp_normalise, self.select_row_sum)
        # Fuse each pattern where it was written first, so that hoisting moves
        # whole fused ops (a softmax) rather than their pieces.
        for rules in (local, local + (self.hoist_row_wise, self.pick_of_gather, self.log_likelihood)):
            changed = True
            while changed:
                self.count_users()
                changed = False
                for node in self.nodes[:self.output + 1]:
                    if node.op is not None and self.live[node.id] and any(rule(node) for rule in rules):
                        changed = True
                        self.count_users()

    # ------------------------------------------------------------ helpers

    def count_users(self) -> None:
        """How many live nodes read each node (the output counts as a user of itself)."""
        self.live = self.tape.feeding(self.output)
        users = [0] * len(self.nodes)
        for node in self.nodes:
            if self.live[node.id]:
                for i in node.inputs:
                    users[i] += 1
        users[self.output] += 1
        self.users = users

    def fusable(self, i: int, op_name: str | None = None) -> Node | None:
        """Node `i`, if it is an op node (named `op_name`) whose value only one
        node reads and nobody asked for."""
        node = self.nodes[i]
        if node.op is None or (op_name and node.op.name != op_name):
            return None
        if self.users[i] != 1 or i in self.wrt or i == self.output:
            return None
        return node

    def replace(self, node: Node, op_name: str, inputs: tuple[int, ...], params: dict, label: str) -> bool:
        node.op, node.inputs, node.params, node.label = OPS[op_name], inputs, params, label
        node.value = None  # the old op's (a node a rewrite keeps computes what it did; this one is computed anew)
        node.shape = node.op.shape(*(self.nodes[i].shape for i in inputs), **params)  # values are stale until replayed
        return True

    def fixed(self, i: int) -> bool:
        """A leaf whose value stays as it is between replays."""
        node = self.nodes[i]
        return node.op is None and i not in self.wrt and node.value is not None

    # -------------------------------------------------------------- rules

    def onehot_matmul(self, node: Node) -> bool:
        if node.op.name != "matmul" or not self.fixed(node.inputs[0]):
            return False
        a = self.nodes[node.inputs[0]].value
        if a.ndim != 2 or len(self.nodes[node.inputs[1]].shape) != 2:
            return False
        labels = one_hot_labels(a)
        if labels is None:
            return False
        return self.replace(node, "gatherRows", (node.inputs[1],), {"index": labels}, "gather rows (one-hot @@)")

    def exp_normalise(self, node: Node) -> bool:
        if node.op.name != "normaliseRowsL1":
            return False
        exp = self.fusable(node.inputs[0], "exp")
        if exp is None:
            return False
        return self.replace(node, "softmaxRows", exp.inputs, {}, "softmax (exp → normaliseRowsL1)")

    def select_row_sum(self, node: Node) -> bool:
        if node.op.name != "rowSum":
            return False
        select = self.fusable(node.inputs[0], "select")
        if select is None:
            return False
        rows, cols = select.params["rows"], select.params["cols"]
        m = self.nodes[select.inputs[0]].shape[0]
        rows = np.where(rows < 0, rows + m, rows)
        if len(rows) != m or not np.array_equal(np.sort(rows), np.arange(m)):
            return False  # only one pick in every row makes the row sum that pick
        picked = np.empty(m, dtype=np.intp)
        picked[rows] = cols
        return self.replace(node, "arrange", select.inputs, {"rows": np.arange(m), "cols": picked},
                            "pick (select → mapRowsToScalar(sum))")

    def hoist_row_wise(self, node: Node) -> bool:
        if not self.hoist or not node.op.row_wise or node.params:
            return False
        gather = self.fusable(node.inputs[0], "gatherRows")
        if gather is None:
            return False
        index = gather.params["index"]
        if len(index) <= self.nodes[gather.inputs[0]].shape[0]:
            return False  # it pays only when the gather makes more rows than its source has
        # The gather's slot, which precedes this node, now holds the row-wise op.
        self.replace(gather, node.op.name, gather.inputs, {}, f"{node.label} (before the gather)")
        return self.replace(node, "gatherRows", (gather.id,), {"index": index}, "gather rows")

    def pick_of_gather(self, node: Node) -> bool:
        if node.op.name != "arrange":
            return False
        gather = self.fusable(node.inputs[0], "gatherRows")
        if gather is None or len(self.nodes[gather.inputs[0]].shape) != 2:
            return False
        rows = gather.params["index"][node.params["rows"]]
        return self.replace(node, "arrange", gather.inputs, {"rows": rows, "cols": node.params["cols"]},
                            "pick (through the gather)")

    def log_likelihood(self, node: Node) -> bool:
        if node.op.name != "mean":
            return False
        inner = self.fusable(node.inputs[0])
        if inner is not None and inner.op.name == "log":
            pick = self.fusable(inner.inputs[0], "arrange")
            source = "softmaxRows"
        else:
            pick, source = (inner, "logSoftmaxRows") if inner is not None and inner.op.name == "arrange" else (None, "")
        if pick is None or len(pick.params["rows"]) == 0:
            return False
        soft = self.fusable(pick.inputs[0], source)
        if soft is None or len(self.nodes[soft.inputs[0]].shape) != 2:
            return False
        m, k = self.nodes[soft.inputs[0]].shape
        rows, cols = pick.params["rows"], pick.params["cols"]
        params = {"rows": np.where(rows < 0, rows + m, rows), "cols": np.where(cols < 0, cols + k, cols)}
        return self.replace(node, "meanLogSoftmaxPick", soft.inputs, params,
                            f"mean log-likelihood ({source} → pick → mean)")


def one_hot_labels(a: np.ndarray) -> np.ndarray | None:
    """The column of the single 1 in each row of `a`, if `a` is one-hot."""
    if a.shape[1] == 0:
        return None
    labels = np.argmax(a, axis=1)
    rows = np.arange(a.shape[0])
    if not np.all(a[rows, labels] == 1.0) or np.count_nonzero(a) != a.shape[0]:
        return None
    return labels
