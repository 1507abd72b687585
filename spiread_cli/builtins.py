"""How a builtin is declared and its calls checked. Builtin functions
(`zeros`, `load`, `onehot`, …: builtin_functions.py) and method sugar
(`row`, `select`, `mapRowsToScalar`, …: builtin_methods.py) are what a
program can call that is not an op of the table itself.

Each entry is a `Builtin`, a body with its signature — how many positional
arguments it takes and which keywords — and `check_arguments`, the one
routine that checks every call (table ops' methods included), refuses a
call that does not fit before the body runs. Bodies turn their arguments
into constants or into table ops recorded through the interpreter's
`apply`: what they may ask of it is the `Elaborator` protocol. A word other
languages spell otherwise is pointed at spiread's (`other_spelling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from .diagnostics import Span, SpireadError, did_you_mean
from .ops import Op
from .values import Arg, Function


class Elaborator(Protocol):
    """What a builtin asks of the interpreter that calls it
    (`interpreter.Interpreter`, the layer above, is the one implementation)."""
    source: Any                        # diagnostics.Source: the program's text
    base_dir: Path                     # where relative file names resolve
    loader: Callable                   # reads a data file: (path, span) -> array
    printed: list[str]                 # `println` lines, in program order
    jet_dim: tuple[int, Span] | None   # from `given jd: JetDim = JetDim(n)`
    max_bytes: int

    def text(self, node) -> str: ...
    def tensor(self, arg: Arg) -> Any: ...
    def read(self, value: Any) -> np.ndarray: ...
    def apply(self, op: Op, operands: list[Arg], params: dict, span: Span, at: Span, label: str) -> Any: ...
    def check_size(self, shape, span: Span, at: Span) -> None: ...
    def number(self, arg: Arg, what: str) -> float: ...
    def integer(self, arg: Arg, what: str) -> int: ...
    def integers(self, arg: Arg, what: str) -> np.ndarray: ...
    def made(self, kind: str, seed: int = 0, read: np.ndarray | None = None) -> Any: ...
    def made_of_positions(self, arg: Arg) -> bool: ...
    def selection(self, receiver: Arg, args: list[Arg], call, op_name: str) -> Any: ...
    def inline(self, function: Function, args: list[Arg], call, keywords: dict[str, Arg] | None = None) -> Any: ...
    def inline_tentatively(self, function: Function, args: list[Arg], call, keep: Callable) -> Any: ...
    def array_literal(self, items: list[Arg], node) -> Any: ...

ANY = range(0, 1 << 30)


@dataclass(frozen=True, slots=True)
class Builtin:
    """body(interpreter, positional args, keyword args, call) -> a value."""
    body: Callable
    counts: tuple[int, ...] | range      # how many positional arguments it takes
    keywords: tuple[str, ...] = ()
    # Takes its pieces one by one, `hstack(a, b)`, or as numpy does, in one
    # list or tuple, `hstack([a, b])`: the same call.
    pieces: bool = False


def check_arguments(what: str, counts: tuple[int, ...] | range, given: int, at: Span | None,
                    keywords: dict[str, Arg] | None = None, allowed: tuple[str, ...] = ()) -> None:
    """Refuse a call whose arguments do not fit its signature. `what` is how
    the callee is written in messages: `` `zeros` ``, `` `.pow` ``."""
    extra = sorted(set(keywords) - set(allowed)) if keywords else ()
    if extra:
        raise SpireadError(f"{what} has no argument `{extra[0]}`", at, did_you_mean(extra[0], allowed))
    if given in counts:
        return
    if isinstance(counts, range):
        wanted, most = f"at least {counts.start}", counts.start
    else:
        wanted, most = " or ".join(str(c) for c in counts), max(counts)
    wanted = "no arguments" if counts == (0,) else f"{wanted} argument{'s' * (most != 1)}"
    raise SpireadError(f"{what} takes {wanted}, got {given}", at)



# What numpy, PyTorch and Scala call words that spiread spells otherwise:
# an unknown method or function with one of these names is pointed at
# spiread's words, rather than at whatever is spelled closest (`x.amax` was
# offered `max`, and `x.max`, before there was one, `map`). Keyed by the
# name as written, in lower case.
_EXTREMES = {word: (f"x.{word}", f"X.row{word.capitalize()}", f"X.col{word.capitalize()}", f"{word}imum(a, b)")
             for word in ("max", "min")}
OTHER_SPELLINGS: dict[str, tuple[str, ...]] = {
    **_EXTREMES, "amax": _EXTREMES["max"], "amin": _EXTREMES["min"], "fmax": _EXTREMES["max"][3:],
    "fmin": _EXTREMES["min"][3:],
    **{f"arc{f}": (f"x.a{f}",) for f in ("sin", "cos", "tan", "sinh", "cosh", "tanh")},
    "prod": ("x.product", "X.rowProduct", "X.colProduct"),
    "logsumexp": ("x.logSumExp", "X.rowLogSumExp", "X.colLogSumExp"),
    "softmax": ("X.softmaxRows",), "log_softmax": ("X.logSoftmaxRows",), "logsoftmax": ("X.logSoftmaxRows",),
    "log_sigmoid": ("x.logSigmoid",), "logsigmoid": ("x.logSigmoid",),
    "clip": ("x.clampMin(lo).clampMax(hi)",), "clamp": ("x.clampMin(lo).clampMax(hi)",),
    "mod": ("x % y",), "remainder": ("x % y",), "fmod": ("x % y",), "t": ("x.T",), "absolute": ("x.abs",),
    "negative": ("-x",), "greater": ("x > y",), "less": ("x < y",), "equal": ("x == y",), "not_equal": ("x != y",),
    "greater_equal": ("x >= y",), "less_equal": ("x <= y",), "nansum": ("x.sum",),
}


def other_spelling(name: str) -> tuple[str, ...]:
    """The note for a word spiread spells otherwise, or nothing."""
    words = [f"`{w}`" for w in OTHER_SPELLINGS.get(name.lower(), ())]
    if not words:
        return ()
    return (f"spiread writes it {', '.join(words[:-1])} or {words[-1]}" if len(words) > 1
            else f"spiread writes it {words[0]}",)
