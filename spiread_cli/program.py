"""The public Python API: parse a program once, then run it with new data.

    >>> import spiread_cli
    >>> prog = spiread_cli.load("examples/least_squares.ad")
    >>> prog.grad(w=[0.5, 1.0])["w"]
    array([-0.1  , -0.445])

docs/python.md is the tutorial (its examples run as tests). `Program.run`
is where a program runs, for the command line (cli.py) too; each call is a
thin layer over the library's tasks on that run (gradients.py, second.py,
check.py, train.py, dot.py): bindings become `--set` overrides, results come back as
fresh float64 arrays or floats, errors are `SpireadError`s with the same
located text the command line prints, and warnings go through Python's
`warnings` module as `SpireadWarning`s.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack
from os import PathLike
from pathlib import Path
from typing import Any, Callable, Literal, Mapping

import numpy as np

from . import syntax_tree
from .interpreter import Interpreter
from .diagnostics import Source, SpireadError, did_you_mean, option, render
from .python_args import (ArrayLike, P, T, Value, as_binding, checked_name, checked_number, front_door, interactive,
                          plain_text, print_lines, result_value, sparse_arguments, stop_on_interrupt_here, type_error,
                          with_sweeps, wrt_names)
from .results import (CheckResult, Gradients, Graph, Hessian, Jacobian, SpireadWarning, Training, TrainingStopped,
                      warnings_raise)
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
    options = _backend(backend, scheduler, chunk_rows, persist)
    program = Program.open(str(path))
    program._backend = options
    return program


@front_door
def compile(text: str, name: str = "<string>", base_dir: str | PathLike[str] | None = None,
            backend: Literal["numpy", "dask"] = "numpy", *, scheduler: str | None = None,
            chunk_rows: int | None = None, persist: bool = False) -> "Program":
    """Parse program text (a notebook cell, a string); `name` is what messages
    call it. Paths inside it resolve from `base_dir` (default: the working
    directory). The backend and its options are `load`'s."""
    options = _backend(backend, scheduler, chunk_rows, persist)
    program = Program.parse(Source(name, text), Path(base_dir) if base_dir is not None else Path.cwd())
    program._backend = options
    return program


def _backend(backend: object, scheduler: object, chunk_rows: object, persist: object):
    """dask_backend.Options for `backend="dask"`, else None; its options
    without it are an error, as on the command line."""
    import numbers
    if backend not in ("numpy", "dask"):
        raise SpireadError(f"{option('backend', backend)}: the backend is \"numpy\" or \"dask\"", exit_code=2)
    if scheduler is not None and not isinstance(scheduler, str):
        raise type_error("scheduler", scheduler, "a scheduler's address is a string, e.g. \"tcp://host:8786\"")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral)):
        raise type_error("chunk_rows", chunk_rows, "the rows per chunk are a whole number")
    if chunk_rows is not None and chunk_rows < 1:
        raise SpireadError(f"{option('chunk_rows', chunk_rows)}: a chunk needs at least one row", exit_code=2)
    if backend == "numpy":
        given = [name for name, v in (("scheduler", scheduler), ("chunk_rows", chunk_rows), ("persist", persist)) if v]
        if given:
            raise SpireadError(f"`{given[0]}=`: an option of {option('backend', 'dask')}", exit_code=2,
                               notes=[f"add {option('backend', 'dask')}"])
        return None
    from .dask_backend import Options
    from .dask_common import require_dask
    require_dask()
    return Options(scheduler, None if chunk_rows is None else int(chunk_rows), bool(persist))


class Program:
    """A parsed program: the library's one front door. Each call runs it
    afresh with the given bindings, which replace the program's own values
    of those names (like `--set`).

    Bindings are keyword arguments, or a mapping passed first for names that
    are not Python identifiers or clash with a parameter: `prog.eval({"lr": 0.5})`.

    Below the Python calls, `run(overrides, of, evaluate)` is where a program
    runs, for them and for the command line (cli.py): the `Run` every task
    (gradients, check, train, hessian, dot) works on.
    """

    def __init__(self, source: Source, module: syntax_tree.Module, base_dir: Path):
        self.source = source
        self._module = module
        self._base_dir = base_dir
        self._backend = None     # dask_backend.Options for backend="dask" (`load`), else None
        self._running = None     # the dask_backend program of the last call (its client, its chunks' templates)
        # The names the program binds, in order: what bindings may replace.
        self.names: list[str] = [s.name for s in module.statements if isinstance(s, syntax_tree.Binding)]

    @classmethod
    def open(cls, path: str) -> "Program":
        """The program in a file (`-`: standard input); paths in it resolve from its folder."""
        source = read_source(path)
        return cls.parse(source, base_dir_of(source))

    @classmethod
    def parse(cls, source: Source, base_dir: Path | None = None) -> "Program":
        """A program's text parsed; paths in it resolve from `base_dir` (default: its file's folder)."""
        return cls(source, parse(source), base_dir or base_dir_of(source))

    def run(self, overrides: dict[str, np.ndarray] | None = None, of: str | None = None,
            evaluate: bool = True, wrt: list[str] | None = None, differentiate: bool = True) -> Run:
        """Run the program, `overrides` replacing the values of the names they
        bind. With `evaluate=False` an op is computed only when its value is
        first read (`Interpreter.run`). An error carries the source it points
        into, and what the program's `println` wrote before it (`.printed`).
        On `backend="dask"`, the driver's run for the names differentiated
        by, `wrt` (None: the default; none unless `differentiate`), whose
        totals over the row chunks are ops (spiread_cli/row_totals.py)."""
        if self._backend is not None:
            return self._on_dask(overrides or {}, of, wrt, differentiate)
        interpreter = Interpreter(self.source, overrides, self._base_dir)
        try:
            return interpreter.run(self._module, of, evaluate)
        except SpireadError as err:
            err.printed = list(interpreter.printed)
            raise err.located_in(self.source)

    def parse_sets(self, options: list[str], flag: str = "--set") -> dict[str, np.ndarray]:
        """`--set NAME=VALUE` options (or, as `flag` says, `--hvp`'s) as
        overrides; a name the program does not bind is refused."""
        return parse_overrides(list(options), self._base_dir, flag, self.names)

    @property
    def name(self) -> str:
        return self.source.name

    def __repr__(self) -> str:
        on = "" if self._backend is None else " (backend dask)"
        return f"<spiread Program {self.name!r}{on}: {', '.join(self.names) or 'no bindings'}>"

    def close(self) -> None:
        """On `backend="dask"`, let go of the last call's Dask client and the
        chunks' templates it kept (the next call makes them again);
        `with load(...) as prog:` closes on leaving."""
        running, self._running = self._running, None
        if running is not None:
            running.close()

    def __enter__(self) -> "Program":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_dask(self, overrides: dict[str, np.ndarray], of: str | None, wrt: list[str] | None,
                 differentiate: bool) -> Run:
        from .dask_backend import RowChunkRunner
        self.close()  # the last call's
        try:
            self._running = RowChunkRunner.of_module(self.source, self._module, self._base_dir, self._backend, overrides, {},
                                              of)
            return self._running.run_for(wrt, differentiate)
        except SpireadError as err:
            raise err.located_in(self.source)

    # ------------------------------------------------------------ the calls

    @front_door
    def eval(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, of: str | None = None,
             **more: ArrayLike) -> dict[str, Value]:
        """Every bound value, then the output (when it is not a bound name),
        name → float or array.

        `of` picks the output among the bound names (default: the last
        binding, or `.backward(...)`'s receiver)."""
        run = self._run_bound(bindings, more, of, differentiate=False)
        values = {name: result_value(run.tape.nodes[i].value) for name, i in run.bindings.items()}
        values.setdefault(run.output_name, result_value(run.value))
        self._warn(run)
        return values

    @front_door
    def grad(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
             of: str | None = None, mode: Literal["reverse", "forward"] = "reverse",
             **more: ArrayLike) -> "Gradients":
        """The scalar output and its gradient with respect to each `wrt` name
        (default: `.backward(...)`'s names, else every input the output depends on)."""
        from .gradients import gradients
        if mode not in ("reverse", "forward"):
            raise SpireadError(f"{option('mode', mode)}: the mode is \"reverse\" or \"forward\"", exit_code=2)
        run = self._run_bound(bindings, more, of, wrt=wrt_names(wrt))
        result = self._located(gradients, run, wrt_names(wrt), mode)
        returned = Gradients(run.output_name, float(result.value),
                             {n: result_value(g) for n, g in result.gradients.items()})
        self._warn(run)
        return returned

    @front_door
    def hessian(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
                of: str | None = None, hvp: Mapping[str, ArrayLike] | None = None, sparse: bool = False,
                pattern: bool = False, **more: ArrayLike) -> "Hessian | Any":
        """Second derivatives of the scalar output, exact (docs/design.md):
        every block ∂²out/∂A∂B with the shape shape(A) + shape(B), as
        `torch.autograd.functional.hessian` gives it; or, with `hvp={A: V}`,
        the Hessian-vector products Σ_B ∂²out/∂A∂B · V_B without forming the
        Hessian (names not given are zero), as `spiread hessian --hvp` does.

        With `sparse=True`, the whole Hessian as a `scipy.sparse.csr_array`
        over the entries of the `wrt` values (in order, each flat), found
        from its exact sparsity pattern with one Hessian-vector product per
        colour (`.sweeps` on the result says how many); with `pattern=True`,
        that pattern alone, as booleans (docs/sparsity.md). Both need scipy."""
        from . import second
        if sparse or pattern:
            sparse_arguments(sparse, pattern, hvp=hvp is not None)
        named = wrt_names(wrt)
        directions = [n for n in hvp if isinstance(n, str)] if isinstance(hvp, Mapping) and named else []
        run = self._run_bound(bindings, more, of, wrt=named + [n for n in directions if n not in named] if named else None)
        if sparse or pattern:
            found = self._located(second.hessian_pattern if pattern else second.sparse_hessian, run, wrt_names(wrt))
            self._warn(run)
            return with_sweeps(found.pattern if pattern else found.matrix, found.sweeps)
        if hvp is None:
            result = self._located(second.hessian, run, wrt_names(wrt))
            blocks = {a: {b: result_value(h) for b, h in row.items()} for a, row in result.blocks.items()}
            products = None
        else:
            if not isinstance(hvp, Mapping):
                raise type_error("hvp", hvp, "the directions are a mapping of names to values, e.g. {\"w\": [1, 0]}")
            vectors = {checked_name("hvp", hvp, name): self._binding(name, v, option("hvp", name))
                       for name, v in hvp.items()}
            result = self._located(second.hvp, run, vectors, wrt_names(wrt))
            blocks, products = None, {a: result_value(p) for a, p in result.products.items()}
        self._warn(run)
        return Hessian(run.output_name, float(result.value), blocks, products)

    @front_door
    def jacobian(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
                 of: str | None = None, mode: Literal["forward", "reverse"] | None = None, sparse: bool = False,
                 pattern: bool = False, **more: ArrayLike) -> "Jacobian | Any":
        """The output (a scalar, vector or matrix) and its Jacobian with
        respect to each `wrt` name (default: `grad`'s): a block of shape
        shape(output) + shape(name), as `torch.autograd.functional.jacobian`
        gives it. `mode` picks the sweep; by default, the one with fewer
        sweeps for these sizes (forward when the `wrt` values have fewer
        entries than the output). `j["W"]` is `j.blocks["W"]`.

        With `sparse=True`, the whole Jacobian as a `scipy.sparse.csr_array`
        (the output's entries × the entries of the `wrt` values, in order,
        each flat), found from its exact sparsity pattern with one sweep per
        colour of its columns (forward) or rows (reverse), whichever are
        fewer or as `mode` says (`.sweeps` on the result says how many);
        with `pattern=True`, that pattern alone, as booleans
        (docs/sparsity.md). Both need scipy."""
        from . import jacobian as jacobians
        if mode is not None and mode not in ("reverse", "forward"):
            raise SpireadError(f"{option('mode', mode)}: the mode is \"forward\" or \"reverse\"", exit_code=2)
        if sparse or pattern:
            sparse_arguments(sparse, pattern)
        run = self._run_bound(bindings, more, of)
        if sparse or pattern:
            found = self._located(jacobians.jacobian_pattern if pattern else jacobians.sparse_jacobian, run,
                                  wrt_names(wrt), mode)
            self._warn(run)
            return with_sweeps(found.pattern if pattern else found.matrix, found.sweeps)
        result = self._located(jacobians.jacobian, run, wrt_names(wrt), mode)
        found = Jacobian(run.output_name, result_value(result.value), result.mode,
                         {n: result_value(block) for n, block in result.blocks.items()})
        self._warn(run)
        return found

    @front_door
    def check(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
              of: str | None = None, eps: float | None = None, tol: float | None = None, order: int = 1,
              sparse: bool = False, **more: ArrayLike) -> "CheckResult":
        """Compare reverse-mode (and forward-mode) gradients with central finite
        differences, as `spiread check` does (docs/check.md); of an output
        that is not a scalar, its Jacobian; with `order=2`, second
        derivatives. With `sparse=True`, also what `sparse=True` computes
        (the Jacobian, or with `order=2` the Hessian) against the dense
        result, and the dense result's nonzeros against the exact pattern
        (needs scipy). A failed check is not an exception: see `.ok` and
        `.failures`."""
        from .check import check
        from .output_results import check_table
        checked_number("eps", eps)
        checked_number("tol", tol)
        if isinstance(order, bool) or not isinstance(order, int):
            raise type_error("order", order, "the order is 1 or 2")
        if order not in (1, 2):
            raise SpireadError(f"order={order}: the order is 1 (first derivatives) or 2 (second derivatives)",
                               exit_code=2)
        if sparse:
            sparse_arguments(sparse, False)
        run = self._run_bound(bindings, more, of, wrt=wrt_names(wrt))
        report = self._located(check, run, wrt_names(wrt), eps, tol, order, sparse)
        result = CheckResult(report, plain_text(check_table(report)),
                             [render(failure, run.source) for failure in report.failures(run)])
        self._warn(run)
        return result

    @front_door
    def train(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str,
              steps: int = 100, lr: float | None = None, optimizer: Literal["sgd", "adam", "newton"] = "sgd",
              momentum: float = 0.0, of: str | None = None, progress: bool | None = None,
              sparse: bool | None = None, **more: ArrayLike) -> "Training":
        """Repeat forward, backward and an optimizer step on the `wrt` values
        (each bound to a constant), from one run of the program.

        `lr` defaults to the optimizer's (sgd 0.01, adam 0.001, newton 1). `progress`
        shows a bar (in a notebook, or on a terminal); by default it is on
        when the session is interactive. Interrupting (Ctrl-C, the notebook's
        stop button, SIGTERM) once stops after the current step and returns
        what was trained so far (`.status == "interrupted"`). A loss or
        gradient that stops being finite raises `TrainingStopped` (a
        SpireadError) saying where it was born; its `.training` holds the
        losses so far and the values kept. When the warning filters make a
        SpireadWarning an error, so does a warning in any step (`--strict`).

        `sparse` is newton's: True solves each step with the sparse Hessian
        (from its exact pattern, one Hessian-vector product per colour;
        needs scipy), False with conjugate gradients on Hessian-vector
        products, None (the default) the sparse Hessian where its pattern
        is sparse (docs/sparsity.md)."""
        from . import train as training
        from .optim import OPTIMIZERS, make_optimizer
        from .output_train import StepReporter, train_summary
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise SpireadError(f"{option('optimizer', optimizer)}: the optimizer is one of "
                               + ", ".join(f'"{k}"' for k in OPTIMIZERS), exit_code=2)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise SpireadError(f"{option('steps', steps)}: the number of steps is a whole number, at least 0",
                               exit_code=2)
        checked_number("lr", lr)
        checked_number("momentum", momentum)
        if sparse is not None and not isinstance(sparse, bool):
            raise type_error("sparse", sparse, "True, False or None")
        chosen = make_optimizer(optimizer, lr, momentum, sparse)
        run = self._run_bound(bindings, more, of, evaluate=False, wrt=wrt_names(wrt))  # computed as train's fused tape
        names = self._located(training.trainable_names, run, wrt_names(wrt) or [])
        strict = warnings_raise()
        show = interactive() if progress is None else progress
        reporter = StepReporter(steps, live=True) if show else None

        def ready():  # the first forward pass has run: its warnings before the steps, as the command line does
            self._warn(run, stacklevel=6)  # past _warn, ready, training.train, train and front_door's wrapper
            if reporter is not None:
                shown.enter_context(reporter)
        with stop_on_interrupt_here() as stop_requested, ExitStack() as shown:
            result = training.train(run, names, steps, chosen, strict=strict, on_step=reporter,
                                    stop_requested=stop_requested, spend_run=True,  # the run is this call's own
                                    on_ready=ready)
        trained = Training(result.names, list(result.losses), {n: result_value(v) for n, v in result.values.items()},
                           result.status, result.seconds, train_summary(result, run, steps, chosen),
                           result.rejected, result.converged)
        if result.error is not None:
            raise TrainingStopped.of(result.error.located_in(self.source), trained)
        return trained

    @front_door
    def dot(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
            of: str | None = None, **more: ArrayLike) -> "Graph":
        """The computation graph (as `spiread dot`): the `wrt` values (by
        default `grad`'s, when the output is a scalar computed from inputs)
        are highlighted and show their gradients. Renders itself in Jupyter."""
        from .dot import to_dot
        from .gradients import dot_gradients
        run = self._run_bound(bindings, more, of, wrt=wrt_names(wrt))
        graph = Graph(to_dot(run, self._located(dot_gradients, run, wrt_names(wrt))))
        self._warn(run)
        return graph

    # ------------------------------------------------------------ plumbing

    def _run_bound(self, bindings: Mapping[str, ArrayLike] | None, more: dict[str, ArrayLike], of: str | None,
                   evaluate: bool = True, wrt: list[str] | None = None, differentiate: bool = True) -> Run:
        if bindings is not None and not isinstance(bindings, Mapping):
            raise type_error("bindings", bindings, "the bindings passed first are a mapping of names to values, "
                                                    "e.g. {\"w\": [1, 2]}")
        given = {**(bindings or {}), **more}
        overrides = {checked_name("bindings", given, name): self._binding(name, value) for name, value in given.items()}
        if checked_name("of", of, of) is not None and of not in self.names:
            raise SpireadError(f"{option('of', of)}: the program binds no `{of}`", notes=did_you_mean(of, self.names),
                               exit_code=2)
        try:
            run = self.run(overrides, of, evaluate, wrt, differentiate)
        except SpireadError as err:
            print_lines(err.printed)
            raise
        print_lines(run.printed)
        return run

    def _binding(self, name: str, value: ArrayLike, what: str | None = None) -> np.ndarray:
        """A binding (or, `what` saying which, another value given for a name,
        an HVP's direction) as the float64 array of rank ≤ 2 the program gets:
        always a copy, so nothing the caller holds is shared with the run."""
        what = what or option("set", name)
        if name not in self.names:
            raise SpireadError(f"{what}: the program binds no `{name}`", notes=did_you_mean(name, self.names),
                               exit_code=2)
        return as_binding(value, what)

    def _located(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call into the library; an error comes out pointing into this program."""
        try:
            return call(*args, **kwargs)
        except SpireadError as err:
            raise err.located_in(self.source) from None

    def _warn(self, run: Run, stacklevel: int = 4) -> None:
        # stacklevel 4: past this method, the public one and front_door's wrapper, at the user's call.
        for warning in run.diagnostics.warnings:
            warnings.warn(SpireadWarning.of(warning, self.source), stacklevel=stacklevel)
