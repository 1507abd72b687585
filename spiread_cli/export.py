"""`spiread export`: a program's value, gradient and Hessian-vector product
as code that runs without spiread: a Python module over the array API, or
an ONNX model.

All three are graphs of table ops on one tape: the program fused as
`train` fuses it (rewrite.py), its gradient recorded by
`Tape.backward_graph`, and for the HVP the gradient of h = Σ⟨∂f/∂x, v_x⟩
recorded again (reverse over reverse, second.py). Each op is written out by
its own `Export` entry (ops.py), so every derivative exports with nothing
more. A node that depends on no argument is a constant: its value, computed
here.
"""

from __future__ import annotations

import ast
import functools
import keyword
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__
from .diagnostics import SpireadError, option
from .files import atomic_output
from .ops import Op
from .rewrite import fuse
from .second import record_inner_product
from .run import Run
from .tape import made_by_rule
from .tape_nodes import Node

# The names an exported module defines or imports itself: a program's name
# that is one of them (or a keyword) is written with a `_` after it.
RESERVED = {"xp", "np", "Path", "INPUTS", "CONSTANTS", "inputs", "value", "value_and_grad", "hvp", "direction",
            "array_namespace", "device", "is_numpy_array", "is_torch_array"}
ONNX_OPSET = 21
# Arrays with at most this many entries are written into the module; larger
# ones go into the companion .npz.
INLINE_ENTRIES = 64
RUNTIME = Path(__file__).with_name("export_runtime.py")
# An intermediate of at least this many entries (128 KiB: what glibc's
# allocator gives its own pages) is freed after its last use (`del`).
FREED_ENTRIES = 16384


@dataclass
class Graphs:
    """What is exported: the fused tape with the gradient (and the HVP)
    recorded on it, and where each result is."""
    run: Run
    nodes: list[Node]
    output: int
    wrt: dict[str, int]          # name -> its input leaf
    grads: dict[str, int]        # name -> its gradient node
    directions: dict[str, int]   # name -> the HVP direction's leaf (`v_NAME`), with --hvp
    hvps: dict[str, int]         # name -> its H·v node, with --hvp

    def results(self) -> list[int]:
        return [self.output, *self.grads.values(), *self.hvps.values()]

    def arguments(self) -> list[Node]:
        """The exported functions' arguments, in tape order: the values
        differentiated by and the other inputs the results are computed from
        (not the HVP's directions, which `hvp` takes as a dict)."""
        needed = self.needed(self.results())
        directions = set(self.directions.values())
        wrt = set(self.wrt.values())
        return [n for n in self.nodes if n.kind == "input" and (needed[n.id] or n.id in wrt)
                and n.id not in directions]

    def needed(self, outputs: list[int]) -> list[bool]:
        """For each node, whether `outputs` are computed from it (a constant is
        computed already: what it is computed from is not needed)."""
        needed = [False] * len(self.nodes)
        for node_id in outputs:
            needed[node_id] = True
        constant = self.constant
        for node in reversed(self.nodes):
            if needed[node.id] and not constant[node.id]:
                for i in node.inputs:
                    needed[i] = True
        return needed

    @functools.cached_property
    def constant(self) -> list[bool]:
        """For each node, whether it depends on no input leaf: a constant of the export."""
        constant = [True] * len(self.nodes)
        for node in self.nodes:
            constant[node.id] = node.kind != "input" and all(constant[i] for i in node.inputs)
        return constant

    def where(self, node: Node) -> str:
        """FILE:LINE:COL of a node's span."""
        span = node.span
        return self.run.source.name if span is None else f"{self.run.source.name}:{span.line}:{span.column}"

    def describe(self, node: Node) -> str:
        """What a node is, for its comment: its rule (`∂log/∂x`), else its source text."""
        if made_by_rule(node) or node.span is None or node.label.startswith(("⟨", "Σ ⟨", "∂f")):
            return node.label
        text = " ".join(self.run.source.snippet(node.span).split())
        return text if len(text) <= 60 else text[:57] + "…"


def graphs(run: Run, wrt: list[str] | None, hvp: bool) -> Graphs:
    """The value, the gradient with respect to `wrt` (names of inputs) and,
    with `hvp`, the Hessian-vector product, as one fused tape."""
    ids = run.wrt_ids(wrt)
    for name, i in ids.items():
        if run.tape.nodes[i].kind != "input":
            raise SpireadError(f"{option('wrt', name)}: `{name}` is computed by the program, and an export "
                               "differentiates by the values a program is given", run.binding_spans.get(name),
                               [f"differentiate by the inputs `{name}` is computed from; the program's inputs "
                                f"are {', '.join(f'`{n}`' for n in run.inputs_of_output()) or 'none'}"],
                               exit_code=2)
    fused = fuse(run.tape, run.output, list(ids.values()), diagnostics=run.diagnostics)
    tape = fused.tape
    wrt_ids = dict(zip(ids, fused.wrt))
    grad_ids = tape.backward_graph(fused.output, fused.wrt, run.diagnostics)
    grads = {name: grad_ids[i] for name, i in wrt_ids.items()}
    directions, hvps = {}, {}
    if hvp:
        leaves, h = record_inner_product(tape, grad_ids, {i: f"v_{name}" for name, i in wrt_ids.items()})
        hvp_ids = tape.backward_graph(h, fused.wrt, run.diagnostics)
        directions = {name: leaves[i] for name, i in wrt_ids.items()}
        hvps = {name: hvp_ids[i] for name, i in wrt_ids.items()}
    return Graphs(run, tape.nodes, fused.output, wrt_ids, grads, directions, hvps)


# ----------------------------------------------------------------- Python


def python_name(name: str) -> str:
    return f"{name}_" if keyword.iskeyword(name) or name in RESERVED or name.startswith("_") else name


def array_code(value: np.ndarray) -> str:
    """An array as a numpy literal that reads back exactly (repr of floats round-trips)."""
    value = np.asarray(value)
    if value.size == 0:
        return f"np.zeros({value.shape}, dtype=np.{value.dtype.name})"
    return f"np.array({value.tolist()!r})"


def number_code(value: float) -> str:
    value = float(value)
    if math.isfinite(value):
        return f"({value!r})" if value < 0 or (value == 0 and math.copysign(1, value) < 0) else repr(value)
    return f"float({str(value)!r})"


class PythonWriter:
    """Writes the graphs as one module. Each function is the nodes its
    results need, one line per op node in tape order; arguments keep the
    program's names, other nodes are named after their binding or their op."""

    def __init__(self, graphs: Graphs):
        self.g = graphs
        self.constant = graphs.constant
        self.names: dict[int, str] = {}
        self.taken: set[str] = set(RESERVED)
        self.constants: dict[str, np.ndarray] = {}  # name -> value, for CONSTANTS
        self.by_identity: dict[int, tuple[object, str]] = {}  # id -> (a parameter or value, its constant)
        self.used: set[str] = set()  # the constants the function being written uses
        self.current: Node | None = None
        self.lines: dict[int, tuple[str, set[str]]] = {}  # node id -> its line and the constants it reads
        for prefix, results in (("grad", graphs.grads), ("hvp", graphs.hvps)):
            for name, i in results.items():  # a result line is named for what it is
                node = graphs.nodes[i]
                if node.op is not None and not self.constant[i] and not node.name and i not in self.names:
                    self.names[i] = self.fresh(f"{prefix}_{name}")

    # -------------------------------------------------------------- names

    def name_of(self, node: Node) -> str:
        if node.id not in self.names:
            self.names[node.id] = self.fresh(node.name if node.name and node.name.isidentifier()
                                             else f"{node.op.name if node.op else 'c'}_{node.id}")
        return self.names[node.id]

    def fresh(self, wanted: str) -> str:
        name = python_name(wanted)
        while name in self.taken:
            name += "_"
        self.taken.add(name)
        return name

    def literal(self, value, hint: str = "c") -> str:
        """A parameter or constant as code: numbers and strings as themselves,
        an array as a named constant of the module."""
        if isinstance(value, (bool, int, str)) or value is None:
            return repr(value)
        if isinstance(value, float):
            return number_code(value)
        if isinstance(value, tuple):
            return f"({', '.join(self.literal(v) for v in value)}{',' if len(value) == 1 else ''})"
        known = self.by_identity.get(id(value))
        if known is None:  # kept with the value, so that its id is not another's while it is known
            known = self.by_identity[id(value)] = (value, self.fresh(f"{hint}_{self.current.id}" if self.current
                                                                     else hint))
            self.constants[known[1]] = np.asarray(value)
        name = known[1]
        self.used.add(name)
        return name

    def shape(self, operand: str) -> tuple:
        return self.shapes[operand]

    def value(self, operand: str):
        """An operand's value if it is a constant of the export, else None."""
        return self.values.get(operand)

    # -------------------------------------------------------------- code

    def operand(self, node: Node, numbers: bool) -> str:
        """How an op's line reads an operand: an argument or a line's name,
        a number (where the form takes numbers), or a named constant."""
        if not self.constant[node.id]:
            return self.name_of(node)
        value = np.asarray(node.value)
        if value.ndim == 0 and numbers:
            return number_code(value)
        if node.id not in self.names:
            hint = node.name or (node.label if node.label.isidentifier() and node.label != "constant" else "c")
            self.names[node.id] = self.literal(value, hint)
        self.used.add(self.names[node.id])
        return self.names[node.id]

    def line(self, node: Node) -> str:
        """The node's line (written once, then reused by every function that needs it)."""
        if node.id not in self.lines:
            outer, self.used = self.used, set()
            self.lines[node.id] = (self.written(node), self.used)
            self.used = outer
        text, used = self.lines[node.id]
        self.used |= used
        return text

    def written(self, node: Node) -> str:
        op: Op = node.op
        form = op.export
        self.current = node
        operands = [self.operand(self.g.nodes[i], form.numbers) for i in node.inputs]
        self.shapes = {name: self.g.nodes[i].shape for name, i in zip(operands, node.inputs)}
        self.values = {name: self.g.nodes[i].value for name, i in zip(operands, node.inputs) if self.constant[i]}
        if callable(form.python):
            code = form.python(self, *operands, **node.params)
        else:
            code = form.python.format(*operands, **{k: self.literal(v) for k, v in node.params.items()})
        self.current = None
        return f"{self.name_of(node)} = {code}  # {self.g.where(node)} {self.g.describe(node)}"

    def result(self, node_id: int) -> str:
        node = self.g.nodes[node_id]
        return self.operand(node, False)  # a constant result as an array of the namespace

    def function(self, header: str, doc: str, outputs: list[int], returns, directions: bool = False) -> list[str]:
        """A function computing `outputs`; `returns(result)` writes its return
        value from a result writer."""
        self.used = set()
        arguments = self.g.arguments()
        needed = self.g.needed(outputs)
        computed = [n for n in self.g.nodes if needed[n.id] and n.op is not None and not self.constant[n.id]]
        body = [self.line(node) for node in computed]
        body = self.freeing(computed, body, set(outputs))
        returned = returns(self.result)
        names = [self.name_of(n) for n in arguments]
        given = "{" + ", ".join(f"{n.name!r}: {self.name_of(n)}" for n in arguments) + "}"
        unpacked = ", ".join(names) + ("," if len(names) == 1 else "")
        like = names[0] if names else "None"
        lines = [f"def {header.format(arguments=', '.join(f'{n}=None' for n in names))}:", f'    """{doc}"""',
                 f"    xp, ({unpacked}) = _arguments({given}, INPUTS)"]
        if directions:
            moving = {name: self.name_of(self.g.nodes[i]) for name, i in self.g.wrt.items()}
            ds = [self.name_of(self.g.nodes[i]) for i in self.g.directions.values()]
            lines.append(f"    {', '.join(ds)}{',' if len(ds) == 1 else ''} = _directions(xp, direction, "
                         "{" + ", ".join(f"{k!r}: {v}" for k, v in moving.items()) + "})")
        for name in sorted(self.used):
            lines.append(f"    {name} = _constant(xp, CONSTANTS[{name!r}], like={like})")
        lines += [f"    {line}" for line in body]
        lines.append(f"    return {returned}")
        return lines

    def freeing(self, computed: list[Node], body: list[str], kept: set[int]) -> list[str]:
        """The lines, with `del` after the last use of each large intermediate:
        a function holding every array it made until it returns made new
        pages for each step, a third of the mlp step (benchmarks/exported.py)."""
        last: dict[int, int] = {}
        for k, node in enumerate(computed):
            for i in node.inputs:
                last[i] = k
        dead: dict[int, list[str]] = {}
        for node in computed:
            if node.id in last and node.id not in kept and math.prod(node.shape) >= FREED_ENTRIES:
                dead.setdefault(last[node.id], []).append(self.name_of(node))
        lines = []
        for k, line in enumerate(body):
            lines.append(line)
            if k in dead:
                lines.append(f"del {', '.join(dead[k])}")
        return lines

    def module(self, companion: str | None) -> tuple[str, dict[str, np.ndarray]]:
        """The module's text, and the arrays for its companion .npz (empty
        when every array is written into the module)."""
        g = self.g
        out_name = g.run.output_name
        value_doc = f"`{out_name}` of {Path(g.run.source.name).name}"
        wrt = list(g.wrt)
        grads = ", ".join(f"{n!r}: ∂{out_name}/∂{n}" for n in wrt)
        functions = [
            self.function("value({arguments})", f"{value_doc}.", [g.output], lambda r: r(g.output)),
            self.function("value_and_grad({arguments})", f"{value_doc} and its gradient: (value, {{{grads}}}).",
                          [g.output, *g.grads.values()],
                          lambda r: f"{r(g.output)}, {{" + ", ".join(f"{n!r}: {r(i)}" for n, i in g.grads.items())
                          + "}")]
        if g.hvps:
            functions.append(self.function(
                "hvp(direction, {arguments})", "The Hessian of the value times `direction` (a dict by name; a name "
                "left out is zero): {" + ", ".join(f"{n!r}: H·v" for n in wrt) + "}.", list(g.hvps.values()),
                lambda r: "{" + ", ".join(f"{n!r}: {r(i)}" for n, i in g.hvps.items()) + "}", directions=True))
        inputs = {n.name: np.asarray(n.value) for n in g.arguments()}
        stored: dict[str, np.ndarray] = {}
        tables = []
        for table, arrays in (("INPUTS", inputs), ("CONSTANTS", self.constants)):
            entries = []
            for name, value in arrays.items():
                if value.size <= INLINE_ENTRIES:
                    entries.append(f"    {name!r}: {array_code(value)},")
                else:
                    stored[f"{table}/{name}"] = value
            tables.append([f"{table} = {{", *entries, "}"] if entries else [f"{table} = {{}}"])
        code = "\n\n\n".join("\n".join(f) for f in functions)
        helpers = runtime_helpers(code)
        text = "\n".join([
            f'"""{value_doc}, its gradient with respect to {", ".join(f"`{n}`" for n in wrt)}'
            f'{" and its Hessian-vector product" if g.hvps else ""}: exported by spiread {__version__}.',
            "",
            "Every function takes the program's inputs as keyword arguments, arrays of",
            "any array API namespace (numpy, PyTorch, CuPy, Dask); one left out is the",
            "program's own value (`inputs()`). Each line cites the program's FILE:LINE:COL;",
            "`del` lets go of a large intermediate after its last use.",
            '"""',
            "",
            *(["from pathlib import Path", ""] if stored else []),
            "import numpy as np",
            f"from array_api_compat import {', '.join(sorted(imported_names(code + helpers)))}",
            "",
            *tables[0], *tables[1],
            *([f"_STORED = np.load(Path(__file__).with_name({companion!r}), allow_pickle=False)",
               "for _key in _STORED.files:",
               "    _table, _name = _key.split('/', 1)",
               "    {'INPUTS': INPUTS, 'CONSTANTS': CONSTANTS}[_table][_name] = _STORED[_key]"] if stored else []),
            "",
            "",
            "def inputs():",
            '    """The program\'s own input values, by name."""',
            "    return {name: value.copy() for name, value in INPUTS.items()}",
            "",
            "",
            code,
            "",
            "",
            helpers,
        ])
        return text, stored


def runtime_helpers(code: str) -> str:
    """The functions of export_runtime.py that `code` calls, and those they call."""
    tree = ast.parse(RUNTIME.read_text())
    source = RUNTIME.read_text()
    defined = {f.name: ast.get_source_segment(source, f) for f in tree.body if isinstance(f, ast.FunctionDef)}
    wanted: list[str] = []
    pending = [n for n in defined if re.search(rf"\b{n}\(", code)]
    while pending:
        name = pending.pop(0)
        if name not in wanted:
            wanted.append(name)
            pending += [n for n in defined if n not in wanted and re.search(rf"\b{n}\(", defined[name])]
    return "\n\n\n".join(defined[n] for n in defined if n in wanted) + "\n"


def imported_names(code: str) -> list[str]:
    return [n for n in ("array_namespace", "device", "is_numpy_array", "is_torch_array") if re.search(rf"\b{n}\(", code)]


def export_python(graphs: Graphs, path: Path) -> list[Path]:
    """Write the module at `path` (and its companion .npz beside it, when an
    array is too large to write in); returns the files written."""
    companion = path.with_suffix(".npz")
    text, stored = PythonWriter(graphs).module(companion.name)
    written = []
    if stored:
        with atomic_output(companion) as f:
            np.savez_compressed(f, **stored)
        written.append(companion)
    with atomic_output(path) as f:
        f.write(text.encode("utf-8"))
    return [path, *written]


# ------------------------------------------------------------------- ONNX


class OnnxBuilder:
    """Builds the ONNX graph: `b(op_type, inputs, **attributes)` adds a node
    and returns its output's name; constants become initializers."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.FLOAT64 = onnx.TensorProto.DOUBLE
        self.nodes: list = []
        self.initializers: list = []
        self.shapes: dict[str, tuple] = {}
        self.values: dict[str, np.ndarray] = {}  # the constants' values, by name
        self.count = 0
        self.prefix = "n"

    def fresh(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def __call__(self, op_type: str, inputs: list[str], **attributes) -> str:
        same = self.unchanged(op_type, inputs)
        if same is not None:
            return same
        out = self.fresh(self.prefix)
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, [out], **attributes))
        return out

    # The operands (by position) that leave the other as it is when they are
    # 1 (or 0) everywhere: x · 1, 1 · x, x / 1; x + 0, 0 + x, x − 0.
    NEUTRAL = {"Mul": ((0, 1.0), (1, 1.0)), "Div": ((1, 1.0),), "Add": ((0, 0.0), (1, 0.0)), "Sub": ((1, 0.0),)}

    def unchanged(self, op_type: str, inputs: list[str]) -> str | None:
        """The operand an arithmetic node would return unchanged (a product by
        a constant 1 that broadcasts nothing, …), or None: such a node is not
        written. onnxruntime 1.32's graph optimizer, removing one itself,
        left a model whose other nodes still read the removed node's output
        ("not a graph input, initializer, or output of a previous node"),
        found by tests/test_export.py's random programs."""
        for position, neutral in self.NEUTRAL.get(op_type, ()):
            value, other = self.values.get(inputs[position]), inputs[1 - position]
            if (value is not None and value.size == 1 and bool(np.all(value == neutral)) and other in self.shapes
                    and len(self.shapes[other]) >= value.ndim):
                return other
        return None

    def const(self, value, name: str | None = None) -> str:
        value = np.asarray(value)
        if value.dtype.kind in "iu":
            value = value.astype(np.int64)
        elif value.dtype.kind != "b":
            value = value.astype(np.float64)
        name = name or self.fresh("c")
        self.initializers.append(self.onnx.numpy_helper.from_array(value, name))
        self.shapes[name] = value.shape
        self.values[name] = value
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(list(values), dtype=np.int64))

    def zeros(self, shape: tuple) -> str:
        return self("ConstantOfShape", [self.ints(shape)],
                    value=self.onnx.numpy_helper.from_array(np.zeros(1, dtype=np.float64)))

    def shape(self, name: str) -> tuple:
        return self.shapes[name]

    def value(self, name: str):
        """The value of a constant (an initializer), else None."""
        return self.values.get(name)


def onnx_model(graphs: Graphs):
    """The ONNX model: inputs the `--wrt` values (and `v_NAME` with --hvp),
    every other input an initializer; outputs `value`, `grad_NAME`, `hvp_NAME`."""
    import onnx
    g = graphs
    b = OnnxBuilder(onnx)
    constant = g.constant
    outputs = {"value": g.output, **{f"grad_{n}": i for n, i in g.grads.items()},
               **{f"hvp_{n}": i for n, i in g.hvps.items()}}
    needed = g.needed(g.results())
    names: dict[int, str] = {}
    graph_inputs = []
    for name, i in [*g.wrt.items(), *((f"v_{n}", i) for n, i in g.directions.items())]:
        names[i] = name
        b.shapes[name] = g.nodes[i].shape
        graph_inputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.DOUBLE, list(g.nodes[i].shape)))
    for node in g.nodes:
        if not needed[node.id] or node.id in names:
            continue
        if node.kind == "input" or constant[node.id]:
            names[node.id] = b.const(node.value, node.name if node.kind == "input" else None)
            continue
        form = node.op.export.onnx
        if form is None:
            raise SpireadError(f"`{node.label}` cannot be exported to ONNX: the op `{node.op.name}` has no ONNX form",
                               node.span, ["export it to Python instead: `--to python`"])
        b.prefix = python_name(node.name) if node.name and node.name.isidentifier() else node.op.name
        operands = [names[i] for i in node.inputs]
        out = form(b, *operands, **node.params) if callable(form) else b(form, operands)
        b.shapes[out] = node.shape
        names[node.id] = out
    graph_outputs = []
    for name, i in outputs.items():
        b.nodes.append(onnx.helper.make_node("Identity", [names[i]], [name]))
        graph_outputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.DOUBLE, list(g.nodes[i].shape)))
    graph = onnx.helper.make_graph(b.nodes, f"{Path(g.run.source.name).stem}_{g.run.output_name}", graph_inputs,
                                   graph_outputs, b.initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", ONNX_OPSET)],
                                   producer_name="spiread", producer_version=__version__)
    model.doc_string = (f"`{g.run.output_name}` of {g.run.source.name} and its gradient with respect to "
                        f"{', '.join(g.wrt)}{' and its Hessian-vector product' if g.hvps else ''}")
    onnx.checker.check_model(model, full_check=True)
    return model


def export_onnx(graphs: Graphs, path: Path) -> list[Path]:
    model = onnx_model(graphs)
    with atomic_output(path) as f:
        f.write(model.SerializeToString())
    return [path]
