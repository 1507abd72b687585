"""`check` and `grad --mode forward` on `--backend dask`: derivatives along
directions, by forward mode over row chunks, and the output at other values,
each one chunked pass.

A program that runs by row chunks (spiread_cli/chunks.py) is f = D(r, w):
totals r_k = Σ over chunks of each chunk's share, then what follows the totals
(`Driver`, on this machine). Forward mode follows the same split: each chunk
pushes the directions through its own fused tape (`directional_forward`), the
shares' tangents add up like the shares, and the driver's tape pushes them,
with the directions themselves, on to the output (one `ForwardSweep` seeded
at the totals and at w). That is forward mode end to end, independent of the
reverse sweep it is compared with. The rounding bound `check` allows for
(`output_magnitude`) splits the same way: the driver's own, plus each total's
adjoint times the chunks' bounds for that total.

A finite difference is the output at x ± h·v: `Program._evaluate` with the
value replaced, one pass over the chunks each.
"""

from __future__ import annotations

import numpy as np

from .check import NODE_OVERHEAD_ENTRIES, Subject, output_magnitude
from .chunks import Job, record_chunk
from .dask_common import Result
from .diagnostics import Diagnostics, usage_error
from .forward import ForwardSweep, directional_forward


def tangents_of_rows(job: Job, start: int, stop: int, name: str, directions: np.ndarray,
                     magnitudes: bool) -> tuple[np.ndarray, np.ndarray]:
    """One task: rows [start, stop)'s share of each total differentiated along
    `directions` in `name` (shape (reductions, k)), and the share's rounding
    bound per total (zeros unless `magnitudes`)."""
    chunk = record_chunk(job, start, stop, None, compute=True)
    k = len(directions)
    tangents, bounds = np.zeros((len(chunk.parts), k)), np.zeros(len(chunk.parts))
    for j, part in enumerate(chunk.parts):  # one per total the steps compute (job.moving)
        weight = 1.0 if part.kind == "sum" else (stop - start) / job.plan.rows
        tangents[j] = weight * directional_forward(part.tape, part.output, part.wrt[job.wrt.index(name)], directions)
        if magnitudes:
            bounds[j] = weight * output_magnitude(part.tape, part.output)
    return tangents, bounds


def added(*parts: tuple) -> tuple:
    """Chunks' tuples of arrays, summed entry by entry (their tree-sum)."""
    return tuple(sum(p[i] for p in parts) for i in range(len(parts[0])))


class ChunkedDerivatives:
    """A chunked program's output and its derivatives with respect to `names`
    (bound to constants), at the run's values."""

    def __init__(self, program, names: list[str] | None, reverse: bool = True):
        run = program.run
        self.program = program
        self.ids = run.wrt_ids(names)
        program.job.plan.refuse_row_wrt(self.ids, run)
        for name, i in self.ids.items():
            if run.tape.nodes[i].op is not None:
                raise usage_error(f"`--wrt {name}`: on `--backend dask`, derivatives along directions are taken "
                                  f"by values bound to constants, and `{name}` is computed",
                                  ["name the constants it is computed from, or use --backend numpy"])
        self.base = {name: run.tape.nodes[i].value for name, i in self.ids.items()}
        # the values given, not None: the driver keeps the values of the last evaluation otherwise
        result = program._evaluate(list(self.ids), self.ids, self.base, run.diagnostics, gradients=reverse)
        self.value, self.gradients = float(result.value), result.gradients
        self.driver = program.driver
        self.driver_values = [n.value for n in self.driver.tape.nodes]

    def restore(self) -> None:
        """The driver's values as at the run's values (an evaluation elsewhere moves them)."""
        for node, value in zip(self.driver.tape.nodes, self.driver_values):
            node.set_value(value)

    def directional(self, name: str, directions: np.ndarray, magnitude: bool = False):
        """∂f along each of `directions` (shape (k,) + the value's shape) in
        `name`, by forward mode; with `magnitude`, also the rounding bound."""
        driver = self.driver
        if name in self.program.job.wrt:
            shares, bounds = self.program.map_rows(tangents_of_rows, added, name, directions, magnitude)
        else:  # a value only what follows the totals reads
            shares, bounds = np.zeros((len(driver.reductions), len(directions))), np.zeros(len(driver.reductions))
        self.restore()
        tape, output = driver.tape, driver.output
        seeds = {r: shares[j] for j, r in enumerate(driver.reductions)}
        seeds[self.ids[name]] = directions
        sweep = ForwardSweep(tape, output, list(seeds))
        along = sweep.push_blocks(len(directions), lambda start, k: {i: s[start:start + k] for i, s in seeds.items()})
        if not magnitude:
            return along
        adjoints = tape.backward(output, driver.reductions)
        chunks = sum(abs(float(adjoints[r])) * bounds[j] for j, r in enumerate(driver.reductions))
        return along, output_magnitude(tape, output) + chunks

    def value_at(self, name: str, value: np.ndarray) -> float:
        """The output with `name` set to `value`: one pass over the chunks.
        Every value is given, so nothing kept from an earlier evaluation
        (--persist's chunks, the driver) stays moved."""
        values = {**self.base, name: value}
        result = self.program._evaluate(list(self.ids), self.ids, values, Diagnostics(), gradients=False)
        return float(result.value)


class ChunkedProbe:
    """check.Probe over row chunks: each evaluation one pass over the data."""

    def __init__(self, derivatives: ChunkedDerivatives, name: str):
        self.derivatives, self.name = derivatives, name
        program = derivatives.program
        self.x = program.run.node(name).value
        # array entries one pass computes (check's budget): every row's recorded values, and each node's overhead
        plan = program.job.plan
        self.work = plan.rows * plan.bytes_per_row // 8 + NODE_OVERHEAD_ENTRIES * len(program.run.tape.nodes)

    def __call__(self, value: np.ndarray) -> float:
        return self.derivatives.value_at(self.name, value)

    def forward(self, v: np.ndarray) -> np.ndarray:
        return self.derivatives.directional(self.name, v)

    def restore(self) -> None:
        self.derivatives.restore()


def check_subject(program, run, names: list[str] | None) -> Subject:
    """check.Subject for a program run by row chunks (`run` is its
    recording on the first rows: names, spans). Kink sites are not
    located (each chunk has its own tape): a kink is still found by the
    one-sided slopes, and said so."""
    d = ChunkedDerivatives(program, names)
    magnitude = 0.0
    for name in d.ids:  # the bound is the same whichever value a direction moves: any one gives it
        _, magnitude = d.directional(name, np.zeros((1,) + d.program.run.node(name).value.shape), magnitude=True)
        break
    return Subject(d.ids, d.value, d.gradients, magnitude, lambda name: ChunkedProbe(d, name), lambda names: [])


def check(program, run, wrt: list[str] | None, eps: float | None, tol: float | None, **options):
    """`check --backend dask`: over row chunks, each finite difference one
    pass; op by op on Dask arrays (spiread_cli/dask_lazy.py), each one
    compute; a program too small to chunk is checked whole, as on numpy.
    `options` are check_gradients' own (max_entries, directions, seed)."""
    from .check import check_gradients
    if getattr(program, "lazy", False):
        return check_gradients(run, wrt, eps, tol, subject=program.check_subject, **options)
    if not program.chunked:
        return check_gradients(run, wrt, eps, tol, **options)
    return check_gradients(run, wrt, eps, tol, subject=lambda run, names: check_subject(program, run, names),
                           **options)


def forward_gradients(program, names: list[str] | None):
    """`grad --mode forward` over row chunks: each value's gradient as its
    derivatives along the unit vectors, pushed forward (one pass per value)."""
    from .gradients import gradients as run_gradients
    if not program.chunked:  # too few rows to chunk, or op by op on Dask arrays: forward mode on the tape
        gradients = run_gradients(program.run, names, "forward")
        return Result(gradients.value, gradients.gradients, program.run.diagnostics)
    d = ChunkedDerivatives(program, names, reverse=False)
    grads = {}
    for name in d.ids:
        shape = program.run.node(name).value.shape
        size = int(np.prod(shape))
        grads[name] = d.directional(name, np.eye(size).reshape((size,) + shape)).reshape(shape)
    return Result(np.array(d.value), grads, program.run.diagnostics)
