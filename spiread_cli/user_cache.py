"""This user's own cache folder: files read back as trusted, so kept where
no one else can put them.

What is read from here is trusted (the parse tables are unmarshalled), so
nothing of it lives in the shared temporary folder, where another local user
can make a file at a predictable name. The folder is `$XDG_CACHE_HOME/spiread`,
else `~/.cache/spiread`, made owner-only, and used only while it is a real
folder of this user's that no one else may write. Files are opened relative
to its descriptor (it cannot be swapped between the check and the open),
non-blocking (a named pipe at a file's name cannot hang the run), and read
only when they are regular files of this user's; they are written
owner-only and whole. Where owners cannot be checked (Windows) there is no
cache.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress

_MOST_BYTES = 16 << 20  # what is kept here is small; anything far larger is not ours


def read(name: str) -> bytes | None:
    """The bytes of the cached file `name`, or None when there is none we can trust."""
    folder = _open_folder()
    if folder is None:
        return None
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW, dir_fd=folder)
    except OSError:
        return None
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as f:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode) or not _only_ours(status) or status.st_size > _MOST_BYTES:
            return None
        return f.read(_MOST_BYTES)


def write(name: str, data: bytes) -> None:
    """Caches `data` as `name`, whole or not at all (another process may be
    reading it), owner-only, never through a file or link already at the
    partial file's name. A failure (no room, a read-only home) leaves no
    file: whoever asks next makes the data again."""
    folder = _open_folder()
    if folder is None:
        return
    partial = f"{name}.{os.getpid()}"
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(partial, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError:
        with suppress(OSError):
            os.remove(partial, dir_fd=folder)
    finally:
        os.close(folder)


def _open_folder() -> int | None:
    """A descriptor of the cache folder, made owner-only if missing; None
    where it is not a real folder of this user's that only this user may
    write (or owners cannot be checked here)."""
    if not hasattr(os, "getuid") or os.open not in os.supports_dir_fd:
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = os.path.join(base, "spiread")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        folder = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except (OSError, ValueError):
        return None
    if not _only_ours(os.fstat(folder)):
        os.close(folder)
        return None
    return folder


def _only_ours(status: os.stat_result) -> bool:
    """Whether a file or folder is this user's and no one else may write it."""
    return status.st_uid == os.getuid() and not status.st_mode & 0o022
