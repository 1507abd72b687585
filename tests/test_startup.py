"""Start-up: a command imports only what it uses (docs/performance.md, "Cold
start"). Checked by the modules a real process imports, never by timing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from conftest import EXAMPLES, REPO, spiread
from spiread_cli import syntax

# Never needed to evaluate or differentiate on the numpy backend: each is a
# command's or an option's own (--plot, --backend dask, --explain, hessian,
# check, train, files written), rich, which only a
# terminal's colours need, or lark, which only a syntax error needs (a program
# that parses is read from Lark's tables, cached: syntax._load_tables).
# pydantic comes with typer ≥ 0.29 (pyproject.toml).
NOT_AT_START_UP = ["rich", "pydantic", "dask", "distributed", "zarr", "matplotlib", "jsonschema", "lark",
                   "spiread_cli.second", "spiread_cli.explain", "spiread_cli.check", "spiread_cli.train",
                   "spiread_cli.optim", "spiread_cli.rewrite", "spiread_cli.files",
                   "spiread_cli.dot", "spiread_cli.dask_backend", "spiread_cli.chunk_plan", "spiread_cli.chunk_tasks",
                   "spiread_cli.row_data", "spiread_cli.row_totals",
                   "scipy", "spiread_cli.sparsity", "spiread_cli.sparsity_links", "spiread_cli.sparsity_colouring"]


def imported_by(*args: str) -> tuple[set[str], subprocess.CompletedProcess]:
    """The modules a `python -m spiread_cli ARGS` process imports (`-X importtime`),
    once the parse tables are in their cache (as after any earlier run)."""
    syntax._load_tables()
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "spiread_cli", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60)
    modules = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    return modules, done


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in NOT_AT_START_UP))


@pytest.mark.parametrize("args, code", [
    (["eval", "examples/seed.ad"], 0),
    (["eval", "examples/seed.ad", "--format", "json"], 0),
    (["grad", "examples/seed.ad"], 0),
    (["grad", "examples/least_squares.ad", "--mode", "forward"], 0),
    (["eval", "tests/bad/load_empty.ad"], 1),  # an error, rendered plain on a pipe
    (["eval", "examples/seed.ad", "--nonsense"], 2),
])
def test_a_command_imports_only_what_it_uses(args, code):
    modules, done = imported_by(*args)
    assert done.returncode == code, done.stderr[-2000:]
    # The list is real: the process did import the evaluator (or, for a usage error, the CLI).
    assert "spiread_cli.cli" in modules and (code == 2 or {"numpy", "spiread_cli.interpreter"} <= modules)
    assert heavy(modules) == []


def test_a_syntax_error_is_lark_s():
    """Lark is imported when a program does not parse: its parser gives the message."""
    modules, done = imported_by("eval", "tests/bad/syntax_two_values.ad")
    assert done.returncode == 1, done.stderr[-2000:]
    assert "lark" in modules and "expected an operator" in done.stderr


def test_the_guard_sees_a_heavy_import():
    """The same check on a command that does need them finds them."""
    modules, done = imported_by("grad", "examples/seed.ad", "--explain")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "spiread_cli.explain" in heavy(modules)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs a pseudo-terminal")
@pytest.mark.parametrize("args", [["eval", "seed.ad"], ["grad", "seed.ad", "--explain"], ["hessian", "least_squares.ad"],
                                  ["eval", "basics_jet.ad"]])
def test_a_terminal_gets_the_same_text_in_colour(args):
    """On a terminal rich prints the tables, coloured; on a pipe they are plain
    text written without rich. Both must say the same thing."""
    piped = spiread(*args, cwd=EXAMPLES)
    primary, secondary = os.openpty()
    shown = b""
    try:
        child = subprocess.Popen([sys.executable, "-m", "spiread_cli", *args], stdout=secondary,
                                 stderr=subprocess.DEVNULL, cwd=EXAMPLES, env={**os.environ, "COLUMNS": "200"})
        os.close(secondary)
        while True:  # read as it writes: a full terminal buffer would stop the child
            try:
                chunk = os.read(primary, 1 << 16)
            except OSError:  # EIO: the child has exited and closed the terminal
                break
            if not chunk:
                break
            shown += chunk
        code = child.wait(timeout=60)
    finally:
        os.close(primary)
    assert code == piped.returncode == 0
    text = shown.decode("utf-8").replace("\r\n", "\n")
    assert ANSI.search(text), "no colour on a terminal"
    assert ANSI.sub("", text) == piped.stdout


@pytest.mark.parametrize("args", [["eval", "seed.ad"], ["grad", "--help"], ["schema", "eval"]])
def test_a_command_line_builds_only_the_command_it_names(args):
    """Typer makes a click command of every command it holds on each run:
    arguments that start with a command's name get an app with that one alone
    (what they print is pinned in tests/test_cli*.py)."""
    from spiread_cli.cli import app, command_line
    assert [c.name for c in command_line(args).registered_commands] == [args[0]]
    assert len(app.registered_commands) > 1  # the app itself keeps them all


@pytest.mark.parametrize("args", [[], ["--help"], ["--version"], ["--help", "eval"], ["evl", "seed.ad"]])
def test_any_other_command_line_gets_the_whole_app(args):
    """Help, the version, and an unknown command name list or suggest every command."""
    from spiread_cli.cli import app, command_line
    assert command_line(args) is app
