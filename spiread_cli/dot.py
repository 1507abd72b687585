"""The tape as a Graphviz DOT graph.

Inputs, `--wrt` nodes, the output, constants and ops are told apart by shape
and colour; each node shows the op, the bound name, the shape and the value
(and, for `--wrt` nodes, the gradient). When the program computes with its
gradients, the recorded backward pass is part of the graph: each of its
nodes is drawn dashed in violet, named by the rule that made it
(`∂log/∂x`) above the op it recorded.
"""

from __future__ import annotations

import html

import numpy as np

from .interpreter import Run
from .formatting import format_array, short_shape
from .tape import made_by_rule

STYLE = {
    "input": 'shape=box, style="rounded,filled", fillcolor="#dbeafe", color="#1d4ed8"',
    "const": 'shape=box, style="rounded,filled", fillcolor="#f3f4f6", color="#9ca3af", fontcolor="#4b5563"',
    "op": 'shape=box, style="filled", fillcolor="#ffffff", color="#374151"',
    "wrt": 'shape=box, style="rounded,filled,bold", fillcolor="#fde68a", color="#b45309", penwidth=2',
    "output": 'shape=box, style="filled,bold", fillcolor="#bbf7d0", color="#15803d", penwidth=2',
    "adjoint": 'shape=box, style="filled,dashed", fillcolor="#f5f3ff", color="#7c3aed"',
}
# Arrays with more entries than this show a summary in the graph.
LABEL_ENTRIES = 12


def _value_text(value: np.ndarray) -> str:
    value = np.asarray(value)
    if value.size > LABEL_ENTRIES:
        return f"min {value.min():.4g}, max {value.max():.4g}" if value.size else "empty"
    return format_array(value, precision=4)


def _lines(text: str) -> str:
    return "<br/>".join(html.escape(line) for line in text.splitlines())


def to_dot(run: Run, gradients: dict[str, np.ndarray] | None = None) -> str:
    """DOT for the part of the tape the output depends on."""
    gradients = gradients or {}
    nodes = run.tape.nodes
    needed = run.tape.feeding(run.output)
    wrt_ids = {run.bindings[name]: name for name in gradients}
    lines = ["digraph spiread {",
             '  graph [rankdir=TB, fontname="Helvetica", nodesep=0.3, ranksep=0.35];',
             '  node [fontname="Helvetica", fontsize=11, margin="0.12,0.06"];',
             '  edge [color="#6b7280", arrowsize=0.7];']
    for node in nodes:
        if not needed[node.id]:
            continue
        adjoint = node.op is not None and made_by_rule(node)
        kind = ("output" if node.id == run.output else "wrt" if node.id in wrt_ids
                else "adjoint" if adjoint else node.kind)
        head = node.label if node.op is not None else ("input" if node.kind == "input" else "constant")
        rows = [f"<b>{html.escape(head)}</b>"]
        if adjoint:
            rows.append(f'<font color="#7c3aed">{html.escape(node.op.name)}</font>')
        if node.name:
            rows.append(f'<font point-size="13"><b>{html.escape(node.name)}</b></font>')
        if node.kind != "const":
            rows.append(f'<font color="#6b7280">{short_shape(node.value.shape)}</font>')
        colour = "#111827" if node.finite else "#dc2626"  # inf and nan stand out in red
        rows.append(f'<font face="Courier" color="{colour}">{_lines(_value_text(node.value))}</font>')
        if node.id in wrt_ids:
            grad = gradients[wrt_ids[node.id]]
            rows.append(f'<font face="Courier" color="#b45309">∇ {_lines(_value_text(grad))}</font>')
        label = "<br/>".join(rows)
        lines.append(f"  n{node.id} [label=<{label}>, {STYLE[kind]}];")
    for node in nodes:
        if needed[node.id]:
            for i in node.inputs:
                lines.append(f"  n{i} -> n{node.id};")
    lines.append("}")
    return "\n".join(lines) + "\n"
