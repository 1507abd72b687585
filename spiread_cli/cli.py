"""The `spiread` command line: thin wrappers over the library, program.Program."""

from __future__ import annotations

import copy
import os
import signal
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from .version import __version__
from .cli_options import (Backend, BackendOpt, ChunkRowsOpt, DebugOpt, FileArg, Format, FormatOpt, Mode, OfOpt,
                          PersistOpt, SchedulerOpt, SetOpt, StrictOpt, WrtOpt, name_lists)
from .cli_session import run_command, session
from .cli_sparse import PatternOpt, SparseOpt, SparseOutOpt, SpyPlotOpt, sparse_options, sparse_outputs, write_sparse_files

# rich_markup_mode=None: help texts are plain text (rich markup would eat `[plot]`).
app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  rich_markup_mode=None, help="Evaluate and differentiate matrix expression files (.ad).")


@app.command("eval")
def eval_command(file: FileArg, of: OfOpt = None, set_: SetOpt = None, fmt: FormatOpt = Format.text,
                 strict: StrictOpt = False, backend: BackendOpt = Backend.numpy, scheduler: SchedulerOpt = None,
                 chunk_rows: ChunkRowsOpt = None, persist: PersistOpt = False, debug: DebugOpt = False):
    """Evaluate a program: every bound value, then the output."""
    from .output_results import eval_document, eval_text
    run_command(file, set_, command="eval", compute=lambda s, program, sets: program.run_eval(s, sets, of),
                document=eval_document, text=eval_text, fmt=fmt,
                strict=strict, debug=debug, backend=(backend, scheduler, chunk_rows, persist))


@app.command("grad")
def grad_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                 mode: Annotated[Mode, typer.Option("--mode", help="reverse (one sweep) or forward (one per input entry).")] = Mode.reverse,
                 explain: Annotated[bool, typer.Option(
                     "--explain", help="Show the sweep step by step: each node, the rule its op applies, and what it "
                                       "passes on (docs/explain.md).")] = False,
                 set_: SetOpt = None, fmt: FormatOpt = Format.text, strict: StrictOpt = False,
                 backend: BackendOpt = Backend.numpy, scheduler: SchedulerOpt = None, chunk_rows: ChunkRowsOpt = None,
                 persist: PersistOpt = False, debug: DebugOpt = False):
    """Gradients of the scalar output with respect to --wrt values."""
    from .output_results import grad_document, grad_text
    run_command(file, set_, command="grad",
                compute=lambda s, program, sets: program.run_grad(s, sets, wrt=wrt, of=of, mode=mode.value,
                                                                  explain=explain),
                document=lambda run, found: grad_document(run, found[0], mode.value, found[1]),
                text=lambda run, found: grad_text(run, *found), fmt=fmt, strict=strict, debug=debug,
                backend=(backend, scheduler, chunk_rows, persist))


@app.command("dot")
def dot_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None, set_: SetOpt = None,
                out: Annotated[Optional[Path], typer.Option("--out", metavar="PATH",
                                                            help="Write the DOT to PATH (whole or not at all) instead of stdout.")] = None,
                backend: BackendOpt = Backend.numpy, scheduler: SchedulerOpt = None, chunk_rows: ChunkRowsOpt = None,
                persist: PersistOpt = False, debug: DebugOpt = False):
    """The computation graph as Graphviz DOT: spiread dot f.ad | dot -Tpng > g.png"""
    from .files import Output, atomic_output
    from .output import write_stdout

    def text(run, dot):
        if out is None:
            write_stdout(dot)
        else:
            with atomic_output(out) as f:
                f.write(dot.encode("utf-8"))

    run_command(file, set_, command="dot", compute=lambda s, program, sets: program.run_dot(s, sets, wrt=wrt, of=of),
                text=text, debug=debug, outputs=[Output("--out", out, (".dot", ".gv"))], stdout_is_data=True,
                backend=(backend, scheduler, chunk_rows, persist))


@app.command("hessian")
def hessian_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                    hvp: Annotated[Optional[list[str]], typer.Option(
                        "--hvp", metavar="NAME=V", help="Give H·v instead of H, without forming H: the direction "
                                                        "for NAME, in any --set form (repeatable; names not given are "
                                                        "zero).")] = None,
                    sparse: SparseOpt = False, pattern: PatternOpt = False, out: SparseOutOpt = None,
                    plot: SpyPlotOpt = None, set_: SetOpt = None, fmt: FormatOpt = Format.text,
                    strict: StrictOpt = False, backend: BackendOpt = Backend.numpy, scheduler: SchedulerOpt = None,
                    chunk_rows: ChunkRowsOpt = None, persist: PersistOpt = False, debug: DebugOpt = False):
    """Exact second derivatives of the scalar output: every block ∂²out/∂A∂B, or H·v with --hvp, or the sparse
    Hessian with --sparse, or its sparsity pattern with --pattern."""
    from .output_results import hessian_document, hessian_text

    def compute(s, program, sets):
        done = program.run_hessian(s, sets, wrt=wrt, of=of, hvp=program.parse_sets(hvp, "--hvp") if hvp else None,
                                   sparse=sparse, pattern=pattern)
        if pattern or sparse:
            found = done.result
            write_sparse_files(found.pattern if pattern else found.matrix, out, plot,
                               f"∂²{done.run.output_name}/∂({', '.join(found.names)})²")
        return done

    run_command(file, set_, command="hessian", compute=compute, document=lambda run, result: hessian_document(result),
                text=hessian_text, fmt=fmt, strict=strict, debug=debug, backend=(backend, scheduler, chunk_rows, persist),
                outputs=sparse_outputs(out, plot),
                prepare=lambda: sparse_options(sparse, pattern, out, plot, {"--hvp": bool(hvp)}))


@app.command("jacobian")
def jacobian_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                     mode: Annotated[Optional[Mode], typer.Option(
                         "--mode", help="forward (one sweep per block of input entries) or reverse (one per block "
                                        "of output entries). Default: the fewer sweeps for these sizes. With "
                                        "--sparse: colour the columns (forward) or the rows (reverse).")] = None,
                     sparse: SparseOpt = False, pattern: PatternOpt = False,
                     out: Annotated[Optional[Path], typer.Option(
                         "--out", metavar="PATH.npz", help="Also write the blocks to PATH.npz, keyed by --wrt "
                                                           "name; with --sparse or --pattern, the matrix as "
                                                           "scipy.sparse.load_npz reads it (whole or not at all).")] = None,
                     plot: SpyPlotOpt = None, set_: SetOpt = None, fmt: FormatOpt = Format.text,
                     strict: StrictOpt = False, backend: BackendOpt = Backend.numpy,
                     scheduler: SchedulerOpt = None, chunk_rows: ChunkRowsOpt = None,
                     persist: PersistOpt = False, debug: DebugOpt = False):
    """The Jacobian of the output (scalar, vector or matrix): a block of shape shape(out) + shape(NAME) per --wrt;
    the sparse Jacobian with --sparse, or its sparsity pattern with --pattern."""
    from . import files
    from .output_results import jacobian_document, jacobian_text

    def compute(s, program, sets):
        done = program.run_jacobian(s, sets, wrt=wrt, of=of, mode=mode.value if mode else None, sparse=sparse,
                                    pattern=pattern)
        found = done.result
        if pattern or sparse:
            write_sparse_files(found.pattern if pattern else found.matrix, out, plot,
                               f"∂{done.run.output_name}/∂({', '.join(found.names)})")
        elif out is not None:
            files.save_values(out, found.blocks)
        return done

    run_command(file, set_, command="jacobian", compute=compute, document=lambda run, r: jacobian_document(r),
                text=lambda run, r: jacobian_text(run, r, out), fmt=fmt, strict=strict, debug=debug,
                outputs=sparse_outputs(out, plot),
                prepare=lambda: sparse_options(sparse, pattern, out, plot, {}, dense_out=True),
                backend=(backend, scheduler, chunk_rows, persist))


@app.command("check")
def check_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                  eps: Annotated[Optional[float], typer.Option("--eps", metavar="E", help="Finite-difference step (default 1e-6).")] = None,
                  tol: Annotated[Optional[float], typer.Option("--tol", metavar="T", help="Tolerance, relative to the gradient's scale (default 1e-5; see docs/check.md).")] = None,
                  order: Annotated[int, typer.Option("--order", min=1, max=2, help="1: gradients; 2: second derivatives, against differences of the exact gradient.")] = 1,
                  sparse: Annotated[bool, typer.Option(
                      "--sparse", help="Also compare what --sparse computes (the Jacobian; with --order 2 the "
                                       "Hessian, from one sweep per colour of the exact pattern) with the dense "
                                       "result, and the dense result's nonzeros with the pattern (needs scipy).")] = False,
                  set_: SetOpt = None, fmt: FormatOpt = Format.text, strict: StrictOpt = False,
                  backend: BackendOpt = Backend.numpy, scheduler: SchedulerOpt = None,
                  chunk_rows: ChunkRowsOpt = None, persist: PersistOpt = False, debug: DebugOpt = False):
    """Compare AD gradients (reverse and forward; of a non-scalar output, its Jacobian) with central finite differences; exit 1 if any disagree."""
    from .diagnostics import emit
    from .output import stdout_console
    from .output_results import check_document, check_table
    done = run_command(file, set_, command="check",
                       compute=lambda s, program, sets: program.run_check(s, sets, wrt=wrt, of=of, eps=eps, tol=tol,
                                                                          order=order, sparse=sparse),
                       document=lambda run, report: check_document(report),
                       text=lambda run, report: stdout_console().print(check_table(report)),
                       fmt=fmt, strict=strict, debug=debug, backend=(backend, scheduler, chunk_rows, persist),
                       prepare=lambda: sparse_options(sparse, False, None, None, {}))
    for failure in done.result.failures(done.run):  # after the table: it is on stdout already
        emit(failure, done.run.source)
    if not done.result.ok:
        raise typer.Exit(1)


class Optimizer(str, Enum):
    sgd = "sgd"
    adam = "adam"
    newton = "newton"


@app.command("train")
def train_command(
        file: FileArg,
        wrt: Annotated[list[str], typer.Option("--wrt", metavar="NAME", callback=name_lists,
                                               help="A value to train (repeatable, or a,b); it must be bound to a "
                                                    "constant.")],
        steps: Annotated[int, typer.Option("--steps", min=0, help="How many steps.")] = 100,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate. Default: sgd 0.01, adam 0.001, newton 1 (a full Newton step, the most it takes).")] = None,
        optimizer: Annotated[Optimizer, typer.Option("--optimizer", help="sgd (with --momentum), adam, or newton (trust region, conjugate gradients on Hessian-vector products).")] = Optimizer.sgd,
        momentum: Annotated[float, typer.Option("--momentum", help="SGD momentum; 0 is plain SGD.")] = 0.0,
        sparse: Annotated[Optional[bool], typer.Option(
            "--sparse/--no-sparse", help="newton: solve with the sparse Hessian (from its exact pattern, one "
                                         "Hessian-vector product per colour; needs scipy), or not. Default: where "
                                         "the pattern is sparse and scipy is installed.")] = None,
        save: Annotated[Optional[Path], typer.Option("--save", metavar="PATH.npz",
                                                     help="Write the trained values here, keyed by name (.npz is "
                                                          "added if PATH lacks it). It may be the --set archive "
                                                          "training started from: continue with --set PATH.npz.")] = None,
        log: Annotated[Optional[Path], typer.Option("--log", metavar="PATH.csv", help="Write step,loss here.")] = None,
        plot: Annotated[Optional[Path], typer.Option("--plot", metavar="PATH.png",
                                                     help="Draw the loss curve (needs matplotlib).")] = None,
        of: OfOpt = None, set_: SetOpt = None, fmt: FormatOpt = Format.text, strict: StrictOpt = False,
        backend: BackendOpt = Backend.numpy, scheduler: SchedulerOpt = None, chunk_rows: ChunkRowsOpt = None,
        persist: PersistOpt = False, debug: DebugOpt = False):
    """Train: repeat forward, backward and an optimizer step on the --wrt values."""
    from contextlib import nullcontext
    from dataclasses import replace
    from . import files
    from .diagnostics import emit, usage_error
    from .interrupts import Interrupted, exit_code, stop_on_interrupt
    from .optim import make_optimizer
    from .output_train import StepReporter, train_document, train_text
    chosen = None

    def prepare():
        nonlocal chosen
        chosen = make_optimizer(optimizer.value, lr, momentum, sparse)
        if plot is not None and not files.installed("matplotlib"):
            raise usage_error("`--plot` needs matplotlib, which is not installed",
                              ['pip install matplotlib (or pip install ".[plot]" in spiread\'s checkout); '
                               "the summary's sparkline needs nothing"])

    def compute(s, program, sets):
        done = program.run_train(s, sets, wrt=wrt, steps=steps, optimizer=chosen, of=of,
                                 progress=StepReporter(steps), interrupts=lambda: nullcontext(stop_requested))
        result = done.result
        written = files.write_training_files(result, save, log, plot,
                                             f"{file}: {done.run.output_name}, {chosen.describe()}", Path(file).stem)
        if result.error is not None:  # raised once the files are written: its notes name them
            for error in written.failed:
                emit(error.diagnostic, None)
            error = result.error
            error.diagnostic = replace(error.diagnostic, notes=error.diagnostic.notes + tuple(written.done))
            raise error
        done.result = result, written
        return done

    try:
        with stop_on_interrupt(_stopping_notice) as stop_requested:
            result, written = run_command(
                file, set_, command="train", compute=compute, document=lambda run, outcome: train_document(*outcome),
                text=lambda run, outcome: train_text(run, *outcome, steps, chosen), fmt=fmt, strict=strict, debug=debug,
                prepare=prepare, backend=(backend, scheduler, chunk_rows, persist),
                outputs=[files.Output("--save", files.archive_path(save), (".npz",), continues=True),
                         files.Output("--log", log, (".csv", ".txt")),
                         files.Output("--plot", plot, (".png",))]).result
    except Interrupted as again:  # a second signal: stop at once, keeping no partial files
        print("spiread: interrupted; nothing saved", file=sys.stderr)
        raise typer.Exit(again.exit_code) from None
    for error in written.failed:
        emit(error.diagnostic, None)
    if stop_requested():  # a signal stopped the steps, or came while the files were written
        raise typer.Exit(exit_code(stop_requested.signum))
    if written.failed:
        raise typer.Exit(1)


class Target(str, Enum):
    python = "python"
    onnx = "onnx"


@app.command("export")
def export_command(file: FileArg, wrt: WrtOpt = None, of: OfOpt = None,
                   to: Annotated[Target, typer.Option("--to", help="python: a module over the Python array API "
                                                                   "(numpy, PyTorch, CuPy, Dask); onnx: an ONNX "
                                                                   "model for onnxruntime.")] = ...,
                   out: Annotated[Optional[Path], typer.Option(
                       "--out", "-o", metavar="PATH", help="Where to write it. Default: FILE's name with .py or "
                                                            ".onnx, in the current folder.")] = None,
                   hvp: Annotated[bool, typer.Option("--hvp", help="Also export the Hessian-vector product "
                                                                   "(python: hvp(direction, ...); onnx: inputs "
                                                                   "v_NAME, outputs hvp_NAME).")] = False,
                   set_: SetOpt = None, strict: StrictOpt = False, backend: BackendOpt = Backend.numpy,
                   scheduler: SchedulerOpt = None, chunk_rows: ChunkRowsOpt = None, persist: PersistOpt = False,
                   debug: DebugOpt = False):
    """The value and its gradient (and H·v) as code that runs without spiread: Python or ONNX (docs/export.md)."""
    from .diagnostics import usage_error
    from .export import TARGETS, check_target, written_files
    suffix = TARGETS[to.value][0]
    if out is None:
        if file == "-":
            with session(file, debug=debug):  # a usage error as every other: exit 2, no traceback
                raise usage_error("a program read from standard input has no name to export to",
                                  ["give one: `-o PATH`"])
        out = Path(Path(file).stem + suffix)
    outputs = written_files(to.value, out, "-o")

    def text(run, written):
        from .output import write_stdout
        write_stdout("".join(f"wrote {path}\n" for path in written))

    run_command(file, set_, command="export",
                compute=lambda s, program, sets: program.run_export(s, sets, to=to.value, out=out, wrt=wrt, of=of,
                                                                    hvp=hvp),
                text=text, strict=strict, debug=debug, prepare=lambda: check_target(to.value), outputs=outputs,
                backend=(backend, scheduler, chunk_rows, persist))


@app.command("schema")
def schema_command(command: Annotated[str, typer.Argument(metavar="COMMAND",
                                                          help="The command whose --format json document to describe.")],
                   debug: DebugOpt = False):
    """The JSON Schema (draft 2020-12) of a command's --format json document."""
    import json
    from . import schemas
    from .diagnostics import did_you_mean, usage_error
    from .output import write_stdout
    with session("-", debug=debug):
        here = {c.name for c in app.registered_commands}  # hessian.json waits for `spiread hessian`
        known = [c for c in schemas.commands() if c in here]
        if command not in known:
            raise usage_error(f"`{command}` has no --format json document; the commands with one are "
                              f"{', '.join(known)}", list(did_you_mean(command, known)))
        write_stdout(json.dumps(schemas.bundled(command), indent=2, ensure_ascii=False) + "\n")


def _stopping_notice(signum: int) -> None:
    # Called from the signal handler: one plain write, no locks.
    again = "Ctrl-C again" if signum == signal.SIGINT else "a second signal"
    os.write(2, f"\nspiread: stopping after this step ({again} to quit without saving)\n".encode())


def _version(value: bool):
    if value:
        print(f"spiread {__version__}")
        raise typer.Exit()


def command_line(args: list[str]) -> typer.Typer:
    """The app to run on these arguments. Typer turns every registered command
    into a click command on each run (a millisecond or more each), so when the
    arguments start with a command's name, an app with that command alone: the
    group then reads nothing but the name, and the command reads the rest, as
    in the whole app. Anything else (`--help`, `--version`, no command, an
    unknown one) gets the whole app, so what it prints is unchanged."""
    named = [c for c in app.registered_commands if args and c.name == args[0]]
    if not named:
        return app
    alone = copy.copy(app)  # `schema` reads the whole list from `app`
    alone.registered_commands = named
    return alone


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Show the version and exit.")] = False):
    """spiread: evaluate and differentiate matrix expression files."""
