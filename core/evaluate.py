"""Evaluation grids: every defense on every poison set and seed, and the results table.

A defense spec is a short name: ``clean`` (the control: poison rows restored to their base
images, target kept), ``none``, ``epic-<subset>``, ``random-<subset>`` (at every snapshot as many
drops, chosen at random, as the ``epic-<subset>`` run of the same poison set and seed made;
without such a run, as many as EPIC would drop on the random run's own snapshots), or any registered defense name (``deepknn``, ...).
Runs are ordinary run directories under ``<out>/runs``; finished ones are never redone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from core.defense import defense_names
from core.errors import InputError
from core.metrics import detection_metrics
from core.store import RUN_JSON, atomic_write_bytes, open_run
from core.train import TrainConfig, train

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
SUMMARY_COLUMNS = ("test_acc", "attack_success", "recall", "precision", "n_dropped", "seconds")


@dataclass(frozen=True)
class GridRun:
    """One cell of the grid: a poison set, a defense spec and a seed, trained into ``run_dir``."""

    poisons: Path
    defense: str
    seed: int
    run_dir: Path


def parse_defense(spec: str) -> dict:
    """TrainConfig fields for a defense spec (see the module docstring)."""
    name, _, arg = spec.rpartition("-")
    if spec == "clean":
        return {"defense": "none", "defense_params": {}, "clean_control": True}
    if name in ("epic", "random"):
        try:
            size = float(arg)
        except ValueError:
            raise InputError(
                "--defenses", f"{spec!r}: expected a subset size such as {name}-0.1"
            ) from None
        key = "subset_size" if name == "epic" else "match_subset"
        return {"defense": name, "defense_params": {key: size}, "clean_control": False}
    if spec in defense_names():
        return {"defense": spec, "defense_params": {}, "clean_control": False}
    raise InputError(
        "--defenses",
        f"unknown defense {spec!r}; use clean, none, epic-<s>, random-<s> or one of {', '.join(defense_names())}",
    )


def find_poison_sets(path: str | Path) -> list[Path]:
    """A poison set, or every poison set directly inside a folder (``*.npz`` and benchmark folders)."""
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


def plan_grid(
    poison_sets: list[Path], defenses: list[str], seeds: list[int], out: Path
) -> list[GridRun]:
    """Every (poison set, defense, seed), random drops after the EPIC runs they copy."""
    ordered = sorted(defenses, key=lambda d: d.startswith("random-"))
    return [
        GridRun(p, d, s, out / "runs" / f"{p.stem}__{d}__seed{s}")
        for p in poison_sets
        for d in ordered
        for s in seeds
    ]


def drop_schedule(run_dir: Path) -> dict[int, int]:
    """{epoch: examples dropped at that snapshot} of a finished run."""
    m = open_run(run_dir).metrics()
    return {int(e): int(n) for e, n in zip(m["epoch"], m["n_new_drops"], strict=True) if n > 0}


def cell_config(base: TrainConfig, cell: GridRun) -> TrainConfig:
    """The training config of one cell; a ``random-<s>`` cell copies its EPIC twin's drop counts."""
    fields = parse_defense(cell.defense)
    if fields["defense"] == "random":
        twin = cell.run_dir.with_name(
            cell.run_dir.name.replace(f"__{cell.defense}__", f"__epic-{cell.defense[7:]}__")
        )
        if (twin / RUN_JSON).is_file() and open_run(twin).status == "finished":
            fields["defense_params"] = {"counts": drop_schedule(twin)}
    return replace(base, poisons=str(cell.poisons), seed=cell.seed, **fields)


def run_grid(base: TrainConfig, grid: list[GridRun], *, show_progress: bool = True) -> None:
    """Train every cell not yet finished; an interrupted cell resumes from its checkpoint."""
    bar = tqdm(grid, desc="evaluate", unit="run", disable=not show_progress)
    for cell in bar:
        bar.set_postfix_str(cell.run_dir.name)
        if (cell.run_dir / RUN_JSON).is_file():
            status = open_run(cell.run_dir).status
            if status == "finished":
                continue
            if status == "interrupted" and (cell.run_dir / "checkpoints" / "last.pt").is_file():
                train(base, cell.run_dir, resume=True, show_progress=False)
                continue
            shutil.rmtree(cell.run_dir)
        train(cell_config(base, cell), cell.run_dir, show_progress=False)


def run_summary(run_dir: str | Path) -> dict:
    """The final numbers of one run, recomputed from its run store (its last finished epoch).

    test_acc, attack_success, recall and precision of the drops (NaN without poisons / without
    drops), n_dropped, seconds (training, evaluation, snapshots and defense), target_prob_adv.
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
        "seconds": float(
            m[["epoch_seconds", "eval_seconds", "snapshot_seconds", "defense_seconds"]].sum().sum()
        ),
        "target_prob_adv": float(last["target_prob_adv"]),
    }


def run_row(cell: GridRun) -> dict:
    """One line of runs.csv: the cell's poison set, defense and seed, then :func:`run_summary`."""
    return {
        "poison_set": cell.poisons.stem,
        "defense": cell.defense,
        "seed": cell.seed,
        **run_summary(cell.run_dir),
    }


def detection_rows(cell: GridRun) -> list[dict]:
    """Per snapshot: precision, recall and ROC-AUC of the defense's score among the active rows."""
    run = open_run(cell.run_dir)
    is_poison = run.examples()["is_poison"].to_numpy(bool)
    rows = []
    for epoch in run.snapshot_epochs():
        snap = run.snapshot(epoch, columns=["active", "score", "suspect"])
        active = snap["active"].to_numpy(bool)
        d = detection_metrics(
            is_poison, snap["suspect"].to_numpy(bool), snap["score"].to_numpy(float), active=active
        )
        rows.append(
            {
                "poison_set": cell.poisons.stem,
                "defense": cell.defense,
                "seed": cell.seed,
                "epoch": epoch,
                "n_suspect": d.n_suspect,
                "precision": d.precision,
                "recall": d.recall,
                "roc_auc": d.roc_auc,
            }
        )
    return rows


def summarise(runs: pd.DataFrame, order: list[str]) -> pd.DataFrame:
    """Mean and std over poison sets and seeds, a row per defense, in ``order``."""
    g = runs.groupby("defense")[list(SUMMARY_COLUMNS)]
    table = g.mean().add_suffix("_mean").join(g.std(ddof=0).add_suffix("_std"))
    table.insert(0, "n_runs", runs.groupby("defense").size())
    return table.reindex([d for d in order if d in table.index]).reset_index()


def to_markdown(summary: pd.DataFrame) -> str:
    """The summary as a Markdown table of mean ± std."""
    header = [
        "defense",
        "runs",
        "clean acc",
        "attack success",
        "poisons dropped (recall)",
        "precision of drops",
        "examples dropped",
        "wall time (s)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    fmt = {
        "test_acc": "{:.3f}",
        "attack_success": "{:.2f}",
        "recall": "{:.2f}",
        "precision": "{:.3f}",
        "n_dropped": "{:.0f}",
        "seconds": "{:.1f}",
    }
    for _, r in summary.iterrows():
        cells = [r["defense"], str(int(r["n_runs"]))]
        for col in SUMMARY_COLUMNS:
            mean, std = r[f"{col}_mean"], r[f"{col}_std"]
            cells.append(
                "–" if pd.isna(mean) else f"{fmt[col].format(mean)} ± {fmt[col].format(std)}"
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results(grid: list[GridRun], defenses: list[str], out: Path) -> pd.DataFrame:
    """runs.csv, detection.csv, summary.csv and summary.md under ``out``; returns the summary."""
    runs = pd.DataFrame([run_row(c) for c in grid])
    detection = pd.DataFrame([r for c in grid for r in detection_rows(c)])
    summary = summarise(runs, defenses)
    atomic_write_bytes(out / "runs.csv", runs.to_csv(index=False).encode())
    atomic_write_bytes(out / "detection.csv", detection.to_csv(index=False).encode())
    atomic_write_bytes(out / "summary.csv", summary.to_csv(index=False).encode())
    atomic_write_bytes(out / "summary.md", to_markdown(summary).encode())
    return summary
