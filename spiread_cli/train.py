"""Training: a program is parsed and recorded once, then forward, backward and
an optimizer step are repeated on the tape with new leaf values.

    >>> from spiread_cli import optim, train
    >>> from spiread_cli.program import Program
    >>> run = Program.open("examples/regression.ad").run()
    >>> result = train.train(run, ["weights"], 100, optim.SGD(0.01))
    >>> result.losses[0], result.values["weights"]

The loss reported for a step is the one computed before that step's update.
The output files are files.py's, the progress and summary output_train.py's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from .diagnostics import BackendLost, Diagnostics, SpireadError, option, usage_error
from .rewrite import Fused, fuse
from .run import Run
from .tape import Tape
from .tape_nodes import Node, all_finite, describe_nonfinite


@dataclass
class TrainResult:
    names: list[str]                      # the trained values, in --wrt order
    losses: list[float]                   # one per completed step, before its update
    values: dict[str, np.ndarray]         # what to keep (see `train`)
    status: str                           # "done", "interrupted", "converged", "stopped" (an error),
                                          # or "lost" (BackendLost: what computed the steps went away)
    seconds: float
    error: SpireadError | None = None
    rejected: int | None = None           # trial steps the optimizer rejected (Newton's), else None
    converged: str | None = None          # why the optimizer found no step that lowers the loss


def trainable_names(run: Run, wrt: list[str]) -> list[str]:
    """The --wrt names, checked: each must be bound to a constant (an input
    leaf), since anything computed is recomputed from the inputs each step.
    A name the output does not depend on gets a warning (in run.diagnostics)."""
    names = list(run.wrt_ids(wrt))
    for name in names:
        if run.node(name).kind != "input":
            raise usage_error(f"{option('wrt', name)}: `{name}` is computed from other values, so training cannot set it",
                              [f"train a value bound to a constant, e.g. `{name}0 = randn(…)`, and compute `{name}` from it"])
    return names


class NonFinite(Exception):
    """A step's loss (`loss` None) or gradient (`loss` the step's loss) is not
    finite; `error` says where it was born."""

    def __init__(self, error: SpireadError, loss: float | None = None):
        super().__init__(error.diagnostic.message)
        self.error, self.loss = error, loss


# One step: (step number, the trained values) -> (loss, gradients, the
# step's warnings), or NonFinite. The run's own tape makes it (`tape_steps`),
# on either backend: on `--backend dask` the run is the driver's, whose totals
# over row chunks are ops (spiread_cli/row_totals.py).
Steps = Callable[[int, dict[str, np.ndarray]], tuple[float, dict[str, np.ndarray], list]]


def train(run: Run, wrt: list[str], steps: int, optimizer, *, strict: bool = False,
          on_step: Callable[[int, float], None] | None = None,
          stop_requested: Callable[[], bool] = lambda: False,
          spend_run: bool = False,
          on_ready: Callable[[], None] = lambda: None) -> TrainResult:
    """Run `steps` steps of forward, backward and `optimizer.step` on the `wrt`
    values (names, checked by `trainable_names`). The run itself is left as it
    was: training works on a fused copy of its tape. With `spend_run`, a caller
    that will not read the run's values again (the command line, `Program.train`)
    lets the values only the run's tape holds go once the fused copy exists
    (`release_unfused`), so they do not stay in memory through the steps.
    A run recorded with `evaluate=False` is computed only as its fused copy,
    whose first pass warns in `run.diagnostics`; `on_ready()` is called
    after it, before the first step (the command line shows the warnings then).

    Stops early when `stop_requested()` turns true (after the step in
    progress), with status "converged" when the optimizer finds no step that
    lowers the loss (`result.converged` says why, also at the last step), or
    with `result.error` set when the loss or a gradient is not finite (or,
    with `strict`, on any warning). `result.values` is what to keep: after a
    normal or requested stop, the values after the last update (none when
    converged); after an error, the values at which the last finite loss
    was computed; when what computes the steps is lost (`BackendLost`,
    status "lost"), the values after the last finished step, as after a
    requested stop.
    """
    names = trainable_names(run, wrt)
    step_values = tape_steps(run, names, strict, optimizer, spend_run)
    on_ready()
    values = {n: run.node(n).value for n in names}
    previous = values
    losses: list[float] = []
    began = time.perf_counter()

    def finish(status, kept, error=None, kept_note=None):
        if error is not None:
            error.diagnostic = replace(error.diagnostic, notes=error.diagnostic.notes + (kept_note,))
        return TrainResult(names, losses, kept, status, time.perf_counter() - began, error,
                           getattr(optimizer, "rejected", None), getattr(optimizer, "converged", None))

    for step in range(1, steps + 1):
        if stop_requested():  # checked before a step, so a stop asked for while loading takes no step
            return finish("interrupted", values)
        try:
            loss, grads, warnings = step_values(step, values)
        except BackendLost as lost:
            return finish("lost", values, lost, _kept_note(step - 1, losses, updated=True))
        except NonFinite as stop:
            if stop.loss is None:
                return finish("stopped", previous if step > 1 else values, stop.error, _kept_note(step - 1, losses))
            losses.append(stop.loss)
            return finish("stopped", values, stop.error, _kept_note(step, losses))
        losses.append(loss)
        warnings = (run.diagnostics.warnings if step == 1 else []) + warnings
        if strict and warnings:
            first = warnings[0]
            return finish("stopped", values,
                          SpireadError(f"training stopped at step {step}: {first.message}", first.span, first.notes),
                          _kept_note(step, losses))
        previous = values
        with np.errstate(all="ignore"):  # an update that overflows shows as a non-finite loss next step
            values = optimizer.step(values, grads)
        if on_step is not None:
            on_step(step, loss)
        if getattr(optimizer, "converged", None) and step < steps:  # Newton found no step that lowers the loss
            return finish("converged", values)
    return finish("interrupted" if stop_requested() else "done", values)


def tape_steps(run: Run, names: list[str], strict: bool, optimizer=None, spend_run: bool = False) -> Steps:
    """Steps on the run's tape, fused for its output and the trained leaves
    (`spend_run`: see `train`)."""
    # Only the trained leaves change between steps, which is what the fused
    # rewrites assume (the bigram model becomes one log-softmax-pick op).
    # A run recorded without computing its ops (`Interpreter.run(evaluate=False)`)
    # meets its values here: the fused tape's first pass is the program's first, and warns.
    first_pass = run.diagnostics if run.tape.nodes[run.output].deferred is not None else None
    fused = fuse(run.tape, run.output, [run.bindings[n] for n in names], diagnostics=first_pass)
    tape, ids = fused.tape, fused.wrt
    if spend_run:
        release_unfused(run, fused)
    nodes = tape.nodes
    output = nodes[fused.output]
    # A step recomputes only what lies between the trained values and the output.
    moved = tape.between(ids, fused.output)
    written: list[Callable] = []  # without diagnostics, the replay as one function (as a kept run's), once used

    def forward(values: dict[str, np.ndarray], diagnostics: Diagnostics | None = None) -> float:
        for name, i in zip(names, ids):
            nodes[i].set_value(values[name])
        if diagnostics is not None:
            tape.replay(moved, diagnostics)
            return float(output.value)
        if not written:
            written.append(np.errstate(all="ignore")(tape.replay_function([n for n in moved if n.op is not None])))
        written[0]()
        return float(output.value)

    if getattr(optimizer, "needs_curvature", False):  # Newton: the gradient recorded on the copy, for HVPs
        optimizer.attach(tape, fused.output, dict(zip(names, ids)), forward)  # and its trial steps' losses

    def step(number: int, values: dict[str, np.ndarray]):
        diagnostics = Diagnostics()
        # The first forward pass is the one recorded when the program ran.
        # Warnings from a step only matter under --strict; without it the
        # replay skips the finiteness pass over every value.
        loss = forward(values, diagnostics if strict else None) if number > 1 else float(output.value)
        if not math.isfinite(loss):
            raise NonFinite(_nonfinite_loss(tape, number, loss, output))
        grads_by_id = tape.backward(fused.output, ids, diagnostics)
        bad = [n for n, i in zip(names, ids) if not all_finite(grads_by_id[i])]
        if bad:
            raise NonFinite(_nonfinite_gradient(number, loss, bad[0], diagnostics), loss)
        return loss, {n: grads_by_id[i] for n, i in zip(names, ids)}, diagnostics.warnings

    return step


def release_unfused(run: Run, fused: Fused) -> None:
    """Let go of the recorded values that only the run's tape holds, now that
    `fused` computes the output without them: for the bigram, the one-hot
    matrix, and, if the run computed them, the unfused logits, exponentials,
    probabilities and selection (five 228,146 × 27 arrays, 230 MB), of which
    the fused steps read none. The run keeps its nodes, names and output
    value (the fused tape's, if the run had not computed it); the others'
    values are None, and nothing is left to compute."""
    kept = {id(node.value) for node in fused.tape.nodes}
    output = run.tape.nodes[run.output]
    if output.deferred is not None:
        output.set_value(fused.tape.nodes[fused.output].value)
    for node in run.tape.nodes:
        if node is not output and id(node.stored_value) not in kept:
            node.set_value(None)


def _kept_note(step: int, losses: list[float], updated: bool = False) -> str:
    """Which values training kept: those at which step `step`'s loss was
    computed, or (`updated`) those that step's update made."""
    if step == 0:
        return "the values kept are the starting ones"
    if updated:
        return f"the values kept are those step {step} ended with (its loss was {losses[step - 1]:.6g})"
    return f"the values kept are those of step {step}, whose loss was {losses[step - 1]:.6g}"


def _nonfinite_loss(tape: Tape, step: int, loss: float, output: Node) -> SpireadError:
    """Name the node where the inf or nan was born: the first, in evaluation
    order, that made one from finite values (Tape.first_nonfinite)."""
    message = f"training stopped at step {step}: the loss is {loss:g}"
    found = tape.first_nonfinite(tape.nodes[:output.id + 1])
    if found is None:
        return SpireadError(message, output.span)
    node, born = found
    inside = node.born_inside()
    if inside:  # born inside the op (a row chunk's): where, as it says
        return SpireadError(f"{message}; {inside[0].message}", inside[0].span, inside[0].notes)
    if node.op is None:
        what = f"`{tape.text(node)}`" + (" (a trained value)" if node.kind == "input" else "")
        return SpireadError(f"{message}; {what} holds non-finite entries", node.span)
    detail = describe_nonfinite(f"`{node.label}`", node.value, [tape.nodes[i].value for i in node.inputs], born)
    return SpireadError(f"{message}; {detail}", node.span,
                        ["a smaller --lr often keeps the values in range"] if step > 1 else [])


def _nonfinite_gradient(step: int, loss: float, name: str, diagnostics: Diagnostics) -> SpireadError:
    message = f"training stopped at step {step}: the gradient of `{name}` is not finite (the loss was {loss:.6g})"
    born = diagnostics.warnings[-1] if diagnostics.warnings else None  # the backward sweep's warning
    if born is None:
        return SpireadError(message)
    return SpireadError(f"{message}; {born.message}", born.span, born.notes)
