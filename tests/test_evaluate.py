"""`poisonlens evaluate`: the grid, its resumption, and a table recomputed from the run stores."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from core.cli import main
from core.data import load_dataset
from core.data.poisons import PoisonSet, save_poisons_npz
from core.errors import InputError
from core.evaluate import find_poison_sets, parse_defense, plan_grid, run_grid
from core.store import RUN_JSON, open_run
from core.train import train
from tests.conftest import tiny_config


def label_flip_set(path, n: int, target_index: int) -> None:
    """n digits of class 1 relabelled 7: a crude poison set with known ground truth."""
    data = load_dataset("digits")
    base = np.flatnonzero(data.y_train == 1)[:n]
    save_poisons_npz(PoisonSet(x=data.x_train[base], y=np.full(n, 7), base_indices=base,
                               target_x=data.x_test[target_index], target_label=int(data.y_test[target_index]),
                               adv_label=7, attack="label-flip", target_index=target_index), path)


@pytest.fixture
def poison_dir(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    label_flip_set(folder / "a.npz", 20, 0)
    label_flip_set(folder / "b.npz", 10, 1)
    return folder


def test_defense_specs_map_to_training_settings():
    assert parse_defense("clean") == {"defense": "none", "defense_params": {}, "clean_control": True}
    assert parse_defense("epic-0.2")["defense_params"] == {"subset_size": 0.2}
    assert parse_defense("random-0.1")["defense_params"] == {"match_subset": 0.1}
    with pytest.raises(InputError, match="unknown defense 'magic'"):
        parse_defense("magic")


def test_a_folder_of_poison_sets_is_found_in_order(poison_dir):
    assert [p.name for p in find_poison_sets(poison_dir)] == ["a.npz", "b.npz"]


def test_the_clean_control_trains_on_base_images_but_keeps_the_target(poison_dir, tmp_path):
    grid = plan_grid([poison_dir / "a.npz"], ["clean"], [0], tmp_path / "out")
    run_grid(tiny_config(epochs=1), grid, show_progress=False)
    run = open_run(grid[0].run_dir)
    assert not run.examples()["is_poison"].any()
    assert run.examples()["label"].tolist() == load_dataset("digits").y_train.tolist()
    assert run.target["adv_label"] == 7 and run.metrics()["target_pred"].iloc[-1] >= 0


def test_evaluate_skips_finished_runs_and_resumes_interrupted_ones(poison_dir, tmp_path):
    base = tiny_config(epochs=2)
    grid = plan_grid(find_poison_sets(poison_dir), ["none", "loss"], [0], tmp_path / "out")
    run_grid(base, grid[:1], show_progress=False)

    # the second cell was killed after epoch 1: status running, its process gone
    from core.evaluate import parse_defense as spec

    train(replace(base, poisons=str(grid[1].poisons), seed=0, **spec("loss")), grid[1].run_dir,
          show_progress=False, stop_at_epoch=1)
    meta = json.loads((grid[1].run_dir / RUN_JSON).read_text())
    (grid[1].run_dir / RUN_JSON).write_text(json.dumps({**meta, "pid": 2**22 + 12345}))
    created = {c.run_dir: json.loads((c.run_dir / RUN_JSON).read_text())["created"] for c in grid[:2]}
    run_grid(base, grid, show_progress=False)
    for cell in grid:
        assert open_run(cell.run_dir).status == "finished"
    for cell in grid[:2]:  # neither redone from scratch
        assert json.loads((cell.run_dir / RUN_JSON).read_text())["created"] == created[cell.run_dir]


def test_the_table_is_recomputed_from_the_run_stores(poison_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["evaluate", "--quiet", "--poisons", str(poison_dir), "--defenses", "none,loss",
                 "--seeds", "0,1", "--epochs", "2", "--width", "4", "--drop-after", "0", "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 2 * 2 * 2
    for _, r in runs.iterrows():
        run = open_run(out / "runs" / f"{r.poison_set}__{r.defense}__seed{r.seed}")
        last = run.metrics().iloc[-1]
        n_poisons = run.examples()["is_poison"].sum()
        assert r.test_acc == pytest.approx(last.test_acc)
        assert r.recall == pytest.approx(last.n_poison_dropped / n_poisons)
    summary = pd.read_csv(out / "summary.csv").set_index("defense")
    loss = runs[runs.defense == "loss"]
    assert summary.loc["loss", "recall_mean"] == pytest.approx(loss.recall.mean())
    assert summary.loc["loss", "n_runs"] == 4
    assert summary.loc["none", "n_dropped_mean"] == 0
    assert "| loss | 4 |" in (out / "summary.md").read_text()
    detection = pd.read_csv(out / "detection.csv")
    assert set(detection.epoch) == {0, 2} and detection[detection.defense == "loss"].roc_auc.notna().all()


def test_random_drops_copy_the_epic_twins_schedule(poison_dir, tmp_path):
    grid = plan_grid([poison_dir / "a.npz"], ["random-0.3", "epic-0.3"], [0], tmp_path / "out")
    assert [c.defense for c in grid] == ["epic-0.3", "random-0.3"]
    run_grid(tiny_config(epochs=4), grid, show_progress=False)
    epic, rand = (open_run(c.run_dir).metrics() for c in grid)
    assert epic["n_new_drops"].sum() > 0
    assert epic["n_new_drops"].tolist() == rand["n_new_drops"].tolist()
