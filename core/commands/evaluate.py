"""``poisonlens evaluate``: every defense on every poison set, seed and scenario; results tables."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from poisonlens.commands import add_command
from poisonlens.commands._options import add_config_arguments, config_file, config_from_args
from poisonlens.config import SCENARIOS, TrainConfig, parse_defense_params
from poisonlens.errors import InputError
from poisonlens.evaluate import (
    DEFAULT_DEFENSES,
    PRETRAINED_DIR,
    cell_state,
    check_cells_alike,
    ensure_pretrained,
    parse_defense,
    parse_scenarios,
    plan_grid,
    poison_sets_for,
    pretrain_cell,
    pretrained_model,
    run_grid,
    taken_params,
    write_results,
)

# What the grid sets per run: the poison set and its control, the scenario and its pretrained
# model, the defense, the victim seed. Every other TrainConfig field is an option of evaluate,
# as of train.
GRID_FIELDS = ("poisons", "clean_control", "scenario", "pretrained", "defense", "defense_params", "seed")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` subcommand and its options to ``sub``: every TrainConfig option
    but the grid's fields (:data:`GRID_FIELDS`), and the grid's own options.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``poisonlens`` parser's subcommands.
    """
    p = add_command(
        sub, "evaluate", run,
        description="Train each defense on each poison set, seed and scenario, one process per "
        "run (finished runs are skipped, killed ones resumed), then write runs.csv, "
        "detection.csv, summary.csv, paired.csv (EPIC against its random twin, cell by cell) and "
        "summary.md. For transfer and finetune a clean model is "
        "first pretrained on half of every class of the training set (cached in "
        "<out>/pretrained). --poisons may hold one subfolder per scenario. Each finished cell's "
        "numbers are kept beside its run folder (<run>.cell.json): a cell whose folder was "
        "deleted still counts as finished and keeps its rows in the tables.",
    )
    p.add_argument(
        "--config",
        type=config_file,
        metavar="FILE.json",
        help="start every run from a saved config (a run.json, or TrainConfig.to_json()); "
        "the grid sets its poison set, scenario, defense and seed",
    )
    add_config_arguments(p, exclude=GRID_FIELDS)
    p.add_argument(
        "--poisons",
        help="a poison set, or a folder of them (or of scratch/, transfer/, finetune/ subfolders)",
    )
    p.add_argument(
        "--defenses",
        default=",".join(DEFAULT_DEFENSES),
        help="comma-separated: clean (the control), {defense_specs}",
    )
    p.add_argument("--defense-param", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter (VALUE read as JSON) of every cell whose defense takes it, "
                   "e.g. pool='\"all\"' for EPIC: the authors' script's selection pool (docs/epic.md); "
                   "repeatable; a key no defense of --defenses takes is an error")
    p.add_argument("--scenarios", default="scratch", help="comma-separated: " + ", ".join(SCENARIOS))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated victim seeds")
    p.add_argument("--pretrain-seed", type=int, default=0,
                   help="seed of the one pretrained model every victim of transfer/finetune "
                        "starts from (the attacker knows it, as in the benchmark); -1: one "
                        "pretrained model per victim seed")
    p.add_argument("--pretrain-epochs", type=int, default=None,
                   help="epochs of the pretraining run (default: --epochs)")
    p.add_argument("--jobs", type=int, default=2, help="runs trained at the same time")
    p.add_argument("--pretrain-only", action="store_true",
                   help="only train the pretrained models and print their paths (to craft against)")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: write the tables from the grid's finished runs only (a "
                   "grid cut off by a deadline; resume it later without this flag)")
    p.add_argument("--out", required=True, help="results folder (runs go to <out>/runs/<scenario>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise InputError("--seeds", f"expected comma-separated integers, got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise InputError("--seeds", "need at least one seed, all >= 0")
    return seeds


def grid_defense_params(pairs: list[str], defenses: list[str]) -> dict:
    """``--defense-param`` of a grid, checked against its defenses before anything runs.

    Parameters
    ----------
    pairs : list of str
        ``KEY=VALUE`` texts.
    defenses : list of str
        The specs of ``--defenses``.

    Returns
    -------
    dict of the parameters

    Raises
    ------
    InputError
        Naming ``--defense-param``: a text that is not KEY=VALUE, a key no defense of the grid
        takes, or a value a defense refuses.
    """
    params = parse_defense_params(pairs)
    taken = {d: taken_params(d, params) for d in defenses}
    for key in params:
        if not any(key in t for t in taken.values()):
            raise InputError("--defense-param", f"{key!r}: no defense of --defenses takes it")
    for d, extra in taken.items():
        if extra:
            fields = parse_defense(d)
            replace(TrainConfig(), defense=fields["defense"],
                    defense_params={**fields["defense_params"], **extra}).check_defense()
    return params


def run(args: argparse.Namespace) -> int:
    """Train the grid of defenses, poison sets, seeds and scenarios; write the tables; return 0.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``poisonlens evaluate`` command line.
    """
    defenses = [d.strip() for d in args.defenses.split(",") if d.strip()]
    for d in defenses:
        parse_defense(d)
    params = grid_defense_params(args.defense_param, defenses)
    scenarios = parse_scenarios(args.scenarios)
    seeds = _seeds(args.seeds)
    if args.jobs < 1:
        raise InputError("--jobs", "must be at least 1")
    base = config_from_args(args)
    out = Path(args.out)
    for folder in [out / "runs", out / PRETRAINED_DIR, *(out / "runs" / s for s in scenarios)]:
        if folder.is_symlink():  # every run, record and table below it would go through it
            raise InputError(folder, "a symbolic link; refused (evaluate writes its runs there)")
    t0 = time.perf_counter()
    pretrained: dict[int, Path] = {}
    if args.finished_only and not args.pretrain_only:  # the paths only: nothing is trained
        pretrained = {s: pretrained_model(pretrain_cell(base, out, p, args.pretrain_epochs or base.epochs)[0].run_dir)
                      for s in seeds for p in [s if args.pretrain_seed < 0 else args.pretrain_seed]}
    elif args.pretrain_only or set(scenarios) - {"scratch"}:
        pre_seeds = seeds if args.pretrain_seed < 0 else [args.pretrain_seed]
        models = ensure_pretrained(
            base, out, pre_seeds, epochs=args.pretrain_epochs or base.epochs, n_jobs=args.jobs,
            show_progress=not args.quiet,
        )
        pretrained = {s: models[s if args.pretrain_seed < 0 else args.pretrain_seed] for s in seeds}
        if args.pretrain_only:
            for s, path in sorted(models.items()):
                print(f"pretrained (seed {s}): {path}")
            return 0
    if not args.poisons:
        raise InputError("--poisons", "required (unless --pretrain-only)")
    grid, sets = [], {}
    for scenario in scenarios:
        sets[scenario] = poison_sets_for(args.poisons, scenario)
        grid += plan_grid(sets[scenario], defenses, seeds, out, scenario=scenario,
                          pretrained=pretrained if scenario != "scratch" else None, defense_params=params)
    if args.finished_only:
        grid = [c for c in grid if cell_state(c.run_dir) == "finished"]
        if not grid:
            raise InputError("--out", f"no finished run of this grid under {out}")
        check_cells_alike(base, grid)
    else:
        run_grid(base, grid, n_jobs=args.jobs, show_progress=not args.quiet)
    write_results(grid, defenses, out, sets, base)
    print((out / "summary.md").read_text(encoding="utf-8"), end="")  # with the paired table
    print(f"{len(grid)} runs, {time.perf_counter() - t0:.0f} s; tables in {out}")
    return 0
