"""Activation clustering (Chen et al., 2018): per class, split the features in two; flag a small half.

Within each class the active penultimate features are reduced to ``n_dims`` components
and split by 2-means; when the smaller cluster holds at most ``size_thresh`` of the class
it is suspect (the paper's relative-size analysis). An example's score is one minus the
share of its class in its own cluster, so members of small clusters score high.
``is_clean = ~result.suspect`` is the list a user of ART's poison filters expects.

Cost: per class one PCA (or FastICA) and ``n_init`` k-means runs on n_c × n_dims rows,
O(n_c · n_features · n_dims) time and O(n_c · n_features) memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA, FastICA
from sklearn.exceptions import ConvergenceWarning

from poisonlens.defense.base import DefenseResult, ScoringDefense, Snapshot, register
from poisonlens.defense.per_class import active_classes, class_report
from poisonlens.errors import InputError

TIE_BREAK = 1e-3  # weight of the within-cluster grading of a suspect cluster (score docstring)


def _apartness(small: np.ndarray, large: np.ndarray) -> np.ndarray:
    """d / (d + median d) in [0, 1) for each row of ``small``, d its distance to ``large``'s mean.

    Parameters
    ----------
    small : float array of shape (n_small, n_features), the suspect cluster's features
    large : float array of shape (n_large, n_features), the larger cluster's features

    Returns
    -------
    t : float64 array of shape (n_small,); 0 where the median distance is 0
    """
    d = np.linalg.norm(small.astype(np.float64) - large.astype(np.float64).mean(axis=0), axis=1)
    median = float(np.median(d))
    return d / (d + median) if median > 0 else np.zeros(len(d))


@register("activation-clustering")
@dataclass(frozen=True, kw_only=True)
class ActivationClustering(ScoringDefense):
    """Activation-clustering poison filter; defaults from Chen et al. (2018).

    Score: ``1 - (size of own cluster) / (size of class)``, in [0, 1); the larger cluster
    scores at most 0.5 and the suspects are exactly the scores >= ``1 - size_thresh``. Within
    a suspect cluster, where that share is one value for all, ``TIE_BREAK * d / (d + median d)``
    is added, ``d`` the distance of the example's features from the larger cluster's mean and
    the median over the suspect cluster: the farther from the class's majority, the more
    suspicious (below ``TIE_BREAK``, so it reorders only clusters whose shares differ by less).

    Extra column: ``cluster`` (int, 0 = larger cluster of its class, 1 = smaller, -1 inactive).
    """

    name: ClassVar[str] = "activation-clustering"
    output_columns: ClassVar[dict[str, str]] = {
        "score": "1 - share of the class in the example's 2-means cluster, higher = more "
        "suspicious; in a suspect cluster + 0.001 d / (d + median d), d the distance from the "
        "larger cluster's mean",
        "suspect": "bool, in a class's smaller cluster when it holds <= size_thresh of the class",
        "cluster": "int, 0 for the larger 2-means cluster of the class, 1 for the smaller",
    }

    n_dims: int = 10  # components kept per class, as in the paper
    reduce: Literal["pca", "fastica"] = "pca"  # the paper uses ICA; PCA is ART's default
    size_thresh: float = 0.35  # largest share of a class a poisoned cluster may hold
    n_init: int = 10  # k-means restarts
    random_state: int = 0  # seeds the reduction (FastICA) and k-means

    def __post_init__(self) -> None:
        if self.n_dims < 1:
            raise InputError("activation-clustering", f"n_dims must be >= 1, got {self.n_dims}")
        if self.reduce not in ("pca", "fastica"):
            raise InputError(
                "activation-clustering", f"reduce must be 'pca' or 'fastica', got {self.reduce!r}"
            )
        if not 0.0 <= self.size_thresh <= 0.5:
            raise InputError(
                "activation-clustering", f"size_thresh must be in [0, 0.5], got {self.size_thresh}"
            )
        if self.n_init < 1:
            raise InputError("activation-clustering", f"n_init must be >= 1, got {self.n_init}")

    def decide(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Split each active class in two and flag a small half.

        Parameters
        ----------
        snapshot : Snapshot
            Its penultimate ``embeddings``, reduced and split by 2-means per active class.
        active : bool ndarray of shape (n_samples,)
            See :meth:`ScoringDefense.decide`.

        Returns
        -------
        DefenseResult
            With a ``cluster`` column (-1 for inactive rows).
        """
        score = np.full(snapshot.n_samples, np.nan)
        suspect = np.zeros(snapshot.n_samples, dtype=bool)
        cluster = np.full(snapshot.n_samples, -1, dtype=np.int64)
        per_class: dict[str, dict] = {}
        for key, rows, features in active_classes(snapshot, active):
            assigned, converged = self._two_means(features)
            sizes = np.bincount(assigned, minlength=2)
            share = sizes / len(rows)
            score[rows] = 1.0 - share[assigned]
            cluster[rows] = assigned
            flagged = 0 < share[1] <= self.size_thresh
            suspect[rows] = flagged & (assigned == 1)
            if flagged:
                score[rows[assigned == 1]] += TIE_BREAK * _apartness(
                    features[assigned == 1], features[assigned == 0])
            per_class[key] = {
                "n": int(len(rows)),
                "cluster_sizes": [int(s) for s in sizes],
                "smaller_share": float(share[1]),
                "suspicious_cluster": bool(flagged),
                "converged": converged,
            }
        info = class_report(active, suspect, per_class, n_dims=self.n_dims, reduce=self.reduce,
                            size_thresh=self.size_thresh)
        return DefenseResult(score=score, suspect=suspect, columns={"cluster": cluster}, info=info)

    def _two_means(self, features: np.ndarray) -> tuple[np.ndarray, bool]:
        """Cluster of each row and whether the reduction and k-means converged.

        Returns
        -------
        assigned : int64 ndarray of shape (n_rows,), 0 = the larger cluster, 1 = the smaller
        converged : bool, False when scikit-learn raised a ConvergenceWarning
        """
        n_rows = len(features)
        features = features.astype(np.float64)
        if n_rows < 2 or not np.ptp(features, axis=0).any():
            # One row, or identical rows: a single cluster.
            return np.zeros(n_rows, dtype=np.int64), True
        n_components = min(self.n_dims, n_rows, features.shape[1])
        if self.reduce == "pca":
            reducer = PCA(n_components=n_components, random_state=self.random_state)
        else:
            reducer = FastICA(n_components=n_components, random_state=self.random_state)
        # FastICA often fails to converge on near-Gaussian features; say so in the report
        # once per class rather than warning at every snapshot.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            reduced = reducer.fit_transform(features)
            assigned = (
                KMeans(n_clusters=2, n_init=self.n_init, random_state=self.random_state)
                .fit_predict(reduced)
                .astype(np.int64)
            )
        converged = True
        for caught_warning in caught:
            if issubclass(caught_warning.category, ConvergenceWarning):
                converged = False
            else:
                warnings.warn(caught_warning.message, caught_warning.category, stacklevel=2)
        # Number the clusters by size so that 1 is always the smaller one.
        if (assigned == 1).sum() > (assigned == 0).sum():
            assigned = 1 - assigned
        return assigned, converged
