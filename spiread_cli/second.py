"""Second derivatives: Hessians and Hessian-vector products, exactly.

Both start from the gradient *recorded* on the run's tape
(`Tape.backward_graph`: each op's vjp written over the table's own ops), so
the gradient is itself a part of the graph and can be differentiated again:

- a Hessian-vector product H·v is reverse over reverse: record
  h = Σ_B ⟨∂f/∂B, v_B⟩ and sweep back from h (PyTorch's double backward);
- a Hessian block ∂²f/∂A∂B is forward over reverse: push identity seeds over
  B's entries through the recorded ∂f/∂A with the batched jvp rules, one
  sweep of blocks per A (as jax.hessian = jacfwd(jacrev)).

No finite differences anywhere; `check --order 2` compares these with them.
A Hessian is sized against the memory limit (limits.py) before any of it is
computed; an H·v has the shapes of the values, and never forms H.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .diagnostics import Diagnostics, SpireadError, did_you_mean, option, shape_str
from .forward import TANGENT_BUDGET_BYTES, ForwardSweep, jacobian_forward
from .limits import check_shape, limit_for, reuse_freed_memory
from .ops import OPS
from .run import Run
from .tape import Tape
from .tape_nodes import all_finite, all_finite_unguarded


class SecondOrder:
    """The gradient of a run's scalar output with respect to `wrt` (names),
    recorded on its tape once; Hessian blocks and Hessian-vector products
    from it. Recording appends nodes to the run's tape; the run's output and
    values are unchanged."""

    def __init__(self, run: Run, wrt: list[str] | None = None, also: list[str] = ()):
        self.run = run
        self.ids = run.wrt_ids(wrt)
        # Names an HVP direction is given for, differentiated by as well.
        extra = [name for name in also if name not in self.ids]
        self.all_ids = {**self.ids, **(run.wrt_ids(extra) if extra else {})}
        self.recorded_from = len(run.tape.nodes)
        checked: list[int] = []
        self.grad_ids = run.tape.backward_graph(run.output, list(self.all_ids.values()), run.diagnostics, checked)
        run.reading(checked)  # a fresh recording warns where one is born not finite: a kept run's replay checks them
        self._products: HessianVectorProducts | None = None  # recorded at the first hvp
        self._sweeps: dict[int, ForwardSweep] = {}  # by A: the forward sweep over ∂f/∂A, planned at the first hessian

    @classmethod
    def of(cls, run: Run, wrt: list[str] | None = None, also: list[str] = ()) -> "SecondOrder":
        """The run's recorded gradient by `wrt` (and `also`): recorded at the
        first ask, then found in `run.prepared`, where a kept run replayed
        with new values (kept_runs.py) has it, recomputed with the tape."""
        return run.prepared_for(("second order", tuple(wrt or ()), tuple(also)), lambda: cls(run, wrt, also))

    def gradient(self, name: str) -> np.ndarray:
        return self.run.tape.nodes[self.grad_ids[self.all_ids[name]]].value

    # ------------------------------------------------------------ Hessian

    def hessian(self, budget_bytes: int = TANGENT_BUDGET_BYTES) -> dict[str, dict[str, np.ndarray]]:
        """Every block ∂²f/∂A∂B (A, B in wrt), shape shape(A) + shape(B), as
        torch.autograd.functional.hessian lays it out."""
        names, seeded = list(self.ids), list(self.ids.values())
        diagnostics = self.run.diagnostics
        blocks: dict[str, dict[str, np.ndarray]] = {}
        for a, a_id in self.ids.items():
            # Forward over reverse: the Jacobian of the recorded ∂f/∂A is row A of the Hessian.
            before = len(diagnostics.warnings) if diagnostics is not None else 0
            sweep = self._sweeps.get(a_id)
            if sweep is None:
                sweep = self._sweeps[a_id] = ForwardSweep(self.run.tape, self.grad_ids[a_id], seeded)
                self.run.reading(sweep.reads)
            jacobian = jacobian_forward(self.run.tape, self.grad_ids[a_id], seeded, diagnostics, budget_bytes,
                                        sweep=sweep, as_arrays=True)
            if diagnostics is not None and len(diagnostics.warnings) > before:
                diagnostics = None  # one warning about the second derivative is enough
            blocks[a] = {b: jacobian[i] for b, i in zip(names, seeded)}
        return blocks

    # --------------------------------------------------- sparse Hessian

    def sparse_hessian(self, budget_bytes: int = TANGENT_BUDGET_BYTES):
        """The Hessian as a scipy.sparse CSR matrix over the wrt entries (in
        order, each value's entries flat), from one Hessian-vector product
        per colour of its pattern (`SparseHessians`). Returns (matrix,
        colouring)."""
        from .sparsity import kept_while_exact
        run, grad_ids = self.run, {i: self.grad_ids[i] for i in self.ids.values()}
        # Kept with the run while its pattern holds (a constant's zeros are structural: new data can move them).
        def planned() -> SparseHessians:
            hessians = SparseHessians(run.tape, run.output, grad_ids, diagnostics=run.diagnostics)
            run.reading(i for sweep in hessians.sweeps for i in sweep.reads)
            return hessians
        sparse = kept_while_exact(run.prepared, ("sparse hessian", tuple(grad_ids.items())), run.tape, planned)
        return sparse(budget_bytes), sparse.colouring

    # ------------------------------------------- Hessian-vector products

    def hvp(self, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """H·v for the wrt names, where v is `vectors` (name -> array shaped
        like that value; names not given are zero)."""
        nodes = self.run.tape.nodes
        for name, v in vectors.items():
            if name not in self.all_ids:
                raise SpireadError(f"{option('hvp', name)}: `{name}` is not among the values differentiated by",
                                   exit_code=2)
            shape = nodes[self.all_ids[name]].value.shape
            if np.shape(v) != shape:
                raise SpireadError(f"{option('hvp', name)}: the direction is {shape_str(np.shape(v))}, but `{name}` "
                                   f"is {shape_str(shape)}", exit_code=2)
        first = self._products is None
        if first:
            self._products = HessianVectorProducts(self.run.tape, self.grad_ids, self.recorded_from,
                                                   self.run.diagnostics)
        by_id = self._products({self.all_ids[n]: v for n, v in vectors.items()}, list(self.ids.values()))
        if first:  # what the products read of the run, once recorded
            self.run.reading(self._products.reads)
        return {name: by_id[i] for name, i in self.ids.items()}


class SparseHessians:
    """The Hessian over the values `grad_ids` names (value id -> its recorded
    gradient's id, on `tape`) as a sparse matrix, from its exact pattern
    (read from the tape once: spiread_cli/sparsity.py) and one
    Hessian-vector product per colour of it: the colours' seeds pushed
    forward, all at once, through each recorded gradient (forward over
    reverse, as `SecondOrder.hessian`). Call it again after the values
    change and the recorded gradient is replayed (Newton's steps)."""

    def __init__(self, tape: Tape, output: int, grad_ids: dict[int, int], pattern=None, colouring=None,
                 diagnostics: Diagnostics | None = None):
        from .sparsity import Sweep, coloured_hessian
        from .sparsity_colouring import Recovery, colour_symmetric
        self.wrt = list(grad_ids)
        self.tape = tape
        self.zeros_read: dict = {}  # what a given pattern read is its giver's to watch (sparsity.zeros_hold)
        if pattern is None:  # read here, and coloured told how far it reaches (a colouring comes with its pattern)
            sweep = Sweep(tape, output, self.wrt)
            (pattern, colouring), self.zeros_read = coloured_hessian(sweep), sweep.zeros_read
        self.pattern = pattern
        self.colouring = colour_symmetric(self.pattern) if colouring is None else colouring
        self.recovery = Recovery(self.pattern, self.colouring)
        self.seeds = self.colouring.seed_blocks()
        self.diagnostics = diagnostics
        nodes = tape.nodes
        self.shapes = [nodes[i].value.shape for i in self.wrt]
        self.cuts = np.cumsum([0] + [math.prod(s) for s in self.shapes])
        self.sweeps = [ForwardSweep(tape, grad_ids[a], self.wrt) for a in self.wrt]

    def __call__(self, budget_bytes: int = TANGENT_BUDGET_BYTES):
        k = self.colouring.count

        def seed_block(start: int, count: int) -> dict[int, np.ndarray]:
            seeds = self.seeds(start, count)
            return {i: seeds[:, self.cuts[p]:self.cuts[p + 1]].reshape((count,) + self.shapes[p])
                    for p, i in enumerate(self.wrt)}

        # Each sweep gives H·seeds over one value's entries: colours × its entries.
        products = [sweep.push_blocks(k, seed_block, self.diagnostics, budget_bytes).reshape(k, math.prod(shape))
                    for sweep, shape in zip(self.sweeps, self.shapes)]
        return self.recovery(products[0] if len(products) == 1 else np.concatenate(products, axis=1)
                             if products else np.zeros((k, 0)))


class HessianVectorProducts:
    """H·v on a tape whose gradient is recorded (grad_ids: value id ->
    gradient node id), reverse over reverse (PyTorch's double backward):
    h = Σ ⟨∂f/∂x, v_x⟩ is recorded, with a leaf per direction, and swept
    back from. The first product records that sweep too (`Tape.backward_graph`
    of h: H·v as nodes, on a copy of the tape's node list, so the tape itself
    is unchanged), and every later one replays only the nodes its result is
    computed from. What no product reads is never computed again: the
    gradient's own entries where h only multiplies them by v (∂f/∂W of
    `X @@ W`, a product of the size of the data), and what the direction does
    not move is recomputed only by `refresh`. A product that comes out not
    finite is swept again numerically (`Tape.backward`), which warns where it
    was born; so is every product through an op that runs tapes of its own.

    After the values change and the forward nodes are replayed, `refresh`
    recomputes the recorded gradient (the nodes from `recorded_from`, the
    tape's length before `backward_graph`, on): once products are recorded,
    only what they read of it."""

    def __init__(self, tape: Tape, grad_ids: dict[int, int], recorded_from: int,
                 diagnostics: Diagnostics | None = None):
        reuse_freed_memory()
        self.diagnostics, self.grad_ids, self.recorded_from = diagnostics, grad_ids, recorded_from
        self.tape = Tape(list(tape.nodes), tape.source)  # what is recorded here is this object's own
        self.own = len(tape.nodes)  # the nodes from here on
        self.leaves, self.h = record_inner_product(self.tape, grad_ids)
        self.from_directions = self.tape.between(list(self.leaves.values()), self.h)
        swept = self.tape.between(list(grad_ids), self.h)
        # What a numeric sweep from h reads of the recorded gradient (computed from the direction or not).
        feeds_h = self.tape.feeding(self.h)
        self.gradient = [n for n in self.tape.nodes[recorded_from:self.own] if n.op is not None and feeds_h[n.id]]
        # An op that runs tapes of its own (a total over row chunks) takes its
        # second derivatives by its own sweeps, numerically: not recorded.
        self.recording = not any(n.op is not None and n.op.reports is not None for n in swept)
        self.products: dict[int, int] | None = None  # value id -> the node of its H·v, once recorded
        self.read: list = []                          # what `refresh` recomputes once they are
        self.reads: set[int] = set(grad_ids.values())  # what they read of `tape` (`Run.reading`): all, until `record`
        self.plans: dict[tuple, Callable[[], None]] = {}  # (wrt, unguarded) -> the replay of a product's nodes

    def refresh(self) -> None:
        self.tape.replay(self.gradient if self.products is None else self.read)

    def __call__(self, directions: dict[int, np.ndarray], wrt: list[int]) -> dict[int, np.ndarray]:
        """H·v with respect to each node in `wrt`; v is `directions` (value id
        -> array; values not given are zero)."""
        nodes = self.tape.nodes
        for x, leaf in self.leaves.items():
            v = directions.get(x)
            nodes[leaf].set_value(np.zeros(nodes[leaf].value.shape) if v is None else np.asarray(v, dtype=np.float64))
        if not self.recording:
            return self.swept(wrt)
        finite = False  # known to be, for every product
        if self.products is None:
            self.tape.replay(self.from_directions)
            self.record()
        else:
            wrt = tuple(wrt)
            finite = self.replayed(wrt)
        # A product the replay does not compute anew (a direction, a zero, a value of the tape) is
        # given as a copy: the caller may write into what they are given.
        products = {}
        for w in wrt:
            node = nodes[self.products[w]]
            products[w] = node.value if node.op is not None and node.id >= self.own else node.value.copy()
        if not finite and self.diagnostics is not None and not all(all_finite(p) for p in products.values()):
            self.tape.replay(self.gradient)
            return self.swept(wrt)  # which warns where the first non-finite derivative was born
        return products

    @np.errstate(all="ignore")  # as a decorator, np.errstate costs half what a `with` costs
    def replayed(self, wrt: tuple[int, ...]) -> bool:
        """The recorded products by `wrt` computed again, unguarded, and
        again with the guards where one is not finite (an unguarded rule's
        nan may stand for a guard's zero): whether they all were."""
        self.plan(wrt, True)()
        nodes = self.tape.nodes
        if all([all_finite_unguarded(nodes[self.products[w]].value) for w in wrt]):
            return True
        self.plan(wrt)()
        return False

    def swept(self, wrt: list[int]) -> dict[int, np.ndarray]:
        """The products by a numeric reverse sweep from h (its terms computed)."""
        self.tape.replay(self.from_directions)
        return self.tape.backward(self.h, wrt, self.diagnostics)

    def record(self) -> None:
        """Record the sweep from h (its nodes come after h), computing the
        products at the directions set. `refresh` recomputes the recorded
        gradient's nodes they are computed from that the direction does not
        move; a product, the rest."""
        tape = self.tape
        values = list(self.grad_ids)
        self.products = tape.backward_graph(self.h, values)
        last = len(tape.nodes) - 1
        needed = tape.feeding(*self.products.values())
        moved = tape.fed_by(values, last)
        self.directed = tape.fed_by(list(self.leaves.values()), last)
        self.read = [n for n in tape.nodes[self.recorded_from:self.h] if n.op is not None and needed[n.id]
                     and moved[n.id] and not self.directed[n.id]]
        # A product's replay (`plan`) computes the nodes from `own` on that it is computed from: it reads
        # their inputs below (values of the program, and of its gradient: not the gradient itself, which
        # h only multiplies by a direction), and a product that is a node below.
        self.reads = {i for node in tape.nodes[self.own:] if needed[node.id] for i in node.inputs if i < self.own}
        self.reads.update(i for i in self.products.values() if i < self.own)
        kept = set(self.products.values())
        for node in tape.nodes[self.h + 1:]:
            if node.op is not None and node.id not in kept:
                node.value = node.residual = None  # each product computes what it reads again

    def plan(self, wrt: tuple[int, ...], unguarded: bool = False) -> Callable[[], None]:
        """The replay of the recorded nodes a product by `wrt` computes:
        those the direction moves, and the sweep's own that it does not (the
        values may have moved since: a kept run replays the tape, not this
        copy), each value of the recorded sweep's own dropped once it is read
        for the last time, as a numeric sweep drops its adjoints; written
        as one function (tape_nodes.straight_line) the first time.
        `unguarded`: with the ops' unguarded rules (`scale` a multiply), for
        a caller that checks the products: an unguarded 0 · inf is a nan that
        reaches a product (every node replayed feeds one, as a term or a
        factor of the cotangents' linear maps) or goes with an entry dropped,
        so finite products are the guarded ones up to the sign of a zero."""
        plan = self.plans.get((wrt, unguarded))
        if plan is None:
            tape = self.tape
            products = [self.products[w] for w in wrt]
            needed = tape.feeding(*products)
            nodes = [n for n in tape.nodes[self.recorded_from:] if n.op is not None
                     and needed[n.id] and (self.directed[n.id] or n.id > self.h)]
            last: dict[int, int] = {}
            for node in nodes:
                for i in node.inputs:
                    if i > self.h and tape.nodes[i].op is not None:
                        last[i] = node.id
            dropped: dict[int, list] = {}
            for i, reader in last.items():
                if i not in products:
                    dropped.setdefault(reader, []).append(tape.nodes[i])
            plan = self.plans[wrt, unguarded] = tape.replay_function(nodes, dropped, unguarded)
        return plan


def record_inner_product(tape: Tape, grad_ids: dict[int, int], names: dict[int, str] | None = None
                         ) -> tuple[dict[int, int], int]:
    """Record h = Σ ⟨∂f/∂x, v_x⟩ on a tape whose gradient is recorded
    (grad_ids: value id -> gradient node id), with a leaf of zeros per
    direction v_x: (value id -> the direction's leaf id, h's id). With
    `names` (value id -> a name), the leaves are inputs of those names
    (`spiread export`'s HVP arguments)."""
    nodes = tape.nodes
    leaves: dict[int, int] = {}
    h = None
    for x, g in grad_ids.items():
        span = nodes[x].span
        if names is None:
            leaf = tape.leaf(np.zeros(nodes[x].value.shape), "const", span)
        else:
            leaf = tape.leaf(np.zeros(nodes[x].value.shape), "input", span, names[x])
        leaves[x] = leaf.id
        term = tape.record(OPS["mul"], (g, leaf.id), {}, span, "∂f/∂x · v", None)
        term = tape.record(OPS["sum"], (term.id,), {}, span, "⟨∂f/∂x, v⟩", None)
        h = term if h is None else tape.record(OPS["add"], (h.id, term.id), {}, span, "Σ ⟨∂f/∂x, v⟩", None)
    return leaves, h.id


@dataclass
class RunHessian:
    value: np.ndarray                             # the output's value
    blocks: dict[str, dict[str, np.ndarray]]      # A -> B -> ∂²f/∂A∂B


def hessian(run: Run, wrt: list[str] | None = None) -> RunHessian:
    """Every Hessian block of the run's scalar output with respect to `wrt`
    (names), refused before any of it is computed when it is over the limit."""
    ids = run.wrt_ids(wrt)
    check_hessian_size(run, ids, chosen=not wrt)
    return RunHessian(run.value, SecondOrder.of(run, list(ids)).hessian())


def check_hessian_size(run: Run, ids: dict[str, int], chosen: bool) -> None:
    """Refuse a Hessian over the limit: its largest block, ∂²f/∂A∂A for the
    largest A, at A's name; else the whole, (Σ sizes)², at the output. When
    the names were `chosen` by default (every input the output depends on,
    or `.backward(...)`'s), the note says which of them would fit."""
    nodes = run.tape.nodes
    shapes = {name: nodes[i].shape for name, i in ids.items()}
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    total = sum(sizes.values())
    limit = limit_for(8 * total * total)
    if 8 * total * total <= limit:  # then so is every block
        return
    out = run.output_name
    notes = []
    if chosen:
        fitting, held = [], 0
        for name in sorted(sizes, key=sizes.get):
            if 8 * (held + sizes[name]) ** 2 <= limit:
                fitting.append(name)
                held += sizes[name]
        how = "the names `.backward(...)` gives" if run.backward_wrt else f"every input `{out}` depends on"
        fits = f": {' '.join(f'`--wrt {n}`' for n in sizes if n in fitting)} would fit" if fitting else ""
        notes.append(f"without `--wrt`, `hessian` differentiates by {how}: {', '.join(f'`{n}`' for n in sizes)}; "
                     f"choose with `--wrt NAME` (`wrt=` in Python){fits}")
    notes.append("`--hvp NAME=V` (`hvp=` in Python) gives H·v without forming H")
    largest = max(sizes, key=sizes.get)
    check_shape(shapes[largest] * 2, f"the Hessian block ∂²{out}/∂{largest}∂{largest}",
                run.binding_spans.get(largest), limit, tuple(notes))
    check_shape((total, total), f"the Hessian of `{out}` with respect to {', '.join(f'`{n}`' for n in sizes)}",
                nodes[run.output].span, limit, tuple(notes))


@dataclass
class RunSparseHessian:
    value: np.ndarray                 # the output's value
    matrix: object                    # scipy.sparse CSR, over the wrt entries in order (`offsets`)
    names: list[str]
    shapes: list[tuple[int, ...]]
    sweeps: int                       # Hessian-vector products: one per colour of the pattern
    colouring: str                    # "columns" or "star"

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum([math.prod(s) for s in self.shapes]).tolist()]

    def block(self, a: str, b: str):
        """∂²f/∂A∂B as a sparse matrix: A's entries × B's entries, flat."""
        offsets, names = self.offsets, self.names
        i, j = names.index(a), names.index(b)
        return self.matrix[offsets[i]:offsets[i + 1], offsets[j]:offsets[j + 1]]


def sparse_hessian(run: Run, wrt: list[str] | None = None) -> RunSparseHessian:
    """The Hessian over the wrt entries from its exact sparsity pattern and one
    Hessian-vector product per colour (`spiread hessian --sparse`); never
    forms a dense block."""
    order = SecondOrder.of(run, wrt)
    matrix, colouring = order.sparse_hessian()
    nodes = run.tape.nodes
    return RunSparseHessian(run.value, matrix, list(order.ids), [nodes[i].shape for i in order.ids.values()],
                         colouring.count, colouring.kind)


@dataclass
class RunHessianPattern:
    value: np.ndarray
    pattern: object                   # scipy.sparse CSR of booleans, over the wrt entries in order
    names: list[str]
    shapes: list[tuple[int, ...]]
    sweeps: int                       # what `--sparse` would take
    colouring: str


def hessian_pattern(run: Run, wrt: list[str] | None = None) -> RunHessianPattern:
    """The Hessian's exact sparsity pattern (`spiread hessian --pattern`), and the colouring `--sparse`
    would use: kept with the run while the zeros it read hold (`sparsity.read_kept`, as a sparse Hessian's
    plan is); each call's matrix its own."""
    from .sparsity import coloured_hessian, read_kept
    from .sparsity_colouring import csr_copy
    ids = run.wrt_ids(wrt)
    pattern, colouring = read_kept(run, ("hessian pattern", tuple(ids.values())), list(ids.values()),
                                   coloured_hessian).found
    nodes = run.tape.nodes
    return RunHessianPattern(run.value, csr_copy(pattern), list(ids), [nodes[i].shape for i in ids.values()],
                             colouring.count, colouring.kind)


@dataclass
class RunHessianProducts:
    value: np.ndarray                 # the output's value
    products: dict[str, np.ndarray]   # A -> Σ_B ∂²f/∂A∂B · v_B


def hvp(run: Run, vectors: dict[str, np.ndarray], wrt: list[str] | None = None) -> RunHessianProducts:
    """The Hessian-vector product for each wrt name, without forming H."""
    for name in vectors:
        if name not in run.bindings:
            raise SpireadError(f"{option('hvp', name)}: the program binds no `{name}`",
                               notes=did_you_mean(name, run.bindings), exit_code=2)
    return RunHessianProducts(run.value, SecondOrder.of(run, wrt, also=list(vectors)).hvp(vectors))
