"""Sparse Jacobians: `Program.jacobian(sparse=True)` on an elementwise map and
a tridiagonal residual, against the dense Jacobian.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/sparse_jacobian.py [--quick] [--n N]

Two programs of one vector x of n entries (n = 10⁴ by default):

- elementwise: y = x.tanh * x.exp + x.square (a diagonal Jacobian: 1 sweep);
- banded: the Bratu residual of examples/bratu.ad (tridiagonal: 3 sweeps).

In one process, timed round-robin (best of the rounds; the dense steps, n²
entries each, in rounds of their own, as their page faults and cold caches
would fall on the step after them): spiread's sparse Jacobian called again
(`Program.jacobian(sparse=True)`: a kept run, its values replayed and its
plan kept: the batched sweeps and the recovery), the same on one recorded
run set up each call (no parse, no recording: the pattern, the colouring,
the recovery worked out, the sweeps) and with its plan kept, of the set-up
the pattern and colouring alone, and the pattern alone against one reverse
sweep of the same run (the vector-Jacobian product of one cotangent: what
one gradient of the program costs; as the run's first, the loop, where the
pattern is read fresh too, and "kept": the sweep the tape writes out once
swept twice, `Tape.sweeps`); spiread's dense Jacobian
(`Program.jacobian`, n² entries), and `jax.jit(jax.jacfwd(f))` dense where
JAX is installed; each sparse result is checked equal to the dense one first.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import have, limit_threads  # noqa: E402
from common import interleaved  # noqa: E402

ELEMENTWISE = "x = [0.5]\ny = x.tanh * x.exp + x.square\n"
BANDED = ("x = [0.5]\nh = 1 / (size(x) + 1)\npadded = hstack([0.0], x, [0.0])\n"  # examples/bratu.ad, λ = 1
          "residual = (padded[:-2] - 2 * x + padded[2:]) / h ** 2 + x.exp\n")


def elementwise(xp, x):
    return xp.tanh(x) * xp.exp(x) + x ** 2


def bratu(xp, x):
    h = 1 / (len(x) + 1)
    padded = xp.concatenate([xp.zeros(1), x, xp.zeros(1)])
    return (padded[:-2] - 2 * x + padded[2:]) / h ** 2 + xp.exp(x)


def implementations(text: str, f, x: np.ndarray, with_dense: bool) -> dict:
    import spiread_cli
    from spiread_cli.jacobian import jacobian_pattern, sparse_jacobian
    from spiread_cli.program import Program
    from spiread_cli.sources import Source

    from spiread_cli.sparsity import jacobian_pattern as pattern_alone

    prog = spiread_cli.compile(text)
    recorded = Program.parse(Source("bench.ad", text), ROOT).run({"x": x})
    expected = prog.jacobian(x=x, wrt="x", sparse=True)
    tape, output, wrt = recorded.tape, recorded.output, [recorded.bindings["x"]]
    cotangent = np.ones((1,) + tape.nodes[output].shape)
    cold = Program.parse(Source("bench.ad", text), ROOT).run({"x": x})

    first = Program.parse(Source("bench.ad", text), ROOT).run({"x": x})  # a run of its own: `kept` keeps its sweep

    def fresh_sweep():  # the run's first sweep (the loop), as the pattern is read fresh: not one its tape keeps
        first.tape.sweeps.clear()
        return first.tape.backward(first.output, [first.bindings["x"]], cotangents=cotangent)

    def set_up_each_call():
        cold.prepared.clear()  # what the run kept: its plan, its pattern read, its sweeps' plans
        return sparse_jacobian(cold, ["x"])

    def pattern_and_colouring():  # read fresh: a run keeps what it read
        cold.prepared.clear()
        return jacobian_pattern(cold, ["x"])

    steps = {
        "spiread sparse, called again": lambda: lambda: prog.jacobian(x=x, wrt="x", sparse=True),
        "spiread sparse, set up each call": lambda: set_up_each_call,
        "spiread sparse, plan kept": lambda: lambda: sparse_jacobian(recorded, ["x"]),
        "  of which pattern + colouring": lambda: pattern_and_colouring,
        "  of which pattern": lambda: lambda: pattern_alone(tape, output, wrt),
        "one reverse sweep (a VJP)": lambda: lambda: fresh_sweep(),
        "one reverse sweep, kept": lambda: lambda: tape.backward(output, wrt, cotangents=cotangent),
    }
    if with_dense:
        dense = prog.jacobian(x=x, wrt="x").blocks["x"]
        assert np.allclose(expected.toarray(), dense, rtol=1e-12, atol=1e-12)
        steps["spiread dense"] = lambda: lambda: prog.jacobian(x=x, wrt="x")
        if have("jax"):
            import jax
            jax.config.update("jax_enable_x64", True)
            jacobian = jax.jit(jax.jacfwd(lambda v: f(jax.numpy, v)))
            assert np.allclose(np.asarray(jacobian(x)), dense, rtol=1e-12, atol=1e-12)
            steps["jax.jit(jacfwd) dense"] = lambda: lambda: jacobian(x).block_until_ready()
    return steps, expected.sweeps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--no-dense", action="store_true", help="skip the dense Jacobians (n² entries)")
    args = parser.parse_args()
    limit_threads(1)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, size=args.n)
    rounds = 3 if args.quick else 5
    for name, text, f in (("elementwise", ELEMENTWISE, elementwise), ("banded (Bratu)", BANDED, bratu)):
        steps, sweeps = implementations(text, f, x, not args.no_dense)
        # The dense steps (n² entries) in rounds of their own: between sparse ones they leave
        # cold caches to whichever step follows them in every round.
        dense = {k: make for k, make in steps.items() if "dense" in k}
        times = interleaved({k: make for k, make in steps.items() if k not in dense}, rounds, 1, statistic=min)
        times |= interleaved(dense, rounds, 1, statistic=min) if dense else {}
        fastest_dense = min((t for k, t in times.items() if "dense" in k), default=None)
        print(f"{name}, n = {args.n}: {sweeps} sweep(s) (best of {rounds} interleaved rounds, "
              f"load average {os.getloadavg()[0]:.1f})")
        for k, t in times.items():
            ratio = f"  ({fastest_dense / t:.0f}x faster than the fastest dense)" if fastest_dense and "spiread sparse" in k else ""
            print(f"  {k:34s} {t * 1e3:10.3f} ms{ratio}")
        for sweep in ("one reverse sweep (a VJP)", "one reverse sweep, kept"):
            print(f"  pattern ÷ {sweep}: {times['  of which pattern'] / times[sweep]:.2f}; pattern + colouring ÷ it: "
                  f"{times['  of which pattern + colouring'] / times[sweep]:.2f}")


if __name__ == "__main__":
    main()
