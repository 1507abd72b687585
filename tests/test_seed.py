"""The spireAD seed program (issue 2), as pasted Scala and in native syntax."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import EXAMPLES, Agreement, program_fd, run
from spiread_cli.gradients import gradients as run_gradients

# The code block from the spireAD "Backward Mode" page, exactly as it stands.
SEED = """\
import spire._
import spire.math._
import spire.implicits.*
import _root_.algebra.ring.Field
import spire.algebra.Trig
import vecxt.all.*
import vecxt.BoundsCheck.DoBoundsCheck.yes
import spire.math.Jet.*
import io.github.quafadas.spireAD.*
import io.github.quafadas.spireAD.TejVDoubleAlgebra.*
import io.github.quafadas.spireAD.TejVDoubleAlgebra.ShowLite.given

given graph: TejVGraph[Double] = TejVGraph[Double]()

val data = Matrix.fromRows(
  Array(1.0, 2.0),
  Array(-1.0, -2),
  Array(4.0, 5.0)
).tej

val weights = Matrix.fromColumns(Array(0.1, 0.2), Array(0.05, 0.1)).tej

val probits = (data @@ weights).exp.normaliseRowsL1
val selected = probits(Array((0,0), (1,1))).mapRowsToScalar(ReductionOps.Sum).log.mean
val loss = selected * -1.0.tej

loss.backward((weights = weights))
"""
SEED_GRADIENT = [[-0.291882, 0.291882], [-0.583765, 0.583765]]
# With (2, 0) selected as well, every row keeps a probability: the loss is finite.
SEED_FINITE = SEED.replace("Array((0,0), (1,1))", "Array((0,0), (1,1), (2,0))")
FINITE_LOSS = 0.5183549628810483
FINITE_GRADIENT = [[-0.734299, 0.734299], [-1.136785, 1.136785]]


def test_the_example_file_is_the_seed_as_it_stands():
    assert SEED in (EXAMPLES / "seed.ad").read_text()


def test_eval_gives_inf_and_warns_at_the_log():
    r = run(SEED, name="seed.ad")
    assert r.output_name == "loss"
    assert r.tape.nodes[r.output].value == np.inf
    assert r.node("selected").value == -np.inf
    [warning] = r.diagnostics.warnings
    line = next(i for i, text in enumerate(SEED.splitlines(), 1) if "val selected" in text)
    column = SEED.splitlines()[line - 1].index(".log") + 2  # 1-based, at `log`
    assert (warning.span.line, warning.span.column) == (line, column)
    assert "-inf" in warning.message and "log" in warning.message


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_grad_is_finite_despite_the_infinite_loss(mode):
    r = run(SEED, name="seed.ad")
    result = run_gradients(r, None, mode)  # the default: the `.backward` names
    assert list(result.gradients) == ["weights"]
    g = result.gradients["weights"]
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, SEED_GRADIENT, atol=5e-7)
    # The only warning is the forward `log`; no non-finite gradient was born.
    assert [w.message for w in r.diagnostics.warnings if "derivative" in w.message] == []


@pytest.mark.parametrize("text", [SEED_FINITE, (EXAMPLES / "seed_native.ad").read_text()],
                         ids=["scala", "native"])
def test_finite_seed_exact_numbers(text, record_property):
    r = run(text, name="seed.ad")
    assert r.diagnostics.warnings == []
    assert float(r.tape.nodes[r.output].value) == pytest.approx(FINITE_LOSS, rel=1e-15, abs=0)
    g = run_gradients(r, ["weights"]).gradients["weights"]
    np.testing.assert_allclose(g, FINITE_GRADIENT, atol=5e-7)
    fd = program_fd(text, "weights")
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-8)
    worst = Agreement()
    worst.update(g, fd)
    worst.record(record_property, "seed vs central FD")


def test_finite_seed_against_autograd():
    import autograd
    import autograd.numpy as anp

    data = np.array([[1.0, 2.0], [-1.0, -2.0], [4.0, 5.0]])
    mask = np.zeros((3, 2))
    mask[[0, 1, 2], [0, 1, 0]] = 1.0

    def loss(weights):
        e = anp.exp(anp.dot(data, weights))
        probits = e / anp.sum(anp.abs(e), axis=1, keepdims=True)
        return -anp.mean(anp.log(anp.sum(probits * mask, axis=1)))

    weights = np.array([[0.1, 0.05], [0.2, 0.1]])
    g = run_gradients(run(SEED_FINITE), ["weights"]).gradients["weights"]
    np.testing.assert_allclose(g, autograd.grad(loss)(weights), rtol=1e-12)
    assert float(loss(weights)) == pytest.approx(FINITE_LOSS, rel=1e-14)
