"""Every dashboard page through Streamlit's AppTest, on small real runs and on an empty folder.

AppTest cannot draw a lasso, so selections are driven through session state (``_selected``);
the selection -> indices logic itself is tested in test_projection.py.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import AppTest
from streamlit.testing.v1 import app_test as app_test_module

from poisonlens.cli import main as cli_main
from poisonlens.export import FORMULA_PREFIXES, suspects_table, to_safe_csv
from poisonlens.launch import launch_status, launch_training, list_launches
from poisonlens.store import RunWriter, open_run
from tests.conftest import tiny_config
from tests.dashboard_runs import CLEAN_RUN, N_POISONS, POISON_RUN, runs_folder

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/gradient_space.py", "views/drift.py", "views/suspects.py",
         "views/new_run.py", "views/about.py"]


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory) -> Path:
    """Small digits runs, made once per session (tests/dashboard_runs.py)."""
    return runs_folder(tmp_path_factory)


@pytest.fixture
def runs_env(dashboard_runs, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(dashboard_runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    return dashboard_runs


def app(page: str, run: str | None = None, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    if run:
        at.query_params["run"] = run
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page)
    return at.run()


def figure(at: AppTest, n: int = 0) -> dict:
    return json.loads(at.get("plotly_chart")[n].proto.spec)


def map_figure(at: AppTest) -> dict:  # the Gradient space map (a component since the map stays mounted)
    from tests.test_map import map_figure

    return map_figure(at)


def markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


# --- every page renders --------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
@pytest.mark.parametrize("run", [POISON_RUN, CLEAN_RUN])
def test_every_page_renders_on_a_run(runs_env, page, run):
    # the clean run has no stored map yet: the PCA one is computed on first open
    at = app(page, run, gs_method="pca" if run == CLEAN_RUN else "umap")
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_no_runs(tmp_path, monkeypatch, page):
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path / "empty"))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app(page)
    assert not at.exception, at.exception
    if page not in ("views/new_run.py", "views/about.py"):
        assert any("No runs found" in i.value for i in at.info)


def test_the_run_picker_follows_the_link_and_keeps_it(runs_env):
    at = app("views/overview.py", CLEAN_RUN)
    assert at.selectbox(key="run_picker").value.endswith(CLEAN_RUN)
    at.selectbox(key="run_picker").set_value(str(runs_env / POISON_RUN)).run()
    assert at.query_params["run"] == [POISON_RUN] or at.query_params["run"] == POISON_RUN
    assert POISON_RUN in at.subheader[0].value


# --- overview ------------------------------------------------------------------------------


def test_overview_compares_poison_recall_with_a_random_drop(runs_env):
    at = app("views/overview.py", POISON_RUN)
    labels = [m.label for m in at.metric]
    assert "Poisons dropped (recall)" in labels and "Precision of the drops" in labels
    verdict = [w.value for w in at.warning] + [s.value for s in at.success]
    assert any("at random" in v for v in verdict)
    titles = [figure(at, i)["layout"].get("title", {}).get("text", "") for i in range(len(at.get("plotly_chart")))]
    assert "Accuracy and the attack" in titles


def test_overview_of_a_clean_run_says_there_is_no_ground_truth(runs_env):
    at = app("views/overview.py", CLEAN_RUN)
    assert "Poisons" in [m.label for m in at.metric]
    assert not at.warning and not at.success


# --- gradient space ------------------------------------------------------------------------


def test_moving_the_epoch_slider_moves_the_examples_not_the_map(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    at = app("views/gradient_space.py", POISON_RUN, _epoch=epochs[-1])
    last = map_figure(at)
    assert f"**Epoch {epochs[-1]}**" in markdown(at)
    at.select_slider(key="gs_epoch").set_value(epochs[0]).run()
    assert not at.exception
    first = map_figure(at)
    assert f"**Epoch {epochs[0]}**" in markdown(at)
    assert first["data"][0]["x"] != last["data"][0]["x"]
    assert first["layout"]["xaxis"]["range"] == last["layout"]["xaxis"]["range"]
    assert at.query_params["epoch"] in ([str(epochs[0])], str(epochs[0]))


def test_the_map_draws_each_group_as_its_own_trace(runs_env):
    at = app("views/gradient_space.py", POISON_RUN)
    names = [t["name"] for t in map_figure(at)["data"]]
    assert any(n.startswith("class ") for n in names)
    assert any(n.startswith("poison") for n in names)
    assert any(n.startswith("target") for n in names)
    assert any(n.startswith("medoid") for n in names)
    assert all(t["type"] == "scattergl" for t in map_figure(at)["data"])


def test_a_kept_selection_fills_the_table(runs_env):
    poisons = open_run(runs_env / POISON_RUN).examples().query("is_poison")["index"].tolist()
    at = app("views/gradient_space.py", POISON_RUN, _selected=[0, 1, poisons[0]])
    table = at.dataframe[0].value
    assert table["index"].tolist() == [0, 1, poisons[0]]
    assert table["image"].str.startswith("data:image/png;base64,").all()
    assert any(t["name"].startswith("selected") for t in map_figure(at)["data"])
    at.button(key="gs_clear").click().run()
    assert at.session_state["_selected"] == []


def test_typed_indices_are_added_to_the_selection(runs_env):
    at = app("views/gradient_space.py", POISON_RUN)
    at.text_input(key="gs_typed").input("3, 5-6").run()
    assert at.session_state["_selected"] == [3, 5, 6]


def test_the_per_class_view_shows_cluster_sizes(runs_env):
    at = app("views/gradient_space.py", POISON_RUN)
    at.radio(key="gs_view").set_value("one class").run()
    at.selectbox(key="gs_class").set_value(3).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 1 and at.get("component_instance")  # bars below the map
    assert "Cluster sizes" in figure(at, 0)["layout"]["title"]["text"]


def test_play_advances_the_epoch(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    at = app("views/gradient_space.py", POISON_RUN, _epoch=epochs[0])
    at.button(key="gs_play").click().run()
    assert at.session_state["gs_playing"]
    assert at.session_state["_epoch"] == epochs[1]


def test_a_running_run_offers_the_map_instead_of_computing_it(runs_env, tmp_path, monkeypatch):
    running = copy_as_running(runs_env / CLEAN_RUN, tmp_path / "runs" / "still-training")
    monkeypatch.setenv("POISONLENS_RUNS", str(running.parent))
    at = app("views/gradient_space.py", running.name, gs_method="umap")
    assert not at.exception
    assert any("once training has finished" in i.value for i in at.info)
    assert at.button(key="gs_compute")
    assert open_run(running).projection("umap") is None


def test_the_overview_of_a_running_run_shows_live_progress(runs_env, tmp_path, monkeypatch):
    running = copy_as_running(runs_env / CLEAN_RUN, tmp_path / "runs" / "still-training")
    monkeypatch.setenv("POISONLENS_RUNS", str(running.parent))
    at = app("views/overview.py", running.name)
    assert not at.exception
    assert any("running: epoch" in (p.proto.text or "") for p in at.get("progress"))


def copy_as_running(source: Path, dest: Path) -> Path:
    """A copy of a finished run marked as still training by this (live) process."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("projections"))
    RunWriter(dest).set_status("running")
    return dest


# --- drift ---------------------------------------------------------------------------------


def test_drift_follows_every_poison_and_the_slider_changes_the_table(runs_env):
    at = app("views/drift.py", POISON_RUN)
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    table = at.dataframe[0].value
    assert len(table) == N_POISONS and set(table["group"]) == {"poison"}
    tracks = figure(at, 0)
    # 20 lines at most (issue 17: 205 lines were unreadable); the rest of the 24 as a band
    assert sum(1 for t in tracks["data"] if t.get("legendgroup") == "poison") == min(N_POISONS, 20)
    assert any(t.get("name") == f"poisons: middle half of all {N_POISONS}" for t in tracks["data"])
    at.select_slider(key="dr_epoch").set_value(epochs[0]).run()
    assert not at.exception
    assert not at.dataframe[0].value["drift"].equals(table["drift"])


# --- suspects ------------------------------------------------------------------------------


@pytest.fixture
def media(monkeypatch):
    """The files download buttons hold, by URL (AppTest keeps them in memory)."""
    stores: list[MemoryMediaFileStorage] = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            stores.append(self)

    monkeypatch.setattr(app_test_module, "MemoryMediaFileStorage", Recording)

    def read(url: str) -> bytes:
        return stores[-1].get_file(url.rsplit("/", 1)[-1]).content

    return read


def test_the_csv_download_is_the_export_file(runs_env, media, tmp_path):
    run = open_run(runs_env / POISON_RUN)
    epochs = run.snapshot_epochs()
    at = app("views/suspects.py", POISON_RUN)
    data = media(at.download_button[0].proto.url)
    assert data == to_safe_csv(suspects_table(run, epochs[-1])).encode()
    out = tmp_path / "export.csv"
    assert cli_main(["export", "--run", str(run.path), "--epoch", str(epochs[-1]), "--out", str(out)]) == 0
    assert data == out.read_bytes()
    lines = data.decode().splitlines()
    assert len(lines) == 1 + len(suspects_table(run, epochs[-1]))
    # a cell that starts like a formula must be a plain number (e.g. -1)
    risky = [cell for line in lines for cell in line.split(",") if cell.startswith(FORMULA_PREFIXES)]
    assert all(is_number(cell) for cell in risky), risky


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def test_an_earlier_epoch_downloads_fewer_rows(runs_env, media):
    run = open_run(runs_env / POISON_RUN)
    epochs = run.snapshot_epochs()
    at = app("views/suspects.py", POISON_RUN)
    at.select_slider(key="su_epoch").set_value(epochs[1]).run()
    data = media(at.download_button[0].proto.url)
    assert data == to_safe_csv(suspects_table(run, epochs[1])).encode()
    assert len(suspects_table(run, epochs[1])) < len(suspects_table(run, epochs[-1]))


def test_suspect_filters_narrow_the_table(runs_env):
    at = app("views/suspects.py", POISON_RUN)
    everything = at.dataframe[0].value
    at.radio(key="su_status").set_value("dropped").run()
    dropped = at.dataframe[0].value
    assert 0 < len(dropped) <= len(everything)
    assert (dropped["dropped_epoch"] != "kept").all()
    at.radio(key="su_truth").set_value("clean").run()
    assert not at.dataframe[0].value["is_poison"].any()


def test_the_suspects_table_is_ranked_like_the_export(runs_env):
    run = open_run(runs_env / POISON_RUN)
    at = app("views/suspects.py", POISON_RUN)
    shown = at.dataframe[0].value
    assert shown["index"].tolist() == suspects_table(run)["index"].tolist()
    dropped = shown[shown["dropped_epoch"] != "kept"]
    assert dropped["score"].notna().all() and dropped["score"].is_monotonic_decreasing


def test_suspects_says_why_nothing_was_dropped(runs_env):
    at = app("views/suspects.py", CLEAN_RUN)
    assert any("drop window" in i.value for i in at.info), [i.value for i in at.info]


def test_drift_opens_on_the_snapshot_with_the_most_drops(runs_env):
    run = open_run(runs_env / POISON_RUN)
    drops = run.metrics().set_index("epoch")["n_new_drops"]
    most = max(run.snapshot_epochs(), key=lambda e: (drops[e], -e))
    assert most != run.snapshot_epochs()[-1]  # the last snapshot of this run drops nothing
    at = app("views/drift.py", POISON_RUN)
    assert at.select_slider(key="dr_epoch").value == most


# --- new run -------------------------------------------------------------------------------


def test_a_bad_parameter_is_refused_with_a_message(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app("views/new_run.py")
    at.text_input(key="nr_dataset").input("mnist")
    at.text_input(key="nr_name").input("bad-run")
    at.button[0].click().run()  # the form's submit button
    assert any("Not started" in e.value and "unknown data set" in e.value for e in at.error)
    assert not (tmp_path / "bad-run").exists()


def test_the_form_starts_a_background_run_that_finishes(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = app("views/new_run.py")
    at.number_input(key="nr_epochs").set_value(1)
    at.number_input(key="nr_width").set_value(4)
    at.selectbox(key="nr_defense").set_value("random")
    at.text_area(key="nr_params").input("fraction=0.05")
    at.radio(key="nr_projection").set_value("none")
    at.text_input(key="nr_name").input("from-form")
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("from-form" in s.value for s in at.success)
    run_dir = tmp_path / "from-form"
    deadline = time.time() + 240
    while not launch_status(run_dir).done and time.time() < deadline:
        time.sleep(0.5)
    assert launch_status(run_dir).state == "finished", launch_status(run_dir).log_tail
    at.run()
    assert "from-form" in markdown(at)
    assert [s.name for s in list_launches(tmp_path)] == ["from-form"]


def test_a_failed_launch_shows_its_error(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz file")
    run_dir = launch_training(replace(tiny_config(), dataset=f"npz:{garbage}"), runs_dir=tmp_path, name="dies",
                              projection=None)
    deadline = time.time() + 240
    while not launch_status(run_dir).done and time.time() < deadline:
        time.sleep(0.5)
    at = app("views/new_run.py")
    assert "dies" in markdown(at) and "failed" in markdown(at)
    assert any("garbage.npz" in e.value for e in at.error)


# --- review --------------------------------------------------------------------------------


@pytest.fixture
def own_runs(dashboard_runs, tmp_path, monkeypatch):
    """A copy of the poisoned run that a test may mark (the session's runs stay unreviewed)."""
    import shutil

    shutil.copytree(dashboard_runs / POISON_RUN, tmp_path / "runs" / POISON_RUN)
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    return tmp_path / "runs"


def test_marking_on_suspects_is_kept_shown_filtered_and_exported(own_runs, media):
    from poisonlens.review import read_review

    run = open_run(own_runs / POISON_RUN)
    first_two = suspects_table(run)["index"].tolist()[:2]
    at = app("views/suspects.py", POISON_RUN)
    assert (at.dataframe[0].value["review"] == "").all()
    at.text_input(key="su_mark_typed").input(f"{first_two[0]}, {first_two[1]}").run()
    at.radio(key="su_mark_verdict").set_value("poison").run()
    at.text_input(key="su_mark_note").input("sits apart from its class").run()
    at.button(key="su_mark_save").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert any("Marked 2 example(s)" in s.value for s in at.success)
    review = read_review(open_run(own_runs / POISON_RUN))
    assert review["index"].tolist() == sorted(first_two)
    assert set(review["verdict"]) == {"poison"} and set(review["note"]) == {"sits apart from its class"}
    shown = at.dataframe[0].value.set_index("index")
    assert shown.loc[first_two, "review"].tolist() == ["poison", "poison"]
    at.radio(key="su_review").set_value("poison").run()
    assert sorted(at.dataframe[0].value["index"]) == sorted(first_two)
    assert any("Review: 2 poison, 0 clean, 0 unsure" in c.value for c in at.sidebar.caption)
    data = media(at.download_button[0].proto.url).decode()
    assert data.count(",poison,sits apart from its class,") == 2
    # clear one: it leaves the review
    at.text_input(key="su_mark_typed").input(str(first_two[0])).run()
    at.radio(key="su_mark_verdict").set_value("clear").run()
    at.button(key="su_mark_save").click().run()
    assert read_review(open_run(own_runs / POISON_RUN))["index"].tolist() == [first_two[1]]


def test_marking_a_map_selection_and_the_sample_panel_colours_the_map_by_review(own_runs):
    from poisonlens.review import read_review

    at = app("views/gradient_space.py", POISON_RUN, _selected=[0, 1, 2], _gs_focus=5)
    assert not at.exception, at.exception
    at.radio(key="gs_sel_mark_verdict").set_value("clean").run()
    at.button(key="gs_sel_mark_save").click().run()
    at.radio(key="gs_panel_mark_verdict").set_value("poison").run()
    at.text_input(key="gs_panel_mark_note").input("odd stroke").run()
    at.button(key="gs_panel_mark_save").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    review = read_review(open_run(own_runs / POISON_RUN)).set_index("index")
    assert review["verdict"].to_dict() == {0: "clean", 1: "clean", 2: "clean", 5: "poison"}
    assert review.loc[5, "note"] == "odd stroke"
    selection = next(d.value for d in at.dataframe if "review" in d.value)  # the panel's comes first
    assert selection["review"].tolist() == ["clean", "clean", "clean"]
    assert any("your review: poison" in m.value for m in at.markdown)
    at.selectbox(key="gs_color").set_value("review").run()
    names = [t["name"] for t in map_figure(at)["data"]]
    assert any(n.startswith("marked poison") for n in names), names
    assert any(n.startswith("marked clean") for n in names), names


def test_a_retrain_whose_review_marked_nothing_says_it_trained_on_every_example(own_runs):
    # the README's loop before any verdict: `review --export` writes a header only, and
    # `train --exclude` of it leaves nothing out (it said "Trained without 0 examples")
    from poisonlens.review import read_review, retrain_config, write_poison_list
    from poisonlens.train import TrainConfig, train

    source = open_run(own_runs / POISON_RUN)
    listing = own_runs.parent / "nothing-marked.csv"
    assert write_poison_list(read_review(source), listing) == 0
    train(TrainConfig.from_json(retrain_config(source, listing)), own_runs / "retrained-nothing",
          show_progress=False)
    at = app("views/overview.py", "retrained-nothing")
    assert not at.exception and not at.error, [e.value for e in at.error]
    said = " ".join(i.value for i in at.info)
    assert "Trained on every example" in said and "nothing-marked.csv" in said
    assert "Trained without 0 examples" not in said


def test_a_retrained_run_says_what_it_left_out_and_compare_puts_it_beside_its_source(own_runs):
    from poisonlens.review import mark, read_review, retrain_config, write_poison_list
    from poisonlens.train import TrainConfig, train

    source = open_run(own_runs / POISON_RUN)
    poisons = source.examples().query("is_poison")["index"].tolist()
    mark(source, poisons[:10], "poison")
    mark(source, [0], "clean")
    listing = own_runs.parent / "marked.csv"
    assert write_poison_list(read_review(source), listing) == 10
    config = TrainConfig.from_json(retrain_config(source, listing))
    assert config.exclude == str(listing) and config.tags["retrain_of"] == POISON_RUN
    train(config, own_runs / "retrained", show_progress=False)

    at = app("views/overview.py", "retrained")
    assert not at.exception and not at.error, [e.value for e in at.error]
    said = " ".join(i.value for i in at.info)
    assert "Trained without 10 examples (10 of them poisons)" in said and POISON_RUN in said

    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["runs"] = f"{POISON_RUN},retrained"
    at.switch_page("views/compare.py")
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    side = next(d.value for d in at.dataframe if "left out" in d.value)
    assert side["run"].tolist() == [POISON_RUN, "retrained"]
    assert side["left out"].tolist() == [0, 10]
    assert "target predicted as" in side and "clean acc" in side
    assert "Leaving them out" in markdown(at)


def test_new_run_offers_to_retrain_a_reviewed_run(own_runs):
    from poisonlens.review import mark

    at = app("views/new_run.py")
    assert any("No run has examples marked poison" in c.value for c in at.caption)
    mark(open_run(own_runs / POISON_RUN), [3, 4], "poison")
    at = app("views/new_run.py")
    assert not at.exception
    assert at.selectbox(key="nr_retrain_run").value.endswith(POISON_RUN)
    assert "without its 2 marked poison" in at.button(key="nr_retrain").label
