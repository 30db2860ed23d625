"""`poisonlens evaluate`: the grid, its resumption, and a table recomputed from the run stores."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from poisonlens.cli import main
from poisonlens.data import load_dataset
from poisonlens.data.poisons import PoisonSet, save_poisons_npz
from poisonlens.errors import InputError
from poisonlens.evaluate import (
    cell_config,
    controlled,
    find_poison_sets,
    parse_defense,
    parse_scenarios,
    plan_grid,
    poison_sets_for,
    pretrain_split,
    run_grid,
    summarise,
    wilson_interval,
)
from poisonlens.store import RUN_JSON, open_run
from poisonlens.train import train
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


def test_scenarios_may_have_their_own_poison_subfolders(poison_dir):
    (poison_dir / "transfer").mkdir()
    label_flip_set(poison_dir / "transfer" / "t.npz", 5, 2)
    assert [p.name for p in poison_sets_for(poison_dir, "transfer")] == ["t.npz"]
    assert [p.name for p in poison_sets_for(poison_dir, "scratch")] == ["a.npz", "b.npz"]
    with pytest.raises(InputError, match="unknown scenario 'scratchy'"):
        parse_scenarios("scratch,scratchy")


def test_the_clean_control_is_one_run_per_seed_whatever_the_poison_sets(poison_dir, tmp_path):
    grid = plan_grid(find_poison_sets(poison_dir), ["clean", "none"], [0, 1], tmp_path / "out")
    controls = [c for c in grid if c.defense == "clean"]
    assert [(c.poisons, c.seed) for c in controls] == [(None, 0), (None, 1)]
    run_grid(tiny_config(epochs=1), controls[:1], show_progress=False)
    run = open_run(controls[0].run_dir)
    assert not run.examples()["is_poison"].any()
    assert run.examples()["label"].tolist() == load_dataset("digits").y_train.tolist()
    assert run.config["tags"] == {"grid": "evaluate", "scenario": "scratch", "poison_set": "",
                                  "defense": "clean", "defense_params": {}, "seed": 0, "twin": None,
                                  "inputs": {"poisons": None, "pretrained": None, "exclude": None}}


def test_the_pretraining_split_is_the_first_half_of_every_class():
    labels = np.array([0, 1, 0, 0, 1, 2, 0, 1, 2, 1])
    assert pretrain_split(labels).tolist() == [0, 1, 2, 4, 5]


def test_evaluate_skips_finished_runs_and_resumes_interrupted_ones(poison_dir, tmp_path):
    base = tiny_config(epochs=2)
    grid = plan_grid(find_poison_sets(poison_dir), ["none", "loss"], [0], tmp_path / "out")
    run_grid(base, grid[:1], show_progress=False)

    # the second cell was killed after epoch 1: status running, its process gone
    train(cell_config(base, grid[1]), grid[1].run_dir, show_progress=False, stop_at_epoch=1)
    meta = json.loads((grid[1].run_dir / RUN_JSON).read_text())
    (grid[1].run_dir / RUN_JSON).write_text(json.dumps({**meta, "pid": 2**22 + 12345}))
    created = {c.run_dir: json.loads((c.run_dir / RUN_JSON).read_text())["created"] for c in grid[:2]}
    run_grid(base, grid, show_progress=False)
    for cell in grid:
        assert open_run(cell.run_dir).status == "finished"
    for cell in grid[:2]:  # neither redone from scratch
        assert json.loads((cell.run_dir / RUN_JSON).read_text())["created"] == created[cell.run_dir]
    assert open_run(grid[1].run_dir).metrics()["epoch"].tolist() == [0, 1, 2]


def test_the_table_is_recomputed_from_the_run_stores(poison_dir, tmp_path):
    out = tmp_path / "out"
    assert main(["evaluate", "--quiet", "--poisons", str(poison_dir), "--defenses", "clean,none,loss",
                 "--seeds", "0,1", "--epochs", "2", "--width", "4", "--drop-after", "0",
                 "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3 * 2 * 2  # the control is read out once per poison set
    for _, r in runs[runs.defense != "clean"].iterrows():
        run = open_run(out / "runs" / "scratch" / f"{r.poison_set}__{r.defense}__seed{r.seed}")
        assert run.config["tags"]["poison_set"] == r.poison_set
        last = run.metrics().iloc[-1]
        n_poisons = run.examples()["is_poison"].sum()
        assert r.test_acc == pytest.approx(last.test_acc)
        assert r.recall == pytest.approx(last.n_poison_dropped / n_poisons)
        ctrl = runs[(runs.defense == "clean") & (runs.poison_set == r.poison_set) & (runs.seed == r.seed)]
        assert r.control_flip == ctrl.attack_success.item()
        assert r.controlled_success == float(r.attack_success == 1 and r.control_flip == 0)
    summary = pd.read_csv(out / "summary.csv").set_index("defense")
    loss = runs[runs.defense == "loss"]
    assert summary.loc["loss", "recall_mean"] == pytest.approx(loss.recall.mean())
    assert summary.loc["loss", "n_runs"] == 4
    assert summary.loc["loss", "attack_success_k"] == loss.attack_success.sum()
    assert summary.loc["none", "n_dropped_mean"] == 0
    assert summary.loc["clean", "controlled_success_k"] == 0
    md = (out / "summary.md").read_text()
    assert "#### scratch" in md and "| loss | 4 |" in md and "ROC-AUC" in md
    detection = pd.read_csv(out / "detection.csv")
    assert set(detection.epoch) == {0, 2} and detection[detection.defense == "loss"].roc_auc.notna().all()


def test_random_drops_copy_the_epic_twins_schedule(poison_dir, tmp_path):
    grid = plan_grid([poison_dir / "a.npz"], ["random-0.3", "epic-0.3"], [0], tmp_path / "out")
    assert [c.defense for c in grid] == ["epic-0.3", "random-0.3"]
    run_grid(tiny_config(epochs=4), grid, show_progress=False)
    epic, rand = (open_run(c.run_dir).metrics() for c in grid)
    assert epic["n_new_drops"].sum() > 0
    assert epic["n_new_drops"].tolist() == rand["n_new_drops"].tolist()
    assert open_run(grid[1].run_dir).config["tags"]["twin"] == grid[0].run_dir.name


@pytest.mark.parametrize(("k", "n", "lo", "hi"), [(0, 10, 0.0, 0.2775), (5, 10, 0.2366, 0.7634),
                                                  (10, 10, 0.7225, 1.0), (1, 3, 0.0615, 0.7923)])
def test_wilson_intervals_match_the_textbook_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got == pytest.approx((lo, hi), abs=1e-4)


def test_a_flip_the_clean_control_also_shows_is_not_a_controlled_success():
    runs = pd.DataFrame({
        "scenario": ["scratch"] * 4, "defense": ["none"] * 4, "poison_set": ["a", "a", "b", "b"],
        "seed": [0, 1, 0, 1], "attack_success": [1.0, 1.0, 1.0, 0.0],
        "control_flip": [1.0, 0.0, 0.0, 0.0],
        **{c: [0.0] * 4 for c in ("test_acc", "n_dropped", "recall", "precision", "roc_auc", "seconds")},
    })
    runs["controlled_success"] = [controlled(a, c) for a, c in zip(runs.attack_success, runs.control_flip, strict=True)]
    row = summarise(runs, ["none"]).iloc[0]
    assert (row.attack_success_k, row.controlled_success_k, row.controlled_success_n) == (3, 2, 4)


def test_paired_counts_where_epic_and_its_twin_differ_cell_by_cell():
    from poisonlens.evaluate import paired

    rows = []
    for seed, (none, epic, twin) in enumerate([(1, 0, 1), (1, 1, 0), (1, 1, 1), (0, 0, 0)]):
        for defense, success in (("none", none), ("epic-0.2", epic), ("random-0.2", twin)):
            rows.append({"scenario": "scratch", "poison_set": "a", "seed": seed, "defense": defense,
                         "controlled_success": float(success), "test_acc": 0.9, "recall": 0.5,
                         "n_dropped": 10 * (seed + 1)})
    rows.append({"scenario": "scratch", "poison_set": "b", "seed": 0, "defense": "epic-0.2",
                 "controlled_success": 1.0, "test_acc": 0.9, "recall": 0.5, "n_dropped": 1})  # no twin
    table = paired(pd.DataFrame(rows))
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.cells, row.none_success, row.epic_success, row.twin_success) == (4, 3, 2, 2)
    assert (row.epic_only_stops, row.twin_only_stops) == (1, 1)
    assert row.n_dropped_epic == row.n_dropped_twin == 25
    assert paired(pd.DataFrame(rows[:1])).empty


def test_evaluate_takes_every_train_option_except_what_the_grid_sets():
    from poisonlens.cli import build_parser
    from poisonlens.commands.evaluate import GRID_FIELDS
    from poisonlens.config import option_fields, option_name

    sub = build_parser()._subparsers._group_actions[0].choices
    flags = {a: {s for x in sub[a]._actions for s in x.option_strings} for a in ("train", "evaluate")}
    config_flags = {option_name(f.name) for f in option_fields() if f.name not in GRID_FIELDS}
    assert config_flags - {"--defense-params"} <= flags["evaluate"]
    assert {"--config", "--batch-size", "--augment", "--lr-milestones", "--device"} <= flags["evaluate"]
    assert not {"--defense", "--seed", "--scenario", "--pretrained"} & flags["evaluate"]


def test_evaluate_options_reach_every_run_of_the_grid(tmp_path):
    folder = tmp_path / "sets"
    folder.mkdir()
    label_flip_set(folder / "a.npz", 20, 0)
    out = tmp_path / "out"
    assert main(["evaluate", "--poisons", str(folder), "--defenses", "none", "--seeds", "0",
                 "--epochs", "1", "--width", "4", "--batch-size", "64", "--augment", "none",
                 "--lr", "0.05", "--lr-milestones", "0.5", "--weight-decay", "0.001", "--quiet",
                 "--out", str(out)]) == 0
    config = json.loads((out / "runs" / "scratch" / "a__none__seed0" / "run.json").read_text())["config"]
    assert (config["batch_size"], config["augment"], config["lr"], config["lr_milestones"],
            config["weight_decay"], config["width"]) == (64, "none", 0.05, [0.5], 0.001, 4)


def test_a_random_cell_finds_its_epic_twin_by_tags_not_by_folder_name(tmp_path):
    import shutil

    from poisonlens.evaluate import cell_config, plan_grid, run_cells, twin_dir


    label_flip_set(tmp_path / "a.npz", 20, 0)
    epic, rand = plan_grid([tmp_path / "a.npz"], ["epic-0.2", "random-0.2"], [0], tmp_path / "out")
    base = tiny_config(epochs=2, snapshot_every=1)
    run_cells([(epic, cell_config(base, epic))], n_jobs=1, show_progress=False)
    renamed = epic.run_dir.with_name("whatever-name")
    epic.run_dir.rename(renamed)
    # a decoy wearing the twin's old folder name, tagged as another seed
    shutil.copytree(renamed, epic.run_dir)
    meta = json.loads((epic.run_dir / "run.json").read_text())
    meta["config"]["tags"]["seed"] = 7
    (epic.run_dir / "run.json").write_text(json.dumps(meta))
    assert twin_dir(rand) == renamed
    assert cell_config(base, rand).tags["twin"] == "whatever-name"


def test_runs_and_detection_csv_escape_a_formula_in_a_poison_file_name(tmp_path):
    """A poison set named like a spreadsheet formula reaches runs.csv and detection.csv as
    text ('=... escaped), through the same formula-safe writer as export."""
    folder = tmp_path / "sets"
    folder.mkdir()
    name = "=2*3+cmd|' -c calc'!A0"
    label_flip_set(folder / f"{name}.npz", 10, 0)
    out = tmp_path / "out"
    assert main(["evaluate", "--quiet", "--poisons", str(folder), "--defenses", "loss",
                 "--seeds", "0", "--epochs", "1", "--width", "4", "--drop-after", "0",
                 "--out", str(out)]) == 0
    for csv in ("runs.csv", "detection.csv"):
        text = (out / csv).read_text()
        assert name in text, csv
        cells = [cell.strip('"') for line in text.splitlines() for cell in line.split(",")]
        assert not any(cell.startswith(("=", "+", "-", "@")) and not cell.lstrip("-").replace(".", "").isdigit()
                       and cell not in ("-",) for cell in cells if cell), (csv, text[:500])
        assert f"'{name}" in text


def test_the_clean_control_loads_its_data_once_for_every_poison_set(poison_dir, tmp_path, monkeypatch):
    # on the whole of CIFAR-10 loading the data set is the cost: it was loaded once per set
    import poisonlens.data as data_module
    from poisonlens.evaluate import control_readout, control_readouts

    out = tmp_path / "out"
    assert main(["evaluate", "--quiet", "--poisons", str(poison_dir), "--defenses", "clean",
                 "--seeds", "0", "--epochs", "1", "--width", "4", "--out", str(out)]) == 0
    control = out / "runs" / "scratch" / "clean__seed0"
    sets = sorted(poison_dir.glob("*.npz"))
    one_by_one = [control_readout(control, p) for p in sets]
    loads = []
    real = data_module.load_dataset
    monkeypatch.setattr(data_module, "load_dataset", lambda *a, **k: loads.append(a) or real(*a, **k))
    assert control_readouts(control, sets) == one_by_one
    assert len(loads) == 1
    runs = pd.read_csv(out / "runs.csv")
    assert list(runs.sort_values("poison_set").target_prob_adv) == pytest.approx([r["prob_adv"] for r in one_by_one])


def test_a_grid_whose_only_finished_cells_are_controls_writes_its_tables(poison_dir, tmp_path):
    # `--defenses clean` alone, and `--finished-only` before any poisoned cell had finished,
    # stopped with "KeyError: 'defense'": the control was read out on no poison set
    out = tmp_path / "out"
    tiny = ["--quiet", "--poisons", str(poison_dir), "--seeds", "0", "--epochs", "1", "--width", "4", "--out", str(out)]
    assert main(["evaluate", "--defenses", "clean", *tiny]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs.poison_set) == ["a", "b"] and set(runs.defense) == {"clean"}
    (out / "runs.csv").unlink()
    assert main(["evaluate", "--defenses", "clean,none", "--finished-only", *tiny]) == 0
    assert sorted(pd.read_csv(out / "runs.csv").poison_set) == ["a", "b"]


def test_a_grid_defense_param_reaches_the_cells_whose_defense_takes_it(poison_dir, tmp_path):
    from poisonlens.config import TrainConfig

    grid = plan_grid(find_poison_sets(poison_dir)[:1], ["clean", "none", "epic-0.2", "random-0.2"], [0],
                     tmp_path, defense_params={"pool": "all"})
    configs = {c.defense: cell_config(TrainConfig(dataset="digits"), c) for c in grid}
    assert configs["epic-0.2"].defense_params == {"subset_size": 0.2, "pool": "all"}
    assert configs["epic-0.2"].tags["defense_params"] == {"subset_size": 0.2, "pool": "all"}
    assert "pool" not in configs["random-0.2"].defense_params  # the twin copies EPIC's counts
    assert configs["none"].defense_params == {} and configs["clean"].defense_params == {}


@pytest.mark.parametrize("param, says", [
    ('pool="all"', "'pool': no defense of --defenses takes it"),  # the grid below has no EPIC
    ("nonsense", "expected KEY=VALUE"),
])
def test_a_grid_defense_param_no_defense_takes_is_one_line_and_exit_2(poison_dir, tmp_path, param, says):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "poisonlens.cli", "evaluate", "--poisons", str(poison_dir),
                           "--defenses", "none,random-0.2", "--defense-param", param, "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and says in done.stderr and done.stderr.count("\n") == 1
    assert not (tmp_path / "o").exists()  # refused before anything was written


def test_a_value_epic_refuses_is_one_line_naming_the_option(poison_dir, tmp_path):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "poisonlens.cli", "evaluate", "--poisons", str(poison_dir),
                           "--defenses", "epic-0.2", "--defense-param", 'pool="some"', "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("poisonlens: --defense-param: epic: pool must be one of")


def test_a_grid_asked_for_with_other_options_refuses_the_cells_trained_before(one_set, tmp_path, capsys):
    # evaluate skipped a finished cell whatever options it had been trained with: the same grid
    # asked for with --epochs 2, or with --defense-param pool="all", into the same --out
    # reported the 1-epoch, pool="active" runs as its own
    out = tmp_path / "out"
    grid = ["evaluate", "--quiet", "--poisons", str(one_set), "--defenses", "none,epic-0.2", "--seeds", "0",
            "--width", "4", "--drop-after", "0", "--out", str(out)]
    assert main([*grid, "--epochs", "1"]) == 0
    epic = out / "runs" / "scratch" / "a__epic-0.2__seed0"
    made = json.loads((epic / RUN_JSON).read_text())["created"]
    capsys.readouterr()
    for extra, says in [
        (["--epochs", "2"], "a__none__seed0: trained with epochs 1, this grid 2;"),
        (["--epochs", "1", "--defense-param", 'pool="all"'],
         "a__epic-0.2__seed0: trained with defense_params.pool 'active', this grid 'all';"),
        (["--epochs", "2", "--finished-only"], "trained with epochs 1, this grid 2;"),
    ]:
        assert main([*grid, *extra]) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    assert json.loads((epic / RUN_JSON).read_text())["created"] == made  # refused, not retrained
    # the run folder gone, its record kept: the record's options are checked as well
    shutil.rmtree(epic)
    assert main([*grid, "--epochs", "1", "--defense-param", "subset_size=0.3", "--finished-only"]) == 2
    assert "a__epic-0.2__seed0.cell.json: trained with defense_params.subset_size 0.2, this grid 0.3" in \
        capsys.readouterr().err
    assert not epic.exists()  # nothing was trained again


def test_options_that_do_not_change_a_cell_are_not_a_different_grid(one_set, tmp_path):
    from poisonlens.evaluate import cell_config, config_differences, plan_grid

    none, epic = plan_grid([one_set / "a.npz"], ["none", "epic-0.2"], [0], tmp_path / "out")
    base = tiny_config(dataset="imagefolder:/data/cifar10")
    stored = {c: json.loads(json.dumps(cell_config(base, c).to_json())) for c in (none, epic)}
    for c in (none, epic):  # written on another machine, another device, other threads
        stored[c].update(dataset="imagefolder:../shared/cifar10", device="cuda:1", snapshot_batch_size=4096)
    stored[epic]["defense_params"] = {"subset_size": 0.2, "n_jobs": 4}  # made before `pool` existed
    moved = replace(base, snapshot_every=5, stop_after=27)  # the undefended cell drops nothing either way
    assert config_differences(cell_config(moved, none), stored[none]) == []
    assert config_differences(cell_config(base, epic), stored[epic]) == []
    assert config_differences(cell_config(moved, epic), stored[epic]) == [
        "snapshot_every 2, this grid 5", "stop_after 100, this grid 27"]
    assert config_differences(cell_config(base, none), {**stored[none], "lr": 0.1}) == []  # its default
    assert config_differences(cell_config(base, none), {**stored[none], "nesterov": 1}) == [
        "nesterov 1, this grid True"]  # 1 == True in Python, not here
    assert config_differences(cell_config(base, none), {**stored[none], "dataset": "imagefolder:/data/cifar100"}) == [
        "dataset 'imagefolder:cifar100', this grid 'imagefolder:cifar10'"]


def _grid(one_set, out, *extra, defenses="none,epic-0.2"):
    return main(["evaluate", "--quiet", "--poisons", str(one_set), "--defenses", defenses, "--seeds", "0",
                 "--width", "4", "--drop-after", "0", "--epochs", "1", "--out", str(out), *extra])


def test_what_the_tables_read_and_what_a_cell_read_are_checked_too(one_set, tmp_path, capsys):
    # an attacker's review: with the run folder there, only run.json was compared, but the
    # tables read the record (edited to epochs 40, test_acc 0.999: reported as this grid's);
    # and a poison set re-crafted under the same name, or an --exclude file, went unseen
    out = tmp_path / "out"
    assert _grid(one_set, out) == 0
    record = out / "runs" / "scratch" / "a__epic-0.2__seed0.cell.json"
    kept = json.loads(record.read_text())
    kept["config"]["epochs"] = 40
    kept["summary"]["test_acc"] = 0.999
    record.write_text(json.dumps(kept))
    capsys.readouterr()
    assert _grid(one_set, out, "--finished-only") == 2
    assert "a__epic-0.2__seed0.cell.json: trained with epochs 40, this grid 1;" in capsys.readouterr().err
    record.unlink()  # the run folder alone: its run.json is compared

    excluded = tmp_path / "exclude.csv"
    excluded.write_text("index\n0\n1\n")
    assert _grid(one_set, out, "--exclude", str(excluded)) == 2
    assert "a__none__seed0: trained with another exclude file than this grid's" in capsys.readouterr().err
    label_flip_set(one_set / "a.npz", 5, 3)  # re-crafted under the same name: another target, 5 poisons
    assert _grid(one_set, out) == 2
    assert "a__none__seed0: trained with another poisons file than this grid's" in capsys.readouterr().err


def test_a_finished_random_drop_must_match_its_twin_as_it_is_now(one_set, tmp_path, capsys):
    # its counts were never compared: the EPIC twin deleted and asked for at subset 0.5 was
    # retrained (355 drops) while the finished random cell kept its 18
    out = tmp_path / "out"
    assert _grid(one_set, out, defenses="epic-0.2,random-0.2") == 0
    scratch = out / "runs" / "scratch"
    shutil.rmtree(scratch / "a__epic-0.2__seed0")
    (scratch / "a__epic-0.2__seed0.cell.json").unlink()
    capsys.readouterr()
    assert _grid(one_set, out, "--defense-param", "subset_size=0.5", defenses="epic-0.2,random-0.2") == 2
    err = capsys.readouterr().err
    assert "a__random-0.2__seed0: trained with its EPIC twin's drops, but the twin is not finished" in err
    assert err.count("\n") == 1
    assert not (scratch / "a__epic-0.2__seed0").exists()  # refused before anything trained
    # a random drop alone in its grid (no twin to copy: it matches EPIC's size itself) is alike
    assert _grid(one_set, tmp_path / "alone", defenses="random-0.2") == 0
    assert _grid(one_set, tmp_path / "alone", "--finished-only", defenses="random-0.2") == 0


def test_a_random_drops_own_parameter_reaches_it_beside_the_copied_counts(one_set, tmp_path):
    # --defense-param random_state=3 was dropped when the counts were copied, while the tags
    # said random_state 3
    from poisonlens.evaluate import plan_grid

    epic, rand = plan_grid([one_set / "a.npz"], ["epic-0.2", "random-0.2"], [0], tmp_path / "out",
                           defense_params={"random_state": 3})
    train(cell_config(tiny_config(epochs=1), epic), epic.run_dir, show_progress=False)
    params = cell_config(tiny_config(epochs=1), rand).defense_params
    assert params["random_state"] == 3 and "counts" in params


def test_a_model_pretrained_otherwise_is_not_the_grids(one_set, tmp_path, capsys):
    # --pretrain-epochs 2 reused the model pretrained for 1 epoch
    out = tmp_path / "out"
    transfer = ("--scenarios", "transfer", "--pretrain-epochs")
    assert _grid(one_set, out, *transfer, "1", defenses="none") == 0
    capsys.readouterr()
    assert _grid(one_set, out, *transfer, "2", defenses="none") == 2
    assert "seed0: trained with epochs 1, this grid 2;" in capsys.readouterr().err
