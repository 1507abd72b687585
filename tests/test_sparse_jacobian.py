"""Sparse Jacobians (`jacobian --sparse/--pattern`, `Program.jacobian(sparse=,
pattern=)`) and `check --sparse`: the compressed evaluation — one forward
sweep per colour of the pattern's columns, or one reverse sweep per colour
of its rows — equals the dense Jacobian on random programs' vector and
matrix outputs, in both directions; the sweeps a diagonal, banded, wide or
tall Jacobian takes; the command line end to end (text, JSON and its schema,
the .npz scipy reads, the picture and the spy plot, usage errors); and
`check --sparse` passing, and catching a wrong structure rule."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("scipy")

import scipy.sparse as sp  # noqa: E402

import spiread_cli  # noqa: E402
from conftest import REPO, run, spiread, strict_json  # noqa: E402
from programs import programs  # noqa: E402
from spiread_cli.check import check  # noqa: E402
from spiread_cli.diagnostics import SpireadError  # noqa: E402
from spiread_cli.jacobian import jacobian, jacobian_pattern, sparse_jacobian  # noqa: E402
from spiread_cli.structure import Structure  # noqa: E402

RNG = np.random.default_rng(2024)


def dense_matrix(r, names: list[str]) -> np.ndarray:
    """The dense Jacobian (reverse mode) as one matrix: output entries × the names' entries, each flat."""
    blocks = jacobian(r, names, "reverse").blocks
    rows = int(np.prod(np.shape(r.value)))
    return np.concatenate([blocks[n].reshape(rows, -1) for n in names], axis=1)


def tridiagonal_program(n: int) -> str:
    a = np.diag(np.full(n, 2.0)) + np.diag(np.full(n - 1, -1.0), 1) + np.diag(np.full(n - 1, 0.5), -1)
    return f"A = {a.tolist()}\nx = {RNG.normal(size=n).tolist()}\ny = (A @@ x).tanh * x\n"


BANDED = "x = [0.5, -1.0, 2.0, 0.3, 1.1, -0.4]\ny = x[1:] * x[:-1] + x[1:].sin\n"


# ------------------------------------------------------ sparse = dense


def test_the_sparse_jacobian_equals_the_dense_one_in_both_directions():
    """Random programs' outputs (scalars, vectors, matrices): the dense
    Jacobian's nonzeros lie in the pattern, and the compressed evaluation
    by columns (forward sweeps), by rows (reverse sweeps) and by the
    default choice equals the dense Jacobian."""
    ranks = set()

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(programs(), st.data())
    def check_program(program, data):
        program, wrt = program.draw_jacobian(data)
        output = program.output
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            r = run(program.source, of=output, name="generated.ad")
            expected = dense_matrix(r, wrt)
            assume(np.isfinite(expected).all())
            pattern = jacobian_pattern(r, wrt).pattern.toarray()
            assert not (expected != 0)[~pattern].any(), f"a nonzero outside the pattern of\n{program.source}"
            for mode, colouring in (("forward", "columns"), ("reverse", "rows"), (None, None)):
                found = sparse_jacobian(run(program.source, of=output, name="generated.ad"), wrt, mode)
                assert colouring is None or found.colouring == colouring
                assert found.sweeps <= (expected.shape[1] if found.colouring == "columns" else expected.shape[0])
                np.testing.assert_allclose(found.matrix.toarray(), expected, rtol=1e-10,
                                           atol=1e-12 * (1 + np.abs(expected).max(initial=0)),
                                           err_msg=f"{found.colouring} of ∂{output}/∂{wrt} in\n{program.source}")
        ranks.add(np.ndim(r.value))

    check_program()
    assert ranks >= {1, 2}, ranks  # vector and matrix outputs were met


# ------------------------------------------------------------ the sweeps


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_an_elementwise_map_takes_one_sweep_either_way(mode):
    x = RNG.normal(size=300)
    found = sparse_jacobian(run(f"x = {x.tolist()}\ny = x.tanh * x.exp + x.square\n"), ["x"], mode)
    assert found.sweeps == 1 and found.mode == mode
    derivative = (1 - np.tanh(x) ** 2) * np.exp(x) + np.tanh(x) * np.exp(x) + 2 * x
    np.testing.assert_allclose(found.matrix.toarray(), np.diag(derivative), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("mode", ["forward", "reverse", None])
def test_a_tridiagonal_jacobian_takes_three_sweeps(mode):
    text = tridiagonal_program(40)
    found = sparse_jacobian(run(text), ["x"], mode)
    assert found.sweeps == 3 and found.matrix.nnz == 3 * 40 - 2
    np.testing.assert_allclose(found.matrix.toarray(), dense_matrix(run(text), ["x"]), rtol=1e-13, atol=1e-15)


def test_the_direction_with_fewer_colours_is_chosen():
    """A wide Jacobian (3 outputs on 100 inputs, dense) takes 3 reverse
    sweeps, not 100 forward ones; a tall one (100 outputs on 2 inputs) 2
    forward sweeps, not 100 reverse ones."""
    w = RNG.normal(size=(3, 100))
    wide = run(f"W = {w.tolist()}\nx = {RNG.normal(size=100).tolist()}\ny = (W @@ x).sin\n")
    found = sparse_jacobian(wide, ["x"])
    assert (found.sweeps, found.colouring, found.mode) == (3, "rows", "reverse")
    assert jacobian_pattern(wide, ["x"], "forward").sweeps == 100
    tall = run(f"v = {RNG.normal(size=100).tolist()}\na = 0.5\nb = 2.0\ny = (v * a).exp + b\n")
    found = sparse_jacobian(tall, ["a", "b"])
    assert (found.sweeps, found.colouring, found.mode) == (2, "columns", "forward")
    np.testing.assert_allclose(found.matrix.toarray(), dense_matrix(tall, ["a", "b"]), rtol=1e-13)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_an_output_that_does_not_depend_on_the_value_takes_no_sweep(mode):
    r = run("x = [1.0, 2.0]\nc = [3.0, 4.0, 5.0]\ny = c * 2\n")
    found = sparse_jacobian(r, ["x"], mode)
    assert found.sweeps == 0 and found.matrix.shape == (3, 2) and found.matrix.nnz == 0
    assert jacobian_pattern(r, ["x"], mode).sweeps == 0
    assert "does not depend on `x`" in r.diagnostics.warnings[0].message


def test_a_matrix_output_by_two_values():
    """Rows are the output's entries (flat), columns the values' in order."""
    text = "X = [[1.0, 2.0, -1.0], [0.5, -0.3, 0.2]]\nb = [0.1, 0.2, 0.3]\nY = (X + b).exp * X\n"
    found = sparse_jacobian(run(text), ["X", "b"])
    assert found.matrix.shape == (6, 9) and found.names == ["X", "b"] and found.shapes == [(2, 3), (3,)]
    np.testing.assert_allclose(found.matrix.toarray(), dense_matrix(run(text), ["X", "b"]), rtol=1e-13)


# ------------------------------------------------------------ the command line


def test_jacobian_sparse_json_gives_coo_triples_and_the_npz_scipy_reads(tmp_program, tmp_path):
    path = tmp_program(BANDED)
    expected = dense_matrix(run(BANDED), ["x"])
    out = tmp_path / "J.npz"
    done = spiread("jacobian", path, "--sparse", "--format", "json", "--out", out)
    assert done.returncode == 0, done.stderr
    doc = strict_json(done.stdout)
    assert (doc["sweeps"], doc["colouring"], doc["mode"]) == (2, "columns", "forward")
    block = doc["jacobian"]["x"]
    assert block["shape"] == [5, 6] and block["nonzeros"] == len(block["value"]) == 10
    np.testing.assert_allclose(block["value"], expected[block["row"], block["col"]], rtol=1e-14)
    np.testing.assert_allclose(sp.load_npz(out).toarray(), expected, rtol=1e-14)

    doc = strict_json(spiread("jacobian", path, "--sparse", "--mode", "reverse", "--format", "json").stdout)
    assert (doc["sweeps"], doc["colouring"], doc["mode"]) == (2, "rows", "reverse")
    np.testing.assert_allclose(doc["jacobian"]["x"]["value"], block["value"], rtol=1e-14)


def test_jacobian_sparse_text_and_pattern_picture_and_plot(tmp_program, tmp_path):
    path = tmp_program(BANDED)
    done = spiread("jacobian", path, "--sparse")
    assert done.returncode == 0, done.stderr
    assert "∂y  5×6: 10 nonzeros, from 2 sweeps (columns colouring)\nrows: y (5); columns: x (6)" in done.stdout
    assert "\n1 2  -1.4161468365471424\n" in done.stdout
    done = spiread("jacobian", path, "--pattern", "--plot", tmp_path / "spy.png", "--out", tmp_path / "p.npz")
    assert done.returncode == 0, done.stderr
    assert "5×6: 10 nonzeros (33.3%); --sparse takes 2 sweeps" in done.stdout
    assert "██····\n·██···\n··██··\n···██·\n····██" in done.stdout
    assert (tmp_path / "spy.png").read_bytes()[:4] == b"\x89PNG"
    assert sp.load_npz(tmp_path / "p.npz").nnz == 10
    doc = strict_json(spiread("jacobian", path, "--pattern", "--format", "json").stdout)
    assert (doc["nonzeros"], doc["sweeps"]) == (10, 2) and "value" not in doc["pattern"]["x"]
    assert doc["pattern"]["x"]["row"] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_the_dense_out_still_writes_blocks_by_name(tmp_program, tmp_path):
    done = spiread("jacobian", tmp_program(BANDED), "--out", tmp_path / "J.npz")
    assert done.returncode == 0, done.stderr
    with np.load(tmp_path / "J.npz") as archive:
        np.testing.assert_allclose(archive["x"], dense_matrix(run(BANDED), ["x"]), rtol=1e-14)


@pytest.mark.parametrize("args, message", [
    (["--sparse", "--pattern"], "`--sparse` and `--pattern` are different results"),
    (["--plot", "spy.png"], "`--plot` writes a sparse result"),
    (["--sparse", "--out", "J.csv"], "`--out J.csv`: it writes .npz, not .csv"),
])
def test_sparse_options_that_do_not_fit_are_usage_errors(tmp_program, args, message, tmp_path):
    done = spiread("jacobian", tmp_program(BANDED), *args, cwd=tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert done.stdout == ""


WITHOUT_SCIPY = ("import importlib.util as u; find = u.find_spec; "
                 "u.find_spec = lambda name, *a: None if name == 'scipy' else find(name, *a); "
                 "from spiread_cli.__main__ import main; main()")


@pytest.mark.parametrize("command, args", [("jacobian", ["--sparse"]), ("jacobian", ["--pattern"]),
                                           ("hessian", ["--sparse"]), ("check", ["--sparse"])])
def test_without_scipy_the_sparse_options_say_what_to_install(tmp_program, command, args):
    path = tmp_program("x = [1.0, 2.0]\nf = (x * x).sum\n")
    done = subprocess.run([sys.executable, "-c", WITHOUT_SCIPY, command, str(path), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    assert done.returncode == 2, done.stderr
    assert f"`{args[0]}` needs scipy, which is not installed" in done.stderr
    assert 'pip install ".[sparse]"' in done.stderr


# ------------------------------------------------------------------ Python


def test_program_jacobian_sparse_is_a_scipy_matrix_with_its_sweeps():
    prog = spiread_cli.compile(tridiagonal_program(30))
    j = prog.jacobian(wrt="x", sparse=True)
    assert sp.issparse(j) and j.format == "csr" and j.sweeps == 3
    np.testing.assert_allclose(j.toarray(), prog.jacobian(wrt="x")["x"], rtol=1e-13, atol=1e-15)
    by_rows = prog.jacobian(wrt="x", sparse=True, mode="reverse")
    np.testing.assert_allclose(by_rows.toarray(), j.toarray(), rtol=1e-13, atol=1e-15)
    pattern = prog.jacobian(wrt="x", pattern=True)
    assert pattern.dtype == bool and pattern.nnz == 88 and pattern.sweeps == 3
    with pytest.raises(SpireadError, match="`sparse=True` and `pattern=True`"):
        prog.jacobian(sparse=True, pattern=True)
    with pytest.raises(TypeError, match="sparse='yes': True or False"):
        prog.jacobian(sparse="yes")


# -------------------------------------------------------------- check --sparse


def test_check_sparse_compares_both_directions_with_the_dense_jacobian(tmp_program):
    path = tmp_program(BANDED)
    done = spiread("check", path, "--sparse")
    assert done.returncode == 0, done.stderr
    assert ("sparse Jacobian: --sparse takes 2 sweeps (columns colouring); 10 pattern entries; compressed by "
            "columns and rows, max |sparse − dense| 0.0e+00") in done.stdout
    doc = strict_json(spiread("check", path, "--sparse", "--format", "json").stdout)
    assert doc["ok"] and doc["sparse"]["compared"] == ["columns", "rows"] and doc["sparse"]["missed"] == 0
    assert "sparse" not in strict_json(spiread("check", path, "--format", "json").stdout)


def test_check_sparse_order_two_compares_the_sparse_hessian():
    prog = spiread_cli.load(REPO / "examples" / "chained_rosenbrock.ad")
    result = prog.check(order=2, sparse=True)
    assert result.ok, result
    s = result.report.sparse
    assert (s.what, s.sweeps, s.missed) == ("Hessian", 3, 0) and s.max_abs_error <= 1e-12 * s.scale
    assert "sparse Hessian: --sparse takes 3 sweeps" in result.table


@pytest.mark.parametrize("order, of, colourings", [(1, "residual", 2), (2, "loss", 1)])
def test_check_sparse_reads_the_pattern_once_and_colours_it_once_a_side(order, of, colourings, monkeypatch):
    """`check --sparse` reads the pattern from the tape once and colours it
    once for each compression it compares: the Jacobian's columns and rows,
    the Hessian's symmetric colouring (whose column colouring comes first)."""
    from spiread_cli import sparsity, sparsity_colouring
    readings, coloured = [], []
    monkeypatch.setattr(sparsity.Sweep, "__post_init__", lambda sweep, read=sparsity.Sweep.__post_init__: (
        readings.append(sweep.output), read(sweep))[1])
    colour = sparsity_colouring.colour_columns
    monkeypatch.setattr(sparsity_colouring, "colour_columns", lambda pattern, **told: (
        coloured.append(pattern.shape), colour(pattern, **told))[1])
    x = np.linspace(0.1, 0.3, 30)
    report = check(run((REPO / "examples" / "bratu.ad").read_text(), of=of, sets={"u": x}), ["u"], order=order,
                   sparse=True)
    assert report.ok and report.sparse.sweeps == (3 if order == 1 else 5) and report.sparse.missed == 0
    assert (len(readings), len(coloured)) == (1, colourings)


def test_check_sparse_catches_a_structure_rule_that_misses_entries():
    """sin declared as if its derivative were zero: the pattern of
    x.sin + x[::-1] misses the diagonal, the dense Jacobian has it; the
    compressed evaluation, one colour for the antidiagonal, reads the sum
    of a row's two entries."""
    r = run("x = [0.5, -1.0, 2.0, 0.3]\ny = x.sin + x[::-1]\n")
    node = next(n for n in r.tape.nodes if n.op is not None and n.op.name == "sin")
    node.op = dataclasses.replace(node.op, structure=Structure("elementwise", lambda i, entries: None,
                                                               node.op.structure.second))
    from spiread_cli import sparsity
    readings = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sparsity.Sweep, "__post_init__", lambda sweep, read=sparsity.Sweep.__post_init__: (
            readings.append(sweep.output), read(sweep))[1])
        report = check(r, sparse=True)
    # one reading for the check, one for the search (every node's pattern from it), not one per node
    assert readings == [r.output, r.output]
    assert not report.ok and report.sparse.missed == 4
    assert report.sparse.first_missed == f"∂y[0]/∂x[0] = {np.cos(0.5):g}"
    # One colour: ∂y[i]/∂x[3-i] is read as 1 + cos(x[i]), ∂y[i]/∂x[i] as 0; off by cos(x[i]) either way.
    assert report.sparse.max_abs_error == pytest.approx(np.abs(np.cos([0.5, -1.0, 2.0, 0.3])).max(), rel=1e-12)
    # The op whose rule is wrong is found, and the error points at it: `sin` in `x.sin`, at 2:7.
    assert (report.sparse.rule_node, report.sparse.rule_misses) == (node, "∂sin[0]/∂x[0]")
    failures = {d.message.split(":")[0]: d for d in report.failures(r)}
    missed = failures["the sparsity pattern of the Jacobian misses `∂y[0]/∂x[0] = 0.877583` (and 3 more), nonzero "
                      "at this point"]
    assert (missed.span.line, missed.span.column) == (2, 7)
    assert missed.notes[0] == "the rule of `sin` here misses `∂sin[0]/∂x[0]`"
    assert any(m.startswith("sparse Jacobian check failed at `∂y[") for m in failures), failures


def test_seeds_of_many_colours_are_made_a_block_at_a_time():
    """A Jacobian whose rows are full takes a colour per column: its seeds
    (colours × columns, 11 MB here) are made for each block the sweep pushes,
    not held whole (KEPT_SEEDS_BYTES), and the result is the dense one."""
    import tracemalloc
    n = 1200
    x = np.linspace(-1, 1, n)
    recorded = run(f"x = zeros({n})\ny = hstack(x.sum, (x * x).sum)\n", sets={"x": x})
    tracemalloc.start()
    try:
        got = sparse_jacobian(recorded, ["x"], "forward", budget_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert got.sweeps == n
    np.testing.assert_allclose(got.matrix.toarray(), np.stack([np.ones(n), 2 * x]), rtol=1e-15)
    assert peak < 6 * 2**20, f"{peak / 2**20:.1f} MB held for {n} colours"
