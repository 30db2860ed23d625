"""Drift: how far an example's gradient sits from its own class, and how close to the target's.

Both are computed per snapshot from the last-layer gradients g = softmax - onehot(label):

``drift``
    The euclidean distance from g to the nearest medoid of the example's own class (EPIC's
    ``is_medoid`` rows among the class's active examples; for a medoid, the nearest *other*
    medoid), divided by the median of that distance over the class's active examples. 1 = as far as a typical member of its class,
    10 = ten times as far. Without medoids (a defense other than EPIC) the class's single
    reference point is the coordinate-wise median gradient of its active examples. The median
    is floored at ``MIN_SCALE`` so that a class whose gradients have all collapsed to ~0 does
    not turn tiny distances into huge ratios.
``target_cos``
    The cosine similarity between g and the target's gradient for the attacker's class
    (softmax(target) - onehot(adv_label)); NaN for a clean run. Gradient-matching poisons are
    built so that training on them pushes the model the way training the target as
    ``adv_label`` would, so in this last-layer view they tend towards +1.

Higher drift = farther from the class = more suspicious, as everywhere in poisonlens.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

MIN_SCALE = 1e-3  # floor of a class's median distance (gradient norms lie in [0, sqrt(2)])


def cosine_to(grads: np.ndarray, direction: np.ndarray | None) -> np.ndarray:
    """Cosine similarity of each row of ``grads`` with ``direction``; 0 where a norm is 0.

    Parameters
    ----------
    grads : float ndarray of shape (n_samples, n_classes)
        Gradients (softmax - onehot).
    direction : float ndarray of shape (n_classes,), or None
        E.g. the target's gradient for ``adv_label``; None gives NaN everywhere.

    Returns
    -------
    float64 ndarray of shape (n_samples,), in [-1, 1]
    """
    grads = np.asarray(grads, dtype=np.float64)
    if direction is None:
        return np.full(len(grads), np.nan)
    direction = np.asarray(direction, dtype=np.float64)
    norms = np.linalg.norm(grads, axis=1) * np.linalg.norm(direction)
    dots = grads @ direction
    out = np.zeros(len(grads))
    np.divide(dots, norms, out=out, where=norms > 0)
    return out


def _nearest_distance(
    points: np.ndarray, refs: np.ndarray, *, self_ref: np.ndarray | None = None, block: int = 4096
) -> np.ndarray:
    """Euclidean distance from each row of ``points`` to its nearest row of ``refs``, in blocks.

    ``self_ref[i]`` is the row of ``refs`` that *is* point i (-1 if none); that row is skipped,
    so a medoid is measured to the nearest other medoid (inf when there is none).
    """
    out = np.empty(len(points))
    ref_sq = (refs**2).sum(1)
    for start in range(0, len(points), block):
        p = points[start : start + block]
        d2 = (p**2).sum(1)[:, None] - 2 * p @ refs.T + ref_sq[None]
        if self_ref is not None:
            own = self_ref[start : start + block]
            rows = np.flatnonzero(own >= 0)
            d2[rows, own[rows]] = np.inf
        out[start : start + block] = np.sqrt(np.maximum(d2.min(1), 0.0))
    return out


def drift_scores(
    grads: np.ndarray,
    labels: np.ndarray,
    *,
    medoids: np.ndarray | None = None,
    active: np.ndarray | None = None,
    target_grad: np.ndarray | None = None,
) -> pd.DataFrame:
    """Drift from the own class and similarity to the target, for every example of one snapshot.

    Parameters
    ----------
    grads : float ndarray of shape (n_samples, n_classes), softmax - onehot
    labels : int ndarray of shape (n_samples,)
    medoids : bool ndarray of shape (n_samples,), optional; the defense's medoids (EPIC's
        ``is_medoid``). A class with fewer than two uses its median gradient instead.
    active : bool ndarray of shape (n_samples,), optional; the examples still trained on.
        Medoids and the class median are taken among them; dropped examples are still scored.
    target_grad : float ndarray of shape (n_classes,), optional; the target's gradient for
        ``adv_label``

    Returns
    -------
    DataFrame of n_samples rows: ``distance`` (to the nearest own-class reference),
    ``drift`` (distance / the class's median distance), ``target_cos`` (NaN without a target)
    """
    grads = np.asarray(grads, dtype=np.float64)
    labels = np.asarray(labels)
    n = len(labels)
    if grads.shape[0] != n:
        raise ValueError(f"grads has {grads.shape[0]} rows, labels {n}")
    active = np.ones(n, bool) if active is None else np.asarray(active, bool)
    medoids = np.zeros(n, bool) if medoids is None else np.asarray(medoids, bool)
    distance = np.full(n, np.nan)
    drift = np.full(n, np.nan)
    for c in np.unique(labels):
        members = labels == c
        ref_rows = members & active & medoids
        pool = grads[members & active] if (members & active).any() else grads[members]
        centre = np.median(pool, axis=0, keepdims=True)
        if ref_rows.sum() >= 2:
            # a medoid is measured to the nearest *other* medoid, else every medoid would sit at 0
            self_ref = np.full(members.sum(), -1)
            self_ref[ref_rows[members]] = np.arange(ref_rows.sum())
            d = _nearest_distance(grads[members], grads[ref_rows], self_ref=self_ref)
        else:
            d = _nearest_distance(grads[members], centre)
        distance[members] = d
        reference = d[active[members]] if active[members].any() else d
        scale = max(float(np.median(reference)), MIN_SCALE)
        drift[members] = d / scale
    return pd.DataFrame(
        {"distance": distance, "drift": drift, "target_cos": cosine_to(grads, target_grad)}
    )


def group_quantiles(
    values: pd.DataFrame,
    *,
    value: str,
    by: list[str],
    q: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95),
) -> pd.DataFrame:
    """Quantiles of ``value`` per group (e.g. per epoch and poison/clean), for box plots of big runs.

    Parameters
    ----------
    values : DataFrame
        One row per example and epoch.
    value : str
        The column summarised, e.g. ``'drift'``.
    by : list of str
        The grouping columns, e.g. ``['epoch', 'is_poison']``.
    q : tuple of float
        The quantiles, in [0, 1].

    Returns
    -------
    DataFrame
        One row per group: the ``by`` columns, ``q05``, ``q25``, ... (one per ``q``), ``n``
        and ``mean``.
    """
    grouped = values.groupby(by, observed=True)[value]
    out = grouped.quantile(list(q)).unstack()
    out.columns = [f"q{int(round(x * 100)):02d}" for x in q]
    out["n"] = grouped.size()
    out["mean"] = grouped.mean()
    return out.reset_index()
