"""Gradients of a run's scalar output by names, through either sweep: the
reverse sweep on the tape, or forward mode. What `grad`, `grad --explain`
and the Python API's `Program.grad` compute."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forward import jacobian_forward
from .run import Run


@dataclass
class RunGradients:
    value: np.ndarray                   # the output's value
    gradients: dict[str, np.ndarray]    # name -> gradient, in --wrt order


def gradients(run: Run, wrt: list[str] | None = None, mode: str = "reverse", observe=None) -> RunGradients:
    """Gradients of the run's scalar output with respect to `wrt` (names).
    `observe` watches the sweep (`grad --explain`; see spiread_cli/explain.py)."""
    ids = run.wrt_ids(wrt)
    if mode == "forward":
        by_id = jacobian_forward(run.tape, run.output, list(ids.values()), run.diagnostics, observe=observe)
    else:
        by_id = run.tape.backward(run.output, list(ids.values()), run.diagnostics, observe)
    return RunGradients(run.value, {n: by_id[i] for n, i in ids.items()})


def dot_gradients(run: Run, wrt: list[str] | None = None) -> dict[str, np.ndarray] | None:
    """The gradients `dot` draws: by `wrt`, else by grad's default names, when
    the output is a scalar computed from any; else none (a graph of anything
    can be drawn; only a scalar computed from inputs has gradients)."""
    if not wrt and (run.tape.nodes[run.output].shape != () or not run.default_wrt()):
        return None
    return gradients(run, wrt).gradients
