"""The recording interpreter of derivative statements (`Emitter`, which
`Tape.backward_graph` records a gradient with), and the identity work it
leaves out.

An op's derivative statement (rules.py) is written once for every value it
may meet, so, recorded, it carries work that does nothing at the values it
does meet: `x ** 2`'s derivative raises x to the power 2 − 1, a sum's rule
broadcasts ones that the next rule multiplies by, a subtraction negates a
product of a constant. A Hessian's forward-over-reverse sweeps and every
HVP pay for each such op again, n entries at a time. What may be left out
is decided from what an op is (|x| of exp's values, which are never
negative, is x; a product reads a broadcast's operand, broadcasting it
itself), from shapes, and from constants whose value never changes
(`Node.fixed`): the constants a rule made and the program's literals.
Never from a leaf whose value is data — an input, an HVP's or `check`'s
direction, a chunk's rows — which a task sets again after the gradient is
recorded.

Every rewrite is an identity of float64 arithmetic at every value, ±0, inf
and nan included (a nan's sign aside: |x| of exp's −nan is +nan), so a
recorded gradient has the values it had, each rule's result too (where the
reverse sweep says a non-finite derivative was born), and a node left out
could not have been one (an identity never turns finite values into
non-finite ones). What a rewrite left unread — a broadcast another rule
made that a product reads no more — is dropped when the recording ends
(`unread_dropped`). What is differentiated again from a gradient may add
the same terms in another order (cotangents meet elsewhere once a
transpose of a transpose is gone), so equal to rounding. Not here, because
they are not exact: `x + 0` with a +0 (it turns −0 into +0), a sum of a
broadcast (n · x is not x added n times), a product of products of
constants (rounded twice), sign(x) of exp's values (an exp that underflows
is 0, whose sign is 0, not 1).
"""

from __future__ import annotations

from typing import Any, Iterable, Protocol

import numpy as np

from .diagnostics import Diagnostics, Span
from .ops import COPIED_BROADCAST_ENTRIES, OPS, Op
from .rules import comparable

# A tape node (tape_nodes.Node, a layer above the op table this module sits on).
Node = Any


class Recording(Protocol):
    """What the emitter records on (tape.Tape)."""

    nodes: list[Node]

    def leaf(self, value: np.ndarray, kind: str, span: Span | None, name: str | None = None,
             fixed: bool = False) -> Node: ...

    def record(self, op: Op, inputs: tuple[int, ...], params: dict, span: Span | None, label: str,
               diagnostics: Diagnostics | None, shape: tuple[int, ...] | None = None) -> Node: ...

    def fold(self, op: Op, args: list[np.ndarray], params: dict, span: Span | None, label: str,
             diagnostics: Diagnostics | None) -> np.ndarray: ...

    def feeding(self, *outputs: int) -> list[bool]: ...


class Emitter:
    """The recording interpreter of derivative statements (spiread_cli/rules.py):
    `emit(op_name, inputs, **params)` appends an op (evaluated at once) and
    returns its id, or the id of what stands for it without identity work
    (`simplified`: `x ** 1` is x); `const` a fixed constant; `shape` a node's
    shape. Every node it makes has the span and label of the rule it records.
    Non-finite values are not reported node by node: the sweep warns where a
    rule's result is born non-finite, as `backward` does."""

    def __init__(self, tape: Recording, span: Span | None, label: str, shared: Shared | None = None):
        self.tape, self.span, self.label, self.nodes = tape, span, label, tape.nodes
        self.shared = shared  # what the emitters of one recording share (Tape.backward_graph's)

    def __call__(self, op_name: str, inputs: list[int], **params) -> int:
        found = simplified(self, op_name, inputs, params)
        if found is not None:
            return found
        key = None if self.shared is None else op_key(self.nodes, op_name, inputs, params, self.span, self.label)
        if key is not None:
            found = self.shared.computed(self.nodes).get(key)
            if found is not None:
                return found
        node = self.tape.record(OPS[op_name], tuple(inputs), params, self.span, self.label, None)
        if key is not None:
            self.shared.ops[key] = node.id
        return node.id

    def fold(self, op_name: str, inputs: list[int], params: dict) -> int:
        """An op of fixed constants, as the fixed constant it gives, laid out
        as the op lays it out (a large broadcast's view, a product's array),
        as the recording without the fold holds it: einsum, which takes a
        zero stride's factor out of its sums, and `@@` give other bits on a
        view of an array's numbers (`(g / n) · 3`'s, made a view, was)."""
        value = self.tape.fold(OPS[op_name], [self.nodes[i].value for i in inputs], params, self.span, self.label, None)
        return self.tape.leaf(value, "const", self.span, fixed=True).id

    def like(self, node: Node, op_name: str, inputs: list[int], params: dict) -> int:
        """An op emitted with the span and label of `node`, which it stands for."""
        return Emitter(self.tape, node.span, node.label)(op_name, inputs, **params)

    def once(self, key: tuple, make) -> int:
        """The node `make()` records, recorded once in this recording for
        `key`: what the derivatives of several operands of one op share (a
        total over row chunks' gradient by every operand, row_totals.py)."""
        if self.shared is None:
            return make()
        once = self.shared.once
        if key not in once:
            once[key] = make()
        return once[key]

    def const(self, value, name: str | None = None) -> int:
        leaf = self.tape.leaf(uniform(np.asarray(value, dtype=np.float64)), "const", self.span, fixed=True)
        if name is not None:  # what the statement calls it (`picks`), which an export names it by
            leaf.label = name
        return leaf.id

    def shape(self, node_id: int) -> tuple:
        return self.tape.nodes[node_id].shape


class Shared:
    """What the emitters of one recording share: the nodes recorded `once`,
    and every op node of the tape by what it computes and where (`op_key`),
    so an op a rule emits that the same rule of the same op already made —
    a first recorded gradient's when a second is recorded (`tanh`'s
    1 − out² again for an HVP) — is that node, not a new one. Only the same
    rule's (span and label): a warning about a derivative names the node it
    was born in, which is then the one it was. Never one of `kept`, the
    nodes differentiated by (and the output): a derivative by one follows
    the paths through it alone (`Tape.repeats`), so a rule's op equal to it
    is another node, which moving it leaves as it is."""

    def __init__(self, kept: frozenset[int] = frozenset()):
        self.once: dict = {}
        self.ops: dict | None = None
        self.kept = kept

    def computed(self, nodes: list[Node]) -> dict:
        if self.ops is None:
            self.ops = {}
            for node in nodes:
                if node.op is not None and node.id not in self.kept:
                    key = op_key(nodes, node.op.name, node.inputs, node.params, node.span, node.label)
                    if key is not None:
                        self.ops.setdefault(key, node.id)
        return self.ops


def unread_dropped(tape: Recording, start: int, results: dict[int, int],
                   checked: Iterable[int] = ()) -> tuple[dict[int, int], dict[int, int]]:
    """`results` (value id -> node id) once the nodes recorded from `start`
    on that none of them nor of `checked` (what a replay checks again) is
    computed from are dropped: a rule's step that a rewrite then left out
    (the product of c · (2 · y)'s inner product, a broadcast a product reads
    no more), which a replay of the whole tape (a kept run's) would compute
    for no one. The others move down into their places (only nodes from
    `start` on read them): the results, and where each moved (old id -> new)."""
    nodes = tape.nodes
    read = tape.feeding(*results.values(), *checked) if len(nodes) > start else []
    kept = [node for node in nodes[start:] if read[node.id]]
    moved: dict[int, int] = {}
    if len(kept) == len(nodes) - start:
        return results, moved
    for place, node in enumerate(kept, start):
        moved[node.id], node.id = place, place
        node.inputs = tuple(moved.get(i, i) for i in node.inputs)
    nodes[start:] = kept
    return {w: moved.get(g, g) for w, g in results.items()}, moved


def rule_label(node: Node, k: int) -> str:
    """How a recorded derivative is named: `∂log/∂x`, `∂(@@)/∂a`, `∂stack/∂x2`."""
    name = node.op.name if " " in node.label else node.label
    if not name.replace("_", "").isalnum():
        name = f"({name})"
    arity = len(node.inputs)
    arg = "x" if arity == 1 else ("a", "b")[k] if arity == 2 else f"x{k}"
    return f"∂{name}/∂{arg}"


def op_key(nodes: list[Node], op_name: str, inputs, params: dict, span: Span | None, label: str) -> tuple | None:
    """What an op node computes and where, as a key: its op, its params and
    its operands, a fixed constant holding one number by that number (bit
    for bit) and shape, its span and label; None where a param cannot be
    compared (an array)."""
    key: tuple = (op_name, span, label)
    for i in inputs:
        number = held(nodes[i])
        key += ((nodes[i].shape, np.float64(number).tobytes()),) if number is not None else (i,)
    try:
        if params:
            key += tuple(sorted((k, comparable(v)) for k, v in params.items()))
        hash(key)
    except TypeError:
        return None
    return key


def simplified(emit: Emitter, op_name: str, inputs: list[int], params: dict) -> int | None:
    """The node that stands for `op_name(inputs)`: one already on the tape,
    a fixed constant (every operand is one: folded), or an op recorded in its
    place; None when it is recorded as it is."""
    nodes = emit.nodes
    operands = [nodes[i] for i in inputs]
    if all(node.fixed for node in operands):
        return emit.fold(op_name, inputs, params)
    rule = RULES.get(op_name)
    return None if rule is None else rule(emit, op_name, operands, params)


def held(node: Node) -> float | None:
    """The one number every entry of a fixed constant holds (a number, a
    broadcast of one, read at one entry, or a small array read whole),
    else None."""
    if not node.fixed:
        return None
    value = node.value
    if value.ndim == 0 or (value.size and not any(value.strides)):
        return float(value.flat[0])
    if 0 < value.size <= COPIED_BROADCAST_ENTRIES:
        bits = value.reshape(-1).view(np.uint64)
        return float(value.flat[0]) if bool((bits == bits[0]).all()) else None
    return None


def uniform(value: np.ndarray) -> np.ndarray:
    """A constant a statement gives (`Emitter.const`, with the rewrites or
    without): up to COPIED_BROADCAST_ENTRIES entries an array of its own, as
    `broadcastTo` copies one; above, a broadcast of its one entry when every
    entry is that number bit for bit (`held` reads it at once; no memory)."""
    if value.size <= COPIED_BROADCAST_ENTRIES:
        return value if value.flags.c_contiguous else value.copy()
    if not any(value.strides):
        return value
    flat = np.ascontiguousarray(value).reshape(-1)
    bits = flat.view(np.uint64)
    return np.broadcast_to(flat[:1].reshape(()), value.shape) if bool((bits == bits[0]).all()) else value


def _is(number: float | None, wanted: float) -> bool:
    """number is `wanted`, the sign of a zero included."""
    return number is not None and number == wanted and np.signbit(number) == np.signbit(wanted)


def _same(emit: Emitter, kept: Node, shape: tuple) -> int:
    """`kept` as the result of shape `shape`: itself, or broadcast to it."""
    return kept.id if kept.shape == shape else emit("broadcastTo", [kept.id], shape=shape)


def _unit(number: float, *sides: int):
    """A binary op that is its operand `k` when the other operand holds
    `number` (for each k in `sides`): x · 1, 1 · x, x / 1, x ** 1, x − (+0), x + (−0)."""
    def rule(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
        for k in sides:
            if _is(held(operands[1 - k]), number):
                return _same(emit, operands[k], OPS[op_name].shape(*[n.shape for n in operands], **params))
        return None
    return rule


def _product(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """x · 1 and 1 · x are x (`mul`; `scale`, whose guard — a zero t keeps
    0 — cannot apply against a one, nor to a one). c · (d · y), both steps of
    one rule, is (c·d) · y when that is exact: d = ±2^k with k ≥ 0 (d · y is
    exact, or overflows) and |c| ≥ 1 (so (c·d) · y overflows wherever
    c · (d · y) does): `x ** 2`'s derivative doubled, then scaled."""
    found = _times_one(emit, op_name, operands, params)
    if found is not None:
        return found
    nodes = emit.nodes
    for k in (0, 1):
        c, inner = held(operands[k]), operands[1 - k]
        if (c is None or not 1 <= abs(c) < np.inf or inner.op is None or inner.op.name not in ("mul", "scale")
                or (inner.span, inner.label) != (emit.span, emit.label)):
            continue
        for j in (0, 1):
            d = held(nodes[inner.inputs[j]])
            if d is None or not 1 <= abs(d) < np.inf or np.frexp(d)[0] not in (0.5, -0.5) or not np.isfinite(c * d):
                continue
            inputs = [0, 0]
            inputs[k] = emit.const(np.broadcast_to(np.float64(c * d), operands[k].shape))
            inputs[1 - k] = inner.inputs[1 - j]
            shape = OPS[op_name].shape
            if shape(*[nodes[i].shape for i in inputs], **params) == shape(*[n.shape for n in operands], **params):
                return emit(op_name, inputs, **params)
    return _negation_moved(emit, op_name, operands, params)


def _negation_moved(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """(−x) · (c · y) is x · ((−c) · y) for a fixed finite nonzero number c,
    when c · y is this rule's own step: the negation, a pass of its own,
    goes into the constant (`x ** 2`'s rule meeting a subtraction's
    cotangent). `scale` keeps its guard: the negated operand must be its
    cotangent (t, which is zero where −t is)."""
    nodes = emit.nodes
    for k in ((0, 1) if op_name == "mul" else (0,)):
        negated, product = operands[k], operands[1 - k]
        if (negated.op is None or negated.op.name != "neg" or product.op is None
                or product.op.name not in ("mul", "scale") or (product.span, product.label) != (emit.span, emit.label)):
            continue
        for j in (0, 1):
            c = held(nodes[product.inputs[j]])
            if c is None or c == 0 or not np.isfinite(c):
                continue
            factors = list(product.inputs)
            factors[j] = emit.const(np.broadcast_to(np.float64(-c), nodes[product.inputs[j]].shape))
            inputs = [0, 0]
            inputs[k], inputs[1 - k] = negated.inputs[0], emit(product.op.name, factors, **product.params)
            return emit(op_name, inputs, **params)
    return None


def _negated(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """−(−x) is x; −(c · y) for a fixed finite nonzero number c is (−c) · y,
    one op instead of two, when c · y is a rule's own step (a program's
    product is computed anyway). The product keeps the place of the rule
    that made it: where a non-finite derivative would have been born."""
    inner = operands[0]
    if inner.op is None:
        return None
    if inner.op.name == "neg":
        return inner.inputs[0]
    if inner.op.name not in ("mul", "scale") or not inner.label.startswith(("∂", "Σ∂")):
        return None
    nodes = emit.nodes
    for k in (0, 1):
        c = held(nodes[inner.inputs[k]])
        if c is not None and c != 0 and np.isfinite(c):
            constant = nodes[inner.inputs[k]]
            flipped = emit.const(np.broadcast_to(np.float64(-c), constant.shape))
            inputs = list(inner.inputs)
            inputs[k] = flipped
            return emit.like(inner, inner.op.name, inputs, inner.params)
    return None


def _undone(undoing: str):
    """An op applied to its own result where that undoes it: a transpose of a transpose."""
    def rule(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
        inner = operands[0]
        return inner.inputs[0] if inner.op is not None and inner.op.name == undoing else None
    return rule


def _reshaped(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """A reshape to the shape it has is nothing; of a reshape, one reshape."""
    x, shape = operands[0], tuple(params["shape"])
    if x.shape == shape:
        return x.id
    if x.op is not None and x.op.name == "reshape":
        return emit("reshape", [x.inputs[0]], shape=shape)
    return None


def _to_own_shape(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """A broadcast or a sum to the shape its operand has is nothing."""
    x = operands[0]
    return x.id if x.shape == tuple(params["shape"]) else None


_times_one = _unit(1.0, 0, 1)


def _broadcasts_itself(rule):
    """An op that broadcasts its operands itself (`add`, `mul`, …) reads a
    broadcast operand's operand instead (a sum's or a row total's
    derivative, `broadcastTo`, which a product by the rule of another op
    reads): entry for entry it meets the same numbers, so the same bits,
    and the copy is left to no one. Then the op's own `rule`."""
    def unbroadcast(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
        shape = OPS[op_name].shape
        result = shape(*[n.shape for n in operands], **params)
        inputs = [n.id for n in operands]
        for k, node in enumerate(operands):
            if node.op is not None and node.op.name == "broadcastTo":
                read = inputs[:k] + [node.inputs[0]] + inputs[k + 1:]
                if shape(*[emit.nodes[i].shape for i in read], **params) == result:
                    inputs = read
        if inputs != [n.id for n in operands]:
            return emit(op_name, inputs, **params)
        return rule(emit, op_name, operands, params)
    return unbroadcast


# Ops whose every value has its sign bit clear, a nan's aside (exp(−inf) is
# +0, a square of −0 too, and −nan stays −nan): |x| of one is x.
SIGN_BIT_CLEAR = frozenset({"exp", "abs", "square", "cosh"})


def _absolute(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """|x| is x where x is a value of an op in SIGN_BIT_CLEAR: the L1
    normalisation's row totals of exp's values (a softmax written by hand).
    Its sign is not: exp's values can be +0 (underflow), whose sign is 0."""
    x = operands[0]
    return x.id if x.op is not None and x.op.name in SIGN_BIT_CLEAR else None


def _negation_subtracted(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """a + (−b) is a − b (IEEE 754 defines the difference so), −a + b is
    b − a, a − (−b) is a + b: one op for two where cotangents meet, one of
    them negated (a difference's)."""
    a, b = operands
    if b.op is not None and b.op.name == "neg":
        return emit("sub" if op_name == "add" else "add", [a.id, b.inputs[0]])
    if op_name == "add" and a.op is not None and a.op.name == "neg":
        return emit("sub", [b.id, a.inputs[0]])
    return None


def _squared(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
    """x ** 2 is `square`, x · x, bit for bit (ops._power), where x has the
    result's shape: `x ** 3`'s derivative, 3 · x ** (3 − 1), in one pass."""
    x, exponent = operands
    if _is(held(exponent), 2.0) and OPS[op_name].shape(x.shape, exponent.shape) == x.shape:
        return emit("square", [x.id])
    return None


def _first(*rules):
    """The first of `rules` that finds a node to stand for the op."""
    def rule(emit: Emitter, op_name: str, operands: list[Node], params: dict) -> int | None:
        for each in rules:
            found = each(emit, op_name, operands, params)
            if found is not None:
                return found
        return None
    return rule


RULES = {
    "mul": _broadcasts_itself(_product),
    "scale": _broadcasts_itself(_product),
    "div": _broadcasts_itself(_unit(1.0, 0)),
    "pow": _first(_unit(1.0, 0), _squared),  # x ** 1 is x, −0, infinities and nan included; x ** 2 is x · x
    # x + (−0) is x, for x = −0 too (x + (+0) is not); x − (+0) is x
    "add": _broadcasts_itself(_first(_unit(-0.0, 0, 1), _negation_subtracted)),
    "sub": _broadcasts_itself(_first(_unit(0.0, 0), _negation_subtracted)),
    "neg": _negated,
    "abs": _absolute,
    "transpose": _undone("transpose"),
    "reshape": _reshaped,
    "broadcastTo": _to_own_shape,
    "sumTo": _to_own_shape,
}
