"""Start ``poisonlens train`` as a detached background process, and follow it.

The dashboard's *New run* page calls :func:`launch_training`: it checks every parameter first
(so a bad one is a clear message, not a dead process), writes ``launch.json`` and
``train.log`` into the new run directory, and starts ``python -m core.launch <run_dir>`` in its
own session, so that training survives page reloads, closed browsers and a restarted
dashboard. That child runs exactly the ``poisonlens train`` command recorded in
``launch.json`` and then precomputes the run's gradient map (``poisonlens project``).

:func:`launch_status` reads how a launched run stands from the run store, falling back to
the log when the process died before the run store existed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, fields
from pathlib import Path

from core.errors import InputError
from core.store import RUN_JSON, RunWriter, _alive, atomic_write_json, open_run
from core.train import TrainConfig

LAUNCH_JSON = "launch.json"
LOG = "train.log"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
DATASET_KINDS = ("digits", "imagefolder", "cifar10", "npz")

# TrainConfig fields and the `poisonlens train` options that set them.
_OPTIONS = {
    "dataset": "--dataset",
    "poisons": "--poisons",
    "model": "--model",
    "width": "--width",
    "scenario": "--scenario",
    "pretrained": "--pretrained",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "weight_decay": "--weight-decay",
    "augment": "--augment",
    "snapshot_every": "--snapshot-every",
    "defense": "--defense",
    "drop_after": "--drop-after",
    "stop_after": "--stop-after",
    "seed": "--seed",
}
_NO_OPTION = ("momentum", "nesterov", "lr_milestones", "lr_gamma", "snapshot_batch_size")

# live child processes started by this process, so that finished ones are reaped (no zombies)
_CHILDREN: dict[int, subprocess.Popen] = {}


@dataclass(frozen=True)
class LaunchStatus:
    """How a launched run stands.

    Attributes
    ----------
    state : {'starting', 'running', 'mapping', 'finished', 'failed', 'interrupted'}
        'starting': the process runs but has not created the run store yet;
        'mapping': training finished, the gradient map is being computed
    epoch, epochs : the epoch in progress and the run's last epoch (None before the first)
    phase : what the trainer is doing ('train', 'evaluate', 'snapshot', 'projection', ...)
    error : one line, for a failed run
    log_tail : the last lines of train.log
    """

    run_dir: Path
    name: str
    state: str
    pid: int | None
    started: float
    command: str
    epoch: int | None = None
    epochs: int | None = None
    phase: str | None = None
    error: str | None = None
    log_tail: str = ""

    @property
    def done(self) -> bool:
        return self.state in ("finished", "failed", "interrupted")


# --- checking ------------------------------------------------------------------------------


def default_name(config: TrainConfig) -> str:
    return f"{config.dataset.split(':')[0]}-{config.defense}-{time.strftime('%Y%m%d-%H%M%S')}"


def train_argv(config: TrainConfig, *, runs_dir: str | Path, name: str) -> list[str]:
    """The ``poisonlens train`` arguments that reproduce ``config`` (without the program name)."""
    default = TrainConfig()
    for field in _NO_OPTION:
        if getattr(config, field) != getattr(default, field):
            raise InputError(
                "launch", f"{field} has no `poisonlens train` option; keep its default"
            )
    argv = ["train"]
    for field, option in _OPTIONS.items():
        value = getattr(config, field)
        if value is None:
            continue
        if field in ("dataset", "defense") or value != getattr(default, field):
            argv += [option, str(value)]
    for key, value in config.defense_params.items():
        argv += ["--defense-param", f"{key}={json.dumps(value)}"]
    return argv + ["--runs-dir", str(runs_dir), "--name", name, "--quiet"]


def _absolute_spec(spec: str) -> str:
    """A data set spec with its path made absolute (the child may run elsewhere)."""
    kind, sep, arg = spec.partition(":")
    return f"{kind}:{Path(arg).expanduser().resolve()}" if sep and arg else spec


def check_launch(
    config: TrainConfig, *, runs_dir: str | Path, name: str | None = None
) -> tuple[TrainConfig, Path]:
    """Check everything that can be checked before training starts.

    Returns the config with its paths made absolute and the run directory to create.
    Raises :class:`InputError` with a one-line message naming the bad parameter.
    """
    name = name or default_name(config)
    if not NAME_PATTERN.match(name):
        raise InputError(
            "run name",
            f"{name!r}: use letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit",
        )
    runs_dir = Path(runs_dir).expanduser().resolve()
    run_dir = runs_dir / name
    if run_dir.exists():
        raise InputError(run_dir, "a run with this name already exists; choose another name")
    # data set
    kind, sep, arg = config.dataset.partition(":")
    if kind not in DATASET_KINDS or (kind == "digits") == bool(sep and arg):
        raise InputError(
            config.dataset,
            "unknown data set; use digits, imagefolder:<dir>, cifar10:<dir> or npz:<file>",
        )
    if arg and not Path(arg).expanduser().exists():
        raise InputError(arg, "data set path not found")
    poisons = str(Path(config.poisons).expanduser().resolve()) if config.poisons else None
    pretrained = str(Path(config.pretrained).expanduser().resolve()) if config.pretrained else None
    config = TrainConfig(
        **{
            **{f.name: getattr(config, f.name) for f in fields(TrainConfig)},
            "dataset": _absolute_spec(config.dataset),
            "poisons": poisons,
            "pretrained": pretrained,
        }
    )
    config.validate()
    # defense and its parameters
    from core.defense import build_defense, defense_names

    if config.defense not in defense_names():
        raise InputError(
            "defense",
            f"unknown defense {config.defense!r}; choose from {', '.join(defense_names())}",
        )
    try:
        build_defense(config.defense, **config.defense_params)
    except TypeError as err:
        raise InputError(f"defense {config.defense}", f"bad parameter ({err})") from err
    except ValueError as err:  # InputError is a ValueError
        raise InputError(f"defense {config.defense}", str(err)) from err
    # poison set: readable and fitting the data set (the data set is loaded only when cheap)
    if poisons:
        if not Path(poisons).exists():
            raise InputError(poisons, "poison set not found")
        from core.data import load_dataset, load_poisons
        from core.data.poisons import validate_poisons

        poison_set = load_poisons(poisons)
        if kind in ("digits", "npz"):
            validate_poisons(poison_set, load_dataset(config.dataset), poisons)
    train_argv(config, runs_dir=runs_dir, name=name)  # raises for fields the CLI cannot set
    return config, run_dir


# --- starting ------------------------------------------------------------------------------


def launch_training(
    config: TrainConfig,
    *,
    runs_dir: str | Path,
    name: str | None = None,
    projection: str | None = "umap",
) -> Path:
    """Check ``config``, then start training in a detached background process.

    Parameters
    ----------
    config : the run's configuration
    runs_dir : folder the run directory is created in
    name : run name (default: <dataset>-<defense>-<time>)
    projection : {'umap', 'pca', None}; the gradient map computed once training finished

    Returns
    -------
    the run directory (it holds launch.json and train.log at once; run.json follows when the
    trainer has loaded the data)
    """
    config, run_dir = check_launch(config, runs_dir=runs_dir, name=name)
    argv = train_argv(config, runs_dir=run_dir.parent, name=run_dir.name)
    run_dir.mkdir(parents=True)
    log = open(run_dir / LOG, "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "core.launch", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
    finally:
        log.close()
    _CHILDREN[child.pid] = child
    atomic_write_json(
        run_dir / LAUNCH_JSON,
        {
            "argv": argv,
            "command": "poisonlens " + shlex.join(argv),
            "pid": child.pid,
            "started": time.time(),
            "projection": projection,
        },
    )
    return run_dir


def _child_main(run_dir: str) -> int:
    """The background process: train as recorded in launch.json, then compute the map."""
    from core.cli import main

    run_dir_path = Path(run_dir)
    for _ in range(100):  # the launcher writes launch.json just after starting us
        if (run_dir_path / LAUNCH_JSON).is_file():
            break
        time.sleep(0.05)
    launch = json.loads((run_dir_path / LAUNCH_JSON).read_text())
    print("$", launch["command"], flush=True)
    rc = main(launch["argv"])
    if rc == 0 and launch.get("projection"):
        run = open_run(run_dir_path)
        epochs = run.config.get("epochs")
        RunWriter(run_dir_path).write_progress(epoch=epochs, epochs=epochs, phase="projection")
        rc = main(["project", "--run", str(run_dir_path), "--method", launch["projection"]])
        RunWriter(run_dir_path).write_progress(epoch=epochs, epochs=epochs, phase="done")
    return rc


# --- following -----------------------------------------------------------------------------


def _reap() -> None:
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def _tail(path: Path, n_lines: int = 12, max_bytes: int = 16_384) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(lines[-n_lines:])


def launch_status(run_dir: str | Path) -> LaunchStatus:
    """How a run started by :func:`launch_training` stands, read from its files."""
    _reap()
    run_dir = Path(run_dir)
    try:
        launch = json.loads((run_dir / LAUNCH_JSON).read_text())
    except (FileNotFoundError, ValueError):
        launch = {}
    pid = launch.get("pid")
    alive = bool(pid) and _alive(pid) and (pid not in _CHILDREN or _CHILDREN[pid].poll() is None)
    tail = _tail(run_dir / LOG)
    base = dict(
        run_dir=run_dir,
        name=run_dir.name,
        pid=pid,
        started=float(launch.get("started", 0.0)),
        command=launch.get("command", ""),
        log_tail=tail,
    )
    if not (run_dir / RUN_JSON).is_file():
        if alive:
            return LaunchStatus(state="starting", **base)
        last = (
            tail.splitlines()[-1] if tail else "the training process exited before creating the run"
        )
        return LaunchStatus(state="failed", error=last, **base)
    try:
        run = open_run(run_dir)
        meta, progress = run.meta, run.progress()
    except (InputError, KeyError, ValueError) as err:
        return LaunchStatus(state="failed", error=str(err), **base)
    state = meta.get("status", "running")
    if state == "running" and not alive:
        state = "interrupted"
    elif state == "finished" and alive and progress.get("phase") == "projection":
        state = "mapping"
    return LaunchStatus(
        state=state,
        epoch=progress.get("epoch"),
        epochs=meta.get("config", {}).get("epochs"),
        phase=progress.get("phase"),
        error=meta.get("error"),
        **base,
    )


def list_launches(runs_dir: str | Path) -> list[LaunchStatus]:
    """Every launched run in ``runs_dir``, newest first."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [launch_status(p) for p in runs_dir.iterdir() if (p / LAUNCH_JSON).is_file()]
    return sorted(found, key=lambda s: s.started, reverse=True)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1]))
