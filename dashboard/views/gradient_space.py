"""Gradient space: a 2-D map of every example's last-layer gradient at one snapshot.

The map is computed once per run by a background process (``poisonlens.projection``) and only read
here. It is drawn by the map component (:mod:`poisonlens.dashboard.components.gradient_map`),
which stays mounted between epochs: the browser fetches every snapshot's positions once per run.
Up to ``DENSITY_ABOVE`` examples it gets, per epoch, the plotly figure without them (indices as
binary arrays, no per-point text). Past ``DENSITY_ABOVE`` examples every example is still drawn
as a point, by the component's WebGL points renderer (its own WebGL2 program), which gets per epoch a
colour code per example (one byte) and the overlay groups; a sidebar option draws the examples as
one density image instead (an image per epoch: Streamlit's own plotly chart). Selections are
read from the drawn box or lasso and computed on the server, so they work the same at every size
and on every route.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from poisonlens.dashboard import common
from poisonlens.dashboard.common import (
    PLOTLY_CONFIG,
    PageRun,
    class_name_list,
    damage_ui,
    default_epoch,
    dropped_text,
    epoch_picker_ui,
    load_examples,
    load_snapshot,
    md,
    projection_extent,
    projection_mtime,
    thumbnails,
)
from poisonlens.dashboard.components.gradient_map import (
    PointsView,
    Positions,
    binary_url,
    gradient_map,
    gradient_points,
    positions_bytes,
    quantized_positions,
)
from poisonlens.dashboard.display import expression_ui, readable
from poisonlens.dashboard.figures.gradient_map import (
    MapFrame,
    cluster_sizes_figure,
    gradient_map_figure,
)
from poisonlens.dashboard.figures.map_style import COLOR_FIELDS, MapMarks, MapView
from poisonlens.dashboard.figures.points import point_layers
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

PAGE = {"title": "Gradient space", "icon": ":material/scatter_plot:", "order": 20}

PLAY_SECONDS = 1.2
MAP_COLUMNS = ("label", "prediction", "loss", "active", "drop", "dropped_epoch", "score",
               "cluster_size", "is_medoid", "isolated", "medoid")
HISTORY_COLUMNS = ("prediction", "loss", "confidence", "active", "score", "cluster_size",
                   "is_medoid", "isolated", "drop")
METHOD_NAMES = {"umap": "UMAP", "pca": "PCA"}
TABLE_LIMIT = 500  # rows in the selection table
THUMBNAILS = 100  # of which this many with their image
NEIGHBOURS = 8  # nearest neighbours listed in the sample panel
DENSITY_ABOVE = 200_000  # examples; from this many on: the points renderer (or, as an option, a density image)
DRAW_AS = ("points (WebGL)", "density image")
RASTERS = ("auto", "gpu", "cpu")  # how the points renderer draws (?raster=): auto picks per browser
ZOOM = 0.08  # share of the map's width shown around a looked-up example
PANEL_PIXELS = 192  # the sample panel's image width
# plotly's default plotGlPixelRatio of 2 draws four times the pixels, costly where WebGL is
# software-rendered (headless or GPU-less browsers)
MAP_CONFIG = {**PLOTLY_CONFIG, "plotGlPixelRatio": 1}

# --- cached data ---------------------------------------------------------------------------


# cache_resource, like map_points: tables of millions of rows are not copied on every rerun
@st.cache_resource(max_entries=4, show_spinner=False)
def load_map(path: str, method: str, mtime: float) -> dict[int, pd.DataFrame]:
    """The stored map, a table per epoch (InputError naming the file when it is damaged).

    Parameters
    ----------
    path : str
        The run whose stored map is read (projections/METHOD.parquet).
    method : str
        The layout, 'umap' or 'pca'.
    mtime : float
        The map file's modification time: a recomputed map is read again.
    """
    frame = read_projection(open_run(path), method)
    if frame is None:
        return {}
    return {int(e): g.reset_index(drop=True) for e, g in frame.groupby("epoch")}


# cache_resource: a 1,000,000-row table is not copied on every rerun (callers never modify it)
@st.cache_resource(max_entries=24, show_spinner=False)
def map_points(path: str, method: str, epoch: int, mtime: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(a row per example with its map position and snapshot columns, the target's row).

    Parameters
    ----------
    path : str
        The run's folder.
    method : str
        Which stored map places the points ('umap' or 'pca').
    epoch : int
        The snapshot drawn.
    mtime : float
        The stored map's modification time (the cache key, with path, method and epoch).
    """
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


@st.cache_resource(show_spinner=False)
def prefetch_started() -> set:
    """The (path, method, mtime) maps whose other snapshots a background thread has read (per server)."""
    return set()


def prefetch_snapshots(path: str, method: str, mtime: float, epochs: list[int], shown: int) -> None:
    """Read the other snapshots' map tables (:func:`map_points`) in a background thread, nearest
    epoch first, once per run map: a million-row snapshot takes 1-2 s to read, which the first
    move of the slider to it would otherwise wait for."""
    started = prefetch_started()
    if (path, method, mtime) in started:
        return
    started.add((path, method, mtime))
    order = sorted((e for e in epochs if e != shown), key=lambda e: abs(e - shown))

    def read() -> None:
        for epoch in order:
            try:
                map_points(path, method, epoch, mtime)
            except Exception:  # noqa: BLE001 - a damaged snapshot is reported when it is shown
                continue

    threading.Thread(target=read, name="gradient-space-prefetch", daemon=True).start()


# cache_resource: 4.4 MB at 50,000 examples x 11 snapshots, not copied on every rerun
@st.cache_resource(max_entries=4, show_spinner=False)
def map_positions(path: str, method: str, mtime: float) -> tuple[np.ndarray, dict[int, int]]:
    """Every snapshot's map positions, for the file the map component serves to the browser.

    Parameters
    ----------
    path : str
        A run folder.
    method : str
        'umap' or 'pca': the stored map whose positions are gathered.
    mtime : float
        When that map was written.

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
    """Every snapshot's positions as the little-endian float32 file the map component fetches.

    Parameters
    ----------
    path : str
        The run whose map component fetches these bytes.
    method : str
        Its layout.
    mtime : float
        The map file's modification time; new bytes (and a new URL) when it changes.
    """
    return positions_bytes(map_positions(path, method, mtime)[0])


# --- the projection ------------------------------------------------------------------------


def kept_label(config: dict, epoch: int) -> str:
    """Legend text of isolated medoids left in training at ``epoch``: why they were kept.

    Parameters
    ----------
    config : dict
        The run's configuration (drop_after, stop_after, epochs).
    epoch : int
        The snapshot shown.
    """
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
    """Whether the map places the target at every shown snapshot it was recorded at.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run (its targets file says where the target was recorded).
    have : dict of int to DataFrame
        The stored map, a table per epoch (``load_map``).
    epochs : list of int
        The snapshot epochs the page shows.
    """
    try:
        recorded = set(int(e) for e in run.targets().get("epoch", []))
    except InputError:  # a damaged targets file: the map is drawn without requiring the target
        return True
    return all((have[e]["index"] == TARGET_INDEX).any() for e in epochs if e in recorded)


def start_map(path: str, method: str) -> None:
    """Start computing a run's map with ``method`` in the background (a refusal is shown).

    Parameters
    ----------
    path : str
        The run to compute the map of.
    method : str
        'umap' or 'pca'.
    """
    try:
        launch_projection(path, method=method)
    except InputError as err:  # e.g. projections/ became a link since the page was drawn
        st.session_state["_gs_map_refused"] = str(err)


def projection_ready_ui(run, method: str, epochs: list[int]) -> bool:
    """True when the stored map covers every snapshot; otherwise say why, show the background
    job's progress, or offer to (re)compute it. Nothing heavy runs in this rerun.

    Parameters
    ----------
    run : poisonlens.store.Run
        The opened run.
    method : str
        The layout asked for in the sidebar ('umap' or 'pca').
    epochs : list of int
        The readable snapshot epochs the map must cover.
    """
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
    """Live progress of the background map process, re-read every second.

    Parameters
    ----------
    path : str
        The run whose map is being computed in the background.
    method : str
        The job's layout; its job file is re-read every second.
    label : str
        The layout's name as shown ('UMAP', 'PCA').
    """

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
    """The caption saying how the map of ``method`` was made.

    Parameters
    ----------
    path : str
        The run's folder (the map job's record says how it was fitted).
    method : str
        'umap' or 'pca'; PCA gets a caption of its own.
    n_points : int
        Training examples in the run.
    n_snapshots : int
        Snapshots the map covers.
    """
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

    Parameters
    ----------
    event : Mapping or None
        The map's latest selection event (its widget state).
    mode : str
        How a new box or lasso combines with the selection: 'replace', 'add' or 'remove'.
    shown : DataFrame
        The points drawn (a box or lasso selects among these only).
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
    """Show the selected examples as a table with thumbnails, or how to select some.

    Parameters
    ----------
    path : str
        The run's folder (thumbnails and review).
    points : DataFrame
        The snapshot's points, a row per example in index order.
    class_names : list of str
        Class names, for the label and predicted columns.
    """
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
        # thumbnails for the first rows only: 500 PNGs took 1.8 s of a 1,000,000-point box's rerun
        "image": thumbnails(path, tuple(int(i) for i in shown["index"].iloc[:THUMBNAILS])) + [None] * (len(shown) - THUMBNAILS),
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
    """The columns of one snapshot the sample panel shows (kept, not copied, between reruns).

    Parameters
    ----------
    path : str
        The run's folder (snapshot files are written once, so path and epoch are the key).
    epoch : int
        One snapshot.
    """
    return load_snapshot(path, epoch, HISTORY_COLUMNS)


def example_history(path: str, index: int, epochs: list[int]) -> pd.DataFrame:
    """One example's row at every snapshot (the snapshot tables are cached per epoch).

    Parameters
    ----------
    path : str
        The run's folder.
    index : int
        The example followed over the snapshots.
    epochs : list of int
        The snapshot epochs to read, oldest first (a damaged one is skipped).
    """
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
    ``dropped_epoch``) when no snapshot can say.

    Parameters
    ----------
    history : DataFrame
        ``example_history``: the example's row at each snapshot, with epoch and drop.
    here : int
        The shown snapshot's dropped_epoch of the example (-1: not dropped by then).
    """
    if history.empty or "drop" not in history:
        return here
    drops = history.loc[history["drop"].astype(bool), "epoch"]
    return int(drops.iloc[0]) if len(drops) else (here if here >= 0 else -1)


def sample_panel_ui(path: str, index: int, epochs: list[int], class_names: list[str], points: pd.DataFrame) -> None:
    """The example's image at a readable size, what the model made of it at every snapshot,
    and when it was dropped.

    Parameters
    ----------
    path : str
        The run's folder (the image, the review and the history are read from it).
    index : int
        The example shown.
    epochs : list of int
        The run's readable snapshot epochs (the example's history).
    class_names : list of str
        Each class's name (label and prediction are shown by name).
    points : DataFrame
        The shown snapshot's points (the example's row at it).
    """
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
    columns, kept between reruns (a click on another example reuses it).

    Parameters
    ----------
    path : str
        The run's folder (the snapshot file is read once per space).
    epoch : int
        The snapshot whose columns are read.
    space : str
        'gradient' (the ``g_*`` columns) or 'features' (the ``emb_*`` columns).
    """
    columns = space_columns(list(common.load_snapshot_columns(path, epoch)), space)
    return load_snapshot(path, epoch, tuple(columns)).to_numpy(np.float32)


def neighbours_ui(path: str, index: int, epoch: int, class_names: list[str], points: pd.DataFrame) -> None:
    """The example's nearest neighbours at the shown snapshot, in gradient space and (when the
    snapshot stores them) in penultimate-feature space, with thumbnails.

    Parameters
    ----------
    path : str
        The run's folder.
    index : int
        The example whose neighbours are listed.
    epoch : int
        The snapshot shown.
    class_names : list of str
        Class names for the table.
    points : DataFrame
        The snapshot's points (labels, predictions, poisons, drops).
    """
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
    """Add the typed example indices to the selection (the error is kept to show).

    Parameters
    ----------
    n_samples : int
        Training examples in the run (larger indices are refused).
    """
    st.session_state["_gs_typed_error"] = None
    try:
        typed = parse_indices(st.session_state.get("gs_typed", ""), n_samples)
    except ValueError as err:
        st.session_state["_gs_typed_error"] = str(err)
        return
    st.session_state["_selected"] = update_selection(st.session_state.get("_selected", []), typed, mode="add")
    st.session_state["gs_typed"] = ""


def find_example(n_samples: int) -> None:
    """Look an example up by index: ring it, zoom to it and open its sample panel.

    Parameters
    ----------
    n_samples : int
        Training examples in the run (larger indices are refused).
    """
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
    docs/dashboard.md says), whatever snapshot is shown; Pause keeps the one reached.

    Parameters
    ----------
    epochs : list of int
        The readable snapshot epochs, oldest first (play starts at the first).
    """
    playing = not st.session_state.get("gs_playing", False)
    st.session_state["gs_playing"] = playing
    if playing and st.session_state.get("_epoch") != epochs[0]:
        st.session_state["_epoch"] = epochs[0]  # play from the start, and show the start first
        st.session_state["_gs_drawn"] = None


FILTER_HIDDEN = ("x", "y", "dropped_before")  # map internals, not columns a person filters by


def filter_table(points: pd.DataFrame) -> pd.DataFrame:
    """The map's points as the filter expression sees them: ``poison`` for the ground truth,
    without the drawing's own columns.

    Parameters
    ----------
    points : DataFrame
        The snapshot's points (not modified).
    """
    table = points.drop(columns=[c for c in FILTER_HIDDEN if c in points])
    return table.rename(columns={"is_poison": "poison"})


def snapshot_columns(path: str, epochs: list[int]) -> set[str]:
    """The columns of the newest readable snapshot (a damaged one is reported by the map).

    Parameters
    ----------
    path : str
        The run's folder.
    epochs : list of int
        The readable snapshot epochs, oldest first.
    """
    for epoch in reversed(epochs):
        try:
            return set(common.load_snapshot_columns(path, epoch))
        except Exception:  # noqa: BLE001 - pyarrow raises several types for a damaged file
            continue
    return set()


def color_choices(have: set[str], has_truth: bool) -> list[str]:
    """The fields the map can be coloured by, given the snapshot columns ``have``.

    Parameters
    ----------
    have : set of str
        The snapshot's columns (score and cluster_size are offered when stored).
    has_truth : bool
        Whether the run knows its poisons (then 'poison' is offered).
    """
    out = ["class", "prediction", "correct"] + (["poison"] if has_truth else []) + ["review", "dropped_epoch", "loss"]
    out += [c for c in colour_columns() if c in have] + ["drift"]  # as the defenses declare
    return out


def zoomed_ranges(points: pd.DataFrame, index: int, x_range, y_range):
    """The axis ranges zoomed around the point at row ``index`` of ``points``.

    The ranges are returned unchanged when that point has no finite position.

    Parameters
    ----------
    points : DataFrame
        The snapshot's points with x and y.
    index : int
        The row of ``points`` zoomed around.
    x_range : list of two floats
        The map's x range before zooming.
    y_range : list of two floats
        The map's y range before zooming.
    """
    x, y = float(points["x"].iat[index]), float(points["y"].iat[index])
    if not (np.isfinite(x) and np.isfinite(y)):
        return x_range, y_range
    dx, dy = ZOOM * (x_range[1] - x_range[0]), ZOOM * (y_range[1] - y_range[0])
    return [x - dx, x + dx], [y - dy, y + dy]


@dataclass(frozen=True)
class StoredMap:
    """A run's stored map, as the cached loaders take it.

    Attributes
    ----------
    path : the run's folder
    method : the layout, a key of METHOD_NAMES
    mtime : the map file's modification time (the cache key: a recomputed map is read again)
    """

    path: str
    method: str
    mtime: float


@dataclass(frozen=True)
class MapOptions:
    """What the user chose around the map, and what the run offers, for every snapshot drawn.

    Attributes
    ----------
    color_by : a key of COLOR_FIELDS
    draw_as : one of DRAW_AS (asked only past DENSITY_ABOVE examples)
    one_class : the class shown alone, or None for all classes
    class_names : the name of each class
    has_medoids : whether the snapshots store EPIC's medoids
    """

    color_by: str
    draw_as: str
    one_class: int | None
    class_names: list[str]
    has_medoids: bool


@dataclass(frozen=True)
class MapDraw:
    """What one map draws: its area, how, and what is marked on it.

    Attributes
    ----------
    frame : MapFrame (axis ranges, the layout's name)
    view : MapView (colour, medoids, density or points)
    marks : MapMarks (the selection, the looked-up example, the target)
    class_names : the name of each class
    """

    frame: MapFrame
    view: MapView
    marks: MapMarks
    class_names: list[str]


def options_ui(page: PageRun, stored: StoredMap) -> MapOptions:
    """The sidebar's colour and drawing choices and the row above the map (all classes or one,
    play), and the caption saying how the map was made.

    Parameters
    ----------
    page : PageRun
        The run the page shows.
    stored : StoredMap
        Its map.
    """
    class_names = class_name_list(page.run)
    examples = load_examples(page.path)
    columns = snapshot_columns(page.path, page.epochs)
    color_by = st.sidebar.selectbox("Colour by", color_choices(columns, bool(examples["is_poison"].any())),
                                    key="gs_color", format_func=lambda f: COLOR_FIELDS[f][0],
                                    help="Any stored field of the examples at the shown snapshot.")
    draw_as = DRAW_AS[0]
    if len(examples) >= DENSITY_ABOVE:
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
    c3.button("Pause" if playing else "Play through the epochs", key="gs_play", on_click=toggle_play,
              args=(page.epochs,), icon=":material/pause:" if playing else ":material/play_arrow:", width="stretch")
    st.caption(map_caption(page.path, stored.method, len(examples), len(page.epochs)))
    return MapOptions(color_by=color_by, draw_as=draw_as, one_class=one_class, class_names=class_names,
                      has_medoids="is_medoid" in columns)


def advance_play(epochs: list[int]) -> None:
    """While playing, move to the next snapshot, once the current one was drawn in full (under
    load a tick can interrupt a redraw, and advancing anyway would skip that frame); stop at
    the last.

    Parameters
    ----------
    epochs : list of int
        The readable snapshot epochs, oldest first.
    """
    if not st.session_state.get("gs_playing"):
        return
    current = st.session_state.get("_epoch", epochs[0])
    if st.session_state.get("_gs_drawn") != current:
        return
    later = [e for e in epochs if e > current]
    if later:
        st.session_state["_epoch"] = later[0]
    else:
        st.session_state["gs_playing"] = False
        st.rerun(scope="app")


def with_asked_columns(page: PageRun, points: pd.DataFrame, epoch: int, color_by: str) -> pd.DataFrame:
    """``points`` with drift and your review added when the colour or the filter asks for them.

    Parameters
    ----------
    page : PageRun
        The run the page shows.
    points : DataFrame
        :func:`map_points` of ``epoch`` (not modified: it is cached).
    epoch : int
        The snapshot shown.
    color_by : str
        The colour field chosen.
    """
    if color_by == "drift" or "drift" in st.session_state.get("gs_expr", ""):
        points = points.assign(drift=common.drift_at(page.path, epoch, common.run_stamp(page.path))["drift"].to_numpy())
    if color_by == "review":
        points = points.assign(review=verdicts(review_or_empty(page.path)[0], len(points)))
    return points


def map_frame(stored: StoredMap, points: pd.DataFrame, one_class: int | None) -> MapFrame:
    """The area the map shows: the whole run's extent, one class's, or zoomed around the
    example looked up.

    Parameters
    ----------
    stored : StoredMap
        The run's map.
    points : DataFrame
        The snapshot's points (the looked-up example's position).
    one_class : int or None
        The class shown alone, or None.
    """
    xr, yr = projection_extent(stored.path, stored.method, stored.mtime, one_class)
    zoom = st.session_state.get("_gs_zoom")
    if zoom is not None and zoom < len(points):
        xr, yr = zoomed_ranges(points, zoom, xr, yr)
    return MapFrame(x_range=xr, y_range=yr, method=METHOD_NAMES[stored.method])


def map_ui(page: PageRun, stored: StoredMap, options: MapOptions, epoch: int, points: pd.DataFrame,
           target: pd.DataFrame) -> None:
    """The map of one snapshot, with the examples the filter and the class choice leave, drawn
    by the points renderer (very large runs) or as a plotly figure.

    Parameters
    ----------
    page, stored, options : PageRun, StoredMap, MapOptions
        The run, its map and the choices around it.
    epoch : int
        The snapshot shown.
    points : DataFrame
        Its points (:func:`map_points`, with the columns asked for).
    target : DataFrame
        The target's position (one row of x, y), or empty.
    """
    # above the map; applied to the points it shows (and selects from)
    keep = expression_ui(filter_table(points), key="gs_expr", what="examples")
    if options.one_class is not None:
        keep &= points["label"].to_numpy() == options.one_class
    shown = points if keep.all() else points[keep]
    apply_event(st.session_state.get("gs_map"), st.session_state.get("gs_mode", "replace"), shown)
    frame = map_frame(stored, points, options.one_class)
    marks = MapMarks(selected=st.session_state.get("_selected", []), found=st.session_state.get("_gs_zoom"),
                     target=target)
    kept = kept_label(page.run.config, epoch)
    one_class = options.one_class is not None
    if len(points) >= DENSITY_ABOVE and options.draw_as == DRAW_AS[0]:
        view = MapView(color_by=options.color_by, kept_label=kept, show_medoids=one_class and options.has_medoids)
        prefetch_snapshots(stored.path, stored.method, stored.mtime, page.epochs, epoch)
        points_map_ui(stored, points, epoch, MapDraw(frame, view, marks, options.class_names),
                      shown=None if keep.all() else keep)
    else:
        view = MapView(color_by=options.color_by, by_cluster=one_class and options.has_medoids,
                       show_medoids=True if one_class else "legendonly", kept_label=kept,
                       density=len(points) >= DENSITY_ABOVE)
        figure_map_ui(stored, shown, epoch, MapDraw(frame, view, marks, options.class_names))


def side_ui(container, page: PageRun, options: MapOptions, epoch: int, points: pd.DataFrame) -> None:
    """Beside the map: how a new selection combines, what this snapshot did, finding and adding
    examples by index, clearing the selection.

    Parameters
    ----------
    container : a Streamlit container (the column beside the map)
    page, options : PageRun, MapOptions
        The run and the choices around the map.
    epoch : int
        The snapshot shown.
    points : DataFrame
        Its points.
    """
    container.radio("A new selection", ["replace", "add", "remove"], horizontal=True, key="gs_mode",
                    help="How a box or lasso selection combines with the examples already selected.")
    snapshot_summary_ui(container, points, epoch, options, page.run.config)
    container.text_input("Find an example by index", key="gs_find", placeholder="e.g. 1234",
                         on_change=find_example, args=(len(points),),
                         help="Rings the example, zooms to it and opens its panel (empty: the whole map).")
    if st.session_state.get("_gs_find_error"):
        container.error(md(st.session_state["_gs_find_error"]))
    container.text_input("Add examples by index", key="gs_typed", placeholder="e.g. 12, 40-45",
                         on_change=add_typed, args=(len(points),))
    if st.session_state.get("_gs_typed_error"):
        container.error(md(st.session_state["_gs_typed_error"]))
    container.button("Clear selection", key="gs_clear", on_click=lambda: st.session_state.update(_selected=[]))


def below_map_ui(page: PageRun, options: MapOptions, epoch: int, points: pd.DataFrame) -> None:
    """Under the map: the open example's panel and neighbours, one class's cluster sizes, the
    selection's table.

    Parameters
    ----------
    page, options : PageRun, MapOptions
        The run, and the class shown alone and the class names.
    epoch : int
        The snapshot whose neighbours are listed.
    points : DataFrame
        The snapshot's points (the open example's row, the clusters, the selection).
    """
    focus = st.session_state.get("_gs_focus")  # the example whose panel is open (a click or a look-up)
    if focus is not None and 0 <= focus < len(points):
        sample_panel_ui(page.path, int(focus), page.epochs, options.class_names, points)
        neighbours_ui(page.path, int(focus), epoch, options.class_names, points)
    if options.one_class is not None and options.has_medoids:
        clusters = points[(points["label"] == options.one_class) & points["is_medoid"].fillna(False).astype(bool)]
        if len(clusters):
            st.plotly_chart(cluster_sizes_figure(clusters), width="stretch", key="gs_clusters", config=PLOTLY_CONFIG)
    selection_table_ui(page.path, points, options.class_names)


def snapshot_ui(page: PageRun, stored: StoredMap, options: MapOptions) -> None:
    """One snapshot: the epoch slider, the map, what is beside and below it.

    Parameters
    ----------
    page, stored, options : PageRun, StoredMap, MapOptions
        The run, its map and the choices around it.
    """
    advance_play(page.epochs)
    epoch = epoch_picker_ui(page.epochs, key="gs_epoch", label="Snapshot epoch",
                            default=default_epoch(page.run, page.epochs),  # the most drops, unless one was chosen
                            help="Gradient snapshots are taken every T epochs (and before training, at epoch 0).")
    try:
        points, target = map_points(stored.path, stored.method, epoch, stored.mtime)
    except InputError as err:
        st.error(f"The snapshot of epoch {epoch} cannot be read: {md(err)}. The other epochs can still be viewed.")
        st.session_state["_gs_drawn"] = epoch
        return
    points = with_asked_columns(page, points, epoch, options.color_by)
    left, right = st.columns([3, 1])
    with left:
        map_ui(page, stored, options, epoch, points, target)  # a click on the map opens its panel now
    side_ui(right, page, options, epoch, points)
    below_map_ui(page, options, epoch, points)
    st.session_state["_gs_drawn"] = epoch


def main() -> None:
    """Draw the Gradient space page."""
    page = common.page_run_ui(
        "Gradient space", "Each dot is a training example, placed by its last-layer gradient (softmax − one-hot label) "
        "at one snapshot: examples the model treats alike sit together. EPIC splits each class into clusters around "
        "medoids and drops medoids that stand alone (isolated). One layout serves the whole run, so as you move "
        "the epoch slider the examples move and the map holds still.")
    if page is None:  # a damaged snapshot is named there and left out
        return
    try:
        load_examples(page.path)
    except DamagedFile as err:  # every map needs the per-example table
        damage_ui(err, "The map needs it.", fatal=True)
        return
    method = st.sidebar.radio("Map layout", METHODS, format_func=METHOD_NAMES.get, key="gs_method", horizontal=True,
                              help="UMAP keeps neighbours together (computed once per run, in the background); "
                                   "PCA is a linear view.")
    if not projection_ready_ui(page.run, method, page.epochs):
        return
    stored = StoredMap(page.path, method, projection_mtime(page.path, method))
    options = options_ui(page, stored)

    @st.fragment(run_every=PLAY_SECONDS if st.session_state.get("gs_playing", False) else None)
    def map_fragment() -> None:
        snapshot_ui(page, stored, options)

    map_fragment()


def figure_map_ui(stored: StoredMap, shown: pd.DataFrame, epoch: int, draw: MapDraw) -> None:
    """The map as a plotly figure: in the mounted component (its positions fetched once per run),
    or, drawn as a density image, in Streamlit's own chart.

    Parameters
    ----------
    stored : StoredMap
        The run's map (the positions the component fetches).
    shown : DataFrame
        The points drawn (those the filter and the class choice leave).
    epoch : int
        The snapshot shown (its slot in the positions file).
    draw : MapDraw
        The area, the view options, the marks and the class names.
    """
    fig = gradient_map_figure(shown, class_names=draw.class_names, frame=draw.frame, view=draw.view, marks=draw.marks)
    fig.update_layout(uirevision=f"{fig.layout.uirevision}-{draw.marks.found}")
    notes = fig.layout.meta.get("notes", [])
    if draw.view.density:
        # the density image changes with every epoch anyway (it is the picture): Streamlit's chart
        st.plotly_chart(fig, key="gs_map", on_select="rerun", selection_mode=("points", "box", "lasso"),
                        width="stretch", config=MAP_CONFIG)
    else:
        # kept mounted between epochs; the browser fetches every snapshot's positions once per run
        # (a media URL: the same bytes give the same URL)
        _, slots = map_positions(stored.path, stored.method, stored.mtime)
        url = binary_url(map_positions_bytes(stored.path, stored.method, stored.mtime), name="positions")
        gradient_map(fig, key="gs_map", config=MAP_CONFIG,
                     positions=Positions(url, slots[epoch], len(load_examples(stored.path))))
    st.caption("Click a legend entry to hide or show it; double-click one to show it alone.")
    for note in notes:
        st.caption(f"Subsampled: {note}." if "sample" in note else f"Drawn as a density: {note}.")


def points_map_ui(stored: StoredMap, points: pd.DataFrame, epoch: int, draw: MapDraw, *,
                  shown: np.ndarray | None) -> None:
    """Every example a point, drawn by the component's WebGL points renderer; per epoch only the
    colour codes (one byte per example) and the overlay groups are sent.

    Parameters
    ----------
    stored : StoredMap
        The run's map (the positions the component fetches).
    points : DataFrame
        Every example of the snapshot, in index order.
    epoch : int
        The snapshot shown (its slot in the positions file).
    draw : MapDraw
        The area, the view options, the marks (the target drawn as a star) and the class names.
    shown : bool ndarray of shape (n_samples,) or None
        The examples the filter and the class choice leave (None: all).
    """
    layers = point_layers(points, class_names=draw.class_names, view=draw.view, marks=draw.marks, shown=shown)
    xy, slots = map_positions(stored.path, stored.method, stored.mtime)
    codes, scale = quantized_positions(xy)  # uint16: half the bytes of float32
    positions = binary_url(codes, name="positions")
    colors = binary_url(layers["codes"].tobytes(), name="colors")
    target = draw.marks.target
    star = [float(target["x"].iat[0]), float(target["y"].iat[0])] if target is not None and len(target) else None
    view = PointsView(colors, layers["palette"], layers["names"], layers["legend"], layers["overlays"],
                      draw.frame.x_range, draw.frame.y_range, star)
    # ?raster=gpu or cpu overrides the frame's own choice (the CPU where WebGL is software or missing)
    raster = st.query_params.get("raster", "auto")
    gradient_points(view, key="gs_map", positions=Positions(positions, slots[epoch], len(points), scale), height=680,
                    raster=raster if raster in RASTERS else "auto")
    n_shown = len(points) if shown is None else int(np.asarray(shown).sum())
    st.caption(f"Every one of the {n_shown:,} examples shown is drawn as a point (by WebGL, or by the CPU where the "
               "browser's WebGL is software). Drag to pan, scroll to zoom; "
               "**Lasso** or **Box** (above the map, or shift + drag) selects; hover a point for its index, click it "
               "for its panel.")
    for note in layers["notes"]:
        st.caption(f"Subsampled: {note}.")


def snapshot_summary_ui(container, points: pd.DataFrame, epoch: int, options: MapOptions, config: dict) -> None:
    """A few counts that say what this snapshot did.

    Parameters
    ----------
    container : a Streamlit container (the column beside the map)
    points : DataFrame
        The snapshot's points.
    epoch : int
        The snapshot shown.
    options : MapOptions
        The class shown alone (its counts only), the class names, whether medoids are stored.
    config : dict
        The run's configuration (why nothing was dropped here).
    """
    one_class = options.one_class
    rows = points if one_class is None else points[points["label"] == one_class]
    where = "" if one_class is None else f" of class {md(options.class_names[one_class], 60)}"
    n_drop = int(rows["drop"].sum())
    lines = [f"**Epoch {epoch}**{where}:",
             f"- {int((~rows['dropped_before']).sum()):,} examples still trained on",
             f"- {n_drop:,} dropped at this snapshot",
             f"- {int(rows['dropped_before'].sum()):,} dropped earlier"]
    if options.has_medoids:
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
