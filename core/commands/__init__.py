"""One module per ``poisonlens`` subcommand (see core/cli.py).

A command module defines ``add_parser(sub)``, which calls :func:`add_command` and adds its
options, and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from poisonlens.cli import COMMANDS


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    run: Callable[[argparse.Namespace], int],
    description: str | None = None,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` to ``sub``, to be run by ``run``; return its parser.

    The one-line help shown by ``poisonlens --help`` is taken from
    :data:`poisonlens.cli.COMMANDS`, the one place it is written (the lazy parser lists the
    commands from it without importing their modules). Every subcommand parser is a
    :class:`poisonlens.cli.Parser`, so it shows defaults through the CLI's own help formatter
    and reports errors as one line.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The subcommands of the ``poisonlens`` parser (``add_subparsers()`` of
        :func:`poisonlens.cli.build_parser`).
    name : str
        The command's name, a key of :data:`poisonlens.cli.COMMANDS`.
    run : callable
        ``run(args) -> int``, called with the parsed options; its return value is the exit status.
    description : str, optional
        The paragraph ``poisonlens NAME --help`` shows under the usage line. Default: none.

    Returns
    -------
    argparse.ArgumentParser
        The command's parser, for the caller to add its options to.
    """
    parser = sub.add_parser(name, help=COMMANDS[name][1], description=description)
    parser.set_defaults(func=run)
    return parser
