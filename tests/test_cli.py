"""The command line end to end: the real `spiread` binary in subprocesses,
its output parsed strictly, its DOT piped through the real Graphviz `dot`."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from functools import lru_cache

import numpy as np
import pytest

from conftest import CONSTANT_EXAMPLES, EXAMPLES, REPO, spiread, spiread_command, strict_json
from spiread_cli.program import Program

SEED = "examples/seed.ad"
NATIVE = "examples/seed_native.ad"
SEED_GRADIENT = [[-0.291882, 0.291882], [-0.583765, 0.583765]]
ANSI = re.compile(r"\x1b\[")


@lru_cache(maxsize=None)
def cached(*args: str):
    """Runs shared by several tests (each subprocess costs a few tenths of a second)."""
    return spiread(*args)


def assert_no_traceback(result):
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


# ------------------------------------------------------------------ eval


def test_eval_text_lists_every_binding_then_the_output_and_warns_at_the_log():
    result = cached("eval", SEED)
    assert result.returncode == 0, result.stderr
    names = [line.split()[0] for line in result.stdout.splitlines() if line and not line.startswith(" ")]
    assert names == ["data", "weights", "probits", "selected", "loss", "output"]
    assert re.search(r"^output loss\s+scalar\s+inf$", result.stdout, re.M)
    assert re.search(r"^probits\s+3×2\s+\[\[", result.stdout, re.M)
    # FILE:LINE:COL: warning: …, the source line, a caret under `log`.
    lines = result.stderr.splitlines()
    assert lines[0].startswith(f"{SEED}:24:79: warning: `log` gave -inf")
    assert "val selected" in lines[1]
    caret = lines[2]
    assert caret.index("^") - caret.index("|") == lines[1].index("log") - lines[1].index("|")


def test_no_colour_codes_when_piped():
    for result in (cached("eval", SEED), cached("grad", SEED), cached("eval", "missing.ad")):
        assert not ANSI.search(result.stdout) and not ANSI.search(result.stderr)


def test_eval_json_is_strict_and_complete():
    result = cached("eval", SEED, "--format", "json")
    assert result.returncode == 0
    assert result.stderr == ""  # warnings travel in the document
    doc = strict_json(result.stdout)
    assert set(doc) == {"schema", "file", "output", "values", "warnings"} and doc["schema"] == "spiread/eval/1"
    assert doc["file"] == SEED and doc["output"] == "loss"
    assert list(doc["values"]) == ["data", "weights", "probits", "selected", "loss"]
    assert doc["values"]["loss"] == {"shape": [], "value": "inf"}
    assert doc["values"]["selected"] == {"shape": [], "value": "-inf"}
    assert doc["values"]["data"] == {"shape": [3, 2], "value": [[1.0, 2.0], [-1.0, -2.0], [4.0, 5.0]]}
    [warning] = doc["warnings"]
    assert (warning["line"], warning["column"]) == (24, 79) and "-inf" in warning["message"]


def test_eval_json_values_include_an_unbound_output():
    result = spiread("eval", "-", "--format", "json", stdin="x = [1, 2]\nx * 3\n")
    doc = strict_json(result.stdout)
    assert doc["output"] == "x * 3"
    assert doc["values"] == {"x": {"shape": [2], "value": [1.0, 2.0]}, "x * 3": {"shape": [2], "value": [3.0, 6.0]}}


def test_eval_of_option():
    doc = strict_json(spiread("eval", NATIVE, "--of", "probits", "--format", "json").stdout)
    assert doc["output"] == "probits"


# ------------------------------------------------------------------ grad


def test_grad_text():
    result = cached("grad", SEED)
    assert result.returncode == 0
    assert re.search(r"^loss\s+scalar\s+inf$", result.stdout, re.M)
    assert "∂loss/∂weights" in result.stdout
    for number in ("-0.291882", "0.291882", "-0.583765", "0.583765"):
        assert number in result.stdout


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_grad_json(mode):
    result = spiread("grad", SEED, "--format", "json", "--mode", mode)
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert set(doc) == {"schema", "file", "output", "value", "mode", "gradients", "warnings"}
    assert doc["mode"] == mode and doc["output"] == "loss" and doc["value"] == {"shape": [], "value": "inf"}
    assert list(doc["gradients"]) == ["weights"]
    assert doc["gradients"]["weights"]["shape"] == [2, 2]
    np.testing.assert_allclose(doc["gradients"]["weights"]["value"], SEED_GRADIENT, atol=5e-7)
    assert [(w["line"], w["column"]) for w in doc["warnings"]] == [(24, 79)]


def test_grad_wrt_intermediates_and_inputs():
    doc = strict_json(spiread("grad", NATIVE, "--wrt", "probits", "--wrt", "data", "--format", "json").stdout)
    assert list(doc["gradients"]) == ["probits", "data"]
    assert doc["gradients"]["probits"]["shape"] == [3, 2] and doc["gradients"]["data"]["shape"] == [3, 2]


def test_grad_unrelated_wrt_warns_and_gives_zero():
    program = "w = [1.0, 2.0]\nz = 3\nloss = (w * w).sum\n"
    doc = strict_json(spiread("grad", "-", "--wrt", "w", "--wrt", "z", "--format", "json", stdin=program).stdout)
    assert doc["gradients"]["z"] == {"shape": [], "value": 0.0}
    assert doc["gradients"]["w"] == {"shape": [2], "value": [2.0, 4.0]}
    [warning] = doc["warnings"]
    assert (warning["line"], warning["column"]) == (2, 1) and "`z`" in warning["message"]


# -------------------------------------------------------------- stdin, --set


def test_file_dash_reads_stdin_and_resolves_paths_from_the_working_directory(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n1,2\n3,4\n")
    program = 'x = load("x.csv")\nloss = (x * x).sum\n'
    result = spiread("grad", "-", "--format", "json", stdin=program, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    doc = strict_json(result.stdout)
    assert doc["file"] == "-" or doc["file"] == "<stdin>"
    assert doc["value"]["value"] == 30.0
    assert doc["gradients"]["x"]["value"] == [[2.0, 4.0], [6.0, 8.0]]


def test_set_forms(tmp_path):
    np.save(tmp_path / "b.npy", np.array([[1.0, 2.0], [3.0, 4.0]]))
    (tmp_path / "c.csv").write_text("p,q\n1,2\n3,4\n")
    (tmp_path / "d.json").write_text("[1, 2]")
    np.savez(tmp_path / "e.npz", e=np.array([5.0, 6.0]), other=np.zeros(3))
    (tmp_path / "p.ad").write_text("a = 0\nb = zeros(2, 2)\nc = zeros(2, 2)\nd = zeros(2)\ne = zeros(2)\n"
                                   "f = zeros(2, 2)\nloss = a + b.sum + c.sum + d.sum + e.sum + f.sum\n")
    result = spiread("eval", "p.ad", "--format", "json", "--set", "a=1.5", "--set", "b=b.npy", "--set", "c=c.csv",
                     "--set", "d=d.json", "--set", "e=e.npz", "--set", "f=[[1, 2], [3, 4.5]]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    values = strict_json(result.stdout)["values"]
    assert values["a"] == {"shape": [], "value": 1.5}
    assert values["b"]["value"] == values["c"]["value"] == [[1.0, 2.0], [3.0, 4.0]]
    assert values["d"]["value"] == [1.0, 2.0]
    assert values["e"]["value"] == [5.0, 6.0]  # the array called `e` in the archive
    assert values["f"]["value"] == [[1.0, 2.0], [3.0, 4.5]]
    assert values["loss"]["value"] == 1.5 + 10 + 10 + 3 + 11 + 10.5


def test_set_changes_the_gradient():
    doc = strict_json(spiread("grad", NATIVE, "--set", "weights=[[0, 0], [0, 0]]", "--format", "json").stdout)
    g = np.array(doc["gradients"]["weights"]["value"])
    assert np.all(np.isfinite(g)) and not np.allclose(g, [[-0.734299, 0.734299], [-1.136785, 1.136785]], atol=1e-3)


# ------------------------------------------------------- errors, exit codes


@pytest.mark.parametrize("args,stdin,code,where", [
    (["eval", "-"], "x = [1, 2\n", 1, "<stdin>:1:5: error:"),                    # syntax
    (["eval", "-"], "x = [1, 2] + [1, 2, 3]\n", 1, "<stdin>:1:12: error:"),      # shapes
    (["grad", "-"], "x = [1, 2]\nx * 2\n", 1, "<stdin>:2:"),                    # not a scalar
    (["eval", "missing.ad"], None, 1, "missing.ad"),                          # no such file
    (["eval", "-", "--of", "nope"], "x = 1\n", 2, "nope"),
    (["eval", "-", "--set", "x"], "x = 1\n", 2, "NAME=VALUE"),
    (["eval", "-", "--bogus"], "x = 1\n", 2, "--bogus"),
    (["grad", "-", "--mode", "sideways"], "x = 1\n", 2, "sideways"),
])
def test_errors_and_exit_codes(args, stdin, code, where):
    result = spiread(*args, stdin=stdin)
    assert result.returncode == code, result.stderr
    assert where in result.stderr
    assert result.stdout == ""
    assert_no_traceback(result)


def test_strict_turns_the_warning_into_an_error():
    result = spiread("grad", SEED, "--strict")
    assert result.returncode == 1
    assert f"{SEED}:24:79: error:" in result.stderr
    assert result.stdout == ""


def test_strict_passes_a_clean_program():
    assert spiread("grad", NATIVE, "--strict").returncode == 0


def test_errors_in_json_mode_keep_stdout_empty():
    result = spiread("eval", "-", "--format", "json", stdin="x = [1, 2\n")
    assert result.returncode == 1 and result.stdout == "" and "error:" in result.stderr


# ------------------------------------------------------------------- dot


def _examples():
    found = sorted(EXAMPLES.glob("*.ad"))
    bigram = EXAMPLES / "bigram" / "bigram.ad"
    if (bigram.parent / "xs.txt").exists():
        found.append(bigram)
    return found


def _wrt_for(path) -> list[str]:
    return [] if path.name in CONSTANT_EXAMPLES else list(Program.open(str(path)).run().wrt_ids())


needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")


@needs_dot
@pytest.mark.parametrize("path", _examples(), ids=lambda p: p.name)
def test_dot_through_graphviz(path):
    wrt = _wrt_for(path)
    command = shlex.join(spiread_command() + ["dot", str(path)] + [a for n in wrt for a in ("--wrt", n)])
    result = subprocess.run(["bash", "-o", "pipefail", "-c", f"{command} | dot -Tsvg"], capture_output=True,
                            text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    svg = ET.fromstring(result.stdout)
    assert svg.tag.endswith("svg")
    text = " ".join(t.text or "" for t in svg.iter() if t.tag.endswith("text"))
    for name in wrt:
        assert name in text
    assert ("∇" in text) == (path.name not in CONSTANT_EXAMPLES)  # the --wrt nodes show their gradient


def test_dot_writes_only_dot_and_tells_kinds_apart():
    result = cached("dot", SEED, "--wrt", "weights")
    assert result.returncode == 0
    out = result.stdout
    assert out.startswith("digraph") and out.rstrip().endswith("}")
    assert "warning" not in out  # warnings go to stderr
    nodes = {n: (label, style) for n, label, style in re.findall(r"^\s*(n\d+) \[label=<(.*)>, (.*)\];$", out, re.M)}

    def style_of(name):
        [style] = [s for label, s in nodes.values() if f"<b>{name}</b>" in label]
        return style

    styles = {style_of("data"), style_of("weights"), style_of("loss")}
    assert len(styles) == 3  # an input, the --wrt value and the output look different
    op_labels = [label for label, _ in nodes.values() if label.startswith("<b>")]
    assert any("log" in label for label in op_labels) and any("3×2" in label for label in op_labels)
    assert len(re.findall(r"^\s*n\d+ -> n\d+;$", out, re.M)) >= len(nodes) - 1


@needs_dot
def test_dot_out_writes_the_file_whole_and_checks_the_path(tmp_path):
    target = tmp_path / "seed.dot"
    result = spiread("dot", str(SEED), "--out", str(target))
    assert result.returncode == 0 and result.stdout == ""
    rendered = subprocess.run(["dot", "-Tsvg", str(target)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0 and ET.fromstring(rendered.stdout).tag.endswith("svg")
    assert [p.name for p in tmp_path.iterdir()] == ["seed.dot"]  # no temporary file left behind
    refused = spiread("dot", str(SEED), "--out", str(tmp_path / "seed.png"))
    assert refused.returncode == 2 and "writes .dot or .gv" in refused.stderr
    broken = tmp_path / "broken.ad"
    broken.write_text("x = [1, 2] @@ [1, 2, 3]\n")
    failed = spiread("dot", str(broken), "--out", str(tmp_path / "broken.dot"))
    assert failed.returncode == 1 and not (tmp_path / "broken.dot").exists()  # nothing written on an error


# ---------------------------------------------------------------- README


def _readme_bash_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_commands():
    """The set-up commands install from the checkout (spiread is on no package
    index) with extras that exist; the README's spiread commands are run by
    tests/test_docs.py."""
    commands = _readme_bash_commands()
    tests = next((c for c in commands if "pytest" in c), None)
    installs = [shlex.split(step) for c in commands for step in c.split("&&") if "pip install" in step]
    assert tests and installs, commands
    extras = tomllib.loads((REPO / "pyproject.toml").read_text("utf-8"))["project"]["optional-dependencies"]
    for step in installs:  # installing is CI's job (.ci/run); check what it names
        target = step[-1]
        assert target == "." or (target.startswith(".[") and target[2:-1] in extras), step
    # The test step: the same pytest command collects this suite (running it
    # here would run these tests again, forever).
    [argv] = [shlex.split(s) for s in tests.split("&&") if "pytest" in s]
    assert argv[:3] == ["python", "-m", "pytest"]
    result = subprocess.run([shutil.which("python") or "python", *argv[1:], "--collect-only", "-q",
                             "-p", "no:cacheprovider", "tests/test_seed.py"],
                            capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_seed.py" in result.stdout, result.stdout


def test_error_shows_the_source_line_and_a_caret_under_the_place():
    result = spiread("eval", "-", stdin="x = [1, 2]\ny = x + [1, 2, 3]\n")
    assert result.returncode == 1
    header, source, caret = result.stderr.splitlines()[:3]
    assert header.startswith("<stdin>:2:7: error:") and "vector of 2" in header and "vector of 3" in header
    assert source.endswith("y = x + [1, 2, 3]")
    assert caret.index("^") - caret.index("|") == source.index("+") - source.index("|")


def test_json_carries_non_finite_numbers_as_strings():
    program = "x = [1.0, 0.0, -1.0]\ny = x.log\nz = [[1.0, 0.0]] / 0\nloss = y.sum\n"
    result = spiread("eval", "-", "--format", "json", stdin=program)
    assert result.returncode == 0
    values = strict_json(result.stdout)["values"]
    assert values["y"]["value"] == [0.0, "-inf", "nan"]
    assert values["z"]["value"] == [["inf", "nan"]]
    assert values["loss"]["value"] == "nan"


# ------------------------------------------------ nothing to differentiate


CONSTANT = "1 + 2\n"
JETS = "given jd: JetDim = JetDim(1)\nval y = Jet(10.0) + Jet.h[Double](0)\ny * y\n"


@pytest.mark.parametrize("command", ["grad", "check", "hessian"])
@pytest.mark.parametrize("program", [CONSTANT, JETS], ids=["constant", "jets"])
def test_nothing_to_differentiate_fails_saying_why(command, program):
    """A CI job that runs `spiread check` must not pass a program it checked nothing of."""
    done = spiread(command, "-", stdin=program)
    assert done.returncode == 1 and done.stdout == ""
    assert "error: nothing to differentiate: the output" in done.stderr and "is computed from no input" in done.stderr
    assert ("a Jet carries its own derivatives" in done.stderr) == (program == JETS)
    assert "check passed" not in done.stdout


def test_check_of_values_the_output_does_not_depend_on_fails():
    program = "w = [1, 2]\nz = 3\nloss = (w * w).sum\n"
    done = spiread("check", "-", "--wrt", "z", stdin=program)
    assert done.returncode == 1
    assert "error: nothing to differentiate: the output `loss` does not depend on `z`" in done.stderr
    assert spiread("check", "-", "--wrt", "z,w", stdin=program).returncode == 0


# ------------------------------------------------------------- --wrt lists


@pytest.mark.parametrize("command", ["grad", "check", "hessian", "dot", "train"])
def test_wrt_takes_a_comma_separated_list(command):
    """`--wrt a,b` is `--wrt a --wrt b`, wherever --wrt is taken."""
    program = "a = [1.0, 2.0]\nb = 3.0\nc = 4.0\nloss = (a * b).sum + c\n"
    listed = spiread(command, "-", "--wrt", "a,b", *(["--steps", "1"] if command == "train" else []),
                     stdin=program)
    repeated = spiread(command, "-", "--wrt", "a", "--wrt", "b", *(["--steps", "1"] if command == "train" else []),
                       stdin=program)
    assert listed.returncode == 0, listed.stderr
    strip = re.compile(r"[\d.]+ (m?s|steps/s)")  # timings
    assert strip.sub("", listed.stdout) == strip.sub("", repeated.stdout)
    if command != "dot":
        assert "`c`" not in listed.stdout and "∂loss/∂c" not in listed.stdout


def test_an_unknown_wrt_name_lists_what_could_be_meant():
    done = spiread("grad", "examples/least_squares.ad", "--wrt", "weights")
    assert done.returncode == 2
    assert "error: `--wrt weights`: the program binds no `weights`" in done.stderr
    assert "note: the output depends on the inputs `X`, `y`, `w`; it also binds `residual`, `loss`" in done.stderr
    assert "--wrt NAME" in spiread("grad", "--help").stdout and "or a,b" in spiread("grad", "--help").stdout


# ------------------------------------------------------------ dot's default


def test_dot_draws_the_default_gradients_as_grad_takes_them():
    """`--wrt` defaults to the .backward(...) names, else every input, as its help says."""
    drawn = cached("dot", NATIVE)
    assert drawn.returncode == 0 and "∇" in drawn.stdout
    named = spiread("dot", NATIVE, "--wrt", ",".join(Program.open(NATIVE).run().default_wrt()))
    assert drawn.stdout == named.stdout
    for program in ("1 + 2\n", "x = [1, 2]\ny = x * 2\n"):  # nothing to differentiate; a vector output
        done = spiread("dot", "-", stdin=program)
        assert done.returncode == 0 and done.stdout.startswith("digraph") and "∇" not in done.stdout


# --------------------------------------------------------- the terminal width


@pytest.mark.parametrize("columns", [60, 80, 200])
def test_eval_fits_its_lines_to_the_terminal(columns):
    done = spiread("eval", "-", stdin="x = randn(3, 40)\nv = rand(1, 40)\ny = x.sum\n", env={"COLUMNS": str(columns)})
    widths = [len(line) for line in done.stdout.splitlines()]
    assert max(widths) <= columns
    assert max(widths) > columns - 20  # the room is used, not a fixed narrow width


def test_a_small_nonzero_entry_is_never_printed_as_zero():
    # A derivative of 6e-10 is not a structural zero: the text says so, as numpy and PyTorch print it.
    done = spiread("jacobian", "-", "--wrt", "x", stdin="x = [1.0, 2.0, 3.0, 4.0]\ny = (x[1:] * x[:-1]).tanh\n")
    assert done.returncode == 0
    jacobian = done.stdout.split("∂y/∂x", 1)[1]
    assert "6.040217e-10" in jacobian and "4.530163e-10" in jacobian
    done = spiread("eval", "-", stdin="v = [-0.0, 1e-9, 2.0]\n")
    assert "[0.e+00 1.e-09 2.e+00]" in done.stdout  # and zero without its sign
