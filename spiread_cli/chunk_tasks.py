"""The tasks a row chunk runs (spiread_cli/chunk_plan.py decides what they
compute; dask_backend.py schedules them): the chunk recorded and fused per
total the steps compute, its share of every total with the gradients of
that share (`share_of_chunk`), the chunk's template kept by
the process between steps (`Templates`), and the derivatives of the shares
that the driver's `rowsTotal` nodes ask for (spiread_cli/row_totals.py):
Hessian-vector products and tangents, each one pass over the chunks, on the
same fused tapes as the steps (`chunk_of`: kept by --persist, or a template).

A step does per chunk what the numpy backend's fused step does: the first
time, the chunk is recorded with only the data's part computed (`Job.record`)
and fused (`record_chunk`); its template (`Chunk.template`: no values a step
recomputes, no rows it can read again) is kept by the process (`TEMPLATES`),
and later steps replay it with the chunk's rows and the trained values.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import numpy as np

from .builtin_functions import rows_of_made
from .chunk_plan import Job, refuse
from .diagnostics import Diagnostic, Diagnostics, SpireadError
from .forward import ForwardSweep
from .limits import max_bytes
from .ops import Across
from .rewrite import fuse
from .second import HessianVectorProducts
from .run import Run
from .tape import Tape

TEMPLATE_BYTES = 128 << 20   # the chunks' templates a process keeps without --persist (Templates)


@dataclass
class Share:
    """What chunks contribute: per reduction, its share of the total and the
    gradient of that share; the first warnings (in row order) with the rows
    they come from. Shares combine (`add`: each total as its `Across` says,
    the gradients of sums by adding), so any tree of them gives the totals."""
    totals: list[np.ndarray]                    # one entry per reduction
    grads: list[dict[str, np.ndarray]]          # per reduction: name -> gradient of its share
    warnings: list[Diagnostic]
    across: tuple[Across, ...]                  # per reduction: how its shares combine

    def add(self, other: "Share") -> "Share":
        return Share([a.combine(x, y) for a, x, y in zip(self.across, self.totals, other.totals)],
                     [{n: g[n] + h[n] for n in g} for g, h in zip(self.grads, other.grads)],
                     self.warnings or other.warnings, self.across)


def add_shares(*shares: Share) -> Share:
    total = shares[0]
    for share in shares[1:]:
        total = total.add(share)
    return total


def recorded(job: Job, start: int, stop: int, values: dict[str, np.ndarray] | None) -> tuple[Run, dict]:
    """The program recorded on rows [start, stop) as a chunk computes it:
    `rows(X)` is the total N, and the totals computed before the steps
    (`job.totals`) are constants holding theirs; while `job.wrt` is set,
    what the trained values move is left uncomputed. Returns the run and
    its leaves read from files (Job.record)."""
    plan = job.plan
    try:
        run, reads = job.record(start, stop, values, defer=bool(job.wrt))
    except SpireadError as err:
        raise SpireadError(f"in data rows {start}–{stop - 1}: {err.diagnostic.message}", err.diagnostic.span,
                           err.diagnostic.notes + ("a chunk numbers its rows from 0",)).located_in(job.source) from None
    tape = run.tape
    for i, total in job.totals.items():  # the total over all rows, no longer this chunk's share of it
        tape.nodes[i] = replace(tape.nodes[i], op=None, inputs=(), params={}, kind="const", value=total)
    for i in plan.row_counts:
        tape.nodes[i].set_value(np.array(float(plan.rows)))
    for i, (made, axis) in plan.remade.items():  # positions, draws: the chunk's rows of the whole program's
        tape.nodes[i].set_value(rows_of_made(made, tape.nodes[i].value.shape, axis, start, stop, plan.rows))
    constants = [*plan.row_counts, *plan.remade, *job.totals]
    if constants:  # what they feed, computed again (and warned about again: the chunk's own counts misled)
        fed = tape.fed_by(constants, len(tape.nodes) - 1, plan.copies)
        again = [n for n in tape.nodes if fed[n.id] and n.deferred is None]  # the deferred wait for the fused tape
        spans = {n.span for n in again}
        run.diagnostics.warnings[:] = [w for w in run.diagnostics.warnings if w.span not in spans]
        for node in again:
            if node.id in plan.copies:
                node.set_value(tape.nodes[plan.copies[node.id]].value)
            else:
                tape.replay([node], run.diagnostics)
    n = stop - start
    for i in plan.local_picks:
        node = tape.nodes[i]
        rows = node.params["rows"]
        if not np.array_equal(np.where(rows < 0, rows + n, rows), np.arange(n)):
            raise refuse(f"`{node.label.split()[0]}` picks from rows by position, which row chunks cannot do "
                         "unless it picks one entry in every row, in order (as `arange(rows(x))` does)", node.span)
    return run, reads


def totals_of_rows(job: Job, start: int, stop: int, level: int) -> Share:
    """One task of a pass before the steps: rows [start, stop)'s shares of
    the totals of `level` that no trained value moves (Job.before_steps),
    with the recording's warnings about the chunk's values those totals do
    not feed (computed from the data and the lower levels' totals, known by
    now: final, so the last level's pass gives them when no step follows)."""
    run, _ = recorded(job, start, stop, None)
    nodes, across = run.tape.nodes, dict(job.plan.reductions)
    wanted = job.before_steps(level)
    weight = (stop - start) / job.plan.rows
    shares = [np.asarray(nodes[r].value, dtype=np.float64) * (weight if across[r].weighted else 1.0) for r in wanted]
    fed = run.tape.fed_by(wanted, len(nodes) - 1)
    final = {n.span for n in nodes if job.plan.per_chunk[n.id] and not fed[n.id]}
    notes = (f"in data rows {start}–{stop - 1}",)
    warnings = [replace(w, notes=w.notes + notes) for w in run.diagnostics.warnings if w.span in final]
    return Share(shares, [{} for _ in wanted], warnings, tuple(across[r] for r in wanted))


@dataclass
class Part:
    """One total's fused tape in a chunk, where its output and trained
    leaves are, and which of its leaves are rows read from a file."""
    tape: Tape
    output: int
    wrt: list[int]
    across: Across                        # a sum's, or a mean's (weighted)
    reads: dict[int, tuple[str, str]]     # leaf id -> reader (Job.read)


@dataclass
class Chunk:
    """A chunk's fused tapes, one per total the steps compute. Recorded and
    fused once (`record_chunk`); a step replays them with the trained values
    (`chunk_share`). Kept whole under --persist; otherwise `template` keeps
    only what the data do not give back cheaply (TEMPLATES)."""
    start: int
    stop: int
    parts: list[Part]
    warnings: list[Diagnostic]            # the recording's, reported with the first share

    def template(self) -> "Chunk":
        """This chunk without the values a step recomputes (op nodes) or reads
        again (rows of files); positions and other data-made arrays packed."""
        parts = []
        for part in self.parts:
            nodes = [replace(n, value=None if n.op is not None or n.id in part.reads else pack(n.value),
                             params={k: pack(v) for k, v in n.params.items()}) for n in part.tape.nodes]
            parts.append(replace(part, tape=Tape(nodes, part.tape.source)))
        return Chunk(self.start, self.stop, parts, [])

    def instance(self, job: Job) -> "Chunk":
        """A template made whole again: rows read, arrays unpacked."""
        read: dict[tuple[str, str], np.ndarray] = {}
        parts = []
        for part in self.parts:
            nodes = []
            for n in part.tape.nodes:
                if n.id in part.reads:
                    key = part.reads[n.id]
                    if key not in read:
                        read[key] = job.read(key, self.start, self.stop)
                    value = read[key]
                else:
                    value = unpack(n.value)
                nodes.append(replace(n, value=value, params={k: unpack(v) for k, v in n.params.items()}))
            parts.append(replace(part, tape=Tape(nodes, part.tape.source)))
        return Chunk(self.start, self.stop, parts, [])

    def nbytes(self) -> int:
        arrays = [v for p in self.parts for n in p.tape.nodes for v in (n.value, *n.params.values())]
        return sum(a.nbytes for a in arrays if isinstance(a, (np.ndarray, Packed)))


@dataclass(frozen=True)
class Packed:
    """An array of whole numbers kept in the smallest integer type that holds
    them exactly (the bigram's positions: one byte each), or, for 0, 1, …,
    n-1, not kept at all."""
    data: np.ndarray | None
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.nbytes


def pack(value):
    if not isinstance(value, np.ndarray) or value.size < 64 or value.dtype.kind not in "iuf":
        return value
    if value.ndim == 1 and value.dtype.kind in "iu" and np.array_equal(value, np.arange(len(value))):
        return Packed(None, value.dtype, value.shape)
    with np.errstate(invalid="ignore"):
        low, high = value.min(), value.max()
    for small in (np.int8, np.int16, np.int32):
        if np.iinfo(small).min <= low and high <= np.iinfo(small).max:
            packed = value.astype(small)
            exact = value.dtype.kind in "iu" or (np.array_equal(packed, value) and not np.signbit(value).any())
            return Packed(packed, value.dtype, value.shape) if exact else value
    return value


def unpack(value):
    if not isinstance(value, Packed):
        return value
    if value.data is None:
        return np.arange(value.shape[0], dtype=value.dtype)
    return value.data.astype(value.dtype)


def record_chunk(job: Job, start: int, stop: int, values: dict[str, np.ndarray] | None) -> Chunk:
    """Record the program on rows [start, stop) (`recorded`) and fuse a tape
    per total the steps compute (spiread_cli/rewrite.py), as train does: it
    holds only what that total needs (the bigram's is one log-likelihood op
    over its picks), so its backward sweep is the fast one, and a chunk kept
    between steps is small. Its first share computes the fused tapes
    (`replay_part`), so a forward pass is not run twice."""
    plan = job.plan
    run, reads = recorded(job, start, stop, values)
    tape = run.tape
    wrt = [run.bindings[name] for name in job.wrt]
    # The recording's warnings are about the data's part; the trained values'
    # part warns when a step replays it.
    moved = tape.fed_by(wrt, len(tape.nodes) - 1) if wrt else [False] * len(tape.nodes)
    kept = {tape.nodes[i].span for i, part in enumerate(plan.per_chunk) if part and not moved[i]}
    notes = (f"in data rows {start}–{stop - 1}",)
    warnings = [replace(w, notes=w.notes + notes) for w in run.diagnostics.warnings if w.span in kept]
    parts = []
    where = {id(tape.nodes[i].value): reader for i, reader in reads.items()}  # a fused leaf shares its array
    for r, across in job.moving:
        fused = fuse(tape, r, wrt, compute=False)
        fused_reads = {n.id: where[id(n.value)] for n in fused.tape.nodes if n.op is None and id(n.value) in where}
        parts.append(Part(fused.tape, fused.output, fused.wrt, across, fused_reads))
    return Chunk(start, stop, parts, warnings)


def replay_part(job: Job, part: Part, values: dict[str, np.ndarray] | None,
                diagnostics: Diagnostics | None = None) -> None:
    """The part's trained leaves set to `values`, what they move replayed
    (warning in `diagnostics`), the rest computed if it is not (a
    template's instance, a chunk recorded without computing)."""
    tape, r, wrt = part.tape, part.output, part.wrt
    for name, i in zip(job.wrt, wrt):
        if values and name in values:
            tape.nodes[i].set_value(values[name])
    moving = tape.between(wrt, r)
    moved = {n.id for n in moving}
    tape.replay([n for n in tape.nodes[:r + 1] if n.value is None and n.id not in moved])
    tape.replay(moving, diagnostics)


def chunk_share(job: Job, chunk: Chunk, values: dict[str, np.ndarray] | None, first: bool) -> Share:
    """A chunk's share of the totals the steps compute and their gradients,
    at `values` (`replay_part`, warning where an inf or nan is born). The
    recording's warnings come with the first."""
    diagnostics = Diagnostics()
    totals, grads = [], []
    for part in chunk.parts:
        replay_part(job, part, values, diagnostics)
        tape, r, wrt = part.tape, part.output, part.wrt
        weight = (chunk.stop - chunk.start) / job.plan.rows if part.across.weighted else 1.0
        totals.append(weight * float(tape.nodes[r].value))
        by_id = tape.backward(r, wrt, diagnostics) if wrt else {}
        grads.append({name: weight * by_id[i] for name, i in zip(job.wrt, wrt)})
    notes = (f"in data rows {chunk.start}–{chunk.stop - 1}",)
    recorded_warnings, chunk.warnings = chunk.warnings, []  # a kept chunk's recording warns once
    warnings = [replace(w, notes=w.notes + notes) for w in diagnostics.warnings]
    return Share(totals, grads, (recorded_warnings if first else []) + warnings, tuple(p.across for p in chunk.parts))


class Templates:
    """The chunks' templates (Chunk.template) this process keeps between
    steps without --persist: a step then replays the fused tapes with the
    rows read again, neither recording nor fusing. Shared by the threads of
    a process (a worker's, or spiread's own); up to TEMPLATE_BYTES, so memory
    stays bounded whatever the rows: a chunk beyond it is recorded and fused
    again each step."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kept: dict[tuple[str, int, int], Chunk] = {}
        self.bytes = 0

    def get(self, job: Job, start: int, stop: int) -> Chunk | None:
        return self.kept.get((job.token, start, stop))

    def put(self, job: Job, chunk: Chunk) -> None:
        """Keep the chunk's template if there is room, making room from other
        jobs' templates (one whose program ended without saying so: a
        worker outlives the spiread that used it)."""
        template = chunk.template()
        size = template.nbytes()
        budget = min(TEMPLATE_BYTES, max_bytes() // 4)
        with self.lock:
            for key in [k for k in self.kept if k[0] != job.token]:
                if self.bytes + size <= budget:
                    break
                self.bytes -= self.kept.pop(key).nbytes()
            if self.bytes + size <= budget:
                self.kept[(job.token, chunk.start, chunk.stop)] = template
                self.bytes += size

    def drop(self, token: str) -> None:
        with self.lock:
            for key in [k for k in self.kept if k[0] == token]:
                self.bytes -= self.kept.pop(key).nbytes()


TEMPLATES = Templates()


@dataclass(frozen=True)
class Rows:
    """Where a chunk a task runs on is when --persist keeps none: its rows."""
    start: int
    stop: int


def chunk_of(job: Job, where: Rows | Chunk, values: dict[str, np.ndarray] | None) -> Chunk:
    """The chunk a task runs on: the one --persist keeps, else this
    process's template of its rows made whole, else the rows recorded and
    fused now (and the template kept if there is room)."""
    if isinstance(where, Chunk):
        return where
    template = TEMPLATES.get(job, where.start, where.stop)
    if template is not None:
        return template.instance(job)
    chunk = record_chunk(job, where.start, where.stop, values)
    TEMPLATES.put(job, chunk)
    return chunk


def share_of_chunk(job: Job, where: Rows | Chunk, values: dict[str, np.ndarray] | None, first: bool) -> Share:
    """One task of a step: the chunk's share of the totals and their gradients (`chunk_share`)."""
    return chunk_share(job, chunk_of(job, where, values), values, first)


def drop_templates(token: str) -> None:
    TEMPLATES.drop(token)


# ------------------------------------------------------------------ derivatives of the chunks' shares


def added(*parts: tuple) -> tuple:
    """Chunks' tuples of arrays, summed entry by entry (their tree-sum)."""
    return tuple(sum(p[i] for p in parts) for i in range(len(parts[0])))


def _parts_at(job: Job, where: Rows | Chunk, values: dict[str, np.ndarray]) -> list[tuple[Part, float]]:
    """The chunk's fused tapes at `values` (the steps' own: kept, or a
    template's instance), each with its share's weight."""
    chunk = chunk_of(job, where, values)
    weight = (chunk.stop - chunk.start) / job.plan.rows
    for part in chunk.parts:
        replay_part(job, part, values)
    return [(part, weight if part.across.weighted else 1.0) for part in chunk.parts]


def _products(part: Part) -> HessianVectorProducts:
    """H·v of the part's output by its trained leaves (reverse over
    reverse), its gradient recorded on a copy of the tape (a kept chunk's
    own stays as the steps replay it)."""
    tape = Tape(list(part.tape.nodes), part.tape.source)
    recorded_from = len(tape.nodes)
    return HessianVectorProducts(tape, tape.backward_graph(part.output, part.wrt), recorded_from)


def gradient_tangents_of_chunk(job: Job, where: Rows | Chunk, values: dict[str, np.ndarray], total: int,
                               tangents: dict[str, np.ndarray]) -> tuple:
    """One task: the chunk's share of each ∂total/∂w (w of `job.wrt`) along
    each of a batch of tangents (leading axis): a Hessian-vector product each."""
    part, weight = _parts_at(job, where, values)[total]
    products, k = _products(part), len(next(iter(tangents.values())))
    wrt = {name: part.wrt[job.wrt.index(name)] for name in tangents}
    along = [products({wrt[n]: t[d] for n, t in tangents.items()}, part.wrt) for d in range(k)]
    return tuple(weight * np.stack([a[i] for a in along]) for i in part.wrt)


def patterns_of_chunk(job: Job, where: Rows | Chunk, values: dict[str, np.ndarray], total: int) -> tuple:
    """One task: the sparsity patterns of the chunk's share of a total over
    the entries of `job.wrt` (spiread_cli/sparsity.py): its gradient's
    (1 × n) and its Hessian's (n × n), read from the chunk's tape; added up
    over the chunks, their nonzeros are the total's."""
    from .sparsity import hessian_pattern, jacobian_pattern
    part, _ = _parts_at(job, where, values)[total]
    return jacobian_pattern(part.tape, part.output, part.wrt), hessian_pattern(part.tape, part.output, part.wrt)


def tangents_of_chunk(job: Job, where: Rows | Chunk, values: dict[str, np.ndarray],
                      tangents: dict[str, np.ndarray]) -> tuple:
    """One task: the chunk's share of every total along each of a batch of
    tangents (shape (totals, k)), by forward mode."""
    parts = _parts_at(job, where, values)
    k = len(next(iter(tangents.values())))
    along = np.zeros((len(parts), k))
    for j, (part, weight) in enumerate(parts):
        seeds = {part.wrt[job.wrt.index(n)]: t for n, t in tangents.items()}
        sweep = ForwardSweep(part.tape, part.output, list(seeds))
        along[j] = weight * sweep.push_blocks(k, lambda start, size: {i: s[start:start + size] for i, s in seeds.items()})
    return (along,)
