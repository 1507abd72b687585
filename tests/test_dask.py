"""`--backend dask`: the row-chunk backend gives the numpy backend's values
and gradients (rtol 1e-10), with chunks small enough that their boundaries
matter; it refuses, naming the op, what it cannot chunk; it runs on Dask's
threads, a LocalCluster and a cluster started by `dask scheduler`/`dask worker`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from spiread_cli import chunk_tasks, load, train
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program as NumpyProgram  # beside dask_backend.RowChunkRunner
from spiread_cli.set_options import parse_overrides
from spiread_cli.sources import read_source
from spiread_cli.dask_backend import Options, RowChunkRunner
from spiread_cli.diagnostics import Source, SpireadError

from conftest import EXAMPLES, spiread, spiread_command, strict_json
from programs import programs

pytest.importorskip("distributed")

RTOL = 1e-10


@dataclass
class Got:
    value: np.ndarray
    gradients: dict
    diagnostics: object


def numpy_result(source: Source, sets: dict[str, str], base, wrt=None):
    overrides = parse_overrides([f"{k}={v}" for k, v in sets.items()], base)
    run = NumpyProgram.parse(source, base).run(overrides)
    return run_gradients(run, wrt)


def gradients_on(program, wrt=None) -> Got:
    """`grad` on the program's driver run (what every task computes on)."""
    run = program.run_for(wrt)
    result = run_gradients(run, wrt)
    return Got(result.value, result.gradients, run.diagnostics)


def on_dask(source: Source, base, sets=(), of: str | None = None, **options) -> RowChunkRunner:
    """The program on `backend="dask"` as the front door binds it
    (program.Program.dask_runner: `--set NAME=FILE` is row data), for the
    tests that look inside: its chunks, its job, its passes."""
    program = NumpyProgram.parse(source, base, Options(**options))
    return program.dask_runner(program.parse_sets(list(sets)), of)


def dask_result(source: Source, sets: dict[str, str], base, wrt=None, **options):
    program = on_dask(source, base, [f"{k}={v}" for k, v in sets.items()], **options)
    try:
        return program, gradients_on(program, wrt)
    finally:
        program.close()


def assert_same(expected, got, where: str = ""):
    np.testing.assert_allclose(got.value, expected.value, rtol=RTOL, atol=1e-14, err_msg=f"value {where}")
    assert list(got.gradients) == list(expected.gradients)
    for name, g in expected.gradients.items():
        np.testing.assert_allclose(got.gradients[name], g, rtol=RTOL, atol=1e-13, err_msg=f"∂/∂{name} {where}")


def save(folder, name: str, value) -> str:
    path = folder / f"{name}.npy"
    np.save(path, np.asarray(value, dtype=float))
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Row data: n rows of a regression, a 3-class classification and bigrams."""
    folder = tmp_path_factory.mktemp("rows")
    rng = np.random.default_rng(7)
    n = 203  # a prime: no chunk size divides it, so the last chunk is short
    X = rng.standard_normal((n, 4))
    save(folder, "X", X)
    save(folder, "y", X @ [1.0, -2.0, 0.5, 3.0] + 0.1 * rng.standard_normal(n))
    save(folder, "labels", rng.integers(0, 3, n))
    save(folder, "Y", np.eye(3)[rng.integers(0, 3, n)])
    save(folder, "xs", rng.integers(0, 27, n))
    save(folder, "ys", rng.integers(0, 27, n))
    return folder


# ------------------------------------------------------------- the examples


EXAMPLE_DATA = {
    # example: {binding: how to make its rows from the example's own value}
    "least_squares.ad": {"X": None, "y": None},
    "regression.ad": None,
    "softmax_regression.ad": {"X": None, "labels": None},
    "two_layer.ad": {"X": None, "Y": None},
}


@pytest.mark.parametrize("example", ["least_squares.ad", "softmax_regression.ad", "two_layer.ad"])
@pytest.mark.parametrize("chunk_rows", [1, 3])
def test_examples_match_numpy_with_their_data_as_row_files(example, chunk_rows, tmp_path):
    """Each example's data bindings, written to .npy files and passed with
    --set, are chunked; everything else is the example as written."""
    source = read_source(str(EXAMPLES / example))
    # written for its six rows; `rows(X)` is what follows the data's row count
    source = Source(source.name, source.text.replace("arange(6)", "arange(rows(X))"))
    run = NumpyProgram.parse(source).run()
    sets = {name: save(tmp_path, name, run.node(name).value) for name in EXAMPLE_DATA[example]}
    expected = numpy_result(source, sets, EXAMPLES)
    program, got = dask_result(source, sets, EXAMPLES, chunk_rows=chunk_rows)
    assert program.chunked and len(program.bounds) > 1
    assert_same(expected, got, example)


def test_bigram_matches_numpy(bigram_slice, tmp_path):
    """examples/bigram/bigram.ad on its text data (read whole, sliced) and on
    .npy files (read a chunk at a time)."""
    folder = bigram_slice
    source = read_source(str(folder / "bigram.ad"))
    expected = numpy_result(source, {}, folder)
    program, got = dask_result(source, {}, folder, chunk_rows=500)
    assert len(program.bounds) > 2
    assert_same(expected, got, "bigram (text)")
    run = NumpyProgram.parse(source, folder).run()
    sets = {name: save(tmp_path, name, run.node(name).value) for name in ("xs", "ys")}
    program, got = dask_result(source, sets, folder, chunk_rows=333)
    assert_same(expected, got, "bigram (.npy)")


PROGRAMS = {
    "least squares, sum over rows(X)": """
X = load("X.npy")
y = load("y.npy")
w = [0.5, -0.25, 1.0, 0.0]
loss = ((X @@ w - y) ** 2).sum / rows(X) + (w * w).sum * 0.01
loss.backward(w)""",
    "softmax regression, a pick per row": """
X = load("X.npy")
labels = load("labels.npy")
W = randn(4, 3, seed=2) * 0.1
b = zeros(3)
logp = (X @@ W + b).logSoftmaxRows
loss = -logp.arrange(arange(rows(X)), labels).mean
loss.backward(W, b)""",
    "MLP, two totals and a log of the total": """
X = load("X.npy")
Y = load("Y.npy")
W1 = randn(4, 5, seed=1) * 0.5
b1 = zeros(5)
W2 = randn(5, 3, seed=2) * 0.5
h = (X @@ W1 + b1).tanh
p = (h @@ W2).softmaxRows
loss = -(Y * p.log).sum / rows(X) + ((h * h).mean + 1).log
loss.backward(W1, b1, W2)""",
    "bigram from .npy, one-hot and select": """
xs = load("xs.npy")
ys = load("ys.npy")
W = randn(27, 27, seed=0)
probs = (onehot(xs, 27) @@ W).exp.normaliseRowsL1
loss = probs.select(arange(rows(xs)), ys).mapRowsToScalar(ReductionOps.Sum).log.mean * -1.0
loss.backward(W)""",
    "a gather by data positions (W[xs, ys]) and a column": """
xs = load("xs.npy")
ys = load("ys.npy")
X = load("X.npy")
W = randn(27, 27, seed=3)
loss = (W.arrange(xs, ys) * X.col(1)).sum + Matrix.fromColumns(X.col(0), X.col(2)).sigmoid.mean
loss.backward(W)""",
    "a map of a def and of a lambda over each row's value": """
X = load("X.npy")
y = load("y.npy")
w = [0.5, -0.25, 1.0, 0.0]
def huber(r) = (r * r + 1.0).sqrt - 1.0
loss = (X @@ w - y).map(huber).mean + (X @@ w).map(z => z * z * 0.01).sum
loss.backward(w)""",
    "standardised columns: data-only totals used back on every row": """
X = load("X.npy")
y = load("y.npy")
w = [0.5, -0.25, 1.0, 0.0]
m = X.mean
centred = X - m
sd = ((centred * centred).mean + 1e-3).sqrt
loss = (((centred / sd) @@ w - (y - y.mean)) ** 2).mean + m * (w * w).sum
loss.backward(w)""",
}


@pytest.mark.parametrize("name", list(PROGRAMS))
@pytest.mark.parametrize("chunk_rows", [2, 64])
def test_programs_match_numpy(name, chunk_rows, data):
    source = Source(str(data / "prog.ad"), PROGRAMS[name])
    expected = numpy_result(source, {}, data)
    program, got = dask_result(source, {}, data, chunk_rows=chunk_rows)
    assert len(program.bounds) == -(-203 // chunk_rows)
    assert_same(expected, got, name)


def steps_both_ways(source, data, names, starts, **options):
    """Training steps on numpy (`train.tape_steps`) and on row chunks from
    the same values: [(numpy's (loss, gradients, warnings), the chunks')]."""
    run = NumpyProgram.parse(source, data).run()
    expected = train.tape_steps(run, names, False)
    program = on_dask(source, data, **options)
    try:
        got = train.tape_steps(program.run_for(names), names, False)
        return program, [(expected(k, v), got(k, v)) for k, v in enumerate(starts, 1)]
    finally:
        program.close()


def assert_same_step(expected, got, where: str = ""):
    np.testing.assert_allclose(got[0], expected[0], rtol=RTOL, err_msg=f"loss {where}")
    for name, g in expected[1].items():
        np.testing.assert_allclose(got[1][name], g, rtol=RTOL, atol=1e-13, err_msg=f"∂/∂{name} {where}")


@pytest.mark.parametrize("name", list(PROGRAMS))
@pytest.mark.parametrize("template_bytes", [0, 128 << 20])
def test_steps_replay_the_chunks_templates_with_new_values(name, template_bytes, data, monkeypatch):
    """Without --persist a step replays each chunk's fused template (or,
    with no room for templates, records and fuses the chunk again): the
    same losses and gradients as numpy's steps, at values that change from
    step to step."""
    monkeypatch.setattr(chunk_tasks, "TEMPLATE_BYTES", template_bytes)
    source = Source(str(data / "prog.ad"), PROGRAMS[name])
    run = NumpyProgram.parse(source, data).run()
    names = [n for n in run.backward_wrt]
    rng = np.random.default_rng(3)
    starts = [{n: run.node(n).value + 0.1 * k * rng.standard_normal(run.node(n).value.shape) for n in names}
              for k in range(3)]
    kept = []
    monkeypatch.setattr(chunk_tasks.TEMPLATES, "put", lambda job, chunk, put=chunk_tasks.TEMPLATES.put: (
        kept.append(chunk.start), put(job, chunk)))
    program, pairs = steps_both_ways(source, data, names, starts, chunk_rows=16)
    for k, (expected, got) in enumerate(pairs, 1):
        assert_same_step(expected, got, f"step {k} of {name}")
    chunk_count = len(program.bounds)
    # each chunk recorded once when templates fit; every step otherwise
    assert len(kept) == (chunk_count if template_bytes else 3 * chunk_count)
    assert chunk_tasks.TEMPLATES.kept == {} or all(k[0] != program.job.token for k in chunk_tasks.TEMPLATES.kept)


def test_a_chunks_first_step_computes_its_forward_pass_once(data, monkeypatch):
    """A chunk is recorded with the trained values' part deferred and fused
    without computing it: its first share computes that part, once (warnings
    and all), not once in the fusing and again in the share."""
    from spiread_cli import tape as tape_module
    source = Source(str(data / "prog.ad"), PROGRAMS["least squares, sum over rows(X)"])
    rows_of_chunks = []
    compute = tape_module.compute

    def counted(op, args, params):
        if op.name == "matmul" and 3 < args[0].shape[0] <= 16:  # a chunk's rows: not the probe's 2 or 3, nor all 203
            rows_of_chunks.append(args[0].shape[0])
        return compute(op, args, params)
    monkeypatch.setattr(tape_module, "compute", counted)
    program, [(expected, got)] = steps_both_ways(source, data, ["w"], [{"w": np.array([0.5, -0.25, 1.0, 0.0])}],
                                                 chunk_rows=16)
    assert_same_step(expected, got)
    assert sorted(rows_of_chunks) == sorted(stop - start for start, stop in program.bounds)


def test_templates_of_a_program_that_ended_unannounced_give_way(data, monkeypatch):
    """A worker outlives the spiread that used it: templates left by a
    program never closed make room for the next program's."""
    source = Source(str(data / "prog.ad"), PROGRAMS["softmax regression, a pick per row"])
    left = on_dask(source, data, chunk_rows=50)
    gradients_on(left)  # and never closed
    mine = {key: t for key, t in chunk_tasks.TEMPLATES.kept.items() if key[0] == left.job.token}
    assert len(mine) == len(left.bounds)
    monkeypatch.setattr(chunk_tasks, "TEMPLATE_BYTES", chunk_tasks.TEMPLATES.bytes)  # room for one program's
    program, got = dask_result(source, {}, data, chunk_rows=50)
    assert_same(numpy_result(source, {}, data), got)
    assert not any(key[0] == left.job.token for key in chunk_tasks.TEMPLATES.kept)
    left.close()


@pytest.mark.parametrize("array", [
    np.arange(100), np.arange(100.0), np.arange(100)[::-1].copy(), np.tile([0.0, 26.0], 50), np.full(70, -3.0),
    np.arange(70000.0), np.arange(1e6, 1e6 + 70), np.linspace(0, 1, 70), np.r_[np.arange(69.0), -0.0],
    np.r_[np.arange(69.0), np.nan], np.r_[np.arange(69.0), np.inf], np.ones((10, 27)), np.arange(5.0)])
def test_a_template_keeps_its_arrays_exactly(array):
    """Packed positions and data-made arrays come back bit for bit (-0.0,
    nan and non-integers are kept as they are)."""
    back = chunk_tasks.unpack(chunk_tasks.pack(array))
    assert back.dtype == array.dtype and back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_eval_computes_the_totals_of_the_data_and_warns_about_the_data(data):
    """With nothing differentiated every total is computed before the
    steps, levels in turn (`sd` needs `m`); the values not one per row are
    numpy's, and a warning born in the data's part is given, with its rows."""
    text = PROGRAMS["standardised columns: data-only totals used back on every row"] + \
        "\nz = ((X.col(0) * 0).log.clampMin(-1)).mean"
    source = Source(str(data / "p.ad"), text.replace("loss.backward(w)", ""))
    expected = NumpyProgram.parse(source, data).run()
    program = on_dask(source, data, chunk_rows=20)
    try:
        got = program.run_for(None, differentiate=False)
    finally:
        program.close()
    assert set(got.bindings) == {"w", "m", "sd", "loss", "z"}
    for name in got.bindings:
        np.testing.assert_allclose(got.node(name).value, expected.node(name).value, rtol=RTOL, err_msg=name)
    assert [w.span for w in got.diagnostics.warnings] == [w.span for w in expected.diagnostics.warnings]
    assert got.diagnostics.warnings[0].notes == ("in data rows 0–19",)


@pytest.mark.parametrize("denominator, warned", [("x - x.mean + 1", 1), ("x - x.mean", 0)])
def test_a_warning_about_values_computed_from_a_total_is_about_the_total_over_all_rows(denominator, warned,
                                                                                         tmp_path):
    """A chunk is recorded first with its own share of `x.mean`: the warnings
    are those of the total over all rows, as on numpy — none lost (1 / 0
    only with the total) and none made up (1 / 0 only with the chunk's own)."""
    save(tmp_path, "x", np.r_[np.full(50, 1.0), np.full(50, 3.0)])  # the mean is 2; each chunk's its own value
    text = f'x = load("x.npy")\nw = [2.0]\nloss = ((1 / ({denominator})).clampMax(5) * w).sum\nloss.backward(w)'
    source = Source(str(tmp_path / "p.ad"), text)
    expected = numpy_result(source, {}, tmp_path)
    _, got = dask_result(source, {}, tmp_path, chunk_rows=50)
    assert_same(expected, got)
    warnings = NumpyProgram.parse(source, tmp_path).run().diagnostics.warnings
    assert [w.span for w in got.diagnostics.warnings] == [w.span for w in warnings] and len(warnings) == warned
    if warned:
        assert got.diagnostics.warnings[0].message.startswith("`/` gave inf at 50 of 50 entries")
        assert got.diagnostics.warnings[0].notes == ("in data rows 0–49",)


def test_a_program_that_reads_a_trained_value_while_recording_is_recorded_whole(data):
    """A column chosen by a value computed from `w` cannot wait for the fused
    tape: reading it while a chunk is recorded computes it then, from the
    values `w` has, and the steps have numpy's numbers."""
    text = ('X = load("X.npy")\nw = [0.5, -0.25, 1.0, 0.0]\nk = (w * 0).sum + 2\n'
            'loss = ((X @@ w) * X.col(k)).sum\nloss.backward(w)')
    source = Source(str(data / "p.ad"), text)
    program, pairs = steps_both_ways(source, data, ["w"], [{"w": np.array([0.5, -0.25, 1.0, 0.0])},
                                                           {"w": np.array([0.1, 0.2, 0.3, 0.4])}], chunk_rows=10)
    for expected, got in pairs:
        assert_same_step(expected, got)


def test_a_warning_about_the_data_is_given_once_not_every_step(data):
    """Warnings from the data's part of the program come with the first step
    (as on numpy, where it is recorded once), with the rows they come from."""
    text = ('X = load("X.npy")\nw = [0.5, -0.25, 1.0, 0.0]\nz = (X.col(0) * 0).log.clampMin(-1)\n'
            'loss = ((X @@ w) * z).mean\nloss.backward(w)')
    source = Source(str(data / "p.ad"), text)
    w = np.array([0.5, -0.25, 1.0, 0.0])
    program, pairs = steps_both_ways(source, data, ["w"], [{"w": w}, {"w": w * 2}], chunk_rows=50)
    (numpy_first, first), (numpy_second, second) = pairs
    assert_same_step(numpy_first, first)
    recorded = NumpyProgram.parse(source, data).run().diagnostics.warnings  # numpy's train shows these at step 1
    driver = program.run_for(["w"])  # the run train is given: its warnings are the first step's
    assert [w.span for w in driver.diagnostics.warnings] == [w.span for w in recorded] and len(recorded) == 1
    assert driver.diagnostics.warnings[0].message.startswith("`log` gave -inf at 50 of 50 entries")
    assert driver.diagnostics.warnings[0].notes == ("in data rows 0–49",)
    assert first[2] == second[2] == [] == numpy_first[2] == numpy_second[2]


def test_default_chunk_rows_give_every_thread_work(data):
    source = Source(str(data / "prog.ad"), PROGRAMS["least squares, sum over rows(X)"])
    program, got = dask_result(source, {}, data)
    assert 2 <= len(program.bounds) <= 203
    assert_same(numpy_result(source, {}, data), got)


def centred(text: str, name: str) -> str | None:
    """The program with input `name` read as `name_data` and bound to
    `name_data - name_data.mean * 0.5`: a total of the data used back on
    every row. None if `name` is not bound on a line of its own."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(f"{name} = ")), None)
    if start is None:
        return None
    end = next((j for j in range(start + 1, len(lines)) if not lines[j].startswith(" ")), len(lines))
    lines[start] = f"{name}_data = " + lines[start][len(f"{name} = "):]
    lines.insert(end, f"{name} = {name}_data - {name}_data.mean * 0.5")
    return "\n".join(lines)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(programs(max_dim=7))
def test_random_programs_match_numpy_or_are_refused(tmp_path, program):
    """The plan is sound: with any input of 4 or more rows as row data (in
    chunks of 2), a generated program either gives numpy's values and
    gradients or is refused — never other numbers."""
    random_program_on_row_data(tmp_path, program, program.source, "")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(programs(max_dim=7))
def test_random_programs_with_a_total_of_the_data_on_every_row(tmp_path, program):
    """The same with the row data centred by its own mean first (a total no
    trained value moves, computed before the steps)."""
    for name in program.inputs:
        text = centred(program.source, name)
        if text is not None:
            random_program_on_row_data(tmp_path, program, text, "_data", only=name)


def random_program_on_row_data(tmp_path, program, text: str, suffix: str, only: str | None = None):
    source = Source(str(tmp_path / "generated.ad"), text)
    for name, value in program.inputs.items():
        if np.ndim(value) == 0 or np.shape(value)[0] < 4 or only not in (None, name):  # the probes need 4 rows
            continue
        sets = {name + suffix: save(tmp_path, name, value)}
        wrt = [w for w in program.default_wrt() if w != name] or None
        if wrt is None:
            continue
        expected = numpy_result(source, sets, tmp_path, wrt)
        try:
            _, got = dask_result(source, sets, tmp_path, wrt, chunk_rows=2)
        except SpireadError as err:  # by row chunks, nor op by op (tests/test_dask_reach.py)
            assert err.diagnostic.message.startswith("cannot run by row chunks"), err.diagnostic.message
            continue
        assert_same(expected, got, f"with `{name}` as row data in\n{text}")
        # Training steps at moved values: the chunks' templates replayed
        setting = [f"{key}={path}" for key, path in sets.items()]
        run = NumpyProgram.parse(source, tmp_path).run(parse_overrides(setting, tmp_path))
        if all(run.node(w).kind == "input" for w in wrt):
            moved = {w: run.node(w).value * 1.01 for w in wrt}
            try:
                expected_steps = [train.tape_steps(run, wrt, False)(1, {}), train.tape_steps(run, wrt, False)(2, moved)]
            except train.NonFinite:
                continue
            chunked = on_dask(source, tmp_path, setting, chunk_rows=2)
            try:
                step = train.tape_steps(chunked.run_for(wrt), wrt, False)
                got_steps = [step(1, {w: run.node(w).value for w in wrt}), step(2, moved)]
            finally:
                chunked.close()
            for k, (e, g) in enumerate(zip(expected_steps, got_steps), 1):
                assert_same_step(e, g, f"step {k} with `{name}` as row data in\n{text}")


# ------------------------------------------------------------- what is refused


@pytest.mark.parametrize("text, message, column, notes", [
    ("loss = ((X - (X @@ w).mean) @@ w).sum",
     "`-` combines the data rows with the result of `mean`, a total over all rows that changes with `w`, "
     "which is known only after every chunk has run", 12, 1),
    ("loss = (X @@ w).product",
     "`product` makes a product over all rows of the result of `@@`, which changes with `w`: row chunks "
     "differentiate totals that are one number and a sum of the rows' shares (a `.sum` or `.mean`)", 17, 2),
    ("loss = ((X * w).colSum * w).sum",
     "`colSum` makes a sum over all rows, a vector of 4, of the result of `*`, which changes with `w`", 17, 2),
    ("loss = (X @@ w).sum * (1 / size(X))", "`(1 / size(X))` is computed from the data rows (their values or "
     "their number) while the program is recorded, so each chunk would compute its own", 23, 2),
    ("loss = ((X - X.row(0)) @@ w).sum", "`row(0)` uses the rows of `X` together: a chunk holds its own rows "
     "only, and chunks meet only in totals over all the rows", 16, 2),
    ("loss = X @@ w", "the output `loss` has one row per data row (a scalar each); "
                      "row chunks compute totals, such as a `.sum` or `.mean` of it", 10, 1),
])
def test_what_cannot_be_chunked_is_refused_with_the_data_named(text, message, column, notes, data):
    """The plan's refusal names the data (or the value made of them) and
    what about them prevents row chunks, and says what to do."""
    text = 'X = load("X.npy")\nw = [1, 2, 3, 4]\n' + text
    with pytest.raises(SpireadError) as caught:
        program = on_dask(Source(str(data / "prog.ad"), text), data, chunk_rows=10)
        gradients_on(program, ["w"])  # a total that moves with `w`: known to be one when `w` is differentiated
    diagnostic = caught.value.diagnostic
    assert message in diagnostic.message and diagnostic.message.startswith("cannot run by row chunks")
    assert (diagnostic.span.line, diagnostic.span.column) == (3, column)
    assert len(diagnostic.notes) == notes and diagnostic.notes[-1] == "use --backend numpy (everything in memory)"


def test_println_of_row_data_is_refused_and_of_parameters_shown(data):
    text = 'X = load("X.npy")\nw = [1, 2, 3, 4]\nprintln(w)\nloss = (X @@ w).sum\n'
    program = on_dask(Source(str(data / "p.ad"), text), data, chunk_rows=10)
    assert program.run.printed == NumpyProgram.parse(Source(str(data / "p.ad"), text), data).run().printed
    with pytest.raises(SpireadError, match="cannot run by row chunks: `println` shows a value computed from the data"):
        on_dask(Source(str(data / "p.ad"), text + "println(X)\n"), data, chunk_rows=10)


def test_gradient_by_row_data_is_refused(data):
    program = on_dask(Source(str(data / "prog.ad"), PROGRAMS["least squares, sum over rows(X)"]), data, chunk_rows=10)
    with pytest.raises(SpireadError, match="`X` has one row per data row, so its gradient is as large as the data"):
        gradients_on(program, ["X"])


WHERE_IT_STARTS = "`arrange` depends on where in the data a chunk starts"


@pytest.mark.parametrize("positions, chunk_rows, message", [
    (np.arange(200.0), 50, "on data rows 1–3, index (3, 0) is out of range for `(X * w)`, which is 3×4"),
    (np.zeros(200), 1, WHERE_IT_STARTS),  # 0 in every chunk of one row, yet row 0 of all the rows
    (np.tile(np.r_[0, np.arange(49.0)], 4), 50, "`arrange` picks from rows by position"),  # passes the probes
])
def test_picks_by_global_position_are_refused(positions, chunk_rows, message, data, tmp_path):
    """Row positions read from a file index all the data rows, not a chunk's."""
    save(tmp_path, "X", np.load(data / "X.npy")[:200])
    save(tmp_path, "at", positions)
    save(tmp_path, "cols", np.zeros(200))
    text = 'X = load("X.npy")\nat = load("at.npy")\ncols = load("cols.npy")\nw = [1, 2, 3, 4]\n' \
           'loss = (X * w).arrange(at, cols).sum'
    try:
        program = on_dask(Source(str(tmp_path / "p.ad"), text), tmp_path, chunk_rows=chunk_rows)
        gradients_on(program, ["w"])
        refusal = program.refusal  # the plan refused: the program ran op by op
    except SpireadError as err:
        refusal = err
    assert refusal.diagnostic.message.startswith("cannot run by row chunks: " + message)


def test_nonfinite_warning_keeps_its_source_location_and_rows(data):
    text = 'X = load("X.npy")\nw = [1, 0, 0, 0]\nloss = (X @@ w).log.sum\nloss.backward(w)'
    source = Source(str(data / "prog.ad"), text)
    _, got = dask_result(source, {}, data, chunk_rows=50)
    overrides = {}
    run = NumpyProgram.parse(source, data).run(overrides)
    assert np.isnan(got.value) and np.isnan(run.value)
    first, numpy_first = got.diagnostics.warnings[0], run.diagnostics.warnings[0]
    assert first.span == numpy_first.span and (first.span.line, first.span.column) == (3, 17)
    assert first.message.startswith("`log` gave nan at ") and numpy_first.message.startswith("`log` gave nan at ")
    assert first.notes == ("in data rows 0–49",)


# ------------------------------------------------------------- clusters


@pytest.mark.cluster
def test_local_cluster_gives_the_same_numbers_with_and_without_persist(data):
    """…and its scheduler is told from its dashboard by the first bytes each sends."""
    from urllib.parse import urlparse
    from distributed import LocalCluster
    from spiread_cli.dask_common import not_a_scheduler
    source = Source(str(data / "prog.ad"), PROGRAMS["MLP, two totals and a log of the total"])
    expected = numpy_result(source, {}, data)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address="127.0.0.1:0") as cluster:
        assert not_a_scheduler(cluster.scheduler_address) is None
        dashboard = f"tcp://127.0.0.1:{urlparse(cluster.dashboard_link).port}"
        assert not_a_scheduler(dashboard, greeting_seconds=0.3) == "it looks like HTTP — the dashboard?"
        for persist in (False, True):
            _, got = dask_result(source, {}, data, chunk_rows=40, scheduler=cluster.scheduler_address,
                                 persist=persist)
            assert_same(expected, got, f"LocalCluster, persist={persist}")


@pytest.mark.cluster
@pytest.mark.parametrize("persist", [False, True])
def test_what_a_stopped_worker_held_outside_a_graph_is_sent_again(persist, data):
    """Dask computes a stopped worker's tasks again itself, but not what was
    sent to the workers outside a graph: the job (`client.scatter`, of which
    its memory manager keeps one copy) and, under --persist, the chunks'
    recordings. Lost while the scheduler is there (a cancelled future, as
    when the worker holding the one copy is killed), they are sent and made
    again: the same totals, not a lost scheduler (the cluster-fault test
    below kills that worker)."""
    from distributed import LocalCluster
    source = Source(str(data / "prog.ad"), PROGRAMS["MLP, two totals and a log of the total"])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        program = on_dask(source, data, scheduler=cluster.scheduler_address, chunk_rows=40, persist=persist)
        try:
            program.run_for(None)
            before = program.compute(None, True)
            lost = [program.scattered[1], *(program.kept or [])]
            program.client.cancel(lost)
            after = program.compute(None, True)
            assert program.scattered[1] not in lost  # the job was sent again
        finally:
            program.close()
    assert len(after.totals) == len(before.totals) > 0
    for got, expected in zip(after.totals, before.totals):
        np.testing.assert_array_equal(got, expected)


# ------------------------------------------------------------- the command line


@pytest.mark.parametrize("persist", [[], ["--persist"]])
def test_cli_grad_and_train_match_numpy(persist, data):
    """`grad` and `train` end to end: the same JSON numbers on both backends."""
    (data / "sm.ad").write_text(PROGRAMS["softmax regression, a pick per row"])
    for command in (["grad", "sm.ad"], ["train", "sm.ad", "--wrt", "W", "--wrt", "b", "--steps", "3", "--lr", "0.5"]):
        numpy_out = spiread(*command, "--format", "json", cwd=data)
        dask_out = spiread(*command, "--format", "json", "--backend", "dask", "--chunk-rows", "50", *persist,
                           cwd=data)
        assert numpy_out.returncode == 0 and dask_out.returncode == 0, dask_out.stderr
        expected, got = strict_json(numpy_out.stdout), strict_json(dask_out.stdout)
        for key in ("gradients", "values"):
            for name, entry in expected.get(key, {}).items():
                np.testing.assert_allclose(got[key][name]["value"], entry["value"], rtol=RTOL, atol=1e-13)
        np.testing.assert_allclose(got.get("loss", got.get("value", {}).get("value")),
                                   expected.get("loss", expected.get("value", {}).get("value")), rtol=RTOL)


def test_cli_eval_shows_the_values_that_are_not_row_data(data):
    (data / "ls.ad").write_text(PROGRAMS["least squares, sum over rows(X)"])
    out = spiread("eval", "ls.ad", "--backend", "dask", "--chunk-rows", "64", "--format", "json", cwd=data)
    assert out.returncode == 0, out.stderr
    values = strict_json(out.stdout)["values"]
    assert set(values) == {"w", "loss"}
    expected = strict_json(spiread("eval", "ls.ad", "--format", "json", cwd=data).stdout)["values"]["loss"]
    np.testing.assert_allclose(values["loss"]["value"], expected["value"], rtol=RTOL)


@pytest.mark.parametrize("args, message", [
    (["grad", "--chunk-rows", "5"], "spiread: error: `--chunk-rows` is an option of `--backend dask`"),
    (["grad", "--persist"], "spiread: error: `--persist` is an option of `--backend dask`"),
    (["grad", "--backend", "dask", "--chunk-rows", "0"], "Error: Invalid value for '--chunk-rows': 0 is not in the "
                                                         "range x>=1."),
])
def test_cli_backend_usage_errors(args, message, data):
    (data / "ls.ad").write_text(PROGRAMS["least squares, sum over rows(X)"])
    out = spiread(args[0], "ls.ad", *args[1:], cwd=data)
    assert out.returncode == 2
    assert message in out.stderr.splitlines()


def test_cli_refusal_points_at_the_op(data):
    (data / "prod.ad").write_text('X = load("X.npy")\nw = [1, 2, 3, 4]\nloss = (X @@ w).product + w.sum\n')
    out = spiread("grad", "prod.ad", "--backend", "dask", cwd=data)
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == ("prod.ad:3:17: error: cannot run by row chunks: `product` makes a product "
                                          "over all rows of the result of `@@`, which changes with `w`: row chunks "
                                          "differentiate totals that are one number and a sum of the rows' shares "
                                          "(a `.sum` or `.mean`)")
    assert "= note: differentiate by values the total does not depend on (`--wrt NAME`)" in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Bounds for what a loaded machine may take (never met when all is well):
# starting a cluster, and a training run to its end.
CLUSTER_SECONDS = 300
TRAINING_SECONDS = 900


class CommandStartedCluster:
    """`dask scheduler` and two `dask worker` processes started by command on
    127.0.0.1 (their output in a log file); stopped by their ids whatever
    happens, each killed if it does not stop."""

    def __init__(self, tmp_path):
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.logs = open(tmp_path / "cluster.log", "w")
        self.scheduler = self.start("distributed.cli.dask_scheduler", "--port", self.address.rsplit(":", 1)[1])
        self.workers = [self.start("distributed.cli.dask_worker", self.address, "--nthreads", "1", "--no-nanny")
                        for _ in range(2)]
        with self.client() as client:
            client.wait_for_workers(2, timeout=CLUSTER_SECONDS)

    def client(self):
        from distributed import Client
        return Client(self.address, timeout=f"{CLUSTER_SECONDS}s")

    def holder_of_the_job(self) -> subprocess.Popen:
        """A worker that holds the job spiread sent to the workers (with
        `client.scatter`; Dask keeps one copy of it once nothing waits for
        it): killing it loses data Dask cannot compute again."""
        def holders(dask_scheduler):
            return {ws.pid for ts in dask_scheduler.tasks.values() if str(ts.key).startswith("Job-")
                    for ws in ts.who_has or ()}
        with self.client() as client:
            pids = client.run_on_scheduler(holders)
        assert pids, "the job is on no worker: is the training under way?"
        return next(w for w in self.workers if w.pid in pids)

    def start(self, module: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", module, *args, "--host", "127.0.0.1", "--no-dashboard"],
                                stdout=self.logs, stderr=self.logs)

    def stop(self):
        processes = [self.scheduler, *self.workers]
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.logs.close()


def train_until_killed(args: list[str], cwd, victim: Callable[[], subprocess.Popen], progress_lines: int, env=None):
    """Run `spiread train`, SIGKILL `victim()` once `progress_lines` progress
    lines are on stderr (training is under way), and wait for the end:
    (exit code, stdout, stderr)."""
    command = spiread_command() + [str(a) for a in args]
    training = subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, **(env or {})})
    try:
        seen = [training.stderr.readline() for _ in range(progress_lines)]
        assert all(line.startswith("step ") for line in seen), seen
        assert training.poll() is None, "training ended before the kill: give it more steps"
        killed = victim()
        killed.kill()
        killed.wait()
        out, err = training.communicate(timeout=TRAINING_SECONDS)
    finally:
        if training.poll() is None:
            training.kill()
            training.communicate()
    return training.returncode, out, "".join(seen) + err


@pytest.mark.cluster
def test_command_started_cluster_and_its_faults(data, tmp_path):
    """On a cluster started by `dask scheduler`/`dask worker`: `train
    --scheduler` gives numpy's numbers, also when a worker is killed in the
    middle (Dask runs its tasks again elsewhere). A scheduler killed in the
    middle is an error of the environment: exit 1, a short message naming
    it, none of Dask's log lines, and the values of the last finished step
    saved (here without --save: in the temporary folder, its path named)."""
    (data / "mlp.ad").write_text(PROGRAMS["MLP, two totals and a log of the total"])
    train = ["train", "mlp.ad", "--wrt", "W1", "--wrt", "W2", "--lr", "0.1", "--format", "json"]
    on_cluster = ["--chunk-rows", "20"]

    def numpy_values(steps: int) -> dict:
        return strict_json(spiread(*train, "--steps", str(steps), cwd=data).stdout)

    def assert_values(got: dict, expected: dict):
        for name in ("W1", "W2"):
            np.testing.assert_allclose(got[name], expected["values"][name]["value"], rtol=RTOL, err_msg=name)

    cluster = CommandStartedCluster(tmp_path)
    try:
        on_cluster += ["--backend", "dask", "--scheduler", cluster.address]
        code, out, err = train_until_killed([*train, "--steps", "12", *on_cluster], data, cluster.holder_of_the_job, 2)
        assert code == 0, err
        got, expected = strict_json(out), numpy_values(12)
        np.testing.assert_allclose(got["loss"], expected["loss"], rtol=RTOL)
        assert_values({n: v["value"] for n, v in got["values"].items()}, expected)
        # The Python API's way to the cluster: the same numbers, also keeping the chunks' recordings there.
        with load(str(data / "mlp.ad"), backend="dask", scheduler=cluster.address, chunk_rows=20,
                  persist=True) as program:
            trained = program.train(wrt=["W1", "W2"], steps=12, lr=0.1, progress=False)
        np.testing.assert_allclose(trained.losses, expected["loss"], rtol=RTOL)
        assert_values(trained.values, expected)

        rescue = tmp_path / "rescue"
        rescue.mkdir()
        code, out, err = train_until_killed([*train, "--steps", "100000", *on_cluster], data, lambda: cluster.scheduler, 1,
                                            env={"TMPDIR": str(rescue)})
    finally:
        cluster.stop()
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if not line.startswith("step ")]
    assert lines[0] == f"spiread: error: `--scheduler {cluster.address}`: the connection to the Dask scheduler was lost"
    assert len(lines) == 4 and all(line.startswith("  = note: ") for line in lines[1:]), err
    steps = int(re.fullmatch(r"  = note: the values kept are those step (\d+) ended with \(its loss was .*\)",
                             lines[2]).group(1))
    [saved] = rescue.glob("mlp-*.npz")
    assert lines[3] == f"  = note: saved W1, W2 to {saved}"
    with np.load(saved) as values:
        assert_values(dict(values), numpy_values(steps))


JET_PROGRAMS = {
    "a Jet beside the data": 'y = x * x + Jet.h[Double](1) * 3.0\nprintln(y)\nloss = (X @@ [1.0, 2.0, 3.0]).mean',
}
JETS_OF_TOTALS = {
    "a Jet times a total": "m = (X @@ [1.0, 2.0, 3.0]).mean\nloss = m * x",
    "a Jet times a total of a Gram matrix": "loss = (X.T @@ X).sum * x.tej",
}


@pytest.mark.parametrize("name", list(JET_PROGRAMS))
@pytest.mark.parametrize("form", ["text", "json"])
def test_eval_shows_jets_and_printed_lines_as_numpy_does(name, form, tmp_path):
    """`eval --backend dask` prints what the numpy backend prints: a Jet with
    its infinitesimal parts, `"jet"` in the JSON, the `println` lines. The
    rows are whole numbers, so every sum is exact in any order."""
    np.save(tmp_path / "X.npy", np.arange(600.0).reshape(200, 3) % 7)
    (tmp_path / "p.ad").write_text('given jd: JetDim = JetDim(2)\nX = load("X.npy")\n'
                                   'x = Jet(2.0) + Jet.h[Double](0)\n' + JET_PROGRAMS[name])
    expected = spiread("eval", "p.ad", "--format", form, cwd=tmp_path)
    got = spiread("eval", "p.ad", "--format", form, "--backend", "dask", "--chunk-rows", "50", cwd=tmp_path)
    assert got.returncode == expected.returncode == 0, got.stderr
    shown = expected.stdout
    if form == "json":  # the rows of X are never gathered on Dask
        document = json.loads(shown)
        del document["values"]["X"]
        shown = json.dumps(document) + "\n"
    else:
        shown = "\n".join(line for line in shown.splitlines() if not line.startswith(("X ", "   "))) + "\n"
    assert "h)" in got.stdout if form == "text" else '"jet": [' in got.stdout
    assert got.stdout == shown


@pytest.mark.parametrize("name", list(JETS_OF_TOTALS))
def test_a_jet_of_a_total_over_the_rows_is_refused_saying_why(name, tmp_path):
    """A Jet is computed while the program is recorded, so a Jet made of the
    data rows would be each chunk's own: refused, at the Jet, saying so."""
    np.save(tmp_path / "X.npy", np.arange(600.0).reshape(200, 3) % 7)
    (tmp_path / "p.ad").write_text('given jd: JetDim = JetDim(2)\nX = load("X.npy")\n'
                                   'x = Jet(2.0) + Jet.h[Double](0)\n' + JET_PROGRAMS.get(name, JETS_OF_TOTALS[name]))
    assert spiread("eval", "p.ad", cwd=tmp_path).returncode == 0
    got = spiread("eval", "p.ad", "--backend", "dask", "--chunk-rows", "50", cwd=tmp_path)
    assert got.returncode == 1
    assert re.match(r"p.ad:\d+:\d+: error: cannot run by row chunks: `.*` is computed from the data rows", got.stderr)
    assert "= note: a Jet is computed while the program is recorded: make it of values that are not data rows" \
        in got.stderr


def test_unreachable_scheduler_is_an_error(data):
    (data / "ls.ad").write_text(PROGRAMS["least squares, sum over rows(X)"])
    address = f"tcp://127.0.0.1:{free_port()}"  # nothing listens there
    out = spiread("grad", "ls.ad", "--backend", "dask", "--scheduler", address, cwd=data)
    assert out.returncode == 1
    assert out.stderr.startswith(f"spiread: error: `--scheduler {address}`: cannot reach a Dask scheduler there")


class Listener:
    """A TCP server on 127.0.0.1 that is not a Dask scheduler: it answers each
    connection with `reply(connection)` in a thread of this process."""

    def __init__(self, reply):
        import threading
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.address = f"tcp://127.0.0.1:{self.socket.getsockname()[1]}"
        self.reply, self.open = reply, []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:  # closed
                return
            self.open.append(connection)
            self.reply(connection)

    def close(self):
        self.socket.close()
        for connection in self.open:
            connection.close()


def http_reply(connection):
    """What a web server does (the dashboard): wait for a request, answer it."""
    connection.settimeout(5)
    try:
        if connection.recv(4096).startswith(b"GET "):
            connection.sendall(b"HTTP/1.1 302 Found\r\nLocation: /status\r\nContent-Length: 0\r\n\r\n")
    except OSError:
        pass


SERVERS = {
    "a web server": (http_reply, "it looks like HTTP — the dashboard?"),
    "one that says nothing": (lambda connection: None, "it said nothing in 2 s"),
    "one that greets in another protocol": (lambda c: c.sendall(b"SSH-2.0-OpenSSH_9.6\r\n"),
                                            "it sent `SSH-2.0-OpenSSH_9.6··`"),
    "one that hangs up": (lambda connection: connection.close(), "it closed the connection without a word"),
}


@pytest.mark.parametrize("server", list(SERVERS))
def test_what_answers_where_a_scheduler_was_expected_is_named(server):
    """The handshake is bounded: what listens is found out in `seconds`,
    however it behaves."""
    from spiread_cli.dask_common import not_a_scheduler
    reply, said = SERVERS[server]
    listener = Listener(reply)
    try:
        assert not_a_scheduler(listener.address, seconds=2.0, greeting_seconds=0.3) == said
    finally:
        listener.close()


def test_nothing_listening_is_left_to_the_client():
    from spiread_cli.dask_common import not_a_scheduler
    assert not_a_scheduler(f"tcp://127.0.0.1:{free_port()}") is None


def test_a_web_server_given_as_the_scheduler_is_an_error_saying_so(data):
    """`--scheduler` at the dashboard's port: exit 1 in seconds (distributed's
    own handshake waits forever), naming what answered."""
    (data / "ls.ad").write_text(PROGRAMS["least squares, sum over rows(X)"])
    listener = Listener(http_reply)
    try:
        out = spiread("grad", "ls.ad", "--backend", "dask", "--scheduler", listener.address, cwd=data)
    finally:
        listener.close()
    assert out.returncode == 1
    assert out.stderr.splitlines()[0] == (f"spiread: error: `--scheduler {listener.address}`: answered, but not as "
                                          "a Dask scheduler (it looks like HTTP — the dashboard?)")
    assert "its dashboard (port 8787) is a web page" in out.stderr and "Traceback" not in out.stderr


def test_numpy_backend_never_imports_dask():
    """The extra is imported only when `--backend dask` is used (start-up time)."""
    code = ("import sys\nfrom spiread_cli.cli import app\n"
            "try:\n    app(['grad', 'examples/least_squares.ad'])\nexcept SystemExit:\n    pass\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', 'zarr')], 'imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=EXAMPLES.parent, timeout=60)
    assert out.returncode == 0, out.stderr


def assert_numbers_close(got, expected, where: str) -> None:
    """Two JSON documents' numbers (rtol 1e-9), everything else equal."""
    if isinstance(expected, dict):
        assert got.keys() == expected.keys(), where
        for key in expected:
            assert_numbers_close(got[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, (list, float)) and not isinstance(expected, bool):
        np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(expected, dtype=float), rtol=1e-9,
                                   atol=1e-13, err_msg=where)
    else:
        assert got == expected, where


def test_explain_hessian_and_newton_run_over_the_chunks(data):
    """What once ran on numpy only runs on the driver's run, whose totals
    over the chunks are ops: `grad --explain` (the driver's sweep, the
    total's rule among its steps), `hessian` (and `--hvp`), `check --order 2`
    and `train --optimizer newton`, with numpy's numbers."""
    (data / "sm.ad").write_text(PROGRAMS["softmax regression, a pick per row"])
    dask = ["--backend", "dask", "--chunk-rows", "50", "--format", "json"]
    for command in (["grad", "sm.ad", "--explain"], ["hessian", "sm.ad"], ["hessian", "sm.ad", "--hvp", "b=[1,2,3]"],
                    ["check", "sm.ad", "--order", "2"],
                    ["train", "sm.ad", "--wrt", "W,b", "--optimizer", "newton", "--steps", "3"]):
        expected = strict_json(spiread(*command, "--format", "json", cwd=data).stdout)
        out = spiread(*command, *dask, cwd=data)
        assert out.returncode == 0, out.stderr
        got = strict_json(out.stdout)
        for key in ("value", "gradients", "values", "hessian", "hvp"):
            if key in expected:
                assert_numbers_close(got[key], expected[key], key)
        if command[0] == "grad":
            assert "rowsTotal" in {step["op"] for step in got["explain"]}
        if command[0] == "check":
            assert got["ok"] and expected["ok"] and got["results"].keys() == expected["results"].keys()
        if command[0] == "train":
            np.testing.assert_allclose(got["loss"], expected["loss"], rtol=1e-9)


def _row_layouts(case):
    """Every way test_ops.py's case could hold data rows: a row count m (a
    size of one of its operands' axes) and, per operand, the axis of size m
    its rows run along or None; positions held one per row are 0, 1, …, m-1
    (what a chunk checks). Yields (m, row_axes, operands, params, row_params)."""
    import itertools
    xs = [np.asarray(x, dtype=float) for x in case.xs]
    for m in sorted({n for x in xs for n in x.shape if n >= 2}):
        row_params = [k for k, v in case.params.items() if isinstance(v, np.ndarray) and v.ndim == 1 and len(v) == m]
        options = [[None] + [k for k, n in enumerate(x.shape) if n == m] for x in xs]
        for row_axes in itertools.product(*options):
            params = dict(case.params)
            if "rows" in row_params and row_axes[0] == 0:  # picks within each data row
                params["rows"] = np.arange(m)
            if any(a is not None for a in row_axes) or row_params:
                yield m, list(row_axes), xs, params, row_params


def test_what_an_op_says_of_its_rows_holds_for_its_values():
    """`Op.on_rows` (the planner's reason to run an op by row chunks): for
    every case of the op table (tests/test_ops.py) and every way it could
    hold data rows where the op says entry k of its value along an axis
    depends only on data row k of the operands, moving one data row of
    those operands moves that entry alone."""
    from spiread_cli.ops import OPS
    from test_ops import CASES
    said = set()
    for case in CASES:
        op = OPS[case.op]
        if op.on_rows is None:
            continue
        for m, row_axes, xs, params, row_params in _row_layouts(case):
            own = op.on_rows(row_axes, [x.ndim for x in xs], row_params, **params)
            out = np.asarray(op.impl(*xs, **params))
            if own is None or out.ndim == 0 or out.shape[own % out.ndim] != m:
                continue  # the planner asks only of a value with one entry per data row along that axis
            own %= out.ndim
            moved = [x.copy() for x in xs]
            for x, axis in zip(moved, row_axes):
                if axis is not None:
                    np.moveaxis(x, axis, 0)[m // 2] += 0.375
            after = np.asarray(op.impl(*moved, **params))
            others = [k for k in range(m) if k != m // 2]
            np.testing.assert_array_equal(np.take(after, others, own), np.take(out, others, own),
                                          err_msg=f"{case.id} {row_axes}")
            said.add(case.op)
    assert {"rowSum", "rowMean", "rowProduct", "matmul", "transpose", "index", "stack", "concat",
            "arrange"} <= said


def test_what_an_op_says_of_its_totals_holds_for_its_values():
    """`Op.across_rows` (the planner's reason to total an op over row
    chunks): for every case of the op table and every way it could hold
    data rows where the op says it totals them, its values over two chunks
    of the rows, combined as its `Across` says, are its value over all."""
    from spiread_cli.ops import OPS
    from test_ops import CASES
    said = set()
    for case in CASES:
        op = OPS[case.op]
        if op.across_rows is None:
            continue
        for m, row_axes, xs, params, row_params in _row_layouts(case):
            across = op.across_rows(row_axes, [x.ndim for x in xs], **params)
            if across is None or row_params:
                continue
            whole = np.asarray(op.impl(*xs, **params))
            h = m // 2
            parts = [np.asarray(op.impl(*[x if a is None else np.take(x, range(start, stop), a)
                                          for x, a in zip(xs, row_axes)], **params)) * (
                         (stop - start) / m if across.weighted else 1.0) for start, stop in ((0, h), (h, m))]
            np.testing.assert_allclose(across.combine(*parts), whole, rtol=1e-12, atol=1e-12,
                                       err_msg=f"{case.id} {row_axes}")
            said.add(case.op)
    words = ("sum", "mean", "product", "max", "min", "logSumExp")
    assert {*words, *(f"col{w[0].upper()}{w[1:]}" for w in words), "matmul", "rowSum"} <= said


# ------------------------------------------------------------- passes over the chunks


def counted_passes(program) -> list:
    """The Dask computes a program makes from now on (each one pass over
    the chunks), by the task each pass runs on every chunk."""
    passes = []
    run = program._run

    def counted(graph, shares, *args):
        passes.append(sorted({task[0].__name__ for task in graph.values()
                              if isinstance(task, tuple) and callable(task[0]) and task[0] is not chunk_tasks.added
                              and task[0] is not chunk_tasks.add_shares}))
        return run(graph, shares, *args)
    program._run = counted
    return passes


def test_cotangents_of_a_recorded_gradient_take_one_pass_for_the_batch(data):
    """A reverse sweep carrying a batch of cotangents through a total's
    recorded gradient (the reverse-mode Jacobian of ∂f/∂W: rows of the
    Hessian) makes one pass over the chunks for the whole batch and every
    value the total depends on, not one per cotangent and value; its
    numbers are numpy's Hessian's."""
    from spiread_cli.jacobian import jacobian_reverse
    from spiread_cli.second import SecondOrder, hessian
    source = Source(str(data / "prog.ad"), PROGRAMS["softmax regression, a pick per row"])
    expected = hessian(NumpyProgram.parse(source, data).run(), ["W", "b"]).blocks
    program = on_dask(source, data, chunk_rows=50)
    try:
        run = program.run_for(["W", "b"])
        recorded = SecondOrder(run, ["W", "b"])
        passes = counted_passes(program)
        ids = [run.bindings["W"], run.bindings["b"]]
        rows = jacobian_reverse(run.tape, recorded.grad_ids[ids[0]], ids)
    finally:
        program.close()
    for name, i in zip(["W", "b"], ids):
        np.testing.assert_allclose(rows[i], expected["W"][name], rtol=1e-9, atol=1e-13, err_msg=name)
    assert len(passes) == 1, passes


@pytest.mark.parametrize("persist", [False, True])
def test_derivative_passes_replay_the_chunks_recording(persist, data, monkeypatch):
    """Hessian-vector products, tangents of the gradient (a dense Hessian)
    and the Hessian's pattern run on the chunks' fused tapes as the steps
    do, from this process's templates or the chunks kept by --persist:
    every chunk is recorded and fused once, by the first pass, however many
    passes follow; the numbers are numpy's."""
    from spiread_cli import second
    source = Source(str(data / "prog.ad"), PROGRAMS["softmax regression, a pick per row"])
    numpy_run = NumpyProgram.parse(source, data).run()
    from spiread_cli import dask_backend
    recorded = []

    def record(job, start, stop, *args, record=chunk_tasks.record_chunk, **kwargs):
        recorded.append(start)
        return record(job, start, stop, *args, **kwargs)
    monkeypatch.setattr(chunk_tasks, "record_chunk", record)
    monkeypatch.setattr(dask_backend, "record_chunk", record)  # --persist's first pass
    program = on_dask(source, data, chunk_rows=50, persist=persist)
    v = {"W": np.linspace(-1, 1, 12).reshape(4, 3), "b": np.array([0.5, 0.0, -1.0])}
    try:
        run = program.run_for(["W", "b"])
        got = (second.hessian(run, ["W", "b"]).blocks, second.hvp(run, v, ["W", "b"]).products,
               second.hessian_pattern(run, ["W", "b"]).pattern.toarray())
    finally:
        program.close()
    expected = (second.hessian(numpy_run, ["W", "b"]).blocks, second.hvp(numpy_run, v, ["W", "b"]).products,
                second.hessian_pattern(numpy_run, ["W", "b"]).pattern.toarray())
    for a in ("W", "b"):
        np.testing.assert_allclose(got[1][a], expected[1][a], rtol=1e-9, atol=1e-13, err_msg=f"H·v {a}")
        for b in ("W", "b"):
            np.testing.assert_allclose(got[0][a][b], expected[0][a][b], rtol=1e-9, atol=1e-13, err_msg=f"H {a} {b}")
    np.testing.assert_array_equal(got[2], expected[2])
    assert sorted(recorded) == [start for start, _ in program.bounds]


@pytest.mark.parametrize("tail, passes", [
    ("", 3),  # a pass per level of totals (m, sd, loss), the last one's warnings final
    ("\nr = (X.col(0) * loss * 0 - 1).log", 4),  # a chunk's value computed from the last level's total: one more
])
def test_eval_records_each_chunk_once_per_pass_that_needs_it(tail, passes, data, monkeypatch):
    """With nothing differentiated, every total is computed before the steps,
    a pass per level; the last pass's recording gives the chunks' warnings
    too, unless a value a chunk holds is computed from that level's totals
    (then one more pass, with every total known). Values and warnings are
    numpy's either way."""
    text = PROGRAMS["standardised columns: data-only totals used back on every row"] + \
        "\nz = ((X.col(0) * 0).log.clampMin(-1)).mean" + tail
    source = Source(str(data / "p.ad"), text.replace("loss.backward(w)", ""))
    expected = NumpyProgram.parse(source, data).run(None, "z")
    recorded = []
    monkeypatch.setattr(chunk_tasks, "recorded", lambda job, start, *args, record=chunk_tasks.recorded: (
        recorded.append(start), record(job, start, *args))[1])
    program = on_dask(source, data, of="z", chunk_rows=50)
    try:
        got = program.run_for(None, differentiate=False)
    finally:
        program.close()
    for name in got.bindings:
        np.testing.assert_allclose(got.node(name).value, expected.node(name).value, rtol=RTOL, err_msg=name)
    assert [w.span for w in got.diagnostics.warnings] == [w.span for w in expected.diagnostics.warnings]
    assert [w.notes for w in got.diagnostics.warnings] == [("in data rows 0–49",)] * (1 + bool(tail))
    assert sorted(recorded) == sorted(start for start, _ in program.bounds for _ in range(passes))


def test_a_hessian_vector_product_is_one_pass_whatever_the_values_with_directions(data):
    """An HVP with directions on W and on b: the sweep back from
    h = Σ⟨∂f/∂x, v_x⟩ meets the total's recorded gradient as one node
    holding every operand's part (recorded once, Emitter.once), so it makes
    one pass over the chunks, not one per value with a direction; numpy's
    products."""
    from spiread_cli.second import SecondOrder, hvp
    source = Source(str(data / "prog.ad"), PROGRAMS["softmax regression, a pick per row"])
    v = {"W": np.linspace(-1, 1, 12).reshape(4, 3), "b": np.array([0.5, 0.0, -1.0])}
    expected = hvp(NumpyProgram.parse(source, data).run(), v, ["W", "b"]).products
    program = on_dask(source, data, chunk_rows=50)
    try:
        recorded = SecondOrder(program.run_for(["W", "b"]), ["W", "b"])
        passes = counted_passes(program)
        got = recorded.hvp(v)
    finally:
        program.close()
    for name in v:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-13, err_msg=name)
    assert passes == [["gradient_tangents_of_chunk"]]


def test_program_run_on_dask_takes_a_path_as_row_data_and_the_rest_as_the_calls_do(data):
    """`Program.run` on `backend="dask"`: a path (pathlib) is row data, a list a binding as the
    Python calls take it; the driver's gradients are numpy's with the rows as arrays."""
    source = read_source(str(EXAMPLES / "least_squares.ad"))
    source = Source(source.name, source.text.replace("arange(6)", "arange(rows(X))"))
    w = [0.25, -0.5]
    expected = run_gradients(NumpyProgram.parse(source, EXAMPLES).run(
        {"X": np.load(data / "X.npy")[:, :2], "y": np.load(data / "y.npy"), "w": w}), ["w"])
    save(data, "X2", np.load(data / "X.npy")[:, :2])
    program = NumpyProgram.parse(source, EXAMPLES, Options(chunk_rows=50))
    try:
        run = program.run({"X": data / "X2.npy", "y": data / "y.npy", "w": w}, wrt=["w"])
        got = run_gradients(run, ["w"])
    finally:
        program.close()
    assert_same(expected, Got(got.value, got.gradients, run.diagnostics), "Program.run on dask")
