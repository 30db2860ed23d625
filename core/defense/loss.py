"""Loss filter: flag the active examples with the highest training loss.

The score is the cross-entropy of the training label. Since that loss is
``-log(confidence)``, ranking by low confidence gives the same order, so this one
defense covers both the loss and the confidence baselines.
``is_clean = ~result.suspect`` is the list a user of ART's poison filters expects.

Cost: one sort, O(n_active · log n_active) time and O(n_samples) memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from poisonlens.defense.base import DefenseResult, ScoringDefense, Snapshot, highest, register
from poisonlens.errors import InputError


@register("loss")
@dataclass(frozen=True, kw_only=True)
class LossFilter(ScoringDefense):
    """Drop the top ``fraction`` of active examples by loss; ties go to the lower index."""

    name: ClassVar[str] = "loss"
    output_columns: ClassVar[dict[str, str]] = {
        "score": "cross-entropy of the example, higher = more suspicious",
        "suspect": "bool, among the top fraction of active examples by loss",
    }

    fraction: float = 0.05  # share of the active examples flagged at each snapshot

    def __post_init__(self) -> None:
        if not 0.0 <= self.fraction <= 1.0:
            raise InputError("loss", f"fraction must be in [0, 1], got {self.fraction}")

    def decide(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Flag the top ``fraction`` of active examples by loss.

        Parameters
        ----------
        snapshot, active
            See :meth:`ScoringDefense.decide`; ``snapshot.loss`` is the score.

        Returns
        -------
        DefenseResult
        """
        n_samples = snapshot.n_samples
        rows = np.flatnonzero(active)

        score = np.full(n_samples, np.nan)
        score[rows] = np.asarray(snapshot.loss, dtype=np.float64)[rows]
        dropped = highest(rows, score[rows], self.fraction)
        n_drop = len(dropped)
        suspect = np.zeros(n_samples, dtype=bool)
        suspect[dropped] = True

        return DefenseResult(
            score=score,
            suspect=suspect,
            info={
                "fraction": self.fraction,
                "n_active": int(len(rows)),
                "n_suspect": int(n_drop),
                "threshold": float(score[dropped].min()) if n_drop else None,
            },
        )
