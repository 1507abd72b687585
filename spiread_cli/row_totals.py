"""The sum over row chunks as an op: where a driver's tape meets the chunks'.

A program that runs by row chunks (spiread_cli/chunk_plan.py) is f(r(w), w):
totals r_k, each the sum over row chunks of one chunk tape's output (a
`.sum` or `.mean` of the rows), and what follows them. The driver's tape is
the program's own tape without its row data, each total that moves with the
values differentiated by (w) an op node whose operands are those values:

| rule | `rowsTotal` r_k(w) | `rowsGradient` ∂r_k/∂w (every w_i's, flat) |
|---|---|---|
| value | Σ chunks' outputs | Σ chunks' reverse sweeps |
| vjp, operand j | g · ∂r_k/∂w_j | Σ_i ∂⟨∂r_k/∂w_i, g_i⟩/∂w_j: the jvp below along g, read at w_j (the Hessian is symmetric) |
| jvp | Σ chunks' forward sweeps | Σ chunks' HVPs along the tangents (one pass gives every w_j's, kept by its tangents) |
| statement | mul(g, w_j's part of rowsGradient_k(w)), the node recorded once | (third derivatives are refused) |
| batched vjp (Jacobians) | each g · ∂r_k/∂w_j | the jvp along the batch: one pass for it and every operand |
| structure (sparsity) | the union of the chunks' gradient and Hessian patterns | conservative |
| export | refused, naming the data (they are never whole) | |

Every rule is the chunk tape's own sweep, run per chunk and added up by the
`RowSums` the node's parameters hold (dask_backend.ChunkSums schedules them
on Dask); the driver's tape then runs its own sweeps, observers and messages
over these nodes as over any other. So every task — gradients in either
mode, `--explain`, `dot`, check of both orders, Hessians and HVPs (dense and
sparse, and their patterns), Jacobians, training with any optimizer — works
on the driver's `Run` as on the numpy backend's, and never learns which is
below it. A value one pass computes (the totals with
their gradients) is kept for the values it was computed at, so a training
step is one pass over the data and each HVP one more.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from .diagnostics import Diagnostic, Diagnostics, SpireadError, option
from .ops import Export, Op
from .rules import IMPLS, OPS
from .run import Run
from .structure import Entries, Links, Structure, whole
from .tape import Tape

TOTAL, GRADIENT = "rowsTotal", "rowsGradient"


class RowSums(Protocol):
    """Sums over row chunks of the chunks' tapes and their sweeps, at the
    values `values` (name -> array) of the names the chunks are
    differentiated by; `total` numbers the totals, in tape order. `data`:
    the names of the row data, for messages."""
    data: list[str]

    def total(self, total: int, values: dict[str, np.ndarray]) -> np.ndarray: ...

    def gradient(self, total: int, name: str, values: dict[str, np.ndarray]) -> np.ndarray: ...

    def jvp(self, total: int, values: dict[str, np.ndarray], tangents: dict[str, np.ndarray]) -> np.ndarray:
        """The total along each of a batch of tangents (leading axis)."""

    def gradient_jvp(self, total: int, name: str, values: dict[str, np.ndarray],
                     tangents: dict[str, np.ndarray]) -> np.ndarray:
        """∂r/∂name along each of a batch of tangents (one pass gives every
        name's: the Hessian's products with the tangents)."""

    def reports(self) -> list[Diagnostic]:
        """The warnings the chunks gave since last asked."""

    def patterns(self, total: int) -> tuple:
        """The sparsity patterns of the total by the entries of every name, in
        order (spiread_cli/sparsity.py): its gradient's, 1 × n, and its
        Hessian's, n × n (scipy arrays whose nonzeros are the pattern)."""

    def entries(self, name: str) -> slice:
        """Where a name's entries are among every name's, in order."""


class KeptSums:
    """What RowSums implementations share: the values each name was last
    given (a total's operands are the names defined before it, so the
    others keep theirs), one pass's totals and gradients at those values
    (`at`: `evaluate(values)` -> an object with `totals`, `grads` (per total,
    name -> gradient) and `warnings`), and the derivatives computed at
    them (`kept`), so the driver's nodes read one pass in any order."""

    def __init__(self, values: dict[str, np.ndarray], first):
        self.at_values = {name: np.array(v) for name, v in values.items()}
        self.pass_, self.pending = first, list(first.warnings)
        self.derivatives: dict = {}  # (kind, …) -> a pass's result at `at_values`

    def evaluate(self, values: dict[str, np.ndarray]):
        raise NotImplementedError

    def at(self, values: dict[str, np.ndarray]):
        kept = self.at_values
        changed = {name: np.array(value) for name, value in values.items()
                   if np.shape(kept[name]) != np.shape(value) or not np.array_equal(kept[name], value)}
        if changed:
            self.at_values = self.at_values | changed
            self.pass_ = self.evaluate(self.at_values)
            self.pending, self.derivatives = list(self.pass_.warnings), {}
        return self.pass_

    def kept(self, key: tuple, values: dict[str, np.ndarray], compute):
        """`compute()`'s result at `values`, computed once (one of each kind kept)."""
        self.at(values)
        if key not in self.derivatives:
            self.derivatives = {k: v for k, v in self.derivatives.items() if k[0] != key[0]}
            self.derivatives[key] = compute()
        return self.derivatives[key]

    def total(self, total: int, values):
        return self.at(values).totals[total]

    def gradient(self, total: int, name: str, values):
        return self.at(values).grads[total][name]

    def reports(self) -> list[Diagnostic]:
        reported, self.pending = self.pending, []
        return reported

    def entries(self, name: str) -> slice:
        start = 0
        for other, value in self.at_values.items():
            if other == name:
                return slice(start, start + value.size)
            start += value.size
        raise KeyError(name)


def tangent_key(kind: str, *parts, tangents: dict[str, np.ndarray]) -> tuple:
    return (kind, *parts, tuple((n, t.shape, t.tobytes()) for n, t in tangents.items()))


def names_to_differentiate(probe: Run, row: list[bool], wrt: list[str] | None) -> list[str]:
    """`wrt`, or by default the names the output depends on but the row
    data (whose gradients would be as large as the data: a warning says so)."""
    if wrt:
        return list(probe.wrt_ids(wrt, scalar=False))  # the task asks for a scalar if it needs one
    default = probe.default_wrt()
    rows = [n for n in default if row[probe.bindings[n]]]
    kept = [n for n in default if n not in rows]
    if rows:
        listed = ", ".join(f"`{n}`" for n in rows)
        if not kept:
            raise SpireadError(f"nothing to differentiate by: the output `{probe.output_name}` depends only on "
                               f"the row data {listed}, whose gradients would be as large as the data",
                               probe.tape.nodes[probe.output].span,
                               [f"name a value to differentiate by: {option('wrt', 'NAME')}"])
        probe.diagnostics.warn(f"the row data {listed} are left out of what is differentiated by: their gradients "
                               "would be as large as the data", probe.binding_spans.get(rows[0]),
                               [f"differentiating by {', '.join(f'`{n}`' for n in kept)}; name others with "
                                f"{option('wrt', 'NAME')}"])
    return list(probe.wrt_ids(kept, scalar=False)) if kept else []


def _values(names: tuple[str, ...], ws) -> dict[str, np.ndarray]:
    return dict(zip(names, ws))


def _tangents(names: tuple[str, ...], ts) -> dict[str, np.ndarray]:
    return {name: t for name, t in zip(names, ts) if t is not None}


def _total(*ws, sums: RowSums, total: int, names: tuple[str, ...]) -> np.ndarray:
    return np.asarray(sums.total(total, _values(names, ws)), dtype=np.float64)


def _total_vjp(i, g, out, *ws, sums: RowSums, total: int, names: tuple[str, ...]):
    return g * sums.gradient(total, names[i], _values(names, ws))


def _total_batched_vjp(i, g, out, *ws, sums: RowSums, total: int, names: tuple[str, ...]):
    """For a batch of cotangents g (k,): each times the gradient (a Jacobian's rows)."""
    gradient = sums.gradient(total, names[i], _values(names, ws))
    return np.multiply.outer(g, gradient)


def _total_jvp(ts, out, *ws, sums: RowSums, total: int, names: tuple[str, ...]):
    return sums.jvp(total, _values(names, ws), _tangents(names, ts))


def _total_derivative(i, g, out, *ws, emit, sums: RowSums, total: int, names: tuple[str, ...]):
    """g · ∂r/∂w_i, read from one node holding every operand's gradient,
    flat, recorded once for all of them (`Emitter.once`): a sweep back
    through the recorded gradient meets that one node, so it makes one pass
    over the chunks however many values the total depends on."""
    sizes = [math.prod(emit.shape(w)) for w in ws]
    start = sum(sizes[:i])
    every = emit.once((GRADIENT, out), lambda: emit(GRADIENT, list(ws), sums=sums, total=total, names=names))
    mine = emit("index", [every], key=(slice(start, start + sizes[i]),))
    return emit("mul", [g, emit("reshape", [mine], shape=emit.shape(ws[i]))])


def _gradient(*ws, sums: RowSums, total: int, names: tuple[str, ...]) -> np.ndarray:
    values = _values(names, ws)
    return np.concatenate([np.ravel(sums.gradient(total, name, values)) for name in names]).astype(np.float64)


def _directions(g: np.ndarray, ws, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """A batch of directions over every operand's entries, flat (k, Σ
    sizes), as tangents by name, each (k,) + its shape."""
    cuts = np.cumsum([0] + [np.size(w) for w in ws])
    return {name: g[:, a:b].reshape((len(g),) + np.shape(w)) for name, w, a, b in zip(names, ws, cuts, cuts[1:])}


def _gradient_vjp(j, g, out, *ws, sums: RowSums, total: int, names: tuple[str, ...]):
    return _gradient_batched_vjp(j, np.asarray(g)[None], out, *ws, sums=sums, total=total, names=names)[0]


def _gradient_batched_vjp(j, g, out, *ws, sums: RowSums, total: int, names: tuple[str, ...]):
    """For a batch of cotangents g (k, Σ sizes) of every operand's gradient:
    Σ_i ∂⟨∂r/∂w_i, g_i⟩/∂w_j is, the Hessian being symmetric, ∂(∂r/∂w_j)
    along the tangents g_i on every w_i: one pass over the chunks for the
    batch and every operand j (the pass is kept by its tangents)."""
    return sums.gradient_jvp(total, names[j], _values(names, ws), _directions(g, ws, names))


def _gradient_jvp(ts, out, *ws, sums: RowSums, total: int, names: tuple[str, ...]):
    values, tangents = _values(names, ws), _tangents(names, ts)
    along = [sums.gradient_jvp(total, name, values, tangents) for name in names]  # one pass, kept
    return np.concatenate([a.reshape(len(a), -1) for a in along], axis=1)


def _third(i, g, out, *ws, emit, sums: RowSums, total: int, names: tuple[str, ...]):
    raise SpireadError("third derivatives of a total over row chunks are not taken: each chunk's tape gives its "
                       "first and second derivatives only")


def _reports(sums: RowSums, **_) -> list[Diagnostic]:
    return sums.reports()


def _total_first(i: int, e: Entries) -> Links | None:
    """The entries of operand i the total depends on: the chunks' gradients' patterns."""
    sums, names = e.params["sums"], e.params["names"]
    gradient = sums.patterns(e.params["total"])[0][:, sums.entries(names[i])].tocoo()
    return Links.pairs((1, e.size(i)), np.zeros(gradient.nnz), gradient.col) if gradient.nnz else None


def _total_second(i: int, j: int, e: Entries, adj: np.ndarray) -> Links | None:
    """The entries of operands i and j that meet in its second derivative: the chunks' Hessians' patterns."""
    if not adj.any():
        return None
    sums, names = e.params["sums"], e.params["names"]
    block = sums.patterns(e.params["total"])[1][sums.entries(names[i]), :][:, sums.entries(names[j])].tocoo()
    return Links.pairs((e.size(i), e.size(j)), block.row, block.col) if block.nnz else None


def _not_exported(sums: RowSums, **_) -> tuple[str, list[str]]:
    data = ", ".join(f"`{name}`" for name in sums.data)
    return (f"it totals the rows of the data {data}, which are read a chunk at a time and never whole, and an "
            "exported module computes on every value it is given whole",
            [f"export with {option('backend', 'numpy')}; the module's functions take the data as arguments, Dask "
             "arrays too (docs/export.md)"])


def _define(name: str, impl, shape, derivative, vjp, jvp, batched_vjp, structure: Structure = whole()) -> Op:
    op = Op(name, impl, shape, derivative, vjp, jvp, methods=(), arity=0, reports=_reports, batched_vjp=batched_vjp,
            export=Export(None, None, refused=_not_exported), structure=structure)
    OPS.beyond[name], IMPLS.beyond[name] = op, impl  # found by name, not among the table's primitives
    return op


TOTAL_OP = _define(TOTAL, _total, lambda *shapes, **_: (), _total_derivative, _total_vjp, _total_jvp,
                   _total_batched_vjp, Structure("dense", _total_first, _total_second))
GRADIENT_OP = _define(GRADIENT, _gradient, lambda *shapes, **_: (sum(math.prod(s) for s in shapes),), _third,
                      _gradient_vjp, _gradient_jvp, _gradient_batched_vjp)


def driver_run(probe: Run, row: list[bool], moving: list[int], names: list[str], fixed: dict[int, np.ndarray],
               counts: list[int], rows: int, sums: RowSums, diagnostics: Diagnostics) -> Run:
    """The driver's run: `probe` (the program recorded on a few rows)
    without the nodes that hold one row per data row (`row`), each total of
    `moving` an op node (`rowsTotal`) of the values `names` defined before
    it, each total of `fixed` a constant holding its value, each row count
    of `counts` the number of rows; what they feed computed (warning in
    `diagnostics`). A binding that is row data is not among its bindings."""
    old = probe.tape.nodes
    where: dict[int, int] = {}
    nodes = []
    by_name = {name: probe.bindings[name] for name in names}
    for node in old:
        if row[node.id] and node.id not in moving:
            continue
        i = where[node.id] = len(nodes)
        if node.id in moving:
            operands = [n for n, b in by_name.items() if b < node.id]
            params = {"sums": sums, "total": moving.index(node.id), "names": tuple(operands)}
            new = node.copy(id=i, kind="op", op=TOTAL_OP, inputs=tuple(where[by_name[n]] for n in operands),
                            params=params, value=None, shape=(), residual=None)
        elif node.id in fixed:
            new = node.copy(id=i, kind="const", op=None, inputs=(), params={}, value=fixed[node.id])
        elif node.id in counts:
            new = node.copy(id=i, value=np.array(float(rows)))
        else:
            new = node.copy(id=i, inputs=tuple(where[k] for k in node.inputs), residual=None)
        nodes.append(new)
    tape = Tape(nodes, probe.tape.source)
    sources = [where[i] for i in [*moving, *fixed, *counts]]
    if sources:  # what the totals feed (every value shown, not only the output)
        fed = tape.fed_by(sources, len(nodes) - 1)
        tape.replay([n for n in nodes if fed[n.id]], diagnostics)
    bindings = {name: where[i] for name, i in probe.bindings.items() if i in where}
    backward = [n for n in probe.backward_wrt if n in bindings] if probe.backward_wrt else probe.backward_wrt
    return Run(probe.source, tape, bindings, probe.binding_spans, where[probe.output], probe.output_name, backward,
               diagnostics, probe.printed, {where[i]: v for i, v in probe.jets.items() if i in where})

