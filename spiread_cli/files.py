"""Output files (`--save`, `--log`, `--plot`, `--out`): checked before any
work starts, and written whole or not at all (a temporary file, renamed)."""

from __future__ import annotations

import os
import stat
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .data import SUFFIXES
from .diagnostics import usage_error

# File name endings that promise a format; an output file may have any other
# name, but not one that promises a format it is not written in.
FORMAT_SUFFIXES = set(SUFFIXES) | {".png", ".svg", ".pdf", ".jpg", ".jpeg"}


def check_output_path(path: Path, option: str, suffixes: tuple[str, ...]) -> None:
    """Refuse, before any work, an output path that cannot be written, or
    whose ending names another format (`--save w.npy` would not load as .npy)."""
    if path.suffix.lower() in FORMAT_SUFFIXES - set(suffixes):
        raise usage_error(f"`{option} {path}`: it writes {' or '.join(suffixes)}, not {path.suffix}",
                          [f"e.g. `{option} {path.with_suffix(suffixes[0])}`"])
    folder = path.parent
    if not folder.is_dir():
        raise usage_error(f"`{option} {path}`: the folder `{folder}` does not exist")
    if path.is_dir():
        raise usage_error(f"`{option} {path}`: it is a directory")
    if not os.access(folder, os.W_OK):
        raise usage_error(f"`{option} {path}`: cannot write to the folder `{folder}`")


@contextmanager
def atomic_output(path: Path):
    """Yield a binary file object whose contents replace `path` only once the
    block completes: a crash, a Ctrl-C or an error leaves `path` as it was."""
    handle = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        # Temporary files are private (0600); the result gets the permissions
        # a plain open() would give it, or keeps those of the file it replaces.
        os.chmod(handle.name, _mode_for(path))
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask
