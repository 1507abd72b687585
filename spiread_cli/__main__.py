"""The `spiread` entry point (also `python -m spiread_cli`).

Light on purpose: the signal handlers and the warnings filter are in place
before anything heavy is imported, so a Ctrl-C or a SIGTERM at any moment
ends the process with the conventional exit code and no Python traceback.
"""

import os
import sys
import warnings

from .interrupts import Interrupted, install


def main() -> None:
    install()
    if sys.stderr is None:  # started with `2>&-`: errors go nowhere, the exit code still tells
        sys.stderr = open(os.devnull, "w")
    if "--debug" not in sys.argv[1:]:
        # numpy's RuntimeWarnings name library files; what matters to the user
        # spiread reports itself, at a place in the program.
        warnings.simplefilter("ignore")
    try:
        from .cli import command_line
        command_line(sys.argv[1:])()
    except Interrupted as stop:
        sys.exit(stop.exit_code)
    except KeyboardInterrupt:  # only before install() ran
        sys.exit(130)
    except BrokenPipeError:  # a reader of stdout or stderr went away: not an error
        from .output import silence_standard_streams
        silence_standard_streams()
        sys.exit(141)  # 128 + SIGPIPE, what a shell reports for a process the pipe killed


if __name__ == "__main__":
    main()
