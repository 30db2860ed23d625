"""Suspects: the examples the defense dropped or flagged up to an epoch, ranked, with a CSV download."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from poisonlens.dashboard.common import (
    damage_ui,
    drift_at,
    dropped_text,
    epoch_picker_ui,
    glossary_ui,
    load_examples,
    no_drops_reason,
    page_header,
    run_picker_ui,
    run_stamp,
    snapshot_epochs_ui,
    thumbnails,
)
from poisonlens.dashboard.display import expression_ui
from poisonlens.export import column_descriptions, suspects_table, to_safe_csv
from poisonlens.store import DamagedFile, open_run

THUMB_ROWS = 1000  # rows shown with thumbnails; the download always holds every row


@st.cache_data(max_entries=32, show_spinner=False)
def suspects(path: str, epoch: int, include_flagged: bool, stamp: float) -> pd.DataFrame:
    """poisonlens.export.suspects_table: the very table `poisonlens export` writes (rows dropped by a
    damaged snapshot keep empty facts; ``attrs["damaged"]`` names the file)."""
    return suspects_table(open_run(path), epoch, include_flagged=include_flagged, skip_damaged=True)


@st.cache_data(max_entries=32, show_spinner=False)
def suspects_csv(path: str, epoch: int, include_flagged: bool, stamp: float) -> str:
    """The suspects table of ``epoch`` as spreadsheet-safe CSV text."""
    return to_safe_csv(suspects(path, epoch, include_flagged, stamp))


@st.cache_data(max_entries=32, show_spinner=False)
def descriptions(path: str, epoch: int) -> dict[str, str]:
    """Descriptions of the suspects table's columns, by column name."""
    return column_descriptions(open_run(path), epoch)


def drift_of(path: str, table: pd.DataFrame, epoch: int, readable: list[int], stamp: float) -> np.ndarray:
    """Each row's drift at the snapshot its facts come from: the one that dropped it, or ``epoch``
    for an example flagged but kept (NaN when that snapshot cannot be read)."""
    facts_epoch = np.where(table["dropped_epoch"] >= 0, table["dropped_epoch"], epoch)
    out = np.full(len(table), np.nan)
    for e in np.unique(facts_epoch):
        if int(e) not in readable:
            continue
        rows = facts_epoch == e
        out[rows] = drift_at(path, int(e), stamp)["drift"].to_numpy()[table.loc[rows, "index"].to_numpy()]
    return np.round(out, 3)


def filters_ui(table: pd.DataFrame, has_truth: bool) -> pd.DataFrame:
    """Show the status, class and ground-truth filters; return the filtered table."""
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
    """Draw the Suspects page."""
    page_header("Suspects", "Every example the defense dropped up to the chosen epoch (and those flagged at that "
                "snapshot), most suspicious first, with what the defense knew about it when it dropped it. The "
                "download is the same file as `poisonlens export`.")
    glossary_ui()
    run = run_picker_ui()
    if run is None:
        return
    path = str(run.path)
    stamp = run_stamp(path)
    epochs = snapshot_epochs_ui(run)
    if not epochs:
        return
    try:
        examples = load_examples(path)
    except DamagedFile as err:
        damage_ui(err, "Without it there is no suspects table.", fatal=True)
        return
    c1, c2 = st.columns([3, 1])
    with c1:
        epoch = epoch_picker_ui(epochs, key="su_epoch", label="Up to snapshot epoch",
                                help="Examples dropped at this snapshot or earlier, and those flagged at it.")
    include_flagged = c2.toggle("Include flagged, not dropped", value=True, key="su_flagged",
                                help="Flagged: the defense would drop it, but the snapshot is outside the drop window "
                                     "(drop-after / stop-after).")
    try:
        table = suspects(path, epoch, include_flagged, stamp)
    except DamagedFile as err:
        damage_ui(err, "Pick another snapshot epoch.", fatal=True)
        return
    for problem in table.attrs.get("damaged", []):
        st.warning(f"{problem}. The examples it dropped are listed without its score and cluster facts.")
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
    reason = no_drops_reason(run) if n_dropped == 0 else None
    if reason:
        st.info(reason)
    export_cmd = f"poisonlens export --run {path} --epoch {epoch}" + ("" if include_flagged else " --dropped-only") + " --out suspects.csv"
    st.download_button(f"Download CSV ({len(table):,} rows)", suspects_csv(path, epoch, include_flagged, stamp),
                       file_name=f"{run.name}-suspects-epoch{epoch}.csv", mime="text/csv", key="su_download", icon=":material/download:",
                       help=f"The same file as `{export_cmd}`. Text cells that a spreadsheet would read as a formula are escaped.")
    if table.empty:
        st.info("Nothing dropped or flagged up to this epoch.")
        return
    shown = filters_ui(table, has_truth)
    # drift of every row (not only the rows shown), so that an expression can filter by it
    shown = shown.assign(drift=drift_of(path, shown, epoch, epochs, stamp))
    shown = shown[expression_ui(shown, key="su_expr")]
    view = shown.head(THUMB_ROWS).copy()
    view.insert(1, "image", thumbnails(path, tuple(int(i) for i in view["index"])))
    view.insert(view.columns.get_loc("flagged") + 1, "drift", view.pop("drift"))
    view["dropped_epoch"] = dropped_text(view["dropped_epoch"])
    hidden = ["base_index"] + ([] if has_truth else ["is_poison"]) + (["label"] if "class_name" in view else [])
    view = view.drop(columns=hidden, errors="ignore")
    st.caption(f"{len(shown):,} rows match the filters" + (f"; the first {THUMB_ROWS:,} are shown" if len(shown) > THUMB_ROWS else "")
               + ". Ranked by the defense's score (higher = more suspicious) at the snapshot that dropped each example: "
               "an example dropped earlier is shown as the defense saw it then. drift: distance from its own class "
               "at that snapshot (see the Drift page). Hover a column title for its meaning.")
    about = descriptions(path, epoch)
    config = {c: st.column_config.Column(c.replace("_", " "), help=text) for c, text in about.items() if text and c in view}
    config.update({"image": st.column_config.ImageColumn("image", width="small"),
                   "dropped_epoch": st.column_config.Column("dropped at epoch", help="the snapshot that dropped it"),
                   "class_name": "class", "is_poison": "poison"})
    st.dataframe(view, hide_index=True, width="stretch", height=560, column_config=config)


main()
