"""Deep k-NN (Peri et al., 2020): flag examples whose label loses the vote of their neighbours.

For every active example, its ``k`` nearest active neighbours in penultimate-feature space
(euclidean, itself excluded) vote with their training labels; the example is suspect when
some other label gets strictly more votes than its own (a tie keeps it).
``is_clean = ~result.suspect`` is the list a user of ART's poison filters expects.

Cost: a brute-force neighbour search in row batches, O(n_active² · n_features) time and
O(n_active · k) memory; it never holds an n × n distance matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.neighbors import NearestNeighbors

from poisonlens.defense.base import DefenseResult, ScoringDefense, Snapshot, register
from poisonlens.errors import InputError


@register("deepknn")
@dataclass(frozen=True, kw_only=True)
class DeepKNN(ScoringDefense):
    """Deep k-NN poison filter; defaults from Peri et al. (2020).

    Score: ``(most votes for another label - votes for own label) / k``, in [-1, 1];
    an example is suspect exactly when its score is > 0.

    Extra columns: ``knn_agree`` (float, fraction of neighbours sharing the label) and
    ``knn_label`` (int, the plurality label, own label on ties; -1 when inactive).
    """

    name: ClassVar[str] = "deepknn"
    output_columns: ClassVar[dict[str, str]] = {
        "score": "(most votes of another label - votes for its own) / k among its k nearest "
        "neighbours, higher = more suspicious",
        "suspect": "bool, another label out-voted its own (score > 0)",
        "knn_agree": "float, share of the k neighbours sharing the example's label",
        "knn_label": "int, the plurality label of the k neighbours",
    }

    k: int = 50  # neighbours per example; the paper's k = 50, capped at n_active - 1
    batch_size: int = 4096  # query rows per kneighbors call; bounds the memory of one call

    def __post_init__(self) -> None:
        for key, value in (("k", self.k), ("batch_size", self.batch_size)):
            if value < 1:
                raise InputError("deepknn", f"{key} must be >= 1, got {value}")

    def decide(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Flag the examples whose nearest neighbours out-vote their own label.

        Parameters
        ----------
        snapshot, active : Snapshot, bool ndarray of shape (n_samples,)
            See :meth:`ScoringDefense.decide`; only active examples vote, on their
            ``embeddings``.

        Returns
        -------
        DefenseResult
            With ``knn_agree`` and ``knn_label`` columns.
        """
        n_samples = snapshot.n_samples
        rows = np.flatnonzero(active)
        labels = np.asarray(snapshot.labels)[rows]
        k = min(self.k, len(rows) - 1)

        score = np.full(n_samples, np.nan)
        agree = np.full(n_samples, np.nan)
        knn_label = np.full(n_samples, -1, dtype=np.int64)
        if k >= 1:
            votes = self._votes(np.asarray(snapshot.embeddings)[rows], labels, k)
            own = votes[np.arange(len(rows)), labels]
            # The best label other than the example's own: mask own votes out with -1.
            other = votes.copy()
            other[np.arange(len(rows)), labels] = -1
            best_other = other.max(axis=1)
            score[rows] = (best_other - own) / k
            agree[rows] = own / k
            knn_label[rows] = np.where(best_other > own, other.argmax(axis=1), labels)
        elif len(rows):
            # One active example has no neighbours to disagree with it.
            score[rows] = 0.0
        suspect = np.zeros(n_samples, dtype=bool)
        suspect[rows] = score[rows] > 0

        return DefenseResult(
            score=score,
            suspect=suspect,
            columns={"knn_agree": agree, "knn_label": knn_label},
            info={
                "k": int(k),
                "n_active": int(len(rows)),
                "n_suspect": int(suspect.sum()),
                "per_class": _per_class(labels, suspect[rows]),
            },
        )

    def _votes(self, features: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
        """Label votes of each row's k nearest other rows, int64 (n_rows, n_classes)."""
        n_rows = len(features)
        n_classes = int(labels.max()) + 1
        index = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(features)
        votes = np.zeros((n_rows, n_classes), dtype=np.int64)
        for start in range(0, n_rows, self.batch_size):
            stop = min(start + self.batch_size, n_rows)
            neighbours = index.kneighbors(features[start:stop], return_distance=False)
            # Drop the row itself; with duplicate points it may not come first, or at all,
            # in which case the farthest of the k + 1 goes instead.
            is_self = neighbours == np.arange(start, stop)[:, None]
            is_self[~is_self.any(axis=1), -1] = True
            neighbours = neighbours[~is_self].reshape(stop - start, k)
            flat = (np.arange(stop - start)[:, None] * n_classes + labels[neighbours]).ravel()
            votes[start:stop] = np.bincount(flat, minlength=(stop - start) * n_classes).reshape(
                stop - start, n_classes
            )
        return votes


def _per_class(labels: np.ndarray, suspect: np.ndarray) -> dict[str, dict[str, int]]:
    """Active and suspect counts per label, keyed by the label as a string (JSON keys)."""
    return {
        str(c): {"n": int((labels == c).sum()), "n_suspect": int(suspect[labels == c].sum())}
        for c in np.unique(labels)
    }
