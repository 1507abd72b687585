"""`spiread grad --explain`: the sweep that computes the gradients, step by step.

The sweeps themselves (`Tape.backward`, `ForwardSweep.push`) take an observer
and are otherwise unchanged; the recorders here watch them run, so what is
shown is the computation that produced the gradients, not a re-enactment.
Reverse mode: each node in reverse topological order, its adjoint g (and
which nodes' contributions added up to it), and what its op's rule sends to
each input. Forward mode: each node in tape order, the tangent its op's rule
makes from its inputs' (over all the sweep's blocks of directions, kept as its
shape and norm once it is too large to show: an explanation holds a few
numbers per node, not the sweep's tangents). The rules' text is printed from
each op's derivative statement (spiread_cli/rules_printed.py) at the node's shapes,
so the words are the arithmetic that ran.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .formatting import format_array, json_number, json_value, short_shape
from .gradients import gradients
from .rules import operand_names
from .rules_printed import jvp_text, vjp_text
from .run import Run
from .tape_nodes import Node

# Arrays with at most this many entries are shown in full; larger ones by their
# shape and norm.
SHOWN_ENTRIES = 24


@dataclass
class Contribution:
    to: int                # the input node
    operand: int           # its position among the op's operands
    value: np.ndarray      # what the op's rule sent it


@dataclass
class Step:
    """One node of a sweep. Reverse mode: `value` is the node's adjoint g,
    `sources` the nodes whose contributions added up to it (none for the
    output's seed) and `sends` what it passed back. Forward mode: `value` is
    the node's tangent (one row per seed direction; its shape and norm when
    too large to show) and `sources` the inputs whose tangents it was made
    from (none for a seed)."""
    node: int
    value: np.ndarray | Summarised
    sources: list[int] = field(default_factory=list)
    sends: list[Contribution] = field(default_factory=list)


@dataclass
class Explanation:
    mode: str                      # "reverse" or "forward"
    wrt: dict[str, int]            # name -> node id
    steps: list[Step]


class ReverseRecorder:
    """An observer for `Tape.backward`: a Step per node that passes its adjoint on."""

    def __init__(self):
        self.steps: list[Step] = []
        self.senders: dict[int, list[int]] = {}

    def __call__(self, node: Node, g: np.ndarray, k: int, gi: np.ndarray) -> None:
        if not self.steps or self.steps[-1].node != node.id:
            self.steps.append(Step(node.id, g, self.senders.get(node.id, [])))
        i = node.inputs[k]
        self.steps[-1].sends.append(Contribution(i, k, gi))
        self.senders.setdefault(i, []).append(node.id)

    def finish(self, gradients: dict[int, np.ndarray]) -> list[Step]:
        """The steps, with the values differentiated by (where the sweep ends)
        among them, in reverse tape order."""
        seen = {step.node for step in self.steps}
        ends = [Step(i, g, self.senders.get(i, [])) for i, g in gradients.items() if i not in seen]
        return sorted(self.steps + ends, key=lambda step: -step.node)


@dataclass
class Summarised:
    """An array too large to show, as it is shown: its shape and (Frobenius) norm."""
    shape: tuple[int, ...]
    norm: float


def shown(value: np.ndarray) -> np.ndarray | Summarised:
    """What an explanation keeps of an array: all of it when small, else its summary."""
    if value.size <= SHOWN_ENTRIES:
        return np.array(value, dtype=np.float64)
    with np.errstate(all="ignore"):
        return Summarised(value.shape, float(np.linalg.norm(np.ravel(value))))


def more_directions(kept: np.ndarray | Summarised, block: np.ndarray) -> np.ndarray | Summarised:
    """A tangent's directions so far, as `shown` keeps them, with the next block's."""
    if isinstance(kept, np.ndarray) and kept.size + block.size <= SHOWN_ENTRIES:
        return np.concatenate([kept, block])
    with np.errstate(all="ignore"):
        before = kept.norm if isinstance(kept, Summarised) else np.linalg.norm(kept.ravel())
        norm = float(np.hypot(before, np.linalg.norm(np.ravel(block))))
    return Summarised((kept.shape[0] + block.shape[0],) + block.shape[1:], norm)


class ForwardRecorder:
    """An observer for `ForwardSweep.push`: a Step per node that gets a
    tangent, its value growing by each block of directions the sweep pushes."""

    def __init__(self):
        self.steps: list[Step] = []
        self.of_node: dict[int, Step] = {}

    def __call__(self, node: Node, ts: list, t: np.ndarray) -> None:
        step = self.of_node.get(node.id)
        if step is None:
            sources = [i for i, ti in zip(node.inputs, ts) if ti is not None]
            step = self.of_node[node.id] = Step(node.id, shown(t), sources)
            self.steps.append(step)
        else:
            step.value = more_directions(step.value, t)


def explain(run: Run, wrt: list[str] | None = None, mode: str = "reverse"):
    """The gradients (as `gradients.gradients` gives them) and the sweep that made them."""
    recorder = ForwardRecorder() if mode == "forward" else ReverseRecorder()
    result = gradients(run, wrt, mode, observe=recorder)
    ids = {name: run.bindings[name] for name in result.gradients}
    steps = (recorder.steps if mode == "forward"
             else recorder.finish({ids[n]: g for n, g in result.gradients.items()}))
    return result, Explanation(mode, ids, steps)


# ------------------------------------------------------------------ naming


def handle(node_id: int) -> str:
    """How the explanation calls a node: v0, v1, … in tape order (a Wengert list)."""
    return f"v{node_id}"


def operand(node: Node, k: int) -> str:
    """The name a rule gives an operand: x; a and b; x0, x1, … (stack)."""
    return operand_names(len(node.inputs))[k]


def vjp_rule(run: Run, node: Node, k: int) -> str:
    nodes = run.tape.nodes
    return vjp_text(node.op, k, [nodes[i].shape for i in node.inputs], node.shape, node.params)


def jvp_rule(run: Run, node: Node, sources: list[int]) -> str:
    """The tangent rule for the operands whose tangents moved (`sources`)."""
    nodes = run.tape.nodes
    moving = [k for k, i in enumerate(node.inputs) if i in sources]
    return jvp_text(node.op, moving, [nodes[i].shape for i in node.inputs], node.shape, node.params)


def formula(node: Node) -> str:
    """The node as an equation's right side over the handles: `exp(v2)`, `v0 @@ v1`, `-v8`."""
    if node.op is None:
        if node.kind == "input":
            return "input"
        return format_array(node.value) if node.value.ndim == 0 else "constant"
    args = [handle(i) for i in node.inputs]
    label = node.label
    if label.isidentifier():
        return f"{label}({', '.join(args)})"
    if label == "-" and len(args) == 1:
        return f"-{args[0]}"
    if len(args) == 2 and set(label) <= set("+-*/%@^<>=!"):
        return f"{args[0]} {label} {args[1]}"
    if label.startswith(node.op.name + " "):  # `select (0,0) (1,1)`: the op and its fixed parameters
        return f"{node.op.name}({', '.join(args)}){label[len(node.op.name):]}"
    # A step of a recorded backward pass (a gradient used as a value) is
    # labelled by the rule that made it: `∂(*)/∂a`, `Σ∂ w`.
    made_by = f"   [{label}]" if "∂" in label else ""
    return f"{node.op.name}({', '.join(args)}){made_by}"


def where(run: Run, node: Node) -> str:
    return f"{run.source.name}:{node.span.line}:{node.span.column}" if node.span else ""


# ------------------------------------------------------------ presentation


def summary(value: np.ndarray | Summarised) -> dict:
    """An array as JSON: whole when small, else its shape and (Frobenius) norm."""
    kept = value if isinstance(value, Summarised) else shown(np.asarray(value))
    if isinstance(kept, Summarised):
        return {"shape": list(kept.shape), "norm": json_number(kept.norm)}
    return json_value(kept)


def summary_text(value: np.ndarray | Summarised, directions: bool = False) -> str:
    """An array for people: whole when small (matrices over several lines),
    else its shape and norm. Tangents have one row per seed direction."""
    kept = value if isinstance(value, Summarised) else shown(np.asarray(value))
    if len(kept.shape) == 0:
        return format_array(kept)
    shape = (f"{kept.shape[0]} directions × {short_shape(kept.shape[1:])}" if directions
             else short_shape(kept.shape))
    if isinstance(kept, Summarised):
        return f"({shape}, norm {kept.norm:.6g})"
    return hang(f"({shape}) ", format_array(kept))


def hang(prefix: str, text: str) -> str:
    """`prefix` then `text`, its later lines indented to line up under the first."""
    lines = text.split("\n")
    return "\n".join([prefix + lines[0]] + [(" " * len(prefix) + line).rstrip() for line in lines[1:]])


def _node_json(run: Run, node: Node) -> dict:
    span = node.span
    return {"node": handle(node.id), "name": node.name, "op": node.op.name if node.op else node.kind,
            "formula": formula(node), "line": span.line if span else None,
            "column": span.column if span else None}


def explanation_document(run: Run, explanation: Explanation) -> list[dict]:
    """`grad --explain --format json`'s "explain": the steps, as the text shows them."""
    nodes = run.tape.nodes
    steps = []
    for step in explanation.steps:
        node = nodes[step.node]
        doc = _node_json(run, node)
        if explanation.mode == "reverse":
            doc.update({"adjoint": summary(step.value), "from": [handle(i) for i in step.sources],
                        "sends": [{"to": handle(c.to), "operand": operand(node, c.operand),
                                   "rule": vjp_rule(run, node, c.operand), "value": summary(c.value)}
                                  for c in step.sends]})
        else:
            doc.update({"tangent": summary(step.value), "from": [handle(i) for i in step.sources],
                        "rule": jvp_rule(run, node, step.sources) if step.sources else "seed"})
        steps.append(doc)
    return steps


def explanation_text(run: Run, explanation: Explanation) -> str:
    """The tape as a list of equations, then the sweep, node by node."""
    nodes = run.tape.nodes
    out = run.output_name
    wrt = ", ".join(f"`{n}`" for n in explanation.wrt)
    feeds = run.tape.feeding(run.output)
    used = [node for node in nodes if feeds[node.id]]
    width = max(len(formula(node)) for node in used)
    names = max(len(node.name or "") for node in used)
    lines = ["The tape, in the order it was evaluated (v0, v1, … name its values):"]
    for node in used:
        lines.append(f"  {handle(node.id):>4} = {formula(node).ljust(width)}  {(node.name or '').ljust(names)}  "
                     f"{where(run, node)}".rstrip())
    lines.append("")
    if explanation.mode == "reverse":
        lines += [f"The backward pass of `{out}` with respect to {wrt}, in reverse topological order.",
                  f"g is a node's adjoint, ∂{out}/∂node. Each op sends g times its own derivative back to each",
                  "of its inputs (the chain rule); what reaches a node from several ops adds up.", ""]
        for step in explanation.steps:
            node = nodes[step.node]
            lines.append(f"{handle(node.id)} = {formula(node)}" + (f"   ({node.name})" if node.name else ""))
            if node.id == run.output:
                lines.append(f"    g = {summary_text(step.value)}   (the seed: ∂{out}/∂{out} = 1)")
            elif not step.sources:
                lines.append(hang("    g = ", summary_text(step.value)) + f"   (nothing reaches it: `{out}` does not depend on it)")
            elif len(step.sources) == 1:
                lines.append(hang(f"    g from {handle(step.sources[0])} = ", summary_text(step.value)))
            else:
                parts = " + ".join(handle(i) for i in step.sources)
                lines.append(hang(f"    g = {parts}, added up = ", summary_text(step.value)))
            for c in step.sends:
                lines.append(f"    → {handle(c.to)} ({operand(node, c.operand)}) gets {vjp_rule(run, node, c.operand)}")
                lines.append(hang("        = ", summary_text(c.value)))
            if node.id in explanation.wrt.values():
                lines.append(f"    so ∂{out}/∂{node.name or handle(node.id)} is this g")
    else:
        lines += [f"The forward pass of tangents from {wrt} to `{out}`, in tape order.",
                  "Each seed direction moves one entry of the inputs; a node's tangent says how fast it moves",
                  "along each direction, and each op makes its own from its inputs' (the chain rule).", ""]
        for step in explanation.steps:
            node = nodes[step.node]
            lines.append(f"{handle(node.id)} = {formula(node)}" + (f"   ({node.name})" if node.name else ""))
            if not step.sources:
                lines.append("    seed: one direction per entry")
            else:
                ins = ", ".join(handle(i) for i in step.sources)
                lines.append(f"    tangent from {ins}: {jvp_rule(run, node, step.sources)}")
            lines.append(hang("        = ", summary_text(step.value, directions=True)))
        lines.append(f"Along each direction, the tangent of `{out}` is one entry of the gradient.")
    return "\n".join(lines)
