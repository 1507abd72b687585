"""Sparsity patterns: every op's declared structure (`Op.structure`,
spiread_cli/structure.py) against its own derivatives, and the patterns of
whole programs (spiread_cli/sparsity.py) against dense Jacobians and
Hessians at random points.

A pattern is exact when no derivative outside it is ever nonzero, and every
entry in it is nonzero at some point (or is explained by the op's rule, as a
product's second derivative at a point where another factor is 0)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("scipy")

import scipy.sparse as sp  # noqa: E402

from conftest import REPO, run, spiread, strict_json  # noqa: E402
from programs import programs  # noqa: E402
from spiread_cli import second  # noqa: E402
from spiread_cli.ops import OPS  # noqa: E402
from spiread_cli.sparsity import Sweep  # noqa: E402
from spiread_cli.structure import Entries, Links  # noqa: E402
from test_ops import CASES  # noqa: E402

RNG = np.random.default_rng(24)


def dense(links: Links | None, shape: tuple[int, int]) -> np.ndarray:
    """A rule's 0/1 matrix, written out."""
    m = np.zeros(shape, dtype=bool)
    if links is None:
        return m
    assert links.shape == shape, (links.shape, shape)
    if links.kind == "same":
        return np.eye(shape[0], dtype=bool)
    if links.kind == "pairs":
        m[links.rows, links.cols] = True
        return m
    if links.kind == "copies":
        rows = np.flatnonzero(links.cols >= 0)
        m[rows, links.cols[rows]] = True
        return m
    if links.kind == "strided":
        rows = np.arange(links.lo, links.hi)
        m[rows, links.start + links.step * rows] = True
        return m
    rows, cols = links.listed_groups()
    return (rows[:, None] >= 0) & (rows[:, None] == cols[None, :])


def entries_of(op, xs, params, varying: set[int]) -> Entries:
    out = op.impl(*xs, **params)
    return Entries(op, tuple(np.shape(x) for x in xs), np.shape(out), params,
                   lambda k: np.ones(np.size(xs[k]), bool) if k in varying else np.ravel(xs[k]) != 0)


def jacobian(op, xs, params, i) -> np.ndarray:
    """∂out/∂x_i, out entries × operand entries, by the op's own vjp on each unit cotangent."""
    with np.errstate(all="ignore"):
        out = np.asarray(op.impl(*xs, **params), dtype=float)
        rows = []
        for k in range(out.size):
            g = np.zeros(out.size)
            g[k] = 1.0
            gi = op.vjp(i, g.reshape(out.shape), out, *xs, **params)
            rows.append(np.zeros(np.size(xs[i])) if gi is None else np.ravel(np.broadcast_to(gi, np.shape(xs[i]))))
    return np.array(rows).reshape(out.size, np.size(xs[i]))


def mixed(op, xs, params, i, j, weights) -> np.ndarray:
    """∂²⟨weights, out⟩/∂x_i∂x_j by central differences of the exact vjp."""
    h = 1e-5
    columns = []
    for b in range(np.size(xs[j])):
        parts = []
        for step in (h, -h):
            moved = [np.array(x, dtype=float, copy=True) for x in xs]
            moved[j].reshape(-1)[b] += step
            with np.errstate(all="ignore"):
                out = np.asarray(op.impl(*moved, **params), dtype=float)
                gi = op.vjp(i, weights.reshape(out.shape), out, *moved, **params)
            parts.append(np.zeros(np.size(xs[i])) if gi is None else np.ravel(np.broadcast_to(gi, np.shape(xs[i]))))
        columns.append((parts[0] - parts[1]) / (2 * h))
    return np.array(columns).T.reshape(np.size(xs[i]), np.size(xs[j]))


def shift(shape) -> np.ndarray:
    """A small move of either sign, never so small that a zero it moves stays near 0."""
    return RNG.choice([-1.0, 1.0], size=shape) * RNG.uniform(0.05, 0.1, shape)


def points(xs):
    """The case's operands and nearby points: scaled, and negated, where zeros stay zero (a
    negated point is on the other side of a kink), and shifted, where they move."""
    scaled = [[x * RNG.uniform(0.8, 1.2, np.shape(x)) for x in xs] for _ in range(2)] + [[-x for x in xs]]
    shifted = [[x + shift(np.shape(x)) for x in xs] for _ in range(2)]
    return [list(xs)] + scaled, shifted


def nonzero(a: np.ndarray, tol: float) -> np.ndarray:
    return np.abs(a) > tol * (1.0 + np.abs(a).max(initial=0.0))


def test_every_op_declares_a_structure_with_rules():
    for name, op in OPS.items():
        assert callable(op.structure.first) and callable(op.structure.second), name
    assert set(OPS) <= {c.op for c in CASES}, "test_ops.CASES covers every op, so every op's pattern is tested here"


# Ops made of pieces that the few points below cannot all reach: which entry
# is the largest (max, min), which branch a condition takes (where), which
# period a remainder is in (its partial in the divisor is −floor(a/b), 0 in
# the first), which operand wins (maximum, minimum). Their patterns must still
# hold every nonzero seen; that each declared entry is nonzero at some point
# is left to the random programs.
PIECES_OUT_OF_REACH = {"max", "min", "rowMax", "rowMin", "colMax", "colMin", "remainder", "where", "maximum",
                       "minimum"}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_op_declares_its_first_order_pattern_exactly(case):
    op, params = OPS[case.op], case.params
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    same_zeros, moved = points(xs)
    for i in range(len(xs)):
        out_size = np.size(op.impl(*xs, **params))
        shape = (out_size, np.size(xs[i]))
        varying = dense(op.structure.first(i, entries_of(op, xs, params, set(range(len(xs))))), shape)
        # The others constant: their zeros are structural.
        held = dense(op.structure.first(i, entries_of(op, xs, params, {i})), shape)
        seen = np.zeros(shape, dtype=bool)
        # x_i moves (its zeros are not structural), the others keep theirs.
        for at in same_zeros + [at[:i] + [at[i] + shift(np.shape(at[i]))] + at[i + 1:]
                                for at in same_zeros]:
            found = nonzero(jacobian(op, at, params, i), 1e-12)
            assert not (found & ~held).any(), f"{case.id}: ∂out/∂x{i} nonzero outside the pattern (constants held)"
            seen |= found
        exact = case.op not in PIECES_OUT_OF_REACH
        assert not (exact and (held & ~seen).any()), f"{case.id}: the pattern of ∂out/∂x{i} holds entries that are always 0"
        for at in moved:
            found = nonzero(jacobian(op, at, params, i), 1e-12)
            assert not (found & ~varying).any(), f"{case.id}: ∂out/∂x{i} nonzero outside the pattern"
            seen |= found
        assert not (exact and (varying & ~seen).any()), \
            f"{case.id}: the pattern of ∂out/∂x{i} holds entries that are always 0"


@pytest.mark.parametrize("case", [c for c in CASES if OPS[c.op].structure.shaped is not None], ids=lambda c: c.id)
def test_links_said_by_the_shapes_are_the_first_order_rules(case):
    """An op whose structure says its first-order links from the shapes and
    params alone (`Structure.shaped`: slices, joined blocks, whole
    reductions) says what its `first` rule gives, where it says anything."""
    op, params = OPS[case.op], case.params
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    shapes, out_shape = tuple(np.shape(x) for x in xs), np.shape(op.impl(*xs, **params))
    said = [op.structure.shaped(i, shapes, out_shape, params) for i in range(len(xs))]
    for i, links in enumerate(said):
        if links is not None:
            shape = (int(np.prod(out_shape)), np.size(xs[i]))
            ruled = op.structure.first(i, entries_of(op, xs, params, set(range(len(xs)))))
            np.testing.assert_array_equal(dense(links, shape), dense(ruled, shape), err_msg=f"{case.id}: x{i}")
    assert any(links is not None for links in said) or case.op in ("index", "concat"), case.id


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_each_op_declares_its_second_order_pattern_exactly(case):
    op, params = OPS[case.op], case.params
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    out_size = np.size(op.impl(*xs, **params))
    everything = set(range(len(xs)))
    for adj in (np.ones(out_size, dtype=bool), RNG.random(out_size) < 0.5):
        for i in range(len(xs)):
            for j in range(i, len(xs)):
                shape = (np.size(xs[i]), np.size(xs[j]))
                declared = dense(op.structure.second(i, j, entries_of(op, xs, params, everything), adj), shape)
                seen = np.zeros(shape, dtype=bool)
                for at in sum(points(xs), []):
                    weights = RNG.uniform(0.5, 1.5, out_size) * adj
                    found = nonzero(mixed(op, at, params, i, j, weights), 1e-5)
                    assert not (found & ~declared).any(), \
                        f"{case.id}: ∂²/∂x{i}∂x{j} nonzero outside the declared pairs\n{found.astype(int)}\n{declared.astype(int)}"
                    seen |= found
                assert not (declared & ~seen).any(), \
                    f"{case.id}: ∂²/∂x{i}∂x{j}: declared pairs that are always 0\n{seen.astype(int)}\n{declared.astype(int)}"


# ------------------------------------------------------------ whole programs

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _moved_runs(program, wrt: list[str], count=3):
    """The program run at its own inputs and with the `wrt` inputs at random
    points (the others are constants to a derivative, and a constant's zeros
    are structural): near their values (scaled entry by entry and shifted a
    little, so zeros move), negated, and drawn afresh (across the kinks of
    relu, abs and the clamps). A point outside some op's domain gives
    non-finite derivatives and is skipped."""
    inputs = {n: np.asarray(v, dtype=float) for n, v in program.inputs.items() if n in wrt}
    points = [{n: v * RNG.uniform(0.7, 1.3, v.shape) + RNG.uniform(-0.05, 0.05, v.shape) for n, v in inputs.items()}
              for _ in range(count)]
    points += [{n: -v for n, v in inputs.items()}] + [{n: RNG.normal(size=v.shape) for n, v in inputs.items()}
                                                      for _ in range(2)]
    yield run(program.source, name="generated.ad")
    for sets in points:
        yield run(program.source, name="generated.ad", sets=sets)


def _flat_blocks(blocks: dict, names: list[str], rows: int) -> np.ndarray:
    return np.concatenate([np.reshape(blocks[b], (rows, -1)) for b in names], axis=1)


def _union(found: list[np.ndarray]) -> np.ndarray:
    seen = np.zeros_like(found[0])
    for f in found:
        seen |= f
    return seen


def numeric_structures(runs: list, node_ids: list[int]):
    """For each op node, a structure whose rules are the union over the runs'
    points of the op's own numeric local derivatives (first: by its vjp,
    exactly; second: by central differences of it): the pattern the tape
    would have if every op declared exactly what its derivatives do there."""
    structures = {}
    for node_id in node_ids:
        node = runs[0].tape.nodes[node_id]
        op, params = node.op, node.params
        at = [[r.tape.nodes[i].value for i in r.tape.nodes[node_id].inputs] for r in runs]
        # And at operand values no input reaches: `w.exp.clampMax(0)` has a
        # derivative for x = w.exp < 0, and `cosh` at a constant 0 for x ≠ 0.
        at += [[RNG.normal(size=np.shape(x)) for x in at[0]], [3 * RNG.normal(size=np.shape(x)) for x in at[0]],
               [0.5 + RNG.random(np.shape(x)) for x in at[0]], [-0.5 - RNG.random(np.shape(x)) for x in at[0]]]
        if op.name in PIECES_OUT_OF_REACH:  # every piece: each entry in turn far above and below the rest, and 0
            at += [[np.zeros(np.shape(x)) for x in at[0]]] + [
                [np.where(np.arange(np.size(x)).reshape(np.shape(x)) == k, sign * 10.0, RNG.normal(size=np.shape(x)))
                 for x in at[0]] for k in range(max(np.size(x) for x in at[0])) for sign in (1.0, -1.0)]

        def first(i, e, op=op, params=params, at=at):
            m = _union([np.nan_to_num(jacobian(op, xs, params, i)) != 0 for xs in at])
            rows, cols = np.nonzero(m)
            return Links.pairs(m.shape, rows, cols)

        def second_(i, j, e, adj, op=op, params=params, at=at):
            found = [nonzero(np.nan_to_num(mixed(op, xs, params, i, j, RNG.uniform(0.5, 1.5, adj.shape) * adj),
                                           posinf=0, neginf=0), 1e-5) for xs in at]
            rows, cols = np.nonzero(_union(found))
            return Links.pairs((e.size(i), e.size(j)), rows, cols)

        structures[node_id] = replace(op.structure, first=first, second=second_)
    return structures


def _sweep_with(run_, wrt_ids, structures):
    """Sweep over a copy of the run's tape whose op nodes carry `structures`."""
    tape = copy.copy(run_.tape)
    tape.nodes = [n.copy(op=replace(n.op, structure=structures[n.id])) if n.id in structures else n
                  for n in run_.tape.nodes]
    return Sweep(tape, run_.output, wrt_ids, shortcuts=False)  # every node through the rules given


def _check_exact(pattern: np.ndarray, found: list[np.ndarray], explained: np.ndarray, what: str) -> None:
    """No entry of a dense derivative outside the pattern, at any point; and
    every entry of the pattern nonzero at some point, or in `explained`:
    the pattern of the ops' numeric local derivatives at those points and
    at random operand values (an entry missing from the dense derivatives
    because two paths cancel, `w - w`, or because no input reaches the
    operand values where an op's derivative is nonzero)."""
    for f in found:
        assert not (f & ~pattern).any(), f"{what}: a nonzero outside the pattern at {np.argwhere(f & ~pattern)[0]}"
    unseen = pattern & ~_union(found)
    assert not (unseen & ~explained).any(), \
        f"{what}: pattern entries zero at every point: {np.argwhere(unseen & ~explained)[:5]}"


def _drawn_run(program, data):
    """The program run, some of the inputs it depends on drawn to differentiate by, and their ids."""
    names = [n for n in program.names if n in program.inputs and program.depends_on(n)]
    assume(names)
    wrt = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="wrt")
    base = run(program.source, name="generated.ad")
    return base, wrt, list(base.wrt_ids(wrt).values())


@SETTINGS
@given(programs(), st.data())
def test_hessian_and_gradient_patterns_of_random_programs_are_exact(program, data):
    base, wrt, ids = _drawn_run(program, data)
    sweep = Sweep(base.tape, base.output, ids)
    hessians, gradients, finite_runs = [], [], []
    for r in _moved_runs(program, wrt):
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            blocks = second.hessian(r, wrt).blocks
            grads = r.tape.backward(r.output, [r.bindings[w] for w in wrt])
        h = np.concatenate([_flat_blocks(blocks[a], wrt, np.size(r.node(a).value)) for a in wrt], axis=0)
        g = np.concatenate([np.ravel(grads[r.bindings[w]]) for w in wrt])
        if not (np.isfinite(h).all() and np.isfinite(g).all()):  # a point outside some op's domain
            continue
        hessians.append(h != 0)  # exact: AD computes a structural zero as 0
        gradients.append(g[None, :] != 0)
        finite_runs.append(r)
    assume(finite_runs)
    plan = [n.id for n in sweep.plan if n.op is not None]
    numeric = _sweep_with(base, ids, numeric_structures(finite_runs, plan))
    _check_exact(sweep.jacobian().toarray(), gradients, numeric.jacobian().toarray(), f"gradient of\n{program.source}")
    _check_exact(sweep.hessian().toarray(), hessians, numeric.hessian().toarray(), f"hessian of\n{program.source}")


def dense_sweep(tape, output: int, wrt: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """The Jacobian and Hessian patterns by the sweep's own rules with every
    0/1 matrix written out: J(node) = ∪ first(i)·J(i), H = ∪ J(a)ᵀ·second·J(b)
    (spiread_cli/sparsity.py's arithmetic, without its index arrays, progressions and bands)."""
    sweep = Sweep(tape, output, wrt)
    nodes, n = tape.nodes, sweep.n
    size = {node.id: int(np.prod(node.shape)) for node in sweep.plan}
    jac: dict[int, np.ndarray] = {}
    for node in sweep.plan:
        m = np.zeros((size[node.id], n), dtype=bool)
        for _, i, links in sweep.linked.get(node.id, ()):
            if links is not None:
                m |= (dense(links, (size[node.id], size[i])).astype(int) @ jac[i]) > 0
        if node.id in sweep.seeds:
            p = sweep.seeds[node.id]
            m[np.arange(size[node.id]), sweep.offsets[p] + np.arange(size[node.id])] = True
        jac[node.id] = m
    hessian = np.zeros((n, n), dtype=bool)
    adjoints = {output: np.ones(size[output], dtype=bool)} if output in jac else {}
    for node in reversed(sweep.plan):
        adj = adjoints.get(node.id)
        if adj is None or node.op is None or not adj.any():
            continue
        for _, i, links in sweep.linked[node.id]:
            if links is not None:
                back = (adj.astype(int) @ dense(links, (size[node.id], size[i]))) > 0
                adjoints[i] = adjoints.get(i, np.zeros(size[i], dtype=bool)) | back
        for k, i in enumerate(node.inputs):
            for m_, j in enumerate(node.inputs[k:], start=k):
                if i in jac and j in jac:
                    links = node.op.structure.second(k, m_, sweep.entries_of(node), adj)
                    pairs = dense(links, (size[i], size[j])).astype(int)
                    hessian |= (jac[i].T.astype(int) @ pairs @ jac[j]) > 0
    return (jac[output] if output in jac else np.zeros((int(np.prod(nodes[output].shape)), n), dtype=bool),
            hessian | hessian.T)


@SETTINGS
@given(programs(), st.data())
def test_the_sweep_s_index_arrays_and_bands_give_the_written_out_patterns(program, data):
    base, _, ids = _drawn_run(program, data)
    jacobian, hessian = dense_sweep(base.tape, base.output, ids)
    sweep = Sweep(base.tape, base.output, ids)
    np.testing.assert_array_equal(sweep.jacobian().toarray(), jacobian)
    np.testing.assert_array_equal(Sweep(base.tape, base.output, ids).hessian().toarray(), hessian)


def _same_sweeps(tape, output: int, ids: list[int], what: str) -> None:
    """The sweep with its elementwise shortcuts and every node through its
    op's rules read the same Jacobian and Hessian patterns, having read the
    same values' zeros (what a kept plan watches)."""
    for pattern in (Sweep.jacobian, Sweep.hessian):
        fast, ruled = Sweep(tape, output, ids), Sweep(tape, output, ids, shortcuts=False)
        got, expected = pattern(fast), pattern(ruled)
        assert got.shape == expected.shape
        assert (got != expected).nnz == 0, f"{pattern.__name__} of\n{what}: " \
            f"added {np.argwhere((got > expected).toarray())[:5]}, dropped {np.argwhere((got < expected).toarray())[:5]}"
        assert fast.zeros_read.keys() == ruled.zeros_read.keys(), what
        for i, (seen, moving) in ruled.zeros_read.items():
            np.testing.assert_array_equal(fast.zeros_read[i][0], seen)
            assert (fast.zeros_read[i][1] is None) == (moving is None), what


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_the_elementwise_shortcuts_read_what_the_rules_do_on_random_programs(program, data):
    base, _, ids = _drawn_run(program, data)
    _same_sweeps(base.tape, base.output, ids, program.source)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_the_hessian_sweep_s_reach_is_its_pattern_s_and_colours_alike(program, data):
    """`Sweep.reach` (the Hessian's pairs' largest |column − row|, kept as they are met) is the
    pattern's, and the colouring told it is the colouring that reads it."""
    from spiread_cli.sparsity_colouring import colour_symmetric
    base, _, ids = _drawn_run(program, data)
    sweep = Sweep(base.tape, base.output, ids)
    pattern = sweep.hessian()
    coo = pattern.tocoo()
    assert sweep.reach == int(np.abs(coo.col.astype(np.int64) - coo.row).max(initial=-1))
    told, read = colour_symmetric(pattern, sweep.reach), colour_symmetric(pattern)
    assert (told.kind, told.count, told.periodic) == (read.kind, read.count, read.periodic)
    np.testing.assert_array_equal(told.colours, read.colours)


SHORTCUTS = [  # each a case the shortcut takes, or leaves to the rules
    "loss = (x.tanh.sin * x.exp + x * x).sum",                       # chains, a product of one value with itself
    "loss = ((x * [1.0, 0.0, 2.0, 0.0, 3.0, 0.0]) ** 2).sum",         # a constant factor with zeros: the rule's copies
    "loss = ((2 * x).sin * (x * 0)).sum",                              # a nowhere-zero constant, a zero scalar
    "p = hstack([0.0], x, [0.0])\nloss = ((p * p[1:7].exp.sum) ** 2).sum + (p[:-2] * p[2:]).sum",  # a moving factor's unreached rows
    "loss = (x.sum * x).exp.sum + (x[0] * x ** 3).sum",                # a moving scalar broadcast
    "loss = where(x > 0, x ** 2, x.exp).sum + (x.value * x).sin.sum",  # flat operands, a moving value with no derivative
    "y = x.tanh\nloss = (y * y.exp + y.sin * y.cos + y ** 3).sum",     # a value many nonlinear ops meet
]


@pytest.mark.parametrize("text", SHORTCUTS)
def test_the_elementwise_shortcuts_read_what_the_rules_do(text):
    source = f"x = [0.5, -1.0, 0.0, 2.0, 0.25, -0.75]\n{text}\n"
    base = run(source)
    _same_sweeps(base.tape, base.output, [base.bindings["x"]], source)
    with np.errstate(all="ignore"):
        h = second.hessian(run(source, sets={"x": RNG.normal(size=6)}), ["x"]).blocks["x"]["x"]
    assert not ((h != 0) & ~Sweep(base.tape, base.output, [base.bindings["x"]]).hessian().toarray()).any()


SLICED = [
    "loss = (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum",
    "loss = (x[::2] * x[1::2]).sum + (x[::-1] * x).sum",
    "loss = (x[2:9:3].exp * x[7:0:-3]).sum + (x[0] * x).sum",
    "loss = (x[:4].sin * x[4:8]).sum + x[1:].sum * x[0]",
    "A = x.reshape(3, 4)\nloss = (A[1:, :] * A[:-1, :]).sum + (A[:, 1:] ** 3).sum + (A.T[1:, ::2] ** 2).sum",
    # concatenated blocks (rows of a progression with none above or below), then sliced
    "p = hstack([0.0], x, [0.0])\nloss = ((p[:-2] - 2 * x + p[2:]) ** 2).sum + (p[1:] * p[:-1]).sum",
    "loss = (hstack(x[:3], x[5:]) * x[1:11]).sum + (hstack(x[::2], [1.0, 2.0]).exp * x[4:]).sum",
]


@pytest.mark.parametrize("text", SLICED)
def test_slices_of_slices_read_exact_patterns(text):
    """Chains of slices are kept as progressions and their pairs as bands: the
    pattern is the written-out one's, and every entry of it is nonzero at random points."""
    rng = np.random.default_rng(7)  # its own: the module's RNG stays as the per-op tests draw it
    source = f"x = {rng.normal(size=12).tolist()}\n{text}\n"
    base = run(source)
    ids = [base.bindings["x"]]
    pattern = Sweep(base.tape, base.output, ids).hessian().toarray()
    np.testing.assert_array_equal(pattern, dense_sweep(base.tape, base.output, ids)[1])
    seen = np.zeros_like(pattern)
    for _ in range(3):
        h = second.hessian(run(source, sets={"x": rng.normal(size=12)}), ["x"]).blocks["x"]["x"]
        assert not ((h != 0) & ~pattern).any()
        seen |= h != 0
    np.testing.assert_array_equal(seen, pattern)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(0, 6), st.integers(0, 30), st.data())
def test_the_hessian_s_pairs_are_assembled_alike_through_a_band_or_scattered(n, band, count, data):
    from spiread_cli.sparsity_links import HessianPairs, Progression
    found, expected = HessianPairs(n), np.zeros((n, n), dtype=bool)
    for _ in range(data.draw(st.integers(0, 3), label="diagonals")):
        step = data.draw(st.sampled_from([1, 2, -1, 3]), label="step")
        d = data.draw(st.integers(-band, band), label="distance")
        rows = [r for r in range(n) if 0 <= r + d < n][::step]
        if rows:
            found.add(Progression(rows[0], step, len(rows)), Progression(rows[0] + d, step, len(rows)))
            expected[rows, np.add(rows, d)] = True
    for _ in range(data.draw(st.integers(0, 2), label="ranged")):  # rows of a progression with none outside lo..hi-1
        a = data.draw(progressions(n, n), label="a")
        lo, hi = data.draw(st.integers(0, n), label="lo"), data.draw(st.integers(0, n), label="hi")
        rows = np.arange(max(a.lo, lo), min(a.hi, hi))
        d = data.draw(st.integers(-band, band), label="distance")
        rows = rows[(a.start + a.step * rows + d >= 0) & (a.start + a.step * rows + d < n)]
        if len(rows):  # b's rows lo..hi-1 narrowed to where a's partner is within the matrix
            b = Progression(a.start + d, a.step, n, int(rows[0]), int(rows[-1]) + 1)
            found.add(a, b)
            both = np.arange(max(a.lo, b.lo), min(a.hi, b.hi))
            expected[a.start + a.step * both, b.start + b.step * both] = True
    rng = np.random.default_rng(n * 100 + count)
    a = rng.integers(-1, n, count)
    b = np.clip(a + rng.integers(-band, band + 1, count), -1, n - 1)
    found.add(a, b)
    keep = (a >= 0) & (b >= 0)
    expected[a[keep], b[keep]] = True
    expected |= expected.T
    np.testing.assert_array_equal(found.matrix().toarray(), expected)
    np.testing.assert_array_equal(found._scattered().toarray() if found.entries else expected, expected)


def test_a_sweep_is_freed_as_soon_as_it_is_dropped():
    """No reference cycle: a pattern's sweep (its nodes' rules, patterns and
    masks) is freed when its last reference goes, not at the cyclic
    collector's next pass."""
    import gc
    import weakref
    r = run((REPO / "examples" / "bratu.ad").read_text(), name="bratu.ad")
    collecting = gc.isenabled()
    gc.disable()
    try:
        sweep = Sweep(r.tape, r.output, [r.bindings["u"]])
        sweep.hessian()
        sweep.jacobian()
        dropped = weakref.ref(sweep)
        del sweep
        assert dropped() is None
    finally:
        if collecting:
            gc.enable()


@pytest.mark.parametrize("gap", [None, 0, 3, 8])
def test_a_band_of_diagonals_with_or_without_a_gap_is_assembled_exactly(gap):
    """Runs of pairs that cover every entry within the band (a chain's
    Hessian, written without a table of cells) and the same runs with one
    pair left out (through the table) give the pairs they hold, no more."""
    from spiread_cli.sparsity_links import HessianPairs, Progression
    n = 10
    found, expected = HessianPairs(n), np.zeros((n, n), dtype=bool)
    for d in (0, 1, 2):
        rows = [r for r in range(n - d) if not (d == 1 and r == gap)]
        for run_ in np.split(np.array(rows), np.flatnonzero(np.diff(rows) > 1) + 1):  # runs of consecutive rows
            found.add(Progression(int(run_[0]), 1, len(run_)), Progression(int(run_[0]) + d, 1, len(run_)))
            expected[run_, run_ + d] = expected[run_ + d, run_] = True
    m = found.matrix()
    np.testing.assert_array_equal(m.toarray(), expected)
    assert m.has_canonical_format and (np.diff(m.indptr) == expected.sum(axis=1)).all()


@pytest.mark.parametrize("text", ["loss = x.sum", "loss = (2 * x).sum + x[1:].sum - x.mean", "loss = x[0]"])
def test_the_hessian_pattern_of_a_linear_program_is_an_empty_matrix_as_scipys(text):
    """No pair met: the n × n matrix with no entry, made as scipy's constructor makes it."""
    r = run("x = [1.0, 2.0, 3.0, 4.0]\n" + text)
    found = Sweep(r.tape, r.output, [r.bindings["x"]]).hessian()
    built = sp.csr_array((4, 4), dtype=bool)
    found.check_format(full_check=True)
    assert found.nnz == 0 and found.shape == built.shape and found.dtype == built.dtype
    assert found.indptr.dtype == built.indptr.dtype and found.has_canonical_format
    np.testing.assert_array_equal((found + sp.eye_array(4, dtype=bool)).toarray(), np.eye(4, dtype=bool))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.integers(0, 12), st.sampled_from([np.int32, np.int64]),
       st.sampled_from([bool, np.float64]), st.integers(0, 2**32 - 1))
def test_a_csr_matrix_made_without_the_constructor_is_the_constructors(rows, n, kind, dtype, seed):
    """sorted_csr (canonical parts, no checks) leaves the matrix as scipy's
    constructor does: the same attributes with the same values, canonical,
    the parts themselves (no copy); it passes scipy's full check, and
    arithmetic and conversions on it give the constructor's results."""
    from spiread_cli.sparsity_colouring import sorted_csr
    rng = np.random.default_rng(seed)
    shape = rng.random((rows, n)) < 0.4
    indptr = np.concatenate([[0], np.cumsum(shape.sum(axis=1))]).astype(kind)
    indices = np.nonzero(shape)[1].astype(kind)
    data = rng.standard_normal(len(indices)).astype(dtype)
    made = sorted_csr(data, indices, indptr, (rows, n))
    built = sp.csr_array((data, indices, indptr), shape=(rows, n))
    assert built.has_canonical_format  # found by scanning the parts (and kept, as sorted_csr keeps it)
    assert vars(made).keys() == vars(built).keys()
    for name, value in vars(built).items():
        if isinstance(value, np.ndarray):
            assert made.__dict__[name].dtype == value.dtype and np.array_equal(made.__dict__[name], value), name
        else:
            assert made.__dict__[name] == value, name
    assert made.data is data and made.indices is indices and made.indptr is indptr
    made.check_format(full_check=True)
    other = sp.random_array((n, 3), density=0.5, rng=rng, format="csr")
    np.testing.assert_array_equal(made.toarray(), built.toarray())
    np.testing.assert_array_equal((made @ other).toarray(), (built @ other).toarray())
    np.testing.assert_array_equal((made + made).toarray(), (built + built).toarray())
    np.testing.assert_array_equal(made.T.tocsr().toarray(), built.T.tocsr().toarray())
    assert made.nnz == built.nnz and made.dtype == built.dtype and made.shape == built.shape


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 12), st.integers(1, 12), st.sampled_from([np.int32, np.int64]), st.booleans(),
       st.integers(0, 2**32 - 1))
def test_a_csr_copy_is_scipys_and_shares_no_part(rows, n, kind, canonical, seed):
    """csr_copy (a kept pattern, each call's own): scipy's copy, attribute
    by attribute, whether the matrix is canonical (copied without scipy's
    checks) or not (a row's indices unsorted), and no part shared."""
    from spiread_cli.sparsity_colouring import csr_copy
    rng = np.random.default_rng(seed)
    cells = rng.random((rows, n)) < 0.4
    indptr = np.concatenate([[0], np.cumsum(cells.sum(axis=1))]).astype(kind)
    indices = np.nonzero(cells)[1].astype(kind)
    if not canonical and len(indices) > 1 and indptr[1] > 1:
        indices[:indptr[1]] = indices[:indptr[1]][::-1]  # the first row's unsorted
    m = sp.csr_array((np.ones(len(indices), dtype=bool), indices, indptr), shape=(rows, n))
    got, want = csr_copy(m), m.copy()
    # besides scipy's, only the flags a canonical copy keeps (as sorted_csr does), which hold
    assert vars(got).keys() - vars(want).keys() <= {"_has_sorted_indices", "_has_canonical_format"}
    assert got.has_canonical_format == want.has_canonical_format == canonical or len(indices) <= 1 or indptr[1] <= 1
    got.check_format(full_check=True)
    for name, value in vars(want).items():
        if isinstance(value, np.ndarray):
            assert got.__dict__[name].dtype == value.dtype and np.array_equal(got.__dict__[name], value), name
            assert not np.shares_memory(got.__dict__[name], m.__dict__[name]), name
        else:
            assert got.__dict__[name] == value, name


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_a_pattern_of_diagonals_is_written_out_exactly(size, n, data):
    """Columns each a diagonal over a run of rows (a stencil's Jacobian):
    the CSR holds their cells, whether they cover the band (written
    without a table of cells) or leave some out."""
    from spiread_cli.sparsity_links import Columns, Progression
    columns, expected = [], np.zeros((size, n), dtype=bool)
    for _ in range(data.draw(st.integers(1, 4), label="columns")):
        start = data.draw(st.integers(-size + 1, n - 1), label="start")
        inside = [r for r in range(size) if 0 <= r + start < n]
        lo = data.draw(st.integers(inside[0], inside[-1]), label="lo") if inside else 0
        hi = data.draw(st.integers(lo, inside[-1] + 1), label="hi") if inside else 0
        columns.append(Progression(start, 1, size, lo, hi))
        expected[np.arange(lo, hi), start + np.arange(lo, hi)] = True
    m = Columns(size, columns).csr(n)
    np.testing.assert_array_equal(m.toarray(), expected)
    assert (np.diff(m.indptr) == expected.sum(axis=1)).all()


@st.composite
def progressions(draw, length: int, n: int):
    """A Progression over `length` rows whose entries (rows lo..hi-1) are columns within 0..n-1."""
    from spiread_cli.sparsity_links import Progression
    step = draw(st.sampled_from([0, 1, 1, 2, -1, -3]), label="step")
    lo = draw(st.integers(0, length), label="lo")
    hi = draw(st.integers(lo, length), label="hi")
    # 0 ≤ start + step·r < n at both ends of the rows, so at every row between
    ends = (lo, hi - 1) if hi > lo else ()
    first = max(-step * r for r in ends) if ends else 0
    last = min(n - 1 - step * r for r in ends) if ends else n - 1
    assume(first <= last)
    return Progression(draw(st.integers(first, last), label="start"), step, length, lo, hi)


def _written(column, n: int) -> np.ndarray:
    from spiread_cli.sparsity_links import _array
    cols = _array(column)
    m = np.zeros((len(cols), n), dtype=bool)
    rows = np.flatnonzero(cols >= 0)
    m[rows, cols[rows]] = True
    return m


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.data())
def test_progressions_pulled_through_slices_and_gathers_are_their_arrays_pulled(length, n, data):
    """A progression (a slice's or a concatenated block's rows, never listed)
    pulled through a strided or copying link, or read in a band, gives the
    pattern its written-out array gives."""
    from spiread_cli.sparsity_links import Columns, pulled
    column = data.draw(progressions(length, n), label="column")
    written = _written(column, n)
    np.testing.assert_array_equal(Columns(length, [column]).csr(n).toarray(), written)
    other = data.draw(progressions(length, n), label="other")  # two columns: a band, or apart
    np.testing.assert_array_equal(Columns(length, [column, other]).csr(n).toarray(), written | _written(other, n))
    size = data.draw(st.integers(1, 12), label="size")
    cols = np.array(data.draw(st.lists(st.integers(-1, length - 1), min_size=size, max_size=size), label="cols"))
    for links in (Links.gathered((size, length), cols), Links.copies((size, length), cols)):
        expected = dense(links, (size, length)).astype(int) @ written > 0
        for j in (Columns(length, [column]), Columns(length, [column.array()])):
            np.testing.assert_array_equal(pulled(links, j, n).csr(n).toarray(), expected)
    # a strided link: rows lo..hi-1 at start + step·r, within the operand
    link = data.draw(progressions(size, length), label="link")
    links = Links.strided((size, length), link.start, link.step, link.lo, link.hi)
    expected = dense(links, (size, length)).astype(int) @ written > 0
    for j in (Columns(length, [column]), Columns(length, [column.array()])):
        np.testing.assert_array_equal(pulled(links, j, n).csr(n).toarray(), expected)
    adj = np.array(data.draw(st.lists(st.booleans(), min_size=size, max_size=size), label="adj"))
    from spiread_cli.sparsity_links import pushed_back
    np.testing.assert_array_equal(pushed_back(links, adj), adj.astype(int) @ dense(links, (size, length)) > 0)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 150), st.integers(1, 150), st.data())
def test_diagonals_over_runs_of_rows_are_written_out_as_their_matrix(rows, n, data):
    """runs_csr: row r has column r + d wherever a run of diagonal d holds
    r; diagonals with gaps between them, runs that overlap, a diagonal cut
    in two, many rows some diagonal leaves out (the table's way) alike."""
    from spiread_cli.sparsity_csr import runs_csr
    runs, expected = {}, np.zeros((rows, n), dtype=bool)
    for _ in range(data.draw(st.integers(1, 5), label="runs")):
        d = data.draw(st.integers(-rows + 1, n - 1), label="diagonal")
        inside = [r for r in range(rows) if 0 <= r + d < n]
        first = data.draw(st.integers(inside[0], inside[-1]), label="first")
        end = data.draw(st.integers(first, inside[-1] + 1), label="end")
        runs.setdefault(d, []).append((first, end))
        expected[np.arange(first, end), d + np.arange(first, end)] = True
    m = runs_csr(runs, rows, n)
    np.testing.assert_array_equal(m.toarray(), expected)
    assert m.has_canonical_format and m.nnz == expected.sum() and (np.diff(m.indices) > 0)[
        np.diff(np.repeat(np.arange(rows), np.diff(m.indptr))) == 0].all()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=12, unique=True).map(sorted),
       st.integers(0, 40_000), st.integers(-100, 100), st.sampled_from([np.int32, np.int64]), st.booleans())
def test_the_rows_of_a_band_are_written_end_to_end(offsets, rows, first, kind, small_first_block):
    """_windows: row r of the band is first + r + offsets, however many
    rows (past the first block, kept by its offsets and dtype, and made
    again when the kept ones are dropped), for each index dtype."""
    from spiread_cli import sparsity_csr
    if small_first_block:  # doubling from a first block of a row or a few
        sparsity_csr._FIRST_ROWS.clear()
    out = np.empty(rows * len(offsets), dtype=kind)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparsity_csr, "FIRST_ENTRIES", 1 if small_first_block else sparsity_csr.FIRST_ENTRIES)
        sparsity_csr._windows(out, first, tuple(offsets))
        sparsity_csr._FIRST_ROWS.clear()
    np.testing.assert_array_equal(out, (first + np.add.outer(np.arange(rows), offsets)).ravel())


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 80), st.integers(1, 80), st.integers(-90, 90), st.integers(1, 5), st.booleans(), st.data())
def test_a_band_of_cells_is_written_out_as_its_matrix(rows, n, low, width, filled, data):
    """band_csr: row r has column r + low + c wherever cells[c, r]; a band
    with every cell within the matrix set and few rows at its edges takes
    the path that never reads them."""
    from spiread_cli.sparsity_csr import band_csr
    r, c = np.meshgrid(np.arange(rows), np.arange(width))
    within = (r + low + c >= 0) & (r + low + c < n)
    cells = within.copy() if filled else within & np.array(
        data.draw(st.lists(st.booleans(), min_size=rows * width, max_size=rows * width), label="cells")).reshape(width, rows)
    expected = np.zeros((rows, n), dtype=bool)
    expected[r[cells], (r + low + c)[cells]] = True
    m = band_csr(cells, low, n)
    np.testing.assert_array_equal(m.toarray(), expected)
    assert m.has_sorted_indices and m.nnz == expected.sum()


# ------------------------------------------------------------- colouring


def _random_symmetric(n: int, density: float) -> np.ndarray:
    m = RNG.random((n, n)) < density
    return m | m.T | np.eye(n, dtype=bool)


@pytest.mark.parametrize("n", [4, 9, 100, 5000])
def test_a_tridiagonal_pattern_takes_three_sweeps(n):
    from spiread_cli.sparsity_colouring import colour_columns, colour_symmetric
    pattern = sp.csr_array(sp.diags([np.ones(n - 1), np.ones(n), np.ones(n - 1)], [-1, 0, 1]).astype(bool))
    assert colour_symmetric(pattern).count == 3
    assert colour_columns(pattern).count == 3


def test_an_arrowhead_takes_two_sweeps_by_a_star_colouring_and_n_by_columns():
    from spiread_cli.sparsity_colouring import colour_columns, colour_symmetric
    n = 40
    arrow = np.eye(n, dtype=bool)
    arrow[0, :] = arrow[:, 0] = True
    star = colour_symmetric(sp.csr_array(arrow))
    assert (star.kind, star.count) == ("star", 2)
    assert colour_columns(sp.csr_array(arrow)).count == n


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 25), st.integers(1, 25), st.floats(0.0, 0.7), st.booleans())
def test_greedy_columns_are_the_natural_order_greedy_colouring(m, n, density, full_row):
    """Found through the column intersection graph, the colours are those of
    the plain greedy walk: each column in turn takes the least colour no
    earlier column sharing a row with it has (a full row: n colours)."""
    from spiread_cli.sparsity_colouring import _greedy_columns
    shape = RNG.random((m, n)) < density
    if full_row:
        shape[RNG.integers(m)] = True
    expected: list[int] = []
    for j in range(n):
        taken = {expected[k] for k in range(j) if (shape[:, k] & shape[:, j]).any()}
        expected.append(min(set(range(n + 1)) - taken))
    assert _greedy_columns(sp.csr_array(shape)).tolist() == expected


@pytest.mark.parametrize("pairs_at_once", [1, 3])
def test_greedy_columns_walked_in_blocks_are_the_same_colours(monkeypatch, pairs_at_once):
    from spiread_cli import sparsity_colouring
    monkeypatch.setattr(sparsity_colouring, "PAIRS_AT_ONCE", pairs_at_once)
    for _ in range(30):
        m, n = RNG.integers(1, 20, size=2)
        shape = sp.csr_array(RNG.random((m, n)) < RNG.random() * 0.7)
        monkeypatch.setattr(sparsity_colouring, "PAIRS_AT_ONCE", 1 << 20)
        whole = sparsity_colouring._greedy_columns(shape).tolist()
        monkeypatch.setattr(sparsity_colouring, "PAIRS_AT_ONCE", pairs_at_once)
        assert sparsity_colouring._greedy_columns(shape).tolist() == whole


def test_a_nearly_full_row_is_coloured_in_memory_bounded_by_the_block_not_n_squared(monkeypatch):
    """A row missing one column is not the full-row shortcut: its columns
    share it pairwise, ~n²/2 pairs (of the order of n² bytes held at once
    when found in one product); in blocks, memory stays near one block's."""
    import tracemalloc

    from spiread_cli import sparsity_colouring
    monkeypatch.setattr(sparsity_colouring, "PAIRS_AT_ONCE", 1 << 14)
    n = 600
    shape = np.eye(n, dtype=bool)
    shape[0, 1:-1] = True
    pattern = sp.csr_array(shape)
    tracemalloc.start()
    try:
        colours = sparsity_colouring._greedy_columns(pattern)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert colours.max() + 1 == n - 1  # the row's n - 1 columns differ; the last column may reuse colour 0
    assert peak < 1.5 * 2**20, f"{peak / 2**20:.1f} MB held to colour {n} columns"


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 60), st.integers(0, 5), st.integers(0, 5), st.floats(0.3, 1.0))
def test_a_banded_pattern_s_colours_are_structurally_orthogonal_and_recover_every_nonzero(n, below, above, fill):
    """Curtis–Powell–Reid colours (j mod the band's width, written by
    repeated copies): no two columns of one colour share a row, and one
    product per colour gives back every nonzero of a matrix of that pattern."""
    from spiread_cli.sparsity_colouring import Recovery, colour_columns
    offsets = np.subtract.outer(np.arange(n), np.arange(n))
    shape = (offsets <= below) & (-offsets <= above) & (RNG.random((n, n)) < fill)
    values = RNG.normal(size=(n, n)) * shape
    pattern = sp.csr_array(shape)
    colouring = colour_columns(pattern)
    colours = colouring.colours
    for c in range(colouring.count):
        assert (shape[:, colours == c].sum(axis=1) <= 1).all(), f"colour {c} has two columns in one row"
    if shape.any():
        assert colouring.count <= below + above + 1
    recovered = Recovery(pattern, colouring)(np.ascontiguousarray((values @ colouring.seeds().T).T))
    np.testing.assert_array_equal(recovered.toarray(), values)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 4), st.integers(0, 4), st.lists(st.integers(0, 10**6), max_size=6),
       st.booleans())
def test_a_periodic_colouring_s_recovery_positions_are_each_entry_s_colour_and_row(n, below, above, holes, symmetric):
    """A banded colouring's positions, written in runs of full rows by
    copies, are colour(j) · rows + i for every entry (i, j): bands with and
    without holes (an emptied cell or row ends a run), long and short."""
    from spiread_cli.sparsity_colouring import Recovery, colour_columns, colour_symmetric
    rows = np.repeat(np.arange(n), below + above + 1)
    cols = rows + np.tile(np.arange(-below, above + 1), n)
    kept = (cols >= 0) & (cols < n)
    for hole in holes:
        cell = hole % (n * (below + above + 1))
        kept[cell if hole % 2 else slice(cell - cell % (below + above + 1), cell)] = False  # a cell, or a row's start
    shape = np.zeros((n, n), dtype=bool)
    shape[rows[kept], cols[kept]] = True
    if symmetric:
        shape |= shape.T
    pattern = sp.csr_array(shape)
    colouring = colour_symmetric(pattern) if symmetric else colour_columns(pattern)
    assume(colouring.periodic)
    expected = colouring.colours[pattern.indices] * n + np.repeat(np.arange(n), np.diff(pattern.indptr))
    np.testing.assert_array_equal(Recovery(pattern, colouring).at, expected)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 60), st.integers(0, 5), st.floats(0.3, 1.0), st.integers(0, 2**32 - 1), st.data())
def test_a_symmetric_band_is_coloured_as_read_from_both_sides_and_seeded_alike(n, reach, fill, seed, data):
    """colour_symmetric reads a symmetric band's width from one side: the
    colours colour_columns finds reading both; its periodic seeds (strided
    ones), for any block of colours, are the colours compared one by one."""
    from spiread_cli.sparsity_colouring import Colouring, colour_columns, colour_symmetric
    offsets = np.subtract.outer(np.arange(n), np.arange(n))
    shape = (np.abs(offsets) <= reach) & (np.random.default_rng(seed).random((n, n)) < fill)
    shape |= shape.T
    pattern = sp.csr_array(shape)
    symmetric, both = colour_symmetric(pattern), colour_columns(pattern)
    if symmetric.kind == "columns":
        assert (symmetric.count, symmetric.periodic) == (both.count, both.periodic)
        np.testing.assert_array_equal(symmetric.colours, both.colours)
    else:  # a star colouring, taken for needing fewer
        assert symmetric.count < both.count
    assume(both.periodic)
    start = data.draw(st.integers(0, both.count - 1), label="start")
    count = data.draw(st.integers(1, both.count - start), label="count")
    compared = Colouring(both.colours, both.kind, both.count)  # not told it is periodic: compares
    np.testing.assert_array_equal(both.seeds(start, count), compared.seeds(start, count))
    np.testing.assert_array_equal(both.seeds(), compared.seeds())


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 30), st.floats(0.0, 0.4), st.sampled_from(["star", "columns"]))
def test_every_nonzero_is_recovered_from_one_product_per_colour(n, density, kind):
    from spiread_cli.sparsity_colouring import Colouring, Recovery, _greedy_columns, _greedy_star
    shape = _random_symmetric(n, density)
    values = RNG.normal(size=(n, n)) * shape
    values = values + values.T
    pattern = sp.csr_array(shape)
    colours = _greedy_star(pattern) if kind == "star" else _greedy_columns(pattern)
    colouring = Colouring(colours, kind)
    # A star colouring: neighbours differ, and no path of four vertices is two-coloured.
    rows, cols = np.nonzero(shape & ~np.eye(n, dtype=bool))
    assert (colours[rows] != colours[cols]).all()
    recovered = Recovery(pattern, colouring)(np.ascontiguousarray((values @ colouring.seeds().T).T)).toarray()
    np.testing.assert_array_equal(recovered, values)


# -------------------------------------------------------- sparse = dense


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs(), st.data())
def test_the_sparse_hessian_equals_the_dense_one(program, data):
    names = [n for n in program.names if n in program.inputs and program.depends_on(n)]
    assume(names)
    wrt = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="wrt")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        dense_run = run(program.source, name="generated.ad")
        blocks = second.hessian(dense_run, wrt).blocks
        found = second.sparse_hessian(run(program.source, name="generated.ad"), wrt)
    expected = np.concatenate([_flat_blocks(blocks[a], wrt, np.size(dense_run.node(a).value)) for a in wrt], axis=0)
    assume(np.isfinite(expected).all())
    np.testing.assert_allclose(found.matrix.toarray(), expected, rtol=1e-10, atol=1e-12 * (1 + np.abs(expected).max()))
    assert found.sweeps <= found.matrix.shape[0]


# --------------------------------------------------------- programs we know


ROSENBROCK = REPO / "examples" / "chained_rosenbrock.ad"


def rosenbrock_hessian(x: np.ndarray) -> np.ndarray:
    """The chained Rosenbrock function's Hessian, by hand."""
    n = len(x)
    h = np.zeros((n, n))
    i = np.arange(n - 1)
    h[i, i] += 1200 * x[i] ** 2 - 400 * x[i + 1] + 2
    h[i + 1, i + 1] += 200
    h[i, i + 1] = h[i + 1, i] = -400 * x[i]
    return h


def test_the_chained_rosenbrock_hessian_is_tridiagonal_and_exact_from_three_sweeps():
    x = RNG.normal(size=50)
    found = second.sparse_hessian(run(ROSENBROCK.read_text(), sets={"x": x}), ["x"])
    assert found.sweeps == 3
    np.testing.assert_allclose(found.matrix.toarray(), rosenbrock_hessian(x), rtol=1e-12)
    pattern = second.hessian_pattern(run(ROSENBROCK.read_text(), sets={"x": x}), ["x"]).pattern
    assert pattern.nnz == 50 + 2 * 49


def test_a_constant_s_zeros_are_structural_in_a_matrix_product():
    """`A @@ x` with a constant banded A: ((A @@ x) ** 2).sum has Hessian AᵀA's pattern."""
    n = 12
    a = np.diag(np.ones(n)) + np.diag(np.ones(n - 1), 1)
    text = f"A = {a.tolist()}\nx = {RNG.normal(size=n).tolist()}\nloss = ((A @@ x) ** 2).sum\n"
    pattern = second.hessian_pattern(run(text), ["x"]).pattern.toarray()
    np.testing.assert_array_equal(pattern, (a.T @ a) != 0)


# ------------------------------------------------------------ the command line


def test_hessian_sparse_json_gives_coo_triples_equal_to_the_dense_hessian(tmp_path):
    out = tmp_path / "h.npz"
    done = spiread("hessian", ROSENBROCK, "--sparse", "--format", "json", "--out", out)
    assert done.returncode == 0, done.stderr
    doc = strict_json(done.stdout)
    assert doc["sweeps"] == 3 and doc["colouring"] == "columns"
    block = doc["hessian"]["x"]["x"]
    assert block["shape"] == [10, 10] and block["nonzeros"] == len(block["value"]) == 28
    x = np.array(run(ROSENBROCK.read_text()).node("x").value)
    expected = rosenbrock_hessian(x)
    np.testing.assert_allclose(block["value"], expected[block["row"], block["col"]], rtol=1e-12)
    np.testing.assert_allclose(sp.load_npz(out).toarray(), expected, rtol=1e-12)
    dense = strict_json(spiread("hessian", ROSENBROCK, "--format", "json").stdout)
    np.testing.assert_allclose(np.reshape(dense["hessian"]["x"]["x"]["value"], (10, 10)), expected, rtol=1e-12)


def test_hessian_pattern_prints_counts_density_sweeps_and_a_picture(tmp_path):
    done = spiread("hessian", ROSENBROCK, "--pattern", "--plot", tmp_path / "spy.png")
    assert done.returncode == 0, done.stderr
    assert "10×10: 28 nonzeros (28%); --sparse takes 3 sweeps" in done.stdout
    assert "██········\n███·······\n·███······" in done.stdout
    assert (tmp_path / "spy.png").read_bytes()[:4] == b"\x89PNG"
    doc = strict_json(spiread("hessian", ROSENBROCK, "--pattern", "--format", "json").stdout)
    assert (doc["nonzeros"], doc["density"], doc["sweeps"]) == (28, 0.28, 3)
    assert "value" not in doc["pattern"]["x"]["x"] and len(doc["pattern"]["x"]["x"]["row"]) == 28


def test_a_large_pattern_is_drawn_in_shaded_cells():
    done = spiread("hessian", ROSENBROCK, "--pattern", "--set", f"x={np.ones(1000).tolist()}")
    assert done.returncode == 0, done.stderr
    assert "1000×1000: 2998 nonzeros" in done.stdout and "each character 32×16 entries" in done.stdout


def test_a_pattern_over_the_memory_limit_is_refused_at_the_op_that_would_hold_it(tmp_path):
    """The values fit SPIREAD_MAX_BYTES, the dense Hessian's pattern (n² pairs) does not: refused at
    the product that couples every pair, however small the pattern is against the memory available."""
    (tmp_path / "dense.ad").write_text(f"x = {np.linspace(0.1, 1, 300).tolist()}\nloss = (x * x.sum).sum\n")
    done = spiread("hessian", "dense.ad", "--pattern", cwd=tmp_path, env={"SPIREAD_MAX_BYTES": "100000"})
    assert done.returncode != 0
    assert "dense.ad:2:11: error: the sparsity pattern at `*` would hold 90000 entries" in done.stderr, done.stderr
    assert "more than the limit of 97.7 KB" in done.stderr


@pytest.mark.parametrize("args, message", [
    (["--sparse", "--pattern"], "`--sparse` and `--pattern` are different results"),
    (["--out", "h.npz"], "`--out` writes a sparse result"),
    (["--sparse", "--hvp", "x=[[1,0,0,0,0,0,0,0,0,0]]"], "`--sparse` and `--hvp` cannot go together"),
])
def test_sparse_options_that_do_not_fit_are_usage_errors(args, message, tmp_path):
    done = spiread("hessian", ROSENBROCK, *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr


# ------------------------------------------------------------------ Python


def test_program_hessian_sparse_is_a_scipy_matrix_equal_to_the_dense_hessian():
    import spiread_cli
    prog = spiread_cli.load(ROSENBROCK)
    x = RNG.normal(size=10)
    h = prog.hessian(x=x, wrt="x", sparse=True)
    assert sp.issparse(h) and h.sweeps == 3
    np.testing.assert_allclose(h.toarray(), prog.hessian(x=x, wrt="x").blocks["x"]["x"].reshape(10, 10), rtol=1e-12)
    pattern = prog.hessian(x=x, wrt="x", pattern=True)
    assert pattern.dtype == bool and pattern.nnz == 28 and pattern.sweeps == 3
    with pytest.raises(spiread_cli.SpireadError, match="`sparse=True` and `pattern=True`"):
        prog.hessian(sparse=True, pattern=True)
