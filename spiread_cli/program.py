"""The public Python API: parse a program once, then run it with new data.

    >>> import spiread_cli
    >>> prog = spiread_cli.load("examples/least_squares.ad")
    >>> prog.grad(w=[0.5, 1.0])["w"]
    array([-0.1  , -0.445])

docs/python.md is the tutorial (its examples run as tests). Everything here
is a thin layer over the library the command line uses (api.py, check.py,
train.py, dot.py): bindings become `--set` overrides, results come back as
fresh float64 arrays or floats, errors are `SpireadError`s with the same
located text the command line prints, and warnings go through Python's
`warnings` module as `SpireadWarning`s.
"""

from __future__ import annotations

import functools
import io
import numbers
import shutil
import subprocess
import sys
import threading
import warnings
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, Literal, Mapping, ParamSpec, TypeVar, Union

import numpy as np

from . import syntax
from .check import CheckReport
from .diagnostics import FRONT_END, PYTHON, Diagnostic, Source, SpireadError, did_you_mean, option, render
from .tape import Run

__all__ = ["load", "compile", "Program", "Gradients", "Jacobian", "CheckResult", "Training", "Graph",
           "SpireadError", "SpireadWarning", "TrainingStopped"]

# What a binding may be given as: a number, nested lists of numbers, or
# anything numpy reads as an array of real numbers (rank 0, 1 or 2).
ArrayLike = Union[float, int, "list[Any]", "tuple[Any, ...]", np.ndarray]
P = ParamSpec("P")
T = TypeVar("T")
# What a result is: a float for a scalar, else a float64 array the caller owns.
Value = Union[float, np.ndarray]


class SpireadWarning(SpireadError, UserWarning):
    """A warning from a program run (an op that made inf or nan, a gradient
    that is zero because the output does not depend on a value).

    It is issued through `warnings.warn`, so the usual filters apply;
    `warnings.simplefilter("error", SpireadWarning)` is the command line's
    `--strict`: the warning is raised, and, being a `SpireadError` too, is
    caught wherever errors are.
    """

    @classmethod
    def of(cls, warning: Diagnostic, source: Source) -> "SpireadWarning":
        issued = cls(warning.message, warning.span, warning.notes, related=warning.related,
                     origin=warning.origin)
        issued.diagnostic = warning
        issued.located_in(source)
        return issued


class TrainingStopped(SpireadError):
    """Training stopped because a loss or gradient was not finite. The
    message says where the inf or nan was born; `.training` is what was done
    (status "stopped"): the finite losses, and the values kept, those at which
    the last finite loss was computed."""

    training: "Training"

    @classmethod
    def of(cls, error: SpireadError, training: "Training") -> "TrainingStopped":
        stopped = cls(error.diagnostic.message, exit_code=error.exit_code)
        stopped.diagnostic, stopped.source, stopped.training = error.diagnostic, error.source, training
        return stopped


def _front_door(call: Callable[P, T]) -> Callable[P, T]:
    """The Python API's boundary, around each public call: messages name
    what a Python user wrote (`wrt="w"`, not `--wrt w`: diagnostics.option),
    and an error of the user's (a SpireadError, or a TypeError from
    `_type_error`) is raised from here without spiread's own frames, so the
    traceback shows the caller's line, then the located message."""
    @functools.wraps(call)
    def public(*args: P.args, **kwargs: P.kwargs) -> T:
        asking = FRONT_END.set(PYTHON)
        try:
            return call(*args, **kwargs)
        except SpireadError as err:
            raise err.with_traceback(None) from None
        except TypeError as err:
            if not getattr(err, "spiread_argument", False):
                raise  # a bug of ours: its traceback is what a report needs
            raise err.with_traceback(None) from None
        finally:
            FRONT_END.reset(asking)
    return public


def _type_error(argument: str, value: object, expected: str, found: str | None = None) -> TypeError:
    """`of=3: a name is a string, not int`: an argument of the wrong type
    (or holding `found`), for `_front_door` to raise."""
    import reprlib
    error = TypeError(f"{argument}={reprlib.repr(value)}: {expected}, not {found or type(value).__name__}")
    error.spiread_argument = True
    return error


@_front_door
def load(path: str | PathLike[str]) -> "Program":
    """Read and parse a `.ad` file. Paths inside it (`load("x.csv")`) resolve
    from the file's folder, as on the command line."""
    from . import api
    source = api.read_source(str(path))
    return Program._parse(source, api.base_dir_of(source))


@_front_door
def compile(text: str, name: str = "<string>", base_dir: str | PathLike[str] | None = None) -> "Program":
    """Parse program text (a notebook cell, a string); `name` is what messages
    call it. Paths inside it resolve from `base_dir` (default: the working
    directory)."""
    return Program._parse(Source(name, text), Path(base_dir) if base_dir is not None else Path.cwd())


class Program:
    """A parsed program. Each call runs it afresh with the given bindings,
    which replace the program's own values of those names (like `--set`).

    Bindings are keyword arguments, or a mapping passed first for names that
    are not Python identifiers or clash with a parameter: `prog.eval({"lr": 0.5})`.
    """

    def __init__(self, source: Source, module: syntax.Module, base_dir: Path):
        self.source = source
        self._module = module
        self._base_dir = base_dir
        from .api import bound_names
        # The names the program binds, in order: what bindings may replace.
        self.names: list[str] = bound_names(module)

    @classmethod
    def _parse(cls, source: Source, base_dir: Path) -> "Program":
        from . import api
        return cls(source, api.parse(source), base_dir)

    @property
    def name(self) -> str:
        return self.source.name

    def __repr__(self) -> str:
        return f"<spiread Program {self.name!r}: {', '.join(self.names) or 'no bindings'}>"

    # ------------------------------------------------------------ the calls

    @_front_door
    def eval(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, of: str | None = None,
             **more: ArrayLike) -> dict[str, Value]:
        """Every bound value, then the output (when it is not a bound name),
        name → float or array.

        `of` picks the output among the bound names (default: the last
        binding, or `.backward(...)`'s receiver)."""
        run = self._run(bindings, more, of)
        values = {name: _result(run.tape.nodes[i].value) for name, i in run.bindings.items()}
        values.setdefault(run.output_name, _result(run.value))
        self._warn(run)
        return values

    @_front_door
    def grad(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
             of: str | None = None, mode: Literal["reverse", "forward"] = "reverse",
             **more: ArrayLike) -> "Gradients":
        """The scalar output and its gradient with respect to each `wrt` name
        (default: `.backward(...)`'s names, else every input the output depends on)."""
        from . import api
        if mode not in ("reverse", "forward"):
            raise SpireadError(f"{option('mode', mode)}: the mode is \"reverse\" or \"forward\"", exit_code=2)
        run = self._run(bindings, more, of)
        result = self._located(api.gradients, run, _names(wrt), mode)
        gradients = Gradients(run.output_name, float(result.value),
                              {n: _result(g) for n, g in result.gradients.items()})
        self._warn(run)
        return gradients

    @_front_door
    def hessian(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
                of: str | None = None, hvp: Mapping[str, ArrayLike] | None = None,
                **more: ArrayLike) -> "Hessian":
        """Second derivatives of the scalar output, exact (docs/design.md):
        every block ∂²out/∂A∂B with the shape shape(A) + shape(B), as
        `torch.autograd.functional.hessian` gives it; or, with `hvp={A: V}`,
        the Hessian-vector products Σ_B ∂²out/∂A∂B · V_B without forming the
        Hessian (names not given are zero), as `spiread hessian --hvp` does."""
        from . import second
        run = self._run(bindings, more, of)
        if hvp is None:
            result = self._located(second.hessian, run, _names(wrt))
            blocks = {a: {b: _result(h) for b, h in row.items()} for a, row in result.blocks.items()}
            products = None
        else:
            if not isinstance(hvp, Mapping):
                raise _type_error("hvp", hvp, "the directions are a mapping of names to values, e.g. {\"w\": [1, 0]}")
            vectors = {_name("hvp", hvp, name): self._binding(name, v, option("hvp", name))
                       for name, v in hvp.items()}
            result = self._located(second.hvp, run, vectors, _names(wrt))
            blocks, products = None, {a: _result(p) for a, p in result.products.items()}
        self._warn(run)
        return Hessian(run.output_name, float(result.value), blocks, products)

    @_front_door
    def jacobian(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
                 of: str | None = None, mode: Literal["forward", "reverse"] | None = None,
                 **more: ArrayLike) -> "Jacobian":
        """The output (a scalar, vector or matrix) and its Jacobian with
        respect to each `wrt` name (default: `grad`'s): a block of shape
        shape(output) + shape(name), as `torch.autograd.functional.jacobian`
        gives it. `mode` picks the sweep; by default, the one with fewer
        sweeps for these sizes (forward when the `wrt` values have fewer
        entries than the output). `j["W"]` is `j.blocks["W"]`."""
        from .jacobian import jacobian
        if mode is not None and mode not in ("reverse", "forward"):
            raise SpireadError(f"{option('mode', mode)}: the mode is \"forward\" or \"reverse\"", exit_code=2)
        run = self._run(bindings, more, of)
        result = self._located(jacobian, run, _names(wrt), mode)
        found = Jacobian(run.output_name, _result(result.value), result.mode,
                         {n: _result(block) for n, block in result.blocks.items()})
        self._warn(run)
        return found

    @_front_door
    def check(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
              of: str | None = None, eps: float | None = None, tol: float | None = None,
              **more: ArrayLike) -> "CheckResult":
        """Compare reverse-mode (and forward-mode) gradients with central finite
        differences, as `spiread check` does (docs/check.md). A failed check is
        not an exception: see `.ok` and `.failures`."""
        from .check import check_gradients
        from .output import check_table
        _number("eps", eps)
        _number("tol", tol)
        run = self._run(bindings, more, of)
        report = self._located(check_gradients, run, _names(wrt), eps, tol)
        result = CheckResult(report, _plain(check_table(report)),
                             [render(failure, run.source) for failure in report.failures(run)])
        self._warn(run)
        return result

    @_front_door
    def train(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str,
              steps: int = 100, lr: float | None = None, optimizer: Literal["sgd", "adam", "newton"] = "sgd",
              momentum: float = 0.0, of: str | None = None, progress: bool | None = None,
              **more: ArrayLike) -> "Training":
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
        SpireadWarning an error, so does a warning in any step (`--strict`)."""
        from . import train as training
        from .optim import OPTIMIZERS, make_optimizer
        from .output import StepReporter, train_summary
        if not isinstance(optimizer, str) or optimizer not in OPTIMIZERS:
            raise SpireadError(f"{option('optimizer', optimizer)}: the optimizer is one of "
                               + ", ".join(f'"{k}"' for k in OPTIMIZERS), exit_code=2)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise SpireadError(f"{option('steps', steps)}: the number of steps is a whole number, at least 0",
                               exit_code=2)
        _number("lr", lr)
        _number("momentum", momentum)
        chosen = make_optimizer(optimizer, lr, momentum)
        run = self._run(bindings, more, of, evaluate=False)  # computed as train's fused tape
        names = self._located(training.trainable_names, run, _names(wrt) or [])
        strict = _warnings_raise()
        show = _interactive() if progress is None else progress
        reporter = StepReporter(steps, live=True) if show else None

        def ready():  # the first forward pass has run: its warnings before the steps, as the command line does
            self._warn(run, stacklevel=6)  # past _warn, ready, training.train, train and _front_door's wrapper
            if reporter is not None:
                shown.enter_context(reporter)
        with _stop_on_interrupt() as stop_requested, ExitStack() as shown:
            result = training.train(run, names, steps, chosen, strict=strict, on_step=reporter,
                                    stop_requested=stop_requested, spend_run=True,  # the run is this call's own
                                    on_ready=ready)
        trained = Training(result.names, list(result.losses), {n: _result(v) for n, v in result.values.items()},
                           result.status, result.seconds, train_summary(result, run, steps, chosen),
                           result.rejected, result.converged)
        if result.error is not None:
            raise TrainingStopped.of(result.error.located_in(self.source), trained)
        return trained

    @_front_door
    def dot(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
            of: str | None = None, **more: ArrayLike) -> "Graph":
        """The computation graph (as `spiread dot`): the `wrt` values (by
        default `grad`'s, when the output is a scalar computed from inputs)
        are highlighted and show their gradients. Renders itself in Jupyter."""
        from .dot import to_dot
        from .gradients import dot_gradients
        run = self._run(bindings, more, of)
        graph = Graph(to_dot(run, self._located(dot_gradients, run, _names(wrt))))
        self._warn(run)
        return graph

    # ------------------------------------------------------------ plumbing

    def _run(self, bindings: Mapping[str, ArrayLike] | None, more: dict[str, ArrayLike], of: str | None,
             evaluate: bool = True) -> Run:
        from . import api
        if bindings is not None and not isinstance(bindings, Mapping):
            raise _type_error("bindings", bindings, "the bindings passed first are a mapping of names to values, "
                                                    "e.g. {\"w\": [1, 2]}")
        given = {**(bindings or {}), **more}
        overrides = {_name("bindings", given, name): self._binding(name, value) for name, value in given.items()}
        if _name("of", of, of) is not None and of not in self.names:
            raise SpireadError(f"{option('of', of)}: the program binds no `{of}`", notes=did_you_mean(of, self.names),
                               exit_code=2)
        try:
            run = api.run_module(self.source, self._module, overrides, of, self._base_dir, evaluate)
        except SpireadError as err:
            _print(err.printed)
            raise
        _print(run.printed)
        return run

    def _binding(self, name: str, value: ArrayLike, what: str | None = None) -> np.ndarray:
        """A binding (or, `what` saying which, another value given for a name,
        an HVP's direction) as the float64 array of rank ≤ 2 the program gets:
        always a copy, so nothing the caller holds is shared with the run."""
        what = what or option("set", name)
        if name not in self.names:
            raise SpireadError(f"{what}: the program binds no `{name}`", notes=did_you_mean(name, self.names),
                               exit_code=2)
        try:
            raw = np.asarray(value)
        except ValueError as err:
            problem = "its rows differ in length" if "inhomogeneous" in str(err) else _first_line(err)
            raise SpireadError(f"{what}: {problem}", exit_code=2) from None
        if raw.dtype.kind == "O" and all(_python_number(x) for x in raw.flat):
            raw = _as_floats(raw, what)  # Python numbers numpy keeps as objects: 2**70, Fraction, Decimal
        if raw.dtype.kind not in "biuf":
            raise SpireadError(f"{what}: the value must be real numbers, not {_kind(raw)}", exit_code=2)
        if raw.ndim > 2:
            raise SpireadError(f"{what}: the value is {raw.ndim}-dimensional; spiread values are scalars, "
                               "vectors and matrices", exit_code=2)
        return np.array(raw, dtype=np.float64, order="C", copy=True)

    def _located(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call into the library; an error comes out pointing into this program."""
        try:
            return call(*args, **kwargs)
        except SpireadError as err:
            raise err.located_in(self.source) from None

    def _warn(self, run: Run, stacklevel: int = 4) -> None:
        # stacklevel 4: past this method, the public one and _front_door's wrapper, at the user's call.
        for warning in run.diagnostics.warnings:
            warnings.warn(SpireadWarning.of(warning, self.source), stacklevel=stacklevel)


# ------------------------------------------------------------------ results


@dataclass(frozen=True)
class Gradients:
    """What `Program.grad` returns: the output's name and value, and one
    gradient per `wrt` name (in that order). `g["W"]` is `g.gradients["W"]`."""
    output: str
    value: float
    gradients: dict[str, Value]

    def __getitem__(self, name: str) -> Value:
        return self.gradients[name]


@dataclass(frozen=True)
class Hessian:
    """What `Program.hessian` returns: the output's name and value, and either
    every block (`blocks[A][B]`, shape shape(A) + shape(B)) or, when asked with
    `hvp=`, the Hessian-vector product for each name (`products[A]`)."""
    output: str
    value: float
    blocks: dict[str, dict[str, Value]] | None
    products: dict[str, Value] | None = None


@dataclass(frozen=True)
class Jacobian:
    """What `Program.jacobian` returns: the output's name and value, the mode
    that computed the blocks, and one block per `wrt` name (in that order),
    of shape shape(output) + shape(name). `j["W"]` is `j.blocks["W"]`."""
    output: str
    value: Value
    mode: str
    blocks: dict[str, Value]

    def __getitem__(self, name: str) -> Value:
        return self.blocks[name]


@dataclass(frozen=True)
class CheckResult:
    """What `Program.check` returns. `ok` is the verdict; `table` is the text
    `spiread check` prints; `failures` are the located errors it prints for the
    values that failed; `report` has every figure (check.CheckReport)."""
    report: CheckReport
    table: str
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.report.ok

    def __str__(self) -> str:
        return "\n".join([self.table, *self.failures])

    def __repr__(self) -> str:
        return str(self)


@dataclass(frozen=True)
class Training:
    """What `Program.train` returns: the loss of each completed step (before
    its update), the trained values by name, and how it ended: "done",
    "interrupted" when asked to stop, "converged" when newton found no step
    that lowers the loss before the last step (`converged` says why), or
    "stopped" (in `TrainingStopped`). With newton, `rejected_steps` counts
    the trial steps it rejected."""
    names: list[str]
    losses: list[float]
    values: dict[str, Value]
    status: str
    seconds: float
    summary: str
    rejected_steps: int | None = None
    converged: str | None = None

    def __repr__(self) -> str:
        return self.summary


class Graph:
    """A computation graph: `.source` is the DOT text. In Jupyter it draws
    itself as SVG through Graphviz's `dot` when that is installed, else shows
    the DOT text with a note saying how to get pictures."""

    def __init__(self, source: str):
        self.source = source
        self._svg: str | None = None

    def pipe(self, format: str = "svg") -> bytes:
        """The graph drawn by `dot -T<format>` (svg, png, pdf, ...)."""
        dot = shutil.which("dot")
        if dot is None:
            raise SpireadError("Graphviz's `dot` is not installed, so the graph cannot be drawn",
                               notes=["install Graphviz (https://graphviz.org/download/), or use `.source`"])
        done = subprocess.run([dot, f"-T{format}"], input=self.source.encode("utf-8"), capture_output=True)
        if done.returncode != 0:
            raise SpireadError(f"`dot -T{format}` failed: {_first_line(done.stderr.decode(errors='replace'))}")
        return done.stdout

    def _repr_svg_(self) -> str | None:
        if shutil.which("dot") is None:
            return None  # then Jupyter shows _repr_markdown_
        if self._svg is None:
            self._svg = self.pipe("svg").decode("utf-8")
        return self._svg

    def _repr_markdown_(self) -> str | None:
        if shutil.which("dot") is not None:
            return None  # the SVG is shown (a markdown rendering would be preferred to it)
        return ("Graphviz's `dot` is not installed, so this graph is shown as DOT text "
                "(install Graphviz to see it drawn):\n\n```dot\n" + self.source + "```\n")

    def __repr__(self) -> str:
        nodes = sum(1 for line in self.source.splitlines() if "[label=" in line)
        return f"<spiread Graph: {nodes} nodes; .source is the DOT text>"


# ------------------------------------------------------------------ helpers


def _names(wrt: list[str] | str | None) -> list[str] | None:
    """`wrt` as a list of names (None for none given)."""
    if wrt is None or isinstance(wrt, str):
        return [wrt] if wrt else None
    if not isinstance(wrt, Iterable):
        raise _type_error("wrt", wrt, "the names are a string or a list of strings")
    names = list(wrt)
    for name in names:
        _name("wrt", wrt, name)
    return names or None


def _name(argument: str, value: object, name: object) -> str | None:
    """A name (or None) in `value`, given for `argument`, checked to be a string."""
    if name is not None and not isinstance(name, str):
        raise _type_error(argument, value, "a name is a string",
                          None if name is value else f"{name!r} ({type(name).__name__})")
    return name


def _python_number(x: object) -> bool:
    """A real number of Python's own (numpy keeps 2**70, a Fraction or a Decimal as an object)."""
    from decimal import Decimal
    return isinstance(x, (numbers.Real, Decimal))


def _number(argument: str, value: object) -> None:
    """A real number (or None) given for `argument`."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)):
        raise _type_error(argument, value, "a number")


def _as_floats(raw: np.ndarray, what: str) -> np.ndarray:
    try:
        return raw.astype(np.float64)
    except OverflowError:
        raise SpireadError(f"{what}: a number is beyond the range spiread can hold (a float64 reaches about "
                           "±1.8e308)", exit_code=2) from None


def _result(value: np.ndarray) -> Value:
    """What every call returns for a value: a float for a scalar, else a
    float64 array of the caller's own; zero is 0.0, never -0.0 (forward and
    reverse mode reach a zero by different sums: output.py's rule too)."""
    if np.ndim(value) == 0:
        return float(value) + 0.0
    array = np.array(value, dtype=np.float64, copy=True)
    array += 0.0  # -0.0 + 0.0 is 0.0
    return array


def _print(printed: list[str]) -> None:
    """The program's `println` lines, on the caller's standard output (a notebook cell's output)."""
    if printed:
        print("\n".join(printed), flush=True)


def _kind(array: np.ndarray) -> str:
    return {"U": "text", "S": "text", "c": "complex numbers", "O": "Python objects",
            "M": "dates", "m": "time spans"}.get(array.dtype.kind, f"{array.dtype} values")


def _first_line(err: object) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def _plain(renderable: Any) -> str:
    """A rich renderable as plain text, unwrapped (as the command line prints it to a pipe)."""
    from rich.console import Console
    out = io.StringIO()
    Console(file=out, width=10_000, soft_wrap=True, color_system=None, highlight=False, force_terminal=False,
            force_jupyter=False).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().strip("\n").splitlines())


def _warnings_raise() -> bool:
    """Whether the warning filters turn a SpireadWarning into an exception
    (`simplefilter("error", SpireadWarning)`): training then stops at any
    warning in a step, as `--strict` does. The steps warn only when asked,
    since looking for inf and nan costs a pass over every value, so the
    filters are asked first, with a warning that is never shown."""
    with warnings.catch_warnings(record=True):
        try:
            warnings.warn(SpireadWarning("would a warning be an error?"), stacklevel=3)
        except SpireadWarning:
            return True
    return False


def _interactive() -> bool:
    """In a Jupyter kernel that can show a live bar (rich draws it with
    ipywidgets), or with stderr on a terminal."""
    from importlib.util import find_spec
    from rich.console import Console
    return (Console(stderr=True).is_jupyter and find_spec("ipywidgets") is not None) or sys.stderr.isatty()


def _stop_on_interrupt() -> ContextManager[Callable[[], bool]]:
    """The first interrupt asks training to stop after the step in progress
    (interrupts.stop_on_interrupt); signals can only be caught in the main
    thread, so elsewhere an interrupt is not asked about."""
    from .interrupts import stop_on_interrupt
    if threading.current_thread() is threading.main_thread():
        return stop_on_interrupt()
    return nullcontext(lambda: False)
