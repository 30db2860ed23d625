"""The Compare page's figures: mean ± std per defense over a grid of runs, and which poisons
each run caught.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from poisonlens.dashboard.figures.map_style import PLOT_FONT, text

# the two baselines in greys, every defense in one colour
DEFENSE_COLORS = {"clean": "#b0b0b0", "none": "#6f6f6f"}
DEFENSE_COLOR = "#1f77b4"
COMPARE_PANELS = (
    ("attack_success", "Attack success rate (target flipped)", "no target"),
    ("test_acc", "Clean test accuracy", "–"),
    ("recall", "Poisons dropped (recall)", "no poisons"),
    ("precision", "Precision of the drops", "nothing dropped"),
)
CHANCE_MARKER = dict(symbol="line-ew-open", size=30, color="#d62728", line=dict(width=3))

CHANCE = (  # (column, the mean it goes with, row, col, legend text)
    ("random_recall_mean", "recall", 2, 1, "a random drop of the same size (its recall)"),
    ("base_rate_mean", "precision", 2, 2, "share of poisons (a random drop's precision)"),
)


def defense_label_text(defense: str) -> str:
    """The defense's name as shown in plots ('clean' is marked as the control), HTML-escaped.

    Parameters
    ----------
    defense : str
        A defense's name as a run's tags give it (run-controlled text).
    """
    return "clean (control)" if defense == "clean" else text(defense)


def wrap_label(text: str, width: int = 14) -> str:
    """``text`` broken at spaces into lines of at most ``width`` characters (joined by ``<br>``);
    a word longer than ``width`` stays whole.

    Parameters
    ----------
    text : str
        The label (already escaped for plotly).
    width : int
        The most characters on one line.
    """
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "<br>".join(lines)


def percent_ticks(top: float, n: int = 5) -> tuple[list[float], list[str]]:
    """About ``n`` round tick values from 0 to ``top`` (a fraction) and their labels, with as
    many decimals as keep the labels distinct (plotly's ``.0%`` wrote 1%, 1%, 2%, 2%).

    Parameters
    ----------
    top : float
        The axis's top, a fraction (at least 1e-4 is used).
    n : int
        About how many ticks.
    """
    top = max(float(top), 1e-4)
    raw = top / (n - 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    values = [float(round(i * step, 10)) for i in range(int(np.floor(top / step + 1e-9)) + 1)]
    for decimals in range(0, 6):
        text = [f"{v:.{decimals}%}" for v in values]
        if len(set(text)) == len(text):
            break
    return values, text


def _panel_top(summary: pd.DataFrame, col: str) -> float:
    """The largest value the precision panel draws (mean + std, or the chance marker)."""
    mean = summary[f"{col}_mean"].astype(float)
    high = (mean + summary[f"{col}_std"].astype(float).fillna(0)).clip(upper=1)
    extra = summary["base_rate_mean"].astype(float) if "base_rate_mean" in summary else high
    top = np.nanmax([high.max(), extra.max(), 0.0])
    return float(min(1.0, top * 1.1)) if np.isfinite(top) and top > 0 else 1.0


def _bar_trace(x: list[str], mean: pd.Series, std: pd.Series, n_runs: np.ndarray, colors: list[str]) -> go.Bar:
    return go.Bar(
        x=x,
        y=mean,
        marker_color=colors,
        error_y=dict(  # ± std, cut at 0 and 1: every panel is a fraction
            type="data",
            array=np.minimum(std, 1 - mean),
            arrayminus=np.minimum(std, mean),
            visible=True,
            color="#222222",
            thickness=1.5,
        ),
        customdata=np.stack([std, n_runs], axis=1),
        hovertemplate="<b>%{x}</b><br>%{y:.1%} ± %{customdata[0]:.1%}"
        " over %{customdata[1]} runs<extra></extra>",
        showlegend=False,
    )


def _missing_notes(fig: go.Figure, x: list[str], mean: pd.Series, missing: str, panel: tuple[int, int]) -> None:
    """Write ``missing`` (e.g. "nothing dropped") on the axis where a defense has no mean."""
    for name in np.asarray(x, dtype=object)[mean.isna().to_numpy()]:
        fig.add_annotation(x=name, y=0, text=missing, textangle=-90, yanchor="bottom", showarrow=False,
                           font=dict(color="#777777", size=11), row=panel[0], col=panel[1])


def _success_counts(x: list[str], mean: pd.Series, n_runs: np.ndarray) -> go.Scatter:
    """ "k/n" over every attack-success bar: a zero-height bar is invisible."""
    flipped = (mean * n_runs).round()
    return go.Scatter(
        x=x,
        y=np.full(len(x), 1.12),
        mode="text",
        text=["" if np.isnan(k) else f"{k:.0f}/{n}" for k, n in zip(flipped, n_runs, strict=True)],
        textfont=dict(color="#333333", size=11),
        hovertemplate="<b>%{x}</b>: the target flipped in %{text} runs<extra></extra>",
        showlegend=False,
    )


def _chance_markers(fig: go.Figure, summary: pd.DataFrame, x: list[str]) -> None:
    """What a random drop of the same size gets, marked on the recall and precision panels."""
    for col, of, row, c, name in CHANCE:
        y = summary[col].where(summary[f"{of}_mean"].notna()) if col in summary else None
        if y is not None and y.notna().any():
            fig.add_trace(go.Scatter(x=x, y=y, mode="markers", marker=CHANCE_MARKER, name=name,
                                     hovertemplate="<b>%{x}</b><br>" + name + ": %{y:.1%}<extra></extra>"),
                          row=row, col=c)


def _bar_axes(fig: go.Figure, summary: pd.DataFrame) -> None:
    fig.update_yaxes(rangemode="tozero")
    fig.update_yaxes(range=[0, 1.19], row=1, col=1)
    for row, c in ((1, 2), (2, 1)):
        fig.update_yaxes(range=[0, 1.08], row=row, col=c)
    for i, (col, _, _) in enumerate(COMPARE_PANELS):
        row, c = divmod(i, 2)
        top = 1.0 if row == 0 or c == 0 else _panel_top(summary, col)
        values, labels = percent_ticks(top)
        fig.update_yaxes(tickvals=values, ticktext=labels, row=row + 1, col=c + 1)
        if top < 1.0:  # the precision panel: as high as its bars, with its own ticks
            fig.update_yaxes(range=[0, top * 1.05], row=row + 1, col=c + 1)
    fig.update_xaxes(type="category", tickangle=0)


def defense_bars_figure(summary: pd.DataFrame, *, height: int = 640) -> go.Figure:
    """Mean ± std per defense of attack success, clean accuracy, recall and precision (error bars
    cut at 0 and 1; the hover gives the full std).

    A missing mean is written on the axis (e.g. "nothing dropped") instead of an empty slot.

    Parameters
    ----------
    summary : DataFrame
        :func:`poisonlens.compare.per_defense_summary`: a row per defense in drawing order with
        defense, n_runs, ``<x>_mean`` and ``<x>_std`` for each panel, random_recall_mean and
        base_rate_mean.
    height : int
        The figure's height in pixels (taller by 14 per extra line of the wrapped defense names).
    """
    fig = make_subplots(rows=2, cols=2, subplot_titles=[title for _, title, _ in COMPARE_PANELS],
                        vertical_spacing=0.2, horizontal_spacing=0.08)
    # wrapped, not rotated: a rotated label reached into the subplot title below it
    x = [wrap_label(defense_label_text(d)) for d in summary["defense"]]
    colors = [DEFENSE_COLORS.get(d, DEFENSE_COLOR) for d in summary["defense"]]
    n_runs = summary["n_runs"].to_numpy()
    for i, (col, _, missing) in enumerate(COMPARE_PANELS):
        row, c = divmod(i, 2)
        mean = summary[f"{col}_mean"].astype(float)
        std = summary[f"{col}_std"].astype(float).fillna(0.0)
        fig.add_trace(_bar_trace(x, mean, std, n_runs, colors), row=row + 1, col=c + 1)
        _missing_notes(fig, x, mean, missing, (row + 1, c + 1))
        if col == "attack_success":
            fig.add_trace(_success_counts(x, mean, n_runs), row=1, col=1)
    _chance_markers(fig, summary, x)
    _bar_axes(fig, summary)
    n_lines = max((t.count("<br>") + 1 for t in x), default=1)
    fig.update_layout(
        height=height + 14 * (n_lines - 1),
        font=PLOT_FONT,
        margin=dict(l=10, r=10, t=70, b=10),
        bargap=0.35,
        legend=dict(orientation="h", yanchor="top", y=-0.16, xanchor="left", x=0),
        plot_bgcolor="#fafafa",
    )
    return fig


def overlap_figure(overlap: pd.DataFrame, *, max_tick_labels: int = 80) -> go.Figure:
    """Which poisons each run caught: a column per poison, a row per run (poisonlens.compare.poison_overlap,
    transposed); green = dropped by the run's last snapshot, grey = kept (missed).

    Parameters
    ----------
    overlap : DataFrame
        A row per poison (its training index) and a bool column per run: caught (dropped) or not.
    max_tick_labels : int
        Most poisons whose indices are written under the columns; past that the ticks are hidden.
    """
    z = overlap.T.to_numpy(dtype=int)
    x = [str(i) for i in overlap.index]
    counts = overlap.sum(axis=0).astype(int)
    y = [f"{name}  ({n} of {len(overlap)})" for name, n in counts.items()]
    caught, missed = "#2ca02c", "#e6e6e6"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=x,
            y=y,
            zmin=0,
            zmax=1,
            colorscale=[[0, missed], [0.5, missed], [0.5, caught], [1, caught]],
            showscale=False,
            xgap=1,
            ygap=2,
            customdata=np.where(z == 1, "caught (dropped)", "missed (kept)"),
            hovertemplate="poison %{x}<br>%{y}<br><b>%{customdata}</b><extra></extra>",
        )
    )
    for name, color in (("caught: dropped by this run", caught), ("missed: kept", missed)):
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                name=name,
                marker=dict(symbol="square", size=14, color=color, line_color="#999999"),
            )
        )
    fig.update_xaxes(
        type="category",
        title_text="poisons (training index), those caught by the most runs on the left",
        showticklabels=len(x) <= max_tick_labels,
        tickangle=-90,
        showgrid=False,
    )
    fig.update_yaxes(type="category", autorange="reversed", showgrid=False)
    fig.update_layout(
        height=150 + 30 * len(y),
        font=PLOT_FONT,
        margin=dict(l=10, r=10, t=10, b=10),
        legend=dict(orientation="h", yanchor="bottom", y=1.0, xanchor="left", x=0),
        plot_bgcolor="#ffffff",
    )
    return fig
