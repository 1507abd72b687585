"""The command line's sparse results (`hessian` and `jacobian` with
`--sparse` or `--pattern`): their options, the checks of those options
before any work, and the files they write (`--out` .npz, `--plot`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

SparseOpt = Annotated[bool, typer.Option(
    "--sparse", help="Find every nonzero from one sweep per colour of the exact sparsity pattern (needs scipy: "
                     "pip install \".[sparse]\"); JSON gives COO triples and the sweeps.")]
PatternOpt = Annotated[bool, typer.Option(
    "--pattern", help="Print the exact sparsity pattern, read from the program without computing a derivative: "
                      "counts, density, the sweeps --sparse takes, and a picture (needs scipy).")]
SparseOutOpt = Annotated[Optional[Path], typer.Option(
    "--out", metavar="PATH.npz", help="With --sparse or --pattern: write the matrix as the .npz that "
                                      "scipy.sparse.load_npz reads (whole or not at all).")]
SpyPlotOpt = Annotated[Optional[Path], typer.Option(
    "--plot", metavar="PATH.png", help="With --sparse or --pattern: draw the pattern as a spy plot (needs matplotlib).")]


def sparse_options(sparse: bool, pattern: bool, out: Path | None, plot: Path | None, conflicts: dict,
                   dense_out: bool = False) -> None:
    """Usage errors of --sparse, --pattern, --out and --plot, before any work:
    `conflicts` names the options they cannot go with (and whether given);
    `dense_out`: the command writes a dense result to --out too."""
    from . import files
    from .diagnostics import usage_error
    chosen = "--sparse" if sparse else "--pattern" if pattern else None
    if sparse and pattern:
        raise usage_error("`--sparse` and `--pattern` are different results: the sparse matrix, or only where it "
                          "is nonzero", ["give one of them"])
    for option_name, given in conflicts.items():
        if given and chosen:
            raise usage_error(f"`{chosen}` and `{option_name}` cannot go together")
    for option_name, given in (("--out", None if dense_out else out), ("--plot", plot)):
        if given is not None and chosen is None:
            raise usage_error(f"`{option_name}` writes a sparse result", ["add `--sparse` or `--pattern`"])
    if chosen and not files.installed("scipy"):
        raise usage_error(f"`{chosen}` needs scipy, which is not installed",
                          ['pip install scipy (or pip install ".[sparse]" in spiread\'s checkout)'])
    if plot is not None and not files.installed("matplotlib"):
        raise usage_error("`--plot` needs matplotlib, which is not installed",
                          ['pip install matplotlib (or pip install ".[plot]" in spiread\'s checkout)'])


def write_sparse_files(matrix, out: Path | None, plot: Path | None, title: str) -> None:
    """The sparse matrix (or pattern) to --out as scipy's .npz, its spy plot to --plot."""
    from . import files
    if out is not None:
        files.save_sparse(out, matrix)
    if plot is not None:
        files.plot_pattern(plot, matrix, title)


def sparse_outputs(out: Path | None, plot: Path | None) -> list:
    """The files --out and --plot name, checked before any work (files.Output)."""
    from .files import Output
    return [Output("--out", out, (".npz",)), Output("--plot", plot, (".png", ".svg", ".pdf"))]
