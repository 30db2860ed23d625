"""The ``none`` defense: keeps everything, still records a (NaN) score column."""

from __future__ import annotations

import numpy as np

from core.defense.base import DefenseResult, Snapshot, register


@register("none")
class NoDefense:
    name = "none"

    def __call__(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        n = snapshot.n_samples
        return DefenseResult(score=np.full(n, np.nan), suspect=np.zeros(n, dtype=bool))
