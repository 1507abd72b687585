"""The derivative statement printed (rules.py's interpretations): each value
a formula over the names of the operands, `g` and `out` — `grad
--explain`'s rule text, the vjp (`vjp_text`) and, transposed
(rules_forward.py), the jvp (`jvp_text`)."""

from __future__ import annotations

import numpy as np

from .rules import OPS, operand_names
from .rules_forward import Linear, NotLinear, jvp_term


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
        if name == "reshape" and inputs[0].made_by == "matmul":  # a product of vectors made matrices, and back
            product = self.of_vectors(*inputs[0].inputs)
            if product is not None and product.shape == shape:
                return product
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

    def of_vectors(self, left: Formula, right: Formula) -> Formula | None:
        """left @@ right with each operand that is a vector made a matrix as
        numpy's matmul promotes one (a row on the left, a column on the
        right) written as that vector; None where neither is one."""
        vectors = [promoted(left, True), promoted(right, False)]
        if vectors == [None, None]:
            return None
        return self("matmul", [v or x for v, x in zip(vectors, (left, right))])

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
        elif name in ("select", "scatterPairs", "addPairs"):
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

    @staticmethod
    def once(key, make) -> Formula:
        """A value several statements share (Emitter.once): printed where it is used."""
        return make()


def promoted(x: Formula, row: bool) -> Formula | None:
    """The vector x stands for when x is that vector made a row (`row`) or
    a column: its reshape to one, or the transpose of its reshape to the other."""
    if x.made_by == "transpose":
        x, row = x.inputs[0], not row
    if x.made_by != "reshape" or len(x.inputs[0].shape) != 1:
        return None
    n = x.inputs[0].shape[0]
    return x.inputs[0] if x.shape == ((1, n) if row else (n, 1)) else None


PRINTER = Printer()


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
