"""Shared pieces of the benchmark harness: timing, peak memory, peers.

Every workload module exposes `implementations(ctx)`: a dict from
implementation name to a zero-argument *factory*; calling the factory does
the set-up (compile, jit, build arrays) and returns `step()`, one timed unit
of work. Peers whose library is not installed are simply absent.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAMES = ROOT.parent / "shared" / "data" / "names.txt"


def have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def rss_mb() -> float:
    """Current resident set size (Linux /proc), in MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak RSS of this process image. Not ru_maxrss: Linux carries that over
    exec from the parent, so a child of a big harness would report the harness."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise OSError("no VmHWM in /proc/self/status")


def measure_rss_in_child(workload: str, impl: str, steps: int = 3) -> dict:
    """Peak RSS of one implementation, in a fresh process (a peak never goes
    down, so each implementation needs its own). `base` is the RSS after the
    imports and before the work; `peak - base` is what the work itself costs."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--rss-child", workload, impl,
                          str(steps), "--data", str(NAMES)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def blas_kernel() -> str:
    """Which BLAS numpy runs and its kernel (OPENBLAS_CORETYPE changes it)."""
    try:
        import threadpoolctl
    except ImportError:
        return "unknown (threadpoolctl not installed)"
    infos = threadpoolctl.threadpool_info()
    return ", ".join(f"{i['internal_api']} {i.get('architecture', '?')} ×{i['num_threads']}" for i in infos
                     if i.get("user_api") == "blas") or "none found"


def limit_threads(threads: int) -> None:
    """Give every peer as many threads as numpy's BLAS has
    (OPENBLAS_NUM_THREADS). With one, pin this whole process to one CPU:
    XLA's CPU runtime (JAX 0.10) ignores `--xla_cpu_multi_thread_eigen=false`
    and ran a 4,096×256 by 256×256 product on two threads (29.8 ms of CPU
    time in 15.3 ms), so without the pin "one thread each" was one for numpy
    and two for JAX. Call before any peer starts its threads."""
    if threads != 1:
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "--xla_cpu_multi_thread_eigen" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_multi_thread_eigen=false".strip()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})


def step_clock():
    """The clock steps are timed by. Pinned to one CPU (limit_threads), the
    process's CPU time, every thread's (JAX computes on threads of its own):
    there the wall clock also counts other processes' time slices on that
    CPU, which fall more often into a long step than a short one, and so
    biased best-of ratios against the slower implementation (a sparse
    Hessian 6.3x numpy by the wall clock, 2.95x by CPU time, a minute
    apart). With more CPUs than one, the wall clock: threads run in parallel."""
    pinned = hasattr(os, "sched_getaffinity") and len(os.sched_getaffinity(0)) == 1
    return time.process_time if pinned else time.perf_counter


def settled(limit: float = 1.0, quiet: float = 0.002) -> None:
    """Wait, at most `limit` seconds, until this process's other threads are
    idle: while this one sleeps 20 ms, the process spends under `quiet` s of
    CPU. After a step, thread pools spin for more work (two threads each:
    OpenBLAS's and onnxruntime's for 50-100 ms, JAX's for 25-80, measured as
    the CPU the process spends while its main thread sleeps)."""
    end = time.perf_counter() + limit
    while time.perf_counter() < end:
        start = time.process_time()
        time.sleep(0.02)
        if time.process_time() - start < quiet:
            return


def interleaved(factories: dict, rounds: int, per_round: int, statistic=statistics.median,
                fair: bool = False) -> dict[str, float]:
    """Median (or `statistic`: min for best of the rounds) seconds per step
    of each implementation, timed round-robin by `step_clock()`. `fair`:
    each from a quiet process (`settled`), in an order that turns every
    round, so each follows every other alike, for implementations that run
    thread pools: what was timed just before weighs on a step. The dense
    bigram's exported step, timed after JAX jit in every round, was
    1.1-1.6x numpy by hand (two threads) and up to 1.5x pinned, where
    without JAX in the process it was 0.9-1.2x and 1.00x, and numpy by hand
    timed after JAX became the slower (docs/performance.md, "Exported code")."""
    clock = step_clock()
    steps = {name: make() for name, make in factories.items()}
    for step in steps.values():
        step(), step()  # warm-up (and JAX's compile)
    samples = {name: [] for name in steps}
    names = list(steps)
    for turn in range(rounds):
        for name in names[turn % len(names):] + names[:turn % len(names)] if fair else names:
            if fair:
                settled()
            start = clock()
            for _ in range(per_round):
                steps[name]()
            samples[name].append((clock() - start) / per_round)
    return {name: statistic(s) for name, s in samples.items()}


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"
