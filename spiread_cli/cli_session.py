"""What every command shares (cli.py): the session that turns errors into
located messages and exit codes, and shows what a run prints and warns (the
`program.Caller` of the command line), and `run_command`, the skeleton of a
command: its options checked, the program opened (program.Program), one
task of the program's called, and its outcome presented."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable

import typer

from .cli_options import Backend, Format, backend_options


class Session:
    """What one command run shares: the source (for diagnostics) and the options."""

    def __init__(self, file: str, fmt: Format, strict: bool, stdout_is_data: bool = False):
        self.file = file
        self.json = fmt == Format.json
        self.strict = strict
        self.keeps_runs = False  # a command runs its program once
        self.stdout_is_data = stdout_is_data
        self.run = None   # once loaded: errors after loading point into its source
        self.shown = 0    # warnings already printed
        self.printed_shown = False  # the program's println lines
        self.program = None  # the program.Program opened (closed at the end: a --scheduler connection)

    def show_printed(self, printed: list[str], failed: bool = False) -> None:
        """The program's `println` lines, once: before the command's output
        on stdout (stderr where stdout holds only data, DOT), and before an
        error in any format, on stderr when stdout is for one JSON document."""
        from .output import write_printed
        if not self.printed_shown and (failed or not self.json):
            write_printed(printed, to_stderr=self.stdout_is_data or self.json)
            self.printed_shown = True

    def ran(self, run) -> None:  # program.Caller
        self.run = run
        self.show_printed(run.printed)

    def warn(self, run) -> None:  # program.Caller
        """Print the warnings not printed yet (text mode; JSON lists them all
        in the document); under --strict the first is an error."""
        from .diagnostics import SpireadError, emit
        warnings = run.diagnostics.warnings
        if self.strict and warnings:
            raise SpireadError.from_warning(warnings[0])
        if not self.json:
            for warning in warnings[self.shown:]:
                emit(warning, run.source)
        self.shown = len(warnings)


@contextmanager
def session(file: str, fmt: Format = Format.text, strict: bool = False, debug: bool = False,
            stdout_is_data: bool = False):
    """Run a command body; turn our errors into located messages and exit codes,
    and anything else into an internal-error report (never a bare traceback)."""
    from .diagnostics import SpireadError, emit
    s = Session(file, fmt, strict, stdout_is_data)
    try:
        yield s
    except SpireadError as err:
        _traceback(debug)
        if err.source is None and s.run is not None:
            err.located_in(s.run.source)
        s.show_printed(err.printed or (s.run.printed if s.run is not None else []), failed=True)
        emit(err.diagnostic, err.source)
        raise typer.Exit(err.exit_code) from None
    except BrokenPipeError:  # the reader went away (`| head -1`): end quietly, as Unix tools do
        from .output import silence_standard_streams
        silence_standard_streams()
        raise typer.Exit(141) from None
    except RecursionError:
        _traceback(debug)
        print(f"spiread: error: {file}: the program nests too deeply to evaluate", file=sys.stderr)
        raise typer.Exit(1) from None
    except MemoryError:
        print(f"spiread: error: {file}: out of memory", file=sys.stderr)
        raise typer.Exit(1) from None
    except Exception as err:  # a bug of ours
        _traceback(debug)
        print(f"spiread: internal error: {type(err).__name__}: {err}\n"
              "This is a bug in spiread. Please report it with the program that caused it "
              "(run again with --debug for a traceback).", file=sys.stderr)
        raise typer.Exit(1) from None
    finally:
        if s.program is not None:  # a --scheduler connection, chunks' templates
            s.program.close()


def _traceback(debug: bool) -> None:
    if debug:
        import traceback  # only for --debug: start-up time
        traceback.print_exc()


def run_command(file: str, sets, *, command: str, compute: Callable, text: Callable, document: Callable | None = None,
                fmt: Format = Format.text, strict: bool = False, debug: bool = False,
                outputs=(), prepare: Callable[[], None] = lambda: None, stdout_is_data: bool = False,
                backend: tuple = (Backend.numpy, None, None, False)):
    """The skeleton every command shares: check the `backend` options
    (--backend, --scheduler, --chunk-rows, --persist) and `prepare`, open
    the program (program.Program) and check the output paths against the
    files it reads (all before any work),
    `compute(session, program, overrides)`, the command's one call of a
    task of the program's (`program.run_grad(session, overrides, ...)`),
    with the session as the `program.Caller` that shows the program's
    `println` lines (text mode; on stderr when `stdout_is_data`) and its
    warnings, then present the outcome: `document(run, result)` as JSON
    (tagged with `command`'s schema) or `text(run, result)`. Returns the
    outcome (program.Outcome)."""
    from .output import write_json
    sets = list(sets or [])
    with session(file, fmt, strict, debug, stdout_is_data) as s:
        options = backend_options(*backend)
        prepare()
        from .program import Program
        program = s.program = Program.open(file, options)
        given = [o for o in outputs if o.path is not None]
        if given:  # files.py (and tempfile) only for commands writing files: start-up time
            from .files import check_outputs, command_inputs
            check_outputs(given, command_inputs(file, sets, program.loaded_files()))
        outcome = compute(s, program, program.parse_sets(sets))  # the task has shown its warnings (s.warn)
        run = outcome.run
        if s.json:
            from .schemas import tag
            printed = {"printed": run.printed} if run.printed else {}
            write_json({"schema": tag(command), "file": file, "output": run.output_name,
                        **document(run, outcome.result), **printed,
                        "warnings": [w.as_json() for w in run.diagnostics.warnings]})
        else:
            text(run, outcome.result)
    return outcome
