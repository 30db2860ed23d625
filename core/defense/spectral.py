"""Spectral signatures (Tran et al., 2018): per class, flag the largest projections on the top direction.

Within each class the active penultimate features are centred; an example's score is its
squared projection on the top right singular vector. The ``floor(1.5 · eps · n_c)`` highest
scores of each class are suspect, where ``eps`` bounds the expected poison fraction.
``is_clean = ~result.suspect`` is the list a user of ART's poison filters expects.

Cost: one thin SVD per class, O(n_c · n_features²) time and O(n_c · n_features) memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from poisonlens.defense.base import DefenseResult, ScoringDefense, Snapshot, highest, register
from poisonlens.defense.per_class import active_classes, class_report
from poisonlens.errors import InputError


@register("spectral")
@dataclass(frozen=True, kw_only=True)
class SpectralSignatures(ScoringDefense):
    """Spectral-signature poison filter; defaults from Tran et al. (2018).

    Score: the raw squared projection, so it is comparable across classes only as far as
    their feature scales are. Ties at a class's cut-off go to the lower index.
    """

    name: ClassVar[str] = "spectral"
    output_columns: ClassVar[dict[str, str]] = {
        "score": "squared projection of the centred features on the class's top singular "
        "vector, higher = more suspicious",
        "suspect": "bool, among the floor(multiplier * eps * n_c) highest scores of its class",
    }

    eps: float = 0.05  # assumed upper bound on the poison fraction per class
    multiplier: float = 1.5  # the paper removes 1.5 · eps of each class

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps <= 1.0:
            raise InputError("spectral", f"eps must be in [0, 1], got {self.eps}")
        if self.multiplier < 0:
            raise InputError("spectral", f"multiplier must be >= 0, got {self.multiplier}")

    def decide(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Flag each active class's largest spectral signatures.

        Parameters
        ----------
        snapshot, active
            See :meth:`ScoringDefense.decide`; each active class's centred ``embeddings``
            are projected on their top singular vector.

        Returns
        -------
        DefenseResult
        """
        score = np.full(snapshot.n_samples, np.nan)
        suspect = np.zeros(snapshot.n_samples, dtype=bool)
        per_class: dict[str, dict] = {}
        for key, rows, features in active_classes(snapshot, active):
            class_score, top_singular = _signature(features)
            score[rows] = class_score
            dropped = highest(rows, class_score, self.multiplier * self.eps)  # 1.5 · 0.05 · 200 is 15
            suspect[dropped] = True
            per_class[key] = {
                "n": int(len(rows)),
                "n_suspect": int(len(dropped)),
                "threshold": float(score[dropped].min()) if len(dropped) else None,
                "top_singular_value": top_singular,
            }
        info = class_report(active, suspect, per_class, eps=self.eps, multiplier=self.multiplier)
        return DefenseResult(score=score, suspect=suspect, info=info)


def _signature(features: np.ndarray) -> tuple[np.ndarray, float]:
    """Squared projections on the top singular vector of the centred rows.

    Parameters
    ----------
    features : ndarray of shape (n_rows, n_features)

    Returns
    -------
    score : float64 ndarray of shape (n_rows,)
    top_singular_value : float
    """
    centred = features.astype(np.float64) - features.mean(axis=0, dtype=np.float64)
    if len(centred) < 2 or not centred.any():
        # One row, or identical rows: no direction stands out.
        return np.zeros(len(centred)), 0.0
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    return (centred @ vt[0]) ** 2, float(singular[0])
