"""The ``poisonlens`` command line. Each subcommand is one module in ``core/commands``.

A command module defines ``add_parser(subparsers)``, which registers its parser and sets
``func`` to a ``run(args) -> int``. Errors in user input (:class:`core.errors.InputError`)
are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

import core.commands
from core.errors import InputError

# The order `poisonlens --help` lists them in; a module not named here is listed after.
ORDER = ["train", "runs", "export", "select", "craft", "evaluate", "project"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poisonlens",
        description="Train image classifiers under the EPIC poisoning defense and inspect what it drops.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [m.name for m in pkgutil.iter_modules(core.commands.__path__)]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        importlib.import_module(f"core.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as err:
        print(f"poisonlens {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"poisonlens {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
