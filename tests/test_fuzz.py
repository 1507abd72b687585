"""Fuzzing: whatever the input, spiread answers with a result or a located
error, never a traceback, a hang or a crash.

Most examples go through the library API (fast); the command line is fuzzed
in-process with the real Typer app, and a few examples through a real
subprocess, where a traceback or a bad exit code would show as a user sees it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from conftest import EXAMPLES, strict_json
from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.set_options import parse_overrides
from spiread_cli.sources import read_source
from spiread_cli.cli import app
from spiread_cli.diagnostics import Source, SpireadError, render

PROGRAMS = {path.name: path.read_text("utf-8") for path in sorted(EXAMPLES.glob("*.ad"))}
TOKEN = re.compile(r'"[^"\n]*"|\d+\.\d+|\d+|[A-Za-z_]\w*|\*\*|@@|//[^\n]*|#[^\n]*|\n|\S')
# Pieces a mutation may insert, beyond the program's own tokens.
EXTRA = ["(", ")", "[", "]", ",", ".", "=", "+", "-", "*", "/", "**", "@@", ";", "\n", "0", "-1", "2.5",
         "1e308", "0.0", "x", "sum", "T", "row", "load", '"nope.csv"', "select", "arange", "backward",
         "ReductionOps.Sum", "Array", "(0, 0)", "zeros", "log", "sqrt", "val", "import", "zeros(0)", "zeros(3, 0)",
         "** 0", "softmaxRows", "product"]
# Results stay small, so a mutation that builds a huge array is refused fast.
SMALL_LIMIT = {"SPIREAD_MAX_BYTES": str(64 << 20)}
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@st.composite
def mutated_programs(draw) -> str:
    """An example with a few tokens deleted, duplicated, swapped or replaced."""
    tokens = TOKEN.findall(PROGRAMS[draw(st.sampled_from(sorted(PROGRAMS)))])
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        i = draw(st.integers(0, len(tokens) - 1))
        j = draw(st.integers(0, len(tokens) - 1))
        kind = draw(st.sampled_from(["delete", "duplicate", "swap", "replace"]))
        if kind == "delete":
            del tokens[i]
        elif kind == "duplicate":
            tokens.insert(i, tokens[j])
        elif kind == "swap":
            tokens[i], tokens[j] = tokens[j], tokens[i]
        else:
            tokens[i] = draw(st.sampled_from(EXTRA))
    return " ".join(tokens)


PIECES = list("xyw01.5e+-*/@()[],=;\n \"#") + ["**", ".exp", ".sum", "val ", "Array"]
language_text = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)


def run_everything(source: Source) -> None:
    """Evaluate and differentiate in both modes; only SpireadError may escape,
    and it must render."""
    try:
        run = Program.parse(source, EXAMPLES).run()
        for mode in ("reverse", "forward"):
            run_gradients(run, None, mode)
    except SpireadError as err:
        text = render(err.diagnostic, source)
        if err.diagnostic.span is not None:
            span = err.diagnostic.span
            assert text.startswith(f"{source.name}:{span.line}:{span.column}: error: ")


@settings(FUZZ, max_examples=250)
@given(mutated_programs())
def test_mutated_examples_through_the_library(text):
    run_everything(Source("fuzz.ad", text))


@settings(FUZZ, max_examples=150)
@given(language_text)
def test_random_program_text_through_the_library(text):
    run_everything(Source("fuzz.ad", text))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def examples_copy(tmp_path_factory) -> Path:
    """A copy of the examples that PROGRAMS mutates, for a mutated one to be
    written beside, as in examples/, without touching the repository."""
    folder = tmp_path_factory.mktemp("examples")
    for path in EXAMPLES.glob("*.ad"):
        shutil.copy(path, folder)
    return folder


@pytest.fixture(scope="module", autouse=True)
def small_limit():
    saved = {key: os.environ.get(key) for key in SMALL_LIMIT}
    os.environ.update(SMALL_LIMIT)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key)
        else:
            os.environ[key] = value


@settings(FUZZ, max_examples=150)
@given(st.text(max_size=30) | language_text)
def test_random_set_options(scratch, value):
    """`--set` values are parsed by the language's parser: same guarantee."""
    try:
        parse_overrides([f"x={value}", value], scratch)
    except SpireadError as err:
        assert err.exit_code in (1, 2)


@settings(FUZZ, max_examples=150)
@given(st.binary(max_size=120) | st.builds(lambda b, t: t.encode() + b, st.binary(max_size=8), language_text))
def test_random_bytes_through_read_source(scratch, raw):
    path = scratch / "bytes.ad"
    path.write_bytes(raw)
    try:
        source = read_source(str(path))
    except SpireadError as err:
        assert render(err.diagnostic, None).startswith(str(path))
        return
    run_everything(source)


def check_cli_outcome(code: int, stdout: str, stderr: str, json_mode: bool) -> None:
    assert "Traceback" not in stderr + stdout
    assert "internal error" not in stderr, stderr
    assert code in (0, 1, 2)
    if json_mode:
        assert stdout == "" or isinstance(strict_json(stdout), dict)
    if code != 0:
        assert "error: " in stderr


@settings(FUZZ, max_examples=60)
@given(mutated_programs(), st.sampled_from(["eval", "grad", "dot"]), st.booleans())
def test_mutated_examples_through_the_command_line(examples_copy, text, command, json_mode):
    path = examples_copy / "__fuzz__.ad"
    args = [command, str(path)] + (["--format", "json"] if json_mode and command != "dot" else [])
    path.write_text(text, "utf-8")
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    check_cli_outcome(result.exit_code, result.stdout, result.stderr, json_mode and command != "dot")


@settings(FUZZ, max_examples=3)
@given(mutated_programs())
def test_mutated_examples_through_a_real_process(scratch, text):
    """A real `spiread` process per example, text and JSON, within a time bound."""
    path = scratch / "process.ad"
    path.write_text(text, "utf-8")
    for json_mode in (False, True):
        args = ["grad", str(path)] + (["--format", "json"] if json_mode else [])
        done = subprocess.run([sys.executable, "-m", "spiread_cli", *args], capture_output=True, text=True,
                              timeout=60, env={**os.environ, **SMALL_LIMIT})
        check_cli_outcome(done.returncode, done.stdout, done.stderr, json_mode)
