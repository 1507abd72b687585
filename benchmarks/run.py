"""Run every benchmark and print (or write) the results table.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/run.py [--quick] [--write-docs] [--data PATH]

Peers (numpy by hand, PyTorch eager float64, JAX jit float64, HIPS autograd)
run in the workload's process when installed: `pip install -e ".[bench]"`; a
peer that is not installed has no rows (a note says so). spiread itself runs
from this interpreter (`python -m spiread_cli`), not from whatever is on PATH.
Each step workload runs in a process of its own with `--threads` threads for
every implementation (default 1: pinned to one CPU, timed by CPU time), its
implementations timed in interleaved rounds (common.interleaved), so a change
in machine load hits them all alike; each figure is the median over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import interleaved, ms  # noqa: E402

DOCS = common.ROOT / "docs" / "performance.md"
PEERS = {"torch": "pip install -e '.[bench]'", "jax": "pip install -e '.[bench]'",
         "autograd": "pip install -e '.[bench]'", "onnxruntime": "pip install -e '.[bench]'"}
START, END = "<!-- results:start -->", "<!-- results:end -->"


STEP_WORKLOADS = ("bigram", "bigram, dense inputs", "mlp", "chain", "exported: bigram",
                  "exported: bigram, dense inputs", "exported: mlp")


def step_benchmarks(quick: bool, threads: int) -> dict:
    """Each workload in a process of its own, every implementation with
    `threads` threads (one: pinned to one CPU and timed by CPU time,
    common.limit_threads). In one process, what a workload's peers left
    running weighed on the next (docs/performance.md, "Exported code")."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    return {workload: _from_child(["--steps-child", workload, str(3 if quick else 7), str(threads)], env)
            for workload in STEP_WORKLOADS}


def steps_child(workload: str, rounds: int, threads: int) -> None:
    """Run in a fresh process: one workload's implementations, interleaved."""
    import bigram
    import chain
    import exported
    import mlp
    common.limit_threads(threads)
    ctx: dict = {}
    if workload == "bigram":
        factories, per_round = bigram.implementations(ctx), 2
        xs_ys = bigram.pairs()
        factories["spiread, no hoisting"] = lambda: bigram.spiread_step(*xs_ys, ctx | {"hoist": False})
        factories["spiread, no rewrites"] = lambda: bigram.spiread_step(*xs_ys, ctx | {"rewrite": False})
    elif workload == "bigram, dense inputs":
        factories, per_round = bigram.dense_implementations(ctx), 2
    elif workload == "mlp":
        factories, per_round = mlp.implementations(ctx), 3
        factories["spiread, no rewrites"] = lambda: mlp.spiread_step(mlp.data(), ctx | {"rewrite": False})
    elif workload == "chain":
        factories, per_round = chain.implementations(ctx), 1
    else:  # `spiread export`'s code against the same step (benchmarks/exported.py)
        name = workload.removeprefix("exported: ")
        factories, per_round = exported.implementations(name, ctx), 3 if name == "mlp" else 2
    times = interleaved(factories, rounds, per_round, fair=True)
    for folder in ctx.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(times))


def _from_child(arguments: list[str], env: dict | None = None) -> dict:
    """What `run.py ARGUMENTS` prints last, as JSON, run as a child of this interpreter."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), *arguments, "--data", str(common.NAMES)],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def jacobian_benchmarks(quick: bool) -> dict:
    """Dense Jacobians n×n against JAX and PyTorch (benchmarks/jacobian.py)."""
    import jacobian
    return jacobian.results(jacobian.SIZES[:3] if quick else jacobian.SIZES, 3 if quick else 5)


def parse_lines(n: int = 10_000) -> str:
    lines = ["x = [[1, 2], [3, 4]]", "w = randn(2, 2, seed=1)"]
    for i in range(n - 2):
        prev = f"a{i - 1}" if i else "x"
        lines.append(f"a{i} = ({prev} @@ w + x * 0.5).tanh.normaliseRowsL1 - {prev}[(0, 1), (1, 0)] / 2.0  // line {i}")
    return "\n".join(lines) + "\n"


def parse_benchmark(repeats: int) -> dict:
    from spiread_cli import syntax
    from spiread_cli.program import Program
    from spiread_cli.diagnostics import Source
    source = Source("parse.ad", parse_lines())
    parse = min(_timed(lambda: syntax.parse(source)) for _ in range(repeats))
    compile_ = min(_timed(lambda: Program.parse(source).run()) for _ in range(max(1, repeats // 2)))
    return {"parse": parse, "parse + record": compile_, "lines": source.text.count("\n")}


def _timed(f) -> float:
    start = time.perf_counter()
    f()
    return time.perf_counter() - start


def cold_start(repeats: int) -> dict:
    """Median wall and CPU time (the child's user + system) of whole processes,
    run round-robin. spiread's bytecode is compiled first: an installed wheel
    has it, and a checkout writes it on its first run, except where
    PYTHONDONTWRITEBYTECODE is set (it is on some of our machines), which would
    make every run compile spiread's sources again, as no installed spiread does.
    One untimed run first writes the parse tables' cache (syntax._load_tables),
    as any earlier run of spiread has."""
    import compileall
    import importlib.util
    import os
    package = importlib.util.find_spec("spiread_cli").submodule_search_locations[0]
    compileall.compile_dir(package, quiet=1)
    seed = str(common.ROOT / "examples" / "seed.ad")
    commands = {"spiread eval examples/seed.ad": [sys.executable, "-m", "spiread_cli", "eval", seed],
                "python -c 'import numpy'": [sys.executable, "-c", "import numpy"],
                "python -c 'pass'": [sys.executable, "-c", "pass"]}
    subprocess.run(commands["spiread eval examples/seed.ad"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = {name: [] for name in commands}
    cpu = {name: [] for name in commands}
    for _ in range(repeats):
        for name, argv in commands.items():
            start = time.perf_counter()
            child = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _, _, usage = os.wait4(child.pid, 0)
            child.returncode = 0  # reaped above
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(usage.ru_utime + usage.ru_stime)
    return {name: {"wall": statistics.median(wall[name]), "cpu": statistics.median(cpu[name])} for name in commands}


def rss_benchmarks(workloads=("bigram", "mlp")) -> dict:
    import bigram
    import mlp
    out = {}
    for workload, module in (("bigram", bigram), ("mlp", mlp)):
        if workload not in workloads:
            continue
        names = list(module.implementations({}).keys())
        out[workload] = {name: common.measure_rss_in_child(workload, name) for name in names}
    return out


def rss_child(workload: str, impl: str, steps: int) -> None:
    """Run in a fresh process: import, set up, take steps, report memory."""
    import bigram
    import mlp
    module = {"bigram": bigram, "mlp": mlp}[workload]
    ctx: dict = {}
    factories = module.implementations(ctx)
    base = common.rss_mb()
    step = factories[impl]()
    for _ in range(steps):
        step()
    for folder in ctx.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps({"base_mb": base, "peak_mb": common.peak_rss_mb()}))


# ------------------------------------------------------------------ table


def table(results: dict) -> str:
    out = [f"Machine: {common.blas_kernel()}; Python {sys.version.split()[0]}; "
           f"numpy {_version('numpy')}, torch {_version('torch')}, jax {_version('jax')}, autograd {_version('autograd')}.",
           "", _steps_note(results["threads"]), ""]
    exports = [(w, "step") for w in results["steps"] if w.startswith("exported: ")]
    for workload, unit in (("bigram", "step"), ("bigram, dense inputs", "step"), ("mlp", "step"), ("chain", "step"),
                           *exports):
        timings = results["steps"][workload]
        ours = timings["spiread"]
        out += [f"**{workload}** (forward + backward{' + SGD' if workload != 'chain' else ''}, median per {unit})", "",
                "| implementation | time | spiread ÷ it |", "|---|---:|---:|"]
        for name, t in timings.items():
            extra = f" ({t / _chain_ops() * 1e6:.2f} µs/op)" if workload == "chain" else ""
            out.append(f"| {name} | {ms(t)}{extra} | {ours / t:.3f}× |")
        out.append("")
    if "jacobian" in results:
        import jacobian
        out += [jacobian.table(results["jacobian"])]
    p = results["parse"]
    out += [f"**parse** ({p['lines']:,} lines): parse {ms(p['parse'])}, parse + record on the tape {ms(p['parse + record'])}", ""]
    c = results["cold"]
    ours, numpy_ = c["spiread eval examples/seed.ad"], c["python -c 'import numpy'"]
    out += ["**cold start** (whole process, median; CPU = the process's user + system time)", "",
            "| command | time | CPU |", "|---|---:|---:|"]
    out += [f"| `{name}` | {ms(t['wall'])} | {ms(t['cpu'])} |" for name, t in c.items()]
    out += ["", f"spiread ÷ numpy import: {ours['wall'] / numpy_['wall']:.2f}× "
                f"(CPU: {ours['cpu'] / numpy_['cpu']:.2f}×)", ""]
    if "rss" in results:
        out += ["**peak memory** (RSS, fresh process per implementation; *work* = peak − RSS before set-up, which includes a peer's own imports)", "",
                "| workload | implementation | peak | work |", "|---|---|---:|---:|"]
        for workload, impls in results["rss"].items():
            for name, r in impls.items():
                out.append(f"| {workload} | {name} | {r['peak_mb']:.0f} MB | {r['peak_mb'] - r['base_mb']:.0f} MB |")
        out.append("")
    return "\n".join(out)


def _steps_note(threads: int) -> str:
    how = "pinned to one CPU, timed by CPU time" if threads == 1 else "timed by the wall clock"
    return (f"Steps: each workload in a process of its own, {threads} thread{'s' if threads != 1 else ''} for every "
            f"implementation ({how}), interleaved in rounds whose order turns, each timed from a quiet process.")


def _chain_ops() -> int:
    import chain
    return chain.OPS


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    parser.add_argument("--write-docs", action="store_true", help=f"replace the results section of {DOCS}")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--data", type=Path, default=common.NAMES, metavar="PATH",
                        help=f"the makemore names file for the bigram workload (default: {common.NAMES})")
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="threads for every implementation of the step workloads (default 1: pinned to one CPU, "
                             "CPU time)")
    parser.add_argument("--rss-child", nargs=3, metavar=("WORKLOAD", "IMPL", "STEPS"), help=argparse.SUPPRESS)
    parser.add_argument("--steps-child", nargs=3, metavar=("WORKLOAD", "ROUNDS", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data.is_file():
        parser.error(f"the names file {args.data} is not here (give it with --data PATH)")
    if not common.have("spiread_cli"):
        parser.error(f"spiread is not installed in {sys.executable}: pip install -e .")
    common.NAMES = args.data.resolve()  # read when the workloads are imported, and by the memory runs' children
    if args.rss_child:
        rss_child(args.rss_child[0], args.rss_child[1], int(args.rss_child[2]))
        return
    if args.steps_child:
        steps_child(args.steps_child[0], int(args.steps_child[1]), int(args.steps_child[2]))
        return
    for peer, extra in PEERS.items():
        if not common.have(peer):
            print(f"note: {peer} is not installed, so its rows are skipped ({extra})", file=sys.stderr)
    results = {"steps": step_benchmarks(args.quick, args.threads), "threads": args.threads,
               "parse": parse_benchmark(3 if args.quick else 5),
               "cold": cold_start(5 if args.quick else 15), "jacobian": jacobian_benchmarks(args.quick)}
    if not args.no_rss:
        results["rss"] = rss_benchmarks()
    text = table(results)
    print(text)
    (Path(tempfile.gettempdir()) / "spiread-bench.json").write_text(json.dumps(results, indent=1))
    if args.write_docs:
        doc = DOCS.read_text()
        head, rest = doc.split(START)
        _, tail = rest.split(END)
        DOCS.write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
