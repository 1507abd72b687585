"""Every command on both backends: the same program on row data, run with
`--backend numpy` and `--backend dask` (small chunks, so their boundaries
matter), through the binary and through the Python API
(`spiread_cli.load(path, backend="dask")`), gives the same numbers (rtol
1e-9), or is refused at the op, naming the data and what to do.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from conftest import spiread, strict_json
from test_dask import assert_numbers_close

pytest.importorskip("distributed")

# A total of the data alone (the columns' means, computed before the steps),
# a total that moves with w and b (the loss's mean), a value computed from it
# that is not a number (z, for the Jacobian), and sparsity in the Hessian
# (c's entries meet only themselves).
PROGRAM = """X = load("X.npy")
y = load("y.npy")
w = [0.5, -0.25, 1.0]
b = 0.1
c = [1.0, 2.0, 3.0, 4.0]
mu = X.colMean
r = ((X - mu) @@ w + b - y).tanh
loss = (r * r).mean + (w * w).sum * 0.01 + (c.exp * 0.5).sum
z = mu * w * loss
"""
DASK = ["--backend", "dask", "--chunk-rows", "16"]
WRT = ["--wrt", "w,b,c", "--of", "loss"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backends")
    rng = np.random.default_rng(5)
    X = rng.standard_normal((61, 3))  # a prime: the last chunk is short
    np.save(folder / "X.npy", X)
    np.save(folder / "y.npy", np.tanh(X @ [1.0, -0.5, 0.25]) + 0.05 * rng.standard_normal(61))
    (folder / "p.ad").write_text(PROGRAM)
    return folder


COMMANDS = {
    "eval": ["eval"],
    "grad": ["grad", *WRT],
    "grad forward": ["grad", *WRT, "--mode", "forward"],
    "grad --explain": ["grad", *WRT, "--explain"],
    "hessian": ["hessian", *WRT],
    "hessian --hvp": ["hessian", *WRT, "--hvp", "w=[1,0,2]", "--hvp", "c=[0,1,0,1]"],
    "hessian --pattern": ["hessian", *WRT, "--pattern"],
    "hessian --sparse": ["hessian", *WRT, "--sparse"],
    "jacobian reverse": ["jacobian", "--of", "z", "--wrt", "w,b", "--mode", "reverse"],
    "jacobian forward": ["jacobian", "--of", "z", "--wrt", "w,b", "--mode", "forward"],
    "jacobian --sparse": ["jacobian", "--of", "z", "--wrt", "w,b,c", "--sparse"],
    "jacobian --sparse reverse": ["jacobian", "--of", "z", "--wrt", "w,b,c", "--sparse", "--mode", "reverse"],
    "jacobian --pattern": ["jacobian", "--of", "z", "--wrt", "w,b,c", "--pattern"],
    "check": ["check", *WRT],
    "check --order 2": ["check", *WRT, "--order", "2"],
    "train sgd": ["train", *WRT, "--steps", "3", "--lr", "0.1", "--momentum", "0.5"],
    "train adam": ["train", *WRT, "--steps", "3", "--optimizer", "adam"],
    "train newton": ["train", *WRT, "--steps", "3", "--optimizer", "newton"],
    "train newton --sparse": ["train", *WRT, "--steps", "3", "--optimizer", "newton", "--sparse"],
}
SKIPPED = {"seconds", "explain", "file"}  # timings; --explain's steps differ (the driver's sweep, checked below)


def without(document: dict, keys) -> dict:
    return {k: v for k, v in document.items() if k not in keys}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_command_gives_numpys_numbers_on_dask(name, folder):
    command = [*COMMANDS[name], "--format", "json"]
    expected = spiread(command[0], "p.ad", *command[1:], cwd=folder)
    got = spiread(command[0], "p.ad", *command[1:], *DASK, cwd=folder)
    assert expected.returncode == got.returncode == 0, got.stderr
    expected, got = strict_json(expected.stdout), strict_json(got.stdout)
    if name == "eval":  # the row data, and values with a row per data row, are never gathered
        assert set(got["values"]) == set(expected["values"]) - {"X", "y", "r"}
        expected["values"] = {k: v for k, v in expected["values"].items() if k in got["values"]}
    if name.startswith("train"):
        expected, got = without(expected, {"time"}), without(got, {"time"})
    if name.startswith("check"):  # finite differences and their errors are rounding: the verdicts are compared
        assert got["ok"] and expected["ok"]
        rounding = {"max_abs_error", "max_rel_error", "forward_vs_reverse", "fd", "worst_entry", "ad"}
        for document in (expected, got):
            document["results"] = {k: without(v, rounding) for k, v in document["results"].items()}
    assert_numbers_close(without(got, SKIPPED), without(expected, SKIPPED), name)
    if name == "grad --explain":
        assert "rowsTotal" in {step["op"] for step in got["explain"]}


def test_dot_on_dask_draws_the_drivers_graph_with_numpys_gradients(folder):
    """The graph whose totals over the rows are one node each: the same
    values and gradients at the values differentiated by."""
    numpy_out = spiread("dot", "p.ad", *WRT, cwd=folder)
    dask_out = spiread("dot", "p.ad", *WRT, *DASK, cwd=folder)
    assert numpy_out.returncode == dask_out.returncode == 0, dask_out.stderr
    for name in ("w", "b", "c"):
        gradient = re.compile(r"<b>" + name + r"</b>.*?∇ ([^<]*)<")
        shown = [np.array(gradient.search(out.stdout).group(1).strip("[]").split(), dtype=float)
                 for out in (dask_out, numpy_out)]
        np.testing.assert_allclose(*shown, rtol=1e-9, err_msg=name)
    assert "<b>X</b>" in numpy_out.stdout and "<b>X</b>" not in dask_out.stdout  # never gathered


@pytest.mark.parametrize("to", ["python", "onnx"])
def test_export_on_dask_refuses_a_moving_total_naming_the_data(to, folder):
    pytest.importorskip("onnx")
    pytest.importorskip("array_api_compat")
    out = spiread("export", "p.ad", "--to", to, *WRT, "-o", f"p.{'py' if to == 'python' else 'onnx'}", *DASK,
                  cwd=folder)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (
        "p.ad:8:16: error: cannot export `mean`: it totals the rows of the data `X`, `y`, which are read a chunk at "
        "a time and never whole, and an exported module computes on every value it is given whole")
    assert "= note: export with `--backend numpy`" in out.stderr
    assert not (folder / "p.py").exists() and not (folder / "p.onnx").exists()


def test_export_on_dask_writes_totals_of_the_data_as_constants(folder):
    """A program whose totals are all of the data alone: the module's
    numbers are numpy's, and it holds no row of the data."""
    pytest.importorskip("array_api_compat")
    import importlib.util
    (folder / "gram.ad").write_text('X = load("X.npy")\nw = [0.5, -0.25, 1.0]\n'
                                    'loss = ((X.T @@ X) @@ w * w).sum / rows(X) + X.colMax @@ w.exp\n')
    results = []
    for backend, extra in (("numpy", []), ("dask", DASK)):
        path = folder / f"gram_{backend}.py"
        out = spiread("export", "gram.ad", "--to", "python", "--wrt", "w", "-o", path.name, *extra, cwd=folder)
        assert out.returncode == 0, out.stderr
        spec = importlib.util.spec_from_file_location(f"gram_{backend}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        results.append(module.value_and_grad(w=np.array([0.3, 0.2, -0.1])))
        if backend == "dask":
            assert not path.with_suffix(".npz").exists() or "X" not in np.load(path.with_suffix(".npz"))
    (numpy_value, numpy_grads), (dask_value, dask_grads) = results
    np.testing.assert_allclose(dask_value, numpy_value, rtol=1e-9)
    np.testing.assert_allclose(dask_grads["w"], numpy_grads["w"], rtol=1e-9)


def test_every_call_of_the_python_api_gives_numpys_numbers_on_dask(folder):
    """`load(path, backend="dask")`: each call as on `load(path)`."""
    from spiread_cli import load
    path = str(folder / "p.ad")
    wrt = ["w", "b", "c"]
    numpy_program = load(path)
    with load(path, backend="dask", chunk_rows=16) as program:
        def same(got, expected, where):
            if isinstance(expected, dict):
                assert set(got) == set(expected), where
                for key in expected:
                    same(got[key], expected[key], f"{where}.{key}")
            else:
                np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float),
                                           rtol=1e-9, atol=1e-12, err_msg=where)

        values = program.eval()
        same(values, {k: v for k, v in numpy_program.eval().items() if k in values}, "eval")
        same(program.grad(wrt=wrt, of="loss").gradients, numpy_program.grad(wrt=wrt, of="loss").gradients, "grad")
        same(program.hessian(wrt=wrt, of="loss").blocks, numpy_program.hessian(wrt=wrt, of="loss").blocks, "hessian")
        same(program.hessian(wrt=wrt, of="loss", hvp={"w": [1.0, 0.0, 2.0]}).products,
             numpy_program.hessian(wrt=wrt, of="loss", hvp={"w": [1.0, 0.0, 2.0]}).products, "hvp")
        sparse, expected = (p.hessian(wrt=wrt, of="loss", sparse=True) for p in (program, numpy_program))
        same(sparse.toarray(), expected.toarray(), "sparse hessian")
        pattern, expected = (p.hessian(wrt=wrt, of="loss", pattern=True) for p in (program, numpy_program))
        assert (pattern != expected).nnz == 0
        for mode in ("forward", "reverse"):
            same(program.jacobian(wrt=["w", "b"], of="z", mode=mode).blocks,
                 numpy_program.jacobian(wrt=["w", "b"], of="z", mode=mode).blocks, f"jacobian {mode}")
            sparse, expected = (p.jacobian(wrt=wrt, of="z", mode=mode, sparse=True) for p in (program, numpy_program))
            same(sparse.toarray(), expected.toarray(), f"sparse jacobian {mode}")
        pattern, expected = (p.jacobian(wrt=wrt, of="z", pattern=True) for p in (program, numpy_program))
        assert (pattern != expected).nnz == 0
        checked, expected = (p.check(wrt=wrt, of="loss") for p in (program, numpy_program))
        assert checked.ok and expected.ok
        for optimizer in ("sgd", "adam", "newton"):
            trained, expected = (p.train(wrt=wrt, of="loss", steps=3, optimizer=optimizer, progress=False)
                                 for p in (program, numpy_program))
            same(trained.values, expected.values, optimizer)
        graph, expected = (p.dot(wrt=wrt, of="loss").source for p in (program, numpy_program))
        assert "<b>X</b>" in expected and "<b>X</b>" not in graph  # the row data are never gathered
        gradient = re.compile(r"<b>w</b>.*?∇ ([^<]*)<")
        shown = [np.array(gradient.search(g).group(1).strip("[]").split(), dtype=float) for g in (graph, expected)]
        np.testing.assert_allclose(*shown, rtol=1e-9)


def test_a_pattern_on_dask_is_the_union_of_the_chunks_own(folder):
    """Which entries of W meet depends on the data (the rows' positions):
    each chunk reads its own pattern, and their union is numpy's, not the
    dense one a total could conservatively claim."""
    xs = np.repeat([0.0, 1.0, 3.0, 1.0], 16)  # each chunk of 16 rows picks one row of W
    np.save(folder / "xs.npy", xs)
    (folder / "picks.ad").write_text('xs = load("xs.npy")\nW = randn(5, 5, seed=0)\n'
                                     'loss = (onehot(xs, 5) @@ W).exp.sum + (W.row(4) * W.row(4)).sum\n')
    for command in (["hessian", "--pattern"], ["hessian", "--sparse"]):
        expected = strict_json(spiread(command[0], "picks.ad", *command[1:], "--format", "json", cwd=folder).stdout)
        out = spiread(command[0], "picks.ad", *command[1:], "--format", "json", *DASK, cwd=folder)
        assert out.returncode == 0, out.stderr
        got = strict_json(out.stdout)
        assert_numbers_close(without(got, SKIPPED), without(expected, SKIPPED), " ".join(command))
    assert expected["hessian"]["W"]["W"]["nonzeros"] == 3 * 5 + 5  # rows 0, 1 and 3 of W; row 4 by itself
