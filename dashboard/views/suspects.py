"""Suspects: the examples the defense dropped or flagged up to an epoch, ranked, with a CSV download."""

from __future__ import annotations

import re

import pandas as pd
import streamlit as st

from poisonlens.dashboard import common
from poisonlens.dashboard.common import PageRun, md
from poisonlens.dashboard.display import expression_ui
from poisonlens.dashboard.marking import mark_ui, review_stamp
from poisonlens.dashboard.selection import parse_indices
from poisonlens.export import column_descriptions, suspects_table, to_safe_csv
from poisonlens.store import DamagedFile, open_run

PAGE = {"title": "Suspects", "icon": ":material/flag:", "order": 40}

EXPLANATION = ("Every example the defense dropped up to the chosen epoch (and those flagged at that snapshot), most "
               "suspicious first, with what the defense knew about it when it dropped it. The download is the same "
               "file as `poisonlens export`.")
REVIEW_FILTERS = ["all", "not reviewed", "poison", "clean", "unsure"]

THUMB_ROWS = 1000  # rows shown with thumbnails; the download always holds every row


@st.cache_data(max_entries=32, show_spinner=False)
def suspects(path: str, epoch: int, include_flagged: bool, stamp: float, reviewed: float) -> pd.DataFrame:
    """poisonlens.export.suspects_table: the very table `poisonlens export` writes (rows dropped by a
    damaged snapshot keep empty facts; ``attrs["damaged"]`` names the file). ``reviewed``: the
    review file's stamp, so a saved verdict shows at once.

    Parameters
    ----------
    path : str
        The run's folder.
    epoch : int
        List the examples dropped at this snapshot or earlier.
    include_flagged : bool
        Also list the examples flagged, not dropped, at ``epoch``.
    stamp : float
        ``run_stamp(path)`` (a new snapshot changes the table).
    reviewed : float
        The review file's stamp, so a saved verdict shows at once.
    """
    return suspects_table(open_run(path), epoch, include_flagged=include_flagged, skip_damaged=True)


@st.cache_data(max_entries=32, show_spinner=False)
def suspects_csv(path: str, epoch: int, include_flagged: bool, stamp: float, reviewed: float) -> str:
    """The suspects table of ``epoch`` as spreadsheet-safe CSV text.

    Parameters
    ----------
    path : str
        The run exported.
    epoch : int
        List the examples dropped at this snapshot or earlier.
    include_flagged : bool
        Also list the examples flagged, not dropped, at ``epoch``.
    stamp : float
        Its run stamp, part of the cache key as for ``suspects``.
    reviewed : float
        The review file's stamp, so a saved verdict shows at once.
    """
    return to_safe_csv(suspects(path, epoch, include_flagged, stamp, reviewed))


@st.cache_data(max_entries=32, show_spinner=False)
def descriptions(path: str, epoch: int) -> dict[str, str]:
    """Descriptions of the suspects table's columns, by column name.

    Parameters
    ----------
    path : str
        The run's folder (its defense declares its columns).
    epoch : int
        The snapshot whose columns are described (its defense's).
    """
    return column_descriptions(open_run(path), epoch)


def filters_ui(table: pd.DataFrame, has_truth: bool) -> pd.DataFrame:
    """Show the status, class and ground-truth filters; return the filtered table.

    Parameters
    ----------
    table : DataFrame
        ``suspects``: the table before filtering.
    has_truth : bool
        Whether the run knows its poisons (then the ground-truth filter is offered).
    """
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
    if "review" in table:
        review = st.radio("Review", REVIEW_FILTERS, horizontal=True, key="su_review",
                          help="Your verdicts (kept in the run's review.parquet).")
        if review != "all":
            table = table[table["review"] == ("" if review == "not reviewed" else review)]
    return table


def marking_ui(path: str, view: pd.DataFrame, picked_rows: list[int], n_samples: int) -> None:
    """Mark the rows picked in the table, or the examples typed, poison / clean / unsure.

    Parameters
    ----------
    path : str
        The run folder the verdicts are saved in.
    view : DataFrame
        The rows shown in the table, in their order (a ticked row number is a row of it).
    picked_rows : list of int
        The rows ticked in the table.
    n_samples : int
        Examples in the run (a typed index must be below it).
    """
    st.markdown("**Review**: tick rows in the table (the first column) or type example indices, then save a verdict. "
                "It is kept in the run folder (`review.parquet`), shown on every page and exported in the CSV.")
    typed_text = st.text_input("Examples to mark", key="su_mark_typed", placeholder="e.g. 866, 777 or 40-45",
                               help="Indices, added to the rows ticked in the table.")
    try:
        typed = parse_indices(typed_text, n_samples) if typed_text.strip() else []
    except ValueError as err:
        st.error(str(err))
        typed = []
    ticked = [int(view["index"].iloc[r]) for r in picked_rows if 0 <= r < len(view)]
    chosen = sorted(set(ticked) | set(typed))
    if chosen:
        st.caption("To mark: " + ", ".join(map(str, chosen[:30])) + (" …" if len(chosen) > 30 else ""))
    mark_ui(path, chosen, key="su_mark")


def counts_line(table: pd.DataFrame, examples: pd.DataFrame, epoch: int, include_flagged: bool) -> str:
    """One Markdown line: how many examples were dropped up to ``epoch``, how many more flagged,
    and how many poisons are among the dropped.

    Parameters
    ----------
    table : DataFrame
        :func:`suspects` of ``epoch``.
    examples : DataFrame
        The run's per-example table (is_poison: the ground truth).
    epoch : int
        The snapshot epoch chosen.
    include_flagged : bool
        Whether the table lists the examples flagged, not dropped, at ``epoch``.
    """
    n_dropped = int((table["dropped_epoch"] >= 0).sum()) if len(table) else 0
    line = f"**{n_dropped:,}** of {len(examples):,} examples dropped up to epoch {epoch}"
    if include_flagged:
        line += f", **{len(table) - n_dropped:,}** more flagged at this snapshot"
    if examples["is_poison"].any() and len(table):
        found = int(table.loc[table["dropped_epoch"] >= 0, "is_poison"].sum())
        line += f"; **{found} of {int(examples['is_poison'].sum())} poisons** among the dropped"
    return line + "."


def download_ui(page: PageRun, table: pd.DataFrame, epoch: int, include_flagged: bool) -> None:
    """The CSV download: the same file as ``poisonlens export`` writes.

    Parameters
    ----------
    page : PageRun
        The run the page shows.
    table : DataFrame
        :func:`suspects` of ``epoch`` (for its row count).
    epoch : int
        The snapshot epoch chosen.
    include_flagged : bool
        Whether flagged, not dropped, examples are included.
    """
    path = page.path
    export_cmd = (f"poisonlens export --run {path} --epoch {epoch}" + ("" if include_flagged else " --dropped-only")
                  + " --out suspects.csv")
    csv = suspects_csv(path, epoch, include_flagged, page.stamp, review_stamp(path))
    st.download_button(f"Download CSV ({len(table):,} rows)", csv,
                       file_name=f"{re.sub(r'[^A-Za-z0-9._-]', '_', page.run.name)[:80]}-suspects-epoch{epoch}.csv",
                       mime="text/csv", key="su_download", icon=":material/download:",
                       help=f"The same file as {md(export_cmd)}. Text cells that a spreadsheet would read as a "
                            "formula are escaped.")


def table_view(path: str, shown: pd.DataFrame, has_truth: bool) -> pd.DataFrame:
    """The first ``THUMB_ROWS`` rows as the page shows them: thumbnails, "kept" or the drop epoch,
    your verdict next to what it is about, bookkeeping columns left out.

    Parameters
    ----------
    path : str
        The run's folder.
    shown : DataFrame
        The suspects table after the filters.
    has_truth : bool
        Whether the run knows its poisons (else is_poison is left out).
    """
    view = shown.head(THUMB_ROWS).copy()
    view.insert(1, "image", common.thumbnails(path, tuple(int(i) for i in view["index"])))
    view["dropped_epoch"] = common.dropped_text(view["dropped_epoch"])
    hidden = (["base_index", "review_who", "review_when"] + ([] if has_truth else ["is_poison"])
              + (["label"] if "class_name" in view else []))
    view = view.drop(columns=hidden, errors="ignore")
    if "review" in view:  # your verdict next to what it is about, not past the defense's columns
        first = [c for c in ("rank", "image", "index", "label", "class_name", "is_poison", "review", "review_note")
                 if c in view]
        view = view[first + [c for c in view.columns if c not in first]]
    return view


def table_ui(path: str, epoch: int, view: pd.DataFrame) -> list[int]:
    """The suspects table, column titles explained on hover; returns the rows ticked.

    Parameters
    ----------
    path : str
        The run's folder.
    epoch : int
        The snapshot epoch chosen (its columns' descriptions).
    view : DataFrame
        :func:`table_view`'s rows.
    """
    about = descriptions(path, epoch)
    config = {c: st.column_config.Column(c.replace("_", " "), help=text) for c, text in about.items() if text and c in view}
    config.update({"image": st.column_config.ImageColumn("image", width="small"),
                   "dropped_epoch": st.column_config.Column("dropped at epoch", help="the snapshot that dropped it"),
                   "class_name": "class", "is_poison": "poison",
                   "review": st.column_config.Column("review", help="your verdict: poison, clean or unsure"),
                   "review_note": st.column_config.Column("note", help="your note")})
    event = st.dataframe(view, hide_index=True, width="stretch", height=560, column_config=config,
                         key="su_table", on_select="rerun", selection_mode="multi-row")
    return list(getattr(getattr(event, "selection", None), "rows", []) or [])


def main() -> None:
    """Draw the Suspects page."""
    page = common.page_run_ui("Suspects", EXPLANATION)
    if page is None:
        return
    path = page.path
    try:
        examples = common.load_examples(path)
    except DamagedFile as err:
        common.damage_ui(err, "Without it there is no suspects table.", fatal=True)
        return
    c1, c2 = st.columns([3, 1])
    with c1:
        epoch = common.epoch_picker_ui(page.epochs, key="su_epoch", label="Up to snapshot epoch",
                                       help="Examples dropped at this snapshot or earlier, and those flagged at it.")
    include_flagged = c2.toggle("Include flagged, not dropped", value=True, key="su_flagged",
                                help="Flagged: the defense would drop it, but the snapshot is outside the drop window "
                                     "(drop-after / stop-after).")
    try:
        table = suspects(path, epoch, include_flagged, page.stamp, review_stamp(path))
    except DamagedFile as err:
        common.damage_ui(err, "Pick another snapshot epoch.", fatal=True)
        return
    for problem in table.attrs.get("damaged", []):
        st.warning(f"{md(problem)}. The examples it dropped are listed without its score and cluster facts.")
    st.markdown(counts_line(table, examples, epoch, include_flagged))
    dropped_any = bool(len(table)) and bool((table["dropped_epoch"] >= 0).any())
    reason = None if dropped_any else common.no_drops_reason(page.run)
    if reason:
        st.info(reason)
    download_ui(page, table, epoch, include_flagged)
    if table.empty:
        st.info("Nothing dropped or flagged up to this epoch.")
        return
    has_truth = bool(examples["is_poison"].any())
    shown = filters_ui(table, has_truth)
    shown = shown[expression_ui(shown, key="su_expr")]  # the table's drift is every row's (core.export)
    view = table_view(path, shown, has_truth)
    st.caption(f"{len(shown):,} rows match the filters" + (f"; the first {THUMB_ROWS:,} are shown" if len(shown) > THUMB_ROWS else "")
               + ". Ranked by the defense's score (higher = more suspicious) at the snapshot that dropped each example: "
               "an example dropped earlier is shown as the defense saw it then. drift: distance from its own class "
               "at that snapshot (see the Drift page). Hover a column title for its meaning.")
    marking_ui(path, view, table_ui(path, epoch, view), len(examples))


main()
