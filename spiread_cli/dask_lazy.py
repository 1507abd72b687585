"""`--backend dask`'s fallback: a program the row-chunk plan refuses (an op
that mixes rows, such as `X.T @@ X`) runs through the tape's one evaluator
with the row data as Dask arrays, a chunk of rows per block.

The program is recorded as on numpy, but every value computed from the data
is a lazy Dask array (tape.compute keeps it lazy and skips its finiteness
check). An evaluation is then one `dask.compute` of the output, the
gradients (the reverse sweep's rules run on the lazy values too) and a
finiteness flag per lazy node; warnings are made from those flags afterwards,
at the ops' spans, as the numpy tape makes them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chunks import NO_CHUNKS, Job
from .data import load_array
from .dask_common import Result, close_client, on_cluster, stopped
from .diagnostics import Diagnostics, SpireadError
from .interpreter import Interpreter
from .ops import is_lazy
from .run import Run


def default_chunk_rows(data, threads: int) -> int:
    """Rows per block: the row data's own bytes per row within chunks.CHUNK_BYTES
    (without a plan, what a program makes of a row is not measured), at most
    N/threads so every thread has work."""
    from .chunks import CHUNK_BYTES
    row_bytes = sum(8 * int(np.prod(np.shape(r.read(0, 1))[1:])) for r in [*data.files.values(), *data.sets.values()]
                    if data.chunked(r))
    return max(1, min(CHUNK_BYTES // max(row_bytes, 8), math.ceil(data.rows / max(threads, 1))))


def lazy_rows(reader, bounds: list[tuple[int, int]]):
    """The reader's rows as one Dask array, a block per chunk of rows; each
    block a task that reads its rows (the path and offsets, never the data)."""
    import dask.array as da
    from dask import delayed
    tail = np.shape(reader.read(0, 1))[1:]
    blocks = [da.from_delayed(delayed(reader.read, pure=True)(start, stop), (stop - start,) + tail, np.float64)
              for start, stop in bounds]
    return da.concatenate(blocks) if len(blocks) > 1 else blocks[0]


# The ops whose rules (impl or vjp) do not run on Dask arrays, or only by
# computing them: a program using one on the row data is refused before any
# compute. tests/test_dask_reach.py runs every op of the table on Dask arrays
# to hold this set to the table.
NO_LAZY_RULES = frozenset({"product", "rowProduct", "exclusiveProducts", "reshape", "gatherRows",
                           "meanLogSoftmaxPick", "scatterPairs", "scatterRows"})


def record_lazy(job: Job, bounds: list[tuple[int, int]], refusal: SpireadError) -> Run:
    """The program recorded with its row data as Dask arrays."""
    data = job.data
    lazy = {}

    def value_of(reader):
        if not data.chunked(reader):
            return reader.read(0, reader.rows)
        if id(reader) not in lazy:
            lazy[id(reader)] = lazy_rows(reader, bounds)
        return lazy[id(reader)]

    def load(path: Path, span):
        reader = data.files.get(str(path.resolve()))
        return load_array(path, span) if reader is None else value_of(reader)

    overrides = {**job.constants, **{name: value_of(r) for name, r in data.sets.items()}}
    interpreter = Interpreter(job.source, overrides, job.base_dir, load)
    try:
        run = interpreter.run(job.module, job.of)
    except SpireadError as err:
        raise err.located_in(job.source)
    except Exception as err:  # an op's rule that does not take Dask arrays: the node being recorded
        node = interpreter.tape.nodes[-1] if interpreter.tape.nodes else None
        if node is None or node.op is None:
            raise
        raise no_lazy_rule(node, refusal, f" ({type(err).__name__})").located_in(job.source) from None
    nodes = run.tape.nodes
    for node in nodes:
        if node.op is not None and node.op.name in NO_LAZY_RULES and any(is_lazy(nodes[i].value) for i in node.inputs):
            raise no_lazy_rule(node, refusal).located_in(job.source)
    return run


def no_lazy_rule(node, refusal: SpireadError, detail: str = "") -> SpireadError:
    reason = refusal.diagnostic.message.removeprefix("cannot run by row chunks: ")
    return SpireadError(f"cannot run by row chunks ({reason}), nor op by op on Dask arrays: `{node.label}` has no "
                        f"rule for Dask arrays{detail}", node.span, [NO_CHUNKS])


@dataclass
class LazyProgram:
    """A program on its whole data as Dask arrays: the interface of
    dask_backend.Program (`run`, `gradients`, `evaluated`, `steps`, `close`)."""
    job: Job
    run: Run
    rows: int                       # N: a value whose leading size is N is row data, never gathered whole
    refusal: SpireadError           # why the row chunks could not run it (kept for messages)
    client: object = None
    scheduler: str | None = None    # the client's address, as --scheduler gave it
    chunked = False
    lazy = True

    @staticmethod
    def record(job: Job, bounds: list[tuple[int, int]], refusal: SpireadError, client=None,
               scheduler: str | None = None) -> "LazyProgram":
        try:
            run = record_lazy(job, bounds, refusal)
        except SpireadError as err:
            raise err.located_in(job.source)
        return LazyProgram(job, run, job.data.rows, refusal, client, scheduler)

    # -------------------------------------------------------------- computing

    def _compute(self, *values):
        """One Dask compute of everything asked for (lazy or not)."""
        import dask
        try:
            if self.client is not None:
                return tuple(on_cluster(self.client, self.scheduler, lambda: self.client.gather(
                    self.client.compute(list(values)))))
            # inf and nan are reported at the ops' spans (_warn_births), not by numpy in the worker threads,
            # which np.errstate does not reach
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return dask.compute(*values, scheduler="threads")
        except SpireadError as err:
            raise err.located_in(self.job.source)

    def _lazy_nodes(self, upto: int):
        return [n for n in self.run.tape.nodes[:upto + 1] if is_lazy(n.value)]

    def _evaluate(self, ids: dict[str, int], gradients: bool, diagnostics: Diagnostics, also: list | None = None):
        """The output, the gradients by `ids`, every lazy node's finiteness
        (and the values `also`) in one compute; warnings where an inf or nan
        was born."""
        import dask.array as da
        tape, output = self.run.tape, self.run.output
        grads = tape.backward(output, list(ids.values())) if gradients and ids else {}
        lazy = self._lazy_nodes(output)
        flags = [da.isfinite(n.value).all() for n in lazy]
        value, grads, flags, also = self._compute(tape.nodes[output].value, grads, flags, also or [])
        finite = {n.id: bool(f) for n, f in zip(lazy, flags)}
        self._warn_births(lazy, finite, diagnostics)
        if not all(np.isfinite(g).all() for g in grads.values()):  # the checking sweep names the op (rare)
            tape.backward(output, list(ids.values()), diagnostics)
        return np.asarray(value), {name: np.asarray(grads[i]) for name, i in ids.items()}, also

    def _warn_births(self, lazy, finite: dict[int, bool], diagnostics: Diagnostics) -> None:
        """As the numpy tape warns: at an op whose inputs are finite and whose value is not."""
        from .tape_nodes import describe_nonfinite
        nodes = self.run.tape.nodes
        for node in lazy:
            if node.op is None or finite[node.id]:
                continue
            if all(finite.get(i, True) and (finite.get(i) is not None or nodes[i].finite) for i in node.inputs):
                value, args = self._compute(node.value, [nodes[i].value for i in node.inputs])
                diagnostics.warn(describe_nonfinite(f"`{node.label}`", np.asarray(value),
                                                   [np.asarray(a) for a in args]), node.span)

    # -------------------------------------------------------------- commands

    def gradients(self, wrt: list[str] | None = None):
        ids = self.run.wrt_ids(wrt)  # a gradient by row data is computed whole, as on numpy
        value, grads, _ = self._evaluate(ids, True, self.run.diagnostics)
        return Result(value, grads, self.run.diagnostics)

    def evaluated(self) -> Run:
        """The values that are not one row per data row, computed (one compute)."""
        run, nodes = self.run, self.run.tape.nodes
        shown = {name: i for name, i in run.bindings.items() if not self._is_rows(nodes[i].value)}
        wanted = sorted({*shown.values(), run.output})
        _, _, values = self._evaluate({}, False, run.diagnostics, also=[nodes[i].value for i in wanted])
        for i, value in zip(wanted, values):
            nodes[i].set_value(np.asarray(value, dtype=np.float64))
        return Run(run.source, run.tape, shown, run.binding_spans, run.output, run.output_name, run.backward_wrt,
                   run.diagnostics, run.printed, run.jets)

    def check_subject(self, run: Run, names: list[str] | None):
        """check.Subject on the lazy tape: the output and gradients in one
        compute, the rounding bound in another; each probe and each block
        of forward-mode directions is one compute."""
        from .check import Probe, Subject, kink_sites, output_magnitude
        ids = run.wrt_ids(names)
        tape = run.tape
        value, grads, _ = self._evaluate(ids, True, run.diagnostics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            magnitude = output_magnitude(tape, run.output)
        return Subject(ids, float(value), grads, magnitude, lambda name: Probe(tape, ids[name], run.output),
                       lambda failed: kink_sites(tape, [ids[n] for n in failed], run.output))

    def _is_rows(self, value) -> bool:
        return is_lazy(value) and bool(self.rows) and value.ndim >= 1 and value.shape[0] == self.rows

    def steps(self, names: list[str], strict: bool):
        """train.Steps: each step replays the tape between the trained values
        and the output on Dask arrays and computes once."""
        import math
        from .train import NonFinite
        ids = {name: self.run.bindings[name] for name in names}
        tape = self.run.tape
        moved = tape.between(list(ids.values()), self.run.output)

        def step(number: int, values: dict[str, np.ndarray]):
            diagnostics = Diagnostics()
            for name, i in ids.items():
                tape.nodes[i].set_value(values[name])
            tape.replay(moved)
            value, grads, _ = self._evaluate(ids, True, diagnostics)
            loss, warnings = float(value), diagnostics.warnings
            born = warnings[0] if warnings else None
            if not math.isfinite(loss):
                raise NonFinite(stopped(f"training stopped at step {number}: the loss is {loss:g}", born))
            bad = [n for n, g in grads.items() if not np.isfinite(g).all()]
            if bad:
                raise NonFinite(stopped(f"training stopped at step {number}: the gradient of `{bad[0]}` is not "
                                        f"finite (the loss was {loss:.6g})", born), loss)
            return loss, grads, warnings

        return step

    def close(self) -> None:
        close_client(self.client)
        self.client = None
