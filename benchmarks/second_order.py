"""Second derivatives against PyTorch and JAX (float64, CPU).

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/second_order.py [--quick]

- HVP on the mlp workload (benchmarks/mlp.py: 4096 × 256 data, two tanh
  layers, softmax cross-entropy, six parameters): one step is the loss and
  H·v for a random v over all parameters, at values set anew. spiread
  replays the forward pass, the part of its recorded gradient the products
  read (`refresh`) and its recorded sweep back from h = ⟨∇f, v⟩ (reverse
  over reverse); PyTorch is double backward (create_graph=True, then
  backward of ⟨g, v⟩: the whole gradient too); JAX is jit(jvp of grad)
  (forward over reverse; XLA drops the gradient's entries H·v does not read).
- The full Hessian of a 100-parameter function (a logistic regression over
  500 × 100 data with an L2 term): spiread's forward mode over the recorded
  gradient with 100 identity seeds in one batched sweep;
  torch.autograd.functional.hessian(vectorize=True); jit(jax.hessian).
- A kept call's fixed cost: the HVP of a 3-entry program, `(w * w).sum`,
  called again through the Python API, against jit(jvp of grad).

Peers that are not installed are left out. Prints the median time per step
over interleaved rounds and spiread's time over each peer's. Set
OPENBLAS_NUM_THREADS and OMP_NUM_THREADS alike for a fair comparison
(the figures in docs/performance.md say which).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import mlp  # noqa: E402
from common import have, limit_threads  # noqa: E402
from common import interleaved  # noqa: E402

# PyTorch's threads; set OPENBLAS_NUM_THREADS (numpy's) to the same number.
THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
limit_threads(THREADS)

# ------------------------------------------------------------- HVP on mlp


def spiread_hvp(arrays, v):
    from spiread_cli.program import Program
    from spiread_cli.rewrite import fuse
    from spiread_cli.second import HessianVectorProducts

    folder = Path(tempfile.mkdtemp(prefix="spiread-hvp-"))
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    (folder / "mlp.ad").write_text(mlp.PROGRAM)
    run = Program.open(str(folder / "mlp.ad")).run()
    fused = fuse(run.tape, run.output, [run.bindings[p] for p in mlp.PARAMS])
    tape, ids = fused.tape, fused.wrt
    recorded_from = len(tape.nodes)
    products = HessianVectorProducts(tape, tape.backward_graph(fused.output, ids), recorded_from)
    forward = tape.between(ids, fused.output)
    directions = dict(zip(ids, v))

    def step():
        tape.replay(forward)
        products.refresh()
        return products(directions, ids)
    return step


def torch_hvp(arrays, v):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(THREADS)
    X, y = torch.from_numpy(arrays["X"]), torch.from_numpy(arrays["y"]).long()
    p = [torch.tensor(arrays[name], requires_grad=True) for name in mlp.PARAMS]
    vs = [torch.from_numpy(x) for x in v]

    def step():
        W1, b1, W2, b2, W3, b3 = p
        h1 = torch.tanh(X @ W1 + b1)
        h2 = torch.tanh(h1 @ W2 + b2)
        loss = F.cross_entropy(h2 @ W3 + b3, y)
        grads = torch.autograd.grad(loss, p, create_graph=True)
        h = sum((g * d).sum() for g, d in zip(grads, vs))
        return torch.autograd.grad(h, p)
    return step


def jax_hvp(arrays, v):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    X, y = jnp.asarray(arrays["X"]), jnp.asarray(arrays["y"].astype(np.int64))

    def loss_fn(p):
        W1, b1, W2, b2, W3, b3 = p
        h1 = jnp.tanh(X @ W1 + b1)
        h2 = jnp.tanh(h1 @ W2 + b2)
        logp = jax.nn.log_softmax(h2 @ W3 + b3)
        return -jnp.take_along_axis(logp, y[:, None], axis=1).mean()

    hvp = jax.jit(lambda p, d: jax.jvp(jax.grad(loss_fn), (p,), (d,))[1])
    p = tuple(jnp.asarray(arrays[name]) for name in mlp.PARAMS)
    d = tuple(jnp.asarray(x) for x in v)

    def step():
        return jax.block_until_ready(hvp(p, d))
    return step


# ------------------------------------------------- Hessian of 100 parameters

ROWS, PARAMETERS = 500, 100
LOGISTIC = """\
X = load("X.npy")
y = load("y.npy")
w = load("w.npy")
margins = (X @@ w) * y
loss = (((margins * -1).exp + 1).log).mean + 0.01 * (w * w).sum
"""


def logistic_data():
    rng = np.random.default_rng(2)
    return {"X": rng.standard_normal((ROWS, PARAMETERS)) / 10, "y": rng.choice([-1.0, 1.0], ROWS),
            "w": rng.standard_normal(PARAMETERS) / 10}


def spiread_hessian(arrays):
    from spiread_cli.program import Program
    from spiread_cli.second import SecondOrder

    folder = Path(tempfile.mkdtemp(prefix="spiread-hessian-"))
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    (folder / "logistic.ad").write_text(LOGISTIC)
    state = SecondOrder(Program.open(str(folder / "logistic.ad")).run(), ["w"])
    return lambda: state.hessian()["w"]["w"]


def torch_hessian(arrays):
    import torch
    torch.set_num_threads(THREADS)
    X, y, w = (torch.from_numpy(arrays[k]) for k in ("X", "y", "w"))

    def f(w):
        return torch.log(torch.exp(-(X @ w) * y) + 1).mean() + 0.01 * (w * w).sum()
    return lambda: torch.autograd.functional.hessian(f, w, vectorize=True)


def jax_hessian(arrays):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    X, y, w = (jnp.asarray(arrays[k]) for k in ("X", "y", "w"))

    def f(w):
        return jnp.log(jnp.exp(-(X @ w) * y) + 1).mean() + 0.01 * (w * w).sum()
    hessian = jax.jit(jax.hessian(f))
    return lambda: jax.block_until_ready(hessian(w))


# ------------------------------------- dense Hessian of a 50-row loss, n = 100…1000

SOFTMAX_LOSS = """\
A = zeros(50, 3)
w = zeros(3)
loss = (A @@ w).tanh.sum + (w ** 4).sum / 4 + (A @@ w).exp.normaliseRowsL1.log.sum
"""
DENSE_SIZES = (100, 300, 1000)


def softmax_loss_data(n: int) -> dict:
    rng = np.random.default_rng(n)
    return {"A": rng.standard_normal((50, n)) / np.sqrt(n), "w": rng.standard_normal(n) / 2,
            "v": rng.standard_normal(n)}


def spiread_dense(arrays, hvp: bool):
    """In process through the Python API, as a user calls it: the first call
    runs the program and records its gradient, the later ones replay that
    recording with the values (kept_runs.py)."""
    import spiread_cli
    prog = spiread_cli.compile(SOFTMAX_LOSS)
    A, w, v = arrays["A"], arrays["w"], arrays["v"]
    if hvp:
        return lambda: prog.hessian(A=A, w=w, wrt="w", hvp={"w": v}).products["w"]
    return lambda: prog.hessian(A=A, w=w, wrt="w").blocks["w"]["w"]


def jax_dense(arrays, hvp: bool):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    A, w, v = (jnp.asarray(arrays[k]) for k in ("A", "w", "v"))

    def f(w):
        z = A @ w
        e = jnp.exp(z)
        return jnp.tanh(z).sum() + (w ** 4).sum() / 4 + jnp.log(e / e.sum()).sum()
    if hvp:
        product = jax.jit(lambda w, v: jax.jvp(jax.grad(f), (w,), (v,))[1])
        return lambda: jax.block_until_ready(product(w, v))
    hessian = jax.jit(jax.hessian(f))
    return lambda: jax.block_until_ready(hessian(w))


def dense_hessians(repeats: int) -> None:
    """The dense Hessian and an HVP of `SOFTMAX_LOSS` (A 50×n) at each n,
    spiread against jax.jit(jax.hessian) and jit(jvp of grad): best of the
    interleaved rounds, as issue 24 measured them."""
    for n in DENSE_SIZES:
        arrays = softmax_loss_data(n)
        for hvp in (False, True):
            factories = {"spiread": lambda hvp=hvp: spiread_dense(arrays, hvp)}
            if have("jax"):
                factories["JAX jit(jvp of grad)" if hvp else "JAX jit(hessian)"] = \
                    lambda hvp=hvp: jax_dense(arrays, hvp)

            def same(results):
                for name, h in results.items():
                    np.testing.assert_allclose(np.asarray(h), results["spiread"], rtol=1e-9, atol=1e-11,
                                               err_msg=name)
            compare(f"{'HVP' if hvp else 'dense Hessian'} of the 50-row softmax loss, n = {n} (best of {repeats})",
                    factories, repeats, same, statistic=min)


def fixed_cost(repeats: int) -> None:
    """What a kept call costs whatever the program: the HVP of `(w * w).sum`
    over 3 entries, `Program.hessian(w=…, wrt="w", hvp=…)` called again,
    against jit(jvp of grad) of the same (docs/performance.md, "Kept runs")."""
    import spiread_cli
    w, v = np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.5, -0.25])
    prog = spiread_cli.compile("w = zeros(3)\nloss = (w * w).sum\n")
    factories = {"spiread": lambda: lambda: prog.hessian(w=w, wrt="w", hvp={"w": v}).products["w"]}
    if have("jax"):
        def jax_fixed():
            import jax
            jax.config.update("jax_enable_x64", True)
            product = jax.jit(lambda w, v: jax.jvp(jax.grad(lambda w: (w * w).sum()), (w,), (v,))[1])
            return lambda: jax.block_until_ready(product(w, v))
        factories["JAX jit(jvp of grad)"] = jax_fixed

    def same(results):
        for name, h in results.items():
            np.testing.assert_allclose(np.asarray(h), 2 * v, rtol=1e-15, err_msg=name)
    compare(f"a kept call's fixed cost: the HVP of (w * w).sum, 3 entries (best of {repeats * 100})", factories,
            repeats * 100, same, statistic=min)


# ------------------------------------------------------------------- main


def compare(title: str, factories: dict, rounds: int, check, statistic=None) -> None:
    """Check that every implementation computes the same, then time them in
    interleaved rounds (run.py's harness), so load on the machine hits all
    alike: the median of the rounds, or `statistic` of them (min: the best)."""
    check({name: make()() for name, make in factories.items()})
    times = interleaved(factories, rounds, per_round=1, **({"statistic": statistic} if statistic else {}))
    base = times["spiread"]
    print(f"\n{title}")
    for name, seconds in times.items():
        ratio = "" if name == "spiread" else f"   spiread / {name} = {base / seconds:.2f}×"
        shown = f"{seconds * 1e6:9.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:9.2f} ms"
        print(f"  {name:<28} {shown}{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    repeats = 3 if parser.parse_args().quick else 9  # interleaved rounds

    arrays = mlp.data()
    rng = np.random.default_rng(3)
    v = [rng.standard_normal(arrays[name].shape) for name in mlp.PARAMS]
    factories = {"spiread": lambda: spiread_hvp(arrays, v)}
    if have("torch"):
        factories["PyTorch double backward"] = lambda: torch_hvp(arrays, v)
    if have("jax"):
        factories["JAX jit(jvp of grad)"] = lambda: jax_hvp(arrays, v)

    def same_hvp(results):
        ours = results["spiread"]
        ours = [ours[i] for i in sorted(ours)]
        for name, theirs in results.items():
            if name == "spiread":
                continue
            for a, b in zip(ours, theirs):
                np.testing.assert_allclose(a, np.asarray(b), rtol=1e-8, atol=1e-12, err_msg=name)
    compare(f"HVP on the mlp workload ({mlp.N}×{mlp.D}, hidden {mlp.H}, {mlp.K} classes)", factories, repeats,
            same_hvp)

    data = logistic_data()
    factories = {"spiread": lambda: spiread_hessian(data)}
    if have("torch"):
        factories["PyTorch functional.hessian"] = lambda: torch_hessian(data)
    if have("jax"):
        factories["JAX jit(hessian)"] = lambda: jax_hessian(data)

    def same_hessian(results):
        for name, h in results.items():
            np.testing.assert_allclose(np.asarray(h), results["spiread"], rtol=1e-9, atol=1e-14, err_msg=name)
    compare(f"full Hessian, {PARAMETERS} parameters (logistic regression on {ROWS} rows)", factories, repeats,
            same_hessian)
    dense_hessians(repeats)
    fixed_cost(repeats)


if __name__ == "__main__":
    main()
