"""`--backend dask`: a program's row chunks (spiread_cli/chunks.py) run as Dask
tasks, on the local threaded scheduler or on a cluster (`--scheduler
tcp://host:8786`), and their shares are tree-summed.

Dask is imported here only, and only when this backend is used (`pip install
".[dask]"` in spiread's checkout). Each evaluation is one `compute` of one graph: a task per
chunk that replays the chunk's fused template (recording and fusing the chunk
the first time) and returns its share of every total (the loss's sums and
means) with the gradients of those shares and the first warnings, then a tree
of additions. The driver finishes what follows the totals and hands numpy
gradients to the optimizer, so the graph is built anew each step from the
same few tasks and never grows. Totals of the data alone are computed once,
before the first step (`Program._prepare`).

    >>> from spiread_cli import dask_backend
    >>> program = dask_backend.Program.open("model.ad", Options(chunk_rows=100_000))
    >>> program.gradients(["W"]).gradients["W"]
"""

from __future__ import annotations

import itertools
import math
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import syntax
from .set_options import parse_overrides
from .sources import base_dir_of, read_source
from .chunks import (PROBE_ROWS, Data, Driver, Job, Share, add_shares, default_chunk_rows, default_threads,
                     drop_templates, probe, record_chunk, share_of_kept, share_of_rows,
                     totals_of_rows)
from .data import parse_set_option
from .data_open import SET_PATH_SUFFIXES
from .dask_common import Result, close_client, connect, dask_threaded, on_cluster, require_dask, stopped
from .diagnostics import Diagnostics, SpireadError, usage_error
from .run import Run
from .tape_nodes import all_finite

FAN_IN = 8  # shares added per task in the tree sum
_names = itertools.count()


@dataclass
class Options:
    scheduler: str | None = None     # tcp://host:8786; None: Dask's local threaded scheduler
    chunk_rows: int | None = None    # None: chunks.default_chunk_rows
    persist: bool = False            # keep each chunk's recording in memory between steps


@dataclass
class Program:
    """A program bound to its data, evaluated chunk by chunk on Dask."""
    job: Job
    run: Run                          # the probe recording: names, output, what follows the totals
    options: Options
    bounds: list[tuple[int, int]] = field(default_factory=list)
    client: object = None
    kept: list | None = None          # the chunks' recordings under --persist
    driver: Driver | None = None      # set up for the names differentiated by (`_prepare`)
    scattered: tuple | None = None    # ((job token, totals known), the job sent to the cluster's workers)

    @staticmethod
    def open(path: str, options: Options, sets: list[str] = (), of: str | None = None) -> "Program":
        source = read_source(path)
        base = base_dir_of(source)
        return Program.of_source(source, options, sets, of, base)

    @staticmethod
    def of_source(source, options: Options, sets: list[str] = (), of: str | None = None,
                  base_dir: Path | None = None) -> "Program":
        require_dask()
        if options.chunk_rows is not None and options.chunk_rows < 1:
            raise usage_error(f"`--chunk-rows {options.chunk_rows}`: a chunk needs at least one row")
        base = base_dir or base_dir_of(source)
        try:
            module = syntax.parse(source)
        except SpireadError as err:
            raise err.located_in(source)
        files, literal = {}, []
        for option in sets:
            name, text = parse_set_option(option)
            if name is not None and Path(text).suffix.lower() in SET_PATH_SUFFIXES:  # an archive: read whole
                files[name] = Path(text)
            else:
                literal.append(option)
        constants = parse_overrides(literal, base)
        try:
            data = Data.open(module, base, files)
        except SpireadError as err:
            raise err.located_in(source)
        job = Job(source, module, base, of, constants, data)
        if data.rows < PROBE_ROWS[1] + 1:  # no data to chunk: the whole program in one piece
            run, _ = job.record(0, data.rows)
            return Program(job, run, options)
        try:
            job.plan, run = probe(job)
        except SpireadError as refusal:  # the whole program on Dask arrays instead (spiread_cli/dask_lazy.py)
            from .dask_lazy import LazyProgram, default_chunk_rows as lazy_chunk_rows
            bounds = data.row_bounds(options.chunk_rows or lazy_chunk_rows(data, default_threads()))
            return LazyProgram.record(job, bounds, refusal.located_in(source),
                                      connect(options.scheduler) if options.scheduler else None, options.scheduler)
        # the probe's warnings were about 2 rows: keep those that hold for all
        run.diagnostics = Diagnostics(job.plan.once_warnings(run))
        program = Program(job, run, options)
        threads = default_threads()
        chunk_rows = options.chunk_rows or default_chunk_rows(job.plan, threads)
        program.bounds = data.row_bounds(chunk_rows)
        if options.scheduler:
            program.client = connect(options.scheduler)
        return program

    @property
    def chunked(self) -> bool:
        return self.job.plan is not None

    # -------------------------------------------------------------- commands

    def gradients(self, wrt: list[str] | None = None) -> Result:
        """The output and its gradients with respect to `wrt` (names; default
        as `spiread grad`)."""
        ids = self.run.wrt_ids(wrt)
        diagnostics = self.run.diagnostics  # the run's warnings, then the chunks' and the driver's
        if not self.chunked:
            by_id = self.run.tape.backward(self.run.output, list(ids.values()), diagnostics)
            return Result(self.run.value, {n: by_id[i] for n, i in ids.items()}, diagnostics)
        self.job.plan.refuse_row_wrt(ids, self.run)
        return self._evaluate(list(ids), ids, None, diagnostics, gradients=True)

    def evaluated(self) -> Run:
        """The program evaluated: a Run of the values computed once the totals
        are in. A value with one row per data row is never gathered, so it is
        not among its bindings."""
        if not self.chunked:
            return self.run
        self._evaluate([], {}, None, self.run.diagnostics, gradients=False)
        run = self.run
        bindings = {name: i for name, i in run.bindings.items() if not self.job.plan.row[i]}
        return Run(run.source, self.driver.tape, bindings, run.binding_spans, run.output, run.output_name,
                   run.backward_wrt, run.diagnostics, run.printed, run.jets)

    def steps(self, names: list[str], strict: bool):
        """train.Steps over the row chunks: each step one compute. A
        non-finite loss or gradient is train.NonFinite, at the op (and in the
        rows) where the first inf or nan was born."""
        from .train import NonFinite, tape_steps
        if not self.chunked:
            return tape_steps(self.run, names, strict)
        ids = {name: self.run.bindings[name] for name in names}
        self.job.plan.refuse_row_wrt(ids, self.run)

        def step(number: int, values: dict[str, np.ndarray]):
            result = self._evaluate(names, ids, values, Diagnostics(), gradients=True)
            loss, warnings = float(result.value), result.diagnostics.warnings
            born = warnings[0] if warnings else None
            if not math.isfinite(loss):
                raise NonFinite(stopped(f"training stopped at step {number}: the loss is {loss:g}", born))
            bad = [n for n, g in result.gradients.items() if not all_finite(g)]
            if bad:
                raise NonFinite(stopped(f"training stopped at step {number}: the gradient of `{bad[0]}` is not "
                                        f"finite (the loss was {loss:.6g})", born), loss)
            return loss, result.gradients, warnings

        return step

    # -------------------------------------------------------------- running

    def _evaluate(self, names: list[str], ids: dict[str, int], values, diagnostics: Diagnostics,
                  gradients: bool) -> Result:
        # The chunks differentiate by the names computed before the totals; a
        # total itself, or what follows one, is the driver's alone.
        before_totals = [n for n in names if not self.job.plan.post[ids[n]]]
        first = self.driver is None or self.driver.wrt_ids != ids
        if first:
            self._prepare(before_totals, ids)
        share = self.compute(values, first)  # with no totals to compute, still the chunks' warnings
        for warning in share.warnings:
            diagnostics.warn(warning.message, warning.span, warning.notes)
        value, grads = self.driver.finish(share, values, diagnostics, gradients)
        return Result(value, grads, diagnostics)

    def _prepare(self, wrt: list[str], ids: dict[str, int]) -> None:
        """Set the job up for differentiating by `wrt`: the totals those
        values do not move (computed now, a pass over the data per level of
        totals used in totals), and the driver."""
        job, plan = self.job, self.job.plan
        fixed = plan.totals_before(self.run, ids)
        if job.token:
            self._drop_templates()
        job.wrt, job.token, job.totals, self.kept = wrt, f"{next(_names)}-{uuid.uuid4().hex}", {}, None
        job.moving = [(r, kind) for r, kind in plan.reductions if r not in fixed]
        for level in sorted({plan.level[r] for r in fixed}):
            share = self.map_rows(totals_of_rows, add_shares, level)
            wanted = job.before_steps(level)
            job.totals.update((r, np.array(total)) for r, total in zip(wanted, share.totals))
        self.driver = Driver.of(plan, self.run, ids, job.totals)

    def compute(self, values: dict[str, np.ndarray] | None, first: bool) -> Share:
        """One Dask compute: every chunk's share, tree-summed."""
        graph, job_key, values_key = self._graph(values)
        if self.options.persist:
            if self.kept is None:  # the chunks recorded, fused and kept where they ran
                keys = [self._task(graph, record_chunk, job_key, start, stop, values_key) for start, stop in self.bounds]
                self.kept = (self._on_cluster(self.client.get, graph, keys, sync=False) if self.client
                             else dask_threaded().get(graph, keys))
                graph, job_key, values_key = self._graph(values)
            shares = [self._task(graph, share_of_kept, job_key, self._data(graph, chunk), values_key, first)
                      for chunk in self.kept]
        else:
            shares = [self._task(graph, share_of_rows, job_key, start, stop, values_key, first)
                      for start, stop in self.bounds]
        return self._run(graph, shares)

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
