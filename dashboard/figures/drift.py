"""The Drift page's figures: followed examples' lines across epochs, and poisons against clean
examples per snapshot (box plots from precomputed quantiles).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from poisonlens.dashboard.figures.overview import epoch_layout

GROUP_NAMES = {"poison": "poisons", "selected": "selected examples"}
GROUP_COLORS = {"poison": "#d62728", "selected": "#1f77b4"}
GROUP_FILLS = {"poison": "rgba(214,39,40,0.15)", "selected": "rgba(31,119,180,0.15)"}


@dataclass(frozen=True)
class Panel:
    """A drift figure's title and y axis.

    Attributes
    ----------
    title : the figure's title
    y_title : the y axis's title
    log_y : draw the y axis on a log scale (drift)
    """

    title: str
    y_title: str
    log_y: bool = False


def _finish(fig: go.Figure, panel: Panel) -> go.Figure:
    if panel.log_y:
        fig.update_yaxes(type="log", dtick=1)
    fig.update_yaxes(title_text=panel.y_title)
    fig = epoch_layout(fig, panel.title, height=360)
    fig.update_layout(hovermode="closest")
    return fig


def _band_traces(band: pd.DataFrame) -> list[go.Scatter]:
    """The clean examples' middle half (a grey band) and median."""
    return [
        go.Scatter(x=band["epoch"], y=band["q75"], mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip"),
        go.Scatter(x=band["epoch"], y=band["q25"], mode="lines", line=dict(width=0), fill="tonexty",
                   fillcolor="rgba(127,127,127,0.25)", name="clean examples: middle half", hoverinfo="skip"),
        go.Scatter(x=band["epoch"], y=band["q50"], mode="lines", line=dict(color="#555555", dash="dot"),
                   name="clean examples: median"),
    ]


def _group_band(rows: pd.DataFrame, group: str, value: str) -> list[go.Scatter]:
    """A large group's middle half, drawn as a band behind its lines (205 lines were unreadable)."""
    name, n = GROUP_NAMES.get(group, str(group)), rows["index"].nunique()
    q = rows.groupby("epoch")[value].quantile([0.25, 0.75]).unstack()
    return [
        go.Scatter(x=q.index, y=q[0.75], mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip",
                   legendgroup=f"{group}-band"),
        go.Scatter(x=q.index, y=q[0.25], mode="lines", line=dict(width=0), fill="tonexty",
                   fillcolor=GROUP_FILLS.get(group, "rgba(0,0,0,0.1)"), legendgroup=f"{group}-band",
                   name=f"{name}: middle half of all {n:,}", hoverinfo="skip"),
    ]


def _group_lines(rows: pd.DataFrame, group: str, value: str, drawn: list[int]) -> list[go.Scatter]:
    name = GROUP_NAMES.get(group, str(group))
    traces = []
    for i, index in enumerate(drawn):
        line = rows[rows["index"] == index]
        traces.append(go.Scatter(
            x=line["epoch"], y=line[value], mode="lines+markers",
            line=dict(color=GROUP_COLORS.get(group, "#333"), width=1.3), marker=dict(size=5), opacity=0.8,
            name=name if i == 0 else f"example {index}", legendgroup=group, showlegend=i == 0,
            hovertemplate=f"{name}: example {index}<br>epoch %{{x}}: %{{y:.3g}}<extra></extra>"))
    return traces


def tracks_figure(tracks: pd.DataFrame, band: pd.DataFrame | None, *, value: str, panel: Panel,
                  max_lines: int = 20) -> go.Figure:
    """Per-example lines of ``value`` across epochs, over the clean examples' middle half.

    Parameters
    ----------
    tracks : DataFrame
        A row per followed example and epoch: epoch, index, group ('poison' / 'selected'), ``value``.
    band : DataFrame or None
        epoch, q25, q50, q75 of clean examples (None or empty: no band).
    value : str
        The column drawn ('drift' or 'target_cos').
    panel : Panel
        The title, the y axis's title and whether it is logarithmic.
    max_lines : int
        Lines drawn per group at most: the examples with the highest peak ``value``; the rest of
        a larger group is drawn as its middle half (a band), said in ``fig.layout.meta['notes']``.
    """
    fig = go.Figure()
    if band is not None and len(band):
        fig.add_traces(_band_traces(band))
    notes = []
    for group, rows in tracks.groupby("group", sort=True):
        n = rows["index"].nunique()
        if n > max_lines:
            fig.add_traces(_group_band(rows, group, value))
            highest = "most drifting" if value == "drift" else "highest"
            name = GROUP_NAMES.get(group, str(group))
            notes.append(f"{max_lines} {highest} of the {n:,} {name} drawn as lines; the band is the middle half "
                         f"of all {n:,}")
        fig.add_traces(_group_lines(rows, group, value, most_extreme(rows, value, max_lines)))
    fig = _finish(fig, panel)
    fig.update_layout(meta={"notes": notes})
    return fig


def most_extreme(rows: pd.DataFrame, value: str, n: int) -> list[int]:
    """The ``n`` example indices of ``rows`` with the highest peak ``value`` over the epochs,
    highest first (ties by index).

    Parameters
    ----------
    rows : DataFrame
        epoch, index and ``value``, a row per example and epoch (NaN peaks rank last).
    value : str
        The column ranked by.
    n : int
        How many indices at most.
    """
    peak = rows.groupby("index")[value].max().fillna(-np.inf)
    order = sorted(peak.items(), key=lambda kv: (-kv[1], kv[0]))
    return [int(i) for i, _ in order[:n]]


def distribution_figure(quantiles: pd.DataFrame, *, panel: Panel) -> go.Figure:
    """Box plots per epoch, poison against clean, from precomputed quantiles (whiskers: 5%-95%).

    Parameters
    ----------
    quantiles : DataFrame
        A row per epoch and group ('clean' / 'poison'): epoch, group, q05, q25, q50, q75, q95, n
        (:func:`poisonlens.drift.group_quantiles`).
    panel : Panel
        The title, the y axis's title and whether it is logarithmic.
    """
    fig = go.Figure()
    colors = {"clean": "#7f7f7f", "poison": "#d62728"}
    for group, rows in quantiles.groupby("group", sort=False):
        fig.add_trace(go.Box(
            x=rows["epoch"].astype(str), q1=rows["q25"], median=rows["q50"], q3=rows["q75"],
            lowerfence=rows["q05"], upperfence=rows["q95"], name=f"{group} (n={int(rows['n'].iloc[-1]):,})",
            marker_color=colors.get(str(group), "#1f77b4"), offsetgroup=str(group), boxpoints=False))
    fig.update_layout(boxmode="group")
    fig.update_xaxes(type="category")
    return _finish(fig, panel)
