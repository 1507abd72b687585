"""The `spiread` command line: thin wrappers over spiread_cli.api."""

from __future__ import annotations

import sys
import traceback
from contextlib import contextmanager
from enum import Enum
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
        from .diagnostics import Diagnostic, SpireadError
        warnings = run.diagnostics.warnings
        if self.strict and warnings:
            first = warnings[0]
            error = SpireadError(first.message, first.span, first.notes)
            error.diagnostic = Diagnostic("error", first.message, first.span, first.notes)
            raise error
        if not self.json:
            for warning in warnings:
                print_diagnostic(warning, run.source)
        return [w.as_json() for w in warnings]


def print_diagnostic(diagnostic, source) -> None:
    from rich.text import Text
    from .diagnostics import render
    from .output import stderr_console
    text = Text(render(diagnostic, source))
    text.highlight_words([f"{diagnostic.severity}:"], "bold red" if diagnostic.severity == "error" else "bold yellow")
    text.highlight_regex(r"\^+", "bold red" if diagnostic.severity == "error" else "bold yellow")
    stderr_console().print(text, soft_wrap=True)


@contextmanager
def session(file: str, fmt: Format = Format.text, strict: bool = False, debug: bool = False):
    """Run a command body; turn our errors into located messages and exit codes,
    and anything else into an internal-error report (never a bare traceback)."""
    from .diagnostics import SpireadError
    s = Session(file, fmt, strict)
    try:
        yield s
    except SpireadError as err:
        if debug:
            traceback.print_exc()
        source = s.source if err.diagnostic.span is not None else None
        print_diagnostic(err.diagnostic, source)
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
                debug: DebugOpt = False):
    """The computation graph as Graphviz DOT: spiread dot f.ad | dot -Tpng > g.png"""
    from . import api
    from .dot import to_dot
    with session(file, Format.text, False, debug) as s:
        run = _load(s, file, set_, of)
        grads = api.gradients(run, wrt).gradients if wrt else None
        s.finish_warnings(run)
        sys.stdout.write(to_dot(run, grads))


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
