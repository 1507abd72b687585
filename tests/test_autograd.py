"""Random well-shaped programs: spiread's values and reverse-mode gradients
against numpy and the independent HIPS `autograd` library."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import Agreement, run
from programs import (DRAWN, GENERATED, NOT_GENERATED, OPERATORS, UNARY_DOMAINS, Bin, Method, Var, evaluate,
                      programs, written)
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.ops import METHODS, OPS

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def test_values_match_numpy():
    @SETTINGS
    @given(programs())
    def check(program):
        r = run(program.source, name="generated.ad")
        expected = program.evaluate()
        assert list(r.bindings) == program.names
        for name in program.names:
            np.testing.assert_allclose(r.node(name).value, expected[name], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name} in\n{program.source}")
        assert r.output_name == "loss"
        assert r.diagnostics.warnings == [], program.source  # generated values are all finite

    check()


def test_gradients_match_autograd(record_property):
    worst = Agreement()

    @settings(SETTINGS, max_examples=200)
    @given(programs(), st.data())
    def check(program, data):
        r = run(program.source, name="generated.ad")
        wrt = data.draw(st.lists(st.sampled_from(program.names), min_size=1, max_size=4, unique=True), label="wrt")
        result = run_gradients(r, wrt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # autograd: "Output seems independent of input"
            expected = program.autograd_gradients(wrt)
        assert list(result.gradients) == wrt
        for name in wrt:
            got = result.gradients[name]
            assert np.shape(got) == np.shape(expected[name]), (name, program.source)
            scale = 1.0 + np.max(np.abs(expected[name]), initial=0.0)
            np.testing.assert_allclose(got, expected[name], rtol=1e-7, atol=1e-10 * scale,
                                       err_msg=f"∂loss/∂{name} in\n{program.source}")
            worst.update(got, expected[name])
        # A name the output does not depend on: a zero gradient (checked above) and a warning there.
        unrelated = {n for n in wrt if not program.depends_on(n)}
        warned = {w.message.split("`")[3] for w in r.diagnostics.warnings if "does not depend on" in w.message}
        assert warned == unrelated, program.source

    check()
    worst.record(record_property, "reverse vs autograd")


def test_default_wrt_is_backward_names_else_inputs():
    @SETTINGS
    @given(programs())
    def check(program):
        r = run(program.source, name="generated.ad")
        assert r.backward_wrt == program.backward_names
        assert list(r.wrt_ids()) == program.default_wrt(), program.source

    check()


def test_the_generator_covers_the_op_table():
    """Every op in spiread_cli.ops.OPS is generated, or deliberately not (a
    fused op, which has no syntax), and every method spelling is drawn: an
    op added to the table fails here until programs.py writes it."""
    assert not set(GENERATED) & set(NOT_GENERATED)
    assert set(GENERATED) | set(NOT_GENERATED) == set(OPS)
    assert all(OPS[name].methods == () for name in NOT_GENERATED)
    assert set(METHODS) <= DRAWN


@pytest.mark.parametrize("spelling", sorted(DRAWN & set(METHODS)))
def test_the_generator_has_a_reference_for_every_method(spelling):
    """Each drawn method evaluates in the generator's own numpy reference to
    the table's value (the generated tests compare everything else)."""
    op = METHODS[spelling]
    x = np.array([[0.5, 1.25, 2.0], [1.5, 0.75, 0.2]])
    # Inside the domains: asin, acos and atanh take |x| < 1, acosh x > 1.
    x = {"unit": x / 2.5, "above one": x + 1.0}.get(UNARY_DOMAINS.get(op.name), x)
    env = {"x": x,
           "y": np.array([[1.5], [0.5], [2.0]]) if op.name == "matmul" else np.array([1.5, -0.5, 2.0])}
    if spelling in written(*OPERATORS):
        got, expected = evaluate(Bin(spelling, Var("x"), Var("y")), env), op.impl(env["x"], env["y"])
    else:
        t = 0.6 if op.params else None
        got = evaluate(Method(spelling, Var("x"), t), env)
        expected = op.impl(env["x"], *([t] if op.params else []))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
