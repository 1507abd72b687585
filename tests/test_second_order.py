"""Second derivatives: every op's recorded (graph) vjp against its numeric
vjp, and Hessians and Hessian-vector products of random programs against
HIPS autograd's and against central differences of the exact gradient."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import Agreement, central_difference, run, spiread, strict_json
from programs import programs
from spiread_cli import optim, second, train
from spiread_cli.check import check_second_order, kink_sites
from spiread_cli.diagnostics import SpireadError
from spiread_cli.forward import TANGENT_BUDGET_BYTES, ForwardSweep
from spiread_cli.jacobian import jacobian
from spiread_cli.ops import OPS
from spiread_cli.tape import Emitter, Tape
from test_ops import CASES

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------ recorded statement = numeric rule


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_recorded_statement_evaluates_to_the_numeric_vjp(case):
    """For every op (the cases cover the whole table, test_ops checks), its
    derivative statement recorded as ops evaluates to the numeric vjp (the
    statement evaluated, or a fast path) at random inputs and a random
    cotangent."""
    op = OPS[case.op]
    tape = Tape()
    xs = [tape.leaf(np.asarray(x, dtype=float), "input", None).id for x in case.xs]
    out = tape.record(op, tuple(xs), case.params, None, case.op, None)
    g = tape.leaf(np.random.default_rng(7).normal(size=out.value.shape), "input", None).id
    for i, x in enumerate(xs):
        emitted = op.derivative(i, g, out.id, *xs, emit=Emitter(tape, None, "rule"), **case.params)
        expected = np.asarray(op.vjp(i, tape.nodes[g].value, out.value, *[tape.nodes[j].value for j in xs],
                                     **case.params), dtype=float)
        got = np.zeros_like(expected) if emitted is None else tape.nodes[emitted].value
        assert got.shape == expected.shape, f"operand {i}"
        np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-13, err_msg=f"operand {i}")


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_third_derivatives_of_every_op_match_central_differences_of_the_second(case):
    """Every op's statement is made of ops with statements, so a recorded
    gradient can be recorded again, and swept back once more: the third
    derivative ∂/∂x ⟨∂/∂x ⟨∂f/∂x, u⟩, v⟩, against central differences of the
    recorded second derivative as x moves (`product` and `pow`'s exponent
    included, which refused this before)."""
    rng = np.random.default_rng(3)
    op = OPS[case.op]
    tape = Tape()
    xs = [tape.leaf(np.asarray(x, dtype=float), "input", None).id for x in case.xs]
    out = tape.record(op, tuple(xs), case.params, None, case.op, None)

    def inner(node: int, shape_of: int) -> int:
        """⟨node, a random constant⟩: a scalar."""
        weights = tape.leaf(rng.normal(size=tape.nodes[shape_of].shape), "const", None).id
        product = tape.record(OPS["mul"], (node, weights), {}, None, "mul", None).id
        return tape.record(OPS["sum"], (product,), {}, None, "sum", None).id

    x = xs[0]
    first = tape.backward_graph(inner(out.id, out.id), [x])[x]
    second = tape.backward_graph(inner(first, x), [x])[x]
    scalar = inner(second, x)
    third = tape.backward(scalar, [x])[x]

    moved = tape.between([x], scalar)

    def second_at(value: np.ndarray) -> float:
        tape.nodes[x].set_value(value)
        tape.replay(moved)
        return float(tape.nodes[scalar].value)

    x0 = np.asarray(case.xs[0], dtype=float)
    fd = central_difference(second_at, x0)
    second_at(x0)
    np.testing.assert_allclose(third, fd, rtol=1e-5, atol=1e-6)


def test_recorded_gradient_names_each_node_by_the_rule_that_made_it():
    r = run("w = [[1.0, 2.0], [3.0, 0.5]]\nx = [0.3, -0.2]\nloss = (w @@ x).log.sum\n")
    first = len(r.tape.nodes)
    grads = r.tape.backward_graph(r.output, [r.bindings["w"]])
    labels = {n.label for n in r.tape.nodes[first:] if n.op is not None}
    # sum's rule broadcasts the seed's one: a constant (emitter.py), which log's rule's product leaves out,
    # and then nothing reads it: dropped, with the seed (emitter.unread_dropped)
    assert labels == {"∂log/∂x", "∂(@@)/∂a"}
    assert all(r.tape.feeding(grads[r.bindings["w"]])[n.id] for n in r.tape.nodes[first:])
    np.testing.assert_allclose(r.tape.nodes[grads[r.bindings["w"]]].value,
                               r.tape.backward(r.output, [r.bindings["w"]])[r.bindings["w"]])
    log = next(n for n in r.tape.nodes[:first] if n.label == "log")
    assert all(n.span == log.span for n in r.tape.nodes[first:] if n.label == "∂log/∂x")


# ---------------------------------------------------------- random programs


def _inputs_used(program) -> list[str]:
    return [n for n in program.names if n in program.inputs and program.depends_on(n)]


def _draw_wrt(program, data) -> list[str]:
    """One to three of the inputs the output depends on (the example is
    skipped when there are none)."""
    names = _inputs_used(program)
    assume(names)
    return data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="wrt")


def autograd_hessian(program, a: str, b: str) -> np.ndarray:
    """∂²output/∂a∂b by HIPS autograd, with both inputs as variables."""
    import autograd

    values = program.evaluate()

    def output(x, y):
        return program.evaluate(__import__("autograd.numpy").numpy, {a: x, b: y} if a != b else {a: x})[program.output]

    grad_a = autograd.grad(output, 0)
    x0, y0 = np.asarray(values[a], dtype=float), np.asarray(values[b], dtype=float)
    if a == b:
        return np.asarray(autograd.jacobian(lambda x: grad_a(x, x))(x0), dtype=float)
    return np.asarray(autograd.jacobian(grad_a, 1)(x0, y0), dtype=float)


def test_hessians_match_autograd(record_property):
    """Forward over the recorded gradient, the identity's rows as one batch
    or in blocks of one direction, equals HIPS autograd's Hessian."""
    worst = Agreement()

    @SETTINGS
    @given(programs(), st.data())
    def check(program, data):
        wrt = _draw_wrt(program, data)
        r = run(program.source, name="generated.ad")
        # autograd writes pow's partial in the base as y · x ** where(y, y - 1, 1):
        # differentiated again, that gives ∂²(x**y)/∂x∂y = x (not 1/x) where y == 0.
        assume(not any(n.op is not None and n.op.name == "pow" and np.any(r.tape.nodes[n.inputs[1]].value == 0)
                       for n in r.tape.nodes))
        blocks = second.SecondOrder(r, wrt).hessian(data.draw(st.sampled_from([TANGENT_BUDGET_BYTES, 1]),
                                                              label="budget_bytes"))
        for a, b in itertools.product(wrt, wrt):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # autograd: "Output seems independent of input"
                expected = autograd_hessian(program, a, b)
            got = blocks[a][b]
            assert got.shape == r.node(a).value.shape + r.node(b).value.shape
            scale = 1.0 + np.max(np.abs(expected), initial=0.0)
            np.testing.assert_allclose(got, expected.reshape(got.shape), rtol=1e-7, atol=1e-9 * scale,
                                       err_msg=f"∂²loss/∂{a}∂{b} in\n{program.source}")
            worst.update(got, expected.reshape(got.shape))
        # Symmetry: ∂²/∂A∂B is ∂²/∂B∂A with the axes swapped.
        for a, b in itertools.combinations(wrt, 2):
            na = r.node(a).value.ndim
            swapped = np.moveaxis(blocks[b][a], list(range(blocks[b][a].ndim - na, blocks[b][a].ndim)),
                                  list(range(na)))
            np.testing.assert_allclose(blocks[a][b], swapped, rtol=1e-9, atol=1e-10 * (1 + np.abs(swapped).max(initial=0)))
        assert r.diagnostics.warnings == [] or any("does not depend" in w.message for w in r.diagnostics.warnings)

    check()
    worst.record(record_property, "hessian vs autograd")


def test_hvp_is_the_hessian_times_the_direction():
    @SETTINGS
    @given(programs(), st.data())
    def check(program, data):
        wrt = _draw_wrt(program, data)
        given_names = data.draw(st.lists(st.sampled_from(wrt), min_size=1, unique=True), label="directions")
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
        r = run(program.source, name="generated.ad")
        vectors = {n: rng.normal(size=r.node(n).value.shape) for n in given_names}
        hv = second.hvp(run(program.source, name="generated.ad"), vectors, wrt).products
        h = second.hessian(r, wrt).blocks
        for a in wrt:
            size_a = r.node(a).value.size
            expected = sum(h[a][b].reshape(size_a, -1) @ v.ravel() for b, v in vectors.items())
            np.testing.assert_allclose(hv[a].ravel(), expected, rtol=1e-9,
                                       atol=1e-10 * (1 + np.abs(expected).max(initial=0)), err_msg=program.source)

    check()


def test_hvps_made_again_are_the_hessian_times_each_direction():
    """HessianVectorProducts records its sweep at the first product and
    replays only what the later ones read: each product is H·v (H by HIPS
    autograd) for every direction it is given, on random programs, and
    after the values move and `refresh` (Newton's steps) too."""
    @SETTINGS
    @given(programs(), st.data())
    def check(program, data):
        wrt = _draw_wrt(program, data)
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
        r = run(program.source, name="generated.ad")
        ids = [r.bindings[n] for n in wrt]
        recorded_from = len(r.tape.nodes)
        products = second.HessianVectorProducts(r.tape, r.tape.backward_graph(r.output, ids), recorded_from)
        moved = r.tape.between(ids, r.output)
        for step in range(5):
            if step == 3:  # the values move (signs kept): the forward nodes replayed, then the recorded gradient
                for n, i in zip(wrt, ids):
                    shape = np.shape(program.inputs[n])
                    r.tape.nodes[i].set_value(program.inputs[n] * (1 + rng.uniform(-0.1, 0.1, size=shape)))
                r.tape.replay(moved)
                if not np.all(np.isfinite(r.tape.nodes[r.output].value)):
                    return
                products.refresh()
            at = {n: r.tape.nodes[i].value for n, i in zip(wrt, ids)}
            vectors = {n: rng.normal(size=np.shape(at[n])) for n in wrt if rng.random() < 0.8}
            hv = products({r.bindings[n]: v for n, v in vectors.items()}, ids)
            moved_program = dataclasses.replace(program, inputs={**program.inputs, **at})
            for a, i in zip(wrt, ids):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # autograd: "Output seems independent of input"
                    expected = sum((autograd_hessian(moved_program, a, b).reshape(np.size(at[a]), -1) @ v.ravel()
                                    for b, v in vectors.items()), np.zeros(np.size(at[a])))
                scale = 1 + np.abs(expected).max(initial=0)
                np.testing.assert_allclose(np.ravel(hv[i]), expected, rtol=1e-7, atol=1e-9 * scale,
                                           err_msg=f"product {step} by {a} in\n{program.source}")

    check()


@pytest.mark.parametrize("source, overflowing", [
    ("x = [1.0, 2.0]\ny = [0.5, 3.0]\nloss = ((x * y).tanh).sum + (y ** 3).sum\n", {"y": [1e308, 1.0]}),
    ("x = [1.0, 2.0]\nloss = (x.exp * 3).sum\n", {"x": [1e308, -1e306]}),
    ("x = [1.0, 2.0]\nloss = (x.sin * 3).sum\n", {"x": [1e308, -1e306]}),
    ("x = [1.0, 2.0]\ny = [0.5, 3.0]\nloss = (x.exp * 3).sum + (y * 2).sum\n", {"x": [1e308, -1e306]}),
])
def test_a_replayed_hvp_that_is_not_finite_warns_as_the_first_sweep(source, overflowing):
    """A product replayed from the recorded sweep that comes out not finite
    is swept again numerically: the warning (what was born, where) is the
    one a first product (recorded, then swept) gives for that direction."""
    def warnings_of(calls: list[dict]) -> tuple[list, dict]:
        r = run(source)
        ids = list(r.bindings[n] for n in ("x", "y") if n in r.bindings)
        products = second.HessianVectorProducts(r.tape, r.tape.backward_graph(r.output, ids), len(r.tape.nodes),
                                                r.diagnostics)
        for directions in calls:
            got = products({r.bindings[n]: np.asarray(v, dtype=float) for n, v in directions.items()}, ids)
        return r.diagnostics.warnings, got
    fine = {name: [0.5, -1.0] for name in overflowing}
    expected, expected_products = warnings_of([overflowing])
    got, products = warnings_of([fine, fine, overflowing])
    assert expected and [(w.message, w.span) for w in got] == [(w.message, w.span) for w in expected]
    for i, value in expected_products.items():
        np.testing.assert_array_equal(products[i], value)


def test_a_value_differentiated_by_is_never_a_rules_op_that_computes_the_same():
    """w = t.square is differentiated by, and tanh's rule computes t.square
    again (1 − out²): recorded as w itself, the gradient by x would move
    with w, and ∂²f/∂x∂w (zero: f = Σt + Σw) would not be (emitter.Shared
    keeps the values differentiated by out of the ops it reuses)."""
    source = "x = [0.3, -0.4]\nt = x.tanh\nw = t.square\nloss = t.sum + w.sum\n"
    blocks = second.hessian(run(source), ["x", "w"]).blocks
    np.testing.assert_array_equal(blocks["x"]["w"], np.zeros((2, 2)))
    t = np.tanh([0.3, -0.4])  # ∂²/∂x² of Σ tanh x + Σ (tanh x)², every path from x
    np.testing.assert_allclose(blocks["x"]["x"], np.diag(-2 * t * (1 - t**2) + 2 * (1 - t**2) ** 2 - 4 * t**2 * (1 - t**2)),
                               rtol=1e-12)
    products = second.hvp(run(source), {"w": np.array([1.0, 2.0]), "x": np.array([0.5, -1.0])}, ["x", "w"]).products
    np.testing.assert_allclose(products["x"], blocks["x"]["x"] @ [0.5, -1.0], rtol=1e-12)
    np.testing.assert_array_equal(products["w"], np.zeros(2))


@pytest.mark.parametrize("source", ["x = [1e-200, 1.0]\nr = 1 / x\nloss = x.log.sum\n",
                                    "x = [1e-200, 1.0]\nr = 1 / x\nloss = x.log.sum + (r * 1e-300).sum\n"])
@pytest.mark.parametrize("hvp", [None, {"x": [1.0, 1.0]}])
def test_a_rules_op_that_the_program_computes_too_warns_where_the_rule_is(source, hvp, monkeypatch):
    """`log`'s rule computes 1 / x, which the program binds as r: a second
    derivative born there is named as the rule's, as when every op a rule
    emits is a node of its own (emitter.Shared shares only a rule's own)."""
    import spiread_cli
    from spiread_cli import emitter

    def warned() -> list[tuple]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            spiread_cli.compile(source, "s.ad").hessian(**({"hvp": hvp} if hvp else {}))
        return [(w.message.diagnostic.message, w.message.diagnostic.span) for w in caught]
    shared = warned()
    monkeypatch.setattr(emitter, "op_key", lambda *args: None)  # every op its own node
    assert shared and shared == warned()


def test_hessian_matches_central_differences_of_the_gradient(record_property):
    """The recorded gradient is part of the tape, so moving an input and
    replaying the tape gives the exact gradient there: its central
    differences are the Hessian's columns. Programs with an op sitting on a
    kink, or a kink within the step, are skipped (a difference across a
    kink is no derivative)."""
    worst = Agreement()

    @settings(SETTINGS, max_examples=40)
    @given(programs())
    def check(program):
        names = _inputs_used(program)
        assume(names and sum(np.size(program.inputs[n]) for n in names) <= 40)
        r = run(program.source, name="generated.ad")
        ids = [r.bindings[n] for n in names]
        assume(not kink_sites(r.tape, ids, r.output))
        state = second.SecondOrder(r, names)
        h = state.hessian()
        tape = r.tape
        for b, b_id in zip(names, ids):
            node = tape.nodes[b_id]
            x0 = node.value
            eps = 1e-5

            def gradients_at(x):
                node.set_value(x)
                tape.replay(tape.nodes[b_id + 1:])
                return {a: state.gradient(a).copy() for a in names}

            def differences(j, eps):
                step = np.zeros(x0.shape)
                step[j] = eps
                plus, minus = gradients_at(x0 + step), gradients_at(x0 - step)
                return {a: (plus[a] - minus[a]) / (2 * eps) for a in names}

            for j in np.ndindex(x0.shape):
                fds, finer = differences(j, eps), differences(j, eps / 4)
                for a in names:
                    fd = fds[a]
                    got = h[a][b][(...,) + j]
                    scale = 1.0 + np.abs(fd).max(initial=0)
                    # A kink within the step (not on it: -0.30000000000000004
                    # by clampMin(-0.3)) makes the difference depend on the step.
                    assume(np.allclose(finer[a], fd, rtol=1e-3, atol=1e-4 * scale))
                    np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-5 * scale, err_msg=program.source)
                    worst.update(got, fd)
            gradients_at(x0)

    check()
    worst.record(record_property, "hessian vs FD of gradient")


# ------------------------------------------------------------------ cases


def test_least_squares_hessian_is_twice_the_gram_matrix():
    a = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.25]])
    text = f"A = {a.tolist()}\ny = [1.0, 2.0, 3.0]\nw = [0.1, -0.2]\nloss = ((A @@ w - y) ** 2).sum\n"
    h = second.hessian(run(text), ["w"])
    np.testing.assert_allclose(h.blocks["w"]["w"], 2 * a.T @ a, rtol=1e-14)


@pytest.mark.parametrize("expr, at, expected", [
    ("x.relu * x", 1.5, 2.0), ("x.relu * x", -1.5, 0.0),
    ("x.abs * x", -2.0, -2.0), ("x.clampMin(0.5) * x", 1.0, 2.0), ("x.clampMax(0.5) * x", 1.0, 0.0),
])
def test_second_derivative_through_a_kink_is_zero_away_from_it(expr, at, expected):
    h = second.hessian(run(f"x = {at}\nloss = {expr}\n"), ["x"])
    assert float(h.blocks["x"]["x"]) == expected


def test_pow_in_both_operands_and_product_with_zeros():
    h = second.hessian(run("a = 1.5\nb = 2.5\nloss = a ** b\n"), ["a", "b"]).blocks
    a, b = 1.5, 2.5
    assert float(h["a"]["a"]) == pytest.approx(b * (b - 1) * a ** (b - 2))
    assert float(h["a"]["b"]) == pytest.approx(a ** (b - 1) * (1 + b * np.log(a)))
    assert float(h["b"]["b"]) == pytest.approx(a ** b * np.log(a) ** 2)
    x = np.array([2.0, 0.0, 3.0, 0.0])
    h = second.hessian(run(f"x = {x.tolist()}\nloss = x.product\n"), ["x"]).blocks["x"]["x"]
    expected = np.array([[0.0 if i == j else np.prod(np.delete(x, [i, j])) for j in range(4)] for i in range(4)])
    np.testing.assert_array_equal(h, expected)


def test_a_hessian_of_a_non_scalar_is_refused_where_the_output_is():
    with pytest.raises(SpireadError) as err:
        second.hessian(run("x = [1.0, 2.0]\ny = x * x\n"), ["x"])
    assert "the output `y` is a vector of 2, but gradients need a scalar" in err.value.diagnostic.message
    assert (err.value.diagnostic.span.line, err.value.diagnostic.span.column) == (2, 7)


def test_a_nonfinite_second_derivative_warns_where_it_is_born():
    r = run("x = 0.0\nloss = x.sqrt\n")
    h = second.hessian(r, ["x"])
    assert not np.isfinite(h.blocks["x"]["x"])
    messages = [(w.message, w.span.line) for w in r.diagnostics.warnings]
    assert any("derivative" in m and line == 2 for m, line in messages), messages


# ------------------------------------------------------- check --order 2


def test_second_order_check_passes_on_smooth_programs_entry_by_entry_and_along_directions():
    text = ("w = [[1.0, 2.0], [3.0, 0.5]]\nx = [0.3, -0.2]\n"
            "loss = ((w @@ x).tanh.exp * w.sum).sum + (x * x).product.log + (w.softmaxRows ** 1.5).mean\n")
    report = check_second_order(run(text))
    assert report.ok and report.order == 2
    assert {n: r.method for n, r in report.results.items()} == {
        "∂²loss/∂w∂w": "elementwise", "∂²loss/∂w∂x": "elementwise",
        "∂²loss/∂x∂w": "elementwise", "∂²loss/∂x∂x": "elementwise"}
    assert report.results["∂²loss/∂w∂x"].checked == 8
    directional = check_second_order(run(text), max_entries=3)
    assert directional.ok
    assert {r.method for r in directional.results.values()} == {"directional"}


def test_second_order_check_names_the_kink_it_meets():
    r = run("x = [0.0, 1.0]\nloss = (x.relu * x).sum\n")
    report = check_second_order(r)
    assert not report.ok
    [failure] = report.failures(r)
    assert failure.message.startswith("second-derivative check failed for `∂²loss/∂x∂x[0, 0]`: not differentiable")
    assert (failure.span.line, failure.span.column) == (2, 11)
    assert len(failure.notes) == 1 and failure.notes[0].startswith("`relu` (line 2, column 11) has input 0 at [0]")


# ------------------------------------------------------------------ Newton


def test_newton_reaches_the_least_squares_solution_in_two_steps():
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal(20)
    text = f"X = {x.tolist()}\ny = {y.tolist()}\nw = [0.0, 0.0, 0.0, 0.0]\nloss = ((X @@ w - y) ** 2).mean\n"
    result = train.train(run(text), ["w"], 2, optim.Newton())
    solution = np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(result.values["w"], solution, rtol=1e-10, atol=1e-12)
    assert result.status == "done" and result.error is None


# ------------------------------------------------------------ command line


LEAST_SQUARES = "X = [[1.0, 0.5], [1.0, -1.2], [1.0, 2.3]]\ny = [1.2, -0.8, 3.1]\nw = [0.1, 0.2]\nb = 0.5\n" \
                "loss = ((X @@ w + b - y) ** 2).sum\n"


def test_hessian_command_json_has_every_block_in_torchs_layout(tmp_program):
    path = tmp_program(LEAST_SQUARES)
    result = spiread("hessian", path, "--wrt", "w", "--wrt", "b", "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert set(doc) == {"schema", "file", "output", "value", "hessian", "warnings"}
    x = np.array([[1.0, 0.5], [1.0, -1.2], [1.0, 2.3]])
    assert doc["output"] == "loss" and doc["warnings"] == []
    assert doc["hessian"]["w"]["w"] == {"shape": [2, 2], "value": (2 * x.T @ x).tolist()}
    assert doc["hessian"]["w"]["b"] == {"shape": [2], "value": (2 * x.sum(axis=0)).tolist()}
    assert doc["hessian"]["b"]["w"]["value"] == doc["hessian"]["w"]["b"]["value"]
    assert doc["hessian"]["b"]["b"] == {"shape": [], "value": 6.0}


def test_hessian_command_hvp_matches_the_hessian_and_reads_any_set_form(tmp_program, tmp_path):
    path = tmp_program(LEAST_SQUARES)
    np.save(tmp_path / "v.npy", np.array([1.0, -2.0]))
    result = spiread("hessian", path, "--wrt", "w", "--wrt", "b", "--hvp", f"w={tmp_path / 'v.npy'}", "--hvp", "b=3",
                     "--format", "json")
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert set(doc) == {"schema", "file", "output", "value", "hvp", "warnings"}
    x = np.array([[1.0, 0.5], [1.0, -1.2], [1.0, 2.3]])
    v, vb = np.array([1.0, -2.0]), 3.0
    np.testing.assert_allclose(doc["hvp"]["w"]["value"], 2 * x.T @ x @ v + 2 * x.sum(axis=0) * vb)
    np.testing.assert_allclose(doc["hvp"]["b"]["value"], 2 * x.sum(axis=0) @ v + 6.0 * vb)


def test_hessian_command_text(tmp_program):
    result = spiread("hessian", tmp_program("x = 3.0\nloss = x ** 3\n"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["loss", "scalar", "27.0", "∂²loss/∂x∂x", "scalar", "18.0"]


@pytest.mark.parametrize("args, message, code", [
    (["--hvp", "xx=1"], "`--hvp xx=…`: the program binds no `xx`", 2),
    (["--hvp", "x=[1, 2, 3]"], "`--hvp x=…`: the direction is a vector of 3, but `x` is a vector of 2", 2),
])
def test_hessian_command_refuses_bad_directions(tmp_program, args, message, code):
    result = spiread("hessian", tmp_program("x = [1.0, 2.0]\nloss = (x * x).sum\n"), *args)
    assert result.returncode == code
    assert message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_hessian_of_a_non_scalar_is_a_located_error(tmp_program):
    path = tmp_program("x = [1.0, 2.0]\ny = x * x\n")
    result = spiread("hessian", path)
    assert result.returncode == 1
    assert f"{path}:2:7: error: the output `y` is a vector of 2, but gradients need a scalar" in result.stderr


def test_check_order_two_command(tmp_program):
    ok = spiread("check", "--order", "2", tmp_program("x = [0.5, 1.5]\nloss = (x.tanh * x.exp).sum\n"))
    assert ok.returncode == 0, ok.stderr
    assert "second-derivative check of `loss`" in ok.stdout and "check passed" in ok.stdout
    path = tmp_program("x = [0.0, 1.0]\nloss = (x.relu * x).sum\n", "kink.ad")
    failed = spiread("check", "--order", "2", path, "--format", "json")
    assert failed.returncode == 1
    assert strict_json(failed.stdout)["results"]["∂²loss/∂x∂x"]["ok"] is False
    assert f"{path}:2:11: error: second-derivative check failed for `∂²loss/∂x∂x[0, 0]`" in failed.stderr


def test_train_newton_command_solves_least_squares_in_two_steps(tmp_program, tmp_path):
    path = tmp_program(LEAST_SQUARES.replace("b = 0.5\n", "").replace(" + b", ""))
    result = spiread("train", path, "--wrt", "w", "--optimizer", "newton", "--steps", "2", "--format", "json")
    assert result.returncode == 0, result.stderr
    x, y = np.array([[1.0, 0.5], [1.0, -1.2], [1.0, 2.3]]), np.array([1.2, -0.8, 3.1])
    np.testing.assert_allclose(strict_json(result.stdout)["values"]["w"]["value"], np.linalg.solve(x.T @ x, x.T @ y),
                               rtol=1e-12)


def test_dot_draws_a_recorded_backward_pass_named_by_its_rules():
    from dataclasses import replace

    from spiread_cli.dot import to_dot
    r = run("w = [1.0, 2.0]\nloss = (w.log * w).sum\n")
    w = r.bindings["w"]
    grad = r.tape.backward_graph(r.output, [w])[w]
    dot = to_dot(replace(r, output=grad))
    assert "<b>∂log/∂x</b><br/><font color=\"#7c3aed\">scale</font>" in dot
    assert dot.count('style="filled,dashed"') == sum(1 for n in r.tape.nodes if n.op is not None and n.label[0] in "∂Σ"
                                                    and r.tape.feeding(grad)[n.id] and n.id != grad)
    assert "<b>log</b>" in dot  # the forward ops the gradient reads are drawn too


# ------------------------------------------------------- non-finite values

from test_tape import NONFINITE_DERIVATIVES  # noqa: E402


@pytest.mark.parametrize("text, op", NONFINITE_DERIVATIVES)
def test_a_recorded_gradient_warns_where_a_nonfinite_derivative_is_born_as_the_numeric_one_does(text, op):
    numeric, recorded = run(text), run(text)
    x = numeric.bindings["x"]
    expected = numeric.tape.backward(numeric.output, [x], numeric.diagnostics)[x]
    grad = recorded.tape.backward_graph(recorded.output, [x], recorded.diagnostics)[x]
    np.testing.assert_array_equal(recorded.tape.nodes[grad].value, expected)
    assert [(w.message, w.span) for w in recorded.diagnostics.warnings] == \
        [(w.message, w.span) for w in numeric.diagnostics.warnings]


def test_a_merged_repeat_warns_where_the_numeric_sweep_does():
    # x[:1] * y is written twice: the recorded gradient runs its rule once, on
    # both cotangents, and names the occurrence the numeric sweep meets first.
    text = "x = [1e-300, 2]\ny = [1e300]\nf = (x[:1] * y).sum + (x[:1] * y).sum * 1e10\n"
    numeric, recorded = run(text), run(text)
    x = numeric.bindings["x"]
    numeric.tape.backward(numeric.output, [x], numeric.diagnostics)
    recorded.tape.backward_graph(recorded.output, [x], recorded.diagnostics)
    said = [(w.message, w.span) for w in recorded.diagnostics.warnings]
    assert said == [(w.message, w.span) for w in numeric.diagnostics.warnings] and said[0][1].column == 30


def test_a_recorded_gradient_around_an_infinite_value_stays_finite_and_quiet():
    # The seed example's case: log(0) at an entry the selection drops; `scale` keeps 0 · inf out.
    r = run("x = [[0.5, 0.5], [0.0, 1.0]]\ny = x.log.select((0, 0), (1, 1)).sum\n")
    x = r.bindings["x"]
    grad = r.tape.backward_graph(r.output, [x], r.diagnostics)[x]
    np.testing.assert_array_equal(r.tape.nodes[grad].value, [[2.0, 0.0], [0.0, 1.0]])
    assert [w.message.split(" gave")[0] for w in r.diagnostics.warnings] == ["`log`"]
    h = second.hessian(run("x = [[0.5, 0.5], [0.0, 1.0]]\ny = x.log.select((0, 0), (1, 1)).sum\n"), ["x"])
    expected = np.zeros((2, 2, 2, 2))
    expected[0, 0, 0, 0], expected[1, 1, 1, 1] = -4.0, -1.0
    np.testing.assert_array_equal(h.blocks["x"]["x"], expected)


def test_the_mixed_partial_of_pow_at_a_zero_exponent_is_one_over_the_base():
    # ∂²(w**h)/∂w∂h = w**(h-1) (1 + h log w), which is 1/w at h = 0. PyTorch
    # 2.13's double backward gives 0 there and HIPS autograd's w: each
    # differentiates its own masking of the first derivative at h = 0.
    # Central differences of the function itself agree with 1/w.
    r = run("w = 0.52\nh = 0.0\nloss = w ** h\n")
    blocks = second.hessian(r, ["w", "h"]).blocks
    assert blocks["w"]["h"] == pytest.approx(1 / 0.52, rel=1e-12)
    assert blocks["h"]["w"] == pytest.approx(1 / 0.52, rel=1e-12)
    eps = 1e-6
    fd = ((0.52 + eps) ** eps - (0.52 + eps) ** -eps - (0.52 - eps) ** eps + (0.52 - eps) ** -eps) / (4 * eps * eps)
    assert blocks["w"]["h"] == pytest.approx(fd, rel=1e-4)


def test_hessian_blocks_of_a_value_with_no_entries_are_empty_and_shaped():
    r = run("w = zeros(0)\nv = [1.0, 2.0]\nloss = w.sum + (v * v).sum\n")
    blocks = second.hessian(r, ["w", "v"]).blocks
    assert blocks["w"]["w"].shape == (0, 0) and blocks["w"]["v"].shape == (0, 2) and blocks["v"]["w"].shape == (2, 0)
    np.testing.assert_array_equal(blocks["v"]["v"], [[2.0, 0.0], [0.0, 2.0]])


def test_a_repeated_computation_is_differentiated_once():
    """`(A @@ w)` written twice is one product for the derivatives
    (Tape.repeats): the recorded gradient sums both paths' cotangents before
    one product's rule, and forward mode pushes the tangents through one
    product; the Hessian is still Aᵀ diag(tanh″ + exp) A. A repeat that is
    itself differentiated by keeps its own paths."""
    A, w = np.array([[1.0, 2.0], [0.5, -1.0], [0.3, 0.2]]), np.array([0.4, -0.3])
    r = run(f"A = {A.tolist()}\nw = {w.tolist()}\nloss = (A @@ w).tanh.sum + (A @@ w).exp.sum\n")
    first = len(r.tape.nodes)
    state = second.SecondOrder(r, ["w"])
    assert [n.op.name for n in r.tape.nodes[first:] if n.op is not None].count("matmul") == 1
    assert len(ForwardSweep(r.tape, state.grad_ids[r.bindings["w"]], [r.bindings["w"]]).same) == 1
    z = A @ w
    expected = A.T @ np.diag(-2 * np.tanh(z) * (1 - np.tanh(z) ** 2) + np.exp(z)) @ A
    np.testing.assert_allclose(state.hessian()["w"]["w"], expected, rtol=1e-13)

    r = run("x = [0.5, 2.0]\nh = x.exp\nk = x.exp\ny = h * 2 + k\n")
    for mode in ("forward", "reverse"):
        blocks = jacobian(r, ["h", "k", "x"], mode).blocks
        np.testing.assert_allclose(blocks["h"], 2 * np.eye(2))
        np.testing.assert_allclose(blocks["k"], np.eye(2))
        np.testing.assert_allclose(blocks["x"], np.diag(3 * np.exp([0.5, 2.0])))
    h = second.hessian(run("x = [0.5, 2.0]\nh = x.exp\nk = x.exp\nloss = (h * h + k * k * k).sum\n"), ["h", "k"])
    np.testing.assert_allclose(h.blocks["h"]["h"], 2 * np.eye(2))
    np.testing.assert_allclose(h.blocks["k"]["k"], np.diag(6 * np.exp([0.5, 2.0])))
    np.testing.assert_allclose(h.blocks["h"]["k"], np.zeros((2, 2)))


def test_a_replayed_hvp_keeps_a_zero_against_an_infinite_partial():
    """An HVP after the first replays its recorded sweep with `scale` as a
    multiply and checks the products: sqrt's second derivative at 0 is
    infinite, but its cotangent there is 0 (c[0] = 0), so H·v is 0 there on
    every call, as on the first (recorded with the guards)."""
    r = run("w = [0.0, 4.0]\nc = [0.0, 1.0]\nloss = (w.sqrt * c).sum\n")
    order = second.SecondOrder(r, ["w"])
    v = np.array([1.0, 0.5])
    first = order.hvp({"w": v})["w"]
    np.testing.assert_array_equal(first, [0.0, -0.25 * 4.0 ** -1.5 * 0.5])
    for _ in range(3):
        assert order.hvp({"w": v})["w"].tobytes() == first.tobytes()
    assert (order._products.plans.keys() >= {((r.bindings["w"],), True), ((r.bindings["w"],), False)})


# Losses whose first derivatives are infinite (or nan) where x has zeros or leaves a log's domain.
NOT_FINITE_AT_ZEROS = ["(x[1:] * x[:-1]).sqrt.sum", "(x * x).sqrt.sum", "x.sqrt.sum + (x * y).sum",
                       "(x[1:] * x[:-1]).abs.sqrt.sum", "(x.sqrt * y).sum", "(x ** 1.5).sum + x.sum * x[0]",
                       "x.sqrt.sum * y.sqrt.sum", "((x + 1.0).log * x[:1].sqrt).sum", "(x.sqrt * x.sqrt).sum",
                       "(x[1:] - x[:-1]).abs.sqrt.sum", "(x.abs ** 0.5).sum / (y * y).sum"]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(NOT_FINITE_AT_ZEROS), st.integers(2, 5), st.booleans(), st.data())
def test_the_dense_hessian_its_hvps_and_its_sparse_form_agree_where_a_first_derivative_is_not_finite(
        loss, n, y_zero, data):
    """At zeros of x a first derivative is infinite, so 0 · inf meets the
    second: the dense Hessian (its rows' seeds kept as values, pushed again
    as arrays where a block is not finite), H·eⱼ for every j (reverse over
    reverse) give the same nan and inf at the same entries, and the same
    values elsewhere; the sparse Hessian (compressed seeds, arrays) gives
    them at the entries it stores, reading each pair once, so its (i, j) is
    the dense (i, j) or (j, i); outside its pattern it is a structural 0,
    where the dense one is 0 or the nan of a 0 · inf. As PyTorch's and JAX's
    Hessians, nan where they meet 0 · inf (docs/design.md)."""
    import spiread_cli
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    x, y = rng.normal(size=n), (np.zeros(n) if y_zero else rng.normal(size=n))
    x[data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=n), label="zeros")] = 0.0
    program = spiread_cli.compile(f"x = zeros({n})\ny = zeros({n})\nloss = {loss}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", RuntimeWarning)
        dense = np.asarray(program.hessian(x=x, y=y, wrt="x")["x"]["x"])
        assert np.asarray(program.hessian(x=x, y=y, wrt="x")["x"]["x"]).tobytes() == dense.tobytes()  # kept
        products = np.stack([program.hessian(x=x, y=y, wrt="x", hvp={"x": e})["x"] for e in np.eye(n)], axis=1)
        sparse = program.hessian(x=x, y=y, wrt="x", sparse=True).tocoo()
    assume(not np.isfinite(dense).all())
    close = dict(rtol=1e-9, atol=1e-12 * (1 + np.abs(dense[np.isfinite(dense)]).max(initial=0)))
    np.testing.assert_allclose(products, dense, **close, err_msg=f"{loss} at x = {x}, y = {y}")
    for i, j, value in zip(sparse.row, sparse.col, sparse.data):
        assert any(np.allclose(value, dense[p, q], equal_nan=True, **close) for p, q in ((i, j), (j, i))), (i, j)
    outside = np.ones((n, n), dtype=bool)
    outside[sparse.row, sparse.col] = False
    assert ((dense[outside] == 0) | ~np.isfinite(dense[outside])).all()
