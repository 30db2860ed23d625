"""The ``poisonlens`` command line. Each subcommand is one module in ``core/commands``.

A command module defines ``add_parser(subparsers)``, which registers its parser with
:func:`poisonlens.commands.add_command` (its ``func`` is a ``run(args) -> int``) and adds its
options. Commands are listed in :data:`COMMANDS` with their one-line help, the one place it is
written, so ``poisonlens --help`` imports no command module, and ``poisonlens CMD`` imports only
``CMD``'s module: a command that needs no torch starts without it. Command modules keep heavy
imports (torch, the trainer) inside ``run``.

Every failure ends as one line on standard error, never a traceback (``--debug`` shows one):

- bad input (argparse's own errors, :class:`poisonlens.errors.InputError`, and an ``OSError`` naming
  a file): ``poisonlens: <file or option>: <problem>``, exit status 2;
- anything else, a bug rather than bad input: ``poisonlens: error: <Type>: <first line>``,
  exit status 1.

Messages are made printable and bounded (:func:`poisonlens.errors.one_line`).
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys

from poisonlens.errors import InputError, one_line
from poisonlens.exits import PROG, guarded, reader_gone
from poisonlens.options import fill_names

# name -> (module, one-line help), in the order `poisonlens --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": (
        "poisonlens.commands.train",
        "train a model under a defense, recording snapshots in a run directory",
    ),
    "runs": ("poisonlens.commands.runs", "list runs with status and headline metrics"),
    "export": ("poisonlens.commands.export", "write the examples dropped or flagged up to an epoch as CSV"),
    "select": (
        "poisonlens.commands.select",
        "run EPIC's selection on saved gradients and write its decisions to a CSV",
    ),
    "craft": (
        "poisonlens.commands.craft",
        "craft a poison set (gradient matching, bullseye polytope, feature collision, patch backdoor, "
        "label flip)",
    ),
    "targets": (
        "poisonlens.commands.targets",
        "choose (target, adversarial class) pairs to attack, from a clean model's predictions",
    ),
    "evaluate": (
        "poisonlens.commands.evaluate",
        "train every defense on every poison set, seed and scenario; write results tables",
    ),
    "project": ("poisonlens.commands.project", "precompute the 2-D gradient map the dashboard shows"),
    "review": (
        "poisonlens.commands.review",
        "import or export a run's review (poison / clean / unsure verdicts) as CSV",
    ),
    "ui": ("poisonlens.commands.ui", "start the dashboard on a runs folder (http://127.0.0.1:8501)"),
    "help": (
        "poisonlens.commands.help",
        "show a command's help, or `help limits`: the limits on untrusted files",
    ),
}
# poisonlens.limits.Limits fields as flags (--max-images ...): read by main() wherever they appear.
LIMIT_FLAGS = (
    "--max-file-bytes",
    "--max-array-bytes",
    "--max-total-bytes",
    "--max-images",
    "--max-pixels-per-image",
    "--max-classes",
    "--max-depth",
    "--max-items",
    "--max-int-digits",
    "--max-members",
    "--max-compression-ratio",
    "--max-json-bytes",
)


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default once: appended only when the help does not already say it,
    and never for ``None``, ``False``, required options or positionals."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = fill_names(action.help or "")  # {defenses}, {attacks}, {formats}: the registries
        default = action.default
        if (
            "default" in text
            or action.required
            or not action.option_strings
            or default in (None, False, argparse.SUPPRESS, [])
            or isinstance(action, argparse._HelpAction | argparse._VersionAction)
        ):
            return text
        return text + " (default: %(default)s)"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line ``poisonlens: <option>: <problem>``, exit 2.

    Subcommand parsers are made with the same class (argparse's default), so every command
    gets this behaviour and :class:`HelpFormatter`, whatever formatter it asks for.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs["formatter_class"] = HelpFormatter
        super().__init__(*args, **kwargs)

    command: str | None = None  # set on the top-level parser: whose --help to point at

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print the problem as one line and exit with status 2 (no usage block).

        Parameters
        ----------
        message : str
            argparse's message, e.g. ``argument --epochs: invalid int value: 'x'``; it is
            rewritten as ``poisonlens: --epochs: <problem>``, naming the option first.
        """
        prog = f"{PROG} {self.command}" if self.command else self.prog
        see = f"see `{prog} --help`"
        if found := re.match(r"argument ([^:]+): (.*)", message, re.S):
            source, problem = found[1].split("/")[0], found[2]
            if problem.startswith("invalid choice"):
                problem = problem.replace("invalid choice", "unknown value")
        elif found := re.match(r"the following arguments are required: (.*)", message):
            source, problem = found[1].split(",")[0].split("/")[0], f"required ({see})"
        elif found := re.match(r"unrecognized arguments: (\S+)", message):
            source, problem = found[1], f"unknown option ({see})"
        else:
            source, problem = self.prog, f"{message} ({see})"
        self.exit(2, f"{PROG}: {one_line(source, 80)}: {one_line(problem, 220)}\n")


def build_parser(command: str | None = None, *, lazy: bool = False) -> argparse.ArgumentParser:
    """The ``poisonlens`` parser.

    Parameters
    ----------
    command : with ``lazy``, the one command whose module is imported and whose full parser
        is built (None: none); the others are listed with their help only
    lazy : False builds every command's full parser (for tests and docs)
    """
    parser = Parser(
        prog=PROG,
        description="Train image classifiers under the EPIC poisoning defense and inspect "
        "what it drops.",
        epilog="`poisonlens COMMAND --help` lists a command's options; `poisonlens help limits` "
        "the limits on untrusted files (--max-*, accepted by every command); --debug shows the "
        "traceback of an error.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="on an error, show the traceback (any position)"
    )
    # The --max-* limits are taken out of argv before parsing (apply_limit_flags), so they are
    # not parser options: `poisonlens help limits` lists them, keeping the commands first here.
    parser.command = command
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, helptext) in COMMANDS.items():
        if not lazy or name == command:
            importlib.import_module(module).add_parser(sub)
        else:
            sub.add_parser(name, help=helptext, add_help=False)
    return parser


def _command_of(argv: list[str]) -> str | None:
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def apply_limit_flags(argv: list[str]) -> None:
    """Take the ``--max-*`` limit flags out of ``argv`` (in place) and make them the limits.

    They may appear anywhere, so that ``poisonlens train --max-images 3000000 ...`` works
    for every command that reads a file.

    Parameters
    ----------
    argv : list of str
        The command line without the program name; changed in place: each flag in
        :data:`LIMIT_FLAGS` and its value (``--max-images 3000000`` or ``--max-images=3M``)
        are removed.

    Raises
    ------
    InputError
        Naming the flag, for a missing value or one that is not a positive number.
    """
    overrides: dict[str, str] = {}
    i = 0
    while i < len(argv):
        flag, eq, value = argv[i].partition("=")
        if flag not in LIMIT_FLAGS:
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise InputError(flag, "expected a value such as 1000 or 2G")
            value = argv.pop(i + 1)
        argv.pop(i)
        overrides[flag[2:].replace("-", "_")] = value
    if overrides:
        from poisonlens.limits import set_limits

        set_limits(**overrides)


def main(argv: list[str] | None = None) -> int:
    """Run ``poisonlens`` with ``argv``; return the exit status.

    ``--help`` and a parse error raise ``SystemExit`` (0 and 2), as argparse does.

    Parameters
    ----------
    argv : list of str, optional
        The command line without the program name, e.g. ``["runs", "--runs-dir", "runs"]``;
        ``--debug`` and the ``--max-*`` flags may stand anywhere in it. Default:
        ``sys.argv[1:]``.

    Returns
    -------
    int
        0 on success, 2 for bad input, 1 for a bug, 130 on Ctrl-C, 141 for a closed pipe.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]

    def parse_and_run() -> int:
        apply_limit_flags(argv)
        # --help and parse errors (already printed as one line) exit through SystemExit, as
        # argparse does: status 0 and 2
        args = build_parser(_command_of(argv), lazy=True).parse_args(argv)
        return args.func(args)

    try:
        try:
            return guarded(parse_and_run, debug=debug)
        finally:  # a buffered write (--help, a short table) meets a closed pipe only here
            sys.stdout.flush()
    except BrokenPipeError:
        return reader_gone()


if __name__ == "__main__":
    sys.exit(main())
