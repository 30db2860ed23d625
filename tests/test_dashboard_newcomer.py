"""Newcomer defects of the dashboard (issue 17), through Streamlit's AppTest on real runs.

New run: the form survives a visit to another page, Stop and Resume act on a launched run,
and a poison set made for another data set is refused before anything starts.
"""

from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from poisonlens.launch import launch_status, launch_training
from poisonlens.store import open_run
from tests.conftest import REPO, tiny_config

APP = str(REPO / "dashboard" / "app.py")
DEMO = REPO / "sample_data" / "poisons" / "demo" / "poisons.npz"


def app(page: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page)
    return at.run()


def new_run_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")


def poison_option(at: AppTest) -> str:
    return next(o for o in at.selectbox(key="nr_poison_choice").options if o.endswith("demo/poisons.npz"))


def test_the_form_keeps_its_values_when_the_user_visits_another_page(tmp_path, monkeypatch):
    new_run_env(tmp_path, monkeypatch)
    at = app("views/new_run.py")
    chosen = poison_option(at)
    at.selectbox(key="nr_poison_choice").set_value(chosen)
    at.number_input(key="nr_epochs").set_value(3)
    at.text_input(key="nr_dataset").input("mnist")  # refused: nothing starts
    at.button[0].click().run()
    assert any("Not started" in e.value for e in at.error)
    at.switch_page("views/about.py").run()
    at.switch_page("views/new_run.py").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="nr_poison_choice").value == chosen
    assert at.number_input(key="nr_epochs").value == 3
    assert at.text_input(key="nr_dataset").value == "mnist"


def test_a_poison_set_for_another_data_set_is_refused_on_the_page(tmp_path, monkeypatch, cifar_subset):
    new_run_env(tmp_path, monkeypatch)
    monkeypatch.setenv("POISONLENS_DATA_ROOTS", str(cifar_subset))  # the form reads only allowed folders
    at = app("views/new_run.py")
    at.selectbox(key="nr_poison_choice").set_value(poison_option(at))
    at.text_input(key="nr_dataset").input(f"imagefolder:{cifar_subset}")
    at.text_input(key="nr_name").input("mismatch")
    at.button[0].click().run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Not started: "), errors
    assert "made for another image size" in errors[0] and "\n" not in errors[0]
    assert not (tmp_path / "mismatch").exists()


def wait(run_dir: Path, ok, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if ok(launch_status(run_dir)):
            return
        time.sleep(0.3)
    raise AssertionError(launch_status(run_dir))


def test_stop_and_resume_buttons_act_on_a_launched_run(tmp_path, monkeypatch):
    new_run_env(tmp_path, monkeypatch)
    run_dir = launch_training(tiny_config(epochs=40, snapshot_every=10), runs_dir=tmp_path,
                              name="bg", projection=None)  # fmt: skip
    wait(run_dir, lambda s: (s.epoch or 0) >= 2 and s.state == "running")
    at = app("views/new_run.py")
    assert not at.exception, at.exception
    at.button(key="nr_stop_bg").click().run()
    assert launch_status(run_dir).state == "interrupted"
    assert not [b for b in at.button if b.key == "nr_stop_bg"]  # nothing left to stop
    at.button(key="nr_resume_bg").click().run()
    assert not at.exception, at.exception
    wait(run_dir, lambda s: s.done)
    assert launch_status(run_dir).state == "finished"
    assert open_run(run_dir).metrics()["epoch"].tolist() == list(range(41))


# --- Gradient space and Drift --------------------------------------------------------------

import json  # noqa: E402

import pytest  # noqa: E402

from tests.dashboard_runs import CLEAN_RUN, POISON_RUN, runs_folder  # noqa: E402


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory) -> Path:
    return runs_folder(tmp_path_factory)


@pytest.fixture
def runs_env(dashboard_runs, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(dashboard_runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    return dashboard_runs


def on_run(page: str, run: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(page)
    return at.run()


def test_play_starts_from_the_first_epoch(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    middle = epochs[len(epochs) // 2]
    at = on_run("views/gradient_space.py", POISON_RUN, _epoch=middle)
    assert at.session_state["_epoch"] == middle and middle != epochs[0]
    at.button(key="gs_play").click().run()
    assert not at.exception, at.exception
    assert at.session_state["_epoch"] == epochs[0]


def test_a_selection_does_not_follow_to_another_run(runs_env):
    at = on_run("views/drift.py", POISON_RUN, _selected=[0, 1, 2], _gs_focus=1)
    assert "selected" in json.dumps(json.loads(at.get("plotly_chart")[0].proto.spec)["data"])  # followed
    at.query_params["run"] = CLEAN_RUN  # a link to another run (not the picker)
    at.run()
    assert not at.exception, at.exception
    assert "_selected" not in at.session_state and "_gs_focus" not in at.session_state
    assert any("Nothing to follow" in i.value for i in at.info)


def cells(at: AppTest) -> list[tuple[str, object]]:
    out = []
    for frame in at.dataframe:
        table = frame.value
        for column in table.columns:
            out += [(str(column), v) for v in table[column].tolist()]
    return out


def test_no_internal_value_reaches_a_table_or_a_legend(runs_env):
    run = open_run(runs_env / POISON_RUN)
    last = run.snapshot_epochs()[-1]
    snap = run.snapshot(last, columns=["is_medoid"])
    plain = int(snap.index[~snap["is_medoid"].fillna(False).astype(bool)][0])  # not a medoid
    for page in ("views/gradient_space.py", "views/drift.py"):
        at = on_run(page, POISON_RUN, _selected=[plain, plain + 1], _gs_focus=plain, _epoch=last)
        assert not at.exception, at.exception
        seen = cells(at)
        assert seen, page
        for column, value in seen:
            if column == "image":
                continue
            assert value is not None and value == value, (page, column)  # no None, no NaN
            assert str(value) not in ("None", "nan", "<NA>"), (page, column, value)
            if column.replace("_", " ") in ("cluster size", "medoid"):
                assert value not in (0, -1, "0", "-1"), (page, column, value)
        legend = [t.get("name", "") for c in at.get("plotly_chart") for t in json.loads(c.proto.spec)["data"]]
        assert not [n for n in legend if n.endswith("selecteds") or n == "poisons" + "s"], legend


def test_205_selected_examples_draw_20_lines_and_a_band(runs_env):
    at = on_run("views/drift.py", POISON_RUN, _selected=list(range(100, 305)), dr_poisons=False)
    assert not at.exception, at.exception
    traces = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    lines = [t for t in traces if t.get("legendgroup") == "selected"]
    assert len(lines) == 20
    assert any(t.get("name") == "selected examples: middle half of all 205" for t in traces)
    assert any("20 most drifting of the 205 selected examples" in c.value for c in at.caption)


@pytest.mark.parametrize("page", ["views/gradient_space.py", "views/drift.py", "views/overview.py"])
def test_no_chart_offers_to_send_itself_to_a_cloud_service(runs_env, page):
    at = on_run(page, POISON_RUN, gs_view="one class")
    assert not at.exception, at.exception
    configs = [json.loads(c.proto.config) for c in at.get("plotly_chart")]
    if page.endswith("gradient_space.py"):
        from tests.test_map import map_args

        configs.append(map_args(at)["config"])
    assert configs
    for config in configs:
        assert config["displaylogo"] is False and config["showSendToCloud"] is False
        assert {"sendDataToCloud", "editInChartStudio"} <= set(config["modeBarButtonsToRemove"])
