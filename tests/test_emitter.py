"""The recorded gradient without identity work (spiread_cli/emitter.py).

Every rewrite must be exact: the recorded gradients are compared bit for
bit with the same recordings made with the rewrites switched off, on random
programs over the whole table, and the Hessians swept through them to the
last few ulps (a rewrite can change where cotangents meet when the gradient
is differentiated again, so the order of a sum); the listed
identities must be gone from the gradients of programs that recorded them;
and a leaf whose value is data (an input, a direction, a file's rows) is
never relied on, so a task that sets it again gets the right derivatives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import REPO, run
from programs import programs
from spiread_cli import emitter, second
from spiread_cli.forward import jacobian_forward
from spiread_cli.ops import OPS

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def unsimplified(monkeypatch):
    """Record every op a statement emits, as before emitter.py's rewrites."""
    def switch_off():
        monkeypatch.setattr(emitter, "simplified", lambda emit, op_name, inputs, params: None)
    return switch_off


def same_bits(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal entry for entry, nan where nan, and the sign of every zero (a nan's sign is not held)."""
    got, expected = np.asarray(got), np.asarray(expected)
    np.testing.assert_array_equal(got, expected, err_msg=what)
    numbers = ~np.isnan(expected)
    assert np.array_equal(np.signbit(got[numbers]), np.signbit(expected[numbers])), what


def recorded(source: str, wrt: list[str]):
    r = run(source, name="generated.ad")
    first = len(r.tape.nodes)
    ids = {name: r.bindings[name] for name in wrt}
    grads = r.tape.backward_graph(r.output, list(ids.values()))
    return r, first, {name: grads[i] for name, i in ids.items()}


def hessian_rows(r, grads: dict[str, int], wrt: list[str]) -> dict[str, dict[int, np.ndarray]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {a: jacobian_forward(r.tape, g, [r.bindings[b] for b in wrt]) for a, g in grads.items()}


def _wrt(program, data) -> list[str]:
    names = [n for n in program.names if n in program.inputs and program.depends_on(n)]
    assume(names)
    return data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True), label="wrt")


# ------------------------------------------------------------------ exact


def hvps(r, first: int, grads: dict[str, int], directions: dict[str, np.ndarray]) -> tuple[dict, int]:
    """H·v by reverse over reverse (the sweep from ⟨∇f, v⟩ recorded), and how many ops it replays."""
    ids = {r.bindings[n]: g for n, g in grads.items()}
    products = second.HessianVectorProducts(r.tape, ids, first)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        by_id = {r.bindings[n]: v for n, v in directions.items()}
        products(by_id, list(ids))  # recorded,
        found = products(by_id, list(ids))  # then replayed
    feeding = products.tape.feeding(*products.products.values())
    recorded_ops = sum(1 for n in products.tape.nodes[first:] if n.op is not None and feeding[n.id])
    return {n: found[r.bindings[n]] for n in grads}, recorded_ops


def close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal to rounding: the same terms, maybe met in another order."""
    np.testing.assert_allclose(got, expected, rtol=1e-13, equal_nan=True, err_msg=what,
                               atol=1e-13 * np.nanmax(np.abs(np.where(np.isinf(got), 0, got)), initial=0.0))


def test_recorded_gradients_hessians_and_hvps_are_those_recorded_without_the_rewrites(unsimplified):
    """Random programs over the whole table: the gradient recorded with the
    rewrites equals bit for bit what the statements recorded op for op give,
    and the Hessian swept forward through it and the HVP swept back from it
    (recorded again, where a product reads a rule's broadcast) equal theirs
    to rounding — and the rewrites did leave work out of some of them."""
    fewer, fewer_in_hvps = [], []

    @SETTINGS
    @given(programs(), st.data())
    def check(program, data):
        wrt = _wrt(program, data)
        r, first, grads = recorded(program.source, wrt)
        hessian = hessian_rows(r, grads, wrt)
        rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="direction seed"))
        directions = {n: rng.normal(size=r.tape.nodes[r.bindings[n]].shape) for n in wrt}
        products, replayed = hvps(r, first, grads, directions)
        kept = len(r.tape.between([r.bindings[n] for n in wrt], max(grads.values())))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(emitter, "simplified", lambda emit, op_name, inputs, params: None)
            r0, first0, grads0 = recorded(program.source, wrt)
            hessian0 = hessian_rows(r0, grads0, wrt)
            products0, replayed0 = hvps(r0, first0, grads0, directions)
        read = r.tape.feeding(*grads.values())
        assert all(read[n.id] for n in r.tape.nodes[first:]), "what no gradient reads is dropped"
        for a in wrt:
            same_bits(r.tape.nodes[grads[a]].value, r0.tape.nodes[grads0[a]].value, f"∂/∂{a}\n{program.source}")
            for b, block in hessian[a].items():
                close(block, hessian0[a][b], f"∂²/∂{a}∂{b}\n{program.source}")
            close(products[a], products0[a], f"H·v by {a}\n{program.source}")
        fewer.append(kept < len(r0.tape.between([r0.bindings[n] for n in wrt], max(grads0.values()))))
        fewer_in_hvps.append(replayed < replayed0)

    check()
    assert any(fewer) and any(fewer_in_hvps)


def test_hessians_and_hvps_of_the_chained_rosenbrock_are_autograds():
    import autograd
    import autograd.numpy as anp

    def f(x):
        return anp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    x = np.random.default_rng(5).uniform(-1.5, 1.5, 12)
    source = (REPO / "examples" / "chained_rosenbrock.ad").read_text()
    r = run(source, sets={"x": x})
    expected = autograd.hessian(f)(x)
    np.testing.assert_allclose(second.hessian(r, ["x"]).blocks["x"]["x"], expected, rtol=1e-13, atol=1e-11)
    sparse = second.sparse_hessian(run(source, sets={"x": x}), ["x"])
    np.testing.assert_allclose(sparse.matrix.toarray(), expected, rtol=1e-13, atol=1e-11)
    v = np.random.default_rng(6).normal(size=12)
    hv = second.hvp(run(source, sets={"x": x}), {"x": v}, ["x"]).products["x"]
    np.testing.assert_allclose(hv, expected @ v, rtol=1e-12, atol=1e-11)


EDGES = np.array([-0.0, 0.0, 1.0, -2.5, np.inf, -np.inf, np.nan, 1e308, -1e308, 5e-324, -3e-310])

# Each rewrite at ±0, infinities, nan, overflow and subnormals: (statement, ops it leaves out of the
# path from x to the result).
REWRITES = {
    "x · 1": (lambda e, x: e("mul", [x, e.const(1.0)]), 1),
    "1 · x": (lambda e, x: e("mul", [e("broadcastTo", [e.const(1.0)], shape=(11,)), x]), 1),
    "scale(1, x)": (lambda e, x: e("scale", [e.const(np.ones(11)), x]), 1),
    "scale(x, 1)": (lambda e, x: e("scale", [x, e.const(1.0)]), 1),
    "x / 1": (lambda e, x: e("div", [x, e.const(1.0)]), 1),
    "x ** (2 − 1)": (lambda e, x: e("pow", [x, e("sub", [e.const(2.0), e.const(1.0)])]), 1),
    "x ** (3 − 1), a square": (lambda e, x: e("pow", [x, e("sub", [e.const(3.0), e.const(1.0)])]), 0),
    "x ** 2 over a larger exponent is kept": (lambda e, x: e("pow", [
        e("reshape", [x], shape=(1, 11)), e.const(np.full((2, 11), 2.0))]), 0),
    "x + (−0)": (lambda e, x: e("add", [e.const(-0.0), x]), 1),
    "x − (+0)": (lambda e, x: e("sub", [x, e.const(0.0)]), 1),
    "x + (+0) is kept": (lambda e, x: e("add", [x, e.const(0.0)]), 0),
    "−(−x)": (lambda e, x: e("neg", [e("neg", [x])]), 2),
    "−(3 · x)": (lambda e, x: e("neg", [e("scale", [e.const(3.0), x])]), 1),
    "−(x · 3)": (lambda e, x: e("neg", [e("mul", [x, e.const(3.0)])]), 1),
    "100 · (2 · x)": (lambda e, x: e("scale", [e.const(100.0), e("scale", [e.const(2.0), x])]), 1),
    "(x · 4) · −3": (lambda e, x: e("mul", [e("mul", [x, e.const(4.0)]), e.const(-3.0)]), 1),
    "(−x) · (2 · x)": (lambda e, x: e("mul", [e("neg", [x]), e("mul", [e.const(2.0), x])]), 1),
    "(x · −3) · (−x)": (lambda e, x: e("mul", [e("mul", [x, e.const(-3.0)]), e("neg", [x])]), 1),
    "scale(−x, 2 · x)": (lambda e, x: e("scale", [e("neg", [x]), e("scale", [e.const(2.0), x])]), 1),
    "scale(2 · x, −x) is kept": (lambda e, x: e("scale", [e("mul", [e.const(2.0), x]), e("neg", [x])]), 0),
    "0.5 · (2 · x) is kept": (lambda e, x: e("scale", [e.const(0.5), e("scale", [e.const(2.0), x])]), 0),
    "3 · (3 · x) is kept": (lambda e, x: e("mul", [e.const(3.0), e("mul", [e.const(3.0), x])]), 0),
    "transpose twice": (lambda e, x: e("reshape", [e("transpose", [e("transpose", [
        e("reshape", [x], shape=(11, 1))])])], shape=(11,)), 4),
    "reshape of a reshape": (lambda e, x: e("reshape", [e("reshape", [x], shape=(1, 11))], shape=(11,)), 2),
    "a broadcast and a sum to its own shape": (lambda e, x: e("sumTo", [e("broadcastTo", [x], shape=(11,))],
                                                                  shape=(11,)), 2),
    "|exp x|": (lambda e, x: e("abs", [e("exp", [x])]), 1),
    "|x · x|": (lambda e, x: e("abs", [e("square", [x])]), 1),
    "||x||": (lambda e, x: e("abs", [e("abs", [x])]), 1),
    "|cosh x|": (lambda e, x: e("abs", [e("cosh", [x])]), 1),
    "|sqrt x| is kept (sqrt(−0) is −0)": (lambda e, x: e("abs", [e("sqrt", [x])]), 0),
    "|x| is kept": (lambda e, x: e("abs", [e("neg", [x])]), 0),
    **{f"{op}(broadcast, x)": ((lambda op: lambda e, x: e(op, [_broadcast_total(e, x), x]))(op), 1)
       for op in ("add", "sub", "mul", "div", "scale")},
    "scale(x, broadcast)": (lambda e, x: e("scale", [x, _broadcast_total(e, x)]), 1),
    "both broadcast: one read as it was": (lambda e, x: e("mul", [e("broadcastTo", [x], shape=(2, 11)),
                                                                  e("broadcastTo", [x], shape=(2, 11))]), 1),
    "x + (−sin x)": (lambda e, x: e("add", [x, e("neg", [e("sin", [x])])]), 1),
    "(−sin x) + x": (lambda e, x: e("add", [e("neg", [e("sin", [x])]), x]), 1),
    "x − (−sin x)": (lambda e, x: e("sub", [x, e("neg", [e("sin", [x])])]), 1),
    "(−sin x) − x is kept": (lambda e, x: e("sub", [e("neg", [e("sin", [x])]), x]), 0),
    "a broadcast that makes the shape is kept": (lambda e, x: e("mul", [
        _broadcast_total(e, x), e("sumTo", [x], shape=(1,))]), 0),
}


def _broadcast_total(e, x):
    """x's total, broadcast back to x's shape (a row total's derivative meeting a product)."""
    return e("broadcastTo", [e("sumTo", [x], shape=(1,))], shape=(11,))


@pytest.mark.parametrize("name", REWRITES)
def test_each_rewrite_is_exact_at_every_value(name, unsimplified):
    statement, left_out = REWRITES[name]

    def emitted() -> tuple[np.ndarray, int]:
        from spiread_cli.tape import Emitter, Tape
        tape = Tape()
        x = tape.leaf(EDGES.copy(), "input", None).id
        with np.errstate(all="ignore"):
            result = statement(Emitter(tape, None, "∂rule/∂x"), x)
        return tape.nodes[result].value, sum(n.op is not None for n in tape.between([x], result))

    got, ops = emitted()
    unsimplified()
    expected, ops_before = emitted()
    same_bits(got, expected, name)
    assert ops_before - ops == left_out


@pytest.mark.parametrize("mean", ["({p}).mean", "({p} / 3).mean", "(3 * {p}).mean", "({p}).rowMean.sum"])
@pytest.mark.parametrize("product", ['einsum("ik,kj->ij", w1, w2)', "w1 @@ w2", 'einsum("ji,jk->ik", w2, w1.T)'])
@pytest.mark.parametrize("rows, columns", [(1, 9), (40, 40), (1100, 1)])  # 9 entries; over COPIED_BROADCAST_ENTRIES
def test_a_folded_constant_is_laid_out_as_the_op_lays_it_out(rows, columns, product, mean, unsimplified):
    """The mean's 1/n spread over a product (and scaled) is a constant the
    emitter folds; a product reading it meets an array laid out as the op
    that made it lays it out (Emitter.fold): a broadcast's copy up to
    COPIED_BROADCAST_ENTRIES entries and its view above, a scaling's array
    of its own at any size. einsum takes a zero stride's factor out of its
    sums, and a product of matrices reads a zero stride by another loop
    than BLAS's, so a fold's broadcast view where the op made an array was
    an ulp off the recording without the fold."""
    rng = np.random.default_rng(8)
    w1, w2 = rng.normal(size=(rows, 7)).round(2), rng.normal(size=(7, columns)).round(2)
    source = f"w1 = {w1.tolist()}\nw2 = {w2.tolist()}\nloss = {mean.format(p=product)}\n"

    def gradients():
        r, first, grads = recorded(source, ["w1", "w2"])
        return [r.tape.nodes[g].value for g in grads.values()]

    got = gradients()
    unsimplified()
    for a, b in zip(got, gradients()):
        same_bits(a, b, f"{mean.format(p=product)}")


# ------------------------------------------------------- identities gone


def identity_work(tape, first: int, outputs) -> list[str]:
    """The recorded nodes (from `first` on, that the gradients are computed
    from) that do nothing at the values they meet, found from the values
    themselves: a product, quotient or power by ones, a negation or a
    transpose of one, a reshape, broadcast or sum to the shape it has, an op
    of constants alone."""
    nodes = tape.nodes
    feeding = np.zeros(len(nodes), dtype=bool)
    for out in outputs:
        feeding |= tape.feeding(out)
    constant = [node.op is None and node.kind == "const" for node in nodes]
    found = []
    for node in nodes[first:]:
        if node.op is None:
            continue
        operands = [nodes[i] for i in node.inputs]
        constant[node.id] = all(constant[i] for i in node.inputs)
        if not feeding[node.id]:
            continue
        ones = [constant[o.id] and np.all(o.value == 1) for o in operands]
        name = node.op.name
        if name in ("mul", "scale") and any(ones) or name in ("div", "pow") and ones[1]:
            found.append(f"{name} by ones")
        elif name in ("neg", "transpose") and operands[0].op is not None and operands[0].op.name == name:
            found.append(f"{name} of {name}")
        elif name in ("reshape", "broadcastTo", "sumTo") and operands[0].shape == node.shape:
            found.append(f"{name} to its own shape")
        elif constant[node.id]:
            found.append(f"{name} of constants")
    return found


IDENTITIES = {
    "x ** 2": ("x = [0.5, -1.5, 2.0]\nloss = (x ** 2).sum\n", ["x"], {"pow by ones", "scale by ones", "sub of constants"}),
    "a sum's ones": ("x = [0.5, -1.5]\ny = [2.0, 3.0]\nloss = (x * y).sum\n", ["x", "y"], {"scale by ones"}),
    "double negation": ("x = [0.5, -1.5]\nloss = (-(-x)).exp.sum\n", ["x"], {"neg of neg"}),
    "transposes": ("A = [[1.0, 2.0], [3.0, 4.0]]\nloss = (A.T.T * A).sum\n", ["A"], {"transpose of transpose"}),
    "a constructor's ones": ("x = [0.5, -1.5]\nloss = (x / ones(2)).sum + (x ** ones(2, 1).sum).sum\n", ["x"],
                             {"div by ones", "pow by ones"}),
    "a literal's arithmetic": ("x = [0.5, -1.5]\nloss = (x ** 3).sum\n", ["x"], {"sub of constants"}),
    "chained Rosenbrock": ((REPO / "examples" / "chained_rosenbrock.ad").read_text(), ["x"],
                           {"pow by ones", "scale by ones", "broadcastTo of constants"}),
}


@pytest.mark.parametrize("name", IDENTITIES)
def test_the_identities_are_no_longer_recorded(name, unsimplified):
    source, wrt, before = IDENTITIES[name]
    r, first, grads = recorded(source, wrt)
    assert identity_work(r.tape, first, grads.values()) == []
    expected = r.tape.backward(r.output, [r.bindings[n] for n in wrt])
    for n in wrt:
        np.testing.assert_array_equal(r.tape.nodes[grads[n]].value, expected[r.bindings[n]])
    unsimplified()
    r0, first0, grads0 = recorded(source, wrt)
    assert before <= set(identity_work(r0.tape, first0, grads0.values()))  # the test sees them when they are there


def test_a_power_of_two_is_recorded_as_a_square():
    """`x ** 3`'s derivative, 3 · x ** (3 − 1), records x ** 2 as `square`
    (emitter._squared): x · x, which numpy's power computes for an exponent
    of 2 (ops._power), in one pass; the rewrites' test holds its bits."""
    source = "x = [0.5, -2.0, 3.0]\nloss = (x ** 3).sum\n"
    r, first, grads = recorded(source, ["x"])
    ops = [n.op.name for n in r.tape.nodes[first:] if n.op is not None and r.tape.feeding(grads["x"])[n.id]]
    assert "square" in ops and "pow" not in ops
    np.testing.assert_array_equal(r.tape.nodes[grads["x"]].value, 3 * np.array([0.5, -2.0, 3.0]) ** 2)


def test_the_chained_rosenbrocks_gradient_negates_nothing_and_raises_to_no_power():
    source = (REPO / "examples" / "chained_rosenbrock.ad").read_text()
    r, first, grads = recorded(source, ["x"])
    ops = [n.op.name for n in r.tape.nodes[first:] if n.op is not None]
    assert "pow" not in ops and "neg" not in ops
    # two products by -2 and ±200 of the program's values, x[:-1] doubled, one product of moving values,
    # the two scatters back into x and the sums meeting there; and nothing else on the tape: the products
    # by 2 that the rewrites made into products by -2 and ±200 are dropped (emitter.unread_dropped), so a
    # kept run's replay of the whole tape computes none of them
    assert sorted(ops) == ["add", "add", "indexScatter", "indexScatter", "scale", "scale", "scale", "scale", "scale"]


@pytest.mark.parametrize("sa, sb, recorded", [
    ((5, 3), (3,), (["matmul", "reshape", "reshape"], ["matmul"])),   # a matrix times a vector
    ((3,), (3, 4), (["matmul"], ["matmul", "reshape", "reshape"])),   # a vector times a matrix
    ((3,), (3,), (["matmul", "reshape", "reshape"], ["matmul", "reshape", "reshape"])),  # two vectors
    ((5, 3), (3, 4), (["matmul", "transpose"], ["matmul", "transpose"])),
])
def test_a_products_recorded_derivative_is_the_product_its_vector_stands_in(sa, sb, recorded):
    """`@@`'s statement with a vector operand: aᵀ @@ g is g @@ a and g @@ bᵀ
    is b @@ g, one op; the other operand's an outer product, a column times
    a row — no reshape to a matrix and back, no transpose of one. Its
    values are the numeric rule's (ops._matmul_vjp, products of matrices)
    bit for bit, in either layout, zeros' signs included (a product of
    matrices adds to +0)."""
    from spiread_cli.ops import _matmul_vjp
    from spiread_cli.tape import Emitter, Tape
    rng = np.random.default_rng(3)

    def value(shape, order):
        x = rng.normal(size=shape) * 10.0 ** rng.integers(-3, 3, size=shape)
        x.flat[::4] = -0.0
        return np.asfortranarray(x) if order == "F" and x.ndim == 2 else x

    for order in ("C", "F"):
        tape = Tape()
        a, b = (tape.leaf(value(s, order), "input", None).id for s in (sa, sb))
        out = tape.record(OPS["matmul"], (a, b), {}, None, "@@", None)
        g = tape.leaf(value(out.shape, order), "input", None).id
        for i in (0, 1):
            first = len(tape.nodes)
            made = OPS["matmul"].derivative(i, g, out.id, a, b, emit=Emitter(tape, None, "∂(@@)/∂x"))
            assert sorted(n.op.name for n in tape.nodes[first:]) == recorded[i], (order, i)
            same_bits(tape.nodes[made].value, _matmul_vjp(i, tape.nodes[g].value, out.value, tape.nodes[a].value,
                                                         tape.nodes[b].value), f"{order} ∂/∂{'ab'[i]}")


def test_a_quotients_derivative_squares_its_divisor_as_one_op_with_one_derivative():
    """∂(y / x)/∂x = −y / x² with x² as `square` (x · x, the same bits), so
    differentiated again — an HVP's sweep, a Hessian's push — it is one
    product by 2x where `mul` of x by itself was two products and their sum."""
    x, y, v = np.array([0.5, -1.5, 2.0]), np.array([1.0, 2.0, -3.0]), np.array([0.25, 1.0, -2.0])
    r, first, grads = recorded(f"x = {x.tolist()}\ny = {y.tolist()}\nloss = (y / x).sum\n", ["x"])
    assert "square" in [n.op.name for n in r.tape.nodes[first:] if n.op is not None]
    np.testing.assert_array_equal(r.tape.nodes[grads["x"]].value, r.tape.backward(r.output, [r.bindings["x"]])[
        r.bindings["x"]])
    products = second.HessianVectorProducts(r.tape, {r.bindings["x"]: grads["x"]}, first)
    hv = products({r.bindings["x"]: v}, [r.bindings["x"]])[r.bindings["x"]]
    np.testing.assert_allclose(hv, 2 * y / x ** 3 * v, rtol=1e-15)
    recorded_ops = [n for n in products.tape.nodes[products.h + 1:] if n.op is not None]
    assert not any(n.op.name == "mul" and n.inputs[0] == n.inputs[1] for n in recorded_ops)

# -------------------------------------------- data is never relied on


def test_only_literals_and_rules_constants_are_fixed(tmp_path):
    np.save(tmp_path / "ones.npy", np.ones(3))
    r = run('x = [1.0, 2.0, 3.0]\nd = x * load("ones.npy")\nn = x * rows(x)\nk = x * (2 * 3)\n'
            'f = x * full(3, rows(x))\no = x * ones(3)\nl = x * full(3, 2.5)\n'
            'loss = (d + n + k + f + o + l + x ** 2).sum\n', base_dir=tmp_path)
    nodes = r.tape.nodes

    def leaf_of(name: str):
        return next(nodes[i] for i in nodes[r.bindings[name]].inputs if nodes[i].op is None and nodes[i].kind == "const")

    assert not any(leaf_of(name).fixed for name in "dnf")  # a file's data, a count of rows, one filled with it
    assert all(leaf_of(name).fixed for name in "kol")  # literals, folded; constructors of literals
    assert not nodes[r.bindings["x"]].fixed  # an input: train, check and --set give it other values
    first = len(nodes)
    grads = r.tape.backward_graph(r.output, [r.bindings["x"]])
    made = [n for n in nodes[first:] if n.op is None]
    assert made and all(n.fixed for n in made)  # the seed, and what rules made of constants
    assert grads


def test_a_gradient_recorded_at_ones_follows_the_data_when_it_changes():
    """The recorded gradient multiplies by an input and by a data leaf that
    hold ones when it is recorded: neither is left out, so after the leaves
    are set again (as train, check's probes, HVP directions and row chunks
    do) and the tape replayed, the gradient is the one at the new values."""
    r = run("x = [1.0, 1.0, 1.0]\nw = [0.5, 2.0, -1.0]\nloss = (x * w * x).sum + (w ** 2).sum\n")
    tape = r.tape
    data = tape.leaf(np.ones(3), "const", None)  # a direction's leaf, or a chunk's rows: not fixed
    total = tape.record(OPS["sum"], (tape.record(OPS["mul"], (r.bindings["w"], data.id), {}, None, "*", None).id,),
                        {}, None, "sum", None)
    output = tape.record(OPS["add"], (r.output, total.id), {}, None, "+", None).id
    wrt = [r.bindings["x"], r.bindings["w"]]
    grads = tape.backward_graph(output, wrt)
    rng = np.random.default_rng(1)
    for _ in range(3):
        tape.nodes[r.bindings["x"]].set_value(rng.normal(size=3))
        data.set_value(rng.normal(size=3))
        tape.replay(tape.nodes)
        expected = tape.backward(output, wrt)
        for i in wrt:
            np.testing.assert_allclose(tape.nodes[grads[i]].value, expected[i], rtol=1e-14, atol=1e-14)


def test_hessians_and_hvps_on_dask_where_a_chunk_of_the_data_is_ones(tmp_path):
    """Row chunks replay a chunk's recording (and its recorded gradient) with
    the next chunk's rows in its data leaves: rows of ones in the first chunk
    must not have let a product by them be left out. The numbers are the
    numpy backend's."""
    pytest.importorskip("distributed")
    import spiread_cli
    X = np.random.default_rng(2).standard_normal((70, 3))
    X[:30] = 1.0
    np.save(tmp_path / "X.npy", X)
    (tmp_path / "p.ad").write_text('X = load("X.npy")\nw = [0.5, -1.0, 0.25]\nb = [2.0, 1.0, -0.5]\n'
                                   "loss = ((X @@ w) ** 2).sum + (X * b).sum + (X * w * X).sum\n")
    v = {"w": np.array([1.0, -2.0, 0.5]), "b": np.array([0.0, 1.0, 3.0])}
    results = []
    for options in ({}, {"backend": "dask", "chunk_rows": 30}):
        with spiread_cli.load(str(tmp_path / "p.ad"), **options) as program:
            results.append((program.hessian(wrt=["w", "b"]).blocks, program.hessian(wrt=["w", "b"], hvp=v).products))
    (dense, products), (dense_on_dask, products_on_dask) = results
    for a in ("w", "b"):
        np.testing.assert_allclose(products_on_dask[a], products[a], rtol=1e-12, atol=1e-12, err_msg=a)
        for b in ("w", "b"):
            np.testing.assert_allclose(dense_on_dask[a][b], dense[a][b], rtol=1e-12, atol=1e-12, err_msg=f"{a} {b}")


@pytest.mark.parametrize("source", [
    "x = [1e200, 2.0]\nloss = (x ** 3).sum\n",                 # the second derivative overflows in pow's rule
    "x = [0.0, 2.0]\nloss = (x ** 0.5).sum\n",                 # 0 ** -0.5 and -0.5 in the derivative's derivative
    "x = [1e300, 1.0]\ny = [1e10, 1.0]\nloss = ((1 - x) * y * x).sum\n",  # a product by a constant, negated
])
def test_second_derivatives_warn_where_they_did(source, unsimplified):
    """Where a non-finite second derivative is born, and what is said about
    it, are what they were with every op of the statements recorded."""
    def warned():
        r = run(source)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = second.hessian(r, ["x"]).blocks["x"]["x"]
        return blocks, [(w.message, w.span) for w in r.diagnostics.warnings]

    got, said = warned()
    unsimplified()
    expected, said_before = warned()
    same_bits(got, expected, source)
    assert said == said_before and said
