"""Reaching Dask, for the row chunks (dask_backend.py) and the front door's
checks (program.py): installed or not, the local threaded scheduler, a
cluster's handshake, a scheduler lost mid-run, Dask's logs kept off the
terminal."""

from __future__ import annotations

from .diagnostics import BackendLost, SpireadError, option, usage_error

# dask[array,distributed] and zarr: spiread's `dask` extra, for a checkout or not.
INSTALL_DASK = 'pip install "dask[array,distributed]" zarr (or pip install ".[dask]" in spiread\'s checkout)'


def require_dask() -> None:
    from importlib.util import find_spec
    if find_spec("dask") is None or find_spec("distributed") is None:
        raise usage_error(f"{option('backend', 'dask')} needs Dask, which is not installed", [INSTALL_DASK])


def dask_threaded():
    """Dask's local threaded scheduler (imported when first used)."""
    import dask.threaded
    return dask.threaded


CONNECT_SECONDS = 10.0   # to reach a scheduler and hear its handshake
GREETING_SECONDS = 2.0   # a scheduler greets at once; silence this long: ask as a browser would


def connect(address: str):
    """A distributed Client for `--scheduler ADDRESS`, or a located error:
    nothing reachable there, or something that is not a Dask scheduler
    (`not_a_scheduler`; distributed's own handshake would wait for it
    forever)."""
    try:
        from distributed import Client
    except ImportError:
        raise usage_error("`--scheduler` needs dask.distributed, which is not installed",
                          [INSTALL_DASK]) from None
    keep_dask_logs_off_the_terminal()
    answered = not_a_scheduler(address)
    if answered is not None:
        raise SpireadError(f"{option('scheduler', address)}: answered, but not as a Dask scheduler ({answered})",
                           notes=["a scheduler listens on port 8786 unless started with `--port`; its dashboard "
                                  "(port 8787) is a web page, not the scheduler", START_A_CLUSTER])
    try:
        return Client(address, timeout=f"{CONNECT_SECONDS:g}s")
    except (OSError, TimeoutError, ValueError) as err:
        raise SpireadError(f"{option('scheduler', address)}: cannot reach a Dask scheduler there ({err})",
                           notes=[START_A_CLUSTER]) from None


START_A_CLUSTER = "start one with `dask scheduler`, and workers with `dask worker ADDRESS` (docs/scaling.md)"


class WorkerDataLost(BackendLost):
    """A worker that died took with it data only it held, which Dask cannot
    compute again: what was sent to the workers outside a graph (the job,
    `client.scatter`; Dask's memory manager keeps one copy of it) or kept
    on them (the chunks' recordings under --persist). Sending or making it
    again recovers (dask_backend.RowChunkRunner)."""


def on_cluster(client, address: str, call, *args, **kwargs):
    """`call(*args, **kwargs)`, a call of `client`'s; the scheduler at
    `address` lost meanwhile (it stopped, or the network failed: every
    future is cancelled, or the client is no longer connected) is
    BackendLost, naming the address; a future cancelled while the scheduler
    is there is WorkerDataLost. A task's own error passes through."""
    from distributed.client import FutureCancelledError
    try:
        return call(*args, **kwargs)
    except (FutureCancelledError, OSError, TimeoutError) as err:
        scheduler_lost = client.status != "running" or getattr(err, "reason", None) == "scheduler-connection-lost"
        if isinstance(err, FutureCancelledError) and not scheduler_lost:
            raise WorkerDataLost(f"{option('scheduler', address)}: the Dask workers keep stopping: data only a "
                                 f"stopped worker held was lost ({getattr(err, 'reason', err)})",
                                 notes=["see the workers' logs (memory, crashes); " + START_A_CLUSTER]) from None
        if not scheduler_lost:
            raise
        raise BackendLost(f"{option('scheduler', address)}: the connection to the Dask scheduler was lost",
                          notes=["it stopped, or the network to it failed; " + START_A_CLUSTER]) from None


def close_client(client) -> None:
    """Close a Client, at once if its scheduler is lost (rather than after
    its attempts to reconnect)."""
    if client is not None:
        client.close(timeout=None if client.status == "running" else 1)


DASK_LOGGERS = ("distributed", "tornado", "asyncio")  # and their children


def keep_dask_logs_off_the_terminal() -> None:
    """distributed logs to stderr through handlers of its own (its config's
    `logging` section sets them on `distributed`, `distributed.client`,
    `tornado`, …), and asyncio through Python's last-resort handler: when a
    scheduler is lost, ~130 lines of tracebacks. spiread says what happened
    itself, so their records are dropped."""
    import logging
    names = [n for n in logging.Logger.manager.loggerDict if n.split(".")[0] in DASK_LOGGERS]
    for name in {*DASK_LOGGERS, *names}:
        logger = logging.getLogger(name)
        logger.handlers[:] = [logging.NullHandler()]
        logger.propagate = False


def not_a_scheduler(address: str, seconds: float = CONNECT_SECONDS,
                    greeting_seconds: float = GREETING_SECONDS) -> str | None:
    """What answers at a tcp:// address, in words, if it is not a Dask
    scheduler; None if it is one or if this cannot tell (nothing listens,
    which the Client reports; a tls:// address). A scheduler sends its
    handshake as soon as it accepts a connection (distributed's Listener
    writes before it reads), so its first bytes tell; a web server waits
    for a request, so one that stays silent is sent one."""
    import socket
    from distributed.comm import parse_address, parse_host_port
    try:
        scheme, location = parse_address(address)
        host, port = parse_host_port(location)
    except ValueError:
        return None
    if scheme != "tcp":
        return None
    try:
        connection = socket.create_connection((host, port), timeout=seconds)
    except OSError:
        return None
    with connection:
        heard = _heard(connection, greeting_seconds)
        if heard is None:  # silent
            try:
                connection.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            except OSError:
                return "it closed the connection without a word"
            heard = _heard(connection, max(seconds - greeting_seconds, 0.1))
            if heard is None:
                return f"it said nothing in {seconds:g} s"
        if _HANDSHAKE in heard:
            return None
        if heard.startswith(b"HTTP/"):
            return "it looks like HTTP — the dashboard?"
        if not heard:
            return "it closed the connection without a word"
        text = heard[:40].decode("ascii", "replace")
        return "it sent `" + "".join(c if c.isprintable() else "·" for c in text) + "`"


_HANDSHAKE = b"pickle-protocol"  # a key of distributed's handshake message (msgpack)


def _heard(connection, seconds: float) -> bytes | None:
    """What the other end sends within `seconds` (up to its handshake, at
    most 4 kB), b"" if it closes the connection, None if it says nothing."""
    import socket
    import time
    heard, deadline = b"", time.monotonic() + seconds
    while _HANDSHAKE not in heard and len(heard) < 4096:
        connection.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            part = connection.recv(4096)
        except (socket.timeout, TimeoutError):
            break
        except OSError:
            part = b""
        if not part:
            return heard
        heard += part
    return heard or None
