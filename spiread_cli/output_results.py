"""Each command's result presented: `eval`, `grad`, `hessian`, `jacobian`
and `check`, as text for people (through output.print_blocks) and as the
fields of its --format json document."""

from __future__ import annotations

import numpy as np

from .formatting import json_number, json_numbers, json_value, short_shape
from .output import print_blocks, values_table
from .output_sparse import named_blocks, pattern_summary_json, pattern_text, sparse_json, sparse_text
from .values import jet_text


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
            "worst": s.worst, "missed": s.missed, "first_missed": s.first_missed,
            "wrong_rule": None if s.rule_node is None else {
                "op": s.rule_node.op.name, "misses": s.rule_misses,
                "line": s.rule_node.span.line if s.rule_node.span else None,
                "column": s.rule_node.span.column if s.rule_node.span else None}}


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


# ------------------------------------------------------------ eval, grad, hessian, jacobian


def eval_document(run, values: dict) -> dict:
    """`values`: the task's (Program.run_eval), name → value."""
    return {"values": {name: _value_json(run, name, value) for name, value in values.items()}}


def _node_of(run, name: str) -> int:
    """The node of a value `eval` shows: a bound name's, or the output's."""
    return run.bindings.get(name, run.output)


def _value_json(run, name: str, value) -> dict:
    """A value; a Jet's infinitesimal parts as `"jet"` beside its real part."""
    shown = json_value(value)
    node = _node_of(run, name)
    if node in run.jets:
        shown["jet"] = json_numbers(run.jets[node].tolist())
    return shown


def _value_row(run, label: str, name: str, value) -> tuple:
    """A values_table row; a Jet is shown as spire shows it."""
    node = _node_of(run, name)
    return label, value, (jet_text(value, run.jets[node]) if node in run.jets else None)


def eval_text(run, values: dict) -> None:
    """Every bound value, then the output (`values`: the task's)."""
    rows = [_value_row(run, name, name, value) for name, value in values.items() if name in run.bindings]
    output = values_table([_value_row(run, f"output {run.output_name}", run.output_name, values[run.output_name])])
    print_blocks(*((values_table(rows), "") if rows else ()), output)


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
