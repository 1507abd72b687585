"""spiread: evaluate and differentiate matrix expression files (.ad).

The public Python API (docs/python.md)::

    from spiread_cli import load, compile
    prog = load("model.ad")
    prog.eval(weights=[[0.1, 0.2], [0.3, 0.4]])

Its names are imported when first used, so `import spiread_cli` (and the
command line's start-up) stays light.
"""

from __future__ import annotations

from .version import __version__  # noqa: F401 (the package's own `spiread_cli.__version__`)

# Not `from typing import TYPE_CHECKING`: importing typing would double this
# module's import time; type checkers know the name either way.
TYPE_CHECKING = False

__all__ = ["CheckResult", "Gradients", "Graph", "Jacobian", "Program", "SpireadError", "SpireadWarning", "Training",
           "TrainingStopped", "compile", "load"]
# name -> the module that defines it
_PUBLIC = {"SpireadError": "diagnostics", "Program": "program", "compile": "program", "load": "program",
           **{name: "results" for name in ("CheckResult", "Gradients", "Graph", "Jacobian", "SpireadWarning",
                                           "Training", "TrainingStopped")}}

if TYPE_CHECKING:
    from typing import Any

    from .diagnostics import SpireadError
    from .program import Program, compile, load
    from .results import CheckResult, Gradients, Graph, Jacobian, SpireadWarning, Training, TrainingStopped


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'spiread_cli' has no attribute {name!r}")
    from importlib import import_module
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
