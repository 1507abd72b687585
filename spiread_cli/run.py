"""`Run`: the result of running a program, its tape, its names and its
output, and the questions every task asks of it (`require_scalar`,
`wrt_ids`, `inputs_of_output`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain, count
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np

from .diagnostics import Diagnostics, Source, Span, SpireadError, command, did_you_mean, option, shape_str
from .tape import Tape
from .tape_nodes import Node
from .values import Made

T = TypeVar("T")


@dataclass
class Run:
    """A program run: its tape, its bound names and its output."""
    source: Source
    tape: Tape
    bindings: dict[str, int]            # name -> node id, in the order bound
    binding_spans: dict[str, Span]
    output: int
    output_name: str
    backward_wrt: list[str] | None      # names given to `.backward(...)`
    diagnostics: Diagnostics
    printed: list[str] = field(default_factory=list)  # `println` lines, in program order
    jets: dict[int, np.ndarray] = field(default_factory=dict)  # node id -> a Jet's infinitesimal parts
    # What decided the recording besides the program and the bindings' shapes: the nodes whose values the
    # elaborator read (a size, a position, a printed text), and each file `load` read with what it held.
    read: list[int] = field(default_factory=list)
    files: list[tuple[Path, Span, np.ndarray]] = field(default_factory=list)
    made: dict[int, Made] = field(default_factory=dict)  # a row chunk's leaves made from its rows (values.Made)
    # What tasks recorded on the tape (a recorded gradient, its HVP), by what they recorded, for a run
    # that is kept and replayed (kept_runs.py) to use again instead of recording it again.
    prepared: dict[tuple, object] = field(default_factory=dict)
    # What a replay of the run kept for a later call computes (kept_runs.py): every node of the program (a
    # fresh run computes each, and warns where one is born not finite), and of what tasks recorded after it
    # (from `recorded_from`), what feeds the nodes `reads` holds (`reading`).
    reads: set[int] = field(default_factory=set)
    recorded_from: int = field(init=False)  # the program's nodes are those before

    def __post_init__(self) -> None:
        self.recorded_from = len(self.tape.nodes)

    def reading(self, ids: Iterable[int]) -> None:
        """State nodes a task reads once it is done, or whose values a fresh
        run of it checks (and would warn about): a replay of the kept run
        computes them, and of what tasks recorded, nothing else."""
        self.reads.update(ids)

    def prepared_for(self, key: tuple, make: Callable[[], T]) -> T:
        """What a task made for `key` on this run (a recorded gradient, a
        sweep's plan): made at the first ask, then kept in `prepared`, where
        the calls that replay a kept run find it."""
        if key not in self.prepared:
            self.prepared[key] = make()
        return self.prepared[key]

    def node(self, name: str) -> Node:
        return self.tape.nodes[self.bindings[name]]

    def copied(self, name: str) -> bool:
        """Whether a name is bound, in a row chunk's recording, to what ops on
        constants compute (values.Made "copy"): recorded, as computed names are."""
        made = self.made.get(self.bindings[name])
        return made is not None and made.kind == "copy"

    @property
    def value(self) -> np.ndarray:
        return self.tape.nodes[self.output].value

    def inputs_of_output(self) -> list[str]:
        """The bound input leaves the output depends on, in the order bound."""
        reach = self.tape.feeding(self.output)
        return [name for name, i in self.bindings.items()
                if reach[i] and self.tape.nodes[i].kind == "input" and self.tape.nodes[i].name == name]

    def depends_on(self, node_id: int) -> bool:
        return self.tape.fed_by([node_id], self.output)[self.output]

    def require_scalar(self) -> None:
        """Gradients need a scalar output; say how to get one."""
        shape = self.tape.nodes[self.output].shape
        if shape != ():
            receiver = self.output_name if self.output_name.isidentifier() else f"({self.output_name})"
            # A name the program does not bind (`binding_spans` holds its `def`s' too): `loss = loss.sum`
            # would be a second binding.
            names = chain(("loss", "total"), (f"loss{k}" for k in count(2)))
            unbound = next(name for name in names if name not in self.binding_spans)
            raise SpireadError(f"the output `{self.output_name}` is {shape_str(shape)}, but gradients need a scalar",
                               self.tape.nodes[self.output].span,
                               [f"reduce it, e.g. `{unbound} = {receiver}.sum` or `.mean`, "
                                f"or pick a scalar with {option('of')}",
                                f"{command('jacobian')} gives the derivatives of every entry of "
                                f"`{self.output_name}`"])

    def default_wrt(self) -> list[str]:
        """What gradients are taken by when no names are given: the names given
        to `.backward(...)`, else every input the output depends on."""
        return list(self.backward_wrt or self.inputs_of_output())

    def wrt_ids(self, wrt: list[str] | None = None, scalar: bool = True) -> dict[str, int]:
        """What to differentiate the output by, name -> node id: the names
        given, else `default_wrt`; nothing at all is an error, not an empty
        result a check would pass. A name the output does not depend on gets
        a warning (and a zero gradient). The output must be a scalar unless
        not `scalar` (a Jacobian). Found once per run (`prepared_for`)."""
        return dict(self.prepared_for(("wrt", tuple(wrt or ()), scalar), lambda: self._wrt_ids(wrt, scalar)))

    def _wrt_ids(self, wrt: list[str] | None, scalar: bool) -> dict[str, int]:
        if scalar:
            self.require_scalar()
        names = list(dict.fromkeys(wrt if wrt else self.default_wrt()))
        if not names:
            raise self.nothing_to_differentiate()
        for name in names:
            if name not in self.bindings:
                raise SpireadError(f"{option('wrt', name)}: the program binds no `{name}`",
                                   notes=self.names_note(name), exit_code=2)
        for name in names:
            if self.bindings[name] in self.jets:
                real = float(self.tape.nodes[self.bindings[name]].value)
                raise SpireadError(f"`{name}` is a Jet: it carries its own derivatives, in its infinitesimal parts, "
                                   "and gradients treat it as a constant", self.binding_spans[name],
                                   ["a Jet's infinitesimal parts, which `eval` shows, are its derivatives",
                                    f"to differentiate by `{name}` here, bind a plain number: `{name} = {real!r}`"])
            if not self.depends_on(self.bindings[name]):
                self.diagnostics.warn(f"the output `{self.output_name}` does not depend on `{name}`; "
                                      f"its {'gradient' if scalar else 'Jacobian'} is zero", self.binding_spans[name])
        return {name: self.bindings[name] for name in names}

    def nothing_to_differentiate(self, names: list[str] = ()) -> SpireadError:
        """The error for a derivative of an output computed from none of
        `names` (or from no input at all, when none are given)."""
        output = self.tape.nodes[self.output]
        if names:
            which = f"on `{names[0]}`" if len(names) == 1 else "on any of " + ", ".join(f"`{n}`" for n in names)
            return SpireadError(f"nothing to differentiate: the output `{self.output_name}` does not depend {which}",
                                output.span, self.names_note(None))
        notes = ["a Jet carries its own derivatives (`eval` shows them); grad, check and hessian differentiate "
                 "by values bound to names"] if self.jets else []
        return SpireadError(f"nothing to differentiate: the output `{self.output_name}` is computed from no input",
                            output.span, notes + ["bind a value to a name, e.g. `w = [1, 2]`, and compute the "
                                                  "output from it"])

    def names_note(self, name: str | None) -> tuple[str, ...]:
        """What a `--wrt` could name instead of `name`: the closest spelling,
        then the inputs the output depends on, then the other bound names."""
        inputs = self.inputs_of_output()
        others = [n for n in self.bindings if n not in inputs]
        close = did_you_mean(name, self.bindings, records=True) if name is not None else ()
        listed = "; ".join(part for part in (
            f"the output depends on the inputs {_listed(inputs)}" if inputs else "",
            f"it also binds {_listed(others)}" if others else "") if part)
        return close + ((listed,) if listed else ())


def _listed(names: list[str], shown: int = 8) -> str:
    """`a`, `b`, … and N more."""
    more = len(names) - shown
    return ", ".join(f"`{n}`" for n in names[:shown]) + (f" and {more} more" if more > 0 else "")
