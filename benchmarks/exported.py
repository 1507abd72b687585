"""Exported code: one training step (forward, backward, SGD) of the bigram
(fused), the dense bigram and the mlp as `spiread export` writes them — the
Python module on numpy, and the ONNX model in onnxruntime — against
spiread's own step, numpy written by hand and JAX jit (the workloads and
peers of bigram.py and mlp.py, the same data and learning rates).

    python benchmarks/exported.py [ROUNDS [WORKLOAD...]]    # interleaved, as run.py times them
    python benchmarks/exported.py checks                     # what checking the arguments costs a call

Threads: numpy's OpenBLAS and onnxruntime take OMP_NUM_THREADS (with
OPENBLAS_NUM_THREADS set alike; onnxruntime's default is one a core); with
one, the process is pinned to one CPU (common.limit_threads), the one way
to hold JAX to one thread.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np

import bigram
import mlp
from common import have

WORKLOADS = ("bigram", "bigram, dense inputs", "mlp")


def implementations(workload: str, ctx: dict) -> dict:
    """Factories of one step each, by implementation name (common.py)."""
    if workload == "mlp":
        arrays = mlp.data()
        program, inputs, wrt, lr = mlp.PROGRAM, arrays, list(mlp.PARAMS), mlp.LR
        impls = {"spiread": lambda: mlp.spiread_step(arrays, ctx), "numpy (by hand)": lambda: mlp.numpy_step(arrays)}
        if have("jax"):
            impls["JAX jit"] = lambda: mlp.jax_step(arrays)
    else:
        xs, ys = bigram.pairs()
        dense = workload != "bigram"
        program = bigram.DENSE_PROGRAM if dense else bigram.PROGRAM
        inputs = ({"X": bigram.smoothed(xs)} if dense else {"xs": xs.astype(float)}) | {"ys": ys.astype(float)}
        wrt, lr = ["W"], bigram.LR
        if dense:
            impls = {"spiread": lambda: bigram.spiread_dense_step(bigram.smoothed(xs), ys, ctx),
                     "numpy (by hand)": lambda: bigram.numpy_dense_step(bigram.smoothed(xs), ys)}
        else:
            impls = {"spiread": lambda: bigram.spiread_step(xs, ys, ctx),
                     "numpy (by hand)": lambda: bigram.numpy_step(xs, ys)}
        if have("jax"):
            impls["JAX jit"] = lambda: bigram.jax_step(bigram.smoothed(xs) if dense else bigram.one_hot(xs), ys)
    impls["exported Python, numpy"] = lambda: python_step(export(program, inputs, wrt, "python", ctx), wrt, lr)
    if have("onnxruntime"):
        impls["exported ONNX, onnxruntime"] = lambda: onnx_step(export(program, inputs, wrt, "onnx", ctx), wrt, lr)
    return impls


def export(program: str, arrays: dict[str, np.ndarray], wrt: list[str], to: str, ctx: dict) -> tuple[Path, dict]:
    """`spiread export` of the program over these data (saved as .npy files it
    loads), in-process: the file, and the program's values of `wrt`."""
    from spiread_cli.export import graphs
    from spiread_cli.export_onnx import export_onnx
    from spiread_cli.export_python import export_python
    from spiread_cli.program import Program

    folder = Path(tempfile.mkdtemp(prefix="spiread-export-"))
    ctx.setdefault("cleanup", []).append(folder)
    for name, value in arrays.items():
        np.save(folder / f"{name}.npy", value)
    (folder / "program.ad").write_text(program)
    run = Program.open(str(folder / "program.ad")).run(evaluate=False)  # as the command runs it
    path = folder / ("step.py" if to == "python" else "step.onnx")
    (export_python if to == "python" else export_onnx)(graphs(run, wrt, hvp=False), path)
    return path, {name: run.node(name).value.copy() for name in wrt}


def python_step(exported: tuple[Path, dict], wrt: list[str], lr: float):
    path, values = exported
    spec = importlib.util.spec_from_file_location(f"exported_{path.parent.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def step():
        loss, grads = module.value_and_grad(**values)
        for name in wrt:
            values[name] -= lr * grads[name]
        return float(loss)
    return step


def onnx_step(exported: tuple[Path, dict], wrt: list[str], lr: float):
    import onnxruntime

    path, values = exported
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", "0"))  # 0: one a core
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = ["value", *(f"grad_{name}" for name in wrt)]

    def step():
        loss, *grads = session.run(outputs, values)
        for name, grad in zip(wrt, grads):
            values[name] -= lr * grad
        return float(loss)
    return step


def check_costs(ctx: dict) -> None:
    """What checking the exported module's arguments costs a call: the checks
    alone (`_checked`: each argument's kind and shape), taking the arguments
    with them (`_arguments`: checked, then float64 arrays of their
    namespace), taking them as the module did before it checked them (the
    namespace looked up, then its asarray), and the whole `value_and_grad`;
    for least_squares.ad (a 4×2 fit: the fixed cost of a call is all there
    is) and the workloads, best of 7, by step_clock()."""
    import timeit

    from array_api_compat import array_namespace
    from common import ROOT, step_clock

    example = ROOT / "examples" / "least_squares.ad"
    xs, ys = bigram.pairs()
    cases = {"least_squares.ad": (example.read_text(), {}, ["w"]),
             "bigram, dense inputs": (bigram.DENSE_PROGRAM, {"X": bigram.smoothed(xs), "ys": ys.astype(float)}, ["W"]),
             "mlp": (mlp.PROGRAM, mlp.data(), list(mlp.PARAMS))}
    for workload, (program, arrays, wrt) in cases.items():
        path, _ = export(program, arrays, wrt, "python", ctx)
        spec = importlib.util.spec_from_file_location(f"checked_{path.parent.name}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        given = module.inputs()
        if have("torch"):
            import torch
            given_torch = {name: torch.from_numpy(value) for name, value in given.items()}
            checks = min(timeit.repeat(lambda: [module._checked(v, module.SHAPES[n], "value_and_grad", n)
                                                for n, v in given_torch.items()], number=2000, repeat=7,
                                       timer=step_clock())) / 2000 * 1e6
            print(f"{workload:21} {len(given)} arguments: checks of PyTorch tensors {checks:.1f} us")

        def unchecked():
            xp = array_namespace(*given.values())
            return [xp.asarray(v, dtype=xp.float64) for v in given.values()]

        calls = {"checks": lambda: [module._checked(v, module.SHAPES[n], "value_and_grad", n) for n, v in given.items()],
                 "checked": lambda: module._arguments("value_and_grad", given, module.INPUTS, module.SHAPES),
                 "unchecked": unchecked, "value_and_grad": lambda: module.value_and_grad(**given)}
        us = {}
        for name, call in calls.items():
            number = 2000 if name != "value_and_grad" or workload == "least_squares.ad" else 3
            us[name] = min(timeit.repeat(call, number=number, repeat=7, timer=step_clock())) / number * 1e6
        print(f"{workload:21} {len(given)} arguments: checks {us['checks']:.1f} us "
              f"({us['checks'] / us['value_and_grad']:.2%} of value_and_grad, {us['value_and_grad']:.0f} us); "
              f"taken checked {us['checked']:.1f} us, before unchecked {us['unchecked']:.1f} us")


if __name__ == "__main__":
    import shutil
    import sys

    from common import interleaved, limit_threads, ms
    limit_threads(int(os.environ.get("OMP_NUM_THREADS", "0")))
    ctx: dict = {}
    if sys.argv[1:] == ["checks"]:
        check_costs(ctx)
    for workload in [] if sys.argv[1:] == ["checks"] else sys.argv[2:] or WORKLOADS:
        times = interleaved(implementations(workload, ctx), int(sys.argv[1]) if len(sys.argv) > 1 else 7,
                            3 if workload == "mlp" else 2, fair=True)
        for name, t in times.items():
            print(f"{workload:21} {name:27} {ms(t):>10}   spiread ÷ it {times['spiread'] / t:.3f}×")
    for folder in ctx.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
