"""The evaluate grid end to end on digits: three scenarios, one process per run, a killed grid."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from poisonlens.cli import main
from poisonlens.evaluate import cell_config, plan_grid, run_cells
from poisonlens.store import RUN_JSON, open_run
from tests.conftest import REPO, tiny_config

TINY = ["--epochs", "2", "--width", "4", "--snapshot-every", "1", "--drop-after", "0",
        "--stop-after", "2", "--seeds", "0", "--quiet"]
TIMING = ["epoch_seconds", "eval_seconds", "snapshot_seconds", "defense_seconds"]
# Each run is its own process (~3 s of imports on an idle core); on the shared 2-core machine
# a process can take a minute, so these end-to-end tests get more than the default timeout.
pytestmark = pytest.mark.timeout(2400)


def without_timings(metrics: pd.DataFrame) -> pd.DataFrame:
    """The metrics table less its wall-clock columns (and the defense's own timings)."""
    info = [json.loads(i) if i else {} for i in metrics["defense_info"]]
    for i in info:
        i.pop("seconds", None)
    return metrics.drop(columns=TIMING).assign(defense_info=[json.dumps(i) for i in info])


def test_a_grid_of_all_three_scenarios_finishes_and_writes_the_tables(one_set, tmp_path):
    out = tmp_path / "out"
    assert main(["evaluate", "--poisons", str(one_set), "--scenarios", "scratch,transfer,finetune",
                 "--defenses", "clean,spectral", "--pretrain-epochs", "1", *TINY, "--out", str(out)]) == 0
    pretrained = out / "pretrained" / "digits" / "seed0"
    assert open_run(pretrained).status == "finished"
    assert open_run(pretrained).config["tags"]["role"] == "pretrain"
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.scenario.unique()) == ["finetune", "scratch", "transfer"]
    assert len(runs) == 3 * 2  # per scenario: the control read out on set a, and spectral
    for scenario in ("transfer", "finetune"):
        config = open_run(out / "runs" / scenario / "a__spectral__seed0").config
        assert config["scenario"] == scenario
        assert config["pretrained"] == str(pretrained / "checkpoints" / "model.pt")
        assert config["tags"]["scenario"] == scenario
    spectral = runs[runs.defense == "spectral"]
    assert spectral.n_dropped.gt(0).all() and spectral.roc_auc.notna().all()
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 6 and {"attack_success_lo", "controlled_success_hi"} <= set(summary)
    md = (out / "summary.md").read_text()
    assert all(f"#### {s}" in md for s in ("scratch", "transfer", "finetune"))


def test_the_same_cell_trained_twice_gives_identical_metrics(one_set, tmp_path):
    cells = [plan_grid([one_set / "a.npz"], ["epic-0.2"], [0], tmp_path / f"out{i}")[0]
             for i in range(2)]
    base = tiny_config(epochs=3, snapshot_every=1)
    run_cells([(c, cell_config(base, c)) for c in cells], n_jobs=2, show_progress=False)
    first, second = (without_timings(open_run(c.run_dir).metrics()) for c in cells)
    pd.testing.assert_frame_equal(first, second)
    assert first["n_dropped"].iloc[-1] > 0
    a, b = (open_run(c.run_dir).snapshot(3) for c in cells)
    pd.testing.assert_frame_equal(a, b)


def test_a_killed_grid_resumes_where_it_stopped(one_set, tmp_path):
    out = tmp_path / "out"
    args = ["evaluate", "--poisons", str(one_set), "--defenses", "none,loss,spectral",
            "--epochs", "4", "--width", "4", "--seeds", "0", "--jobs", "1", "--quiet",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from poisonlens.cli import main; "
                             "sys.exit(main(sys.argv[1:]))", *args], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    root = out / "runs" / "scratch"
    deadline = time.monotonic() + 600
    finished = []
    while time.monotonic() < deadline and not finished:
        time.sleep(0.5)
        finished = [p for p in root.glob("*/") if (p / RUN_JSON).is_file()
                    and open_run(p).status == "finished"]
    assert finished, "no run finished in time"
    os.killpg(proc.pid, signal.SIGKILL)  # the grid and the run it was training
    proc.wait()
    created = {p: json.loads((p / RUN_JSON).read_text())["created"] for p in finished}
    assert len(finished) < 3  # killed before the end

    assert main(args) == 0
    for path, stamp in created.items():  # finished runs were not redone
        assert json.loads((path / RUN_JSON).read_text())["created"] == stamp
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3
    assert all(open_run(p).status == "finished" for p in root.glob("*/"))


def test_epic_and_its_twin_are_paired_and_finished_only_rebuilds_the_tables(one_set, tmp_path):
    out = tmp_path / "out"
    grid = ["evaluate", "--poisons", str(one_set), "--defenses", "clean,none,epic-0.3,random-0.3",
            *TINY, "--out", str(out)]
    assert main(grid) == 0
    pairs = pd.read_csv(out / "paired.csv")
    assert list(pairs[["scenario", "epic", "twin", "cells"]].itertuples(index=False, name=None)) == [
        ("scratch", "epic-0.3", "random-0.3", 1)]
    runs = pd.read_csv(out / "runs.csv").set_index("defense")
    assert pairs.n_dropped_epic[0] == runs.n_dropped["epic-0.3"] == runs.n_dropped["random-0.3"] > 0
    assert "EPIC against its random twin" in (out / "summary.md").read_text()
    tables = {name: (out / name).read_bytes() for name in ("runs.csv", "paired.csv", "summary.md")}
    # a run left unfinished is skipped, and nothing is trained
    twin = out / "runs" / "scratch" / "a__random-0.3__seed0" / RUN_JSON
    meta = json.loads(twin.read_text())
    twin.write_text(json.dumps({**meta, "status": "running", "pid": None}))
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()}
    assert main([*grid, "--finished-only"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").rglob("*") if p.is_file()} == mtimes
    assert len(pd.read_csv(out / "runs.csv")) == 3 and pd.read_csv(out / "paired.csv").empty
    twin.write_text(json.dumps(meta))
    assert main([*grid, "--finished-only"]) == 0
    assert {name: (out / name).read_bytes() for name in tables} == tables


def test_the_grid_runs_a_poison_set_s_cells_together_each_random_drop_after_its_twin(tmp_path):
    # A grid stopped part-way must leave whole (set, seed) groups: before this order every
    # random drop waited for the last EPIC run of the whole grid (two waves), so a long grid
    # killed half-way had EPIC runs and no twin to compare them with.
    from poisonlens.evaluate import run_order, twin_cell

    sets = [tmp_path / "a.npz", tmp_path / "b.npz"]
    grid = plan_grid(sets, ["clean", "none", "epic-0.2", "random-0.2"], [0, 1], tmp_path / "out")
    order = [(c.seed, c.poison_set, c.defense) for c in run_order(grid)]
    assert order == [(s, p, d) for s in (0, 1)
                     for p, d in [("", "clean"), *[(p, d) for p in ("a", "b")
                                                   for d in ("none", "epic-0.2", "random-0.2")]]]
    rand = next(c for c in grid if c.defense == "random-0.2" and c.poison_set == "b" and c.seed == 1)
    twin = twin_cell(rand, grid)
    assert (twin.defense, twin.poison_set, twin.seed) == ("epic-0.2", "b", 1)
    assert twin_cell(twin, grid) is None


def test_a_random_drop_whose_twin_failed_is_not_run_and_both_are_named(tmp_path):
    from poisonlens.evaluate import twin_cell

    missing = tmp_path / "gone.npz"  # the EPIC run fails: its poison set is not there
    epic, rand = plan_grid([missing], ["epic-0.2", "random-0.2"], [0], tmp_path / "out")
    base = tiny_config(epochs=1)
    grid = [rand, epic]  # listed first, the random drop must still wait for its twin
    with pytest.raises(RuntimeError, match=r"2 run\(s\) failed.*gone__epic-0.2__seed0.*not run"):
        run_cells([(c, lambda c=c: cell_config(base, c)) for c in grid], n_jobs=2,
                  show_progress=False, needs=lambda c: twin_cell(c, grid))
    assert not rand.run_dir.exists()
