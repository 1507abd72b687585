"""One derivative statement per op, interpreted many ways.

Every op in the table (spiread_cli/ops.py) states its derivative once, as its
vjp written over the table's own ops: ``derivative(i, g, out, *xs, emit,
**params)`` returns what the output's cotangent `g` sends to operand `i`
(None where that is 0). `g`, `out` and the operands are whatever the
interpreter `emit` works on; the statement only combines them through
``emit(op_name, inputs, **params)``, ``emit.const(value, name=None)`` and
``emit.shape(v)``. Each use of a derivative is an interpreter of that one
statement (HIPS autograd's vjps over differentiable primitives, JAX's
interpreters over one program):

- `NUMERIC`: the values are numpy (or Dask) arrays and an op is its `impl`:
  the numeric vjp of the first-order sweeps;
- `tape.Emitter`: the values are tape nodes and an op is recorded: the
  backward pass as a graph, differentiated again for Hessians (and again for
  third derivatives: every op's statement is made of ops with statements);
- `Printer`: the values are formulas: `grad --explain`'s rule text;
- `CodeWriter`: the values are Python names: the rule written out as code,
  which `compiled_vjp` runs as the numeric vjp;
- `jvp_term`: forward mode. The statement is linear in `g`; tracing it with
  `g` symbolic (`LinearTrace`) separates the coefficients, computed at once,
  from the linear steps, and running those steps backwards, each through
  its own op's statement, applies the transpose — the Jacobian itself — to a
  tangent (JAX's transposition, in the other direction). Tangents carry a
  leading batch axis (one slice per seed direction): the linear ops apply
  to it by their `batched` value rule, or one direction at a time.

This module knows ops only by name, through `OPS`, which the table fills.
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import numpy as np

class Registry(dict):
    """Name -> entry: the op table's primitives, filled by spiread_cli/ops.py
    as it defines them (what tests and tools iterate over), and, found by
    name but not listed, the ops that join a tape to what runs below it
    (`beyond`: spiread_cli/row_totals.py's sums over row chunks)."""

    def __init__(self):
        super().__init__()
        self.beyond: dict = {}

    def __missing__(self, name: str):
        return self.beyond[name]


OPS = Registry()


# ---------------------------------------------------------------- numeric


# The primal rules by name, for `Numeric` (one lookup fewer per step: the
# first-order sweeps evaluate statements step by step).
IMPLS = Registry()


class Numeric:
    """Evaluates a statement: each op by its primal rule."""

    def __call__(self, name: str, inputs: list, **params):
        return IMPLS[name](*inputs, **params)

    @staticmethod
    def const(value, name: str | None = None):
        return value if type(value) is float else np.asarray(value, dtype=np.float64)

    @staticmethod
    def shape(v) -> tuple:
        return v.shape if type(v) is np.ndarray else np.shape(v)


NUMERIC = Numeric()


def interpreted_vjp(derivative: Callable) -> Callable:
    """The numeric vjp an op gets from its statement."""
    def vjp(i, g, out, *xs, **params):
        result = derivative(i, g, out, *xs, emit=NUMERIC, **params)
        return np.zeros_like(xs[i], dtype=np.float64) if result is None else result
    return vjp


def without_residual(rule: Callable) -> Callable:
    """A rule interpreted from the statement, for an op whose fast paths keep
    a residual: the statement reads the operands, not the residual."""
    def rule_without_residual(*args, residual=None, **params):
        return rule(*args, **params)
    return rule_without_residual


# ----------------------------------------------------- forward mode, derived


class Linear:
    """A value linear in the traced cotangent g: known only by its shape."""
    __slots__ = ("shape",)

    def __init__(self, shape: tuple):
        self.shape = tuple(shape)


class NotLinear(Exception):
    """A statement used its cotangent other than linearly."""


class LinearTrace:
    """Traces a statement with g symbolic (`Linear`): a step none of whose
    inputs depends on g is a coefficient, left to `base` (computed at once,
    or printed); a step that does is recorded, to be transposed."""

    def __init__(self, base):
        self.base = base
        self.steps: list[tuple] = []  # (op, inputs, params, result)

    def __call__(self, name: str, inputs: list, **params):
        if not any(type(v) is Linear for v in inputs):
            return self.base(name, inputs, **params)
        op = OPS[name]
        result = Linear(op.shape(*[self.shape(v) for v in inputs], **params))
        self.steps.append((op, inputs, params, result))
        return result

    def const(self, value, name: str | None = None):
        return self.base.const(value, name)

    def shape(self, v) -> tuple:
        return v.shape if type(v) is Linear else self.base.shape(v)

    def transpose(self, g: Linear, result, tangent, emit):
        """The transpose of the traced map g ↦ result, applied to `tangent`
        (the result's shape): each recorded step, last first, pulls its
        output's tangent back to its linear inputs by its op's statement,
        interpreted by `emit`. Returns what reaches g, or None for 0."""
        if result is None:
            return None
        if type(result) is not Linear:
            raise NotLinear("the derivative does not depend on the cotangent")
        reached = {id(result): tangent}
        for op, inputs, params, out in reversed(self.steps):
            t = reached.pop(id(out), None)
            if t is None:
                continue
            for j, v in enumerate(inputs):
                if type(v) is Linear:
                    pulled = op.derivative(j, t, out, *inputs, emit=emit, **params)
                    if pulled is not None:
                        reached[id(v)] = pulled if id(v) not in reached else emit("add", [reached[id(v)], pulled])
        return reached.get(id(g))


def jvp_term(derivative: Callable, i: int, tangent, out, xs, params: dict, base, emit):
    """Operand i's share of the jvp: the transpose of operand i's vjp
    statement applied to its tangent, or None for 0. `base` interprets the
    coefficients, `emit` the tangent's steps."""
    trace = LinearTrace(base)
    g = Linear(base.shape(out))
    result = derivative(i, g, out, *xs, emit=trace, **params)
    return trace.transpose(g, result, tangent, emit)


class Tangents:
    """A batch of tangents (k, *shape) inside `Batched`."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


class Batched:
    """Evaluates a statement on tangents with a leading batch axis
    (`Tangents`) among plain values: an op with no tangent operand by its
    primal rule, else by `apply_batched`."""

    def __call__(self, name: str, inputs: list, **params):
        if any(type(v) is Linear for v in inputs):
            raise NotLinear(f"`{name}` applied to a value linear in the cotangent")
        which = tuple(type(v) is Tangents for v in inputs)
        if not any(which):
            return IMPLS[name](*inputs, **params)
        return Tangents(apply_batched(OPS[name], which, *[v.value if b else v for v, b in zip(inputs, which)],
                                      **params))

    @staticmethod
    def const(value, name: str | None = None):
        return NUMERIC.const(value)

    @staticmethod
    def shape(v) -> tuple:
        if type(v) is Tangents:
            return np.shape(v.value)[1:]
        return v.shape if type(v) is Linear else np.shape(v)


BATCHED = Batched()


def apply_batched(op, which: tuple[bool, ...], *args, **params):
    """An op applied to operands of which those marked in `which` carry a
    leading batch axis: by its `batched` value rule, or an elementwise op by
    broadcasting, or one direction at a time."""
    if op.batched is not None:
        return op.batched(list(args), which, **params)
    if op.structure.kind == "elementwise":
        ndim = len(op.shape(*[np.shape(a)[1:] if b else np.shape(a) for a, b in zip(args, which)], **params))
        return op.impl(*[_lift(a, ndim) if b else a for a, b in zip(args, which)], **params)
    k = next(a for a, b in zip(args, which) if b).shape[0]
    return np.stack([op.impl(*[a[d] if b else a for a, b in zip(args, which)], **params) for d in range(k)])


def _lift(t, ndim: int):
    """A batched tangent (k, *s) with singleton axes after the batch axis, so
    it broadcasts against values of rank `ndim` as its primal does."""
    missing = ndim - (t.ndim - 1)
    return t.reshape(t.shape[:1] + (1,) * missing + t.shape[1:]) if missing > 0 else t


def derived_jvp(derivative: Callable) -> Callable:
    """The numeric jvp an op gets from its statement: the sum over operands
    with a tangent of `jvp_term`, tangents batched along a leading axis."""
    def jvp(ts, out, *xs, **params):
        k = next(t for t in ts if t is not None).shape[0]
        total = None
        for i, t in enumerate(ts):
            if t is None:
                continue
            term = jvp_term(derivative, i, Tangents(t), out, xs, params, NUMERIC, BATCHED)
            if term is not None:
                term = term.value if type(term) is Tangents else np.broadcast_to(term, (k,) + np.shape(out))
                total = term if total is None else total + term
        return np.zeros((k,) + np.shape(out)) if total is None else total
    return jvp


# --------------------------------------------------------------- printing


class Formula:
    """A printed value: its text, shape and how tightly it binds (4: a name
    or call, 3: a prefix minus, 2: a product or quotient, 1: a sum)."""
    __slots__ = ("text", "shape", "binds", "made_by", "inputs")

    def __init__(self, text: str, shape: tuple, binds: int = 4, made_by: str = "", inputs=()):
        self.text, self.shape, self.binds, self.made_by, self.inputs = text, tuple(shape), binds, made_by, inputs


def shape_text(shape: tuple) -> str:
    return "×".join(map(str, shape)) if shape else "scalar"


def key_text(key: tuple) -> str:
    """A basic-indexing key as numpy writes it: `1, :`, `1:`, `::2`."""
    def one(k):
        if isinstance(k, slice):
            text = f"{'' if k.start is None else k.start}:{'' if k.stop is None else k.stop}"
            return text if k.step is None else f"{text}:{k.step}"
        return str(k)
    return ", ".join(one(k) for k in key)


# op: (sign, how tightly it binds, how tightly its right operand must bind to
# go without brackets: as tightly for an associative op, more for − and /).
INFIX = {"add": (" + ", 1, 1), "sub": (" − ", 1, 2), "mul": (" · ", 2, 2), "scale": (" · ", 2, 2),
         "div": (" / ", 2, 3), "matmul": (" @@ ", 2, 3)}
RELATIONS = {">": ">", ">=": "≥", "<": "<", "<=": "≤", "==": "=", "!=": "≠"}


class Printer:
    """Prints a statement as a formula over the names of its values."""

    def __call__(self, name: str, inputs: list, **params):
        if any(type(v) is Linear for v in inputs):
            raise NotLinear(f"`{name}` applied to a value linear in the cotangent")
        op = OPS[name]
        shape = op.shape(*[v.shape for v in inputs], **params)
        # Written as people write them: what changes nothing is left out,
        # and a few compositions have a shorter usual form.
        if name in ("sumTo", "broadcastTo", "reshape") and shape == inputs[0].shape:
            return inputs[0]
        if name == "transpose" and inputs[0].made_by == "transpose":
            return inputs[0].inputs[0]  # (xᵀ)ᵀ is x
        if name in ("add", "sub", "mul", "scale", "div"):  # broadcasting is implied by an elementwise op
            unbroadcast = [v.inputs[0] if v.made_by == "broadcastTo" else v for v in inputs]
            if np.broadcast_shapes(*[v.shape for v in unbroadcast]) == shape:
                inputs = unbroadcast
        if name == "add" and inputs[1].made_by == "neg":
            name, inputs = "sub", [inputs[0], inputs[1].inputs[0]]
        if name in ("mul", "scale") and inputs[1].made_by == "div" and inputs[1].inputs[0].text == "1":
            name, inputs = "div", [inputs[0], inputs[1].inputs[1]]
        if name == "sumTo":
            if shape == ():
                name = "sum"
            elif shape == inputs[0].shape[:-1] + (1,):
                name = "rowTotal"
        text, binds = self.notation(name, list(inputs), params)
        return Formula(text, shape, binds, name, tuple(inputs))

    @staticmethod
    def notation(name: str, xs: list[Formula], params: dict) -> tuple[str, int]:
        def tight(v: Formula, binds: int) -> str:
            return v.text if v.binds >= binds else f"({v.text})"
        if name in INFIX:
            sign, binds, right = INFIX[name]
            return tight(xs[0], binds) + sign + tight(xs[1], right), binds
        if name == "neg":
            return "−" + tight(xs[0], 4), 3
        if name == "transpose":
            return tight(xs[0], 4) + "ᵀ", 4
        if name == "square":
            return tight(xs[0], 4) + "²", 4
        if name == "pow":
            return tight(xs[0], 4) + "^" + tight(xs[1], 4), 4
        if name == "abs":
            return f"|{xs[0].text}|", 4
        if name == "indicator":
            return f"({xs[0].text} {RELATIONS[params['relation']]} {xs[1].text})", 4
        if name == "index":
            return f"{tight(xs[0], 4)}[{key_text(params['key'])}]", 4
        if name in ("arrange", "gatherRows"):
            return f"{tight(xs[0], 4)}[{'rows, cols' if name == 'arrange' else 'index'}]", 4
        args = [x.text for x in xs]
        if name in ("sumTo", "broadcastTo", "reshape", "indexScatter"):
            if name == "indexScatter":
                args.append(f"[{key_text(params['key'])}]")
            args.append(shape_text(tuple(params["shape"])))
        elif name in ("select", "scatterPairs"):
            args.append("rows, cols")
        elif name == "scatterRows":
            args.append("index")
        elif name == "exclusiveProducts":
            args.append(f"over {params['over']}")
        elif name == "einsum":
            args.insert(0, f'"{params["spec"]}"')
        elif name == "concat":
            args.append(f"axis={params['axis']}")
        elif name == "rowCumsum" and params.get("reverse"):
            args.append("from the end")
        return f"{name}({', '.join(args)})", 4

    @staticmethod
    def const(value, name: str | None = None) -> Formula:
        shape = np.shape(value)
        if name is None:
            if shape != ():
                raise ValueError("a constant array in a rule needs a name to be printed")
            name = f"{float(value):g}".replace("-", "−")
        return Formula(name, shape, 1 if " " in name else 3 if name.startswith("−") else 4)

    @staticmethod
    def shape(v) -> tuple:
        return v.shape


PRINTER = Printer()


def operand_names(arity: int) -> list[str]:
    """How a rule names its operands: x; a and b; x0, x1, … (stack)."""
    return ["x"] if arity == 1 else ["a", "b"] if arity == 2 else [f"x{k}" for k in range(arity)]


DOT = {"x": "ẋ", "a": "ȧ", "b": "ḃ"}


def dotted(name: str) -> str:
    return DOT.get(name) or name[0] + "\u0307" + name[1:]


def vjp_text(op, i: int, shapes: list[tuple], out_shape: tuple, params: dict) -> str:
    """What operand i's vjp sends back, printed from the op's statement."""
    names = operand_names(len(shapes))
    xs = [Formula(n, s) for n, s in zip(names, shapes)]
    result = op.derivative(i, Formula("g", out_shape), Formula("out", out_shape), *xs, emit=PRINTER, **params)
    return "0" if result is None else result.text


def jvp_text(op, moving: list[int], shapes: list[tuple], out_shape: tuple, params: dict) -> str:
    """The tangent the jvp makes from the tangents of the operands `moving`,
    printed from the op's statement by transposing it."""
    names = operand_names(len(shapes))
    xs = [Formula(n, s) for n, s in zip(names, shapes)]
    terms = []
    for i in moving:
        term = jvp_term(op.derivative, i, Formula(dotted(names[i]), shapes[i]), Formula("out", out_shape), xs,
                        params, PRINTER, PRINTER)
        if term is not None:
            terms.append(term.text)
    return " + ".join(terms).replace(" + −", " − ") or "0"


# ------------------------------------------------------------------- code


class CodeWriter:
    """Writes a statement as Python: one assignment per op, each a call of
    the op's primal rule, bound as `NAME_`; constants, and parameters other
    than numbers, strings and tuples of them, are bound to names too. The
    names a function written so reads are `namespace`."""

    def __init__(self):
        self.lines: list[str] = []
        self.namespace: dict[str, object] = {}
        self.shapes: dict[str, tuple] = {}

    def bind(self, name: str, shape: tuple) -> str:
        self.shapes[name] = tuple(shape)
        return name

    def __call__(self, name: str, inputs: list, **params) -> str:
        op = OPS[name]
        shape = op.shape(*[self.shapes[v] for v in inputs], **params)
        target = self.bind(f"t{len(self.lines)}", shape)
        self.namespace[f"{name}_"] = op.impl
        args = ", ".join(list(inputs) + [f"{k}={self.literal(v)}" for k, v in params.items()])
        self.lines.append(f"{target} = {name}_({args})")
        return target

    def literal(self, value) -> str:
        if _plain(value):
            return repr(value)
        name = f"c{len(self.namespace)}"
        self.namespace[name] = value
        return name

    def const(self, value, name: str | None = None) -> str:
        target = f"c{len(self.namespace)}"
        self.namespace[target] = value if type(value) is float else np.asarray(value, dtype=np.float64)
        return self.bind(target, np.shape(value))

    def shape(self, v) -> tuple:
        return self.shapes[v]


def _plain(value) -> bool:
    """Written as itself in code: a finite number, a string, a tuple of them."""
    if type(value) is tuple:
        return all(_plain(v) for v in value)
    return type(value) in (int, str, bool) or (type(value) is float and math.isfinite(value))


def vjp_code(derivative: Callable, i: int, shapes: list[tuple], out_shape: tuple, params: dict,
             batched: bool = False) -> tuple[str, dict]:
    """Operand i's vjp at these shapes and parameters, written out as the
    source of a Python function `vjp(g, out, *operands)`, and the names it
    reads (the primal rules it calls, its constants). `batched`: g carries a
    leading batch axis, one cotangent per slice (the rows of a Jacobian in
    reverse mode), and the steps that meet it apply to the batch as the
    forward tangents' do (`BatchedWriter`)."""
    writer = CodeWriter()
    emit = BatchedWriter(writer) if batched else writer
    names = operand_names(len(shapes))
    args = [writer.bind(n, s) for n, s in zip(names, shapes)]
    g = writer.bind("g", out_shape)
    if batched:
        emit.batched.add(g)
    result = derivative(i, g, writer.bind("out", out_shape), *args, emit=emit, **params)
    if batched and result not in emit.batched:  # 0, or a cotangent that does not depend on g
        writer.namespace.update(zeros=np.zeros, broadcast_to=np.broadcast_to)
        whole = f"(g.shape[0],) + {tuple(shapes[i])!r}"
        result = f"zeros({whole})" if result is None else f"broadcast_to({result}, {whole})"
    elif result is None:  # a zero derivative
        writer.namespace["zeros_like"] = np.zeros_like
        result = f"zeros_like({args[i]}, dtype=float)"
    body = writer.lines + [f"return {result}"]
    return f"def vjp(g, out, {', '.join(names)}):\n" + "".join(f"    {line}\n" for line in body), writer.namespace


def compiled_vjp(derivative: Callable, batched: bool = False) -> Callable:
    """The numeric vjp an op gets from its statement, fast: the statement is
    written out as code (`vjp_code`) once for each operand, shapes and
    parameters met, and that function runs; a statement whose parameters
    cannot be a key (arrays, slices) is evaluated (`interpreted_vjp`). The
    same primal rules in the same order, so the same values: what a step of
    the interpreter costs is paid once, not at every call (the chain
    benchmark's 10,000 small vjps). `batched`: for cotangents with a leading
    batch axis (`vjp_code`), the Jacobian's rows in reverse mode."""
    interpreted = batched_interpreted_vjp(derivative) if batched else interpreted_vjp(derivative)
    written: dict[tuple, Callable] = {}

    def vjp(i, g, out, *xs, **params):
        # The key spelled out for one and two operands: this runs at every
        # node of every reverse sweep.
        try:
            if params:
                key = (i, *[x.shape for x in xs], *params.items())
            elif len(xs) == 1:
                key = (i, xs[0].shape)
            else:
                key = (i, xs[0].shape, xs[1].shape) if len(xs) == 2 else (i, *[x.shape for x in xs])
            function = written.get(key)
        except (TypeError, AttributeError):  # an unhashable parameter, an operand without a shape
            return interpreted(i, g, out, *xs, **params)
        if function is None:
            function = _written(written, key, vjp_code(derivative, i, [np.shape(x) for x in xs], np.shape(out),
                                                       params, batched), "vjp")
        return function(g, out, *xs)
    return vjp


def batched_interpreted_vjp(derivative: Callable) -> Callable:
    """The vjp for a batch of cotangents (k, *shape), evaluated step by step
    (`Batched`): for statements whose parameters cannot key a cache."""
    def vjp(i, g, out, *xs, **params):
        result = derivative(i, Tangents(g), out, *xs, emit=BATCHED, **params)
        whole = (np.shape(g)[0],) + np.shape(xs[i])
        if result is None:
            return np.zeros(whole)
        return result.value if type(result) is Tangents else np.broadcast_to(result, whole)
    return vjp


def _written(functions: dict, key: tuple, code: tuple[str, dict], name: str) -> Callable:
    """The function `code` defines, kept under `key`."""
    if len(functions) >= WRITTEN_PER_OP:
        functions.clear()
    source, names = code
    namespace = {}
    exec(source, names, namespace)
    functions[key] = namespace[name]
    return namespace[name]


class BatchedWriter:
    """Writes the steps a jvp applies to tangents (`jvp_term`'s `emit`): as
    `CodeWriter`, except that an op applied to a tangent batch is a call of
    `apply_batched`, chosen when written."""

    def __init__(self, writer: CodeWriter):
        self.writer = writer
        self.batched: set = set()

    def __call__(self, name: str, inputs: list, **params) -> str:
        if any(type(v) is Linear for v in inputs):
            raise NotLinear(f"`{name}` applied to a value linear in the cotangent")
        which = tuple(v in self.batched for v in inputs)
        writer = self.writer
        if not any(which):
            return writer(name, inputs, **params)
        op = OPS[name]
        shape = op.shape(*[writer.shapes[v] for v in inputs], **params)
        if op.batched is None and op.structure.kind == "elementwise":
            # The primal rule broadcasts the batch axis itself, once each
            # batched operand has the output's rank (`_lift`).
            writer.namespace["lift_"] = _lift
            lifted = []
            for v, b in zip(inputs, which):
                if b and len(writer.shapes[v]) < len(shape):
                    writer.lines.append(f"t{len(writer.lines)} = lift_({v}, {len(shape)})")
                    v = writer.bind(f"t{len(writer.lines) - 1}", shape)
                lifted.append(v)
            function, inputs = f"{name}_", lifted
            writer.namespace[function] = op.impl
        else:
            function = f"batched{len(writer.lines)}_"
            writer.namespace[function] = functools.partial(apply_batched, op, which)
        target = writer.bind(f"t{len(writer.lines)}", shape)
        args = ", ".join(list(inputs) + [f"{k}={writer.literal(v)}" for k, v in params.items()])
        writer.lines.append(f"{target} = {function}({args})")
        self.batched.add(target)
        return target

    def const(self, value, name: str | None = None) -> str:
        return self.writer.const(value, name)

    def shape(self, v) -> tuple:
        return v.shape if type(v) is Linear else self.writer.shapes[v]


def jvp_code(derivative: Callable, moving: list[int], shapes: list[tuple], out_shape: tuple,
             params: dict) -> tuple[str, dict]:
    """The jvp for tangents of the operands `moving` at these shapes and
    parameters, written out as the source of a Python function `jvp(*the
    tangents, out, *operands)`, and the names it reads: the statement
    transposed (`jvp_term`), coefficients and tangent steps as code."""
    writer = CodeWriter()
    emit = BatchedWriter(writer)
    names = operand_names(len(shapes))
    args = [writer.bind(n, s) for n, s in zip(names, shapes)]
    out = writer.bind("out", out_shape)
    tangents = {i: writer.bind(f"d_{names[i]}", shapes[i]) for i in moving}
    emit.batched.update(tangents.values())
    terms = []
    for i, tangent in tangents.items():
        term = jvp_term(derivative, i, tangent, out, args, params, writer, emit)
        if term is not None and term not in emit.batched:  # a tangent that does not depend on the direction
            writer.namespace["broadcast_to"] = np.broadcast_to
            writer.lines.append(f"t{len(writer.lines)} = broadcast_to({term}, (k,) + {tuple(out_shape)!r})")
            term = f"t{len(writer.lines) - 1}"
        if term is not None:
            terms.append(term)
    if not terms:
        writer.namespace["zeros"] = np.zeros
    body = [f"k = {tangents[moving[0]]}.shape[0]", *writer.lines,
            f"return {' + '.join(terms) if terms else f'zeros((k,) + {tuple(out_shape)!r})'}"]
    header = f"def jvp({', '.join([*tangents.values(), out, *args])}):\n"
    return header + "".join(f"    {line}\n" for line in body), writer.namespace


def compiled_jvp(derivative: Callable) -> Callable:
    """The numeric jvp an op gets from its statement, fast: the transposed
    statement written out as code (`jvp_code`) once for each set of moving
    operands, shapes and parameters met, as `compiled_vjp`; `derived_jvp`
    where the parameters cannot be a key."""
    derived = derived_jvp(derivative)
    written: dict[tuple, Callable] = {}

    def jvp(ts, out, *xs, **params):
        moving = tuple(t is not None for t in ts)
        try:
            key = (moving, *[x.shape for x in xs], *params.items())
            function = written.get(key)
        except (TypeError, AttributeError):
            return derived(ts, out, *xs, **params)
        if function is None:
            code = jvp_code(derivative, [i for i, m in enumerate(moving) if m], [np.shape(x) for x in xs],
                            np.shape(out), params)
            function = _written(written, key, code, "jvp")
        return function(*[t for t in ts if t is not None], out, *xs)
    return jvp


# The functions kept for one op's vjp (one per operand, shapes and parameters met).
WRITTEN_PER_OP = 256
