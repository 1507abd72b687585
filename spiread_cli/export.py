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

This module records the graphs (`graphs` -> `Graphs`); export_python.py and
export_onnx.py write them out.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from .diagnostics import SpireadError, option
from .rewrite import fuse
from .run import Run
from .second import record_inner_product
from .tape import made_by_rule
from .tape_nodes import Node


TARGETS = {"python": (".py", "array_api_compat"), "onnx": (".onnx", "onnx")}  # what each writes, what it needs


def check_target(to: str) -> None:
    """Refuse, before any work, a target whose writer's module is not
    installed (in each front end's words: `--to python`, `to="python"`)."""
    from .files import installed
    module = TARGETS[to][1]
    if not installed(module):
        raise SpireadError(f"{option('to', to)} needs {module}, which is not installed",
                           notes=['pip install "spiread[export]" (or pip install ".[export]" in spiread\'s checkout)'],
                           exit_code=2)


def written_files(to: str, out: Path, option: str):
    """The files exporting to `out` may write (files.Output, named by the
    front end's `option`): the module or model, and beside a Python module
    the archive of its larger arrays (export_python.py)."""
    from .files import Output
    written = Output(option, out, (TARGETS[to][0],))
    if to != "python" or not out.name:  # `-o .` has no name to give the archive, and is refused as a folder
        return [written]
    return [written, Output(option, out.with_suffix(".npz"), (".npz",), beside=written)]


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
            # A default named by `.backward(...)` is the program's error (exit 1), an option the user's (exit 2).
            what = f"{option('wrt', name)}: `{name}` is computed by the program" if wrt else \
                f"`.backward(...)` names `{name}`, which the program computes"
            raise SpireadError(f"{what}, and an export differentiates by the values a program is given",
                               run.binding_spans.get(name),
                               [f"differentiate by the inputs `{name}` is computed from ({option('wrt')}); the "
                                f"program's inputs are {', '.join(f'`{n}`' for n in run.inputs_of_output()) or 'none'}"],
                               exit_code=2 if wrt else 1)
    fused = fuse(run.tape, run.output, list(ids.values()), diagnostics=run.diagnostics)
    tape = fused.tape
    for node in tape.nodes:
        if node.op is not None and node.op.export is not None and node.op.export.refused is not None:
            why, notes = node.op.export.refused(**node.params)
            raise SpireadError(f"cannot export `{node.label}`: {why}", node.span, notes)
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
