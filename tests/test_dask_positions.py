"""`--backend dask` and positions: what a program makes from the number or
the positions of the data rows gives the numpy backend's numbers or is
refused at its op; parameters that are not data, whatever their length, are
no positions into the rows; an error the program has on any backend is
reported as numpy reports it."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from spiread_cli.diagnostics import Source, SpireadError
from spiread_cli import chunk_plan
from spiread_cli.chunk_plan import PROBE_ROWS

from conftest import lit, spiread, strict_json
from programs import programs
from test_dask import assert_same, dask_result, numpy_result, random_program_on_row_data, save

pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def columns(tmp_path_factory):
    """Row data of 1 to 5 columns, 11 rows each: no chunk size used divides it."""
    folder = tmp_path_factory.mktemp("columns")
    rng = np.random.default_rng(3)
    for n in range(1, 6):
        save(folder, f"X{n}", rng.standard_normal((11, n)))
    save(folder, "y", rng.standard_normal(11))
    save(folder, "labels", rng.integers(0, 3, 11))
    save(folder, "counting", np.r_[0, 1, 2, rng.integers(0, 3, 8)])
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


# ------------------------------------------------------- made from the rows


MADE_FROM_THE_ROWS = {
    "positions as values": "loss = (y * arange(rows(y)) * w[0]).sum + (X @@ w).sum",
    "a draw as noise": "noise = randn(rows(X), seed=1)\nloss = ((X @@ w) * noise).sum",
    "a draw computed with, then bound": "noise = randn(rows(X), seed=1) * 0.1 + 1\nloss = ((X @@ w) * noise).sum",
    "a uniform draw of a column": "loss = ((X * rand(rows(X), 1, seed=2)) @@ w).sum",
    "a draw along a second axis": "loss = ((randn(2, rows(X), seed=3) @@ X) @@ w).sum",
    "a mask of positions": "loss = where(arange(rows(X)) < 5, X @@ w, 0).sum",
    "positions bound, then a value": "at = arange(rows(X))\nloss = ((X @@ w) * (at % 3)).sum",
    "positions bound, then a pick": "at = arange(rows(X))\nlabels = load(\"labels.npy\")\n"
                                    "loss = (X * w).softmaxRows.arrange(at, labels).log.mean + (at * (X @@ w)).sum",
    "a count folded": "loss = ((X @@ w) * (1 / rows(X))).sum + (X @@ w).sum / (rows(X) - 1)",
    "ones along the rows": "loss = ((X @@ w) * ones(rows(X))).sum + (X * full(rows(X), 3, 2.0)).sum * w[0]",
    "the data folded inline": "loss = ((load(\"X3.npy\") * 2) @@ w).sum",
}


@pytest.mark.parametrize("chunk_rows", [1, 4])
@pytest.mark.parametrize("name", MADE_FROM_THE_ROWS)
def test_values_made_from_the_rows_are_numpys(name, chunk_rows, columns):
    """A constant made from the number of data rows — positions, draws, a
    count, ones — holds in each chunk that chunk's rows of the whole program's
    value (a draw's rows of the whole draw), not the chunk's own making."""
    text = f'X = load("X3.npy")\ny = load("y.npy")\nw = [0.3, -0.2, 0.5]\n{MADE_FROM_THE_ROWS[name]}\n'
    both_backends(columns, text, ["w"], chunk_rows=chunk_rows)


@pytest.mark.parametrize("tail, message, at", [
    ("(ones(rows(X)).cumsum * (X @@ w)).sum", "`cumsum` uses the rows of `ones(rows(X))` together", "cumsum"),
    ("(load(\"y.npy\").cumsum * (X @@ w)).sum", "`cumsum` uses the rows of `load(\"y.npy\")` together", "cumsum"),
    ("(onehot(arange(rows(X)) % 3, 3) * X).sum * w[0]", "`%` is read while the program is recorded", "%"),
    ("(X * w).select(arange(rows(X)) % 2, arange(rows(X)) * 0).sum", "`%` is read", "%"),
    ("((onehot(arange(rows(X)), 11) @@ ones(11)) * (X @@ w)).sum", "`onehot(arange(rows(X)), 11)` is made from "
     "positions or draws along the data rows while the program is recorded", "onehot"),
    ("(X @@ w).sum + X.select(randn(rows(X), seed=1) > 0, arange(rows(X)) * 0).sum", "`>` is read", ">"),
    ("(full(rows(X), X.sum) * (X @@ w)).sum", "`sum` is read while the program is recorded (a size, positions or "
     "labels), but it is computed from a total over the data rows", "sum"),
    # rev-i: a fill or a seed read from the rows' number was the chunk's own number, with no word
    ("(full(rows(X), 1, rows(X) - 1)[:, 0] * (X @@ w)).sum", "the fill value `rows(X) - 1` is computed from the "
     "number of data rows", "rows(X) - 1"),
    ("(randn(rows(X), seed=rows(X)) * (X @@ w)).sum", "the seed `rows(X)` is computed from the number of data rows",
     "rows(X))"),
])
def test_what_is_made_from_the_rows_and_cannot_be_made_again_is_refused(tail, message, at, columns):
    """What a chunk cannot make as its rows of the whole — a running total
    of the rows, labels or positions computed from positions or draws while
    the program is recorded — is refused at its op, never other numbers."""
    text = f'X = load("X3.npy")\nw = [0.3, -0.2, 0.5]\nloss = {tail}\n'
    source = Source(str(columns / "prog.ad"), text)
    numpy_result(source, {}, columns, ["w"])
    with pytest.raises(SpireadError) as caught:
        dask_result(source, {}, columns, ["w"], chunk_rows=4)
    diagnostic = caught.value.diagnostic
    assert diagnostic.message.startswith("cannot run by row chunks: " + message), diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (3, len("loss = ") + tail.index(at) + 1)
    assert diagnostic.notes[-1] == "use --backend numpy (everything in memory)"


def test_a_recording_whose_length_follows_the_rows_is_refused_where_it_starts_to_differ(columns):
    # rev-i: `map` over a value made from the rows records an op per row, so the probes' recordings differ in
    # length; the refusal said so with no place (§8: every error at FILE:LINE:COL)
    text = 'X = load("X3.npy")\nw = [0.3, -0.2, 0.5]\nloss = ((X @@ w) * arange(rows(X)).map(t => t * t)).sum\n'
    source = Source(str(columns / "prog.ad"), text)
    numpy_result(source, {}, columns, ["w"])
    with pytest.raises(SpireadError) as caught:
        dask_result(source, {}, columns, ["w"], chunk_rows=4)
    diagnostic = caught.value.diagnostic
    assert diagnostic.message.startswith("cannot run by row chunks: the program records "), diagnostic.message
    assert (diagnostic.span.line, diagnostic.span.column) == (3, text.splitlines()[2].index("arange") + 1)


@pytest.mark.parametrize("labels", ["labels", "counting"])
def test_labels_that_begin_0_1_2_are_a_pick_per_row(labels, columns):
    """Columns picked one per row that begin 0, 1, 2 like the probes' rows
    are labels, not a diagonal's positions: the pick runs by row chunks (the
    probes' windows tell a diagonal by its columns, which move with them)."""
    text = (f'X = load("X3.npy")\nlabels = load("{labels}.npy")\nw = [0.3, -0.2, 0.5]\n'
            'loss = -(X * w).logSoftmaxRows.arrange(arange(rows(X)), labels).mean\n')
    both_backends(columns, text, ["w"], chunk_rows=4)


def test_cli_positions_and_draws_as_values_give_numpys_numbers(columns):
    """The reviewer's programs through the command line: `grad`'s JSON on
    dask is numpy's, value and gradient."""
    for name in ("positions as values", "a draw as noise", "a mask of positions"):
        (columns / "made.ad").write_text(f'X = load("X3.npy")\ny = load("y.npy")\nw = [0.3, -0.2, 0.5]\n'
                                         f'{MADE_FROM_THE_ROWS[name]}\n')
        numpy_out = spiread("grad", "made.ad", "--wrt", "w", "--format", "json", cwd=columns)
        dask_out = spiread("grad", "made.ad", "--wrt", "w", "--format", "json", "--backend", "dask",
                           "--chunk-rows", "4", cwd=columns)
        assert numpy_out.returncode == dask_out.returncode == 0, dask_out.stderr
        expected, got = strict_json(numpy_out.stdout), strict_json(dask_out.stdout)
        np.testing.assert_allclose(got["value"]["value"], expected["value"]["value"], rtol=1e-10)
        np.testing.assert_allclose(got["gradients"]["w"]["value"], expected["gradients"]["w"]["value"],
                                   rtol=1e-10, atol=1e-13)


def rows_made(text: str, name: str, n: int) -> str:
    """The program with each inline constructor's first size `n` written as
    `rows(name)` (`arange(7)` -> `arange(rows(X))`) after `name` is bound:
    positions, draws and fills made from the row data's count."""
    lines = text.splitlines()
    bound = next(k for k, line in enumerate(lines) if re.match(rf"(val )?{name} = ", line))
    made = re.compile(rf"\b(arange|ones|zeros|randn|rand|full)\({n}\b")
    return "\n".join(lines[:bound + 1] + [made.sub(rf"\1(rows({name})", line) for line in lines[bound + 1:]])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(programs(max_dim=7))
def test_random_programs_with_constants_made_from_the_rows(tmp_path, program):
    """Generated programs whose constants are made from the row data's
    count (`ones(rows(X))`, `arange(rows(X))`, `randn(rows(X), 2, seed=3)`)
    give numpy's values and gradients or are refused."""
    for name, value in program.inputs.items():
        if np.ndim(value) and np.shape(value)[0] >= 4:
            text = rows_made(program.source, name, np.shape(value)[0])
            random_program_on_row_data(tmp_path, program, text, "", only=name)
