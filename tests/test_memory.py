"""Memory: what training keeps of a run once its fused copy exists
(docs/performance.md, "Memory"); second derivatives, forward mode's batched
tangents, Jets and explanations sized against the limit (SPIREAD_MAX_BYTES)
before they are allocated, and refused with the located limit message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import spiread_cli
from spiread_cli import optim, second, train
from spiread_cli.program import Program
from spiread_cli.diagnostics import SpireadError
from spiread_cli.explain import Summarised, explain
from spiread_cli.forward import TANGENT_BUDGET_BYTES, ForwardSweep, jacobian_forward

from conftest import REPO, run, spiread


def test_spending_the_run_lets_the_unfused_values_go_and_trains_the_same(bigram_slice):
    program = str(bigram_slice / "bigram.ad")
    kept_run, spent_run = Program.open(program).run(), Program.open(program).run()
    rows = spent_run.node("xs").value.shape[0]
    # The one-hot matrix and the unfused intermediates: one row per data row.
    unfused = [n.id for n in spent_run.tape.nodes if n.value.ndim == 2 and n.value.shape[0] == rows]
    assert len(unfused) >= 4
    kept = train.train(kept_run, ["W"], 5, optim.SGD(10.0))
    spent = train.train(spent_run, ["W"], 5, optim.SGD(10.0), spend_run=True)
    assert spent.status == kept.status == "done"
    assert spent.losses == kept.losses
    np.testing.assert_array_equal(spent.values["W"], kept.values["W"])
    assert [spent_run.tape.nodes[i].value for i in unfused] == [None] * len(unfused)
    assert all(kept_run.tape.nodes[i].value is not None for i in unfused), "without spend_run the run stays whole"
    # What is left: the names, the trained value the steps started from, and the output's value.
    assert spent_run.value == kept_run.value and spent_run.node("W").value is not None


def test_training_holds_at_most_the_one_hot_matrix_of_the_rows(tmp_path):
    """Peak memory of setting up and taking a step: a run recorded for
    training computes only its fused tape, so the largest thing ever held is
    the one-hot matrix the program builds (which the rewrite reads to find
    its rows), not the five arrays of that size the program as written makes."""
    rows, width = 20_000, 27
    rng = np.random.default_rng(0)
    np.save(tmp_path / "xs.npy", rng.integers(0, width, rows).astype(float))
    np.save(tmp_path / "ys.npy", rng.integers(0, width, rows).astype(float))
    (tmp_path / "bigram.ad").write_text(
        (REPO / "examples" / "bigram" / "bigram.ad").read_text().replace(".txt", ".npy"))
    program = spiread_cli.load(tmp_path / "bigram.ad")
    one_array = rows * width * 8
    tracemalloc.start()
    try:
        program.train(wrt="W", steps=2, lr=1.0, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1.6 * one_array, f"{peak / one_array:.2f} arrays of {rows}×{width}"
    tracemalloc.start()
    try:
        Program.open(str(tmp_path / "bigram.ad")).run()  # computed whole, for comparison
        whole = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert whole > 4 * one_array


# ------------------------------------------ second order within the limit

LIMIT = 100_000  # bytes: each program's values fit, what its derivatives would hold does not
TOO_BIG = "more than the limit of 97.7 KB"
BIG_HESSIAN = "w = randn(2000)\nloss = (w.tanh * w).sum\n"
FORWARD = "w = randn(10000)\nloss = (w.tanh * w).sum\n"


@pytest.mark.parametrize("program, args, at, says", [
    pytest.param(BIG_HESSIAN, ["hessian", "--wrt", "w"], "1:1",
                 ["the Hessian block ∂²loss/∂w∂w would be 2000×2000 (30.5 MB)", "`--hvp NAME=V`"], id="hessian-block"),
    pytest.param("u = randn(80)\nv = randn(80)\nloss = (u.sum * v).sum\n", ["hessian", "--wrt", "u", "--wrt", "v"],
                 "3:20", ["the Hessian of `loss` with respect to `u`, `v` would be 160×160 (200.0 KB)"],
                 id="hessian-whole"),
    pytest.param("A = randn(30, 100)\nw = randn(100)\nloss = (A @@ w).tanh.sum\n", ["hessian"], "1:1",
                 ["the Hessian block ∂²loss/∂A∂A would be 30×100×30×100 (68.7 MB)",
                  "differentiates by every input `loss` depends on: `A`, `w`;",
                  "choose with `--wrt NAME`", "`--wrt w` would fit"], id="hessian-default-wrt"),
    pytest.param("A = randn(30, 100)\nw = randn(100)\nloss = (A @@ w).tanh.sum\ng = loss.backward(A, w)\n", ["hessian"],
                 "1:1", ["differentiates by the names `.backward(...)` gives: `A`, `w`;", "`--wrt w` would fit"],
                 id="hessian-backward-wrt"),
    pytest.param(FORWARD, ["grad", "--mode", "forward"], "2:21",
                 ["forward mode would hold 50000 tangent entries at once along each direction (390.6 KB)"],
                 id="forward-tangent-batch"),
    pytest.param(FORWARD, ["grad", "--mode", "forward", "--explain"], "2:21",
                 ["forward mode would hold 50000 tangent entries at once"], id="explain-forward"),
    pytest.param("given jd: JetDim = JetDim(2000000000)\nx = Jet(2.0) + Jet.h(0)\ny = x * x\n", ["eval"], "1:20",
                 ["the infinitesimal parts of a Jet of `JetDim(2000000000)` would be a vector of 2000000000 (14.9 GB)"],
                 id="jet-dimension"),
])
def test_what_second_order_would_hold_is_refused_where_it_is_asked_for(tmp_program, program, args, at, says):
    path = tmp_program(program)
    done = spiread(*args, str(path), env={"SPIREAD_MAX_BYTES": str(LIMIT)})
    assert done.returncode == 1 and done.stdout == "", done.stderr
    assert done.stderr.startswith(f"{path}:{at}: error: "), done.stderr
    for phrase in [*says, TOO_BIG, "set SPIREAD_MAX_BYTES (in bytes) to raise the limit"]:
        assert phrase in done.stderr, done.stderr
    assert "out of memory" not in done.stderr and "internal error" not in done.stderr


def test_a_hessian_over_the_limit_is_refused_before_its_gradient_is_recorded(monkeypatch):
    """From the Python API too, at the --wrt name, with the keyword arguments named."""
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(LIMIT))
    r = run(BIG_HESSIAN)
    recorded = len(r.tape.nodes)
    with pytest.raises(SpireadError, match="∂²loss/∂w∂w would be 2000×2000") as err:
        second.hessian(r)
    assert (err.value.span.line, err.value.span.column) == (1, 1)
    assert len(r.tape.nodes) == recorded, "refused before the gradient is recorded"
    with pytest.raises(SpireadError) as err:
        spiread_cli.compile(BIG_HESSIAN).hessian()
    assert any("`wrt=` in Python" in note for note in err.value.notes)


def test_hvp_within_the_limit_where_the_hessian_is_not(tmp_program, tmp_path):
    """H·v never forms H: under the limit that refuses H it is computed, and
    right (w·tanh(w) summed has a diagonal Hessian, 2 sech² w (1 − w tanh w)).
    A direction over the limit is refused before it is read."""
    path = tmp_program(BIG_HESSIAN)
    v = np.random.default_rng(0).standard_normal(2000)
    np.save(tmp_path / "v.npy", v)
    done = spiread("hessian", str(path), "--hvp", f"w={tmp_path / 'v.npy'}", "--format", "json",
                   env={"SPIREAD_MAX_BYTES": str(LIMIT)})
    assert done.returncode == 0, done.stderr
    product = np.array(json.loads(done.stdout)["hvp"]["w"]["value"])
    w = run(BIG_HESSIAN).node("w").value
    sech2 = 1 / np.cosh(w) ** 2
    np.testing.assert_allclose(product, 2 * sech2 * (1 - w * np.tanh(w)) * v, rtol=1e-10, atol=1e-12)
    np.save(tmp_path / "big.npy", np.ones(20_000))
    done = spiread("hessian", str(path), "--hvp", f"w={tmp_path / 'big.npy'}", env={"SPIREAD_MAX_BYTES": str(LIMIT)})
    assert done.returncode == 1 and "its array would be a vector of 20000 (156.2 KB)" in done.stderr
    assert TOO_BIG in done.stderr


def test_a_jacobian_over_the_limit_is_refused_at_its_output(monkeypatch):
    r = run("w = randn(100)\ny = w.tanh\n")
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "50000")
    with pytest.raises(SpireadError, match=r"the Jacobian of `y` with respect to `w` would be 100×100 \(78.1 KB\), "
                                           r"more than the limit of 48.8 KB") as err:
        jacobian_forward(r.tape, r.output, [r.bindings["w"]])
    assert err.value.span == r.tape.nodes[r.output].span
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "80000")  # exactly the Jacobian: allowed
    jacobian = jacobian_forward(r.tape, r.output, [r.bindings["w"]])[r.bindings["w"]]
    np.testing.assert_allclose(jacobian, np.diag(1 - np.tanh(r.node("w").value) ** 2), rtol=1e-14)


def test_forward_tangent_batches_shrink_to_the_limit(monkeypatch):
    r = run(FORWARD.replace("10000", "300"))
    sweep = ForwardSweep(r.tape, r.output, [r.bindings["w"]])
    per = sweep.bytes_per_direction
    assert sweep.block_size(300, TANGENT_BUDGET_BYTES, 7 * per) == 7
    assert sweep.block_size(300, 3 * per, 7 * per) == 3
    with pytest.raises(SpireadError, match="along each direction"):
        sweep.block_size(300, TANGENT_BUDGET_BYTES, per - 1)


def test_forward_explain_keeps_a_summary_per_node_not_the_sweeps_tangents(monkeypatch):
    """`grad --explain --mode forward` over 900 directions in many blocks:
    one step per node, each tangent its shape and norm over all directions
    (against the tangents worked out by hand), and the peak memory well
    under one node's tangents over all directions (6.5 MB), which the
    explanation used to hold for every node."""
    text = "w = randn(30, 30, seed=3)\nloss = (w.tanh @@ w).sum\n"
    limit = 400_000
    monkeypatch.setenv("SPIREAD_MAX_BYTES", str(limit))
    r = run(text)
    sweep = ForwardSweep(r.tape, r.output, [r.bindings["w"]])
    assert sweep.block_size(900, TANGENT_BUDGET_BYTES) < 900 / 10, "many blocks"
    tracemalloc.start()
    try:
        result, explanation = explain(r, ["w"], "forward")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 900 * 900 * 8 / 3, f"{peak} bytes"
    w = r.node("w").value
    t = np.tanh(w)
    eye = np.eye(30)
    # ∂(tanh(w) @@ w)/∂w_ij = (1 − t²)_ij e_i w_j + t_:i e_jᵀ, for each entry (i, j)
    d_matmul = (np.einsum("ij,ai,jb->ijab", 1 - t * t, eye, w) + np.einsum("ai,jb->ijab", t, eye)).reshape(900, 30, 30)
    expected = [((900, 30, 30), 30.0), ((900, 30, 30), np.linalg.norm(1 - t * t)),
                ((900, 30, 30), np.linalg.norm(d_matmul)), ((900,), np.linalg.norm(d_matmul.sum(axis=(1, 2))))]
    assert [step.node for step in explanation.steps] == [0, 1, 2, 3]
    for step, (shape, norm) in zip(explanation.steps, expected):
        assert isinstance(step.value, Summarised) and step.value.shape == shape
        assert step.value.norm == pytest.approx(norm, rel=1e-12)
    np.testing.assert_allclose(result.gradients["w"], d_matmul.sum(axis=(1, 2)).reshape(30, 30), rtol=1e-12)


FAULTS = """
import resource, numpy as np
from spiread_cli.forward import ForwardSweep
from spiread_cli.program import Program
from spiread_cli.diagnostics import Source
from pathlib import Path

def faults():
    # A sweep's pattern: a few 2 MB arrays alive at once, then all dropped, again and again.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        live = [np.ones(1 << 18) for _ in range(4)]
        del live
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults()
first = faults()
run = Program.parse(Source("p.ad", "x = [1.0, 2.0]\\ny = x.exp.sum"), Path(".")).run()
ForwardSweep(run.tape, run.output, [run.bindings["x"]])
print(first, faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_sweeps_let_freed_memory_serve_the_next_arrays_instead_of_fresh_pages():
    """A sweep batching directions makes and drops arrays of a few sizes op
    after op; with glibc's defaults each new one above its thresholds comes
    as fresh pages, each a page fault. Once a sweep has started they are
    served from the memory freed before (limits.reuse_freed_memory)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr
    before, after = map(int, done.stdout.split())
    assert before > 20 * 4 * 100, "the default faults at least a hundred pages an array (else this test proves nothing)"
    assert after < before / 10
    # The user's own malloc settings are left alone.
    env["MALLOC_TRIM_THRESHOLD_"] = str(128 << 10)
    done = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, env=env, cwd=REPO)
    before, after = map(int, done.stdout.split())
    assert after > before / 2


def test_a_reading_of_the_memory_available_serves_only_small_requests_for_a_moment(monkeypatch):
    """Without SPIREAD_MAX_BYTES the limit is half the memory available, from
    /proc/meminfo (here simulated, the clock moved by hand). A reading is used
    again within MEMINFO_SECONDS for requests of at most 1/SMALL_SHARE of it
    (a kept call's sweep sized by it read it at every call, 30 µs); a larger
    request reads it again, so a second 4 GB result within the moment is
    checked against what the first left (rev-c: it was accepted against the
    old reading), and so is a large request after small ones."""
    import io
    from spiread_cli import limits
    monkeypatch.delenv("SPIREAD_MAX_BYTES", raising=False)
    gb, available, reads, now = 1 << 30, [10 << 30], [], [1000.0]

    def meminfo(path, *args, **kwargs):
        assert path == "/proc/meminfo"
        reads.append(now[0])
        return io.StringIO(f"MemTotal: 16000000 kB\nMemAvailable: {available[0] // 1024} kB\n")
    monkeypatch.setattr(limits, "open", meminfo, raising=False)
    monkeypatch.setattr(limits.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(limits, "_reading", (-float("inf"), 0))
    small = 10 * gb // limits.SMALL_SHARE
    for _ in range(3):  # small requests within the moment: one reading
        limits.check_bytes(small, "a small result", None)
    assert len(reads) == 1
    limits.check_bytes(4 * gb, "a 4 GB result", None)  # large: read again, 10 GB available, limit 5 GB
    assert len(reads) == 2
    available[0] -= 4 * gb  # the first result is held: 6 GB available, limit 3 GB
    with pytest.raises(SpireadError, match="a 4 GB result"):
        limits.check_bytes(4 * gb, "a 4 GB result", None)
    assert len(reads) == 3
    now[0] += limits.MEMINFO_SECONDS  # a moment later even a small request reads again
    limits.check_bytes(16 << 20, "a small result", None)
    assert len(reads) == 4
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "1000")
    assert limits.max_bytes(1) == 1000 and len(reads) == 4  # a configured limit is asked every time
