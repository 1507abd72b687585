"""`spiread export`: the exported Python (on numpy and on PyTorch tensors)
and the exported ONNX model (in onnxruntime) give spiread's value, gradients
and Hessian-vector products, for every op of the table, every example and
random programs."""

from __future__ import annotations

import importlib.util
import io
import itertools
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from conftest import EXAMPLES, CONSTANT_EXAMPLES, spiread
from programs import programs
from spiread_cli import second
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.diagnostics import Diagnostics, Source
from spiread_cli.export import Graphs, graphs
from spiread_cli.export_onnx import export_onnx, onnx_model
from spiread_cli.export_python import export_python
from spiread_cli.ops import OPS
from spiread_cli.run import Run
from spiread_cli.tape import Tape
from test_ops import CASES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")
pyflakes_api = pytest.importorskip("pyflakes.api")
from pyflakes.reporter import Reporter  # noqa: E402

_loaded = itertools.count()


def load_module(path: Path):
    """Import an exported module from its file, as a caller would."""
    spec = importlib.util.spec_from_file_location(f"exported_{next(_loaded)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_close(got, want, what: str) -> None:
    """rtol 1e-12. An entry near zero is held to an absolute error instead,
    relative to the largest entry's magnitude (or 1): 1e-13 on numpy, whose
    functions spiread calls too; 1e-10 on PyTorch and onnxruntime, whose tanh,
    sin or exp may be a few ulp off numpy's (onnxruntime's tanh: 3 ulp), which
    a derivative of a saturated tanh (1 − out², out within 1e-7 of 1) turns
    into a larger error relative to its small result."""
    other_library = isinstance(got, torch.Tensor) or what.startswith("onnx")
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want, dtype=float)
    assert got.dtype == np.float64, f"{what}: {got.dtype}"
    assert got.shape == want.shape, f"{what}: shape {got.shape}, spiread's {want.shape}"
    scale = max(1.0, float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=(1e-10 if other_library else 1e-13) * scale, err_msg=what)


def flakes(text: str) -> str:
    out = io.StringIO()
    pyflakes_api.check(text, "exported.py", Reporter(out, out))
    return out.getvalue()


def check_exported(g: Graphs, folder: Path, value, grads: dict, hvps: dict | None = None,
                   directions: dict | None = None) -> None:
    """Export `g` both ways and hold each to spiread's results: the module on
    numpy and on PyTorch tensors, the model in onnxruntime."""
    module_path = folder / "exported.py"
    export_python(g, module_path)
    text = module_path.read_text()
    assert "spiread" not in "".join(line for line in text.splitlines() if line.startswith(("import", "from")))
    assert flakes(text) == ""
    module = load_module(module_path)
    own = module.inputs()
    for namespace, convert in (("numpy", np.asarray), ("torch", torch.from_numpy)):
        given = {name: convert(np.array(v)) for name, v in own.items()}
        assert_close(module.value(**given), value, f"{namespace}: value")
        got_value, got_grads = module.value_and_grad(**given)
        assert_close(got_value, value, f"{namespace}: value_and_grad's value")
        assert set(got_grads) == set(grads)
        for name, want in grads.items():
            assert_close(got_grads[name], want, f"{namespace}: gradient by {name}")
        if hvps is not None:
            given_directions = {n: convert(np.array(v)) for n, v in directions.items()}
            got = module.hvp(given_directions, **given)
            for name, want in hvps.items():
                assert_close(got[name], want, f"{namespace}: H·v for {name}")
            if namespace == "numpy":
                owned_results(module, [*got.values()], [*given.values(), *given_directions.values()])
        if namespace == "numpy":
            owned_results(module, [got_value, *got_grads.values()], list(given.values()))
            owned_results(module, list(module.value_and_grad()[1].values()), [])

    model_path = folder / "exported.onnx"
    export_onnx(g, model_path)
    model = onnx.load(str(model_path))
    onnx.checker.check_model(model, full_check=True)
    read = {name for node in model.graph.node for name in node.input}
    assert [t.name for t in model.graph.initializer if t.name not in read] == [], "an initializer no node reads"
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    feeds = {name: np.asarray(g.nodes[i].value, dtype=float) for name, i in g.wrt.items()}
    if hvps is not None:
        feeds |= {f"v_{name}": np.asarray(v, dtype=float) for name, v in directions.items()}
    assert {i.name for i in session.get_inputs()} == set(feeds)
    results = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    assert_close(results["value"], value, "onnx: value")
    for name, want in grads.items():
        assert_close(results[f"grad_{name}"], want, f"onnx: gradient by {name}")
    for name, want in (hvps or {}).items():
        assert_close(results[f"hvp_{name}"], want, f"onnx: H·v for {name}")


def owned_results(module, results: list, arguments: list) -> None:
    """What the module returned is the caller's own: no result shares memory
    with an argument or direction passed, the module's INPUTS (an argument
    left out) or CONSTANTS, or another result (a view of one is a copy)."""
    held = [*arguments, *module.INPUTS.values(), *module.CONSTANTS.values()]
    for k, result in enumerate(results):
        assert not any(np.shares_memory(result, other) for other in [*held, *results[k + 1:]]), \
            f"result {k} shares memory with an argument, a constant or another result"


# --------------------------------------------------------------- every op


def test_every_op_has_an_export_form():
    """Python for every op, and ONNX too (an op without one would be a
    located error when exported to ONNX)."""
    missing = [name for name, op in OPS.items() if op.export is None or op.export.python is None]
    assert missing == [], "give these ops an `export=Export(...)` entry in spiread_cli/ops.py"
    assert [name for name, op in OPS.items() if op.export.onnx is None] == []


def op_graphs(case) -> Graphs:
    """One op on inputs x0, x1, …; the value is ⟨op(xs), r⟩ for a fixed r, its
    gradient and HVP recorded from the op's statement (and the statements of
    the ops it is made of), as `export.graphs` records a program's."""
    rng = np.random.default_rng(11)
    op = OPS[case.op]
    tape = Tape()
    xs = [tape.leaf(np.asarray(x, dtype=float), "input", None, f"x{k}").id for k, x in enumerate(case.xs)]
    out = tape.record(op, tuple(xs), case.params, None, case.op, None)
    # r is an argument too: ∂loss/∂r is the op's own line, a result (a view of an argument is copied)
    r = tape.leaf(rng.normal(size=out.shape), "input", None, "r")
    weighted = tape.record(OPS["mul"], (out.id, r.id), {}, None, "*", None)
    loss = tape.record(OPS["sum"], (weighted.id,), {}, None, "sum", None)
    names = {**{f"x{k}": x for k, x in enumerate(xs)}, "r": r.id}
    grad_ids = tape.backward_graph(loss.id, list(names.values()))
    leaves, h = second.record_inner_product(tape, grad_ids, {x: f"v_{name}" for name, x in names.items()})
    hvp_ids = tape.backward_graph(h, list(names.values()))
    run = Run(Source("case.ad", ""), tape, dict(names), {}, loss.id, "loss", None, Diagnostics())
    return Graphs(run, tape.nodes, loss.id, names, {n: grad_ids[x] for n, x in names.items()},
                  {n: leaves[x] for n, x in names.items()}, {n: hvp_ids[x] for n, x in names.items()})


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_op_exports_its_value_gradient_and_hvp(case, tmp_path):
    """Each op's export form, and those of the ops its derivative statement
    records (first and second order), against the tape's own values."""
    g = op_graphs(case)
    nodes = g.nodes
    directions = {n: np.random.default_rng(5).normal(size=nodes[i].shape) for n, i in g.wrt.items()}
    for n, i in g.directions.items():
        nodes[i].set_value(directions[n])
    Tape(nodes).replay([n for n in nodes if n.id > min(g.directions.values())])  # the HVP at these directions
    check_exported(g, tmp_path, nodes[g.output].value, {n: nodes[i].value for n, i in g.grads.items()},
                   {n: nodes[i].value for n, i in g.hvps.items()}, directions)


# --------------------------------------------------------------- programs


def check_program(run: Run, folder: Path, wrt: list[str] | None = None) -> None:
    """A program's export against spiread's gradients and H·v (unfused: the
    export is fused, so this checks the rewrites too)."""
    grads = run_gradients(run, wrt).gradients
    rng = np.random.default_rng(2)
    directions = {name: rng.normal(size=np.shape(g)) for name, g in grads.items()}
    hvps = second.hvp(run, directions, list(grads)).products
    value = run.value
    check_exported(graphs(run, list(grads), hvp=True), folder, value, grads, hvps, directions)


EXPORTED_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.ad") if p.name not in CONSTANT_EXAMPLES)


@pytest.mark.parametrize("name", EXPORTED_EXAMPLES)
def test_examples_export(name, tmp_path):
    check_program(Program.open(str(EXAMPLES / name)).run(), tmp_path)


def test_the_rows_example_exports(tmp_path):
    check_program(Program.open(str(EXAMPLES / "rows" / "model.ad")).run(), tmp_path)


def test_the_bigram_exports_its_fused_step(bigram_slice, tmp_path):
    """The exported bigram is the fused one: one mean log-likelihood op, no
    one-hot product, and the same numbers."""
    run = Program.open(str(bigram_slice / "bigram.ad")).run()
    check_program(run, tmp_path)
    functions = (tmp_path / "exported.py").read_text().split("\ndef _", 1)[0]  # the helpers follow them
    assert "_mean_log_softmax_pick(W, " in functions and " @ " not in functions


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_export(program):
    run = Program.parse(Source("gen.ad", program.source)).run()
    wrt = [n for n in run.default_wrt() if run.tape.nodes[run.bindings[n]].kind == "input"]
    if not wrt:
        return
    with tempfile.TemporaryDirectory() as folder:
        check_program(run, Path(folder), wrt)


@pytest.mark.parametrize("source", [
    # found by the test above: onnxruntime's EliminateIdentity broke the model of the transposed vector
    "w0 = [[0.19]]\nh0 = ((w0.square + 0.5) + 1.0).acosh\nw1 = (-0.2)\nw2 = 0.96\n"
    "loss = [0.5, w2].T.normaliseRowsL1[0]\n",
    "w = [0.3, -0.7]\nloss = (w.T * w.value.T).sum + w.value.T.sum\n",
    "w = [1.0, 2.0]\nloss = (w * 1).sum\n",  # the 1 was an initializer no node read (onnxruntime warned)
])
def test_an_op_that_changes_nothing_writes_no_onnx_node(source, tmp_path):
    """Only the graph's outputs are named by Identity nodes: onnxruntime's
    optimizer, removing an Identity inside the graph, left nodes reading its
    removed output. Nor is a constant only such a node read written
    (check_program: every initializer is read)."""
    import onnx
    run = Program.parse(Source("gen.ad", source)).run()
    wrt = [n for n in run.default_wrt() if run.tape.nodes[run.bindings[n]].kind == "input"]
    check_program(run, tmp_path, wrt)
    model = onnx.load(tmp_path / "exported.onnx")
    outputs = {o.name for o in model.graph.output}
    assert {out for node in model.graph.node if node.op_type == "Identity" for out in node.output} == outputs


@pytest.mark.parametrize("source", [
    "w = [0.5, -0.3]\nv_w = [1.0, 2.0]\nloss = (w * w * v_w).sum\n",  # was the direction's default: wrong numbers
    "value = [1.0, 2.0]\nw = [0.5, -0.3]\nloss = (w * value).sum\n",  # an output's name
    "w = [0.5, -0.3]\nhvp_w = [1.0, 2.0]\nloss = (w * w * hvp_w).sum\n",
    "w = [0.5, -0.3]\nmul_1 = [1.0, 3.0]\nc_1 = 2.0\nloss = (w * w * mul_1).sum * c_1\n",  # the exporter's names
])
def test_a_program_name_never_takes_a_name_of_the_onnx_model(source, tmp_path):
    check_program(Program.parse(Source("gen.ad", source)).run(), tmp_path, ["w"])


@pytest.mark.parametrize("source, wrt", [("w = [0.5, -0.3]\nv_w = [1.0, 2.0]\nloss = (w * v_w).sum\n", "w,v_w"),
                                         ("value = [0.5, -0.3]\nloss = value.sum\n", "value")])
def test_two_names_the_onnx_model_would_give_alike_are_refused(source, wrt, tmp_path):
    (tmp_path / "p.ad").write_text(source)
    done = spiread("export", str(tmp_path / "p.ad"), "--wrt", wrt, "--hvp", "--to", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert done.returncode == 1 and "cannot name two of its inputs and outputs" in done.stderr
    assert "p.ad:" in done.stderr and not (tmp_path / "m.onnx").exists()


# ------------------------------------------------------------ the command


def test_the_command_writes_a_module_and_a_model(tmp_path):
    module = tmp_path / "model.py"
    done = spiread("export", str(EXAMPLES / "least_squares.ad"), "--to", "python", "-o", str(module), "--hvp")
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {module}\n"
    exported = load_module(module)
    run = Program.open(str(EXAMPLES / "least_squares.ad")).run()
    grads = run_gradients(run).gradients
    value, got = exported.value_and_grad()
    assert_close(value, run.value, "value")
    for name, want in grads.items():
        assert_close(got[name], want, name)
    model = tmp_path / "model.onnx"
    done = spiread("export", str(EXAMPLES / "least_squares.ad"), "--to", "onnx", "-o", str(model), "--wrt", "w")
    assert done.returncode == 0, done.stderr
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["w"]
    assert [o.name for o in session.get_outputs()] == ["value", "grad_w"]


@pytest.mark.parametrize("to, suffix, options", [("python", ".py", {"hvp": True}), ("onnx", ".onnx", {"wrt": "w"}),
                                                  ("python", ".py", {"w": [0.5, -2.0], "of": "loss"})])
def test_program_export_writes_what_the_command_writes(to, suffix, options, tmp_path):
    """`Program.export` (the Python API) writes the files `spiread export`
    writes for the same options, byte for byte, and returns their paths."""
    import spiread_cli
    argv = ["--hvp"] if options.get("hvp") else []
    argv += ["--wrt", options["wrt"]] if "wrt" in options else []
    argv += ["--set", "w=[0.5,-2]", "--of", "loss"] if "w" in options else []
    done = spiread("export", str(EXAMPLES / "least_squares.ad"), "--to", to, "-o", str(tmp_path / f"cli{suffix}"),
                   *argv)
    assert done.returncode == 0, done.stderr
    written = spiread_cli.load(EXAMPLES / "least_squares.ad").export(to=to, out=tmp_path / f"api{suffix}", **options)
    assert written == [tmp_path / f"api{suffix}"]
    assert written[0].read_bytes() == (tmp_path / f"cli{suffix}").read_bytes()


def test_program_export_refuses_a_path_of_another_format_and_an_unknown_target(tmp_path):
    import spiread_cli
    prog = spiread_cli.load(EXAMPLES / "least_squares.ad")
    with pytest.raises(spiread_cli.SpireadError, match=r'`out=".*model.onnx"`: `to="python"` writes .py, not .onnx'):
        prog.export(to="python", out=tmp_path / "model.onnx")
    with pytest.raises(spiread_cli.SpireadError, match=r'`to="torch"`: the target is "python" or "onnx"'):
        prog.export(to="torch", out=tmp_path / "model.py")
    with pytest.raises(TypeError, match=r"out=3: the path to write is a str or a pathlib.Path, not int"):
        prog.export(to="python", out=3)
    assert list(tmp_path.iterdir()) == []


def test_program_export_refuses_to_write_over_a_file_the_program_loads(tmp_path):
    """As `spiread export` does (test_cli_edges): the module's companion
    archive would replace the data `load` reads."""
    import spiread_cli
    np.savez(tmp_path / "data.npz", W=np.eye(2))
    (tmp_path / "p.ad").write_text('W = load("data.npz")\nx = [1.0, 2.0]\nloss = (W @@ x).softplus.sum\n')
    before = (tmp_path / "data.npz").read_bytes()
    with pytest.raises(spiread_cli.SpireadError, match=r"`out=\".*data.py\"`'s companion archive `.*data.npz` would "
                                                       r"overwrite a file the program loads"):
        spiread_cli.load(tmp_path / "p.ad").export(to="python", out=tmp_path / "data.py")
    assert (tmp_path / "data.npz").read_bytes() == before and not (tmp_path / "data.py").exists()


@pytest.mark.parametrize("name", ["two\nlines.ad", 'say """hi""".ad', "back\\slash\\x41.ad", "tab\tand\u2028.ad"])
def test_a_file_name_stands_in_the_module_as_text_never_as_code(name, tmp_path):
    """The program's file name goes into the module's docstrings and each
    line's comment: a line break, quotes or backslashes in it stay text."""
    program = tmp_path / name
    program.write_text("x = [1.0, 2.0]\nloss = (x * x).sum\n")
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "m.py"))
    assert done.returncode == 0, done.stderr
    module = load_module(tmp_path / "m.py")
    assert module.value() == 5.0
    assert module.__doc__.startswith(f"`loss` of {name}, ") and module.value.__doc__ == f"`loss` of {name}."


def test_a_large_input_goes_into_the_companion_archive(tmp_path):
    program = tmp_path / "big.ad"
    program.write_text("W = randn(20, 30, seed=1)\nx = randn(30, seed=2)\nloss = (W @@ x).tanh.sum\n")
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "big.py"), "--wrt", "W")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "big.npz").is_file()
    with np.load(tmp_path / "big.npz", allow_pickle=False) as stored:
        assert sorted(stored.files) == ["INPUTS/W"]
    module = load_module(tmp_path / "big.py")
    assert set(module.inputs()) == {"W", "x"}
    np.testing.assert_array_equal(module.inputs()["W"], Program.open(str(program)).run().node("W").value)


def test_plain_python_lists_and_numbers_are_arguments(tmp_path):
    program = tmp_path / "p.ad"
    program.write_text("w = [1.0, 2.0]\nc = 3.0\nloss = (w * c).sin.sum\n")
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "p.py"), "--hvp")
    assert done.returncode == 0, done.stderr
    module = load_module(tmp_path / "p.py")
    w, c = np.array([0.5, -1.5]), 2.0
    value, grads = module.value_and_grad(w=[0.5, -1.5], c=c)
    assert_close(value, np.sin(w * c).sum(), "value")
    assert_close(grads["w"], c * np.cos(w * c), "w")
    product = module.hvp({"w": [1.0, 0.0]}, w=(0.5, -1.5), c=c)
    assert_close(product["w"], -c * c * np.sin(w * c) * np.array([1.0, 0.0]), "hvp")
    torch_grads = module.value_and_grad(w=torch.tensor(w), c=c)[1]
    assert isinstance(torch_grads["w"], torch.Tensor)


def test_log_sum_exp_of_infinite_entries_exports_as_spiread_computes_it(tmp_path):
    # An infinite maximum is not subtracted (−inf − −inf is nan): a row of
    # -inf gives -inf, a +inf entry gives +inf, in both exports as in the op.
    cases = [("x.rowLogSumExp.sum", np.array([[-np.inf, -np.inf], [0.0, 1.0]]), -np.inf),
             ("x.logSumExp", np.array([[np.inf, 1.0], [0.0, 1.0]]), np.inf)]
    for k, (expression, x, want) in enumerate(cases):
        program = tmp_path / f"lse{k}.ad"
        program.write_text(f"x = [[-1.0, 2.0], [3.0, 0.5]]\ny = {expression}\n")
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            assert Program.open(str(program)).run({"x": x}).value == want
        for to, suffix in (("python", "py"), ("onnx", "onnx")):
            done = spiread("export", str(program), "--to", to, "-o", str(tmp_path / f"lse{k}.{suffix}"), "--wrt", "x")
            assert done.returncode == 0, done.stderr
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            assert load_module(tmp_path / f"lse{k}.py").value(x=x) == want, expression
        session = ort.InferenceSession(str(tmp_path / f"lse{k}.onnx"), providers=["CPUExecutionProvider"])
        assert session.run(["value"], {"x": x})[0] == want, expression


def test_non_finite_constants_and_inputs_export_as_code_that_reads_them_back(tmp_path):
    """inf and nan are no Python literals: the module writes them as float('…')."""
    np.save(tmp_path / "c.npy", np.array([1.0, np.nan, -np.inf]))
    program = tmp_path / "p.ad"
    program.write_text('x = [1.0, 2.0, 3.0]\nw = [0.0, 1.0, 2.0]\nc = load("c.npy")\nloss = (x * c + w).max\n')
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "p.py"), "--wrt", "w")
    assert done.returncode == 0, done.stderr
    with np.errstate(invalid="ignore"):
        value, grads = load_module(tmp_path / "p.py").value_and_grad(x=[1.0, 2.0, np.inf])
    assert np.isnan(value)
    np.testing.assert_array_equal(grads["w"], [0.0, 1.0, 0.0])


@pytest.mark.parametrize("expr, x", [("x.max", [1.0, np.nan, 3.0]), ("x.min", [[1.0, -1.0], [np.nan, 2.0]]),
                                     ("x.rowMax.sum", [[1.0, np.nan], [2.0, 3.0]]), ("x.colMin.sum", [[1.0, np.nan], [2.0, 3.0]]),
                                     ("x.max * x.sum", [[-1.0, -2.0], [-3.0, -4.0]])])
def test_max_and_min_at_a_nan_export_to_onnx_as_spiread_computes_them(expr, x, tmp_path):
    """onnxruntime's ReduceMax and ReduceMin skip a nan; the export's are nan, as numpy's and spiread's."""
    x = np.array(x)
    program = Program.parse(Source("m.ad", f"x = {np.zeros(x.shape).tolist()}\ny = {expr}\n"))
    with np.errstate(invalid="ignore"):
        export_onnx(graphs(program.run({"x": x}), ["x"], hvp=True), tmp_path / "m.onnx")
        want = run_gradients(program.run({"x": x}), ["x"])
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    value, grad = session.run(["value", "grad_x"], {"x": x, "v_x": np.ones_like(x)})
    np.testing.assert_array_equal(value, want.value)
    np.testing.assert_array_equal(grad, want.gradients["x"])


def test_an_intermediate_cannot_be_exported_by(tmp_path):
    program = tmp_path / "p.ad"
    program.write_text("w = [1.0, 2.0]\nh = w.exp\nloss = h.sum\n")
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "p.py"), "--wrt", "h")
    assert done.returncode == 2
    assert "`h` is computed by the program" in done.stderr and "p.ad:2:1" in done.stderr


def test_an_op_without_an_onnx_form_is_a_located_error(tmp_path, monkeypatch):
    from dataclasses import replace
    run = Program.parse(Source("p.ad", "w = [1.0, 2.0]\nloss = w.sin.sum\n")).run()
    monkeypatch.setitem(OPS, "sin", replace(OPS["sin"], export=replace(OPS["sin"].export, onnx=None)))
    g = graphs(run, ["w"], hvp=False)
    for node in g.nodes:
        if node.op is not None and node.op.name == "sin":
            node.op = OPS["sin"]
    with pytest.raises(Exception) as raised:
        onnx_model(g)
    assert "the op `sin` has no ONNX form" in str(raised.value)
    assert raised.value.span.line == 2


def test_a_result_that_is_an_argument_or_a_constant_is_the_callers_own_copy(tmp_path):
    """∂(x·y)/∂x is y itself, and ∂(c·x).sum/∂x is the constant c: the module
    returns copies, so a caller scaling a gradient in place changes neither
    their own array nor the next call's result."""
    program = tmp_path / "p.ad"
    program.write_text("x = [1.0, 2.0, 3.0]\ny = [4.0, 5.0, 6.0]\nc = [1.0, 2.0, 3.0]\n"
                       "f = (x * y).sum + (c * x).sum\ng = (x * y).sum\n")
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "p.py"), "--hvp",
                   "--of", "g", "--wrt", "x", "--wrt", "y")
    assert done.returncode == 0, done.stderr
    module = load_module(tmp_path / "p.py")
    x, y = np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0])
    grads = module.value_and_grad(x=x, y=y)[1]
    grads["x"] *= 0.0
    product = module.hvp({"y": y.copy()}, x=x, y=y)
    product["x"] *= 0.0
    np.testing.assert_array_equal(y, [4.0, 5.0, 6.0])
    np.testing.assert_array_equal(module.value_and_grad(x=x, y=y)[1]["x"], y)
    program.write_text("x = [1.0, 2.0, 3.0]\nc = [1.0, 2.0, 3.0]\nf = (c * x).sum\n")
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "q.py"), "--wrt", "x")
    assert done.returncode == 0, done.stderr
    module = load_module(tmp_path / "q.py")
    module.value_and_grad(x=x)[1]["x"] *= 10.0
    np.testing.assert_array_equal(module.value_and_grad(x=x)[1]["x"], [1.0, 2.0, 3.0])


@pytest.mark.parametrize("source, wrt", [
    ("X = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]\ny = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]\nf = (X * y.T).sum\n", ["X", "y"]),
    ("x = [1.0, 2.0, 3.0, 4.0]\ny = [5.0, 6.0]\nf = (x[1:3] * y).sum\n", ["x", "y"]),
    ("x = [1.0, 2.0, 3.0, 4.0]\nM = [[1.0, 2.0], [3.0, 4.0]]\nf = (x.reshape(2, 2) * M).sum\n", ["x", "M"]),
])
def test_a_result_that_is_a_view_of_an_argument_is_a_copy(source, wrt, tmp_path):
    """A gradient (or H·v) computed as a view of an argument or of another
    result — a transpose, a slice, a reshape — is returned as a copy: the caller scaling it in
    place changes neither their array nor the module's INPUTS."""
    program = tmp_path / "p.ad"
    program.write_text(source)
    done = spiread("export", str(program), "--to", "python", "-o", str(tmp_path / "p.py"), "--hvp",
                   *(f"--wrt={name}" for name in wrt))
    assert done.returncode == 0, done.stderr
    module = load_module(tmp_path / "p.py")
    given = module.inputs()
    directions = {name: np.ones_like(value) for name, value in given.items()}
    owned_results(module, list(module.value_and_grad(**given)[1].values()), list(given.values()))
    owned_results(module, list(module.value_and_grad()[1].values()), [])
    owned_results(module, list(module.hvp(directions, **given).values()), [*given.values(), *directions.values()])
