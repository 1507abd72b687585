"""Dense Jacobians against JAX and PyTorch (float64, CPU), in one process.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/jacobian.py [--quick] [--sizes 100,300]

Two maps of x ∈ Rⁿ, n = 100 … 4,000, each Jacobian n×n:

- **elementwise**: y = tanh(x) · exp(x) + x², a diagonal Jacobian computed
  densely (no sparsity: that is `--sparse`'s business);
- **mlp output layer**: y = W₂ tanh(W₁ x + b₁) + b₂ with 64 hidden units, so
  ∂y/∂x = W₂ diag(1 − h²) W₁ is dense.

spiread is `Program.jacobian(x=…, wrt="x", mode=…)` from the Python API, as a
user calls it: the first call runs the program, the later ones replay that
run with the values (spiread_cli/kept_runs.py), as `jax.jit` reuses its
trace; JAX is `jax.jit(jax.jacfwd(f))` and `jax.jit(jax.jacrev(f))`; PyTorch is
`torch.func.jacfwd(f)` and `torch.func.jacrev(f)` (eager, vmapped). Each
implementation is checked against the others before it is timed, then timed
in interleaved rounds (run.py's harness): the best round of each, since on a
shared machine the load only ever adds time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import have, limit_threads  # noqa: E402

THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
limit_threads(THREADS)
SIZES = (100, 300, 1000, 4000)
HIDDEN = 64

ELEMENTWISE = "x = zeros(3)\ny = x.tanh * x.exp + x * x\n"
MLP = """x = zeros(3)
W1 = zeros(64, 3)
b1 = zeros(64)
W2 = zeros(3, 64)
b2 = zeros(3)
y = W2 @@ (W1 @@ x + b1).tanh + b2
"""


def data(workload: str, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    arrays = {"x": rng.standard_normal(n) / 2}
    if workload == "mlp output layer":
        arrays.update(W1=rng.standard_normal((HIDDEN, n)) / np.sqrt(n), b1=rng.standard_normal(HIDDEN) / 10,
                      W2=rng.standard_normal((n, HIDDEN)) / 8, b2=rng.standard_normal(n) / 10)
    return arrays


def spiread_jacobian(workload: str, arrays: dict, mode: str):
    import spiread_cli
    prog = spiread_cli.compile(ELEMENTWISE if workload == "elementwise" else MLP)
    return lambda: prog.jacobian(arrays, wrt="x", mode=mode)["x"]


def _jax_function(workload: str, arrays: dict):
    import jax.numpy as jnp
    if workload == "elementwise":
        return lambda x: jnp.tanh(x) * jnp.exp(x) + x * x
    W1, b1, W2, b2 = (jnp.asarray(arrays[k]) for k in ("W1", "b1", "W2", "b2"))
    return lambda x: W2 @ jnp.tanh(W1 @ x + b1) + b2


def jax_jacobian(workload: str, arrays: dict, mode: str):
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    f = _jax_function(workload, arrays)
    jac = jax.jit(jax.jacfwd(f) if mode == "forward" else jax.jacrev(f))
    x = jnp.asarray(arrays["x"])
    return lambda: jax.block_until_ready(jac(x))


def torch_jacobian(workload: str, arrays: dict, mode: str):
    import torch
    torch.set_num_threads(THREADS)
    if workload == "elementwise":
        def f(x):
            return torch.tanh(x) * torch.exp(x) + x * x
    else:
        W1, b1, W2, b2 = (torch.from_numpy(arrays[k]) for k in ("W1", "b1", "W2", "b2"))

        def f(x):
            return W2 @ torch.tanh(W1 @ x + b1) + b2
    jac = torch.func.jacfwd(f) if mode == "forward" else torch.func.jacrev(f)
    x = torch.from_numpy(arrays["x"])
    return lambda: jac(x)


def implementations(workload: str, n: int) -> dict:
    arrays = data(workload, n)
    impls = {}
    for mode, short in (("forward", "fwd"), ("reverse", "rev")):
        impls[f"spiread {short}"] = lambda mode=mode: spiread_jacobian(workload, arrays, mode)
        if have("jax"):
            impls[f"JAX jit jac{short}"] = lambda mode=mode: jax_jacobian(workload, arrays, mode)
        if have("torch"):
            impls[f"torch.func.jac{short}"] = lambda mode=mode: torch_jacobian(workload, arrays, mode)
    return impls


def results(sizes=SIZES, rounds: int = 5) -> dict:
    """{workload: {n: {implementation: seconds}}}, each checked first."""
    from common import interleaved
    out = {}
    for workload in ("elementwise", "mlp output layer"):
        out[workload] = {}
        for n in sizes:
            impls = implementations(workload, n)
            computed = {name: np.asarray(make()()) for name, make in impls.items()}
            for name, j in computed.items():
                np.testing.assert_allclose(j, computed["spiread rev"], rtol=1e-10, atol=1e-12, err_msg=name)
            out[workload][n] = interleaved(impls, rounds, per_round=1 if n >= 1000 else 3, statistic=min)
    return out


def table(found: dict) -> str:
    lines = []
    for workload, by_size in found.items():
        names = list(next(iter(by_size.values())))
        lines += [f"**dense Jacobian, {workload}** (n×n, best round per Jacobian)", "",
                  "| n | " + " | ".join(names) + " | spiread ÷ JAX (best mode each) |",
                  "|---:|" + "---:|" * (len(names) + 1)]
        for n, times in by_size.items():
            ours = min(t for name, t in times.items() if name.startswith("spiread"))
            jax_best = min((t for name, t in times.items() if name.startswith("JAX")), default=float("nan"))
            lines.append(f"| {n:,} | " + " | ".join(_ms(times[name]) for name in names) + f" | {ours / jax_best:.2f}× |")
        lines.append("")
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="n, comma-separated")
    args = parser.parse_args()
    print(table(results(tuple(int(n) for n in args.sizes.split(",")), 3 if args.quick else 7)))
    print(f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
