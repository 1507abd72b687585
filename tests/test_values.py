"""Gradients as values, `.value`, `println`/`.printMat`, `def` and `.map`,
and Jets (LANGUAGE.md §9), through the library API, against hand
calculations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import gradients, run, value
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.diagnostics import SpireadError
from spiread_cli.formatting import format_array
from spiread_cli.values import jet_text, scala_double


def error(text: str) -> SpireadError:
    with pytest.raises(SpireadError) as caught:
        run(text)
    return caught.value


# ------------------------------------------------------ gradients as values

def test_a_gradient_is_a_value_with_its_arguments_shape():
    r = run("x = [1.0, 2.0, 3.0]\nloss = (x * x).sum\ng = loss.backward(x)\ny = g.x * 10")
    assert r.node("g.x").value.tolist() == [2.0, 4.0, 6.0]           # d/dx Σx² = 2x
    assert r.node("y").value.tolist() == [20.0, 40.0, 60.0]


def test_keys_follow_the_named_tuple_and_the_call_still_names_output_and_wrt():
    text = ("a = [[1.0, 2.0], [3.0, 4.0]]\nb = [[0.5, -1.0], [2.0, 0.25]]\n"
            "loss = (a * b).sum + (b * b).sum\nval g = loss.backward((p = a, q = b))\nstep = a - g.p * 0.1\n")
    r = run(text)
    a, b = np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[0.5, -1.0], [2.0, 0.25]])
    assert np.array_equal(r.node("g.p").value, b)                   # ∂/∂a Σab = b
    assert np.array_equal(r.node("g.q").value, a + 2 * b)           # ∂/∂b (Σab + Σb²) = a + 2b
    assert np.allclose(r.node("step").value, a - 0.1 * b)
    assert r.output_name == "loss" and r.backward_wrt == ["a", "b"]  # not the last statement, `step`
    result = run_gradients(r)
    assert list(result.gradients) == ["a", "b"] and np.array_equal(result.gradients["a"], b)


def test_gradient_of_a_chain_against_the_hand_derivative():
    # loss = Σ log(1 + exp(w·x)); ∂/∂w = Σ_i σ(w x_i) x_i
    x, w = np.array([0.5, -1.0, 2.0]), 0.3
    r = run(f"x = [0.5, -1.0, 2.0]\nw = {w}\nloss = (w * x).exp.log1p.sum\ng = loss.backward(w)")
    expected = sum(xi / (1 + math.exp(-w * xi)) for xi in x)
    assert float(r.node("g.w").value) == pytest.approx(expected, rel=1e-14)


def test_a_gradient_of_a_gradient_is_the_second_derivative():
    r = run("w = 3.0\nloss = w * w * w\ng = loss.backward(w)\nslope = g.w\nslope.backward(w)")
    assert float(r.node("g.w").value) == 27.0                         # 3w²
    assert r.output_name == "slope"                                   # the last `.backward` names the output
    assert float(run_gradients(r).gradients["w"]) == 18.0             # 6w


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_hessian_vector_product_from_a_gradient_value(mode):
    # f = Σ w³ + w0·w1: H = diag(6w) + [[0, 1], [1, 0]], so H·v at w = (1, 2), v = (0.5, -1) is (2, -11.5)
    text = ("w = [1.0, 2.0]\nv = [0.5, -1.0]\nloss = (w * w * w).sum + w[0] * w[1]\n"
            "g = loss.backward((w = w))\nh = (g.w * v).sum\nh.backward(w)")
    r = run(text)
    assert r.node("g.w").value.tolist() == [3.0 + 2.0, 12.0 + 1.0]    # 3w² + (w1, w0)
    assert run_gradients(r, mode=mode).gradients["w"].tolist() == [2.0, -11.5]


def test_value_inside_a_gradient_stops_the_second_derivative():
    r = run("w = 2.0\nloss = w * w * w.value\ng = loss.backward(w)\nh = g.w\nh.backward(w)")
    assert float(r.node("g.w").value) == 8.0                          # 2w·stop(w)
    assert float(run_gradients(r).gradients["w"]) == 4.0              # 2·stop(w)


def test_gradient_of_a_non_scalar_and_unknown_keys_are_located():
    err = error("x = [1.0, 2.0]\ny = x * x\ng = y.backward(x)")
    assert err.diagnostic.message == "`y` is a vector of 2, but a gradient is taken of a scalar"
    assert (err.diagnostic.span.line, err.diagnostic.span.column) == (3, 5)
    err = error("w = [1.0]\nb = 2.0\nloss = (w * b).sum\ng = loss.backward(w, b)\nz = g.ww")
    assert err.diagnostic.message == "`g` holds no gradient `ww`; it holds `w`, `b`"
    assert err.diagnostic.notes == ("did you mean `w`?",)
    assert (err.diagnostic.span.line, err.diagnostic.span.column) == (5, 7)


# ------------------------------------------------------------- x.value

@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_value_stops_the_gradient(mode):
    # loss = Σ x · stop(x): the derivative is stop(x) = x, not 2x
    result = gradients("x = [1.0, -2.0, 3.0]\nloss = (x * x.value).sum", ["x"], mode=mode)
    assert result.gradients["x"].tolist() == [1.0, -2.0, 3.0]
    assert float(result.value) == 14.0


def test_value_of_everything_has_zero_gradient():
    result = gradients("x = [1.0, 2.0]\nloss = (x.exp.value * 2).sum", ["x"])
    assert result.gradients["x"].tolist() == [0.0, 0.0]


# ------------------------------------------------------ println, printMat

def test_println_prints_in_program_order_as_eval_shows_values():
    r = run('x = [[1.0, 2.5], [3.0, 4.0]]\nprintln("start")\nprintln(x.printMat)\nprintln(x.sum)\ny = x * 2\nprintln(y)')
    assert r.printed == ["start", format_array(np.array([[1.0, 2.5], [3.0, 4.0]])), "10.5",
                         format_array(np.array([[2.0, 5.0], [6.0, 8.0]]))]
    assert r.output_name == "y"  # println is never the output


def test_println_of_nothing_is_located():
    err = error("x = 1\nprintln()")
    assert err.diagnostic.message == "`println` takes 1 argument, got 0"
    err = error("x = 1\nprintln(println(x))")
    assert err.diagnostic.message == "`println(x)` gives no value for it to use"
    assert (err.diagnostic.span.line, err.diagnostic.span.column) == (2, 9)


# ------------------------------------------------------------ def, map

def test_def_with_annotations_and_a_block_is_inlined():
    text = ("def f[T: Field](x: T, y): T = {\n  val s = x * y\n  s + x\n}\n"
            "w = 2.0\nloss = f(w, 3.0)\n")
    r = run(text)
    assert float(r.value) == 8.0                                      # 2·3 + 2
    assert float(run_gradients(r, ["w"]).gradients["w"]) == 4.0       # y + 1
    # the ops point at the body's source, not at the call
    mul = next(n for n in r.tape.nodes if n.label == "*")
    assert (mul.span.line, r.source.snippet(mul.span)) == (2, "*")


def test_map_applies_a_function_entry_by_entry():
    assert value("def sq(x: Double) = x * x\nList(1.0, 2.0, 3.0).map(sq)").tolist() == [1.0, 4.0, 9.0]
    assert value("[[1.0, 2.0], [3.0, 4.0]].map(x => x * 2 + 1)").tolist() == [[3.0, 5.0], [7.0, 9.0]]
    assert value("Array(0.0, 1.0).map(x => x.exp)").tolist() == [1.0, math.e]


def test_gradient_through_map_and_a_lambda_that_sees_its_block():
    r = run("def sq(x: Double) = x * x\nv = [1.0, -2.0, 3.0]\nloss = v.map(sq).sum")
    assert run_gradients(r, ["v"]).gradients["v"].tolist() == [2.0, -4.0, 6.0]
    r = run("def scaled(v, k) = { val m = k * 2\n v.map(x => x * m) }\nv = [1.0, 2.0]\nloss = scaled(v, 1.5).sum")
    assert float(r.value) == 9.0
    assert run_gradients(r, ["v"]).gradients["v"].tolist() == [3.0, 3.0]


# f written over one number, and the same f on numpy arrays: applied to all
# of v at once when f acts entry by entry (Op.elementwise), else per entry.
ENTRYWISE = {
    "z => z * z": lambda z, k: z * z,
    "z => (z * 2.0 + k).tanh": lambda z, k: np.tanh(z * 2.0 + k),
    "sq": lambda z, k: z * z,
    "hinge": lambda z, k: np.maximum(z - 3 * k, 0) ** 2 + np.exp(z) / (3 * k),
    "z => z * w.sum": lambda z, k: z * 1.5,           # a total of another value: a number for every entry
}
PER_ENTRY = {
    "z => [z, k].sum": lambda z, k: z + k,            # a vector made of each entry: an op over its entries
    "z => z * (v * 0.0 + 1.0).sum": lambda z, k: z * 5,  # a total of v itself, taken inside f
}


def map_program(f: str, size: int) -> str:
    values = ", ".join(str(0.1 * i - 0.2) for i in range(size))
    return (f"k = 0.5\nw = [0.5, 1.0]\nv = [{values}]\ndef sq(x: Double) = x * x\n"
            f"def hinge(z) = {{ val m = k * 3\n (z - m).clampMin(0.0) ** 2 + z.exp / m }}\nloss = v.map({f}).sum")


@pytest.mark.parametrize("f", [*ENTRYWISE, *PER_ENTRY])
def test_map_gives_f_of_each_entry_and_its_gradient(f):
    """Whether f runs once on the whole vector or once per entry, the values
    are f's of each entry and the gradient is f' (central differences)."""
    reference = {**ENTRYWISE, **PER_ENTRY}[f]
    r = run(map_program(f, 5))
    v = r.node("v").value
    np.testing.assert_allclose(float(r.value), reference(v, 0.5).sum(), rtol=1e-12)
    h = 1e-6
    slope = (reference(v + h, 0.5) - reference(v - h, 0.5)) / (2 * h)
    np.testing.assert_allclose(run_gradients(r, ["v"]).gradients["v"], slope, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("f", ENTRYWISE)
def test_a_map_of_an_entrywise_function_records_the_same_tape_at_any_size(f):
    """f recorded once on the whole vector: the tape (and so the time and
    memory of a gradient, and the row chunks on Dask) does not grow with
    the entries; per entry, each entry's gradient is as large as v."""
    sizes = {n: len(run(map_program(f, n)).tape.nodes) for n in (3, 40)}
    assert sizes[3] == sizes[40]


@pytest.mark.parametrize("f", PER_ENTRY)
def test_a_map_of_a_function_that_is_not_entrywise_runs_per_entry(f):
    small, large = (len(run(map_program(f, n)).tape.nodes) for n in (3, 40))
    assert large > small + 37  # at least an op per entry more


def test_a_map_whose_function_gives_a_vector_per_entry_is_refused_as_before():
    err = error("v = [1.0, 2.0]\nw = [3.0, 4.0]\nu = v.map(x => x * w)")
    assert err.diagnostic.message == ("`.map`: `x => x * w` must give a number for each entry, "
                                      "but it gives a vector of 2")


def test_a_trial_of_f_on_the_whole_vector_that_is_not_kept_leaves_nothing():
    def recorded(text):
        return [(n.op and n.op.name, n.inputs) for n in run("v = [1.0, 2.0]\n" + text).tape.nodes]
    assert recorded("u = v.map(x => [x, 1.0].sum)") == recorded("u = [[v[0], 1.0].sum, [v[1], 1.0].sum]")


def test_unbound_expression_is_the_output_unless_something_names_one():
    assert run("x = 2\nx * 3").output_name == "x * 3"
    assert run("x = 2\nloss = x * x\nloss.backward(x)\nx * 3").output_name == "loss"
    assert run("x = 2\nx * 3\ny = x + 1", of="x").output_name == "x"


def test_def_errors():
    assert error("def f(x) = x\nf(1, 2)").diagnostic.message == "`f` takes 1 argument, got 2"
    assert "cannot be recursive" in error("def f(x) = f(x)\nf(1)").diagnostic.message
    err = error("def f(x) = x\nf = 2")
    assert err.diagnostic.message == "`f` is already bound, at 1:5"
    assert error("v = [1.0]\nv.map(3)").diagnostic.message == "`.map` takes a function, but `3` is not one"


# --------------------------------------------------------------- Jets

JET = "given jd: JetDim = JetDim(1)\nval y = Jet(10.0) + Jet.h[Double](0)\n"


def test_jet_squares_as_spire_shows_it():
    r = run(JET + "y * y")
    assert jet_text(r.value, r.jets[r.output]) == "(100.0 + [20.0]h)"
    assert jet_text(r.node("y").value, r.jets[r.bindings["y"]]) == "(10.0 + [1.0]h)"


def test_jets_carry_each_ops_forward_derivative():
    # f(x, y) = x·y + sin(x) at (2, 3): ∂f/∂x = y + cos x, ∂f/∂y = x
    r = run("given JetDim = JetDim(2)\nval x = Jet(2.0) + Jet.h[Double](0)\nval y = Jet(3.0) + Jet.h[Double](1)\n"
            "x * y + x.sin")
    assert float(r.value) == 6.0 + math.sin(2.0)
    assert r.jets[r.output].tolist() == [3.0 + math.cos(2.0), 2.0]
    r = run(JET + "(y * 0.1).exp / y")                                # d/dy e^{y/10}/y = e^{y/10}(1/10y − 1/y²)
    assert r.jets[r.output][0] == pytest.approx(math.exp(1.0) * (0.01 - 0.01), abs=1e-15)


def test_println_of_a_jet_and_other_givens_are_ignored():
    r = run("given graph: TejVGraph[Double] = TejVGraph[Double]()\n" + JET + "println(y * y)\ny")
    assert r.printed == ["(100.0 + [20.0]h)"]


def test_scala_doubles():
    assert [scala_double(x) for x in (100.0, 20.0, 1e-5, -1.5e10, 0.001, 1234567.0, 12345678.0, math.nan)] == \
        ["100.0", "20.0", "1.0E-5", "-1.5E10", "0.001", "1234567.0", "1.2345678E7", "NaN"]


def test_jet_errors():
    assert "given jd: JetDim = JetDim(1)" in error("y = Jet(1.0)").diagnostic.notes[0]
    err = error("given jd: JetDim = JetDim(1)\ngiven k: JetDim = JetDim(2)")
    assert err.diagnostic.message == "a JetDim is already given, at 1:1"
    assert error(JET + "z = y * [1.0, 2.0]").diagnostic.message.endswith("a Jet is a number")


def test_type_annotations_on_val_are_ignored():
    assert value("val x: Double = 1.5\nval m: Matrix[Double] = [[1.0]]\nx * m.sum") == 1.5


def test_scala_words_as_names():
    assert value("import = 2\nimport a.b\nimport\tc\ny = import * 3") == 6.0   # a binding, two imports, a use
    assert value("val given = 2\nval def = 3\nx = given * def") == 6.0
    assert "write `val given = …`" in error("given = 2").diagnostic.notes[0]
