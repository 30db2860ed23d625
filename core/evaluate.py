"""Evaluation grids: every defense on every poison set, seed and scenario, and the results tables.

A defense spec is a short name: ``none``, ``epic-<subset>``, ``random-<subset>`` (at every
snapshot as many drops, chosen at random, as the ``epic-<subset>`` run of the same poison set,
scenario and seed made), or any registered defense name (``deepknn``, ...). ``clean`` is the
control: one run per (data set, scenario, seed) on the clean training set, whatever the poison
set (restoring the poisons to their bases gives exactly that set); each poison set's target is
read out of its final model.

Scenarios (the paper's three settings):

- ``scratch``: the victim is trained from random weights.
- ``transfer``: the victim starts from a clean pretrained model, keeps its body frozen and trains
  a new linear head.
- ``finetune``: the victim starts from the pretrained model and trains the whole network at a
  small learning rate (0.01 unless ``lr`` is set).

The pretrained model is trained by poisonlens itself, once per data set and pretraining seed,
and cached in ``<out>/pretrained``: on the **pretraining split**, the first half (in index
order) of every class of the clean training set, as the poisoning benchmark (Schwarzschild et
al., 2021) pretrains on data of the task's own domain that the attacker does not touch. The
victim then trains on the whole (poisoned) training set, which contains that split.

Every run is its own process (``python -m poisonlens.evaluate_worker``), ``jobs`` at a time, and
carries its identity in run.json's ``config.tags``; finished runs are never redone, a killed one
resumes from its checkpoint. A finished cell's numbers are also kept beside its run folder
(:mod:`poisonlens.cell_records`), so the tables can be made, and a grid carried on, after the run
folders themselves have been deleted or left on another machine.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from poisonlens import cell_records, runfs
from poisonlens.cell_match import config_differences, input_digests
from poisonlens.config import SCENARIOS, TrainConfig
from poisonlens.defense import parse_spec
from poisonlens.errors import InputError, one_line
from poisonlens.export import to_safe_csv
from poisonlens.metrics import detection_metrics
from poisonlens.store import CHECKPOINTS, RUN_JSON, atomic_write_bytes, atomic_write_json, open_run

DEFAULT_DEFENSES = (
    "clean",
    "none",
    "epic-0.1",
    "epic-0.2",
    "epic-0.3",
    "random-0.2",
    "deepknn",
    "spectral",
    "activation-clustering",
    "loss",
)
PRETRAINED_DIR = "pretrained"
WILSON_Z = 1.959963984540054  # two-sided 95%


@dataclass(frozen=True)
class GridRun:
    """One cell: a scenario, a poison set (None for the clean control), a defense and a seed."""

    poisons: Path | None
    defense: str
    seed: int
    run_dir: Path
    scenario: str = "scratch"
    pretrained: Path | None = None
    params: tuple = ()  # (key, value) pairs of --defense-param that this cell's defense takes

    @property
    def poison_set(self) -> str:
        """The poison set's file stem, or '' for a clean run."""
        return self.poisons.stem if self.poisons is not None else ""


# --- specs and inputs ----------------------------------------------------------------------


def parse_defense(spec: str) -> dict:
    """TrainConfig fields for a defense spec (see the module docstring).

    ``clean`` is the grid's control; every other spec is read by the defense registry
    (:func:`poisonlens.defense.parse_spec`: a name, or ``<name>-<value>`` for a defense that
    declares the parameter its spec sets, as ``epic-0.2`` sets ``subset_size``).

    Parameters
    ----------
    spec : str
        e.g. ``clean``, ``none``, ``epic-0.2``, ``random-0.2``, ``deepknn``.

    Returns
    -------
    dict with ``defense``, ``defense_params`` and ``clean_control``

    Raises
    ------
    InputError
        Naming ``--defenses``, for a spec no defense reads.
    """
    if spec == "clean":
        return {"defense": "none", "defense_params": {}, "clean_control": True}
    name, params = parse_spec(spec, also=("clean",))
    return {"defense": name, "defense_params": params, "clean_control": False}


def parse_scenarios(text: str) -> list[str]:
    """``"scratch,transfer"`` -> ``["scratch", "transfer"]``; :class:`InputError` for others.

    Parameters
    ----------
    text : str
        Comma-separated scenario names, as ``--scenarios`` takes them.
    """
    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        if s not in SCENARIOS:
            raise InputError("--scenarios", f"unknown scenario {s!r}; use {', '.join(SCENARIOS)}")
    if not out:
        raise InputError("--scenarios", "name at least one scenario")
    return out


def find_poison_sets(path: str | Path) -> list[Path]:
    """A poison set, or every poison set directly inside a folder (``*.npz`` and benchmark folders).

    Parameters
    ----------
    path : str or path
        A poison set (``.npz`` or a benchmark folder) or a folder of them.
    """
    path = Path(path)
    if path.is_file() or (path / "poisons.pickle").is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "no such poison set or folder")
    sets = sorted(
        p for p in path.iterdir() if p.suffix == ".npz" or (p / "poisons.pickle").is_file()
    )
    if not sets:
        raise InputError(path, "folder holds no poison set (*.npz or a folder with poisons.pickle)")
    return sets


def poison_sets_for(path: str | Path, scenario: str) -> list[Path]:
    """The poison sets of ``scenario``: those in ``<path>/<scenario>/`` if it exists, else ``path``'s.

    Each setting has its own attack (gradient matching from scratch, feature collision for
    transfer, gradient matching against the pretrained model for fine-tuning), so a folder may
    hold one subfolder per scenario.

    Parameters
    ----------
    path : str or path
        A poison set or a folder of them (or of scenario subfolders).
    scenario : str
        One of ``SCENARIOS``.
    """
    sub = Path(path) / scenario
    return find_poison_sets(sub if sub.is_dir() else path)


# --- the pretrained model ------------------------------------------------------------------


def dataset_key(spec: str) -> str:
    """A folder name for a data set spec (``cifar10:/data/x`` -> ``cifar10-data-x``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", spec).strip("-")[-60:] or "data"


def pretrain_split(labels: np.ndarray) -> np.ndarray:
    """Indices of the pretraining split: the first half (index order) of every class.

    Parameters
    ----------
    labels : int array of shape (n_train,)

    Returns
    -------
    int64 array of shape (n_pretrain,), sorted ascending.
    """
    labels = np.asarray(labels)
    keep = [np.flatnonzero(labels == c)[: int((labels == c).sum()) // 2] for c in np.unique(labels)]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def write_pretrain_data(dataset_spec: str, folder: Path) -> Path:
    """Write the pretraining split of ``dataset_spec`` as ``folder/pretrain-split.npz`` (once)."""
    from poisonlens.data import load_dataset

    path = folder / "pretrain-split.npz"
    if path.is_file():
        return path
    data = load_dataset(dataset_spec)
    idx = pretrain_split(data.y_train)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / "pretrain-split.tmp.npz"
    np.savez(
        tmp,
        x_train=data.x_train[idx],
        y_train=data.y_train[idx],
        x_test=data.x_test,
        y_test=data.y_test,
        class_names=np.array(data.class_names),
        train_index=idx,
    )
    os.replace(tmp, path)
    return path


def pretrain_cell(base: TrainConfig, out: Path, seed: int, epochs: int) -> tuple[GridRun, TrainConfig]:
    """The clean pretraining run of ``base.dataset`` at ``seed`` and its config."""
    folder = out / PRETRAINED_DIR / dataset_key(base.dataset)
    data_path = write_pretrain_data(base.dataset, folder)
    config = replace(
        base,
        dataset=f"npz:{data_path}",
        poisons=None,
        clean_control=False,
        scenario="scratch",
        pretrained=None,
        lr=None,
        epochs=epochs,
        snapshot_every=epochs,  # snapshots only at 0 and the end: nothing is dropped
        drop_after=0,
        stop_after=0,
        defense="none",
        defense_params={},
        seed=seed,
        tags={"role": "pretrain", "dataset": base.dataset, "seed": seed},
    )
    return GridRun(None, "pretrain", seed, folder / f"seed{seed}"), config


def pretrained_model(run_dir: Path) -> Path:
    """``model.pt`` of a finished pretraining run."""
    return run_dir / CHECKPOINTS / "model.pt"


# --- the grid ------------------------------------------------------------------------------


def plan_grid(
    poison_sets: list[Path],
    defenses: list[str],
    seeds: list[int],
    out: Path,
    *,
    scenario: str = "scratch",
    pretrained: dict[int, Path] | None = None,
    defense_params: dict | None = None,
) -> list[GridRun]:
    """Every (poison set, defense, seed) of one scenario; ``clean`` once per seed.

    ``pretrained`` maps a victim seed to the model.pt it starts from (transfer, finetune).
    ``defense_params`` (``--defense-param``) go to every cell whose defense takes them
    (:func:`taken_params`). Random drops come after the EPIC runs whose counts they copy.
    """
    ordered = sorted(defenses, key=lambda d: d.startswith("random-"))
    root = out / "runs" / scenario
    pre = pretrained or {}
    extra = {d: tuple(sorted(taken_params(d, defense_params or {}).items())) for d in ordered}
    grid = []
    if "clean" in ordered:
        grid += [GridRun(None, "clean", s, root / cell_name("", "clean", s), scenario, pre.get(s)) for s in seeds]
    grid += [
        GridRun(p, d, s, root / cell_name(p.stem, d, s), scenario, pre.get(s), extra[d])
        for p in poison_sets
        for d in ordered
        if d != "clean"
        for s in seeds
    ]
    return grid


def cell_name(poison_set: str, defense: str, seed: int) -> str:
    """The folder name the grid gives a cell's run: ``<set>__<defense>__seed<s>``, or
    ``clean__seed<s>`` for a control (one per seed, whatever the poison set). Made, never parsed:
    a run's identity is read from its tags."""
    return f"clean__seed{seed}" if defense == "clean" else f"{poison_set}__{defense}__seed{seed}"


def taken_params(spec: str, params: dict) -> dict:
    """The ones of ``params`` that the defense of ``spec`` takes (its declared options).

    Parameters
    ----------
    spec : str
        A defense spec of ``--defenses`` (``clean`` takes none).
    params : dict
        ``--defense-param`` of the grid, e.g. ``{'pool': 'all'}``.

    Returns
    -------
    dict
    """
    if spec == "clean" or not params:
        return {}
    from poisonlens.defense import defense_options

    names = {f.name for f in defense_options(parse_defense(spec)["defense"])}
    return {k: v for k, v in params.items() if k in names}


def _twin_identity(cell: GridRun) -> dict:
    """The tags that name a ``random-<s>`` cell's ``epic-<s>`` twin: the same scenario, poison
    set and seed, EPIC at the same size."""
    return {"scenario": cell.scenario, "poison_set": cell.poison_set, "seed": cell.seed,
            "defense": "epic-" + cell.defense[len("random-"):]}


def twin_dir(cell: GridRun) -> Path | None:
    """The run dir of the ``epic-<s>`` run a ``random-<s>`` cell copies its drop counts from.

    Found by the runs' tags (scenario, poison set, seed and defense) among the runs beside the
    cell, never by its folder's name; None when the cell is not a random drop or its twin has
    not been made yet.
    """
    if not cell.defense.startswith("random-"):
        return None
    want = _twin_identity(cell)
    for candidate in sorted(cell.run_dir.parent.iterdir()) if cell.run_dir.parent.is_dir() else ():
        if candidate == cell.run_dir or not (candidate / RUN_JSON).is_file():
            continue
        try:
            tags = open_run(candidate).config.get("tags") or {}
        except InputError:
            continue  # a damaged neighbour is nobody's twin
        if tags.get("grid") == "evaluate" and all(tags.get(k) == v for k, v in want.items()):
            return candidate
    return None


def drop_schedule(run_dir: Path) -> dict[int, int]:
    """{epoch: examples dropped at that snapshot} of a finished run."""
    m = open_run(run_dir).metrics()
    return {int(e): int(n) for e, n in zip(m["epoch"], m["n_new_drops"], strict=True) if n > 0}


def cell_config(base: TrainConfig, cell: GridRun) -> TrainConfig:
    """The training config of one cell, its identity in ``tags``.

    A ``random-<s>`` cell copies its EPIC twin's drop counts when the twin has finished.
    """
    fields = parse_defense(cell.defense)
    fields["defense_params"].update(cell.params)
    twin = twin_dir(cell)
    twin_name = twin.name if twin is not None else None
    # a random drop's own parameters (its random_state) stay beside the counts it copies
    own = {k: v for k, v in cell.params if k not in ("fraction", "match_subset", "counts")}
    if twin is not None and (twin / RUN_JSON).is_file() and open_run(twin).status == "finished":
        fields["defense_params"] = {**own, "counts": drop_schedule(twin)}
    elif twin is None and (kept := twin_record(cell)) is not None:
        # the twin's run folder has gone (deleted, or left on another machine): its record
        fields["defense_params"] = {**own, "counts": kept["drops"]}
        twin_name = kept["run"]
    if cell.defense == "clean":
        # The control trains on the clean set whatever the poison set: it is one run per seed.
        fields["clean_control"] = False
    tags = {
        "grid": "evaluate",
        "scenario": cell.scenario,
        "poison_set": cell.poison_set,
        "defense": cell.defense,
        "defense_params": fields["defense_params"] if cell.defense.startswith("epic-") else
        {**parse_defense(cell.defense)["defense_params"], **dict(cell.params)},
        "seed": cell.seed,
        "twin": twin_name,
    }
    config = replace(
        base,
        poisons=str(cell.poisons) if cell.poisons is not None else None,
        seed=cell.seed,
        scenario=cell.scenario,
        pretrained=str(cell.pretrained) if cell.pretrained is not None else None,
        tags=tags,
        **fields,
    )
    # the files it reads by their contents: one replaced under the same name is another input
    return replace(config, tags={**tags, "inputs": input_digests(config)})


def twin_record(cell: GridRun) -> dict | None:
    """The record (:func:`poisonlens.cell_records.read_record`) of a ``random-<s>`` cell's
    ``epic-<s>`` twin, read at the name the grid gives the twin (:func:`cell_name`) and checked
    against the twin's identity; None when there is none.

    Raises
    ------
    InputError
        Naming the twin's record, when it is there but damaged or names another cell.
    """
    if not cell.defense.startswith("random-"):
        return None
    want = _twin_identity(cell)
    # only the record the grid itself would have written for the twin: a record under any other
    # name, whatever identity it claims, steers nothing
    twin = cell.run_dir.parent / cell_name(cell.poison_set, want["defense"], cell.seed)
    if not cell_records.has_record(twin):
        return None
    return cell_records.read_record(twin, want)  # a damaged twin record: one line, not ignored


def cell_state(run_dir: Path) -> str:
    """``'finished'``, ``'resume'`` (killed after a checkpoint), ``'fresh'`` or ``'busy'``.

    A cell whose run folder is missing but whose record is kept
    (:mod:`poisonlens.cell_records`) is finished.
    """
    if not (run_dir / RUN_JSON).is_file():
        return "finished" if not run_dir.exists() and cell_records.has_record(run_dir) else "fresh"
    status = open_run(run_dir).status
    if status == "finished":
        return "finished"
    if status == "running":
        return "busy"  # another process is training it right now
    if status == "interrupted" and (run_dir / CHECKPOINTS / "last.pt").is_file():
        return "resume"
    return "fresh"


def check_cells_alike(base: TrainConfig, grid: list[GridRun]) -> None:
    """Refuse a grid whose finished or half-trained cells were trained with other options
    (:func:`poisonlens.cell_match.config_differences`).

    A cell already in ``--out`` is never trained again, so a grid asked for with other options
    (``--epochs``, a ``--defense-param``, a poison set re-crafted under the same name) would
    otherwise report the old runs as the new grid's. Both the run folder's config and, for a
    finished cell, its record's (what the tables read) are checked. A finished random drop
    must have copied the drop counts its EPIC twin has now.

    Raises
    ------
    InputError
        Naming the first such cell and how its options differ.
    """
    for cell in grid:
        if cell_state(cell.run_dir) not in ("fresh", "busy"):
            _check_cell_alike(cell, cell_config(base, cell))


def _check_cell_alike(cell: GridRun, want: TrainConfig) -> None:
    """:func:`check_cells_alike` for one cell that is there, as the grid plans it (``want``)."""
    stored = []
    if (cell.run_dir / RUN_JSON).is_file():
        stored.append((cell.run_dir, open_run(cell.run_dir).config))
    if cell_state(cell.run_dir) == "finished" and cell_records.has_record(cell.run_dir):
        stored.append((cell_records.record_path(cell.run_dir),
                       cell_records.read_record(cell.run_dir, _identity(cell))["config"]))
    for where, have in stored:
        copied = isinstance(have.get("defense_params"), dict) and "counts" in have["defense_params"]
        if cell.defense.startswith("random-") and copied and "counts" not in want.defense_params:
            raise InputError(where, "trained with its EPIC twin's drops, but the twin is not finished: "
                                    "it will be trained again and this cell's drops would not match "
                                    "it; remove this cell too")
        diffs = config_differences(want, have)
        if diffs:
            more = f" (and {len(diffs) - 1} more)" if len(diffs) > 1 else ""
            raise InputError(where, f"trained with {diffs[0]}{more}; a grid's cells are trained "
                                    "alike: choose another --out, or remove this cell")


def run_cells(
    jobs: list[tuple[GridRun, TrainConfig | Callable[[], TrainConfig]]],
    *,
    n_jobs: int = 2,
    show_progress: bool = True,
    needs: Callable[[GridRun], GridRun | None] | None = None,
    done: Callable[[GridRun], object] | None = None,
) -> None:
    """Train every unfinished cell, each in its own worker process, ``n_jobs`` at a time.

    A run killed after a checkpoint resumes from it; a failed run is started again.

    Parameters
    ----------
    jobs : list of (GridRun, TrainConfig or callable)
        The cells in the order they start. A callable makes the config when the cell starts,
        so that a random drop reads the drop counts of a twin that finished moments before.
    n_jobs : int, default 2
        Worker processes at once.
    show_progress : bool, default True
        One line on stderr per finished cell.
    needs : callable, optional
        The cell a cell waits for (a random drop's EPIC twin), or None. A cell starts only
        once the cell it needs has finished; it is reported failed, and not run, when that
        one fails.
    done : callable, optional
        Called with each cell that finished without error, as it finishes (evaluate keeps
        its record).

    Raises
    ------
    InputError
        A cell's run folder is being trained by another process.
    RuntimeError
        One or more runs failed (each is named, with the end of its error output).
    """
    todo = []
    for cell, config in jobs:
        state = cell_state(cell.run_dir)
        if state == "busy":
            raise InputError(
                cell.run_dir,
                f"is being trained by process {open_run(cell.run_dir).meta.get('pid')}; "
                "wait for it or stop it",
            )
        if state != "finished":
            todo.append((cell, config, state))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    running: list[tuple[subprocess.Popen, GridRun]] = []
    waiting = {cell for cell, _, _ in todo}
    n_done = 0
    failed: list[str] = []
    failed_cells: set[GridRun] = set()

    def finish(cell: GridRun, error: str | None) -> None:
        nonlocal n_done
        n_done += 1
        if error is not None:
            failed.append(f"{cell.run_dir.name} ({error})")
            failed_cells.add(cell)
        elif done is not None:
            done(cell)
        if show_progress:
            print(f"[{n_done}/{len(todo)}] {cell.run_dir.parent.name}/{cell.run_dir.name}"
                  + (" failed" if error is not None else ""), file=sys.stderr, flush=True)

    def reap() -> None:
        for proc, cell in list(running):
            if proc.poll() is not None:
                running.remove((proc, cell))
                error = proc.stderr.read().strip()[-300:] if proc.returncode != 0 else None
                proc.stderr.close()
                waiting.discard(cell)
                finish(cell, error)

    def blocked(cell: GridRun) -> str | None:
        """'wait' while the cell it needs has not finished, 'failed' when that failed."""
        need = needs(cell) if needs is not None else None
        if need is None:
            return None
        if need in failed_cells:
            return "failed"
        return "wait" if need in waiting else None

    pending = list(todo)
    while pending or running:
        reap()
        for item in list(pending):
            cell, config, state = item
            why = blocked(cell)
            if why == "failed":
                pending.remove(item)
                waiting.discard(cell)
                finish(cell, f"not run: {needs(cell).run_dir.name} failed")
                continue
            if why == "wait" or len(running) >= max(1, n_jobs):
                continue
            pending.remove(item)
            running.append((_start_cell(cell, config, state, env), cell))
        if running:
            time.sleep(0.05)
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: " + "; ".join(failed[:3]))


def _start_cell(cell: GridRun, config: TrainConfig | Callable[[], TrainConfig], state: str,
                env: dict) -> subprocess.Popen:
    """Write the cell's config beside its run folder and start its worker process."""
    if callable(config):
        config = config()
    if state == "fresh" and cell.run_dir.exists():
        shutil.rmtree(cell.run_dir)
    cell.run_dir.parent.mkdir(parents=True, exist_ok=True)
    if state == "fresh":
        cell_records.remove_record(cell.run_dir)  # the numbers of an earlier run of this cell
    config_path = cell.run_dir.parent / f".{cell.run_dir.name}.config.json"
    atomic_write_json(config_path, config.to_json())
    argv = [sys.executable, "-m", "poisonlens.evaluate_worker", str(config_path), str(cell.run_dir)]
    if state == "resume":
        argv.append("--resume")
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


def ensure_pretrained(
    base: TrainConfig,
    out: Path,
    seeds: list[int],
    *,
    epochs: int,
    n_jobs: int = 2,
    show_progress: bool = True,
) -> dict[int, Path]:
    """Train (or reuse) the clean pretrained model for each seed; {seed: model.pt}."""
    jobs = [pretrain_cell(base, out, s, epochs) for s in sorted(set(seeds))]
    for cell, config in jobs:  # a model pretrained otherwise (--pretrain-epochs) is not this one
        if cell_state(cell.run_dir) not in ("fresh", "busy"):
            _check_cell_alike(cell, config)
    run_cells(jobs, n_jobs=n_jobs, show_progress=show_progress)
    return {cell.seed: pretrained_model(cell.run_dir) for cell, _ in jobs}


def run_grid(
    base: TrainConfig, grid: list[GridRun], *, n_jobs: int = 2, show_progress: bool = True
) -> None:
    """Train every cell not yet finished, in :func:`run_order`.

    A random drop starts as soon as the EPIC run whose counts it copies has finished, so a grid
    stopped part-way leaves whole (poison set, seed) groups, each random drop beside its twin.

    Parameters
    ----------
    base : TrainConfig
        The options every cell shares; each cell sets its poison set, defense, seed and tags.
    grid : list of GridRun
        The cells, from :func:`plan_grid`.
    n_jobs : int, default 2
        Worker processes at once.
    show_progress : bool, default True
        One line on stderr per finished cell.
    """
    check_cells_alike(base, grid)
    order = run_order(grid)
    twins = {c: twin_cell(c, grid) for c in order}
    run_cells([(c, partial(cell_config, base, c)) for c in order], n_jobs=n_jobs,
              show_progress=show_progress, needs=twins.get, done=cell_record)


def run_order(grid: list[GridRun]) -> list[GridRun]:
    """The cells in the order they run: scenario, then seed, the clean control first, then each
    poison set's cells together with every random drop after the EPIC runs of its set."""
    index = {c: i for i, c in enumerate(grid)}
    return sorted(grid, key=lambda c: (
        SCENARIOS.index(c.scenario) if c.scenario in SCENARIOS else len(SCENARIOS), c.seed,
        c.poisons is not None, str(c.poisons or ""), c.defense.startswith("random-"), index[c]))


def twin_cell(cell: GridRun, grid: list[GridRun]) -> GridRun | None:
    """The ``epic-<s>`` cell of ``grid`` whose drop counts a ``random-<s>`` cell copies, or None."""
    if not cell.defense.startswith("random-"):
        return None
    want = "epic-" + cell.defense[len("random-"):]
    return next((c for c in grid if c.defense == want and c.poisons == cell.poisons
                 and c.seed == cell.seed and c.scenario == cell.scenario), None)


# --- numbers -------------------------------------------------------------------------------


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval (95% by default) of a binomial proportion; (nan, nan) for n = 0."""
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def controlled(attack_success: float, control_flip: float) -> float:
    """1.0 for a flip the clean control (same target, same seed) does not show; NaN unknown."""
    if np.isnan(control_flip) or np.isnan(attack_success):
        return np.nan
    return float(attack_success == 1 and control_flip == 0)


def run_summary(run_dir: str | Path) -> dict:
    """The final numbers of one run, recomputed from its run store (its last finished epoch).

    test_acc, attack_success, recall and precision of the drops (NaN without poisons / without
    drops), n_dropped, roc_auc (mean over the snapshots that may drop; NaN without poisons),
    seconds (training, evaluation, snapshots and defense), target_prob_adv.
    """
    run = open_run(run_dir)
    m = run.metrics()
    if m.empty:
        raise InputError(run_dir, "no finished epoch yet")
    last = m.iloc[-1]
    examples = run.examples()
    n_poisons = int(examples["is_poison"].sum())
    n_dropped = int(last["n_dropped"])
    n_poison_dropped = int(last["n_poison_dropped"])
    return {
        "test_acc": float(last["test_acc"]),
        "attack_success": float(last["attack_success"]),
        "recall": n_poison_dropped / n_poisons if n_poisons else np.nan,
        "precision": n_poison_dropped / n_dropped if n_dropped else np.nan,
        "n_dropped": n_dropped,
        "roc_auc": _window_auc(run) if n_poisons else np.nan,
        "seconds": float(
            m[["epoch_seconds", "eval_seconds", "snapshot_seconds", "defense_seconds"]].sum().sum()
        ),
        "target_prob_adv": float(last["target_prob_adv"]),
    }


def _window_auc(run) -> float:
    """Mean ROC-AUC of the defense score (poison vs clean, active rows) over the drop window."""
    config = run.config
    is_poison = run.examples()["is_poison"].to_numpy(bool)
    aucs = []
    for epoch in run.snapshot_epochs():
        if not config["drop_after"] <= epoch < min(config["stop_after"], config["epochs"]):
            continue
        snap = run.snapshot(epoch, columns=["active", "score", "suspect"])
        d = detection_metrics(is_poison, snap["suspect"].to_numpy(bool),
                              snap["score"].to_numpy(float), active=snap["active"].to_numpy(bool))
        aucs.append(d.roc_auc)
    aucs = [a for a in aucs if a is not None and np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else np.nan


def control_readouts(control_dir: Path, poison_paths: list[Path], *, config: dict | None = None,
                     model_file: Path | None = None, expect: TrainConfig | None = None) -> list[dict]:
    """The clean control's final model applied to each poison set's target: prediction and p_adv.

    The control's data set (for its number of classes and channels) and weights are loaded once,
    whatever the number of poison sets: on the whole of CIFAR-10 loading the data set is the
    cost, not the readout.

    Parameters
    ----------
    control_dir : Path
        The clean control's run folder.
    poison_paths : list of Path
        The poison sets whose targets are read out.
    config, model_file : dict and Path, optional
        The control's TrainConfig (JSON) and final weights, given together when they come from
        its record rather than its run folder (which may have gone).
    expect : TrainConfig, optional
        The grid's config: the data set loaded is the grid's, and the control's model and width
        must be the grid's (a record handed over with the grid decides nothing about what is
        loaded or built; its data set path may differ, written on another machine).

    Returns
    -------
    list of dict, one per poison set in order, with ``pred`` (int), ``prob_adv`` (float) and
    ``flip`` (1.0 when pred is the adversarial class)
    """
    from poisonlens.checkpoint import torch_load
    from poisonlens.data import load_dataset, load_poisons
    from poisonlens.models import build_model
    from poisonlens.snapshot import forward_batched

    sets = [load_poisons(p) for p in poison_paths]  # a bad set: one line before any loading
    if not sets:
        return []
    source = cell_records.record_path(control_dir)
    if config is None or model_file is None:
        source = control_dir / RUN_JSON
        config, model_file = open_run(control_dir).config, pretrained_model(control_dir)
    try:
        config = TrainConfig.from_json(config)
        config.validate()
    except InputError as err:
        raise InputError(source, f"its config: {one_line(err)}") from None
    if expect is not None:
        for name in ("model", "width"):
            if getattr(config, name) != getattr(expect, name):
                raise InputError(source, f"a control with {name} {getattr(config, name)!r}; this grid's is "
                                         f"{getattr(expect, name)!r}")
        config = replace(config, dataset=expect.dataset)
    data = load_dataset(config.dataset)
    model = build_model(config.model, n_classes=data.n_classes,
                        in_channels=data.x_train.shape[-1], width=config.width)
    weights = torch_load(model_file, map_location="cpu", max_bytes=cell_records.MAX_MODEL_BYTES)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise InputError(model_file, f"weights that do not fit the control's {config.model} "
                                     f"({one_line(err)[:200]})") from None
    model.eval()
    out = []
    for poisons in sets:  # one image each: a set whose target does not fit the model fails alone
        row = forward_batched(model, poisons.target_x[None])[0][0]
        p = np.exp(row - row.max())
        p /= p.sum()
        out.append({"pred": int(p.argmax()), "prob_adv": float(p[poisons.adv_label]),
                    "flip": float(int(p.argmax()) == poisons.adv_label)})
    return out


def control_readout(control_dir: Path, poison_path: Path, **control) -> dict:
    """:func:`control_readouts` for one poison set: its dict."""
    return control_readouts(control_dir, [poison_path], **control)[0]


def run_rows(grid: list[GridRun], sets: list[Path] | None = None, base: TrainConfig | None = None) -> pd.DataFrame:
    """One row per (poison set, defense, seed) of a scenario; identity read from the run's tags.

    The ``clean`` rows are the control read out on the target of each of ``sets`` (default: the
    poison sets of the grid's other cells; a grid of controls alone names none); ``controlled``
    counts a success only where the control of the same seed does not flip the same target.
    """
    controls = {c.seed: c for c in grid if c.defense == "clean"}
    if sets is None:
        sets = sorted({c.poisons for c in grid if c.poisons is not None})
    flips: dict[tuple[str, int], float] = {}
    rows = []
    for seed, ctrl in controls.items():
        rec = cell_record(ctrl)
        if rec["model"] is None:
            raise InputError(cell_records.record_path(ctrl.run_dir),
                             "a clean control's record without its model")
        readouts = control_readouts(ctrl.run_dir, sets, config=rec["config"], model_file=rec["model"],
                                    expect=base)
        for p, r in zip(sets, readouts, strict=True):
            flips[(p.stem, seed)] = r["flip"]
            rows.append({**rec["identity"], "poison_set": p.stem, **rec["summary"],
                         "attack_success": r["flip"], "target_prob_adv": r["prob_adv"],
                         "control_flip": r["flip"], "controlled_success": 0.0})
    for cell in grid:
        if cell.defense == "clean":
            continue
        rec = cell_record(cell)
        s = rec["summary"]
        flip = flips.get((cell.poison_set, cell.seed), np.nan)
        rows.append({**rec["identity"], **s, "control_flip": flip,
                     "controlled_success": controlled(s["attack_success"], flip)})
    return pd.DataFrame(rows)


def _identity(cell: GridRun) -> dict:
    """The cell's identity as the grid planned it (its run's tags say the same)."""
    return {"scenario": cell.scenario, "poison_set": cell.poison_set, "defense": cell.defense,
            "seed": cell.seed}


def cell_record(cell: GridRun) -> dict:
    """The numbers of a finished cell (:func:`poisonlens.cell_records.read_record`).

    Read from the record beside the run folder when there is one; otherwise computed from the
    finished run folder (:func:`run_summary`, :func:`detection_rows`, :func:`drop_schedule`)
    and written as its record first, with the final weights of a clean control.

    Raises
    ------
    InputError
        The cell has neither a record nor a finished run folder, its run's tags name another
        cell, or its record is damaged.
    """
    identity = _identity(cell)
    if cell_records.has_record(cell.run_dir):
        return cell_records.read_record(cell.run_dir, identity)
    run = open_run(cell.run_dir)
    if run.status != "finished":
        raise InputError(cell.run_dir, f"not finished ({run.status}) and no record of it kept")
    tags = run.config.get("tags") or {}
    if any(tags.get(k, v) != v for k, v in identity.items()):
        raise InputError(cell.run_dir / RUN_JSON, f"its tags name another cell than {identity}")
    model = None
    if cell.defense == "clean":
        model = runfs.read_bytes(cell.run_dir, CHECKPOINTS, "model.pt",
                                 max_bytes=cell_records.MAX_MODEL_BYTES)
    cell_records.write_record(
        cell.run_dir, identity=identity, config=run.config, summary=run_summary(cell.run_dir),
        detection=_detection(run), drops=drop_schedule(cell.run_dir), model=model,
    )
    return cell_records.read_record(cell.run_dir, identity)


SUMMARY_COLUMNS = ("test_acc", "n_dropped", "recall", "precision", "roc_auc", "seconds")


def summarise(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Per (scenario, defense): successes with Wilson intervals, means and stds of the rest."""
    out = []
    if "scenario" not in runs:
        runs = runs.assign(scenario="scratch")
    for (scenario, defense), g in runs.groupby(["scenario", "defense"], sort=False):
        row = {"scenario": scenario, "defense": defense, "n_runs": len(g)}
        for col in ("attack_success", "controlled_success"):
            vals = g[col].dropna() if col in g else pd.Series(dtype=float)
            k, n = int(vals.sum()), len(vals)
            lo, hi = wilson_interval(k, n)
            row.update({f"{col}_k": k, f"{col}_n": n, f"{col}_lo": lo, f"{col}_hi": hi,
                        f"{col}_mean": vals.mean() if n else np.nan,
                        f"{col}_std": vals.std(ddof=0) if n else np.nan})
        for col in SUMMARY_COLUMNS:
            row[f"{col}_mean"] = g[col].mean()
            row[f"{col}_std"] = g[col].std(ddof=0)
        out.append(row)
    table = pd.DataFrame(out)
    rank = {d: i for i, d in enumerate(order)}
    scen = {s: i for i, s in enumerate(SCENARIOS)}
    return (
        table.assign(_s=table["scenario"].map(scen), _d=table["defense"].map(lambda d: rank.get(d, 99)))
        .sort_values(["_s", "_d"]).drop(columns=["_s", "_d"]).reset_index(drop=True)
    )


def _rate(k: int, n: int, lo: float, hi: float) -> str:
    return "–" if n == 0 else f"{k}/{n} = {k / n:.2f} [{lo:.2f}, {hi:.2f}]"


def _md_cell(text: object) -> str:
    """A table cell from text a run or a file name controls: one printable line (terminal
    escapes shown as ``\\x1b``), its pipes escaped so it stays one cell."""
    return one_line(text, 80).replace("|", "\\|")


def to_markdown(summary: pd.DataFrame) -> str:
    """One Markdown table per scenario: success raw and controlled (95% Wilson), then the cost."""
    header = ["defense", "runs", "attack success [95% CI]", "controlled success [95% CI]",
              "clean acc", "examples dropped", "poison recall", "precision of drops",
              "ROC-AUC", "train time (s)"]
    fmt = {"test_acc": "{:.3f}", "n_dropped": "{:.0f}", "recall": "{:.2f}",
           "precision": "{:.3f}", "roc_auc": "{:.2f}", "seconds": "{:.1f}"}
    parts = []
    for scenario, table in summary.groupby("scenario", sort=False):
        lines = [f"#### {_md_cell(scenario)}", "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header)]
        for _, r in table.iterrows():
            cells = [_md_cell(r["defense"]), str(int(r["n_runs"]))]
            for col in ("attack_success", "controlled_success"):
                cells.append(_rate(int(r[f"{col}_k"]), int(r[f"{col}_n"]), r[f"{col}_lo"],
                                   r[f"{col}_hi"]))
            for col in SUMMARY_COLUMNS:
                mean, std = r[f"{col}_mean"], r[f"{col}_std"]
                cells.append("–" if pd.isna(mean) else
                             f"{fmt[col].format(mean)} ± {fmt[col].format(std)}")
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


PAIR_KEY = ["scenario", "poison_set", "seed"]


def twin_pairs(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """``(epic-X, random-X)`` defense pairs that both appear in ``runs`` (EPIC and its twin)."""
    present = set(runs["defense"]) if "defense" in runs else set()
    return [(d, "random-" + d[len("epic-"):]) for d in sorted(present)
            if d.startswith("epic-") and "random-" + d[len("epic-"):] in present]


def paired(runs: pd.DataFrame) -> pd.DataFrame:
    """EPIC against its random twin, cell by cell (same scenario, poison set and victim seed).

    Parameters
    ----------
    runs : the rows of ``runs.csv`` (:func:`run_rows`)

    Returns
    -------
    DataFrame, one row per (scenario, EPIC defense) with a twin: ``cells`` paired, the
    controlled successes of ``none`` (on the same cells, when run), of EPIC and of the twin,
    ``epic_only_stops`` (cells where EPIC stops a flip its twin lets through) and
    ``twin_only_stops`` (the reverse), and the mean clean accuracy, poison recall and
    examples dropped of each. Empty when no EPIC defense has its twin.
    """
    out = []
    for epic, twin in twin_pairs(runs):
        cols = [*PAIR_KEY, "controlled_success", "test_acc", "recall", "n_dropped"]
        a = runs[runs["defense"] == epic][cols]
        b = runs[runs["defense"] == twin][cols]
        both = a.merge(b, on=PAIR_KEY, suffixes=("_epic", "_twin")).dropna(
            subset=["controlled_success_epic", "controlled_success_twin"])
        none = runs[runs["defense"] == "none"][[*PAIR_KEY, "controlled_success"]]
        for scenario, g in both.groupby("scenario", sort=False):
            n = g.merge(none, on=PAIR_KEY)["controlled_success"]
            e, r = g["controlled_success_epic"], g["controlled_success_twin"]
            out.append({
                "scenario": scenario, "epic": epic, "twin": twin, "cells": len(g),
                "none_success": int(n.sum()) if len(n) == len(g) else np.nan,
                "epic_success": int(e.sum()), "twin_success": int(r.sum()),
                "epic_only_stops": int(((e == 0) & (r == 1)).sum()),
                "twin_only_stops": int(((e == 1) & (r == 0)).sum()),
                **{f"{col}_{who}": g[f"{col}_{who}"].mean()
                   for col in ("test_acc", "recall", "n_dropped") for who in ("epic", "twin")},
            })
    columns = ["scenario", "epic", "twin", "cells", "none_success", "epic_success", "twin_success",
               "epic_only_stops", "twin_only_stops"] + [
        f"{col}_{who}" for col in ("test_acc", "recall", "n_dropped") for who in ("epic", "twin")]
    return pd.DataFrame(out, columns=columns)


def paired_markdown(pairs: pd.DataFrame) -> str:
    """The :func:`paired` table as Markdown (empty text when there is nothing to pair)."""
    if pairs.empty:
        return ""
    lines = ["#### EPIC against its random twin, cell by cell", "",
             "| scenario | EPIC | cells | controlled successes: none / EPIC / twin | EPIC stops, twin does not | twin stops, EPIC does not | clean acc EPIC / twin | poison recall EPIC / twin | dropped EPIC / twin |",
             "|---|---|---|---|---|---|---|---|---|"]
    for _, r in pairs.iterrows():
        none = "–" if pd.isna(r["none_success"]) else str(int(r["none_success"]))
        lines.append(
            f"| {r['scenario']} | {r['epic']} | {r['cells']} | {none} / {r['epic_success']} / "
            f"{r['twin_success']} | {r['epic_only_stops']} | {r['twin_only_stops']} | "
            f"{r['test_acc_epic']:.3f} / {r['test_acc_twin']:.3f} | "
            f"{r['recall_epic']:.2f} / {r['recall_twin']:.2f} | "
            f"{r['n_dropped_epic']:.0f} / {r['n_dropped_twin']:.0f} |")
    return "\n".join(lines) + "\n"


def detection_rows(cell: GridRun) -> list[dict]:
    """Per snapshot: precision, recall and ROC-AUC of the defense's score among the active rows
    (from the cell's record, :func:`cell_record`)."""
    rec = cell_record(cell)
    return [{**rec["identity"], **{**row, "epoch": int(row["epoch"]),
                                   "n_suspect": int(row["n_suspect"])}}
            for row in rec["detection"]]


def _detection(run) -> list[dict]:
    """Per snapshot of a run with poisons: epoch, n_suspect, precision, recall, roc_auc."""
    is_poison = run.examples()["is_poison"].to_numpy(bool)
    if not is_poison.any():
        return []
    rows = []
    for epoch in run.snapshot_epochs():
        snap = run.snapshot(epoch, columns=["active", "score", "suspect"])
        d = detection_metrics(is_poison, snap["suspect"].to_numpy(bool),
                              snap["score"].to_numpy(float), active=snap["active"].to_numpy(bool))
        rows.append({"epoch": epoch, "n_suspect": d.n_suspect, "precision": d.precision,
                     "recall": d.recall, "roc_auc": d.roc_auc})
    return rows


def write_results(grid: list[GridRun], defenses: list[str], out: Path,
                  poison_sets: dict[str, list[Path]] | None = None, base: TrainConfig | None = None) -> pd.DataFrame:
    """runs.csv, detection.csv, summary.csv, paired.csv (:func:`paired`) and summary.md under
    ``out``; returns the summary.

    ``poison_sets`` maps a scenario to the poison sets its clean controls are read out on
    (default: those of the grid's cells, :func:`run_rows`); a grid whose only finished cells are
    controls has none of its own. ``base``, the grid's config, is what every clean control must
    have been trained with (its data set, model and width).
    """
    scenarios = list(dict.fromkeys(c.scenario for c in grid))
    sets = poison_sets or {}
    runs = pd.concat([run_rows([c for c in grid if c.scenario == s], sets.get(s), base) for s in scenarios],
                     ignore_index=True)
    detection = pd.DataFrame([r for c in grid for r in detection_rows(c)])
    summary = summarise(runs, defenses)
    # the one formula-safe writer (poisonlens.export): poison file names and tags are text a
    # spreadsheet must never run
    atomic_write_bytes(out / "runs.csv", to_safe_csv(runs).encode())
    atomic_write_bytes(out / "detection.csv", to_safe_csv(detection).encode())
    atomic_write_bytes(out / "summary.csv", to_safe_csv(summary).encode())
    pairs = paired(runs)
    atomic_write_bytes(out / "paired.csv", to_safe_csv(pairs).encode())
    text = to_markdown(summary) + ("\n" + paired_markdown(pairs) if not pairs.empty else "")
    atomic_write_bytes(out / "summary.md", text.encode())
    return summary
