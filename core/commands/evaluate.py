"""``poisonlens evaluate``: every defense on every poison set, seed and scenario; results tables."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from poisonlens.commands.train import add_schedule_arguments
from poisonlens.config import TrainConfig  # not poisonlens.train: --help needs no torch
from poisonlens.errors import InputError
from poisonlens.evaluate import (
    DEFAULT_DEFENSES,
    ensure_pretrained,
    parse_defense,
    parse_scenarios,
    plan_grid,
    poison_sets_for,
    run_grid,
    to_markdown,
    write_results,
)

D = TrainConfig()


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand and its options to ``sub``."""
    p = sub.add_parser(
        "evaluate",
        help="train every defense on every poison set, seed and scenario; write results tables",
        description="Train each defense on each poison set, seed and scenario, one process per "
        "run (finished runs are skipped, killed ones resumed), then write runs.csv, "
        "detection.csv, summary.csv and summary.md. For transfer and finetune a clean model is "
        "first pretrained on half of every class of the training set (cached in "
        "<out>/pretrained). --poisons may hold one subfolder per scenario.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default=D.dataset, help="data set the poison sets were made for")
    p.add_argument(
        "--poisons",
        help="a poison set, or a folder of them (or of scratch/, transfer/, finetune/ subfolders)",
    )
    p.add_argument(
        "--defenses",
        default=",".join(DEFAULT_DEFENSES),
        help="comma-separated: clean (the control), none, epic-<subset>, random-<subset>, "
        "deepknn, spectral, activation-clustering, loss",
    )
    p.add_argument("--scenarios", default="scratch", help="comma-separated: scratch, transfer, finetune")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated victim seeds")
    p.add_argument("--pretrain-seed", type=int, default=0,
                   help="seed of the one pretrained model every victim of transfer/finetune "
                        "starts from (the attacker knows it, as in the benchmark); -1: one "
                        "pretrained model per victim seed")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="epochs of the pretraining run (default: --epochs)")
    p.add_argument("--lr", type=float, default=None,
                   help="victim learning rate (default: 0.1 scratch/transfer, 0.01 finetune)")
    add_schedule_arguments(p)
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--pretrain-only", action="store_true",
                   help="only train the pretrained models and print their paths (to craft against)")
    p.add_argument("--out", required=True, help="results folder (runs go to <out>/runs/<scenario>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError("--seeds", f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise InputError("--seeds", "need at least one seed, all >= 0")
    return seeds


def run(args: argparse.Namespace) -> int:
    """Train the grid of defenses, poison sets, seeds and scenarios; write the tables; return 0."""
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for d in defenses:
        parse_defense(d)
    scenarios = parse_scenarios(args.scenarios)
    seeds = _seeds(args.seeds)
    if args.jobs < 1:
        raise InputError("--jobs", "must be at least 1")
    base = TrainConfig(
        dataset=args.dataset,
        epochs=args.epochs,
        snapshot_every=args.snapshot_every,
        drop_after=args.drop_after,
        stop_after=args.stop_after,
        model=args.model,
        width=args.width,
        lr=args.lr,
    )
    base.validate()
    out = Path(args.out)
    t0 = time.perf_counter()
    pretrained: dict[int, Path] = {}
    if args.pretrain_only or set(scenarios) - {"scratch"}:
        pre_seeds = seeds if args.pretrain_seed < 0 else [args.pretrain_seed]
        models = ensure_pretrained(
            base, out, pre_seeds, epochs=args.pretrain_epochs or args.epochs, n_jobs=args.jobs,
            show_progress=not args.quiet,
        )
        pretrained = {s: models[s if args.pretrain_seed < 0 else args.pretrain_seed] for s in seeds}
        if args.pretrain_only:
            for s, path in sorted(models.items()):
                print(f"pretrained (seed {s}): {path}")
            return 0
    if not args.poisons:
        raise InputError("--poisons", "required (unless --pretrain-only)")
    grid = []
    for scenario in scenarios:
        sets = poison_sets_for(args.poisons, scenario)
        grid += plan_grid(sets, defenses, seeds, out, scenario=scenario,
                          pretrained=pretrained if scenario != "scratch" else None)
    run_grid(base, grid, n_jobs=args.jobs, show_progress=not args.quiet)
    summary = write_results(grid, defenses, out)
    print(to_markdown(summary), end="")
    print(f"{len(grid)} runs, {time.perf_counter() - t0:.0f} s; tables in {out}")
    return 0
