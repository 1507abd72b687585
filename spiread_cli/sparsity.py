"""Exact sparsity patterns of Jacobians and Hessians, read from the tape.

Every op declares how its output entries depend on its operands' entries
(`Op.structure`, spiread_cli/structure.py), first and second order. Pushing
those rules over the nodes between the values differentiated by and the
output gives, with no probing and no derivative computed:

- the Jacobian pattern: J(node) = ∪ over operands of first(i) · J(operand),
  starting from the identity at the values differentiated by (a forward
  sweep of 0/1 matrices);
- the Hessian pattern of a scalar output: H = ∪ over nonlinear op nodes of
  J(a)ᵀ · second(a, b; adj) · J(b), where adj marks the node's entries the
  output depends on (a reverse sweep of 0/1 vectors) — the Hessian is
  Σ_v Σ_k ∂f/∂v_k · J_inᵀ ∇²v_k J_in, and a term is structurally zero
  exactly when ∂f/∂v_k is, or the op is linear in that pair.

An entry of the pattern may be zero at a particular point (a product of two
terms that cancel, tanh'' at 0); no entry outside it is ever nonzero. A
constant's zeros are structural: `A @@ x` with a constant banded A is banded.

Reading a pattern should cost about what one gradient does, so a J with a
few entries a row (a chain of elementwise ops, slices and gathers, the
usual case for sparse Hessians) is kept as `Columns` — the row's entries
in a few index arrays, a slice's kept as a `Progression` without listing
it — which elementwise ops share, a copy slices or gathers, and a product
of two of them reads pair by pair; only the other ops (sums, rows, matrix
products, scatters) multiply scipy.sparse 0/1 matrices. J(node) is found
only for the nodes a second derivative or the Jacobian needs, and the
Hessian's pairs become one CSR matrix at the end, through a band of
booleans when they lie near the diagonal (no sort).

Patterns come out as scipy.sparse boolean CSR matrices (the `sparse`
extra); this module is imported only by the options that need it. It holds
the sweeps (`Sweep`, `jacobian_pattern`, `hessian_pattern`); how a pattern
is held and pushed through an op's rules is sparsity_links.py's, and the
colourings that `--sparse` evaluates a pattern with, sparsity_colouring.py's.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from itertools import accumulate
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .limits import SURELY_AVAILABLE_BYTES, check_bytes, fits_anyway, max_bytes
from .sparsity_links import Columns, HessianPairs, Progression, csr_of, met, pulled, pushed_back, union_of
from .structure import Elementwise, Entries, Links
from .tape import Node, Tape


@dataclass
class Sweep:
    """The first-order links of every op node between `wrt` and `output`,
    and J(node) (node entries × differentiated entries) as it is asked
    for (`pattern`), for the Jacobian and the reverse sweep of the Hessian."""
    tape: Tape
    output: int
    wrt: list[int]
    # An elementwise node whose moving operands are of its shape is linked
    # from its rule's data (`Structure.elementwise`) and its second order
    # read as the pairs of its patterns it meets, without building its
    # `Entries` and asking its rules; False: every node through its rules
    # (the reference the tests hold this to).
    shortcuts: bool = True

    def __post_init__(self):
        nodes = self.tape.nodes
        self.sizes = [math.prod(nodes[i].shape) for i in self.wrt]
        self.offsets = [0, *accumulate(self.sizes)]
        self.n = self.offsets[-1]
        self.plan: list[Node] = self.tape.between(self.wrt, self.output)
        self.moving = {node.id for node in self.plan}
        self.limit: int | None = None  # read when a pattern first holds entries
        # Under this many bytes only a configured limit could refuse a pattern (asked once, when a pattern
        # first lists entries: one of progressions lists none).
        self.fitting: int | None = None
        self.ones: dict[int, np.ndarray] = {}
        self.patterns: dict[int, Columns | sp.csr_array] = {}
        # Each op node's operands that move, with the links of those it depends on (None: flat).
        self.linked: dict[int, list[tuple[int, int, Links | None]]] = {}
        self.entries: dict[int, Entries] = {}
        # Nodes whose values move with the inputs through an op with no
        # derivative (a comparison, x.value): their zeros are not structural.
        self.moving_flat: set[int] = set()
        # Which entries of a value the rules read as nonzero, and for a value
        # that moves, the entries its own pattern reaches (read as nonzero
        # whatever the value there): the pattern holds for other values while
        # these masks do (`zeros_hold`).
        self.zeros_read: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        self.nonzeros: dict[int, np.ndarray] = {}  # each operand's answer to `Entries.nonzero`, asked once
        self.seeds = {i: p for p, i in enumerate(self.wrt)}
        # The rules reach the sweep through a weak reference: the sweep holds
        # its nodes' Entries, and a strong one back would make it a cycle that
        # only the cyclic collector frees, later (its allocations counted
        # toward collections meanwhile).
        self._weak = weakref.proxy(self)
        self.shortcut: set[int] = set()  # the nodes linked by `_same_links`
        self.same: dict[tuple, Links] = {}  # the identity's links over a shape's entries, one for every use (`same_of`)
        # A node whose one moving operand it depends on is linked on the same entries (not seeded) has that
        # operand's pattern: by id, the node whose pattern it is (a chain's first), found with no step of its own.
        self.alias: dict[int, int] = {}
        self.reach: int | None = None  # the Hessian pattern's, once read (`hessian`)
        moving, flat, alias = self.moving, self.moving_flat, self.alias
        all_entries, all_linked, shortcuts, seeds = self.entries, self.linked, self.shortcuts, self.seeds
        # Plain loops, not comprehensions: on Python 3.11 each comprehension is a function call, per node.
        for node in self.plan:
            op = node.op
            if op is None:
                continue
            structure = op.structure
            rule = structure.elementwise
            if rule is not None and shortcuts and self._same_links(node, rule):
                continue
            linked = None
            if structure.shaped is not None and shortcuts:  # said by the shapes and params: no Entries
                shaped, inputs, linked = structure.shaped, node.inputs, []
                shapes = tuple([nodes[i].shape for i in inputs])
                for k, i in enumerate(inputs):
                    if i in moving:
                        links = shaped(k, shapes, node.shape, node.params)
                        if links is None:  # not said so: the rules
                            linked = None
                            break
                        linked.append((k, i, links))
            if linked is None:
                entries = all_entries[node.id] = self._entries(node)
                first = structure.first
                linked = [(k, i, first(k, entries)) for k, i in enumerate(node.inputs) if i in moving]
            for _, i, links in linked:
                if links is None or i in flat:
                    flat.add(node.id)
                    break
            all_linked[node.id] = linked
            if len(linked) == 1:
                _, i, links = linked[0]
                if links is not None and links.kind == "same" and node.id not in seeds:
                    alias[node.id] = alias.get(i, i)

    def same_of(self, shape: tuple) -> Links:
        """The identity's links over the entries of `shape` (`Links.same`), one for every node of that shape."""
        links = self.same.get(shape)
        if links is None:
            links = self.same[shape] = Links.same(math.prod(shape))
        return links

    def _same_links(self, node: Node, rule: Elementwise) -> bool:
        """Link an elementwise node, each moving operand on the same entry,
        as its rule (`structure.elementwise`'s `first`) gives them, when that
        operand is of the output's shape and a factor its partial vanishes
        with is nowhere zero (and say whether it is flat, or an alias);
        False otherwise (the rule's own, then)."""
        if rule.flat:
            return False
        nodes, moving, shape, inputs = self.tape.nodes, self.moving, node.shape, node.inputs
        vanishes_with, flat_operands, flat = rule.vanishes_with, rule.flat_operands, self.moving_flat
        same, linked, is_flat = None, [], False
        for k, i in enumerate(inputs):
            if i not in moving:
                continue
            if nodes[i].shape != shape:
                return False
            if flat_operands and k in flat_operands:
                linked.append((k, i, None))
                is_flat = True
                continue
            if vanishes_with is not None and vanishes_with[k] is not None:
                nonzero = self.nonzero_of(inputs[vanishes_with[k]])
                if nonzero is not self.ones.get(len(nonzero)) and not nonzero.all():
                    return False
            if same is None:
                same = self.same.get(shape) or self.same_of(shape)
            linked.append((k, i, same))
            if i in flat:
                is_flat = True
        node_id = node.id
        self.linked[node_id] = linked
        self.shortcut.add(node_id)
        if is_flat:
            flat.add(node_id)
        if len(linked) == 1 and same is not None and node_id not in self.seeds:
            i = linked[0][1]
            self.alias[node_id] = self.alias.get(i, i)
        return True

    def pattern(self, node_id: int):
        """J(node), found with the patterns of the nodes it is computed from."""
        patterns, alias = self.patterns, self.alias
        node_id = alias.get(node_id, node_id)
        found = patterns.get(node_id)
        if found is not None:
            return found
        needed, stack, linked = set(), [node_id], self.linked
        while stack:
            i = stack.pop()
            if i not in patterns and i not in needed:
                needed.add(i)
                for _, j, links in linked.get(i, ()):
                    if links is not None:
                        stack.append(alias.get(j, j))
        nodes = self.tape.nodes
        for i in sorted(needed):  # tape order: operands first
            patterns[i] = self._pattern_of(nodes[i])
        return patterns[node_id]

    def _pattern_of(self, node: Node):
        patterns, n, alias = self.patterns, self.n, self.alias
        terms, shared = [], True  # shared: every term is one operand's pattern as it is, the same one
        for _, i, links in self.linked.get(node.id, ()):
            if links is None:
                continue
            j = patterns[alias.get(i, i)]
            if links.kind != "same":
                j, shared = pulled(links, j, n), False
            elif terms and j is not terms[0]:
                shared = False
            terms.append(j)
        seeded = node.id in self.seeds
        if not seeded and terms and shared:
            return terms[0]  # the operands' one pattern as it is (a chain of elementwise ops), checked where made
        if len(terms) == 1 and not seeded:  # an operand's pattern through its links
            pattern = terms[0]
        else:
            size = math.prod(node.shape)
            if seeded:  # a seeded intermediate gets its own seed on top, as in forward mode
                terms.append(Columns(size, [Progression(self.offsets[self.seeds[node.id]], 1, size)]))
            pattern = union_of(terms, size, n) if terms else Columns(size, [])
        if type(pattern) is not Columns:
            self._check(pattern.nnz, node)
        else:
            for column in pattern.columns:
                if type(column) is not Progression:  # one of progressions lists nothing
                    self._check(pattern.listed(), node)
                    break
        return pattern

    def _entries(self, node: Node) -> Entries:
        nodes, sweep = self.tape.nodes, self._weak
        shapes = tuple([nodes[i].shape for i in node.inputs])
        return Entries(node.op, shapes, node.shape, node.params, lambda k: sweep.nonzero_of(node.inputs[k]),
                       (*[math.prod(shape) for shape in shapes], math.prod(node.shape)))

    def entries_of(self, node: Node) -> Entries:
        """What node's rules are told (made when first asked: a shortcut's node has none at first)."""
        entries = self.entries.get(node.id)
        if entries is None:
            entries = self.entries[node.id] = self._entries(node)
        return entries

    def nonzero_of(self, i: int) -> np.ndarray:
        """Which entries of value i may be nonzero, as its users' rules are told (`Entries.nonzero`), found once."""
        nonzero = self.nonzeros.get(i)
        if nonzero is None:
            nonzero = self.nonzeros[i] = self._nonzero(i)
        return nonzero

    def _nonzero(self, i: int) -> np.ndarray:
        if i in self.moving_flat:
            return self.every(math.prod(self.tape.nodes[i].shape))
        if i not in self.moving:
            return self._read_zeros(i)
        j = self.pattern(i)
        if type(j) is Columns and any(type(c) is Progression and c.whole for c in j.columns):
            return self.every(j.size)  # every entry moves: none is a structural zero
        return self._read_zeros(i, j.rows_used() if type(j) is Columns else np.diff(j.indptr) > 0)

    def _read_zeros(self, i: int, moving: np.ndarray | None = None) -> np.ndarray:
        """Value i's nonzero entries, with, for a value that moves, the rows its pattern reaches (`moving`)."""
        if i not in self.zeros_read:
            value = self.tape.nodes[i].value
            if moving is None and value.ndim == 0:  # a constant number (`2 * x`): read as a number
                nonzero = self.every(1) if value.item() != 0 else np.zeros(1, dtype=bool)
            else:
                nonzero = _nonzero(value, moving)
            self.zeros_read[i] = (nonzero, moving)
        return self.zeros_read[i][0]

    def every(self, size: int) -> np.ndarray:
        """`size` entries, all set: one read-only array for every use of that size."""
        ones = self.ones.get(size)
        if ones is None:
            ones = self.ones[size] = np.ones(size, dtype=bool)
            ones.flags.writeable = False
        return ones

    def _check(self, entries: int, node: Node) -> None:
        if entries == 0:
            return
        if self.fitting is None:
            self.fitting = SURELY_AVAILABLE_BYTES if fits_anyway(SURELY_AVAILABLE_BYTES) else 0
        if entries * 9 <= self.fitting:
            return
        if self.limit is None:
            self.limit = max_bytes()
        check_bytes(entries * 9, lambda: f"the sparsity pattern at `{node.name or node.label}` would hold "
                                         f"{entries} entries", node.span, self.limit)

    def _coupled(self, node: Node, linked: list, adj: np.ndarray) -> list:
        """Each pair of node's moving operands (i ≤ j) that a second
        derivative couples, with its links, as its rules give them (`Structure.second`)."""
        second, entries, coupled = node.op.structure.second, self.entries_of(node), []
        for p, (k, i, _) in enumerate(linked):
            for m, j, _ in linked[p:]:
                links = second(k, m, entries, adj)
                if links is not None:
                    coupled.append((links, i, j))
        return coupled

    def jacobian(self) -> sp.csr_array:
        """The pattern of ∂output/∂wrt: output entries × differentiated entries."""
        if self.output not in self.moving:
            return sp.csr_array((math.prod(self.tape.nodes[self.output].shape), self.n), dtype=bool)
        return csr_of(self.pattern(self.output), self.n)

    def hessian(self) -> sp.csr_array:
        """The pattern of the Hessian of the scalar output, symmetric."""
        nodes = self.tape.nodes
        # Each node's adjoint entries (those the output depends on). Most are
        # all of them, through a chain of elementwise ops: those share one
        # read-only array of ones and are pushed and joined with no pass.
        adjoints: dict[int, np.ndarray] = {}
        every: set[int] = set()

        def all_of(i: int) -> np.ndarray:
            every.add(i)
            return self.every(math.prod(nodes[i].shape))

        if self.output in self.moving:
            adjoints[self.output] = all_of(self.output)
        found = HessianPairs(self.n)
        same_met: set[tuple[int, int]] = set()
        all_linked, shortcut, n, patterns, alias = self.linked, self.shortcut, self.n, self.patterns, self.alias

        def meet(links, i: int, j: int, node: Node) -> None:
            ja = patterns.get(alias.get(i, i))
            ja = self.pattern(i) if ja is None else ja
            jb = ja if j == i else self.pattern(j)
            if links.kind == "same":  # a pair of patterns met on the same entries adds nothing met again
                key = (id(ja), id(jb)) if id(ja) <= id(jb) else (id(jb), id(ja))
                if key in same_met:
                    return
                same_met.add(key)
            before = found.entries
            met(links, ja, jb, found, n)
            self._check(found.entries - before, node)

        for node in reversed(self.plan):
            node_id = node.id
            adj = adjoints.get(node_id)
            if adj is None or node.op is None:
                continue
            whole = node_id in every
            if not whole and not adj.any():
                continue
            linked = all_linked[node_id]
            for _, i, links in linked:
                if links is None or i in every or nodes[i].op is None:  # a leaf's adjoint would not be read
                    continue
                if whole and links.kind == "same":  # every entry of one of the same size: the shared array
                    every.add(i)
                    adjoints[i] = adj
                    continue
                if links.kind == "groups" and links.rows is None:  # every entry linked to every entry: all or none
                    if whole or adj.any():
                        adjoints[i] = all_of(i)
                    continue
                back = pushed_back(links, adj)
                if i in adjoints:
                    back = back | adjoints[i]
                # An adjoint that reaches every entry (a sum's operand) is the shared one, so
                # the chain behind it is pushed with no pass and its rules see it whole.
                adjoints[i] = all_of(i) if back.all() else back
            structure = node.op.structure
            if structure.linear:
                continue
            if whole and node_id in shortcut:  # seen whole: the pairs its rule's `couples` names, on the same entry
                couples, same = structure.elementwise.couples, None
                for p, (k, i, _) in enumerate(linked):
                    for m, j, _ in linked[p:]:
                        if couples is None or (k, m) in couples:
                            if same is None:
                                same = self.same_of(node.shape)
                            meet(same, i, j, node)
            else:
                for links, i, j in self._coupled(node, linked, adj):
                    meet(links, i, j, node)
        self.reach = found.band  # the largest |column − row| of its entries (-1: none), for the colouring
        return found.matrix()


def jacobian_pattern(tape: Tape, output: int, wrt: list[int]) -> sp.csr_array:
    return Sweep(tape, output, wrt).jacobian()


def hessian_pattern(tape: Tape, output: int, wrt: list[int]) -> sp.csr_array:
    return Sweep(tape, output, wrt).hessian()


@dataclass
class KeptRead:
    """What a caller made of a pattern read from a run's tape (`found`: the pattern and its colouring),
    kept with the run as a plan is (`kept_while_exact`) while the zeros its sweep read hold."""
    found: object
    zeros_read: dict


def read_kept(run, key: tuple, wrt: list[int], made: Callable[[Sweep], object]) -> KeptRead:
    """What `made(sweep)` gives of a sweep over `wrt` on the run's tape (its pattern, coloured), kept in
    `run.prepared` under `key` while the zeros the sweep read hold (`kept_while_exact`)."""
    def read() -> KeptRead:
        sweep = Sweep(run.tape, run.output, wrt)
        return KeptRead(made(sweep), sweep.zeros_read)
    return kept_while_exact(run.prepared, key, run.tape, read)


def coloured_hessian(sweep: Sweep) -> tuple:
    """The sweep's Hessian pattern and its symmetric colouring (told how far the pattern reaches)."""
    from .sparsity_colouring import colour_symmetric
    pattern = sweep.hessian()
    return pattern, colour_symmetric(pattern, sweep.reach)


def kept_while_exact(kept: dict, key: tuple, tape: Tape, make: Callable):
    """What `make()` gave for `key` in `kept` (a run's prepared plans: a
    sparse Hessian's, a sparse Jacobian's, a pattern read, each with the
    `zeros_read` of its pattern), made again when that pattern no longer holds at
    the tape's values (`zeros_hold`: a kept run replayed with new data)."""
    plan = kept.get(key)
    if plan is None or not zeros_hold(tape, plan.zeros_read):
        plan = kept[key] = make()
    return plan


def _nonzero(value, moving: np.ndarray | None) -> np.ndarray:
    nonzero = np.ravel(value) != 0
    return nonzero if moving is None else nonzero | moving


def zeros_hold(tape: Tape, zeros_read: dict[int, tuple[np.ndarray, np.ndarray | None]]) -> bool:
    """Whether the values a pattern read (`Sweep.zeros_read`) still read as
    they did (a value that moves, outside the rows its pattern reaches): if
    so, the pattern is still exact. A relu's zeros moving with x change
    nothing where x's own pattern reaches."""
    nodes = tape.nodes
    return all(np.array_equal(_nonzero(nodes[i].value, moving), seen) for i, (seen, moving) in zeros_read.items())
