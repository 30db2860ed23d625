"""``poisonlens train``: train a model on a (poisoned) data set under a defense, into a run directory.

Its options are generated from :class:`poisonlens.config.TrainConfig` (``poisonlens.commands._options``);
this module adds only what is not part of a run's config: where the run goes, ``--config``,
``--resume`` and ``--quiet``. The trainer (and torch) is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from poisonlens.commands import add_command
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
def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``poisonlens train``: every TrainConfig option plus the run's place.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The CLI's subcommands, to which ``train`` is added.
    """
    p = add_command(
        sub, "train", run,
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


def finished_note(run_dir: Path) -> str | None:
    """The one line ``train --resume`` prints for a run that already finished, else None.

    Read from run.json alone (no torch): resuming a finished run trains nothing, so it says
    so and exits 0 instead of loading the model and drawing a full progress bar.

    Parameters
    ----------
    run_dir : Path
        The run given to ``--resume``.
    """
    from poisonlens import runfs
    from poisonlens.store import open_run

    run = open_run(run_dir)
    if run.status != "finished" or (run.config.get("tags") or {}).get("source") == "EpicTracker":
        return None  # a tracker's run is refused by the trainer, whatever its state
    try:
        if runfs.check_tree(run_dir) is not None:
            return None  # a damaged folder: the trainer refuses it, naming the file
        run.metrics()  # bounded and checked; a damaged table raises
    except (OSError, ValueError):  # InputError and DamagedFile are ValueErrors
        return None
    epochs = run.config.get("epochs")
    epoch = run.progress().get("epoch", epochs)
    return f"poisonlens: {run_dir}: already finished (epoch {epoch} of {epochs}); nothing to resume"


def run(args: argparse.Namespace) -> int:
    """Train (or resume) the run; print its directory.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``poisonlens train`` options.

    Returns
    -------
    int
        The exit status, 0 (errors are raised as InputError and reported by the CLI).
    """
    if args.resume:
        if (done := finished_note(args.resume)) is not None:
            print(done, file=sys.stderr)
            print(args.resume)
            return 0
        from poisonlens.train import TrainConfig, train

        # --device may move a resumed run (a GPU run resumes on a CPU); 'auto' keeps run.json's
        device = getattr(args, "device", "auto")
        train(TrainConfig(), args.resume, resume=True, show_progress=not args.quiet,
              device=None if device == "auto" else device)  # fmt: skip
        print(one_line(args.resume))
        return 0
    config = config_from_args(args)
    config.check_defense()  # before the trainer loads data and creates the run folder
    if config.exclude:  # a bad file is one line before anything loads (indices in range: later)
        from poisonlens.review import read_index_csv

        read_index_csv(config.exclude)
    from poisonlens.launch import default_name
    from poisonlens.train import train

    run_dir = args.runs_dir / (args.name or default_name(config))
    train(config, run_dir, show_progress=not args.quiet)
    print(one_line(run_dir))
    return 0
