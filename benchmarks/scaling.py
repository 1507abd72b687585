"""`--backend dask` against numpy as the rows grow: time a training step and
the peak resident memory of every process involved.

    python benchmarks/scaling.py                      # 10^5, 10^6, 10^7 rows
    python benchmarks/scaling.py --rows 1e5 1e6 --steps 3 --out scaling.json

Two models, with their data as `.npy` files in a temporary folder: the
makemore bigram (27×27 weights, one-hot rows) and a softmax regression (16
features, 10 classes). Three ways to run each:

- `numpy`: the default backend, everything in memory;
- `dask`: row chunks on Dask's threaded scheduler, in the spiread process;
- `cluster`: a scheduler and two one-thread workers started with Dask's own
  commands (`dask scheduler`, `dask worker`, on 127.0.0.1), spiread connected
  with `--scheduler`;
- `dask-persist`, `cluster-persist`: the same with `--persist` (each chunk's
  fused recording kept in memory between steps).

Each measurement runs in a fresh process; a sampler adds up the resident
memory of that process and of the scheduler and workers every 20 ms and
keeps the peak. numpy is skipped where its recorded values would pass
--numpy-max-gb (the bigram at 10^7 rows records about 11 GB).

On a shared machine the times are noisy: `--repeat N` measures every backend
N times, interleaved (numpy, dask, …, numpy, dask, …), and ends with a
summary of the median step time of each and its ratio to numpy's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

PROGRAMS = {
    "bigram": ("""xs = load("xs.npy")
ys = load("ys.npy")
W = randn(27, 27, seed=0)
probs = (onehot(xs, 27) @@ W).exp.normaliseRowsL1
loss = probs.select(arange(rows(xs)), ys).mapRowsToScalar(ReductionOps.Sum).log.mean * -1.0
loss.backward(W)
""", ["W"], 50.0, 1200),       # bytes recorded per row by numpy, roughly (5 values of 27)
    "softmax": ("""X = load("X.npy")
labels = load("labels.npy")
W = zeros(16, 10)
b = zeros(10)
loss = -(X @@ W + b).logSoftmaxRows.arrange(arange(rows(X)), labels).mean
loss.backward(W, b)
""", ["W", "b"], 0.5, 600),
}


def make_data(folder: Path, model: str, rows: int) -> Path:
    """The model's data files and program in `folder` (made once per size)."""
    folder.mkdir(parents=True, exist_ok=True)
    program = folder / f"{model}.ad"
    if program.exists():
        return program
    rng = np.random.default_rng(0)
    block = 1_000_000
    if model == "bigram":  # characters drawn from a fixed random bigram table, so there is something to learn
        table = rng.dirichlet(np.ones(27) * 0.3, size=27).cumsum(axis=1)
        xs = rng.integers(0, 27, rows)
        ys = np.empty(rows)
        for start in range(0, rows, block):
            u = rng.random(min(block, rows - start))
            ys[start:start + block] = (u[:, None] > table[xs[start:start + block]]).sum(axis=1).clip(max=26)
        np.save(folder / "xs.npy", xs.astype(float))
        np.save(folder / "ys.npy", ys)
    else:
        true = rng.standard_normal((16, 10))
        X = np.lib.format.open_memmap(folder / "X.npy", mode="w+", dtype=np.float64, shape=(rows, 16))
        labels = np.empty(rows)
        for start in range(0, rows, block):
            x = rng.standard_normal((min(block, rows - start), 16))
            X[start:start + len(x)] = x
            labels[start:start + len(x)] = (x @ true + rng.gumbel(size=(len(x), 10))).argmax(axis=1)
        X.flush()
        del X
        np.save(folder / "labels.npy", labels)
    program.write_text(PROGRAMS[model][0])
    return program


# ------------------------------------------------------------ one measurement (a child process)


def child(model: str, backend: str, program: str, steps: int, scheduler: str | None) -> dict:
    from spiread_cli import optim, train
    from spiread_cli.program import Program
    _, wrt, lr, _ = PROGRAMS[model]
    began = time.perf_counter()
    if backend == "numpy":
        run = Program.open(program).run()
    else:  # the driver's run, whose totals over the row chunks are ops: train runs on it as on numpy's
        from spiread_cli.dask_backend import Options
        options = Options(scheduler=scheduler, persist=backend.endswith("persist"))
        prepared = Program.open(program, options).dask_runner({})
        run = prepared.run_for(wrt)
    set_up = time.perf_counter() - began
    times = [time.perf_counter()]
    result = train.train(run, wrt, steps, optim.SGD(lr),
                         on_step=lambda step, loss: times.append(time.perf_counter()))
    assert result.status == "done", result.error
    took = np.diff(times)
    # The first step of --persist also reads and records the chunks; the
    # numpy backend did that in the set-up.
    return {"setup_s": set_up, "first_step_s": took[0], "step_s": float(np.median(took[1:])),
            "loss_first": result.losses[0],
            "loss_last": result.losses[-1],
            "chunks": len(prepared.bounds) if backend != "numpy" else 1}


# ------------------------------------------------------------ the harness


class PeakMemory:
    """The peak of the summed RSS of some processes and their children."""

    def __init__(self, pids: list[int]):
        import psutil
        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.sample, daemon=True)
        self.thread.start()

    def sample(self):
        import psutil
        while not self.done.is_set():
            total = 0
            for process in self.processes:
                try:
                    family = [process] + process.children(recursive=True)
                    total += sum(p.memory_info().rss for p in family)
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            time.sleep(0.02)

    def stop(self) -> float:
        self.done.set()
        self.thread.join()
        return self.peak / 2**20


class Cluster:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1."""

    def __init__(self, folder: Path):
        self.file = folder / "scheduler.json"
        self.file.unlink(missing_ok=True)
        bindir = Path(sys.executable).parent
        dask = [str(bindir / "dask")] if (bindir / "dask").exists() else [sys.executable, "-m", "dask"]
        quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL,
                 "env": {**os.environ, "PYTHONPATH": str(ROOT)}}
        self.processes = [subprocess.Popen(dask + ["scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--no-dashboard", "--scheduler-file", str(self.file)], **quiet)]
        deadline = time.monotonic() + 60
        while not self.file.exists():
            if self.processes[0].poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("`dask scheduler` did not start")
            time.sleep(0.1)
        time.sleep(0.2)
        self.address = json.loads(self.file.read_text())["address"]
        for _ in range(2):
            self.processes.append(subprocess.Popen(dask + ["worker", self.address, "--nthreads", "1", "--no-nanny",
                                                           "--no-dashboard", "--host", "127.0.0.1"], **quiet))
        from distributed import Client
        with Client(self.address) as client:
            client.wait_for_workers(2, timeout=60)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def close(self):
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def measure(model: str, backend: str, program: Path, steps: int, cluster: Cluster | None) -> dict:
    command = [sys.executable, __file__, "--child", model, backend, str(program), str(steps)]
    if cluster is not None:
        command.append(cluster.address)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the workers import spiread too: start them likewise
    child_process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    memory = PeakMemory([child_process.pid] + (cluster.pids() if cluster else []))
    out, _ = child_process.communicate()
    peak = memory.stop()
    if child_process.returncode != 0:
        return {"error": f"exit {child_process.returncode}"}
    return {**json.loads(out.strip().splitlines()[-1]), "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    parser.add_argument("--models", nargs="+", default=list(PROGRAMS))
    parser.add_argument("--backends", nargs="+", default=["numpy", "dask", "dask-persist", "cluster", "cluster-persist"])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=1, help="measure each backend this many times, interleaved")
    parser.add_argument("--numpy-max-gb", type=float, default=6.0)
    parser.add_argument("--data", type=Path, help="where to keep the data (default: a temporary folder)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        model, backend, program, steps, *scheduler = args.child
        print(json.dumps(child(model, backend, program, int(steps), scheduler[0] if scheduler else None)))
        return
    folder = args.data or Path(tempfile.mkdtemp(prefix="spiread-scaling-"))
    folder.mkdir(parents=True, exist_ok=True)
    cluster = Cluster(folder) if any(b.startswith("cluster") for b in args.backends) else None
    results = []
    try:
        for rows in [int(r) for r in args.rows]:
            for model in args.models:
                program = make_data(folder / f"{model}-{rows}", model, rows)
                for _ in range(args.repeat):
                    for backend in args.backends:
                        if backend == "numpy" and rows * PROGRAMS[model][3] > args.numpy_max_gb * 2**30:
                            result = {"skipped": f"numpy would record about {rows * PROGRAMS[model][3] / 2**30:.0f} GB"}
                        else:
                            result = measure(model, backend, program, args.steps,
                                             cluster if backend.startswith("cluster") else None)
                        result = {"model": model, "rows": rows, "backend": backend, **result}
                        results.append(result)
                        print(json.dumps(result), flush=True)
    finally:
        if cluster is not None:
            cluster.close()
    summarise(results)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


def summarise(results: list[dict]) -> None:
    """Per model, rows and backend: the median step time over the repeats,
    its ratio to numpy's, and the largest peak memory."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        if "step_s" in r:
            groups.setdefault((r["model"], r["rows"], r["backend"]), []).append(r)
    print(f"{'model':8} {'rows':>9} {'backend':16} {'runs':>4} {'step':>10} {'÷ numpy':>8} {'first step':>10} {'peak RSS':>9}")
    for (model, rows, backend), runs in groups.items():
        step = float(np.median([r["step_s"] for r in runs]))
        numpy_runs = groups.get((model, rows, "numpy"))
        ratio = f"{step / float(np.median([r['step_s'] for r in numpy_runs])):.2f}×" if numpy_runs else "—"
        first = float(np.median([r["first_step_s"] for r in runs]))
        peak = max(r["peak_rss_mb"] for r in runs)
        print(f"{model:8} {rows:>9} {backend:16} {len(runs):>4} {step * 1e3:>8.1f}ms {ratio:>8} {first:>9.2f}s "
              f"{peak:>7.0f}MB", flush=True)


if __name__ == "__main__":
    main()
