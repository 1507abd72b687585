"""SIGINT (Ctrl-C) and SIGTERM (`timeout`, `kill`, job schedulers) alike:
both raise `Interrupted`, except while `stop_on_interrupt` lets the first
one ask training to stop after the step in progress."""

from __future__ import annotations

import signal
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """A stop signal arrived. A BaseException, as KeyboardInterrupt is, so no
    `except Exception` swallows it; but not a KeyboardInterrupt, which click
    would turn into "Aborted!" and exit 1."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return exit_code(self.signum)


def exit_code(signum: int) -> int:
    return 128 + signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def interrupt(signum, frame):
    raise Interrupted(signum)


def install() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, interrupt)


@contextmanager
def signals_deferred():
    """Hold SIGINT and SIGTERM back for a short critical section (creating or
    removing a temporary file); one that arrives meanwhile is delivered after."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class StopRequest:
    """Whether (and by which signal) a stop has been asked for."""

    def __init__(self):
        self.signum: int | None = None

    def __call__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_interrupt(notice=lambda signum: None):
    """While active, the first SIGINT or SIGTERM asks training to stop after
    the step in progress (yields a StopRequest: call it to ask); a second one
    raises Interrupted at once."""
    request = StopRequest()

    def handler(signum, frame):
        if request.signum is not None:
            raise Interrupted(signum)
        request.signum = signum
        notice(signum)

    previous = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
