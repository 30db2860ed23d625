"""``poisonlens train``: train a model on a (poisoned) data set under a defense, into a run directory.

Its options are generated from :class:`poisonlens.config.TrainConfig` (``poisonlens.commands._options``);
this module adds only what is not part of a run's config: where the run goes, ``--config``,
``--resume`` and ``--quiet``. The trainer (and torch) is imported when the command runs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from poisonlens.commands._options import (
    add_config_arguments,
    config_file,
    config_from_args,
    existing_folder,
    folder,
    plain_name,
)
from poisonlens.errors import one_line

# The network and schedule options `poisonlens evaluate` shares with `train`.
SCHEDULE_FIELDS = ("model", "width", "epochs", "snapshot_every", "drop_after", "stop_after")


def add_schedule_arguments(p: argparse.ArgumentParser) -> None:
    """Epochs, the snapshot/drop schedule and the network: shared by ``train`` and ``evaluate``.

    Unlike :func:`add_config_arguments`, the parsed namespace holds every one of them (the
    default when not given), as ``evaluate``'s ``run`` reads them as attributes.
    """
    from poisonlens.config import TrainConfig

    add_config_arguments(p, include=SCHEDULE_FIELDS)
    p.set_defaults(**{name: getattr(TrainConfig(), name) for name in SCHEDULE_FIELDS})


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``poisonlens train``: every TrainConfig option plus the run's place."""
    p = sub.add_parser(
        "train",
        help="train a model under a defense, recording snapshots in a run directory",
        description="Train a model on a (poisoned) data set under a defense. Everything the "
        "dashboard shows is written to <runs-dir>/<name>. Options given on the command line "
        "override those of --config.",
    )
    p.add_argument(
        "--config",
        type=config_file,
        metavar="FILE.json",
        help="start from a saved config (the 'config' object of a run.json, or launch.json's)",
    )
    add_config_arguments(p)
    p.add_argument(
        "--runs-dir",
        type=folder,
        default=Path("runs"),
        help="folder that holds run directories (default: runs)",
    )
    p.add_argument(
        "--name",
        type=plain_name,
        help="run name, a plain file name (default: <dataset>-<defense>-<time>)",
    )
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        type=existing_folder,
        help="continue a killed run from its last checkpoint (other options are ignored)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the run; print its directory."""
    if args.resume:
        from poisonlens.train import TrainConfig, train

        # --device may move a resumed run (a GPU run resumes on a CPU); 'auto' keeps run.json's
        device = getattr(args, "device", "auto")
        train(TrainConfig(), args.resume, resume=True, show_progress=not args.quiet,
              device=None if device == "auto" else device)  # fmt: skip
        print(one_line(args.resume))
        return 0
    config = config_from_args(args)
    config.check_defense()  # before the trainer loads data and creates the run folder
    from poisonlens.launch import default_name
    from poisonlens.train import train

    run_dir = args.runs_dir / (args.name or default_name(config))
    train(config, run_dir, show_progress=not args.quiet)
    print(one_line(run_dir))
    return 0
