"""Forward mode (jvp rules pushed through the tape) against reverse mode and
against finite differences."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Agreement, central_difference, run, spiread, strict_json
from programs import programs
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.forward import ForwardSweep, directional_forward, jacobian_forward
from spiread_cli.ops import OPS
from spiread_cli.rules_forward import Diagonal, Scaled, dense
from spiread_cli.tape import Tape

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_forward_equals_reverse_on_random_programs(record_property):
    """Every op's jvp agrees with its vjp, through broadcasting, selections,
    stacking and DAG reuse, for inputs and intermediates alike."""
    worst = Agreement()

    @SETTINGS
    @given(programs(), st.data())
    def check(program, data):
        wrt = data.draw(st.lists(st.sampled_from(program.names), min_size=1, max_size=4, unique=True), label="wrt")
        forward = run_gradients(run(program.source, name="generated.ad"), wrt, "forward").gradients
        reverse = run_gradients(run(program.source, name="generated.ad"), wrt, "reverse").gradients
        for name in wrt:
            scale = np.max(np.abs(reverse[name]), initial=0.0)
            np.testing.assert_allclose(forward[name], reverse[name], rtol=1e-9, atol=1e-12 * (1 + scale),
                                       err_msg=f"∂loss/∂{name} in\n{program.source}")
            worst.update(forward[name], reverse[name])

    check()
    worst.record(record_property, "forward vs reverse")


PROGRAM = """
W = [[0.3, -1.2, 0.5], [0.8, 0.1, -0.4]]
b = [0.1, -0.2, 0.3]
x = [[1, 2], [-1, 0.5], [0.2, -3], [2, 2]]
h = (x @@ W + b).tanh
loss = h.softmaxRows.log.mean + W.square.sum * 0.01
"""


def test_blocks_give_the_same_jacobian_whatever_the_budget():
    r = run(PROGRAM)
    ids = [r.bindings["W"], r.bindings["b"], r.bindings["h"]]
    whole = jacobian_forward(r.tape, r.output, ids)
    sweep = ForwardSweep(r.tape, r.output, ids)
    for budget in (1, 3 * sweep.bytes_per_direction, 7 * sweep.bytes_per_direction):
        assert sweep.block_size(18, budget) == max(1, budget // sweep.bytes_per_direction)
        blocked = jacobian_forward(r.tape, r.output, ids, budget_bytes=budget)
        for i in ids:
            np.testing.assert_array_equal(blocked[i], whole[i])
    reverse = r.tape.backward(r.output, ids)
    for i in ids:
        np.testing.assert_allclose(whole[i], reverse[i], rtol=1e-12, atol=1e-15)


def test_tangents_are_freed_after_their_last_use():
    """The memory estimate counts live tangents, not every node: a long chain
    of same-shape ops needs about three tangents' worth, not one per op."""
    chain = "x = randn(50, 50, seed=1)\n" + "".join(f"y{k} = {'x' if k == 0 else f'y{k - 1}'}.sin\n" for k in range(20))
    r = run(chain + "loss = y19.sum\n")
    sweep = ForwardSweep(r.tape, r.output, [r.bindings["x"]])
    assert len(sweep.plan) == 22
    assert sweep.bytes_per_direction <= 8 * 2500 * 4


def test_directional_derivatives_are_gradient_dot_direction():
    r = run(PROGRAM)
    w = r.bindings["W"]
    directions = np.random.default_rng(3).standard_normal((5, 2, 3))
    got = directional_forward(r.tape, r.output, w, directions, budget_bytes=1)
    grad = r.tape.backward(r.output, [w])[w]
    np.testing.assert_allclose(got, [np.sum(grad * d) for d in directions], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("text, name", [
    ("x = 0.7\nloss = x.sin * x.exp", "x"),                                    # scalar
    ("v = [0.5, -1, 2]\nloss = (v * v.cos).sum", "v"),                         # vector
    ("M = [[1, 2], [3, 0.5]]\nloss = (M @@ M.T).logSoftmaxRows.mean", "M"),   # matrix
])
def test_forward_matches_finite_differences(text, name):
    forward = run_gradients(run(text), [name], "forward").gradients[name]
    x0 = run(text).node(name).value
    fd = central_difference(lambda x: run(text, sets={name: x}).tape.nodes[-1].value, x0)
    np.testing.assert_allclose(forward, fd, rtol=1e-7, atol=1e-9)


def test_forward_warns_where_a_derivative_turns_infinite():
    r = run("x = [0, 1]\nloss = x.sqrt.sum")
    grad = run_gradients(r, ["x"], "forward").gradients["x"]
    assert np.isinf(grad[0]) and grad[1] == 0.5
    assert any("derivative of `sqrt`" in w.message for w in r.diagnostics.warnings)


def test_cli_forward_mode_on_the_seed():
    result = spiread("grad", "examples/seed.ad", "--mode", "forward", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert doc["mode"] == "forward" and doc["value"]["value"] == "inf"
    np.testing.assert_allclose(doc["gradients"]["weights"]["value"],
                               [[-0.291882, 0.291882], [-0.583765, 0.583765]], atol=5e-7)


# ------------------------------------------------ the push written as code


def _pushes_as_step_by_step(sweep: ForwardSweep, seeds: dict, times: int = 4) -> None:
    """Push `seeds` `times` times (from the third, by the written function)
    and each time step by step too: the same bits, up to the sign of a zero
    (which every result's 0.0 rule removes); the loop's (which writes into
    dying tangents it alone holds) those of an observed loop (which writes
    into none), to the sign of a zero; and after them every seed and every
    node's value as they were."""
    kept = {i: np.array(dense(s)) for i, s in seeds.items()}
    values = [np.array(node.value) for node in sweep.nodes]
    for _ in range(times):
        got = sweep.push(seeds)
        want = sweep._pushed(seeds)
        assert type(got) is type(want)
        got, want = dense(got), dense(want)
        assert got.shape == want.shape and (got + 0.0).tobytes() == (want + 0.0).tobytes()
        assert want.tobytes() == dense(sweep._pushed(seeds, observe=lambda *seen: None)).tobytes()
    assert all(dense(seeds[i]).tobytes() == s.tobytes() for i, s in kept.items())
    assert all(node.value.tobytes() == v.tobytes() for node, v in zip(sweep.nodes, values))


@SETTINGS
@given(programs(), st.data())
def test_a_written_push_gives_the_step_by_step_bits(program, data):
    """Random programs' forward sweeps (the output's Jacobian, and the
    Hessian's sweeps over the recorded gradient), pushed again and again
    with identity rows in one block and in several, with arrays of
    directions (their own memory, a broadcast of a value, a node's value
    itself), and after the values change: the written push (from the third
    push of a kind on) gives what the loop gives, bit for bit, and leaves
    seeds and values as they were; with every step written in place where
    the sweep alone holds a dying tangent, or as large ones are; with the
    ops' guarded rules wherever their guards cost less than one check, or
    also where the result is small; with a product's tangents along the
    identity kept Scaled however small, or as large ones are."""
    from spiread_cli import forward_steps, ops
    from spiread_cli.second import SecondOrder
    in_place = data.draw(st.booleans(), label="every step in place")
    guarded = data.draw(st.booleans(), label="guarded unless the guards cost more than the check")
    scaled = data.draw(st.booleans(), label="every product's tangents along the identity Scaled")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forward_steps, "IN_PLACE_ENTRIES", 0 if in_place else forward_steps.IN_PLACE_ENTRIES)
        patch.setattr(forward_steps, "UNGUARDED_ENTRIES", 0 if guarded else forward_steps.UNGUARDED_ENTRIES)
        patch.setattr(ops, "SCALED_ENTRIES", 0 if scaled else ops.SCALED_ENTRIES)
        r = run(program.source, name="generated.ad")
        wrt = data.draw(st.lists(st.sampled_from([n for n in program.names if n in r.bindings]), min_size=1,
                                 max_size=2, unique=True), label="wrt")
        ids = [r.bindings[n] for n in wrt]
        nodes = r.tape.nodes
        order = SecondOrder(r, wrt)
        sweeps = [ForwardSweep(r.tape, output, ids) for output in [r.output, *order.grad_ids.values()]]
        total = sum(nodes[i].value.size for i in ids)
        rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
        for change in range(2):
            if change:  # new values of the same shapes, replayed through the run and its recorded gradient
                for i in ids:
                    nodes[i].set_value(nodes[i].value * (1 + 0.1 * rng.standard_normal(nodes[i].value.shape)))
                r.tape.replay([n for n in nodes if n.op is not None])
            for sweep in sweeps:
                offsets = np.cumsum([0] + [nodes[i].value.size for i in ids])
                for first, k in ((0, total), (0, max(1, total // 2)), (total // 2, max(1, total - total // 2))):
                    seeds = {i: Diagonal.identity_rows(nodes[i].value.shape, first - int(offsets[p]), k)
                             for p, i in enumerate(ids)}
                    _pushes_as_step_by_step(sweep, seeds)
                arrays = {i: rng.standard_normal((3,) + nodes[i].value.shape) for i in ids}
                _pushes_as_step_by_step(sweep, arrays)
                _pushes_as_step_by_step(sweep, {i: np.broadcast_to(nodes[i].value, (2,) + nodes[i].value.shape)
                                                for i in ids})
                _pushes_as_step_by_step(ForwardSweep(r.tape, sweep.output, ids[:1]),
                                        {ids[0]: nodes[ids[0]].value[None]})
                assert all(callable(w) or w is None for w in sweep.written.values())


@pytest.mark.parametrize("guarded", [False, True])
@pytest.mark.parametrize("warned", [False, True])
def test_a_result_its_push_checked_finite_is_not_checked_again(guarded, warned, monkeypatch):
    """A push whose steps run unguarded checks its result (`ForwardSweep.finite`):
    push_blocks does not pass over it again. The first push of a kind and the
    written ones from the third are checked, the second (the loop's, guarded,
    traced) is not: where the result is small, or where push_blocks would
    check it anyway (`warned`: its diagnostics given), whatever its size. With
    a result larger than the values the guards guard, and UNGUARDED_ENTRIES 0,
    none is checked but by push_blocks, which checks only to warn."""
    from spiread_cli import forward, forward_steps
    if guarded:
        monkeypatch.setattr(forward_steps, "UNGUARDED_ENTRIES", 0)
    r = run("x = [4.0, 1.0]\ny = x.sqrt.sum * [1, 2, 3, 4, 5, 6]\n")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    checks = []
    monkeypatch.setattr(forward, "finite_batch", lambda batch: checks.append(batch) or True)
    unguarded = warned or not guarded
    for checked in ([True, False, True, True] if unguarded else [False] * 4):
        checks.clear()
        jacobian_forward(r.tape, r.output, [x], r.diagnostics if warned else None, sweep=sweep)
        # The first push's check is push's, a written push's its own (forward_written's finite_batch).
        written = next(iter(sweep.written.values()))
        first = not callable(written) and written == 1
        assert sweep.finite == checked
        assert len(checks) == (checked and first) + (warned and not checked)
    assert callable(written) and written.checks == unguarded


def test_a_written_push_that_meets_another_kind_of_batch_pushes_step_by_step():
    """A written push whose step makes a batch of another kind than when it
    was written (here: told a Diagonal came out where an array does) stops,
    and the sweep pushes step by step from then on, with the same result."""
    from spiread_cli.forward_written import written_push
    r = run("w = [0.5, -1, 2]\nA = [[1, 2, 3], [0, 1, -1]]\nloss = (A @@ w).tanh.sum + (w ** 3).sum")
    sweep = ForwardSweep(r.tape, r.output, [r.bindings["w"]])
    seeds = {r.bindings["w"]: Diagonal.identity_rows((3,), 0, 3)}
    trace: list = []
    want = sweep._pushed(seeds, trace=trace)
    kind = next(iter(sweep.written), None)
    assert kind is None and trace
    wrong = [(ts, Diagonal if t is np.ndarray else np.ndarray) for ts, t in trace]
    sweep.push(seeds)  # the first push of this kind
    kind = next(iter(sweep.written))
    sweep.written[kind] = written_push(sweep, seeds, wrong)
    np.testing.assert_array_equal(dense(sweep.push(seeds)), dense(want))
    assert sweep.written[kind] is None
    np.testing.assert_array_equal(dense(sweep.push(seeds)), dense(want))


def test_a_derivative_born_infinite_on_a_written_push_warns_where_it_is_born():
    """The written push gives the loop's bits, so a block that is not finite
    is pushed again step by step, which warns at the op it was born in."""
    r = run("x = [4.0, 1.0]\nloss = (x.sqrt * x).sum")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    for value, finite in (([4.0, 1.0], True), ([9.0, 1.0], True), ([4.0, 2.0], True), ([0.0, 1.0], False)):
        r.tape.nodes[x].set_value(np.array(value))
        r.tape.replay([n for n in r.tape.nodes if n.op is not None])
        r.diagnostics.warnings.clear()
        jacobian = jacobian_forward(r.tape, r.output, [x], r.diagnostics, sweep=sweep)[x]
        assert np.isfinite(jacobian).all() == finite
        assert [w.message.split(" gave")[0] for w in r.diagnostics.warnings] == \
            ([] if finite else ["the derivative of `sqrt`"])
    assert callable(next(iter(sweep.written.values())))


def test_a_written_push_never_writes_into_a_tangent_still_needed():
    """`x + A @@ x` steps x's Diagonal seeds and adds the product's tangent
    (an array) to them: into that array only where no later step reads it.
    Here `y`'s tangent is read again, so the written push, like the loop,
    must add into a copy."""
    r = run("x = [0.5, -1, 2]\nA = [[1, 2, 3], [0, 1, -1], [2, 0, 1]]\ny = A @@ x\nz = x + y\n"
            "loss = (z * z).sum + y.sum")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    A, xv = r.node("A").value, r.node("x").value
    want = 2 * (xv + A @ xv) @ (np.eye(3) + A) + A.sum(axis=0)  # ∂loss/∂x
    for _ in range(4):
        np.testing.assert_allclose(jacobian_forward(r.tape, r.output, [x], sweep=sweep)[x], want, rtol=1e-14)
    assert callable(next(iter(sweep.written.values())))


def test_a_written_push_keeps_a_zero_tangent_zero_against_an_infinite_partial():
    """A written push runs `scale` unguarded (a multiply) and checks its
    result: sqrt's derivative at 0 is infinite, but no direction moves that
    entry (A's first row is zero), so its row of the Jacobian is 0, with no
    warning, on every push (the first's and the written one's nan sends it
    step by step)."""
    r = run("x = [1.0, 1.0]\nA = [[0, 0], [1, 2]]\ny = (A @@ x).sqrt\n")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    want = np.array([[0.0, 0.0], [1 / (2 * np.sqrt(3)), 1 / np.sqrt(3)]])
    for _ in range(4):
        jacobian = jacobian_forward(r.tape, r.output, [x], r.diagnostics, sweep=sweep)[x]
        np.testing.assert_allclose(jacobian, want, rtol=1e-15, atol=0)
    assert callable(next(iter(sweep.written.values()))) and not r.diagnostics.warnings


def test_a_push_runs_unguarded_where_one_check_of_its_result_costs_less_than_its_guards(monkeypatch):
    """However large the result (here: any), a written push runs its ops'
    unguarded rules where the result has no more entries than the values
    its guarded steps guard (sqrt's partial: 2 entries): for one direction,
    not for two. Either way the loop's result, with sqrt's infinite partial
    met by a zero tangent (A's first row)."""
    from spiread_cli import forward_steps
    monkeypatch.setattr(forward_steps, "UNGUARDED_ENTRIES", 0)
    r = run("x = [1.0, 1.0]\nA = [[0, 0], [1, 2]]\ny = (A @@ x).sqrt\n")
    x = r.bindings["x"]
    for k, unguarded in ((1, True), (2, False)):
        sweep = ForwardSweep(r.tape, r.output, [x])
        seeds = {x: np.random.default_rng(k).standard_normal((k, 2))}
        _pushes_as_step_by_step(sweep, seeds)
        assert ("finite_batch" in next(iter(sweep.written.values())).__code__.co_names) == unguarded
        assert np.isfinite(sweep.push(seeds)).all()


def test_an_ops_unguarded_rule_gives_its_rules_bits_at_finite_operands():
    """`Op.unguarded` (scale's multiply) is the value rule with its guard for
    operands that are not finite left out: at finite operands, broadcast or
    not, the same bits."""
    from spiread_cli.ops import OPS
    rng = np.random.default_rng(5)
    ops = [op for op in OPS.values() if op.unguarded is not None]
    assert [op.name for op in ops] == ["scale"]
    for op in ops:
        for shapes in (((3, 4), (3, 4)), ((5, 3, 4), (4,)), ((4,), (5, 3, 4)), ((), (3,))):
            args = [np.where(rng.random(s) < 0.3, 0.0, rng.standard_normal(s)) for s in shapes]
            assert np.array_equal(op.unguarded(*args), op.impl(*args))
            assert op.unguarded(*args).tobytes() == np.asarray(op.impl(*args), dtype=float).tobytes()


def test_a_whole_identitys_batch_is_made_an_array_as_any_other():
    """`Diagonal.dense` of the whole identity in order (a strided view of
    the diagonal), and the batch added into an array, give the bits of the
    same batch not known to be ordered (written entry by entry): −0.0, inf
    and nan values included."""
    values = np.array([1.5, -0.0, 0.0, np.inf, np.nan, -2.0])
    for shape in ((6,), (2, 3)):
        ordered = Diagonal.identity_rows(shape, 0, 6).over(values)
        assert ordered.ordered
        listed = Diagonal(ordered.entries, values, ordered.shape, True)
        assert not listed.ordered
        assert ordered.dense().shape == (6, *shape)
        assert ordered.dense().tobytes() == listed.dense().tobytes()
        base = np.random.default_rng(3).standard_normal((6, *shape))
        for out in (base.copy(), np.asfortranarray(base)):  # added into an array: C order by the strided view
            into = out.copy(order="A")
            ordered.add_into(out)
            listed.add_into(into)
            assert np.ascontiguousarray(out).tobytes() == np.ascontiguousarray(into).tobytes()


def test_a_written_push_differs_from_the_guarded_one_only_in_the_sign_of_a_zero():
    """sqrt's partial is infinite at `s`'s first entry, which `s[1]` drops:
    the guarded push gives +0.0 for the zero tangent there and beside it,
    the written one's multiply -0.0 (a nan where the guard acted, dropped).
    The same values, and the same result once made 0.0 as every result is."""
    r = run("x = [1.0, 1.0]\nA = [[1, 1], [0, 1]]\nc = [2, 5]\ns = (c - A @@ x).sqrt\nout = s[1]\n")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    seeds = {x: Diagonal.identity_rows((2,), 0, 2)}
    for _ in range(4):
        got, want = dense(sweep.push(seeds)), dense(sweep._pushed(seeds))
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(want, [0.0, -0.25])
    assert callable(next(iter(sweep.written.values())))
    jacobian = jacobian_forward(r.tape, r.output, [x], r.diagnostics, sweep=sweep)[x]
    assert (jacobian + 0.0).tobytes() == np.array([0.0, -0.25]).tobytes() and not r.diagnostics.warnings


def test_a_fresh_sweeps_first_push_runs_unguarded_where_its_result_is_small(monkeypatch):
    """The first push of a kind steps its arrays by the ops' unguarded rules
    (`scale` as a multiply) and checks the result once, as a written push
    does, where the result is small (UNGUARDED_ENTRIES): the program above's
    −0.0 where the guarded loop gives +0.0, the same values; with a larger
    result than that, the guarded loop's bits."""
    from spiread_cli import forward_steps
    source = "x = [1.0, 1.0]\nA = [[1, 1], [0, 1]]\nc = [2, 5]\ns = (c - A @@ x).sqrt\nout = s[1]\n"
    r = run(source)
    x = r.bindings["x"]
    seeds = {x: np.eye(2)}
    guarded = ForwardSweep(r.tape, r.output, [x])._pushed(seeds)
    first = ForwardSweep(r.tape, r.output, [x]).push(seeds)
    np.testing.assert_array_equal(first, guarded)
    assert (np.signbit(first[0]), np.signbit(guarded[0])) == (True, False)
    monkeypatch.setattr(forward_steps, "UNGUARDED_ENTRIES", 1)
    assert ForwardSweep(r.tape, r.output, [x]).push(seeds).tobytes() == guarded.tobytes()


def test_a_written_push_steps_a_run_of_elementwise_diagonal_steps_on_their_values():
    """A run of elementwise steps on the identity's rows (`Diagonal`), two
    runs meeting, is written as lines over their values spread into one
    value: `spreads` asked once, where the runs start, and one batch
    gathered, where a line reads it as one (the output); the loop's bits."""
    r = run("x = [0.5, -1.0, 2.0, 0.1]\ny = x.tanh * x.exp + x * x\n")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    seeds = {x: Diagonal.identity_rows((4,), 0, 4)}
    _pushes_as_step_by_step(sweep, seeds)
    push = next(iter(sweep.written.values()))
    calls = []
    spreads = push.__globals__["spreads"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(push.__globals__, "spreads", lambda *a: calls.append("spreads") or spreads(*a))
        patch.setattr(Diagonal, "gathered", lambda self, u, real=Diagonal.gathered: calls.append("gathered")
                      or real(self, u))
        got = sweep.push(seeds)
    assert calls == ["spreads", "gathered"]
    assert got.values.tobytes() == sweep._pushed(seeds).values.tobytes()


def test_a_written_run_over_diagonals_of_other_entries_than_written_pushes_step_by_step():
    """Two values seeded with one Diagonal (the same entries) make `x * z`'s
    run spread; pushed again with seeds of the same kinds over other entries,
    the check where the run starts finds them apart, and the sweep pushes
    step by step from then on: the loop's bits every time."""
    r = run("x = [0.5, -1.0, 2.0]\nz = [1.5, 0.3, -0.2]\ny = (x * z).tanh + x.exp\n")
    x, z = r.bindings["x"], r.bindings["z"]
    sweep = ForwardSweep(r.tape, r.output, [x, z])
    same = Diagonal(np.arange(3), np.array([1.0, -2.0, 0.5]), (3, 3), True)
    _pushes_as_step_by_step(sweep, {x: same, z: same})
    kind = next(iter(sweep.written))
    assert callable(sweep.written[kind])
    apart = {x: same, z: Diagonal(np.array([2, 0, 1]), np.ones(3), (3, 3), True)}
    for _ in range(2):
        assert dense(sweep.push(apart)).tobytes() == dense(sweep._pushed(apart)).tobytes()
    assert sweep.written[kind] is None


def test_a_step_by_an_ops_diagonal_rule_is_written_as_a_call_of_it():
    """A product with a constant meets the identity's rows by its Diagonal
    rule (`Op.diagonal_jvp`): a written push calls it in a line, not through
    the loop's `jvp_step`; the loop's bits."""
    r = run("x = [0.5, -1.0, 2.0]\nA = [[1, 2, 3], [0, 1, -1]]\ny = (A @@ x).tanh\n")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    _pushes_as_step_by_step(sweep, {x: Diagonal.identity_rows((3,), 0, 3)})
    assert "jvp_step" not in next(iter(sweep.written.values())).__code__.co_names


@pytest.mark.parametrize("then", ["z", "z * y", "z * z.sin"])
def test_an_elementwise_step_on_a_spread_diagonal_and_an_array_is_written_as_a_line(then):
    """`x.exp + A @@ x`: a Diagonal held spread (the run of `exp`) and an
    array (the product's rule) meet in an add, written as a line (no
    `jvp_step`) that adds the gathered batch into the array, in place only
    where nothing read later shares it (here `y`'s tangent is read again);
    the loop's bits."""
    r = run("x = [0.5, -1.0, 2.0]\nA = [[1, 2, 3], [0, 1, -1], [2, 0.5, 1]]\ny = A @@ x\nz = x.exp + y\n"
            f"out = {then}\n")
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, r.output, [x])
    _pushes_as_step_by_step(sweep, {x: Diagonal.identity_rows((3,), 0, 3)})
    assert "jvp_step" not in next(iter(sweep.written.values())).__code__.co_names


# ------------------------------------------------ a product's columns, scaled
# The identity's rows over w through `M @@ w` are M's columns as they lie
# (rules_forward.Scaled), which elementwise steps scale by one value each.

SCALED = "z = M @@ w\nloss = (z.tanh * z.exp + z * z * 0.5).sum + (w * w).sum * 0.01\n"
LAYOUTS = {  # the matrix operand: its own memory, transposed, views, a vector, and w a column
    "C order": "M = [[0.3, -1.2, 0.5], [0.8, 0.1, -0.4], [0.0, 0.0, 0.0], [2.0, -0.7, 1.1]]\nw = [0.2, -0.5, 0.9]\n",
    "transposed": "M = [[0.3, 0.8, 0.0, 2.0], [-1.2, 0.1, 0.0, -0.7], [0.5, -0.4, 0.0, 1.1]].T\nw = [0.2, -0.5, 0.9]\n",
    "rows of a matrix": "N = [[9, 9, 9], [0.3, -1.2, 0.5], [0.8, 0.1, -0.4], [2.0, -0.7, 1.1], [9, 9, 9]]\n"
                        "M = N[1:4, :]\nw = [0.2, -0.5, 0.9]\n",
    "columns of a matrix": "N = [[0.3, 9, -1.2, 0.5], [0.8, 9, 0.1, -0.4], [2.0, 9, -0.7, 1.1]]\n"
                           "M = N[:, 1:4]\nw = [0.2, -0.5, 0.9]\n",
    "a vector": "M = [0.3, -1.2, 0.5]\nw = [0.2, -0.5, 0.9]\n",
    "w a column": "M = [[0.3, -1.2, 0.5], [0.8, 0.1, -0.4]]\nw = [[0.2], [-0.5], [0.9]]\n",
}


@pytest.fixture
def scaled(monkeypatch):
    from spiread_cli import ops
    monkeypatch.setattr(ops, "SCALED_ENTRIES", 0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_a_products_tangents_along_the_identity_are_its_matrix_scaled(layout, in_place, scaled):
    """The Hessian's sweep over the recorded gradient: the product's tangent
    is Scaled (over a view of M, whatever its layout) and stays one through
    the elementwise steps (two of them over one base: `z.tanh * z.exp`),
    made an array where the gradient's product reads it. Every push (the
    first, the loop's, the written one) gives what the same sweep gives
    from the identity as an array, stepped batch by batch, up to rounding;
    the written push the loop's bits."""
    from spiread_cli.second import SecondOrder
    r = run(LAYOUTS[layout] + SCALED)
    w = r.bindings["w"]
    shape = r.tape.nodes[w].value.shape
    order = SecondOrder(r, ["w"])
    sweep = ForwardSweep(r.tape, order.grad_ids[w], [w])
    seeds = {w: Diagonal.identity_rows(shape, 0, 3)}
    trace: list = []
    sweep._pushed(seeds, trace=trace)
    assert sum(kind is Scaled for _, kind in trace) >= 6
    want = sweep._pushed({w: np.eye(3).reshape((3,) + shape)})
    for _ in range(4):
        np.testing.assert_allclose(order.hessian()["w"]["w"].reshape(3, 3), want.reshape(3, 3), rtol=1e-13,
                                   atol=1e-15)
    _pushes_as_step_by_step(sweep, seeds)
    assert callable(sweep.written[next(iter(sweep.written))])


def test_a_products_jvp_along_the_identity_is_its_matrix_as_it_lies(scaled):
    """`matmul`'s rule for the identity's rows over b: a's columns, a view of
    a in whatever layout it lies (C, F, strided), the same bits as the batch
    made entry by entry; rows scaled by other values, or not in order, an
    array of the same values."""
    a = np.random.default_rng(2).standard_normal((4, 7))
    rule = OPS["matmul"].diagonal_jvp
    for m in (a[:, :3].copy(), np.asfortranarray(a[:, :3]), a[:, ::3], a[:, :3].T.copy().T):
        out = m @ np.ones(3)
        identity = Diagonal.identity_rows((3,), 0, 3)
        t = rule(1, identity, out, m, np.ones(3))
        assert type(t) is Scaled and np.shares_memory(t.base, m) and t.shape == (3, 4)
        assert t.dense().tobytes() == np.ascontiguousarray(m.T).tobytes()
        for seeds in (identity.over(np.array([2.0, -0.0, 0.5])),
                      Diagonal(np.array([2, 0, 1]), np.ones(3), (3, 3), True)):
            got = rule(1, seeds, out, m, np.ones(3))
            assert type(got) is np.ndarray
            assert np.array_equal(got, seeds.dense() @ m.T)


def test_a_products_scaled_tangents_as_the_output_are_the_jacobian(scaled):
    """A Jacobian whose output is still Scaled: the caller's array, its own
    and writeable, equal to reverse mode's rows."""
    y = "((M @@ w).tanh * 2 + (M @@ w).exp)"
    r = run(LAYOUTS["C order"] + f"y = {y}\n")
    w = r.bindings["w"]
    rows = [run_gradients(run(LAYOUTS["C order"] + f"y = {y}[{i}]\n"), ["w"], "reverse").gradients["w"]
            for i in range(4)]
    for _ in range(4):
        forward = jacobian_forward(r.tape, r.output, [w])[w]
        assert forward.flags.writeable and not np.shares_memory(forward, r.tape.nodes[r.bindings["M"]].value)
        np.testing.assert_allclose(forward, rows, rtol=1e-14)


UNARY = [".tanh", ".exp", ".sin", " * 2.5", " + 1", ".square", ".abs", ".relu", " / 3", " - w.sum", ".square.sqrt",
         ".abs ** 1.5"]  # the last two: infinite partials where a zero row of M makes z 0
BINARY = ["{0} * {1}", "{0} + {1}", "{0} - {1}", "{0} / ({1}.exp + 1)", "{0} * (N @@ w)", "{0} + (N @@ w).tanh"]
ENDS = ["{0}.sum", "({0}.exp.normaliseRowsL1 * [1, 2, 3, 4, 5]).sum", "(K @@ {0}).sin.sum", "({0} * {0}).mean",
        "{0}[1:4].sum + w.sum"]


@SETTINGS
@given(st.lists(st.sampled_from(UNARY), max_size=4), st.lists(st.sampled_from(UNARY), max_size=3),
       st.sampled_from(BINARY), st.sampled_from(ENDS), st.booleans(), st.booleans(), st.data())
def test_scaled_runs_of_elementwise_steps_give_the_batchs_values(first, second, binary, end, zero_row, guarded,
                                                                  data):
    """Runs of elementwise ops after `M @@ w` (one base, two runs of it met
    by a binary op, or met by another product's array), ended by ops that
    read the batch as an array: the forward Jacobian of the run and the
    Hessian of the loss, from the identity kept Scaled, equal what the same
    sweeps give from the identity as an array; every push the loop's bits.
    Written pushes that check their result, and, `guarded`, ones whose
    result is larger than their guards' values: both check each coefficient."""
    from spiread_cli import forward_steps, ops
    from spiread_cli.second import SecondOrder
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    M = rng.standard_normal((5, 3)) / 2
    if zero_row:
        M[2] = 0.0
    values = (f"M = {M.tolist()}\nN = {(rng.standard_normal((5, 3)) / 2).tolist()}\n"
              f"K = {rng.standard_normal((2, 5)).tolist()}\nw = {(rng.standard_normal(3) / 2).tolist()}\n")
    z = "(M @@ w)"
    a, b = z + "".join(first), z + "".join(second)
    y = binary.format(f"({a})", f"({b})")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ops, "SCALED_ENTRIES", 0)
        patch.setattr(forward_steps, "UNGUARDED_ENTRIES", 0 if guarded else forward_steps.UNGUARDED_ENTRIES)
        for source in (values + f"y = {y}\n", values + f"loss = {end.format(f'({y})')}\n"):
            r = run(source)
            w = r.bindings["w"]
            outputs = [r.output] if r.tape.nodes[r.output].value.shape else list(SecondOrder(r, ["w"]).grad_ids.values())
            for output in outputs:
                sweep = ForwardSweep(r.tape, output, [w])
                want = sweep._pushed({w: np.eye(3)})
                seeds = {w: Diagonal.identity_rows((3,), 0, 3)}
                for _ in range(4):
                    np.testing.assert_allclose(dense(sweep.push(seeds)), want, rtol=1e-12, atol=1e-12, err_msg=source)
                _pushes_as_step_by_step(sweep, seeds)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(UNARY), max_size=3), st.sampled_from(BINARY), st.sampled_from(ENDS),
       st.sampled_from([np.inf, -np.inf, np.nan, 1e308]), st.data())
def test_scaled_runs_over_non_finite_data_warn_only_at_their_spans(first, binary, end, bad, data):
    """Where M holds inf, nan or a huge entry, a Scaled batch's tangents are
    not finite: the forward Jacobian and the Hessian, called as a user calls
    them, say so only by spiread's located warnings, never by numpy's
    RuntimeWarning (made an error here: the batch made an array outside the
    sweeps' error state leaked them)."""
    import warnings
    import spiread_cli
    from spiread_cli import ops
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    M = rng.standard_normal((5, 3)) / 2
    M[rng.integers(5), rng.integers(3)] = bad
    values = (f"M = zeros(5, 3)\nN = {(rng.standard_normal((5, 3)) / 2).tolist()}\n"
              f"K = {rng.standard_normal((2, 5)).tolist()}\nw = {(rng.standard_normal(3) / 2).tolist()}\n")
    y = binary.format("((M @@ w)" + "".join(first) + ")", "(M @@ w).tanh")
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setattr(ops, "SCALED_ENTRIES", 0)
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", RuntimeWarning)
        spiread_cli.compile(values + f"y = {y}\n").jacobian(M=M, wrt="w", mode="forward")
        spiread_cli.compile(values + f"loss = {end.format(f'({y})')}\n").hessian(M=M, wrt="w")


@pytest.mark.parametrize("tail", [".relu", ".relu * 2.0 + (M @@ w).tanh", ".relu.exp", " > 0.0", ".relu + ((M @@ w) > 0.0)"])
@pytest.mark.parametrize("shape", [(8, 4), (128, 128)])  # below and at SCALED_ENTRIES: an array, or Scaled
def test_a_zero_partial_against_infinite_data_gives_what_the_batch_as_an_array_gives(tail, shape):
    """M holds inf and z = M @@ w is negative, so relu's partial is 0
    everywhere: 0 times the infinite tangent is nan, as the batch as an
    array steps it and as reverse mode gives it, where `>` reads no tangent
    and gives zeros. So too where the product's tangents are kept Scaled,
    whose coefficient of zeros alone cannot tell the two apart: the forward
    Jacobian does not hang on the problem's size, Scaled at either size or
    an array at either, and kept calls (the written push) give the same bits."""
    import warnings
    import spiread_cli
    from spiread_cli import ops
    n, m = shape
    M = np.linspace(0.1, 1.0, n * m).reshape(n, m)
    M[1, 2] = np.inf
    w = -np.linspace(0.5, 1.0, m)
    text = f"M = zeros({n}, {m})\nw = zeros({m})\ny = (M @@ w){tail}\n"
    found = []
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", RuntimeWarning)
        reverse = spiread_cli.compile(text).jacobian(M=M, w=w, wrt="w", mode="reverse")["w"]
        for least in (ops.SCALED_ENTRIES, 0, n * m + 1):  # as it is, every such product Scaled, none
            patch.setattr(ops, "SCALED_ENTRIES", least)
            program = spiread_cli.compile(text)
            found.extend(program.jacobian(M=M, w=w, wrt="w", mode="forward")["w"] for _ in range(3))
    assert np.isnan(found[0]).any() == ("relu" in tail)
    for each in found:
        assert each.tobytes() == found[0].tobytes() or np.array_equal(each, found[0], equal_nan=True)
    if "relu" in tail:
        np.testing.assert_allclose(found[0], reverse, rtol=1e-13, atol=0)


@pytest.mark.parametrize("task", ["Hessian", "Jacobian"])
def test_a_zero_row_against_an_infinite_partial_keeps_its_tangent_zero(task, scaled, monkeypatch):
    """Once its pushes are written, M's row 1 becomes zero, so z[1] = 0,
    where the second derivative of z ** 1.5 (the Hessian's sweep, whose
    written push checks its result) or the first of sqrt (the Jacobian's,
    15 entries against 5 guarded: one that does not) is infinite. The
    batch's own steps keep that column of the tangents zero (the guard), a
    coefficient cannot (0 · inf): a written push, whether or not it
    checks its result, checks each coefficient, and pushes step by step then. Finite, and what the identity as an array
    gives, on every push."""
    from spiread_cli import forward_steps
    from spiread_cli.second import SecondOrder
    monkeypatch.setattr(forward_steps, "UNGUARDED_ENTRIES", 0)
    r = run("M = [[1.0, 2.0, 0.5], [0.5, 0.5, 0.5], [0.3, 0.1, 0.2], [1.0, -1.0, 0.5], [0.2, 0.4, 0.6]]\n"
            "w = [0.5, 0.25, 1.0]\n" + ("loss = ((M @@ w) ** 1.5).sum\n" if task == "Hessian" else "y = (M @@ w).sqrt\n"))
    w, M = r.bindings["w"], r.bindings["M"]
    sweep = ForwardSweep(r.tape, r.output if task == "Jacobian" else SecondOrder(r, ["w"]).grad_ids[w], [w])
    for push in range(6):
        if push == 4:
            r.tape.nodes[M].set_value(r.tape.nodes[M].value * [[1.0], [0.0], [1.0], [1.0], [1.0]])
            r.tape.replay([n for n in r.tape.nodes if n.op is not None])
        want = sweep._pushed({w: np.eye(3)})
        assert np.isfinite(want).all()
        np.testing.assert_allclose(dense(sweep.push({w: Diagonal.identity_rows((3,), 0, 3)})), want, rtol=1e-14)
    assert next(iter(sweep.written.values())).checks == (task == "Hessian") and not r.diagnostics.warnings


# ------------------------------------------------ written in place
# A written push writes a step's result into an operand's tangent that dies
# at that step where the sweep alone holds its memory, and adds a scatter
# into the other operand of a sum (forward_written.written_push). Every push
# here writes in place where it may (`in_place`).


@pytest.fixture
def in_place(monkeypatch):
    from spiread_cli import forward_steps
    monkeypatch.setattr(forward_steps, "IN_PLACE_ENTRIES", 0)


def _writes_in_place(sweep: ForwardSweep) -> bool:
    """Whether a written push of the sweep has a step that may write into a tangent."""
    return any(callable(w) and any(name.startswith("into") for name in w.__code__.co_varnames)
               for w in sweep.written.values())


def _sweep_of(source: str, wrt: str = "x") -> tuple[ForwardSweep, dict]:
    r = run(source)
    x = r.bindings[wrt]
    sweep = ForwardSweep(r.tape, r.output, [x])
    return sweep, {x: np.random.default_rng(1).standard_normal((4,) + r.tape.nodes[x].value.shape)}


@pytest.mark.parametrize("view", ["y.T", "y.reshape(3, 2)"])
def test_a_view_of_a_tangent_still_read_is_never_written(view, in_place):
    """`v`'s tangent is a view of `y`'s (a transpose's, a reshape's jvp), and
    dies at `v.sin` while `y * y` still reads `y`'s: only an array that owns
    its memory may be written into."""
    sweep, seeds = _sweep_of(f"x = [[0.5, -1, 2], [1.5, 0.3, -0.7]]\ny = x * 3\nv = {view}\nw = v.sin\n"
                             "loss = w.sum + (y * y).sum")
    _pushes_as_step_by_step(sweep, seeds)
    assert _writes_in_place(sweep)


def test_a_tangent_a_jvp_returned_as_it_was_given_is_never_written_while_read(in_place):
    """`y + c` moves only with y: its jvp returns y's tangent itself
    (`scale(t, 1.0)` is t), so `z`'s tangent is `y`'s, which `y * y` still
    reads after `z.sin`, where `z`'s dies: the array has two names then."""
    sweep, seeds = _sweep_of("x = [0.5, -1, 2]\nc = [1, 2, 3]\ny = x * 3\nz = y + c\nw = z.sin\n"
                             "loss = w.sum + (y * y).sum")
    _pushes_as_step_by_step(sweep, seeds)
    assert _writes_in_place(sweep)


def test_a_tangent_two_nodes_share_is_never_written_while_one_is_read(in_place):
    """`u` computes what `y` does (`Tape.repeats`), so the sweep gives it
    `y`'s tangent: `y`'s dies at `y.sin` while `u * u` still reads it."""
    sweep, seeds = _sweep_of("x = [0.5, -1, 2]\ny = x.exp\nu = x.exp\nloss = y.sin.sum + (u * u).sum")
    assert sweep.same
    _pushes_as_step_by_step(sweep, seeds)
    assert _writes_in_place(sweep)


def test_a_tangent_both_operands_read_is_not_written_while_one_still_reads_it(in_place):
    """`y * y` reads y's tangent as both operands, and its jvp writes the
    product by each partial into that operand's tangent (`x * y`'s two
    products, each into its tangent): not where the two are one array."""
    sweep, seeds = _sweep_of("x = [0.5, -1, 2]\ny = x.exp\nz = x.sin\nloss = (y * z).sum + (y * y).sum")
    _pushes_as_step_by_step(sweep, seeds)
    assert _writes_in_place(sweep)


def test_a_guarded_step_written_in_place_keeps_a_zero_tangent_zero(in_place, monkeypatch):
    """x * x's tangent is zero at x = 0, where sqrt's partial is infinite:
    the guarded `scale` (three directions: more entries than the values it
    guards) writes into that dying tangent and gives the loop's 0.0."""
    from spiread_cli import forward_steps
    monkeypatch.setattr(forward_steps, "UNGUARDED_ENTRIES", 0)
    sweep, _ = _sweep_of("x = [0.0, 1.0, 2.0]\ny = (x * x).sqrt")
    x = next(iter(sweep.seeded))
    _pushes_as_step_by_step(sweep, {x: np.random.default_rng(4).standard_normal((3, 3))})
    assert _writes_in_place(sweep) and np.isfinite(sweep.push({x: np.ones((3, 3))})).all()


def test_a_fresh_sweeps_first_push_writes_into_tangents_that_die_where_it_alone_holds_them(in_place, monkeypatch):
    """The loop (a sweep's first pushes) writes a large step's result into
    an operand's tangent that dies at that step where it alone holds it, as
    a written push does: along `x.exp.sin.cos`, each step's into the one
    before's; never into the seed, nor into `y`'s, which `y * y` reads
    after `y.sin`. The same bits as an observed loop, which writes into none."""
    from spiread_cli import forward
    sweep, seeds = _sweep_of("x = [0.5, -1, 2]\ny = x.exp\nz = y.sin.cos\nloss = z.sum + (y * y).sum")
    memory = lambda a: a.__array_interface__["data"][0] if type(a) is np.ndarray else None
    steps, jvp_step = [], forward.jvp_step

    def watched(op, ts, *args, **kwargs):
        before = [memory(t) for t in ts]
        t = jvp_step(op, ts, *args, **kwargs)
        steps.append((op.name, before, memory(t)))
        return t
    monkeypatch.setattr(forward, "jvp_step", watched)
    want = sweep._pushed(seeds, observe=lambda *seen: None)
    steps.clear()
    got = sweep.push(seeds)  # the first push
    assert got.tobytes() == want.tobytes()
    written = {name: out in before for name, before, out in steps}
    seed = memory(next(iter(seeds.values())))
    assert written == {"exp": False, "sin": False, "cos": True, "mul": False, "add": True, "sum": False}
    assert all(seed not in before or out != seed for _, before, out in steps)
    _pushes_as_step_by_step(sweep, seeds)


def test_the_sole_reference_count_is_read_without_a_tracer_that_reads_locals():
    """A debugger's trace function keeps a copy of a frame's locals: one
    reference more. Read under one, the count would take a seed (held by
    the caller and `seeds` too) for the sweep's alone."""
    import sys
    from spiread_cli import forward_steps

    def tracer(frame, event, arg):
        frame.f_locals
        return tracer
    untraced = forward_steps._sole_references()
    sys.settrace(tracer)
    try:
        traced = forward_steps._sole_references()
    finally:
        sys.settrace(None)
    assert traced == untraced == forward_steps.SOLE_REFERENCES <= 2


def test_a_result_written_in_place_lies_in_memory_as_a_new_one(in_place):
    """`onehot @@ w`'s batched jvp lies in memory in another order than C;
    the acosh's jvp makes a new result in C order, and the sum adds its
    entries in the order they lie: a result is written into a tangent only
    where both lie in C order, else the sum's bits could differ."""
    r = run('w = [[0.19, -0.2], [0.96, 0.16], [-0.8, 0.54]]\n'
            'loss = ((einsum("ij->j", w) + (onehot([0, 0, 0], 3) @@ w)) + 1.0).acosh.sum')
    w = r.bindings["w"]
    sweep = ForwardSweep(r.tape, r.output, [w])
    for seed in range(20):
        _pushes_as_step_by_step(sweep, {w: np.random.default_rng(seed).standard_normal((3, 3, 2))})
    assert _writes_in_place(sweep)


@pytest.mark.parametrize("source", ["x = [0.5, -1, 2]\nloss = x.sin.sum",
                                    "x = [0.5, -1, 2]\nloss = (x * 2).sum + x.cos.sum"])
def test_seeds_and_values_are_never_written(source, in_place):
    """x's tangent is its seed, which dies at the step reading it last:
    seeds that own their memory, and a node's value given as the seeds."""
    sweep, seeds = _sweep_of(source)
    _pushes_as_step_by_step(sweep, seeds)
    x = next(iter(seeds))
    _pushes_as_step_by_step(ForwardSweep(Tape(sweep.nodes), sweep.output, [x]), {x: sweep.nodes[x].value[None]})
    X = Tape(sweep.nodes).leaf(np.arange(9.0).reshape(3, 3), "input", None)
    _pushes_as_step_by_step(ForwardSweep(Tape(sweep.nodes), sweep.output, [x]), {x: X.value})
    assert _writes_in_place(sweep)


def _scatter_added(first: str, op: str, key: tuple, n: int = 7, then: str = "") -> tuple[ForwardSweep, dict]:
    """out = a ± (zeros with v at key), v = x's entries the key picks, times 2;
    a = x itself ("x") or 3 · x ("3x"); `then` "a": out · a, a read after
    the sum; "c": out · c for a constant c, the sum's value read after it."""
    tape = Tape([])
    x = tape.leaf(np.linspace(-1, 2, n), "input", None, "x").id
    picked = tape.record(OPS["index"], (x,), {"key": key}, None, "[]", None).id
    v = tape.record(OPS["scale"], (picked, tape.leaf(np.array(2.0), "const", None).id), {}, None, "*", None).id
    s = tape.record(OPS["indexScatter"], (v,), {"key": key, "shape": (n,)}, None, "∂", None).id
    a = x if first == "x" else tape.record(OPS["mul"], (x, tape.leaf(np.array(3.0), "const", None).id), {},
                                           None, "*", None).id
    out = tape.record(OPS[op], (a, s), {}, None, op, None).id
    c = tape.leaf(np.array(5.0), "const", None).id
    out = tape.record(OPS["mul"], (out, {"a": a, "c": c}[then]), {}, None, "*", None).id if then else out
    sweep = ForwardSweep(tape, out, [x])
    return sweep, {x: np.random.default_rng(2).standard_normal((3, n))}


@pytest.mark.parametrize("op", ["add", "sub"])
@pytest.mark.parametrize("key", [(slice(1, None),), (slice(None, -1),), (slice(1, 6, 2),), (3,)])
@pytest.mark.parametrize("then", ["", "c"])
def test_a_scatter_is_added_into_the_other_operands_tangent(op, key, then, in_place):
    """a ± scatter(v): v added into (subtracted from) a's tangent at the
    key, where the sweep alone holds it (a = 3 · x); then the sum times 5."""
    sweep, seeds = _scatter_added("3x", op, key, then=then)
    assert sweep.folded
    _pushes_as_step_by_step(sweep, seeds)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_a_scatter_is_never_added_into_a_seed(op, in_place):
    """a ± scatter(v) with a = x: a's tangent is x's seed, so the scatter is
    made and added as the loop does."""
    sweep, seeds = _scatter_added("x", op, (slice(1, None),), then="c")
    assert sweep.folded
    _pushes_as_step_by_step(sweep, seeds)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_a_scatter_is_never_added_into_a_tangent_read_after_the_sum(op, in_place):
    """(a ± scatter(v)) · a: a's tangent is read after the sum, so the
    scatter is made and added as the loop does."""
    sweep, seeds = _scatter_added("3x", op, (slice(1, None),), then="a")
    _pushes_as_step_by_step(sweep, seeds)
    assert _writes_in_place(sweep)


@pytest.mark.parametrize("op", ["add", "sub"])
def test_a_scatter_is_never_added_into_a_tangent_that_lies_in_another_order(op, in_place):
    """(m @@ w) · 3 ± scatter(v), then its sum: the product's tangent is
    its own array but lies in memory in another order than C (the batched
    matmul's does, and the scale keeps its order), so the scatter is made
    and added as the loop does (a new array in C order), and the sum adds
    the entries in the order the loop's do."""
    key = (slice(1, None),)
    tape = Tape([])
    w = tape.leaf(np.linspace(-1, 2, 6).reshape(3, 2), "input", None, "w").id
    m = tape.record(OPS["matmul"], (tape.leaf(np.eye(3)[[0, 0, 1]], "const", None).id, w), {}, None, "@@", None).id
    a = tape.record(OPS["mul"], (m, tape.leaf(np.array(3.0), "const", None).id), {}, None, "*", None).id
    picked = tape.record(OPS["index"], (w,), {"key": key}, None, "[]", None).id
    v = tape.record(OPS["scale"], (picked, tape.leaf(np.array(2.0), "const", None).id), {}, None, "*", None).id
    s = tape.record(OPS["indexScatter"], (v,), {"key": key, "shape": (3, 2)}, None, "∂", None).id
    out = tape.record(OPS["sum"], (tape.record(OPS[op], (a, s), {}, None, op, None).id,), {}, None, "sum", None).id
    sweep = ForwardSweep(tape, out, [w])
    assert sweep.folded
    for seed in range(20):
        _pushes_as_step_by_step(sweep, {w: np.random.default_rng(seed).standard_normal((3, 3, 2))})


def test_the_chained_rosenbrock_hessians_sweep_adds_its_scatters_as_one_array(in_place):
    """The recorded gradient of Σ 100 (x[i+1] − x[i]²)² + (1 − x[i])² ends
    in the sum of two scatters (x[1:]'s and x[:-1]'s): folded, and the
    pushes of its Hessian's colours give the loop's bits."""
    from spiread_cli.second import SecondOrder
    r = run("x = [0.3, -1.2, 1.0, 0.7, -0.4, 2.0]\n"
            "loss = (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum")
    order = SecondOrder(r, ["x"])
    x = r.bindings["x"]
    sweep = ForwardSweep(r.tape, order.grad_ids[x], [x])
    assert sweep.folded
    _pushes_as_step_by_step(sweep, {x: np.random.default_rng(3).standard_normal((3, 6))})
    assert _writes_in_place(sweep)
