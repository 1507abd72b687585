"""Optimizers for `spiread train`: plain and momentum SGD, and Adam.

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


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


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
        raise usage_error("`--momentum` is for sgd; adam has its own (beta1 = 0.9)")
    return Adam(lr)
