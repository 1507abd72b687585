"""MLP: 4096 × 256 data, two 256-wide tanh layers, a 10-way softmax
cross-entropy; one step = forward + backward + SGD on all six parameters.
BLAS-bound: the six big matrix products dominate."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from common import have

N, D, H, K = 4096, 256, 256, 10
LR = 0.1
PARAMS = ("W1", "b1", "W2", "b2", "W3", "b3")
PROGRAM = """\
X = load("X.npy")
y = load("y.npy")
W1 = load("W1.npy")
b1 = load("b1.npy")
W2 = load("W2.npy")
b2 = load("b2.npy")
W3 = load("W3.npy")
b3 = load("b3.npy")
h1 = (X @@ W1 + b1).tanh
h2 = (h1 @@ W2 + b2).tanh
logits = h2 @@ W3 + b3
loss = -logits.logSoftmaxRows.arrange(arange(rows(X)), y).mean
"""


def data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {"X": rng.standard_normal((N, D)), "y": rng.integers(0, K, N).astype(float),
            "W1": rng.standard_normal((D, H)) / np.sqrt(D), "b1": np.zeros(H),
            "W2": rng.standard_normal((H, H)) / np.sqrt(H), "b2": np.zeros(H),
            "W3": rng.standard_normal((H, K)) / np.sqrt(H), "b3": np.zeros(K)}


def implementations(ctx: dict) -> dict:
    arrays = data()
    impls = {"spiread": lambda: spiread_step(arrays, ctx),
             "numpy (by hand)": lambda: numpy_step(arrays)}
    if have("torch"):
        impls["PyTorch eager"] = lambda: torch_step(arrays)
    if have("jax"):
        impls["JAX jit"] = lambda: jax_step(arrays)
    if have("autograd"):
        impls["HIPS autograd"] = lambda: autograd_step(arrays)
    return impls


def spiread_step(arrays, ctx):
    from spiread_cli.program import Program
    from spiread_cli.diagnostics import Diagnostics
    from spiread_cli.rewrite import fuse
    from spiread_cli.train import release_unfused

    folder = Path(tempfile.mkdtemp(prefix="spiread-mlp-"))
    ctx.setdefault("cleanup", []).append(folder)
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    (folder / "mlp.ad").write_text(PROGRAM)
    run = Program.open(str(folder / "mlp.ad")).run(evaluate=False)  # as `spiread train` does (benchmarks/bigram.py)
    tape, output, ids = run.tape, run.output, [run.bindings[p] for p in PARAMS]
    if ctx.get("rewrite", True):
        fused = fuse(tape, output, ids, diagnostics=run.diagnostics)
        release_unfused(run, fused)
        tape, output, ids = fused.tape, fused.output, fused.wrt
    diagnostics = Diagnostics()
    leaves = [tape.nodes[i] for i in ids]
    moved = tape.between(ids, output)

    def step():
        tape.replay(moved)  # as `train` replays: warnings are checked when a program is first run
        grads = tape.backward(output, ids, diagnostics)
        for leaf in leaves:
            leaf.set_value(leaf.value - LR * grads[leaf.id])
        return tape.nodes[output].value
    return step


def numpy_step(arrays):
    """Forward and backward written out by hand: the floor for this design."""
    X, y = arrays["X"], arrays["y"].astype(np.intp)
    p = {name: arrays[name].copy() for name in PARAMS}
    rows = np.arange(N)

    def step():
        h1 = np.tanh(X @ p["W1"] + p["b1"])
        h2 = np.tanh(h1 @ p["W2"] + p["b2"])
        z = h2 @ p["W3"] + p["b3"]
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        total = e.sum(axis=1, keepdims=True)
        loss = -(z[rows, y] - np.log(total[:, 0])).mean()
        dz = e / total
        dz[rows, y] -= 1.0
        dz /= N
        d2 = (dz @ p["W3"].T) * (1 - h2 * h2)
        d1 = (d2 @ p["W2"].T) * (1 - h1 * h1)
        grads = {"W3": h2.T @ dz, "b3": dz.sum(axis=0), "W2": h1.T @ d2, "b2": d2.sum(axis=0),
                 "W1": X.T @ d1, "b1": d1.sum(axis=0)}
        for name in PARAMS:
            p[name] -= LR * grads[name]
        return loss
    return step


def torch_step(arrays):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(2)
    X, y = torch.from_numpy(arrays["X"]), torch.from_numpy(arrays["y"]).long()
    p = {name: torch.tensor(arrays[name], requires_grad=True) for name in PARAMS}

    def step():
        h1 = torch.tanh(X @ p["W1"] + p["b1"])
        h2 = torch.tanh(h1 @ p["W2"] + p["b2"])
        loss = F.cross_entropy(h2 @ p["W3"] + p["b3"], y)
        for t in p.values():
            t.grad = None
        loss.backward()
        with torch.no_grad():
            for t in p.values():
                t -= LR * t.grad
        return loss.item()
    return step


def jax_step(arrays):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    X, y = jnp.asarray(arrays["X"]), jnp.asarray(arrays["y"].astype(np.int64))

    def loss_fn(p):
        h1 = jnp.tanh(X @ p["W1"] + p["b1"])
        h2 = jnp.tanh(h1 @ p["W2"] + p["b2"])
        logp = jax.nn.log_softmax(h2 @ p["W3"] + p["b3"])
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    @jax.jit
    def update(p):
        loss, grads = jax.value_and_grad(loss_fn)(p)
        return loss, {k: p[k] - LR * grads[k] for k in p}

    p = {name: jnp.asarray(arrays[name]) for name in PARAMS}

    def step():
        nonlocal p
        loss, p = update(p)
        return float(loss)
    return step


def autograd_step(arrays):
    import autograd.numpy as anp
    from autograd import value_and_grad
    X, y = arrays["X"], arrays["y"].astype(np.intp)
    rows = np.arange(N)

    def loss_fn(p):
        h1 = anp.tanh(anp.dot(X, p["W1"]) + p["b1"])
        h2 = anp.tanh(anp.dot(h1, p["W2"]) + p["b2"])
        z = anp.dot(h2, p["W3"]) + p["b3"]
        m = anp.max(z, axis=1, keepdims=True)
        logp = z - m - anp.log(anp.sum(anp.exp(z - m), axis=1, keepdims=True))
        return -anp.mean(logp[rows, y])

    grad_fn = value_and_grad(loss_fn)
    p = {name: arrays[name].copy() for name in PARAMS}

    def step():
        nonlocal p
        loss, grads = grad_fn(p)
        p = {k: p[k] - LR * grads[k] for k in p}
        return loss
    return step


if __name__ == "__main__":  # python benchmarks/mlp.py [ROUNDS]: interleaved as run.py times them
    import shutil
    import sys

    from common import interleaved, ms
    ctx: dict = {}
    times = interleaved(implementations(ctx), int(sys.argv[1]) if len(sys.argv) > 1 else 7, 3, fair=True)
    for name, t in times.items():
        print(f"mlp {name:22} {ms(t):>10}   spiread ÷ it {times['spiread'] / t:.3f}×")
    for folder in ctx.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
