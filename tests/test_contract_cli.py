"""The command line's front door against LANGUAGE.md §8 ("Errors, warnings
and exit codes"), fuzzed: every command, with options drawn from each
command's whole vocabulary (right and wrong values alike), on the examples,
mutated examples and random bytes (from a file and from standard input).
Whatever comes in: exit 0, 1 or 2; never a Python traceback nor an internal
error; an error on stderr, located ones as `FILE:LINE:COL: error:` with the
source line and a caret under that column; under `--format json` one valid
document or an empty stdout. tests/test_fuzz.py fuzzes the language through
the library and `eval`/`grad`/`dot`; this is the rest of the front door."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import warnings

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import typer.main
from typer.testing import CliRunner

from conftest import lit, spiread, spiread_command, strict_json
from spiread_cli.cli import app
from spiread_cli.diagnostics import SpireadError
from programs import programs
from test_fuzz import FUZZ, PROGRAMS, mutated_programs, small_limit  # noqa: F401 (its autouse fixture: a small memory limit)

COMMANDS = ["eval", "grad", "dot", "hessian", "jacobian", "check", "train", "export"]
NAMES = ["w", "X", "y", "loss", "weights", "data", "W1", "nope", "", ",", "w,X", "g.w", "loss.sum", "1"]
VALUES = ["1", "-0.5", "[1, 2]", "[[1, 2], [3, 4]]", "1e400", "inf", "[", "zeros(2)", "", "=", "[[1], [2, 3]]",
          "w.npy", "w.npz", "missing.csv", "prog.ad", '"s"', "randn(2, seed=0.5)"]
NUMBERS = ["0", "1e-3", "-1", "inf", "nan", "1e300", "x"]
# Each option and the values it is drawn with; a command given one it does not take is a usage error (exit 2).
OPTIONS = {
    "--wrt": NAMES, "--of": NAMES, "--set": [f"{n}={v}" for n in ("w", "X", "nope") for v in VALUES] + ["w.npz", "w"],
    "--hvp": [f"{n}={v}" for n in ("w", "X", "y") for v in VALUES[:8]], "--mode": ["forward", "reverse", "sideways"],
    "--format": ["json", "text", "xml"], "--order": ["1", "2", "3"], "--eps": NUMBERS, "--tol": NUMBERS,
    "--steps": ["0", "1", "2", "-1"], "--lr": NUMBERS, "--momentum": NUMBERS, "--optimizer": ["sgd", "adam", "newton", "lbfgs"],
    "--to": ["python", "onnx", "c"], "--out": ["o.npz", "o.py", "o.onnx", "o.dot", "o.png", "missing/o.npz", "."],
    "-o": ["o.py", "o.onnx", "", "."], "--save": ["o.npz", "o.csv", "missing/o.npz"], "--log": ["o.csv", "o.npz"],
    "--plot": ["o.png", "o.svg"], "--backend": ["numpy", "dask", "cuda"], "--chunk-rows": ["0", "2"],
}
FLAGS = ["--sparse", "--no-sparse", "--pattern", "--strict", "--explain", "--hvp", "--persist", "--debug"]
COMMAND_LINE = typer.main.get_command(app)  # each command's options, as click reads them
LOCATED = re.compile(r"^(?P<file>[^\s:][^:\n]*):(?P<line>\d+):(?P<column>\d+): (?P<severity>error|warning): ", re.M)


# Values a command refuses while it reads its options, as it refuses an option it does not take: exit 2.
REFUSED_VALUES = {"--mode": "sideways", "--format": "xml", "--order": "3", "--optimizer": "lbfgs", "--to": "c",
                  "--backend": "cuda", "--chunk-rows": "0", "--steps": "-1"}


@st.composite
def option_lists(draw, command: str) -> tuple[list[str], bool]:
    """Options mostly of those `command` takes, now and then one it does not;
    and whether they are a usage error as the command reads them (exit 2)."""
    takes = {option for parameter in COMMAND_LINE.commands[command].params
             for option in parameter.opts + parameter.secondary_opts}
    words: list[str] = []
    usage = False
    for _ in range(draw(st.integers(0, 4))):
        foreign = draw(st.integers(0, 9)) == 0
        flags = [f for f in FLAGS if foreign or f in takes]
        options = sorted(o for o in OPTIONS if foreign or o in takes)
        if flags and draw(st.integers(0, 3)) == 0:
            words.append(draw(st.sampled_from(flags)))
            usage |= words[-1] not in takes
        elif options:
            option = draw(st.sampled_from(options))
            words += [option, draw(st.sampled_from(OPTIONS[option]))]
            usage |= option not in takes
    given = {option: value for option, value in zip(words, words[1:]) if option in REFUSED_VALUES}  # the last counts
    return words, usage or any(REFUSED_VALUES[option] == value for option, value in given.items())


# Mutated examples with a tab or a character wider than a byte dropped in: carets must still line up.
@st.composite
def exotic_programs(draw) -> str:
    text = draw(mutated_programs())
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(["\t", "é", "∂", "😀", "\t\t", " é "])) + text[at:]
    return text


@st.composite
def command_lines(draw, programs) -> tuple[str, str, list[str], bool]:
    command = draw(st.sampled_from(COMMANDS))
    return (command, draw(programs), *draw(option_lists(command)))


def check_located(stderr: str, lines_of: dict[str, list[str]]) -> None:
    """Every `FILE:LINE:COL: error|warning:` on stderr is followed by that
    line of the program as written and a caret under COL (LANGUAGE.md §8;
    other places it names, `opened here`, may be shown beside it)."""
    rendered = stderr.splitlines()
    for at, text in enumerate(rendered):
        found = LOCATED.match(text)
        if found is None or found["file"] not in lines_of:
            continue
        line, column = int(found["line"]), int(found["column"])
        block = []
        for shown in rendered[at + 1:]:
            if not re.match(r"^ +(\d+ )?\| ", shown):
                break
            block.append(shown)
        numbered = [k for k, shown in enumerate(block) if re.match(rf"^ +{line} \| ", shown)]
        assert numbered, f"no source line after {text!r}:\n{stderr}"
        k = numbered[0]
        gutter = block[k].index("| ") + 2
        shown = block[k][gutter:]
        carets = block[k + 1][gutter:] if k + 1 < len(block) else ""
        assert "^" in carets, f"no caret under line {line}:\n{stderr}"
        program_lines = lines_of[found["file"]]
        if line <= len(program_lines):
            # The line as written (control characters as spaces), or the part of a long one around the
            # place, `…` where it is cut; the caret under the character at COL.
            written = "".join(c if c.isprintable() else " " for c in program_lines[line - 1].rstrip("\r"))
            lead = 1 if shown.startswith("…") else 0
            starts = [m.start() for m in re.finditer(re.escape(shown.strip("…")), written)]
            assert any(carets.index("^") - lead + start == column - 1 for start in starts), \
                f"the caret is not under {line}:{column}:\n{stderr}"


def check_outcome(args: list[str], code: int, stdout: str, stderr: str, lines_of: dict[str, list[str]]) -> None:
    assert "Traceback" not in stdout + stderr or "--debug" in args, stderr
    assert "internal error" not in stderr, stderr
    assert code in (0, 1, 2), (code, stderr)
    if code != 0:
        assert re.search(r"^(Error: |.*\berror: )", stderr, re.M), stderr
    check_located(stderr, lines_of)
    formats = [value for option, value in zip(args, args[1:]) if option == "--format"]
    takes_json = formats[-1:] == ["json"]  # the last one given counts
    if takes_json and code == 0:
        assert strict_json(stdout)["schema"] == f"spiread/{args[0]}/1", stdout[:300]
    elif takes_json and code == 1:  # a failed check still writes its document; any other error, none
        assert stdout == "" or strict_json(stdout)["schema"] == "spiread/check/1", stdout[:300]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The examples, and the data files the options name, in one scratch folder."""
    here = tmp_path_factory.mktemp("front_door")
    for name, text in PROGRAMS.items():
        (here / name).write_text(text, "utf-8")
    np.save(here / "w.npy", np.array([1.0, 2.0]))
    np.savez(here / "w.npz", w=np.array([1.0, 2.0]), X=np.eye(2))
    (here / "prog.ad").write_text("x = 1\n")
    return here


def invoke(folder, args: list[str], stdin: bytes | None = None):
    from contextlib import chdir
    with chdir(folder):  # relative --out/--save/--set paths land in the scratch folder
        return CliRunner().invoke(app, args, input=stdin)


@settings(FUZZ, max_examples=120)
@given(command_lines(st.sampled_from(sorted(PROGRAMS)) | mutated_programs() | exotic_programs()))
def test_every_command_with_any_options_answers_by_the_contract(folder, command_line):
    command, program, options, usage = command_line
    if program in PROGRAMS:
        name = program
    else:
        name = "__mutated__.ad"
        (folder / name).write_text(program, "utf-8")
    args = [command, name, *options]
    result = invoke(folder, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    check_outcome(args, result.exit_code, result.stdout, result.stderr,
                  {name: (folder / name).read_text("utf-8").split("\n")})
    if usage:  # an option the command does not take, or a value it refuses as it reads them
        assert result.exit_code == 2, result.stderr


RIGHT_OPTIONS = [[], ["--format", "json"], ["--wrt", "w"], ["--to", "python", "-o", "o.py"]]


@settings(FUZZ, max_examples=80)
@given(command_lines(st.binary(max_size=60) | (mutated_programs() | exotic_programs()).map(str.encode)),
       st.sampled_from(RIGHT_OPTIONS + [None]))
def test_any_bytes_on_standard_input_answer_by_the_contract(folder, command_line, right):
    """...and with options that are right, an error in the program (exit 1)
    is always located in it."""
    command, raw, drawn, usage = command_line
    options = drawn if right is None else right
    args = [command, "-", *options]
    result = invoke(folder, args, stdin=raw)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    check_outcome(args, result.exit_code, result.stdout, result.stderr,
                  {"<stdin>": raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8", "replace").replace("\0", "\ufffd")
                   .split("\n")})
    if right is not None and result.exit_code == 1:  # an error in the program: located in it
        assert re.search(r"^<stdin>:\d+:\d+: error: ", result.stderr, re.M), result.stderr
    if right is None and usage:
        assert result.exit_code == 2, result.stderr


@pytest.mark.parametrize("raw, located, shown", [
    (b"x = 1\nyy = 2 \xff y\n", "<stdin>:2:8: error: this file is not UTF-8 text: the byte 0xff", " 2 | yy = 2 \ufffd y"),
    (b"x = 1\nyy = 2 \0 y\n", "<stdin>:2:8: error: this file holds a NUL byte", " 2 | yy = 2 \ufffd y"),
    # After a byte-order mark: the byte was named wrongly (0xa9, inside the `é` before it) and 2 columns early.
    ("\ufeffé = 1\ny = \"é\" ".encode() + b"\xe9\n", "<stdin>:2:9: error: this file is not UTF-8 text: the byte 0xe9",
     ' 2 | y = "é" \ufffd'),
])
def test_a_byte_that_is_not_program_text_is_shown_in_its_line_under_a_caret(raw, located, shown):
    done = subprocess.run(spiread_command() + ["eval", "-"], input=raw, capture_output=True, timeout=60)
    stderr = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b""
    assert stderr.startswith(located), stderr
    assert stderr.splitlines()[1] == shown
    check_located(stderr, {"<stdin>": [shown[len(" 2 | "):]] * 2})


def test_a_record_of_gradients_named_where_a_value_is_asked_for_suggests_its_entries(tmp_path):
    program = "w = [1.0, 2.0]\nb = 1.0\nloss = (w * w).sum + b\ng = loss.backward((w = w, b = b))\nh = g.w.sum\n"
    for args in (["eval", "-", "--of", "g"], ["grad", "-", "--of", "h", "--wrt", "g"]):
        done = spiread(*args, stdin=program)
        assert done.returncode == 2
        assert "= note: `g` is a record of gradients: did you mean `g.b` or `g.w`?" in done.stderr
    (tmp_path / "m.ad").write_text(program)
    done = spiread("eval", "m.ad", "--set", "w=m.ad", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr == ("spiread: error: `--set w=m.ad`: `m.ad` is a file, but not one of "
                                                    "arrays: --set reads .npy/.npz/.csv/.tsv/.txt/.json files\n")


def test_an_export_by_a_computed_value_named_by_backward_says_so(tmp_path):
    program = "w = [1.0]\nh = w * 3\nloss = (h * 2).sum\nloss.backward(h)\n"
    done = spiread("export", "-", "--to", "python", "-o", tmp_path / "m.py", stdin=program)
    # It said "`--wrt h`: …" (no --wrt was given) and exit 2, a usage error.
    assert done.returncode == 1 and not (tmp_path / "m.py").exists()
    assert done.stderr.startswith("<stdin>:2:1: error: `.backward(...)` names `h`, which the program computes, "
                                  "and an export differentiates by the values a program is given")
    given = spiread("export", "-", "--wrt", "h", "--to", "python", "-o", tmp_path / "m.py", stdin=program)
    assert given.returncode == 2 and given.stderr.startswith("<stdin>:2:1: error: `--wrt h`: `h` is computed")
    assert strict_json(spiread("grad", "-", "--format", "json", stdin=program).stdout)["gradients"]["h"]["value"] == [2.0]


def test_names_with_commas_are_a_list_of_names_in_python_as_on_the_command_line():
    # §10: `--wrt a,b` equals `--wrt a --wrt b`; `wrt="w,b"` was one name, "the program binds no `w,b`".
    from spiread_cli import compile
    prog = compile("w = [1.0, 2.0]\nb = 0.5\nr = w * b\nloss = (r * r).sum\n")
    listed = prog.grad(wrt=["w", "b"]).gradients
    for wrt in ("w,b", "w, b", " w ,b"):  # an empty name ("w,b,") is refused: test_a_wrt_with_an_empty_name…
        gradients = prog.grad(wrt=wrt).gradients
        assert list(gradients) == ["w", "b"]
        for name in gradients:
            np.testing.assert_array_equal(gradients[name], listed[name])
    np.testing.assert_array_equal(prog.hessian(wrt="w,b")["w"]["b"], 4 * 0.5 * np.array([1.0, 2.0]))
    assert list(prog.jacobian(of="r", wrt="b,w").blocks) == ["b", "w"]


@settings(FUZZ, max_examples=25)
@given(programs(), st.data())
def test_random_programs_through_the_front_door_against_autograd(program, data):
    """A random well-shaped program on standard input, one input replaced by
    `--set NAME=LITERAL` (moved by 0.1 %), `--wrt a,b`, `--format json`:
    the document's gradients are HIPS autograd's at the moved value."""
    inputs = sorted(program.inputs)
    moved = data.draw(st.sampled_from(inputs), label="--set")
    value = np.asarray(program.inputs[moved], dtype=float) * 1.001
    wrt = data.draw(st.lists(st.sampled_from(program.names), min_size=1, max_size=3, unique=True), label="wrt")
    args = ["grad", "-", "--set", f"{moved}={lit(value)}", "--wrt", ",".join(wrt), "--format", "json"]
    result = CliRunner().invoke(app, args, input=program.source)
    assert result.exit_code == 0, result.stderr
    document = strict_json(result.stdout)
    assert list(document["gradients"]) == wrt
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # autograd: "Output seems independent of input"
        expected = dataclasses.replace(program, inputs={**program.inputs, moved: value}).autograd_gradients(wrt)
    for name in wrt:
        got = np.asarray(document["gradients"][name]["value"], dtype=float)
        assert got.shape == tuple(document["gradients"][name]["shape"]) == np.shape(expected[name])
        scale = 1.0 + np.max(np.abs(expected[name]), initial=0.0)
        np.testing.assert_allclose(got, expected[name], rtol=1e-7, atol=1e-10 * scale,
                                   err_msg=f"∂loss/∂{name} with {args} in\n{program.source}")


@pytest.mark.parametrize("empty", ["", ",", " , ", "w,,X", "w,", ",w", "w, ,X"])
def test_a_wrt_with_an_empty_name_is_refused_not_read_as_the_default_or_dropped(tmp_path, empty):
    # `train --wrt "$PARAMS"` with PARAMS empty trained every input, the data X too (`--wrt ''` was no --wrt);
    # `--wrt w,,X` dropped the empty name where `--wrt ,` was refused.
    from spiread_cli import compile
    program = "X = [[1.0, 2.0], [3.0, 4.0]]\nw = [0.5, -0.5]\nloss = ((X @@ w) ** 2).sum\n"
    for command in (["train", "-", "--steps", "1"], ["grad", "-"]):
        done = spiread(*command, "--wrt", "w", "--wrt", empty, stdin=program)
        assert done.returncode == 2 and done.stdout == ""
        assert (f"Error: Invalid value for '--wrt': {empty!r} holds an empty name; give names, e.g. `--wrt w` or "
                "`--wrt a,b`") in done.stderr
    prog = compile(program)
    for method in (prog.grad, prog.hessian, prog.check, prog.train):
        for wrt, shown in ((empty, f'"{empty}"'), (["w", empty], repr(["w", empty]))):
            with pytest.raises(SpireadError, match=re.escape(f"`wrt={shown}` holds an empty name")):
                method(wrt=wrt)


def test_a_wrt_of_no_names_is_refused_and_none_is_the_default():
    from spiread_cli import compile
    prog = compile("X = [[1.0, 2.0], [3.0, 4.0]]\nw = [0.5, -0.5]\nloss = ((X @@ w) ** 2).sum\n")
    with pytest.raises(SpireadError, match=re.escape("`wrt=[]` names no value")):
        prog.grad(wrt=[])
    with pytest.raises(SpireadError, match="`wrt=None`: train needs the values to train"):
        prog.train(wrt=None)
    assert list(prog.grad(wrt=None).gradients) == ["X", "w"] and list(prog.train(wrt="w, X", steps=1).values) == ["w", "X"]


RECORD = "w = [1.0, 2.0]\nb = 1.0\nloss = (w * w).sum + b\ng = loss.backward((w = w, b = b))\nh = g.w.sum\n"


def test_the_first_review_of_this_file_mended(tmp_path):
    """rev-contract's findings on the first landing, each failing before."""
    # A --set literal too long to be a file name: `Path.is_file` raised ENAMETOOLONG, an internal error.
    done = spiread("eval", "-", "--set", "w=[" + ",".join(["1"] * 150), stdin="w = 1\n")
    assert done.returncode == 2 and "unclosed `[`" in done.stderr and "internal error" not in done.stderr
    # `export -` without -o: the usage error was raised outside the session, a traceback.
    done = spiread("export", "-", "--to", "python", stdin="w = 1\n")
    assert done.returncode == 2 and done.stderr == ("spiread: error: a program read from standard input has no name "
                                                    "to export to\n  = note: give one: `-o PATH`\n")
    # Only where a record's entry can be named is a record's name said to be one (not `Matrix`, nor --hvp/--set).
    assert "record of gradients" not in spiread("eval", "-", stdin="x = Matrix(1, 2)\n").stderr
    for option in (["--hvp", "g=[1, 1]"], ["--set", "g=1"]):
        done = spiread("hessian", "-", "--of", "h", "--wrt", "g.w", *option, stdin=RECORD)
        assert done.returncode == 2 and "did you mean `g." not in done.stderr, done.stderr
    # --hvp's refusals name --hvp, not --set.
    (tmp_path / "m.ad").write_text(RECORD)
    done = spiread("hessian", "m.ad", "--hvp", "w=m.ad", cwd=tmp_path)
    assert done.returncode == 2 and "--hvp reads .npy" in done.stderr and "--set" not in done.stderr
    # A bad byte before a NUL is the first bad byte.
    done = subprocess.run(spiread_command() + ["eval", "-"], input=b"x = 1 \xff\ny = \0", capture_output=True,
                          timeout=60)
    assert done.stderr.decode().startswith("<stdin>:1:7: error: this file is not UTF-8 text: the byte 0xff")


def test_python_names_options_as_keyword_arguments_and_splits_names_in_lists():
    from spiread_cli import compile
    prog = compile(RECORD)
    with pytest.raises(SpireadError) as refused:
        prog.eval(of="g")
    assert str(refused.value).startswith('spiread: error: `of="g"`: the program binds no `g`')  # said `--of g`
    assert "`g` is a record of gradients: did you mean `g.b` or `g.w`?" in str(refused.value)
    with pytest.raises(SpireadError, match="binding `nope`: the program binds no `nope`"):
        prog.eval(nope=1.0)  # said `--set nope=…`
    assert list(prog.grad(of="loss", wrt=["w,b"]).gradients) == ["w", "b"]  # a list's items split as --wrt's
