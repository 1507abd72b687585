"""What the Python API's calls return (and raise besides SpireadError):
`Gradients`, `Hessian`, `Jacobian`, `CheckResult`, `Training`, `Graph`;
`SpireadWarning`, `TrainingStopped`.
"""

from __future__ import annotations

import shutil
import subprocess
import warnings
from dataclasses import dataclass, field
from typing import ClassVar

from .check_measure import CheckReport
from .diagnostics import Diagnostic, Source, SpireadError
from .python_args import Value, first_line, outside_stacklevel


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


def warnings_raise() -> bool:
    """Whether the warning filters turn a SpireadWarning into an exception
    (`simplefilter("error", SpireadWarning)`): training then stops at any
    warning in a step, as `--strict` does. The steps warn only when asked,
    since looking for inf and nan costs a pass over every value, so the
    filters are asked first, with a warning that is never shown."""
    with warnings.catch_warnings(record=True):
        try:
            warnings.warn(SpireadWarning("would a warning be an error?"), stacklevel=outside_stacklevel())
        except SpireadWarning:
            return True
    return False


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


@dataclass(frozen=True)
class ByName:
    """The output's name and value, and one result per `wrt` name (in that
    order) in the field `BY` names: `r["W"]`."""
    output: str
    value: Value
    BY: ClassVar[str]

    def __getitem__(self, name: str) -> Value:
        return getattr(self, self.BY)[name]


@dataclass(frozen=True)
class Gradients(ByName):
    """What `Program.grad` returns: the output's name and (scalar) value, and
    one gradient per `wrt` name. `g["W"]` is `g.gradients["W"]`."""
    gradients: dict[str, Value]
    BY: ClassVar[str] = "gradients"


@dataclass(frozen=True)
class Jacobian(ByName):
    """What `Program.jacobian` returns: the output's name and value, the mode
    that computed the blocks, and one block per `wrt` name, of shape
    shape(output) + shape(name). `j["W"]` is `j.blocks["W"]`."""
    mode: str
    blocks: dict[str, Value]
    BY: ClassVar[str] = "blocks"


@dataclass(frozen=True)
class Hessian:
    """What `Program.hessian` returns: the output's name and value, and either
    every block (`blocks[A][B]`, shape shape(A) + shape(B)) or, when asked with
    `hvp=`, the Hessian-vector product for each name (`products[A]`).
    `h["A"]` is whichever of the two it holds, as the JSON's "hessian"/"hvp"."""
    output: str
    value: float
    blocks: dict[str, dict[str, Value]] | None
    products: dict[str, Value] | None = None

    def __getitem__(self, name: str) -> dict[str, Value] | Value:
        return (self.blocks if self.products is None else self.products)[name]


@dataclass(frozen=True)
class CheckResult:
    """What `Program.check` returns. `ok` is the verdict; `table` is the text
    `spiread check` prints; `failures` are the located errors it prints for the
    values that failed; `report` has every figure (check_measure.CheckReport)."""
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
            raise SpireadError(f"`dot -T{format}` failed: {first_line(done.stderr.decode(errors='replace'))}")
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
