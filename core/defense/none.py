"""The ``none`` defense: keeps everything, still records a (NaN) score column."""

from __future__ import annotations

import numpy as np

from poisonlens.defense.base import DefenseResult, ScoringDefense, Snapshot, register


@register("none")
class NoDefense(ScoringDefense):
    """Keeps every example: the undefended baseline (NaN scores, no suspects)."""

    name = "none"
    output_columns = {
        "score": "NaN: no defense scores anything (higher = more suspicious, were there one)",
        "suspect": "bool, always false",
    }

    def decide(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Score nothing and suspect nothing: all NaN and all False.

        Parameters
        ----------
        snapshot : Snapshot
            Only its ``n_samples`` is read.
        active : bool ndarray of shape (n_samples,)
            Ignored: nothing is scored.
        """
        n = snapshot.n_samples
        return DefenseResult(score=np.full(n, np.nan), suspect=np.zeros(n, dtype=bool))
