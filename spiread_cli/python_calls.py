"""The Python API's calls on a program (`Program.eval`, `grad`, `hessian`,
`jacobian`, `check`, `train`, `dot`; program.Program has them from
`PythonCalls`): each checks its arguments as Python, makes the one call of
the library the command of its name makes (`Program.run_grad`, …) with
`InPython` as the `program.Caller`, and returns the outcome as the caller's
own floats and float64 arrays (results.py)."""

from __future__ import annotations

import warnings
from os import PathLike
from pathlib import Path
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from .diagnostics import Source, SpireadError, option, render
from .python_args import (ArrayLike, Value, checked_binding, checked_choice, checked_name, checked_number,
                          checked_overrides, front_door, interactive, outside_stacklevel, plain_text, print_lines,
                          result_value, result_values, sparse_arguments, stop_on_interrupt_here, type_error,
                          with_sweeps, wrt_names)
from .results import (CheckResult, Gradients, Graph, Hessian, Jacobian, SpireadWarning, Training, TrainingStopped,
                      warnings_raise)
from .run import Run


class InPython:
    """The Python API as the `Caller`: the program's `println` lines on
    standard output, its warnings through `warnings`, pointing at the
    caller's line; `strict` as the filters make a SpireadWarning."""

    keeps_runs = True  # a program is called again and again: its runs are kept (kept_runs.py)

    def __init__(self, source: Source):
        self.source = source
        self.shown = 0

    @property
    def strict(self) -> bool:
        return warnings_raise()

    def ran(self, run: Run) -> None:
        print_lines(run.printed)

    def warn(self, run: Run) -> None:
        for warning in run.diagnostics.warnings[self.shown:]:
            self.shown += 1
            warnings.warn(SpireadWarning.of(warning, self.source), stacklevel=outside_stacklevel())


def held(run: Run):
    """What gives the arrays a run keeps (`result_values`): every value on its tape."""
    return lambda: [node.stored_value for node in run.tape.nodes if node.stored_value is not None]


class PythonCalls:
    """The Python calls of `program.Program`, made on its tasks (`run_eval`,
    `run_grad`, …), its `source` and the `names` it binds."""

    @front_door
    def eval(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, of: str | None = None,
             **more: ArrayLike) -> dict[str, Value]:
        """Every bound value, then the output (when it is not a bound name),
        name → float or array.

        `of` picks the output among the bound names (default: the last
        binding, or `.backward(...)`'s receiver)."""
        done = self.run_eval(InPython(self.source), self._overrides(bindings, more, of), of)
        return result_values(done.result)

    @front_door
    def grad(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
             of: str | None = None, mode: Literal["reverse", "forward"] = "reverse",
             **more: ArrayLike) -> "Gradients":
        """The scalar output and its gradient with respect to each `wrt` name
        (default: `.backward(...)`'s names, else every input the output depends on)."""
        checked_choice("mode", mode, ("reverse", "forward"), "the mode")
        done = self.run_grad(InPython(self.source), self._overrides(bindings, more, of), wrt=wrt_names(wrt), of=of,
                             mode=mode)
        found, _ = done.result
        return Gradients(done.run.output_name, float(found.value), result_values(found.gradients, held(done.run)))

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
        sparse_arguments(sparse, pattern, hvp=hvp is not None)
        vectors = None
        if hvp is not None:
            if type(hvp) is not dict and not isinstance(hvp, Mapping):
                raise type_error("hvp", hvp, "the directions are a mapping of names to values, e.g. {\"w\": [1, 0]}")
            vectors = {}
            for name, v in hvp.items():
                checked_name("hvp", hvp, name)
                vectors[name] = checked_binding(name, v, self.names, "hvp")
        done = self.run_hessian(InPython(self.source), self._overrides(bindings, more, of), wrt=wrt_names(wrt), of=of,
                                hvp=vectors, sparse=sparse, pattern=pattern)
        found = done.result
        if sparse or pattern:
            return with_sweeps(found.pattern if pattern else found.matrix, found.sweeps)
        if hvp is not None:
            return Hessian(done.run.output_name, float(found.value), None, result_values(found.products, held(done.run)))
        blocks = result_values({(a, b): block for a, row in found.blocks.items() for b, block in row.items()},
                               held(done.run))
        return Hessian(done.run.output_name, float(found.value),
                       {a: {b: blocks[a, b] for b in row} for a, row in found.blocks.items()})

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
        if mode is not None:
            checked_choice("mode", mode, ("forward", "reverse"), "the mode")
        sparse_arguments(sparse, pattern)
        done = self.run_jacobian(InPython(self.source), self._overrides(bindings, more, of), wrt=wrt_names(wrt), of=of,
                                 mode=mode, sparse=sparse, pattern=pattern)
        found = done.result
        if sparse or pattern:
            return with_sweeps(found.pattern if pattern else found.matrix, found.sweeps)
        return Jacobian(done.run.output_name, result_value(found.value), found.mode,
                        result_values(found.blocks, held(done.run), found.signed_zeros))

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
        from .output_results import check_table
        eps, tol = checked_number("eps", eps), checked_number("tol", tol)
        if isinstance(order, bool) or not isinstance(order, int):
            raise type_error("order", order, "the order is 1 or 2")
        if order not in (1, 2):
            raise SpireadError(f"{option('order', order)}: the order is 1 (first derivatives) or 2 (second derivatives)",
                               exit_code=2)
        sparse_arguments(sparse, False)
        done = self.run_check(InPython(self.source), self._overrides(bindings, more, of), wrt=wrt_names(wrt), of=of,
                              eps=eps, tol=tol, order=order, sparse=sparse)
        report = done.result
        return CheckResult(report, plain_text(check_table(report)),
                           [render(failure, done.run.source) for failure in report.failures(done.run)])

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
        from .optim import OPTIMIZERS, make_optimizer
        from .output_train import StepReporter, train_summary
        checked_choice("optimizer", optimizer, OPTIMIZERS, "the optimizer")
        checked_number("steps", steps, optional=False)
        if not isinstance(steps, int) or steps < 0:
            raise SpireadError(f"{option('steps', steps)}: the number of steps is a whole number, at least 0",
                               exit_code=2)
        lr, momentum = checked_number("lr", lr), checked_number("momentum", momentum, optional=False)
        if sparse is not None and not isinstance(sparse, bool):
            raise type_error("sparse", sparse, "True, False or None")
        chosen = make_optimizer(optimizer, lr, momentum, sparse)
        if wrt is None:  # --wrt is required of `spiread train` too: nothing is trained by default
            raise SpireadError("`wrt=None`: train needs the values to train", notes=['e.g. `wrt="w"`'], exit_code=2)
        overrides = self._overrides(bindings, more, of)
        show = interactive() if progress is None else progress
        done = self.run_train(InPython(self.source), overrides, wrt=wrt_names(wrt), steps=steps, optimizer=chosen,
                              of=of, progress=StepReporter(steps, live=True) if show else None,
                              interrupts=stop_on_interrupt_here)
        result = done.result
        trained = Training(result.names, list(result.losses), result_values(result.values),
                           result.status, result.seconds, train_summary(result, done.run, steps, chosen),
                           result.rejected, result.converged)
        if result.error is not None:
            raise TrainingStopped.of(result.error, trained)
        return trained

    @front_door
    def dot(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, wrt: list[str] | str | None = None,
            of: str | None = None, **more: ArrayLike) -> "Graph":
        """The computation graph (as `spiread dot`): the `wrt` values (by
        default `grad`'s, when the output is a scalar computed from inputs)
        are highlighted and show their gradients. Renders itself in Jupyter."""
        return Graph(self.run_dot(InPython(self.source), self._overrides(bindings, more, of), wrt=wrt_names(wrt),
                                  of=of).result)

    @front_door
    def export(self, bindings: Mapping[str, ArrayLike] | None = None, /, *, to: Literal["python", "onnx"],
               out: str | PathLike[str], wrt: list[str] | str | None = None, of: str | None = None,
               hvp: bool = False, **more: ArrayLike) -> list[Path]:
        """The output's value and its gradient with respect to each `wrt`
        name (and with `hvp=True` its Hessian-vector product) written to
        `out` as code that runs without spiread, as `spiread export` writes
        it (docs/export.md): one array API Python module (`to="python"`,
        `out` ending .py; larger arrays in a .npz beside it) or an ONNX
        model (`to="onnx"`, .onnx). The paths written. Needs
        array-api-compat or onnx: `pip install "spiread[export]"`."""
        from .export import TARGETS, check_target, written_files
        checked_choice("to", to, TARGETS, "the target")
        if not isinstance(out, (str, PathLike)):
            raise type_error("out", out, "the path to write is a str or a pathlib.Path")
        if not isinstance(hvp, bool):
            raise type_error("hvp", hvp, "True or False")
        path, suffix = Path(out), TARGETS[to][0]
        if not path.name:  # "", ".", "/": Path has no name to give the suffix
            raise SpireadError(f'`out="{out}"`: the path to write names a file, e.g. {option("out", "model" + suffix)}',
                               exit_code=2)
        if path.suffix.lower() != suffix:
            raise SpireadError(f"{option('out', str(path))}: {option('to', to)} writes {suffix}, not "
                               f"{path.suffix or 'a name without one'}",
                               notes=[f"e.g. {option('out', str(path.with_suffix(suffix)))}"], exit_code=2)
        check_target(to)
        from .files import check_outputs, command_inputs
        check_outputs(written_files(to, path, "out"), command_inputs(self.source.name, [], self.loaded_files()))
        return self.run_export(InPython(self.source), self._overrides(bindings, more, of), to=to, out=path,
                               wrt=wrt_names(wrt), of=of, hvp=hvp).result

    # ------------------------------------------------------------ plumbing

    def _overrides(self, bindings: object, more: dict[str, ArrayLike], of: str | None) -> dict[str, np.ndarray]:
        return checked_overrides(bindings, more, of, self.names)
