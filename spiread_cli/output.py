"""Presenting results: text through rich for people, strict JSON for scripts,
the training progress and summary, check's table. Everything meant for
standard output goes through `write_stdout`."""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from .diagnostics import SpireadError, shape_str
from .formatting import dumps, format_array, json_number, json_numbers, json_value, short_shape, terminal_width
from .values import jet_text


def values_table(rows: list[tuple]) -> list[tuple[str, str]]:
    """Aligned `name  shape  value` lines; a matrix continues on the lines below.
    A row is (name, array), or (name, array, text) to show the value as `text`.
    The table is (text, style) pieces, for `print_blocks`."""
    name_width = max((len(row[0]) for row in rows), default=0)
    shape_width = max((len(short_shape(np.shape(row[1]))) for row in rows), default=0)
    indent = " " * (name_width + shape_width + 4)
    width = max(terminal_width() - len(indent), 40)  # an array's lines, beside the names, fit the terminal
    out = []
    for name, value, *text in rows:
        shown = text[0] if text and text[0] is not None else format_array(value, width=width)
        out += [(name.ljust(name_width), "bold cyan"), ("  ", ""),
                (short_shape(np.shape(value)).ljust(shape_width), "magenta"), ("  ", ""),
                (shown.replace("\n", "\n" + indent), ""), ("\n", "")]
    while out and not out[-1][0].rstrip():  # no trailing newline or blanks: print_blocks ends the block
        out.pop()
    if out:
        out[-1] = (out[-1][0].rstrip(), out[-1][1])
    return out


# ------------------------------------------------------------ standard output


def write_stdout(text: str) -> None:
    """Write and flush at once, so a failure surfaces here and not in the
    interpreter's last flush. A reader that went away raises BrokenPipeError
    (the command ends quietly, as Unix tools do); any other failure, or a
    closed stdout, is a one-line error."""
    stream = sys.stdout
    if stream is None:  # started with `>&-`
        raise SpireadError("cannot write the results: standard output is closed")
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as err:
        silence_standard_streams(stderr=False)  # what is still buffered cannot be written either
        reason = getattr(err, "strerror", None) or str(err)
        raise SpireadError(f"cannot write the results to standard output: {reason}") from None


def silence_standard_streams(stderr: bool = True) -> None:
    """Point standard output (and error) at /dev/null, so that the
    interpreter's final flush of a broken stream prints no "Exception
    ignored" (the Python documentation's advice for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr) if stderr else (sys.stdout,):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, OSError, ValueError):  # closed or not a real file
            pass
    os.close(devnull)


class _StandardOutput:
    """A file for rich that writes through `write_stdout`."""
    encoding = "utf-8"

    def write(self, text: str) -> int:
        write_stdout(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return sys.stdout is not None and sys.stdout.isatty()

    def fileno(self) -> int:
        return sys.stdout.fileno()


def stdout_console():
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:  # rich's own would exit 1
            raise BrokenPipeError

    # Piped output is not wrapped at 80 columns: a script reads whole lines.
    out = _StandardOutput()
    return StdoutConsole(file=out, highlight=False, soft_wrap=True, width=None if out.isatty() else 10_000)


def print_blocks(*blocks: str | list[tuple[str, str]]) -> None:
    """Print each block, then a newline, on standard output. A block is plain
    text or (text, style) pieces (`values_table`). On a terminal rich prints
    them, coloured; anywhere else they are written as plain text without
    importing rich at all, as diagnostics.emit does for stderr (rich costs a
    sixth of `import numpy` at start-up: docs/performance.md)."""
    if sys.stdout is not None and sys.stdout.isatty():
        from rich.text import Text
        console = stdout_console()
        for block in blocks:
            if isinstance(block, str):
                console.print(block, markup=False)
            else:
                text = Text()
                for piece, style in block:
                    text.append(piece, style=style or None)
                console.print(text)
        return
    write_stdout("".join((block if isinstance(block, str) else "".join(piece for piece, _ in block)) + "\n"
                         for block in blocks))


def write_json(document: dict) -> None:
    write_stdout(dumps(document) + "\n")


def stderr_console():
    from rich.console import Console
    return Console(stderr=True, highlight=False)


# ------------------------------------------------------------ check


def check_document(report) -> dict:
    """`spiread check --format json`'s fields (besides file, output, warnings)."""
    return {"ok": report.ok, "results": {name: _value_check_json(r) for name, r in report.results.items()},
            "value": json_number(report.value) if np.ndim(report.value) == 0 else json_value(report.value),
            "eps": report.eps, "tol": report.tol, "problem": report.problem,
            **({"sparse": _sparse_check_json(report.sparse)} if report.sparse is not None else {})}


def _sparse_check_json(s) -> dict:
    return {"ok": s.ok, "what": s.what, "sweeps": s.sweeps, "colouring": s.colouring, "nonzeros": s.nonzeros,
            "compared": s.compared, "max_abs_error": json_number(s.max_abs_error), "scale": json_number(s.scale),
            "worst": s.worst, "missed": s.missed, "first_missed": s.first_missed}


def _value_check_json(r) -> dict:
    doc = {"max_abs_error": json_number(r.max_abs_error), "max_rel_error": json_number(r.max_rel_error),
           "ok": r.ok, "method": r.method, "checked": r.checked,
           "forward_vs_reverse": json_number(r.forward_vs_reverse),
           "ad": json_number(r.ad), "fd": json_number(r.fd)}
    if r.method == "directional":
        doc["worst_direction"] = r.worst
    else:
        doc["worst_entry"] = list(r.worst)
    doc["problem"] = r.problem
    return doc


def check_table(report):
    """The report for people: one row per value, then a verdict line."""
    from rich import box
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    rows = []
    for r in report.results.values():
        # Every entry is compared, or (directional mode, said below the table) random directions.
        worst = (str(list(r.worst)) if r.worst else "·") if r.method == "elementwise" else f"dir {r.worst}"
        rows.append([r.name, short_shape(r.shape), f"{r.max_abs_error:.1e}", f"{r.max_rel_error:.1e}",
                     worst, f"{r.ad:.6g}", f"{r.fd:.6g}", f"{r.forward_vs_reverse:.0e}", "ok" if r.ok else "FAIL"])
    # Narrow enough for an 80-column terminal, and no number is ever cut short.
    shown = f"= {report.value:.10g}" if np.ndim(report.value) == 0 else f"({short_shape(np.shape(report.value))})"
    table = Table(title=f"{report.what} check of `{report.output_name}` {shown}  "
                        f"(central differences, eps {report.eps:g}, tol {report.tol:g})",
                  title_justify="left", header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False,
                  collapse_padding=True)
    headers = ("value", "shape", "abs err", "rel err", "worst", "AD", "FD", "fwd−rev", "")
    for i, column in enumerate(headers):
        table.add_column(column, no_wrap=True, min_width=max([len(column)] + [len(row[i]) for row in rows]),
                         justify="left" if column in ("value", "worst", "") else "right")
    for row in rows:
        table.add_row(*row[:-1], Text(row[-1], style="bold green" if row[-1] == "ok" else "bold red"))
    lines = [table]
    directional = [f"`{r.name}` ({int(np.prod(r.shape))} entries)" for r in report.results.values()
                   if r.method == "directional"]
    if directional:
        lines.append(Text("directional mode: " + ", ".join(directional) + " would take too long to check entry by "
                          "entry, so derivatives along random unit directions were compared instead"))
    failed = [n for n, r in report.results.items() if not r.ok]
    if report.sparse is not None:
        lines.append(_sparse_check_line(report.sparse))
        if not report.sparse.ok:
            failed.append(f"sparse {report.sparse.what}")
    if report.ok:
        lines.append(Text(f"check passed: {len(report.results)} value(s) agree", style="bold green"))
    else:
        lines.append(Text("check FAILED" + (": " + ", ".join(f"`{n}`" for n in failed) if failed else ""),
                          style="bold red"))
    return Group(*lines)


def _sparse_check_line(s):
    """`check --sparse`'s line: the compressed evaluation against the dense one, and the pattern."""
    from rich.text import Text
    sweeps = f"{s.sweeps} sweep{'s' if s.sweeps != 1 else ''} ({s.colouring} colouring)"
    compared = " and ".join(s.compared)
    outside = (f"{s.missed} nonzero(s) outside the pattern, e.g. `{s.first_missed}`" if s.missed
               else "no nonzero outside the pattern")
    text = Text(f"sparse {s.what}: --sparse takes {sweeps}; {s.nonzeros} pattern entries; compressed by {compared}, "
                f"max |sparse − dense| {s.max_abs_error:.1e} (scale {s.scale:.3g}); {outside}  ")
    text.append("ok" if s.ok else "FAIL", style="bold green" if s.ok else "bold red")
    return text


# ------------------------------------------------------------ train: progress and summary

SPARKS = "▁▂▃▄▅▆▇█"


def sparkline(losses: list[float], width: int = 24) -> str:
    """The loss curve in one line of block characters (a terminal plot)."""
    if len(losses) < 2:
        return ""
    picks = np.asarray(losses)[np.linspace(0, len(losses) - 1, min(width, len(losses))).round().astype(int)]
    low, high = picks.min(), picks.max()
    if high == low:
        return SPARKS[0] * len(picks)
    levels = ((picks - low) / (high - low) * (len(SPARKS) - 1)).round().astype(int)
    return "".join(SPARKS[k] for k in levels)


class StepReporter:
    """Progress on stderr: a rich bar (step, loss, steps/s, ETA) on a terminal,
    else a plain line every tenth of the run."""

    def __init__(self, steps: int, live: bool | None = None):
        self.steps = steps
        self.live = sys.stderr.isatty() if live is None else live
        self.every = max(1, steps // 10)
        self.began = time.perf_counter()
        self.bar = None

    def __enter__(self):
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)
            self.bar = Progress(TextColumn("step"), MofNCompleteColumn(), BarColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=stderr_console())
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.steps, loss="…", rate="")
        return self

    def __exit__(self, *exc):
        if self.bar is None:
            return
        console = self.bar.console
        if console.is_jupyter:
            # rich stops a bar in Jupyter without drawing it again (the widget
            # would keep its last timed refresh, short of the end), and shows
            # its console's empty buffer as an output cell of its own.
            self.bar.refresh()
            console.quiet = True
        self.bar.stop()

    def __call__(self, step: int, loss: float) -> None:
        rate = step / max(time.perf_counter() - self.began, 1e-9)
        speed = f"{rate:.1f} steps/s" if rate >= 1 else f"{1 / rate:.2f} s a step"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, loss=f"{loss:.6g}", rate=speed)
        elif step % self.every == 0 or step == self.steps or step == 1:
            print(f"step {step}/{self.steps}  loss {loss:.6g}  {speed}", file=sys.stderr, flush=True)


def train_summary(result, run, steps: int, optimizer) -> str:
    shapes = ", ".join(f"{n} ({shape_str(result.values[n].shape)})" for n in result.names)
    done = len(result.losses)
    per_step = result.seconds / done if done else 0.0
    head = f"trained {shapes} with {optimizer.describe()}: {done} step{'s' * (done != 1)}"
    if result.status == "interrupted":
        head = f"interrupted: {head} of {steps}"
    each = f"{per_step * 1000:.3g} ms" if per_step < 1 else f"{per_step:.3g} s"
    lines = [f"{head} in {result.seconds:.3g} s ({each} a step)"]
    if result.losses:
        lines.append(f"{run.output_name}: {result.losses[0]:.6g} → {result.losses[-1]:.6g}  {sparkline(result.losses)}")
    if result.rejected is not None:
        lines.append(f"rejected {result.rejected} trial step{'s' * (result.rejected != 1)} that did not lower the loss "
                     "as the model predicted (one loss evaluation each)")
    if result.converged:
        lines.append(f"converged at step {done} of {steps}: {result.converged}")
    return "\n".join(lines)


# ------------------------------------------------------------ the commands' results


def eval_document(run) -> dict:
    values = {name: _run_value_json(run, i) for name, i in run.bindings.items()}
    values.setdefault(run.output_name, _run_value_json(run, run.output))
    return {"values": values}


def _run_value_json(run, node_id: int) -> dict:
    """A value; a Jet's infinitesimal parts as `"jet"` beside its real part."""
    shown = json_value(run.tape.nodes[node_id].value)
    if node_id in run.jets:
        shown["jet"] = json_numbers(run.jets[node_id].tolist())
    return shown


def _run_value_row(run, name: str, node_id: int) -> tuple:
    """A values_table row; a Jet is shown as spire shows it."""
    value = run.tape.nodes[node_id].value
    return name, value, (jet_text(value, run.jets[node_id]) if node_id in run.jets else None)


def eval_text(run) -> None:
    """Every bound value, then the output."""
    rows = [_run_value_row(run, name, i) for name, i in run.bindings.items()]
    output = values_table([_run_value_row(run, f"output {run.output_name}", run.output)])
    print_blocks(*((values_table(rows), "") if rows else ()), output)


def write_printed(printed: list[str], to_stderr: bool = False) -> None:
    """The program's `println` lines, in order: on stdout before the command's
    own output, or on stderr where stdout is not for them (DOT, JSON)."""
    if not printed:
        return
    text = "".join(line + "\n" for line in printed)
    if to_stderr:
        sys.stderr.write(text)
        sys.stderr.flush()
    else:
        write_stdout(text)


def grad_document(run, result, mode: str, explanation=None) -> dict:
    document = {"value": json_value(result.value), "mode": mode,
                "gradients": {n: json_value(g) for n, g in result.gradients.items()}}
    if explanation is not None:
        from .explain import explanation_document
        document["explain"] = explanation_document(run, explanation)
    return document


def grad_text(run, result, explanation=None) -> None:
    """With an explanation: the sweep step by step, then the gradients."""
    blocks = []
    if explanation is not None:
        from .explain import explanation_text
        blocks.append(explanation_text(run, explanation) + "\n")
    print_blocks(*blocks, values_table([(run.output_name, result.value)]), "",
                 values_table([(f"∂{run.output_name}/∂{n}", g) for n, g in result.gradients.items()]))


def hessian_document(result) -> dict:
    """`spiread hessian --format json`'s fields: every block, or the HVPs;
    with --sparse each block as COO triples and the sweeps; with --pattern
    the pattern's entries and counts."""
    value = {"value": json_value(result.value)}
    if hasattr(result, "pattern"):
        return {**value, **pattern_summary_json(result.pattern, result.sweeps, result.colouring),
                "pattern": {a: {b: sparse_json(block, shape, values=False) for b, (block, shape) in row.items()}
                            for a, row in named_blocks(result.pattern, result.names, result.shapes).items()}}
    if hasattr(result, "matrix"):
        return {**value, "sweeps": result.sweeps, "colouring": result.colouring,
                "hessian": {a: {b: sparse_json(block, shape) for b, (block, shape) in row.items()}
                            for a, row in named_blocks(result.matrix, result.names, result.shapes).items()}}
    if hasattr(result, "blocks"):
        return {**value, "hessian": {a: {b: json_value(h) for b, h in row.items()} for a, row in result.blocks.items()}}
    return {**value, "hvp": {a: json_value(p) for a, p in result.products.items()}}


def hessian_text(run, result) -> None:
    out = run.output_name
    value = values_table([(out, result.value)])
    if hasattr(result, "pattern"):
        print_blocks(value, "", pattern_text(f"∂²{out}", result.pattern, result.names, result.shapes,
                                             result.sweeps, result.colouring))
        return
    if hasattr(result, "matrix"):
        print_blocks(value, "", sparse_text(f"∂²{out}", result.matrix, result.names, result.shapes, result.sweeps,
                                            result.colouring))
        return
    if hasattr(result, "blocks"):
        rows = [(f"∂²{out}/∂{a}∂{b}", h) for a, row in result.blocks.items() for b, h in row.items()]
    else:
        rows = [(f"(H·v) for {a}", p) for a, p in result.products.items()]
    print_blocks(value, "", values_table(rows))


# ---------------------------------------------------- sparse results
# A sparse Hessian or Jacobian is one scipy.sparse matrix over the entries of
# its values (each flat, in C order, one after another in the given order);
# JSON gives it block by block as COO triples.


def named_blocks(matrix, names: list[str], shapes: list[tuple], rows: list[tuple] | None = None,
                 row_names: list[str] | None = None) -> dict:
    """The blocks of a matrix over named values: {row name: {column name:
    (block, shape(row value) + shape(column value))}}; the rows are the
    columns' values unless given (`row_names`, `rows`: their shapes)."""
    row_names, rows = (names, shapes) if row_names is None else (row_names, rows)
    row_cuts = np.cumsum([0] + [int(np.prod(s)) for s in rows])
    col_cuts = np.cumsum([0] + [int(np.prod(s)) for s in shapes])
    csr = matrix.tocsr()
    return {a: {b: (csr[row_cuts[i]:row_cuts[i + 1], col_cuts[j]:col_cuts[j + 1]], tuple(rows[i]) + tuple(shapes[j]))
                for j, b in enumerate(names)} for i, a in enumerate(row_names)}


def sparse_json(block, shape: tuple, values: bool = True) -> dict:
    """A block as COO triples in row-major order: `row` and `col` index the
    entries (flat, C order) of its two values; `value` the nonzeros (a
    pattern has none)."""
    coo = block.tocoo()
    order = np.lexsort((coo.col, coo.row))
    document = {"shape": list(shape), "nonzeros": int(coo.nnz), "row": coo.row[order].tolist(),
                "col": coo.col[order].tolist()}
    if values:
        document["value"] = json_numbers((np.asarray(coo.data[order], dtype=np.float64) + 0.0).tolist())
    return document


def pattern_summary_json(pattern, sweeps: int, colouring: str) -> dict:
    m, n = pattern.shape
    return {"nonzeros": int(pattern.nnz), "density": pattern.nnz / (m * n) if m * n else 0.0,
            "sweeps": sweeps, "colouring": colouring}


def _over(names: list[str], shapes: list[tuple]) -> str:
    return ", ".join(f"{name} ({short_shape(shape)})" for name, shape in zip(names, shapes))


def pattern_text(what: str, pattern, names: list[str], shapes: list[tuple], sweeps: int, colouring: str,
                 rows_over: str | None = None) -> list[tuple[str, str]]:
    """Counts, density, what --sparse would take, and the pattern as a picture."""
    m, n = pattern.shape
    density = pattern.nnz / (m * n) if m * n else 0.0
    header = (f"{what} pattern  {m}×{n}: {pattern.nnz} nonzeros ({100 * density:.3g}%); "
              f"--sparse takes {sweeps} sweep{'s' if sweeps != 1 else ''} ({colouring} colouring)\n")
    where = f"rows: {rows_over}; columns: {_over(names, shapes)}\n" if rows_over else f"over {_over(names, shapes)}\n"
    return [(header, "bold"), (where, ""), (pattern_picture(pattern), "")]


def pattern_picture(pattern, max_rows: int = 32, max_cols: int = 64) -> str:
    """The pattern as text: █ for a nonzero and · for a zero, one character
    an entry; a larger matrix in cells of several entries, shaded by how
    many of them are nonzero (░ ▒ ▓ █)."""
    m, n = pattern.shape
    if m == 0 or n == 0:
        return "(no entries)"
    coo = pattern.tocoo()
    cell_rows, cell_cols = -(-m // max_rows), -(-n // max_cols)
    rows, cols = -(-m // cell_rows), -(-n // cell_cols)
    counts = np.bincount((coo.row // cell_rows) * cols + coo.col // cell_cols, minlength=rows * cols)
    lines = []
    if cell_rows * cell_cols == 1:
        shade = np.where(counts > 0, "█", "·")
    else:
        fraction = counts / (cell_rows * cell_cols)
        shade = np.select([counts == 0, fraction <= 0.25, fraction <= 0.5, fraction <= 0.75], ["·", "░", "▒", "▓"], "█")
        lines.append(f"each character {cell_rows}×{cell_cols} entries, shaded by how many are nonzero")
    lines += ["".join(shade[r * cols:(r + 1) * cols]) for r in range(rows)]
    return "\n".join(lines)


def sparse_text(what: str, matrix, names: list[str], shapes: list[tuple], sweeps: int, colouring: str,
                rows_over: str | None = None, shown: int = 20) -> list[tuple[str, str]]:
    """Counts and sweeps, then the first nonzeros as `row col value`."""
    m, n = matrix.shape
    header = (f"{what}  {m}×{n}: {matrix.nnz} nonzeros, from {sweeps} sweep{'s' if sweeps != 1 else ''} "
              f"({colouring} colouring)\n")
    where = f"rows: {rows_over}; columns: {_over(names, shapes)}\n" if rows_over else f"over {_over(names, shapes)}\n"
    coo = matrix.tocoo()
    order = np.lexsort((coo.col, coo.row))[:shown]
    width = len(str(max(m, n)))
    lines = [f"{int(coo.row[k]):>{width}} {int(coo.col[k]):>{width}}  {format_array(np.float64(coo.data[k]) + 0.0)}"
             for k in order]
    if coo.nnz > shown:
        lines.append(f"… and {coo.nnz - shown} more (all with --format json, or --out FILE.npz)")
    return [(header, "bold"), (where, ""), ("\n".join(lines), "")]


def jacobian_document(result) -> dict:
    """`spiread jacobian --format json`'s fields: the output, the mode, every
    block; with --sparse each block as COO triples, and the sweeps; with
    --pattern the pattern's entries and counts."""
    value = {"value": json_value(result.value), "mode": result.mode}
    if hasattr(result, "pattern") or hasattr(result, "matrix"):
        matrix = result.pattern if hasattr(result, "pattern") else result.matrix
        blocks = {b: sparse_json(block, shape, values=not hasattr(result, "pattern"))
                  for b, (block, shape) in _jacobian_blocks(matrix, result).items()}
        if hasattr(result, "pattern"):
            return {**value, **pattern_summary_json(matrix, result.sweeps, result.colouring), "pattern": blocks}
        return {**value, "sweeps": result.sweeps, "colouring": result.colouring, "jacobian": blocks}
    return {**value, "jacobian": {name: json_value(block) for name, block in result.blocks.items()}}


def _jacobian_blocks(matrix, result) -> dict:
    """A sparse Jacobian's blocks by --wrt name: (block, shape(out) + shape(name))."""
    return named_blocks(matrix, result.names, result.shapes, [np.shape(result.value)], ["out"])["out"]


def jacobian_text(run, result, written: str | None = None) -> None:
    """The output, then each block ∂out/∂NAME (shape(out) + shape(NAME)) and
    the mode that computed them; with `--out`, the file written. With
    --sparse or --pattern, the counts, the sweeps and the first nonzeros
    or a picture of the pattern."""
    out = run.output_name
    value = values_table([(out, result.value)])
    rows_over = f"{out} ({short_shape(np.shape(result.value))})"
    if hasattr(result, "pattern"):
        print_blocks(value, "", pattern_text(f"∂{out}", result.pattern, result.names, result.shapes, result.sweeps,
                                             result.colouring, rows_over))
    elif hasattr(result, "matrix"):
        print_blocks(value, "", sparse_text(f"∂{out}", result.matrix, result.names, result.shapes, result.sweeps,
                                            result.colouring, rows_over))
    else:
        print_blocks(value, "", values_table([(f"∂{out}/∂{name}", block) for name, block in result.blocks.items()]),
                     f"{result.mode} mode" + (f"; wrote {written}" if written else ""))


def train_document(result, written) -> dict:
    document = {"steps": len(result.losses), "loss": result.losses,
                "saved": str(written.saved) if written.saved is not None else None,
                "values": {name: json_value(result.values[name]) for name in result.names}}
    if result.rejected is not None:  # an optimizer that tries steps (newton)
        document.update(rejected_steps=result.rejected, converged=result.converged)
    return document


def train_text(run, result, written, steps: int, optimizer) -> None:
    """The summary, the files written, then the trained values."""
    print_blocks(train_summary(result, run, steps, optimizer) + "".join(f"\n{w}" for w in written.done) + "\n",
                 values_table([(name, result.values[name]) for name in result.names]))
