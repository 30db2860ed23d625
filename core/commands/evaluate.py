"""``poisonlens evaluate``: every defense on every poison set and seed, and the results table."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from core.commands.train import add_schedule_arguments
from core.errors import InputError
from core.evaluate import (
    DEFAULT_DEFENSES,
    find_poison_sets,
    parse_defense,
    plan_grid,
    run_grid,
    to_markdown,
    write_results,
)
from core.train import TrainConfig

D = TrainConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="train every defense on every poison set and seed; write a results table",
        description="Train each defense on each poison set and seed (finished runs are skipped, "
        "interrupted ones resumed), then write runs.csv, detection.csv, summary.csv and summary.md.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default=D.dataset, help="data set the poison sets were made for")
    p.add_argument("--poisons", required=True, help="a poison set, or a folder of them")
    p.add_argument(
        "--defenses",
        default=",".join(DEFAULT_DEFENSES),
        help="comma-separated: clean (the control), none, epic-<subset>, random-<subset>, deepknn, spectral, activation-clustering, loss",
    )
    p.add_argument("--seeds", default="0", help="comma-separated training seeds")
    add_schedule_arguments(p)
    p.add_argument("--out", required=True, help="results folder (runs go to <out>/runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for d in defenses:
        parse_defense(d)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise InputError(
            "--seeds", f"expected comma-separated integers, got {args.seeds!r}"
        ) from None
    base = TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        snapshot_every=args.snapshot_every,
        drop_after=args.drop_after,
        stop_after=args.stop_after,
        model=args.model,
        width=args.width,
    )
    out = Path(args.out)
    grid = plan_grid(find_poison_sets(args.poisons), defenses, seeds, out)
    t0 = time.perf_counter()
    run_grid(base, grid, show_progress=not args.quiet)
    summary = write_results(grid, defenses, out)
    print(to_markdown(summary), end="")
    print(f"{len(grid)} runs, {time.perf_counter() - t0:.0f} s; tables in {out}")
    return 0
