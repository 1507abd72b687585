"""Standard output, the one place a command writes its results: text
through rich on a terminal and plain elsewhere (`print_blocks`), strict JSON
(`write_json`), values as aligned tables (`values_table`), a program's
`println` lines. Everything meant for standard output goes through
`write_stdout`. What each command shows is output_results.py's,
output_train.py's and output_sparse.py's."""

from __future__ import annotations

import os
import sys

import numpy as np

from .diagnostics import SpireadError
from .formatting import dumps, format_array, short_shape, terminal_width


def values_table(rows: list[tuple]) -> list[tuple[str, str]]:
    """Aligned `name  shape  value` lines; a matrix continues on the lines below.
    A row is (name, array), or (name, array, text) to show the value as `text`.
    The table is (text, style) pieces, for `print_blocks`."""
    name_width = max((len(row[0]) for row in rows), default=0)
    shape_width = max((len(short_shape(np.shape(row[1]))) for row in rows), default=0)
    indent = " " * (name_width + shape_width + 4)
    width = max(terminal_width() - len(indent), 40)  # an array's lines, beside the names, fit the terminal
    out = []
    for name, value, *text in rows:
        shown = text[0] if text and text[0] is not None else format_array(value, width=width)
        out += [(name.ljust(name_width), "bold cyan"), ("  ", ""),
                (short_shape(np.shape(value)).ljust(shape_width), "magenta"), ("  ", ""),
                (shown.replace("\n", "\n" + indent), ""), ("\n", "")]
    while out and not out[-1][0].rstrip():  # no trailing newline or blanks: print_blocks ends the block
        out.pop()
    if out:
        out[-1] = (out[-1][0].rstrip(), out[-1][1])
    return out


# ------------------------------------------------------------ standard output


def write_stdout(text: str) -> None:
    """Write and flush at once, so a failure surfaces here and not in the
    interpreter's last flush. A reader that went away raises BrokenPipeError
    (the command ends quietly, as Unix tools do); any other failure, or a
    closed stdout, is a one-line error."""
    stream = sys.stdout
    if stream is None:  # started with `>&-`
        raise SpireadError("cannot write the results: standard output is closed")
    try:
        stream.write(text)
        stream.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as err:
        silence_standard_streams(stderr=False)  # what is still buffered cannot be written either
        reason = getattr(err, "strerror", None) or str(err)
        raise SpireadError(f"cannot write the results to standard output: {reason}") from None


def silence_standard_streams(stderr: bool = True) -> None:
    """Point standard output (and error) at /dev/null, so that the
    interpreter's final flush of a broken stream prints no "Exception
    ignored" (the Python documentation's advice for SIGPIPE)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr) if stderr else (sys.stdout,):
        try:
            os.dup2(devnull, stream.fileno())
        except (AttributeError, OSError, ValueError):  # closed or not a real file
            pass
    os.close(devnull)


class _StandardOutput:
    """A file for rich that writes through `write_stdout`."""
    encoding = "utf-8"

    def write(self, text: str) -> int:
        write_stdout(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return sys.stdout is not None and sys.stdout.isatty()

    def fileno(self) -> int:
        return sys.stdout.fileno()


def stdout_console():
    from rich.console import Console

    class StdoutConsole(Console):
        def on_broken_pipe(self) -> None:  # rich's own would exit 1
            raise BrokenPipeError

    # Piped output is not wrapped at 80 columns: a script reads whole lines.
    out = _StandardOutput()
    return StdoutConsole(file=out, highlight=False, soft_wrap=True, width=None if out.isatty() else 10_000)


def print_blocks(*blocks: str | list[tuple[str, str]]) -> None:
    """Print each block, then a newline, on standard output. A block is plain
    text or (text, style) pieces (`values_table`). On a terminal rich prints
    them, coloured; anywhere else they are written as plain text without
    importing rich at all, as diagnostics.emit does for stderr (rich costs a
    sixth of `import numpy` at start-up: docs/performance.md)."""
    if sys.stdout is not None and sys.stdout.isatty():
        from rich.text import Text
        console = stdout_console()
        for block in blocks:
            if isinstance(block, str):
                console.print(block, markup=False)
            else:
                text = Text()
                for piece, style in block:
                    text.append(piece, style=style or None)
                console.print(text)
        return
    write_stdout("".join((block if isinstance(block, str) else "".join(piece for piece, _ in block)) + "\n"
                         for block in blocks))


def write_json(document: dict) -> None:
    write_stdout(dumps(document) + "\n")


def stderr_console():
    from rich.console import Console
    return Console(stderr=True, highlight=False)


def write_printed(printed: list[str], to_stderr: bool = False) -> None:
    """The program's `println` lines, in order: on stdout before the command's
    own output, or on stderr where stdout is not for them (DOT, JSON)."""
    if not printed:
        return
    text = "".join(line + "\n" for line in printed)
    if to_stderr:
        sys.stderr.write(text)
        sys.stderr.flush()
    else:
        write_stdout(text)
