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

Which examples a selection clusters is ``pool``: the active ones by default, the budget a
fraction of them; ``pool='all'`` clusters every example, dropped ones included, the budget a
fraction of all, as the released script does (its selection reads every training example's
gradient). Either way only active examples are dropped, and a drop is for good. On the whole of
CIFAR-10 the difference is large: docs/epic.md, "Which examples a selection clusters".

The per-example ``score`` ranks suspects (higher = more suspicious). For an example of an
isolated cluster (one EPIC drops)::

    score = 1 + L / (1 + L),   L = log(1 + r),   r = isolation = nn_out / median_c(nn)

where ``nn_out`` is the euclidean distance in gradient space from the example to the nearest
active example of its class *outside its own cluster* (for an isolated medoid, cluster size 1:
the nearest other example of its class) and ``median_c(nn)`` is the class's typical
nearest-neighbour distance: the median, over the class's active examples, of the distance to
the nearest other one (measured on a seeded sample of at most ``ISOLATION_SAMPLE`` of them,
exact for smaller classes; floored at ``MIN_SCALE``, as drift's scale is). ``r`` = 1: as far
from the rest of the class as a typical member is from its neighbour; 10: ten times as far.
Late in training a class's gradients collapse and its typical gap is tiny, so r spans orders
of magnitude (1 to 10^5 on digits); the logarithm keeps those apart in the score (r = 1 scores
1.41, r = 100 scores 1.82, r = 10^4 scores 1.90). A class with no other example gives r = inf
and score 2. Every other active example scores::

    score = 1 / cluster_size + 0.5 * d / (d + median_c(d))

with ``d`` its distance to its medoid and the median over its class (``d / (d + median)`` is 0
at the medoid, 1/2 at the median distance, below 1; taken as 1 when the median is 0 and ``d``
is not). So the order is: dropped examples in [1, 2], most isolated first, then every kept
example in (0, 1), smaller clusters and farther from their medoid first. The distances are
computed in row blocks of at most ``_BLOCK_ELEMENTS`` entries, for the dropped rows and the
sample only: never an n_c x n_c matrix.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from poisonlens.defense.base import ColourBy, DefenseResult, Snapshot, register
from poisonlens.defense.epic_config import EpicConfig
from poisonlens.defense.facility_location import Clustering, ClusterOptions, cluster
from poisonlens.defense.greedi import (
    Partition,
    partition_plan,
    picks_by_class,
    run_partitions,
    timed_merges,
)

__all__ = [
    "EpicConfig",
    "Epic",
    "Selection",
    "budgets",
    "finish_selection",
    "isolation",
    "plan",
    "select",
]

ISOLATION_SAMPLE = 1024  # class members whose nearest-neighbour distance sets a class's scale
MIN_SCALE = 1e-3  # floor of that scale (as poisonlens.drift's): gradient norms lie in [0, sqrt 2]
_BLOCK_ELEMENTS = 1 << 22  # distances held at once (32 MB of float64)


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
    isolation : float64, r of the module docstring for the examples of isolated clusters, NaN
        for every other example

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
    isolation: np.ndarray
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
        ``max_dense=20_000``, ``merge_sample=5_000``, ``n_jobs=1``, ``pool='active'``; see :class:`EpicConfig`
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
    pool = pooled(active, config)
    parts, k = plan(labels, active=pool, config=config, n_classes=grads.shape[1])
    picks = run_partitions(grads, parts, metric=config.metric, n_jobs=config.n_jobs)
    return only_active(finish_selection(grads, labels, parts, picks, active=pool, config=config), active)


def pooled(active: np.ndarray, config: EpicConfig) -> np.ndarray:
    """The examples a snapshot's selection clusters (``config.pool``).

    Parameters
    ----------
    active : bool array of shape (n_samples,), the examples still in training
    config : EpicConfig

    Returns
    -------
    bool array of shape (n_samples,): ``active`` itself, or all True for ``pool='all'`` (the
    authors' script clusters every example at every selection, the budget a fraction of all)
    """
    return np.ones_like(active) if config.pool == "all" else active


def only_active(chosen: Selection, active: np.ndarray) -> Selection:
    """``chosen`` with every inactive example given the inactive values (-1 / 0 / False / NaN).

    Under ``pool='all'`` dropped examples are clustered too; they shape the clusters and may be
    medoids, but a drop is for good, so none of them is decided on again.

    Parameters
    ----------
    chosen : Selection over the pooled examples
    active : bool array of shape (n_samples,)

    Returns
    -------
    Selection
    """
    if active.all():
        return chosen
    off = ~active
    return replace(
        chosen,
        medoid=np.where(off, -1, chosen.medoid), cluster_size=np.where(off, 0, chosen.cluster_size),
        is_medoid=chosen.is_medoid & active, isolated=chosen.isolated & active, drop=chosen.drop & active,
        score=np.where(off, np.nan, chosen.score), isolation=np.where(off, np.nan, chosen.isolation),
    )


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
    merged = timed_merges(grads, labels, active, picks_by_class(parts, picks), k, config=config)
    for c, (members, fit, seconds) in merged.items():
        out.record(c, members, fit, seconds, grads, config)
    # One kernel buffer for every exact class, sized for the largest that is held dense.
    dense_sizes = counts[(counts <= config.max_dense) & (counts > 0)]
    buffer = np.empty(int(dense_sizes.max(initial=0)) ** 2, dtype=np.float32)
    options = ClusterOptions(config.metric, config.greedy, config.epsilon, config.max_dense)
    for c in np.flatnonzero(counts):
        if int(c) in merged:
            continue
        start = time.perf_counter()
        members = np.flatnonzero(active & (labels == c))
        rng = np.random.default_rng([config.random_state, int(c)])
        fit = cluster(grads[members], int(k[c]), options, random_state=rng, buffer=buffer)
        out.record(c, members, fit, time.perf_counter() - start, grads, config)
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
        self.isolation = np.full(n_samples, np.nan)
        self.objective = np.zeros(n_classes)
        self.seconds = np.zeros(n_classes)

    def record(
        self,
        c: int,
        members: np.ndarray,
        fit: Clustering,
        seconds: float,
        grads: np.ndarray,
        config: EpicConfig,
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
        grads : ndarray of shape (n_samples, n_classes)
            Every example's gradient; the members' rows measure the isolation of the dropped ones.
        config : EpicConfig
            Its ``cluster_thresh``: clusters of at most this many examples (and at least one)
            are isolated and dropped; its ``random_state`` seeds the sample of the class's
            nearest-neighbour scale.
        """
        sizes = np.bincount(fit.assignment, minlength=len(fit.order))
        lonely = (sizes > 0) & (sizes <= config.cluster_thresh)
        self.medoid[members] = members[fit.order][fit.assignment]
        self.cluster_size[members] = sizes[fit.assignment]
        self.is_medoid[members[fit.order]] = True
        self.isolated[members[fit.order[lonely]]] = True
        self.drop[members] = lonely[fit.assignment]
        drop = lonely[fit.assignment]
        score = _suspicion(sizes[fit.assignment], fit.distance)
        if drop.any():
            rows = np.flatnonzero(drop)
            rng = np.random.default_rng([config.random_state, int(c), 1])
            r = isolation(grads[members], fit.assignment, rows, random_state=rng)
            self.isolation[members[rows]] = r
            log_r = np.log1p(r)
            with np.errstate(invalid="ignore"):
                score[rows] = 1.0 + np.where(np.isinf(r), 1.0, log_r / (1.0 + log_r))
        self.score[members] = score
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
            self.isolation,
            k,
            self.objective,
            self.seconds,
        )


def _suspicion(cluster_size: np.ndarray, distance: np.ndarray) -> np.ndarray:
    median = np.median(distance)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = np.where(distance > 0, distance / (distance + median), 0.0)
    return 1.0 / cluster_size + 0.5 * relative


def isolation(
    X: np.ndarray,
    groups: np.ndarray,
    rows: np.ndarray,
    *,
    sample: int = ISOLATION_SAMPLE,
    random_state: np.random.Generator | int | None = 0,
) -> np.ndarray:
    """How isolated some rows of one class are: distance to the rest over the class's typical gap.

    ``r_i = nn_out_i / max(median_j nn_j, MIN_SCALE)``, with ``nn_out_i`` the euclidean distance
    from ``X[i]`` to the nearest row of another group (cluster), and ``nn_j`` the distance from
    ``X[j]`` to its nearest other row, for ``j`` in a seeded sample of at most ``sample`` rows
    (all rows when there are fewer). Memory: blocks of ``_BLOCK_ELEMENTS`` distances.

    Parameters
    ----------
    X : float array of shape (n_members, n_features), one class's gradients
    groups : int array of shape (n_members,), each row's cluster
    rows : int array of shape (n_rows,), the rows to measure
    sample : rows measured for the class's scale
    random_state : seed or Generator for that sample

    Returns
    -------
    r : float64 array of shape (n_rows,); inf where every row is in the row's own group
    """
    X = np.asarray(X, dtype=np.float64)
    groups = np.asarray(groups)
    rows = np.asarray(rows, dtype=np.int64)
    n = len(X)
    if n < 2:
        return np.full(len(rows), np.inf)
    rng = np.random.default_rng(random_state)
    probe = np.arange(n) if n <= sample else np.sort(rng.choice(n, size=sample, replace=False))
    own = np.arange(n)
    scale = float(np.median(_nearest_outside(X, probe, own)))
    return _nearest_outside(X, rows, groups) / max(scale, MIN_SCALE)


def _nearest_outside(X: np.ndarray, rows: np.ndarray, groups: np.ndarray) -> np.ndarray:
    # Distance from each X[rows[i]] to the nearest X[j] with groups[j] != groups[rows[i]], in
    # blocks of rows; |a|^2 + |b|^2 - 2ab in float64 errs by ~1e-8 in distance, well below the
    # gaps being compared.
    sq = np.einsum("ij,ij->i", X, X)
    out = np.empty(len(rows))
    step = max(1, _BLOCK_ELEMENTS // len(X))
    for lo in range(0, len(rows), step):
        part = rows[lo : lo + step]
        d2 = sq[part, None] + sq[None, :] - 2.0 * (X[part] @ X.T)
        d2[groups[part][:, None] == groups[None, :]] = np.inf
        out[lo : lo + step] = np.sqrt(np.maximum(d2.min(axis=1), 0.0))
    return out


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
        "score": "suspicion, higher = more suspicious: for a dropped example 1 + L / (1 + L), L = "
        "log(1 + isolation) (in [1, 2]); for a kept one 1 / cluster_size + 0.5 d / (d + median d of "
        "the class), d the distance to its medoid (below 1)",
        "suspect": "bool, in an isolated medoid's cluster: dropped when the schedule drops",
        "medoid": "int, index of the example's medoid (itself for a medoid; -1 inactive)",
        "cluster_size": "int, examples in the example's cluster (0 inactive)",
        "is_medoid": "bool, chosen as a medoid by greedy facility location",
        "isolated": "bool, a medoid whose cluster has at most cluster_thresh examples",
        "isolation": "float, for a dropped example: distance to the nearest example of its class "
        "outside its cluster / the class's median nearest-neighbour distance (NaN if kept)",
    }
    colour_columns = {"cluster_size": ColourBy("cluster size", log=True)}
    options = EpicConfig  # its options' help, ranges and defaults
    spec_param = "subset_size"  # `epic-0.2` in a grid spec

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

    # The three methods below let poisonlens.shared_defense.run_defense spread GreeDi's first round over
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
        return plan(labels, active=pooled(active, self.config), config=self.config, n_classes=n_classes)[0]

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
        pool = pooled(active, self.config)
        chosen = finish_selection(grads, labels, parts, picks, active=pool, config=self.config)
        return _result(only_active(chosen, active), info)


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
            "isolation": chosen.isolation,
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
