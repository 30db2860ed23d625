"""What the baselines that judge each class on its own share: the classes' rows and the report.

Activation clustering and spectral signatures look at one class at a time (a poison hides in
its base's class); :func:`active_classes` hands them each active class's rows and features, and
:func:`class_report` writes the ``info`` every such defense returns.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from poisonlens.defense.base import Snapshot


def active_classes(snapshot: Snapshot, active: np.ndarray) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """Each label that has an active example, in ascending order, with its rows and features.

    Parameters
    ----------
    snapshot : Snapshot
        Its ``labels`` (n_samples,) and ``embeddings`` (n_samples, n_features) are read.
    active : bool ndarray of shape (n_samples,)
        The examples still in training (already checked).

    Yields
    ------
    key : str
        The label as a string (a JSON key of ``info['per_class']``).
    rows : int ndarray of shape (n_c,)
        The active rows of that label, ascending.
    features : ndarray of shape (n_c, n_features)
        Their penultimate features.
    """
    labels = np.asarray(snapshot.labels)
    embeddings = np.asarray(snapshot.embeddings)
    for c in np.unique(labels[active]):
        rows = np.flatnonzero(active & (labels == c))
        yield str(c), rows, embeddings[rows]


def class_report(active: np.ndarray, suspect: np.ndarray, per_class: dict, **params) -> dict:
    """The ``info`` of a per-class defense: its parameters, then the counts and the classes.

    Parameters
    ----------
    active : bool ndarray of shape (n_samples,)
        The examples the defense judged.
    suspect : bool ndarray of shape (n_samples,)
        The ones it flagged.
    per_class : dict
        The defense's figures for each class, keyed by :func:`active_classes`' key.
    **params
        The defense's settings, recorded first (e.g. ``eps=0.05``).

    Returns
    -------
    dict
        ``params``, then ``n_active``, ``n_suspect`` and ``per_class``.
    """
    return {**params, "n_active": int(active.sum()), "n_suspect": int(suspect.sum()),
            "per_class": per_class}
