"""Gradient space: a 2-D map of every example's last-layer gradient at one snapshot.

The map is computed once per run by a background process (``poisonlens.projection``) and only read
here. It is drawn by the map component (:mod:`poisonlens.dashboard.components.gradient_map`),
which stays mounted between epochs: the browser fetches every snapshot's positions once per run.
Up to ``DENSITY_ABOVE`` examples it gets, per epoch, the plotly figure without them (indices as
binary arrays, no per-point text). Past ``DENSITY_ABOVE`` examples every example is still drawn
as a point, by the component's WebGL points renderer (regl-scatterplot), which gets per epoch a
colour code per example (one byte) and the overlay groups; a sidebar option draws the examples as
one density image instead (an image per epoch: Streamlit's own plotly chart). Selections are
read from the drawn box or lasso and computed on the server, so they work the same at every size
and on every route.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from poisonlens.dashboard import common, plots
from poisonlens.dashboard.common import (
    PLOTLY_CONFIG,
    class_name_list,
    damage_ui,
    default_epoch,
    drift_at,
    dropped_text,
    epoch_picker_ui,
    glossary_ui,
    load_examples,
    load_snapshot,
    md,
    page_header,
    projection_extent,
    projection_mtime,
    run_picker_ui,
    run_stamp,
    snapshot_epochs_ui,
    thumbnails,
)
from poisonlens.dashboard.components.gradient_map import (
    binary_url,
    gradient_map,
    gradient_points,
    positions_bytes,
)
from poisonlens.dashboard.display import expression_ui, readable
from poisonlens.dashboard.marking import mark_ui, review_or_empty
from poisonlens.dashboard.selection import (
    clicked_index,
    indices_in_shapes,
    parse_indices,
    selection_shapes,
    selection_to_indices,
    update_selection,
)
from poisonlens.defense import colour_columns
from poisonlens.errors import InputError
from poisonlens.neighbours import SPACES, nearest_neighbours, space_columns
from poisonlens.projection import (
    METHODS,
    TARGET_INDEX,
    launch_projection,
    read_job,
    read_projection,
)
from poisonlens.review import verdicts
from poisonlens.store import DamagedFile, open_run

PLAY_SECONDS = 1.2
MAP_COLUMNS = ("label", "prediction", "loss", "active", "drop", "dropped_epoch", "score",
               "cluster_size", "is_medoid", "isolated", "medoid")
HISTORY_COLUMNS = ("prediction", "loss", "confidence", "active", "score", "cluster_size",
                   "is_medoid", "isolated", "drop")
METHOD_NAMES = {"umap": "UMAP", "pca": "PCA"}
TABLE_LIMIT = 500  # rows with thumbnails in the selection table
NEIGHBOURS = 8  # nearest neighbours listed in the sample panel
DENSITY_ABOVE = 200_000  # examples; from this many on: the points renderer (or, as an option, a density image)
DRAW_AS = ("points (WebGL)", "density image")
ZOOM = 0.08  # share of the map's width shown around a looked-up example
PANEL_PIXELS = 192  # the sample panel's image width
# plotly's default plotGlPixelRatio of 2 draws four times the pixels, costly where WebGL is
# software-rendered (headless or GPU-less browsers)
MAP_CONFIG = {**PLOTLY_CONFIG, "plotGlPixelRatio": 1}

# --- cached data ---------------------------------------------------------------------------


# cache_resource, like map_points: tables of millions of rows are not copied on every rerun
@st.cache_resource(max_entries=4, show_spinner=False)
def load_map(path: str, method: str, mtime: float) -> dict[int, pd.DataFrame]:
    """The stored map, a table per epoch (InputError naming the file when it is damaged)."""
    frame = read_projection(open_run(path), method)
    if frame is None:
        return {}
    return {int(e): g.reset_index(drop=True) for e, g in frame.groupby("epoch")}


# cache_resource: a 1,000,000-row table is not copied on every rerun (callers never modify it)
@st.cache_resource(max_entries=24, show_spinner=False)
def map_points(path: str, method: str, epoch: int, mtime: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(a row per example with its map position and snapshot columns, the target's row)."""
    proj = load_map(path, method, mtime)[epoch]
    snap = load_snapshot(path, epoch, MAP_COLUMNS).reset_index(drop=True)
    examples = load_examples(path)
    index = proj["index"].to_numpy()
    points = snap.assign(index=np.arange(len(snap)))
    x = np.full(len(snap), np.nan, np.float32)
    y = np.full(len(snap), np.nan, np.float32)
    rows = index >= 0
    x[index[rows]] = proj["x"].to_numpy()[rows]
    y[index[rows]] = proj["y"].to_numpy()[rows]
    points["x"], points["y"] = x, y
    points["is_poison"] = examples["is_poison"].to_numpy(bool)
    dropped = points["dropped_epoch"].to_numpy()
    points["dropped_before"] = (dropped >= 0) & (dropped < epoch)
    return points, proj[index == TARGET_INDEX][["x", "y"]]


# cache_resource: 4.4 MB at 50,000 examples x 11 snapshots, not copied on every rerun
@st.cache_resource(max_entries=4, show_spinner=False)
def map_positions(path: str, method: str, mtime: float) -> tuple[np.ndarray, dict[int, int]]:
    """Every snapshot's map positions, for the file the map component serves to the browser.

    Returns
    -------
    (float32 ndarray of shape (n_snapshots, n_samples, 2), NaN where an example has no position;
    {epoch: its row})
    """
    frames = load_map(path, method, mtime)
    n_samples = len(load_examples(path))
    epochs = sorted(frames)
    xy = np.full((len(epochs), n_samples, 2), np.nan, np.float32)
    for slot, epoch in enumerate(epochs):
        proj = frames[epoch]
        index = proj["index"].to_numpy()
        rows = (index >= 0) & (index < n_samples)
        xy[slot, index[rows], 0] = proj["x"].to_numpy()[rows]
        xy[slot, index[rows], 1] = proj["y"].to_numpy()[rows]
    return xy, {e: s for s, e in enumerate(epochs)}


# cache_resource: the positions' bytes (24 MB at 1,000,000 x 3) are made once per map
@st.cache_resource(max_entries=4, show_spinner=False)
def map_positions_bytes(path: str, method: str, mtime: float) -> bytes:
    """Every snapshot's positions as the little-endian float32 file the map component fetches."""
    return positions_bytes(map_positions(path, method, mtime)[0])


# --- the projection ------------------------------------------------------------------------


def kept_label(config: dict, epoch: int) -> str:
    """Legend text of isolated medoids left in training at ``epoch``: why they were kept."""
    drop_after, stop_after = config.get("drop_after"), config.get("stop_after")
    n_epochs = config.get("epochs")
    if n_epochs is not None and epoch >= n_epochs:
        return "isolated, kept: the last snapshot (no training is left for a drop to change)"
    if drop_after is not None and epoch < drop_after:
        return f"isolated, kept: before the drop window (drops start at epoch {drop_after})"
    if stop_after is not None and epoch >= stop_after:
        return f"isolated, kept: after the drop window (drops stop before epoch {stop_after})"
    return "isolated, kept"


def targets_placed(run, have: dict[int, pd.DataFrame], epochs: list[int]) -> bool:
    """Whether the map places the target at every shown snapshot it was recorded at."""
    try:
        recorded = set(int(e) for e in run.targets().get("epoch", []))
    except InputError:  # a damaged targets file: the map is drawn without requiring the target
        return True
    return all((have[e]["index"] == TARGET_INDEX).any() for e in epochs if e in recorded)


def start_map(path: str, method: str) -> None:
    """Start computing a run's map with ``method`` in the background (a refusal is shown)."""
    try:
        launch_projection(path, method=method)
    except InputError as err:  # e.g. projections/ became a link since the page was drawn
        st.session_state["_gs_map_refused"] = str(err)


def projection_ready_ui(run, method: str, epochs: list[int]) -> bool:
    """True when the stored map covers every snapshot; otherwise say why, show the background
    job's progress, or offer to (re)compute it. Nothing heavy runs in this rerun."""
    path = str(run.path)
    label = METHOD_NAMES[method]
    file = f"projections/{method}.parquet"
    tree_damage = run.damage()
    if tree_damage:  # a link or special file in the run: no map is read, computed or written
        st.error(f"This run folder is damaged, so no map is shown or computed: {md(tree_damage)}")
        return False
    refused = st.session_state.pop("_gs_map_refused", None)
    if refused:
        st.error(f"The map was not started: {md(refused)}")
    job = read_job(path, method)
    if job and job.get("state") in ("starting", "running"):
        progress_ui(path, method, label)
        return False
    damaged = None
    try:
        have = load_map(path, method, projection_mtime(path, method))
    except InputError as err:
        damaged, have = err, {}
    # every readable snapshot placed (a damaged snapshot is left out of `epochs`, not of the map)
    if damaged is None and have and set(epochs) <= set(have) and (not run.target or targets_placed(run, have, epochs)):
        return True
    if job and job.get("state") == "failed":
        st.error(f"Computing the {label} map failed: {md(job.get('error'))}")
    if damaged is not None:
        damage_ui(damaged, f"Recompute the map (`{file}`) from the run's snapshots; the other pages do not need it.",
                  fatal=True)
        st.button(f"Recompute the {label} map", key="gs_compute", type="primary", on_click=start_map,
                  args=(path, method))
        return False
    if run.progress().get("phase") == "projection" and run.status == "finished" and run.meta.get("pid"):
        st.info("The training process is computing this run's map right now; this page updates when it is done.")
        progress_ui(path, method, label)
        return False
    if run.status == "running":
        st.info(f"The map is computed once training has finished ({len(epochs)} snapshots so far). You can compute it "
                "now for the snapshots so far; it will be recomputed when the run finishes.")
    elif have:
        st.info(f"The stored {label} map does not cover this run's {len(epochs)} snapshots; compute it again.")
    else:
        st.info(f"This run has no {label} map yet. It is computed once, in the background (a minute or so for "
                "50,000 examples with UMAP; PCA takes seconds), and stored in the run.")
    st.button(f"Compute the {label} map now", key="gs_compute", type="primary", on_click=start_map,
              args=(path, method))
    return False


def progress_ui(path: str, method: str, label: str) -> None:
    """Live progress of the background map process, re-read every second."""

    @st.fragment(run_every=1.0)
    def poll() -> None:
        job = read_job(path, method) or {}
        state = job.get("state")
        if state in ("finished", "failed") or (state is None and projection_mtime(path, method)):
            st.rerun(scope="app")
        elapsed = time.time() - float(job.get("started", time.time()))
        st.progress(min(1.0, float(job.get("fraction", 0.0))),
                    text=f"Computing the {label} map in the background ({elapsed:.0f} s): {job.get('message', '…')}")
        st.caption("It runs in its own process: you can leave this page and come back.")

    poll()


def map_caption(path: str, method: str, n_points: int, n_snapshots: int) -> str:
    """The caption saying how the map of ``method`` was made."""
    job = read_job(path, method) or {}
    label = METHOD_NAMES[method]
    if method == "pca":
        return f"PCA of every gradient row: {n_points:,} examples × {n_snapshots} snapshots."
    if job.get("n_fit") and job.get("placement") == "parametric":
        n_fit, n_placed = int(job["n_fit"]), int(job.get("n_placed", 0))
        return (f"{label} fitted on a sample of {n_fit:,} gradient rows drawn over the {n_snapshots} snapshots "
                f"(poisons always included); all {n_placed:,} rows then placed by a small neural network trained "
                "to reproduce that layout (the same network for every snapshot).")
    if job.get("n_fit"):
        n_fit, n_placed = int(job["n_fit"]), int(job.get("n_placed", 0))
        return (f"{label} fitted on {n_fit:,} gradient rows sampled over the {n_snapshots} snapshots (poisons always "
                f"included); the other {n_placed:,} rows placed at their nearest fitted neighbours.")
    return f"{label} fitted on a sample of at most 5,000 gradient rows; the other rows placed at their nearest neighbours."


# --- selection -----------------------------------------------------------------------------


def apply_event(event, mode: str, shown: pd.DataFrame) -> None:
    """Fold the chart's latest selection into ``_selected`` (once per new selection), before
    the map is drawn, so the map shows exactly the selection the table lists.

    A box or lasso selects every shown example inside it (computed here from the shape); a
    click on one point opens its sample panel.
    """
    shapes = selection_shapes(event)
    signature = repr([(k, xy.round(9).tolist()) for k, xy in shapes]) if shapes else repr(selection_to_indices(event))
    if signature == st.session_state.get("_gs_last_event"):
        return
    st.session_state["_gs_last_event"] = signature
    if shapes:
        new = indices_in_shapes(shapes, shown["x"].to_numpy(), shown["y"].to_numpy(), shown["index"].to_numpy())
        st.session_state["_selected"] = update_selection(st.session_state.get("_selected", []), new, mode=mode)
        return
    clicked = clicked_index(event)
    if clicked is not None:
        st.session_state["_gs_focus"] = clicked


def selection_table_ui(path: str, points: pd.DataFrame, class_names: list[str]) -> None:
    """Show the selected examples as a table with thumbnails, or how to select some."""
    selected = st.session_state.get("_selected", [])
    if not selected:
        st.caption("Select examples with the **box** or **lasso** tool (top right of the map) or type their indices; "
                   "they are listed here and followed on the **Drift** page. Click a point to see that example.")
        return
    wanted = np.asarray([i for i in selected if 0 <= i < len(points)], np.int64)
    rows = points.iloc[wanted]
    shown = rows.head(TABLE_LIMIT)
    names = np.asarray(class_names, dtype=object)
    table = pd.DataFrame({
        "image": thumbnails(path, tuple(int(i) for i in shown["index"])),
        "index": shown["index"],
        "label": names[shown["label"].to_numpy()],
        "predicted": names[shown["prediction"].to_numpy()],
        "loss": shown["loss"],
        "cluster size": shown["cluster_size"] if "cluster_size" in shown else np.nan,
        "poison": shown["is_poison"],
        "dropped at epoch": dropped_text(shown["dropped_epoch"]),
    })
    st.markdown(f"**{len(rows):,} selected** (poisons among them: {int(rows['is_poison'].sum())})"
                + (f"; the first {TABLE_LIMIT} are listed" if len(rows) > TABLE_LIMIT else ""))
    table["review"] = verdicts(review_or_empty(path)[0], len(points))[shown["index"].to_numpy()]
    st.dataframe(readable(table), hide_index=True, width="stretch", height=min(420, 38 + 35 * len(table)),
                 column_config={"image": st.column_config.ImageColumn("image", width="small"),
                                "loss": st.column_config.NumberColumn(format="%.2e")})
    with st.expander(f"Mark the {len(rows):,} selected", expanded=False):
        mark_ui(path, [int(i) for i in rows["index"]], key="gs_sel_mark", what=f"the {len(rows):,} selected")


# --- the sample panel ----------------------------------------------------------------------


@st.cache_resource(max_entries=32, show_spinner=False)
def history_columns(path: str, epoch: int) -> pd.DataFrame:
    """The columns of one snapshot the sample panel shows (kept, not copied, between reruns)."""
    return load_snapshot(path, epoch, HISTORY_COLUMNS)


def example_history(path: str, index: int, epochs: list[int]) -> pd.DataFrame:
    """One example's row at every snapshot (the snapshot tables are cached per epoch)."""
    rows = []
    for epoch in epochs:
        try:
            snap = history_columns(path, epoch)
        except InputError:
            continue  # a damaged snapshot is reported by the map; the others still count
        rows.append(snap.iloc[index].to_dict() | {"epoch": epoch})
    return pd.DataFrame(rows)


def dropped_at(history: pd.DataFrame, here: int) -> int:
    """The epoch an example was dropped at over the whole run (-1: never), not only up to the
    snapshot shown: its first ``drop`` in ``history``, else ``here`` (this snapshot's
    ``dropped_epoch``) when no snapshot can say."""
    if history.empty or "drop" not in history:
        return here
    drops = history.loc[history["drop"].astype(bool), "epoch"]
    return int(drops.iloc[0]) if len(drops) else (here if here >= 0 else -1)


def sample_panel_ui(path: str, index: int, epochs: list[int], class_names: list[str], points: pd.DataFrame) -> None:
    """The example's image at a readable size, what the model made of it at every snapshot,
    and when it was dropped."""
    row = points.iloc[index]
    names = np.asarray(class_names, dtype=object)
    with st.container(border=True, key="gs_sample_panel"):
        head, close = st.columns([6, 1])
        history = example_history(path, index, epochs)
        dropped = dropped_at(history, int(row["dropped_epoch"]))
        head.subheader(f"Example {index}")
        close.button("Close", key="gs_close_panel", on_click=lambda: st.session_state.update(_gs_focus=None))
        left, right = st.columns([1, 3])
        image = np.asarray(open_run(path).images()[index])
        if image.ndim == 3 and image.shape[-1] == 1:
            image = image[..., 0]
        pil = Image.fromarray(np.ascontiguousarray(image))
        scale = max(1, PANEL_PIXELS // pil.width)
        left.image(pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST),
                   caption=f"{image.shape[1]}×{image.shape[0]} pixels, shown ×{scale}")
        facts = [f"**label** {md(names[int(row['label'])], 60)}",
                 f"**predicted** {md(names[int(row['prediction'])], 60)} (at this snapshot)",
                 "**poison** (ground truth)" if row["is_poison"] else "clean (no poison recorded)",
                 f"**dropped at epoch {dropped}**" if dropped >= 0 else "never dropped"]
        review = review_or_empty(path)[0]
        mine = review[review["index"] == index]
        if len(mine):
            r = mine.iloc[0]
            facts.append(f"**your review: {r['verdict']}**" + (f" ({r['note']})" if r["note"] else "")
                         + f", {r['who']}, {r['when']}")
        else:
            facts.append("not reviewed")
        right.markdown(" · ".join(facts))
        with right.expander("Mark this example", expanded=False):
            mark_ui(path, [index], key="gs_panel_mark", what=f"example {index}")
        if history.empty:
            right.warning("No snapshot of this example can be read.")
            return
        table = pd.DataFrame({"epoch": history["epoch"]})
        table["predicted"] = names[history["prediction"].to_numpy(np.int64)]
        for column, title in (("loss", "loss"), ("score", "suspicion score"), ("cluster_size", "cluster size"),
                              ("isolated", "isolated"), ("active", "trained on"), ("drop", "dropped here")):
            if column in history:
                table[title] = history[column].to_numpy()
        right.dataframe(readable(table), hide_index=True, width="stretch", height=min(320, 38 + 35 * len(table)),
                        column_config={"loss": st.column_config.NumberColumn(format="%.3g")})


@st.cache_resource(max_entries=8, show_spinner=False)
def space_matrix(path: str, epoch: int, space: str) -> np.ndarray:
    """float32 (n_samples, n_features): one snapshot's gradient (``g_*``) or feature (``emb_*``)
    columns, kept between reruns (a click on another example reuses it)."""
    columns = space_columns(list(common.load_snapshot_columns(path, epoch)), space)
    return load_snapshot(path, epoch, tuple(columns)).to_numpy(np.float32)


def neighbours_ui(path: str, index: int, epoch: int, class_names: list[str], points: pd.DataFrame) -> None:
    """The example's nearest neighbours at the shown snapshot, in gradient space and (when the
    snapshot stores them) in penultimate-feature space, with thumbnails."""
    have = set(common.load_snapshot_columns(path, epoch))
    spaces = [s for s in ("gradient", "features") if space_columns(sorted(have), s)]
    if not spaces:
        return
    names = np.asarray(class_names, dtype=object)
    with st.container(border=True, key="gs_neighbours"):
        head, choice = st.columns([3, 2], vertical_alignment="bottom")
        head.markdown(f"**Nearest neighbours of example {index}** at epoch {epoch}")
        space = choice.radio("Space", spaces, horizontal=True, key="gs_nb_space",
                             format_func={"gradient": "gradient (what EPIC sees)",
                                          "features": "penultimate features"}.get)
        try:
            X = space_matrix(path, epoch, space)
            found = nearest_neighbours(index, X, points["label"].to_numpy(), k=NEIGHBOURS)
        except InputError as err:
            st.info(str(err))
            return
        rows = points.iloc[found.indices]
        table = pd.DataFrame({
            "image": thumbnails(path, tuple(int(i) for i in found.indices)),
            "index": found.indices,
            "distance": np.round(found.distances, 4),
            "label": names[rows["label"].to_numpy()],
            "same label": np.where(found.same_label, "yes", "no"),
            "predicted": names[rows["prediction"].to_numpy()],
            "poison": np.where(rows["is_poison"].to_numpy(bool), "yes", "no"),
            "dropped at epoch": dropped_text(rows["dropped_epoch"]).to_numpy(),
        })
        st.dataframe(table, hide_index=True, width="stretch", key="gs_nb_table",
                     column_config={"image": st.column_config.ImageColumn("image", width="small")})
        cols = [c for c in sorted(have) if c.startswith(SPACES[space])]
        what = ("gradient columns (softmax − one-hot label)" if space == "gradient"
                else "penultimate-feature columns (emb_*)")
        st.caption(f"Euclidean distance over the snapshot's {len(cols)} {what}, to every example of the run.")
        st.button("Select these", key="gs_nb_select", on_click=lambda: st.session_state.update(
            _selected=update_selection(st.session_state.get("_selected", []), found.indices.tolist(), mode="add")))


# --- page ----------------------------------------------------------------------------------


def add_typed(n_samples: int) -> None:
    """Add the typed example indices to the selection (the error is kept to show)."""
    st.session_state["_gs_typed_error"] = None
    try:
        typed = parse_indices(st.session_state.get("gs_typed", ""), n_samples)
    except ValueError as err:
        st.session_state["_gs_typed_error"] = str(err)
        return
    st.session_state["_selected"] = update_selection(st.session_state.get("_selected", []), typed, mode="add")
    st.session_state["gs_typed"] = ""


def find_example(n_samples: int) -> None:
    """Look an example up by index: ring it, zoom to it and open its sample panel."""
    text = st.session_state.get("gs_find", "").strip()
    st.session_state["_gs_find_error"] = None
    if not text:
        st.session_state.update(_gs_zoom=None)
        return
    if not text.isdigit() or int(text) >= n_samples:
        st.session_state["_gs_find_error"] = f"{text!r} is not an example index (0 to {n_samples - 1:,})"
        return
    st.session_state.update(_gs_focus=int(text), _gs_zoom=int(text))


def toggle_play(epochs: list[int]) -> None:
    """Start or stop playing through ``epochs``; play always starts from the first (as
    docs/dashboard.md says), whatever snapshot is shown; Pause keeps the one reached."""
    playing = not st.session_state.get("gs_playing", False)
    st.session_state["gs_playing"] = playing
    if playing and st.session_state.get("_epoch") != epochs[0]:
        st.session_state["_epoch"] = epochs[0]  # play from the start, and show the start first
        st.session_state["_gs_drawn"] = None


FILTER_HIDDEN = ("x", "y", "dropped_before")  # map internals, not columns a person filters by


def filter_table(points: pd.DataFrame) -> pd.DataFrame:
    """The map's points as the filter expression sees them: ``poison`` for the ground truth,
    without the drawing's own columns."""
    table = points.drop(columns=[c for c in FILTER_HIDDEN if c in points])
    return table.rename(columns={"is_poison": "poison"})


def snapshot_columns(path: str, epochs: list[int]) -> set[str]:
    """The columns of the newest readable snapshot (a damaged one is reported by the map)."""
    for epoch in reversed(epochs):
        try:
            return set(common.load_snapshot_columns(path, epoch))
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            continue
    return set()


def color_choices(have: set[str], has_truth: bool) -> list[str]:
    """The fields the map can be coloured by, given the snapshot columns ``have``."""
    out = ["class", "prediction", "correct"] + (["poison"] if has_truth else []) + ["review", "dropped_epoch", "loss"]
    out += [c for c in colour_columns() if c in have] + ["drift"]  # as the defenses declare
    return out


def zoomed_ranges(points: pd.DataFrame, index: int, x_range, y_range):
    """The axis ranges zoomed around the point at row ``index`` of ``points``.

    The ranges are returned unchanged when that point has no finite position.
    """
    x, y = float(points["x"].iat[index]), float(points["y"].iat[index])
    if not (np.isfinite(x) and np.isfinite(y)):
        return x_range, y_range
    dx, dy = ZOOM * (x_range[1] - x_range[0]), ZOOM * (y_range[1] - y_range[0])
    return [x - dx, x + dx], [y - dy, y + dy]


def main() -> None:
    """Draw the Gradient space page."""
    page_header("Gradient space", "Each dot is a training example, placed by its last-layer gradient (softmax − one-hot label) "
                "at one snapshot: examples the model treats alike sit together. EPIC splits each class into clusters around "
                "medoids and drops medoids that stand alone (isolated). One layout serves the whole run, so as you move "
                "the epoch slider the examples move and the map holds still.")
    glossary_ui()
    run = run_picker_ui()
    if run is None:
        return
    path = str(run.path)
    try:
        load_examples(path)
    except DamagedFile as err:  # every map needs the per-example table
        damage_ui(err, "The map needs it.", fatal=True)
        return
    epochs = snapshot_epochs_ui(run)  # a damaged snapshot is named there and left out
    if not epochs:
        return
    method = st.sidebar.radio("Map layout", METHODS, format_func=METHOD_NAMES.get, key="gs_method", horizontal=True,
                              help="UMAP keeps neighbours together (computed once per run, in the background); "
                                   "PCA is a linear view.")
    if not projection_ready_ui(run, method, epochs):
        return
    mtime = projection_mtime(path, method)
    x_range, y_range = projection_extent(path, method, mtime)
    class_names = class_name_list(run)
    opening = default_epoch(run, epochs)  # the snapshot with the most drops, unless one was chosen
    has_truth = bool(load_examples(path)["is_poison"].any())
    n_samples = len(load_examples(path))
    columns = snapshot_columns(path, epochs)
    colors = color_choices(columns, has_truth)
    color_by = st.sidebar.selectbox("Colour by", colors, key="gs_color",
                                    format_func=lambda f: plots.COLOR_FIELDS[f][0],
                                    help="Any stored field of the examples at the shown snapshot.")
    has_medoids = "is_medoid" in columns
    draw_as = DRAW_AS[0]
    if n_samples >= DENSITY_ABOVE:
        draw_as = st.sidebar.radio("Draw the examples as", DRAW_AS, key="gs_draw_as",
                                   help=f"Past {DENSITY_ABOVE:,} examples: every example a point (WebGL), or one "
                                        "density image with poisons, drops and your selection as points.")
    c1, c2, c3 = st.columns([2, 2, 2], vertical_alignment="bottom")
    view = c1.radio("Show", ["all classes", "one class"], horizontal=True, key="gs_view",
                    help="One class: its examples coloured by EPIC cluster, medoids drawn as stars sized by cluster size.")
    one_class = None
    if view == "one class":
        one_class = c2.selectbox("Class", range(len(class_names)), format_func=lambda c: class_names[c], key="gs_class")
    playing = st.session_state.get("gs_playing", False)
    c3.button("Pause" if playing else "Play through the epochs", key="gs_play", on_click=toggle_play, args=(epochs,),
              icon=":material/pause:" if playing else ":material/play_arrow:", width="stretch")
    st.caption(map_caption(path, method, n_samples, len(epochs)))

    @st.fragment(run_every=PLAY_SECONDS if playing else None)
    def map_fragment() -> None:
        if st.session_state.get("gs_playing"):
            current = st.session_state.get("_epoch", epochs[0])
            # advance only once the current frame was drawn in full: under load a tick can
            # interrupt a redraw, and advancing anyway would skip that frame
            if st.session_state.get("_gs_drawn") == current:
                later = [e for e in epochs if e > current]
                if later:
                    st.session_state["_epoch"] = later[0]
                else:
                    st.session_state["gs_playing"] = False
                    st.rerun(scope="app")
        epoch = epoch_picker_ui(epochs, key="gs_epoch", label="Snapshot epoch", default=opening,
                                help="Gradient snapshots are taken every T epochs (and before training, at epoch 0).")
        try:
            points, target = map_points(path, method, epoch, mtime)
        except InputError as err:
            st.error(f"The snapshot of epoch {epoch} cannot be read: {md(err)}. The other epochs can still be viewed.")
            st.session_state["_gs_drawn"] = epoch
            return
        if color_by == "drift" or "drift" in st.session_state.get("gs_expr", ""):
            points = points.assign(drift=drift_at(path, epoch, run_stamp(path))["drift"].to_numpy())
        if color_by == "review":
            points = points.assign(review=verdicts(review_or_empty(path)[0], len(points)))
        # above the map; applied to the points it shows (and selects from)
        keep = expression_ui(filter_table(points), key="gs_expr", what="examples")
        if one_class is not None:
            keep &= points["label"].to_numpy() == one_class
        shown = points if keep.all() else points[keep]
        xr, yr = (x_range, y_range) if one_class is None else projection_extent(path, method, mtime, one_class)
        mode = st.session_state.get("gs_mode", "replace")
        apply_event(st.session_state.get("gs_map"), mode, shown)
        selected = st.session_state.get("_selected", [])
        focus = st.session_state.get("_gs_focus")
        zoom = st.session_state.get("_gs_zoom")
        if zoom is not None and zoom < len(points):
            xr, yr = zoomed_ranges(points, zoom, xr, yr)
        big = len(points) >= DENSITY_ABOVE
        left, right = st.columns([3, 1])
        with left:
            if big and draw_as == DRAW_AS[0]:
                points_map_ui(path, method, mtime, points, target, epoch, x_range=xr, y_range=yr, color_by=color_by,
                              class_names=class_names,
                              shown=None if keep.all() else keep,  # the filter expression and one class
                              selected=selected, found=zoom, kept_label=kept_label(run.config, epoch),
                              show_medoids=one_class is not None and has_medoids)
            else:
                figure_map_ui(path, method, mtime, shown, target, epoch, x_range=xr, y_range=yr, zoom=zoom,
                              selected=selected, color_by=color_by, class_names=class_names,
                              by_cluster=one_class is not None and has_medoids,
                              show_medoids=True if one_class is not None else "legendonly",
                              kept_label=kept_label(run.config, epoch), density=big)
        right.radio("A new selection", ["replace", "add", "remove"], horizontal=True, key="gs_mode",
                    help="How a box or lasso selection combines with the examples already selected.")
        snapshot_summary_ui(right, points, epoch, one_class, class_names, has_medoids, run.config)
        right.text_input("Find an example by index", key="gs_find", placeholder="e.g. 1234",
                         on_change=find_example, args=(len(points),),
                         help="Rings the example, zooms to it and opens its panel (empty: the whole map).")
        if st.session_state.get("_gs_find_error"):
            right.error(md(st.session_state["_gs_find_error"]))
        right.text_input("Add examples by index", key="gs_typed", placeholder="e.g. 12, 40-45",
                         on_change=add_typed, args=(len(points),))
        if st.session_state.get("_gs_typed_error"):
            right.error(md(st.session_state["_gs_typed_error"]))
        right.button("Clear selection", key="gs_clear", on_click=lambda: st.session_state.update(_selected=[]))
        if focus is not None and 0 <= focus < len(points):
            sample_panel_ui(path, int(focus), epochs, class_names, points)
            neighbours_ui(path, int(focus), epoch, class_names, points)
        if one_class is not None and has_medoids:
            clusters = points[(points["label"] == one_class) & points["is_medoid"].fillna(False).astype(bool)]
            if len(clusters):
                st.plotly_chart(plots.cluster_sizes_figure(clusters), width="stretch", key="gs_clusters",
                                config=PLOTLY_CONFIG)
        selection_table_ui(path, points, class_names)
        st.session_state["_gs_drawn"] = epoch

    map_fragment()


def figure_map_ui(path: str, method: str, mtime: float, shown: pd.DataFrame, target: pd.DataFrame, epoch: int, *,
                  x_range, y_range, zoom, selected, color_by: str, class_names: list[str], by_cluster: bool,
                  show_medoids, kept_label: str, density: bool) -> None:
    """The map as a plotly figure: in the mounted component (its positions fetched once per run),
    or, drawn as a density image, in Streamlit's own chart."""
    fig = plots.gradient_map_figure(
        shown, class_names=class_names, x_range=x_range, y_range=y_range, target=target, selected=selected,
        found=zoom, color_by=color_by, method=METHOD_NAMES[method], by_cluster=by_cluster, show_medoids=show_medoids,
        kept_label=kept_label, density=density)
    fig.update_layout(uirevision=f"{fig.layout.uirevision}-{zoom}")
    notes = fig.layout.meta.get("notes", [])
    if density:
        # the density image changes with every epoch anyway (it is the picture): Streamlit's chart
        st.plotly_chart(fig, key="gs_map", on_select="rerun", selection_mode=("points", "box", "lasso"),
                        width="stretch", config=MAP_CONFIG)
    else:
        # kept mounted between epochs; the browser fetches every snapshot's positions once per run
        # (a media URL: the same bytes give the same URL)
        _, slots = map_positions(path, method, mtime)
        url = binary_url(map_positions_bytes(path, method, mtime), name="positions")
        gradient_map(fig, key="gs_map", config=MAP_CONFIG, positions=url, slot=slots[epoch],
                     n_samples=len(load_examples(path)))
    st.caption("Click a legend entry to hide or show it; double-click one to show it alone.")
    for note in notes:
        st.caption(f"Subsampled: {note}." if "sample" in note else f"Drawn as a density: {note}.")


def points_map_ui(path: str, method: str, mtime: float, points: pd.DataFrame, target: pd.DataFrame, epoch: int, *,
                  x_range, y_range, color_by: str, class_names: list[str], shown: np.ndarray | None, selected,
                  found: int | None, kept_label: str, show_medoids: bool) -> None:
    """Every example a point, drawn by the component's WebGL points renderer; per epoch only the
    colour codes (one byte per example) and the overlay groups are sent."""
    layers = plots.point_layers(points, class_names=class_names, color_by=color_by, shown=shown, selected=selected,
                                found=found, kept_label=kept_label, show_medoids=show_medoids)
    _, slots = map_positions(path, method, mtime)
    positions = binary_url(map_positions_bytes(path, method, mtime), name="positions")
    colors = binary_url(layers["codes"].tobytes(), name="colors")
    star = [float(target["x"].iat[0]), float(target["y"].iat[0])] if target is not None and len(target) else None
    gradient_points(key="gs_map", positions=positions, slot=slots[epoch], n_samples=len(points), colors=colors,
                    palette=layers["palette"], names=layers["names"], legend=layers["legend"],
                    overlays=layers["overlays"], x_range=x_range, y_range=y_range, target=star, height=680)
    n_shown = len(points) if shown is None else int(np.asarray(shown).sum())
    st.caption(f"Every one of the {n_shown:,} examples shown is drawn as a point (WebGL). Drag to pan, scroll to zoom; "
               "**Lasso** or **Box** (above the map, or shift + drag) selects; hover a point for its index, click it "
               "for its panel.")
    for note in layers["notes"]:
        st.caption(f"Subsampled: {note}.")


def snapshot_summary_ui(container, points: pd.DataFrame, epoch: int, one_class, class_names, has_medoids: bool,
                        config: dict) -> None:
    """A few counts that say what this snapshot did."""
    rows = points if one_class is None else points[points["label"] == one_class]
    where = "" if one_class is None else f" of class {md(class_names[one_class], 60)}"
    n_drop = int(rows["drop"].sum())
    lines = [f"**Epoch {epoch}**{where}:",
             f"- {int((~rows['dropped_before']).sum()):,} examples still trained on",
             f"- {n_drop:,} dropped at this snapshot",
             f"- {int(rows['dropped_before'].sum()):,} dropped earlier"]
    if has_medoids:
        lines.append(f"- {int(rows['is_medoid'].fillna(False).sum()):,} medoids, "
                     f"{int(rows['isolated'].fillna(False).sum()):,} isolated")
    if rows["is_poison"].any():
        poisons = rows[rows["is_poison"]]
        lines.append(f"- poisons: {len(poisons)}, dropped so far {int((poisons['dropped_epoch'] >= 0).sum())}")
    why = kept_label(config, epoch)
    if n_drop == 0 and why != "isolated, kept":
        lines.append(f"- nothing is dropped here: {why.split(': ', 1)[1]}")
    container.markdown("\n".join(lines))


main()
