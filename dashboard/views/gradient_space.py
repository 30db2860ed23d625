"""Gradient space: a 2-D map of every example's last-layer gradient at one snapshot."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.projection import METHODS, TARGET_INDEX, compute_projection
from core.selection import parse_indices, selection_to_indices, update_selection
from core.store import open_run
from dashboard import plots
from dashboard.common import (
    class_name_list,
    dropped_text,
    epoch_picker_ui,
    glossary_ui,
    load_examples,
    load_projection_epoch,
    load_snapshot,
    load_snapshot_epochs,
    page_header,
    projection_by_epoch,
    projection_extent,
    projection_mtime,
    run_picker_ui,
    run_stamp,
    text_thumbnails,
    thumbnails,
)

PLAY_SECONDS = 1.2
MAP_COLUMNS = ("label", "prediction", "loss", "active", "drop", "dropped_epoch",
               "cluster_size", "is_medoid", "isolated", "medoid")
METHOD_NAMES = {"umap": "UMAP", "pca": "PCA"}
TABLE_LIMIT = 500  # rows with thumbnails in the selection table

# --- cached data ---------------------------------------------------------------------------


@st.cache_data(max_entries=64, show_spinner=False)
def map_points(path: str, method: str, epoch: int, mtime: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(a row per example with its map position and snapshot columns, the target's row)."""
    proj = load_projection_epoch(path, method, epoch, mtime)
    snap = load_snapshot(path, epoch, MAP_COLUMNS).reset_index(drop=True)
    examples = load_examples(path)
    rows = proj[proj["index"] != TARGET_INDEX].set_index("index")
    points = snap.assign(index=np.arange(len(snap)))
    points["x"] = rows["x"].reindex(points["index"]).to_numpy()
    points["y"] = rows["y"].reindex(points["index"]).to_numpy()
    points["is_poison"] = examples["is_poison"].to_numpy(bool)
    dropped = points["dropped_epoch"].to_numpy()
    points["dropped_before"] = (dropped >= 0) & (dropped < epoch)
    return points, proj[proj["index"] == TARGET_INDEX][["x", "y"]]


# --- the projection ------------------------------------------------------------------------


def projection_ready_ui(run, method: str, epochs: list[int]) -> bool:
    """True when the stored map covers every snapshot; otherwise offer or compute it."""
    path = str(run.path)
    have = projection_by_epoch(path, method, projection_mtime(path, method))
    n_target = len(run.targets()) if run.target else 0
    have_target = sum(int((g["index"] == TARGET_INDEX).sum()) for g in have.values())
    if sorted(have) == epochs and have_target == n_target:
        return True
    status = run.status
    phase = run.progress().get("phase")
    if phase == "projection" and status == "finished" and run.meta.get("pid"):
        st.info("The training process is computing this run's map right now; this page updates when it is done.")

        @st.fragment(run_every=3)
        def wait() -> None:
            if open_run(path).progress().get("phase") != "projection":
                st.rerun()

        wait()
        return False
    if status == "running":
        st.info(f"The map is computed once training has finished ({len(epochs)} snapshots so far). You can compute it "
                "now for the snapshots so far; it will be recomputed when the run finishes.")
        if not st.button("Compute the map now", key="gs_compute"):
            return False
    label = METHOD_NAMES[method]
    bar = st.progress(0.0, text=f"Computing the {label} map of this run (once; it is stored in the run)…")

    def progress(fraction: float, message: str) -> None:
        bar.progress(min(1.0, fraction), text=f"{label} map: {message}")

    compute_projection(path, method=method, progress=progress)
    bar.empty()
    return True


# --- selection -----------------------------------------------------------------------------


def apply_event(event, mode: str) -> None:
    """Fold a chart selection into ``_selected``, once per new selection (a changed figure clears
    the chart's own selection, so the kept one lives in session state)."""
    new = selection_to_indices(event)
    signature = tuple(new)
    if signature == st.session_state.get("_gs_last_event"):
        return
    st.session_state["_gs_last_event"] = signature
    if new:
        st.session_state["_selected"] = update_selection(st.session_state.get("_selected", []), new, mode=mode)


def selection_table_ui(path: str, points: pd.DataFrame, class_names: list[str]) -> None:
    selected = st.session_state.get("_selected", [])
    if not selected:
        st.caption("Select examples with the **box** or **lasso** tool (top right of the map) or type their indices "
                   "below; they are listed here and followed on the **Drift** page.")
        return
    rows = points.set_index("index").loc[[i for i in selected if i in set(points["index"])]].reset_index()
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
    st.dataframe(table, hide_index=True, width="stretch", height=min(420, 38 + 35 * len(table)),
                 column_config={"image": st.column_config.ImageColumn("image", width="small"),
                                "loss": st.column_config.NumberColumn(format="%.2e")})


# --- page ----------------------------------------------------------------------------------


def add_typed(n_samples: int) -> None:
    st.session_state["_gs_typed_error"] = None
    try:
        typed = parse_indices(st.session_state.get("gs_typed", ""), n_samples)
    except ValueError as err:
        st.session_state["_gs_typed_error"] = str(err)
        return
    st.session_state["_selected"] = update_selection(st.session_state.get("_selected", []), typed, mode="add")
    st.session_state["gs_typed"] = ""


def toggle_play(epochs: list[int]) -> None:
    playing = not st.session_state.get("gs_playing", False)
    st.session_state["gs_playing"] = playing
    if playing and st.session_state.get("_epoch") == epochs[-1]:
        st.session_state["_epoch"] = epochs[0]  # play from the start


def main() -> None:
    page_header("Gradient space", "Each dot is a training example, placed by its last-layer gradient (softmax − one-hot label) "
                "at one snapshot: examples the model treats alike sit together. EPIC splits each class into clusters around "
                "medoids and drops medoids that stand alone (isolated). One layout serves the whole run, so as you move "
                "the epoch slider the examples move and the map holds still.")
    glossary_ui()
    run = run_picker_ui()
    if run is None:
        return
    path = str(run.path)
    epochs = load_snapshot_epochs(path, run_stamp(path))
    if not epochs:
        st.info("This run has no gradient snapshot yet; the first is taken before training starts.")
        return
    method = st.sidebar.radio("Map layout", METHODS, format_func=METHOD_NAMES.get, key="gs_method", horizontal=True,
                              help="UMAP keeps neighbours together (slower to compute, once per run); PCA is a linear view.")
    if not projection_ready_ui(run, method, epochs):
        return
    mtime = projection_mtime(path, method)
    x_range, y_range = projection_extent(path, method, mtime)
    class_names = class_name_list(run)
    columns = load_snapshot(path, epochs[-1], ("is_medoid",)).columns
    has_medoids = "is_medoid" in columns

    hover_images = st.sidebar.checkbox("Images in hover (small runs)", value=True, key="gs_hover",
                                       help="A coarse block-character picture of the example in the hover box (runs up "
                                            "to 3,000 examples). Full thumbnails are in the table of selected examples.")
    c1, c2, c3 = st.columns([2, 2, 2], vertical_alignment="bottom")
    view = c1.radio("Show", ["all classes", "one class"], horizontal=True, key="gs_view",
                    help="One class: its examples coloured by EPIC cluster, medoids drawn as stars sized by cluster size.")
    one_class = None
    if view == "one class":
        one_class = c2.selectbox("Class", range(len(class_names)), format_func=lambda c: class_names[c], key="gs_class")
    playing = st.session_state.get("gs_playing", False)
    c3.button("Pause" if playing else "Play through the epochs", key="gs_play", on_click=toggle_play, args=(epochs,),
              icon=":material/pause:" if playing else ":material/play_arrow:", width="stretch")

    @st.fragment(run_every=PLAY_SECONDS if playing else None)
    def map_fragment() -> None:
        if st.session_state.get("gs_playing"):
            current = st.session_state.get("_epoch", epochs[0])
            later = [e for e in epochs if e > current]
            if later:
                st.session_state["_epoch"] = later[0]
            else:
                st.session_state["gs_playing"] = False
                st.rerun(scope="app")
        epoch = epoch_picker_ui(epochs, key="gs_epoch", label="Snapshot epoch",
                                help="Gradient snapshots are taken every T epochs (and before training, at epoch 0).")
        points, target = map_points(path, method, epoch, mtime)
        if hover_images:
            thumbs = text_thumbnails(path)
            if thumbs is not None:
                points = points.assign(thumb=np.asarray(thumbs, dtype=object)[points["index"].to_numpy()])
        shown = points if one_class is None else points[points["label"] == one_class]
        xr, yr = (x_range, y_range) if one_class is None else projection_extent(path, method, mtime, one_class)
        selected = st.session_state.get("_selected", [])
        fig = plots.gradient_map_figure(shown, class_names=class_names, x_range=xr, y_range=yr,
                                        target=target, selected=selected, method=METHOD_NAMES[method],
                                        by_cluster=one_class is not None and has_medoids,
                                        show_medoids=True if one_class is not None else "legendonly")
        left, right = st.columns([3, 1])
        with left:
            event = st.plotly_chart(fig, key="gs_map", on_select="rerun", selection_mode=("points", "box", "lasso"),
                                    width="stretch", config={"displaylogo": False})
        mode = right.radio("A new selection", ["replace", "add", "remove"], horizontal=True, key="gs_mode",
                           help="How a box or lasso selection combines with the examples already selected.")
        apply_event(event, mode)
        snapshot_summary_ui(right, points, epoch, one_class, class_names, has_medoids)
        right.text_input("Add examples by index", key="gs_typed", placeholder="e.g. 12, 40-45",
                         on_change=add_typed, args=(len(points),))
        if st.session_state.get("_gs_typed_error"):
            right.error(st.session_state["_gs_typed_error"])
        right.button("Clear selection", key="gs_clear", on_click=lambda: st.session_state.update(_selected=[]))
        if one_class is not None and has_medoids:
            clusters = points[(points["label"] == one_class) & points["is_medoid"].fillna(False).astype(bool)]
            if len(clusters):
                st.plotly_chart(plots.cluster_sizes_figure(clusters), width="stretch", key="gs_clusters")
        selection_table_ui(path, points, class_names)

    map_fragment()


def snapshot_summary_ui(container, points: pd.DataFrame, epoch: int, one_class, class_names, has_medoids: bool) -> None:
    """A few counts that say what this snapshot did."""
    rows = points if one_class is None else points[points["label"] == one_class]
    where = "" if one_class is None else f" of class {class_names[one_class]}"
    lines = [f"**Epoch {epoch}**{where}:",
             f"- {int((~rows['dropped_before']).sum()):,} examples still trained on",
             f"- {int(rows['drop'].sum()):,} dropped at this snapshot",
             f"- {int(rows['dropped_before'].sum()):,} dropped earlier"]
    if has_medoids:
        lines.append(f"- {int(rows['is_medoid'].fillna(False).sum()):,} medoids, "
                     f"{int(rows['isolated'].fillna(False).sum()):,} isolated")
    if rows["is_poison"].any():
        poisons = rows[rows["is_poison"]]
        lines.append(f"- poisons: {len(poisons)}, dropped so far {int((poisons['dropped_epoch'] >= 0).sum())}")
    container.markdown("\n".join(lines))


main()
