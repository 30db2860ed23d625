"""Comparing runs (poisonlens.compare) and the Compare page, on a small real evaluate output.

The output is made once per module with poisonlens.evaluate: two label-flip poison sets on digits,
2-epoch runs of a 4-channel CNN (a few seconds in all).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from poisonlens.compare import (
    comparison_table,
    defense_label,
    find_runs,
    overlap_summary,
    per_defense_summary,
    poison_overlap,
    run_defense,
)
from poisonlens.errors import InputError
from poisonlens.evaluate import parse_defense, plan_grid, run_grid, write_results
from poisonlens.store import RunWriter, open_run
from tests.conftest import tiny_config
from tests.test_evaluate import label_flip_set

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
DEFENSES = ["clean", "none", "epic-0.2", "random-0.2", "loss"]


@pytest.fixture(scope="module")
def evaluate_out(tmp_path_factory) -> Path:
    """results/flips: set a (20 poisons) under every defense of DEFENSES with seeds 0 and 1,
    set b (10 poisons) under none and loss with seed 0."""
    root = tmp_path_factory.mktemp("compare")
    (root / "sets").mkdir()
    label_flip_set(root / "sets" / "a.npz", 20, 0)
    label_flip_set(root / "sets" / "b.npz", 10, 1)
    out = root / "results" / "flips"
    grid = plan_grid([root / "sets" / "a.npz"], DEFENSES, [0, 1], out)
    grid += plan_grid([root / "sets" / "b.npz"], ["none", "loss"], [0], out)
    run_grid(tiny_config(epochs=2), grid, show_progress=False)
    write_results(grid, DEFENSES, out)
    return out


def run_dir(out: Path, name: str, scenario: str = "scratch") -> Path:
    return out / "runs" / scenario / name


def set_a(table: pd.DataFrame) -> list[str]:
    return table.loc[table["poison_set"] == "a", "path"].tolist()


# --- which runs, and their names -------------------------------------------------------------


def test_defense_labels_are_the_evaluate_grid_names():
    for spec in ["clean", "none", "epic-0.2", "random-0.1", "loss"]:
        assert defense_label(parse_defense(spec)) == spec
    assert defense_label({"defense": "random", "defense_params": {"fraction": 0.05}}) == (
        "random(fraction=0.05)"
    )


def test_a_random_cell_keeps_its_grid_name_though_it_copied_its_epic_twins_drops(evaluate_out):
    run = open_run(run_dir(evaluate_out, "a__random-0.2__seed0"))
    assert "counts" in run.config["defense_params"]  # the config no longer says 0.2
    assert defense_label(run.config) == "random (matched drops)"
    table = comparison_table([run.path])
    assert table["defense"].tolist() == ["random-0.2"]
    twin = comparison_table([run_dir(evaluate_out, "a__epic-0.2__seed0")])
    assert table["n_dropped"].tolist() == twin["n_dropped"].tolist()


def test_an_epic_cell_trained_with_a_defense_param_is_its_own_defense(evaluate_out, tmp_path):
    # EPIC's cells in two evaluate folders, one with --defense-param pool="all", were both
    # labelled epic-0.2 and merged into one row of the summary
    epic = run_dir(evaluate_out, "a__epic-0.2__seed0")
    runs = []
    for name, params in [("active", {"pool": "active", "n_jobs": 4}), ("all", {"pool": "all"})]:
        copy = tmp_path / name
        shutil.copytree(epic, copy)
        meta = json.loads((copy / "run.json").read_text())
        meta["config"]["tags"]["defense_params"] = {"subset_size": 0.2, **params}
        (copy / "run.json").write_text(json.dumps(meta))
        runs.append(copy)
    assert [run_defense(open_run(r)) for r in runs] == ["epic-0.2", "epic-0.2(pool=all)"]
    summary = per_defense_summary(comparison_table(runs))
    assert sorted(summary["defense"]) == ["epic-0.2", "epic-0.2(pool=all)"]


def test_runs_are_found_in_an_evaluate_output_a_runs_folder_or_a_run(evaluate_out, tmp_path):
    runs = find_runs(evaluate_out)  # runs/<scenario>/<run>
    assert len(runs) == 12 and runs == find_runs(evaluate_out / "runs")
    assert runs[0].parent.name == "scratch"
    assert find_runs(runs[0]) == [runs[0]]
    with pytest.raises(InputError, match="holds no runs"):
        find_runs(tmp_path)


# --- the table and the summary -------------------------------------------------------------


def test_the_table_of_an_evaluate_output_is_its_runs_csv(evaluate_out):
    table = comparison_table(evaluate_out)
    csv = pd.read_csv(evaluate_out / "runs.csv")
    key = ["scenario", "poison_set", "defense", "seed"]
    # runs.csv reads the one clean control per seed out on every set; the table lists it once
    # issue 17: the control is read out on each poison set's target, as runs.csv does (it showed
    # "no target" and counted as a poison set of its own, "(no poisons)")
    mine = table.set_index(key).sort_index()
    theirs = csv.set_index(key).sort_index()
    assert mine.index.equals(theirs.index)
    for col in theirs.columns:
        np.testing.assert_allclose(
            mine[col].to_numpy(float), theirs[col].to_numpy(float), rtol=1e-6
        )
    assert (table["status"] == "finished").all()
    assert table.loc[table["defense"] == "clean", "n_poisons"].eq(0).all()
    clean = table[table["defense"] == "clean"]
    assert len(clean) == 4 and clean["attack_success"].notna().all()  # 2 seeds x 2 sets
    assert set(table["poison_set"]) == {"a", "b"}
    assert table.loc[table["poison_set"] == "a", "defense"].unique().tolist() == DEFENSES
    assert set(table["scenario"]) == {"scratch"}


def test_the_per_defense_summary_is_summary_csv_plus_a_random_drop(evaluate_out):
    table = comparison_table(evaluate_out)
    summary = per_defense_summary(table).set_index("defense")
    csv = pd.read_csv(evaluate_out / "summary.csv").set_index("defense")
    assert summary.index.tolist() == DEFENSES == csv.index.tolist()
    attacked = DEFENSES  # the control too: read out per set, as summary.csv does
    for col in csv.columns.drop("scenario"):
        np.testing.assert_allclose(
            summary.loc[attacked, col].to_numpy(float), csv.loc[attacked, col].to_numpy(float),
            rtol=1e-6,
        )
    loss = table[table["defense"] == "loss"]
    assert summary.loc["loss", "random_recall_mean"] == pytest.approx(
        (loss["n_dropped"] / loss["n_samples"]).mean()
    )
    assert summary.loc["loss", "base_rate_mean"] == pytest.approx(np.mean([20, 20, 10]) / 1347)
    assert np.isnan(summary.loc["clean", "random_recall_mean"])  # the control has no poisons


def test_unfinished_runs_are_listed_but_left_out_of_the_summary(evaluate_out, tmp_path):
    table = comparison_table(evaluate_out)
    table.loc[table["defense"] == "loss", "status"] = "running"
    summary = per_defense_summary(table)
    assert "loss" not in summary["defense"].tolist() and len(summary) == 4
    # a run without a finished epoch has no row at all
    RunWriter(tmp_path / "new").create("new", {"defense": "none"}, {}, class_names=[], target=None)
    assert comparison_table([tmp_path / "new"]).empty


# --- which poisons each run catches --------------------------------------------------------


def test_the_overlap_marks_the_poisons_each_run_dropped(evaluate_out):
    table = comparison_table(evaluate_out)
    overlap = poison_overlap(set_a(table))
    run = open_run(run_dir(evaluate_out, "a__loss__seed1"))
    poisons = np.flatnonzero(run.examples()["is_poison"])
    assert sorted(overlap.index) == poisons.tolist() and overlap.index.name == "poison"
    # clean and none cannot drop anything: left out; a label repeated over seeds names its seed
    assert overlap.columns.tolist() == [
        f"{d} · seed {s}" for d in ("epic-0.2", "random-0.2", "loss") for s in (0, 1)
    ]
    dropped = run.snapshot(run.snapshot_epochs()[-1])["dropped_epoch"].to_numpy() >= 0
    assert overlap["loss · seed 1"].to_numpy().tolist() == dropped[overlap.index].tolist()
    a = table[(table["poison_set"] == "a") & ~table["defense"].isin(["clean", "none"])]
    assert overlap.sum().tolist() == (a["recall"] * 20).round().astype(int).tolist()
    hits = overlap.sum(axis=1).to_numpy()
    assert (np.diff(hits) <= 0).all()  # most often caught first


def test_the_overlap_of_one_run_per_defense_has_plain_names(evaluate_out):
    table = comparison_table(evaluate_out)
    seed0 = table[(table["poison_set"] == "a") & (table["seed"] == 0)]
    assert poison_overlap(seed0["path"]).columns.tolist() == ["epic-0.2", "random-0.2", "loss"]


def test_poisons_of_different_sets_are_not_compared(evaluate_out):
    with pytest.raises(InputError, match="one poison set at a time"):
        poison_overlap(
            [run_dir(evaluate_out, "a__loss__seed0"), run_dir(evaluate_out, "b__loss__seed0")]
        )


def test_overlap_counts_on_a_planted_table():
    overlap = pd.DataFrame(
        {"x": [True, True, False, False], "y": [True, False, True, False]},
        index=pd.Index([5, 6, 7, 8], name="poison"),
    )
    counts = overlap_summary(overlap)
    assert (counts["caught_by_all"], counts["caught_by_some"], counts["caught_by_none"]) == (
        1,
        2,
        1,
    )
    assert counts["caught"].to_dict() == {"x": 2, "y": 2} and counts["n_poisons"] == 4


# --- the page ------------------------------------------------------------------------------


def page(**state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page("views/compare.py")
    return at.run()


@pytest.fixture
def results_env(evaluate_out, monkeypatch):
    monkeypatch.setenv("POISONLENS_RESULTS", str(evaluate_out.parent))
    monkeypatch.setenv("POISONLENS_RUNS", str(evaluate_out / "runs" / "scratch"))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    return evaluate_out


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def test_the_page_opens_the_newest_evaluate_output(results_env):
    at = page()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.text_input(key="cmp_folder").value == str(results_env)
    table = at.dataframe[0].value
    assert len(table) == 14 and set(table["defense"]) == set(DEFENSES)  # the control once per set
    bars = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert "Attack success rate (target flipped)" in json.dumps(bars["layout"])
    assert metrics(at)["Poisons"] == "20"  # set a first
    assert any("`clean` is the control" in c.value for c in at.caption)


def test_choosing_another_poison_set_redraws_the_overlap(results_env):
    at = page()
    at.selectbox(key="cmp_set").set_value("b").run()
    assert not at.exception, at.exception
    assert metrics(at)["Poisons"] == "10"
    heatmap = json.loads(at.get("plotly_chart")[1].proto.spec)["data"][0]
    assert heatmap["type"] == "heatmap" and len(heatmap["y"]) == 1  # loss only: none drops nothing


def test_the_page_compares_picked_runs(results_env):
    picked = [str(run_dir(results_env, f"a__{d}__seed0")) for d in ("none", "epic-0.2", "loss")]
    at = page(cmp_source="runs I pick", cmp_runs=picked)
    assert not at.exception, at.exception
    assert at.dataframe[0].value["defense"].tolist() == ["none", "epic-0.2", "loss"]
    assert metrics(at)["Poisons"] == "20"
    assert "Seed" not in [s.label for s in at.selectbox]  # one seed: nothing to choose


def test_the_page_with_nothing_to_compare_says_how_to_start(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_RESULTS", str(tmp_path / "no-results"))
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path / "no-runs"))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = page()
    assert not at.exception, at.exception
    assert at.radio(key="cmp_source").value == "runs I pick"
    assert any("No runs found" in i.value for i in at.info)
    at.radio(key="cmp_source").set_value("an evaluate output folder").run()
    assert not at.exception and any("poisonlens evaluate" in i.value for i in at.info)


def test_the_scenario_is_a_facet_read_from_the_runs_tags(evaluate_out, tmp_path, monkeypatch):
    out = tmp_path / "results" / "two-scenarios"
    shutil.copytree(evaluate_out, out)
    for name in ("a__none__seed0", "a__loss__seed0"):  # the same runs, tagged as transfer
        copy = run_dir(out, name, "transfer")
        shutil.copytree(run_dir(out, name), copy)
        meta = json.loads((copy / "run.json").read_text())
        meta["config"]["tags"]["scenario"] = "transfer"
        (copy / "run.json").write_text(json.dumps(meta))
    table = comparison_table(out)
    assert table.groupby("scenario").size().to_dict() == {"scratch": 14, "transfer": 2}
    assert set(per_defense_summary(table).query("scenario == 'transfer'")["defense"]) == {
        "none", "loss"
    }
    monkeypatch.setenv("POISONLENS_RESULTS", str(out.parent))
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path / "no-runs"))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = page()
    assert not at.exception, at.exception
    facet = at.radio(key="cmp_scenario")
    assert facet.options == ["scratch (14 runs)", "transfer (2 runs)"]
    assert len(at.dataframe[0].value) == 14
    facet.set_value("transfer").run()
    assert not at.exception, at.exception
    assert at.dataframe[0].value["defense"].tolist() == ["none", "loss"]
    assert at.query_params["scenario"] == ["transfer"] or at.query_params["scenario"] == "transfer"


def test_long_defense_and_run_names_get_room_on_the_axes(results_env):
    at = page()
    assert not at.exception, at.exception
    bars, heat = (json.loads(c.proto.spec)["layout"] for c in at.get("plotly_chart")[:2])
    assert bars["margin"]["b"] >= 5 * len("random-0.2") + 40 and bars["xaxis"]["automargin"]
    longest_run = max(len(c) for c in ("epic-0.2 · seed 0", "random-0.2 · seed 1"))
    assert heat["margin"]["l"] >= 7 * longest_run and heat["yaxis"]["automargin"]


def test_a_folder_name_is_never_read_for_identity(evaluate_out, tmp_path):
    # an untagged copy of the random cell, in a folder named like another grid cell
    copy = tmp_path / "b__random-0.3__seed0"  # a grid-like name that agrees with the config
    shutil.copytree(run_dir(evaluate_out, "a__random-0.2__seed0"), copy)
    meta = json.loads((copy / "run.json").read_text())
    meta["config"]["tags"] = {}
    (copy / "run.json").write_text(json.dumps(meta))
    assert run_defense(open_run(copy)) == "random (matched drops)"


# --- newcomer defects (issue 17) -------------------------------------------------------------


def test_the_headline_counts_poison_sets_not_the_clean_control(results_env):
    at = page()
    assert not at.exception, at.exception
    headline = next(m.value for m in at.markdown if "finished runs" in m.value)
    assert "on 2 poison sets" in headline, headline


def test_the_page_finds_an_evaluate_output_given_as_the_results_folder_itself(
    evaluate_out, monkeypatch
):
    # `poisonlens evaluate --out results/` makes results/ itself the output folder
    monkeypatch.setenv("POISONLENS_RESULTS", str(evaluate_out))
    monkeypatch.setenv("POISONLENS_RUNS", str(evaluate_out / "no-runs"))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = page()
    assert not at.exception, at.exception
    assert at.radio(key="cmp_source").value == "an evaluate output folder"
    assert at.text_input(key="cmp_folder").value == str(evaluate_out)
    assert len(at.dataframe[0].value) == 14


def test_the_page_opens_on_the_bundled_samples_runs_of_one_poison_set(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_RESULTS", str(tmp_path / "no-results"))
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path / "no-runs"))
    monkeypatch.delenv("POISONLENS_SAMPLES", raising=False)  # the bundled sample
    at = page()
    assert not at.exception, at.exception
    assert at.radio(key="cmp_source").value == "runs I pick"
    assert len(at.multiselect(key="cmp_runs").value) == 4
    table = at.dataframe[0].value
    assert set(table["run"]) == {"demo-none", "demo-epic", "demo-random", "demo-clean-control"}
    assert metrics(at)["Poisons"] == "67"


def test_the_bar_chart_titles_clear_the_tick_labels_and_ticks_do_not_repeat(evaluate_out):
    from poisonlens.dashboard.figures.compare import defense_bars_figure

    table = comparison_table(evaluate_out)
    table.loc[table["defense"] == "loss", "precision"] = 0.012  # small: 1%, 1%, 2%, 2% before
    full = defense_bars_figure(per_defense_summary(table)).to_dict()
    fig = full["layout"]
    for axis in ("xaxis", "xaxis2", "xaxis3", "xaxis4"):
        assert fig[axis].get("tickangle", 0) == 0  # no rotated label reaches into a title
    for axis in ("yaxis", "yaxis2", "yaxis3", "yaxis4"):
        text = fig[axis]["ticktext"]
        assert len(text) == len(set(text)) >= 3, (axis, text)
        assert len(fig[axis]["tickvals"]) == len(text)
    # every line of every tick label is short (long names are wrapped, not rotated)
    labels = full["data"][0]["x"]
    assert "random-0.2" in labels and all(len(line) <= 16 for t in labels for line in t.split("<br>"))
