"""Drift: how far poisons (and examples you pick) move from their class, and towards the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from poisonlens.dashboard import common
from poisonlens.dashboard.common import PageRun
from poisonlens.dashboard.display import readable
from poisonlens.dashboard.figures.drift import Panel, distribution_figure, tracks_figure
from poisonlens.dashboard.selection import parse_indices
from poisonlens.drift import MIN_SCALE, group_quantiles
from poisonlens.export import defense_columns
from poisonlens.store import DamagedFile

PAGE = {"title": "Drift", "icon": ":material/timeline:", "order": 30}

SHOW_FLOOR = 0.01  # drift is drawn on a log axis; 0 (a medoid itself) is drawn here
MAX_TRACKS = 2_000  # examples per group followed (their lines: the 20 most drifting, the rest a band)
TRACK_LINES = 20  # lines drawn per group; 205 lines were unreadable

DEFINITION = f"""
**drift** = distance from the example's gradient to the nearest *medoid of its own class* (EPIC's chosen
representatives; for other defenses, the class's median gradient), divided by the median of that distance over the
class's examples still in training. **1** = as far from its class as a typical member, **10** = ten times as far.
A medoid is measured to the nearest *other* medoid. (The class median is floored at {MIN_SCALE:g}; an example
whose gradient equals a medoid's has drift 0, drawn at {SHOW_FLOOR} on the log axis.)

**similarity to the target** = cosine similarity between the example's gradient and the target's gradient for the
attacker's class (softmax(target) − one-hot(adversarial class)). Gradient-matching poisons are made so that
training on them pushes the model as training the target into the attacker's class would: in this view they tend
towards **+1**. Clean examples mostly sit near 0.
"""


# --- cached computations (core does the maths) ---------------------------------------------


@st.cache_data(max_entries=16, show_spinner=False)
def drift_summary(path: str, stamp: float) -> pd.DataFrame:
    """Quantiles per epoch of drift and target similarity, poisons against clean examples.

    Parameters
    ----------
    path : str
        The run's folder; every readable snapshot of it is measured (``drift_at``).
    stamp : float
        ``run_stamp``: a new snapshot changes the summary.
    """
    is_poison = common.load_examples(path)["is_poison"].to_numpy(bool)
    group = np.where(is_poison, "poison", "clean")
    frames = []
    for epoch in common.load_snapshot_epochs(path, stamp):
        d = common.drift_at(path, epoch, stamp).assign(group=group)
        d["drift"] = d["drift"].clip(lower=SHOW_FLOOR)
        for value in ("drift", "target_cos"):
            if d[value].notna().any():
                frames.append(group_quantiles(d, value=value, by=["epoch", "group"]).assign(value=value))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@st.cache_data(max_entries=32, show_spinner=False)
def drift_tracks(path: str, stamp: float, indices: tuple[int, ...]) -> pd.DataFrame:
    """The drift of the examples ``indices`` at every readable snapshot.

    Parameters
    ----------
    path : str
        The run followed.
    stamp : float
        Its stamp; a new snapshot adds a point to every line.
    indices : tuple of int
        The followed examples (a tuple: it is the cache key).

    Returns
    -------
    DataFrame
        One row per example and snapshot, drift clipped below at ``SHOW_FLOOR``
        so that it can be drawn on a log scale.
    """
    idx = np.asarray(indices, dtype=np.int64)
    frames = [common.drift_at(path, e, stamp).iloc[idx] for e in common.load_snapshot_epochs(path, stamp)]
    out = pd.concat(frames, ignore_index=True)
    out["drift"] = out["drift"].clip(lower=SHOW_FLOOR)
    return out


# --- page ----------------------------------------------------------------------------------


def followed_ui(n_samples: int, poisons: np.ndarray) -> tuple[list[int], list[int]]:
    """Which examples get a line: poisons (when known), the selection, typed indices.

    Parameters
    ----------
    n_samples : int
        Examples in the run: a typed index must be below it.
    poisons : int ndarray of shape (n_poisons,)
        The poisons' indices (ground truth; empty for a clean run).
    """
    c1, c2 = st.columns([1, 2])
    use_poisons = c1.checkbox(f"Poisons ({len(poisons)})", value=len(poisons) > 0, disabled=not len(poisons),
                              key="dr_poisons", help="Ground truth; available when the run trained on a poison set.")
    typed = c2.text_input("Also follow these examples (indices)", key="dr_typed", placeholder="e.g. 12, 40-45",
                          help="Examples selected on the Gradient space page are followed too.")
    selected = list(st.session_state.get("_selected", []))
    if typed:
        try:
            selected = sorted(set(selected) | set(parse_indices(typed, n_samples)))
        except ValueError as err:
            c2.error(common.md(err))
    chosen_poisons = [int(i) for i in poisons[:MAX_TRACKS]] if use_poisons else []
    selected = [i for i in selected if i not in set(chosen_poisons)][:MAX_TRACKS]
    if use_poisons and len(poisons) > MAX_TRACKS:
        st.caption(f"The first {MAX_TRACKS:,} poisons are followed; the boxes below use all of them.")
    return chosen_poisons, selected


def target_known(page: PageRun) -> bool:
    """Whether the run recorded a target (a damaged targets file is named, and counts as none).

    Parameters
    ----------
    page : PageRun
        The run the page shows.
    """
    try:
        return not common.load_targets(page.path, page.stamp).empty
    except DamagedFile as err:
        common.damage_ui(err, "The similarity to the target is left out.")
        return False


def clean_band(summary: pd.DataFrame, value: str) -> pd.DataFrame | None:
    """The clean examples' quartiles of ``value`` per epoch (None when there is no summary).

    Parameters
    ----------
    summary : DataFrame
        :func:`drift_summary`'s table (empty when no snapshot could be summarised).
    value : str
        'drift' or 'target_cos'.
    """
    if summary.empty:
        return None
    rows = summary[(summary["value"] == value) & (summary["group"] == "clean")]
    return rows[["epoch", "q25", "q50", "q75"]]


def tracks_ui(tracks: pd.DataFrame, summary: pd.DataFrame, has_target: bool) -> None:
    """The followed examples' lines: drift on the left, similarity to the target on the right.

    Parameters
    ----------
    tracks : DataFrame
        :func:`drift_tracks` of the followed examples, with their group ('poison' / 'selected').
    summary : DataFrame
        :func:`drift_summary` (the clean examples' band).
    has_target : bool
        Whether the run has a target to be similar to.
    """
    left, right = st.columns(2)
    drift_fig = tracks_figure(tracks, clean_band(summary, "drift"), value="drift", max_lines=TRACK_LINES,
                              panel=Panel("Distance from its own class (drift)", "drift (log scale)", log_y=True))
    left.plotly_chart(drift_fig, width="stretch", key="dr_tracks", config=common.PLOTLY_CONFIG)
    for note in drift_fig.layout.meta["notes"]:
        left.caption(f"Lines: the {note}.")
    if not has_target:
        right.info("A clean run has no target, so there is no similarity to it.")
        return
    cos_fig = tracks_figure(tracks, clean_band(summary, "target_cos"), value="target_cos", max_lines=TRACK_LINES,
                            panel=Panel("Similarity to the target's gradient", "cosine similarity"))
    right.plotly_chart(cos_fig, width="stretch", key="dr_cos", config=common.PLOTLY_CONFIG)
    for note in cos_fig.layout.meta["notes"]:
        right.caption(f"Lines: the {note}.")


def distributions_ui(summary: pd.DataFrame, has_target: bool) -> None:
    """Box plots per snapshot of poisons against clean examples.

    Parameters
    ----------
    summary : DataFrame
        :func:`drift_summary`, not empty.
    has_target : bool
        Whether the run has a target (else only drift is drawn).
    """
    st.markdown("##### Poisons against clean examples, per snapshot")
    st.caption("Boxes: the middle half of each group; whiskers: 5% to 95%. If the red boxes sit inside the grey ones, "
               "poisons are no farther from their class (no more *isolated*) than clean examples, and a defense "
               "that drops isolated examples cannot single them out.")
    left, right = st.columns(2)
    left.plotly_chart(distribution_figure(summary[summary["value"] == "drift"],
                                          panel=Panel("Drift: poisons vs clean", "drift (log scale)", log_y=True)),
                      width="stretch", key="dr_box_drift", config=common.PLOTLY_CONFIG)
    if has_target:
        right.plotly_chart(distribution_figure(summary[summary["value"] == "target_cos"],
                                               panel=Panel("Similarity to the target: poisons vs clean",
                                                           "cosine similarity")),
                           width="stretch", key="dr_box_cos", config=common.PLOTLY_CONFIG)


def followed_table_ui(page: PageRun, follow: list[int], poisons: list[int]) -> None:
    """The followed examples at one snapshot, as a table with thumbnails.

    Parameters
    ----------
    page : PageRun
        The run the page shows.
    follow : list of int
        The followed examples' indices (poisons first).
    poisons : list of int
        Those of them followed as poisons.
    """
    st.markdown("##### The followed examples at one snapshot")
    run, path = page.run, page.path
    epoch = common.epoch_picker_ui(page.epochs, key="dr_epoch", default=common.default_epoch(run, page.epochs))
    at = common.drift_at(path, epoch, page.stamp).iloc[follow]
    own = defense_columns(run, epoch)  # the defense's declared columns, whatever the defense
    snap = common.load_snapshot(path, epoch, ("label", "prediction", "dropped_epoch", "score", *own)).iloc[follow]
    names = np.asarray(common.class_name_list(run), dtype=object)
    table = pd.DataFrame({
        "image": common.thumbnails(path, tuple(follow)),
        "index": follow,
        "group": np.where(np.isin(follow, poisons), "poison", "selected"),
        "label": names[snap["label"].to_numpy()],
        "predicted": names[snap["prediction"].to_numpy()],
        "drift": at["drift"].round(3).to_numpy(),
        "similarity to target": at["target_cos"].round(3).to_numpy(),
        "dropped at epoch": common.dropped_text(snap["dropped_epoch"]).to_numpy(),
        **{c: snap[c].to_numpy() for c in ("score", *own) if c in snap},
    }).sort_values("drift", ascending=False)
    config = {c: st.column_config.Column(c.replace("_", " "), help=text or None) for c, text in own.items()}
    st.dataframe(readable(table), hide_index=True, width="stretch", height=min(420, 38 + 35 * len(table)),
                 column_config={"image": st.column_config.ImageColumn("image", width="small"), **config})


def main() -> None:
    """Draw the Drift page."""
    page = common.page_run_ui("Drift", "Does an example move away from its own class, or towards the target, as "
                              "training goes on? Poisons are followed one by one and compared with the spread of "
                              "clean examples.")
    if page is None:
        return
    with st.expander("How the two scores are defined", expanded=True):
        st.markdown(DEFINITION)
    try:
        examples = common.load_examples(page.path)
    except DamagedFile as err:
        common.damage_ui(err, "Without it, poisons and classes are unknown; nothing can be drawn.", fatal=True)
        return
    poisons = examples.loc[examples["is_poison"], "index"].to_numpy()
    has_target = target_known(page)
    chosen_poisons, selected = followed_ui(len(examples), poisons)
    summary = drift_summary(page.path, page.stamp)
    follow = chosen_poisons + selected
    tracks = (drift_tracks(page.path, page.stamp, tuple(follow)) if follow
              else pd.DataFrame(columns=["epoch", "index", "drift", "target_cos"]))
    tracks["group"] = np.where(tracks["index"].isin(chosen_poisons), "poison", "selected")
    if not follow:
        st.info("Nothing to follow yet: this run has no known poisons. Select examples on the **Gradient space** page "
                "or type indices above.")
    tracks_ui(tracks, summary, has_target)
    if len(poisons) and not summary.empty:
        distributions_ui(summary, has_target)
    if follow:
        followed_table_ui(page, follow, chosen_poisons)


main()
