"""`--backend dask` and positions: what a program makes from the number or
the positions of the data rows gives the numpy backend's numbers or is
refused at its op; parameters that are not data, whatever their length, are
no positions into the rows; an error the program has on any backend is
reported as numpy reports it."""

from __future__ import annotations

import numpy as np
import pytest

from spiread_cli.diagnostics import Source, SpireadError
from spiread_cli import chunk_plan
from spiread_cli.chunk_plan import PROBE_ROWS

from conftest import lit, spiread
from test_dask import assert_same, dask_result, numpy_result, save

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def columns(tmp_path_factory):
    """Row data of 1 to 5 columns, 11 rows each: no chunk size used divides it."""
    folder = tmp_path_factory.mktemp("columns")
    rng = np.random.default_rng(3)
    for n in range(1, 6):
        save(folder, f"X{n}", rng.standard_normal((11, n)))
    save(folder, "y", rng.standard_normal(11))
    return folder


def both_backends(folder, text: str, wrt: list[str], chunk_rows: int):
    source = Source(str(folder / "prog.ad"), text)
    expected = numpy_result(source, {}, folder, wrt)
    _, got = dask_result(source, {}, folder, wrt, chunk_rows=chunk_rows)
    assert_same(expected, got, text)


LENGTHS = sorted({1, *PROBE_ROWS, PROBE_ROWS[1] + 1, 5})


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("tail", [
    "diag(w).sum", "(X @@ diag(w)).sum", "A.trace", "A.diag.sum", "(X.T @@ X).trace * w.sum",
    "A.select(arange(cols(A)), arange(cols(A))).sum", "(A.arrange(arange(cols(A)), arange(cols(A))) * w).sum",
    "einsum(\"ii->\", X.T @@ X) * w[0]",
])
def test_parameters_of_any_length_are_not_positions_into_the_rows(n, tail, columns):
    """Positions held by a value that is not row data (`diag(w)`, a trace)
    are that value's own, whatever their length: one as long as a probe's
    rows (PROBE_ROWS) is no exception."""
    text = (f'X = load("X{n}.npy")\nw = {lit(np.linspace(0.1, 0.5, n))}\n'
            f'A = randn({n}, {n}, seed=1)\nloss = (X @@ w).sum + {tail}\n')
    both_backends(columns, text, ["w", "A"], chunk_rows=4)


OWN_ERRORS = [
    ('X = load("X4.npy")\nw = [1, 2, 3, 4]\nloss = (X @@ w).sum + w[7]\n', "prog.ad:3:23: error: index 7 is out "
     "of range for `w`, which is a vector of 4"),
    ('X = load("X4.npy")\nw = [1, 2, 3]\nloss = (X @@ w).sum\n', "prog.ad:3:11: error: `X @@ w`: inner "
     "sizes differ, `X` is 11×4, `w` is a vector of 3"),
    ('X = load("X4.npy")\nw = [1, 2, 3, 4]\nloss = (X @@ w).sum + (w @@ w.T).foo\n', "prog.ad:3:34: error: unknown "
     "method `.foo`"),
]


@pytest.mark.parametrize("text, first", OWN_ERRORS)
def test_cli_an_error_of_the_program_is_numpys_error(text, first, columns):
    """An error the program has whatever the rows and the backend is the
    numpy backend's error, word for word, not a refusal to chunk."""
    (columns / "prog.ad").write_text(text)
    numpy_out = spiread("grad", "prog.ad", "--wrt", "w", cwd=columns)
    dask_out = spiread("grad", "prog.ad", "--wrt", "w", "--backend", "dask", "--chunk-rows", "4", cwd=columns)
    assert numpy_out.returncode == dask_out.returncode == 1
    assert dask_out.stderr == numpy_out.stderr
    assert dask_out.stderr.startswith(first) and "row chunks" not in dask_out.stderr


def test_an_error_the_probes_rows_make_is_a_refusal_to_chunk(columns):
    """`arange(6)` beside six rows of data fails on the probes' few rows
    only: that is said as a refusal to chunk, which numpy would run."""
    text = 'X = load("X4.npy")\nw = [1, 2, 3, 4]\nloss = ((X @@ w) * arange(11)).sum\n'
    source = Source(str(columns / "prog.ad"), text)
    numpy_result(source, {}, columns, ["w"])
    with pytest.raises(SpireadError) as caught:
        dask_result(source, {}, columns, ["w"], chunk_rows=4)
    assert caught.value.diagnostic.message.startswith("cannot run by row chunks: on data rows 0–1, ")


@pytest.mark.parametrize("text, own", [(OWN_ERRORS[0][0], True), (OWN_ERRORS[1][0], False)])
def test_over_what_is_read_whole_an_error_on_the_probes_rows_alike_is_the_programs(text, own, columns,
                                                                                    monkeypatch):
    """Data too large to record whole: an error the first two probes give
    alike (`w[7]`) is the program's; one that names their rows is said as a
    refusal to chunk (numpy's backend, which would read the data whole, is
    the place to see it)."""
    monkeypatch.setattr(chunk_plan, "CHUNK_BYTES", 0)
    with pytest.raises(SpireadError) as caught:
        dask_result(Source(str(columns / "prog.ad"), text), {}, columns, ["w"], chunk_rows=4)
    assert caught.value.diagnostic.message.startswith("cannot run by row chunks") != own
