"""Residuals and in-place adjoints (issue 12): an op's forward rule may keep
what its derivative rules need (`Op.fwd`); the tape keeps it on the node,
replay refreshes it, the reverse sweep hands it to the vjp and drops it.

A residual must give the gradient recomputation gives, and a stale one must
never be used: after a replay with new values, after a value is put back by
hand (check's probes), after a sweep has used it. The sweep's in-place sums
must never write into a value the tape or the caller holds."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import central_difference, gradients, lit, program_fd, run
from spiread_cli.diagnostics import Diagnostics
from spiread_cli.forward import jacobian_forward
from spiread_cli.ops import OPS
from spiread_cli.rewrite import fuse
from test_ops import CASES, UNARY

RNG = np.random.default_rng(12)
KEEPING = sorted(name for name, op in OPS.items() if op.fwd is not None)
RESIDUAL_CASES = [c for c in CASES if OPS[c.op].fwd is not None]


def test_the_ops_that_keep_residuals_have_cases():
    assert KEEPING and {c.op for c in RESIDUAL_CASES} == set(KEEPING)


@pytest.mark.parametrize("case", RESIDUAL_CASES, ids=lambda c: c.id)
def test_a_kept_residual_gives_the_derivatives_of_central_differences(case):
    """vjp and jvp fed the residual the forward rule kept (as the sweeps
    feed them) against central differences of the value, and equal to the
    rules recomputing it."""
    op = OPS[case.op]
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    out, kept = op.fwd(*xs, **case.params)
    np.testing.assert_allclose(out, op.impl(*xs, **case.params), rtol=0, atol=0)
    g = RNG.normal(size=np.shape(out))
    for i, x in enumerate(xs):
        def pulled(xi, i=i):
            args = list(xs)
            args[i] = xi
            return np.sum(g * op.impl(*args, **case.params))

        t = RNG.normal(size=(2,) + x.shape)
        ts = [None] * len(xs)
        ts[i] = t
        jvp = op.jvp(ts, out, *xs, residual=kept, **case.params)  # reads the residual only
        np.testing.assert_allclose(jvp, op.jvp(ts, out, *xs, **case.params), rtol=1e-13, atol=1e-15)
        for k in range(2):
            step = (op.impl(*_moved(xs, i, x + 1e-6 * t[k]), **case.params)
                    - op.impl(*_moved(xs, i, x - 1e-6 * t[k]), **case.params)) / 2e-6
            np.testing.assert_allclose(jvp[k], step, rtol=1e-6, atol=1e-7)
        fd = central_difference(pulled, x)
        recomputed = op.vjp(i, g, out, *xs, **case.params)
        vjp = op.vjp(i, g, out, *xs, residual=op.fwd(*xs, **case.params)[1], **case.params)
        np.testing.assert_allclose(vjp, recomputed, rtol=1e-13, atol=1e-15)
        np.testing.assert_allclose(vjp, fd, rtol=1e-6, atol=1e-7)


def _moved(xs, i, xi):
    args = list(xs)
    args[i] = xi
    return args


# Programs through every op that keeps a residual, as written and fused.
PROGRAMS = {
    "logSoftmaxRows": "loss = (w.logSoftmaxRows * c).sum",
    "meanLogSoftmaxPick": "loss = -(w @@ c).logSoftmaxRows.arrange([0, 1, 2], [2, 0, 2]).mean",
}


def _program(name: str, w: np.ndarray) -> str:
    return f"w = {lit(w)}\nc = {lit(np.linspace(-1.0, 2.0, 9).reshape(3, 3))}\n{PROGRAMS[name]}\n"


def test_every_op_that_keeps_a_residual_is_in_a_program():
    assert set(PROGRAMS) == set(KEEPING)
    for name in KEEPING:
        r = run(_program(name, RNG.normal(size=(3, 3))))
        f = fuse(r.tape, r.output, [r.bindings["w"]])
        assert name in [n.op.name for n in f.tape.nodes if n.op is not None], name


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_replay_refreshes_the_residuals(name):
    """As `train` steps: new values, replay, backward, again and again; each
    gradient equals a fresh run's at those values (and differs from the last
    one's, so a stale residual would show)."""
    first = RNG.normal(size=(3, 3))
    r = run(_program(name, first))
    fused = fuse(r.tape, r.output, [r.bindings["w"]])
    tape, output, (w,) = fused.tape, fused.output, fused.wrt
    moved = tape.between([w], output)
    previous = tape.backward(output, [w])[w]
    np.testing.assert_allclose(previous, gradients(_program(name, first), ["w"]).gradients["w"], rtol=1e-12)
    for _ in range(3):
        values = RNG.normal(size=(3, 3))
        tape.nodes[w].set_value(values)
        tape.replay(moved)
        assert all(n.residual.of is n.value and n.residual.data is not None
                   for n in moved if n.op is not None and n.op.fwd is not None)
        got = tape.backward(output, [w])[w]
        want = gradients(_program(name, values), ["w"]).gradients["w"]
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(got, program_fd(_program(name, values), "w"), rtol=1e-6, atol=1e-7)
        assert not np.allclose(got, previous)
        forward = jacobian_forward(tape, output, [w])[w]
        np.testing.assert_allclose(forward, want, rtol=1e-10, atol=1e-13)
        previous = got


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_residual_is_never_used_for_another_value(name):
    """check's probes move a value, replay, then put the old values back by
    hand without replaying: the residual kept during the probe belongs to the
    probe's value and must not be used. A second sweep (the residual used
    and dropped by the first) recomputes it."""
    r = run(_program(name, RNG.normal(size=(3, 3))))
    tape, output, w = r.tape, r.output, r.bindings["w"]
    want = tape.backward(output, [w])[w]
    chain = [n for n in tape.between([w], output) if n.op is not None]
    saved = [(n, n.value) for n in [tape.nodes[w]] + chain]
    tape.nodes[w].set_value(tape.nodes[w].value + RNG.normal(size=(3, 3)))
    tape.replay(chain)
    for node, value in saved:
        node.value = value
    np.testing.assert_allclose(tape.backward(output, [w])[w], want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(tape.backward(output, [w])[w], want, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(jacobian_forward(tape, output, [w])[w], want, rtol=1e-12, atol=1e-15)


def test_the_sweep_drops_each_residual_it_used():
    r = run(_program("meanLogSoftmaxPick", RNG.normal(size=(3, 3))))
    fused = fuse(r.tape, r.output, [r.bindings["w"]])
    keeping = [n for n in fused.tape.nodes if n.op is not None and n.op.fwd is not None]
    assert keeping and all(n.residual.data is not None for n in keeping)
    fused.tape.backward(fused.output, fused.wrt)
    assert all(n.residual.data is None for n in keeping)


def test_a_fused_tape_and_the_run_keep_their_own_residuals():
    """fuse shares arrays with the run's tape, not residuals: a vjp that
    writes into the fused tape's residual leaves the run's gradient alone."""
    text = _program("logSoftmaxRows", RNG.normal(size=(3, 3)))
    r = run(text)
    want = r.tape.backward(r.output, [r.bindings["w"]])[r.bindings["w"]]
    r.tape.replay([n for n in r.tape.nodes if n.op is not None])  # fresh residuals on the run's tape
    fused = fuse(r.tape, r.output, [r.bindings["w"]])
    fused.tape.backward(fused.output, fused.wrt)
    np.testing.assert_allclose(r.tape.backward(r.output, [r.bindings["w"]])[r.bindings["w"]], want, rtol=1e-13)


# -------------------------------------------------- in-place sums of adjoints

MANY_CONTRIBUTIONS = [
    # add hands one cotangent to a and b; a then gets more, while b has yet to pass its own on.
    "a = x * 2\nb = x * 3\ns = a.sin\ny = a + b\nloss = (y * [[1, 2, 3], [4, 5, 6]]).sum + s.sum",
    # x meets itself: add passes the cotangent on unchanged to both operands.
    "loss = ((x + x) + (x + x) * 2 + x * x + x.tanh).sum",
    # Row reductions pass broadcast views (read-only) on; the sums are the sweep's own.
    "y = x * 3\nloss = y.sum + y.mean + (y + y).sum + y.mapRowsToScalar(sum).sum",
    # A scalar met many times (its sums are numpy scalars, not arrays).
    "s = x.sum\nloss = s * s + s + s.sin + (s + s) * 2",
    # The output itself read twice on the way back.
    "y = x.exp\nz = y + y\nloss = (z + y).sum + z.sum",
]


@pytest.mark.parametrize("shape", [(2, 3), (64, 65)], ids=["small", "summed in place"])
@pytest.mark.parametrize("text", MANY_CONTRIBUTIONS)
def test_adjoints_summed_in_place_leave_every_value_alone(text, shape):
    """Sums of contributions of ops.IN_PLACE_ENTRIES entries or more are
    made in place: the gradient is central differences' (small) or forward
    mode's (large), and no value on the tape, nor a gradient already handed
    to the caller, moves."""
    from spiread_cli import ops
    assert math.prod(shape) >= ops.IN_PLACE_ENTRIES or shape == (2, 3)
    x = RNG.normal(size=shape)
    program = f"x = {lit(x)}\n{text}\n".replace("[[1, 2, 3], [4, 5, 6]]", lit(RNG.normal(size=shape)))
    r = run(program)
    before = [np.array(n.value, copy=True) for n in r.tape.nodes]
    wrt = [r.bindings["x"]] + [n.id for n in r.tape.nodes if n.op is not None and n.id != r.output][:3]
    first = r.tape.backward(r.output, wrt, Diagnostics())
    for node, value in zip(r.tape.nodes, before):
        np.testing.assert_array_equal(node.value, value)
    want = (program_fd(program, "x") if shape == (2, 3)
            else jacobian_forward(r.tape, r.output, [r.bindings["x"]])[r.bindings["x"]])
    np.testing.assert_allclose(first[r.bindings["x"]], want, rtol=1e-6, atol=1e-7)
    kept = {i: np.array(g, copy=True) for i, g in first.items()}
    second = r.tape.backward(r.output, wrt, Diagnostics())  # nothing the caller holds moved either
    for i in wrt:
        np.testing.assert_array_equal(first[i], kept[i])
        np.testing.assert_array_equal(second[i], kept[i])


@pytest.mark.parametrize("name", sorted(UNARY))
def test_a_large_elementwise_vjp_writes_only_into_its_own_arrays(name):
    """Above ops.IN_PLACE_ENTRIES an elementwise derivative rule builds its
    derivative in one array of its own (`1 − out²`: out², then 1 minus it
    in place) and a bounded one multiplies the cotangent into it: the vjp
    and jvp are g times the reference's entrywise central difference, and
    x, the op's value and the incoming cotangent are untouched."""
    from spiread_cli import ops
    op, (reference, domain) = OPS[name], UNARY[name]
    x = domain((64, ops.IN_PLACE_ENTRIES // 64 + 1))
    out = op.impl(x)
    g = RNG.normal(size=x.shape)
    derivative = (reference(x + 1e-6) - reference(x - 1e-6)) / 2e-6
    copies = [np.array(a, copy=True) for a in (x, out, g)]
    np.testing.assert_allclose(op.vjp(0, g, out, x), g * derivative, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(op.jvp([g[None]], out, x)[0], g * derivative, rtol=1e-6, atol=1e-7)
    for a, copy in zip((x, out, g), copies):
        np.testing.assert_array_equal(a, copy)
