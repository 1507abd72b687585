"""The public Python API: parse a program once, then run it with new data.

    >>> import spiread_cli
    >>> prog = spiread_cli.load("examples/least_squares.ad")
    >>> prog.grad(w=[0.5, 1.0])["w"]
    array([-0.1  , -0.445])

docs/python.md is the tutorial (its examples run as tests). `Program` is
the library of both front ends: `Program.run` is where a program runs (on
either backend), and `run_eval`, `run_grad`, … (one per command) run the
program and a task on that run, showing what the run prints and warns as
their `Caller` does: the command line's session (cli_session.py) or the
Python API's (`python_calls.InPython`). The Python calls (`Program.eval`,
`grad`, …; python_calls.py) check their arguments as Python and return the
caller's own floats and float64 arrays; errors are `SpireadError`s with the
command line's located text; warnings are `SpireadWarning`s through
Python's `warnings`.
"""

from __future__ import annotations

from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, Callable, ContextManager, Generic, Literal, Mapping, Protocol

import numpy as np

from . import syntax_tree
from . import kept_runs
from .interpreter import Interpreter
from .dask_common import require_dask
from .diagnostics import Source, SpireadError
from .python_args import ArrayLike, P, T, checked_backend, front_door, run_overrides
from .python_calls import PythonCalls
from .results import CheckResult, Gradients, Graph, Jacobian, SpireadWarning, Training, TrainingStopped
from .set_options import parse_overrides
from .sources import base_dir_of, parse, read_source
from .run import Run

__all__ = ["load", "compile", "Program", "Gradients", "Jacobian", "CheckResult", "Training", "Graph",
           "SpireadError", "SpireadWarning", "TrainingStopped"]


@front_door
def load(path: str | PathLike[str], backend: Literal["numpy", "dask"] = "numpy", *, scheduler: str | None = None,
         chunk_rows: int | None = None, persist: bool = False) -> "Program":
    """Read and parse a `.ad` file. Paths inside it (`load("x.csv")`) resolve
    from the file's folder, as on the command line. `backend="dask"` runs it
    on row chunks of its data, as `--backend dask` does (docs/scaling.md):
    `scheduler` a Dask scheduler's address (default: Dask's threads in this
    process), `chunk_rows` the rows per chunk, `persist` to keep each
    chunk's recording between training steps."""
    return Program.open(str(path), _backend(backend, scheduler, chunk_rows, persist))


@front_door
def compile(text: str, name: str = "<string>", base_dir: str | PathLike[str] | None = None,
            backend: Literal["numpy", "dask"] = "numpy", *, scheduler: str | None = None,
            chunk_rows: int | None = None, persist: bool = False) -> "Program":
    """Parse program text (a notebook cell, a string); `name` is what messages
    call it. Paths inside it resolve from `base_dir` (default: the working
    directory). The backend and its options are `load`'s."""
    return Program.parse(Source(name, text), Path(base_dir) if base_dir is not None else Path.cwd(),
                         _backend(backend, scheduler, chunk_rows, persist))


def _names(names: list[str] | None) -> tuple[str, ...]:
    return tuple(names or ())


def _backend(backend: object, scheduler: object, chunk_rows: object, persist: object):
    """dask_backend.Options for `backend="dask"`, else None."""
    checked = checked_backend(backend, scheduler, chunk_rows, persist)
    if checked is None:
        return None
    from .dask_backend import Options
    return Options(*checked)


class Caller(Protocol):
    """Who called a task, and how it shows what a run says as it goes: the
    command line (cli_session.Session) or the Python API (python_calls.InPython)."""
    strict: bool  # a warning is an error (--strict; the warning filters' "error")
    keeps_runs: bool  # its calls come again (the Python API): runs are kept and replayed (kept_runs.py)

    def ran(self, run: Run) -> None:
        """The run exists: show its `println` lines (errors from now on point into its source)."""

    def warn(self, run: Run) -> None:
        """Show the run's warnings not shown yet (where warnings are errors, raise the first)."""


@dataclass
class Outcome(Generic[T]):
    """What a task (`Program.run_eval`, `run_grad`, …) gives both front ends:
    its result, and the run it worked on (the presenters read names from it)."""
    run: Run
    result: T


class Program(PythonCalls):
    """A parsed program: the library's one front door. Each call runs it
    with the given bindings, which replace the program's own values of those
    names (like `--set`): afresh, or, for a Python call like an earlier one
    (the same task and options, bindings of the same shapes), by replaying
    that call's recorded run with the new values (kept_runs.py).

    Bindings are keyword arguments, or a mapping passed first for names that
    are not Python identifiers or clash with a parameter: `prog.eval({"lr": 0.5})`.

    Below the Python calls, `run` is where a program runs, and `run_eval`,
    `run_grad`, … (one per command) run a task on it, for both front ends.
    """

    def __init__(self, source: Source, module: syntax_tree.Module, base_dir: Path, backend=None):
        self.source = source
        self._module = module
        self._base_dir = base_dir
        self._backend = backend  # dask_backend.Options for backend="dask" (`load`, `--backend dask`), else None
        self._running = None     # the dask_backend program of the last call (its client, its chunks' templates)
        self._kept = kept_runs.KeptRuns()  # recorded runs of earlier Python calls, by signature
        self.names: list[str] = module.bound_names()

    @classmethod
    def open(cls, path: str, backend=None) -> "Program":
        """The program in a file (`-`: standard input); paths in it resolve
        from its folder. `backend`: dask_backend.Options, or None for numpy."""
        source = read_source(path)
        return cls.parse(source, base_dir_of(source), backend)

    @classmethod
    def parse(cls, source: Source, base_dir: Path | None = None, backend=None) -> "Program":
        """A program's text parsed; paths in it resolve from `base_dir` (default: its file's folder)."""
        if backend is not None:
            require_dask()
        return cls(source, parse(source), base_dir or base_dir_of(source), backend)

    def run(self, overrides: Mapping[str, ArrayLike | PathLike[str]] | None = None, of: str | None = None,
            evaluate: bool = True, wrt: list[str] | None = None, differentiate: bool = True) -> Run:
        """Run the program, `overrides` replacing the values of the names they
        bind, given as a Python call's bindings are (numbers, nested lists,
        arrays: each checked and copied, python_args.run_overrides). With
        `evaluate=False` an op is computed only when its value is first read
        (`Interpreter.run`). An error carries the source it points into, and
        what the program's `println` wrote before it (`.printed`). On
        `backend="dask"`, the driver's run for the names differentiated by,
        `wrt` (None: the default; none unless `differentiate`), its totals over
        row chunks ops (row_totals.py); an override that is a path is row data."""
        overrides = run_overrides(overrides, of, self.names, row_data=self._backend is not None)
        return self._run(overrides, of, evaluate, wrt, differentiate)

    def _run(self, overrides: dict[str, np.ndarray | Path] | None, of: str | None = None, evaluate: bool = True,
             wrt: list[str] | None = None, differentiate: bool = True) -> Run:
        """`run`, its overrides checked: float64 arrays of the run's own, or paths (row data)."""
        if self._backend is not None:
            return self._on_dask(overrides or {}, of, wrt, differentiate)
        interpreter = Interpreter(self.source, overrides, self._base_dir)
        try:
            return interpreter.run(self._module, of, evaluate)
        except SpireadError as err:
            err.printed = list(interpreter.printed)
            raise err.located_in(self.source)

    def parse_sets(self, options: list[str], flag: str = "--set") -> dict[str, np.ndarray | Path]:
        """`--set NAME=VALUE` options (or, as `flag` says, `--hvp`'s) as
        overrides; a name the program does not bind is refused. On
        `backend="dask"`, `--set NAME=FILE` stays a path: row data."""
        return parse_overrides(list(options), self._base_dir, flag, self.names,
                               row_files=self._backend is not None and flag == "--set")

    def loaded_files(self) -> list[Path]:
        """The files the program's `load("…")` calls name, resolved as it resolves them."""
        from .row_data import loaded_paths  # only for commands writing files: start-up time
        return [path for path, _ in loaded_paths(self._module, self._base_dir)]

    @property
    def name(self) -> str:
        return self.source.name

    def __repr__(self) -> str:
        on = "" if self._backend is None else " (backend dask)"
        return f"<spiread Program {self.name!r}{on}: {', '.join(self.names) or 'no bindings'}>"

    def close(self) -> None:
        """Let go of the runs kept for calls to come (kept_runs.py) and, on
        `backend="dask"`, of the last call's Dask client and the chunks'
        templates (the next call makes them again); also `with load(...) as prog:`."""
        self._kept.clear()
        running, self._running = self._running, None
        if running is not None:
            running.close()

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_dask(self, overrides: dict[str, np.ndarray | Path], of: str | None, wrt: list[str] | None,
                 differentiate: bool) -> Run:
        runner = self.dask_runner(overrides, of)
        try:
            return runner.run_for(wrt, differentiate)
        except SpireadError as err:
            raise err.located_in(self.source)

    def dask_runner(self, overrides: dict[str, np.ndarray | Path], of: str | None = None):
        """On `backend="dask"`: the program bound to `overrides` (a path is
        row data) as a dask_backend.RowChunkRunner, which `run` asks for the
        driver's run; it replaces the last call's (`close`)."""
        from .dask_backend import RowChunkRunner
        self.close()  # the last call's
        constants = {name: v for name, v in overrides.items() if not isinstance(v, Path)}
        files = {name: v for name, v in overrides.items() if isinstance(v, Path)}
        try:
            self._running = RowChunkRunner.of_module(self.source, self._module, self._base_dir, self._backend,
                                                     constants, files, of)
        except SpireadError as err:
            raise err.located_in(self.source)
        return self._running

    # ------------------------------------------------------------ the tasks, for both front ends

    def run_eval(self, caller: Caller, overrides: dict, of: str | None = None) -> Outcome[dict[str, np.ndarray]]:
        """Every bound value, then the output (when it is not a bound name). On
        dask, the values after the totals are in: those that are not one row per data row."""
        with self._ran_kept(caller, overrides, of, ("eval",), differentiate=False) as run:
            values = {name: run.tape.nodes[i].value for name, i in run.bindings.items()}
            values.setdefault(run.output_name, run.value)
            caller.warn(run)
        return Outcome(run, values)

    def run_grad(self, caller: Caller, overrides: dict, *, wrt: list[str] | None = None, of: str | None = None,
                 mode: str = "reverse", explain: bool = False) -> Outcome[tuple[Any, Any]]:
        """The gradients (gradients.RunGradients) and, with `explain`, the
        sweep that made them (explain.Explanation), else None."""
        import spiread_cli.gradients as found  # absolute: a relative import costs 0.5-1.4 µs a call, this 0.2
        with self._ran_kept(caller, overrides, of, ("grad", _names(wrt), mode, explain), wrt=wrt) as run:
            if explain:
                from .explain import explain as explained
                result = self._located(explained, run, wrt, mode)
            else:
                result = self._located(found.gradients, run, wrt, mode), None
            caller.warn(run)
        return Outcome(run, result)

    def run_dot(self, caller: Caller, overrides: dict, *, wrt: list[str] | None = None,
                of: str | None = None) -> Outcome[str]:
        """The DOT text: the `wrt` values (by default `grad`'s, when the output
        is a scalar computed from inputs) highlighted with their gradients."""
        from .dot import to_dot
        from .gradients import dot_gradients
        with self._ran_kept(caller, overrides, of, ("dot", _names(wrt)), wrt=wrt) as run:
            dot = to_dot(run, self._located(dot_gradients, run, wrt))
            caller.warn(run)
        return Outcome(run, dot)

    def run_hessian(self, caller: Caller, overrides: dict, *, wrt: list[str] | None = None, of: str | None = None,
                    hvp: dict[str, np.ndarray] | None = None, sparse: bool = False, pattern: bool = False) -> Outcome:
        """Exact second derivatives of the scalar output (second.py): every
        block, or the products with the `hvp` directions by name, or with
        `sparse` the sparse Hessian, with `pattern` its sparsity pattern."""
        import spiread_cli.second as second  # absolute, as run_grad's
        # on dask, the driver differentiates by the directions' names too
        named = [*wrt, *[n for n in hvp if n not in wrt]] if wrt and hvp else wrt or None
        task = ("hessian", _names(wrt), None if hvp is None else tuple(hvp), sparse, pattern)
        with self._ran_kept(caller, overrides, of, task, wrt=named) as run:
            if hvp is not None:
                result = self._located(second.hvp, run, hvp, wrt)
            else:
                task = second.hessian_pattern if pattern else second.sparse_hessian if sparse else second.hessian
                result = self._located(task, run, wrt)
            caller.warn(run)
        return Outcome(run, result)

    def run_jacobian(self, caller: Caller, overrides: dict, *, wrt: list[str] | None = None, of: str | None = None,
                     mode: str | None = None, sparse: bool = False, pattern: bool = False) -> Outcome:
        """The output's Jacobian (jacobian.py): its blocks, or with `sparse`
        the sparse Jacobian, with `pattern` its sparsity pattern; `mode` picks
        the sweeps (None: the fewer)."""
        import spiread_cli.jacobian as jacobians  # absolute, as run_grad's
        with self._ran_kept(caller, overrides, of, ("jacobian", _names(wrt), mode, sparse, pattern), wrt=wrt) as run:
            task = jacobians.jacobian_pattern if pattern else jacobians.sparse_jacobian if sparse else jacobians.jacobian
            result = self._located(task, run, wrt, mode)
            caller.warn(run)
        return Outcome(run, result)

    def run_check(self, caller: Caller, overrides: dict, *, wrt: list[str] | None = None, of: str | None = None,
                  eps: float | None = None, tol: float | None = None, order: int = 1,
                  sparse: bool = False) -> Outcome:
        """The derivatives checked against central differences (check.py):
        the report; `report.failures(run)` are the located errors."""
        from .check import check
        run = self._ran(caller, overrides, of, wrt=wrt)  # on dask, each difference is one pass over the chunks
        report = self._located(check, run, wrt, eps, tol, order, sparse)
        caller.warn(run)
        return Outcome(run, report)

    def run_train(self, caller: Caller, overrides: dict, *, wrt: list[str], steps: int, optimizer,
                  of: str | None = None, progress=None, interrupts=lambda: nullcontext(lambda: False)):
        """Train the `wrt` values (train.TrainResult; an error that stopped it
        is its `.error`, not raised): `progress` (a context manager called
        with each step and its loss) is entered once the first forward pass
        has run and its warnings are shown; `interrupts()`, entered once the
        program has run, gives what says to stop after the step in progress."""
        from . import train as training
        run = self._ran(caller, overrides, of, evaluate=False, wrt=wrt)  # computed as train's fused tape
        with interrupts() as stop_requested, ExitStack() as shown:
            def ready():
                caller.warn(run)
                if progress is not None:
                    shown.enter_context(progress)
            result = self._located(training.train, run, wrt, steps, optimizer, strict=caller.strict,
                                   on_step=progress, stop_requested=stop_requested, spend_run=True,  # this call's run
                                   on_ready=ready)
        caller.warn(run)  # any the steps added to the run's, as every task shows its warnings last
        if result.error is not None:
            result.error.located_in(self.source)
        return Outcome(run, result)

    def run_export(self, caller: Caller, overrides: dict, *, to: str, out: Path, wrt: list[str] | None = None,
                   of: str | None = None, hvp: bool = False) -> Outcome[list[Path]]:
        """The value, its gradient (and, with `hvp`, H·v) written to `out` as
        Python (`to="python"`) or ONNX; the paths written."""
        from .export import graphs
        if to == "python":
            from .export_python import export_python as write
        else:
            from .export_onnx import export_onnx as write
        run = self._ran(caller, overrides, of, evaluate=False, wrt=wrt)
        exported = self._located(graphs, run, wrt, hvp)
        caller.warn(run)  # before writing: under --strict a warning is an error, and an error writes nothing
        return Outcome(run, self._located(write, exported, out))

    def _ran(self, caller: Caller, overrides: dict, of: str | None, **how) -> Run:
        run = self._run(overrides, of, **how)
        caller.ran(run)
        return run

    def _ran_kept(self, caller: Caller, overrides: dict, of: str | None, task: tuple,
                  **how) -> ContextManager[Run]:
        """`_ran` for a task (and its options, `task`) that may work on a kept
        run: for a caller that keeps runs, on numpy, the run of an earlier call
        of the same signature replayed with these bindings, else a fresh run,
        kept once the task is done (kept_runs.py)."""
        if self._backend is not None or not caller.keeps_runs:
            return nullcontext(self._ran(caller, overrides, of, **how))
        signature = kept_runs.signature(task, overrides, of)
        kept = self._kept.replayed(signature, overrides)
        if kept is None:
            return kept_runs.Call(self._kept, signature, overrides, None, self._ran(caller, overrides, of, **how))
        try:
            caller.ran(kept.run)
        except BaseException:
            self._kept.done(kept)
            raise
        return kept_runs.Call(self._kept, signature, overrides, kept, kept.run)

    def _located(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call into the library; an error comes out pointing into this program."""
        try:
            return call(*args, **kwargs)
        except SpireadError as err:
            raise err.located_in(self.source) from None
