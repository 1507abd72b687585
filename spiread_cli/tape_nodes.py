"""What the tape is made of: its nodes (a value, or a deferred one computed
on first read, by tape.Deferral), an op's residual tied to its value, and
`compute`, the one call of an op's `impl`/`fwd` (float64 out), with the
finiteness tests every evaluation and sweep uses and the sweeps' observer
that finds where a non-finite derivative was born (`Births`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Iterable, Protocol

import numpy as np

from .diagnostics import Diagnostics, Span
from .ops import Op
from .rules_forward import lift
from .structure import COPIES


class Deferring(Protocol):
    """What a deferred node asks of its tape's `Deferral` (tape.py)."""

    def compute_through(self, stop: int) -> None: ...


@dataclass(slots=True, eq=False)
class Node:
    id: int
    kind: str                     # "input" (a bound leaf), "const" (an unnamed literal) or "op"
    op: Op | None
    inputs: tuple[int, ...]
    params: dict
    value: np.ndarray             # empty in a `DeferredNode` until read
    shape: tuple[int, ...]        # the value's, known before the value is
    span: Span | None             # where diagnostics about this node point; its source text is sliced from there
    label: str                    # how the op is written: `log`, `@@`, `select`; "input" or "constant" for a leaf
    #                               (or what a derivative statement calls its constant: `picks`)
    name: str | None = None       # the name it is bound to, if any
    known_finite: bool | None = None  # cache for `finite`; None until someone asks
    residual: Residual | None = None  # what its op's forward rule kept for the derivative rules (`Op.fwd`)
    deferred: Deferring | None = None  # set while the value waits to be computed (`Tape.defer`)
    fixed: bool = False           # a leaf whose value nothing ever sets again: a literal of the program or a
    #                               constant a derivative rule made (not data, which tasks set: simplify.py)

    @property
    def stored_value(self) -> np.ndarray | None:
        """The value if it has been computed, without computing it."""
        return None if self.deferred is not None else self.value

    def copy(self, **changes) -> Node:
        """A plain copy that shares the value if it is computed, and else
        has none (its new owner computes it); this node is left as it is."""
        kept = {f.name: getattr(self, f.name) for f in fields(Node) if f.name not in ("value", "deferred")}
        return Node(**(kept | {"value": self.stored_value} | changes))

    @property
    def finite(self) -> bool:
        """Every entry is finite. Computed when first asked, so a replay that
        nobody inspects pays no extra pass over its values."""
        if self.known_finite is None:
            self.known_finite = all_finite(self.value)
        return self.known_finite

    def born_inside(self) -> list:
        """The warnings the op says were born inside it (a total over row
        chunks reports its chunks'); none from an op that does not say."""
        return self.op.reports(**self.params) if self.op is not None and self.op.reports is not None else []

    def set_value(self, value: np.ndarray) -> None:
        self.value = value
        self.known_finite = None
        if self.deferred is not None:
            self.deferred = None
            self.__class__ = Node


class DeferredNode(Node):
    """A node recorded while its tape deferred (`Tape.defer`), whose value
    slot stays empty until it is read: reading it computes it, with every
    deferred node before it, and the node becomes a plain `Node` again. A
    class of its own because a `__getattr__` on `Node` would slow every
    attribute read of every node (the hook runs for all of them)."""

    __slots__ = ()

    def __getattr__(self, name: str):
        # Reached only for an empty slot.
        if name != "value" or self.deferred is None:
            raise AttributeError(f"'Node' object has no attribute {name!r}")
        self.deferred.compute_through(self.id)
        return self.value


@dataclass(slots=True, eq=False)
class Residual:
    """What an op's forward rule kept for its derivative rules (`Op.fwd`),
    valid for one value of its node only: `of` is that value, so a value
    set any other way (check's probes restoring the values they moved)
    never meets a stale residual. `data` is None once a reverse sweep has
    handed it to the vjp; the holder is shared by copies of the node (a
    fused tape's), so none of them uses what a vjp may have overwritten."""
    of: np.ndarray
    data: object


@np.errstate(over="ignore", invalid="ignore")  # as a decorator, np.errstate costs half what a `with` costs
def all_finite(value: np.ndarray) -> bool:
    # A sum is finite exactly when every entry is, unless it overflows; only
    # then is the full elementwise check needed. This keeps the check to one
    # cheap pass over large arrays.
    return all_finite_unguarded(value)


def all_finite_unguarded(value: np.ndarray) -> bool:
    """all_finite for callers already inside np.errstate(all="ignore"): the
    sweeps, where this check runs once per node and its overhead counts."""
    return math.isfinite(np.add.reduce(value, None)) or bool(np.isfinite(value).all())  # ndarray.sum, unwrapped


# Values of up to this many entries are checked together, concatenated.
FEW_ENTRIES = 1024


def all_finite_values(values: list[np.ndarray]) -> bool:
    """Whether every entry of `values` is finite, for a caller inside
    np.errstate(all="ignore"): the small values summed in one pass, the
    others one by one (a sum that overflows says no too: a replay given up
    where it need not be, never the other way)."""
    few = [value for value in values if value.size <= FEW_ENTRIES]
    if len(few) < len(values) and not all(all_finite_unguarded(value) for value in values
                                           if value.size > FEW_ENTRIES):
        return False
    return not few or math.isfinite(np.add.reduce(np.concatenate(few, axis=None), None))


def born_entries(op: Op | None, produced: np.ndarray, operands: list, finite: list[bool]) -> np.ndarray | None:
    """Where `produced`, not all finite, holds an inf or nan born there (a
    mask), or None where it only passes them on: the one answer to "was it
    born here?" for an op's value and for what its derivative rules make.
    `operands`: what it was made from (the op's operand values; for a
    derivative also the incoming (co)tangents, None for a zero one); `finite`:
    whether each is all finite. With every operand finite, each non-finite
    entry is born here. Otherwise an entrywise op (each entry from the same
    entry of each operand, broadcast) still makes those where every operand
    is finite (`1 / [0, -inf, 0]`); any other op mixes entries, so cannot tell."""
    bad = ~np.isfinite(produced)
    if all(finite):
        return bad
    if op is None or op.structure.kind != "elementwise" or type(produced) is not np.ndarray:
        return None
    for operand, ok in zip(operands, finite):
        if not ok:
            if type(operand) is not np.ndarray or not _broadcasts_to(operand.shape, bad.shape):
                return None
            bad &= np.isfinite(operand)
    return bad if bad.any() else None


def _broadcasts_to(shape: tuple, to: tuple) -> bool:
    """Whether an array of `shape` broadcasts to `to` (a batch of cotangents
    summed to an operand's shape may not, nor its operand's batch)."""
    try:
        return np.broadcast_shapes(shape, to) == to
    except ValueError:
        return False


@np.errstate(over="ignore", invalid="ignore")  # a recorded sweep calls it outside the numeric sweeps' error state
def derivative_born(node: Node, nodes: list[Node], incoming: Iterable[np.ndarray | None],
                    produced: np.ndarray) -> np.ndarray | None:
    """Where a derivative rule of `node` made an inf or nan from its inputs'
    values and the incoming (co)tangents (`born_entries`), or None: the test
    both sweeps use to say where a non-finite derivative was born."""
    if all_finite_unguarded(produced):
        return None
    incoming = list(incoming)
    return born_entries(node.op, produced, [nodes[i].value for i in node.inputs] + incoming,
                        [nodes[i].finite for i in node.inputs] + [t is None or all_finite_unguarded(t) for t in incoming])


def first_bad(value: np.ndarray, bad: np.ndarray | None = None) -> tuple[int, tuple[int, ...], float]:
    """How many entries are not finite (or marked in `bad`), where the first is, and what it is."""
    if bad is None:
        bad = ~np.isfinite(value)
    where = tuple(int(i) for i in np.argwhere(bad)[0]) if value.ndim else ()
    return int(bad.sum()), where, float(value[where])


def nonfinite_kinds(values: np.ndarray) -> tuple[str, str]:
    """What `values` (none finite) are, the first one's kind first, and with
    several kinds how many of each: (`-inf`, ``) or (`-inf or nan`, ` (-inf at 2, nan at 1)`)."""
    kinds = sorted((np.flatnonzero(mask)[0], f"{kind:g}", np.count_nonzero(mask))
                   for kind, mask in ((np.inf, values == np.inf), (-np.inf, values == -np.inf), (np.nan, np.isnan(values)))
                   if mask.any())
    if len(kinds) == 1:
        return kinds[0][1], ""
    return " or ".join(kind for _, kind, _ in kinds), " (" + ", ".join(f"{kind} at {n}" for _, kind, n in kinds) + ")"


def describe_nonfinite(what: str, value: np.ndarray, inputs: list[np.ndarray], born: np.ndarray | None = None) -> str:
    """What an op made that is not finite: every such entry, or those marked
    in `born` (the ones whose operands were all finite)."""
    count, where, bad = first_bad(value, born)
    ins = [x for x in inputs if x.shape == value.shape]
    if value.ndim == 0:
        message = f"{what} gave {bad:g}"
        return message + (f"; its input was {float(ins[0]):g}" if len(ins) == 1 else "")
    kinds, each = nonfinite_kinds(value[~np.isfinite(value) if born is None else born])
    message = f"{what} gave {kinds} at {count} of {value.size} entries{each}, first at {list(where)}"
    if len(ins) == 1:
        message += f"; its input was {float(ins[0][where]):g} there"
    return message


FLOAT64 = np.dtype(np.float64)


def compute(op: Op, args: list[np.ndarray], params: dict) -> tuple[np.ndarray, object]:
    """An op's primal rule, as float64, and the residual it keeps for its
    derivative rules (None for an op without `fwd`): the one place any op
    is evaluated. Callers hold np.errstate(all="ignore"); inf and nan are
    reported by the tape at the op's span, not by numpy."""
    if op.fwd is None:
        value = op.impl(*args, **params)
        kept = None
    else:
        value, kept = op.fwd(*args, **params)
    if type(value) is not np.ndarray or value.dtype is not FLOAT64:  # numpy's float64 dtype is one object
        value = np.asarray(value, dtype=np.float64)
    return value, kept


def rule_params(node: Node, args: list[np.ndarray]) -> dict:
    """The keywords of an op node's derivative rules: its params, and for an
    op with a residual (`Op.fwd`) the one kept for its current value,
    recomputed and kept again when there is none for it (never kept, kept
    for another value, or used by a reverse sweep)."""
    if node.op.fwd is None:
        return node.params
    kept = node.residual
    if kept is None or kept.of is not node.value or kept.data is None:
        kept = node.residual = Residual(node.value, compute(node.op, args, node.params)[1])
    return {**node.params, "residual": kept.data}


def straight_line(nodes: list[Node], ops: list[Node], dropped: dict[int, list[Node]] | None = None,
                  unguarded: bool = False, checked: bool = False,
                  repeats: dict[int, int] | None = None) -> Callable[[], bool | None] | None:
    """A function that recomputes `ops` (op nodes of `nodes`, in tape
    order) from the current values of their other inputs, as the tape's
    evaluator does — each op's primal rule (`compute`: float64 out, a
    residual kept), its value set on its node — written out once as one
    Python function, a line per op, by rules_code.CodeWriter (which writes
    derivative statements the same way): no loop, no look-ups per op, so a
    kept run's replay (kept_runs.py) pays about half the tape's per-op cost.
    `dropped`: as `Tape.replay_function`'s, the nodes whose values go once
    a node is computed (it was their last reader). `unguarded`: each op's
    unguarded value rule (`Op.unguarded`, `scale`'s multiply), for a caller
    that checks what it computes is finite (else computes it again with the
    guards): where every value is, the guards' values exactly (scale's guard
    acts only where the partial is not finite, and then so is the product);
    where only the results are checked (an HVP's), up to the sign of a zero.
    `checked` (not with `dropped`): the function returns whether every
    value it computes is finite (`all_finite_values`, the sizes known as it
    is written: the small ones concatenated once, no list made at each
    call), save a copy (`structure.COPIES`: a transpose, reshape, broadcast
    or selection), which makes no entry that is not finite from finite
    ones: its entries are checked where they were made, or are a binding's,
    and an unguarded rule that meets one makes a value not finite, which is;
    and save a value an op of `ops` keeps the non-finite entries of (a
    sum's, a product's operand: `Op.keeps_nonfinite`), checked in its value.
    `repeats` (not with `dropped`): an op that computes what an earlier one
    of `ops` does (Tape.repeats) is given that one's value, the same bits,
    not computed again. None when an op is not the table's own (a total
    over row chunks)."""
    from .rules import OPS
    from .rules_code import CodeWriter, unguarded_rules
    writer = CodeWriter()
    writer.namespace.update(nodes=nodes, ndarray=np.ndarray, FLOAT64=FLOAT64, asarray=np.asarray,
                            evaluated=_evaluated, isfinite=math.isfinite, add_reduce=np.add.reduce,
                            concatenate=np.concatenate, all_finite_unguarded=all_finite_unguarded)
    names: dict[int, str] = {}
    computed: list[Node] = []  # what `checked` may test: the ops computed, but for copies
    for node in ops:
        if OPS.get(node.op.name) is not node.op:
            return None
        earlier = (repeats or {}).get(node.id)
        if earlier in names and node.op.fwd is None:  # the earlier op's value: computed, and checked, once
            names[node.id] = names[earlier]
            writer.lines.append(f"nodes[{node.id}].value, nodes[{node.id}].known_finite = {names[earlier]}, None")
            continue
        for i in node.inputs:
            if i not in names:  # a value the replay does not compute: read at each call
                names[i] = writer.bind(f"v{i}", nodes[i].shape)
                writer.lines.append(f"v{i} = nodes[{i}].value")
        if node.op.fwd is None:
            t = names[node.id] = writer(node.op.name, [names[i] for i in node.inputs], **node.params)
        else:  # its residual is kept too
            t = names[node.id] = writer.bind(f"r{node.id}", node.shape)
            writer.lines.append(f"{t} = evaluated(nodes[{node.id}], nodes)")
        writer.lines += [f"if {t}.__class__ is not ndarray or {t}.dtype is not FLOAT64: {t} = asarray({t}, FLOAT64)",
                         f"nodes[{node.id}].value, nodes[{node.id}].known_finite = {t}, None"]
        if checked and node.op.structure is not COPIES:
            computed.append(node)
        for done in (dropped or {}).get(node.id, ()):
            writer.lines.append(f"nodes[{done.id}].value = nodes[{done.id}].residual = None")
            if done.id in names:
                writer.lines.append(f"del {names.pop(done.id)}")
    if checked:
        shown = _shown(computed, names)
        few = [names[n.id] for n in computed if names[n.id] not in shown and math.prod(n.shape) <= FEW_ENTRIES]
        tests = [f"all_finite_unguarded({names[n.id]})" for n in computed
                 if names[n.id] not in shown and math.prod(n.shape) > FEW_ENTRIES]
        if few:
            tests.insert(0, f"isfinite(add_reduce(concatenate(({', '.join(few)},), None)))")
        writer.lines.append(f"return {' and '.join(tests) or 'True'}")
    namespace: dict = {}
    exec("def replay():\n" + "".join(f"    {line}\n" for line in writer.lines or ["pass"]),
         unguarded_rules(writer.namespace) if unguarded else writer.namespace, namespace)
    return namespace["replay"]


def _shown(computed: list[Node], names: dict[int, str]) -> set[str]:
    """The values (by name) each inf or nan of which makes one in a value of
    `computed`, so need no test of their own: an operand an op of them keeps
    the non-finite entries of (`Op.keeps_nonfinite`: a sum's, a product's),
    where its value has entries. That value is tested, or shown in a later one."""
    return {names[node.inputs[k]] for node in computed if math.prod(node.shape) for k in node.op.keeps_nonfinite}


def _evaluated(node: Node, nodes: list[Node]) -> np.ndarray:
    """An op with a forward rule (`Op.fwd`) computed, its residual kept."""
    value, kept = compute(node.op, [nodes[i].value for i in node.inputs], node.params)
    node.residual = Residual(value, kept)
    return value


class Births:
    """An observer for any sweep (numeric or recorded, reverse or forward)
    that finds the first node whose derivative rule made an inf or nan from
    finite values; `warn` names it."""

    def __init__(self, nodes: list[Node]):
        self.nodes = nodes
        self.first: tuple[Node, np.ndarray, np.ndarray] | None = None

    def reverse(self, node: Node, g: np.ndarray, k: int, gi: np.ndarray) -> None:
        if self.first is None:
            born = derivative_born(node, self.nodes, [g], gi)
            if born is not None:
                self.first = (node, gi, born)

    def forward(self, node: Node, ts: list, t: np.ndarray) -> None:
        if self.first is None:  # each batch of tangents lined up with the batch it makes, as the step met it
            born = derivative_born(node, self.nodes, [None if given is None else lift(given, node.value.ndim)
                                                      for given in ts], t)
            if born is not None:
                direction = int(np.argwhere(born)[0][0])  # the first seed that met it
                self.first = (node, t[direction], born[direction])

    def warn(self, diagnostics: Diagnostics) -> None:
        if self.first is not None:
            node, produced, born = self.first
            inside = node.born_inside()
            if inside:
                warn_all(diagnostics, inside)
            else:
                diagnostics.warn(describe_nonfinite(f"the derivative of `{node.label}`", produced,
                                                    [self.nodes[i].value for i in node.inputs], born), node.span)


def warn_all(diagnostics: Diagnostics, warnings: Iterable) -> None:
    """Warnings made elsewhere (inside an op, `Op.reports`), given again here."""
    for warning in warnings:
        diagnostics.warn(warning.message, warning.span, warning.notes)
