"""Sparse Hessians and sparse Newton on the chained Rosenbrock function.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/sparse_hessian.py [--quick]

f(x) = Σᵢ 100 (xᵢ₊₁ − xᵢ²)² + (1 − xᵢ)² (examples/chained_rosenbrock.ad), whose
Hessian is tridiagonal. In one process, timed round-robin (the best of the
rounds; JAX's dense Hessian in rounds of its own):

- spiread `Program.hessian(sparse=True)` called again (a kept run: its
  values replayed, with the recorded gradient, and its pattern, colouring
  and planned sweeps kept while the pattern holds; the first call parses,
  records and reads them), and its parts on one recorded run:
  the pattern, the colouring, the sparse Hessian set up each call (pattern,
  colouring, recovery and the sweeps: a new `second.SparseHessians`), the
  evaluation from a pattern (3 HVPs pushed as one batch through the recorded
  gradient, planned, and the recovery worked out), and that evaluation
  "prepared" (sweeps planned and recovery worked out before, as Newton's
  steps), against
- `jax.jit(jax.hessian(f))` dense, where it fits (n = 10⁴: 800 MB),
- a hand-written tridiagonal Hessian in numpy (three diagonals, a CSR matrix);
- the pattern against one dense gradient of the same program (spiread's
  reverse sweep on the recorded run, as its first: the loop, where the
  pattern is read fresh too; and "kept", the sweep the tape writes out
  once swept twice, `Tape.sweeps`), and the same for examples/bratu.ad's
  loss (a padded stencil's squared residual: pentadiagonal), and its
  `Program.hessian(pattern=True)` called again (a kept run: its values
  replayed, its pattern kept) against `Program.grad` called again;
- peak memory of a first `Program.hessian(sparse=True)` (tracemalloc), per entry of x;
- sparse Newton (`train --optimizer newton --sparse`) against
  `scipy.optimize.minimize(method="L-BFGS-B")` with spiread's gradients, to
  the minimum from x = 1.2 (every entry), n = 10⁴; L-BFGS-B to a gradient of 1e-10.
"""

from __future__ import annotations

import argparse
import os
import sys
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import have, limit_threads  # noqa: E402
from common import interleaved  # noqa: E402

limit_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

PROGRAM = (ROOT / "examples" / "chained_rosenbrock.ad").read_text()


def start(n: int) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1.0, 1.0, size=n)


def rosenbrock(xp, x):
    return xp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def numpy_hessian(x: np.ndarray):
    """The tridiagonal Hessian by hand, as a CSR matrix."""
    import scipy.sparse as sp
    n = len(x)
    main = np.zeros(n)
    main[:-1] = 1200 * x[:-1] ** 2 - 400 * x[1:] + 2
    main[1:] += 200
    off = -400 * x[:-1]
    return sp.diags([off, main, off], [-1, 0, 1], format="csr")


def spiread_parts(x: np.ndarray):
    """A recorded run with its gradient recorded, and its pattern and colouring."""
    from spiread_cli import second
    from spiread_cli.diagnostics import Source
    from spiread_cli.program import Program
    from spiread_cli.sparsity import hessian_pattern
    from spiread_cli.sparsity_colouring import colour_symmetric
    run = Program.parse(Source("chained_rosenbrock.ad", PROGRAM), ROOT).run({"x": x})
    ids = [run.bindings["x"]]
    order = second.SecondOrder(run, ["x"])
    pattern = hessian_pattern(run.tape, run.output, ids)
    colouring = colour_symmetric(pattern)
    return run, ids, order, pattern, colouring


def prepared(run, order, pattern=None, colouring=None):
    """The evaluation as Newton's steps call it: the sweeps planned and the
    recovery worked out once (second.SparseHessians, from the pattern and
    colouring given, else read and coloured here), then only the sweeps
    and the gather."""
    from spiread_cli import second
    hessians = second.SparseHessians(run.tape, run.output, {i: order.grad_ids[i] for i in order.ids.values()},
                                     pattern, colouring)
    return hessians


def fresh_gradient(text: str, values: dict):
    """A dense gradient as a run's first (`Tape.backward`'s loop), as the pattern is read fresh: on a run
    of its own, whose tape is never left keeping the sweep it writes out once swept twice (`Tape.sweeps`)."""
    from spiread_cli.diagnostics import Source
    from spiread_cli.program import Program
    run = Program.parse(Source("fresh.ad", text), ROOT).run(values)
    ids = [run.bindings[name] for name in values]

    def gradient():
        run.tape.sweeps.clear()
        return run.tape.backward(run.output, ids)
    return gradient


def hessian_factories(n: int) -> dict:
    import spiread_cli
    from spiread_cli.sparsity import hessian_pattern
    from spiread_cli.sparsity_colouring import colour_symmetric
    x = start(n)
    program = spiread_cli.compile(PROGRAM, base_dir=ROOT)
    run, ids, order, pattern, colouring = spiread_parts(x)
    factories = {
        "spiread sparse, called again": lambda: lambda: program.hessian(x=x, wrt="x", sparse=True),
        "spiread pattern": lambda: lambda: hessian_pattern(run.tape, run.output, ids),
        "spiread colouring": lambda: lambda: colour_symmetric(pattern),
        "spiread set up each call (pattern, colouring, recovery, sweeps)": lambda: lambda: prepared(run, order)(),
        "spiread evaluation from a pattern (plan, recovery, sweeps)":
            lambda: lambda: prepared(run, order, pattern, colouring)(),
        "spiread evaluation, prepared": lambda: prepared(run, order, pattern, colouring),
        "spiread dense gradient": lambda: fresh_gradient(PROGRAM, {"x": x}),
        "spiread dense gradient, kept": lambda: lambda: run.tape.backward(run.output, ids),
        "numpy by hand": lambda: lambda: numpy_hessian(x),
    }
    if have("jax") and n <= 10_000:
        def jax_dense():
            import jax
            import jax.numpy as jnp
            jax.config.update("jax_enable_x64", True)
            hessian = jax.jit(jax.hessian(lambda v: rosenbrock(jnp, v)))
            v = jnp.asarray(x)
            return lambda: hessian(v).block_until_ready()
        factories["jax.hessian dense (jit)"] = jax_dense
    return factories


def bratu_pattern_factories(n: int) -> dict:
    """examples/bratu.ad's loss (half the squared residual of a padded
    stencil: a pentadiagonal Hessian): its pattern against its gradient."""
    from spiread_cli.diagnostics import Source
    from spiread_cli.program import Program
    from spiread_cli.sparsity import hessian_pattern
    import spiread_cli
    text = (ROOT / "examples" / "bratu.ad").read_text()
    run = Program.parse(Source("bratu.ad", text), ROOT).run({"u": start(n) / 2})
    ids = [run.bindings["u"]]
    program = spiread_cli.compile(text, base_dir=ROOT)
    return {"bratu: spiread pattern": lambda: lambda: hessian_pattern(run.tape, run.output, ids),
            "bratu: spiread dense gradient": lambda: fresh_gradient(text, {"u": start(n) / 2}),
            "bratu: spiread dense gradient, kept": lambda: lambda: run.tape.backward(run.output, ids),
            "bratu: Program.hessian(pattern=True) called again":
                lambda: lambda: program.hessian(u=start(n) / 2, wrt="u", pattern=True),
            "bratu: Program.grad called again": lambda: lambda: program.grad(u=start(n) / 2, wrt="u")}


def peak_memory(n: int) -> float:
    """Peak bytes traced while computing the sparse Hessian end to end, per entry of x."""
    import spiread_cli
    program = spiread_cli.compile(PROGRAM, base_dir=ROOT)
    x = start(n)
    tracemalloc.start()
    program.hessian(x=x, wrt="x", sparse=True)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / n


def newton_against_lbfgs(n: int, rounds: int) -> dict:
    """Each solve from x = 1.2, timed in interleaved rounds (the best; steps
    timed by the process's CPU time when pinned, as every row here)."""
    import scipy.optimize
    import spiread_cli
    from spiread_cli.diagnostics import Source
    from spiread_cli.program import Program
    x0 = np.full(n, 1.2)
    program = spiread_cli.compile(PROGRAM, base_dir=ROOT)
    done: dict = {}

    def newton():
        trained = program.train(x=x0, wrt="x", optimizer="newton", sparse=True, steps=200, progress=False)
        done["newton (sparse)"] = len(trained.losses), trained.values["x"]

    # L-BFGS with spiread's gradients: the tape replayed at each x, then the reverse sweep.
    run = Program.parse(Source("chained_rosenbrock.ad", PROGRAM), ROOT).run({"x": x0})
    node, output = run.node("x"), run.tape.nodes[run.output]
    moved = run.tape.between([node.id], run.output)

    def loss_and_gradient(flat):
        node.set_value(flat)
        run.tape.replay(moved)
        return float(output.value), run.tape.backward(run.output, [node.id])[node.id].ravel()

    def lbfgs():
        found = scipy.optimize.minimize(loss_and_gradient, x0.ravel(), jac=True, method="L-BFGS-B",
                                        options={"maxiter": 100_000, "gtol": 1e-10, "ftol": 0.0})
        done["scipy L-BFGS-B"] = int(found.nit), found.x

    seconds = interleaved({"newton (sparse)": lambda: newton, "scipy L-BFGS-B": lambda: lbfgs}, rounds, 1,
                          statistic=min)
    return {name: {"seconds": seconds[name], "steps": steps, "loss": float(program.eval(x=x)["loss"])}
            for name, (steps, x) in done.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = 3 if args.quick else 7
    for n in (10_000, 100_000):
        factories = hessian_factories(n) | bratu_pattern_factories(n)
        # JAX's dense Hessian (800 MB) in rounds of its own: between the others it leaves cold
        # caches and page faults to whichever step follows it in every round.
        dense = {k: factories.pop(k) for k in list(factories) if "dense (jit)" in k}
        results = interleaved(factories, rounds, 1, statistic=min)
        results |= interleaved(dense, rounds, 1, statistic=min) if dense else {}
        print(f"\nn = {n:,}: sparse Hessian of the chained Rosenbrock function (best of {rounds} interleaved rounds, "
              f"load average {os.getloadavg()[0]:.1f})")
        hand = results["numpy by hand"]
        for name, seconds in results.items():
            print(f"  {name:64s} {seconds * 1e3:10.3f} ms  {seconds / hand:8.2f}× numpy by hand")
        print(f"  called again, pattern ÷ gradient (bratu.ad's loss): "
              f"{results['bratu: Program.hessian(pattern=True) called again'] / results['bratu: Program.grad called again']:.2f}")
        for kept in ("", ", kept"):
            print(f"  pattern ÷ dense gradient{kept}: "
                  f"{results['spiread pattern'] / results['spiread dense gradient' + kept]:.2f} (bratu.ad's loss: "
                  f"{results['bratu: spiread pattern'] / results['bratu: spiread dense gradient' + kept]:.2f})")
        run, ids, order, pattern, colouring = spiread_parts(start(n))
        print(f"  sweeps: {colouring.count} ({colouring.kind} colouring), {pattern.nnz} nonzeros")
        print(f"  peak memory, end to end: {peak_memory(n):.0f} bytes per entry of x")
    if have("scipy"):
        n = 10_000
        print(f"\nn = {n:,}: to the minimum from x = 1.2 (best of {rounds} interleaved rounds)")
        for name, r in newton_against_lbfgs(n, rounds).items():
            print(f"  {name:20s} {r['seconds']:8.3f} s  {r['steps']:6d} steps  loss {r['loss']:.3g}")


if __name__ == "__main__":
    main()
