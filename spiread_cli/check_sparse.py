"""`spiread check --sparse`: what `--sparse` computes against the dense result.

The Jacobian (order 1) or Hessian (order 2) found from one sweep per colour
of its exact pattern is compared with the dense one entry by entry, and the
dense one's nonzeros with the pattern. AD computes a structurally zero
derivative as exactly 0, so a nonzero outside the pattern means an op's
structure rule (`Op.structure`, spiread_cli/structure.py) is wrong; a
Jacobian's culprit is then found by pushing every direction through the
tape and comparing each op node's derivative with the pattern the sparsity
sweep read for it: the first node that strays is the op whose rule is wrong.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .check_measure import SparseCheck
from .forward import ForwardSweep
from .jacobian import cheapest, compressions, jacobian, read_pattern, sparse_jacobian
from .run import Run
from .tape_nodes import Node


def check_sparse(run: Run, wrt: list[str] | None, order: int, tol: float) -> SparseCheck:
    """The Jacobian (order 1) or Hessian (order 2) that `--sparse` computes
    against the dense one, entry by entry: the Jacobian compressed by columns
    (forward sweeps) and by rows (reverse sweeps), whichever `--sparse`
    would choose; the Hessian as `hessian --sparse` colours it. Every finite
    nonzero of the dense result must lie in the pattern."""
    from . import second
    nodes = run.tape.nodes
    ids = run.wrt_ids(wrt, scalar=order == 2)
    names, shapes = list(ids), [nodes[i].shape for i in ids.values()]
    column = entry_names(names, shapes)
    culprit = None
    if order == 1:
        blocks = jacobian(run, names).blocks
        rows = math.prod(np.shape(run.value))
        dense = np.concatenate([blocks[n].reshape(rows, -1) for n in names], axis=1)
        pattern = read_pattern(run, ids)  # read once; each side coloured once, both compared whatever --sparse picks
        both = [*compressions(pattern, "forward"), *compressions(pattern, "reverse")]
        chosen = cheapest(both)
        results = {c.direction: sparse_jacobian(run, names, compression=c).matrix for c in both}
        output = entry_names([run.output_name], [np.shape(run.value)])

        def name(i: int, j: int) -> str:
            return f"∂{output(i)}/∂{column(j)}"
        what, pattern, sweeps, colouring = "Jacobian", chosen.pattern, chosen.colouring.count, chosen.direction
    else:
        blocks = second.hessian(run, names).blocks
        dense = np.concatenate([np.concatenate([blocks[a][b].reshape(math.prod(sa), math.prod(sb))
                                                for b, sb in zip(names, shapes)], axis=1)
                                for a, sa in zip(names, shapes)], axis=0)
        found = second.sparse_hessian(run, names)
        results = {found.colouring: found.matrix}
        pattern = stored(found.matrix)  # the pattern it was recovered on, not read again

        def name(i: int, j: int) -> str:
            return f"∂²{run.output_name}/∂{column(i)}∂{column(j)}"
        what, sweeps, colouring = "Hessian", found.sweeps, found.colouring
    scale = float(np.max(np.abs(dense), initial=0.0))
    error, worst = 0.0, None
    for matrix in results.values():
        with np.errstate(invalid="ignore"):
            gap = np.abs(matrix.toarray() - dense)
        gap[np.isnan(gap)] = np.inf
        if gap.size and gap.max() > error:
            error = float(gap.max())
            worst = name(*np.unravel_index(int(np.argmax(gap)), gap.shape))
    outside = np.argwhere(np.isfinite(dense) & (dense != 0) & ~pattern.toarray())
    first = f"{name(*outside[0])} = {dense[tuple(outside[0])]:g}" if len(outside) else None
    if len(outside) and order == 1:
        culprit = wrong_rule(run, list(ids.values()), column)
    return SparseCheck(what, sweeps, colouring, int(pattern.nnz), list(results), error, scale, tol, worst,
                       len(outside), first, *(culprit or (None, None)))


def wrong_rule(run: Run, wrt: list[int], column: Callable[[int], str]) -> tuple[Node, str] | None:
    """The op node whose structure rule misses a derivative, and that
    derivative named: every direction over the `wrt` entries pushed forward
    (in blocks), each op node's tangents compared with the pattern the
    sparsity sweep read for it; the earliest node with a finite nonzero
    outside it (its operands' all within theirs, being earlier still)."""
    from .sparsity import Sweep
    from .sparsity_links import csr_of
    tape = run.tape
    nodes = tape.nodes
    sizes = [math.prod(nodes[i].shape) for i in wrt]
    n, offsets = sum(sizes), np.cumsum([0] + sizes)
    start = 0
    sweep = Sweep(tape, run.output, wrt)  # J(node) of every node on the way, as `jacobian --pattern` reads the output's
    patterns: dict[int, object] = {}
    strays: dict[int, str] = {}

    def seed_block(first: int, k: int) -> dict[int, np.ndarray]:
        nonlocal start
        start = first
        seeds = np.zeros((k, n))
        seeds[np.arange(k), first + np.arange(k)] = 1.0
        return {i: seeds[:, offsets[p]:offsets[p + 1]].reshape((k,) + nodes[i].shape) for p, i in enumerate(wrt)}

    def observe(node: Node, ts, t) -> None:
        if node.op is None or node.id in strays:
            return
        if node.id not in patterns:
            patterns[node.id] = csr_of(sweep.pattern(node.id), sweep.n)
        t = np.asarray(t).reshape(len(t), -1).T  # the node's entries × directions start..start+k
        allowed = patterns[node.id][:, start:start + t.shape[1]].toarray()
        stray = np.argwhere(np.isfinite(t) & (t != 0) & ~allowed)
        if len(stray):
            entry = entry_names([node.name or node.label], [node.shape])(int(stray[0][0]))
            strays[node.id] = f"∂{entry}/∂{column(start + int(stray[0][1]))}"

    with np.errstate(all="ignore"):
        ForwardSweep(tape, run.output, wrt).push_blocks(n, seed_block, None, observe=observe)
    if not strays:
        return None
    culprit = min(strays)
    return nodes[culprit], strays[culprit]


def stored(matrix) -> sp.csr_array:
    """A recovered matrix's pattern: every entry it stores (a `Recovery` stores
    each entry of the pattern it was given, zeros too)."""
    return sp.csr_array((np.ones(len(matrix.indices), dtype=bool), matrix.indices, matrix.indptr), shape=matrix.shape)


def entry_names(names: list[str], shapes: list[tuple]) -> Callable[[int], str]:
    """Entry k of the values `names` (each flat, one after another) as `x[1, 2]`."""
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes])

    def entry(k: int) -> str:
        p = int(np.searchsorted(offsets, k, side="right")) - 1
        index = np.unravel_index(int(k - offsets[p]), shapes[p]) if shapes[p] else ()
        return f"{names[p]}{[int(i) for i in index]}" if index else names[p]

    return entry
