"""bench/paper_check.sh (the GPU cut of the whole-of-CIFAR-10 grid) runs end to end: here on
digits with a tiny CNN on the CPU (ALLOW_CPU=1), as a smoke test of every step it chains."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from poisonlens.store import open_run
from tests.conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_paper_check_runs_every_step_and_writes_the_paired_table(tmp_path):
    env = {**os.environ, "ALLOW_CPU": "1", "DATASET": "digits", "MODEL": "smallcnn", "WIDTH": "8",
           "EPOCHS": "3", "SURROGATE_EPOCHS": "3", "TARGETS": "1", "OUT": str(tmp_path / "out"),
           "KEPT": str(tmp_path / "kept"),
           "PL": str(Path(sys.executable).parent / "poisonlens"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(REPO / "bench" / "paper_check.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "EPIC against its random twin" in done.stdout
    pairs = (tmp_path / "out" / "pairs.txt").read_text().split()
    assert len(pairs) == 2
    runs = pd.read_csv(tmp_path / "out" / "eval" / "runs.csv")
    assert sorted(runs.defense) == ["clean", "epic-0.2", "none", "random-0.2"]
    dropped = runs.set_index("defense").n_dropped
    assert dropped["epic-0.2"] == dropped["random-0.2"] > 0  # the twin drops as many as EPIC

    # Called again with the same OUT it carries on: nothing is trained or crafted a second time
    # (the CPU grid of docs/results.md ran over several sessions this way).
    poisons = (tmp_path / "out" / "poisons" / "set01.npz").stat().st_mtime_ns
    again = subprocess.run(["bash", str(REPO / "bench" / "paper_check.sh")], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=1700)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "surrogate: kept from an earlier call" in again.stdout
    assert "crafted" not in again.stdout
    assert (tmp_path / "out" / "poisons" / "set01.npz").stat().st_mtime_ns == poisons
    assert pd.read_csv(tmp_path / "out" / "eval" / "runs.csv").equals(runs)

    # The EPIC authors' schedule (a selection every EVERY epochs, none after the last lr step) in
    # its own tables, beside the first: the undefended cells come from eval/'s records, untrained.
    authors = subprocess.run(["bash", str(REPO / "bench" / "paper_check.sh")],
                             env={**env, "SCHEDULE": "authors", "EVERY": "1"}, cwd=tmp_path,
                             capture_output=True, text=True, timeout=1700)
    assert authors.returncode == 0, authors.stderr[-2000:]
    assert "EPIC's schedule: authors (--epochs 3 --snapshot-every 1 --drop-after 1 --stop-after 3" in authors.stdout
    theirs = pd.read_csv(tmp_path / "out" / "eval-authors" / "runs.csv").set_index("defense")
    ours = runs.set_index("defense")
    assert sorted(theirs.index) == ["clean", "epic-0.2", "none", "random-0.2"]
    for undefended in ("clean", "none"):
        assert theirs.loc[undefended, "test_acc"] == ours.loc[undefended, "test_acc"]
    trained = {p.name for p in (tmp_path / "out" / "eval-authors" / "runs" / "scratch").iterdir() if p.is_dir()}
    assert trained == {"set01__epic-0.2__seed0", "set01__random-0.2__seed0"}
    assert theirs.loc["epic-0.2", "n_dropped"] == theirs.loc["random-0.2", "n_dropped"] > 0
    epic_params = open_run(tmp_path / "out" / "eval-authors" / "runs" / "scratch" / "set01__epic-0.2__seed0").config
    assert epic_params["defense_params"] == {"subset_size": 0.2, "pool": "all"}
    bad = subprocess.run(["bash", str(REPO / "bench" / "paper_check.sh")], env={**env, "SCHEDULE": "paper"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0 and "SCHEDULE" in bad.stderr

    # On another machine (a new OUT), KEPT alone carries it on: its small files (surrogate,
    # targets, poison sets, evaluate's cell records) stand for the run folders, none retrained.
    kept = sorted(str(p.relative_to(tmp_path / "kept")) for p in (tmp_path / "kept").rglob("*") if p.is_file())
    assert "surrogate/checkpoints/model.pt" in kept and "poisons/set01.npz" in kept
    assert sum(k.startswith("eval/") and k.endswith(".cell.json") for k in kept) == 4 and not any("images.npy" in k for k in kept)
    elsewhere = subprocess.run(["bash", str(REPO / "bench" / "paper_check.sh")],
                               env={**env, "OUT": str(tmp_path / "out2")}, cwd=tmp_path,
                               capture_output=True, text=True, timeout=1700)
    assert elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert "surrogate: kept from an earlier call" in elsewhere.stdout and "crafted" not in elsewhere.stdout
    assert not [p for p in (tmp_path / "out2" / "eval" / "runs" / "scratch").iterdir() if p.is_dir()]
    assert pd.read_csv(tmp_path / "out2" / "eval" / "runs.csv").equals(runs)


def test_paper_check_without_cuda_says_so_and_runs_nothing(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PL": str(Path(sys.executable).parent / "poisonlens"),
           "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(["bash", str(REPO / "bench" / "paper_check.sh")], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "no CUDA device" in done.stdout
    assert not (tmp_path / "out").exists()
