"""`spiread train`: optimizers against hand-computed updates, the spireAD
regression, the makemore bigram model on real data, saves that survive Ctrl-C,
and stopping at the first non-finite loss or gradient."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import EXAMPLES, NAMES, REPO, run, spiread, strict_json
from spiread_cli import optim, train
from spiread_cli.program import Program
from spiread_cli.diagnostics import SpireadError

needs_names = pytest.mark.skipif(not NAMES.exists(), reason=f"{NAMES} is not here (it is not ours to ship)")
REGRESSION = EXAMPLES / "regression.ad"


# ------------------------------------------------------------ optimizers


def test_sgd_step_is_w_minus_lr_g():
    sgd = optim.SGD(lr=0.1)
    new = sgd.step({"w": np.array([1.0, 2.0])}, {"w": np.array([0.5, -1.0])})
    np.testing.assert_allclose(new["w"], [0.95, 2.1], rtol=0, atol=1e-15)


def test_sgd_momentum_accumulates_velocity():
    sgd = optim.SGD(lr=0.1, momentum=0.9)
    w = {"w": np.array([1.0])}
    w = sgd.step(w, {"w": np.array([1.0])})     # v = 1            w = 1 - 0.1
    w = sgd.step(w, {"w": np.array([-2.0])})    # v = 0.9 - 2      w = 0.9 + 0.11
    w = sgd.step(w, {"w": np.array([0.5])})     # v = -0.99 + 0.5  w = 1.01 + 0.049
    np.testing.assert_allclose(w["w"], [1.059], rtol=1e-14)


def test_adam_first_steps_by_hand():
    adam = optim.Adam(lr=0.1)
    assert (adam.beta1, adam.beta2, adam.eps) == (0.9, 0.999, 1e-8)
    assert optim.Adam().lr == 0.001
    w = adam.step({"w": np.array([1.0])}, {"w": np.array([1.0])})
    # t = 1: m̂ = g and v̂ = g², so the step is lr · g / (|g| + eps).
    np.testing.assert_allclose(w["w"], [1.0 - 0.1 / (1 + 1e-8)], rtol=1e-15)
    w = adam.step(w, {"w": np.array([-2.0])})
    # t = 2: m = 0.09 − 0.2 = −0.11, v = 0.000999 + 0.004 = 0.004999.
    m_hat, v_hat = -0.11 / (1 - 0.9 ** 2), 0.004999 / (1 - 0.999 ** 2)
    np.testing.assert_allclose(w["w"], [1.0 - 0.1 / (1 + 1e-8) - 0.1 * m_hat / (np.sqrt(v_hat) + 1e-8)], rtol=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=6), st.floats(1e-4, 1.0))
def test_adam_first_step_moves_each_entry_by_lr_at_most(g, lr):
    g = np.array(g)
    new = optim.Adam(lr=lr).step({"w": np.zeros_like(g)}, {"w": g})["w"]
    np.testing.assert_allclose(new, -lr * g / (np.abs(g) + 1e-8), rtol=1e-12, atol=1e-300)


def test_bad_optimizer_settings_are_usage_errors():
    for kwargs in ({"lr": -1.0}, {"lr": float("nan")}, {"momentum": 1.0}):
        with pytest.raises(SpireadError) as err:
            optim.make_optimizer("sgd", **kwargs)
        assert err.value.exit_code == 2
    with pytest.raises(SpireadError, match="momentum"):
        optim.make_optimizer("adam", momentum=0.5)
    assert optim.make_optimizer("adam").lr == 0.001 and optim.make_optimizer("sgd").lr == 0.01


# ------------------------------------------------------------ the regression


def test_regression_matches_spiread_closed_form():
    """The gradient of w2 is 0 throughout (the data is symmetric), and w1 shrinks
    by 1 − lr·(2/5)·Σx1² = 0.96 a step: after 100 steps, 0.96¹⁰⁰ ≈ 0.01687."""
    result = train.train(Program.open(str(REGRESSION)).run(), ["weights"], 100, optim.SGD(0.01))
    assert result.status == "done" and len(result.losses) == 100
    np.testing.assert_allclose(result.values["weights"], [[0.96 ** 100], [1.0]], rtol=1e-12)
    assert result.values["weights"][0, 0] == pytest.approx(0.01687, abs=1e-5)
    # The loss of a step is computed before its update: 10/5, then 9.216/5.
    assert result.losses[:2] == pytest.approx([2.0, 1.8432], rel=1e-14)
    np.testing.assert_allclose(result.losses, 2.0 * 0.96 ** (2 * np.arange(100)), rtol=1e-12)


def test_momentum_and_adam_also_fit_the_regression():
    for optimizer in (optim.SGD(0.01, momentum=0.9), optim.Adam(0.05)):
        result = train.train(Program.open(str(REGRESSION)).run(), ["weights"], 300, optimizer)
        assert result.losses[-1] < 1e-3 * result.losses[0], optimizer.describe()


def test_cli_json_document():
    done = spiread("train", REGRESSION, "--wrt", "weights", "--steps", "100", "--lr", "0.01", "--format", "json")
    assert done.returncode == 0, done.stderr
    document = strict_json(done.stdout)
    assert set(document) == {"schema", "file", "output", "steps", "loss", "saved", "values", "warnings"}
    assert document["output"] == "loss" and document["steps"] == 100 and document["saved"] is None
    assert document["warnings"] == []
    np.testing.assert_allclose(document["values"]["weights"]["value"], [[0.96 ** 100], [1.0]], rtol=1e-12)
    assert document["loss"][0] == 2.0 and document["loss"][-1] == pytest.approx(2.0 * 0.96 ** 198, rel=1e-12)
    assert "step 100/100" in done.stderr  # not a terminal: plain progress lines


def test_save_then_set_continues_exactly(tmp_path):
    """10 steps, saved, then 10 more from the save, saved over it, equal 20
    in one go: `--set FILE.npz` binds each array by its name, and `--save`
    may replace the archive training started from. `--save b` writes b.npz,
    as numpy.savez names it, which `--set` then reads back."""
    first, log = tmp_path / "a.npz", tmp_path / "loss.csv"
    common = [REGRESSION, "--wrt", "weights", "--lr", "0.01", "--format", "json"]
    assert spiread("train", *common, "--steps", "10", "--save", first).returncode == 0
    with np.load(first, allow_pickle=False) as archive:
        assert list(archive.keys()) == ["weights"]
    done = spiread("train", *common, "--steps", "10", "--set", first, "--save", first, "--log", log)
    assert done.returncode == 0, done.stderr
    assert strict_json(done.stdout)["saved"] == str(first)
    direct = train.train(Program.open(str(REGRESSION)).run(), ["weights"], 20, optim.SGD(0.01))
    with np.load(first) as archive:
        np.testing.assert_allclose(archive["weights"], direct.values["weights"], rtol=1e-14)
    rows = log.read_text().splitlines()
    assert rows[0] == "step,loss" and len(rows) == 11
    assert float(rows[1].split(",")[1]) == pytest.approx(direct.losses[10], rel=1e-14)
    copied = spiread("train", *common, "--steps", "0", "--set", f"weights={first}", "--save", tmp_path / "b")
    assert strict_json(copied.stdout)["saved"] == str(tmp_path / "b.npz")
    program = Program.open(str(REGRESSION))
    again = program.run(program.parse_sets([f"weights={tmp_path / 'b.npz'}"]))
    with np.load(first) as archive:
        np.testing.assert_array_equal(again.node("weights").value, archive["weights"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "loss.csv"]  # no temp files left
    assert first.stat().st_mode & 0o777 == 0o666 & ~current_umask()  # not the temporary file's 0600


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_text_summary_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "loss.png"
    done = spiread("train", REGRESSION, "--wrt", "weights", "--steps", "20", "--lr", "0.01", "--plot", plot)
    assert done.returncode == 0, done.stderr
    assert "20 steps" in done.stdout and "loss: 2 → " in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, words", [
    (["--wrt", "errors"], "computed from other values"),
    (["--wrt", "wieghts"], "did you mean `weights`"),
    ([], "--wrt"),
    (["--wrt", "weights", "--save", "w.npy"], "it writes .npz, not .npy"),
    (["--wrt", "weights", "--log", "no/such/folder/loss.csv"], "does not exist"),
    (["--wrt", "weights", "--optimizer", "rmsprop"], "rmsprop"),
])
def test_usage_errors(args, words):
    done = spiread("train", REGRESSION, *args)
    assert done.returncode == 2
    assert words in done.stderr


# ------------------------------------------------------------ non-finite stops


def test_divergence_stops_at_the_op_and_keeps_the_last_finite_values(tmp_path):
    """At lr 1 every update overshoots (w1 is multiplied by −3 a step), until the squares overflow."""
    save = tmp_path / "w.npz"
    done = spiread("train", REGRESSION, "--wrt", "weights", "--steps", "1000", "--lr", "1", "--save", save,
                   "--log", tmp_path / "loss.csv")
    assert done.returncode == 1
    step = int(done.stderr.split("training stopped at step ")[1].split(":")[0])
    assert step > 100
    assert f"{REGRESSION.relative_to(REPO)}:" in done.stderr or str(REGRESSION) in done.stderr
    assert "the loss is inf; `*` gave inf" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    losses = [float(line.split(",")[1]) for line in (tmp_path / "loss.csv").read_text().splitlines()[1:]]
    assert len(losses) == step - 1 and np.isfinite(losses).all()
    with np.load(save) as archive:
        kept = archive["weights"]
    # What was saved is what gave the last finite loss.
    program = Program.open(str(REGRESSION))
    again = program.run(program.parse_sets([f"weights={save}"]))
    assert float(again.tape.nodes[again.output].value) == losses[-1]
    assert np.isfinite(kept).all()


def test_nonfinite_gradient_stops_before_the_update():
    program = run("w = [0, 1]\nloss = w.sqrt.sum\n")
    result = train.train(program, ["w"], 5, optim.SGD(0.1))
    assert result.status == "stopped" and result.losses == [1.0]
    np.testing.assert_array_equal(result.values["w"], [0, 1])
    message = result.error.diagnostic.message
    assert "step 1" in message and "gradient of `w`" in message and "`sqrt`" in message
    assert result.error.diagnostic.span.line == 2


def test_nonfinite_at_the_start_names_the_op():
    program = run("w = [1, 2]\nloss = (w - 1).log.sum\n")
    result = train.train(program, ["w"], 5, optim.SGD(0.1))
    assert result.status == "stopped" and result.losses == []
    assert "step 1: the loss is -inf; `log` gave -inf at 1 of 2 entries, first at [0]" in result.error.diagnostic.message
    np.testing.assert_array_equal(result.values["w"], [1, 2])


def test_strict_stops_at_a_warning_even_with_a_finite_loss():
    # exp overflows in an entry the loss does not see (the selection drops it).
    text = "w = [[1, 800]]\nloss = w.exp.select([0], [0]).sum\n"
    assert train.train(run(text), ["w"], 3, optim.SGD(0.1)).status == "done"
    result = train.train(run(text), ["w"], 3, optim.SGD(0.1), strict=True)
    assert result.status == "stopped" and "`exp` gave inf" in result.error.diagnostic.message


# ------------------------------------------------------------ Ctrl-C


def test_a_requested_stop_ends_after_the_step_in_progress():
    calls = []
    result = train.train(Program.open(str(REGRESSION)).run(), ["weights"], 100, optim.SGD(0.01),
                         on_step=lambda step, loss: calls.append(step), stop_requested=lambda: len(calls) >= 3)
    assert result.status == "interrupted" and calls == [1, 2, 3] and len(result.losses) == 3
    np.testing.assert_allclose(result.values["weights"], [[0.96 ** 3], [1.0]], rtol=1e-14)
    before = train.train(Program.open(str(REGRESSION)).run(), ["weights"], 100, optim.SGD(0.01), stop_requested=lambda: True)
    assert before.status == "interrupted" and before.losses == []
    np.testing.assert_array_equal(before.values["weights"], [[1.0], [1.0]])


# ------------------------------------------------------------ bigram on real data


def bigram_reference(xs: np.ndarray, ys: np.ndarray, W: np.ndarray, steps: int, lr: float) -> list[float]:
    """The same model by hand in numpy: softmax of one-hot rows of W."""
    losses = []
    for _ in range(steps):
        logits = W[xs]
        probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        losses.append(-np.log(probs[np.arange(len(xs)), ys]).mean())
        dlogits = probs.copy()
        dlogits[np.arange(len(xs)), ys] -= 1
        grad = np.zeros_like(W)
        np.add.at(grad, xs, dlogits / len(xs))
        W = W - lr * grad
    return losses


def test_bigram_slice_trains_like_numpy_by_hand(bigram_slice):
    xs = np.loadtxt(bigram_slice / "xs.txt", dtype=int)
    ys = np.loadtxt(bigram_slice / "ys.txt", dtype=int)
    assert (bigram_slice / "vocab.txt").read_text().split() == list(".abcdefghijklmnopqrstuvwxyz")
    result = train.train(Program.open(str(bigram_slice / "bigram.ad")).run(), ["W"], 8, optim.SGD(50))
    expected = bigram_reference(xs, ys, np.random.default_rng(0).standard_normal((27, 27)), 8, 50)
    np.testing.assert_allclose(result.losses, expected, rtol=1e-10)
    assert result.losses[-1] < result.losses[0]


@needs_names
def test_bigram_full_data_first_loss_and_count(tmp_path):
    prepared = subprocess.run([sys.executable, str(EXAMPLES / "bigram" / "prepare.py"), str(NAMES),
                               "--out", str(tmp_path)], capture_output=True, text=True)
    assert "32033 words, 228146 bigrams, 27 characters" in prepared.stdout
    shutil.copy(EXAMPLES / "bigram" / "bigram.ad", tmp_path)
    program = Program.open(str(tmp_path / "bigram.ad")).run()
    assert float(program.tape.nodes[program.output].value) == pytest.approx(3.708, abs=5e-4)
