"""The Overview page's figures: a run's metrics epoch by epoch (accuracy and the attack, drops,
detection against chance, AUROC, where the time goes). Each takes metrics.parquet's table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from poisonlens.dashboard.figures.map_style import PLOT_FONT, text


def epoch_layout(fig: go.Figure, title: str, height: int = 330) -> go.Figure:
    """``fig`` laid out as every per-epoch figure is: titled, the legend below, epochs on x.

    Parameters
    ----------
    fig : go.Figure
        The figure, changed in place and returned.
    title : str
        Its title ('' for none).
    height : int
        Its height in pixels.
    """
    fig.update_layout(title=dict(text=title, font=dict(size=15)), height=height, font=PLOT_FONT,
                      margin=dict(l=10, r=10, t=50, b=10), legend=dict(orientation="h", y=-0.25),
                      hovermode="x unified")
    fig.update_xaxes(title_text="epoch")
    return fig


def accuracy_figure(metrics: pd.DataFrame, *, adv_name: str | None = None) -> go.Figure:
    """Clean test accuracy and, with an attack, the target's probability of the attacker's class.

    Parameters
    ----------
    metrics : DataFrame
        metrics.parquet's table, a row per finished epoch (epoch, test_acc, target_prob_adv, attack_success).
    adv_name : str or None
        The attacker's class name (run-controlled, escaped here); None for a clean run.
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["test_acc"], name="clean test accuracy",
                             mode="lines+markers", line=dict(color="#1f77b4")))
    if adv_name is not None and metrics["target_prob_adv"].notna().any():
        fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["target_prob_adv"], mode="lines+markers",
                                 name=f"target's probability of class {text(adv_name)}", line=dict(color="#d62728", dash="dash")))
        hit = metrics[metrics["attack_success"] == 1]
        fig.add_trace(go.Scatter(x=hit["epoch"], y=np.ones(len(hit)) * 1.04, mode="markers", name="attack succeeds (target → " + text(adv_name) + ")",
                                 marker=dict(symbol="x", color="#d62728", size=9)))
    fig.update_yaxes(range=[0, 1.08], title_text="fraction", tickformat=".0%")
    return epoch_layout(fig, "Accuracy and the attack")


def drops_figure(metrics: pd.DataFrame, *, n_samples: int) -> go.Figure:
    """Examples dropped at each snapshot (bars) and in total (line), as counts.

    Parameters
    ----------
    metrics : DataFrame
        metrics.parquet's table, a row per finished epoch (epoch, n_new_drops, n_dropped).
    n_samples : int
        Training examples in the run (the y axis says "of n_samples").
    """
    snaps = metrics[metrics["n_new_drops"] > 0]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=snaps["epoch"], y=snaps["n_new_drops"], name="dropped at this snapshot", marker_color="#ff7f0e"))
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=metrics["n_dropped"], name="dropped in total",
                             mode="lines+markers", line=dict(color="#555555")))
    fig.update_yaxes(title_text=f"examples (of {n_samples:,})", rangemode="tozero")
    return epoch_layout(fig, "Examples dropped by the defense")


def detection_figure(metrics: pd.DataFrame, *, n_samples: int, n_poisons: int) -> go.Figure:
    """Left: share of poisons dropped vs share of all rows dropped (what a random drop of the same
    size catches on average). Right: precision of the drops vs the poison base rate.

    Parameters
    ----------
    metrics : DataFrame
        metrics.parquet's table, a row per finished epoch (epoch, n_dropped, n_poison_dropped).
    n_samples : int
        Training examples in the run.
    n_poisons : int
        Poisons among them (ground truth).
    """
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Share of poisons dropped (recall)", "Poisons among the dropped (precision)"),
                        horizontal_spacing=0.12)
    recall = metrics["n_poison_dropped"] / max(n_poisons, 1)
    share = metrics["n_dropped"] / max(n_samples, 1)
    precision = (metrics["n_poison_dropped"] / metrics["n_dropped"].where(metrics["n_dropped"] > 0)).astype(float)
    base = n_poisons / max(n_samples, 1)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=recall, name="poisons dropped", mode="lines+markers",
                             line=dict(color="#d62728")), row=1, col=1)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=share, name="all rows dropped = a random drop's recall",
                             mode="lines", line=dict(color="#7f7f7f", dash="dot")), row=1, col=1)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=precision, name="precision of the drops", mode="lines+markers",
                             line=dict(color="#9467bd")), row=1, col=2)
    fig.add_trace(go.Scatter(x=metrics["epoch"], y=np.full(len(metrics), base), name=f"poison base rate ({base:.1%}) = a random drop's precision",
                             mode="lines", line=dict(color="#7f7f7f", dash="dash")), row=1, col=2)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    top = max(2 * base, float(np.nanmax(precision.to_numpy())) if precision.notna().any() else 0.0) * 1.15
    fig.update_yaxes(range=[0, max(top, 0.01)], tickformat=".1%", row=1, col=2)
    fig = epoch_layout(fig, "", height=380)
    fig.update_layout(margin=dict(t=60), legend=dict(y=-0.3))
    return fig


def auroc_figure(frame: pd.DataFrame) -> go.Figure:
    """ROC-AUC of the defense's score for poison vs clean at each snapshot, against chance (0.5).

    Parameters
    ----------
    frame : DataFrame
        A row per snapshot with epoch and roc_auc (the Overview page's detection table).
    """
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=frame["epoch"], y=frame["roc_auc"], mode="lines+markers", name="AUROC of the defense's score",
                             line=dict(color="#2ca02c")))
    fig.add_hline(y=0.5, line_dash="dot", line_color="#7f7f7f", annotation_text="chance (0.5)", annotation_position="bottom right")
    fig.update_yaxes(range=[0, 1], title_text="AUROC")
    return epoch_layout(fig, "Are poisons scored as more suspicious?")


def timing_figure(metrics: pd.DataFrame) -> go.Figure:
    """Seconds per epoch: training vs evaluation, snapshot and defense (stacked).

    Parameters
    ----------
    metrics : DataFrame
        metrics.parquet's table, a row per finished epoch (epoch, epoch_seconds, eval_seconds, snapshot_seconds, defense_seconds; a missing column is left out).
    """
    fig = go.Figure()
    parts = [("epoch_seconds", "training", "#1f77b4"), ("eval_seconds", "evaluation", "#aec7e8"),
             ("snapshot_seconds", "gradient snapshot", "#ff7f0e"), ("defense_seconds", "defense (selection)", "#d62728")]
    for col, name, color in parts:
        if col in metrics:
            fig.add_trace(go.Bar(x=metrics["epoch"], y=metrics[col], name=name, marker_color=color))
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text="seconds")
    return epoch_layout(fig, "Where the time goes, per epoch")
