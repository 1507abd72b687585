"""Output files (`--save`, `--log`, `--plot`, `--out`): the one place that
checks and writes them. Checked before any work starts (a path that cannot
be written, or that is also an input or another output, is refused, except
`--save` over the `--set` archive it continues), and written whole or not at
all (a temporary file, renamed), even when a signal arrives during the
write. A device, a pipe, or the file our standard output or error goes to
(`--log /dev/stdout > out.txt`) is written in place, after what is there."""

from __future__ import annotations

import io
import os
import stat
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .data import parse_set_option
from .data_open import SUFFIXES
from .diagnostics import SpireadError, usage_error
from .interrupts import signals_deferred

# File name endings that promise a format; an output file may have any other
# name, but not one that promises a format it is not written in.
FORMAT_SUFFIXES = set(SUFFIXES) | {".png", ".svg", ".pdf", ".jpg", ".jpeg", ".py", ".onnx"}


@dataclass(frozen=True)
class Output:
    option: str                  # "--save"
    path: Path
    suffixes: tuple[str, ...]    # the formats it is written in, the first the usual one
    # May replace a `--set` data file: `train --set W=w.npz --save w.npz`
    # continues training in place; the data are read whole before the first
    # step, and the save replaces the file atomically.
    continues: bool = False
    # Written beside another output, named after it (an exported module's
    # companion archive): said, and another name suggested, through that one.
    beside: "Output | None" = None

    def __str__(self) -> str:
        if self.beside is not None:
            return f"{self.beside}'s companion archive `{self.path}`"
        # An option of the command line (`--save w.npz`), or of the Python API (`out="m.py"`).
        return f"`{self.option} {self.path}`" if self.option.startswith("-") else f'`{self.option}="{self.path}"`'


@dataclass(frozen=True)
class Input:
    role: str      # "the program", "`--set W=…`'s data"
    path: Path
    data: bool     # a `--set` data file (else the program)


def command_inputs(file: str, sets: list[str], loaded: list[Path] = ()) -> list[Input]:
    """The files a command reads: the program, `--set` data files and the
    files its `load("…")` calls name (`loaded`)."""
    inputs = [Input("the program", Path(file), False)] if file != "-" else []
    inputs += [Input("a file the program loads", path, False) for path in loaded]
    for option in sets:
        try:
            name, text = parse_set_option(option)
        except SpireadError:
            continue  # reported when the options are read
        if Path(text).suffix.lower() in SUFFIXES:
            inputs.append(Input(f"`--set {name}=…`'s data" if name else f"`--set {text}`'s data", Path(text), True))
    return inputs


def archive_path(path: Path | None) -> Path | None:
    """Where `--save PATH` writes: PATH, with `.npz` added when it does not
    end so, as numpy.savez adds it, so that `--set` reads the file back as
    the archive it is (a device or pipe is written as named, and an ending
    that promises another format is refused by `check_outputs`)."""
    if path is None or path.suffix.lower() in FORMAT_SUFFIXES or _in_place(path):
        return path
    return path.with_name(path.name + ".npz")


def check_outputs(outputs: list[Output], inputs: list[Input]) -> None:
    """Refuse, before any work, an output path that cannot be written, whose
    ending names another format (`--save w.npy` would not load as .npy), or
    that is also an input or another output (it would destroy the one or
    overwrite the other)."""
    for output in outputs:
        _check_writable(output)
    for i, output in enumerate(outputs):
        if _in_place(output.path):  # `--save /dev/null --log /dev/null` overwrites nothing
            continue
        for role, path, data in ((i.role, i.path, i.data) for i in inputs):
            if _same_file(output.path, path) and not (data and output.continues):
                named = output.beside or output
                raise usage_error(f"{output} would overwrite {role}, `{path}`",
                                  [f"write to another file, e.g. {replace(named, path=_another_name(named))}"])
        for other in outputs[:i]:
            if _same_file(output.path, other.path):
                raise usage_error(f"{other} and {output} name the same file; one would overwrite the other")


def _check_writable(output: Output) -> None:
    path, option, suffixes = output.path, output.option, output.suffixes
    if path.suffix.lower() in FORMAT_SUFFIXES - set(suffixes):
        raise usage_error(f"{output}: it writes {' or '.join(suffixes)}, not {path.suffix}",
                          [f"e.g. `{option} {path.with_suffix(suffixes[0])}`"])
    folder = path.parent
    if not folder.is_dir():
        raise usage_error(f"{output}: the folder `{folder}` does not exist")
    if path.is_dir():
        raise usage_error(f"{output}: it is a directory")
    if not os.access(folder, os.W_OK) and not _in_place(path):
        raise usage_error(f"{output}: cannot write to the folder `{folder}`")


def _same_file(a: Path, b: Path) -> bool:
    """The same file by resolved path (`./w.ad` is `w.ad`, symbolic links
    followed), or, where both exist, by device and inode (hard links)."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _another_name(output: Output) -> Path:
    return output.path.with_name(f"{output.path.stem}-out{output.suffixes[0]}")


def _in_place(path: Path) -> bool:
    """Written in place, never replaced: a device or pipe (/dev/null, a
    FIFO), or the file our standard output or error goes to (`--log
    /dev/stdout > out.txt`: replacing out.txt would lose what else is written
    to standard output, which goes on into the file replaced)."""
    try:
        found = path.stat()
    except OSError:
        return False
    return not stat.S_ISREG(found.st_mode) or _standard_stream(found) is not None


def _standard_stream(found: os.stat_result):
    """sys.stdout or sys.stderr, if it writes to the file `found` is of."""
    for stream in (sys.stdout, sys.stderr):
        try:
            here = os.fstat(stream.fileno())
        except (AttributeError, OSError, ValueError):  # closed, or not a real file
            continue
        if (here.st_dev, here.st_ino) == (found.st_dev, found.st_ino):
            return stream
    return None


@contextmanager
def atomic_output(path: Path):
    """Yield a binary file object whose contents replace `path` only once the
    block completes: a crash, a signal or an error leaves `path` as it was
    and removes the temporary file. A failed write is a SpireadError naming
    the path and the reason. A device, a pipe, or the file a standard stream
    goes to is written in place (`_in_place`)."""
    if _in_place(path):
        # Built in memory first: an archive seeks back to write its index,
        # which a pipe cannot do and /dev/null does wrongly.
        buffer = io.BytesIO()
        yield buffer
        stream = _standard_stream(path.stat())
        with _reported(path):
            if stream is not None:  # after what the stream has written, as `>>` would
                stream.flush()
                stream.buffer.write(buffer.getvalue())
                stream.buffer.flush()
            else:
                with open(path, "wb") as f:
                    f.write(buffer.getvalue())
        return
    path = path.resolve()  # through a symbolic link: the file it points to is replaced, not the link
    with signals_deferred():  # so a signal cannot come between creating the file and knowing its name
        with _reported(path):
            handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                                 delete=False)
    try:
        with _reported(path):
            with handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            # Temporary files are private (0600); the result gets the permissions
            # a plain open() would give it, or keeps those of the file it replaces.
            os.chmod(handle.name, _mode_for(path))
            os.replace(handle.name, path)
    except BaseException:
        with signals_deferred():  # a second signal now must not leave the file behind
            Path(handle.name).unlink(missing_ok=True)
        raise


class WriteError(SpireadError):
    """An output file could not be written; `reason` is the system's word."""

    def __init__(self, path: Path, reason: str):
        # The path unquoted: a quoted one would be shortened in the middle.
        super().__init__(f"cannot write {path}: {reason}")
        self.reason = reason


@contextmanager
def _reported(path: Path):
    try:
        yield
    except OSError as err:
        raise WriteError(path, err.strerror or str(err)) from None


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# ------------------------------------------------------------ train's files


def save_values(path: Path, values: dict[str, np.ndarray]) -> None:
    """An `.npz` archive keyed by name, as `--set NAME=PATH.npz` reads it."""
    with atomic_output(path) as f:
        np.savez(f, **values)


def save_values_somewhere(path: Path, values: dict[str, np.ndarray]) -> SpireadError | None:
    """`save_values`, and when that fails, the same archive in the system's
    temporary folder: the error returned says where the values are."""
    try:
        save_values(path, values)
        return None
    except WriteError as err:
        error = err
    saved, reason = save_in_temporary_folder(Path(path).stem, values)
    note = (f"the trained values are saved in {saved} instead" if saved is not None
            else f"they could not be saved in the temporary folder either ({reason})")
    error.diagnostic = replace(error.diagnostic, notes=error.diagnostic.notes + (note,))
    return error


def save_in_temporary_folder(stem: str, values: dict[str, np.ndarray]) -> tuple[str | None, str | None]:
    """`save_values` into a new file `STEM-….npz` in the system's temporary
    folder: (its path, None), or (None, why not)."""
    rescue = None
    try:
        with signals_deferred():
            handle, rescue = tempfile.mkstemp(prefix=f"{stem}-", suffix=".npz")
        os.close(handle)
        save_values(Path(rescue), values)
        return rescue, None
    except BaseException as err:  # a signal too: no empty rescue file is left behind
        if rescue is not None:
            with signals_deferred():
                Path(rescue).unlink(missing_ok=True)
        if not isinstance(err, (OSError, WriteError)):
            raise
        return None, err.reason if isinstance(err, WriteError) else err.strerror or str(err)


@dataclass
class Written:
    """What became of train's output files."""
    done: list[str]                    # "saved W to w.npz", for the summary
    failed: list[SpireadError]
    saved: Path | None = None          # where --save wrote, if it did


def write_training_files(result, save: Path | None, log: Path | None, plot: Path | None,
                         title: str, stem: str = "spiread") -> Written:
    """--save, --log and --plot of a training result, each on its own: one
    that cannot be written does not keep the others from being written.
    Training cut short by a lost backend (status "lost") saves its values
    without --save too, in the temporary folder as `STEM-….npz`: the run
    cannot simply be repeated."""
    written = Written([], [])
    if save is None and result.status == "lost":
        saved, reason = save_in_temporary_folder(stem, result.values)
        written.done.append(f"saved {', '.join(result.names)} to {saved}" if saved is not None
                            else f"the trained values could not be saved in the temporary folder ({reason})")
    if save is not None:
        path = archive_path(save)
        error = save_values_somewhere(path, result.values)
        if error is None:
            written.saved = path
            added = " (`.npz` added, as numpy.savez adds it)" if path != save else ""
            written.done.append(f"saved {', '.join(result.names)} to {path}{added}")
        else:
            written.failed.append(error)
    for path, write, done in ((log, lambda: write_log(log, result.losses), f"wrote the losses to {log}"),
                              (plot, lambda: plot_losses(plot, result.losses, title), f"drew the loss curve in {plot}")):
        if path is not None:
            try:
                write()
                written.done.append(done)
            except WriteError as error:
                written.failed.append(error)
    return written


def write_log(path: Path, losses: list[float]) -> None:
    """`step,loss` per completed step, steps counted from 1."""
    lines = ["step,loss"] + [f"{step},{loss!r}" for step, loss in enumerate(losses, start=1)]
    with atomic_output(path) as f:
        f.write(("\n".join(lines) + "\n").encode())


def installed(module: str) -> bool:
    from importlib.util import find_spec
    return find_spec(module) is not None


def plot_losses(path: Path, losses: list[float], title: str) -> None:
    """A PNG of the loss curve (needs the optional `plot` extra: matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    figure = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.plot(range(1, len(losses) + 1), losses, color="#1f77b4", linewidth=1.8)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    # The title holds a file name, which is text, not mathtext (`$x$`).
    axes.set_title(title, fontsize=10, parse_math=False)
    axes.grid(alpha=0.3)
    with atomic_output(path) as f:
        figure.savefig(f, format="png")


# --------------------------------------------------- sparse derivatives


def save_sparse(path: Path, matrix) -> None:
    """A sparse Jacobian or Hessian (or a pattern) as the `.npz` that
    `scipy.sparse.load_npz` reads; zero is 0.0, never -0.0 (as printed)."""
    import scipy.sparse as sp
    matrix = sp.csr_matrix(matrix)
    if matrix.dtype.kind == "f":
        matrix.data = matrix.data + 0.0
    with atomic_output(path) as f:
        sp.save_npz(f, matrix)


def plot_pattern(path: Path, pattern, title: str) -> None:
    """A spy plot of a sparsity pattern (needs the optional `plot` extra: matplotlib)."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    figure = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    axes = figure.subplots()
    m, n = pattern.shape
    marker = max(0.5, min(6.0, 300.0 / max(m, n, 1)))
    axes.spy(pattern, markersize=marker, color="#1f77b4")
    axes.set_title(f"{title}: {pattern.nnz} nonzeros of {m}×{n}", fontsize=10, parse_math=False)
    with atomic_output(path) as f:
        figure.savefig(f, format=path.suffix.lstrip(".").lower() if path.suffix else "png")
