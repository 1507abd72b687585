"""Sparse results, as text and JSON: a sparse Hessian or Jacobian, or its
pattern (`--sparse`, `--pattern`)."""

from __future__ import annotations

import numpy as np

from .formatting import format_array, json_numbers, short_shape


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
