"""A finished cell's record: the tables and a random twin's counts outlive the run folders, and a
forged or damaged record is one line naming it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from poisonlens import cell_records
from poisonlens.cli import main
from poisonlens.errors import InputError
from poisonlens.evaluate import cell_config, cell_record, cell_state, plan_grid, run_grid
from poisonlens.store import open_run
from tests.conftest import REPO, tiny_config

TINY = ["--epochs", "2", "--width", "4", "--snapshot-every", "1", "--drop-after", "0",
        "--stop-after", "2", "--seeds", "0", "--quiet"]
TABLES = ("runs.csv", "detection.csv", "summary.csv", "paired.csv", "summary.md")
pytestmark = pytest.mark.timeout(1200)


def test_the_tables_are_the_same_after_the_run_folders_are_deleted(one_set, tmp_path):
    out = tmp_path / "out"
    grid = ["evaluate", "--poisons", str(one_set), "--defenses", "clean,none,epic-0.3,random-0.3",
            *TINY, "--out", str(out)]
    assert main(grid) == 0
    tables = {name: (out / name).read_bytes() for name in TABLES}
    root = out / "runs" / "scratch"
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    assert len(folders) == 4
    for folder in folders:
        assert cell_records.has_record(folder)
    assert cell_records.model_path(root / "clean__seed0").is_file()  # the control's weights
    assert not cell_records.model_path(root / "a__none__seed0").exists()
    for folder in folders:
        shutil.rmtree(folder)

    assert main([*grid, "--finished-only"]) == 0
    assert {name: (out / name).read_bytes() for name in TABLES} == tables
    assert main(grid) == 0  # nothing is trained again: every cell is finished by its record
    assert not any(p.is_dir() for p in root.iterdir())
    assert {name: (out / name).read_bytes() for name in TABLES} == tables


def test_a_random_drop_copies_the_counts_of_a_twin_known_only_by_its_record(one_set, tmp_path):
    epic, rand = plan_grid([one_set / "a.npz"], ["epic-0.3", "random-0.3"], [0], tmp_path / "out")
    base = tiny_config(epochs=3, snapshot_every=1)
    run_grid(base, [epic], show_progress=False)
    counts = {int(e): int(n) for e, n in zip(open_run(epic.run_dir).metrics()["epoch"],
                                             open_run(epic.run_dir).metrics()["n_new_drops"],
                                             strict=True) if n > 0}
    assert counts and cell_records.has_record(epic.run_dir)
    shutil.rmtree(epic.run_dir)
    assert cell_state(epic.run_dir) == "finished"

    config = cell_config(base, rand)
    assert config.defense_params == {"counts": counts}
    assert config.tags["twin"] == epic.run_dir.name
    run_grid(base, [epic, rand], show_progress=False)  # the EPIC cell is not trained again
    assert not epic.run_dir.exists()
    dropped = open_run(rand.run_dir).metrics()
    assert {int(e): int(n) for e, n in zip(dropped["epoch"], dropped["n_new_drops"], strict=True)
            if n > 0} == counts


def test_a_cell_trained_again_from_scratch_replaces_its_old_record(one_set, tmp_path):
    (cell,) = plan_grid([one_set / "a.npz"], ["none"], [0], tmp_path / "out")
    cell.run_dir.parent.mkdir(parents=True)
    forged = _valid_record(cell.run_dir, epochs=99)
    cell.run_dir.mkdir()  # an earlier attempt that died before writing anything
    assert cell_state(cell.run_dir) == "fresh"
    assert json.loads(forged.read_text())["config"]["epochs"] == 99
    run_grid(tiny_config(epochs=1), [cell], show_progress=False)
    assert cell_record(cell)["config"]["epochs"] == 1


def _valid_record(run_dir, *, epochs=2, **identity):
    ident = {"scenario": "scratch", "poison_set": "a", "defense": "none", "seed": 0, **identity}
    cell_records.write_record(
        run_dir, identity=ident, config={"epochs": epochs},
        summary={k: 0.5 for k in cell_records.SUMMARY_KEYS},
        detection=[{"epoch": 1, "n_suspect": 0, "precision": float("nan"), "recall": 0.0,
                    "roc_auc": None}],
        drops={1: 3},
    )
    return cell_records.record_path(run_dir)


def _edit(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


DAMAGE = {
    "another cell": (lambda r: r["identity"].update(defense="epic-0.2"), "records another cell"),
    "another version": (lambda r: r.update(version=2), "version 1"),
    "a word for a number": (lambda r: r["summary"].update(test_acc="high"), "summary.test_acc"),
    "a bool for a number": (lambda r: r["detection"][0].update(recall=True), "detection.recall"),
    "a negative drop": (lambda r: r.update(drops=[[1, -5]]), "'drops'"),
    "a float epoch": (lambda r: r.update(drops=[[1.5, 3]]), "'drops'"),
    "no config": (lambda r: r.pop("config"), "'config'"),
    "a path for the model": (lambda r: r.update(model="/etc/passwd"), "'model'"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_record_is_refused_naming_it(tmp_path, damage):
    change, words = DAMAGE[damage]
    path = _valid_record(tmp_path / "a__none__seed0")
    _edit(path, change)
    with pytest.raises(InputError, match=words) as err:
        cell_records.read_record(tmp_path / "a__none__seed0",
                                 {"scenario": "scratch", "poison_set": "a", "defense": "none",
                                  "seed": 0})
    assert str(path) in str(err.value)


def test_a_valid_record_reads_back_with_nan_for_missing_numbers(tmp_path):
    _valid_record(tmp_path / "a__none__seed0")
    rec = cell_records.read_record(tmp_path / "a__none__seed0", {
        "scenario": "scratch", "poison_set": "a", "defense": "none", "seed": 0})
    assert rec["drops"] == {1: 3} and rec["model"] is None and rec["summary"]["test_acc"] == 0.5
    assert pd.isna(rec["detection"][0]["precision"]) and pd.isna(rec["detection"][0]["roc_auc"])


def test_a_record_that_is_a_link_or_too_large_is_refused(tmp_path):
    real = _valid_record(tmp_path / "elsewhere")
    link_dir = tmp_path / "runs"
    link_dir.mkdir()
    os.symlink(real, cell_records.record_path(link_dir / "a__none__seed0"))
    with pytest.raises(InputError, match="link"):
        cell_records.has_record(link_dir / "a__none__seed0")
    big = _valid_record(tmp_path / "big")
    big.write_text(" " * (cell_records.MAX_RECORD_BYTES + 1) + big.read_text())
    with pytest.raises(InputError, match="larger|bytes"):
        cell_records.read_record(tmp_path / "big", {"scenario": "scratch", "poison_set": "a",
                                                     "defense": "none", "seed": 0})


def test_evaluate_with_a_forged_record_exits_2_with_one_line(one_set, tmp_path):
    out = tmp_path / "out"
    run_dir = out / "runs" / "scratch" / "a__none__seed0"
    run_dir.parent.mkdir(parents=True)
    _edit(_valid_record(run_dir), lambda r: r["summary"].update(seconds=[1, 2]))
    proc = subprocess.run(
        [sys.executable, "-m", "poisonlens.cli", "evaluate", "--poisons", str(one_set),
         "--defenses", "none", *TINY, "--finished-only", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "a__none__seed0.cell.json" in lines[0] and "seconds" in lines[0]
    assert "Traceback" not in proc.stderr
