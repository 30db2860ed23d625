"""``poisonlens export``: the suspects of a run (dropped or flagged up to an epoch) as CSV."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poisonlens.commands import add_command
from poisonlens.errors import one_line
from poisonlens.export import check_epoch, suspects_table, to_safe_csv
from poisonlens.store import DamagedFile, atomic_write_bytes, open_run


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``export`` subcommand and its options to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``poisonlens`` parser's subcommands; ``export`` takes ``--run``, ``--epoch``,
        ``--dropped-only`` and ``--out``.
    """
    p = add_command(sub, "export", run)
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument(
        "--epoch",
        type=int,
        default=None,
        help="the snapshot epoch to rank at: examples dropped up to it, flagged at it "
        "(default: the run's last snapshot)",
    )
    p.add_argument(
        "--dropped-only", action="store_true", help="leave out examples flagged but not dropped"
    )
    p.add_argument("--out", required=True, help="CSV file to write ('-' for standard output)")


def run(args: argparse.Namespace) -> int:
    """Write a run's dropped (and flagged) examples up to an epoch as CSV; return 0.

    Parameters
    ----------
    args : argparse.Namespace
        ``run`` (the run folder), ``epoch`` (a snapshot epoch, None for the last),
        ``dropped_only`` and ``out`` (a CSV path, ``-`` for standard output).
    """
    run = open_run(args.run)
    damage = run.info().unreadable  # a link or special file anywhere, or damaged metrics
    if damage:
        raise DamagedFile(args.run, f"damaged run, nothing exported: {damage}")
    epoch = check_epoch(run, args.epoch, source="--epoch")  # before anything is written
    table = suspects_table(run, epoch, include_flagged=not args.dropped_only)
    text = to_safe_csv(table)
    if args.out == "-":
        # to a terminal, cells with control characters (a class name with ESC sequences) are
        # shown escaped; piped, the CSV goes out as written
        print(text if not sys.stdout.isatty() else "\r\n".join(one_line(line, 100_000) for line in text.split("\r\n")), end="")
    else:
        atomic_write_bytes(Path(args.out), text.encode())
        print(f"{len(table)} rows -> {one_line(args.out)}")
    return 0
