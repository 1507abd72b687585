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

from spiread_cli import api, data as data_module
from spiread_cli.dask_backend import Options, Program
from spiread_cli.data import TextTable, load_array
from spiread_cli.diagnostics import Source, SpireadError

from conftest import spiread, strict_json

pytest.importorskip("distributed")

RTOL = 1e-10


def numpy_gradients(source: Source, base, wrt=None):
    return api.gradients(api.run_source(source, None, None, base), wrt)


def dask_gradients(source: Source, base, wrt=None, **options):
    program = Program.of_source(source, Options(**options), [], None, base)
    try:
        return program, program.gradients(wrt)
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
    monkeypatch.setattr(data_module, "TEXT_BLOCK_BYTES", block)
    source = Source(str(csv_data / "prog.ad"), CSV_PROGRAM)
    program, got = dask_gradients(source, csv_data, chunk_rows=chunk_rows)
    assert program.chunked and len(program.bounds) == -(-97 // chunk_rows)
    assert {type(r).__name__ for r in program.job.data.files.values()} == {"TextRows"}
    assert_same(numpy_gradients(source, csv_data), got)


def test_csv_is_never_read_whole_on_dask(csv_data, monkeypatch):
    """The eager loader is not called for row data, and no chunk parses more
    than its own blocks (a block boundary to either side)."""
    from spiread_cli import chunks
    monkeypatch.setattr(data_module, "TEXT_BLOCK_BYTES", 64)
    monkeypatch.setattr(chunks, "load_array", lambda *a, **k: pytest.fail("a CSV was read whole"))
    parsed = []
    real = data_module._parse_rows
    monkeypatch.setattr(data_module, "_parse_rows", lambda *a, **k: parsed.append(real(*a, **k)) or parsed[-1])
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
