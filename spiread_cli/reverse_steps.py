"""A reverse sweep written out as one function (`written_sweep`), a line per
step, which `Tape.backward` runs for a sweep it has made before — a kept
run's gradient or reverse-mode Jacobian, a training step's gradient, a
chunk's share on Dask — in place of its loop, with the loop's values, bits
and memory."""

from __future__ import annotations

import collections
import re
from typing import Callable

import numpy as np

from .ops import IN_PLACE_ENTRIES
from .rules_code import CodeWriter
from .rules_forward import Diagonal, added, dense, diagonal_vjp
from .tape_nodes import Node, rule_params

# Writing a sweep out and compiling it costs about one loop for each this many nodes it spans: the 10,000-op
# chain's (benchmarks/chain.py) 0.7-0.9 s, about 20 of its 30-40 ms loops; the softmax loss's 17 nodes
# 0.4-0.6 ms, about 10 of its 40 us loops, paid at a kept call's second call.
NODES_A_WRITING_COSTS = 500


def sweeps_before_writing(spanned: int) -> int:
    """How many times a sweep over `spanned` nodes is made before it is written out (the loop made the
    others): the second time, or where the nodes are many, once the loops have cost about what writing does."""
    return max(2, spanned // NODES_A_WRITING_COSTS)


def written_sweep(nodes: list[Node], output: int, wrt: list[int], needs: list[bool],
                  batched: bool) -> Callable[[object], dict[int, np.ndarray]]:
    """`Tape._sweep`'s loop for this output, these `wrt` nodes and `needs`
    (`Tape.fed_by`), unobserved, as one function `sweep(cotangents)` (None
    where not `batched`) written once by rules_code.CodeWriter: the values
    read from the nodes at each call; each step the loop takes, in its
    order, with no look-up: an op's vjp that is its derivative statement
    compiled (`compiled_vjp`, its `statement`) is the statement's lines
    themselves, the same primal rules on the same operands, so the same
    bits, each temporary dropped after the step as the compiled function's
    are when it returns; any other rule (a fast path, a residual's, a batch's)
    called as the loop calls it (a batch's `Diagonal` through
    `diagonal_vjp` where the loop would). Contributions meeting at a node
    are summed as the loop sums them (`_Sweep.contribute`), an adjoint is
    dropped once its node has passed it on, a residual once its vjp used it."""
    sweep = _Sweep(nodes, batched)
    wanted, lines = set(wrt), sweep.writer.lines
    if needs[output]:
        sweep.made[output] = 1
        lines.append(f"g{output} = cotangents" if batched else f"g{output} = ones_like({sweep.value(output)})")
    for node in reversed(nodes[min(wrt, default=output + 1):output + 1]):
        if node.id not in sweep.made or node.op is None:
            continue
        # A batch's steps may make the adjoint an array (`dense`) for the operands after: a name of their own.
        g = "g" if batched else f"g{node.id}"
        if batched:
            lines.append(f"g = g{node.id}")
        sweep.writer.bind(g, ((0,) if batched else ()) + node.shape)
        keeps = node.op.fwd is not None and not batched
        if keeps:  # its residual, handed to each operand's vjp, then dropped
            lines.append(f"p{node.id} = rule_params(nodes[{node.id}], [{', '.join(map(sweep.value, node.inputs))}])")
        for k, i in enumerate(node.inputs):
            if needs[i]:
                result, temporaries = sweep.step(node, k, g, keeps)
                first = i not in sweep.made and temporaries and temporaries[-1] == result
                if first:  # its last line makes it: the adjoint's first value
                    lines[-1] = f"g{i}{lines[-1][len(result):]}"
                    sweep.made[i] = 1
                # The others go before it is added in, as the compiled statement's when it returns; it, after.
                others = [t for t in temporaries if t != result]
                if others:
                    lines.append(f"del {', '.join(others)}")
                if not first:
                    sweep.contribute(i, result)
                    if result in temporaries:
                        lines.append(f"del {result}")
        if keeps:
            lines.extend([f"nodes[{node.id}].residual.data = None", f"del p{node.id}"])
        if node.id not in wanted:
            lines.append(f"del g{node.id}")
    zeros = "zeros(cotangents.shape[:1] + {shape!r})" if batched else "zeros_like({value})"
    results = ", ".join(f"{w}: g{w}" if w in sweep.made else
                        f"{w}: " + zeros.format(shape=nodes[w].shape, value=sweep.value(w)) for w in wrt)
    lines.append(f"return {{{results}}}")
    used = collections.Counter(re.findall(r"\bx\d+\b", "\n".join(lines)))
    body = "".join(f"    {line}\n" for line in lines if not (line.startswith("x") and used[line.partition(" ")[0]] == 1))
    namespace: dict = {}
    exec("def sweep(cotangents):\n" + body, sweep.writer.namespace, namespace)
    return namespace["sweep"]


class _Sweep:
    """A written sweep as it is written: its CodeWriter (lines, names), the
    values read so far and how many contributions each adjoint has had."""

    def __init__(self, nodes: list[Node], batched: bool):
        self.nodes, self.batched = nodes, batched
        self.writer = CodeWriter()
        self.writer.namespace.update(
            nodes=nodes, ones_like=np.ones_like, zeros_like=np.zeros_like, zeros=np.zeros, ndarray=np.ndarray,
            add=np.add, added=added, dense=dense, Diagonal=Diagonal, diagonal_vjp=diagonal_vjp,
            rule_params=rule_params, IN_PLACE=IN_PLACE_ENTRIES)
        self.read: set[int] = set()
        self.made: dict[int, int] = {}

    def value(self, i: int) -> str:
        if i not in self.read:
            self.read.add(i)
            self.writer.bind(f"x{i}", self.nodes[i].shape)
            self.writer.lines.append(f"x{i} = nodes[{i}].value")
        return f"x{i}"

    def step(self, node: Node, k: int, g: str, keeps: bool) -> tuple[str, list[str]]:
        """The lines of operand k's vjp at `node`, from its adjoint `g`: the name of its result, and the
        temporaries they make (a statement's), which the result's place in the adjoint no longer needs."""
        writer, lines, op = self.writer, self.writer.lines, node.op
        args, out = [self.value(i) for i in node.inputs], self.value(node.id)
        if not self.batched and getattr(op.vjp, "statement", None) is op.derivative:
            first = len(lines)
            result = op.derivative(k, g, out, *args, emit=writer, **node.params)
            made = [line.partition(" = ")[0] for line in lines[first:]]  # each line a temporary's
            if result is None:  # a zero derivative, as the compiled statement gives it
                lines.append(f"r = zeros_like({args[k]}, dtype=float)")
                made.append("r")
            return result or "r", made
        rule, parameters = f"vjp{node.id}", writer.literal(node.params)
        writer.namespace[rule] = op.batched_vjp if self.batched else op.vjp
        params = f", **p{node.id}" if keeps else f", **{parameters}" if node.params else ""
        call = f"{rule}({k}, {g}, {out}, {', '.join(args)}{params})"
        if not self.batched:
            lines.append(f"r = {call}")
            return "r", ["r"]
        writer.namespace[f"op{node.id}"] = op
        lines.extend([f"r = diagonal_vjp(op{node.id}, {k}, g, {out}, [{', '.join(args)}], {parameters}) "
                      f"if g.__class__ is Diagonal else None",
                      "if r is None:", "    g = dense(g)", f"    r = {call}"])
        return "r", []

    def contribute(self, i: int, gi: str) -> None:
        """The lines adding `gi` into node i's adjoint, as the loop adds it: the first taken as it is, the
        second added into a new sum, which from then on (`s{i}`: an array of `IN_PLACE` entries or more)
        takes the others in place, where each is an array (or a `Diagonal`)."""
        lines, g, made = self.writer.lines, f"g{i}", self.made.get(i, 0)
        plus = f"added({g}, {gi})" if self.batched else f"{g} + {gi}"
        large = f"{g}.__class__ is ndarray and {g}.size >= IN_PLACE"
        if made == 0:
            lines.append(f"{g} = {gi}")
        elif made == 1:
            lines.extend([f"{g} = {plus}", f"s{i} = {large}"])
        else:
            lines.extend([f"if s{i} and {gi}.__class__ is ndarray: add({g}, {gi}, out={g})",
                          *([f"elif s{i} and {gi}.__class__ is Diagonal: {gi}.add_into({g})"] if self.batched else []),
                          "else:", f"    {g} = {plus}", f"    if {large}: s{i} = True"])
        self.made[i] = made + 1
