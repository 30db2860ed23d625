"""``poisonlens train``: train a model on a (poisoned) data set under a defense, into a run directory."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from core.errors import InputError
from core.models import MODEL_NAMES
from core.train import AUGMENTS, SCENARIOS, TrainConfig, train

D = TrainConfig()


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """Epochs, the snapshot/drop schedule and the network: shared by ``train`` and ``evaluate``."""
    p.add_argument("--epochs", type=int, default=D.epochs, help="training epochs")
    p.add_argument(
        "--snapshot-every",
        type=int,
        default=D.snapshot_every,
        help="epochs between gradient snapshots (EPIC's T)",
    )
    p.add_argument(
        "--drop-after",
        type=int,
        default=D.drop_after,
        help="first epoch whose snapshot may drop examples",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=D.stop_after,
        help="snapshots from this epoch on drop nothing",
    )
    p.add_argument("--model", choices=MODEL_NAMES, default=D.model, help="network")
    p.add_argument(
        "--width", type=int, default=D.width, help="channels of the small CNN's first block"
    )


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model under a defense, recording snapshots in a run directory",
        description="Train a model on a (poisoned) data set under a defense. Everything the "
        "dashboard shows is written to <runs-dir>/<name>.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--dataset",
        default=D.dataset,
        help="digits, imagefolder:<dir>, cifar10:<dir> or npz:<file>",
    )
    p.add_argument(
        "--poisons",
        default=None,
        help="poison set: a poisonlens .npz or a benchmark pickle folder (none: clean run)",
    )
    p.add_argument(
        "--defense",
        default=D.defense,
        help="defense: none, epic, random, deepknn, spectral, activation-clustering, loss",
    )
    p.add_argument(
        "--subset-size",
        type=float,
        default=None,
        help="EPIC's subset size (fraction of active examples chosen as medoids); sets the defense parameter subset_size",
    )
    p.add_argument(
        "--defense-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a defense parameter, repeatable (e.g. fraction=0.05); VALUE is read as JSON when it can be",
    )
    add_schedule_arguments(p)
    p.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=D.scenario,
        help="scratch, transfer (frozen features, new head) or finetune",
    )
    p.add_argument(
        "--pretrained",
        default=None,
        help="model.pt of an earlier run (checkpoints/model.pt), for transfer / finetune",
    )
    p.add_argument(
        "--lr", type=float, default=None, help="learning rate (default: 0.1, or 0.01 for finetune)"
    )
    p.add_argument("--batch-size", type=int, default=D.batch_size, help="training batch size")
    p.add_argument("--weight-decay", type=float, default=D.weight_decay, help="SGD weight decay")
    p.add_argument(
        "--augment",
        choices=AUGMENTS,
        default=D.augment,
        help="training augmentation (auto: crop-flip for colour, crop for grey)",
    )
    p.add_argument(
        "--clean-control",
        action="store_true",
        help="the control run: keep the poison set's target but train on the base images",
    )
    p.add_argument(
        "--embedding-dims",
        type=int,
        default=D.embedding_dims,
        help="penultimate features stored per snapshot (wider ones are randomly projected)",
    )
    p.add_argument("--runs-dir", default="runs", help="folder that holds run directories")
    p.add_argument("--name", default=None, help="run name (default: <dataset>-<defense>-<time>)")
    p.add_argument(
        "--seed",
        type=int,
        default=D.seed,
        help="seed; a CPU run with the same seed is reproducible",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue a killed run from its last checkpoint (other options are ignored)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_defense_params(pairs: list[str], subset_size: float | None) -> dict:
    params: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError("--defense-param", f"expected KEY=VALUE, got {pair!r}")
        try:
            params[key] = json.loads(value)
        except ValueError:
            params[key] = value
    if subset_size is not None:
        params["subset_size"] = subset_size
    return params


def run(args: argparse.Namespace) -> int:
    if args.resume:
        run_dir = Path(args.resume)
        train(TrainConfig(), run_dir, resume=True, show_progress=not args.quiet)
        print(run_dir)
        return 0
    config = TrainConfig(
        dataset=args.dataset,
        poisons=args.poisons,
        model=args.model,
        width=args.width,
        scenario=args.scenario,
        pretrained=args.pretrained,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        augment=args.augment,
        clean_control=args.clean_control,
        embedding_dims=args.embedding_dims,
        snapshot_every=args.snapshot_every,
        defense=args.defense,
        defense_params=parse_defense_params(args.defense_param, args.subset_size),
        drop_after=args.drop_after,
        stop_after=args.stop_after,
        seed=args.seed,
    )
    name = (
        args.name or f"{args.dataset.split(':')[0]}-{args.defense}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_dir = Path(args.runs_dir) / name
    train(config, run_dir, show_progress=not args.quiet)
    print(run_dir)
    return 0
