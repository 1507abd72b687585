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
