"""`train --optimizer newton`: a trust-region Newton that never raises the
loss. Its CG path against dense linear algebra; convex non-quadratic losses
(pseudo-Huber, log-sum-exp, logistic) against an independent minimum
(autograd's dense Hessian, Newton with a line search); nonconvex losses;
flat regions; the rejected steps in the summary and the JSON."""

from __future__ import annotations

import autograd.numpy as anp
import numpy as np
import pytest
from autograd import grad, hessian
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import REPO, lit, run, spiread, strict_json
from spiread_cli import optim, train

X = [[1, .5], [1, -1.2], [1, 2.3], [1, .1], [1, 1.5]]
Y = [1.2, -0.8, 3.1, 0.4, 9]
# Issue 19: undamped Newton took this from 2.9 to 2.27e6 in 15 steps, exit 0.
PSEUDO_HUBER = f"X = {X}\ny = {Y}\nw = [0, 0]\nloss = (((X @@ w - y) ** 2 + 0.01).sqrt).mean\n"
# ... and this from 2.24 to 1.6e16 in one step: its curvature along the gradient is 0 (1e-17 in rounding).
NORM = "w = [1.0, 2.0]\nloss = (w*w).sum.sqrt\n"

LSE_A = np.array([[1.0, 0.2], [-0.5, 1.0], [-0.7, -1.3], [1.5, -0.4]])  # 0 inside their hull: a minimum exists
LSE_B = np.array([0.3, -0.2, 0.5, 0.1])
LOGISTIC_X = np.array([[1.0, 0.0, 0.3], [1.0, -0.27, -0.89], [1.0, -0.45, -0.99], [1.0, 0.06, 1.34],
                       [1.0, -0.49, -0.62], [1.0, 0.49, 0.36], [1.0, 0.11, -0.93], [1.0, -0.03, 0.7],
                       [1.0, -1.34, -0.46], [1.0, -1.9, -1.29], [1.0, -1.84, -0.24], [1.0, -1.27, 0.27]])
LOGISTIC_Y = np.array([1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0])  # not separable: a finite minimum

CONVEX = {  # name -> (program, the same loss in autograd.numpy, w0)
    "pseudo-Huber": (PSEUDO_HUBER, lambda w: anp.mean(anp.sqrt((anp.array(X) @ w - anp.array(Y)) ** 2 + 0.01)),
                     [0.0, 0.0]),
    "log-sum-exp": (f"A = {lit(LSE_A.tolist())}\nb = {lit(LSE_B)}\nw = [2.0, -1.0]\nloss = (A @@ w + b).exp.sum.log\n",
                    lambda w: anp.log(anp.sum(anp.exp(LSE_A @ w + LSE_B))), [2.0, -1.0]),
    "logistic": (f"X = {lit(LOGISTIC_X.tolist())}\ny = {lit(LOGISTIC_Y)}\nw = [0.0, 0.0, 0.0]\nz = X @@ w\n"
                 "loss = (z.exp.log1p - y * z).mean\n",
                 lambda w: anp.mean(anp.log1p(anp.exp(LOGISTIC_X @ w)) - LOGISTIC_Y * (LOGISTIC_X @ w)),
                 [0.0, 0.0, 0.0]),
}


def reference_minimum(f, w0) -> np.ndarray:
    """Newton on the dense Hessian from autograd, made positive definite, with
    a backtracking line search, until no step lowers the loss: independent
    of spiread's Hessian-vector products, CG and trust region."""
    gradient, curvature = grad(f), hessian(f)
    w = np.array(w0, dtype=float)
    for _ in range(200):
        g, h = gradient(w), curvature(w)
        shift = max(0.0, -np.linalg.eigvalsh(h).min()) * 1.01 + 1e-14
        p = np.linalg.solve(h + shift * np.eye(len(w)), -g)
        t = 1.0
        while f(w + t * p) > f(w) + 1e-4 * t * (g @ p) and t > 1e-12:
            t /= 2
        if not f(w + t * p) < f(w):
            return w
        w = w + t * p
    return w


def assert_never_rises(losses: list[float]) -> None:
    assert all(np.isfinite(losses))
    assert all(b <= a for a, b in zip(losses, losses[1:])), losses


# ------------------------------------------------------------ the CG path


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 6), st.integers(0, 2 ** 32 - 1), st.floats(0.01, 100.0), st.booleans())
def test_the_steihaug_path_is_exact_at_every_length(n, seed, radius, definite):
    """Any point asked of the path has H·p exact (no product asked for it), a
    length of at most the radius (equal when the region cut the step), and a
    model value no higher than 0 (the start)."""
    rng = np.random.default_rng(seed)
    m = rng.standard_normal((n, n))
    a = m @ m.T + 0.1 * np.eye(n) if definite else m + m.T
    g = rng.standard_normal(n)
    path = optim.steihaug_path(lambda v: a @ v, g, radius, n)
    for shrink in (1.0, 0.9, 0.25, 1e-3):
        p, hp, cut = path.point(radius * shrink)
        np.testing.assert_allclose(hp, a @ p, atol=1e-8 * (1 + np.abs(a).max() * np.linalg.norm(p)))
        assert np.linalg.norm(p) <= radius * shrink * (1 + 1e-12)
        if cut:
            assert np.linalg.norm(p) == pytest.approx(radius * shrink, rel=1e-10)
        assert g @ p + 0.5 * p @ hp <= 1e-12 * (1 + np.linalg.norm(g) * np.linalg.norm(p))
    if definite and np.linalg.norm(np.linalg.solve(a, g)) < radius * 0.999:
        end, _, cut = path.point(radius)
        assert not cut
        np.testing.assert_allclose(end, np.linalg.solve(a, -g), rtol=1e-6, atol=1e-9)


def test_the_path_goes_to_the_boundary_along_negative_or_rounding_level_curvature():
    indefinite = np.diag([1.0, -1.0])
    p, _, cut = optim.steihaug_path(lambda v: indefinite @ v, np.array([0.0, 1.0]), 3.0, 2).point(3.0)
    assert cut and p.tolist() == [0.0, -3.0]
    rounding = np.array([[1e-17, 0.0], [0.0, 1.0]])  # |w|'s Hessian along its gradient, in rounding
    p, _, cut = optim.steihaug_path(lambda v: rounding @ v, np.array([1.0, 0.0]), 2.0, 2).point(2.0)
    assert cut and p.tolist() == [-2.0, 0.0]


# ------------------------------------------------------------ issue 19's two programs


def test_pseudo_huber_never_rises_and_ends_below_sgd(tmp_program):
    path = tmp_program(PSEUDO_HUBER)
    newton = spiread("train", path, "--wrt", "w", "--optimizer", "newton", "--steps", "15", "--format", "json")
    assert newton.returncode == 0, newton.stderr
    document = strict_json(newton.stdout)
    assert_never_rises(document["loss"])
    sgd = strict_json(spiread("train", path, "--wrt", "w", "--steps", "100", "--format", "json").stdout)
    assert document["loss"][-1] < sgd["loss"][-1] and document["loss"][-1] < 1.475
    optimum = reference_minimum(CONVEX["pseudo-Huber"][1], [0.0, 0.0])
    np.testing.assert_allclose(document["values"]["w"]["value"], optimum, rtol=1e-7)
    assert document["rejected_steps"] > 0 and document["converged"].startswith("no step lowers the loss")


def test_the_norm_never_rises_and_goes_to_zero(tmp_program):
    result = spiread("train", tmp_program(NORM), "--wrt", "w", "--optimizer", "newton", "--steps", "15",
                     "--format", "json")
    assert result.returncode == 0, result.stderr
    document = strict_json(result.stdout)
    losses = document["loss"]
    assert_never_rises(losses)
    assert losses[1] < losses[0] == pytest.approx(np.sqrt(5)) and losses[-1] < 1e-6
    assert len(losses) == 15 and document["converged"] is None


# ------------------------------------------------------------ convex, nonconvex, flat


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", CONVEX)
def test_convex_losses_reach_the_independent_minimum_without_rising(name, sparse):
    text, f, w0 = CONVEX[name]
    result = train.train(run(text), ["w"], 40, optim.Newton(sparse=sparse))
    assert result.error is None
    assert_never_rises(result.losses)
    optimum = reference_minimum(f, w0)
    assert result.losses[-1] <= f(optimum) + 1e-14 * abs(f(optimum))
    np.testing.assert_allclose(result.values["w"], optimum, rtol=1e-6, atol=1e-8)
    assert result.status == "converged" and len(result.losses) < 40


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2 ** 32 - 1), st.floats(1e-3, 1.0), st.floats(0.1, 1e3))
def test_a_newton_step_never_raises_a_convex_loss(seed, delta, scale):
    """Pseudo-Huber regressions with any smoothing and any data scale (nearly
    L1 when the residuals dwarf √delta, where Newton's model is poor far
    from the kinks and the trust region must shrink): the loss never rises,
    and when Newton finds nothing left to do, it is at the minimum."""
    rng = np.random.default_rng(seed)
    x, y, w0 = rng.standard_normal((6, 2)), scale * rng.standard_normal(6), scale * rng.standard_normal(2)
    text = f"X = {lit(x.tolist())}\ny = {lit(y)}\nw = {lit(w0)}\nloss = (((X @@ w - y) ** 2 + {delta!r}).sqrt).mean\n"
    result = train.train(run(text), ["w"], 40, optim.Newton())
    assert result.error is None
    assert_never_rises(result.losses)
    assert result.losses[-1] < result.losses[0]
    if result.status == "converged":
        optimum = reference_minimum(lambda w: anp.mean(anp.sqrt((x @ w - y) ** 2 + delta)), w0)
        assert result.losses[-1] == pytest.approx(np.mean(np.sqrt((x @ optimum - y) ** 2 + delta)), rel=1e-12)


@pytest.mark.parametrize("text, minimum", [
    ("w = [-1.2, 1.0]\nloss = (1 - w[0]) ** 2 + 100 * (w[1] - w[0] ** 2) ** 2\n", [1.0, 1.0]),  # Rosenbrock
    ("w = [0.1, -0.05]\nloss = ((w * w - 1) ** 2).sum\n", [1.0, -1.0]),  # starts where the curvature is negative
])
@pytest.mark.parametrize("sparse", [False, True])
def test_nonconvex_losses_fall_to_a_minimum_without_blowing_up(text, minimum, sparse):
    result = train.train(run(text), ["w"], 100, optim.Newton(sparse=sparse))
    assert result.error is None
    assert_never_rises(result.losses)
    assert result.losses[-1] < 1e-20
    np.testing.assert_allclose(result.values["w"], minimum, atol=1e-10)


def test_the_earlier_nonconvex_loss_falls_below_sgd():
    text = "w = [1.5, -0.5]\nloss = (w[0] - 1.0) ** 2 * 0.1 + (w[0] * w[1]).sin + (w * w).sum * 0.05\n"
    result = train.train(run(text), ["w"], 15, optim.Newton())
    assert_never_rises(result.losses)
    assert result.losses[-1] < train.train(run(text), ["w"], 15, optim.SGD(0.1)).losses[-1]


def test_a_flat_start_stops_at_once_and_says_so(tmp_program):
    path = tmp_program("w = [-1.0, -2.0]\nloss = w.relu.sum\n")  # relu off everywhere: the gradient is 0
    result = spiread("train", path, "--wrt", "w", "--optimizer", "newton", "--steps", "10")
    assert result.returncode == 0, result.stderr
    assert "1 step in" in result.stdout
    assert "converged at step 1 of 10: the gradient is zero (a flat region or a stationary point)" in result.stdout
    document = strict_json(spiread("train", path, "--wrt", "w", "--optimizer", "newton", "--steps", "10",
                                   "--format", "json").stdout)
    assert document["loss"] == [0.0] and document["values"]["w"]["value"] == [-1.0, -2.0]
    assert document["rejected_steps"] == 0 and document["converged"].startswith("the gradient is zero")


def test_reaching_a_flat_region_stops_there():
    """A quadratic bowl cut off by relu at w = 3: one Newton step lands on the
    edge, where the gradient is 0."""
    result = train.train(run("w = [5.0, 6.0]\nloss = ((w - 3).relu ** 2).sum\n"), ["w"], 10, optim.Newton())
    assert result.status == "converged" and result.losses == [13.0, 0.0]
    assert result.values["w"].tolist() == [3.0, 3.0] and result.converged.startswith("the gradient is zero")


def test_a_stall_at_a_kink_is_not_called_rounding():
    """At w0 = w1, the kink of |w1 − w0|, the gradient (sign(0) = 0 there)
    is not the loss's slope in every direction: the model predicts
    decreases no step makes, and rejected steps shrink the trust region
    until the predicted decrease is within rounding. The reason says so
    (the step was cut by the trust region), not that the Newton step
    itself predicts nothing left, which a smooth minimum still says."""
    result = train.train(run("w = [1.0, 0.5]\nloss = ((w - [0.3, 0.31]) ** 2).sum + 0.1 * (w[1] - w[0]).abs\n"),
                         ["w"], 60, optim.Newton())
    assert result.status == "converged" and result.values["w"].tolist() == pytest.approx([0.305, 0.305])
    assert result.converged.startswith("no step lowers the loss as its model predicts: rejected trial steps shrank "
                                       "the trust region to ")
    assert "the gradient's norm is 0.0141 (the loss may have a kink here" in result.converged
    smooth = train.train(run(PSEUDO_HUBER), ["w"], 15, optim.Newton())
    assert smooth.converged.startswith("no step lowers the loss by more than its rounding (the gradient's norm is")
    # A step cut by the first trust region, with no step rejected, is not the kink's (rev-d): the loss's
    # rounding (at 1e18) swallows what a linear term's steps could lower it by.
    far = train.train(run("w = [0.0, 0.0]\nloss = 1e18 + (w * [1.0, 1.0]).sum + 1e-12 * (w * w).sum\n"), ["w"], 5,
                      optim.Newton())
    assert far.rejected == 0 and far.converged.startswith("no step lowers the loss by more than its rounding")


# ------------------------------------------------------------ rejected steps reported


class CountingNewton(optim.Newton):
    """Newton that records every trial loss it asks for."""

    def attach(self, tape, output, ids, loss_at):
        self.trials = []

        def counted(values):
            self.trials.append(loss_at(values))
            return self.trials[-1]
        super().attach(tape, output, ids, counted)


def test_the_rejected_count_is_the_trials_not_taken(tmp_program):
    newton = CountingNewton()
    result = train.train(run(PSEUDO_HUBER), ["w"], 15, newton)
    assert result.status == "converged"  # so the last step took no trial step
    taken = result.losses[1:]
    assert [loss for loss in newton.trials if loss in taken] == taken
    assert result.rejected == len(newton.trials) - len(taken) > 0
    summary = spiread("train", tmp_program(PSEUDO_HUBER), "--wrt", "w", "--optimizer", "newton", "--steps", "15")
    assert summary.returncode == 0, summary.stderr
    assert (f"rejected {result.rejected} trial steps that did not lower the loss as the model predicted"
            in summary.stdout)


def test_newton_refuses_a_learning_rate_above_one(tmp_program):
    result = spiread("train", tmp_program(NORM), "--wrt", "w", "--optimizer", "newton", "--lr", "2")
    assert result.returncode == 2
    assert "`--lr 2`: newton's step is at most the Newton step, `--lr 1`" in result.stderr


def test_a_shorter_learning_rate_still_never_rises():
    result = train.train(run(PSEUDO_HUBER), ["w"], 30, optim.Newton(lr=0.5))
    assert_never_rises(result.losses)
    assert result.losses[-1] < 1.5


def test_several_trained_values_of_any_shape_are_one_newton_system():
    """A matrix and a scalar trained together: the step is solved over both."""
    x, y = LOGISTIC_X[:, 1:], LOGISTIC_Y
    text = (f"X = {lit(x.tolist())}\ny = {lit(y[:, None].tolist())}\nW = [[0.0], [0.0]]\nb = 0.0\nz = X @@ W + b\n"
            "loss = (z.exp.log1p - y * z).mean\n")
    result = train.train(run(text), ["W", "b"], 40, optim.Newton())
    assert result.error is None and result.status == "converged"
    assert_never_rises(result.losses)
    optimum = reference_minimum(lambda v: anp.mean(anp.log1p(anp.exp(x @ v[1:] + v[0])) - y * (x @ v[1:] + v[0])),
                                [0.0, 0.0, 0.0])
    np.testing.assert_allclose(result.values["W"], optimum[1:, None], rtol=1e-6)
    assert result.values["b"] == pytest.approx(optimum[0], rel=1e-6)


def test_save_and_log_keep_what_newton_converged_to(tmp_program, tmp_path):
    saved, log = tmp_path / "w.npz", tmp_path / "loss.csv"
    done = spiread("train", tmp_program(PSEUDO_HUBER), "--wrt", "w", "--optimizer", "newton", "--steps", "15",
                   "--save", saved, "--log", log, "--format", "json")
    assert done.returncode == 0, done.stderr
    document = strict_json(done.stdout)
    with np.load(saved, allow_pickle=False) as archive:
        assert archive["w"].tolist() == document["values"]["w"]["value"]
    rows = log.read_text().splitlines()
    assert rows[0] == "step,loss" and [float(r.split(",")[1]) for r in rows[1:]] == document["loss"]
    assert document["steps"] == len(rows) - 1 < 15


# ------------------------------------------------------------ the sparse Hessian

CHAINED = (REPO / "examples" / "chained_rosenbrock.ad").read_text()


def test_a_long_chained_rosenbrock_solves_with_the_sparse_hessian_by_default():
    """400 entries, a tridiagonal Hessian: three Hessian-vector products a
    step and a sparse LU, chosen without being asked; the same minimum as
    conjugate gradients on Hessian-vector products."""
    pytest.importorskip("scipy")
    x0 = np.full(400, 0.5)
    chosen = optim.Newton()
    result = train.train(run(CHAINED, sets={"x": x0}), ["x"], 100, chosen)
    assert "the sparse Hessian from 3 Hessian-vector products" in chosen.describe()
    assert result.status == "converged" and result.losses[-1] < 1e-20
    assert_never_rises(result.losses)
    np.testing.assert_allclose(result.values["x"], np.ones(400), atol=1e-9)
    products = optim.Newton(sparse=False)
    again = train.train(run(CHAINED, sets={"x": x0}), ["x"], 100, products)
    assert "conjugate gradients" in products.describe()
    np.testing.assert_allclose(again.values["x"], result.values["x"], atol=1e-9)


def test_the_sparse_newton_path_is_newtons_step_inside_the_region_and_cg_outside_or_indefinite():
    sp = pytest.importorskip("scipy.sparse")
    h = sp.csr_array(np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 1.0], [0.0, 1.0, 2.0]]))
    g = np.array([1.0, -2.0, 0.5])
    step = np.linalg.solve(h.toarray(), -g)
    p, hp, on_boundary = optim.sparse_newton_path(h, g, 10.0).point(10.0)
    np.testing.assert_allclose(p, step, rtol=1e-12)
    np.testing.assert_allclose(hp, h @ p, rtol=1e-12)
    assert not on_boundary
    p, _, on_boundary = optim.sparse_newton_path(h, g, 0.1).point(0.1)
    assert on_boundary and np.linalg.norm(p) == pytest.approx(0.1)
    indefinite = sp.csr_array(np.diag([1.0, -1.0, 2.0]))
    p, _, on_boundary = optim.sparse_newton_path(indefinite, g, 5.0).point(5.0)
    assert on_boundary and np.linalg.norm(p) == pytest.approx(5.0)  # along negative curvature, to the boundary


def test_sparse_is_newtons_option(tmp_program):
    path = tmp_program("w = [1.0, 2.0]\nloss = (w * w).sum\n")
    done = spiread("train", path, "--wrt", "w", "--sparse")
    assert done.returncode == 2 and "`--sparse` is newton's" in done.stderr, done.stderr
    done = spiread("train", path, "--wrt", "w", "--optimizer", "newton", "--sparse", "--steps", "3", "--format", "json")
    assert done.returncode == 0, done.stderr
    assert strict_json(done.stdout)["loss"][-1] < 1e-30
