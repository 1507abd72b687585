"""Loading programs: parse time, parse + record time and peak memory as a
program grows, so that "linear" can be read off the table.

    python benchmarks/load.py            # 1k/10k/100k lines, 10^4/10^5 links, 10^4..10^6 entries
    python benchmarks/load.py --quick    # the smaller sizes only

Times are the child's CPU time (time.process_time), which other load on the
machine inflates far less than wall time; on a quiet machine the two agree.
Each figure comes from a fresh process (`--child`), so a peak is the peak of
that one job: *peak* is the growth of the process's VmHWM over its size just
before the job started (interpreter, imports, the generated text and a warmed
parser already in). A child that exceeds the memory cap or the time limit is
reported as such rather than taking the machine down.

Workloads:
- *lines*: a realistic program: small literal bindings, arithmetic, method
  chains, `@@`, selections, comments, and a `.backward` at the end.
- *chain*: one statement, `x.sin.tanh.cos...` with N links.
- *literal*: one binding of a flat numeric literal of N entries; *matrix*:
  an N-entry literal written as rows of 100; *set*: the flat literal given
  as `--set x=[...]` (parsed by `syntax.parse_expression`, then evaluated).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MEMORY_CAP = 6 << 30      # per child; a quadratic job stops here instead of exhausting the machine
TIME_LIMIT = 300          # seconds per child


# --------------------------------------------------------------- programs


def lines_program(n: int) -> str:
    """About n lines, five to a block; each block feeds the next."""
    rng = random.Random(0)
    out = ["x0 = [[0.5, -0.25], [0.125, 1.0]]", "w = randn(2, 2, seed=1)"]
    i = 0
    while len(out) < n - 2:
        i += 1
        a, b = round(rng.uniform(-1, 1), 3), round(rng.uniform(-1, 1), 3)
        out += [
            f"b{i} = [[{a}, {b}], [{b}, {a}]]  // a small literal",
            f"h{i} = (x{i - 1} @@ w + b{i} * 0.5).tanh.normaliseRowsL1",
            f"s{i} = h{i}[(0, 1), (1, 0)].sum / 2.0 - 1e-3 * h{i}.sum",
            f"x{i} = (h{i} * s{i} + x{i - 1} / 2 - 0.25).sin",
            "# a comment line between blocks",
        ]
    out += [f"loss = (x{i} * x{i}).mean", "loss.backward(w)"]
    return "\n".join(out) + "\n"


def chain_program(n: int) -> str:
    links = (".sin", ".tanh", ".cos")
    return "x = [0.1, 0.2, 0.3]\ny = x" + "".join(links[k % 3] for k in range(n)) + "\nloss = y.sum\n"


def flat_literal(n: int) -> str:
    rng = random.Random(1)
    return "[" + ", ".join(f"{rng.uniform(-10, 10):.6g}" for _ in range(n)) + "]"


def matrix_literal(n: int, cols: int = 100) -> str:
    rng = random.Random(2)
    rows = ["[" + ", ".join(f"{rng.uniform(-10, 10):.6g}" for _ in range(cols)) + "]"
            for _ in range(max(1, n // cols))]
    return "[\n  " + ",\n  ".join(rows) + "\n]"


def literal_program(n: int) -> str:
    return f"x = {flat_literal(n)}\nloss = x.sum\n"


def matrix_program(n: int) -> str:
    return f"x = {matrix_literal(n)}\nloss = x.sum\n"


PROGRAMS = {"lines": lines_program, "chain": chain_program, "literal": literal_program,
            "matrix": matrix_program, "set": lambda n: "x = 0\nloss = x.sum\n"}


# ------------------------------------------------------------ one measurement


def peak_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise OSError("no VmHWM in /proc/self/status")


def reset_peak() -> None:
    """Linux resets VmHWM to the current RSS when 5 is written to clear_refs."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def child(workload: str, n: int, job: str) -> dict:
    from spiread_cli import syntax
    from spiread_cli.program import Program
    from spiread_cli.set_options import parse_overrides
    from spiread_cli.diagnostics import Source

    text = PROGRAMS[workload](n)
    source = Source(f"{workload}.ad", text)
    syntax.parse(Source("warm.ad", "x = 1\n"))  # build (or load) the parser outside the measurement
    if workload == "set":
        literal = flat_literal(n)
        job_fn = (lambda: syntax.parse_expression(literal)) if job == "parse" else \
                 (lambda: Program.parse(source).run(parse_overrides([f"x={literal}"])))
    else:
        job_fn = (lambda: syntax.parse(source)) if job == "parse" else (lambda: Program.parse(source).run())
    reset_peak()
    base = peak_kb()
    start, start_wall = time.process_time(), time.perf_counter()
    job_fn()
    seconds, wall = time.process_time() - start, time.perf_counter() - start_wall
    return {"seconds": seconds, "wall": wall, "peak_mb": (peak_kb() - base) / 1024, "lines": text.count("\n"),
            "bytes": len(text.encode()) + (len(literal) if workload == "set" else 0)}


def measure(workload: str, n: int, job: str) -> dict:
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    try:
        out = subprocess.run([sys.executable, __file__, "--child", workload, str(n), job], capture_output=True,
                             text=True, timeout=TIME_LIMIT, preexec_fn=limit)
    except subprocess.TimeoutExpired:
        return {"failed": f"> {TIME_LIMIT} s"}
    if out.returncode != 0:
        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
        failed = f"over {MEMORY_CAP >> 30} GB" if "MemoryError" in tail[0] else tail[0][:60]
        return {"failed": failed}
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------- table


def fmt_time(s: float) -> str:
    return f"{s * 1e3:.0f} ms" if s < 10 else f"{s:.1f} s"


def fmt_per(s: float, n: int) -> str:
    us = s / n * 1e6
    return f"{us:.2f} µs" if us < 10 else f"{us:.0f} µs"


def cases(quick: bool):
    lines = (1_000, 10_000) if quick else (1_000, 10_000, 100_000)
    chain = (10_000,) if quick else (10_000, 100_000)
    literal = (10_000, 100_000) if quick else (10_000, 100_000, 1_000_000)
    yield from (("lines", n, "line") for n in lines)
    yield from (("chain", n, "link") for n in chain)
    yield from (("literal", n, "entry") for n in literal)
    yield from (("matrix", n, "entry") for n in literal)
    yield from (("set", n, "entry") for n in literal)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smaller sizes only")
    parser.add_argument("--only", help="run only this workload (lines, chain, literal, matrix, set)")
    parser.add_argument("--child", nargs=3, metavar=("WORKLOAD", "N", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        workload, n, job = args.child
        print(json.dumps(child(workload, int(n), job)))
        return
    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
          "times are CPU time (a busy machine inflates wall time, not this); each cell a fresh process; "
          "peak = growth of VmHWM during the job\n")
    print("| workload | N | source | parse | per unit | parse peak | parse + record | per unit | parse + record peak |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for workload, n, unit in cases(args.quick):
        if args.only and workload != args.only:
            continue
        p, r = measure(workload, n, "parse"), measure(workload, n, "run")
        size = p.get("bytes") or r.get("bytes")
        cells = [workload, f"{n:,}", f"{size / 2**20:.1f} MB" if size else "?"]
        for m in (p, r):
            if "failed" in m:
                cells += [m["failed"], "", ""]
            else:
                cells += [fmt_time(m["seconds"]), f"{fmt_per(m['seconds'], n)}/{unit}", f"{m['peak_mb']:.0f} MB"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
