"""`--backend dask` beyond the row-chunk map-reduce of test_dask.py: CSV (and
other text) data read a block of rows at a time, with the eager loader's
header rule and messages; `check` on chunks. Every result is compared with
the numpy backend's (rtol 1e-10), with chunks small enough that their
boundaries matter.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from spiread_cli import data_text
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program as NumpyProgram  # beside dask_backend.RowChunkRunner
from spiread_cli.dask_backend import RowChunkRunner
from spiread_cli.data import load_array
from spiread_cli.data_text import TextTable
from spiread_cli.diagnostics import Source, SpireadError

from conftest import spiread, strict_json
from test_dask import assert_numbers_close, gradients_on, on_dask

pytest.importorskip("distributed")

RTOL = 1e-10


def numpy_gradients(source: Source, base, wrt=None):
    return run_gradients(NumpyProgram.parse(source, base).run(), wrt)


def dask_gradients(source: Source, base, wrt=None, **options):
    program = on_dask(source, base, **options)
    try:
        return program, gradients_on(program, wrt)
    finally:
        program.close()


def assert_same(expected, got):
    np.testing.assert_allclose(got.value, expected.value, rtol=RTOL, atol=1e-14)
    assert list(got.gradients) == list(expected.gradients)
    for name, g in expected.gradients.items():
        np.testing.assert_allclose(got.gradients[name], g, rtol=RTOL, atol=1e-13, err_msg=f"∂/∂{name}")


# ------------------------------------------------------------- CSV a block of rows at a time


def table_text(rows: np.ndarray, header: bool, decorate: int) -> str:
    """A CSV of `rows` with, by `decorate`'s bits, comments, blank lines and CRLF line ends."""
    lines = ["a,b,c"[:2 * rows.shape[1] - 1]] if header else []
    for i, row in enumerate(rows):
        if decorate & 1 and i % 3 == 0:
            lines.append("# a comment line")
        if decorate & 2 and i % 4 == 1:
            lines.append("   ")
        lines.append(",".join(repr(float(x)) for x in row) + (" # trailing" if decorate & 4 and i % 5 == 2 else ""))
    end = "\r\n" if decorate & 8 else "\n"
    return end.join(lines) + end


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), width=st.integers(1, 3), header=st.booleans(), decorate=st.integers(0, 15),
       block=st.sampled_from([1, 9, 40, 1 << 20]), seed=st.integers(0, 2**16))
def test_text_table_reads_every_row_range_as_the_eager_loader(tmp_path_factory, n, width, header, decorate, block,
                                                              seed):
    rows = np.random.default_rng(seed).standard_normal((n, width)).round(3)
    path = tmp_path_factory.mktemp("csv") / "t.csv"
    path.write_text(table_text(rows, header, decorate))
    whole = load_array(path)
    table = TextTable.scan(path, None, block)
    assert table.shape == whole.shape
    np.testing.assert_array_equal(table.read(0, table.rows), whole)
    rng = np.random.default_rng(seed)
    for _ in range(5):
        start = int(rng.integers(0, max(table.rows, 1)))
        stop = int(rng.integers(start, table.rows + 1))
        if whole.ndim:
            np.testing.assert_array_equal(table.read(start, stop), whole[start:stop])


BAD_TABLES = {
    "a cell that is not a number": "a,b\n1,2\n3,4\n5,6\n7,x\n",
    "a ragged row": "1,2\n3,4\n5,6\n7,8,9\n",
    "a header only": "a,b\n# nothing else\n",
    "nothing": "",
    "a first row half numbers": "1,a\n2,3\n",
    "a byte that is not UTF-8": b"1,2\n3,4\n5,6\n7,\xff\n",
}


@pytest.mark.parametrize("what", list(BAD_TABLES))
@pytest.mark.parametrize("block", [1, 5, 1 << 20])
def test_text_table_refuses_what_the_eager_loader_refuses_with_its_message(what, block, tmp_path):
    path = tmp_path / "bad.csv"
    text = BAD_TABLES[what]
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpireadError) as eager:
        load_array(path)
    with pytest.raises(SpireadError) as chunked:
        TextTable.scan(path, None, block)
    assert chunked.value.diagnostic.message == eager.value.diagnostic.message


CSV_PROGRAM = """
X = load("X.csv")
y = load("y.csv")
w = [0.5, -0.25, 1.0]
loss = ((X @@ w - y) ** 2).sum / rows(X) + (w * w).sum * 0.01
loss.backward(w)"""


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("csvrows")
    rng = np.random.default_rng(3)
    n = 97  # a prime: the last chunk is short
    X = rng.standard_normal((n, 3))
    (folder / "X.csv").write_text(table_text(X, header=True, decorate=7))
    (folder / "y.csv").write_text("y\n" + "".join(f"{float(v)!r}\n" for v in X @ [1.0, -2.0, 0.5] + 0.1))
    return folder


@pytest.mark.parametrize("chunk_rows", [1, 5, 40])
@pytest.mark.parametrize("block", [16, 1 << 20])
def test_csv_rows_are_chunked_and_match_numpy(chunk_rows, block, csv_data, monkeypatch):
    monkeypatch.setattr(data_text, "TEXT_BLOCK_BYTES", block)
    source = Source(str(csv_data / "prog.ad"), CSV_PROGRAM)
    program, got = dask_gradients(source, csv_data, chunk_rows=chunk_rows)
    assert program.chunked and len(program.bounds) == -(-97 // chunk_rows)
    assert {type(r).__name__ for r in program.job.data.files.values()} == {"TextRows"}
    assert_same(numpy_gradients(source, csv_data), got)


def test_csv_is_never_read_whole_on_dask(csv_data, monkeypatch):
    """The eager loader is not called for row data, and no chunk parses more
    than its own blocks (a block boundary to either side)."""
    from spiread_cli import row_data
    monkeypatch.setattr(data_text, "TEXT_BLOCK_BYTES", 64)
    monkeypatch.setattr(row_data, "load_array", lambda *a, **k: pytest.fail("a CSV was read whole"))
    parsed = []
    real = data_text._parse_rows
    monkeypatch.setattr(data_text, "_parse_rows", lambda *a, **k: parsed.append(real(*a, **k)) or parsed[-1])
    source = Source(str(csv_data / "prog.ad"), CSV_PROGRAM)
    _, got = dask_gradients(source, csv_data, chunk_rows=10)
    assert parsed and max(len(p) for p in parsed) < 97 / 2
    monkeypatch.undo()
    assert_same(numpy_gradients(source, csv_data), got)


def test_csv_error_deep_in_the_file_is_the_numpy_backends_error(tmp_path):
    """A bad cell far from the first rows is found by the scan, before any
    chunk runs, and reported as the numpy backend reports it: at the `load`."""
    rows = "".join(f"{i},{i + 1}\n" for i in range(5000))
    (tmp_path / "X.csv").write_text("a,b\n" + rows + "1,oops\n" + rows)
    (tmp_path / "p.ad").write_text('X = load("X.csv")\nw = [1, 2]\nloss = (X @@ w).sum\n')
    numpy_out = spiread("grad", "p.ad", cwd=tmp_path)
    dask_out = spiread("grad", "p.ad", "--backend", "dask", "--chunk-rows", "100", cwd=tmp_path)
    assert numpy_out.returncode == dask_out.returncode == 1
    assert dask_out.stderr == numpy_out.stderr
    assert dask_out.stderr.splitlines()[0] == \
        "p.ad:1:10: error: cannot load `X.csv`: line 5002, column 2: `oops` is not a number"


def test_csv_over_the_memory_limit_runs_on_dask(csv_data):
    """The numpy backend refuses a text file that may not fit; dask reads it a block at a time."""
    (csv_data / "p.ad").write_text(CSV_PROGRAM)
    limit = {"SPIREAD_MAX_BYTES": "2000"}
    numpy_out = spiread("grad", "p.ad", "--format", "json", cwd=csv_data, env=limit)
    assert numpy_out.returncode == 1 and "more than the limit" in numpy_out.stderr
    dask_out = spiread("grad", "p.ad", "--format", "json", "--backend", "dask", "--chunk-rows", "10",
                       cwd=csv_data, env=limit)
    assert dask_out.returncode == 0, dask_out.stderr
    expected = numpy_gradients(Source(str(csv_data / "p.ad"), CSV_PROGRAM), csv_data)
    np.testing.assert_allclose(strict_json(dask_out.stdout)["gradients"]["w"]["value"], expected.gradients["w"],
                               rtol=RTOL)


@pytest.mark.parametrize("how", ["load", "--set"])
def test_a_zarr_array_on_the_numpy_backend_points_at_dask(how, tmp_path):
    """A .zarr array is a directory: the numpy backend says it reads it only
    on `--backend dask` (not "it is a directory"), located at the `load` or
    naming the option; `--backend dask` reads it, with numpy's numbers."""
    zarr = pytest.importorskip("zarr")
    X = np.arange(60.0).reshape(20, 3) % 7
    zarr.open_array(str(tmp_path / "X.zarr"), mode="w", shape=X.shape, dtype="f8")[:] = X
    np.save(tmp_path / "X.npy", X)
    text = ('X = load("X.zarr")' if how == "load" else "X = [[1.0, 2.0, 3.0]]") + "\nloss = (X @@ [1.0, 2.0, 3.0]).sum"
    (tmp_path / "p.ad").write_text(text)
    sets = ["--set", "X=X.zarr"] if how == "--set" else []
    out = spiread("eval", "p.ad", *sets, cwd=tmp_path)
    where = "p.ad:1:10: error: " if how == "load" else "spiread: error: `--set X=X.zarr`: "
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == where + "cannot load `X.zarr`: a zarr array is read by `--backend dask` only"
    assert 'note: run with `--backend dask` (docs/scaling.md), or save the array as .npy' in out.stderr
    dask_out = spiread("eval", "p.ad", *sets, "--backend", "dask", "--chunk-rows", "7", "--format", "json",
                       cwd=tmp_path)
    assert dask_out.returncode == 0, dask_out.stderr
    assert strict_json(dask_out.stdout)["values"]["loss"]["value"] == (X @ [1.0, 2.0, 3.0]).sum()


# ------------------------------------------------------------- check and forward mode over row chunks

from spiread_cli.check import Probe, check_gradients  # noqa: E402
from spiread_cli.forward import directional_forward  # noqa: E402

from test_dask import PROGRAMS, data  # noqa: E402,F401  (the row data fixture)


def open_program(data_dir, text: str, **options) -> tuple[Source, RowChunkRunner]:
    source = Source(str(data_dir / "prog.ad"), text)
    return source, on_dask(source, data_dir, **options)


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_forward_mode_over_chunks_matches_numpy(name, data):
    """Directional derivatives by forward mode through the chunks and the
    driver, the output at moved values, and `grad --mode forward`."""
    source, program = open_program(data, PROGRAMS[name], chunk_rows=17)
    run = NumpyProgram.parse(source, data).run()
    driver = program.run_for(None)
    rng = np.random.default_rng(0)
    for wrt, i in run.wrt_ids(None).items():
        x = run.tape.nodes[i].value
        v = rng.standard_normal((3,) + x.shape)
        j = driver.bindings[wrt]
        np.testing.assert_allclose(directional_forward(driver.tape, driver.output, j, v),
                                   directional_forward(run.tape, run.output, i, v), rtol=RTOL, atol=1e-13, err_msg=wrt)
        moved = x + 0.01 * v[0]
        expected = NumpyProgram.parse(source, data).run({wrt: moved}).value
        probe = Probe(driver.tape, j, driver.output)
        np.testing.assert_allclose(probe(moved), expected, rtol=RTOL)
        probe.restore()
    assert_same(run_gradients(run, None, "forward"), run_gradients(driver, None, "forward"))


@pytest.mark.parametrize("name", list(PROGRAMS))
@pytest.mark.parametrize("max_entries", [0, 64])
def test_check_over_chunks_passes_as_on_numpy(name, max_entries, data):
    """The same check (elementwise, or along random directions) on both
    backends: the same verdict on the same entries or directions."""
    source, program = open_program(data, PROGRAMS[name], chunk_rows=40)
    run = NumpyProgram.parse(source, data).run()
    expected = check_gradients(run, max_entries=max_entries)
    chunked = check_gradients(program.run_for(None), max_entries=max_entries)
    assert expected.ok and chunked.ok, [r.problem for r in chunked.results.values()]
    for wrt, result in expected.results.items():
        got = chunked.results[wrt]
        assert (got.method, got.checked) == (result.method, result.checked)
        assert got.forward_vs_reverse <= 1e-12 * max(1.0, abs(got.ad))
        assert got.max_rel_error < 1e-5


KINKED = 'X = load("X.npy")\nw = [0.0, 0.0, 0.0, 0.0]\nv = [1.0, 2.0]\nloss = (X @@ w).abs.mean + (v * v).sum\n'


def test_cli_check_on_dask(data):
    """Through the binary: a passing check reports numpy's entries; a kink
    fails with exit 1 and the slopes to either side, as on numpy."""
    (data / "sm.ad").write_text(PROGRAMS["softmax regression, a pick per row"])
    numpy_out = spiread("check", "sm.ad", "--format", "json", cwd=data)
    dask_out = spiread("check", "sm.ad", "--format", "json", "--backend", "dask", "--chunk-rows", "100", cwd=data)
    assert numpy_out.returncode == dask_out.returncode == 0, dask_out.stderr
    expected, got = strict_json(numpy_out.stdout), strict_json(dask_out.stdout)
    assert got["ok"] and set(got["results"]) == set(expected["results"]) == {"W", "b"}
    np.testing.assert_allclose(got["value"], expected["value"], rtol=RTOL)
    for name, result in expected["results"].items():
        assert got["results"][name]["checked"] == result["checked"]
    (data / "kink.ad").write_text(KINKED)
    outs = [spiread("check", "kink.ad", "--wrt", "w", "--wrt", "v", *extra, cwd=data)
            for extra in ([], ["--backend", "dask", "--chunk-rows", "50"])]
    assert [o.returncode for o in outs] == [1, 1]
    first = "kink.ad:4:17: error: gradient check failed for `w[0]`: not differentiable there: the slope is "
    assert outs[0].stderr.startswith(first)
    # Each chunk has its own tape, so the op at the kink is not named: the slopes say it
    assert outs[1].stderr.splitlines()[0] == "kink.ad:2:1" + outs[0].stderr.splitlines()[0][len("kink.ad:4:17"):]
    assert "= note: the slopes to either side differ: the function has a kink here" in outs[1].stderr


@pytest.mark.parametrize("args", [["check", "--order", "2", "--wrt", "w"], ["grad", "--explain", "--wrt", "w"],
                                  ["train", "--wrt", "w", "--optimizer", "newton", "--steps", "2"],
                                  ["grad", "--mode", "forward", "--wrt", "s"], ["check", "--wrt", "s"],
                                  ["hessian", "--wrt", "s"]])
def test_cli_what_dask_once_refused_gives_numpys_numbers(args, data):
    """Second order, `--explain`, Newton and derivatives by a computed value
    (`s = w * 2`) on the driver's run, as on numpy's."""
    (data / "ls2.ad").write_text('X = load("X.npy")\nw = [1.0, 2.0, 3.0, 4.0]\ns = w * 2\n'
                                 'loss = ((X @@ s).tanh - 0.5).square.sum + (w * w).sum\n')
    expected = spiread(args[0], "ls2.ad", *args[1:], "--format", "json", cwd=data)
    out = spiread(args[0], "ls2.ad", *args[1:], "--backend", "dask", "--chunk-rows", "50", "--format", "json",
                  cwd=data)
    assert out.returncode == expected.returncode == 0, out.stderr
    got, expected = strict_json(out.stdout), strict_json(expected.stdout)
    for key in ("value", "gradients", "values", "hessian", "loss"):
        if key in expected:
            assert_numbers_close(got[key], expected[key], key)
    if args[0] == "check":
        assert got["ok"] and got["results"].keys() == expected["results"].keys()


# ------------------------------------------------------------- totals over the rows of any shape

from dask.callbacks import Callback  # noqa: E402


class Computes(Callback):
    """Counts Dask computes (each graph a scheduler is given)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _start(self, dsk):
        self.count += 1


# Programs whose data do not split by rows alone: each mixes the rows through
# a total over all of them (`Op.across_rows`) — a Gram matrix, column means,
# maxima, a log-sum-exp, a dot product of two columns of data — or holds them
# along a matrix's columns (`W @@ X.T`).
TOTALS = {
    "a Gram matrix (X.T @@ X)": """
X = load("X.npy")
w = [0.5, -0.25, 1.0, 0.0]
W = randn(4, 4, seed=1)
loss = (X.T @@ X * W).sum / rows(X) + ((X @@ w).tanh ** 2).mean""",
    "standardised by the columns' means and spreads": """
X = load("X.npy")
y = load("y.npy")
w = [0.5, -0.25, 1.0, 0.0]
mu = X.colMean
sd = ((X - mu) ** 2).colMean.sqrt
loss = ((((X - mu) / sd) @@ w - y) ** 2).mean""",
    "scaled by the columns' ranges, a log-sum-exp of the data": """
X = load("X.npy")
w = [0.5, -0.25, 1.0, 0.0]
range = X.colMax - X.colMin
loss = ((X / range) @@ w).exp.sum / rows(X) + X.logSumExp * (w * w).sum + X.min * w.sum""",
    "X.T @@ y and the rows as a matrix's columns (W @@ X.T)": """
X = load("X.npy")
y = load("y.npy")
W = randn(3, 4, seed=2) * 0.3
v = [1.0, -1.0, 0.5]
loss = (v @@ (W @@ X.T).tanh).square.mean + ((X.T @@ y) @@ W.T @@ v) / rows(X)""",
    "bigram with a selection and a dot product over rows": """
xs = load("xs.npy")
ys = load("ys.npy")
W = randn(27, 27, seed=0)
probs = (onehot(xs, 27) @@ W).exp.normaliseRowsL1
loss = probs.select(arange(rows(xs)), ys).mapRowsToScalar(ReductionOps.Sum).log.mean * -1.0 + (xs @@ ys) * 1e-7""",
}


@pytest.mark.parametrize("name", list(TOTALS))
@pytest.mark.parametrize("chunk_rows", [7, 64])
def test_totals_over_the_rows_run_by_row_chunks_as_on_numpy(name, chunk_rows, data):
    """Computed once, before the steps (no trained value moves them), then
    constants in every chunk: numpy's gradients, one compute a step."""
    source, program = open_program(data, TOTALS[name], chunk_rows=chunk_rows)
    assert program.job.plan.reductions
    got = gradients_on(program)
    assert "X" not in got.gradients and "xs" not in got.gradients  # the row data are left out by default
    assert_same(numpy_gradients(source, data, list(got.gradients)), got)
    with Computes() as computes:
        program.sums.at({name: value * 1.5 for name, value in program.sums.at_values.items()})
    assert computes.count == 1


@pytest.mark.parametrize("name", list(TOTALS))
def test_check_and_forward_mode_with_totals(name, data):
    """The check of the parameters (entry by entry up to 16 entries, along
    directions beyond), and forward mode by every parameter: numpy's."""
    source, program = open_program(data, TOTALS[name], chunk_rows=30)
    run = NumpyProgram.parse(source, data).run()
    wrt = [n for n in ("w", "W", "v") if n in run.bindings]
    report = check_gradients(program.run_for(wrt), wrt, max_entries=16)
    expected = check_gradients(run, wrt, max_entries=16)
    assert report.ok and expected.ok, [r.problem for r in report.results.values()]
    assert {n: (r.method, r.checked) for n, r in report.results.items()} == \
        {n: (r.method, r.checked) for n, r in expected.results.items()}
    assert_same(run_gradients(run, wrt, "forward"), run_gradients(program.run_for(wrt), wrt, "forward"))


def test_training_with_totals_computes_once_a_step(data):
    from spiread_cli.optim import make_optimizer
    from spiread_cli.train import train
    source, program = open_program(data, TOTALS["standardised by the columns' means and spreads"], chunk_rows=30)
    with Computes() as computes:
        got = train(program.run_for(["w"]), ["w"], 4, make_optimizer("sgd", 0.1, 0.0))
    assert computes.count == 2 + 4  # the totals (means, then spreads: two levels), then one a step
    expected = train(NumpyProgram.parse(source, data).run(), ["w"], 4, make_optimizer("sgd", 0.1, 0.0))
    np.testing.assert_allclose(got.losses, expected.losses, rtol=RTOL)
    np.testing.assert_allclose(got.values["w"], expected.values["w"], rtol=RTOL)


REFUSED = {  # what makes each not run by row chunks: said at the op, naming the data
    "rows less half the first row": ("""
X = load("X.npy")
y = load("y.npy")
w = [0.5, -0.25, 1.0, 0.0]
Z = X - X.row(0) * 0.5
loss = ((Z @@ w - y) ** 2).mean""", "`row(0)` uses the rows of `X` together", (5, 11)),
    "a size of the data": ("""
X = load("X.npy")
w = [0.5, -0.25, 1.0, 0.0]
loss = (X @@ w).exp.sum * (1 / size(X))""", "`(1 / size(X))` is computed from the data rows", (4, 27)),
    "a Gram matrix of values the trained ones move": ("""
X = load("X.npy")
labels = load("labels.npy")
W = randn(4, 3, seed=2) * 0.1
logp = (X @@ W).logSoftmaxRows
loss = -logp.arrange(arange(rows(X)), labels).mean + ((X @@ W).T @@ (X @@ W)).sum * 1e-4""",
        "`@@` makes a sum over all rows, 3×3, of the result of `T`, which changes with `W`", (6, 66)),
    "a maximum over the rows of values the trained ones move": ("""
X = load("X.npy")
w = [0.5, -0.25, 1.0, 0.0]
loss = (X @@ w).max""", "`max` makes a max over all rows of the result of `@@`, which changes with `w`", (4, 17)),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_row_chunks_cannot_run_is_refused_naming_the_data(name, data):
    text, message, (line, column) = REFUSED[name]
    (data / "refused.ad").write_text(text)
    assert spiread("grad", "refused.ad", cwd=data).returncode == 0
    out = spiread("grad", "refused.ad", "--backend", "dask", "--chunk-rows", "40", cwd=data)
    assert out.returncode == 1
    first = out.stderr.splitlines()[0]
    assert first.startswith(f"refused.ad:{line}:{column}: error: cannot run by row chunks: ") and message in first, \
        out.stderr
    assert out.stderr.rstrip().endswith("= note: use --backend numpy (everything in memory)")
    assert "Dask" not in out.stderr


def test_cli_runs_totals(data):
    """`eval`, `grad` (both modes), `train` and `check` end to end on a
    program with totals of every kind: numpy's numbers."""
    (data / "std.ad").write_text(TOTALS["standardised by the columns' means and spreads"])
    dask = ["--backend", "dask", "--chunk-rows", "40", "--format", "json"]
    for command in (["eval", "std.ad"], ["grad", "std.ad"], ["grad", "std.ad", "--mode", "forward"],
                    ["train", "std.ad", "--wrt", "w", "--steps", "3"], ["check", "std.ad", "--wrt", "w"]):
        expected = strict_json(spiread(*command, "--format", "json", cwd=data).stdout)
        out = spiread(*command, *dask, cwd=data)
        assert out.returncode == 0, out.stderr
        got = strict_json(out.stdout)
        for key in ("gradients", "values"):
            for name, entry in got.get(key, {}).items():
                np.testing.assert_allclose(entry["value"], expected[key][name]["value"], rtol=RTOL, atol=1e-14)
        if command[0] == "eval":
            assert set(got["values"]) == {"w", "mu", "sd", "loss"}  # the row data are never gathered
        if command[0] == "train":
            np.testing.assert_allclose(got["loss"], expected["loss"], rtol=RTOL)
        if command[0] == "check":
            assert got["ok"] and {n: r["checked"] for n, r in got["results"].items()} == {"w": 4}


@pytest.mark.cluster
def test_local_cluster_runs_check_and_totals(data):
    """Worker processes: the chunked check's tasks and the totals' travel
    to them (paths and offsets, never the data)."""
    from distributed import LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        source, program = open_program(data, TOTALS["a Gram matrix (X.T @@ X)"], chunk_rows=50,
                                       scheduler=cluster.scheduler_address)
        try:
            got = gradients_on(program)
            assert_same(numpy_gradients(source, data, list(got.gradients)), got)
        finally:
            program.close()
        source, program = open_program(data, PROGRAMS["softmax regression, a pick per row"], chunk_rows=50,
                                       scheduler=cluster.scheduler_address)
        try:
            report = check_gradients(program.run_for(None))
            expected = check_gradients(NumpyProgram.parse(source, data).run(), list(report.results))
            assert report.ok and {n: r.checked for n, r in report.results.items()} == \
                {n: r.checked for n, r in expected.results.items()}
            np.testing.assert_allclose(run_gradients(program.run_for(None), None, "forward").gradients["W"],
                                       numpy_gradients(source, data).gradients["W"], rtol=RTOL)
        finally:
            program.close()


@pytest.mark.parametrize("text", [PROGRAMS["least squares, sum over rows(X)"].replace("loss.backward(w)", ""),
                                  TOTALS["a Gram matrix (X.T @@ X)"]])
def test_default_wrt_leaves_the_row_data_out_and_says_so(text, data):
    """Without --wrt, `grad` on dask differentiates by what the output
    depends on but the row data, with a warning naming them; docs/scaling.md's
    first command works on an ordinary program. The row data alone is
    refused with a note that says to name a value."""
    (data / "p.ad").write_text(text)
    numpy_out = strict_json(spiread("grad", "p.ad", "--format", "json", cwd=data).stdout)
    out = spiread("grad", "p.ad", "--backend", "dask", "--chunk-rows", "50", "--format", "json", cwd=data)
    assert out.returncode == 0, out.stderr
    got = strict_json(out.stdout)
    assert "X" in numpy_out["gradients"] and set(got["gradients"]) == set(numpy_out["gradients"]) - {"X", "y"}
    assert_numbers_close(got["gradients"], {n: numpy_out["gradients"][n] for n in got["gradients"]}, "gradients")
    assert got["warnings"][0]["message"].startswith("the row data `X`")
    (data / "only.ad").write_text('X = load("X.npy")\nloss = (X * X).sum\n')
    out = spiread("grad", "only.ad", "--backend", "dask", "--chunk-rows", "50", cwd=data)
    assert out.returncode == 1
    assert "nothing to differentiate by: the output `loss` depends only on the row data `X`" in out.stderr
    assert "note: name a value to differentiate by: `--wrt NAME`" in out.stderr


def test_python_api_on_dask_gives_the_command_lines_numbers(data):
    """`load(path, backend="dask", chunk_rows=…)` is the command line's
    `--backend dask`: the same numbers for every call (numpy's, rtol 1e-9),
    and the backend's options refused without it, in Python's words."""
    import warnings
    from spiread_cli import load
    (data / "sm.ad").write_text(PROGRAMS["softmax regression, a pick per row"])
    path = str(data / "sm.ad")
    dask = ["--backend", "dask", "--chunk-rows", "50", "--format", "json"]
    cli = {command[0]: strict_json(spiread(*command, *dask, cwd=data).stdout)
           for command in (["grad", "sm.ad"], ["hessian", "sm.ad", "--hvp", "b=[1,2,3]"],
                           ["train", "sm.ad", "--wrt", "W,b", "--optimizer", "newton", "--steps", "3"])}
    numpy_program = load(path)
    with load(path, backend="dask", chunk_rows=50) as program, warnings.catch_warnings():
        warnings.simplefilter("error")
        got = program.grad()
        assert list(got.gradients) == ["W", "b"] == list(cli["grad"]["gradients"])
        for name, g in got.gradients.items():
            np.testing.assert_allclose(g, cli["grad"]["gradients"][name]["value"], rtol=1e-9, atol=1e-13)
            np.testing.assert_allclose(g, numpy_program.grad()[name], rtol=1e-9, atol=1e-13)
        products = program.hessian(hvp={"b": [1.0, 2.0, 3.0]}).products
        for name, p in products.items():
            np.testing.assert_allclose(p, cli["hessian"]["hvp"][name]["value"], rtol=1e-9, atol=1e-13)
        trained = program.train(wrt=["W", "b"], steps=3, optimizer="newton", progress=False)
        np.testing.assert_allclose(trained.values["W"], cli["train"]["values"]["W"]["value"], rtol=1e-9)
        assert program.check().ok
        assert set(program.eval()) == {"W", "b", "loss"}  # the row data are never gathered
    with pytest.raises(SpireadError, match=r'`persist=`: an option of `backend="dask"`'):
        load(path, persist=True)
    with pytest.raises(SpireadError, match=r'`chunk_rows=0`: a chunk needs at least one row'):
        load(path, backend="dask", chunk_rows=0)
