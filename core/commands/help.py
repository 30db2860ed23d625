"""``poisonlens help [TOPIC]``: a command's help, or the limits on untrusted files.

The ``--max-*`` limits are accepted by every command at any position (see
:func:`poisonlens.cli.apply_limit_flags`) but are rarely needed, so ``poisonlens --help`` lists
the commands first and points here for them.
"""

from __future__ import annotations

import argparse

from poisonlens.commands import add_command

LIMITS = "limits"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``help`` subcommand to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        Where the commands are added (:func:`poisonlens.cli.build_parser`); ``help`` takes one
        optional positional TOPIC.
    """
    p = add_command(
        sub, "help", run,
        description="Show the help of a command, or the limits every command applies to the "
        "files it reads (`poisonlens help limits`).",
    )
    p.add_argument("topic", nargs="?", default=None, metavar="TOPIC",
                   help="a command name, or `limits`")


def limits_text() -> str:
    """The ``--max-*`` flags with their defaults and what each bounds, as ``help limits`` prints.

    Returns
    -------
    str : one line per flag, ``--max-images N  default 2,000,000 ...``
    """
    from poisonlens.cli import LIMIT_FLAGS
    from poisonlens.limits import Limits

    lines = [
        "Limits on untrusted files. Every command accepts these flags at any position, e.g.",
        "`poisonlens train --max-images 3000000 ...`; values take the suffixes K, M, G.",
        "What each one bounds and why: docs/security.md.",
        "",
    ]
    width = max(len(flag) for flag in LIMIT_FLAGS) + 4
    for flag in LIMIT_FLAGS:
        default = getattr(Limits(), flag[2:].replace("-", "_"))
        lines.append(f"  {flag + ' N':<{width}}default {default:,}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Print the help asked for; return 0 (an unknown topic is a one-line error, exit 2).

    Parameters
    ----------
    args : argparse.Namespace
        ``topic``: None for the list of commands, a command's name for its options, or
        ``limits`` for the ``--max-*`` flags.
    """
    from poisonlens.cli import COMMANDS, build_parser
    from poisonlens.errors import InputError

    topic = args.topic
    if topic is None:
        build_parser(lazy=True).print_help()
    elif topic == LIMITS:
        print(limits_text(), end="")
    elif topic in COMMANDS:
        parser = build_parser(topic, lazy=True)
        parser._subparsers._group_actions[0].choices[topic].print_help()
    else:
        raise InputError("help", f"unknown topic {topic!r}: a command ({', '.join(COMMANDS)}) or `limits`")
    return 0
