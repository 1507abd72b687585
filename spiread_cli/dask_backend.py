"""`--backend dask`: a program's row chunks (spiread_cli/chunk_tasks.py) run as Dask
tasks, on the local threaded scheduler or on a cluster (`--scheduler
tcp://host:8786`), and their shares are tree-summed.

Dask is imported here only, and only when this backend is used (`pip install
".[dask]"` in spiread's checkout). `RowChunkRunner.run_for(wrt)` is what the tasks
see: the driver's run, whose totals over the row chunks are op nodes
(spiread_cli/row_totals.py) reading `ChunkSums`. Each evaluation at new
values is one `compute` of one graph: a task per chunk that replays the
chunk's fused template (recording and fusing the chunk the first time) and
returns its share of every total (the loss's sums and means) with the
gradients of those shares and the first warnings, then a tree of additions;
a Hessian-vector product or a block of tangents is one more. The graph is
built anew each time from the same few tasks and never grows. Totals of the
data alone are computed once, first (`RowChunkRunner._prepare`).

    >>> import spiread_cli
    >>> spiread_cli.load("model.ad", backend="dask", chunk_rows=100_000).grad(wrt="W")["W"]
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chunk_plan import PROBE_ROWS, Job, default_chunk_rows, default_threads, probe
from .chunk_tasks import (Rows, Share, add_shares, added, drop_templates, gradient_tangents_of_chunk,
                          patterns_of_chunk, record_chunk, share_of_chunk, tangents_of_chunk, totals_of_rows)
from .dask_common import WorkerDataLost, close_client, connect, dask_threaded, on_cluster, require_dask
from .diagnostics import Diagnostics, SpireadError
from .row_data import Data
from .row_totals import KeptSums, driver_run, names_to_differentiate, tangent_key
from .run import Run
from .tape_nodes import warn_all

FAN_IN = 8  # shares added per task in the tree sum
RESENDS = 3  # times a compute is made again after a worker took data only it held (WorkerDataLost)
_names = itertools.count()


@dataclass
class Options:
    scheduler: str | None = None     # tcp://host:8786; None: Dask's local threaded scheduler
    chunk_rows: int | None = None    # None: chunk_plan.default_chunk_rows; at least 1 (checked by both front doors)
    persist: bool = False            # keep each chunk's recording in memory between steps


@dataclass
class RowChunkRunner:
    """A program bound to its data, evaluated chunk by chunk on Dask."""
    job: Job
    run: Run                          # the probe recording: names, output, what follows the totals
    options: Options
    bounds: list[tuple[int, int]] = field(default_factory=list)
    client: object = None
    kept: list | None = None          # the chunks' recordings under --persist
    sums: "ChunkSums | None" = None   # the sums over the chunks the driver's run reads (`run_for`)
    once: list = field(default_factory=list)  # the probe's warnings that hold for all rows
    scattered: tuple | None = None    # ((job token, totals known), the job sent to the cluster's workers)

    @staticmethod
    def of_module(source, module, base: Path, options: Options, constants: dict[str, np.ndarray],
                  files: dict[str, Path], of: str | None = None) -> "RowChunkRunner":
        """A parsed program with bindings replaced by `constants` (arrays)
        and by the row data of `files` (name -> path): made by the front
        door (program.Program.dask_runner), for the Python API and the
        command line."""
        require_dask()
        try:
            data = Data.open(module, base, files)
        except SpireadError as err:
            raise err.located_in(source)
        job = Job(source, module, base, of, constants, data)
        if data.rows < PROBE_ROWS[1] + 1:  # no data to chunk: the whole program in one piece
            run, _ = job.record(0, data.rows)
            return RowChunkRunner(job, run, options)
        try:
            job.plan, run = probe(job)
        except SpireadError as err:
            raise err.located_in(source)
        program = RowChunkRunner(job, run, options)
        program.once = job.plan.once_warnings(run)  # the probe's warnings were about 2 rows: those that hold for all
        threads = default_threads()
        chunk_rows = options.chunk_rows or default_chunk_rows(job.plan, threads)
        program.bounds = data.row_bounds(chunk_rows)
        if options.scheduler:
            program.client = connect(options.scheduler)
        return program

    @property
    def chunked(self) -> bool:
        return self.job.plan is not None

    # -------------------------------------------------------------- the seam

    def run_for(self, wrt: list[str] | None, differentiate: bool = True) -> Run:
        """The program as the tasks see it: a Run whose totals over the row
        chunks are op nodes (spiread_cli/row_totals.py) of the values the
        chunks are differentiated by — `wrt`, or by default those the
        output depends on but the row data (said in a warning); none when
        not `differentiate` (`eval`). Its values are those at the program's
        own values; every sweep the tasks run over it runs the chunks'."""
        if not self.chunked:
            return self.run
        try:
            return self._run_for(wrt, differentiate)
        except SpireadError as err:
            raise err.located_in(self.job.source)

    def _run_for(self, wrt: list[str] | None, differentiate: bool) -> Run:
        probe, plan = self.run, self.job.plan
        probe.diagnostics = Diagnostics(list(self.once))
        names = names_to_differentiate(probe, plan.row, wrt) if differentiate else []
        ids = {name: probe.bindings[name] for name in names}
        plan.refuse_row_wrt(ids, probe)
        reductions = [r for r, _ in plan.reductions]
        # the chunks differentiate by the names computed before the totals that feed one
        reach = [n for n in names if not plan.post[ids[n]]
                 and any(probe.tape.fed_by([ids[n]], r)[r] for r in reductions)]
        values = {name: probe.node(name).value for name in reach}
        share = self._prepare(reach, ids) or self.compute(values, True)
        data = [name for name, i in probe.bindings.items() if plan.row[i] and probe.tape.nodes[i].op is None]
        self.sums = ChunkSums(self, values, share, data)
        if not self.job.moving:
            warn_all(probe.diagnostics, self.sums.reports())
        moving = [r for r, _ in self.job.moving]
        return driver_run(probe, plan.row, moving, reach, self.job.totals, plan.row_counts, plan.rows, self.sums,
                          probe.diagnostics)

    def _prepare(self, wrt: list[str], ids: dict[str, int]) -> Share | None:
        """Set the job up for differentiating by `wrt`: the totals those
        values do not move (computed now, a pass over the data per level of
        totals used in totals). When none moves and no value a chunk holds
        is computed from the last level's totals, the last pass read every
        chunk's final values: its share (the warnings) is the first step's."""
        job, plan = self.job, self.job.plan
        fixed = plan.totals_before(self.run, ids)
        if job.token:
            self._drop_templates()
        job.wrt, job.token, job.totals, self.kept = wrt, f"{next(_names)}-{uuid.uuid4().hex}", {}, None
        job.computed = frozenset(n for n in wrt if self.run.node(n).op is not None or self.run.copied(n))
        job.moving = [(r, kind) for r, kind in plan.reductions if r not in fixed]
        share, wanted = None, []
        for level in sorted({plan.level[r] for r in fixed}):
            share = self.map_rows(totals_of_rows, add_shares, level)
            wanted = job.before_steps(level)
            job.totals.update((r, np.array(total)) for r, total in zip(wanted, share.totals))
        if share is None or job.moving:
            return None
        fed = self.run.tape.fed_by(wanted, len(plan.row) - 1)
        if any(plan.per_chunk[i] and fed[i] for i in range(len(fed)) if i not in wanted):
            return None
        return Share([], [], share.warnings, ())

    def compute(self, values: dict[str, np.ndarray] | None, first: bool) -> Share:
        """One Dask compute: every chunk's share, tree-summed."""
        return self.map_chunks(share_of_chunk, add_shares, values, first)

    def _resending(self, compute, *args):
        """`compute(*args)`, which makes a graph and computes it; made and
        computed again when a worker that stopped took data only it held
        (WorkerDataLost): Dask computes a lost worker's tasks again itself,
        but what was sent or kept outside the graph, the job and the kept
        recordings, is sent and made again."""
        for _ in range(RESENDS):
            try:
                return compute(*args)
            except WorkerDataLost:
                self.scattered, self.kept = None, None
        return compute(*args)

    def _chunks(self, values: dict[str, np.ndarray] | None) -> tuple[dict, object, str | None, list]:
        """A new graph holding the values (`_graph`), and where each chunk is
        for the tasks on it: the chunks --persist keeps where they ran
        (recorded and fused the first time), else their rows."""
        graph, job_key, values_key = self._graph(values)
        if not self.options.persist:
            return graph, job_key, values_key, [Rows(start, stop) for start, stop in self.bounds]
        if self.kept is None:
            keys = [self._task(graph, record_chunk, job_key, start, stop, values_key) for start, stop in self.bounds]
            self.kept = (self._on_cluster(self.client.get, graph, keys, sync=False) if self.client
                         else dask_threaded().get(graph, keys))
            graph, job_key, values_key = self._graph(values)
        return graph, job_key, values_key, [self._data(graph, chunk) for chunk in self.kept]

    # A graph is a plain dict (Dask's own graph format): building one costs
    # far less than `delayed`'s collections, which at 10⁵ rows cost more than
    # the step itself. A task is (function, *arguments); a string argument
    # that is a key is that key's value.

    def _graph(self, values) -> tuple[dict, object, str | None]:
        """A new graph holding the trained values, and the job as tasks name
        it: sent to a cluster's workers once per setting of the job
        (`client.scatter`), the object itself on threads."""
        graph: dict = {}
        values_key = self._data(graph, values) if values else None
        if self.client is None:
            return graph, self._data(graph, self.job), values_key
        version = (self.job.token, len(self.job.totals))
        if self.scattered is None or self.scattered[0] != version:
            self.scattered = (version, self._on_cluster(self.client.scatter, self.job, broadcast=True, hash=False))
        return graph, self.scattered[1], values_key

    def _data(self, graph: dict, value) -> object:
        """How a task names a value: a future (on the cluster already) is
        named by itself; anything else is put in the graph under a new key."""
        if self.client is not None:
            from distributed import Future
            if isinstance(value, Future):
                return value
        key = self._key("data")
        graph[key] = value
        return key

    def _task(self, graph: dict, function, *args) -> str:
        key = self._key(function.__name__)
        graph[key] = (function, *args)
        return key

    def _key(self, what: str) -> str:
        """A key no other graph uses, on this scheduler or a shared one (the
        job's token is unique to this setting of this job)."""
        return f"spiread-{what}-{self.job.token}-{next(_names)}"

    def map_rows(self, function, add, *args):
        """One Dask compute: `function(job, start, stop, *args)` on every
        chunk's rows, the results tree-summed by `add`."""
        return self._resending(self._map_rows, function, add, *args)

    def map_chunks(self, function, add, values: dict[str, np.ndarray] | None, *args):
        """One Dask compute: `function(job, where, values, *args)` on every
        chunk as the steps hold it (`_chunks`), the results tree-summed by `add`."""
        return self._resending(self._map_chunks, function, add, values, *args)

    def _map_chunks(self, function, add, values: dict[str, np.ndarray] | None, *args):
        graph, job_key, values_key, chunks = self._chunks(values)
        return self._run(graph, [self._task(graph, function, job_key, where, values_key, *args) for where in chunks],
                         add)

    def _map_rows(self, function, add, *args):
        graph, job_key, _ = self._graph(None)
        return self._run(graph, [self._task(graph, function, job_key, start, stop, *args)
                                 for start, stop in self.bounds], add)

    def _run(self, graph: dict, shares: list[str], add=add_shares):
        """Tree-sum the shares with `add` and compute them (one Dask compute)."""
        while len(shares) > 1:
            shares = [self._task(graph, add, *shares[i:i + FAN_IN]) for i in range(0, len(shares), FAN_IN)]
        try:
            if self.client is not None:
                return self._on_cluster(self.client.get, graph, shares[0])
            return dask_threaded().get(graph, shares[0])
        except SpireadError as err:
            raise err.located_in(self.job.source)

    def _on_cluster(self, call, *args, **kwargs):
        return on_cluster(self.client, self.options.scheduler, call, *args, **kwargs)

    def _drop_templates(self) -> None:
        drop_templates(self.job.token)
        if self.client is not None and self.client.status == "running":  # a lost scheduler took them with it
            self._on_cluster(self.client.run, drop_templates, self.job.token)

    def close(self) -> None:
        try:
            if self.chunked and self.job.token:
                self._drop_templates()
        finally:
            close_client(self.client)
            self.client = None


class ChunkSums(KeptSums):
    """row_totals.RowSums over the program's row chunks, on Dask: each
    evaluation at new values one pass giving every total with its gradients,
    each Hessian-vector product or block of tangents one pass."""

    def __init__(self, program: RowChunkRunner, values: dict[str, np.ndarray], share: Share, data: list[str]):
        super().__init__(values, share)
        self.program, self.data = program, data

    def evaluate(self, values: dict[str, np.ndarray]) -> Share:
        return self.program.compute(values, False)

    def _pass(self, task, *args):
        return self.program.map_chunks(task, added, self.at_values, *args)

    def jvp(self, total: int, values, tangents: dict[str, np.ndarray]) -> np.ndarray:
        along = self.kept(tangent_key("jvp", tangents=tangents), values,
                          lambda: self._pass(tangents_of_chunk, tangents))
        return along[0][total]

    def gradient_jvp(self, total: int, name: str, values, tangents: dict[str, np.ndarray]) -> np.ndarray:
        products = self.kept(tangent_key("gradient_jvp", total, tangents=tangents), values,
                             lambda: self._pass(gradient_tangents_of_chunk, total, tangents))
        return products[self.program.job.wrt.index(name)]

    def patterns(self, total: int) -> tuple:
        return self.kept(("patterns", total), self.at_values, lambda: self._pass(patterns_of_chunk, total))
