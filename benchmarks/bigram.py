"""Bigram: the makemore bigram model, one step = forward + backward + SGD.

228,146 (previous char, next char) pairs from names.txt, one-hot encoded
(228,146 × 27), times W (27 × 27), softmax, negative log-likelihood of the
next character. Every implementation does the same work from the same data.
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


def implementations(ctx: dict) -> dict:
    xs, ys = pairs()
    impls = {"spiread": lambda: spiread_step(xs, ys, ctx),
             "numpy (by hand)": lambda: numpy_step(xs, ys)}
    if have("torch"):
        impls["PyTorch eager"] = lambda: torch_step(xs, ys)
    if have("jax"):
        impls["JAX jit"] = lambda: jax_step(xs, ys)
    if have("autograd"):
        impls["HIPS autograd"] = lambda: autograd_step(xs, ys)
    return impls


def spiread_step(xs, ys, ctx):
    from spiread_cli import api
    from spiread_cli.diagnostics import Diagnostics
    from spiread_cli.rewrite import fuse

    folder = Path(tempfile.mkdtemp(prefix="spiread-bigram-"))
    ctx.setdefault("cleanup", []).append(folder)
    np.save(folder / "xs.npy", xs.astype(float))
    np.save(folder / "ys.npy", ys.astype(float))
    (folder / "bigram.ad").write_text(PROGRAM)
    run = api.run_file(str(folder / "bigram.ad"))
    tape, output, (w,) = run.tape, run.output, [run.bindings["W"]]
    if ctx.get("rewrite", True):
        fused = fuse(tape, output, [w], hoist=ctx.get("hoist", True))
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


def numpy_step(xs, ys):
    """The floor for this design: the fused computation written out by hand."""
    W = initial_weights()
    n = len(xs)
    rows = np.arange(n)

    def step():
        nonlocal W
        logits = W[xs]                                   # one-hot @ W is a row gather
        logits -= logits.max(axis=1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=1, keepdims=True)      # probabilities, in place
        loss = -np.log(logits[rows, ys]).mean()
        logits[rows, ys] -= 1.0                          # d loss / d logits = (p - onehot) / n
        logits /= n
        grad = np.zeros_like(W)
        np.add.at(grad, xs, logits)                      # the gather's backward: scatter-add
        W -= LR * grad
        return loss
    return step


def torch_step(xs, ys):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(2)
    xs_t, ys_t = torch.from_numpy(xs), torch.from_numpy(ys)
    xenc = F.one_hot(xs_t, num_classes=27).double()
    W = torch.tensor(initial_weights(), requires_grad=True)
    rows = torch.arange(len(xs))

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


def jax_step(xs, ys):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    xenc = jax.nn.one_hot(jnp.asarray(xs), 27, dtype=jnp.float64)
    ys_j = jnp.asarray(ys)
    rows = jnp.arange(len(xs))

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


def autograd_step(xs, ys):
    import autograd.numpy as anp
    from autograd import value_and_grad
    xenc = np.zeros((len(xs), 27))
    xenc[np.arange(len(xs)), xs] = 1.0
    rows = np.arange(len(xs))

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
