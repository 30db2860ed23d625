"""``poisonlens review``: a run's review (poison / clean / unsure verdicts) to and from CSV, for scripts.

The dashboard marks examples one page at a time; this command moves a whole review in or out:
``--export FILE`` writes review.parquet as CSV (``index,verdict,note,who,when``), ``--import FILE``
merges a CSV with ``index`` and ``verdict`` columns into it (an example already reviewed gets
the new verdict). Without either it prints how many examples have each verdict.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonlens.commands import add_command
from poisonlens.commands._options import existing_folder


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``review`` subcommand and its options to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The subcommands; ``review`` needs ``--run`` and takes one of ``--import FILE`` and
        ``--export FILE``.
    """
    p = add_command(
        sub, "review", run,
        description="A run's review is kept in its folder as review.parquet (see docs/run-format.md).",
    )
    p.add_argument("--run", required=True, type=existing_folder, help="run directory")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--import",
        dest="import_file",
        metavar="FILE",
        help="merge a CSV with 'index' and 'verdict' (poison, clean or unsure) columns; "
        "'note', 'who' (default: the OS user) and 'when' (default: now) are optional",
    )
    what.add_argument(
        "--export", metavar="FILE", help="write the review as CSV ('-' for standard output)"
    )


def run(args: argparse.Namespace) -> int:
    """Import, export or summarise the review; return 0.

    Parameters
    ----------
    args : argparse.Namespace
        ``run``; ``import_file`` (a CSV to merge) or ``export`` (a CSV path, ``-`` for
        standard output); with neither, the review's counts are printed.
    """
    from poisonlens.review import (
        REVIEW,
        merge,
        read_review,
        read_review_csv,
        review_csv,
        summary,
    )
    from poisonlens.store import atomic_write_bytes, open_run

    run = open_run(args.run)
    if args.import_file:
        n_samples = len(run.examples()["index"])
        rows = read_review_csv(args.import_file, n_samples, source=f"--import {args.import_file}")
        review = merge(run, rows, source=args.import_file)
        print(f"{len(rows)} verdicts imported -> {Path(args.run) / REVIEW} ({summary(review)})")
        return 0
    review = read_review(run)
    if args.export == "-":
        print(review_csv(review), end="")
    elif args.export:
        atomic_write_bytes(Path(args.export), review_csv(review).encode())
        print(f"{len(review)} verdicts ({summary(review)}) -> {args.export}")
    else:
        print(f"{run.name}: {summary(review)}")
    return 0
