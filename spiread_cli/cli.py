"""The `spiread` command line: thin wrappers over spiread_cli.api."""

from __future__ import annotations

import os
import sys
import traceback
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Evaluate and differentiate matrix expression files (.ad).")


class Format(str, Enum):
    text = "text"
    json = "json"


class Mode(str, Enum):
    reverse = "reverse"
    forward = "forward"


FileArg = Annotated[str, typer.Argument(metavar="FILE", help="The .ad program, or - for standard input.")]
OfOpt = Annotated[Optional[str], typer.Option("--of", metavar="NAME", help="The output: a bound name.")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", metavar="NAME=VALUE", help="Replace a binding: a number, a literal, or a .npy/.npz/.csv/.json path.")]
FormatOpt = Annotated[Format, typer.Option("--format", help="text for people, json for scripts.")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Treat warnings (inf, nan) as errors.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show Python tracebacks.")]
WrtOpt = Annotated[Optional[list[str]], typer.Option(
    "--wrt", metavar="NAME", help="Differentiate by this value (repeatable). Default: the .backward(...) names, "
                                  "else every input the output depends on.")]


class Session:
    """What one command run shares: the source (for diagnostics) and the options."""

    def __init__(self, file: str, fmt: Format, strict: bool):
        self.file = file
        self.json = fmt == Format.json
        self.strict = strict
        self.source = None

    def finish_warnings(self, run) -> list[dict]:
        """Print warnings (text mode) or return them for the JSON document;
        under --strict the first warning is an error."""
        from .diagnostics import SpireadError, emit
        warnings = run.diagnostics.warnings
        if self.strict and warnings:
            raise SpireadError.from_warning(warnings[0])
        if not self.json:
            for warning in warnings:
                emit(warning, run.source)
        return [w.as_json() for w in warnings]


@contextmanager
def session(file: str, fmt: Format = Format.text, strict: bool = False, debug: bool = False):
    """Run a command body; turn our errors into located messages and exit codes,
    and anything else into an internal-error report (never a bare traceback)."""
    from .diagnostics import SpireadError, emit
    s = Session(file, fmt, strict)
    try:
        yield s
    except SpireadError as err:
        if debug:
            traceback.print_exc()
        source = s.source if err.diagnostic.span is not None else None
        emit(err.diagnostic, source)
        raise typer.Exit(err.exit_code) from None
    except (typer.Exit, typer.Abort, KeyboardInterrupt):
        raise
    except RecursionError:
        if debug:
            traceback.print_exc()
        print(f"spiread: error: {file}: the program nests too deeply to evaluate", file=sys.stderr)
        raise typer.Exit(1) from None
    except MemoryError:
        print(f"spiread: error: {file}: out of memory", file=sys.stderr)
        raise typer.Exit(1) from None
    except Exception as err:  # a bug of ours
        if debug:
            traceback.print_exc()
        print(f"spiread: internal error: {type(err).__name__}: {err}\n"
              "This is a bug in spiread. Please report it with the program that caused it "
              "(run again with --debug for a traceback).", file=sys.stderr)
        raise typer.Exit(1) from None


def _load(s: Session, file: str, sets, of):
    from . import api
    s.source = api.read_source(file)
    base = api.base_dir_of(s.source)
    return api.run_source(s.source, api.parse_overrides(list(sets or []), base), of, base)


def _emit_json(document: dict) -> None:
    from .output import dumps
    sys.stdout.write(dumps(document) + "\n")


@app.command("eval")
def eval_command(file: FileArg, of: OfOpt = None, set_: SetOpt = None, fmt: FormatOpt = Format.text,
                 strict: StrictOpt = False, debug: DebugOpt = False):
    """Evaluate a program: every bound value, then the output."""
    from .output import json_value, stdout_console, values_table
    with session(file, fmt, strict, debug) as s:
        run = _load(s, file, set_, of)
        rows = [(name, run.tape.nodes[i].value) for name, i in run.bindings.items()]
        output_value = run.tape.nodes[run.output].value
        warnings = s.finish_warnings(run)
        if s.json:
            values = {name: json_value(v) for name, v in rows}
            values.setdefault(run.output_name, json_value(output_value))
            _emit_json({"file": file, "output": run.output_name, "values": values, "warnings": warnings})
        else:
            console = stdout_console()
            if rows:
                console.print(values_table(rows))
                console.print()
            console.print(values_table([(f"output {run.output_name}", output_value)]))


@app.command("grad")
def grad_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                 mode: Annotated[Mode, typer.Option("--mode", help="reverse (one sweep) or forward (one per input entry).")] = Mode.reverse,
                 set_: SetOpt = None, fmt: FormatOpt = Format.text, strict: StrictOpt = False,
                 debug: DebugOpt = False):
    """Gradients of the scalar output with respect to --wrt values."""
    from . import api
    from .output import json_value, stdout_console, values_table
    with session(file, fmt, strict, debug) as s:
        run = _load(s, file, set_, of)
        result = api.gradients(run, wrt, mode.value)
        warnings = s.finish_warnings(run)
        if s.json:
            _emit_json({"file": file, "output": run.output_name, "value": json_value(result.value),
                        "mode": mode.value, "gradients": {n: json_value(g) for n, g in result.gradients.items()},
                        "warnings": warnings})
        else:
            console = stdout_console()
            console.print(values_table([(run.output_name, result.value)]))
            console.print()
            console.print(values_table([(f"∂{run.output_name}/∂{n}", g) for n, g in result.gradients.items()]))


@app.command("dot")
def dot_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None, set_: SetOpt = None,
                out: Annotated[Optional[Path], typer.Option("--out", metavar="PATH",
                                                            help="Write the DOT to PATH (whole or not at all) instead of stdout.")] = None,
                debug: DebugOpt = False):
    """The computation graph as Graphviz DOT: spiread dot f.ad | dot -Tpng > g.png"""
    from . import api
    from .dot import to_dot
    from .files import atomic_output, check_output_path
    with session(file, Format.text, False, debug) as s:
        if out is not None:
            check_output_path(out, "--out", (".dot", ".gv"))
        run = _load(s, file, set_, of)
        grads = api.gradients(run, wrt).gradients if wrt else None
        s.finish_warnings(run)
        text = to_dot(run, grads)
        if out is None:
            sys.stdout.write(text)
        else:
            with atomic_output(out) as f:
                f.write(text.encode("utf-8"))


@app.command("check")
def check_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                  eps: Annotated[Optional[float], typer.Option("--eps", metavar="E", help="Finite-difference step (default 1e-6).")] = None,
                  tol: Annotated[Optional[float], typer.Option("--tol", metavar="T", help="Tolerance, relative to the gradient's scale (default 1e-5; see docs/check.md).")] = None,
                  set_: SetOpt = None, fmt: FormatOpt = Format.text, strict: StrictOpt = False,
                  debug: DebugOpt = False):
    """Compare AD gradients (reverse and forward) with central finite differences; exit 1 if any disagree."""
    from .check import check_gradients, check_table
    from .diagnostics import emit
    from .output import json_number, stdout_console
    with session(file, fmt, strict, debug) as s:
        run = _load(s, file, set_, of)
        report = check_gradients(run, wrt, eps, tol)
        warnings = s.finish_warnings(run)
        if s.json:
            _emit_json({"file": file, "output": run.output_name, "ok": report.ok,
                        "results": {n: r.as_json() for n, r in report.results.items()},
                        "value": json_number(report.value), "eps": report.eps, "tol": report.tol,
                        "problem": report.problem, "warnings": warnings})
        else:
            stdout_console().print(check_table(report))
        sys.stdout.flush()  # the table before the errors, when both go to one pipe
        for failure in report.failures(run):
            emit(failure, run.source)
        if not report.ok:
            raise typer.Exit(1)


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"


@app.command("train")
def train_command(
        file: FileArg,
        wrt: Annotated[list[str], typer.Option("--wrt", metavar="NAME",
                                               help="A value to train (repeatable); it must be bound to a constant.")],
        steps: Annotated[int, typer.Option("--steps", min=0, help="How many steps.")] = 100,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate. Default: sgd 0.01, adam 0.001.")] = None,
        optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="sgd (with --momentum) or adam.")] = Optimizer.sgd,
        momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum; 0 is plain SGD.")] = 0.0,
        save: Annotated[Optional[Path], typer.Option("--save", metavar="PATH.npz",
                                                     help="Write the trained values here, keyed by name.")] = None,
        log: Annotated[Optional[Path], typer.Option("--log", metavar="PATH.csv", help="Write step,loss here.")] = None,
        plot: Annotated[Optional[Path], typer.Option("--plot", metavar="PATH.png",
                                                     help="Draw the loss curve (needs spiread[plot]).")] = None,
        of: OfOpt = None, set_: SetOpt = None, fmt: FormatOpt = Format.text, strict: StrictOpt = False,
        debug: DebugOpt = False):
    """Train: repeat forward, backward and an optimizer step on the --wrt values."""
    from dataclasses import replace
    from . import train as training
    from .diagnostics import usage_error
    from .files import check_output_path
    from .optim import make_optimizer
    try:
        with session(file, fmt, strict, debug) as s, training.stop_on_interrupt(_stopping_notice) as stop_requested:
            chosen = make_optimizer(optimizer.value, lr, momentum)
            for path, option, suffixes in ((save, "--save", (".npz",)), (log, "--log", (".csv", ".txt")),
                                           (plot, "--plot", (".png",))):
                if path is not None:
                    check_output_path(path, option, suffixes)
            if plot is not None and not training.plot_available():
                raise usage_error("`--plot` needs matplotlib, which is not installed",
                                  ["pip install 'spiread[plot]'; the summary's sparkline needs nothing"])
            run = _load(s, file, set_, of)
            names = training.trainable_names(run, wrt)
            s.finish_warnings(run)
            with training.StepReporter(steps) as reporter:
                result = training.train(run, names, steps, chosen, strict=strict, on_step=reporter,
                                        stop_requested=stop_requested)
            written = []
            if save is not None:
                training.save_values(save, result.values)
                written.append(f"saved {', '.join(result.names)} to {save}")
            if log is not None:
                training.write_log(log, result.losses)
                written.append(f"wrote the losses to {log}")
            if plot is not None:
                training.plot_losses(plot, result.losses, f"{file}: {run.output_name}, {chosen.describe()}")
                written.append(f"drew the loss curve in {plot}")
            if result.error is not None:
                error = result.error
                error.diagnostic = replace(error.diagnostic, notes=error.diagnostic.notes + tuple(written))
                raise error
            if s.json:
                _emit_json({"file": file, "output": run.output_name, "steps": len(result.losses),
                            "loss": result.losses, "saved": str(save) if save is not None else None})
            else:
                from .output import stdout_console, values_table
                print(training.summary(result, run, steps, chosen) + "".join(f"\n{w}" for w in written) + "\n")
                stdout_console().print(values_table([(name, result.values[name]) for name in result.names]))
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, keeping no partial files
        print("spiread: interrupted; nothing saved", file=sys.stderr)
        raise typer.Exit(130) from None
    if result.status == "interrupted":
        raise typer.Exit(130)


def _stopping_notice() -> None:
    # Called from the signal handler: one plain write, no locks.
    os.write(2, b"\nspiread: stopping after this step (Ctrl-C again to quit without saving)\n")


def _version(value: bool):
    if value:
        print(f"spiread {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False):
    """spiread: evaluate and differentiate matrix expression files."""


def main() -> None:
    app()
