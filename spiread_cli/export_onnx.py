"""`spiread export --to onnx`: the exported graphs (export.py) built as an
ONNX model, each op by its `Export.onnx` form."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .diagnostics import SpireadError
from .export import Graphs
from .export_python import python_name
from .files import atomic_output
from .version import __version__

ONNX_OPSET = 21


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
        # Every name in the graph is defined once (ONNX's single static assignment), and the names the
        # model promises (the inputs, `value`, `grad_X`, `hvp_X`) are taken before a program's own names.
        self.taken: set[str] = set()

    def fresh(self, stem: str) -> str:
        while True:
            self.count += 1
            name = f"{stem}_{self.count}"
            if name not in self.taken:
                self.taken.add(name)
                return name

    def reserve(self, name: str) -> str:
        self.taken.add(name)
        return name

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
        """The operand a node would return unchanged (an Identity, a product
        by a constant 1 that broadcasts nothing, …), or None: such a node is
        not written. onnxruntime 1.32's graph optimizer, removing one itself
        (`EliminateIdentity` among them), left models whose other nodes still
        read the removed node's output ("not a graph input, initializer, or
        output of a previous node"), found by tests/test_export.py's random
        programs; the graph's outputs are named by Identity nodes of their own."""
        if op_type == "Identity":
            return inputs[0]
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
        name = self.reserve(name) if name and name not in self.taken else self.fresh(name or "c")
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


def promised(b: OnnxBuilder, names: list[str], g: Graphs) -> None:
    """Reserves the model's input and output names, which the program's own
    names then avoid (an input `v_w` that is not `--wrt` becomes an
    initializer of another name); two promised names that are one (`--wrt w,v_w
    --hvp`, a `--wrt value`) are an error, since the model could not keep both."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            leaf = g.wrt.get(name)
            raise SpireadError(f"the ONNX model cannot name two of its inputs and outputs `{name}`",
                               g.nodes[leaf].span if leaf is not None else None,
                               ["its inputs are the `--wrt` names and, with `--hvp`, `v_NAME` for each; its outputs "
                                "`value`, `grad_NAME` and `hvp_NAME`: rename the value in the program, "
                                "or export `--to python`"])
        seen.add(b.reserve(name))


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
    inputs = [*g.wrt.items(), *((f"v_{n}", i) for n, i in g.directions.items())]
    promised(b, [name for name, _ in inputs] + list(outputs), g)
    for name, i in inputs:
        names[i] = name
        b.shapes[name] = g.nodes[i].shape
        graph_inputs.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.DOUBLE, list(g.nodes[i].shape)))
        if g.nodes[i].shape == ():
            # onnxruntime checks every declared input shape but a scalar's (onnxruntime#19434), and a vector given
            # for one broadcasts: the graph reads it through a Reshape to (), which refuses any size but 1.
            names[i] = b("Reshape", [name, b.ints(())], name=f"{name} must have shape () (a scalar)")
            b.shapes[names[i]] = ()
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
    # A constant whose reader was left out (`unchanged`: the 1 of x · 1) is not written: onnxruntime warns of it.
    read = {name for node in b.nodes for name in node.input}
    graph = onnx.helper.make_graph(b.nodes, f"{Path(g.run.source.name).stem}_{g.run.output_name}", graph_inputs,
                                   graph_outputs, [t for t in b.initializers if t.name in read])
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
