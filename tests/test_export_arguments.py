"""Exported code leaves spiread, so it refuses what spiread refuses: every
function of an exported Python module checks each argument (and each HVP
direction) before computing, a shape other than the one it was exported for
or values that are not real numbers being an error that names the argument,
the shape it needs and the shape it got; an exported ONNX model declares
its inputs' shapes, and onnxruntime refuses another. Without the check, a
(3,) given for a (3, 1) broadcasts into a wrong result, and a wrong length
fails deep inside with numpy's broadcasting error."""

from __future__ import annotations

import re
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES
from spiread_cli.export import graphs
from spiread_cli.export_onnx import export_onnx
from spiread_cli.export_python import export_python
from spiread_cli.program import Program
from test_export import EXPORTED_EXAMPLES, load_module

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def mis_shapes(shape: tuple) -> dict[str, tuple]:
    """Each way an argument may come wrongly shaped, by what is wrong: a
    dimension missing, one too many, a matrix transposed, a wrong length."""
    ways = {}
    if shape:
        ways["missing first dimension"], ways["missing last dimension"] = shape[1:], shape[:-1]
    ways["extra dimension after"], ways["extra dimension before"] = shape + (1,), (1,) + shape
    if len(shape) == 2 and shape[0] != shape[1]:
        ways["transposed"] = shape[::-1]
    if len(shape) == 1:
        ways["a row for a vector"] = (1,) + shape  # numpy broadcasts it against a vector silently
    for k, n in enumerate(shape):
        ways[f"length {n + 1} for {n} in dimension {k}"] = shape[:k] + (n + 1,) + shape[k + 1:]
        if n > 1:
            ways[f"length {n - 1} for {n} in dimension {k}"] = shape[:k] + (n - 1,) + shape[k + 1:]
    return {how: bad for how, bad in ways.items() if bad != shape}


def shape_error(function: str, name: str, shape: tuple, got: tuple) -> str:
    return re.escape(f"{function}(): {name} must have shape {shape}, not {got}: the module was exported for that shape")


EVERY_EXAMPLE = [*EXPORTED_EXAMPLES, "rows/model.ad", "bigram/bigram.ad"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory, request):
    """Each example exported once (Python with its HVP, and ONNX), by example."""
    done = {}

    def export(name: str):
        if name not in done:
            if name == "bigram/bigram.ad":
                path = request.getfixturevalue("bigram_slice") / "bigram.ad"
            else:
                path = EXAMPLES / name
            run = Program.open(str(path)).run()
            folder = tmp_path_factory.mktemp(Path(name).stem)
            g = graphs(run, None, hvp=True)
            export_python(g, folder / "exported.py")
            export_onnx(g, folder / "exported.onnx")
            session = ort.InferenceSession(str(folder / "exported.onnx"), providers=["CPUExecutionProvider"])
            done[name] = (run, g, load_module(folder / "exported.py"), session)
        return done[name]
    return export


@pytest.mark.parametrize("name", EVERY_EXAMPLE)
def test_every_argument_of_every_example_is_refused_mis_shaped(name, exported):
    """Each example's module, each function, each argument (and each HVP
    direction), each way of being wrongly shaped: refused, naming them."""
    run, g, module, _ = exported(name)
    own = module.inputs()
    directions = {n: np.ones(g.nodes[i].shape) for n, i in g.wrt.items()}
    assert module.SHAPES == {n: v.shape for n, v in own.items()}
    calls = {"value": lambda **kw: module.value(**kw), "value_and_grad": lambda **kw: module.value_and_grad(**kw),
             "hvp": lambda **kw: module.hvp(directions, **kw)}
    refused = 0
    for argument, value in own.items():
        for how, bad in mis_shapes(value.shape).items():
            for function, call in calls.items():
                with pytest.raises(ValueError, match=shape_error(function, f"`{argument}`", value.shape, bad)):
                    call(**{argument: np.zeros(bad)})
                refused += 1
            with pytest.raises(ValueError, match=shape_error("value", f"`{argument}`", value.shape, bad)):
                module.value(**{argument: torch.zeros(bad, dtype=torch.float64)})
    for wrt, direction in directions.items():
        for how, bad in mis_shapes(direction.shape).items():
            with pytest.raises(ValueError, match=shape_error("hvp", f"`direction[{wrt!r}]`", direction.shape, bad)):
                module.hvp({**directions, wrt: np.zeros(bad)})
    assert refused > 0
    # And the right shapes are taken: the program's own values give spiread's value.
    np.testing.assert_allclose(module.value(**own), run.value, rtol=1e-12)


@pytest.mark.parametrize("name", EVERY_EXAMPLE)
def test_onnxruntime_refuses_a_mis_shaped_input_of_every_example(name, exported):
    """The model's inputs carry the shapes they were exported with, and a
    wrong one never reaches the computation: onnxruntime refuses it naming
    the input. It checks no scalar's shape (onnxruntime#19434), so the model
    reads a scalar through a Reshape to () named for it, which refuses any
    other size; an array of one entry is read as the scalar, the results
    those of the scalar."""
    _, g, _, session = exported(name)
    feeds = {n: np.asarray(g.nodes[i].value, dtype=float) for n, i in g.wrt.items()}
    feeds |= {f"v_{n}": np.ones(g.nodes[i].shape) for n, i in g.wrt.items()}
    assert {i.name: tuple(i.shape) for i in session.get_inputs()} == {n: v.shape for n, v in feeds.items()}
    want = session.run(None, feeds)
    for input_name, value in feeds.items():
        for how, bad in mis_shapes(value.shape).items():
            wrong = {**feeds, input_name: np.full(bad, 0.5)}
            if value.shape == () and np.prod(bad) == 1:
                got = session.run(None, {**wrong, input_name: np.full(bad, value)})
                assert all(a.shape == b.shape and np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want))
            elif value.shape == ():
                with pytest.raises(Exception, match=re.escape(f"Name:'{input_name} must have shape () (a scalar)'")
                                   + r".*Input shape:\{" + ",".join(map(str, bad)) + r"\}"):
                    session.run(None, wrong)
            else:
                with pytest.raises(Exception, match=rf"(invalid dimensions|Invalid rank) for input: {input_name}\b"):
                    session.run(None, wrong)
        with pytest.raises(Exception, match=r"Unexpected input data type"):
            session.run(None, {**feeds, input_name: value.astype(np.float32)})


def test_a_vector_given_for_a_column_is_refused_not_broadcast(tmp_path):
    """The case that was silently wrong: y (3,) for a (3, 1) column, whose
    difference with the (3, 1) product broadcast to 3×3."""
    program = tmp_path / "p.ad"
    program.write_text("A = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]\nw = [[0.5], [-1.0]]\n"
                       "y = [[1.0], [2.0], [3.0]]\nloss = ((A @@ w - y) ** 2).sum\n")
    export_python(graphs(Program.open(str(program)).run(), ["w"], hvp=False), tmp_path / "p.py")
    module = load_module(tmp_path / "p.py")
    with pytest.raises(ValueError, match=shape_error("value_and_grad", "`y`", (3, 1), (3,))):
        module.value_and_grad(y=np.array([1.0, 2.0, 3.0]))


def test_values_that_are_not_real_numbers_are_refused_as_spiread_refuses_them(tmp_path):
    """Real numbers (bool, integer, float; Python numbers numpy keeps as
    objects) are taken as float64, and infinities and nan as they are, as
    spiread's Python API takes them; complex numbers, text, objects and rows
    of different lengths are refused, naming the argument, as spiread does."""
    program = tmp_path / "p.ad"
    program.write_text("w = [1.0, 2.0]\nc = 3.0\nloss = (w * c).sum\n")
    export_python(graphs(Program.open(str(program)).run(), ["w"], hvp=True), tmp_path / "p.py")
    module = load_module(tmp_path / "p.py")
    spiread = Program.open(str(program))
    for taken in ([True, False], np.array([1, 2], dtype=np.uint8), [2**70, 1], [np.inf, 1.0], [np.nan, 1.0],
                  np.array([Fraction(1, 3), Decimal("2.5")], dtype=object), torch.tensor([1, 2], dtype=torch.int32)):
        with np.errstate(invalid="ignore"):
            want = spiread.run({"w": np.asarray(taken, dtype=float)}).value
            got = module.value(w=taken)
        np.testing.assert_array_equal(float(got), want)
    for refused, what in ((np.array([1 + 1j, 2]), "complex numbers"), (["1", "2"], "text"),
                          (np.array([object(), 1.0]), "Python objects"),
                          (torch.tensor([1 + 1j, 2]), "complex numbers"), (1j, "complex numbers"),
                          ("3", "text"), (object(), "Python objects")):
        with pytest.raises(TypeError, match=re.escape(f"value(): `w` must be real numbers, not {what}")):
            module.value(w=refused)
        with pytest.raises(Exception, match="real numbers"):  # spiread refuses them too
            spiread.eval(w=refused.numpy() if isinstance(refused, torch.Tensor) else refused, of="loss")
        with pytest.raises(TypeError, match=re.escape(f"hvp(): `direction['w']` must be real numbers, not {what}")):
            module.hvp(refused)
    # a Decimal is a number; numpy's float64 scalar is a Python number beside PyTorch's tensors
    assert float(module.value(c=Decimal("2"))) == spiread.run({"c": np.array(2.0)}).value
    assert float(module.value(w=torch.tensor([1.0, 2.0], dtype=torch.float64), c=np.float64(2.0))) == 6.0
    with pytest.raises(ValueError, match=re.escape("value(): `w`: its rows differ in length")):
        module.value(w=[[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match=re.escape("value(): `w`: a number is beyond the range of a float64")):
        module.value(w=[10**400, 1])


def test_an_argument_named_after_a_keyword_is_checked_and_given_by_its_keyword(tmp_path):
    """`xp` is the module's own name, so the argument is `xp_`: inputs() gives
    it by that name (value(**inputs()) runs) and a refusal names it so."""
    program = tmp_path / "p.ad"
    program.write_text("xp = [1.0, 2.0]\nloss = (xp * xp).sum\n")
    export_python(graphs(Program.open(str(program)).run(), ["xp"], hvp=False), tmp_path / "p.py")
    module = load_module(tmp_path / "p.py")
    assert list(module.inputs()) == ["xp_"]
    assert float(module.value(**module.inputs())) == 5.0
    with pytest.raises(ValueError, match=shape_error("value", "`xp_`", (2,), (3,))):
        module.value(xp_=[1.0, 2.0, 3.0])


shapes = st.lists(st.integers(0, 4), max_size=3).map(tuple)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["X", "y", "w"]), st.one_of(st.none(), shapes)), st.integers(0, 2**32 - 1))
def test_any_shapes_are_taken_exactly_when_they_are_the_exported_ones(exported, drawn, seed):
    """Random shapes (or the exported ones) for least_squares' arguments,
    some left out: the call computes spiread's value at those values when
    every shape is the exported one, else it is refused naming the first
    argument whose shape differs."""
    run, _, module, _ = exported("least_squares.ad")
    rng = np.random.default_rng(seed)
    drawn = {name: module.SHAPES[name] if shape is None else shape for name, shape in drawn.items()}
    given_values = {name: rng.normal(size=shape) for name, shape in drawn.items()}
    wrong = [n for n in module.SHAPES if n in drawn and drawn[n] != module.SHAPES[n]]
    if wrong:
        with pytest.raises(ValueError, match=shape_error("value", f"`{wrong[0]}`", module.SHAPES[wrong[0]],
                                                         drawn[wrong[0]])):
            module.value(**given_values)
    else:
        want = Program.open(str(EXAMPLES / "least_squares.ad")).run(given_values).value
        np.testing.assert_allclose(module.value(**given_values), want, rtol=1e-12)
