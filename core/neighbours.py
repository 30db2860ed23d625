"""Nearest neighbours of one example in a snapshot's space (gradients or penultimate features).

Who else sits where this poison sits? A brute-force distance from one row to every row is
O(n_samples × n_features): 1,000,000 rows of 10 gradient columns take a few tens of
milliseconds, so no index is built. Pure functions on arrays; the dashboard reads the snapshot
columns (``g_*`` or ``emb_*``) through the run store and calls :func:`nearest_neighbours`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poisonlens.errors import InputError

SPACES = {"gradient": "g_", "features": "emb_"}  # name -> snapshot column prefix


@dataclass(frozen=True)
class Neighbours:
    """The nearest examples to one example, nearest first.

    Attributes
    ----------
    index : the example asked about
    indices : int64 ndarray of shape (k,), the neighbours' example indices (``index`` excluded)
    distances : float64 ndarray of shape (k,), their Euclidean distances, ascending
    same_label : bool ndarray of shape (k,), whether each neighbour has ``index``'s label
    """

    index: int
    indices: np.ndarray
    distances: np.ndarray
    same_label: np.ndarray


def nearest_neighbours(
    index: int,
    X: np.ndarray,
    labels: np.ndarray | None = None,
    *,
    k: int = 8,
    mask: np.ndarray | None = None,
) -> Neighbours:
    """The ``k`` rows of ``X`` nearest to row ``index`` (Euclidean), nearest first.

    Parameters
    ----------
    index : row of ``X`` whose neighbours are wanted
    X : float ndarray of shape (n_samples, n_features), e.g. a snapshot's ``g_*`` columns
    labels : int ndarray of shape (n_samples,), or None; fills ``same_label``
    k : neighbours returned at most (fewer when fewer candidates exist)
    mask : bool ndarray of shape (n_samples,), the rows that may be neighbours (None: all);
        ``index`` itself never is, nor is a row with a non-finite value

    Returns
    -------
    Neighbours, ties broken by the smaller index (the result does not depend on row order
    beyond that)
    """
    X = np.asarray(X)
    if X.ndim != 2:
        raise InputError("neighbours", f"expected a 2-d array of shape (n_samples, n_features), got {X.shape}")
    n = len(X)
    if not 0 <= index < n:
        raise InputError("neighbours", f"example {index} is not in 0..{n - 1}")
    if k < 1:
        raise InputError("neighbours", f"k must be at least 1, got {k}")
    query = X[index].astype(np.float64)
    if not np.isfinite(query).all():
        raise InputError("neighbours", f"example {index} has no finite position in this space")
    d2 = _squared_distances(X, query)
    allowed = np.isfinite(d2)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != (n,):
            raise InputError("neighbours", f"mask has shape {mask.shape}, expected ({n},)")
        allowed &= mask
    allowed[index] = False
    candidates = np.flatnonzero(allowed)
    k = min(k, len(candidates))
    if k == 0:
        empty = np.empty(0, np.int64)
        return Neighbours(index, empty, np.empty(0), np.empty(0, bool))
    chosen = _k_smallest(d2, candidates, k)
    same = (
        np.asarray(labels)[chosen] == np.asarray(labels)[index]
        if labels is not None
        else np.zeros(k, bool)
    )
    return Neighbours(index, chosen, np.sqrt(d2[chosen]), same)


def _squared_distances(X: np.ndarray, query: np.ndarray) -> np.ndarray:
    # One row against all: float64 differences, chunked so that a 1M × 64 matrix is not copied.
    d2 = np.empty(len(X), np.float64)
    for start in range(0, len(X), 65_536):
        block = X[start : start + 65_536].astype(np.float64) - query
        d2[start : start + len(block)] = np.einsum("ij,ij->i", block, block)
    return d2


def _k_smallest(d2: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    # The k candidates of smallest d2 in O(n), ordered by (distance, index); 1 <= k <= len.
    part = candidates[np.argpartition(d2[candidates], k - 1)[:k]] if k < len(candidates) else candidates
    # rows tied with the k-th distance may lie outside the partition: take them all, then cut
    kth = d2[part].max()
    tied = candidates[d2[candidates] <= kth]
    order = np.lexsort((tied, d2[tied]))[:k]
    return tied[order].astype(np.int64)


def space_columns(columns: list[str], space: str) -> list[str]:
    """The snapshot columns of ``space``, in stored order; [] when the snapshot does not store
    that space (features: ``emb_*``, see docs/run-format.md).

    Parameters
    ----------
    columns : list of str
        A snapshot's column names.
    space : {'gradient', 'features'}
        ``g_0, g_1, ...`` or ``emb_0, emb_1, ...``.

    Returns
    -------
    list of str
    """
    prefix = SPACES[space]
    return [c for c in columns if c.startswith(prefix) and c[len(prefix) :].isdigit()]
