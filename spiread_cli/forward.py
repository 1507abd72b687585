"""Forward mode: push tangents through the tape with each op's jvp rule.

All seed directions travel together as a leading batch axis, so one sweep of
vectorised jvp calls computes a whole block of the Jacobian; the block size is
chosen so the tangents fit a memory budget. Forward mode costs one sweep per
block of input entries, reverse mode one sweep in all: `benchmarks/` shows
where each wins.
"""

from __future__ import annotations

import numpy as np

from .diagnostics import Diagnostics
from .tape import Tape, all_finite, describe_nonfinite

TANGENT_BUDGET_BYTES = 256 << 20


def jacobian_forward(tape: Tape, output: int, wrt: list[int], diagnostics: Diagnostics | None = None,
                     budget_bytes: int = TANGENT_BUDGET_BYTES) -> dict[int, np.ndarray]:
    """The gradient of the scalar `output` with respect to each node in `wrt`."""
    nodes = tape.nodes
    lowest = min(wrt, default=output + 1)
    carries = np.zeros(len(nodes), dtype=bool)
    carries[list(wrt)] = True
    for node in nodes[lowest:output + 1]:
        if node.op is not None and not carries[node.id]:
            carries[node.id] = any(carries[i] for i in node.inputs)
    offsets = np.cumsum([0] + [nodes[i].value.size for i in wrt])
    total = int(offsets[-1])
    per_direction = 8 * sum(n.value.size for n in nodes[lowest:output + 1] if carries[n.id])
    block = max(1, min(total, budget_bytes // max(per_direction, 1)))
    flat = np.zeros(total)
    reported = False
    for start in range(0, total, block):
        k = min(block, total - start)
        seeds = {i: _seed(nodes[i].value.shape, int(offsets[p]), start, k) for p, i in enumerate(wrt)}
        tangents: dict[int, np.ndarray] = {}
        for node in nodes[lowest:output + 1]:
            ts = [tangents.get(i) for i in node.inputs]
            if node.op is None or all(t is None for t in ts):
                if node.id in seeds:
                    tangents[node.id] = seeds[node.id]
                continue
            args = [nodes[i].value for i in node.inputs]
            with np.errstate(all="ignore"):
                t = node.op.jvp(ts, node.value, *args, **node.params)
            t = np.broadcast_to(t, (k,) + node.value.shape)
            if diagnostics is not None and not reported and node.finite and \
                    all(x is None or all_finite(x) for x in ts) and not all_finite(t):
                diagnostics.warn(describe_nonfinite(f"the derivative of `{node.label}`", t[0] if k == 1 else t, []),
                                 node.span)
                reported = True
            # A wrt node that is an intermediate gets its own seed on top of
            # what flows into it, as reverse mode's adjoints add up.
            tangents[node.id] = t + seeds[node.id] if node.id in seeds else t
        if output in tangents:
            flat[start:start + k] = tangents[output].reshape(k)
    return {i: flat[offsets[p]:offsets[p + 1]].reshape(nodes[i].value.shape) for p, i in enumerate(wrt)}


def _seed(shape: tuple, offset: int, start: int, k: int) -> np.ndarray:
    """Rows start..start+k of the identity, restricted to this value's entries."""
    size = int(np.prod(shape, dtype=np.int64))
    seed = np.zeros((k, size))
    rows = np.arange(k)
    entries = start + rows - offset
    inside = (entries >= 0) & (entries < size)
    seed[rows[inside], entries[inside]] = 1.0
    return seed.reshape((k,) + shape)
