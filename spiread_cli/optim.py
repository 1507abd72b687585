"""Optimizers for `spiread train`: plain and momentum SGD, Adam, and Newton.

Both follow PyTorch's definitions (torch.optim.SGD with dampening 0 and no
Nesterov; torch.optim.Adam without weight decay), so a user can compare runs.
`step` returns new arrays rather than updating in place: the trainer keeps
the previous values, which are what it saves if the next loss is not finite.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .diagnostics import option, usage_error


class SGD:
    """w ← w − lr·v, where v = g without momentum, and v ← momentum·v + g with it."""

    default_lr = 0.01

    def __init__(self, lr: float = default_lr, momentum: float = 0.0):
        self.lr = lr
        self.momentum = momentum
        self.velocity: dict[str, np.ndarray] = {}

    # An update that overflows is reported by train as a non-finite loss at its
    # place in the program, not as numpy's RuntimeWarning.
    @np.errstate(over="ignore", invalid="ignore")
    def step(self, values: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        updated = {}
        for name, w in values.items():
            g = grads[name]
            if self.momentum:
                previous = self.velocity.get(name)
                g = g if previous is None else self.momentum * previous + g
                self.velocity[name] = g
            updated[name] = w - self.lr * g
        return updated

    def describe(self) -> str:
        return f"sgd (lr {self.lr:g}" + (f", momentum {self.momentum:g})" if self.momentum else ")")


class Adam:
    """Adam (Kingma & Ba, 2015) with the usual defaults lr 0.001, betas
    (0.9, 0.999), eps 1e-8:

        m ← β1·m + (1−β1)·g,   v ← β2·v + (1−β2)·g²
        w ← w − lr · m̂ / (√v̂ + eps),   m̂ = m / (1−β1ᵗ),  v̂ = v / (1−β2ᵗ)
    """

    default_lr = 0.001

    def __init__(self, lr: float = default_lr, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.t = 0
        self.m: dict[str, np.ndarray] = {}
        self.v: dict[str, np.ndarray] = {}

    @np.errstate(over="ignore", invalid="ignore")  # as SGD.step
    def step(self, values: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.t += 1
        correction1 = 1 - self.beta1 ** self.t
        correction2 = 1 - self.beta2 ** self.t
        updated = {}
        for name, w in values.items():
            g = grads[name]
            m = self.beta1 * self.m.get(name, 0.0) + (1 - self.beta1) * g
            v = self.beta2 * self.v.get(name, 0.0) + (1 - self.beta2) * (g * g)
            self.m[name], self.v[name] = m, v
            updated[name] = w - self.lr * (m / correction1) / (np.sqrt(v / correction2) + self.eps)
        return updated

    def describe(self) -> str:
        return f"adam (lr {self.lr:g}, betas ({self.beta1:g}, {self.beta2:g}), eps {self.eps:g})"


class Newton:
    """Trust-region Newton by conjugate gradients on Hessian-vector products,
    never a dense Hessian (Steihaug's truncated CG inside Nocedal & Wright's
    Algorithm 4.1; a trust region is Levenberg–Marquardt damping chosen by
    its step length, Moré 1978):

    - CG solves H p = −g from p = 0 (`steihaug_path`) until the residual is
      1e-10 of |g|, or until p would leave the trust region |p| ≤ Δ: along
      a direction of negative or zero curvature, or of a curvature so small
      against the gradient that the model's minimum along it lies outside
      (as the rounding-level 1e-17 of `(w*w).sum.sqrt` along its gradient);
      then p ends on the boundary. Inside it, the step is Newton's, so a
      quadratic loss such as least squares is solved in one step.
    - w + lr·p is tried: one loss evaluation. ρ, the loss's actual decrease
      over the quadratic model's, decides: ρ ≤ 1e-4 (the loss rose, or
      fell far less than predicted, or is not finite) rejects the step,
      Δ becomes |p|/4, and the point at that length on the same CG path is
      tried, with no new Hessian-vector products. An accepted step with
      ρ < 1/4 also quarters Δ; ρ > 3/4 on the boundary doubles it.
    - Δ starts at 100·max(|w|, 1) (MINPACK's rule), so the first steps
      are Newton's unless they are absurd, and shrinks only when rejected.

    The loss thus never rises. When no step can lower it, `converged`
    says why and the trainer stops: the gradient is zero (a flat region or
    a stationary point), or the model predicts a decrease within the loss's
    rounding — for the Newton step itself, or only for the step rejected
    steps shrank the trust region to (the loss did not follow its model: a
    kink). `rejected` counts the rejected trial steps.
    """

    default_lr = 1.0
    needs_curvature = True
    acceptable = 1e-4       # ρ above this accepts a step (Nocedal & Wright's η)
    rounding = 4 * np.finfo(float).eps  # a predicted decrease below this fraction of |loss| is none
    # `sparse=None` takes the sparse Hessian when scipy is there, the values
    # have at least this many entries, and a product per colour is at most
    # this fraction of a product per entry.
    sparse_from_entries = 256
    sparse_sweeps_fraction = 1 / 16

    def __init__(self, lr: float = default_lr, sparse: bool | None = None):
        self.lr = lr
        self.sparse = sparse
        self.radius: float | None = None       # Δ, set at the first step
        self.rejected = 0
        self.converged: str | None = None
        self.hessians = None                   # SparseHessians when the steps solve with the sparse Hessian

    def attach(self, tape, output: int, ids: dict[str, int], loss_at) -> None:
        """Record the gradient of `output` on `tape` (a copy the trainer owns)
        and the product h = Σ⟨∂f/∂w, v⟩ that every HVP sweeps back from;
        `loss_at(values)` is the loss at trial values (a forward pass). With
        `sparse` (or by default where the Hessian's pattern is sparse: see
        `sparse_from_entries`), the sparse Hessian from its colours instead."""
        from importlib.util import find_spec
        from .second import HessianVectorProducts, SparseHessians
        self.tape, self.output, self.ids, self.loss_at = tape, output, ids, loss_at
        recorded_from = len(tape.nodes)
        grad_ids = tape.backward_graph(output, list(ids.values()))
        self.products = HessianVectorProducts(tape, grad_ids, recorded_from)
        entries = sum(tape.nodes[i].value.size for i in ids.values())
        if self.sparse or (self.sparse is None and entries >= self.sparse_from_entries and find_spec("scipy")):
            from .sparsity import hessian_pattern
            from .sparsity_colouring import colour_symmetric
            pattern = hessian_pattern(tape, output, list(ids.values()))
            colouring = colour_symmetric(pattern)
            if self.sparse or colouring.count <= self.sparse_sweeps_fraction * entries:  # built only when used
                self.hessians = SparseHessians(tape, output, grad_ids, pattern, colouring)

    def step(self, values: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.products.refresh()  # the recorded gradient at the current values (train replayed the forward pass)
        loss = float(self.tape.nodes[self.output].value)
        names = list(values)
        shapes = [np.shape(values[n]) for n in names]
        cuts = np.cumsum([int(np.prod(s)) for s in shapes])[:-1]
        g = np.concatenate([np.ravel(grads[n]) for n in names])
        w = np.concatenate([np.ravel(values[n]) for n in names])

        def unflatten(v: np.ndarray) -> dict[str, np.ndarray]:
            return {n: part.reshape(s) for n, part, s in zip(names, np.split(v, cuts), shapes)}

        def curvature_times(v: np.ndarray) -> np.ndarray:
            by_id = self.products({self.ids[n]: part for n, part in unflatten(v).items()}, [self.ids[n] for n in names])
            return np.concatenate([np.ravel(by_id[self.ids[n]]) for n in names])

        if not g.any():
            self.converged = "the gradient is zero (a flat region or a stationary point), so no step lowers the loss"
            return values
        if self.radius is None:
            self.radius = 100 * max(float(np.linalg.norm(w)), 1.0)
        if self.hessians is not None:
            path = sparse_newton_path(self.hessians(), g, self.radius)
        else:
            path = steihaug_path(curvature_times, g, self.radius, len(g))
        floor = self.rounding * abs(loss)
        while True:
            p, hp, on_boundary = path.point(self.radius)
            predicted = -(self.lr * float(g @ p) + 0.5 * self.lr ** 2 * float(p @ hp))
            if not predicted > floor:
                if on_boundary and self.rejected:  # a longer step is asked for, which rejected ones shrank
                    self.converged = ("no step lowers the loss as its model predicts: rejected trial steps shrank "
                                      f"the trust region to {self.radius:.3g}, where the predicted decrease is within "
                                      f"the loss's rounding, though the gradient's norm is {np.linalg.norm(g):.3g} "
                                      "(the loss may have a kink here, as abs or max do, where its gradient is not "
                                      "its slope in every direction)")
                else:
                    self.converged = ("no step lowers the loss by more than its rounding "
                                      f"(the gradient's norm is {np.linalg.norm(g):.3g})")
                return values
            trial = unflatten(w + self.lr * p)
            rho = (loss - self.loss_at(trial)) / predicted  # nan when the trial loss is not finite
            length = float(np.linalg.norm(p))
            if rho > self.acceptable:
                if rho < 0.25:
                    self.radius = length / 4
                elif rho > 0.75 and on_boundary:
                    self.radius *= 2
                return trial
            self.rejected += 1
            self.radius = length / 4

    def describe(self) -> str:
        if self.hessians is not None:
            sweeps = self.hessians.colouring.count
            return (f"newton (trust region, the sparse Hessian from {sweeps} Hessian-vector "
                    f"product{'s' if sweeps != 1 else ''} a step, lr {self.lr:g})")
        return f"newton (trust region, conjugate gradients on Hessian-vector products, lr {self.lr:g})"


@dataclass
class SteihaugPath:
    """Points x on the conjugate-gradient path from 0, each with its residual
    r = −(g + Hx), so that on the chord between two of them the model
    m(p) = gᵀp + ½pᵀHp is exact without another product (H is linear):
    Hp = −r(p) − g. The iterates' lengths grow (Steihaug's Theorem 7.3);
    only those at least twice as long as the last one kept are kept, and
    the end, so the path costs O(log) vectors, not one per iteration."""
    g: np.ndarray
    points: list[tuple[np.ndarray, np.ndarray]]
    ends_on_boundary: bool

    def point(self, radius: float) -> tuple[np.ndarray, np.ndarray, bool]:
        """The point of the path at length `radius` (its end if shorter),
        with H times it and whether the trust region cut it."""
        previous = self.points[0]
        for x, r in self.points[1:]:
            if np.linalg.norm(x) >= radius:
                t = _crossing(previous[0], x - previous[0], radius)
                p, r = previous[0] + t * (x - previous[0]), previous[1] + t * (r - previous[1])
                return p, -r - self.g, True
            previous = (x, r)
        x, r = previous
        return x, -r - self.g, self.ends_on_boundary


def steihaug_path(curvature_times, g: np.ndarray, radius: float, max_iterations: int,
                  rtol: float = 1e-10) -> SteihaugPath:
    """Conjugate gradients on H p = −g from p = 0 (H given as a product),
    stopped at a residual of `rtol`·|g|, or at the trust region's boundary
    |p| = radius when the next iterate would cross it or the curvature
    along the direction is not positive (Nocedal & Wright, Algorithm 7.2)."""
    x, r = np.zeros_like(g), -g
    d = r.copy()
    rr = float(r @ r)
    stop = (rtol * np.sqrt(rr)) ** 2
    points, kept = [(x, r)], 0.0
    for _ in range(max_iterations):
        if rr <= stop:
            break
        hd = curvature_times(d)
        curvature = float(d @ hd)
        if not math.isfinite(curvature):  # no usable curvature here: the linear model, to the boundary
            hd, curvature = np.zeros_like(d), 0.0
        if curvature > 0:
            alpha = rr / curvature
            if np.linalg.norm(x + alpha * d) < radius:
                x, r = x + alpha * d, r - alpha * hd
                if np.linalg.norm(x) >= 2 * kept:
                    points.append((x, r))
                    kept = float(np.linalg.norm(x))
                rr, previous = float(r @ r), rr
                d = r + (rr / previous) * d
                continue
        tau = _crossing(x, d, radius)
        if points[-1][0] is not x:
            points.append((x, r))
        points.append((x + tau * d, r - tau * hd))
        return SteihaugPath(g, points, True)
    if points[-1][0] is not x:
        points.append((x, r))
    return SteihaugPath(g, points, False)


# A Hessian whose nonzeros lie within this many diagonals of the main one
# is factorised as a band (LAPACK's banded Cholesky: O(n·width²), the
# chained Rosenbrock's in well under a millisecond at n = 10⁴, against 35 ms
# for a general sparse LU); a wider one by scipy.sparse.linalg.splu.
BANDED_WIDTH = 32


def sparse_newton_path(hessian, g: np.ndarray, radius: float) -> SteihaugPath:
    """The path of a step with the sparse Hessian H at hand: when H is
    positive definite and the Newton step −H⁻¹g, solved directly, lies
    inside the trust region, the chord from 0 to it (a rejected step tries a
    point on it); else Steihaug's conjugate gradients, on products with H
    that cost one sparse product each. Positive definiteness: a banded
    Cholesky that succeeds, or a symmetric LU without pivoting off the
    diagonal whose diagonal is positive."""
    p = _newton_step(hessian, g)
    if p is not None and np.isfinite(p).all() and np.linalg.norm(p) < radius:
        return SteihaugPath(g, [(np.zeros_like(g), -g), (p, -(g + hessian @ p))], False)
    return steihaug_path(lambda v: hessian @ v, g, radius, len(g))


def _newton_step(hessian, g: np.ndarray) -> np.ndarray | None:
    """−H⁻¹g when H is positive definite, else None."""
    from scipy.linalg import LinAlgError, cho_solve_banded, cholesky_banded
    from scipy.sparse.linalg import splu
    coo = hessian.tocoo()
    n = len(g)
    width = int(np.abs(coo.col.astype(np.int64) - coo.row).max(initial=0))
    if width <= BANDED_WIDTH:
        upper = coo.col >= coo.row
        bands = np.zeros((width + 1, n))
        bands[width + coo.row[upper] - coo.col[upper], coo.col[upper]] = coo.data[upper]
        try:
            return cho_solve_banded((cholesky_banded(bands), False), -g)
        except LinAlgError:  # not positive definite
            return None
    try:
        lu = splu(hessian.tocsc(), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})
    except RuntimeError:  # singular
        return None
    if (lu.perm_r == lu.perm_c).all() and (lu.U.diagonal() > 0).all():
        return lu.solve(-g)
    return None


def _crossing(x: np.ndarray, d: np.ndarray, radius: float) -> float:
    """τ ≥ 0 with |x + τd| = radius, for |x| < radius."""
    dd, xd, xx = float(d @ d), float(x @ d), float(x @ x)
    return (-xd + math.sqrt(max(xd * xd + dd * (radius * radius - xx), 0.0))) / dd


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "newton": Newton}


def make_optimizer(name: str, lr: float | None = None, momentum: float = 0.0, sparse: bool | None = None):
    """An optimizer by name; `lr` None means the optimizer's default;
    `sparse` is newton's (None: where the Hessian's pattern is sparse)."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise usage_error(f"{option('lr', lr)}: the learning rate must be a positive number")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise usage_error(f"{option('momentum', momentum)}: momentum must be at least 0 and below 1")
    kind = OPTIMIZERS[name]
    lr = kind.default_lr if lr is None else lr
    if sparse is not None and kind is not Newton:
        raise usage_error(f"{option('sparse', sparse)} is newton's: the sparse Hessian it solves with",
                          [f"add {option('optimizer', 'newton')}"])
    if kind is SGD:
        return SGD(lr, momentum)
    if kind is Newton and lr > 1:
        raise usage_error(f"{option('lr', lr)}: newton's step is at most the Newton step, {option('lr', 1)}",
                          ["a smaller learning rate shortens each step; the trust region already bounds it"])
    if sparse:
        from importlib.util import find_spec
        if find_spec("scipy") is None:
            raise usage_error(f"{option('sparse', sparse)} needs scipy, which is not installed",
                              ['pip install scipy (or pip install ".[sparse]" in spiread\'s checkout)'])
    if kind is Newton:
        return Newton(lr, sparse)
    if momentum:
        raise usage_error(f"{option('momentum', momentum)} is for sgd; " + ("adam has its own (beta1 = 0.9)" if kind is Adam
                                                          else f"{name} has none"))
    return kind(lr)
