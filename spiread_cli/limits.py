"""Resource limits: how large a value may be before spiread refuses it.

Every allocation whose size the user controls (a constructor's result, an
op's result, a data file's declared contents) is checked here first, so an
oversized request is a located error rather than an out-of-memory crash.
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from .diagnostics import Span, SpireadError, shape_str

FALLBACK_BYTES = 8 << 30

# os.environ.get costs about 1 µs for a name that is not set (os.environ's __getitem__ raises a KeyError
# inside), and a kept call asks for SPIREAD_MAX_BYTES up to three times (its signature, its size checks):
# the mapping os.environ keeps, of names and values encoded as it gave them to putenv, is asked instead.
_CONFIGURED = os.environ.encodekey("SPIREAD_MAX_BYTES")


def configured_limit() -> str | None:
    """SPIREAD_MAX_BYTES as os.environ holds it now, or None (not set)."""
    held = os.environ._data.get(_CONFIGURED)
    return None if held is None else os.environ.decodevalue(held)


def max_bytes(nbytes: int | None = None) -> int:
    """The largest result allowed, in bytes: SPIREAD_MAX_BYTES, else half of
    the memory available now (`available_bytes`; for a request of `nbytes`,
    a reading a moment old where the request is small next to it)."""
    configured = configured_limit()
    if configured:
        try:
            limit = float(configured)
        except ValueError:
            limit = math.nan
        if not (math.isfinite(limit) and limit >= 0):
            raise SpireadError(f"SPIREAD_MAX_BYTES={configured!r} is not a number of bytes",
                               notes=["e.g. SPIREAD_MAX_BYTES=2e9 for 2 GB"], exit_code=2)
        return int(limit)
    return available_bytes(nbytes) // 2


# Reading /proc/meminfo costs about 30 µs, which a kept call whose sweep is sized by it (tangents over
# SURELY_AVAILABLE_BYTES: an n = 1,000 Jacobian, 350 µs) paid at every call. A reading is used again
# for MEMINFO_SECONDS, and only for a request of at most 1/SMALL_SHARE of it, which passes against a
# reading made now too unless nearly all that memory (31/32) went within the moment; a larger one is
# checked against memory as it is now (a second 4 GB result within the moment sees the first one's gone).
MEMINFO_SECONDS = 0.1
SMALL_SHARE = 64
_reading = (-math.inf, FALLBACK_BYTES * 2)  # (when, bytes available): one object, never seen half made


def available_bytes(nbytes: int | None = None) -> int:
    """The memory available (Linux's MemAvailable; elsewhere twice
    FALLBACK_BYTES): read now, or, for a request of `nbytes` at most
    1/SMALL_SHARE of a reading made within MEMINFO_SECONDS, that reading."""
    global _reading
    now = time.monotonic()
    read_at, available = _reading
    if nbytes is not None and now - read_at < MEMINFO_SECONDS and nbytes * SMALL_SHARE <= available:
        return available
    available = FALLBACK_BYTES * 2
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    _reading = (now, available)
    return available


# Half the memory available is more than this on any machine that has run a
# program so far, so only a configured SPIREAD_MAX_BYTES can refuse a request
# under it: a hot path (a sparsity pattern's nodes) need not read /proc/meminfo.
SURELY_AVAILABLE_BYTES = 8 << 20


def fits_anyway(nbytes: int) -> bool:
    """`nbytes` is within the limit whatever the memory available now."""
    return nbytes == 0 or (nbytes <= SURELY_AVAILABLE_BYTES and not configured_limit())


def limit_for(nbytes: int) -> int:
    """The limit to size requests of up to `nbytes` against: `max_bytes(nbytes)`,
    or, where `nbytes` fits anyway, SURELY_AVAILABLE_BYTES, which refuses
    none of them and sizes batches as the limit would, without reading
    /proc/meminfo (about 30 µs, several times per Jacobian or Hessian)."""
    return SURELY_AVAILABLE_BYTES if fits_anyway(nbytes) else max_bytes(nbytes)


def human_bytes(n: int) -> str:
    """1.5 GB; exact integer arithmetic, so a size of 10³⁰⁰ bytes prints too."""
    n = int(n)
    units = ("bytes", "KB", "MB", "GB", "TB", "PB")
    for power, unit in enumerate(units):
        if n < 1024 ** (power + 1):
            return f"{n} bytes" if power == 0 else f"{n / 1024 ** power:.1f} {unit}"
    return f"{n / 1024 ** 5:.3g} PB" if n < 1024 ** 100 else "more than 10³⁰⁰ PB"


LIMIT_NOTE = "set SPIREAD_MAX_BYTES (in bytes) to raise the limit"


def check_shape(shape: Iterable[int], what: str | Callable[[], str], span: Span | None,
                limit: int | None = None, notes: tuple[str, ...] = ()) -> None:
    """Refuse a float64 array of `shape` larger than the limit; `what` names
    it in the message (`zeros(3, 4)`, a file), or makes that name only when it
    is needed (quoting source text for every op of a long chain would cost
    time quadratic in its length); `notes` follow the usual one."""
    shape = tuple(map(int, shape))
    check_bytes(math.prod(shape) * 8, lambda: f"{what() if callable(what) else what} would be {shape_str(shape)}",
                span, limit, notes)


def check_bytes(nbytes: int, what: str | Callable[[], str], span: Span | None,
                limit: int | None = None, notes: tuple[str, ...] = ()) -> None:
    """Refuse to hold `nbytes` at once when that is more than the limit: the
    one sizing check every allocation whose size the user controls goes
    through (`check_shape` for a single array). `what` (or what it makes, only
    when needed) says what would be held and how big, as the message's start:
    "`zeros(3, 4)` would be 3×4"."""
    limit = limit_for(nbytes) if limit is None else limit
    if nbytes > limit:
        what = what() if callable(what) else what
        raise SpireadError(f"{what} ({human_bytes(nbytes)}), more than the limit of {human_bytes(limit)}", span,
                           [LIMIT_NOTE, *notes])


@contextmanager
def no_cyclic_gc() -> Iterator[None]:
    """Loading a program (parsing, recording) allocates many long-lived
    objects (tokens, AST nodes, spans, tape nodes) and no reference cycles, so
    the cyclic collector would only re-scan the growing AST and tape again and
    again: with it on, a third of recording time went there, and parse time
    grew faster than the program. Whatever cyclic garbage a load does make is
    collected as usual once it is on again."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


# glibc's malloc gives an array above M_MMAP_THRESHOLD (128 KB at first) pages
# of its own from mmap, and returns freed heap memory to the system above
# M_TRIM_THRESHOLD; each new page then costs a page fault when first written.
# A derivative sweep makes and drops arrays of the same few sizes op after op,
# so with those defaults much of a Hessian's or a Jacobian's time is page
# faults (several times the arithmetic on a loaded machine:
# docs/performance.md). Raised once, by the sweeps that batch directions.
REUSED_BYTES = 256 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_reusing = False


def reuse_freed_memory() -> None:
    """From now on let malloc serve arrays up to REUSED_BYTES from memory
    this process freed, and keep up to that much freed memory rather than
    return it to the system (glibc on Linux only; not when the user has set
    malloc's own variables: MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
    GLIBC_TUNABLES with malloc)."""
    global _reusing
    if _reusing:
        return
    _reusing = True
    chosen = ("MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ
              or "malloc" in os.environ.get("GLIBC_TUNABLES", ""))
    if chosen or not sys.platform.startswith("linux"):
        return
    import ctypes
    try:
        libc = ctypes.CDLL(None)
        if hasattr(libc, "gnu_get_libc_version"):
            libc.mallopt(_M_MMAP_THRESHOLD, REUSED_BYTES)
            libc.mallopt(_M_TRIM_THRESHOLD, REUSED_BYTES)
    except (OSError, AttributeError):
        pass
