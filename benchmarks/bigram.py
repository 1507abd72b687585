"""Bigram: the makemore bigram model, one step = forward + backward + SGD.

228,146 (previous char, next char) pairs from names.txt, one-hot encoded
(228,146 × 27), times W (27 × 27), softmax, negative log-likelihood of the
next character. Every implementation does the same work from the same data.

The dense variant (`dense_implementations`) is the same model fed a dense
228,146 × 27 matrix read from a file: each one-hot row smoothed towards the
uniform row, so no entry is 0 and no one-hot rewrite applies. Its step is a
real matrix product, softmax, log-likelihood and the product's transpose.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from common import NAMES, have

LR = 50.0
PROGRAM = """\
# the makemore bigram model, written as the spireAD seed is
xs = load("xs.npy")
ys = load("ys.npy")
W = randn(27, 27, seed=0)
xenc = onehot(xs, 27)
logits = xenc @@ W
probs = logits.exp.normaliseRowsL1
picked = probs.select(arange(rows(xs)), ys).mapRowsToScalar(ReductionOps.Sum)
loss = picked.log.mean * -1.0
loss.backward(W)
"""
DENSE_PROGRAM = """\
# the bigram model on dense inputs: no one-hot rows, so no row gather
X = load("X.npy")
ys = load("ys.npy")
W = randn(27, 27, seed=0)
logits = X @@ W
probs = logits.exp.normaliseRowsL1
picked = probs.select(arange(rows(X)), ys).mapRowsToScalar(ReductionOps.Sum)
loss = picked.log.mean * -1.0
loss.backward(W)
"""
SMOOTHING = 0.1


def pairs(path: Path = NAMES) -> tuple[np.ndarray, np.ndarray]:
    words = path.read_text().splitlines()[1:]  # the first line is the header `name`
    chars = sorted(set("".join(words)))
    index = {c: i + 1 for i, c in enumerate(chars)} | {".": 0}
    xs, ys = [], []
    for word in words:
        seq = [0] + [index[c] for c in word] + [0]
        xs.extend(seq[:-1])
        ys.extend(seq[1:])
    return np.array(xs), np.array(ys)


def initial_weights() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((27, 27))


def one_hot(xs: np.ndarray) -> np.ndarray:
    xenc = np.zeros((len(xs), 27))
    xenc[np.arange(len(xs)), xs] = 1.0
    return xenc


def smoothed(xs: np.ndarray) -> np.ndarray:
    """The dense variant's inputs: one-hot rows smoothed towards uniform."""
    return (1.0 - SMOOTHING) * one_hot(xs) + SMOOTHING / 27


def implementations(ctx: dict) -> dict:
    xs, ys = pairs()
    impls = {"spiread": lambda: spiread_step(xs, ys, ctx),
             "numpy (by hand)": lambda: numpy_step(xs, ys)}
    return impls | peers(lambda: one_hot(xs), ys)


def dense_implementations(ctx: dict) -> dict:
    xs, ys = pairs()
    impls = {"spiread": lambda: spiread_dense_step(smoothed(xs), ys, ctx),
             "numpy (by hand)": lambda: numpy_dense_step(smoothed(xs), ys)}
    return impls | peers(lambda: smoothed(xs), ys)


def peers(xenc, ys) -> dict:
    """The peers that are installed, each computing `xenc() @ W` as written
    (none of them turns a one-hot product into a gather)."""
    impls = {}
    if have("torch"):
        impls["PyTorch eager"] = lambda: torch_step(xenc(), ys)
    if have("jax"):
        impls["JAX jit"] = lambda: jax_step(xenc(), ys)
    if have("autograd"):
        impls["HIPS autograd"] = lambda: autograd_step(xenc(), ys)
    return impls


def spiread_step(xs, ys, ctx):
    return spiread_program_step(PROGRAM, {"xs": xs.astype(float), "ys": ys.astype(float)}, ctx)


def spiread_dense_step(X, ys, ctx):
    return spiread_program_step(DENSE_PROGRAM, {"X": X, "ys": ys.astype(float)}, ctx)


def spiread_program_step(program: str, arrays: dict[str, np.ndarray], ctx: dict):
    from spiread_cli.program import Program
    from spiread_cli.diagnostics import Diagnostics
    from spiread_cli.rewrite import fuse
    from spiread_cli.train import release_unfused

    folder = Path(tempfile.mkdtemp(prefix="spiread-bigram-"))
    ctx.setdefault("cleanup", []).append(folder)
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    (folder / "bigram.ad").write_text(program)
    # As `spiread train` does: record without computing, fuse, compute the
    # fused tape only, and let go of what only the program as written held.
    run = Program.open(str(folder / "bigram.ad")).run(evaluate=False)
    tape, output, (w,) = run.tape, run.output, [run.bindings["W"]]
    if ctx.get("rewrite", True):
        fused = fuse(tape, output, [w], hoist=ctx.get("hoist", True), diagnostics=run.diagnostics)
        release_unfused(run, fused)
        tape, output, (w,) = fused.tape, fused.output, fused.wrt
    diagnostics = Diagnostics()
    weights = tape.nodes[w]
    moved = tape.between([w], output)

    def step():
        tape.replay(moved)  # as `train` replays: warnings are checked when a program is first run
        grad = tape.backward(output, [w], diagnostics)[w]
        weights.set_value(weights.value - LR * grad)
        return tape.nodes[output].value
    return step


def softmax_loss_in_place(logits, rows, ys):
    """The mean negative log-likelihood of picks `ys` under the rows'
    softmax; `logits` becomes d loss / d logits = (p - onehot) / n."""
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)      # probabilities, in place
    loss = -np.log(logits[rows, ys]).mean()
    logits[rows, ys] -= 1.0
    logits /= len(logits)
    return loss


def numpy_step(xs, ys):
    """The floor for this design: the fused computation written out by hand."""
    W = initial_weights()
    rows = np.arange(len(xs))

    def step():
        nonlocal W
        logits = W[xs]                                   # one-hot @ W is a row gather
        loss = softmax_loss_in_place(logits, rows, ys)
        grad = np.zeros_like(W)
        np.add.at(grad, xs, logits)                      # the gather's backward: scatter-add
        W -= LR * grad
        return loss
    return step


def numpy_dense_step(X, ys):
    """The dense variant by hand: the product, softmax in place, the product's transpose."""
    W = initial_weights()
    rows = np.arange(len(X))

    def step():
        nonlocal W
        logits = X @ W
        loss = softmax_loss_in_place(logits, rows, ys)
        W -= LR * (X.T @ logits)
        return loss
    return step


def torch_step(xenc, ys):
    import torch
    torch.set_num_threads(2)
    ys_t = torch.from_numpy(ys)
    xenc = torch.from_numpy(xenc)
    W = torch.tensor(initial_weights(), requires_grad=True)
    rows = torch.arange(len(xenc))

    def step():  # makemore, part 1, as Karpathy writes it
        logits = xenc @ W
        counts = logits.exp()
        probs = counts / counts.sum(1, keepdim=True)
        loss = -probs[rows, ys_t].log().mean()
        W.grad = None
        loss.backward()
        with torch.no_grad():
            W.data += -LR * W.grad
        return loss.item()
    return step


def jax_step(xenc, ys):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    xenc = jnp.asarray(xenc)
    ys_j = jnp.asarray(ys)
    rows = jnp.arange(len(xenc))

    def loss_fn(W):
        counts = jnp.exp(xenc @ W)
        probs = counts / counts.sum(axis=1, keepdims=True)
        return -jnp.log(probs[rows, ys_j]).mean()

    @jax.jit
    def update(W):
        loss, grad = jax.value_and_grad(loss_fn)(W)
        return loss, W - LR * grad

    W = jnp.asarray(initial_weights())

    def step():
        nonlocal W
        loss, W = update(W)
        return float(loss)   # waits for the result
    return step


def autograd_step(xenc, ys):
    import autograd.numpy as anp
    from autograd import value_and_grad
    rows = np.arange(len(xenc))

    def loss_fn(W):
        counts = anp.exp(anp.dot(xenc, W))
        probs = counts / anp.sum(counts, axis=1, keepdims=True)
        return -anp.mean(anp.log(probs[rows, ys]))

    grad_fn = value_and_grad(loss_fn)
    W = initial_weights()

    def step():
        nonlocal W
        loss, grad = grad_fn(W)
        W = W - LR * grad
        return loss
    return step


if __name__ == "__main__":  # python benchmarks/bigram.py [ROUNDS]: both inputs, interleaved as run.py times them
    import shutil
    import sys

    from common import interleaved, ms
    ctx: dict = {}
    xs, ys = pairs()
    workloads = {"bigram": implementations(ctx) | {
        "spiread, no hoisting": lambda: spiread_step(xs, ys, ctx | {"hoist": False})},
        "bigram, dense inputs": dense_implementations(ctx)}
    for workload, impls in workloads.items():
        times = interleaved(impls, int(sys.argv[1]) if len(sys.argv) > 1 else 7, 2, fair=True)
        for name, t in times.items():
            print(f"{workload:21} {name:22} {ms(t):>10}   spiread ÷ it {times['spiread'] / t:.3f}×")
    for folder in ctx.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
