"""What an expression evaluates to before it is on the tape.

The interpreter pairs each value with the expression that produced it
(`Arg`), so a message about an argument can always quote and point at it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tape import Node


@dataclass(slots=True)
class Const:
    """A value that depends on no input: folded now, put on the tape when used."""
    value: np.ndarray


@dataclass(slots=True)
class Pairs:
    """(row, col) index pairs: `Array((0, 0), (1, 1))`."""
    rows: np.ndarray
    cols: np.ndarray


@dataclass(slots=True)
class Symbol:
    """A reduction named as an argument: `sum`, `ReductionOps.Sum`."""
    name: str


@dataclass(slots=True)
class Text:
    value: str


@dataclass(slots=True)
class TupleValue:
    items: list[Arg]


Value = Node | Const | Pairs | Symbol | Text | TupleValue


@dataclass(slots=True)
class Arg:
    """A value and the expression (an AST node) it came from."""
    value: Value
    expr: object
