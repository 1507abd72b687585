"""What an expression evaluates to before it is on the tape.

The interpreter pairs each value with the expression that produced it
(`Arg`), so a message about an argument can always quote and point at it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tape_nodes import Node


NO_CHUNKS = "use --backend numpy (everything in memory)"  # the note of a refusal to run by row chunks


@dataclass(frozen=True, slots=True)
class Made:
    """How a row chunk's recording (chunk_plan.Job.record) made a constant
    that may run along the data rows; the ops on it are recorded, not
    folded, so the plan judges each as it judges the data's. `kind`: "rows",
    the data rows as read, their count, or entries alike in any rows
    (`ones(rows(X))`); "arange", "normal", "uniform", positions or draws along
    them, which a chunk makes again as its rows of the whole program's
    (builtin_functions.rows_of_made); "derived", made from those while
    recording (`onehot(arange(rows(X)), k)`), which it cannot; "copy", a
    name bound to what ops on such constants compute (node `of`): an input
    leaf, as numpy's folding makes it, holding that node's value."""
    kind: str
    seed: int = 0           # a draw's
    of: int | None = None   # a copy's

    @property
    def positions(self) -> bool:
        """Whether a chunk's own making differs from its rows of the whole."""
        return self.kind in ("arange", "normal", "uniform", "derived")


@dataclass(slots=True)
class Const:
    """A value that depends on no input: folded now, put on the tape when used.
    `fixed`: made of the program's literals alone, so no task sets it again
    (`Node.fixed`); a file's data or a count of rows is not. `made`: in a
    row chunk's recording, how it was made from the rows (Made)."""
    value: np.ndarray
    fixed: bool = False
    made: Made | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape


@dataclass(slots=True)
class Pairs:
    """(row, col) index pairs: `Array((0, 0), (1, 1))`."""
    rows: np.ndarray
    cols: np.ndarray


@dataclass(slots=True)
class SliceValue:
    """`a:b:k` inside `x[...]`: its parts as written (None where left out)."""
    start: Arg | None
    stop: Arg | None
    step: Arg | None


@dataclass(slots=True)
class Symbol:
    """A reduction named as an argument: `sum`, `ReductionOps.Sum`."""
    name: str


@dataclass(slots=True)
class Text:
    """A string: written in quotes (it may name a file, for `load`), or a
    value's text from `.printMat` (`written` False), which names nothing."""
    value: str
    written: bool = True


@dataclass(slots=True)
class TupleValue:
    items: list[Arg]


def is_pieces(value) -> bool:
    """A tuple of values that is not a list of numbers: `split`'s pieces."""
    return isinstance(value, TupleValue) and not all(
        isinstance(a.value, Const) and a.value.value.ndim == 0 for a in value.items)


@dataclass(slots=True)
class Record:
    """`g = f.backward((a = a))`: the gradients of `f`, one tape node per key."""
    fields: dict[str, Node]


@dataclass(slots=True)
class Function:
    """A `def` or a lambda: inlined at each call. `scope` is what a lambda
    sees of the block it was written in (a `def` sees the program's names)."""
    name: str
    params: list                   # ast.Name
    body: object                   # an expression or an ast.Block
    scope: dict | None = None


@dataclass(slots=True)
class Jet:
    """A forward-mode number, spire's `Jet`: a real part and one
    infinitesimal part per JetDim direction (`tangents[k]`)."""
    value: np.ndarray
    tangents: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape


@dataclass(slots=True)
class JetDim:
    """`JetDim(n)`: how many infinitesimal parts a Jet carries."""
    n: int


@dataclass(slots=True)
class Unit:
    """What `println(…)` gives: nothing."""


Value = Node | Const | Pairs | SliceValue | Symbol | Text | TupleValue | Record | Function | Jet | JetDim | Unit


def scala_double(x: float) -> str:
    """A Double as Scala (Java) prints it: `100.0`, `1.0E-5`, `NaN`, `Infinity`."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    if x == 0 or 1e-3 <= abs(x) < 1e7:
        return repr(float(x))  # positional in this range, shortest round-trip digits, as Java's
    mantissa, exponent = np.format_float_scientific(x, unique=True, trim="0").split("e")
    return f"{mantissa}E{int(exponent)}"


def jet_text(value: np.ndarray, tangents: np.ndarray) -> str:
    """spire's `Jet.toString`, `(100.0 + [20.0]h)`: a Jet's real part and its infinitesimal parts."""
    return f"({scala_double(float(value))} + [{', '.join(scala_double(float(t)) for t in tangents)}]h)"


@dataclass(slots=True)
class Arg:
    """A value and the expression (an AST node) it came from."""
    value: Value
    expr: object
