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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .chunk_plan import CHUNK_BYTES, NO_CHUNKS, Job
from .data import load_array
from .dask_common import close_client, on_cluster
from .diagnostics import Diagnostics, SpireadError
from .forward import ForwardSweep
from .interpreter import Interpreter
from .ops import is_lazy
from .row_totals import KeptSums, driver_run, names_to_differentiate, tangent_key
from .run import Run
from .second import HessianVectorProducts
from .tape import Tape
from .tape_nodes import describe_nonfinite


def default_chunk_rows(data, threads: int) -> int:
    """Rows per block: the row data's own bytes per row within chunk_plan.CHUNK_BYTES
    (without a plan, what a program makes of a row is not measured), at most
    N/threads so every thread has work."""
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
NO_LAZY_RULES = frozenset({"product", "rowProduct", "colProduct", "exclusiveProducts", "reshape", "gatherRows",
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
    """A program on its whole data as Dask arrays, behind the same seam as
    the row chunks (`run_for`): the driver's run is the program's without
    the values computed from the data, its output one `rowsTotal` node
    whose rules run the lazy tape's own sweeps (`LazySums`)."""
    job: Job
    run: Run
    rows: int                       # N: a value whose leading size is N is row data, never gathered whole
    refusal: SpireadError           # why the row chunks could not run it (kept for messages)
    client: object = None
    scheduler: str | None = None    # the client's address, as --scheduler gave it
    recorded: list = field(default_factory=list)  # the recording's warnings
    chunked = False

    @staticmethod
    def record(job: Job, bounds: list[tuple[int, int]], refusal: SpireadError, client=None,
               scheduler: str | None = None) -> "LazyProgram":
        try:
            run = record_lazy(job, bounds, refusal)
        except SpireadError as err:
            raise err.located_in(job.source)
        return LazyProgram(job, run, job.data.rows, refusal, client, scheduler, list(run.diagnostics.warnings))

    def run_for(self, wrt: list[str] | None, differentiate: bool = True) -> Run:
        """The driver's run (see dask_backend.Program.run_for)."""
        run, nodes = self.run, self.run.tape.nodes
        lazy = [is_lazy(n.value) for n in nodes]
        row = [is_lazy(n.value) and self._is_rows(n.value) for n in nodes]
        run.diagnostics = Diagnostics(list(self.recorded))
        names = names_to_differentiate(run, row, wrt) if differentiate else []
        if not lazy[run.output]:  # the output reads no data
            return run
        # A name computed from the data (not row data itself) that is differentiated by, or shown by `eval`:
        # a constant of the driver's, computed now.
        shown = names if differentiate else [n for n, i in run.bindings.items() if not self._is_rows(nodes[i].value)]
        through = [run.bindings[n] for n in shown if lazy[run.bindings[n]] and run.bindings[n] != run.output]
        computed = dict(zip(through, map(np.asarray, self.compute(*[nodes[i].value for i in through]))))
        sums = LazySums(self, {name: computed.get(run.bindings[name], run.node(name).value) for name in names})
        row = [lazy[i] and i not in computed for i in range(len(nodes))]
        return driver_run(run, row, [run.output], names, computed, [], self.rows, sums, run.diagnostics)

    def _is_rows(self, value) -> bool:
        return bool(self.rows) and value.ndim >= 1 and value.shape[0] == self.rows

    def compute(self, *values):
        """One Dask compute of everything asked for (lazy or not)."""
        import dask
        try:
            if self.client is not None:
                return tuple(on_cluster(self.client, self.scheduler, lambda: self.client.gather(
                    self.client.compute(list(values)))))
            # inf and nan are reported at the ops' spans (LazySums), not by numpy in the worker threads,
            # which np.errstate does not reach
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return dask.compute(*values, scheduler="threads")
        except SpireadError as err:
            raise err.located_in(self.job.source)

    def close(self) -> None:
        close_client(self.client)
        self.client = None


@dataclass
class Evaluation:
    totals: list[np.ndarray]
    grads: list[dict[str, np.ndarray]]
    warnings: list


class LazySums(KeptSums):
    """row_totals.RowSums of one total, the program's output, on its lazy
    tape: each evaluation sets the values, replays what they move and
    computes the output, its gradients and every lazy node's finiteness in
    one compute; HVPs and tangents are the lazy tape's own sweeps, one
    compute each."""

    def __init__(self, program: LazyProgram, values: dict[str, np.ndarray]):
        self.program, self.run = program, program.run
        self.ids = {name: self.run.bindings[name] for name in values}
        # A copy of the tape on which a value given that the driver computes (h = [w], wrt w and h) is a leaf: the
        # driver's tape passes its derivative on to w. One computed from the data stays an op here (the driver
        # holds it as a constant), but keeps the value given (`evaluate` replays around it).
        self.given = set(self.ids.values())
        self.tape = Tape([n.copy(kind="input", op=None, inputs=(), params={})
                          if n.id in self.given and n.op is not None and not is_lazy(n.value) else n.copy()
                          for n in self.run.tape.nodes], self.run.tape.source)
        self.products: HessianVectorProducts | None = None
        super().__init__(values, self.evaluate(values, program.run.diagnostics))

    def evaluate(self, values: dict[str, np.ndarray], diagnostics: Diagnostics | None = None) -> Evaluation:
        import dask.array as da
        tape, output = self.tape, self.run.output
        for name, i in self.ids.items():
            tape.nodes[i].set_value(values[name])
        tape.replay([n for n in tape.between(list(self.given), output) if n.id not in self.given] if self.ids else [])
        if self.products is not None:
            self.products.refresh()
        grads = tape.backward(output, list(self.ids.values())) if self.ids else {}
        lazy = [n for n in tape.nodes[:output + 1] if is_lazy(n.value)]
        value, grads, flags = self.program.compute(tape.nodes[output].value, grads,
                                                   [da.isfinite(n.value).all() for n in lazy])
        births = Diagnostics() if diagnostics is None else diagnostics
        self._warn_births(lazy, {n.id: bool(f) for n, f in zip(lazy, flags)}, births)
        return Evaluation([np.asarray(value)], [{n: np.asarray(grads[i]) for n, i in self.ids.items()}],
                          [] if diagnostics is not None else births.warnings)

    def _warn_births(self, lazy, finite: dict[int, bool], diagnostics: Diagnostics) -> None:
        """As the numpy tape warns: at an op whose inputs are finite and whose value is not."""
        nodes = self.tape.nodes
        for node in lazy:
            if node.op is None or finite[node.id]:
                continue
            if all(finite.get(i, True) and (finite.get(i) is not None or nodes[i].finite) for i in node.inputs):
                value, args = self.program.compute(node.value, [nodes[i].value for i in node.inputs])
                diagnostics.warn(describe_nonfinite(f"`{node.label}`", np.asarray(value),
                                                   [np.asarray(a) for a in args]), node.span)

    def _products(self) -> HessianVectorProducts:
        if self.products is None:
            tape = self.tape
            recorded_from = len(tape.nodes)
            self.products = HessianVectorProducts(tape, tape.backward_graph(self.run.output, list(self.ids.values())),
                                                  recorded_from)
        return self.products

    def _hvp(self, directions: dict[str, np.ndarray]) -> list:
        by_id = self._products()({self.ids[n]: v for n, v in directions.items()}, list(self.ids.values()))
        return [by_id[i] for i in self.ids.values()]

    def hvp(self, total: int, name: str, values, v: np.ndarray) -> dict[str, np.ndarray]:
        v = np.asarray(v, dtype=np.float64)
        products = self.kept(tangent_key("hvp", name, tangents={name: v}), values,
                             lambda: self.program.compute(*self._hvp({name: v})))
        return {n: np.asarray(p) for n, p in zip(self.ids, products)}

    def jvp(self, total: int, values, tangents: dict[str, np.ndarray]) -> np.ndarray:
        def along():
            tape = self.tape
            seeds = {self.ids[n]: t for n, t in tangents.items()}
            k = len(next(iter(tangents.values())))
            sweep = ForwardSweep(tape, self.run.output, list(seeds))
            return np.asarray(self.program.compute(
                sweep.push_blocks(k, lambda start, size: {i: s[start:start + size] for i, s in seeds.items()}))[0])
        return self.kept(tangent_key("jvp", tangents=tangents), values, along)

    def gradient_jvp(self, total: int, name: str, values, tangents: dict[str, np.ndarray]) -> np.ndarray:
        def along():
            k = len(next(iter(tangents.values())))
            products = self.program.compute([self._hvp({n: t[d] for n, t in tangents.items()}) for d in range(k)])[0]
            return [np.stack([np.asarray(p[j]) for p in products]) for j in range(len(self.ids))]
        return self.kept(tangent_key("gradient_jvp", tangents=tangents), values, along)[list(self.ids).index(name)]
