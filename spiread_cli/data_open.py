"""Opening a data file safely, and naming it in messages: what every data
reader (data_npy.py, data_text.py) shares.

Data files may be hostile or careless, so only regular files are read (a
FIFO would block forever, a device never ends), and a reader's failure is an
`Unreadable` in words for the file's owner, which the caller turns into a
SpireadError naming the file.
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

from .diagnostics import SpireadError, Span

SUFFIXES = (".npy", ".npz", ".csv", ".tsv", ".txt", ".json")
TEXT_SUFFIXES = (".csv", ".tsv", ".txt")
SET_PATH_SUFFIXES = SUFFIXES + (".zarr",)  # `--set NAME=VALUE` reads VALUE as a path (.zarr: --backend dask only)

CHUNKS_NOTE = ("for data larger than memory, `--backend dask` reads .npy, .zarr and text (.csv, .tsv, .txt) "
               "files a chunk of rows at a time (docs/scaling.md)")


def shown(path) -> str:
    """A path as messages show it: relative to the working directory when inside it."""
    path = Path(path)
    try:
        text = str(Path(os.path.abspath(path)).relative_to(Path.cwd()))  # links not followed: the name given
    except (ValueError, OSError):
        text = str(path)
    return clip(text, 200)


def clip(text: str, width: int = 40) -> str:
    """At most `width` characters of `text` from a file, with its control characters visible."""
    text = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return text if len(text) <= width else text[:width - 1] + "…"


class Unreadable(Exception):
    """Why a data file cannot be read, in words for its owner."""


def open_regular(path: Path, prefix: str, span: Span | None) -> io.BufferedReader:
    """`path` opened for reading if (after following links) it is a regular file."""
    try:
        # O_NONBLOCK: opening a FIFO with no writer would otherwise wait forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise SpireadError(f"{prefix}: no such file", span) from None
    except OSError as err:
        raise SpireadError(f"{prefix}: {err.strerror or err}", span) from None
    except ValueError:  # a NUL byte in the name
        raise SpireadError(f"{prefix}: a file name cannot hold a NUL byte", span) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise SpireadError(f"{prefix}: it is a directory", span)
        what = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
                else "a socket" if stat.S_ISSOCK(mode) else "something")
        raise SpireadError(f"{prefix}: it is {what}, not a regular file", span)
    return os.fdopen(fd, "rb")
