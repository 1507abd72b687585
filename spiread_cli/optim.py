"""Optimizers for `spiread train`: plain and momentum SGD, Adam, and Newton.

Both follow PyTorch's definitions (torch.optim.SGD with dampening 0 and no
Nesterov; torch.optim.Adam without weight decay), so a user can compare runs.
`step` returns new arrays rather than updating in place: the trainer keeps
the previous values, which are what it saves if the next loss is not finite.
"""

from __future__ import annotations

import math

import numpy as np

from .diagnostics import usage_error


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
    """Newton steps by conjugate gradients on Hessian-vector products, never a
    dense Hessian (truncated Newton, Nocedal & Wright's Algorithm 7.1, with
    Levenberg–Marquardt damping as in Martens' Hessian-free optimisation):

        solve (H + λI) p = −g by CG,   w ← w + lr · p

    CG stops when the residual is 1e-10 of |g|, after as many iterations as
    there are entries (exact arithmetic needs no more), or at a direction of
    non-positive curvature (then the step so far, or −g before the first).
    The damping λ starts at `damping` (0: a pure Newton step, so a quadratic
    such as least squares is solved in one step, up to rounding) and follows
    the ratio ρ of the loss's actual decrease to the quadratic model's
    prediction, seen at the next step: ρ < 1/4 doubles λ (at least 1e-3 of
    the curvature pᵀHp/|p|² seen), ρ > 3/4 divides it by 3.
    """

    default_lr = 1.0
    needs_curvature = True

    def __init__(self, lr: float = default_lr, damping: float = 0.0):
        self.lr, self.damping = lr, damping
        self.products = None
        self.predicted: float | None = None    # the model's decrease for the last step
        self.last_loss: float | None = None
        self.curvature = 0.0                   # pᵀHp/|p|² of the last step

    def attach(self, tape, output: int, ids: dict[str, int]) -> None:
        """Record the gradient of `output` on `tape` (a copy the trainer owns)
        and the product h = Σ⟨∂f/∂w, v⟩ that every HVP sweeps back from."""
        from .second import HessianVectorProducts
        self.tape, self.output, self.ids = tape, output, ids
        recorded_from = len(tape.nodes)
        self.products = HessianVectorProducts(tape, tape.backward_graph(output, list(ids.values())), recorded_from)

    def step(self, values: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.products.refresh()  # the recorded gradient at the current values (train replayed the forward pass)
        loss = float(self.tape.nodes[self.output].value)
        self._adapt(loss)
        names = list(values)
        shapes = [np.shape(values[n]) for n in names]
        sizes = [int(np.prod(s)) for s in shapes]
        cuts = np.cumsum(sizes)[:-1]
        g = np.concatenate([np.ravel(grads[n]) for n in names])

        def curvature_times(v: np.ndarray) -> np.ndarray:
            parts = {self.ids[n]: part.reshape(s) for n, part, s in zip(names, np.split(v, cuts), shapes)}
            by_id = self.products(parts, [self.ids[n] for n in names])
            return np.concatenate([np.ravel(by_id[self.ids[n]]) for n in names]) + self.damping * v

        p = conjugate_gradients(curvature_times, -g, len(g))
        hp = curvature_times(p)
        pp = float(p @ p)
        self.curvature = float(p @ hp) / pp if pp else 0.0
        self.predicted = -float(g @ p + 0.5 * (p @ hp)) * self.lr
        self.last_loss = loss
        return {n: values[n] + self.lr * part.reshape(s) for n, part, s in zip(names, np.split(p, cuts), shapes)}

    def _adapt(self, loss: float) -> None:
        """Levenberg–Marquardt: trust the quadratic model more or less by how
        well it predicted the last step's decrease."""
        if self.predicted is None or not self.predicted > 0:
            return
        rho = (self.last_loss - loss) / self.predicted
        if rho < 0.25:
            self.damping = max(2 * self.damping, 1e-3 * abs(self.curvature))
        elif rho > 0.75:
            self.damping /= 3

    def describe(self) -> str:
        return f"newton (conjugate gradients on Hessian-vector products, lr {self.lr:g}, damping from {self.damping:g})"


def conjugate_gradients(a_times, b: np.ndarray, max_iterations: int, rtol: float = 1e-10) -> np.ndarray:
    """Solve A x = b for a symmetric A given as a product, from x = 0; stop at
    a direction of non-positive curvature (truncated Newton), returning the
    iterate so far, or b itself before the first step."""
    x = np.zeros_like(b)
    r = b.copy()
    d = r.copy()
    rr = float(r @ r)
    stop = (rtol * np.sqrt(rr)) ** 2
    for _ in range(max_iterations):
        if rr <= stop:
            break
        ad = a_times(d)
        curvature = float(d @ ad)
        if not curvature > 0:
            return x if x.any() else b
        alpha = rr / curvature
        x = x + alpha * d
        r = r - alpha * ad
        rr, previous = float(r @ r), rr
        d = r + (rr / previous) * d
    return x


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "newton": Newton}


def make_optimizer(name: str, lr: float | None = None, momentum: float = 0.0):
    """An optimizer by name; `lr` None means the optimizer's default."""
    if lr is not None and not (math.isfinite(lr) and lr > 0):
        raise usage_error(f"`--lr {lr:g}`: the learning rate must be a positive number")
    if not (math.isfinite(momentum) and 0 <= momentum < 1):
        raise usage_error(f"`--momentum {momentum:g}`: momentum must be at least 0 and below 1")
    kind = OPTIMIZERS[name]
    lr = kind.default_lr if lr is None else lr
    if kind is SGD:
        return SGD(lr, momentum)
    if momentum:
        raise usage_error("`--momentum` is for sgd; " + ("adam has its own (beta1 = 0.9)" if kind is Adam
                                                          else f"{name} has none"))
    return kind(lr)
