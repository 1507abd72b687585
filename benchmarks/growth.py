"""How costs grow: with the program's length and with the data's rows.

    python benchmarks/growth.py                 # 1k/10k/100k lines; 10^4..10^7 rows
    python benchmarks/growth.py --quick         # 1k/10k lines; 10^4..10^6 rows (a minute or two)
    python benchmarks/growth.py --write-docs    # the table into docs/performance.md, plots into docs/

Every figure comes from a fresh process, so a peak is that one job's. Times
are the process's CPU time, which other load on a shared machine inflates
far less than wall time; memory is the growth of VmHWM (peak resident set)
over the process's size just before the job.

- *length*: benchmarks/load.py's realistic program of N lines, parsed, and
  parsed and recorded on the tape (load.py's own measurement, reused).
- *rows*: the makemore bigram (benchmarks/bigram.py) on N (previous, next
  character) rows, the ~228k pairs of names.txt repeated to reach N. Set-up
  (recording the program, fusing it) is timed once, then a step (forward,
  backward, SGD) is the median of --steps steps. Three implementations:
  spiread with every rewrite, spiread with the issue's four rewrites only
  ("no hoisting": the same arithmetic as numpy's), and numpy written by hand.
- *parameters*: forward against reverse mode, benchmarks/forward_vs_reverse.py
  (docs/forward-vs-reverse.md), linked from the section, not rerun here.

A child that passes --memory-cap-gb (address space) or the time limit is
reported as such instead of taking the machine down.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import load  # noqa: E402

DOCS = common.ROOT / "docs"
START, END = "<!-- growth:start -->", "<!-- growth:end -->"
IMPLEMENTATIONS = ("spiread", "spiread, no hoisting", "numpy (by hand)")
TIME_LIMIT = 600  # seconds per child


# ------------------------------------------------------------ the rows (a child process)


def rows_child(impl: str, rows: int, steps: int) -> dict:
    import numpy as np

    import bigram
    xs, ys = bigram.pairs(common.NAMES)
    xs, ys = np.resize(xs, rows), np.resize(ys, rows)  # the pairs repeated (or cut) to `rows`
    ctx: dict = {"hoist": impl == "spiread"}
    load.reset_peak()
    base = load.peak_kb()
    began = time.process_time()
    step = bigram.numpy_step(xs, ys) if impl == "numpy (by hand)" else bigram.spiread_step(xs, ys, ctx)
    set_up = time.process_time() - began
    took = []
    for _ in range(steps + 1):  # the first step is a warm-up
        began = time.process_time()
        step()
        took.append(time.process_time() - began)
    for folder in ctx.get("cleanup", []):
        shutil.rmtree(folder, ignore_errors=True)
    return {"setup_s": set_up, "step_s": statistics.median(took[1:]), "peak_mb": (load.peak_kb() - base) / 1024}


def measure_rows(impl: str, rows: int, steps: int, cap_gb: float) -> dict:
    cap = int(cap_gb * (1 << 30))

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        out = subprocess.run([sys.executable, __file__, "--rows-child", impl, str(rows), str(steps),
                              "--data", str(common.NAMES)], capture_output=True, text=True, timeout=TIME_LIMIT,
                             preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"failed": f"over {TIME_LIMIT} s"}
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"failed": f"over {cap_gb:g} GB" if "MemoryError" in tail or "Unable to allocate" in tail
                else tail[:60]}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------ the harness


def run_all(quick: bool, steps: int, cap_gb: float) -> dict:
    lengths = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    row_counts = (10**4, 10**5, 10**6) if quick else (10**4, 10**5, 10**6, 10**7)
    results: dict = {"length": {}, "rows": {impl: {} for impl in IMPLEMENTATIONS}}
    for n in lengths:
        results["length"][n] = {job: load.measure("lines", n, job) for job in ("parse", "run")}
        print(f"lines {n:,}: {results['length'][n]}", file=sys.stderr, flush=True)
    for rows in row_counts:
        for impl in IMPLEMENTATIONS:
            results["rows"][impl][rows] = measure_rows(impl, rows, steps, cap_gb)
            print(f"rows {rows:,} {impl}: {results['rows'][impl][rows]}", file=sys.stderr, flush=True)
    return results


# ------------------------------------------------------------ the table


def seconds(s: float) -> str:
    return f"{s * 1e3:.3g} ms" if s < 1 else f"{s:.3g} s"


def megabytes(mb: float) -> str:
    return f"{mb:,.0f} MB" if mb >= 1 else "< 1 MB"


def table(results: dict, steps: int) -> str:
    out = ["**Program length** (benchmarks/load.py's realistic program; CPU time; peak = growth of VmHWM)", "",
           "| lines | parse | per line | parse peak | parse + record | per line | parse + record peak |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
    for n, jobs in results["length"].items():
        cells = [f"{int(n):,}"]
        for job in ("parse", "run"):
            m = jobs[job]
            if "failed" in m:
                cells += [m["failed"], "", ""]
            else:
                cells += [seconds(m["seconds"]), f"{m['seconds'] / int(n) * 1e6:.0f} µs", megabytes(m["peak_mb"])]
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"**Data rows** (the bigram; CPU time of set-up, then the median of {steps} steps; "
                "peak = growth of VmHWM over set-up and steps)", "",
            "| rows | implementation | set-up | a step | per 10⁶ rows | peak |", "|---:|---|---:|---:|---:|---:|"]
    for rows in sorted({int(r) for impl in results["rows"].values() for r in impl}):
        for impl in IMPLEMENTATIONS:
            m = results["rows"][impl].get(rows) or results["rows"][impl].get(str(rows))
            if m is None:
                continue
            if "failed" in m:
                out.append(f"| {rows:,} | {impl} | not run: {m['failed']} | | | |")
                continue
            out.append(f"| {rows:,} | {impl} | {seconds(m['setup_s'])} | {seconds(m['step_s'])} | "
                       f"{seconds(m['step_s'] / rows * 1e6)} | {megabytes(m['peak_mb'])} |")
    return "\n".join(out)


# ------------------------------------------------------------ the plots


def plots(results: dict, folder: Path) -> list[Path]:
    """Two SVGs, log-log: cost against program length, and against data rows.
    A dotted line of slope 1 through the first point of each series shows
    what linear growth would be."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams["svg.hashsalt"] = "spiread"  # the same figures draw the same file

    def series(ax, xs, ys, label, style):
        pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and y > 0]
        if not pairs:
            return
        ax.loglog(*zip(*pairs), style, label=label)
        x0, y0 = pairs[0]
        ax.loglog([x0, pairs[-1][0]], [y0, y0 * pairs[-1][0] / x0], ":", color="grey", linewidth=0.8)

    def finish(fig, axes, xlabel, path):
        from matplotlib.ticker import NullFormatter
        for ax in axes:
            ax.yaxis.set_minor_formatter(NullFormatter())  # decades only: the minor labels crowd
            ax.set_xlabel(xlabel)
            ax.grid(True, which="major", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, format="svg", metadata={"Date": None})
        plt.close(fig)

    written = []
    lengths = sorted(int(n) for n in results["length"])
    if lengths:
        fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
        for job, label, style in (("parse", "parse", "o-"), ("run", "parse + record", "s-")):
            got = [results["length"].get(n, results["length"].get(str(n)))[job] for n in lengths]
            series(time_ax, lengths, [g.get("seconds") for g in got], label, style)
            series(memory_ax, lengths, [g.get("peak_mb") for g in got], label, style)
        time_ax.set_ylabel("CPU seconds")
        memory_ax.set_ylabel("peak memory growth, MB")
        fig.suptitle("Cost against program length (dotted: linear)", fontsize=10)
        written.append(folder / "growth-length.svg")
        finish(fig, (time_ax, memory_ax), "lines", written[-1])
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(9, 3.6))
    for impl, style in zip(IMPLEMENTATIONS, ("o-", "s-", "^--")):
        got = {int(r): m for r, m in results["rows"][impl].items()}
        rows = sorted(got)
        missing = "".join(f"; {r:.0e} rows: {got[r]['failed']}" for r in rows if "failed" in got[r])
        series(time_ax, rows, [got[r].get("step_s") for r in rows], impl + missing, style)
        series(memory_ax, rows, [got[r].get("peak_mb") for r in rows], impl + missing, style)
    time_ax.set_ylabel("CPU seconds a step")
    memory_ax.set_ylabel("peak memory growth, MB")
    fig.suptitle("The bigram: cost against data rows (dotted: linear)", fontsize=10)
    written.append(folder / "growth-rows.svg")
    finish(fig, (time_ax, memory_ax), "rows", written[-1])
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    parser.add_argument("--steps", type=int, default=3, help="steps timed per cell, after one warm-up (default 3)")
    parser.add_argument("--memory-cap-gb", type=float, default=6.0, metavar="GB",
                        help="address space per child; a job that needs more is reported, not run (default 6)")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the plots into docs/ and the table into docs/performance.md")
    parser.add_argument("--plots", type=Path, default=None, metavar="FOLDER",
                        help="write the plots here (default: docs/ with --write-docs, else a temporary folder)")
    parser.add_argument("--data", type=Path, default=common.NAMES, metavar="PATH",
                        help=f"the makemore names file (default: {common.NAMES})")
    parser.add_argument("--from-json", type=Path, metavar="PATH",
                        help="redraw the table and plots from a saved run (each run saves $TMPDIR/spiread-growth.json)")
    parser.add_argument("--rows-child", nargs=3, metavar=("IMPL", "ROWS", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.data.is_file():
        parser.error(f"the names file {args.data} is not here (give it with --data PATH)")
    common.NAMES = args.data.resolve()
    if args.rows_child:
        impl, rows, steps = args.rows_child
        print(json.dumps(rows_child(impl, int(rows), int(steps))))
        return
    import os
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", file=sys.stderr)
    if args.from_json:
        results = json.loads(args.from_json.read_text())
    else:
        results = run_all(args.quick, args.steps, args.memory_cap_gb)
        (Path(tempfile.gettempdir()) / "spiread-growth.json").write_text(json.dumps(results, indent=1))
    text = table(results, args.steps)
    print(text)
    folder = args.plots or (DOCS if args.write_docs else Path(tempfile.mkdtemp(prefix="spiread-growth-")))
    for path in plots(results, folder):
        print(f"wrote {path}", file=sys.stderr)
    if args.write_docs:
        doc = (DOCS / "performance.md").read_text()
        head, rest = doc.split(START)
        _, tail = rest.split(END)
        (DOCS / "performance.md").write_text(f"{head}{START}\n{text}\n{END}{tail}")


if __name__ == "__main__":
    main()
