"""EPIC (Yang, Liu & Mirzasoleiman, ICML 2022): drop the examples that form isolated clusters.

At a snapshot, each class's active examples are clustered around medoids chosen by greedy
facility location on their gradients G = softmax(logits) - onehot(label) (see
:mod:`core.defense.facility_location` for the similarity, the greedy and the assignment). A
medoid whose cluster has at most ``cluster_thresh`` examples is *isolated*, and the examples
of its cluster are dropped. :func:`select` is the pure computation; :class:`Epic` plugs it
into the trainer.

Two departures from EPIC's released code, both on purpose:

- Its cluster ids are ``position + c * K_c`` but are looked up as if class c's clusters began
  at ``sum_{c' < c} K_c'``; the two agree only when every K_c is equal. Here isolation is
  decided per class, as the paper states.
- A medoid duplicated (to float32 precision) by an earlier medoid gets no example, not even
  itself; that code counts such an empty cluster as size 1, which drops nothing. Here it is
  simply not isolated, so ``isolated`` flags exactly the medoids whose clusters are dropped.

The per-example ``score`` ranks suspects before anything is dropped (higher = more suspicious)::

    score = 1 / cluster_size + 0.5 * d / (d + median_c(d))

where ``d`` is the example's distance to its medoid and the median is over its class's active
examples (``d / (d + median)`` is 0 at the medoid, 1/2 at the median distance, below 1; taken
as 1 when the median is 0 and ``d`` is not). Examples alone in their cluster score at least 1,
above every example of a larger cluster.
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import asdict, dataclass

import numpy as np

from core.defense.base import DefenseResult, Snapshot, register
from core.defense.facility_location import GREEDY, METRICS, cluster


@dataclass(frozen=True)
class EpicConfig:
    """EPIC's options; the trainer's ``drop_after`` / ``stop_after`` window is not among them."""

    subset_size: float = 0.1  # medoids per snapshot, as a fraction of active examples, in (0, 1]
    metric: str = "euclidean"  # 'euclidean': exp(-distance / n_classes) | 'cosine'
    greedy: str = "lazy"  # 'lazy': exact greedy | 'stochastic': changes what is dropped
    cluster_thresh: float = 1  # a medoid is isolated when its cluster has <= this many examples
    epsilon: float = 0.01  # stochastic greedy: scores (n_c / K_c) log(1 / epsilon) per step
    random_state: int = 0  # seeds the budget rounding and stochastic greedy

    def __post_init__(self) -> None:
        _check_options(
            self.subset_size,
            self.metric,
            self.greedy,
            self.cluster_thresh,
            self.epsilon,
            self.random_state,
        )


@dataclass(frozen=True, eq=False)
class Selection:
    """EPIC's decisions at one snapshot.

    Per example, arrays of shape (n_samples,); inactive examples get -1 / 0 / False / NaN.

    Attributes
    ----------
    medoid : int64, global index of the example's medoid (itself for a medoid)
    cluster_size : int64, number of examples in the example's cluster
    is_medoid : bool
    isolated : bool, the example is a medoid whose cluster has 1 to ``cluster_thresh`` examples
    drop : bool, the example belongs to an isolated medoid's cluster
    score : float64, suspicion, higher = more suspicious (module docstring)

    Per class, arrays of shape (n_classes,) indexed by label (0 for a class with no active
    example):

    k : int64, number of medoids K_c
    objective : float64, facility-location value F reached
    seconds : float64, wall time of the class's kernel, greedy and assignment
    """

    medoid: np.ndarray
    cluster_size: np.ndarray
    is_medoid: np.ndarray
    isolated: np.ndarray
    drop: np.ndarray
    score: np.ndarray
    k: np.ndarray
    objective: np.ndarray
    seconds: np.ndarray


def budgets(class_counts: np.ndarray, subset_size: float, *, random_state: int = 0) -> np.ndarray:
    """Medoids per class: K_c = ceil(n_c / n * B) with B = round(subset_size * n), trimmed to B.

    While sum(K_c) > B, one is taken from each of min(excess, eligible) classes drawn at random
    (seeded) among those with K_c > 1, as EPIC's reference code does. Every non-empty class keeps
    1 <= K_c <= n_c, so the total is max(B, number of non-empty classes).

    Parameters
    ----------
    class_counts : int array of shape (n_classes,), active examples per class
    subset_size : float in (0, 1]
    random_state : seed for the classes that lose one

    Returns
    -------
    k : int64 array of shape (n_classes,)
    """
    counts = np.asarray(class_counts, dtype=np.int64)
    n = int(counts.sum())
    if n == 0:
        return np.zeros_like(counts)
    total = round(subset_size * n)  # half to even, like Python's round
    k = -(-counts * total // n)  # exact integer ceil(n_c * B / n)
    k = np.where(counts > 0, np.maximum(k, 1), 0)
    rng = np.random.default_rng(random_state)
    excess = int(k.sum()) - total
    while excess > 0:
        eligible = np.flatnonzero(k > 1)
        if len(eligible) == 0:
            break
        k[rng.choice(eligible, size=min(excess, len(eligible)), replace=False)] -= 1
        excess = int(k.sum()) - total
    return k


def select(
    grads: np.ndarray,
    labels: np.ndarray,
    *,
    active: np.ndarray | None = None,
    subset_size: float = 0.1,
    metric: str = "euclidean",
    greedy: str = "lazy",
    cluster_thresh: float = 1,
    epsilon: float = 0.01,
    random_state: int = 0,
    max_dense: int = 20_000,
) -> Selection:
    """Run EPIC's selection on the active examples of one snapshot.

    Parameters
    ----------
    grads : float array of shape (n_samples, n_classes), softmax - onehot; read as float32
    labels : int array of shape (n_samples,), values in [0, n_classes)
    active : bool array of shape (n_samples,), the examples still in training (default: all)
    subset_size : fraction of active examples chosen as medoids, in (0, 1]
    metric : {'euclidean', 'cosine'}
    greedy : {'lazy', 'stochastic'}; 'lazy' is exact greedy (ties to the lowest index)
    cluster_thresh : a medoid is isolated when its cluster has <= this many examples
    epsilon : stochastic greedy's epsilon, in (0, 1)
    random_state : non-negative int; seeds the budget rounding and stochastic greedy
    max_dense : classes larger than this compute kernel rows on demand instead of holding the
        n_c x n_c float32 kernel (same decisions, slower)

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        On NaN or inf in ``grads``, ``subset_size`` outside (0, 1], labels out of range, or
        shapes that disagree; the message names the problem.
    """
    _check_options(subset_size, metric, greedy, cluster_thresh, epsilon, random_state)
    grads, labels, active = _check_arrays(grads, labels, active)
    n_samples, n_classes = grads.shape
    counts = np.bincount(labels[active], minlength=n_classes)
    k = budgets(counts, subset_size, random_state=random_state)

    medoid = np.full(n_samples, -1, dtype=np.int64)
    cluster_size = np.zeros(n_samples, dtype=np.int64)
    is_medoid = np.zeros(n_samples, dtype=bool)
    isolated = np.zeros(n_samples, dtype=bool)
    drop = np.zeros(n_samples, dtype=bool)
    score = np.full(n_samples, np.nan)
    objective = np.zeros(n_classes)
    seconds = np.zeros(n_classes)

    dense_sizes = counts[counts <= max_dense]
    buffer = np.empty(int(dense_sizes.max(initial=0)) ** 2, dtype=np.float32)
    for c in np.flatnonzero(counts):
        start = time.perf_counter()
        members = np.flatnonzero(active & (labels == c))
        fit = cluster(
            grads[members],
            int(k[c]),
            metric=metric,
            greedy=greedy,
            epsilon=epsilon,
            random_state=np.random.default_rng([random_state, int(c)]),
            max_dense=max_dense,
            buffer=buffer,
        )
        sizes = np.bincount(fit.assignment, minlength=len(fit.order))
        lonely = (sizes > 0) & (sizes <= cluster_thresh)
        medoid[members] = members[fit.order][fit.assignment]
        cluster_size[members] = sizes[fit.assignment]
        is_medoid[members[fit.order]] = True
        isolated[members[fit.order[lonely]]] = True
        drop[members] = lonely[fit.assignment]
        score[members] = _suspicion(sizes[fit.assignment], fit.distance)
        objective[c] = fit.objective
        seconds[c] = time.perf_counter() - start
    return Selection(medoid, cluster_size, is_medoid, isolated, drop, score, k, objective, seconds)


def _suspicion(cluster_size: np.ndarray, distance: np.ndarray) -> np.ndarray:
    median = np.median(distance)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(distance > 0, distance / (distance + median), 0.0)
    return 1.0 / cluster_size + 0.5 * relative


def _check_options(
    subset_size: float,
    metric: str,
    greedy: str,
    cluster_thresh: float,
    epsilon: float,
    random_state: int,
) -> None:
    if (
        isinstance(subset_size, bool)
        or not isinstance(subset_size, numbers.Real)
        or not 0 < subset_size <= 1
    ):
        raise ValueError(f"subset_size must be in (0, 1], got {subset_size!r}")
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if greedy not in GREEDY:
        raise ValueError(f"greedy must be one of {', '.join(GREEDY)}, got {greedy!r}")
    if (
        not isinstance(cluster_thresh, numbers.Real)
        or math.isnan(cluster_thresh)
        or cluster_thresh < 0
    ):
        raise ValueError(f"cluster_thresh must be >= 0, got {cluster_thresh!r}")
    if not isinstance(epsilon, numbers.Real) or not 0 < epsilon < 1:
        raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
    if (
        isinstance(random_state, bool)
        or not isinstance(random_state, numbers.Integral)
        or random_state < 0
    ):
        raise ValueError(f"random_state must be a non-negative int, got {random_state!r}")


def _check_arrays(
    grads: np.ndarray, labels: np.ndarray, active: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    grads = np.asarray(grads)
    labels = np.asarray(labels)
    if grads.ndim != 2 or not np.issubdtype(grads.dtype, np.number) or np.iscomplexobj(grads):
        raise ValueError(
            f"grads must be a real 2-D array (n_samples, n_classes), got {grads.dtype} of shape {grads.shape}"
        )
    n_samples, n_classes = grads.shape
    grads = grads.astype(np.float32, copy=False)
    bad = ~np.isfinite(grads).all(axis=1)
    if bad.any():
        raise ValueError(
            f"grads has NaN or inf in {int(bad.sum())} rows (first: row {int(np.argmax(bad))})"
        )
    if labels.shape != (n_samples,) or not (
        np.issubdtype(labels.dtype, np.integer) or labels.size == 0
    ):
        raise ValueError(
            f"labels must be ints of shape ({n_samples},), got {labels.dtype} of shape {labels.shape}"
        )
    labels = labels.astype(np.int64, copy=False)
    out_of_range = (labels < 0) | (labels >= n_classes)
    if out_of_range.any():
        first = int(np.argmax(out_of_range))
        raise ValueError(f"labels must be in [0, {n_classes}), got {labels[first]} at row {first}")
    if active is None:
        active = np.ones(n_samples, dtype=bool)
    active = np.asarray(active)
    if active.shape != (n_samples,) or active.dtype != bool:
        raise ValueError(
            f"active must be a bool array of shape ({n_samples},), got {active.dtype} of shape {active.shape}"
        )
    return grads, labels, active


@register("epic")
class Epic:
    """The EPIC defense: at each snapshot, suspects are the examples of isolated clusters.

    Parameters are the fields of :class:`EpicConfig`. The trainer decides at which epochs the
    suspects are dropped (EPIC's ``drop_after`` <= epoch < ``stop_after``).
    """

    name = "epic"

    def __init__(self, **params) -> None:
        self.config = EpicConfig(**params)

    def __call__(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        chosen = select(snapshot.grads, snapshot.labels, active=active, **asdict(self.config))
        return DefenseResult(
            score=chosen.score,
            suspect=chosen.drop,
            columns={
                "medoid": chosen.medoid,
                "cluster_size": chosen.cluster_size,
                "is_medoid": chosen.is_medoid,
                "isolated": chosen.isolated,
            },
            info={
                "k": chosen.k.tolist(),
                "objective": chosen.objective.tolist(),
                "seconds": chosen.seconds.tolist(),
                "n_isolated": int(chosen.isolated.sum()),
                "n_dropped": int(chosen.drop.sum()),
            },
        )
