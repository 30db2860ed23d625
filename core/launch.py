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

from poisonlens import runfs
from poisonlens.config import TrainConfig, check_dataset_spec, config_to_argv
from poisonlens.errors import InputError
from poisonlens.exits import guarded
from poisonlens.run_names import check_run_name, default_name
from poisonlens.store import RUN_JSON, RunWriter, atomic_write_json, open_run, pid_alive, read_json

LAUNCH_JSON = "launch.json"
LOG = "train.log"
CONFIG_LINE = "config: "  # train.log's line with the child's config as JSON
MAP_PROGRESS = re.compile(r"\[\s*(\d{1,3})%\]\s*(.*)")  # `poisonlens project`'s progress lines
REPO = Path(__file__).resolve().parents[1]
# What the New run page may start (the page is a web form: whoever reaches it starts processes).
MAX_RUNNING_ENV = "POISONLENS_MAX_TRAININGS"  # trainings at once from the page; default 1
MAX_EPOCHS_ENV = "POISONLENS_FORM_MAX_EPOCHS"  # epochs one launched run may train; default 1000
DATA_ROOTS_ENV = "POISONLENS_DATA_ROOTS"  # extra folders data and poison paths may lie in
STATE_DIR_ENV = "POISONLENS_STATE_DIR"  # where the record of launched runs is kept
DEFAULT_MAX_EPOCHS = 1000
LEDGER = "launches.json"
MAX_LOG_TAIL = 16_384

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


def display_command(config: TrainConfig, *, runs_dir: str | Path, name: str) -> str:
    """A ``poisonlens train`` command that reproduces ``config`` (shown to the user; the child
    itself reads the JSON). Fields without an option (``tags``) are left out of it.

    Parameters
    ----------
    config : TrainConfig
        The checked config of the run.
    runs_dir : str or path
        The folder the run is in.
    name : str
        The run's name.
    """
    argv = ["train", *config_to_argv(replace(config, tags={}))]
    return "poisonlens " + shlex.join(argv + ["--runs-dir", str(runs_dir), "--name", name])


def _absolute_spec(spec: str) -> str:
    """A data set spec with its path made absolute (the child may run elsewhere)."""
    kind, sep, arg = spec.partition(":")
    return f"{kind}:{Path(arg).expanduser().resolve()}" if sep and arg else spec


def data_roots(runs_dir: str | Path) -> list[Path]:
    """The folders a launched run's data set, poison set and weights may lie in: the runs
    folder's parent, the bundled ``sample_data/``, and the folders in ``POISONLENS_DATA_ROOTS``
    (separated by ``os.pathsep``).

    Parameters
    ----------
    runs_dir : str or path
        The folder new runs are created in.
    """
    extra = [Path(p).expanduser() for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p]
    roots = [Path(runs_dir).expanduser().resolve().parent, REPO / "sample_data", *extra]
    return [r.resolve() for r in roots]


def max_epochs() -> int:
    """The most epochs a run started from the page may train (``POISONLENS_FORM_MAX_EPOCHS``)."""
    try:
        return max(1, int(os.environ.get(MAX_EPOCHS_ENV, DEFAULT_MAX_EPOCHS)))
    except ValueError:
        return DEFAULT_MAX_EPOCHS


def max_running() -> int:
    """How many trainings the page may run at once (``POISONLENS_MAX_TRAININGS``, default 1)."""
    try:
        return max(1, int(os.environ.get(MAX_RUNNING_ENV, 1)))
    except ValueError:
        return 1


def _check_under_roots(path: str, what: str, roots: list[Path]) -> None:
    real = Path(path).expanduser().resolve()
    if not any(real == r or r in real.parents for r in roots):
        raise InputError(
            path,
            f"{what} outside the folders this page may read ({', '.join(map(str, roots))}); "
            f"add a folder with {DATA_ROOTS_ENV}",
        )


def check_launch(
    config: TrainConfig, *, runs_dir: str | Path, name: str | None = None
) -> tuple[TrainConfig, Path]:
    """Check everything that can be checked before training starts.

    Besides the config itself: at most :func:`max_epochs` epochs, and every data set, poison
    set and weights path under :func:`data_roots`.

    Returns the config with its paths made absolute and the run directory to create.
    Raises :class:`InputError` with a one-line message naming the bad parameter.

    Parameters
    ----------
    config : TrainConfig
        The run's options, as the form built them.
    runs_dir : str or path
        The folder the run directory is created in.
    name : str, optional
        The run's name (default: ``<dataset>-<defense>-<time>``).
    """
    name = check_run_name(name or default_name(config))
    runs_dir = Path(runs_dir).expanduser().resolve()
    run_dir = runs_dir / name
    if os.path.lexists(run_dir):
        raise InputError(run_dir, "a run with this name already exists; choose another name")
    if config.epochs > max_epochs():
        raise InputError("--epochs", f"{config.epochs} is more than the {max_epochs()} a run started "
                         f"here may train (set {MAX_EPOCHS_ENV} to change)")
    roots = data_roots(runs_dir)
    data_arg = config.dataset.partition(":")[2]
    for path, what in ((data_arg, "data set"), (config.poisons, "poison set"),
                       (config.pretrained, "weights file")):
        if path:
            _check_under_roots(path, what, roots)
    # data set
    check_dataset_spec(config.dataset)
    kind, sep, arg = config.dataset.partition(":")
    if arg and not Path(arg).expanduser().exists():
        raise InputError(arg, "data set path not found")
    poisons = str(Path(config.poisons).expanduser().resolve()) if config.poisons else None
    pretrained = str(Path(config.pretrained).expanduser().resolve()) if config.pretrained else None
    exclude = str(Path(config.exclude).expanduser().resolve()) if config.exclude else None
    config = replace(
        config,
        dataset=_absolute_spec(config.dataset),
        poisons=poisons,
        pretrained=pretrained,
        exclude=exclude,
    )
    config.validate()
    config.check_defense()
    _check_inputs(config)
    return config, run_dir


def _check_inputs(config: TrainConfig) -> None:
    """The exclusion list's form, and the poison set: readable and fitting the data set."""
    if config.exclude:  # the file's form here; its indices against the data set at training
        from poisonlens.review import read_index_csv

        read_index_csv(config.exclude)
    if config.poisons:
        if not Path(config.poisons).exists():
            raise InputError(config.poisons, "poison set not found")
        from poisonlens.data import load_dataset, load_poisons
        from poisonlens.data.poisons import validate_poisons

        poison_set = load_poisons(config.poisons)
        # every kind, as `poisonlens train` does before training: a CIFAR-10 run with the digits
        # poison set used to start and then fail in the background. An image folder is decoded
        # once here and cached (poisonlens.data.cache), so the child's own load is quick.
        validate_poisons(poison_set, load_dataset(config.dataset), source=config.poisons)


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
    running = [s for s in list_launches(runs_dir) if not s.done]
    if len(running) >= max_running():
        raise InputError(
            running[0].name,
            f"is still training; this page runs {max_running()} training(s) at a time "
            f"(wait for it, or set {MAX_RUNNING_ENV})",
        )
    config, run_dir = check_launch(config, runs_dir=runs_dir, name=name)
    command = display_command(config, runs_dir=run_dir.parent, name=run_dir.name)
    run_dir.mkdir(parents=True)
    _record_launch(run_dir)
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
        root=run_dir,
    )
    return run_dir


# --- the record of launched runs -------------------------------------------------------------
#
# The page shows a launched run's command and log; it must never show files it did not create
# (a copied run folder may carry a launch.json and a train.log of its own). So each launch is
# recorded outside the runs folder, in a 0700 folder of the user, with the run folder's device
# and inode: a folder copied, untarred or swapped in later is not a launch of this page.


def _state_dir() -> Path:
    base = os.environ.get(STATE_DIR_ENV) or os.path.join(
        os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state"), "poisonlens"
    )
    return Path(base)


def _read_ledger() -> dict:
    try:
        obj = read_json(_state_dir() / LEDGER, max_bytes=16 << 20)
    except (FileNotFoundError, InputError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _record_launch(run_dir: Path) -> None:
    folder = _state_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    info = os.lstat(run_dir)
    ledger = _read_ledger()
    ledger[str(run_dir)] = {"dev": info.st_dev, "ino": info.st_ino}
    if len(ledger) > 10_000:  # the oldest launches go first
        ledger = dict(list(ledger.items())[-10_000:])
    atomic_write_json(folder / LEDGER, ledger, root=folder)
    os.chmod(folder / LEDGER, 0o600)


def launched_here(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` is a folder this page created (recorded by :func:`launch_training`).

    Parameters
    ----------
    run_dir : str or path
        A run folder.
    """
    entry = _read_ledger().get(str(Path(run_dir).expanduser().resolve().parent / Path(run_dir).name))
    if not isinstance(entry, dict):
        return False
    try:
        info = os.lstat(run_dir)
    except OSError:
        return False
    return entry.get("dev") == info.st_dev and entry.get("ino") == info.st_ino


def _start_child(run_dir: Path, *extra: str) -> subprocess.Popen:
    """``python -m poisonlens.launch RUN_DIR [--resume]`` in its own session (so its process group
    is its pid, what :func:`stop_run` signals), appending to train.log."""
    log = runfs.open_append(run_dir, (LOG,))  # handed to the child; never through a link
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
        os.close(log)
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

    Parameters
    ----------
    run_dir : str or path
        A run folder this dashboard launched.
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

    Parameters
    ----------
    run_dir : str or path
        An interrupted run folder this dashboard launched.
    """
    run_dir = Path(run_dir)
    status = launch_status(run_dir)
    if status.state != "interrupted":
        raise InputError(run_dir, f"cannot resume a run that is {status.state}")
    if not launched_here(run_dir):
        raise InputError(run_dir, "not a run this dashboard started; resume it with poisonlens train --resume")
    launch = read_json(run_dir / LAUNCH_JSON, root=run_dir)
    child = _start_child(run_dir, "--resume")
    command = "poisonlens " + shlex.join(["train", "--resume", str(run_dir)])
    atomic_write_json(
        run_dir / LAUNCH_JSON,
        {**launch, "command": command, "pid": child.pid, "started": time.time()},
    )
    return run_dir


def _train_step(run_dir: Path, launch: dict, resume: bool) -> int:
    """Train the launched run (or continue it, as ``poisonlens train --resume`` does)."""
    from poisonlens.train import train

    if resume:
        train(TrainConfig(), run_dir, resume=True, show_progress=False)
        return 0
    config = TrainConfig.from_json(launch["config"])
    # the config exactly as this process trains it (tests compare it with the launched one)
    print(CONFIG_LINE + json.dumps(config.to_json(), sort_keys=True), flush=True)
    train(config, run_dir, show_progress=False)
    return 0


def _map_step(run_dir: Path, method: str) -> int:
    """Compute the run's gradient map, printing ``[ 40%] message`` lines (read by
    :func:`launch_status`) and writing the map's job file (read by the Gradient space page)."""
    from poisonlens.projection import compute_projection, write_job

    started = time.time()

    def progress(fraction: float, message: str) -> None:
        write_job(run_dir, method, state="running", fraction=round(fraction, 3),
                  message=message, pid=os.getpid(), started=started)  # fmt: skip
        print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    frame = compute_projection(run_dir, method=method, progress=progress)
    print(f"{frame['epoch'].nunique()} snapshots, {len(frame):,} points -> {method} map")
    return 0


def _child_main(run_dir: str, resume: bool = False) -> int:
    """The background process: train from launch.json's config (with ``resume``, continue the
    run from its last checkpoint, as ``poisonlens train --resume``), then compute the map.

    Errors are printed as one line to train.log (which launch_status shows), as the CLI would.
    Training and the map are called in core directly, never through the command line layer.
    """
    run_dir_path = Path(run_dir)
    for _ in range(100):  # the launcher writes launch.json just after starting us
        if runfs.exists(run_dir_path, LAUNCH_JSON):
            break
        time.sleep(0.05)
    launch = read_json(run_dir_path / LAUNCH_JSON, root=run_dir_path)
    print("$", launch["command"], flush=True)
    rc = guarded(lambda: _train_step(run_dir_path, launch, resume))
    if rc == 0 and launch.get("projection"):
        run = open_run(run_dir_path)
        epochs = run.config.get("epochs")
        RunWriter(run_dir_path).write_progress(epoch=epochs, epochs=epochs, phase="projection")
        rc = guarded(lambda: _map_step(run_dir_path, launch["projection"]))
        RunWriter(run_dir_path).write_progress(epoch=epochs, epochs=epochs, phase="done")
    return rc


# --- following -----------------------------------------------------------------------------


def _reap() -> None:
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


def _tail(run_dir: Path, n_lines: int = 12, max_bytes: int = MAX_LOG_TAIL) -> str:
    """The last lines of the run's train.log, read through :mod:`poisonlens.runfs` (a link or
    FIFO as the log, or as a folder above it, is refused and its reason shown instead)."""
    try:
        text = runfs.tail_bytes(run_dir, LOG, max_bytes=max_bytes).decode(errors="replace")
    except runfs.RunFileError as err:
        return "" if err.missing else f"({err})"
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
    """How a run started by :func:`launch_training` stands, read from its files.

    Parameters
    ----------
    run_dir : str or path
        A run folder (its launch.json, train.log and run store are read).
    """
    _reap()
    run_dir = Path(run_dir)
    try:
        launch = read_json(run_dir / LAUNCH_JSON, root=run_dir)
    except (FileNotFoundError, ValueError):  # InputError is a ValueError
        launch = {}
    pid = launch.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**31:
        pid = None
    alive = bool(pid) and pid_alive(pid) and (pid not in _CHILDREN or _CHILDREN[pid].poll() is None)
    tail = _tail(run_dir)
    started = launch.get("started", 0.0)
    base = dict(
        run_dir=run_dir,
        name=run_dir.name,
        pid=pid,
        started=float(started) if isinstance(started, (int, float)) else 0.0,
        command=str(launch.get("command", "")),
        log_tail=tail,
    )
    try:
        has_run = runfs.exists(run_dir, RUN_JSON)
    except InputError as err:
        return LaunchStatus(state="failed", error=str(err), **base)
    if not has_run:
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
    epoch = progress.get("epoch")
    if state == "running" and not alive:
        state = "interrupted"
    elif state == "finished" and alive and progress.get("phase") == "projection":
        state = "mapping"
    if state == "mapping":
        base.update(_map_progress(tail))
    return LaunchStatus(
        state=state,
        epoch=epoch,
        epochs=meta.get("config", {}).get("epochs"),
        phase=progress.get("phase"),
        error=meta.get("error"),
        **base,
    )


def list_launches(runs_dir: str | Path) -> list[LaunchStatus]:
    """Every run in ``runs_dir`` that this page launched (:func:`launched_here`), newest first.

    Parameters
    ----------
    runs_dir : str or path
        The folder new runs are created in.
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return []
    found = [launch_status(p) for p in sorted(runs_dir.iterdir())
             if not p.is_symlink() and p.is_dir() and launched_here(p)]
    return sorted(found, key=lambda s: s.started, reverse=True)


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1], resume=sys.argv[2:] == ["--resume"]))
