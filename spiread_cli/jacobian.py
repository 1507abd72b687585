"""Jacobians of any output: `spiread jacobian` and `Program.jacobian`.

The block for each `--wrt` value X has the shape shape(Y) + shape(X), as
`torch.autograd.functional.jacobian` lays it out (a scalar output's block is
its gradient). Either sweep computes it, carrying a batch of directions at
once: forward mode pushes rows of the identity over the inputs' entries
(`forward.jacobian_forward`), reverse mode pulls rows of the identity over the
output's entries back through each op's statement applied to the batch
(`Tape.backward(cotangents=…)`). Forward mode costs one sweep per block of
input entries, reverse one per block of output entries, so the mode is chosen
from the sizes: forward when the inputs have fewer entries than the output,
reverse otherwise (`mode=` overrides). Both the whole Jacobian and each batch
of directions are sized against the memory limit (limits.py) first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .diagnostics import FRONT_END, PYTHON, SpireadError, option
from .forward import TANGENT_BUDGET_BYTES, ForwardSweep, jacobian_forward
from .forward_steps import finite_batch
from .limits import check_bytes, check_shape, limit_for
from .rules_forward import Diagonal, dense
from .run import Run
from .tape import Tape
from .tape_nodes import Births

MODES = ("forward", "reverse")
SWEEP_OF = {"columns": "forward", "rows": "reverse"}  # the sweeps a colouring's colours are


@dataclass
class RunJacobian:
    value: np.ndarray                   # the output's value
    mode: str                           # the sweep that computed it: "forward" or "reverse"
    blocks: dict[str, np.ndarray]       # name -> ∂output/∂name, shape(output) + shape(name), in --wrt order
    signed_zeros: bool = True           # a block may hold −0.0 (False: written into +0.0 zeros, so none does)


def jacobian(run: Run, wrt: list[str] | None = None, mode: str | None = None,
             budget_bytes: int = TANGENT_BUDGET_BYTES) -> RunJacobian:
    """The Jacobian of the run's output (of any shape) with respect to `wrt`
    (names; default: grad's), by `mode`, or the cheaper sweep for these sizes
    when it is None (`choose_mode`); refused before any sweep when it is over
    the memory limit."""
    _mode(mode)
    # The names' ids, the mode and the whole's bytes, found once per run (a kept run's calls find them).
    ids, mode, nbytes = run.prepared_for(("jacobian", tuple(wrt or ()), mode), lambda: _set_up(run, wrt, mode))
    if nbytes > limit_for(nbytes):  # the memory available has changed since (SPIREAD_MAX_BYTES is the signature's)
        check_jacobian_size(run, ids, chosen=not wrt)
    wrt_ids = list(ids.values())
    tape, output, plan = run.tape, run.output, ("jacobian sweep", mode, tuple(wrt_ids))
    kinds: list[type] = []  # of the forward sweep's batches: Diagonal ones' dense forms hold no −0.0
    if mode == "forward":
        sweep = run.prepared_for(plan, lambda: ForwardSweep(tape, output, wrt_ids))
        by_id = jacobian_forward(tape, output, wrt_ids, run.diagnostics, budget_bytes, sweep=sweep, kinds=kinds)
    else:
        peak = run.prepared_for(plan, lambda: peak_adjoint_entries(tape, output, wrt_ids))
        by_id = jacobian_reverse(tape, output, wrt_ids, run.diagnostics, budget_bytes, peak)
    return RunJacobian(run.value, mode, {name: by_id[i] for name, i in ids.items()},
                       not kinds or any(kind is not Diagonal for kind in kinds))


@dataclass
class RunSparseJacobian:
    value: np.ndarray                 # the output's value
    matrix: object                    # scipy.sparse CSR: the output's entries × the wrt entries (each flat, in order)
    names: list[str]
    shapes: list[tuple[int, ...]]
    sweeps: int                       # one per colour of the pattern's columns or rows
    colouring: str                    # "columns" (forward sweeps) or "rows" (reverse sweeps)
    mode: str                         # "forward" or "reverse", as the colouring says


@dataclass
class RunJacobianPattern:
    value: np.ndarray
    pattern: object                   # scipy.sparse CSR of booleans: the output's entries × the wrt entries
    names: list[str]
    shapes: list[tuple[int, ...]]
    sweeps: int                       # what `--sparse` would take
    colouring: str
    mode: str


def jacobian_pattern(run: Run, wrt: list[str] | None = None, mode: str | None = None) -> RunJacobianPattern:
    """The Jacobian's exact sparsity pattern (`spiread jacobian --pattern`),
    read from the tape with no derivative computed, and the colouring
    `--sparse` would use (`mode` picks its direction, as `compressions`):
    kept with the run while the zeros it read hold, as a sparse Jacobian's
    plan is (a kept run's call again reads neither); each call's matrix its own."""
    from .sparsity_colouring import csr_copy
    _mode(mode)
    ids = run.wrt_ids(wrt, scalar=False)
    found = pattern_read(run, ids, mode).found
    nodes = run.tape.nodes
    return RunJacobianPattern(run.value, csr_copy(found.pattern), list(ids), [nodes[i].shape for i in ids.values()],
                              found.colouring.count, found.direction, SWEEP_OF[found.direction])


def read_pattern(run: Run, ids: dict[str, int]):
    """The pattern of the run's output's Jacobian by the values `ids` (sparsity.py)."""
    from .sparsity import jacobian_pattern as pattern_of
    return pattern_of(run.tape, run.output, list(ids.values()))


@dataclass
class Compression:
    """How `--sparse` evaluates a Jacobian: one sweep per colour of its
    pattern's columns (forward sweeps: the colour's input entries seeded
    together) or of its rows (reverse sweeps: the colour's output entries
    as one cotangent). `coloured` is the matrix whose columns the colouring
    groups: the pattern, or for rows its transpose, made once for the
    colouring and the recovery."""
    pattern: object
    coloured: object
    colouring: object                 # sparsity_colouring.Colouring
    direction: str                    # "columns" or "rows"


def compressions(pattern, mode: str | None = None) -> list[Compression]:
    """The compressions of a Jacobian's pattern that `mode` allows: by
    columns ("forward"), by rows ("reverse"), or both (None), columns first;
    with None, the rows only when they could need fewer colours."""
    from .sparsity_colouring import colour_columns
    found = []
    for direction, sweep in SWEEP_OF.items():
        # The rows take at least as many colours as the fullest column has entries, at least
        # nnz / columns: columns needing no more win (a tie goes to them), untransposed.
        if mode is None and found and pattern.nnz > (found[0].colouring.count - 1) * pattern.shape[1]:
            break
        if mode in (None, sweep):
            coloured = pattern if direction == "columns" else pattern.T.tocsr()
            found.append(Compression(pattern, coloured, colour_columns(coloured), direction))
    return found


def cheapest(found: list[Compression]) -> Compression:
    """The compression `--sparse` uses: the fewer colours, columns on a tie."""
    return min(found, key=lambda c: c.colouring.count)


@dataclass
class SparsePlan:
    """How a run's sparse Jacobian is evaluated, worked out once: the
    compression, where each nonzero is read from the products (`Recovery`),
    the colours' seeds, and the zeros of constants the pattern read, while
    which it holds (`sparsity.zeros_hold`). Kept with the run, so a kept
    run's calls (Program.jacobian(sparse=True) again, new values) only sweep
    and gather, as Newton's steps do with a sparse Hessian."""
    found: Compression
    recovery: object                  # sparsity_colouring.Recovery over found.coloured
    seeds: Callable[[int, int], np.ndarray]  # found.colouring.seed_blocks()
    zeros_read: dict

    @classmethod
    def of(cls, found: Compression, zeros_read: dict | None = None) -> "SparsePlan":
        """The plan that evaluates `found` (a pattern read, coloured)."""
        from .sparsity_colouring import Recovery
        return cls(found, Recovery(found.coloured, found.colouring), found.colouring.seed_blocks(), zeros_read or {})


def pattern_read(run: Run, ids: dict[str, int], mode: str | None):
    """The run's pattern for these values, coloured for this mode (a `Compression`, as `found` of a
    sparsity.KeptRead): kept with it while the zeros it read hold (`sparsity.read_kept`)."""
    from .sparsity import read_kept
    return read_kept(run, ("jacobian pattern", tuple(ids.values()), mode), list(ids.values()),
                     lambda sweep: cheapest(compressions(sweep.jacobian(), mode)))


def sparse_plan(run: Run, ids: dict[str, int], mode: str | None) -> SparsePlan:
    """The run's plan for these values and mode: the one kept with it while
    its pattern holds, else made (and kept) now from the pattern read (`pattern_read`)."""
    from .sparsity import kept_while_exact

    def plan() -> SparsePlan:
        read = pattern_read(run, ids, mode)
        return SparsePlan.of(read.found, read.zeros_read)

    return kept_while_exact(run.prepared, ("sparse jacobian", tuple(ids.values()), mode), run.tape, plan)


def sparse_jacobian(run: Run, wrt: list[str] | None = None, mode: str | None = None,
                    budget_bytes: int = TANGENT_BUDGET_BYTES, compression: Compression | None = None
                    ) -> RunSparseJacobian:
    """The Jacobian as a scipy.sparse CSR matrix (`spiread jacobian
    --sparse`), from its exact pattern and one sweep per colour: the
    colours' seeds pushed forward (columns) or pulled back (rows) as one
    batch, each nonzero read from the product of its colour
    (sparsity_colouring.Recovery). Never forms a dense block. The plan is
    kept with the run (`sparse_plan`); `compression`: the pattern already
    read and coloured instead (check --sparse: both ways from one reading)."""
    _mode(mode)
    ids = run.wrt_ids(wrt, scalar=False)
    plan = sparse_plan(run, ids, mode) if compression is None else SparsePlan.of(compression)
    found, recovery, seeds = plan.found, plan.recovery, plan.seeds
    direction, k = found.direction, found.colouring.count
    tape, nodes, output = run.tape, run.tape.nodes, run.output
    wrt_ids = list(ids.values())
    shapes = [nodes[i].shape for i in wrt_ids]
    out_shape = nodes[output].shape
    # The sweeps' plans are the dense Jacobian's, kept with the run as its are.
    plan_key = ("jacobian sweep", SWEEP_OF[direction], tuple(wrt_ids))
    if direction == "columns":
        cuts = np.cumsum([0] + [math.prod(s) for s in shapes])

        def seed_block(start: int, count: int) -> dict[int, np.ndarray]:
            block = seeds(start, count)
            return {i: block[:, cuts[p]:cuts[p + 1]].reshape((count,) + shapes[p]) for p, i in enumerate(wrt_ids)}

        sweep = run.prepared_for(plan_key, lambda: ForwardSweep(tape, output, wrt_ids))
        products = sweep.push_blocks(k, seed_block, run.diagnostics, budget_bytes)
        matrix = recovery(products.reshape(k, math.prod(out_shape)))
    else:
        peak = run.prepared_for(plan_key, lambda: peak_adjoint_entries(tape, output, wrt_ids))
        pulled = pull_blocks(tape, output, wrt_ids, k,
                             lambda start, count: seeds(start, count).reshape((count,) + out_shape),
                             run.diagnostics, budget_bytes, peak)
        products = np.concatenate([pulled[i].reshape(k, math.prod(nodes[i].shape)) for i in wrt_ids], axis=1)
        matrix = recovery(products).T.tocsr()
    return RunSparseJacobian(run.value, matrix, list(ids), shapes, k, direction, SWEEP_OF[direction])


def _set_up(run: Run, wrt: list[str] | None, mode: str | None) -> tuple[dict[str, int], str, int]:
    """A dense Jacobian's names (ids), its mode (as given, else `choose_mode`)
    and its bytes, refused when over the limit (`check_jacobian_size`)."""
    ids = run.wrt_ids(wrt, scalar=False)
    check_jacobian_size(run, ids, chosen=not wrt)
    nodes = run.tape.nodes
    nbytes = 8 * math.prod(nodes[run.output].shape) * sum(math.prod(nodes[i].shape) for i in ids.values())
    return ids, mode or choose_mode(run, ids), nbytes


def choose_mode(run: Run, ids: dict[str, int]) -> str:
    """Forward when the values differentiated by have fewer entries than the
    output (a sweep per input entry), reverse otherwise (one per output entry)."""
    nodes = run.tape.nodes
    inputs = sum(math.prod(nodes[i].shape) for i in ids.values())
    return "forward" if inputs < math.prod(nodes[run.output].shape) else "reverse"


def check_jacobian_size(run: Run, ids: dict[str, int], chosen: bool) -> None:
    """Refuse a Jacobian over the limit: its largest block at that value's
    name, else the whole at the output. The note names the `--wrt` values
    that would fit, and, when the names were `chosen` by default, which they
    were."""
    nodes = run.tape.nodes
    out, out_shape = run.output_name, nodes[run.output].shape
    sizes = {name: math.prod(nodes[i].shape) for name, i in ids.items()}
    rows = math.prod(out_shape)
    limit = limit_for(8 * rows * sum(sizes.values()))
    if 8 * rows * sum(sizes.values()) <= limit:
        return
    notes = []
    if chosen:
        how = "the names `.backward(...)` gives" if run.backward_wrt else f"every input `{out}` depends on"
        notes.append(f"without {option('wrt')}, `jacobian` differentiates by {how}: "
                     f"{', '.join(f'`{n}`' for n in sizes)}")
    fitting, total = [], 0
    for name in sorted(sizes, key=sizes.get):
        if 8 * rows * (total + sizes[name]) <= limit:
            fitting.append(name)
            total += sizes[name]
    if fitting:
        notes.append(f"{_wrt_option([n for n in sizes if n in fitting])} would fit")
    notes.append(f"{option('of')} can name a smaller output")
    largest = max(sizes, key=sizes.get)
    check_shape(out_shape + nodes[ids[largest]].shape, f"the Jacobian block ∂{out}/∂{largest}",
                run.binding_spans.get(largest), limit, tuple(notes))
    check_shape((rows, sum(sizes.values())),
                f"the Jacobian of `{out}` with respect to {', '.join(f'`{n}`' for n in sizes)}",
                nodes[run.output].span, limit, tuple(notes))


def jacobian_reverse(tape: Tape, output: int, wrt: list[int], diagnostics=None,
                     budget_bytes: int = TANGENT_BUDGET_BYTES, peak: int | None = None) -> dict[int, np.ndarray]:
    """The Jacobian of `output` with respect to each node W in `wrt`, shaped
    shape(output) + shape(W), by reverse mode: rows of the identity over the
    output's entries as cotangents (`pull_blocks`; `peak` as there)."""
    nodes = tape.nodes
    out_shape = nodes[output].shape
    rows = math.prod(out_shape)

    pulled = pull_blocks(tape, output, wrt, rows, lambda start, k: Diagonal.identity_rows(out_shape, start, k),
                         diagnostics, budget_bytes, peak)
    return {w: j.reshape(out_shape + nodes[w].shape) for w, j in pulled.items()}


def pull_blocks(tape: Tape, output: int, wrt: list[int], total: int,
                seed_block: Callable[[int, int], np.ndarray], diagnostics=None,
                budget_bytes: int = TANGENT_BUDGET_BYTES, peak: int | None = None) -> dict[int, np.ndarray]:
    """Reverse mode's `ForwardSweep.push_blocks`: `total` cotangents of the
    output, seed_block(start, k) giving cotangents start..start+k (shape (k,)
    + the output's), pulled back to each W in `wrt` (W -> (total,) +
    shape(W)), as many at a time as keep the live adjoints within the budget
    and the limit (`peak`: `peak_adjoint_entries`, found before). A block
    whose result is not finite is swept again with checks, to warn where the
    first non-finite derivative was born."""
    nodes = tape.nodes
    per_row = 8 * (peak_adjoint_entries(tape, output, wrt) if peak is None else peak)
    result_bytes = 8 * total * sum(math.prod(nodes[w].shape) for w in wrt)
    limit = limit_for(max(per_row * total, result_bytes))
    check_bytes(per_row, lambda: f"reverse mode would hold {per_row // 8} adjoint entries at once for each "
                                 f"cotangent of the output", nodes[output].span, limit)
    check_bytes(result_bytes,
                lambda: f"the derivatives of {total} cotangents of the output would hold "
                        f"{result_bytes // 8} entries", nodes[output].span, limit)
    block = max(1, min(total, min(budget_bytes, limit) // per_row))
    # One block's rows are the result as they come (no copy); several are copied in.
    result = {} if block == total else {w: np.empty((total,) + nodes[w].shape) for w in wrt}
    for start in range(0, total, block):
        k = min(block, total - start)
        seeds = seed_block(start, k)
        by_id = tape.backward(output, wrt, None, cotangents=seeds)
        for w in wrt:
            if block == total:
                result[w] = np.ascontiguousarray(dense(by_id[w]))  # a broadcast view is made an array of its own
            else:
                result[w][start:start + k] = dense(by_id[w])
        if diagnostics is not None and not all(finite_batch(g) for g in by_id.values()):
            births = Births(nodes)
            tape.backward(output, wrt, None, births.reverse, cotangents=seeds)
            births.warn(diagnostics)
            diagnostics = None  # one warning about the derivative is enough
    return result


def peak_adjoint_entries(tape: Tape, output: int, wrt: list[int]) -> int:
    """Entries of adjoint alive at once, at worst, for one cotangent of the
    reverse sweep (which keeps the `wrt` nodes' to the end and drops the
    others' as it passes them), plus room for the temporaries of the largest
    vjp (about two results' worth)."""
    plan = tape.between(wrt, output)
    in_plan = {node.id for node in plan}
    kept = set(wrt)
    size = {node.id: math.prod(node.shape) for node in plan}
    live = {output}
    entries = peak = size.get(output, 1)
    for node in reversed(plan):
        if node.op is not None:
            for i in node.inputs:
                if i in in_plan and i not in live:
                    live.add(i)
                    entries += size[i]
            peak = max(peak, entries + 2 * size[node.id])
        if node.id not in kept and node.id in live:
            live.discard(node.id)
            entries -= size[node.id]
    return max(peak, 1)


def _mode(mode: str | None) -> None:
    if mode is not None and mode not in MODES:
        raise SpireadError(f"{option('mode', mode)}: the mode is \"forward\" or \"reverse\"", exit_code=2)


def _wrt_option(names: list[str]) -> str:
    """`--wrt a,b` on the command line, `wrt=["a", "b"]` from Python."""
    if len(names) > 1 and FRONT_END.get() == PYTHON:
        return "`wrt=[" + ", ".join(f'"{n}"' for n in names) + "]`"
    return option("wrt", ",".join(names))
