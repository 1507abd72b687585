"""Row chunks: whether a program runs on its data a block of rows at a time.

This module is numpy only (spiread_cli/chunk_tasks.py holds what a chunk
runs, dask_backend.py schedules it). The idea (measured in issue 14's
prototype): when the data reach the output only through row-wise ops
followed by a sum or mean over rows — least squares, softmax regression, an
MLP, the bigram — the ordinary numpy tape can run once per row chunk, and
each chunk's share of the sum and its gradient are simply added up. Little
but the parameters and the gradients moves between processes. Which data
are row-chunked: spiread_cli/row_data.py.

Whether a program can run this way is decided from its tape, never from its
values: the program is recorded on the first 2 and the first 3 rows, and on
rows 1–3 (`probe`); `Plan.of` compares the first two tapes op by op, and the
third must match the second but for the row-chunked values (`check_window_free`:
positions into all the data rows, read from a file, are refused). A node whose
leading size follows the number of rows is row-chunked; an op that takes a
row-chunked value must act on each row alone (`Op.row_wise`, `Op.structure`,
`Op.on_rows`) or be a `sum`/`mean` of it (a *reduction*, whose total is the sum of the
chunks' shares: a mean is a sum over the total count); a constant that is
the number of rows (`rows(X)`) is the total N, and positions or draws along
the rows (`arange(rows(X))`) are made again by each chunk as its rows of the
whole (`Plan.remade`; values.Made says how the recording made them).
Anything else is refused with the op named. What follows the reductions is
the driver's tape, on which each total is an op node
(spiread_cli/row_totals.py). A total no trained value
moves (`X.mean`) may be used back on the rows: it is computed before the
steps (`chunk_tasks.totals_of_rows`) and is a constant in every chunk.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import syntax_tree as ast
from .diagnostics import Diagnostic, Source, Span, SpireadError, option, shape_str
from .interpreter import Interpreter
from .limits import max_bytes
from .ops import Across
from .row_data import Data
from .run import Run
from .tape import Tape
from .values import NO_CHUNKS, Made

PROBE_ROWS = (2, 3)          # the two recordings `Plan.of` compares
CHUNK_BYTES = 128 << 20      # the default chunk's recorded values (see default_chunk_rows)



def refuse(message: str, span: Span | None) -> SpireadError:
    return SpireadError(f"cannot run by row chunks: {message}", span, [NO_CHUNKS])


# ------------------------------------------------------------------ the job


@dataclass
class Job:
    """What every chunk task needs besides its rows: the parsed program, the
    data readers and the plan's decisions. Picklable, so a worker process
    can run it (with the same spiread and the same data paths)."""
    source: Source
    module: ast.Module
    base_dir: Path
    of: str | None
    constants: dict[str, np.ndarray]          # --set values that are not files
    data: Data
    wrt: list[str] = field(default_factory=list)
    computed: frozenset[str] = frozenset()     # those of `wrt` the program computes (Run.copied ones too)
    plan: "Plan | None" = None
    # Set by the Program for the `wrt` above (a new token whenever they change):
    token: str = ""                           # names this job's tasks and its chunks in TEMPLATES
    totals: dict[int, np.ndarray] = field(default_factory=dict)  # totals no trained value moves, once computed
    moving: list[tuple[int, str]] = field(default_factory=list)  # the totals each step computes

    def record(self, start: int, stop: int, values: dict[str, np.ndarray] | None = None,
               defer: bool = False) -> tuple[Run, dict[int, tuple[str, str]]]:
        """The program recorded on rows [start, stop) of the row-chunked data,
        and which of its leaves are rows read from a file (leaf id -> reader:
        ("file", path) or ("set", name)), which a chunk can read again rather
        than keep. With `defer`, only the data's part is computed: what the
        trained values move waits to be read (`Tape.defer`), which the fused
        tape does, so a chunk never computes the program as written."""
        read: dict[int, tuple[str, str]] = {}   # id of an array read -> its reader
        arrays = []                             # keeps them alive, so the ids stay theirs
        loader = self.data.loader(start, stop)

        def load(path: Path, span: Span | None) -> np.ndarray:
            array = loader(path, span)
            key = str(path.resolve())
            if key in self.data.files and self.data.chunked(self.data.files[key]):
                read[id(array)] = ("file", key)
                arrays.append(array)
            return array

        sets = self.data.overrides(start, stop)
        for name, array in sets.items():
            if self.data.chunked(self.data.sets[name]):
                read[id(array)] = ("set", name)
        # A computed name's node becomes a leaf holding its value once recorded: bound to a constant
        # instead, the program would record other nodes than the probe's.
        given = {name: v for name, v in (values or {}).items() if name not in self.computed}
        overrides = {**self.constants, **sets, **given}
        interpreter = Interpreter(self.source, overrides, self.base_dir, load, lambda array: id(array) in read)
        try:
            run = interpreter.run(self.module, self.of, evaluate=not defer)
        except SpireadError as err:
            raise err.located_in(self.source)
        for name in self.computed & set(values or ()):  # a leaf: the chunk differentiates by it, not through it
            i = run.bindings[name]
            run.tape.nodes[i] = run.tape.nodes[i].copy(kind="input", op=None, inputs=(), params={},
                                                       value=values[name])
        if defer:
            tape = run.tape
            moved = tape.fed_by([run.bindings[name] for name in self.wrt], len(tape.nodes) - 1)
            tape.replay([n for n in tape.nodes if n.deferred is not None and not moved[n.id]], run.diagnostics)
        return run, {n.id: read[id(n.value)] for n in run.tape.nodes if n.op is None and id(n.value) in read}

    def before_steps(self, level: int) -> list[int]:
        """The totals no trained value moves that are `level` deep: computed
        from the data alone (0) or from such totals of lower levels."""
        moving = dict(self.moving)
        return [r for r, _ in self.plan.reductions if r not in moving and self.plan.level[r] == level]

    def read(self, reader: tuple[str, str], start: int, stop: int) -> np.ndarray:
        kind, key = reader
        return self.data.window(self.data.files[key] if kind == "file" else self.data.sets[key], start, stop)


def probe(job: Job) -> tuple["Plan", Run]:
    """Record the program on the first 2 and 3 rows, and on 3 rows from the
    second, and decide the plan; the first recording is the driver's (names,
    structure, what follows the sums)."""
    a, b = PROBE_ROWS
    runs = []
    for start, stop in ((0, a), (0, b), (1, 1 + b)):
        try:
            runs.append(job.record(start, stop)[0])
        except SpireadError as err:
            own = _own_error(job, err, not runs)
            if own is not None:
                raise own from None
            # one the rows make, e.g. `arange(6)` written for six rows of data
            raise SpireadError(f"cannot run by row chunks: on data rows {start}–{stop - 1}, {err.diagnostic.message}",
                               err.diagnostic.span, err.diagnostic.notes + (NO_CHUNKS,)).located_in(job.source) from None
    if runs[0].printed != runs[1].printed or runs[1].printed != runs[2].printed:
        raise refuse("`println` shows a value computed from the data rows, which are never gathered in one place",
                     None).located_in(job.source)
    plan = Plan.of(runs[0], a, runs[1], b, job.data.rows)
    plan.check_window_free(runs[1], runs[2], b)
    return plan, runs[0]


def _own_error(job: Job, err: SpireadError, first: bool) -> SpireadError | None:
    """The program's own error, which the numpy backend gives as well, or
    None where a probe's few rows made it (`arange(6)` beside six rows of
    data): the program recorded on all the rows, as numpy runs it, where they
    are few enough to read whole (CHUNK_BYTES); else, when the first probe
    failed, the same error on the second's rows, as many as another probe's."""
    data = job.data
    whole = sum(data.window(r, 0, 1).nbytes for r in (*data.files.values(), *data.sets.values())
                if data.chunked(r)) * data.rows <= CHUNK_BYTES
    if not (whole or first):
        return None
    try:
        job.record(0, data.rows if whole else PROBE_ROWS[1])
    except SpireadError as other:
        return other if whole or other.diagnostic == err.diagnostic else None
    return None


# ------------------------------------------------------------------ the plan


@dataclass
class Plan:
    rows: int                       # N, the total number of data rows
    row: list[bool]                 # per node: its leading axis is the data rows
    reductions: list[tuple[int, Across]]  # (node id, how chunks' values combine): totals over all rows
    row_counts: list[int]           # constant leaves that are the number of rows
    local_picks: list[int]          # selections from a row-chunked value: must pick within each row
    row_params: dict[int, list[str]]  # per op node: its parameters that run along the data rows (positions)
    remade: dict[int, tuple[Made, int]]  # leaves of positions or draws along the rows -> how made, along which axis
    copies: dict[int, int]          # names bound to what ops on constants made from the rows compute -> that node
    per_chunk: list[bool]           # per node: its value differs from chunk to chunk (row nodes, reductions)
    post: list[bool]                # per node: computed from a total and no row data, so on the driver
    bytes_per_row: int              # what one row of the chunk part holds, recorded
    # Totals used back on the rows (`X - X.mean`): (the row op, its operand
    # holding totals, the reductions it holds). Allowed when none of them
    # moves with a trained value (`Plan.totals_before`), refused otherwise.
    combined: list[tuple[int, int, frozenset[int]]] = field(default_factory=list)
    level: dict[int, int] = field(default_factory=dict)  # reduction -> how many totals deep it is computed

    @staticmethod
    def of(run_a: Run, a: int, run_b: Run, b: int, total_rows: int) -> "Plan":
        nodes_a, nodes_b = run_a.tape.nodes, run_b.tape.nodes
        text = run_a.tape.text
        if len(nodes_a) != len(nodes_b):  # at the first op the two recordings do not share (a `map` over rows)
            first = next((k for k, (na, nb) in enumerate(zip(nodes_a, nodes_b))
                          if (na.span, na.label) != (nb.span, nb.label)), min(len(nodes_a), len(nodes_b)))
            raise refuse(f"the program records {len(nodes_a)} operations on {a} rows but {len(nodes_b)} on {b}",
                         (nodes_b if first < len(nodes_b) else nodes_a)[first].span)
        axis: list[int | None] = [None] * len(nodes_a)  # the axis along which a node's data rows run
        post = [False] * len(nodes_a)
        totals: list[frozenset[int]] = [frozenset()] * len(nodes_a)  # the reductions a node is computed from
        reductions, row_counts, local_picks, combined, level, along, remade, copies = [], [], [], [], {}, {}, {}, {}
        for na, nb in zip(nodes_a, nodes_b):
            i = na.id
            if (na.op is None) != (nb.op is None) or (na.op and na.op.name != nb.op.name) or na.inputs != nb.inputs:
                raise refuse(f"`{text(na)}` records differently on {a} and {b} rows", na.span)
            sa, sb = na.value.shape, nb.value.shape
            follows = _rows_axes(sa, a, sb, b)
            if na.op is None:
                made = run_a.made.get(i)
                if len(follows) == 1 and made is not None and made.kind == "derived":
                    raise SpireadError(
                        f"cannot run by row chunks: `{text(na)}` is made from positions or draws along the data "
                        "rows while the program is recorded, so each chunk would make its own", na.span,
                        [_POSITIONS_AS_VALUES, NO_CHUNKS])
                if len(follows) == 1:
                    axis[i] = follows[0]
                    if made is not None and made.positions:  # made again per chunk, as its rows of the whole
                        remade[i] = (made, follows[0])
                    elif made is not None and made.kind == "copy":  # the node's value, once computed again
                        copies[i] = made.of
                elif sa != sb:
                    raise refuse(f"`{text(na)}` is {shape_str(sa)} on {a} rows and {shape_str(sb)} on {b}", na.span)
                elif not np.array_equal(na.value, nb.value, equal_nan=True):
                    if sa == () and float(na.value) == a and float(nb.value) == b:
                        row_counts.append(i)
                        post[i] = True  # the total N, known before any chunk runs
                    else:
                        how = ("a Jet is computed while the program is recorded: make it of values that are not "
                               "data rows" if i in run_a.jets else "`rows(X)` is the number of all the rows in every "
                               "chunk: compute with it (`rows(X) * cols(X)`, not `size(X)`)")
                        raise SpireadError(
                            f"cannot run by row chunks: `{text(na)}` is computed from the data rows (their values "
                            "or their number) while the program is recorded, so each chunk would compute its own",
                            na.span, [how, NO_CHUNKS])
                continue
            totals[i] = frozenset().union(*(totals[j] for j in na.inputs))
            row_axes = [axis[j] for j in na.inputs]
            row_params = [k for k, v in na.params.items()
                          if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == a and len(nb.params[k]) == b]
            fixed = {k: v for k, v in na.params.items() if k not in row_params}
            if any(not _same_param(v, nb.params[k]) for k, v in fixed.items()):
                raise refuse(f"`{text(na)}` takes parameters computed from the data's values", na.span)
            if row_params:
                along[i] = row_params
            if all(r is None for r in row_axes) and not row_params:
                post[i] = any(post[j] for j in na.inputs)
                continue
            ndims = [nodes_a[j].value.ndim for j in na.inputs]
            own = _on_rows(na, row_axes, ndims, row_params)
            across = na.op.across_rows and na.op.across_rows(row_axes, ndims, **na.params)
            if own is not None and follows == [own]:
                axis[i] = own
                if "rows" in row_params and row_axes[0] is not None:  # positions within each row: checked per chunk
                    local_picks.append(i)
                combined += [(i, j, totals[j]) for j in na.inputs if post[j]]
            elif across and not follows and sa == sb:
                reductions.append((i, across))
                level[i] = 1 + max((level[r] for r in totals[i]), default=-1)
                totals[i] |= {i}
                post[i] = True
            else:
                what = next((nodes_a[j] for j, r in zip(na.inputs, row_axes) if r is not None), na)
                raise SpireadError(
                    f"cannot run by row chunks: `{na.label}` uses the rows of {_what(run_a.tape, what)} together: "
                    "a chunk holds its own rows only, and chunks meet only in totals over all the rows "
                    "(`.sum`, `.mean`, `colSum`, `max`, `X.T @@ Y`, …)", na.span,
                    ["compute from each row alone, then total; values made of particular rows are data of their "
                     "own: load them from a file of their own", NO_CHUNKS])
        _refuse_reads(run_a, remade, copies, totals)
        row = [r is not None for r in axis]
        output = run_a.output
        if row[output]:
            raise refuse(f"the output `{run_a.output_name}` has one row per data row "
                         f"({shape_str(nodes_a[output].value.shape[1:]) or 'a number'} each); "
                         "row chunks compute totals, such as a `.sum` or `.mean` of it", nodes_a[output].span)
        per_chunk = list(row)
        for r, _ in reductions:
            per_chunk[r] = True
        held = sum(n.value.nbytes for n in nodes_a if row[n.id]) + sum(
            nodes_a[i].params[k].nbytes for i, names in along.items() for k in names)
        return Plan(total_rows, row, reductions, row_counts, local_picks, along, remade, copies, per_chunk, post,
                    max(held // a, 8), combined, level)

    def totals_before(self, probe: Run, wrt_ids: dict[str, int]) -> list[int]:
        """The totals that no trained value moves, which are computed once,
        before the steps, and are constants to every chunk from then on; a
        total that a trained value moves is refused where it is used back on
        the rows (it is known only after every chunk has run)."""
        moved = probe.tape.fed_by(wrt_ids.values(), len(probe.tape.nodes) - 1)
        for i, j, used in self.combined:
            by = next((r for r in sorted(used) if moved[r]), None)
            if by is not None:
                tape = probe.tape
                name = next(n for n, w in wrt_ids.items() if tape.fed_by([w], by)[by])
                raise refuse(f"`{tape.nodes[i].label}` combines the data rows with {_what(tape, tape.nodes[j])}, "
                             f"a total over all rows that changes with `{name}`, which is known only after "
                             "every chunk has run", tape.nodes[i].span)
        tape = probe.tape
        for r, across in self.reductions:
            node = tape.nodes[r]
            if moved[r] and (node.value.shape != () or across.combine is not np.add):
                name = next(n for n, w in wrt_ids.items() if tape.fed_by([w], r)[r])
                what = next(tape.nodes[j] for j in node.inputs if self.row[j])
                made = (f"a {across.word} over all rows" if across.combine is not np.add
                        else f"a sum over all rows, {shape_str(node.value.shape)},")
                raise SpireadError(
                    f"cannot run by row chunks: `{node.label}` makes {made} of {_what(tape, what)}, which changes "
                    f"with `{name}`: row chunks differentiate totals that are one number and a sum of the rows' "
                    "shares (a `.sum` or `.mean`)", node.span,
                    [f"differentiate by values the total does not depend on ({option('wrt', 'NAME')}), or write "
                     "the total as a `.sum` or `.mean` of the rows", NO_CHUNKS])
        return [r for r, _ in self.reductions if not moved[r]]

    def once_warnings(self, run: Run) -> list[Diagnostic]:
        """A probe's warnings about values that are the same in every chunk
        and not computed from a total: they are shown once, as recorded."""
        spans = {n.span for n in run.tape.nodes if not self.per_chunk[n.id] and not self.post[n.id]}
        return [w for w in run.diagnostics.warnings if w.span in spans]

    def check_window_free(self, run_b: Run, run_c: Run, b: int) -> None:
        """A recording on rows [1, 1+b) must be the one on [0, b) but for the
        row-chunked values: positions within each chunk (`arange(rows(x))`)
        pass; positions into all the data rows (read from a file) do not, nor
        positions held one per row that are not the data rows' own (the two
        recordings' rows 1 and 2 must hold the same: not `arange(rows(x)) + 1`)."""
        nodes_b, nodes_c = run_b.tape.nodes, run_c.tape.nodes
        for nb, nc in zip(nodes_b, nodes_c):
            moved = nb.value.shape != nc.value.shape or (
                nb.op is None and not self.row[nb.id] and nb.id not in self.row_counts
                and not np.array_equal(nb.value, nc.value, equal_nan=True))
            if nb.id in self.local_picks:
                rows = nc.params["rows"]
                moved = moved or not np.array_equal(np.where(rows < 0, rows + b, rows), np.arange(b))
            for k in self.row_params.get(nb.id, ()):  # positions one per data row; others are the node's own
                if not (k == "rows" and nb.id in self.local_picks):
                    moved = moved or not np.array_equal(nb.params[k][1:], nc.params[k][:-1])
            if len(nodes_b) != len(nodes_c) or moved:
                raise refuse(f"`{nb.label.split()[0]}` depends on where in the data a chunk starts; "
                             "positions into the data rows can only be `arange(rows(x))`", nb.span)

    def refuse_row_wrt(self, wrt_ids: dict[str, int], probe: Run) -> None:
        for name, i in wrt_ids.items():
            if self.row[i]:
                others = [n for n in probe.inputs_of_output() if not self.row[probe.bindings[n]]]
                raise SpireadError(f"cannot run by row chunks: `{name}` has one row per data row, so its gradient "
                                   "is as large as the data", probe.binding_spans.get(name),
                                   [f"differentiate by other values, {option('wrt', 'NAME')}"
                                    + (f": {', '.join(f'`{n}`' for n in others)}" if others else "")])


_POSITIONS_AS_VALUES = ("positions and draws along the rows run by row chunks as values in ops on the rows "
                        "(`y * arange(rows(y))`, `where(arange(rows(X)) < 5, …)`, `X * randn(rows(X), 1)`)")


def _refuse_reads(run: Run, remade: dict[int, tuple[Made, int]], copies: dict[int, int],
                  totals: list[frozenset[int]]) -> None:
    """A value the program reads while it is recorded (a size, positions,
    labels: `Run.read`) is read as the chunk recorded it: a total over the
    rows is the chunk's share of it, and what positions or draws along the
    rows feed is the chunk's own making (they are made again as its rows of
    the whole, but what was read is not read again). The positions
    themselves may be read, as a pick's: the probes check those."""
    fed = run.tape.fed_by(remade, len(run.tape.nodes) - 1, copies)
    node = next((run.tape.nodes[i] for i in run.read if totals[i] or (fed[i] and i not in remade)), None)
    if node is None:
        return
    made, how = (("a total over the data rows, of which a chunk knows its own share", [NO_CHUNKS]) if totals[node.id]
                 else ("positions or draws along the data rows, which each chunk makes for its own rows",
                       [_POSITIONS_AS_VALUES, NO_CHUNKS]))
    raise SpireadError(f"cannot run by row chunks: `{node.label.split()[0]}` is read while the program is recorded "
                       f"(a size, positions or labels), but it is computed from {made}", node.span, how)


def _what(tape: Tape, node) -> str:
    """A node as messages name it: its name, its text if a leaf, else its op."""
    if node.name or node.op is None:
        return f"`{node.name or tape.text(node)}`"
    return f"the result of `{node.label}`"


def _same_param(x, y) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.array_equal(np.asarray(x), np.asarray(y))
    return x == y


def _rows_axes(sa: tuple, a: int, sb: tuple, b: int) -> list[int]:
    """The axes of a value's shape that follow the number of data rows (`a`
    on `a` rows, `b` on `b`), the rest the same."""
    if len(sa) != len(sb):
        return []
    differ = [k for k, (x, y) in enumerate(zip(sa, sb)) if x != y]
    return differ if all(sa[k] == a and sb[k] == b for k in differ) else []


def _on_rows(node, row_axes: list[int | None], ndims: list[int], row_params: list[str]) -> int | None:
    """The axis of the node's value whose entry k depends only on data row k
    of its operands (and on the operands without rows, whole), or None: the
    op's own facts (`Op.row_wise`, `Op.structure`, `Op.on_rows`)."""
    op, ndim = node.op, node.value.ndim
    if op.structure.kind == "elementwise":  # broadcasting aligns the operands' last axes with the value's
        axes = {r + ndim - n for r, n in zip(row_axes, ndims) if r is not None}
        return axes.pop() if len(axes) == 1 else None
    if op.row_wise:  # along each row of a matrix; a vector is one row
        return 0 if ndim == 2 and row_axes == [0] * len(row_axes) else None
    if op.on_rows is None:
        return None
    own = op.on_rows(row_axes, ndims, row_params, **node.params)
    return None if own is None else own % max(ndim, 1)


def default_chunk_rows(plan: Plan, threads: int) -> int:
    """The rows of one chunk: as many as keep one chunk's recorded values
    (every intermediate of the chunk part) within CHUNK_BYTES and, with one
    chunk per thread in flight, within half of the memory spiread allows
    itself (limits.max_bytes); at most N/threads, so every thread has work."""
    budget = min(CHUNK_BYTES, max_bytes() // (2 * max(threads, 1)))
    rows = max(1, budget // plan.bytes_per_row)
    return max(1, min(rows, math.ceil(plan.rows / max(threads, 1))))


def default_threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
