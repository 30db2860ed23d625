"""EPIC (Yang, Liu & Mirzasoleiman, ICML 2022): drop the examples that form isolated clusters.

At a snapshot, each class's active examples are clustered around medoids chosen by greedy
facility location on their gradients G = softmax(logits) - onehot(label) (see
:mod:`poisonlens.defense.facility_location` for the similarity, the greedy and the assignment). A
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

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from poisonlens.defense.base import DefenseResult, Snapshot, register
from poisonlens.defense.epic_config import EpicConfig
from poisonlens.defense.facility_location import Clustering, cluster
from poisonlens.defense.greedi import Partition, partition_plan, run_partitions, timed_merges

__all__ = ["EpicConfig", "Epic", "Selection", "budgets", "finish_selection", "plan", "select"]


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
    config: EpicConfig | None = None,
    **options,
) -> Selection:
    """Run EPIC's selection on the active examples of one snapshot.

    Parameters
    ----------
    grads : float array of shape (n_samples, n_classes), softmax - onehot; read as float32
    labels : int array of shape (n_samples,), values in [0, n_classes)
    active : bool array of shape (n_samples,), the examples still in training (default: all)
    config : EpicConfig, optional; or its fields as keywords (``subset_size=0.1``,
        ``metric='euclidean'``, ``greedy='lazy'``, ``cluster_thresh=1``, ``epsilon=0.01``,
        ``random_state=0``, ``method='auto'``, ``partition_size=2_500``,
        ``max_dense=20_000``, ``merge_sample=5_000``, ``n_jobs=1``; see :class:`EpicConfig`
        for each one's meaning)
    **options : EpicConfig fields, when ``config`` is not given

    Returns
    -------
    Selection

    Raises
    ------
    ValueError
        On NaN or inf in ``grads``, an option outside its range, labels out of range, or
        shapes that disagree; the message names the problem.
    TypeError
        On a keyword that is not an EpicConfig field, or both ``config`` and keywords.
    """
    if config is None:
        config = EpicConfig(**options)
    elif options:
        raise TypeError("give either config or option keywords, not both")
    grads, labels, active = _check_arrays(grads, labels, active)
    parts, k = plan(labels, active=active, config=config, n_classes=grads.shape[1])
    picks = run_partitions(grads, parts, metric=config.metric, n_jobs=config.n_jobs)
    return finish_selection(grads, labels, parts, picks, active=active, config=config)


def plan(
    labels: np.ndarray,
    *,
    active: np.ndarray,
    config: EpicConfig,
    n_classes: int,
) -> tuple[list[Partition], np.ndarray]:
    """The class budgets and GreeDi's partitions: the part every rank computes alike.

    A class goes to GreeDi when ``config.method`` is 'greedi', or 'auto' and the class has more
    than ``config.max_dense`` active examples, and it has more than ``config.partition_size``
    (with one partition GreeDi is exact greedy, so exact runs instead).

    Parameters
    ----------
    labels : int array of shape (n_samples,)
    active : bool array of shape (n_samples,)
    config : EpicConfig
    n_classes : number of classes (columns of grads)

    Returns
    -------
    parts : list of Partition (empty when every class runs exact)
    k : int64 array of shape (n_classes,), the class budgets K_c
    """
    counts = np.bincount(labels[active], minlength=n_classes)
    k = budgets(counts, config.subset_size, random_state=config.random_state)
    big = counts > config.partition_size
    if config.method == "exact":
        big[:] = False
    elif config.method == "auto":
        big &= counts > config.max_dense
    parts = partition_plan(
        labels,
        np.where(big, k, 0),
        active=active,
        partition_size=config.partition_size,
        random_state=config.random_state,
    )
    return parts, k


def finish_selection(
    grads: np.ndarray,
    labels: np.ndarray,
    parts: Sequence[Partition],
    picks: Sequence[np.ndarray],
    *,
    active: np.ndarray,
    config: EpicConfig,
) -> Selection:
    """Merge GreeDi's picks, run exact greedy on the other classes, and decide isolation.

    Under DDP this runs on rank 0 once the picks of every partition are gathered.

    Parameters
    ----------
    grads : float32 array of shape (n_samples, n_classes)
    labels : int64 array of shape (n_samples,)
    parts : the partitions of :func:`plan`
    picks : ``picks[i]``, int array of global indices chosen in ``parts[i]``
        (:func:`poisonlens.defense.greedi.greedy_on_partition`)
    active : bool array of shape (n_samples,)
    config : EpicConfig, the same as for :func:`plan`

    Returns
    -------
    Selection
    """
    n_samples, n_classes = grads.shape
    counts = np.bincount(labels[active], minlength=n_classes)
    k = budgets(counts, config.subset_size, random_state=config.random_state)
    out = _Decisions(n_samples, n_classes)
    merged = timed_merges(
        grads,
        labels,
        active,
        parts,
        picks,
        k,
        metric=config.metric,
        n_jobs=config.n_jobs,
        sample=config.merge_sample,
        random_state=config.random_state,
    )
    for c, (members, fit, seconds) in merged.items():
        out.record(c, members, fit, seconds, config.cluster_thresh)
    dense_sizes = counts[(counts <= config.max_dense) & (counts > 0)]
    buffer = np.empty(int(dense_sizes.max(initial=0)) ** 2, dtype=np.float32)
    for c in np.flatnonzero(counts):
        if int(c) in merged:
            continue
        start = time.perf_counter()
        members = np.flatnonzero(active & (labels == c))
        fit = cluster(
            grads[members],
            int(k[c]),
            metric=config.metric,
            greedy=config.greedy,
            epsilon=config.epsilon,
            random_state=np.random.default_rng([config.random_state, int(c)]),
            max_dense=config.max_dense,
            buffer=buffer,
        )
        out.record(c, members, fit, time.perf_counter() - start, config.cluster_thresh)
    return out.selection(k)


class _Decisions:
    # The per-example and per-class arrays of a Selection, filled one class at a time.

    def __init__(self, n_samples: int, n_classes: int) -> None:
        self.medoid = np.full(n_samples, -1, dtype=np.int64)
        self.cluster_size = np.zeros(n_samples, dtype=np.int64)
        self.is_medoid = np.zeros(n_samples, dtype=bool)
        self.isolated = np.zeros(n_samples, dtype=bool)
        self.drop = np.zeros(n_samples, dtype=bool)
        self.score = np.full(n_samples, np.nan)
        self.objective = np.zeros(n_classes)
        self.seconds = np.zeros(n_classes)

    def record(
        self, c: int, members: np.ndarray, fit: Clustering, seconds: float, thresh: float
    ) -> None:
        """Store the clustering of class ``c`` and which of its examples to drop.

        Parameters
        ----------
        c : int
            The class.
        members : ndarray of shape (n_members,)
            Indices of the class's examples.
        fit : Clustering
            The clustering of those examples.
        seconds : float
            Time the clustering took.
        thresh : float
            Clusters of at most this many examples (and at least one) are isolated and dropped.
        """
        sizes = np.bincount(fit.assignment, minlength=len(fit.order))
        lonely = (sizes > 0) & (sizes <= thresh)
        self.medoid[members] = members[fit.order][fit.assignment]
        self.cluster_size[members] = sizes[fit.assignment]
        self.is_medoid[members[fit.order]] = True
        self.isolated[members[fit.order[lonely]]] = True
        self.drop[members] = lonely[fit.assignment]
        self.score[members] = _suspicion(sizes[fit.assignment], fit.distance)
        self.objective[c] = fit.objective
        self.seconds[c] = seconds

    def selection(self, k: np.ndarray) -> Selection:
        """The recorded decisions as a Selection, with ``k`` clusters per class."""
        return Selection(
            self.medoid,
            self.cluster_size,
            self.is_medoid,
            self.isolated,
            self.drop,
            self.score,
            k,
            self.objective,
            self.seconds,
        )


def _suspicion(cluster_size: np.ndarray, distance: np.ndarray) -> np.ndarray:
    median = np.median(distance)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(distance > 0, distance / (distance + median), 0.0)
    return 1.0 / cluster_size + 0.5 * relative


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
    output_columns = {
        "score": "suspicion, higher = more suspicious: 1 / cluster_size + 0.5 d / (d + median "
        "d of the class), d the distance to the medoid; >= 1 for an example alone in its cluster",
        "suspect": "bool, in an isolated medoid's cluster: dropped when the schedule drops",
        "medoid": "int, index of the example's medoid (itself for a medoid; -1 inactive)",
        "cluster_size": "int, examples in the example's cluster (0 inactive)",
        "is_medoid": "bool, chosen as a medoid by greedy facility location",
        "isolated": "bool, a medoid whose cluster has at most cluster_thresh examples",
    }

    def __init__(self, **params) -> None:
        self.config = EpicConfig(**params)

    def __call__(self, snapshot: Snapshot, active: np.ndarray) -> DefenseResult:
        """Run :func:`select` on the active examples of ``snapshot``.

        Parameters
        ----------
        snapshot : Snapshot, uses ``grads`` (n_samples, n_classes) and ``labels``
        active : bool ndarray of shape (n_samples,), the examples still in training

        Returns
        -------
        DefenseResult
            ``score`` and ``suspect`` of shape (n_samples,); ``columns`` as declared in ``output_columns``; ``info`` with per-class ``k``, ``objective``, ``seconds`` and ``n_isolated``, ``n_dropped``.
        """
        chosen = select(snapshot.grads, snapshot.labels, active=active, config=self.config)
        return _result(chosen)

    # The three methods below let poisonlens.distributed.run_defense spread GreeDi's first round over
    # the ranks of a torchrun run; __call__ is the same computation in one process.

    def partitions(self, labels: np.ndarray, active: np.ndarray, *, n_classes: int) -> list:
        """GreeDi's partitions at a snapshot (:func:`plan`): every rank computes the same ones.

        Parameters
        ----------
        labels : int array of shape (n_samples,)
        active : bool array of shape (n_samples,), the examples still in training
        n_classes : number of classes

        Returns
        -------
        list of Partition, empty when every class runs exact greedy (nothing to spread)
        """
        labels, active = np.asarray(labels, dtype=np.int64), np.asarray(active, dtype=bool)
        return plan(labels, active=active, config=self.config, n_classes=n_classes)[0]

    def first_round(self, grads: np.ndarray, parts: Sequence[Partition]) -> list[np.ndarray]:
        """Greedy on each of ``parts`` (``n_jobs`` threads), as :func:`select` runs them.

        Parameters
        ----------
        grads : float array of shape (n_samples, n_classes), the whole snapshot's gradients
        parts : some of the partitions of :meth:`partitions`

        Returns
        -------
        picks : list of int64 arrays, ``picks[i]`` of shape (parts[i].budget,), global indices
        """
        return run_partitions(grads, parts, metric=self.config.metric, n_jobs=self.config.n_jobs)

    def finish(
        self,
        snapshot: Snapshot,
        active: np.ndarray,
        parts: Sequence[Partition],
        picks: Sequence[np.ndarray],
        *,
        info: dict | None = None,
    ) -> DefenseResult:
        """The decisions from every partition's picks (:func:`finish_selection`), as ``__call__``.

        Parameters
        ----------
        snapshot : Snapshot, uses ``grads`` (n_samples, n_classes) and ``labels``
        active : bool ndarray of shape (n_samples,), as given to :meth:`partitions`
        parts : all the partitions of :meth:`partitions`, in order
        picks : ``picks[i]``, the global indices :meth:`first_round` chose in ``parts[i]``
        info : more facts for ``DefenseResult.info`` (e.g. ``partitions_per_rank``)

        Returns
        -------
        DefenseResult, as ``__call__`` returns it, ``info`` added
        """
        grads, labels, active = _check_arrays(snapshot.grads, snapshot.labels, active)
        chosen = finish_selection(grads, labels, parts, picks, active=active, config=self.config)
        return _result(chosen, info)


def _result(chosen: Selection, info: dict | None = None) -> DefenseResult:
    # A Selection as the trainer stores it: the score, the drops, EPIC's columns and facts.
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
            **(info or {}),
        },
    )
