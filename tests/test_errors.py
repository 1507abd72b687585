"""What users see when something is wrong: the bad-input corpus, golden
renderings, the diagnostics renderer, and the guarantees around them.

The corpus lives in tests/bad/: each `*.ad` program starts with four header
lines (`# args:`, `# exit:`, `# at:`, `# says:`), and tests/bad/cli.txt lists
bad command lines. Every case is run through the real command-line app from
inside tests/bad, so messages name files as a user there would see them.
Golden renderings are in tests/golden/; after a deliberate change to a
message, regenerate them with

    SPIREAD_UPDATE_GOLDEN=1 python -m pytest tests/test_errors.py

and review the diff (docs/errors.md quotes some of them; tests/test_docs.py runs those).
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spiread_cli.gradients import gradients as run_gradients
from spiread_cli.program import Program
from spiread_cli.cli import app
from spiread_cli.diagnostics import (Diagnostic, Source, Span, SpireadError, did_you_mean, emit, render,
                                     tidy)
from spiread_cli.syntax import parse

TESTS = Path(__file__).parent
BAD = TESTS / "bad"
GOLDEN = TESTS / "golden"
UPDATE = os.environ.get("SPIREAD_UPDATE_GOLDEN") == "1"
# A fixed limit, so the "too big" message is the same on every machine.
ENV = {"SPIREAD_MAX_BYTES": "1e9"}


@dataclass
class Case:
    name: str
    args: list[str]
    exit: int
    where: str          # what stderr's first line starts with before `: error:`; "-" for Typer's own errors
    says: list[str]


def program_cases() -> list[Case]:
    cases = []
    for path in sorted(BAD.glob("*.ad")):
        header = path.read_bytes().split(b"\n")[:4]
        fields = dict(line.decode("utf-8")[2:].split(": ", 1) for line in header)
        at = fields["at"]
        cases.append(Case(path.stem, [*fields["args"].split(), path.name], int(fields["exit"]),
                          path.name if at == "-" else f"{path.name}:{at}", fields["says"].split(" | ")))
    return cases


def command_line_cases() -> list[Case]:
    cases = []
    for line in (BAD / "cli.txt").read_text("utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            args, exit_code, where, *says = (field.strip() for field in line.split(" | "))
            cases.append(Case(args, shlex.split(args), int(exit_code), where, says))
    return cases


PROGRAMS = program_cases()
COMMAND_LINES = command_line_cases()


@pytest.fixture
def in_bad(monkeypatch):
    monkeypatch.chdir(BAD)
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)


def invoke(args: list[str], stdin: str | None = None):
    """The real app, in-process (a subprocess per case would cost ~0.3 s each)."""
    result = CliRunner().invoke(app, args, input=stdin)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.stdout, result.stderr


# What a program's println wrote before its error, shown before it (on stdout in text mode).
PRINTED_BEFORE = {"println_value_used": "2.0\n"}


def check_case(case: Case, code: int, stdout: str, stderr: str) -> None:
    assert "Traceback" not in stderr
    assert code == case.exit, stderr
    assert stdout == PRINTED_BEFORE.get(case.name, ""), "an error leaves stdout empty but for println's lines"
    first = stderr.splitlines()[0]
    if case.where != "-":
        assert first.startswith(f"{case.where}: error: "), first
    for phrase in case.says:
        assert phrase in stderr, f"{phrase!r} not in:\n{stderr}"


def test_the_corpus_is_large_enough():
    assert len(PROGRAMS) + len(COMMAND_LINES) >= 50
    assert len({c.name for c in PROGRAMS}) == len(PROGRAMS)


@pytest.mark.parametrize("case", PROGRAMS, ids=lambda c: c.name)
def test_bad_program(case: Case, in_bad):
    code, stdout, stderr = invoke(case.args)
    check_case(case, code, stdout, stderr)
    golden = GOLDEN / f"{case.name}.txt"
    if UPDATE:
        golden.write_text(stderr, "utf-8")
    assert stderr == golden.read_text("utf-8")


@pytest.mark.parametrize("case", COMMAND_LINES, ids=lambda c: c.name)
def test_bad_command_line(case: Case, in_bad):
    code, stdout, stderr = invoke(case.args)
    check_case(case, code, stdout, stderr)


def test_goldens_have_programs():
    """A golden file whose program was removed from the corpus is stale."""
    assert {p.stem for p in GOLDEN.glob("*.txt")} == {c.name for c in PROGRAMS}


# A handful of cases through a real process: what a user's shell sees must be
# what the in-process runs above see, and nothing may print a traceback.
@pytest.mark.parametrize("name", ["syntax_unclosed_paren", "shape_matmul_inner", "load_pickled",
                                  "strict_log_of_zero", "syntax_not_utf8"])
def test_real_process_matches_golden(name):
    case = next(c for c in PROGRAMS if c.name == name)
    done = subprocess.run([sys.executable, "-m", "spiread_cli", *case.args], cwd=BAD, capture_output=True,
                          text=True, env={**os.environ, **ENV}, timeout=60)
    assert done.returncode == case.exit
    assert done.stdout == ""
    assert done.stderr == (GOLDEN / f"{name}.txt").read_text("utf-8")


def test_real_process_usage_error_and_stdin():
    done = subprocess.run([sys.executable, "-m", "spiread_cli", "eval", "-", "--set", "x"], cwd=BAD,
                          input="x = 1\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "expected NAME=VALUE" in done.stderr and "Traceback" not in done.stderr


def test_program_from_stdin_is_located(in_bad):
    code, stdout, stderr = invoke(["eval", "-"], stdin="x = [1, 2]\ny = x +\n")
    assert code == 1 and stdout == ""
    assert stderr.startswith("<stdin>:2:8: error: expected an expression after `+`")


# ------------------------------------------------------------ rendering

SOURCE = Source("m.ad", "a = [1, 2]\nb = a @@ [[1, 2, 3]]\n")


def test_render_points_at_the_whole_span():
    span = Span(2, 5, 2, 20, 15, 30)
    text = render(Diagnostic("error", "bad", span, ("a note",)), SOURCE)
    assert text == ("m.ad:2:5: error: bad\n"
                    " 2 | b = a @@ [[1, 2, 3]]\n"
                    "   |     ^^^^^^^^^^^^^^^\n"
                    "  = note: a note")


def test_render_span_over_lines_underlines_to_the_end_of_its_first_line():
    source = Source("m.ad", "x = (1 +\n  2) * y\n")
    text = render(Diagnostic("warning", "w", Span(1, 5, 2, 5, 4, 13)), source)
    assert text.splitlines()[1:] == [" 1 | x = (1 +", "   |     ^^^^"]


def test_render_related_places_in_line_order():
    source = Source("m.ad", "x = 1\ny = 2\nx = 3\n")
    diagnostic = Diagnostic("error", "again", Span(3, 1, 3, 2, 12, 13), related=((Span(1, 1, 1, 2, 0, 1), "first"),))
    assert render(diagnostic, source).splitlines()[1:] == [" 1 | x = 1", "   | - first", " 3 | x = 3", "   | ^"]


def test_render_windows_a_long_line_around_the_span():
    line = "x = " + " + ".join(["a"] * 5000) + " + oops"
    source = Source("m.ad", line)
    start = line.index("oops")
    text = render(Diagnostic("error", "e", Span(1, start + 1, 1, start + 5, start, start + 4)), source)
    shown, marks = text.splitlines()[1:3]
    assert len(shown) < 120 and shown.startswith(" 1 | …") and "oops" in shown
    assert shown.index("oops") == marks.index("^^^^")


def test_render_never_sends_control_characters_to_the_terminal():
    source = Source("m.ad", "x = \x1b[31m 1\ty\n")
    text = render(Diagnostic("error", "e", Span(1, 5, 1, 6, 4, 5)), source)
    assert "\x1b" not in text and "\t" not in text
    assert text.splitlines()[2] == "   |     ^"


def test_tidy_shortens_long_quoted_code_and_joins_lines():
    message = tidy("`" + "a + " * 100 + "b`: bad,\n  `c`")
    assert "\n" not in message and len(message) < 80 and message.endswith("`c`")


def test_colour_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    diagnostic = Diagnostic("error", "bad", Span(1, 1, 1, 2, 0, 1))
    plain, terminal = io.StringIO(), Terminal()
    emit(diagnostic, SOURCE, plain)
    emit(diagnostic, SOURCE, terminal)
    assert "\x1b[" not in plain.getvalue()
    assert "\x1b[" in terminal.getvalue()
    assert re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue()) == plain.getvalue()


def test_did_you_mean():
    assert did_you_mean("weigths", ["weights", "bias"]) == ("did you mean `weights`?",)
    assert did_you_mean("EXP", ["exp", "log"]) == ("did you mean `exp`?",)
    assert did_you_mean("zzz", ["exp", "log"]) == ()


# ------------------------------------------------- guarantees around errors

def test_strict_turns_the_first_warning_into_an_error_and_json_keeps_warnings(tmp_path):
    program = tmp_path / "w.ad"
    program.write_text("x = [1, -1]\ny = x.sqrt.sum\n")
    code, stdout, stderr = invoke(["eval", str(program), "--format", "json"])
    assert code == 0 and stderr == ""
    warning, = json.loads(stdout)["warnings"]
    assert warning == {"line": 2, "column": 7,
                       "message": "`sqrt` gave nan at 1 of 2 entries, first at [1]; its input was -1 there"}
    code, stdout, stderr = invoke(["eval", str(program), "--format", "json", "--strict"])
    assert code == 1 and stdout == ""
    assert stderr.startswith(f"{program}:2:7: error: `sqrt` gave nan")


def test_internal_errors_say_so_and_debug_shows_the_traceback(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(Program, "_run", broken)  # the run every command makes
    program = tmp_path / "p.ad"
    program.write_text("x = [1, 2]\ny = x.exp\n")
    code, stdout, stderr = invoke(["eval", str(program)])
    assert code == 1 and "internal error" in stderr and "bug in spiread" in stderr and "Traceback" not in stderr
    code, stdout, stderr = invoke(["eval", str(program), "--debug"])
    assert code == 1 and "Traceback" in stderr


def test_a_bad_size_limit_is_a_usage_error(tmp_path, monkeypatch):
    program = tmp_path / "p.ad"
    program.write_text("x = zeros(3, 3)\n")
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "lots")
    code, _, stderr = invoke(["eval", str(program)])
    assert code == 2 and "SPIREAD_MAX_BYTES" in stderr
    monkeypatch.setenv("SPIREAD_MAX_BYTES", "64")
    code, _, stderr = invoke(["eval", str(program)])
    assert code == 1 and "3×3 (72 bytes), more than the limit of 64 bytes" in stderr


def test_library_raises_only_spiread_errors_for_bad_programs():
    for case in PROGRAMS:
        raw = (BAD / f"{case.name}.ad").read_bytes()
        if case.args != ["eval", f"{case.name}.ad"] or b"load(" in raw or b"\0" in raw or b"\xe9" in raw:
            continue
        with pytest.raises(SpireadError):
            Program.parse(Source(case.name, raw.decode("utf-8")), BAD).run()


# -------------------------------------------- deep nesting and long chains

DEPTH = 10_000


def run(text: str):
    return Program.parse(Source("deep.ad", text), TESTS).run()


def test_deeply_nested_parentheses():
    assert float(run("x = " + "(" * DEPTH + "2" + ")" * DEPTH).node("x").value) == 2.0


def test_deeply_nested_parentheses_left_open_name_the_one_left_open():
    with pytest.raises(SpireadError) as err:
        run("x = " + "(" * DEPTH + "2" + ")" * (DEPTH - 1))
    assert err.value.diagnostic.message == "unclosed `(` opened at 1:5"


def test_long_method_chain_and_its_gradient():
    r = run("x = [0.5, 1.0]\ny = x" + ".sin" * DEPTH + "\nz = y.sum")
    expected = np.array([0.5, 1.0])
    slope = np.ones(2)
    for _ in range(DEPTH):
        slope *= np.cos(expected)
        expected = np.sin(expected)
    assert np.allclose(r.node("y").value, expected)
    for mode in ("reverse", "forward"):
        assert np.allclose(run_gradients(r, ["x"], mode).gradients["x"], slope)


def test_long_sum_and_unary_chains():
    r = run("x = [1.0, 2.0]\ny = (x" + " + x" * DEPTH + ").sum\nz = " + "-" * DEPTH + "y")
    assert float(r.node("z").value) == 3.0 * (DEPTH + 1)
    assert np.allclose(run_gradients(r, ["x"]).gradients["x"], DEPTH + 1)


def test_long_right_associative_power_chain():
    r = run("x = 1.5\ny = x" + " ** 1" * DEPTH)
    assert float(r.node("y").value) == 1.5
    assert float(run_gradients(r, ["x"]).gradients["x"]) == 1.0


def test_deep_brackets_report_a_shape_error_not_a_crash():
    with pytest.raises(SpireadError) as err:
        run("x = " + "[" * DEPTH + "1" + "]" * DEPTH)
    assert "only scalars and vectors can be stacked" in err.value.diagnostic.message
    assert len(render(err.value.diagnostic, Source("deep.ad", "x = " + "[" * DEPTH))) < 600


def test_deeply_nested_json_data_is_refused_cleanly(tmp_path):
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpireadError, match="nest too deeply"):
        Program.parse(Source(str(tmp_path / "p.ad"), 'x = load("deep.json")'), tmp_path).run()


def test_parse_errors_are_located_even_at_the_end_of_a_file_with_blank_lines():
    with pytest.raises(SpireadError) as err:
        parse(Source("m.ad", "x = 1 +\n\n\n"))
    assert (err.value.diagnostic.span.line, err.value.diagnostic.span.column) == (1, 8)
