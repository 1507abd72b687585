"""The Python API's boundary (program.py's calls): what a caller passes is
checked as Python (a TypeError names the argument), and what the caller gets
back is its own (floats, fresh float64 arrays); errors leave through
`front_door` without spiread's frames.
"""

from __future__ import annotations

import functools
import io
import numbers
import sys
import threading
from collections.abc import Mapping
from contextlib import nullcontext
from os import PathLike
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable, ParamSpec, TypeVar, Union

import numpy as np

from .diagnostics import BEYOND_FLOAT64, FRONT_END, PYTHON, SpireadError, did_you_mean, listed_names, option

# What a binding may be given as: a number, nested lists of numbers, or
# anything numpy reads as an array of real numbers (rank 0, 1 or 2).
ArrayLike = Union[float, int, list[Any], tuple[Any, ...], np.ndarray]
P = ParamSpec("P")
T = TypeVar("T")
# What a result is: a float for a scalar, else a float64 array the caller owns.
Value = Union[float, np.ndarray]


def front_door(call: Callable[P, T]) -> Callable[P, T]:
    """The Python API's boundary, around each public call: messages name
    what a Python user wrote (`wrt="w"`, not `--wrt w`: diagnostics.option),
    and an error of the user's (a SpireadError, or a TypeError from
    `type_error`) is raised from here without spiread's own frames, so the
    traceback shows the caller's line, then the located message."""
    @functools.wraps(call)
    def public(*args: P.args, **kwargs: P.kwargs) -> T:
        asking = FRONT_END.set(PYTHON)
        try:
            return call(*args, **kwargs)
        except SpireadError as err:
            print_lines(err.printed)  # what the program's println wrote before it failed
            raise err.with_traceback(None) from None
        except TypeError as err:
            if not getattr(err, "spiread_argument", False):
                raise  # a bug of ours: its traceback is what a report needs
            raise err.with_traceback(None) from None
        finally:
            FRONT_END.reset(asking)
    return public


def type_error(argument: str, value: object, expected: str, found: str | None = None) -> TypeError:
    """`of=3: a name is a string, not int`: an argument of the wrong type
    (or holding `found`), for `front_door` to raise."""
    import reprlib
    error = TypeError(f"{argument}={reprlib.repr(value)}: {expected}, not {found or type(value).__name__}")
    error.spiread_argument = True
    return error


def checked_choice(argument: str, value: object, choices: Iterable[str], what: str) -> str:
    """A keyword argument naming one of `choices` (`mode="forward"`): a
    string, else a TypeError; one of them, else a usage error."""
    if type(value) is str and value in choices:  # the usual call: no message made
        return value
    listed = [f'"{choice}"' for choice in choices]
    said = f"{what} is " + (" or ".join(listed) if len(listed) == 2 else "one of " + ", ".join(listed))
    if not isinstance(value, str):
        raise type_error(argument, value, said)
    if value not in choices:
        raise SpireadError(f"{option(argument, value)}: {said}", exit_code=2)
    return value


def as_binding(value: ArrayLike, name: str, keyword: str = "set") -> np.ndarray:
    """A value given for `name` (as `keyword` says: a binding, "set", or an
    HVP's direction, "hvp") as the float64 array of rank ≤ 2 the program
    gets: always a copy, so nothing the caller holds is shared with the run."""
    if type(value) is np.ndarray and value.dtype.kind in "biuf" and value.ndim <= 2:
        return np.array(value, dtype=np.float64, order="C", copy=True)  # the usual call: no more to check
    what = option(keyword, name)
    try:
        raw = np.asarray(value)
    except ValueError as err:
        problem = "its rows differ in length" if "inhomogeneous" in str(err) else first_line(err)
        raise SpireadError(f"{what}: {problem}", exit_code=2) from None
    if raw.dtype.kind == "O" and all(python_number(x) for x in raw.flat):
        raw = as_floats(raw, what)  # Python numbers numpy keeps as objects: 2**70, Fraction, Decimal
    if raw.dtype.kind not in "biuf":
        raise SpireadError(f"{what}: the value must be real numbers, not {kind_of(raw)}", exit_code=2)
    if raw.ndim > 2:
        raise SpireadError(f"{what}: the value is {raw.ndim}-dimensional; spiread values are scalars, "
                           "vectors and matrices", exit_code=2)
    return np.array(raw, dtype=np.float64, order="C", copy=True)


def checked_overrides(bindings: object, more: dict[str, ArrayLike], of: object,
                      names: list[str], argument: str = "bindings") -> dict[str, np.ndarray]:
    """A call's bindings (a mapping passed first, its parameter called
    `argument`, and keyword arguments) as overrides of the program's `names`,
    and its `of`, checked."""
    if bindings is not None and not isinstance(bindings, Mapping):
        raise type_error(argument, bindings, f"the {argument} passed first are a mapping of names to values, "
                                             "e.g. {\"w\": [1, 2]}")
    given = more if bindings is None else {**bindings, **more}
    overrides = {}
    for name, value in given.items():
        checked_name(argument, given, name)
        overrides[name] = checked_binding(name, value, names)
    if of is not None and (checked_name("of", of, of) not in names):
        raise SpireadError(f"{option('of', of)}: the program binds no `{of}`", notes=did_you_mean(of, names, records=True),
                           exit_code=2)
    return overrides


def run_overrides(overrides: object, of: object, names: list[str],
                  row_data: bool = False) -> dict[str, np.ndarray | Path]:
    """`Program.run`'s overrides and `of`, taken as a Python call's are
    (`checked_overrides`: numbers, nested lists, arrays, each checked and
    copied; an error in the Python API's words); with `row_data`
    (`backend="dask"`), a path as a `pathlib.Path`: row data."""
    asking = FRONT_END.set(PYTHON)
    try:
        rows = {}
        if row_data and isinstance(overrides, Mapping):
            rows = {name: Path(value) for name, value in overrides.items() if isinstance(value, PathLike)}
            overrides = {name: value for name, value in overrides.items() if name not in rows}
        return {**checked_overrides(overrides, {}, of, names, "overrides"), **rows}
    finally:
        FRONT_END.reset(asking)


def checked_binding(name: str, value: ArrayLike, names: list[str], keyword: str = "set") -> np.ndarray:
    """A binding (or, `keyword` saying which, another value given for a
    name: "hvp", an HVP's direction) as the float64 array of rank ≤ 2 the
    program gets (`as_binding`): always a copy."""
    if name not in names:
        raise SpireadError(f"{option(keyword, name)}: the program binds no `{name}`", notes=did_you_mean(name, names),
                           exit_code=2)
    return as_binding(value, name, keyword)


def checked_backend(backend: object, scheduler: object, chunk_rows: object,
                    persist: object) -> tuple[str | None, int | None, bool] | None:
    """`backend="dask"`'s options (scheduler, chunk_rows, persist), checked;
    None for `backend="numpy"`, where they are an error, as on the command line."""
    if backend not in ("numpy", "dask"):
        raise SpireadError(f"{option('backend', backend)}: the backend is \"numpy\" or \"dask\"", exit_code=2)
    if scheduler is not None and not isinstance(scheduler, str):
        raise type_error("scheduler", scheduler, "a scheduler's address is a string, e.g. \"tcp://host:8786\"")
    if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, numbers.Integral)):
        raise type_error("chunk_rows", chunk_rows, "the rows per chunk are a whole number")
    if chunk_rows is not None and chunk_rows < 1:
        raise SpireadError(f"{option('chunk_rows', chunk_rows)}: a chunk needs at least one row", exit_code=2)
    if backend == "numpy":
        given = [name for name, v in (("scheduler", scheduler), ("chunk_rows", chunk_rows), ("persist", persist)) if v]
        if given:
            raise SpireadError(f"`{given[0]}=`: an option of {option('backend', 'dask')}", exit_code=2,
                               notes=[f"add {option('backend', 'dask')}"])
        return None
    return scheduler, None if chunk_rows is None else int(chunk_rows), bool(persist)


def outside_stacklevel() -> int:
    """The `stacklevel` that makes a `warnings.warn` called by this
    function's caller point at the first frame outside spiread: the line of
    the user's that called the API."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "spiread_cli":
        frame, level = frame.f_back, level + 1
    return level


def wrt_names(wrt: list[str] | str | None) -> list[str] | None:
    """`wrt` as a list of names (None for none given); "a,b" is ["a", "b"]
    (in a list too), as `--wrt a,b` is. An empty name ("", [], ",", "a,,b") is refused,
    not read as no `wrt` (the default is None) or dropped."""
    if wrt is None:
        return None
    if type(wrt) is str and wrt.isidentifier():  # the usual call, `wrt="w"`: one name, as written
        return [wrt]
    if isinstance(wrt, str):
        names = listed_names([wrt])
    elif isinstance(wrt, Iterable):
        names = [checked_name("wrt", wrt, name) for name in wrt]
        if None in names:
            raise type_error("wrt", wrt, "a name is a string", "None")
        names = listed_names(names)
    else:
        raise type_error("wrt", wrt, "the names are a string or a list of strings")
    if names is None:
        shown = f'"{wrt}"' if isinstance(wrt, str) else repr(wrt)
        raise SpireadError(f"`wrt={shown}` " + ("holds an empty name" if isinstance(wrt, str) or wrt else "names no value"), exit_code=2,
                           notes=['name one, e.g. `wrt="w"`; without `wrt` (None), `.backward(...)`\'s names are '
                                  "taken, else every input the output depends on (not for `train`)"])
    return names


def checked_name(argument: str, value: object, name: object) -> str | None:
    """A name (or None) in `value`, given for `argument`, checked to be a string."""
    if name is not None and not isinstance(name, str):
        raise type_error(argument, value, "a name is a string",
                          None if name is value else f"{name!r} ({type(name).__name__})")
    return name


def python_number(x: object) -> bool:
    """A real number of Python's own (numpy keeps 2**70, a Fraction or a Decimal as an object)."""
    from decimal import Decimal
    return isinstance(x, (numbers.Real, Decimal))


def checked_number(argument: str, value: object, optional: bool = True) -> float | None:
    """A real number (or, where `optional`, None) given for `argument`, as a
    float (Python's 2**70 is one; 10**400 is beyond a float64's range)."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise type_error(argument, value, "a number")
    try:
        return float(value)
    except OverflowError:
        import reprlib
        raise SpireadError(f"`{argument}={reprlib.repr(value)}`: the number is {BEYOND_FLOAT64}", exit_code=2) from None


def as_floats(raw: np.ndarray, what: str) -> np.ndarray:
    try:
        return raw.astype(np.float64)
    except OverflowError:
        raise SpireadError(f"{what}: a number is beyond the range spiread can hold (a float64 reaches about "
                           "±1.8e308)", exit_code=2) from None


# What a result's entries are added to, making -0.0 0.0 and any value float64: a 0-d float64 array, which
# numpy adds without a Python float's conversion (half the time a call for a small result).
POSITIVE_ZERO = np.zeros(())
POSITIVE_ZERO.flags.writeable = False


def result_value(value: np.ndarray, mine: bool = False) -> Value:
    """What every call returns for a value: a float for a scalar, else a
    float64 array of the caller's own; zero is 0.0, never -0.0 (forward and
    reverse mode reach a zero by different sums: output.py's rule too).
    `mine`: the array is the call's own, which nothing else holds, and
    becomes the result in place; any other is copied."""
    if (value.ndim if type(value) is np.ndarray else np.ndim(value)) == 0:  # np.ndim's wrapper only where needed
        return float(value) + 0.0
    if mine:
        return np.add(value, POSITIVE_ZERO, out=value)  # -0.0 + 0.0 is 0.0
    return np.add(value, POSITIVE_ZERO)  # a new float64 array, in one pass


# Below this many entries a copy costs less than asking whether an array may become the result in place.
OWNED_ENTRIES = 1 << 16


def result_values(values: dict[str, np.ndarray], held: Callable[[], Iterable[np.ndarray]] | None = None,
                  signed_zeros: bool = True) -> dict[str, Value]:
    """`result_value` of each value, by name. With `held` (what gives the
    arrays the run keeps: its arguments, directions and constants, every
    value on its tape), a large float64 array that a sweep made — writeable,
    sharing memory with nothing `held` gives and with no other result kept —
    is the result in place, which saves a pass over it and its copy (a
    quarter of an n = 1,000 Jacobian); else each is copied. Not
    `signed_zeros`: the values hold no −0.0 (a sweep wrote them into +0.0
    zeros), so a result in place needs no pass at all."""
    owned: list[np.ndarray] = []
    others: list[np.ndarray] | None = None
    results = {}
    for name, value in values.items():
        mine = False
        if held is not None and type(value) is np.ndarray and value.size >= OWNED_ENTRIES \
                and value.dtype == np.float64 and value.flags.writeable:
            others = list(held()) if others is None else others
            mine = not any(np.may_share_memory(value, other) for other in (*others, *owned))
            if mine:
                owned.append(value)
        results[name] = value if mine and not signed_zeros else result_value(value, mine)
    return results


def print_lines(printed: list[str]) -> None:
    """The program's `println` lines, on the caller's standard output (a notebook cell's output)."""
    if printed:
        print("\n".join(printed), flush=True)


def kind_of(array: np.ndarray) -> str:
    return {"U": "text", "S": "text", "c": "complex numbers", "O": "Python objects",
            "M": "dates", "m": "time spans"}.get(array.dtype.kind, f"{array.dtype} values")


def first_line(err: object) -> str:
    return (str(err).strip().splitlines() or [""])[0]


def plain_text(renderable: Any) -> str:
    """A rich renderable as plain text, unwrapped (as the command line prints it to a pipe)."""
    from rich.console import Console
    out = io.StringIO()
    Console(file=out, width=10_000, soft_wrap=True, color_system=None, highlight=False, force_terminal=False,
            force_jupyter=False).print(renderable)
    return "\n".join(line.rstrip() for line in out.getvalue().strip("\n").splitlines())


def interactive() -> bool:
    """In a Jupyter kernel that can show a live bar (rich draws it with
    ipywidgets), or with stderr on a terminal."""
    from importlib.util import find_spec
    from rich.console import Console
    return (Console(stderr=True).is_jupyter and find_spec("ipywidgets") is not None) or sys.stderr.isatty()


def stop_on_interrupt_here() -> ContextManager[Callable[[], bool]]:
    """The first interrupt asks training to stop after the step in progress
    (interrupts.stop_on_interrupt); signals can only be caught in the main
    thread, so elsewhere an interrupt is not asked about."""
    from .interrupts import stop_on_interrupt
    if threading.current_thread() is threading.main_thread():
        return stop_on_interrupt()
    return nullcontext(lambda: False)


def sparse_arguments(sparse: object, pattern: object, **conflicting: bool) -> None:
    """sparse= and pattern= are booleans (checked before anything asks
    whether they are true: an array's truth is an error) and, where one is
    True, one at a time, not with the `conflicting` arguments given, and
    with scipy installed."""
    if sparse is False and pattern is False:  # the usual call, at no cost
        return
    for argument, given in (("sparse", sparse), ("pattern", pattern)):
        if not isinstance(given, bool):
            raise type_error(argument, given, "True or False")
    if not (sparse or pattern):
        return
    from importlib.util import find_spec
    if sparse and pattern:
        raise SpireadError(f"{option('sparse', True)} and {option('pattern', True)} are different results: the "
                           "sparse matrix, or only where it is nonzero; give one of them", exit_code=2)
    chosen = option("sparse" if sparse else "pattern", True)
    for argument, given in conflicting.items():
        if given:
            raise SpireadError(f"{chosen} and `{argument}=` cannot go together", exit_code=2)
    if find_spec("scipy") is None:
        raise SpireadError(f"{chosen} needs scipy, which is not installed",
                           notes=['pip install scipy (or pip install ".[sparse]" in spiread\'s checkout)'], exit_code=2)


def with_sweeps(matrix, sweeps: int):
    """A sparse result (its caller's own), saying how many sweeps `sparse=True` takes; its zeros
    are 0.0, never -0.0, as `result_value` makes a dense one's."""
    if matrix.dtype == np.float64:
        matrix.data = matrix.data + 0.0
    matrix.sweeps = sweeps
    return matrix
