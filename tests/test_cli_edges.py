"""The command line's edges, through real subprocesses: nothing a user does
loses their files (an output that is an input, a signal, a failed write),
and nothing ends in an internal error or a Python traceback or warning
(closed or broken standard streams, Ctrl-C at start-up)."""

from __future__ import annotations

import io
import os
import re
import resource
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import EXAMPLES, REPO, spiread, spiread_command, strict_json

REGRESSION = EXAMPLES / "regression.ad"
SEED = EXAMPLES / "seed.ad"
TRAIN = ["--wrt", "weights", "--steps", "3"]
# A program whose output does not depend on `b`: every command that takes
# --wrt b warns about it.
UNUSED_B = "a = [[1.0, 2.0]]\nb = [[3.0]]\nloss = (a * a).sum\n"


def no_python_noise(stderr: str) -> None:
    for noise in ("Traceback", "internal error", "Exception ignored", "Warning:", "site-packages"):
        assert noise not in stderr, stderr


def left_in(folder: Path) -> list[str]:
    """The files in a folder (the parser keeps no cache in a temporary folder)."""
    return [p.name for p in folder.iterdir()]


# ------------------------------------------- an output that is also an input


@pytest.fixture
def program(tmp_path, monkeypatch):
    path = tmp_path / "w.ad"
    path.write_bytes(REGRESSION.read_bytes())
    return path


@pytest.mark.parametrize("args, words", [
    (["train", "w.ad", *TRAIN, "--log", "./w.ad"], "`--log w.ad` would overwrite the program, `w.ad`"),
    (["train", "./w.ad", *TRAIN, "--plot", "w.ad"], "`--plot w.ad` would overwrite the program, `w.ad`"),
    (["train", "w.ad", *TRAIN, "--save", "sub/../hard.npz"], "would overwrite the program"),
    (["dot", "w.ad", "--out", "w.ad"], "`--out w.ad` would overwrite the program, `w.ad`"),
    (["train", "w.ad", *TRAIN, "--save", "hard.npz"], "`--save hard.npz` would overwrite the program, `w.ad`"),
    (["train", "w.ad", *TRAIN, "--save", "link.npz"], "`--save link.npz` would overwrite the program"),
    (["train", "w.ad", *TRAIN, "--set", "y=y.csv", "--log", "./y.csv"],
     "`--log y.csv` would overwrite `--set y=…`'s data, `y.csv`"),
    (["train", "w.ad", *TRAIN, "--set", "weights=hard.npz", "--save", "hard.npz"],
     "`--save hard.npz` would overwrite the program, `w.ad`"),
    (["train", "w.ad", *TRAIN, "--log", "loss", "--plot", "./loss"], "name the same file"),
])
def test_an_output_that_is_an_input_or_another_output_is_refused_before_any_work(program, args, words):
    folder = program.parent
    (folder / "sub").mkdir()
    os.link(program, folder / "hard.npz")
    os.symlink(program, folder / "link.npz")
    (folder / "y.csv").write_text("4\n1\n0\n1\n4\n")
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    result = spiread(*args, cwd=folder)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert "step" not in result.stderr and result.stdout == ""  # refused before any work
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


LOADS = 'W = load("data.npz")\nb = load("data/b.csv")\nx = [1.0, 2.0]\nloss = ((W @@ x) + b).softplus.sum\n'


@pytest.mark.parametrize("args, words", [
    (["train", *TRAIN[:1], "x", "--save", "data.npz"], "`--save data.npz` would overwrite a file the program loads"),
    (["train", *TRAIN[:1], "x", "--log", "data/b.csv"], "`--log data/b.csv` would overwrite a file the program loads"),
    (["hessian", "--sparse", "--out", "./data.npz"], "`--out data.npz` would overwrite a file the program loads"),
    (["jacobian", "--pattern", "--out", "data.npz"], "`--out data.npz` would overwrite a file the program loads"),
    (["train", *TRAIN[:1], "x", "--log", "data/../data/b.csv"], "would overwrite a file the program loads"),
    (["export", "--to", "python", "-o", "data.py"],
     "`-o data.py`'s companion archive `data.npz` would overwrite a file the program loads"),
])
def test_an_output_that_is_a_file_the_program_loads_is_refused(tmp_path, args, words):
    """`load("…")`'s files are inputs as the program and `--set` files are:
    every command that writes files refuses to write over one (an export's
    companion archive too), before any work."""
    (tmp_path / "data").mkdir()
    np.savez(tmp_path / "data.npz", W=np.eye(2))
    (tmp_path / "data" / "b.csv").write_text("1\n2\n")
    (tmp_path / "p.ad").write_text(LOADS)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = spiread(args[0], "p.ad", *args[1:], cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert words in result.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert spiread("eval", "p.ad", cwd=tmp_path).returncode == 0  # the data still load


# ------------------------------------------------------------ signals


def start_training(tmp_path, *extra):
    return subprocess.Popen(spiread_command() + ["train", str(REGRESSION), "--wrt", "weights", "--lr", "0.001",
                                                 "--steps", "100000000", "--format", "json", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)


@pytest.mark.parametrize("stop, code, notice", [
    (signal.SIGINT, 130, "stopping after this step (Ctrl-C again to quit without saving)"),
    (signal.SIGTERM, 143, "stopping after this step (a second signal to quit without saving)"),
], ids=["ctrl-c", "sigterm"])
def test_a_signal_during_train_saves_after_the_step(tmp_path, stop, code, notice):
    """Ctrl-C and SIGTERM (what `timeout`, `kill` and schedulers send) alike:
    the step in progress ends, the files are written whole, and the exit code
    says which signal it was."""
    save = tmp_path / "w.npz"
    process = start_training(tmp_path, "--save", str(save), "--log", str(tmp_path / "loss.csv"))
    try:
        first_line = process.stderr.readline()  # training has begun
        assert first_line.startswith("step 1/"), first_line
        process.send_signal(stop)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code, stderr
    assert notice in stderr
    document = strict_json(stdout)
    steps = document["steps"]
    assert 1 <= steps < 100000000 and len(document["loss"]) == steps
    with np.load(save, allow_pickle=False) as archive:
        # Each step multiplies w1 by 1 − 0.001·4: the save holds exactly `steps` updates.
        np.testing.assert_allclose(archive["weights"], [[0.996 ** steps], [1.0]], rtol=1e-9)
    assert len((tmp_path / "loss.csv").read_text().splitlines()) == steps + 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.csv", "w.npz"]


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGTERM),
                                           (signal.SIGTERM, signal.SIGINT)])
def test_a_second_signal_during_a_save_removes_the_temporary_file(tmp_path, first, second):
    """Both signals arrive while the archive is being written (sent by the
    writer itself, so the moment is certain): the process ends at once, with
    the second signal's exit code, and leaves no file behind."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from spiread_cli import interrupts
        from spiread_cli.files import atomic_output
        interrupts.install()
        try:
            with interrupts.stop_on_interrupt() as stop:
                with atomic_output(Path("w.npz")) as f:
                    f.write(b"half an archive")
                    os.kill(os.getpid(), {int(first)})
                    os.kill(os.getpid(), {int(second)})
                    time.sleep(30)
        except interrupts.Interrupted as stop:
            sys.exit(stop.exit_code)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + second, done.stderr
    assert list(tmp_path.iterdir()) == []


def test_sigterm_while_dot_writes_leaves_no_temporary_file(tmp_path):
    big = tmp_path / "big.ad"
    big.write_text("x0 = randn(1, 40, seed=1)\n" + "".join(f"x{i} = (x{i - 1} * 1.01).tanh\n" for i in range(1, 3000)))
    process = subprocess.Popen(spiread_command() + ["dot", str(big), "--out", str(tmp_path / "g.dot")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.send_signal(signal.SIGTERM)  # at whatever moment: starting, recording, writing
    _, stderr = process.communicate(timeout=60)
    assert process.returncode in (143, -signal.SIGTERM, 0), stderr
    no_python_noise(stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) in (["big.ad"], ["big.ad", "g.dot"])


@pytest.mark.parametrize("module", [False, True])
def test_ctrl_c_during_the_imports_exits_130_without_a_traceback(module):
    """KeyboardInterrupt raised while the command line imports typer: the
    moment a Ctrl-C lands in the first tenth of a second."""
    entry = "runpy.run_module('spiread_cli', run_name='__main__')" if module else \
        "from spiread_cli.__main__ import main; main()"
    script = textwrap.dedent(f"""
        import runpy, sys
        class CtrlC:
            def find_spec(self, name, path=None, target=None):
                if name == "typer":
                    raise KeyboardInterrupt
        sys.meta_path.insert(0, CtrlC())
        sys.argv = ["spiread", "eval", {str(SEED)!r}]
        {entry}
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr) == (130, "", "")


# ------------------------------------------------------------ failed writes


def test_a_full_disk_at_save_keeps_the_trained_values_in_the_temporary_folder(tmp_path):
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    result = spiread("train", REGRESSION, *TRAIN, "--save", "/dev/full", env={"TMPDIR": str(rescue)})
    assert result.returncode == 1
    no_python_noise(result.stderr)
    assert "spiread: error: cannot write /dev/full: No space left on device" in result.stderr
    kept = re.search(r"the trained values are saved in (.*) instead", result.stderr).group(1)
    with np.load(kept) as archive:
        np.testing.assert_allclose(archive["weights"], [[0.96 ** 3], [1.0]], rtol=1e-12)
    assert left_in(rescue) == [os.path.basename(kept)]
    assert "trained weights" in result.stdout  # the summary and the values are still shown


@pytest.mark.parametrize("args", [["train", REGRESSION, *TRAIN, "--log", "/dev/full"],
                                  ["dot", SEED, "--out", "/dev/full"]])
def test_a_full_disk_is_a_one_line_error_naming_the_path(args):
    result = spiread(*args)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "spiread: error: cannot write /dev/full: No space left on device"
    no_python_noise(result.stderr)


def test_a_file_too_large_is_an_error_and_the_values_are_printed(tmp_path):
    """RLIMIT_FSIZE makes every write past 100 bytes fail (EFBIG), the
    rescue in the temporary folder too: the values are still printed."""
    big = tmp_path / "big.ad"
    big.write_text("w = randn(20, 20, seed=1)\nloss = (w * w).sum\n")

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, resource.RLIM_INFINITY))

    done = subprocess.run(spiread_command() + ["train", str(big), "--wrt", "w", "--steps", "2", "--save",
                                               str(tmp_path / "w.npz"), "--format", "json"],
                          capture_output=True, text=True, preexec_fn=limit, env={**os.environ, "TMPDIR": str(tmp_path)},
                          timeout=60)
    assert done.returncode == 1
    assert f"cannot write {tmp_path / 'w.npz'}: File too large" in done.stderr
    assert "could not be saved in the temporary folder either (File too large)" in done.stderr
    no_python_noise(done.stderr)
    document = strict_json(done.stdout)
    assert document["saved"] is None and np.shape(document["values"]["w"]["value"]) == (20, 20)
    assert left_in(tmp_path) == ["big.ad"]  # no temporary files left


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_a_folder_that_cannot_be_written_is_refused_before_training(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = spiread("train", REGRESSION, *TRAIN, "--save", locked / "w.npz")
    assert result.returncode == 2 and "cannot write to the folder" in result.stderr


# ------------------------------------------------------------ standard streams


COMMANDS = [["eval", REGRESSION], ["eval", REGRESSION, "--format", "json"], ["grad", REGRESSION],
            ["check", REGRESSION], ["dot", REGRESSION], ["train", REGRESSION, *TRAIN]]


@pytest.mark.parametrize("args", COMMANDS)
def test_a_reader_that_went_away_ends_quietly(args):
    process = subprocess.Popen(spiread_command() + [str(a) for a in args], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    process.stdout.close()  # gone before the first write
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == 141
    assert "step 3/3" in stderr if args[0] == "train" else stderr == ""
    no_python_noise(stderr)


@pytest.mark.parametrize("args", COMMANDS)
def test_closed_or_full_stdout_is_a_one_line_error(args):
    argv = " ".join(f"'{a}'" for a in spiread_command() + [str(a) for a in args])
    for redirect, error in ((">&-", "cannot write the results: standard output is closed"),
                            (">/dev/full", "cannot write the results to standard output: No space left on device")):
        done = subprocess.run(f"{argv} {redirect}", shell=True, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert done.stderr.splitlines()[-1] == f"spiread: error: {error}"
        no_python_noise(done.stderr)


def test_closed_stdin_for_file_dash():
    argv = " ".join(spiread_command())
    done = subprocess.run(f"{argv} eval - <&-", shell=True, capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (1, "spiread: error: -: standard input is closed; there is no program to read\n")


def test_closed_stderr_still_gives_the_exit_code():
    argv = " ".join(spiread_command())
    done = subprocess.run(f"{argv} eval no-such.ad 2>&-", shell=True, capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and done.stdout == ""


# ------------------------------------------------------------ warnings


def test_no_python_warning_reaches_the_user():
    """--lr 1e308 overflows in the optimizer: train reports the non-finite
    loss itself; numpy's RuntimeWarning (with its library path) never shows,
    even when the environment asks Python to show every warning."""
    result = spiread("train", REGRESSION, "--wrt", "weights", "--lr", "1e308", "--steps", "5",
                     env={"PYTHONWARNINGS": "always"})
    assert result.returncode == 1
    assert "training stopped at step 2" in result.stderr
    no_python_noise(result.stderr)


@pytest.mark.parametrize("command, extra", [("grad", []), ("check", []), ("train", ["--steps", "1"])])
def test_every_warning_is_in_every_commands_json(tmp_program, command, extra):
    result = spiread(command, tmp_program(UNUSED_B), "--wrt", "a", "--wrt", "b", *extra, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["warnings"] == [
        {"line": 2, "column": 1, "message": "the output `loss` does not depend on `b`; its gradient is zero"}]
    assert "warning" not in result.stderr  # in the document, not printed as well


def test_eval_json_warnings():
    result = spiread("eval", SEED, "--format", "json")
    assert [(w["line"], w["column"]) for w in strict_json(result.stdout)["warnings"]] == [(24, 79)]
    assert "warning" not in result.stderr


def test_train_text_prints_each_warning_once(tmp_program):
    result = spiread("train", tmp_program(UNUSED_B), "--wrt", "a", "--wrt", "b", "--steps", "2")
    assert result.returncode == 0
    assert result.stderr.count("does not depend on `b`") == 1


# ------------------------------------------------------------ text as text


def test_a_plot_title_is_plain_text(tmp_path):
    pytest.importorskip("matplotlib")
    program = tmp_path / "r$\\x$_{a}^b.ad"
    program.write_bytes(REGRESSION.read_bytes())
    result = spiread("train", program, *TRAIN, "--plot", tmp_path / "loss.png")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_every_help_text_is_shown_verbatim():
    """Help is plain text: rich markup would eat `[plot]` and the like."""
    from spiread_cli.cli import app
    import typer.main
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        shown = " ".join(spiread(name, "--help").stdout.split())
        for text in [command.help] + [p.help for p in command.params if getattr(p, "help", None)]:
            assert " ".join(text.split()) in shown, (name, text)
    assert "(needs matplotlib)" in " ".join(spiread("train", "--help").stdout.split())


# ------------------------------------------------------------ benchmarks


def test_benchmarks_say_what_is_missing(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), "--data", str(tmp_path / "none.txt")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (f"run.py: error: the names file {tmp_path / 'none.txt'} is not here "
                                            "(give it with --data PATH)")


# ------------------------------------------------------------ devices, pipes and links as outputs


def test_devices_pipes_and_links_as_outputs(tmp_path):
    """/dev/null may take several outputs; a FIFO receives a whole archive (it
    cannot seek, so the archive is built first); a symbolic link's target is
    replaced, and the link stays."""
    both = spiread("train", REGRESSION, *TRAIN, "--save", "/dev/null", "--log", "/dev/null")
    assert both.returncode == 0, both.stderr
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE)
    piped = spiread("train", REGRESSION, *TRAIN, "--save", fifo)
    received = reader.communicate(timeout=60)[0]
    assert piped.returncode == 0, piped.stderr
    with np.load(io.BytesIO(received)) as archive:
        np.testing.assert_allclose(archive["weights"], [[0.96 ** 3], [1.0]], rtol=1e-12)
    real, link = tmp_path / "real.npz", tmp_path / "link.npz"
    real.write_text("old")
    link.symlink_to(real.name)
    assert spiread("train", REGRESSION, *TRAIN, "--save", link).returncode == 0
    assert link.is_symlink() and np.load(real)["weights"].shape == (2, 1)


# ------------------------------------------------- what the user sees stays


PRINTS_THEN_FAILS = "x = [1, 2]\nprintln(x)\nprintln(\"half way\")\ny = x @@ [1, 2, 3]\n"


@pytest.mark.parametrize("args, stream", [
    (["eval"], "stdout"), (["grad"], "stdout"), (["eval", "--format", "json"], "stderr"),
    (["check", "--format", "json"], "stderr"), (["dot"], "stderr"),
])
def test_what_println_wrote_before_an_error_is_shown_before_it(tmp_path, args, stream):
    """On stdout as the program runs; on stderr, before the error, where stdout is for one JSON document or DOT."""
    (tmp_path / "p.ad").write_text(PRINTS_THEN_FAILS)
    done = spiread(args[0], "p.ad", *args[1:], cwd=tmp_path)
    assert done.returncode == 1
    printed = "[1. 2.]\nhalf way\n"
    if stream == "stdout":
        assert done.stdout == printed and done.stderr.startswith("p.ad:4:7: error: `x @@ [1, 2, 3]`")
    else:
        assert done.stdout == "" and done.stderr.startswith(printed + "p.ad:4:7: error:")


def test_println_before_an_error_after_loading_is_shown_once(tmp_path):
    """The program ran; the command failed after (a vector output for grad): text mode printed the
    lines already, JSON shows them on stderr before the error."""
    (tmp_path / "p.ad").write_text("x = [1, 2]\nprintln(x)\ny = x * 2\n")
    text = spiread("grad", "p.ad", cwd=tmp_path)
    assert text.returncode == 1 and text.stdout == "[1. 2.]\n" and "[1. 2.]" not in text.stderr
    document = spiread("grad", "p.ad", "--format", "json", cwd=tmp_path)
    assert document.stdout == "" and document.stderr.startswith("[1. 2.]\np.ad:3:7: error: the output `y`")


def test_a_log_to_the_file_stdout_goes_to_keeps_the_summary(tmp_path):
    """`--log /dev/stdout > out.txt`: the CSV, then the summary, both in out.txt (it was replaced by the CSV alone)."""
    command = " ".join(spiread_command() + ["train", str(REGRESSION), *TRAIN, "--log", "/dev/stdout"])
    done = subprocess.run(["bash", "-c", f"{command} > out.txt"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    out = (tmp_path / "out.txt").read_text()
    assert out.startswith("step,loss\n1,2.0\n") and len(out.split("step,loss")) == 2
    assert "trained weights (2×1) with sgd (lr 0.01): 3 steps" in out and "wrote the losses to /dev/stdout" in out
    assert out.index("3,") < out.index("trained weights")
    assert left_in(tmp_path) == ["out.txt"]


def test_save_adds_npz_as_numpy_does_and_set_reads_it_back(tmp_path):
    done = spiread("train", REGRESSION, *TRAIN, "--save", "wsave", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "saved weights to wsave.npz (`.npz` added, as numpy.savez adds it)" in done.stdout
    assert left_in(tmp_path) == ["wsave.npz"]
    for given in ("weights=wsave.npz", "wsave.npz"):
        again = strict_json(spiread("eval", REGRESSION, "--set", given, "--format", "json", cwd=tmp_path).stdout)
        with np.load(tmp_path / "wsave.npz") as archive:
            assert again["values"]["weights"]["value"] == archive["weights"].tolist()


def test_a_multi_array_archive_binds_every_array_by_name(tmp_path):
    (tmp_path / "m.ad").write_text("W = [[1.0], [1.0]]\nb = 0.5\nX = [[-2, 4], [-1, 1], [0, 0]]\n"
                                   "loss = ((X @@ W).col(0) + b).sum\n")
    np.savez(tmp_path / "both.npz", W=[[2.0], [3.0]], b=4.0)
    np.savez(tmp_path / "more.npz", W=[[2.0], [3.0]], c=4.0)
    done = strict_json(spiread("eval", "m.ad", "--set", "both.npz", "--format", "json", cwd=tmp_path).stdout)
    assert done["values"]["W"]["value"] == [[2.0], [3.0]] and done["values"]["b"]["value"] == 4.0
    assert done["values"]["loss"]["value"] == (-4 + 12 + 4) + (-2 + 3 + 4) + (0 + 0 + 4)
    later = strict_json(spiread("eval", "m.ad", "--set", "both.npz", "--set", "b=1", "--format", "json",
                                cwd=tmp_path).stdout)
    assert later["values"]["b"]["value"] == 1.0  # a later --set wins
    unknown = spiread("eval", "m.ad", "--set", "more.npz", cwd=tmp_path)
    assert unknown.returncode == 2
    assert "error: `--set more.npz`: the program binds no `c`, an array in it" in unknown.stderr
    trained = spiread("train", "m.ad", "--wrt", "W,b", "--steps", "2", "--set", "both.npz", "--save", "both.npz",
                      "--format", "json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr  # continued in place
    with np.load(tmp_path / "both.npz") as archive:
        assert sorted(archive) == ["W", "b"] and archive["b"] < 4.0


@pytest.mark.parametrize("args, words", [
    (["--hvp", "weights"], "`--hvp weights`: expected NAME=VALUE, e.g. `--hvp W=[[1,2],[3,4]]`"),
    (["--hvp", "weights=[1,nan]"], "`--hvp weights=[1,nan]`: unknown name `nan`"),
    (["--hvp", "weights=fifo.npy"], "`--hvp weights=fifo.npy`: cannot load `fifo.npy`: it is a named pipe (FIFO)"),
    (["--hvp", "weights=huge.npy"], "`--hvp weights=huge.npy`: cannot load `huge.npy`"),
    (["--hvp", "weights=[1,2,3]"], "`--hvp weights=…`: the direction is a vector of 3"),
    (["--hvp", "wieghts=1"], "`--hvp wieghts=…`: the program binds no `wieghts`"),
    (["--set", "weights"], "`--set weights`: expected NAME=VALUE"),
])
def test_an_option_that_reads_values_names_itself(tmp_path, args, words):
    os.mkfifo(tmp_path / "fifo.npy")
    np.save(tmp_path / "huge.npy", np.zeros((200, 200)))
    done = spiread("hessian", REGRESSION, *args, cwd=tmp_path, env={"SPIREAD_MAX_BYTES": "100000"})
    assert done.returncode in (1, 2) and words in done.stderr, done.stderr
    assert "--set" not in done.stderr or args[0] == "--set"
    no_python_noise(done.stderr)


def test_sigterm_while_the_final_save_is_written_exits_143(tmp_path):
    """The steps are done and the save is being written (to a FIFO, 800 kB
    through a 64 kB pipe, so it waits for this reader) when SIGTERM comes:
    the values are still written whole, and the exit code says the run was stopped."""
    (tmp_path / "big.ad").write_text("W = ones(1000, 100)\nloss = (W * W).mean\n")
    save = tmp_path / "w.npz"
    os.mkfifo(save)
    process = subprocess.Popen(spiread_command() + ["train", "big.ad", "--wrt", "W", "--steps", "3", "--save",
                                                    str(save), "--format", "json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path)
    try:
        with open(save, "rb") as reader:
            written = reader.read(1)  # the save has begun, and cannot end before this reader reads on
            process.send_signal(signal.SIGTERM)
            written += reader.read()
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert strict_json(stdout.decode())["steps"] == 3
    with np.load(io.BytesIO(written)) as archive:
        assert archive["W"].shape == (1000, 100)
