"""`spiread check`: compare AD gradients with central finite differences.

For each `--wrt` value the output is re-evaluated at x ± eps·v, recomputing
only the tape nodes downstream of that value, for every unit vector v (every
entry) when that is affordable, else for a few random unit directions (as
`torch.autograd.gradcheck`'s fast mode does). The same points give one-sided
slopes, which expose kinks that central differences alone would average away
(|x| at 0 has a central difference of 0, exactly what AD says). Forward mode
is compared with reverse mode along the same directions. An output that is
not a scalar has its Jacobian checked (`check_jacobian`): ⟨Y, u⟩ for output
directions u is the scalar differentiated, both modes' Jacobians the AD side.

Each value's derivatives are measured and judged by the tolerance rule of
check_measure.py (docs/check.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .check_measure import CheckReport, KinkSite, joined, judge, measure
from .diagnostics import SpireadError, option
from .forward import directional_forward
from .jacobian import jacobian
from .limits import max_bytes
from .run import Run
from .tape import Tape

DEFAULT_EPS = 1e-6
DEFAULT_TOL = 1e-5
# Every entry is checked when a value has at most this many entries and the
# 2·n evaluations fit the budget; otherwise DIRECTIONS random directions. The
# budget counts array entries computed (each op node's value, plus a fixed
# charge per node for its Python overhead), not seconds, so the same program
# is checked the same way on a quiet or a loaded machine: 2·10⁸ entries is
# about 2 seconds of numpy on this hardware class.
ELEMENTWISE_MAX_ENTRIES = 1000
ELEMENTWISE_BUDGET_ENTRIES = 2e8
NODE_OVERHEAD_ENTRIES = 500
DIRECTIONS = 8


class Probe:
    """Evaluates the output with one node's value replaced, replaying only
    the nodes between it and the output; `restore` puts every value back.
    `forward(v)`: the output's derivatives along directions v, by forward mode."""

    def __init__(self, tape: Tape, node_id: int, output: int):
        self.tape = tape
        self.node = tape.nodes[node_id]
        self.output = tape.nodes[output]
        self.chain = [node for node in tape.between([node_id], output)[1:] if node.op is not None]
        self.saved = [(n, n.value, n.known_finite) for n in [self.node] + self.chain]
        # array entries one evaluation computes (the budget of `_directions`)
        self.work = sum(node.value.size + NODE_OVERHEAD_ENTRIES for node in self.chain)

    @property
    def x(self) -> np.ndarray:
        return self.node.value

    def __call__(self, value: np.ndarray) -> float:
        self.node.set_value(value)
        self.tape.replay(self.chain)
        return float(self.output.value)

    def forward(self, v: np.ndarray) -> np.ndarray:
        return directional_forward(self.tape, self.output.id, self.node.id, v)

    def restore(self) -> None:
        for node, value, finite in self.saved:
            node.value, node.known_finite = value, finite


class RowProbe(Probe):
    """A probe of φ = ⟨Y, u⟩ for one output direction u, whose forward-mode
    derivatives come from a Jacobian already computed by forward mode
    (`uᵀJ`, shaped like the probed value), not from another sweep."""

    def __init__(self, tape: Tape, node_id: int, output: int, forward_row: np.ndarray):
        super().__init__(tape, node_id, output)
        self.forward_row = forward_row

    def forward(self, v: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return v.reshape(len(v), -1) @ self.forward_row.ravel()


@dataclass
class Subject:
    """What a first-order check needs of a program, however it is evaluated:
    the values checked (name -> node id of the run), the output and its
    reverse-mode gradients there, the output's rounding bound
    (`output_magnitude`), a probe per value and the kink sites of failed ones.
    `tape_subject` is the numpy tape's (on `--backend dask` too: the
    driver's tape, whose totals over row chunks are ops)."""
    ids: dict[str, int]
    value: float
    gradients: dict[str, np.ndarray]
    magnitude: float
    probe: Callable[[str], object]
    kink_sites: Callable[[list[str]], list[KinkSite]]


def tape_subject(run: Run, wrt: list[str] | None) -> Subject:
    ids = run.wrt_ids(wrt)
    tape = run.tape
    by_id = tape.backward(run.output, list(ids.values()), run.diagnostics)
    return Subject(ids, float(run.value), {name: by_id[i] for name, i in ids.items()},
                   output_magnitude(tape, run.output), lambda name: Probe(tape, ids[name], run.output),
                   lambda names: kink_sites(tape, [ids[n] for n in names], run.output))


def check_gradients(run: Run, wrt: list[str] | None = None, eps: float | None = None, tol: float | None = None,
                    max_entries: int = ELEMENTWISE_MAX_ENTRIES, directions: int = DIRECTIONS,
                    seed: int = 0, subject: Callable[[Run, list[str] | None], Subject] | None = None) -> CheckReport:
    """Check reverse-mode (and forward-mode) gradients of the run's scalar
    output against central finite differences, value by value (on the run's
    tape, or on what `subject(run, wrt)` evaluates: row chunks)."""
    if subject is None and run.tape.nodes[run.output].shape != ():
        return check_jacobian(run, wrt, eps, tol, max_entries, directions, seed)
    eps, tol = _steps(eps, tol)
    subject = (subject or tape_subject)(run, wrt)
    _something_to_check(run, subject.ids)
    f0 = subject.value
    problem = None
    if not np.isfinite(f0):
        problem = (f"the output `{run.output_name}` is {f0:g}: finite differences need a finite output, "
                   "so its gradients cannot be checked here")
    rng = np.random.default_rng(seed)
    results = {}
    for name in subject.ids:
        probe = subject.probe(name)
        try:
            method, v = _directions(probe, max_entries, directions, rng)
            measured = measure(probe, subject.gradients[name], v, f0, subject.magnitude, eps, tol)
        finally:
            probe.restore()
        results[name] = judge(name, probe.x.shape, method, measured, tol, eps)
    failed = [name for name, r in results.items() if not r.ok]
    return CheckReport(run.output_name, f0, eps, tol, results, subject.kink_sites(failed), problem)


def check_jacobian(run: Run, wrt: list[str] | None = None, eps: float | None = None, tol: float | None = None,
                   max_entries: int = ELEMENTWISE_MAX_ENTRIES, directions: int = DIRECTIONS,
                   seed: int = 0) -> CheckReport:
    """Check the Jacobian of a non-scalar output Y (`spiread jacobian`'s, by
    both modes) against central differences, with the first-order check's
    own machinery: for an output direction u, φ = ⟨Y, u⟩ is a scalar recorded
    on the tape, so its derivative along v over X is uᵀ(∂Y/∂X)v, computed from
    the reverse-mode Jacobian, from the forward-mode one, and by central
    differences of φ; `measure` and `judge` compare them. Every entry of
    each block ∂Y/∂X (u, v running over unit vectors) when the block has at
    most `max_entries` entries, else random unit directions u and v."""
    from .ops import OPS
    eps, tol = _steps(eps, tol)
    ids = run.wrt_ids(wrt, scalar=False)
    _something_to_check(run, ids)
    names = list(ids)
    reverse, forward = (jacobian(run, names, mode).blocks for mode in ("reverse", "forward"))
    tape, nodes = run.tape, run.tape.nodes
    out = nodes[run.output]
    shape_y = out.shape
    problem = None
    if not np.all(np.isfinite(out.value)):
        problem = (f"the output `{run.output_name}` is not finite: finite differences need a finite output, "
                   "so its Jacobian cannot be checked here")
    u_leaf = tape.leaf(np.zeros(shape_y), "const", out.span)
    weighted = tape.record(OPS["mul"], (run.output, u_leaf.id), {}, out.span, f"{run.output_name} · u", None)
    phi = tape.record(OPS["sum"], (weighted.id,), {}, out.span, f"⟨{run.output_name}, u⟩", None)
    rng = np.random.default_rng(seed)
    results, sites = {}, {}
    for name, x_id in ids.items():
        shape_x = nodes[x_id].shape
        elementwise, rows, v = _block_directions(rng, shape_y, shape_x, max_entries, directions)
        parts = []
        for u in rows:
            u_leaf.set_value(u)
            tape.replay([weighted, phi])
            with np.errstate(all="ignore"):  # a block not finite is the check's to report, not numpy's
                along = [np.tensordot(u, block[name], axes=u.ndim) for block in (reverse, forward)]
            probe = RowProbe(tape, x_id, phi.id, along[1])
            try:
                parts.append(measure(probe, along[0], v, float(phi.value), output_magnitude(tape, phi.id), eps, tol))
            finally:
                probe.restore()
        check_name = f"∂{run.output_name}/∂{name}"
        results[check_name] = judge(check_name, shape_y + shape_x, "elementwise" if elementwise else "directional",
                                    joined(parts), tol, eps)
        if not results[check_name].ok:  # one note per place in the source
            for site in kink_sites(tape, [x_id], phi.id):
                sites.setdefault(site.node.span, site)
    return CheckReport(run.output_name, out.value, eps, tol, results, list(sites.values()), problem)


def check_second_order(run: Run, wrt: list[str] | None = None, eps: float | None = None, tol: float | None = None,
                       max_entries: int = ELEMENTWISE_MAX_ENTRIES, directions: int = DIRECTIONS,
                       seed: int = 0) -> CheckReport:
    """Check the exact second derivatives against central differences of the
    exact gradient, with the first-order check's own machinery: for a row
    direction u over A, φ = ⟨∂f/∂A, u⟩ is a scalar recorded on the tape (the
    gradient is recorded by `Tape.backward_graph`), so its derivative along v
    over B is uᵀ(∂²f/∂A∂B)v by reverse mode (an HVP), by forward mode over the
    recorded gradient, and by central differences of φ; `measure` and `judge`
    compare them. Every entry of each block ∂²f/∂A∂B (u, v running over unit
    vectors) when the block has at most `max_entries` entries, else random
    unit directions u and v."""
    from .second import SecondOrder
    from .ops import OPS
    eps, tol = _steps(eps, tol)
    state = SecondOrder(run, wrt)
    _something_to_check(run, state.ids)
    tape, nodes = run.tape, run.tape.nodes
    f0 = float(run.value)
    problem = None
    if not np.isfinite(f0):
        problem = (f"the output `{run.output_name}` is {f0:g}: finite differences need a finite output, "
                   "so its second derivatives cannot be checked here")
    rng = np.random.default_rng(seed)
    results, sites = {}, {}
    for a, a_id in state.ids.items():
        shape_a = nodes[a_id].value.shape
        u_leaf = tape.leaf(np.zeros(shape_a), "const", run.binding_spans.get(a))
        weighted = tape.record(OPS["mul"], (state.grad_ids[a_id], u_leaf.id), {}, u_leaf.span, f"∂f/∂{a} · u", None)
        phi = tape.record(OPS["sum"], (weighted.id,), {}, u_leaf.span, f"⟨∂f/∂{a}, u⟩", None)
        for b, b_id in state.ids.items():
            shape_b = nodes[b_id].value.shape
            elementwise, rows, v = _block_directions(rng, shape_a, shape_b, max_entries, directions)
            parts = []
            for u in rows:
                u_leaf.set_value(u)
                tape.replay([weighted, phi])
                grad = tape.backward(phi.id, [b_id], run.diagnostics)[b_id]
                probe = Probe(tape, b_id, phi.id)
                try:
                    parts.append(measure(probe, grad, v, float(phi.value), output_magnitude(tape, phi.id), eps, tol))
                finally:
                    probe.restore()
            name = f"∂²{run.output_name}/∂{a}∂{b}"
            results[name] = judge(name, shape_a + shape_b, "elementwise" if elementwise else "directional",
                                  joined(parts), tol, eps)
            if not results[name].ok:  # one note per place in the source (an op and its rule share one)
                for site in kink_sites(tape, [b_id], phi.id):
                    sites.setdefault(site.node.span, site)
    return CheckReport(run.output_name, f0, eps, tol, results, list(sites.values()), problem, order=2)


def check(run: Run, wrt: list[str] | None = None, eps: float | None = None, tol: float | None = None,
          order: int = 1, sparse: bool = False) -> CheckReport:
    """`spiread check`: first derivatives (a gradient, or a Jacobian) or,
    with `order` 2, second derivatives against central differences; with
    `sparse`, also what `--sparse` computes against the dense result
    (`check_sparse`)."""
    report = (check_gradients if order == 1 else check_second_order)(run, wrt, eps, tol)
    if sparse and report.problem is None:
        from .check_sparse import check_sparse
        report.sparse = check_sparse(run, wrt, order, report.tol)
    return report


def _block_directions(rng: np.random.Generator, shape_a: tuple, shape_b: tuple, max_entries: int,
                      directions: int) -> tuple[bool, np.ndarray, np.ndarray]:
    """How a block ∂/∂A∂B (or ∂Y/∂X) is checked: entry by entry, u and v the
    unit rows over A and B, when it has at most `max_entries` entries and
    the identities fit the memory limit; else one random unit u and
    `directions` random unit v. Returns (entry by entry, the u, the v)."""
    if math.prod(shape_a) * math.prod(shape_b) <= max_entries and _identity_fits(shape_a, shape_b):
        return True, _unit_rows(shape_a), _unit_rows(shape_b)
    return False, _unit_directions(rng, 1, shape_a), _unit_directions(rng, directions, shape_b)


def _identity_fits(*shapes: tuple) -> bool:
    """Whether the identity's rows over each value's entries (the directions
    of an entry-by-entry check, pushed as a batch) are within the memory
    limit (limits.py); where they are not, random directions are checked."""
    limit = max_bytes()
    return all(8 * math.prod(shape) ** 2 <= limit for shape in shapes)


def _unit_rows(shape: tuple) -> np.ndarray:
    """The identity's rows over a value's entries, shape (size,) + shape (none for an empty value)."""
    size = math.prod(shape)
    return np.eye(size).reshape((size,) + shape)


def _unit_directions(rng: np.random.Generator, count: int, shape: tuple) -> np.ndarray:
    v = rng.standard_normal((count, int(np.prod(shape))))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v.reshape((count,) + shape)


def _something_to_check(run: Run, ids: dict[str, int]) -> None:
    """Values the output depends on none of would pass, zero against zero,
    having checked nothing: that is an error, not a pass."""
    if not any(run.depends_on(i) for i in ids.values()):
        raise run.nothing_to_differentiate(list(ids))


def _steps(eps: float | None, tol: float | None) -> tuple[float, float]:
    eps = DEFAULT_EPS if eps is None else eps
    tol = DEFAULT_TOL if tol is None else tol
    if not (np.isfinite(eps) and eps > 0):
        raise SpireadError(f"{option('eps', eps)}: the step must be a positive number", exit_code=2)
    if not (np.isfinite(tol) and tol > 0):
        raise SpireadError(f"{option('tol', tol)}: the tolerance must be a positive number", exit_code=2)
    return eps, tol


def _directions(probe: Probe, max_entries: int, directions: int,
                rng: np.random.Generator) -> tuple[str, np.ndarray]:
    """The directions to differentiate along, shape (k,) + the value's shape:
    every entry (the rows of the identity) when the value is small, 2·n
    evaluations fit the budget (`probe.work` entries each) and the identity
    the memory limit, else a few random unit directions."""
    x = probe.x
    if x.size <= max_entries and 2 * x.size * probe.work <= ELEMENTWISE_BUDGET_ENTRIES and _identity_fits(x.shape):
        return "elementwise", _unit_rows(x.shape)
    v = rng.standard_normal((directions, x.size))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return "directional", v.reshape((directions,) + x.shape)


def output_magnitude(tape: Tape, output: int) -> float:
    """How far rounding can move the output, in units of one rounding: the
    first-order bound Σ |value| · |∂output/∂value| over every node the output
    depends on (one reverse sweep gives all the adjoints). A small output made
    by cancelling larger terms (the log of a row sum that is 1 up to rounding)
    gets the allowance those terms need; a well-conditioned one gets little."""
    nodes = tape.nodes
    feeds = tape.feeding(output)
    ids = [i for i in range(output + 1) if feeds[i]]
    adjoints = tape.backward(output, ids)
    with np.errstate(all="ignore"):
        terms = [np.abs(nodes[i].value) * np.abs(adjoints[i]) for i in ids]
        return float(sum(np.sum(np.where(np.isfinite(t), t, 0.0)) for t in terms))  # the finite terms


def kink_sites(tape: Tape, wrt: list[int], output: int) -> list[KinkSite]:
    """Ops between the `wrt` nodes and the output whose input sits exactly at a kink."""
    sites = []
    for node in tape.between(wrt, output) if wrt else []:
        if node.op is None or node.op.kink is None:
            continue
        xs = [tape.nodes[i].value for i in node.inputs]
        mask = np.asarray(node.op.kink(*xs, **node.params))
        if mask.any():  # a binary op's mask has the broadcast shape: the first operand is shown at its place
            x = np.broadcast_to(xs[0], mask.shape)
            where = tuple(int(i) for i in np.argwhere(mask)[0]) if mask.ndim else ()
            sites.append(KinkSite(node, int(mask.sum()), mask.size, where, float(x[where])))
    return sites
