"""Drift: how far poisons (and examples you pick) move from their class, and towards the target."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from poisonlens.dashboard import plots
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
    load_snapshot_epochs,
    load_targets,
    md,
    page_header,
    run_picker_ui,
    run_stamp,
    snapshot_epochs_ui,
    thumbnails,
)
from poisonlens.dashboard.display import readable
from poisonlens.dashboard.selection import parse_indices
from poisonlens.drift import MIN_SCALE, group_quantiles
from poisonlens.export import defense_columns
from poisonlens.store import DamagedFile

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
    """Quantiles per epoch of drift and target similarity, poisons against clean examples."""
    is_poison = load_examples(path)["is_poison"].to_numpy(bool)
    group = np.where(is_poison, "poison", "clean")
    frames = []
    for epoch in load_snapshot_epochs(path, stamp):
        d = drift_at(path, epoch, stamp).assign(group=group)
        d["drift"] = d["drift"].clip(lower=SHOW_FLOOR)
        for value in ("drift", "target_cos"):
            if d[value].notna().any():
                frames.append(group_quantiles(d, value=value, by=["epoch", "group"]).assign(value=value))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@st.cache_data(max_entries=32, show_spinner=False)
def drift_tracks(path: str, stamp: float, indices: tuple[int, ...]) -> pd.DataFrame:
    """The drift of the examples ``indices`` at every readable snapshot.

    Returns
    -------
    DataFrame
        One row per example and snapshot, drift clipped below at ``SHOW_FLOOR``
        so that it can be drawn on a log scale.
    """
    idx = np.asarray(indices, dtype=np.int64)
    frames = [drift_at(path, e, stamp).iloc[idx] for e in load_snapshot_epochs(path, stamp)]
    out = pd.concat(frames, ignore_index=True)
    out["drift"] = out["drift"].clip(lower=SHOW_FLOOR)
    return out


# --- page ----------------------------------------------------------------------------------


def followed_ui(n_samples: int, poisons: np.ndarray) -> tuple[list[int], list[int]]:
    """Which examples get a line: poisons (when known), the selection, typed indices."""
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
            c2.error(md(err))
    chosen_poisons = [int(i) for i in poisons[:MAX_TRACKS]] if use_poisons else []
    selected = [i for i in selected if i not in set(chosen_poisons)][:MAX_TRACKS]
    if use_poisons and len(poisons) > MAX_TRACKS:
        st.caption(f"The first {MAX_TRACKS:,} poisons are followed; the boxes below use all of them.")
    return chosen_poisons, selected


def main() -> None:
    """Draw the Drift page."""
    page_header("Drift", "Does an example move away from its own class, or towards the target, as training goes on? "
                "Poisons are followed one by one and compared with the spread of clean examples.")
    glossary_ui()
    run = run_picker_ui()
    if run is None:
        return
    path = str(run.path)
    stamp = run_stamp(path)
    epochs = snapshot_epochs_ui(run)
    if not epochs:
        return
    with st.expander("How the two scores are defined", expanded=True):
        st.markdown(DEFINITION)
    try:
        examples = load_examples(path)
    except DamagedFile as err:
        damage_ui(err, "Without it, poisons and classes are unknown; nothing can be drawn.", fatal=True)
        return
    poisons = examples.loc[examples["is_poison"], "index"].to_numpy()
    try:
        has_target = not load_targets(path, stamp).empty
    except DamagedFile as err:
        damage_ui(err, "The similarity to the target is left out.")
        has_target = False
    chosen_poisons, selected = followed_ui(len(examples), poisons)
    summary = drift_summary(path, stamp)
    follow = chosen_poisons + selected
    tracks = drift_tracks(path, stamp, tuple(follow)) if follow else pd.DataFrame(columns=["epoch", "index", "drift", "target_cos"])
    tracks["group"] = np.where(tracks["index"].isin(chosen_poisons), "poison", "selected")
    if not follow:
        st.info("Nothing to follow yet: this run has no known poisons. Select examples on the **Gradient space** page "
                "or type indices above.")

    def band(value: str) -> pd.DataFrame | None:
        if summary.empty:
            return None
        rows = summary[(summary["value"] == value) & (summary["group"] == "clean")]
        return rows[["epoch", "q25", "q50", "q75"]]

    left, right = st.columns(2)
    drift_fig = plots.tracks_figure(tracks, band("drift"), value="drift", log_y=True, y_title="drift (log scale)",
                                    title="Distance from its own class (drift)", max_lines=TRACK_LINES)
    left.plotly_chart(drift_fig, width="stretch", key="dr_tracks", config=PLOTLY_CONFIG)
    for note in drift_fig.layout.meta["notes"]:
        left.caption(f"Lines: the {note}.")
    if has_target:
        cos_fig = plots.tracks_figure(tracks, band("target_cos"), value="target_cos", y_title="cosine similarity",
                                      title="Similarity to the target's gradient", max_lines=TRACK_LINES)
        right.plotly_chart(cos_fig, width="stretch", key="dr_cos", config=PLOTLY_CONFIG)
        for note in cos_fig.layout.meta["notes"]:
            right.caption(f"Lines: the {note}.")
    else:
        right.info("A clean run has no target, so there is no similarity to it.")

    if len(poisons) and not summary.empty:
        st.markdown("##### Poisons against clean examples, per snapshot")
        st.caption("Boxes: the middle half of each group; whiskers: 5% to 95%. If the red boxes sit inside the grey ones, "
                   "poisons are no farther from their class (no more *isolated*) than clean examples, and a defense "
                   "that drops isolated examples cannot single them out.")
        left, right = st.columns(2)
        left.plotly_chart(plots.distribution_figure(summary[summary["value"] == "drift"], log_y=True,
                                                    title="Drift: poisons vs clean", y_title="drift (log scale)"),
                          width="stretch", key="dr_box_drift", config=PLOTLY_CONFIG)
        if has_target:
            right.plotly_chart(plots.distribution_figure(summary[summary["value"] == "target_cos"],
                                                         title="Similarity to the target: poisons vs clean",
                                                         y_title="cosine similarity"), width="stretch", key="dr_box_cos", config=PLOTLY_CONFIG)

    if follow:
        st.markdown("##### The followed examples at one snapshot")
        epoch = epoch_picker_ui(epochs, key="dr_epoch", default=default_epoch(run, epochs))
        at = drift_at(path, epoch, stamp).iloc[follow]
        own = defense_columns(run, epoch)  # the defense's declared columns, whatever the defense
        snap = load_snapshot(path, epoch, ("label", "prediction", "dropped_epoch", "score", *own)).iloc[follow]
        names = np.asarray(class_name_list(run), dtype=object)
        table = pd.DataFrame({
            "image": thumbnails(path, tuple(follow)),
            "index": follow,
            "group": np.where(np.isin(follow, chosen_poisons), "poison", "selected"),
            "label": names[snap["label"].to_numpy()],
            "predicted": names[snap["prediction"].to_numpy()],
            "drift": at["drift"].round(3).to_numpy(),
            "similarity to target": at["target_cos"].round(3).to_numpy(),
            "dropped at epoch": dropped_text(snap["dropped_epoch"]).to_numpy(),
            **{c: snap[c].to_numpy() for c in ("score", *own) if c in snap},
        }).sort_values("drift", ascending=False)
        config = {c: st.column_config.Column(c.replace("_", " "), help=text or None) for c, text in own.items()}
        st.dataframe(readable(table), hide_index=True, width="stretch", height=min(420, 38 + 35 * len(table)),
                     column_config={"image": st.column_config.ImageColumn("image", width="small"), **config})


main()
