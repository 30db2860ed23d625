"""How an error ends a poisonlens process: one line on standard error and an exit status.

Shared by the command line (:mod:`poisonlens.cli`) and the dashboard's background training
process (:mod:`poisonlens.launch`), so that neither reaches into the other.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable

from poisonlens.errors import InputError, one_line

PROG = "poisonlens"


def report(err: BaseException, *, debug: bool = False) -> int:
    """Print ``err`` as one line on standard error and say which exit status it means.

    Parameters
    ----------
    err : BaseException
        What went wrong. An :class:`InputError`, or an ``OSError`` naming a file, is bad
        input; anything else is a bug and is shown with its type.
    debug : bool, default False
        Print the traceback first (``--debug``).

    Returns
    -------
    int
        2 for bad input, 1 for anything else.
    """
    if debug:
        traceback.print_exception(err)
    if isinstance(err, InputError):
        print(f"{PROG}: {err}", file=sys.stderr)
        return 2
    if isinstance(err, OSError) and err.filename is not None:
        problem = err.strerror or type(err).__name__
        print(f"{PROG}: {one_line(err.filename, 160)}: {one_line(problem)}", file=sys.stderr)
        return 2
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    hint = "" if debug else " (run with --debug for the traceback)"
    line = one_line(f"{type(err).__name__}: {first}", 220)
    print(f"{PROG}: error: {line}{hint}", file=sys.stderr)
    return 1


def reader_gone() -> int:
    """The reader of standard output went away (``poisonlens runs | head -3``): end quietly.

    Standard output is pointed at /dev/null so that the interpreter's last flush cannot raise
    again; the status is 141 (128 + SIGPIPE), what a shell reports for a tool the pipe ended.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 141


def guarded(func: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``func`` and turn any exception into :func:`report`'s one line and exit status.

    Parameters
    ----------
    func : callable
        Takes no arguments and returns an exit status (None counts as 0).
    debug : bool, default False
        Print the traceback of an error (``--debug``).

    Returns
    -------
    int
        ``func``'s status; 130 on Ctrl-C; 141 when the reader of standard output went away;
        otherwise :func:`report`'s 2 or 1.
    """
    try:
        return int(func() or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return reader_gone()
    except Exception as err:  # the last resort: no traceback reaches the user
        return report(err, debug=debug)
