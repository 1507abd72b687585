"""Deferred evaluation (`Tape.defer`; `Interpreter.run(evaluate=False)`): an
op recorded while the tape defers is computed when its value is first read,
with every deferred op before it, so a run gives the values and the warnings
(in their order) of one that computed each op as it was recorded; and
`train`, which records without computing and then fuses, computes only the
fused tape (docs/performance.md, "Memory")."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import spiread_cli
from spiread_cli import optim, train
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli import tape as tape_module
from spiread_cli.diagnostics import Source
from spiread_cli.interpreter import Interpreter
from spiread_cli.tape_nodes import Node
from spiread_cli import syntax

from conftest import EXAMPLES, REPO, run
from programs import programs

# Ops warn in the order an eager run gives, a constant fold's warning among
# them (the fold is computed at once, the ops around it when read).
WARNING_ORDER = """\
x = [1.0, -1.0, 0.0]
a = x.log
b = [-2.0].log
c = (x * 0.0).log
loss = (a + c).sum
"""


def eager(text: str, name: str = "test.ad"):
    """The reference: a tape that computes every op as it is recorded."""
    source = Source(name, text)
    interpreter = Interpreter(source, base_dir=REPO)
    return interpreter._run(syntax.parse(source), None)


def values_of(r) -> list:
    return [n.value for n in r.tape.nodes]


def assert_same_run(got, expected):
    assert len(got.tape.nodes) == len(expected.tape.nodes)
    for a, b in zip(values_of(got), values_of(expected)):
        np.testing.assert_array_equal(a, b)
    assert got.diagnostics.warnings == expected.diagnostics.warnings


def test_warnings_come_in_an_eager_runs_order():
    expected = eager(WARNING_ORDER)
    assert [w.span.line for w in expected.diagnostics.warnings] == [2, 3, 4]  # line 5 adds what is born there
    assert_same_run(run(WARNING_ORDER), expected)
    deferred = run(WARNING_ORDER, evaluate=False)
    # The fold on line 3 warned while recording, after computing line 2 first.
    assert [w.span.line for w in deferred.diagnostics.warnings] == [2, 3]
    assert_same_run(deferred, expected)  # reading the rest computes it, warnings in order


def test_reading_a_value_computes_the_ops_before_it_and_no_more():
    r = run("x = [1.0, 2.0]\na = x.exp\nb = a * 2.0\nc = b.sin\nloss = c.sum\n", evaluate=False)
    ops = [n for n in r.tape.nodes if n.op is not None]
    assert [n.stored_value for n in ops] == [None] * len(ops)
    assert r.node("b").shape == (2,)  # known without computing
    np.testing.assert_allclose(r.node("b").value, 2 * np.exp([1.0, 2.0]))
    computed = [n.stored_value is not None for n in ops]
    assert computed == [n.id <= r.bindings["b"] for n in ops]
    # A computed node is a plain Node again: reading its attributes costs no hook.
    assert [type(n) is Node for n in ops] == computed
    assert r.value == pytest.approx(np.sin(2 * np.exp([1.0, 2.0])).sum())


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.ad")), ids=lambda p: p.name)
def test_examples_run_deferred_as_eagerly(path):
    text = path.read_text()
    deferred = Program.parse(Source(str(path), text), path.parent).run(evaluate=False)
    expected = eager(text, str(path))
    if deferred.tape.nodes[deferred.output].shape == () and deferred.default_wrt():  # the sweep first: out of order
        gradients = run_gradients(deferred).gradients
        for name, g in run_gradients(expected).gradients.items():
            np.testing.assert_array_equal(gradients[name], g)
    assert_same_run(deferred, expected)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs())
def test_random_programs_deferred_read_in_any_order(program):
    deferred = run(program.source, name="generated.ad", evaluate=False)
    for node in reversed(deferred.tape.nodes):  # the last first: one read computes them all
        node.value
    assert_same_run(deferred, eager(program.source, "generated.ad"))


BIGRAM = """\
xs = load("xs.npy")
ys = load("ys.npy")
W = randn(5, 5, seed = 0)
counts = (onehot(xs, 5) @@ W).exp
probs = counts.normaliseRowsL1
loss = probs.select(arange(rows(xs)), ys).mapRowsToScalar(ReductionOps.Sum).log.mean * -1.0
"""


@pytest.fixture
def bigram(tmp_path):
    rng = np.random.default_rng(3)
    np.save(tmp_path / "xs.npy", rng.integers(0, 5, 400).astype(float))
    np.save(tmp_path / "ys.npy", rng.integers(0, 5, 400).astype(float))
    (tmp_path / "bigram.ad").write_text(BIGRAM)
    return tmp_path / "bigram.ad"


def test_training_computes_only_the_fused_tape(bigram, monkeypatch):
    """The one-hot product, the exponentials, the row normalisation and the
    selection are fused away, and a run recorded for training never computes
    them; the losses are those of training from a run computed whole."""
    reference = train.train(Program.open(str(bigram)).run(), ["W"], 4, optim.SGD(5.0))
    computed = []
    compute = tape_module.compute
    monkeypatch.setattr(tape_module, "compute", lambda op, *a: computed.append(op.name) or compute(op, *a))
    result = spiread_cli.load(bigram).train(wrt="W", steps=4, lr=5.0, progress=False)
    assert result.losses == reference.losses
    np.testing.assert_array_equal(result.values["W"], reference.values["W"])
    assert computed and not {"matmul", "exp", "normaliseRowsL1", "select", "rowSum", "log"} & set(computed), computed


def test_a_program_trained_warns_from_its_first_pass_before_the_steps(tmp_path):
    """The first forward pass of a run recorded for training is the fused
    tape's; what it warns is shown before the progress lines, and
    `Program.train` warns at the caller's line."""
    path = tmp_path / "warns.ad"
    path.write_text("w = [0.5, 2.0]\nd = [0.0, 1.0]\nloss = (w * w).sum + d.log.exp.sum\n")
    done = subprocess.run([sys.executable, "-m", "spiread_cli", "train", str(path), "--wrt", "w", "--steps", "3"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    warned = next(i for i, line in enumerate(lines) if "warning" in line and "`log` gave -inf" in line)
    first_step = next(i for i, line in enumerate(lines) if line.startswith("step 1/"))
    assert warned < first_step, done.stderr
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spiread_cli.load(path).train(wrt="w", steps=3, progress=False)
    assert [w.filename for w in caught] == [__file__], [(w.filename, str(w.message)) for w in caught]
    assert "`log` gave -inf" in str(caught[0].message)


def test_strict_training_stops_at_a_warning_of_the_first_pass(tmp_path):
    """`--strict` still stops at a warning of an op the steps compute, when
    the first pass is the fused tape's (the exp overflows in an entry the
    loss does not see, so the loss stays finite)."""
    path = tmp_path / "overflow.ad"
    path.write_text("w = [[1, 800]]\nloss = w.exp.select([0], [0]).sum\n")
    done = subprocess.run([sys.executable, "-m", "spiread_cli", "train", str(path), "--wrt", "w", "--steps", "3",
                           "--strict"], capture_output=True, text=True)
    assert done.returncode == 1, done.stderr
    assert f"{path}:2:10: error: `exp` gave inf" in done.stderr and "step 1/" not in done.stderr, done.stderr
    relaxed = subprocess.run([sys.executable, "-m", "spiread_cli", "train", str(path), "--wrt", "w", "--steps", "3"],
                             capture_output=True, text=True)
    assert relaxed.returncode == 0 and "warning: `exp` gave inf" in relaxed.stderr, relaxed.stderr
