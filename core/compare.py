"""Comparing runs: a table of final numbers, a per-defense summary, and which poisons each catches.

The runs come from an evaluate output folder (``<out>/runs/<scenario>/<set>__<defense>__seed<N>``),
a folder of runs, or any list of run directories. A run's identity (scenario, poison set,
defense, seed) is read from the ``tags`` evaluate stores in its run.json; the directory name is
only a label. Every number is recomputed from the run stores with
:func:`poisonlens.evaluate.run_summary`, the function behind ``runs.csv``. Pure functions of run
directories, no Streamlit.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from poisonlens.cell_match import RUNTIME_PARAMS
from poisonlens.defense import spec_label
from poisonlens.errors import InputError
from poisonlens.evaluate import (
    DEFAULT_DEFENSES,
    SUMMARY_COLUMNS,
    control_readout,
    control_readouts,
    controlled,
    parse_defense,
    run_summary,
    summarise,
)
from poisonlens.store import RUN_JSON, Run, open_run

NO_POISONS = "(no poisons)"
TABLE_COLUMNS = (
    "run",
    "scenario",
    "poison_set",
    "defense",
    "seed",
    "status",
    *SUMMARY_COLUMNS,
    "attack_success",
    "control_flip",
    "controlled_success",
    "target_prob_adv",
    "n_poisons",
    "n_samples",
    "path",
)


# --- which runs ----------------------------------------------------------------------------


def find_runs(folder: str | Path) -> list[Path]:
    """The run directories of an evaluate output folder (its ``runs/``), of a folder of runs, or
    the folder itself when it is a run; sorted by name.

    Parameters
    ----------
    folder : str or path
        An evaluate output folder, a folder of runs, or one run.
    """
    folder = Path(folder).expanduser()
    if (folder / RUN_JSON).is_file():
        return [folder]
    if not folder.is_dir():
        raise InputError(folder, "no such folder")
    inside = folder / "runs" if (folder / "runs").is_dir() else folder
    runs = sorted(p for p in inside.iterdir() if (p / RUN_JSON).is_file())
    # an evaluate output keeps one folder per scenario: runs/<scenario>/<run>
    runs += sorted(
        p for sub in sorted(inside.iterdir()) if sub.is_dir() and not (sub / RUN_JSON).is_file()
        for p in sub.iterdir() if (p / RUN_JSON).is_file()
    )
    if not runs:
        raise InputError(folder, "holds no runs (neither an evaluate output nor a folder of runs)")
    return runs


def runs_of_one_poison_set(paths: Iterable[str | Path]) -> list[Path]:
    """The largest group of at least two runs that share a poison set (a clean control counts
    with the set it restores), in the order given; [] when there is none.

    What Compare opens on when there is no evaluate output, e.g. the bundled sample's four runs.
    Unreadable runs are skipped.

    Parameters
    ----------
    paths : iterable of str or path
        Run directories, in the order to keep.
    """
    groups: dict[str, list[Path]] = {}
    for path in map(Path, paths):
        try:
            config = open_run(path).config
        except (InputError, OSError, ValueError):
            continue
        if config.get("poisons"):
            groups.setdefault(poison_set_name(config), []).append(path)
    best = max(groups.values(), key=len, default=[])
    return best if len(best) >= 2 else []


def _open(run: Run | str | Path) -> Run:
    return run if isinstance(run, Run) else open_run(run)


def _as_runs(runs: Iterable[Run | str | Path] | str | Path) -> list[Run]:
    if isinstance(runs, (str, Path)):
        return [open_run(p) for p in find_runs(runs)]
    return [_open(r) for r in runs]


# --- labels --------------------------------------------------------------------------------


def defense_label(config: dict) -> str:
    """A name for a run's defense from its configuration, as the evaluate grid names it (see
    :func:`poisonlens.evaluate.parse_defense`): ``clean`` for the clean control, else the
    defense registry's label (:func:`poisonlens.defense.spec_label`: ``epic-<subset_size>``,
    ``random-<match_subset>``, the defense's name, any other parameters in brackets as in
    ``random(fraction=0.05)``, ``random (matched drops)`` for a copied drop schedule).

    Parameters
    ----------
    config : dict
        A run's configuration (run.json's ``config``): ``clean_control``, ``defense`` and
        ``defense_params`` are read.
    """
    if config.get("clean_control"):
        return "clean"
    return spec_label(str(config.get("defense", "none")), dict(config.get("defense_params") or {}))


def run_defense(run: Run) -> str:
    """The defense label of a run: the ``defense`` tag of an evaluate cell (with the
    ``--defense-param`` it was trained with that its spec does not say and that is not the
    default, ``epic-0.2(pool=all)``), else :func:`defense_label` of its configuration. A folder's name is only a name: it is never
    read for identity.

    Parameters
    ----------
    run : Run
        An opened run (its run.json's ``config`` and ``tags`` are read).
    """
    tags = run.config.get("tags") or {}
    if tags.get("defense"):
        spec = str(tags["defense"])
        extra = _grid_params(spec, tags.get("defense_params"))
        return spec + ("(" + ", ".join(f"{k}={v}" for k, v in sorted(extra.items())) + ")" if extra else "")
    return defense_label(run.config)


def _grid_params(spec: str, params: object) -> dict:
    """The parameters of an evaluate cell that its spec does not say (a ``--defense-param`` such
    as EPIC's ``pool='all'``), those at their default left out: so that one spec trained two
    ways is two defenses in the table, not one."""
    from poisonlens.defense import defense_options

    if not isinstance(params, dict):
        return {}
    try:
        said = parse_defense(spec)
    except InputError:  # a tag no grid writes: its spec alone
        return {}
    defaults = {f.name: f.default for f in defense_options(said["defense"])}
    return {k: v for k, v in params.items()
            if k in defaults and k not in said["defense_params"] and k not in RUNTIME_PARAMS and v != defaults[k]}


def poison_set_name(config: dict) -> str:
    """The poison set's file or folder name without suffix (an evaluate cell's ``poison_set`` tag).

    Parameters
    ----------
    config : dict
        A run's configuration (run.json's ``config``).
    """
    tagged = (config.get("tags") or {}).get("poison_set")
    if tagged:
        return str(tagged)
    poisons = config.get("poisons")
    return Path(poisons).stem if poisons else NO_POISONS


def defense_order(labels: Iterable[str]) -> list[str]:
    """Distinct labels: the evaluate grid's default order first (clean, none, epic-…), then the
    rest alphabetically.

    Parameters
    ----------
    labels : iterable of str
        Defense labels, as :func:`defense_label` writes them; repeats are dropped.
    """
    rank = {d: i for i, d in enumerate(DEFAULT_DEFENSES)}
    return sorted(set(labels), key=lambda d: (rank.get(d, len(rank)), d))


# --- the table -----------------------------------------------------------------------------


def scenario_of(config: dict) -> str:
    """A run's scenario: its ``scenario`` tag, else its config's scenario (scratch by default).

    Parameters
    ----------
    config : dict
        A run's configuration (run.json's ``config``).
    """
    return str((config.get("tags") or {}).get("scenario") or config.get("scenario") or "scratch")


def comparison_table(runs: Iterable[Run | str | Path] | str | Path) -> pd.DataFrame:
    """A row per run with at least one finished epoch (columns :data:`TABLE_COLUMNS`).

    ``runs``: runs or run directories, or a folder (see :func:`find_runs`). The numbers are
    those of ``runs.csv`` (:func:`poisonlens.evaluate.run_summary`, at the run's last finished epoch);
    ``status`` says whether the run finished. Where an evaluate clean control of the same
    scenario and seed is among the runs, ``control_flip`` is whether it predicts a poisoned
    run's target as the attacker's class and ``controlled_success`` counts only flips it does
    not show (NaN otherwise). Sorted by scenario, poison set, defense (grid order), seed.

    Parameters
    ----------
    runs : iterable of Run, str or path, or a folder
        The runs to compare (a folder is read by :func:`find_runs`).
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
                "scenario": scenario_of(config),
                "poison_set": poison_set_name(config),
                "defense": run_defense(run),
                "seed": int(config.get("seed", 0)),
                "status": run.status,
                **run_summary(run.path),
                "n_poisons": int(examples["is_poison"].sum()),
                "n_samples": len(examples),
                "path": str(run.path),
                "_poisons": config.get("poisons"),
            }
        )
    table = pd.DataFrame(rows, columns=[*TABLE_COLUMNS, "_poisons"])
    if table.empty:
        return table.drop(columns="_poisons")
    table = _read_out_controls(table)
    clean = table["defense"] == "clean"  # the read-out controls keep their own values
    table["control_flip"] = [
        r["control_flip"] if c else _control_flip(table, r)
        for c, (_, r) in zip(clean, table.iterrows(), strict=True)
    ]
    table["controlled_success"] = [
        r["controlled_success"] if c else controlled(r["attack_success"], r["control_flip"])
        for c, (_, r) in zip(clean, table.iterrows(), strict=True)
    ]
    rank = {d: i for i, d in enumerate(defense_order(table["defense"]))}
    table = table.sort_values(
        ["scenario", "poison_set", "defense", "seed", "run"],
        key=lambda c: c.map(rank) if c.name == "defense" else c,
    )
    return table.drop(columns="_poisons").reset_index(drop=True)


def _read_out_controls(table: pd.DataFrame) -> pd.DataFrame:
    """An evaluate clean control (trained without poisons, so without a target of its own) as
    ``runs.csv`` has it: one row per poison set of its scenario, read out on that set's target.

    Without this the control showed "no target" and counted as a poison set "(no poisons)".
    A control whose read-out fails keeps its one row (NaN target).
    """
    sets = table[table["_poisons"].notna() & (table["n_poisons"] > 0)]
    out = []
    for _, row in table.iterrows():
        mine = sets[sets["scenario"] == row["scenario"]].drop_duplicates("poison_set")
        own_set = isinstance(row["_poisons"], str) and row["_poisons"]  # NaN: none
        if row["defense"] != "clean" or own_set or row["status"] != "finished" or mine.empty:
            out.append(row.to_dict())
            continue
        try:
            readouts = control_readouts(Path(row["path"]), [Path(p) for p in mine["_poisons"]])
        except (InputError, OSError):
            out.append(row.to_dict())
            continue
        out += [{**row.to_dict(), "poison_set": s, "attack_success": r["flip"],
                 "target_prob_adv": r["prob_adv"], "control_flip": r["flip"], "controlled_success": 0.0}
                for s, r in zip(mine["poison_set"], readouts, strict=True)]
    return pd.DataFrame(out, columns=table.columns)


def _control_flip(table: pd.DataFrame, row: pd.Series) -> float:
    """The clean control (an evaluate ``clean`` run without poisons, same scenario and seed)
    read out on ``row``'s target; NaN when there is none."""
    if not row["_poisons"] or row["defense"] == "clean":
        return np.nan
    ctrl = table[(table["defense"] == "clean") & (table["scenario"] == row["scenario"])
                 & (table["seed"] == row["seed"]) & (table["n_poisons"] == 0)
                 & (table["status"] == "finished")]
    if ctrl.empty:
        return np.nan
    read = ctrl[(ctrl["poison_set"] == row["poison_set"]) & ctrl["control_flip"].notna()]
    if not read.empty:  # already read out on this set's target (_read_out_controls)
        return float(read["control_flip"].iloc[0])
    try:
        return control_readout(Path(ctrl["path"].iloc[0]), Path(row["_poisons"]))["flip"]
    except (InputError, OSError):
        return np.nan


def per_defense_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (scenario, defense), over poison sets and seeds, of the finished runs of ``table``.

    The columns of ``summary.csv`` (:func:`poisonlens.evaluate.summarise`: n_runs, success counts with
    Wilson intervals, ``<x>_mean``, ``<x>_std``), plus what dropping the same number of
    examples at random would give, on average, on the runs with poisons: ``random_recall_mean``
    (share of all examples dropped) and ``base_rate_mean`` (share of poisons in the training
    set, a random drop's precision).

    Parameters
    ----------
    table : DataFrame
        A :func:`comparison_table`; unfinished runs are left out.
    """
    done = table[table["status"] == "finished"]
    if done.empty:
        return pd.DataFrame(
            columns=["scenario", "defense", "n_runs", "random_recall_mean", "base_rate_mean"]
        )
    summary = summarise(done, defense_order(done["defense"]))
    poisoned = done[done["n_poisons"] > 0]
    chance = pd.DataFrame(
        {
            "scenario": poisoned["scenario"],
            "defense": poisoned["defense"],
            "random_recall_mean": poisoned["n_dropped"] / poisoned["n_samples"],
            "base_rate_mean": poisoned["n_poisons"] / poisoned["n_samples"],
        }
    )
    chance = chance.groupby(["scenario", "defense"]).mean()
    return summary.join(chance, on=["scenario", "defense"])


# --- which poisons each run catches --------------------------------------------------------


def dropped_at_end(run: Run) -> np.ndarray:
    """bool (n_samples,): dropped by the run's last snapshot (all False without a snapshot).

    Parameters
    ----------
    run : Run
        An opened run.
    """
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

    Parameters
    ----------
    runs : iterable of Run, str or path
        The runs to compare, of one poison set.
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
    caught_by_none, and ``caught`` (a Series: poisons each column caught).

    Parameters
    ----------
    overlap : DataFrame of shape (n_poisons, n_runs)
        bool, what :func:`poison_overlap` returns.
    """
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
