"""`train`'s progress (on stderr) and its result: the summary, the
trained values and the --format json document's fields."""

from __future__ import annotations

import sys
import time

import numpy as np

from .diagnostics import shape_str
from .formatting import json_value
from .output import print_blocks, stderr_console, values_table


SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(losses: list[float], width: int = 24) -> str:
    """The loss curve in one line of block characters (a terminal plot)."""
    if len(losses) < 2:
        return ""
    picks = np.asarray(losses)[np.linspace(0, len(losses) - 1, min(width, len(losses))).round().astype(int)]
    low, high = picks.min(), picks.max()
    if high == low:
        return SPARKS[0] * len(picks)
    levels = ((picks - low) / (high - low) * (len(SPARKS) - 1)).round().astype(int)
    return "".join(SPARKS[k] for k in levels)


class StepReporter:
    """Progress on stderr: a rich bar (step, loss, steps/s, ETA) on a terminal,
    else a plain line every tenth of the run."""

    def __init__(self, steps: int, live: bool | None = None):
        self.steps = steps
        self.live = sys.stderr.isatty() if live is None else live
        self.every = max(1, steps // 10)
        self.began = time.perf_counter()
        self.bar = None

    def __enter__(self):
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=stderr_console())
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps, loss="…", rate="")
        return self

    def __exit__(self, *exc):
        if self.bar is None:
            return
        console = self.bar.console
        if console.is_jupyter:
            # rich stops a bar in Jupyter without drawing it again (the widget
            # would keep its last timed refresh, short of the end), and shows
            # its console's empty buffer as an output cell of its own.
            self.bar.refresh()
            console.quiet = True
        self.bar.stop()

    def __call__(self, step: int, loss: float) -> None:
        rate = step / max(time.perf_counter() - self.began, 1e-9)
        speed = f"{rate:.1f} steps/s" if rate >= 1 else f"{1 / rate:.2f} s a step"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.6g}", rate=speed)
        elif step % self.every == 0 or step == self.steps or step == 1:
            print(f"step {step}/{self.steps}  loss {loss:.6g}  {speed}", file=sys.stderr, flush=True)


def train_summary(result, run, steps: int, optimizer) -> str:
    shapes = ", ".join(f"{n} ({shape_str(result.values[n].shape)})" for n in result.names)
    done = len(result.losses)
    per_step = result.seconds / done if done else 0.0
    head = f"trained {shapes} with {optimizer.describe()}: {done} step{'s' * (done != 1)}"
    if result.status == "interrupted":
        head = f"interrupted: {head} of {steps}"
    each = f"{per_step * 1000:.3g} ms" if per_step < 1 else f"{per_step:.3g} s"
    lines = [f"{head} in {result.seconds:.3g} s ({each} a step)"]
    if result.losses:
        lines.append(f"{run.output_name}: {result.losses[0]:.6g} → {result.losses[-1]:.6g}  {sparkline(result.losses)}")
    if result.rejected is not None:
        lines.append(f"rejected {result.rejected} trial step{'s' * (result.rejected != 1)} that did not lower the loss "
                     "as the model predicted (one loss evaluation each)")
    if result.converged:
        lines.append(f"converged at step {done} of {steps}: {result.converged}")
    return "\n".join(lines)


def train_document(result, written) -> dict:
    document = {"steps": len(result.losses), "loss": result.losses,
                "saved": str(written.saved) if written.saved is not None else None,
                "values": {name: json_value(result.values[name]) for name in result.names}}
    if result.rejected is not None:  # an optimizer that tries steps (newton)
        document.update(rejected_steps=result.rejected, converged=result.converged)
    return document


def train_text(run, result, written, steps: int, optimizer) -> None:
    """The summary, the files written, then the trained values."""
    print_blocks(train_summary(result, run, steps, optimizer) + "".join(f"\n{w}" for w in written.done) + "\n",
                 values_table([(name, result.values[name]) for name in result.names]))
