"""Start ``poisonlens train`` as a detached background process, and follow it.

The dashboard's *New run* page calls :func:`launch_training`: it checks every parameter first
(so a bad one is a clear message, not a dead process), writes ``launch.json`` and
``train.log`` into the new run directory, and starts ``python -m poisonlens.launch <run_dir>`` in its
own session, so that training survives page reloads, closed browsers and a restarted
dashboard. ``launch.json`` carries the checked config as JSON (``TrainConfig.to_json``, every
field, nothing rebuilt as an argv); the child trains from it and then precomputes the run's
gradient map (``poisonlens project``).

:func:`launch_status` reads how a launched run stands from the run store, falling back to
the log when the process died before the run store existed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from poisonlens.config import TrainConfig, check_dataset_spec
from poisonlens.errors import InputError
from poisonlens.store import RUN_JSON, RunWriter, _alive, atomic_write_json, open_run

LAUNCH_JSON = "launch.json"
LOG = "train.log"
CONFIG_LINE = "config: "  # train.log's line with the child's config as JSON
# A run name is a plain file name: never '.', '..', a path or absolute, so a run stays inside
# its runs folder. The one definition, used by the CLI's --name and the New run page.
NAME_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")  # strict with .match too
NAME_RULE = "use letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit"
MAP_PROGRESS = re.compile(r"\[\s*(\d{1,3})%\]\s*(.*)")  # `poisonlens project`'s progress lines

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
    map_fraction, map_message : the gradient map's progress while state is 'mapping'
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
    map_fraction: float | None = None
    map_message: str | None = None

    @property
    def done(self) -> bool:
        """True once nothing more will happen (finished, failed or interrupted)."""
        return self.state in ("finished", "failed", "interrupted")


# --- checking ------------------------------------------------------------------------------


def default_name(config: TrainConfig) -> str:
    """``<dataset kind>-<defense>-<time>``, e.g. ``digits-epic-20260101-120000``."""
    return f"{config.dataset.split(':')[0]}-{config.defense}-{time.strftime('%Y%m%d-%H%M%S')}"


def check_run_name(name: str) -> str:
    """Return ``name`` when it is a plain file name (``NAME_PATTERN``), else raise InputError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InputError("--name", f"{name!r} is not a plain run name: {NAME_RULE}")
    return name


def display_command(config: TrainConfig, *, runs_dir: str | Path, name: str) -> str:
    """A ``poisonlens train`` command that reproduces ``config`` (shown to the user; the child
    itself reads the JSON). Fields without an option (``tags``) are left out of it."""
    from poisonlens.commands._options import config_to_argv

    argv = ["train", *config_to_argv(replace(config, tags={}))]
    return "poisonlens " + shlex.join(argv + ["--runs-dir", str(runs_dir), "--name", name])


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
    name = check_run_name(name or default_name(config))
    runs_dir = Path(runs_dir).expanduser().resolve()
    run_dir = runs_dir / name
    if run_dir.exists():
        raise InputError(run_dir, "a run with this name already exists; choose another name")
    # data set
    check_dataset_spec(config.dataset)
    kind, sep, arg = config.dataset.partition(":")
    if arg and not Path(arg).expanduser().exists():
        raise InputError(arg, "data set path not found")
    poisons = str(Path(config.poisons).expanduser().resolve()) if config.poisons else None
    pretrained = str(Path(config.pretrained).expanduser().resolve()) if config.pretrained else None
    config = replace(
        config, dataset=_absolute_spec(config.dataset), poisons=poisons, pretrained=pretrained
    )
    config.validate()
    config.check_defense()
    # poison set: readable and fitting the data set
    if poisons:
        if not Path(poisons).exists():
            raise InputError(poisons, "poison set not found")
        from poisonlens.data import load_dataset, load_poisons
        from poisonlens.data.poisons import validate_poisons

        poison_set = load_poisons(poisons)
        # every kind, as `poisonlens train` does before training: a CIFAR-10 run with the digits
        # poison set used to start and then fail in the background. An image folder is decoded
        # once here and cached (poisonlens.data.cache), so the child's own load is quick.
        validate_poisons(poison_set, load_dataset(config.dataset), source=poisons)
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
    command = display_command(config, runs_dir=run_dir.parent, name=run_dir.name)
    run_dir.mkdir(parents=True)
    child = _start_child(run_dir)
    atomic_write_json(
        run_dir / LAUNCH_JSON,
        {
            "config": config.to_json(),
            "command": command,
            "pid": child.pid,
            "started": time.time(),
            "projection": projection,
        },
    )
    return run_dir


def _start_child(run_dir: Path, *extra: str) -> subprocess.Popen:
    """``python -m poisonlens.launch RUN_DIR [--resume]`` in its own session (so its process group
    is its pid, what :func:`stop_run` signals), appending to train.log."""
    log = open(run_dir / LOG, "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "poisonlens.launch", str(run_dir), *extra],
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
    return child


# --- stopping and resuming -----------------------------------------------------------------


def _is_our_child(pid: int, run_dir: Path) -> bool:
    """Whether ``pid`` is a live ``poisonlens.launch`` process of ``run_dir`` leading its own
    process group. launch.json is a file in the run folder, so its pid is checked, never trusted:
    a child of this process, or (after a dashboard restart) one whose command line says so."""
    if pid in _CHILDREN:
        return _CHILDREN[pid].poll() is None
    try:
        if os.getpgid(pid) != pid:
            return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read(65_536).split(b"\0")
    except (OSError, ValueError, OverflowError):
        return False
    return b"poisonlens.launch" in argv and os.fsencode(str(run_dir)) in argv


def stop_run(run_dir: str | Path) -> None:
    """Stop a run started by :func:`launch_training` (or :func:`resume_launch`): SIGTERM to the
    process group it started, so training and a map being computed end together.

    The run is then ``interrupted``: its last checkpoint stays, and :func:`resume_launch`
    continues it. Raises :class:`InputError` when the run is not going or not ours to stop.
    """
    run_dir = Path(run_dir)
    status = launch_status(run_dir)
    if status.done:
        raise InputError(run_dir, f"not running ({status.state}); nothing to stop")
    pid = status.pid
    if not isinstance(pid, int) or pid <= 1 or not _is_our_child(pid, run_dir):
        raise InputError(run_dir / LAUNCH_JSON, "its process is not one this dashboard started")
    os.killpg(pid, signal.SIGTERM)
    if pid in _CHILDREN:  # reap it, so that launch_status sees it gone at once
        try:
            _CHILDREN[pid].wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(pid, signal.SIGKILL)
            _CHILDREN[pid].wait(timeout=10)
        _reap()


def resume_launch(run_dir: str | Path) -> Path:
    """Continue an interrupted launched run in the background, as ``poisonlens train --resume``
    does (then its gradient map, as at launch). Returns ``run_dir``.

    Raises :class:`InputError` unless the run is ``interrupted`` (stopped, killed, or its
    machine restarted): a finished run has nothing to resume, a failed one fails again.
    """
    run_dir = Path(run_dir)
    status = launch_status(run_dir)
    if status.state != "interrupted":
        raise InputError(run_dir, f"cannot resume a run that is {status.state}")
    launch = json.loads((run_dir / LAUNCH_JSON).read_text())
    child = _start_child(run_dir, "--resume")
    command = "poisonlens " + shlex.join(["train", "--resume", str(run_dir)])
    atomic_write_json(
        run_dir / LAUNCH_JSON,
        {**launch, "command": command, "pid": child.pid, "started": time.time()},
    )
    return run_dir


def _child_main(run_dir: str, resume: bool = False) -> int:
    """The background process: train from launch.json's config (with ``resume``, continue the
    run from its last checkpoint, as ``poisonlens train --resume``), then compute the map.

    Errors are printed as one line to train.log (which launch_status shows), as the CLI would.
    """
    from poisonlens.cli import guarded, main

    run_dir_path = Path(run_dir)
    for _ in range(100):  # the launcher writes launch.json just after starting us
        if (run_dir_path / LAUNCH_JSON).is_file():
            break
        time.sleep(0.05)
    launch = json.loads((run_dir_path / LAUNCH_JSON).read_text())
    print("$", launch["command"], flush=True)

    def train_it() -> int:
        if resume:
            return main(["train", "--quiet", "--resume", str(run_dir_path)])
        config = TrainConfig.from_json(launch["config"])
        # the config exactly as this process trains it (tests compare it with the launched one)
        print(CONFIG_LINE + json.dumps(config.to_json(), sort_keys=True), flush=True)
        from poisonlens.train import train

        train(config, run_dir_path, show_progress=False)
        return 0

    rc = guarded(train_it)
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


def _map_progress(tail: str) -> dict:
    """The last ``[ 40%] message`` line `poisonlens project` printed, as fraction and message."""
    for line in reversed(tail.splitlines()):
        found = MAP_PROGRESS.search(line)
        if found:
            return {"map_fraction": min(int(found[1]), 100) / 100, "map_message": found[2]}
    return {"map_fraction": 0.0, "map_message": "starting"}


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
    if state == "mapping":
        base.update(_map_progress(tail))
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
    sys.exit(_child_main(sys.argv[1], resume=sys.argv[2:] == ["--resume"]))
