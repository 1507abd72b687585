"""One derivative statement per op (spiread_cli/rules.py): every numeric rule
is an interpretation of it, and the few hand-written fast paths stay equal to
it.

What the other suites check of the same statements: tests/test_ops.py holds
every op's vjp and jvp to central differences, test_second_order.py its
recorded form to the numeric one (and third derivatives to central
differences), test_explain.py its printed form in the explanations."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import REPO
from spiread_cli.ops import OPS
from spiread_cli.rules import interpreted_vjp
from spiread_cli.rules_code import jvp_code, vjp_code
from spiread_cli.rules_forward import derived_jvp
from spiread_cli.rules_printed import jvp_text, vjp_text
from test_ops import CASES

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FAST = sorted(name for name, op in OPS.items() if op.fast is not None)


def _operands(case):
    return [np.asarray(x, dtype=float) for x in case.xs]


def test_no_op_states_its_derivative_twice_by_hand():
    """An op's numeric vjp and jvp come from its statement, unless it names
    a fast path; a fast path replaces one rule and names its benchmark."""
    for name, op in OPS.items():
        vjp_by_hand = op.fast is not None and op.fast.vjp is not None
        jvp_by_hand = op.fast is not None and op.fast.jvp is not None
        assert ("compiled_vjp" in op.vjp.__qualname__) != vjp_by_hand or op.fwd is not None, name
        assert ("compiled_jvp" in op.jvp.__qualname__ or op.fwd is not None) != jvp_by_hand, name
        if op.fast is not None:
            assert vjp_by_hand or jvp_by_hand, name


def test_every_fast_path_names_a_workload_of_the_benchmarks():
    run_py = (REPO / "benchmarks" / "run.py").read_text("utf-8")
    workloads = set(re.findall(r'"([^"]+)"', re.search(r"STEP_WORKLOADS = \(([^)]*)\)", run_py).group(1)))
    assert FAST == ["logSoftmaxRows", "matmul", "meanLogSoftmaxPick", "tanh"]
    for name in FAST:
        workload, _, implementation = OPS[name].fast.benchmark.partition(": ")
        assert workload in workloads, (name, workload)
        assert not implementation or f'"{implementation}"' in run_py, (name, implementation)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_statement_written_as_code_computes_what_it_evaluates_to(case):
    """Two numeric interpretations: the statement evaluated step by step, and
    written out as a Python function (what `compiled_vjp` runs). The same
    primal rules in the same order: the same values, bit for bit."""
    op, xs = OPS[case.op], _operands(case)
    out = np.asarray(op.impl(*xs, **case.params), dtype=float)
    g = np.random.default_rng(1).normal(size=out.shape)
    for i in range(len(xs)):
        expected = np.asarray(interpreted_vjp(op.derivative)(i, g, out, *xs, **case.params))
        source, names = vjp_code(op.derivative, i, [x.shape for x in xs], out.shape, case.params)
        namespace = {}
        exec(source, names, namespace)
        got = namespace["vjp"](g, out, *xs)
        np.testing.assert_array_equal(np.zeros_like(xs[i]) if got is None else np.asarray(got), expected)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_transposed_statement_written_as_code_computes_what_it_evaluates_to(case):
    """The jvp likewise: transposed step by step (`derived_jvp`), and written
    out as a function (`jvp_code`, what `compiled_jvp` runs), for each
    operand alone and all together."""
    op, xs = OPS[case.op], _operands(case)
    rng = np.random.default_rng(4)
    out = np.asarray(op.impl(*xs, **case.params), dtype=float)
    tangents = [rng.normal(size=(2,) + x.shape) for x in xs]
    for moving in [[i] for i in range(len(xs))] + [list(range(len(xs)))]:
        ts = [t if i in moving else None for i, t in enumerate(tangents)]
        expected = np.asarray(derived_jvp(op.derivative)(ts, out, *xs, **case.params))
        source, names = jvp_code(op.derivative, moving, [x.shape for x in xs], out.shape, case.params)
        namespace = {}
        exec(source, names, namespace)
        got = namespace["jvp"](*[tangents[i] for i in moving], out, *xs)
        np.testing.assert_array_equal(np.broadcast_to(got, expected.shape), expected)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_derived_jvp_is_the_transpose_of_the_vjp(case):
    """⟨jvp(t), g⟩ = ⟨t, vjp(g)⟩ for each operand, at random t and g: forward
    mode is the statement transposed, to rounding."""
    op, xs = OPS[case.op], _operands(case)
    rng = np.random.default_rng(2)
    out = np.asarray(op.impl(*xs, **case.params), dtype=float)
    g = rng.normal(size=out.shape)
    for i, x in enumerate(xs):
        t = rng.normal(size=(3,) + x.shape)
        ts = [t if j == i else None for j in range(len(xs))]
        forward = np.asarray(derived_jvp(op.derivative)(ts, out, *xs, **case.params))
        back = np.asarray(interpreted_vjp(op.derivative)(i, g, out, *xs, **case.params))
        pushed = np.broadcast_to(forward, (3,) + out.shape).reshape(3, out.size) @ g.reshape(out.size)
        pulled = t.reshape(3, x.size) @ back.reshape(x.size)
        np.testing.assert_allclose(pushed, pulled, rtol=1e-12, atol=1e-12)


def test_a_rule_is_printed_from_its_statement_at_the_operands_shapes():
    l1 = OPS["normaliseRowsL1"]
    assert vjp_text(l1, 0, [(2, 3)], (2, 3), {}) == "(g − sign(x) · rowTotal(g · out)) / rowTotal(|x|)"
    matmul = OPS["matmul"]
    assert [vjp_text(matmul, i, [(2, 3), (3, 4)], (2, 4), {}) for i in (0, 1)] == ["g @@ bᵀ", "aᵀ @@ g"]
    assert jvp_text(matmul, [0, 1], [(2, 3), (3, 4)], (2, 4), {}) == "ȧ @@ b + a @@ ḃ"
    add = OPS["add"]  # what ran: the sum that undoes broadcasting only where there was some
    assert [vjp_text(add, i, [(2, 3), (3,)], (2, 3), {}) for i in (0, 1)] == ["g", "sumTo(g, 3)"]
    assert jvp_text(OPS["sub"], [0, 1], [(3,), (3,)], (3,), {}) == "ȧ − ḃ"
    assert vjp_text(OPS["sign"], 0, [(3,)], (3,), {}) == "0"


@pytest.mark.parametrize("sa, sb", [((2, 3), (3,)), ((3,), (3, 4)), ((3,), (3,)), ((1, 3), (3,)), ((3,), (3, 1)),
                                    ((3, 1), (1,)), ((1,), (1, 4))])
def test_a_products_tangent_is_printed_as_the_product_written(sa, sb):
    """`@@` with a vector operand: its statement makes the vector a row or a
    column (an outer product, or the product of matrices it stands in),
    and transposed that was printed as such, `reshape(ȧ @@ reshape(b,
    1×3)ᵀ, 2)`; a reshape of a product whose vector was made a matrix as
    numpy's matmul promotes one is printed as the product of the vector
    (rules_printed.Printer.of_vectors), and two vectors' statements are
    written so that their transposes keep the operands' order."""
    matmul = OPS["matmul"]
    out = matmul.shape(sa, sb)
    assert jvp_text(matmul, [0, 1], [sa, sb], out, {}) == "ȧ @@ b + a @@ ḃ"
    assert jvp_text(matmul, [0], [sa, sb], out, {}) == "ȧ @@ b"
    assert jvp_text(matmul, [1], [sa, sb], out, {}) == "a @@ ḃ"


def test_a_rule_is_written_as_code_over_the_primal_rules():
    source, names = vjp_code(OPS["mul"].derivative, 1, [(2, 3), (3,)], (2, 3), {})
    assert source == ("def vjp(g, out, a, b):\n"
                      "    t0 = scale_(g, a)\n"
                      "    t1 = sumTo_(t0, shape=(3,))\n"
                      "    return t1\n")
    assert names == {"scale_": OPS["scale"].impl, "sumTo_": OPS["sumTo"].impl}


# ----------------------------------------------------------- fast paths


SPECIAL = [0.0, np.inf, -np.inf, np.nan]


@st.composite
def _values(draw, shape):
    """Normal values with zeros, infinities and nans dropped in."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    if x.size and draw(st.booleans()):
        flat = x.reshape(-1)
        for where in rng.integers(0, x.size, size=draw(st.integers(1, 3))):
            flat[where] = SPECIAL[draw(st.integers(0, len(SPECIAL) - 1))]
    return x


@st.composite
def _fast_calls(draw):
    """(op name, operands, params) for a fast path, at random shapes."""
    name = draw(st.sampled_from(FAST))
    r, n, c = (draw(st.integers(1, 5)) for _ in range(3))
    if name == "matmul":
        sa, sb = draw(st.sampled_from([((r, n), (n, c)), ((n,), (n, c)), ((r, n), (n,)), ((n,), (n,))]))
        return name, [draw(_values(sa)), draw(_values(sb))], {}
    if name == "meanLogSoftmaxPick":
        picks = draw(st.integers(1, 6))
        rows = np.array(draw(st.lists(st.integers(0, r - 1), min_size=picks, max_size=picks)))
        cols = np.array(draw(st.lists(st.integers(0, c - 1), min_size=picks, max_size=picks)))
        return name, [draw(_values((r, c)))], {"rows": rows, "cols": cols}
    shape = draw(st.sampled_from([(r, c), (c,)] + ([()] if name == "tanh" else [])))
    return name, [draw(_values(shape))], {}


@SETTINGS
@given(_fast_calls(), st.data())
def test_every_fast_path_equals_its_statement_at_zeros_infinities_and_nans(call, data):
    name, xs, params = call
    op = OPS[name]
    with np.errstate(all="ignore"):
        out = np.asarray(op.impl(*xs, **params), dtype=float)
        g = data.draw(_values(out.shape), label="g")
        for i in range(len(xs)):
            fast = np.asarray(op.vjp(i, g, out, *xs, **params), dtype=float)
            stated = np.asarray(interpreted_vjp(op.derivative)(i, g, out, *xs, **params), dtype=float)
            # Equal up to rounding at the cotangent's scale: meanLogSoftmaxPick's softmax of a one-wide row is
            # 1 one way and 1 − ε the other, so 1 − softmax cancels to 0 or to ε/2·|g| (seen at most).
            scale = max([0.0, *np.abs(g[np.isfinite(g)]).reshape(-1)])
            np.testing.assert_allclose(fast, stated, rtol=1e-12, atol=np.finfo(float).eps * scale,
                                       err_msg=f"{name}, operand {i}")


@pytest.mark.parametrize("picks", [3, 5, 6, 7, 10])
@pytest.mark.parametrize("width", [1, 3])
def test_the_log_likelihoods_statement_cancels_as_its_fast_path_where_a_softmax_is_one(picks, width):
    """Where a picked row's softmax is exactly 1 (a one-wide row, or its other
    logits −inf), the pick's 1 − softmax is 0 both ways, so an infinite
    cotangent gives nan both ways, and every other entry the same bits: the
    statement adds count · (1 / n) once a position, as the fast path does,
    not 1 / n count times (3 × 0.2 rounds apart from 3 · 0.2)."""
    op = OPS["meanLogSoftmaxPick"]
    z = np.full((3, width), -np.inf)
    z[:, 0] = [0.3, -1.2, 2.0]
    rows = np.arange(picks) % 2 * 2  # rows 0 and 2, each picked many times
    cols = np.zeros(picks, dtype=int)
    with np.errstate(all="ignore"):
        out = np.asarray(op.impl(z, rows=rows, cols=cols), dtype=float)
        for g in (np.inf, -np.inf, 1.0, 3.0):
            fast = op.vjp(0, np.asarray(g), out, z, rows=rows, cols=cols)
            stated = interpreted_vjp(op.derivative)(0, np.asarray(g), out, z, rows=rows, cols=cols)
            assert np.array_equal(fast, stated, equal_nan=True), (g, fast, stated)
