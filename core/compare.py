"""Comparing runs: a table of final numbers, a per-defense summary, and which poisons each catches.

The runs come from an evaluate output folder (``<out>/runs/<set>__<defense>__seed<N>``), a folder
of runs, or any list of run directories. Every number is recomputed from the run stores with
:func:`core.evaluate.run_summary`, the function behind ``runs.csv``, so a folder's table here is
its ``runs.csv``. Pure functions of run directories, no Streamlit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from core.errors import InputError
from core.evaluate import (
    DEFAULT_DEFENSES,
    SUMMARY_COLUMNS,
    parse_defense,
    run_summary,
    summarise,
)
from core.store import RUN_JSON, Run, open_run

NO_POISONS = "(no poisons)"
GRID_NAME = re.compile(r"^(?P<set>.+)__(?P<defense>.+)__seed(?P<seed>-?\d+)$")  # plan_grid's names
TABLE_COLUMNS = (
    "run",
    "poison_set",
    "defense",
    "seed",
    "status",
    *SUMMARY_COLUMNS,
    "target_prob_adv",
    "n_poisons",
    "n_samples",
    "path",
)


# --- which runs ----------------------------------------------------------------------------


def find_runs(folder: str | Path) -> list[Path]:
    """The run directories of an evaluate output folder (its ``runs/``), of a folder of runs, or
    the folder itself when it is a run; sorted by name."""
    folder = Path(folder).expanduser()
    if (folder / RUN_JSON).is_file():
        return [folder]
    if not folder.is_dir():
        raise InputError(folder, "no such folder")
    inside = folder / "runs" if (folder / "runs").is_dir() else folder
    runs = sorted(p for p in inside.iterdir() if (p / RUN_JSON).is_file())
    if not runs:
        raise InputError(folder, "holds no runs (neither an evaluate output nor a folder of runs)")
    return runs


def _open(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else open_run(run)


def _as_runs(runs: Iterable[Run | str | Path] | str | Path) -> list[Run]:
    if isinstance(runs, (str, Path)):
        return [open_run(p) for p in find_runs(runs)]
    return [_open(r) for r in runs]


# --- labels --------------------------------------------------------------------------------


def defense_label(config: dict) -> str:
    """A name for a run's defense from its configuration, as the evaluate grid names it (see
    :func:`core.evaluate.parse_defense`): ``clean`` for the clean control, ``epic-<subset_size>``,
    ``random-<match_subset>``, the defense's name, with any other parameters in brackets
    (``random(fraction=0.05)``); a random defense that copied another run's drops is
    ``random (matched drops)``."""
    if config.get("clean_control"):
        return "clean"
    name = str(config.get("defense", "none"))
    params = dict(config.get("defense_params") or {})
    key = {"epic": "subset_size", "random": "match_subset"}.get(name)
    if key in params:
        name = f"{name}-{params.pop(key):g}"
    if name == "random" and "counts" in params:
        return "random (matched drops)"
    if params:
        name += "(" + ", ".join(f"{k}={v}" for k, v in sorted(params.items())) + ")"
    return name


def run_defense(run: Run) -> str:
    """The defense label of a run: the grid's own name for an evaluate cell (its directory
    ``<set>__<defense>__seed<N>``, when that agrees with its configuration; a ``random-<s>``
    cell records only the drop counts it copied), else :func:`defense_label`."""
    config = run.config
    match = GRID_NAME.match(run.path.name)
    if match:
        try:
            spec = parse_defense(match["defense"])
        except InputError:
            spec = None
        if (
            spec is not None
            and spec["defense"] == config.get("defense")
            and spec["clean_control"] == bool(config.get("clean_control"))
            and int(match["seed"]) == int(config.get("seed", 0))
        ):
            return match["defense"]
    return defense_label(config)


def poison_set_name(config: dict) -> str:
    """The poison set's file or folder name without suffix, as in an evaluate grid's run names."""
    poisons = config.get("poisons")
    return Path(poisons).stem if poisons else NO_POISONS


def defense_order(labels: Iterable[str]) -> list[str]:
    """Distinct labels: the evaluate grid's default order first (clean, none, epic-…), then the
    rest alphabetically."""
    rank = {d: i for i, d in enumerate(DEFAULT_DEFENSES)}
    return sorted(set(labels), key=lambda d: (rank.get(d, len(rank)), d))


# --- the table -----------------------------------------------------------------------------


def comparison_table(runs: Iterable[Run | str | Path] | str | Path) -> pd.DataFrame:
    """A row per run with at least one finished epoch (columns :data:`TABLE_COLUMNS`).

    ``runs``: runs or run directories, or a folder (see :func:`find_runs`). The numbers are
    those of ``runs.csv`` (:func:`core.evaluate.run_summary`, at the run's last finished epoch);
    ``status`` says whether the run finished. Sorted by poison set, defense (grid order), seed.
    """
    rows = []
    for run in _as_runs(runs):
        if run.metrics().empty:
            continue
        config = run.config
        examples = run.examples()
        rows.append(
            {
                "run": run.name,
                "poison_set": poison_set_name(config),
                "defense": run_defense(run),
                "seed": int(config.get("seed", 0)),
                "status": run.status,
                **run_summary(run.path),
                "n_poisons": int(examples["is_poison"].sum()),
                "n_samples": len(examples),
                "path": str(run.path),
            }
        )
    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    if table.empty:
        return table
    rank = {d: i for i, d in enumerate(defense_order(table["defense"]))}
    table = table.sort_values(
        ["poison_set", "defense", "seed", "run"],
        key=lambda c: c.map(rank) if c.name == "defense" else c,
    )
    return table.reset_index(drop=True)


def per_defense_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean and std (over poison sets and seeds) per defense of the finished runs of ``table``.

    The columns of ``summary.csv`` (:func:`core.evaluate.summarise`: n_runs, ``<x>_mean``,
    ``<x>_std`` for x in test_acc, attack_success, recall, precision, n_dropped, seconds), plus
    what dropping the same number of examples at random would give, on average, on the runs
    with poisons: ``random_recall_mean`` (share of all examples dropped) and
    ``base_rate_mean`` (share of poisons in the training set, a random drop's precision).
    """
    done = table[table["status"] == "finished"]
    if done.empty:
        return pd.DataFrame(columns=["defense", "n_runs", "random_recall_mean", "base_rate_mean"])
    summary = summarise(done, defense_order(done["defense"]))
    poisoned = done[done["n_poisons"] > 0]
    chance = pd.DataFrame(
        {
            "defense": poisoned["defense"],
            "random_recall_mean": poisoned["n_dropped"] / poisoned["n_samples"],
            "base_rate_mean": poisoned["n_poisons"] / poisoned["n_samples"],
        }
    )
    chance = chance.groupby("defense").mean()
    return summary.join(chance, on="defense")


# --- which poisons each run catches --------------------------------------------------------


def dropped_at_end(run: Run) -> np.ndarray:
    """bool (n_samples,): dropped by the run's last snapshot (all False without a snapshot)."""
    epochs = run.snapshot_epochs()
    if not epochs:
        return np.zeros(len(run.examples()), dtype=bool)
    return run.snapshot(epochs[-1], columns=["dropped_epoch"])["dropped_epoch"].to_numpy() >= 0


def poison_overlap(runs: Iterable[Run | str | Path]) -> pd.DataFrame:
    """Which poisons each run dropped by its last snapshot: a row per poison, a column per run.

    Only runs that could catch a poison take part: runs without poisons (clean controls, clean
    runs) and runs without a defense (``none``) are left out. The rest must share one poison
    set (the same poison rows); compare runs of different sets separately. Columns are named by
    :func:`run_defense`, with `` · seed N`` when a label repeats, in grid order. The index
    (``poison``) holds the poisons' training indices, poisons caught by the most runs first.
    """
    columns: list[tuple[str, int, str, np.ndarray]] = []
    poisons: np.ndarray | None = None
    for run in map(_open, runs):
        config = run.config
        is_poison = run.examples()["is_poison"].to_numpy(bool)
        if not is_poison.any() or config.get("defense", "none") == "none":
            continue
        index = np.flatnonzero(is_poison)
        if poisons is None:
            poisons = index
        elif not np.array_equal(poisons, index):
            raise InputError(
                run.path,
                "its poisons are not those of the other runs: compare one poison set at a time",
            )
        label = run_defense(run)
        columns.append((label, int(config.get("seed", 0)), run.name, dropped_at_end(run)[index]))
    if poisons is None:
        return pd.DataFrame(index=pd.Index([], name="poison", dtype=np.int64))
    rank = {d: i for i, d in enumerate(defense_order(c[0] for c in columns))}
    columns.sort(key=lambda c: (rank[c[0]], c[1], c[2]))
    labels = [c[0] for c in columns]
    names = [
        f"{lab} · seed {seed}" if labels.count(lab) > 1 else lab for lab, seed, _, _ in columns
    ]
    names = [
        f"{n} ({c[2]})" if names.count(n) > 1 else n for n, c in zip(names, columns, strict=True)
    ]
    overlap = pd.DataFrame(
        {n: c[3] for n, c in zip(names, columns, strict=True)},
        index=pd.Index(poisons, name="poison"),
    )
    caught = overlap.sum(axis=1).to_numpy()
    order = np.lexsort((overlap.index.to_numpy(), -caught))
    return overlap.iloc[order]


def overlap_summary(overlap: pd.DataFrame) -> dict:
    """Counts of :func:`poison_overlap`: n_poisons, n_runs, caught_by_all, caught_by_some,
    caught_by_none, and ``caught`` (a Series: poisons each column caught)."""
    hits = overlap.sum(axis=1)
    n_runs = overlap.shape[1]
    return {
        "n_poisons": len(overlap),
        "n_runs": n_runs,
        "caught_by_all": int((hits == n_runs).sum()) if n_runs else 0,
        "caught_by_some": int(((hits > 0) & (hits < n_runs)).sum()),
        "caught_by_none": int((hits == 0).sum()),
        "caught": overlap.sum(axis=0).astype(int),
    }
