"""How well a defense's decisions and scores find the poisons: pure functions, no I/O.

Scores point the usual way (higher = more suspicious); NaN scores mark inactive examples
and are left out of ranking metrics. Undefined metrics are NaN, never 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata


@dataclass(frozen=True)
class DetectionMetrics:
    """Precision, recall and ROC-AUC of one defense at one snapshot.

    Attributes
    ----------
    n_suspect : examples the defense flagged
    n_poison : poisons among the examples evaluated
    true_positives : flagged poisons
    precision : true_positives / n_suspect; NaN when nothing is flagged
    recall : true_positives / n_poison; NaN when there are no poisons
    roc_auc : chance that a poison outscores a clean example (ties count half), over the
        examples with a finite score; NaN without a score or without both kinds
    """

    n_suspect: int
    n_poison: int
    true_positives: int
    precision: float
    recall: float
    roc_auc: float


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U), ties averaged.

    Equal to ``sklearn.metrics.roc_auc_score(y_true, score)`` on finite scores.

    Parameters
    ----------
    y_true : bool or {0, 1} ndarray of shape (n_samples,), True for poisons
    score : float ndarray of shape (n_samples,), higher = more suspicious; NaN rows are ignored

    Returns
    -------
    float in [0, 1], NaN when the rows with a score are all poisons or all clean
    """
    y_true = _as_bool(y_true, "y_true")
    score = np.asarray(score, dtype=np.float64)
    if score.shape != y_true.shape:
        raise ValueError(f"score has shape {score.shape}, y_true has {y_true.shape}")
    keep = ~np.isnan(score)
    y_true, score = y_true[keep], score[keep]
    n_pos = int(y_true.sum())
    n_neg = len(y_true) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score, method="average")
    # Rank sum of the positives minus its minimum = pairs where a positive wins (ties 1/2).
    wins = ranks[y_true].sum() - n_pos * (n_pos + 1) / 2
    return float(wins / (n_pos * n_neg))


def detection_metrics(
    is_poison: np.ndarray,
    suspect: np.ndarray,
    score: np.ndarray | None = None,
    *,
    active: np.ndarray | None = None,
) -> DetectionMetrics:
    """Compare a defense's suspects and scores with the ground truth.

    Parameters
    ----------
    is_poison : bool or {0, 1} ndarray of shape (n_samples,), the ground truth
    suspect : bool ndarray of shape (n_samples,), what the defense flagged
    score : float ndarray of shape (n_samples,), optional
        Higher = more suspicious; NaN rows (inactive examples) are left out of the ROC-AUC.
    active : bool ndarray of shape (n_samples,), optional
        Evaluate only these rows, e.g. so that poisons dropped at an earlier snapshot do
        not count against this snapshot's recall. Default: all rows.

    Returns
    -------
    DetectionMetrics
    """
    is_poison = _as_bool(is_poison, "is_poison")
    suspect = _as_bool(suspect, "suspect")
    if suspect.shape != is_poison.shape:
        raise ValueError(f"suspect has shape {suspect.shape}, is_poison has {is_poison.shape}")
    if active is not None:
        active = _as_bool(active, "active")
        if active.shape != is_poison.shape:
            raise ValueError(f"active has shape {active.shape}, is_poison has {is_poison.shape}")
        is_poison, suspect = is_poison[active], suspect[active]
        score = None if score is None else np.asarray(score)[active]

    n_suspect = int(suspect.sum())
    n_poison = int(is_poison.sum())
    true_positives = int((suspect & is_poison).sum())
    return DetectionMetrics(
        n_suspect=n_suspect,
        n_poison=n_poison,
        true_positives=true_positives,
        precision=true_positives / n_suspect if n_suspect else float("nan"),
        recall=true_positives / n_poison if n_poison else float("nan"),
        roc_auc=float("nan") if score is None else roc_auc(is_poison, score),
    )


def _as_bool(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a 1-D bool array; only 0/1 or bool values are accepted."""
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {values.shape}")
    if values.dtype != bool:
        if values.size and not np.isin(values, (0, 1)).all():
            raise ValueError(f"{name} must hold only 0/1 or bool values")
        values = values.astype(bool)
    return values
