"""The derivative statement written as code (rules.py's interpretations):
`CodeWriter` writes one assignment per op, each a call of its primal rule;
`vjp_code` and `jvp_code` (the statement transposed, rules_forward.py)
write whole functions, and `compiled_vjp`/`compiled_jvp` — the numeric
rules every op gets — run them, written once per operand, shapes and
parameters met. `BatchedWriter` writes the steps that meet a batch of
tangents or cotangents."""

from __future__ import annotations

import functools
import math
import re
from typing import Callable

import numpy as np

from .rules import OPS, comparable, interpreted_vjp, operand_names
from .rules_forward import Linear, NotLinear, apply_batched, batched_interpreted_vjp, derived_jvp, jvp_term, lift


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
    cannot be a key (arrays) is evaluated (`interpreted_vjp`). The
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
        except TypeError:  # a slice (hashable from Python 3.12), an array
            try:
                key = (i, *[x.shape for x in xs], *[(k, comparable(v)) for k, v in params.items()])
                function = written.get(key)
            except (TypeError, AttributeError):
                return interpreted(i, g, out, *xs, **params)
        except AttributeError:  # an operand without a shape
            return interpreted(i, g, out, *xs, **params)
        if function is None:
            function = _written(written, key, vjp_code(derivative, i, [np.shape(x) for x in xs], np.shape(out),
                                                       params, batched), "vjp")
        return function(g, out, *xs)
    vjp.statement = derivative  # a sweep written as code writes the statement itself (reverse_steps.py)
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
        self.negations: dict[str, str] = {}  # a tangent's negation -> the tangent, for `jvp_code`'s sum

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
            # batched operand has the output's rank (`lift`).
            writer.namespace["lift_"] = lift
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
        if name == "neg":
            self.negations[target] = inputs[0]
        return target

    def const(self, value, name: str | None = None) -> str:
        return self.writer.const(value, name)

    def shape(self, v) -> tuple:
        return v.shape if type(v) is Linear else self.writer.shapes[v]


def jvp_code(derivative: Callable, moving: list[int], shapes: list[tuple], out_shape: tuple,
             params: dict, into: bool = False) -> tuple[str, dict] | None:
    """The jvp for tangents of the operands `moving` at these shapes and
    parameters, written out as the source of a Python function `jvp(*the
    tangents, out, *operands)`, and the names it reads: the statement
    transposed (`jvp_term`), coefficients and tangent steps as code.
    `into`: a function `jvp(*the tangents, out, *operands, *spares)`, a
    spare for each tangent: None, or that tangent's array, which the
    function may write into once nothing reads it (`_written_into`); None
    where the last step cannot write into a spare (not an elementwise
    ufunc)."""
    writer = CodeWriter()
    emit = BatchedWriter(writer)
    names = operand_names(len(shapes))
    args = [writer.bind(n, s) for n, s in zip(names, shapes)]
    out = writer.bind("out", out_shape)
    tangents = {i: writer.bind(f"d_{names[i]}", shapes[i]) for i in moving}
    emit.batched.update(tangents.values())
    terms, owners = [], []  # each term, and the tangent it is made from
    for i, tangent in tangents.items():
        term = jvp_term(derivative, i, tangent, out, args, params, writer, emit)
        if term is not None and term not in emit.batched:  # a tangent that does not depend on the direction
            writer.namespace["broadcast_to"] = np.broadcast_to
            writer.lines.append(f"t{len(writer.lines)} = broadcast_to({term}, (k,) + {tuple(out_shape)!r})")
            term = f"t{len(writer.lines) - 1}"
        if term is not None:
            terms.append(term)
            owners.append(tangent)
    if not terms:
        writer.namespace["zeros"] = np.zeros
    total = terms[0] if terms else f"zeros((k,) + {tuple(out_shape)!r})"
    last = None  # the sum's last step: (ufunc, left, right)
    for p, term in enumerate(terms[1:], 2):  # a + (−b) is a − b, one pass over the tangents fewer (sub's jvp)
        if term in emit.negations:
            writer.lines.remove(f"{term} = neg_({emit.negations[term]})")
            term, sign = emit.negations[term], "-"
        else:
            sign = "+"
        if into and p == len(terms):
            if p > 2:
                writer.lines.append(f"left = {total}")
                total = "left"
            last = (np.subtract if sign == "-" else np.add, total, term)
        else:
            total += f" {sign} {term}"
    if into:
        spares = [f"into_{tangent}" for tangent in tangents.values()]
        first = " ".join(f"{spare} if {spare} is not None else" for spare in spares) + " None"
        total = _written_into(writer, terms, owners, total, last, first if len(spares) > 1 else spares[0])
        if total is None:
            return None
    else:
        spares = []
    body = [f"k = {tangents[moving[0]]}.shape[0]", *writer.lines, f"return {total}"]
    header = f"def jvp({', '.join([*tangents.values(), out, *args, *spares])}):\n"
    return header + "".join(f"    {line}\n" for line in body), writer.namespace


def _written_into(writer: CodeWriter, terms: list[str], owners: list[str], total: str, last: tuple | None,
                  spare: str) -> str | None:
    """`jvp_code`'s lines, and the value it returns, with results written into the tangents' spares: each
    term's own last step into the spare of the tangent it is made from, where no later line reads that
    tangent (the product by each operand's partial of a product, into its tangent; a tangent the sum
    reads as it is, `a − b`'s b, is a term no line makes), and the last step into `spare` (the first
    spare given); None where that last step is not an elementwise ufunc."""
    writer.namespace["c_ordered"] = c_ordered
    lines = writer.lines
    for term, tangent in zip(terms, owners):
        defined = [j for j, line in enumerate(lines) if line.startswith(f"{term} = ")]
        read_after = defined and any(re.search(rf"\b{tangent}\b", line) for line in lines[defined[0] + 1:])
        if len(terms) > 1 and defined and not read_after and writer.shapes[term] == writer.shapes[tangent] \
                and _into_call(writer, defined[0]):
            lines[defined[0]] = _into_call(writer, defined[0], f"into_{tangent}")
    if last is not None:
        ufunc, left, right = last
        name = "into_subtract" if ufunc is np.subtract else "into_add"
        writer.namespace[name] = ufunc
        return f"{name}({left}, {right}, out=c_ordered({spare}, {left}, {right}))"
    if not lines or not lines[-1].startswith(f"{total} = ") or not _into_call(writer, len(lines) - 1):
        return None
    lines[-1] = _into_call(writer, len(lines) - 1, f"{spare}")
    return total


def _into_call(writer: CodeWriter, j: int, spare: str | None = None) -> str | bool:
    """Whether line j calls an elementwise op's value rule that takes `out=` (`takes_out`), on operands
    alone; given a `spare`, the line written into it where it and the operands lie alike (`c_ordered`)."""
    line = writer.lines[j]
    call = line.partition(" = ")[2]
    name, _, operands = call.partition("(")
    op = OPS.get(name[:-1])
    if op is None or writer.namespace.get(name) is not op.impl or not takes_out(op) \
            or op.structure.kind != "elementwise" or "=" in operands or not operands.endswith(")"):
        return False
    return True if spare is None else f"{line[:-1]}, out=c_ordered({spare}, {operands[:-1]}))"


def c_ordered(into, *operands):
    """`into` where it and every array operand lie in C order, else None (a
    new array): the result then lies as the one a ufunc makes (in its
    operands' order), which a reduction over it adds up in."""
    if into is not None and into.flags.c_contiguous and all(
            type(x) is not np.ndarray or x.flags.c_contiguous for x in operands):
        return into
    return None


def takes_out(op) -> bool:
    """Whether an op's value rules, guarded and unguarded, write their result
    into an array given as `out=`: elementwise ufuncs (not a generalised one,
    matmul, whose BLAS call may differ with the output's memory), and rules
    that say so (`scale`)."""
    return all(isinstance(rule, np.ufunc) and rule.signature is None or getattr(rule, "takes_out", False)
               for rule in (op.impl, op.unguarded) if rule is not None)


def unguarded_rules(namespace: dict) -> dict:
    """A written function's `namespace` with each op's primal rule (bound as
    `NAME_`) replaced by its unguarded one where it has one (`Op.unguarded`),
    for code whose caller checks that what it computes is finite."""
    return {name: getattr(OPS.get(name[:-1]), "unguarded", None) or rule if name.endswith("_") else rule
            for name, rule in namespace.items()}


def guarded(function: Callable) -> bool:
    """Whether a written function calls a value rule that has an unguarded one (`unguarded_rules`)."""
    return any(name.endswith("_") and getattr(OPS.get(name[:-1]), "unguarded", None) is not None
               for name in function.__globals__)


def compiled_jvp(derivative: Callable) -> Callable:
    """The numeric jvp an op gets from its statement, fast: the transposed
    statement written out as code (`jvp_code`) once for each set of moving
    operands, shapes and parameters met, as `compiled_vjp`; `derived_jvp`
    where the parameters cannot be a key. `jvp.resolve(ts, out, xs,
    params)` is the written function a call would run, called as
    function(*the tangents that are not None, out, *xs) (None where the
    statement is evaluated): a sweep written as code calls it directly;
    `unguarded`: the function with each op's unguarded value rule
    (`Op.unguarded`), for a caller that checks what it gives; `into`: the
    function that writes its result into an array given last (`jvp_code`),
    None where it cannot."""
    derived = derived_jvp(derivative)
    written: dict[tuple, Callable] = {}

    def resolve(ts, out, xs, params, unguarded: bool = False, into: bool = False) -> Callable | None:
        moving = tuple(t is not None for t in ts)
        try:
            key = (moving, *[x.shape for x in xs], *[(k, comparable(v)) for k, v in params.items()], unguarded, into)
            function = written.get(key, written)
        except (TypeError, AttributeError):  # an array parameter, an operand without a shape
            return None
        if function is written:
            code = jvp_code(derivative, [i for i, m in enumerate(moving) if m], [np.shape(x) for x in xs],
                            np.shape(out), params, into)
            function = None if code is None else _written(
                written, key, (code[0], unguarded_rules(code[1]) if unguarded else code[1]), "jvp")
            written[key] = function
        return function

    def jvp(ts, out, *xs, **params):
        function = resolve(ts, out, xs, params)
        if function is None:
            return derived(ts, out, *xs, **params)
        return function(*[t for t in ts if t is not None], out, *xs)
    jvp.resolve = resolve
    return jvp


# The functions kept for one op's vjp (one per operand, shapes and parameters met).
WRITTEN_PER_OP = 256
