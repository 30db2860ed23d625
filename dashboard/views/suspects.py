"""Suspects: the examples the defense dropped or flagged up to an epoch, ranked, with a CSV download."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from core.export import snapshot_at, suspects_table, to_safe_csv
from core.store import open_run
from dashboard.common import (
    drift_at,
    dropped_text,
    epoch_picker_ui,
    glossary_ui,
    load_examples,
    load_snapshot_epochs,
    page_header,
    run_picker_ui,
    run_stamp,
    thumbnails,
)

THUMB_ROWS = 1000  # rows shown with thumbnails; the download always holds every row


@st.cache_data(max_entries=32, show_spinner=False)
def suspects(path: str, epoch: int, include_flagged: bool, stamp: float) -> pd.DataFrame:
    """core.export.suspects_table: the very table `poisonlens export` writes."""
    return suspects_table(open_run(path), epoch, include_flagged=include_flagged)


@st.cache_data(max_entries=32, show_spinner=False)
def suspects_csv(path: str, epoch: int, include_flagged: bool, stamp: float) -> str:
    return to_safe_csv(suspects(path, epoch, include_flagged, stamp))


def filters_ui(table: pd.DataFrame, has_truth: bool) -> pd.DataFrame:
    c1, c2, c3 = st.columns(3)
    status = c1.radio("Show", ["all", "dropped", "flagged, not dropped"], horizontal=True, key="su_status")
    if status == "dropped":
        table = table[table["dropped_epoch"] >= 0]
    elif status == "flagged, not dropped":
        table = table[table["dropped_epoch"] < 0]
    name_col = "class_name" if "class_name" in table else "label"
    classes = sorted(table[name_col].unique().tolist(), key=str)
    picked = c2.multiselect("Classes", classes, key="su_classes", placeholder="all classes")
    if picked:
        table = table[table[name_col].isin(picked)]
    if has_truth:
        truth = c3.radio("Ground truth", ["all", "poisons", "clean"], horizontal=True, key="su_truth")
        if truth != "all":
            table = table[table["is_poison"] == (truth == "poisons")]
    return table


def main() -> None:
    page_header("Suspects", "Every example the defense dropped up to the chosen epoch (and those flagged at that "
                "snapshot), most suspicious first, with what the defense knew about it. The download is the same "
                "file as `poisonlens export`.")
    glossary_ui()
    run = run_picker_ui()
    if run is None:
        return
    path = str(run.path)
    stamp = run_stamp(path)
    epochs = load_snapshot_epochs(path, stamp)
    if not epochs:
        st.info("This run has no gradient snapshot yet, so nothing was dropped or flagged.")
        return
    c1, c2 = st.columns([3, 1])
    with c1:
        epoch = epoch_picker_ui(epochs, key="su_epoch", label="Up to snapshot epoch")
    include_flagged = c2.toggle("Include flagged, not dropped", value=True, key="su_flagged",
                                help="Flagged: the defense would drop it, but the snapshot is outside the drop window "
                                     "(drop-after / stop-after).")
    table = suspects(path, epoch, include_flagged, stamp)
    examples = load_examples(path)
    has_truth = bool(examples["is_poison"].any())
    n_poisons = int(examples["is_poison"].sum())
    n_dropped = int((table["dropped_epoch"] >= 0).sum()) if len(table) else 0
    line = f"**{n_dropped:,}** of {len(examples):,} examples dropped up to epoch {epoch}"
    if include_flagged:
        line += f", **{len(table) - n_dropped:,}** more flagged at this snapshot"
    if has_truth and len(table):
        found = int(table.loc[table["dropped_epoch"] >= 0, "is_poison"].sum())
        line += f"; **{found} of {n_poisons} poisons** among the dropped"
    st.markdown(line + ".")
    export_cmd = f"poisonlens export --run {path} --epoch {epoch}" + ("" if include_flagged else " --dropped-only") + " --out suspects.csv"
    st.download_button(f"Download CSV ({len(table):,} rows)", suspects_csv(path, epoch, include_flagged, stamp),
                       file_name=f"{run.name}-suspects-epoch{epoch}.csv", mime="text/csv", key="su_download", icon=":material/download:",
                       help=f"The same file as `{export_cmd}`. Text cells that a spreadsheet would read as a formula are escaped.")
    if table.empty:
        st.info("Nothing dropped or flagged up to this epoch.")
        return
    shown = filters_ui(table, has_truth)
    at = snapshot_at(run, epoch)
    drift = drift_at(path, at, stamp)["drift"].to_numpy()
    view = shown.head(THUMB_ROWS).copy()
    view.insert(1, "image", thumbnails(path, tuple(int(i) for i in view["index"])))
    view.insert(view.columns.get_loc("dropped_epoch") + 1, "drift", np.round(drift[view["index"].to_numpy()], 3))
    view["dropped_epoch"] = dropped_text(view["dropped_epoch"])
    hidden = ["base_index"] + ([] if has_truth else ["is_poison"]) + (["label"] if "class_name" in view else [])
    view = view.drop(columns=hidden, errors="ignore")
    st.caption(f"{len(shown):,} rows match the filters" + (f"; the first {THUMB_ROWS:,} are shown" if len(shown) > THUMB_ROWS else "")
               + ". score: the defense's suspicion (higher = more suspicious); drift: distance from its own class "
               "(see the Drift page); cluster_size: examples its EPIC cluster stands for at this snapshot.")
    st.dataframe(view, hide_index=True, width="stretch", height=560,
                 column_config={"image": st.column_config.ImageColumn("image", width="small"),
                                "dropped_epoch": "dropped at epoch", "class_name": "class", "is_poison": "poison",
                                "cluster_size": "cluster size", "is_medoid": "medoid?"})


main()
