"""The Gradient space page and its parts: selections, the sample panel, colouring, damaged maps,
the background map process, and the density view of very large runs.

AppTest cannot draw a lasso, so a selection is injected as the event Streamlit's plotly chart
reports (the box's corners in data coordinates and the points inside), into the chart's widget
state, exactly where a browser's selection lands.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from poisonlens.dashboard.components.gradient_map import framed, positions_bytes
from poisonlens.dashboard.figures import gradient_map as map_figures
from poisonlens.dashboard.figures import map_style
from poisonlens.dashboard.figures import points as point_figures
from poisonlens.dashboard.selection import (
    clicked_index,
    indices_in_shapes,
    inside_polygon,
    selection_shapes,
)
from poisonlens.projection import (
    compute_projection,
    job_path,
    launch_projection,
    read_job,
    read_projection,
)
from poisonlens.store import open_run, snapshot_path
from tests.dashboard_runs import POISON_RUN, runs_folder

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGE = "views/gradient_space.py"


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory) -> Path:
    return runs_folder(tmp_path_factory)


@pytest.fixture
def runs_env(dashboard_runs, monkeypatch):
    monkeypatch.setenv("POISONLENS_RUNS", str(dashboard_runs))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    return dashboard_runs


@pytest.fixture
def own_run(dashboard_runs, tmp_path, monkeypatch) -> Path:
    """A private copy of the poisoned run (tests that damage files or add maps use it)."""
    dest = tmp_path / "runs" / POISON_RUN
    shutil.copytree(dashboard_runs / POISON_RUN, dest)
    monkeypatch.setenv("POISONLENS_RUNS", str(dest.parent))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    return dest


def app(run: str, **state) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run
    for key, value in state.items():
        at.session_state[key] = value
    at.switch_page(PAGE)
    return at.run()


def map_args(at: AppTest) -> dict:
    """What the page sent the map: the mounted component's arguments (``figure`` parsed), or
    Streamlit's plotly chart's spec and config where the page draws that (density maps)."""
    found = at.get("component_instance")
    if found:
        args = json.loads(found[0].proto.json_args)
        return args | {"figure": json.loads(args["figure"])}
    chart = at.get("plotly_chart")[0].proto
    return {"figure": json.loads(chart.spec), "config": json.loads(chart.config)}


def stored_positions(run_dir: Path, method: str = "umap") -> np.ndarray:
    """Every snapshot's positions (n_snapshots, n_samples, 2) from the stored map, NaN where none."""
    frame = open_run(run_dir).projection(method)
    n = len(open_run(run_dir).examples())
    epochs = sorted(frame["epoch"].unique())
    xy = np.full((len(epochs), n, 2), np.nan, np.float32)
    for slot, epoch in enumerate(epochs):
        rows = frame[(frame["epoch"] == epoch) & (frame["index"] >= 0)]
        xy[slot, rows["index"].to_numpy(), 0] = rows["x"].to_numpy()
        xy[slot, rows["index"].to_numpy(), 1] = rows["y"].to_numpy()
    return xy


def media_url_of(data: bytes, mimetype: str = "application/octet-stream") -> str:
    """The URL Streamlit's media file manager gives ``data`` framed as the component frames it."""
    from streamlit.runtime.memory_media_file_storage import _calculate_file_id

    return f"/media/{_calculate_file_id(framed(data), mimetype)}.bin"


def same_file(url: str, data: bytes) -> bool:
    """Whether ``url`` (AppTest's media endpoint is /mock/media) names ``data`` as the component frames it."""
    return url.endswith(media_url_of(data))


def served_positions(at: AppTest) -> np.ndarray:
    """The positions file the page handed the component: checked to be the stored map's, by its URL."""
    args = map_args(at)
    import os

    method = at.session_state["gs_method"] if "gs_method" in at.session_state else "umap"
    run = at.query_params["run"]
    run = run[0] if isinstance(run, list) else run
    xy = stored_positions(Path(os.environ["POISONLENS_RUNS"]) / run, method)
    assert same_file(args["positions"], positions_bytes(xy))
    return xy


def map_figure(at: AppTest) -> dict:
    """The map's figure as the browser draws it: the traces the component fills in from the
    positions file it serves get their ``x``/``y`` from that file, as its JavaScript does."""
    args = map_args(at)
    fig = args["figure"]
    if args.get("positions"):
        xy = served_positions(at)[args["slot"]]
        for number in args["fill"]:
            custom = fig["data"][number]["customdata"]
            index = np.frombuffer(base64.b64decode(custom["bdata"]), np.dtype(custom["dtype"]).newbyteorder("<"))
            fig["data"][number] |= {"x": xy[index, 0].tolist(), "y": xy[index, 1].tolist()}
    return fig


def traces(at: AppTest) -> list[dict]:
    return map_figure(at)["data"]


def text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def legend_count(at: AppTest, group: str) -> int:
    """The count a legend entry shows, e.g. 'selected by you (107)' -> 107 (0 when absent)."""
    for t in traces(at):
        if t.get("legendgroup") == group:
            return int(t["name"].rsplit("(", 1)[1].rstrip(")").replace(",", ""))
    return 0


def table_count(at: AppTest) -> int:
    """The count the selection table's heading gives ('**239 selected**')."""
    found = re.search(r"\*\*([\d,]+) selected\*\*", text(at))
    return int(found.group(1).replace(",", "")) if found else 0


def positions(run_dir: Path, epoch: int) -> pd.DataFrame:
    frame = open_run(run_dir).projection("umap")
    return frame[(frame["epoch"] == epoch) & (frame["index"] >= 0)].set_index("index")


def box_event(xy: pd.DataFrame, x0: float, x1: float, y0: float, y1: float) -> dict:
    """The event a browser sends for a box drawn over the map: its corners and the points in it."""
    inside = xy[(xy["x"] >= x0) & (xy["x"] <= x1) & (xy["y"] >= y0) & (xy["y"] <= y1)]
    points = [{"curve_number": 0, "point_index": k, "x": float(r.x), "y": float(r.y), "customdata": int(i)}
              for k, (i, r) in enumerate(inside.iterrows())]
    return {"selection": {"points": points, "point_indices": list(range(len(points))),
                          "box": [{"xref": "x", "yref": "y", "x": [x0, x1], "y": [y0, y1]}], "lasso": []}}


# --- selection: the map draws exactly the selection the table lists -------------------------


def test_a_box_selection_is_drawn_on_the_map_in_the_same_run(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    xy = positions(runs_env / POISON_RUN, epochs[-1])
    x0, x1 = np.quantile(xy["x"], [0.2, 0.6])
    y0, y1 = np.quantile(xy["y"], [0.2, 0.6])
    at = app(POISON_RUN, _epoch=epochs[-1], gs_map=box_event(xy, x0, x1, y0, y1))
    assert not at.exception
    n_table = table_count(at)
    assert n_table == len(at.session_state["_selected"]) > 0
    assert len(at.dataframe[0].value) == min(n_table, 500)
    assert legend_count(at, "selected") == n_table  # not one action behind


def test_an_added_lasso_updates_the_legend_with_the_table(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    xy = positions(runs_env / POISON_RUN, epochs[-1])
    lo, hi = np.quantile(xy["x"], [0.0, 0.3]), np.quantile(xy["y"], [0.0, 1.0])
    at = app(POISON_RUN, _epoch=epochs[-1], gs_map=box_event(xy, lo[0], lo[1], hi[0], hi[1]))
    first = len(at.session_state["_selected"])
    at.radio(key="gs_mode").set_value("add").run()
    x2 = np.quantile(xy["x"], [0.7, 1.0])
    lasso = [[x2[0], hi[0]], [x2[1], hi[0]], [x2[1], hi[1]], [x2[0], hi[1]]]
    at.session_state["gs_map"] = {"selection": {"points": [], "box": [], "point_indices": [],
                                                "lasso": [{"x": [p[0] for p in lasso], "y": [p[1] for p in lasso]}]}}
    at.run()
    assert not at.exception
    n_table = table_count(at)
    assert n_table == len(at.session_state["_selected"]) > first
    assert legend_count(at, "selected") == n_table


def test_inside_polygon_agrees_with_a_box_and_excludes_outside_points():
    rng = np.random.default_rng(0)
    x, y = rng.uniform(-1, 2, 2000), rng.uniform(-1, 2, 2000)
    square = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], float)
    expected = (x > 0) & (x < 1) & (y > 0) & (y < 1)
    assert (inside_polygon(x, y, square) == expected).all()
    triangle = np.array([[0, 0], [1, 0], [0, 1]], float)
    assert (inside_polygon(x, y, triangle) == (expected & (x + y < 1))).all()


def test_box_and_lasso_shapes_yield_example_indices():
    event = {"selection": {"points": [], "box": [{"x": [1.0, 0.0], "y": [0.0, 1.0]}],
                           "lasso": [{"x": [5, 6, 6], "y": [5, 5, 6]}]}}
    shapes = selection_shapes(event)
    assert [k for k, _ in shapes] == ["box", "lasso"]
    x, y = np.array([0.5, 2.0, 5.9, 5.1]), np.array([0.5, 2.0, 5.5, 5.9])
    assert indices_in_shapes(shapes, x, y, np.array([10, 11, 12, 13])) == [10, 12]
    assert clicked_index(event) is None
    assert clicked_index({"selection": {"points": [{"customdata": 7}], "box": [], "lasso": []}}) == 7


# --- click -> sample panel, search by index, colour by ------------------------------------


def test_a_click_opens_the_sample_panel_with_every_snapshot(runs_env):
    run = open_run(runs_env / POISON_RUN)
    epochs = run.snapshot_epochs()
    poison = int(run.examples().query("is_poison")["index"].iloc[0])
    click = {"selection": {"points": [{"curve_number": 3, "point_index": 0, "customdata": poison}],
                           "point_indices": [0], "box": [], "lasso": []}}
    at = app(POISON_RUN, gs_map=click)
    assert not at.exception
    assert at.session_state["_gs_focus"] == poison
    assert any(h.value == f"Example {poison}" for h in at.subheader)
    assert "**poison** (ground truth)" in text(at)
    history = at.dataframe[0].value
    assert history["epoch"].tolist() == epochs
    assert {"loss", "suspicion score", "cluster size", "predicted"} <= set(history.columns)
    assert at.get("image"), "the example's image is shown"
    assert at.session_state.get("_selected", []) == []  # a click looks, it does not select
    at.button(key="gs_close_panel").click().run()
    assert not any(h.value.startswith("Example ") for h in at.subheader)


def test_the_sample_panel_says_when_an_example_is_dropped_even_before_that_snapshot(runs_env):
    # Seen on the real CIFAR-10 run: at epoch 0 the panel of an example dropped at epoch 2 said
    # "never dropped" while its own table ticked "dropped here" at epoch 2.
    run = open_run(runs_env / POISON_RUN)
    epochs = run.snapshot_epochs()
    last = run.snapshot(epochs[-1], columns=["index", "dropped_epoch"])
    later = last[last["dropped_epoch"] > epochs[0]]
    index, dropped = int(later["index"].iloc[0]), int(later["dropped_epoch"].iloc[0])
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = POISON_RUN
    at.query_params["epoch"] = str(epochs[0])
    at.session_state["_gs_focus"] = index
    at.switch_page(PAGE)
    at.run()
    assert not at.exception
    assert any(h.value == f"Example {index}" for h in at.subheader)
    assert f"**dropped at epoch {dropped}**" in text(at)
    assert "never dropped" not in text(at)


def test_finding_an_example_rings_and_zooms_to_it(runs_env):
    at = app(POISON_RUN)
    whole = map_args(at)["figure"]["layout"]["xaxis"]["range"]
    at.text_input(key="gs_find").input("42").run()
    assert not at.exception
    spec = map_args(at)["figure"]
    zoomed = spec["layout"]["xaxis"]["range"]
    assert zoomed[1] - zoomed[0] < 0.5 * (whole[1] - whole[0])
    assert legend_count(at, "found") == 1
    assert any(h.value == "Example 42" for h in at.subheader)
    at.text_input(key="gs_find").input("99999").run()
    assert any("not an example index" in e.value for e in at.error)


def test_every_colour_field_draws(runs_env):
    at = app(POISON_RUN)
    options = at.selectbox(key="gs_color").options
    assert {"class (label)", "loss (log10)", "suspicion score", "drift (log10)", "poison or clean",
            "epoch dropped", "predicted class", "correct or not"} <= set(options)
    for field in ("loss", "score", "drift", "dropped_epoch", "correct", "poison", "prediction"):
        at.selectbox(key="gs_color").set_value(field).run()
        assert not at.exception, field
        data = traces(at)
        if map_style.COLOR_FIELDS[field][1] == "value":
            assert "colorbar" in data[0]["marker"], field


def test_colour_groups_split_every_example_once():
    points = pd.DataFrame({"label": [0, 1, 1, 2], "prediction": [0, 2, 1, 2], "is_poison": [0, 1, 0, 0],
                           "dropped_epoch": [-1, 4, 8, -1]})
    codes, groups = map_style.color_groups(points, "dropped_epoch", ["a", "b", "c"])
    assert [groups[c][0] for c in codes] == ["never dropped", "dropped at epoch 4", "dropped at epoch 8",
                                             "never dropped"]
    codes, groups = map_style.color_groups(points, "correct", ["a", "b", "c"])
    assert codes.tolist() == [0, 1, 0, 0]


# --- the browser gets binary arrays, no per-point text, positions once per run ------------


def test_the_map_sends_indices_as_binary_arrays_and_positions_once_per_run(runs_env):
    at = app(POISON_RUN)
    args = map_args(at)
    epoch = at.select_slider(key="gs_epoch").value
    first = args["figure"]["data"][0]
    # the examples' positions are not in the figure: the browser reads them from one file per run
    assert "x" not in first and "y" not in first and 0 in args["fill"]
    assert first["customdata"]["dtype"] in ("i4", "u2", "i2")
    assert "thumb" not in json.dumps(first) and "<br>label" not in json.dumps(first)
    n = len(open_run(runs_env / POISON_RUN).examples())
    xy = stored_positions(runs_env / POISON_RUN)
    assert same_file(args["positions"], positions_bytes(xy))  # the page served exactly these bytes
    assert len(xy) == len(open_run(runs_env / POISON_RUN).snapshot_epochs()) and args["n_samples"] == n
    want = positions(runs_env / POISON_RUN, epoch)
    np.testing.assert_array_equal(xy[args["slot"], want.index, 0], want["x"].to_numpy(np.float32))
    np.testing.assert_array_equal(xy[args["slot"], want.index, 1], want["y"].to_numpy(np.float32))
    # another epoch: the same file, another row of it
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    other = epochs[0] if epoch != epochs[0] else epochs[-1]
    at.select_slider(key="gs_epoch").set_value(other).run()
    moved = map_args(at)
    assert moved["positions"] == args["positions"] and moved["slot"] != args["slot"]
    want = positions(runs_env / POISON_RUN, other)
    np.testing.assert_array_equal(xy[moved["slot"], want.index, 0], want["x"].to_numpy(np.float32))


def test_the_map_stays_one_mounted_element_across_epochs(runs_env):
    # Streamlit's plotly chart puts the figure into its element id, so each epoch remounted it
    # (a new WebGL context per redraw); the map component keeps its id, so the browser updates it
    at = app(POISON_RUN)
    before = at.get("component_instance")[0].proto
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    other = epochs[0] if at.select_slider(key="gs_epoch").value != epochs[0] else epochs[-1]
    at.select_slider(key="gs_epoch").set_value(other).run()
    after = at.get("component_instance")[0].proto
    assert after.id == before.id
    assert json.loads(after.json_args)["figure"] != json.loads(before.json_args)["figure"]
    assert not at.get("plotly_chart") or all(json.loads(c.proto.spec)["data"][0].get("customdata") is None
                                             for c in at.get("plotly_chart"))


def test_the_map_is_drawn_at_one_gl_pixel_per_pixel(runs_env):
    # where WebGL is software-rendered, plotly's default ratio of 2 draws four times the pixels
    assert map_args(app(POISON_RUN))["config"]["plotGlPixelRatio"] == 1


def test_rings_of_kept_isolated_medoids_use_a_colour_no_class_has():
    assert map_style.STYLE["isolated, kept"]["color"] not in map_style.class_colors(10)
    assert map_style.STYLE["isolated, kept"]["color"] != map_style.STYLE["dropped now"]["color"]


# --- epochs: where the page opens, what the last snapshot says, Play -------------------------


def test_the_page_opens_on_the_snapshot_with_the_most_drops(runs_env):
    metrics = open_run(runs_env / POISON_RUN).metrics().set_index("epoch")["n_new_drops"]
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    busiest = int(metrics.reindex(epochs).idxmax())
    assert metrics[busiest] > 0
    at = app(POISON_RUN)
    assert at.session_state["_epoch"] == busiest
    assert f"**Epoch {busiest}**" in text(at)


def test_the_last_snapshot_says_why_it_drops_nothing(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    at = app(POISON_RUN, _epoch=epochs[-1])
    names = [t["name"] for t in traces(at)]
    assert not any("outside the drop window" in n for n in names)
    assert "nothing is dropped here: the last snapshot" in text(at)


def test_play_from_the_end_shows_the_first_epoch_first(runs_env):
    epochs = open_run(runs_env / POISON_RUN).snapshot_epochs()
    at = app(POISON_RUN, _epoch=epochs[-1])
    at.button(key="gs_play").click().run()
    assert at.session_state["gs_playing"]
    assert at.session_state["_epoch"] == epochs[0]
    assert f"**Epoch {epochs[0]}**" in text(at)


# --- damaged files and the background map process ------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_a_damaged_map_names_the_file_and_offers_to_recompute_it(own_run):
    truncate(own_run / "projections" / "umap.parquet")
    at = app(own_run.name)
    assert not at.exception
    assert any("projections/umap.parquet" in e.value and "cannot be read" in e.value for e in at.error)
    assert at.button(key="gs_compute")
    with pytest.raises(Exception, match="umap.parquet"):
        read_projection(open_run(own_run), "umap")


def test_recomputing_a_damaged_map_runs_in_the_background_and_the_page_follows(own_run):
    (own_run / "projections" / "pca.parquet").write_bytes(b"PAR1 not really parquet")
    at = app(own_run.name, gs_method="pca")
    assert any("projections/pca.parquet" in e.value for e in at.error)
    at.button(key="gs_compute").click().run()
    assert not at.exception
    assert read_job(own_run, "pca")["state"] in ("starting", "running", "finished")
    deadline = time.time() + 120
    while read_job(own_run, "pca")["state"] != "finished":
        assert time.time() < deadline and read_job(own_run, "pca")["state"] != "failed", read_job(own_run, "pca")
        time.sleep(0.5)
    at.run()
    assert not at.exception and not at.error
    assert traces(at)
    assert "PCA of every gradient row" in "\n".join(c.value for c in at.caption)


def test_a_damaged_snapshot_leaves_the_other_epochs_usable(own_run):
    epochs = open_run(own_run).snapshot_epochs()
    truncate(snapshot_path(own_run, epochs[1]))
    at = app(own_run.name, _epoch=epochs[0])
    assert not at.exception
    assert any(snapshot_path(own_run, epochs[1]).name in w.value for w in at.warning)
    assert epochs[1] not in at.select_slider(key="gs_epoch").options
    assert traces(at) and f"**Epoch {epochs[0]}**" in text(at)
    at.select_slider(key="gs_epoch").set_value(epochs[-1]).run()
    assert not at.exception and f"**Epoch {epochs[-1]}**" in text(at)


def test_the_background_job_records_how_the_map_was_made(own_run):
    launch_projection(own_run, method="pca")
    deadline = time.time() + 120
    while (job := read_job(own_run, "pca")) is None or job["state"] != "finished":
        assert time.time() < deadline and (job is None or job["state"] != "failed"), job
        time.sleep(0.3)
    run = open_run(own_run)
    n = len(run.examples())
    assert job["n_points"] == n and job["n_snapshots"] == len(run.snapshot_epochs())
    frame = read_projection(run, "pca")
    assert (frame["index"] >= 0).sum() == n * len(run.snapshot_epochs())
    assert job_path(own_run, "pca").is_file()


def test_a_subsampled_umap_fit_counts_fitted_and_placed_rows(own_run):
    n_rows = len(open_run(own_run).examples()) * len(open_run(own_run).snapshot_epochs())
    # the parametric map (the default) places every row, the fitted ones too
    frame = compute_projection(own_run, method="umap", max_fit=300, write=False)
    assert 250 <= frame.attrs["n_fit"] <= 400
    assert frame.attrs["placement"] == "parametric" and frame.attrs["n_placed"] == n_rows
    # the nearest-neighbour placement keeps the fitted rows and places the others
    frame = compute_projection(own_run, method="umap", max_fit=300, write=False, placement="knn")
    assert frame.attrs["placement"] == "knn"
    assert frame.attrs["n_fit"] + frame.attrs["n_placed"] == n_rows


# --- very large runs: a density image, points on top ---------------------------------------


def big_points(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 10, n)
    return pd.DataFrame({
        "index": np.arange(n), "x": (rng.normal(size=n) + label).astype(np.float32),
        "y": rng.normal(size=n).astype(np.float32), "label": label, "prediction": label,
        "loss": rng.random(n), "is_poison": rng.random(n) < 0.001, "drop": rng.random(n) < 0.002,
        "dropped_before": rng.random(n) < 0.05, "dropped_epoch": np.full(n, -1), "isolated": rng.random(n) < 0.003,
    })


def test_a_density_map_draws_every_example_as_an_image_and_marks_on_top():
    points = big_points(300_000)
    fig = map_figures.gradient_map_figure(points, class_names=[str(c) for c in range(10)],
                                          frame=map_figures.MapFrame(x_range=[-5.0, 14.0], y_range=[-5.0, 5.0]),
                                          view=map_style.MapView(density=True),
                                          marks=map_style.MapMarks(selected=list(range(0, 300_000, 10))))
    assert len(fig.layout.images) == 1 and fig.layout.images[0].source.startswith("data:image/png;base64,")
    sizes = {t.legendgroup: len(t.x) for t in fig.data if t.x is not None and len(t.x) and t.x[0] is not None}
    assert sizes["poison"] == int(points["is_poison"].sum())
    assert sizes["selected"] == map_style.MAX_OVERLAY  # 30,000 selected, a sample drawn ...
    notes = fig.layout.meta["notes"]
    assert any("density image" in n for n in notes)
    assert any("20,000 of 30,000" in n for n in notes)  # ... and said so
    assert len(fig.to_json()) < 2_000_000


def test_the_density_image_puts_points_where_they_are():
    x = np.array([0.05, 0.95, 0.95])
    y = np.array([0.95, 0.05, 0.06])
    rgb = np.array([[255, 0, 0], [0, 0, 255], [0, 0, 255]], np.uint8)
    image = map_figures.density_image(x, y, rgb, x_range=[0.0, 1.0], y_range=[0.0, 1.0], pixels=10)
    assert tuple(image[0, 0, :3]) == (255, 0, 0)  # top left: large y, small x
    assert tuple(image[9, 9, :3]) == (0, 0, 255)
    assert image[9, 9, 3] > image[0, 0, 3]  # two points there, one at the top left
    assert (image[..., 3] > 0).sum() == 2


# --- issue 18: the component is served from the installed package and writes nothing ---------


def test_importing_the_map_component_writes_nothing(tmp_path):
    """No copy into a build/ folder of the package, none into a predictable /tmp folder another
    user could make first: the component is declared on its installed frontend/ folder."""
    import subprocess
    import sys

    from poisonlens.dashboard.components import gradient_map

    here = Path(gradient_map.__file__).resolve().parent
    before = sorted(str(p.relative_to(here)) for p in here.rglob("*") if "__pycache__" not in p.parts)
    code = ("import poisonlens.dashboard.components.gradient_map as g; "
            "print(g._component.path)")
    out = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "TMPDIR": str(tmp_path)},
                         capture_output=True, text=True, check=True).stdout.strip()
    after = sorted(str(p.relative_to(here)) for p in here.rglob("*") if "__pycache__" not in p.parts)
    assert after == before  # nothing added to the package folder (no build/)
    assert list(tmp_path.iterdir()) == []  # nothing in the temporary folder
    assert Path(out) == here / "frontend"


def test_point_layers_code_every_example_once_and_hide_what_is_not_shown():
    """The points renderer's colour codes: a class colour per example, grey once dropped, the
    reserved last code for examples not shown; overlays list example indices, sampled and said so."""
    rng = np.random.default_rng(0)
    n = 3000
    points = pd.DataFrame({"index": np.arange(n), "x": rng.normal(size=n), "y": rng.normal(size=n),
                           "label": rng.integers(0, 3, n), "prediction": rng.integers(0, 3, n),
                           "is_poison": np.arange(n) < 40, "dropped_before": np.arange(n) % 10 == 0,
                           "drop": np.arange(n) % 7 == 0, "dropped_epoch": -np.ones(n, np.int64)})
    shown = points["label"].to_numpy() != 2
    layers = point_figures.point_layers(points, class_names=["a", "b", "c"], shown=shown,
                                        view=map_style.MapView(show_medoids=False, max_overlay=200),
                                        marks=map_style.MapMarks(selected=list(range(100, 1000))))
    codes, palette = layers["codes"], layers["palette"]
    assert codes.dtype == np.uint8 and len(codes) == n and palette[-1] == point_figures.HIDDEN
    assert (codes[~shown] == len(palette) - 1).all()
    grey = palette.index(map_style.STYLE["dropped earlier"]["color"])
    keep = shown & ~points["dropped_before"].to_numpy()
    np.testing.assert_array_equal(codes[keep], points["label"].to_numpy()[keep])
    assert (codes[shown & points["dropped_before"].to_numpy()] == grey).all()
    groups = {g["name"].rsplit(" (", 1)[0]: g for g in layers["overlays"]}
    assert set(groups["poison (ground truth)"]["index"]) == set(np.flatnonzero(shown[:40]))
    selected = groups["selected by you"]
    assert len(selected["index"]) == 200 and set(selected["index"]) <= set(np.flatnonzero(shown)) & set(range(100, 1000))
    assert any("selected by you: 200 of" in note for note in layers["notes"])
    value = point_figures.point_layers(points.assign(loss=rng.random(n)), class_names=["a", "b", "c"],
                                       view=map_style.MapView(color_by="loss"))
    assert value["codes"].max() <= len(value["palette"]) - 1 and "colorbar" in value["legend"][0]
