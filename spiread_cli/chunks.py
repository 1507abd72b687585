"""Row chunks: running a program on its data a block of rows at a time.

This module is numpy only; spiread_cli/dask_backend.py schedules its tasks
with Dask. The idea (measured in issue 14's prototype): when the data reach
the output only through row-wise ops followed by a sum or mean over rows —
least squares, softmax regression, an MLP, the bigram — the ordinary numpy
tape can run once per row chunk, and each chunk's share of the sum and its
gradient are simply added up. Little but the parameters and the gradients
moves between processes.

Which data are row-chunked: the files a program loads (and `--set NAME=PATH`
files) that have the most rows, N; every other file is read whole. `.npy`,
`.zarr` and text (CSV) files are read a chunk at a time (a task carries the
path and the rows, never the data); `.npz` and JSON are read whole once and
sliced.

Whether a program can run this way is decided from its tape, never from its
values: the program is recorded on the first 2 and the first 3 rows, and on
rows 1–3 (`probe`); `Plan.of` compares the first two tapes op by op, and the
third must match the second but for the row-chunked values (`check_window_free`:
positions into all the data rows, read from a file, are refused). A node whose
leading size follows the number of rows is row-chunked; an op that takes a
row-chunked value must act on each row alone (`Op.row_wise`, `Op.structure`,
`ROW_LOCAL`) or be a `sum`/`mean` of it (a *reduction*, whose total is the sum of the
chunks' shares: a mean is a sum over the total count); a constant that is
the number of rows (`rows(X)`) is the total N. Anything else is refused with
the op named. What follows the reductions runs once, on the driver (`Driver`).
A total no trained value moves (`X.mean`) may be used back on the rows: it is
computed before the steps (`totals_of_rows`) and is a constant in every chunk.

A step does per chunk what the numpy backend's fused step does: the first
time, the chunk is recorded with only the data's part computed (`Job.record`)
and fused (`record_chunk`); its template (`Chunk.template`: no values a step
recomputes, no rows it can read again) is kept by the process (`TEMPLATES`),
and later steps replay it with the chunk's rows and the trained values.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import syntax_tree as ast
from .data import as_float64, load_array
from .data_npy import npy_layout
from .data_open import TEXT_SUFFIXES, shown
from .data_text import TextTable
from .diagnostics import Diagnostic, Diagnostics, Source, Span, SpireadError, shape_str
from .interpreter import Interpreter
from .limits import max_bytes
from .rewrite import fuse
from .run import Run
from .tape import Tape

PROBE_ROWS = (2, 3)          # the two recordings `Plan.of` compares
CHUNK_BYTES = 128 << 20      # the default chunk's recorded values (see default_chunk_rows)
TEMPLATE_BYTES = 128 << 20   # the chunks' templates a process keeps without --persist (Templates)

# Ops that act on each row alone although they are neither `row_wise` (which
# also promises to commute with a row gather, and takes no second operand)
# nor "elementwise" in structure.
ROW_LOCAL = {"rowSum", "rowMean", "rowProduct"}
REDUCTIONS = {"sum", "mean"}  # a total over all rows: the chunks' shares add up

NO_CHUNKS = "use --backend numpy (everything in memory)"


def refuse(message: str, span: Span | None) -> SpireadError:
    return SpireadError(f"cannot run by row chunks: {message}", span, [NO_CHUNKS])


# ------------------------------------------------------------------ data


@dataclass(frozen=True)
class NpyRows:
    """Rows of a `.npy` file, read at an offset: pickling this (to send a
    task to a worker) sends the path, never the data."""
    path: str
    offset: int
    shape: tuple[int, ...]
    dtype: str
    fortran: bool

    @staticmethod
    def open(path: Path, span: Span | None) -> "NpyRows":
        offset, shape, fortran, dtype = npy_layout(path, span)
        return NpyRows(str(path), offset, tuple(shape), dtype.str, fortran)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        if not self.shape:
            return load_array(Path(self.path))
        dtype = np.dtype(self.dtype)
        if self.fortran:  # rows are strided: let a memory map pick them out
            whole = np.memmap(self.path, dtype, "r", self.offset, self.shape, order="F")
            part = np.array(whole[start:stop])
            del whole
        else:
            row_bytes = math.prod(self.shape[1:]) * dtype.itemsize
            with open(self.path, "rb") as f:
                f.seek(self.offset + start * row_bytes)
                raw = f.read((stop - start) * row_bytes)
            part = np.frombuffer(raw, dtype).reshape((stop - start,) + self.shape[1:])
        return as_float64(part, self.path)


@dataclass(frozen=True)
class ZarrRows:
    """Rows of a `.zarr` array (a directory), read through zarr."""
    path: str
    shape: tuple[int, ...]

    @staticmethod
    def open(path: Path, span: Span | None) -> "ZarrRows":
        try:
            import zarr
        except ImportError:
            raise SpireadError(f"cannot load `{shown(path)}`: reading .zarr needs zarr", span,
                               ['pip install zarr (or pip install ".[dask]" in spiread\'s checkout)']) from None
        try:
            array = zarr.open_array(str(path), mode="r")
        except Exception as err:  # zarr raises many kinds for a path that is not an array
            raise SpireadError(f"cannot load `{shown(path)}`: not a zarr array ({err})", span) from None
        if array.ndim > 2 or np.dtype(array.dtype).kind not in "biuf":
            raise SpireadError(f"cannot load `{shown(path)}`: spiread reads zarr arrays of real numbers "
                               f"with at most 2 dimensions; this one is {array.dtype}, {array.ndim}-dimensional", span)
        return ZarrRows(str(path), tuple(array.shape))

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        import zarr
        array = zarr.open_array(self.path, mode="r")
        return as_float64(np.asarray(array[start:stop] if self.shape else array[...]), self.path)


@dataclass(frozen=True)
class TextRows:
    """Rows of a CSV (or other text) table, found by one scan of the file
    (data_text.TextTable: the row count, the header rule and every row checked);
    a task carries the path and the blocks' offsets, never the data."""
    table: TextTable

    @staticmethod
    def open(path: Path, span: Span | None) -> "TextRows":
        return TextRows(TextTable.scan(path, span))

    @property
    def rows(self) -> int:
        return self.table.rows

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.table.read(start, stop)


@dataclass(frozen=True)
class ArrayRows:
    """A file read whole (`.npz`, JSON): sliced in memory."""
    array: np.ndarray

    @property
    def rows(self) -> int:
        return self.array.shape[0] if self.array.ndim else 0

    def read(self, start: int, stop: int) -> np.ndarray:
        return self.array[start:stop] if self.array.ndim else self.array


def open_rows(path: Path, span: Span | None, name: str | None = None):
    suffix = path.suffix.lower()
    if suffix == ".zarr":
        return ZarrRows.open(path, span)
    if suffix == ".npy" and path.is_file():
        return NpyRows.open(path, span)
    if suffix in TEXT_SUFFIXES and path.is_file():
        return TextRows.open(path, span)
    return ArrayRows(load_array(path, span, name))


def loaded_paths(module: ast.Module, base_dir: Path) -> list[tuple[Path, Span]]:
    """The files `load("…")` calls name (the path is always a literal), with
    the literal's span (where a message about the file points), found by
    walking the syntax tree with an explicit stack."""
    found, stack = [], [module]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if (isinstance(node, ast.Call) and isinstance(node.callee, ast.Name) and node.callee.id == "load"
                and node.args and isinstance(node.args[0], ast.String)):
            path = Path(node.args[0].value)
            found.append((path if path.is_absolute() else base_dir / path, node.args[0].span))
        for slot in getattr(type(node), "__slots__", ()):
            child = getattr(node, slot, None)
            if isinstance(child, list) or hasattr(type(child), "__slots__") and not isinstance(child, (str, Span)):
                stack.append(child)
    return found


@dataclass
class Data:
    """The data files of one program: which are row-chunked (those with N
    rows, the most) and how to read any of them."""
    files: dict[str, object]                   # resolved path -> rows reader
    sets: dict[str, object]                    # --set NAME -> rows reader
    rows: int                                  # N

    @staticmethod
    def open(module: ast.Module, base_dir: Path, set_files: dict[str, Path]) -> "Data":
        files = {}
        for path, span in loaded_paths(module, base_dir):
            key = str(path.resolve())
            if key not in files and (path.exists()):
                files[key] = open_rows(path, span)
        sets = {name: open_rows(path, None, name) for name, path in set_files.items()}
        return Data(files, sets, max([r.rows for r in [*files.values(), *sets.values()]], default=0))

    def chunked(self, reader) -> bool:
        return self.rows > 0 and reader.rows == self.rows

    def window(self, reader, start: int, stop: int) -> np.ndarray:
        return reader.read(start, stop) if self.chunked(reader) else reader.read(0, reader.rows)

    def loader(self, start: int, stop: int):
        def load(path: Path, span: Span | None) -> np.ndarray:
            reader = self.files.get(str(path.resolve()))
            if reader is None:  # not found by the syntax walk (missing, or a directory): the ordinary message
                return load_array(path, span)
            return self.window(reader, start, stop)
        return load

    def overrides(self, start: int, stop: int) -> dict[str, np.ndarray]:
        return {name: self.window(reader, start, stop) for name, reader in self.sets.items()}

    def row_bounds(self, chunk_rows: int) -> list[tuple[int, int]]:
        return [(start, min(start + chunk_rows, self.rows)) for start in range(0, self.rows, chunk_rows)]


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
        overrides = {**self.constants, **sets, **(values or {})}
        interpreter = Interpreter(self.source, overrides, self.base_dir, load)
        try:
            run = interpreter.run(self.module, self.of, evaluate=not defer)
        except SpireadError as err:
            raise err.located_in(self.source)
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
        except SpireadError as err:  # e.g. `arange(6)` written for six rows of data
            raise SpireadError(f"cannot run by row chunks: on data rows {start}–{stop - 1}, {err.diagnostic.message}",
                               err.diagnostic.span, err.diagnostic.notes + (NO_CHUNKS,)).located_in(job.source) from None
    if runs[0].printed != runs[1].printed or runs[1].printed != runs[2].printed:
        raise refuse("`println` shows a value computed from the data rows, which are never gathered in one place",
                     None).located_in(job.source)
    plan = Plan.of(runs[0], a, runs[1], b, job.data.rows)
    plan.check_window_free(runs[1], runs[2], b)
    return plan, runs[0]


# ------------------------------------------------------------------ the plan


@dataclass
class Plan:
    rows: int                       # N, the total number of data rows
    row: list[bool]                 # per node: its leading axis is the data rows
    reductions: list[tuple[int, str]]   # (node id, "sum" | "mean"): totals over all rows
    row_counts: list[int]           # constant leaves that are the number of rows
    local_picks: list[int]          # selections from a row-chunked value: must pick within each row
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
        if len(nodes_a) != len(nodes_b):
            raise refuse(f"the program records {len(nodes_a)} operations on {a} rows but {len(nodes_b)} on {b}",
                         None)
        row, post = [False] * len(nodes_a), [False] * len(nodes_a)
        totals: list[frozenset[int]] = [frozenset()] * len(nodes_a)  # the reductions a node is computed from
        reductions, row_counts, local_picks, combined, level = [], [], [], [], {}
        for na, nb in zip(nodes_a, nodes_b):
            i = na.id
            if (na.op is None) != (nb.op is None) or (na.op and na.op.name != nb.op.name) or na.inputs != nb.inputs:
                raise refuse(f"`{text(na)}` records differently on {a} and {b} rows", na.span)
            sa, sb = na.value.shape, nb.value.shape
            leading = len(sa) >= 1 and sa[0] == a and len(sb) >= 1 and sb[0] == b and sa[1:] == sb[1:]
            if na.op is None:
                if leading:
                    row[i] = True
                elif sa != sb:
                    raise refuse(f"`{text(na)}` is {shape_str(sa)} on {a} rows and {shape_str(sb)} on {b}", na.span)
                elif not np.array_equal(na.value, nb.value, equal_nan=True):
                    if sa == () and float(na.value) == a and float(nb.value) == b:
                        row_counts.append(i)
                    else:
                        raise refuse(f"`{text(na)}` is computed from the data's values", na.span)
                continue
            totals[i] = frozenset().union(*(totals[j] for j in na.inputs))
            row_in = [row[j] for j in na.inputs]
            row_params = [k for k, v in na.params.items()
                          if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == a and len(nb.params[k]) == b]
            fixed = {k: v for k, v in na.params.items() if k not in row_params}
            if any(not _same_param(v, nb.params[k]) for k, v in fixed.items()):
                raise refuse(f"`{text(na)}` takes parameters computed from the data's values", na.span)
            if not any(row_in) and not row_params:
                post[i] = any(post[j] for j in na.inputs)
                continue
            if leading and _row_local(na, row_in, row_params):
                row[i] = True
                if na.op.name in ("select", "arrange") and row_in[0]:
                    local_picks.append(i)
                combined += [(i, j, totals[j]) for j in na.inputs if post[j]]
            elif sa == () and na.op.name in REDUCTIONS and row_in[0]:
                reductions.append((i, na.op.name))
                level[i] = 1 + max((level[r] for r in totals[i]), default=-1)
                totals[i] |= {i}
                post[i] = True
            else:
                what = next((nodes_a[j] for j, r in zip(na.inputs, row_in) if r), na)
                raise refuse(f"`{na.label}` combines the rows of {_what(run_a.tape, what)} "
                             "other than by a `.sum` or `.mean` of them", na.span)
        output = run_a.output
        if row[output]:
            raise refuse(f"the output `{run_a.output_name}` has one row per data row "
                         f"({shape_str(nodes_a[output].value.shape[1:]) or 'a number'} each); "
                         "row chunks compute totals, such as a `.sum` or `.mean` of it", nodes_a[output].span)
        per_chunk = list(row)
        for r, _ in reductions:
            per_chunk[r] = True
        held = sum(n.value.nbytes for n in nodes_a if row[n.id]) + sum(
            v.nbytes for n in nodes_a for v in n.params.values() if isinstance(v, np.ndarray) and len(v) == a)
        return Plan(total_rows, row, reductions, row_counts, local_picks, per_chunk, post, max(held // a, 8),
                    combined, level)

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
        return [r for r, _ in self.reductions if not moved[r]]

    def once_warnings(self, run: Run) -> list[Diagnostic]:
        """A probe's warnings about values that are the same in every chunk
        and not computed from a total: they are shown once, as recorded."""
        spans = {n.span for n in run.tape.nodes if not self.per_chunk[n.id] and not self.post[n.id]}
        return [w for w in run.diagnostics.warnings if w.span in spans]

    def check_window_free(self, run_b: Run, run_c: Run, b: int) -> None:
        """A recording on rows [1, 1+b) must be the one on [0, b) but for the
        row-chunked values: positions within each chunk (`arange(rows(x))`)
        pass; positions into all the data rows (read from a file) do not."""
        nodes_b, nodes_c = run_b.tape.nodes, run_c.tape.nodes
        for nb, nc in zip(nodes_b, nodes_c):
            moved = nb.value.shape != nc.value.shape or (
                nb.op is None and not self.row[nb.id] and nb.id not in self.row_counts
                and not np.array_equal(nb.value, nc.value, equal_nan=True))
            if nb.id in self.local_picks:
                rows = nc.params["rows"]
                moved = moved or not np.array_equal(np.where(rows < 0, rows + b, rows), np.arange(b))
            if len(nodes_b) != len(nodes_c) or moved:
                raise refuse(f"`{nb.label.split()[0]}` depends on where in the data a chunk starts; "
                             "positions into the data rows can only be `arange(rows(x))`", nb.span)

    def refuse_row_wrt(self, wrt_ids: dict[str, int], probe: Run) -> None:
        for name, i in wrt_ids.items():
            if self.row[i]:
                raise refuse(f"`{name}` has one row per data row, so its gradient is as large as the data",
                             probe.binding_spans.get(name))


def _what(tape: Tape, node) -> str:
    """A node as messages name it: its name, its text if a leaf, else its op."""
    if node.name or node.op is None:
        return f"`{node.name or tape.text(node)}`"
    return f"the result of `{node.label}`"


def _same_param(x, y) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return np.array_equal(np.asarray(x), np.asarray(y))
    return x == y


def _row_local(node, row_in: list[bool], row_params: list[str]) -> bool:
    """Whether row k of the node's value depends on row k of its row-chunked
    operands only (and on other values whole)."""
    op = node.op
    if op.row_wise and node.value.ndim == 1:  # a vector is one row to a normalisation: only elementwise ops
        return op.structure == "elementwise"
    if op.row_wise or op.structure == "elementwise" or op.name in ROW_LOCAL:
        return True
    if op.name == "matmul":               # X @@ W: each row of X times W
        return row_in == [True, False]
    if op.name == "index":                # X.col(j): the same column of every row
        return node.params["key"][:1] == (slice(None),)
    if op.name == "stack":                # Matrix.fromColumns(x1, x2) of row vectors
        return node.params["axis"] == 1 and all(row_in)
    if op.name in ("select", "arrange"):  # picks within each row (checked per chunk), or W[xs, ys]
        # Columns 0, 1, 2, … as many as the rows are positions from the row count (a diagonal: `A.diag`,
        # `A.trace`), which differ from chunk to chunk: not within each row.
        cols = node.params["cols"]
        return "rows" in row_params and "cols" in row_params and not np.array_equal(cols, np.arange(len(cols)))
    return False


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


# ------------------------------------------------------------------ chunk tasks


@dataclass
class Share:
    """What chunks contribute: per reduction, its share of the total and the
    gradient of that share; the first warnings (in row order) with the rows
    they come from. Shares add (`add`), so any tree of additions gives the total."""
    totals: np.ndarray                          # one entry per reduction
    grads: list[dict[str, np.ndarray]]          # per reduction: name -> gradient of its share
    warnings: list[Diagnostic]

    def add(self, other: "Share") -> "Share":
        return Share(self.totals + other.totals,
                     [{n: g[n] + h[n] for n in g} for g, h in zip(self.grads, other.grads)],
                     self.warnings or other.warnings)


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
    constants = [*plan.row_counts, *job.totals]
    if constants:  # what they feed, computed again (and warned about again: the chunk's own counts misled)
        fed = tape.fed_by(constants, len(tape.nodes) - 1)
        again = [n for n in tape.nodes if fed[n.id] and n.deferred is None]  # the deferred wait for the fused tape
        spans = {n.span for n in again}
        run.diagnostics.warnings[:] = [w for w in run.diagnostics.warnings if w.span not in spans]
        tape.replay(again, run.diagnostics)
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
    the totals of `level` that no trained value moves (Job.before_steps)."""
    run, _ = recorded(job, start, stop, None)
    nodes, kinds = run.tape.nodes, dict(job.plan.reductions)
    wanted = job.before_steps(level)
    shares = [float(nodes[r].value) * (1.0 if kinds[r] == "sum" else (stop - start) / job.plan.rows) for r in wanted]
    return Share(np.array(shares), [{} for _ in wanted], [])


@dataclass
class Part:
    """One total's fused tape in a chunk, where its output and trained
    leaves are, and which of its leaves are rows read from a file."""
    tape: Tape
    output: int
    wrt: list[int]
    kind: str                             # "sum" or "mean"
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


def record_chunk(job: Job, start: int, stop: int, values: dict[str, np.ndarray] | None,
                 compute: bool = False) -> Chunk:
    """Record the program on rows [start, stop) (`recorded`) and fuse a tape
    per total the steps compute (spiread_cli/rewrite.py), as train does: it
    holds only what that total needs (the bigram's is one log-likelihood op
    over its picks), so its backward sweep is the fast one, and a chunk kept
    between steps is small. Its first share computes the fused tapes
    (`chunk_share`), so a forward pass is not run twice; with `compute`,
    they are computed now, for a caller that reads them first."""
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
    for r, kind in job.moving:
        fused = fuse(tape, r, wrt, compute=compute)
        fused_reads = {n.id: where[id(n.value)] for n in fused.tape.nodes if n.op is None and id(n.value) in where}
        parts.append(Part(fused.tape, fused.output, fused.wrt, kind, fused_reads))
    return Chunk(start, stop, parts, warnings)


def chunk_share(job: Job, chunk: Chunk, values: dict[str, np.ndarray] | None, first: bool) -> Share:
    """A chunk's share of the totals the steps compute and their gradients:
    the trained leaves set to `values`, what they move replayed (warning
    where an inf or nan is born), the rest computed if it is not (a
    template's instance). The recording's warnings come with the first."""
    diagnostics = Diagnostics()
    totals, grads = [], []
    for part in chunk.parts:
        tape, r, wrt = part.tape, part.output, part.wrt
        for name, i in zip(job.wrt, wrt):
            if values and name in values:
                tape.nodes[i].set_value(values[name])
        moving = tape.between(wrt, r)
        moved = {n.id for n in moving}
        tape.replay([n for n in tape.nodes[:r + 1] if n.value is None and n.id not in moved])
        tape.replay(moving, diagnostics)
        weight = 1.0 if part.kind == "sum" else (chunk.stop - chunk.start) / job.plan.rows
        totals.append(weight * float(tape.nodes[r].value))
        by_id = tape.backward(r, wrt, diagnostics) if wrt else {}
        grads.append({name: weight * by_id[i] for name, i in zip(job.wrt, wrt)})
    notes = (f"in data rows {chunk.start}–{chunk.stop - 1}",)
    recorded_warnings, chunk.warnings = chunk.warnings, []  # a kept chunk's recording warns once
    warnings = [replace(w, notes=w.notes + notes) for w in diagnostics.warnings]
    return Share(np.array(totals), grads, (recorded_warnings if first else []) + warnings)


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


def share_of_rows(job: Job, start: int, stop: int, values: dict[str, np.ndarray] | None, first: bool) -> Share:
    """One task without --persist: rows [start, stop)'s share, from this
    process's template of the chunk, or recorded and fused now (and the
    template kept if there is room)."""
    template = TEMPLATES.get(job, start, stop)
    if template is not None:
        return chunk_share(job, template.instance(job), values, first)
    chunk = record_chunk(job, start, stop, values)
    TEMPLATES.put(job, chunk)
    return chunk_share(job, chunk, values, first)


def share_of_kept(job: Job, chunk: Chunk, values: dict[str, np.ndarray] | None, first: bool) -> Share:
    return chunk_share(job, chunk, values, first)


def drop_templates(token: str) -> None:
    TEMPLATES.drop(token)


# ------------------------------------------------------------------ the driver


@dataclass
class Driver:
    """What follows the totals, computed once per step on the driver: the
    probe's tape with each total a leaf holding it (those computed before
    the steps set once, the others each step)."""
    tape: Tape
    output: int
    reductions: list[int]           # the totals each step computes
    wrt_ids: dict[str, int]
    constants: list[int]            # row counts and the totals computed before the steps
    row: list[bool]                 # per node: one row per data row, so never computed here

    @staticmethod
    def of(plan: Plan, probe: Run, wrt_ids: dict[str, int], totals: dict[int, np.ndarray]) -> "Driver":
        nodes = [replace(n) for n in probe.tape.nodes]
        for r, _ in plan.reductions:
            nodes[r] = replace(nodes[r], op=None, inputs=(), params={}, kind="input")
        for i in plan.row_counts:
            nodes[i].set_value(np.array(float(plan.rows)))
        for i, total in totals.items():
            nodes[i].set_value(total)
        moving = [r for r, _ in plan.reductions if r not in totals]
        return Driver(Tape(nodes, probe.tape.source), probe.output, moving, wrt_ids, [*plan.row_counts, *totals],
                      plan.row)

    def finish(self, share: Share, values: dict[str, np.ndarray] | None,
               diagnostics: Diagnostics, gradients: bool = True) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The output and its gradients, from the chunks' summed shares."""
        nodes = self.tape.nodes
        for r, total in zip(self.reductions, share.totals):
            nodes[r].set_value(np.array(total))
        for name, value in (values or {}).items():
            nodes[self.wrt_ids[name]].set_value(value)
        sources = self.reductions + self.constants + list(self.wrt_ids.values())
        if sources:  # every value shown, not only the output: a total's square root used on the rows, too
            fed = self.tape.fed_by(sources, len(nodes) - 1)
            self.tape.replay([n for n in nodes if fed[n.id] and not self.row[n.id]], diagnostics)
        if not gradients:
            return nodes[self.output].value, {}
        ids = list(self.wrt_ids.values())
        by_id = self.tape.backward(self.output, ids + self.reductions, diagnostics)
        grads = {}
        for name, i in self.wrt_ids.items():
            g = by_id[i]
            for k, r in enumerate(self.reductions):
                if name in share.grads[k]:  # through the chunks (not for a total itself, or what follows one)
                    g = g + by_id[r] * share.grads[k][name]
            grads[name] = g
        return nodes[self.output].value, grads
