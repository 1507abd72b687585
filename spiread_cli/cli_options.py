"""The command line's shared options: their types, help texts and checks
(each command's own options stay beside it in cli.py)."""

from __future__ import annotations

from enum import Enum
from typing import Annotated, Optional

import typer


class Format(str, Enum):
    text = "text"
    json = "json"


class Mode(str, Enum):
    reverse = "reverse"
    forward = "forward"


FileArg = Annotated[str, typer.Argument(metavar="FILE", help="The .ad program, or - for standard input.")]
OfOpt = Annotated[Optional[str], typer.Option("--of", metavar="NAME", help="The output: a bound name.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="NAME=VALUE", help="Replace a binding: a number, a literal, or a .npy/.npz/.csv/.json path "
                                        "(repeatable). --set FILE.npz binds each array in it by its name.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="text for people, json for scripts.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Treat warnings (inf, nan) as errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")]


def name_lists(values: list[str] | None) -> list[str] | None:
    """`--wrt a,b` is `--wrt a --wrt b`; an empty name (`--wrt ''`, an
    empty shell variable, or `--wrt a,,b`) is refused, not read as no --wrt
    or dropped."""
    from .diagnostics import listed_names
    if not values:
        return values
    names = listed_names(values)
    if names is None:
        empty = next(value for value in values if listed_names([value]) is None)
        raise typer.BadParameter(f"{empty!r} holds an empty name; give names, e.g. `--wrt w` or `--wrt a,b`")
    return names


WrtOpt = Annotated[Optional[list[str]], typer.Option(
    "--wrt", metavar="NAME", callback=name_lists,
    help="Differentiate by this value (repeatable, or a,b). Default: the .backward(...) names, else every input "
         "the output depends on.")]


class Backend(str, Enum):
    numpy = "numpy"
    dask = "dask"


BackendOpt = Annotated[Backend, typer.Option(
    "--backend", help="numpy: everything in this process's memory. dask: the data's rows in chunks, run by Dask "
                      "(pip install \".[dask]\" in spiread's checkout; docs/scaling.md).")]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    "--scheduler", metavar="ADDRESS", help="With --backend dask: a Dask scheduler, tcp://host:8786. "
                                           "Default: Dask's threads in this process.")]
ChunkRowsOpt = Annotated[Optional[int], typer.Option(
    "--chunk-rows", metavar="N", min=1, help="With --backend dask: rows per chunk. Default: chosen from the memory "
                                             "available (docs/scaling.md).")]
PersistOpt = Annotated[bool, typer.Option(
    "--persist", help="With --backend dask: keep each chunk's recording in memory between training steps.")]


def backend_options(backend: Backend, scheduler: str | None, chunk_rows: int | None, persist: bool):
    """dask_backend.Options for `--backend dask`, else None. The options of
    the dask backend without it are a usage error, not silently ignored."""
    from .diagnostics import usage_error
    if backend == Backend.numpy:
        given = [name for name, v in (("--scheduler", scheduler), ("--chunk-rows", chunk_rows),
                                      ("--persist", persist)) if v]
        if given:
            raise usage_error(f"`{given[0]}` is an option of `--backend dask`", ["add `--backend dask`"])
        return None
    from .dask_backend import Options
    return Options(scheduler, chunk_rows, persist)
