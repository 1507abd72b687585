"""Runs kept between a program's Python calls: a call whose signature
matches an earlier one's replays that call's recorded run with its own
values instead of running the program afresh (what `jax.jit` does with a
trace per input shape, unseen: values, derivatives, warnings, printed
lines and errors are a fresh run's).

What a recording depends on, and so what a signature holds:
- the program, and the task with its options (`Program.run_*`'s: the
  names differentiated by, the mode, the HVP directions' names, …);
- each binding's name, shape and dtype (values flow through the tape);
- the bindings whose values decided what was recorded — a size, a
  position, a parameter, a printed text, a Jet's real part: the values
  of the nodes the elaborator read (`Run.read`), traced back to the
  bindings they are computed from — by those values, bit for bit;
- each file `load` read, by what it holds: it is read again at each
  call, and a change means a fresh run;
- SPIREAD_MAX_BYTES (the limit a fresh run's size checks use).

A replay sets the bindings' leaves and recomputes, in tape order, every
op node of the program computed from them and, of what its task recorded
(a recorded gradient, which the task finds again in `Run.prepared`), the
nodes the task reads or a fresh run of it checks (`Run.reading`: an HVP
reads no ∂f/∂w itself, and a fresh run checks each rule's result, not the
sum of two) — by one function written for it (Tape.replay_function;
`scale` unguarded, as every value is checked). Warnings stay exact
because a run that warned is never kept, and a replay that meets a value
that is not finite (where a fresh run could warn) or an error is given
up for a fresh run; what it leaves out, a fresh run computes without a
warning whatever it holds. Neither is kept on the command line, which runs once.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .data import load_array
from .limits import configured_limit
from .diagnostics import Span
from .run import Run
from .tape_nodes import Node

KEPT_SIGNATURES = 4  # per program; the least recently used goes first


@dataclass
class Kept:
    signature: tuple
    run: Run
    leaves: dict[str, Node]               # each binding's input leaf
    deciding: dict[str, np.ndarray]       # the bindings whose values decided the recording: those values
    files: list[tuple[Path, Span, bytes]]  # each file `load` read: what it held (`fingerprint`)
    ops: list[Node]                       # the op nodes a replay recomputes, in tape order (`KeptRuns.keep`)
    length: int                           # the tape's length once the task recorded what it uses
    replay: Callable[[], bool] | None = None  # the ops as one function (Tape.replay_function), at the first replay

    def matches(self, signature: tuple, bindings: dict[str, np.ndarray]) -> bool:
        if signature != self.signature:
            return False
        for name, value in self.deciding.items():
            if not same_bits(bindings[name], value):
                return False
        return True

    def files_unchanged(self) -> bool:
        """Whether each file `load` read holds what it held (a file that cannot be read: no)."""
        for path, span, held in self.files:
            try:
                if fingerprint(load_array(path, span)) != held:
                    return False
            except Exception:  # noqa: BLE001 - a fresh run says what is wrong with it
                return False
        return True

    def replayed(self, bindings: dict[str, np.ndarray]) -> bool:
        """Recompute the run with these bindings; False where a fresh run
        could differ: a value computed is not finite (it could warn), or an
        op failed. The next replay recomputes every value again. A binding
        that is not finite is not itself a reason: a fresh run computes the
        same values from it, and where all those are finite it warns of
        nothing (an op warns where finite operands made an inf or nan; a
        copy of a binding, never checked, holds only what the binding did)."""
        for name, leaf in self.leaves.items():
            leaf.set_value(bindings[name])
        if not self._recomputed():
            return False
        self.run.diagnostics.warnings.clear()
        return True

    @np.errstate(all="ignore")  # as a decorator, np.errstate costs half what a `with` costs
    def _recomputed(self) -> bool:
        """Whether the replay computed every value, all finite."""
        try:
            if self.replay is None:  # unguarded: every value is checked, and a fresh run follows one that is not
                self.replay = self.run.tape.replay_function(self.ops, unguarded=True, checked=True)
            return self.replay()
        except Exception:  # noqa: BLE001 - a fresh run says what is wrong
            return False


class Call:
    """The run a call works on, as a context manager: a kept run replayed
    (`kept`; given back when the call is over) or a fresh one (kept once the
    task is done, unless it raised)."""
    __slots__ = ("runs", "signature", "bindings", "kept", "run")

    def __init__(self, runs: "KeptRuns", signature: tuple, bindings: dict[str, np.ndarray], kept: Kept | None,
                 run: Run):
        self.runs, self.signature, self.bindings, self.kept, self.run = runs, signature, bindings, kept, run

    def __enter__(self) -> Run:
        return self.run

    def __exit__(self, kind, error, traceback) -> None:
        if self.kept is not None:
            self.runs.done(self.kept)
        elif kind is None:
            self.runs.keep(self.signature, self.bindings, self.run)


class KeptRuns:
    """A program's kept runs, the most recently used first."""

    def __init__(self, size: int = KEPT_SIGNATURES):
        self.size = size
        self.kept: list[Kept] = []
        self.lock = threading.Lock()  # a kept run serves one call at a time; another runs afresh

    def replayed(self, signature: tuple, bindings: dict[str, np.ndarray]) -> Kept | None:
        """The kept run of this signature, replayed with `bindings`; None
        when there is none, or it could not be replayed exactly (a file it
        read changed: it is dropped). Holds the lock until `done`."""
        if not self.lock.acquire(blocking=False):
            return None
        try:
            kept = self._replayed(signature, bindings)
        except BaseException:
            self.lock.release()
            raise
        if kept is None:
            self.lock.release()
        return kept

    def _replayed(self, signature: tuple, bindings: dict[str, np.ndarray]) -> Kept | None:
        for place, kept in enumerate(self.kept):
            if kept.matches(signature, bindings):
                if kept.files and not kept.files_unchanged():
                    del self.kept[place]
                    return None
                if place:  # the most recently used first
                    self.kept.insert(0, self.kept.pop(place))
                return kept if kept.replayed(bindings) else None  # refused: a fresh run that does not warn replaces it
        return None

    def done(self, kept: Kept) -> None:
        """The call on a replayed run is over; a task that recorded anything
        more on it (which it should have found in `Run.prepared`) spoils it."""
        if len(kept.run.tape.nodes) != kept.length and kept in self.kept:
            self.kept.remove(kept)
        self.lock.release()

    def keep(self, signature: tuple, bindings: dict[str, np.ndarray], run: Run) -> None:
        """Keep a fresh run once its task is done, unless it warned (or a
        kept run is in use: a call made while another is on it, from another
        thread or from a warning's handler, is not kept)."""
        if run.diagnostics.warnings:
            return
        nodes = run.tape.nodes
        leaves = {name: nodes[run.bindings[name]] for name in bindings}
        # Of what the task recorded, what it reads, or a fresh run of it checks (`Run.reading`).
        read = run.tape.feeding(*run.reads) if run.reads else [False] * len(nodes)
        deciding = _deciders(run, leaves)
        # The nodes computed from no binding (the program's constants, a rule's) keep their values.
        moving = run.tape.fed_by([leaf.id for leaf in leaves.values()], len(nodes) - 1)
        kept = Kept(signature, run, leaves, {name: bindings[name] for name in deciding},
                    [(path, span, fingerprint(array)) for path, span, array in run.files],
                    [node for node in nodes if node.op is not None and moving[node.id]
                     and (node.id < run.recorded_from or read[node.id])], len(nodes))
        run.files = []  # held as fingerprints now
        if self.lock.acquire(blocking=False):  # else another call (or this one's caller) is on a kept run
            # one run per signature: a refused replay's fresh run replaces the kept one
            self.kept = [kept, *(k for k in self.kept if not k.matches(signature, bindings))][:self.size]
            self.lock.release()

    def clear(self) -> None:
        self.kept.clear()  # a call still on one of them finishes with it (`done` finds it gone)

    def __getstate__(self) -> dict:
        """A copied or pickled Program keeps no runs (they hold tapes, and a lock)."""
        return {"size": self.size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["size"])


def _deciders(run: Run, leaves: dict[str, Node]) -> list[str]:
    """The bindings whose values the nodes the elaborator read are computed from."""
    nodes = run.tape.nodes
    feeds = [False] * len(nodes)
    for i in run.read:
        feeds[i] = True
    for node in reversed(nodes[:max(run.read, default=-1) + 1]):
        if feeds[node.id]:
            for i in node.inputs:
                feeds[i] = True
    return [name for name, leaf in leaves.items() if feeds[leaf.id]]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and a.tobytes() == b.tobytes()


def fingerprint(array: np.ndarray) -> bytes:
    """What an array holds, in a few bytes: its shape, dtype and a digest of its bits."""
    bits = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return f"{array.shape}{array.dtype.str}".encode() + hashlib.blake2b(bits).digest()


def signature(task: tuple, bindings: dict[str, np.ndarray], of: str | None) -> tuple:
    """What a kept run is found by, besides the deciding values."""
    shapes = [(name, value.shape, value.dtype) for name, value in bindings.items()]
    if len(shapes) > 1:
        shapes.sort()
    return task, of, configured_limit(), tuple(shapes)
