"""Forward against reverse mode as the number of parameters grows.

One scalar output, n parameters, n from 1 to 10^4. Reverse mode is one sweep
back over the tape whatever n is; forward mode pushes n tangent directions
(in memory-budgeted blocks), so its work grows with n. Each program is parsed
and recorded once; only the derivative sweeps are timed, and the two
gradients are compared before any figure is reported.

    python benchmarks/forward_vs_reverse.py                 # markdown table
    python benchmarks/forward_vs_reverse.py --svg docs/forward-vs-reverse.svg
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from spiread_cli.program import Program  # noqa: E402
from spiread_cli.diagnostics import Source  # noqa: E402
from spiread_cli.forward import jacobian_forward  # noqa: E402

SIZES = [1, 3, 10, 30, 100, 300, 1000, 3000, 10000]

# n parameters `w`; everything else is data.
WORKLOADS = {
    "elementwise": "w = randn({n}, seed=0)\n"
                   "loss = (w.tanh * w.sin).sum + w.square.mean + (w * 0.5).exp.mean.log",
    "linear model": "X = randn(64, {n}, seed=1)\ny = randn(64, seed=2)\nw = randn({n}, seed=0) * 0.1\n"
                    "loss = ((X @@ w).tanh - y).square.mean + w.square.sum * 0.001",
}


def seconds(fn, budget: float = 0.3) -> float:
    """Median wall time of `fn`: at least 3 runs, more while under `budget`."""
    times = []
    while len(times) < 3 or (sum(times) < budget and len(times) < 200):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(workload: str, n: int) -> dict:
    run = Program.parse(Source(f"{workload}.ad", WORKLOADS[workload].format(n=n))).run()
    tape, out, w = run.tape, run.output, run.bindings["w"]
    reverse = tape.backward(out, [w])[w]
    forward = jacobian_forward(tape, out, [w])[w]
    np.testing.assert_allclose(forward, reverse, rtol=1e-10, atol=1e-13)
    t_rev = seconds(lambda: tape.backward(out, [w]))
    t_fwd = seconds(lambda: jacobian_forward(tape, out, [w]))
    return {"workload": workload, "n": n, "reverse": t_rev, "forward": t_fwd, "ratio": t_fwd / t_rev}


def fmt_time(s: float) -> str:
    return f"{s * 1e6:.0f} µs" if s < 1e-3 else (f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s")


def table(rows: list[dict]) -> str:
    lines = ["| workload | parameters | reverse | forward | forward / reverse |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        winner = "**forward**" if r["ratio"] < 1 else ""
        lines.append(f"| {r['workload']} | {r['n']:,} | {fmt_time(r['reverse'])} | {fmt_time(r['forward'])} "
                     f"| {r['ratio']:.2f}× {winner} |")
    return "\n".join(lines)


def svg(rows: list[dict]) -> str:
    """A log-log plot of both modes' times against n, hand-written SVG."""
    width, height, left, bottom, top, right = 640, 400, 70, 50, 20, 150
    xs = [np.log10(r["n"]) for r in rows]
    ys = [np.log10(r[m]) for r in rows for m in ("forward", "reverse")]
    x0, x1 = min(xs), max(xs)
    y0, y1 = np.floor(min(ys)), np.ceil(max(ys))

    def px(n):
        return left + (np.log10(n) - x0) / (x1 - x0) * (width - left - right)

    def py(t):
        return height - bottom - (np.log10(t) - y0) / (y1 - y0) * (height - bottom - top)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
             'font-size="12"><rect width="100%" height="100%" fill="white"/>']
    for e in range(int(y0), int(y1) + 1):
        y = py(10.0 ** e)
        parts.append(f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt_time(10.0 ** e)}</text>')
    for n in sorted({r["n"] for r in rows}):
        x = px(n)
        parts.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#eee"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{n:,}</text>')
    parts.append(f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">'
                 'parameters (one scalar output)</text>')
    colours = {"forward": "#d62728", "reverse": "#1f77b4"}
    dashes = {name: dash for name, dash in zip(WORKLOADS, ("", "6,4"))}
    legend_y = top + 10
    for workload in WORKLOADS:
        for mode, colour in colours.items():
            points = " ".join(f"{px(r['n']):.1f},{py(r[mode]):.1f}" for r in rows if r["workload"] == workload)
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2" '
                         f'stroke-dasharray="{dashes[workload]}"/>')
            parts.append(f'<line x1="{width - right + 10}" y1="{legend_y}" x2="{width - right + 35}" y2="{legend_y}" '
                         f'stroke="{colour}" stroke-width="2" stroke-dasharray="{dashes[workload]}"/>')
            parts.append(f'<text x="{width - right + 40}" y="{legend_y + 4}">{mode}, {workload}</text>')
            legend_y += 18
    parts.append("</svg>")
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max", type=int, default=SIZES[-1], help="largest parameter count")
    parser.add_argument("--svg", type=Path, help="also write a log-log plot here")
    args = parser.parse_args()
    rows = [measure(w, n) for w in WORKLOADS for n in SIZES if n <= args.max]
    print(f"<!-- {platform.processor() or platform.machine()}, Python {platform.python_version()}, "
          f"numpy {np.__version__} -->")
    print(table(rows))
    if args.svg:
        args.svg.write_text(svg(rows))


if __name__ == "__main__":
    main()
