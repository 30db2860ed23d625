"""Facility location on one class: similarity kernels, exact and stochastic greedy, assignment.

Pure array code, no training. The objective is submodlib's dense facility location, which
EPIC's reference code maximises::

    F(S) = sum_i max(0, max_{j in S} s_ij)

with, for rows ``x_i`` of the (n_samples, n_features) input:

- ``euclidean``: ``s_ij = exp(-||x_i - x_j||_2 / n_features)``, so ``s_ii = 1`` and s is in (0, 1];
- ``cosine``: ``s_ij = x_i . x_j / (||x_i|| ||x_j||)``, ``s_ii = 1``, and 0 where a norm is 0
  (clipped to [-1, 1] against rounding).

The kernel is float32, as submodlib's. Distances are summed from the raw differences, not
through ``|a|^2 + |b|^2 - 2ab`` (whose cancellation errs by ~1e-4 for near-duplicate rows), so
the kernel is exactly symmetric, exactly 1 between duplicates, and within ~1e-7 of the exact
value.

Every greedy variant scores a candidate ``j`` with the same arithmetic, :func:`gains`
(``sum_i max(0, s_ji - cur_i)`` accumulated in float64 in a fixed order), so "exact" has one
meaning here: :func:`lazy_greedy` returns the same sequence as plain greedy evaluated with
:func:`gains`, ties going to the lowest index. That holds bit for bit because each computed
gain can only shrink as ``cur`` grows (every rounding step is monotone), which is what lets
lazy greedy trust stale bounds.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from poisonlens.defense.epic_config import GREEDY, METRICS
from poisonlens.defense.kernels import (
    BLOCK_ROWS,
    check_budget,
    fill_rows,
    jit_exact,
    jit_fast,
    sift_down,
)

# Candidates re-scored at once by the chunked (row-on-demand) lazy greedy.
_CHUNK_EVAL = 64



# --------------------------------------------------------------------------- kernels


class Kernel:
    """One class's similarity kernel, computed by rows on demand.

    Parameters
    ----------
    X : array of shape (n_samples, n_features), read as float32 (as submodlib does)
    metric : {'euclidean', 'cosine'}
    """

    def __init__(self, X: np.ndarray, *, metric: str) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        Z = np.asarray(X, dtype=np.float32).astype(np.float64)
        norm = np.sqrt(np.einsum("ij,ij->i", Z, Z))
        if metric == "cosine":
            Z = np.divide(Z, norm[:, None], out=np.zeros_like(Z), where=norm[:, None] > 0)
            self_similarity = (norm > 0).astype(np.float32)
        else:
            self_similarity = np.ones(len(Z), dtype=np.float32)
        self.metric = metric
        self.Z = Z.astype(np.float32)  # unit rows for cosine
        self.self_similarity = self_similarity  # s_ii: 1, or 0 for a zero row under cosine
        self.Zt = np.ascontiguousarray(self.Z.T)  # Z.T, contiguous: what fill_rows scores rows against

    def __len__(self) -> int:
        return len(self.Z)

    def rows(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Kernel rows, written to ``out`` if given.

        Parameters
        ----------
        rows : int array of shape (n_rows,), row indices
        out : float32 array of shape (n_rows, n_samples), optional

        Returns
        -------
        S_rows : float32 array of shape (n_rows, n_samples)
        """
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if out is None:
            out = np.empty((len(rows), len(self)), dtype=np.float32)
        fill_rows(self.Z, self.Zt, rows, self.metric == "euclidean", out)
        if self.metric == "euclidean":
            np.exp(out, out=out)
        else:
            # In [-1, 1] and exactly s_ii on the diagonal, despite rounding.
            np.clip(out, -1.0, 1.0, out=out)
            out[np.arange(len(rows)), rows] = self.self_similarity[rows]
        return out

    def matrix(self, out: np.ndarray | None = None) -> np.ndarray:
        """The dense kernel: float32 array of shape (n_samples, n_samples), exactly symmetric.

        Computed in cache-sized row blocks into ``out`` if given (reused across classes).

        Parameters
        ----------
        out : float32 array of shape (n_samples, n_samples), optional

        Returns
        -------
        S : float32 array of shape (n_samples, n_samples)
        """
        n = len(self)
        if out is None:
            out = np.empty((n, n), dtype=np.float32)
        for start in range(0, n, BLOCK_ROWS):
            stop = min(n, start + BLOCK_ROWS)
            self.rows(np.arange(start, stop), out=out[start:stop])
        return out

    def distance(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The metric's distance between rows ``a[i]`` and ``b[i]``: float64 of shape (len(a),).

        ``euclidean``: ``||x_a - x_b||_2``; ``cosine``: ``1 - s_ab`` (0 from a row to itself).

        Parameters
        ----------
        a, b : int arrays of shape (n_pairs,), row indices

        Returns
        -------
        distance : float64 array of shape (n_pairs,)
        """
        za, zb = self.Z[a].astype(np.float64), self.Z[b].astype(np.float64)
        if self.metric == "euclidean":
            return np.sqrt(np.sum((za - zb) ** 2, axis=1))
        cos = np.einsum("ij,ij->i", za, zb)
        return np.where(np.asarray(a) == np.asarray(b), 0.0, 1.0 - cos)


# --------------------------------------------------------------------------- gains


@jit_fast
def _gain(row, cur):  # pragma: no cover - compiled
    acc = 0.0
    for i in range(row.shape[0]):
        # Rounding is monotone, so each term, and the sum in its fixed order, can only shrink
        # as cur grows: the property lazy greedy relies on.
        v = np.float64(row[i]) - np.float64(cur[i])
        if v > 0.0:
            acc += v
    return acc


@jit_fast
def _gains(S, cur, candidates, out):  # pragma: no cover - compiled
    for r in range(candidates.shape[0]):
        out[r] = _gain(S[candidates[r]], cur)


def gains(S: np.ndarray, cur: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Marginal gains ``sum_i max(0, S[j, i] - cur[i])`` of the candidate rows ``j``.

    The one arithmetic every greedy here uses (see the module docstring).

    Parameters
    ----------
    S : float32 array of shape (n_rows, n_samples), kernel rows
    cur : float32 array of shape (n_samples,), each example's similarity to the chosen set
        (0 for the empty set)
    candidates : int array of shape (n_candidates,), indices into the rows of ``S``

    Returns
    -------
    gains : float64 array of shape (n_candidates,)
    """
    candidates = np.ascontiguousarray(candidates, dtype=np.int64)
    out = np.empty(len(candidates), dtype=np.float64)
    _gains(S, np.ascontiguousarray(cur, dtype=np.float32), candidates, out)
    return out


# --------------------------------------------------------------------------- greedy


@dataclass(frozen=True, eq=False)
class Greedy:
    """A greedy run on one class.

    Attributes
    ----------
    order : int64 (k,), chosen examples (class-local indices) in the order chosen
    gains : float64 (k,), the marginal gain of each when chosen
    cover : float32 (n_samples,), ``max(0, max_{j in order} s_ij)`` per example
    """

    order: np.ndarray
    gains: np.ndarray
    cover: np.ndarray

    @property
    def objective(self) -> float:
        """F(order), summed in float64."""
        return float(self.cover.sum(dtype=np.float64))


@jit_fast
def _lazy_greedy(S, k):  # pragma: no cover - compiled
    # A binary max-heap of (upper bound, -index). The top is taken only once its bound was
    # computed against the current cover; otherwise it is re-scored and sifted down.
    n = S.shape[0]
    cur = np.zeros(n, np.float32)
    keys = np.empty(n, np.float64)
    idx = np.arange(n)
    fresh_at = np.zeros(n, np.int64)  # the step a bound was computed at
    for j in range(n):
        keys[j] = _gain(S[j], cur)
    size = n
    for pos in range(n // 2 - 1, -1, -1):
        sift_down(keys, idx, pos, size)
    order = np.empty(k, np.int64)
    chosen_gains = np.empty(k, np.float64)
    for t in range(k):
        while fresh_at[idx[0]] != t:
            keys[0] = _gain(S[idx[0]], cur)
            fresh_at[idx[0]] = t
            sift_down(keys, idx, 0, size)
        j = idx[0]
        order[t], chosen_gains[t] = j, keys[0]
        size -= 1
        if size > 0:
            keys[0], idx[0] = keys[size], idx[size]
            sift_down(keys, idx, 0, size)
        row = S[j]
        for i in range(n):
            if row[i] > cur[i]:
                cur[i] = row[i]
    return order, chosen_gains, cur


def lazy_greedy(S: np.ndarray, k: int) -> Greedy:
    """Exact greedy maximisation of F with lazy (stale upper bound) evaluations.

    Parameters
    ----------
    S : float32 array of shape (n_samples, n_samples), a symmetric kernel
    k : number to choose, 0 <= k <= n_samples

    Returns
    -------
    Greedy; ``order`` equals plain greedy under :func:`gains`, ties to the lowest index.
    """
    check_budget(k, len(S))
    order, chosen_gains, cur = _lazy_greedy(np.ascontiguousarray(S, dtype=np.float32), int(k))
    return Greedy(order, chosen_gains, cur)


def _sample_size(n: int, k: int, epsilon: float) -> int:
    # Mirzasoleiman et al. (2015): (n / k) log(1 / epsilon) random candidates per step.
    return max(1, math.ceil(n / k * math.log(1.0 / epsilon)))


@jit_exact
def _shuffle_front(left, m, u):  # pragma: no cover - compiled
    # Fisher-Yates on the first len(u) of left[:m]: afterwards they are a uniform sample.
    for q in range(u.shape[0]):
        p = min(q + int(u[q] * (m - q)), m - 1)
        left[q], left[p] = left[p], left[q]


def _stochastic(
    score: Callable[[np.ndarray, np.ndarray], np.ndarray],
    row: Callable[[int], np.ndarray],
    n: int,
    k: int,
    epsilon: float,
    rng: np.random.Generator,
) -> Greedy:
    # Partial Fisher-Yates over the candidates left: each step scores a uniform sample of
    # them without replacement and takes the best (ties to the lowest index).
    left = np.arange(n)
    cur = np.zeros(n, dtype=np.float32)
    order = np.empty(k, dtype=np.int64)
    chosen_gains = np.empty(k, dtype=np.float64)
    size = _sample_size(n, k, epsilon) if k else 0
    for t in range(k):
        m = n - t
        s = min(size, m)
        _shuffle_front(left, m, rng.random(s))
        sample = left[:s]
        g = score(sample, cur)
        best = np.flatnonzero(g == g.max())
        q = best[np.argmin(sample[best])]
        j = int(sample[q])
        order[t], chosen_gains[t] = j, g[q]
        left[q], left[m - 1] = left[m - 1], left[q]
        np.maximum(cur, row(j), out=cur)
    return Greedy(order, chosen_gains, cur)


def stochastic_greedy(
    S: np.ndarray, k: int, *, epsilon: float = 0.01, random_state: int | np.random.Generator = 0
) -> Greedy:
    """Stochastic greedy (Mirzasoleiman et al., 2015) on a dense kernel.

    Each step scores ``ceil(n / k * log(1 / epsilon))`` candidates drawn without replacement
    from those not yet chosen; F reaches (1 - 1/e - epsilon) OPT in expectation.

    Parameters
    ----------
    S : float32 array of shape (n_samples, n_samples)
    k : number to choose, 0 <= k <= n_samples
    epsilon : float in (0, 1)
    random_state : seed or Generator

    Returns
    -------
    Greedy, with ``order`` of shape (k,)
    """
    check_budget(k, len(S))
    S = np.ascontiguousarray(S, dtype=np.float32)
    return _stochastic(
        lambda cand, cur: gains(S, cur, cand),
        lambda j: S[j],
        len(S),
        int(k),
        epsilon,
        np.random.default_rng(random_state),
    )


def _lazy_greedy_chunked(kernel: Kernel, k: int) -> Greedy:
    # The same exact lazy greedy, with kernel rows computed when they are scored instead of
    # read from an n x n matrix: memory O(block * n), time ~ (number of re-scorings) * n * d.
    n = len(kernel)
    cur = np.zeros(n, dtype=np.float32)
    keys = np.empty(n, dtype=np.float64)
    for start in range(0, n, BLOCK_ROWS):
        rows = np.arange(start, min(n, start + BLOCK_ROWS))
        keys[rows] = gains(kernel.rows(rows), cur, np.arange(len(rows)))
    heap = [(-keys[j], j) for j in range(n)]  # tuples order ties by the lower index
    heapq.heapify(heap)
    fresh_at = np.zeros(n, dtype=np.int64)
    order = np.empty(k, dtype=np.int64)
    chosen_gains = np.empty(k, dtype=np.float64)
    for t in range(k):
        while fresh_at[heap[0][1]] != t:
            stale = []
            while heap and fresh_at[heap[0][1]] != t and len(stale) < _CHUNK_EVAL:
                stale.append(heapq.heappop(heap)[1])
            stale = np.asarray(stale)
            fresh_at[stale] = t
            fresh = gains(kernel.rows(stale), cur, np.arange(len(stale)))
            for j, g in zip(stale.tolist(), fresh.tolist(), strict=True):
                heapq.heappush(heap, (-g, j))
        neg_gain, j = heapq.heappop(heap)
        order[t], chosen_gains[t] = j, -neg_gain
        np.maximum(cur, kernel.rows(np.array([j]))[0], out=cur)
    return Greedy(order, chosen_gains, cur)


# --------------------------------------------------------------------------- assignment


@jit_fast
def _assign_rows(S, rows, first, best, position):  # pragma: no cover - compiled
    # Strictly greater: on ties an example stays with the medoid chosen earliest.
    for r in range(rows.shape[0]):
        row = S[rows[r]]
        for i in range(row.shape[0]):
            if row[i] > best[i]:
                best[i] = row[i]
                position[i] = first + r


@dataclass(frozen=True, eq=False)
class Clustering:
    """Facility location on one class: medoids and the cluster of every example.

    Attributes
    ----------
    order : int64 (k,), medoids (class-local indices) in the order greedy chose them
    gains : float64 (k,), each medoid's marginal gain when chosen
    objective : F(order) in float64
    assignment : int64 (n_samples,), position in ``order`` of each example's medoid
    similarity : float32 (n_samples,), each example's similarity to its medoid
    distance : float64 (n_samples,), the metric's distance to its medoid (see Kernel.distance)
    dense : whether the n x n kernel was held in memory (else rows were computed on demand)
    """

    order: np.ndarray
    gains: np.ndarray
    objective: float
    assignment: np.ndarray
    similarity: np.ndarray
    distance: np.ndarray
    dense: bool


@dataclass(frozen=True)
class ClusterOptions:
    """How :func:`cluster` chooses medoids: the similarity, the greedy and the kernel's memory.

    Attributes
    ----------
    metric : {'euclidean', 'cosine'}, the similarity (see the module docstring)
    greedy : {'lazy', 'stochastic'}; 'lazy' is exact greedy, 'stochastic' scores a random
        sample of candidates each step
    epsilon : stochastic greedy's epsilon, in (0, 1)
    max_dense : largest n_samples whose n x n float32 kernel is held in memory; larger classes
        compute kernel rows on demand (same decisions, slower)
    """

    metric: str = "euclidean"
    greedy: str = "lazy"
    epsilon: float = 0.01
    max_dense: int = 20_000


def cluster(
    X: np.ndarray,
    k: int,
    options: ClusterOptions = ClusterOptions(),
    *,
    random_state: int | np.random.Generator = 0,
    buffer: np.ndarray | None = None,
) -> Clustering:
    """Choose ``k`` medoids of one class by greedy facility location and assign every example.

    Every example, medoids included, joins its most similar medoid, ties going to the medoid
    chosen first (as EPIC's reference code does). A medoid is most similar to itself, so it
    stays in its own cluster unless an earlier medoid equals it to float32 precision; such a
    redundant medoid (chosen only once gains are ~0) has an empty cluster.

    Parameters
    ----------
    X : array of shape (n_samples, n_features)
        One class's gradients.
    k : int
        Number of medoids, 0 <= k <= n_samples.
    options : ClusterOptions
        The metric, the greedy variant and its epsilon, and the largest dense kernel.
    random_state : int or Generator
        Seed of stochastic greedy's samples (lazy greedy draws nothing).
    buffer : float32 ndarray, optional
        Reused to hold the dense kernel when it has at least n_samples**2 elements (a caller
        clustering many classes allocates it once).

    Returns
    -------
    Clustering, with ``order`` of shape (k,) and per-example arrays of shape (n_samples,)
    """
    if options.greedy not in GREEDY:
        raise ValueError(f"greedy must be one of {GREEDY}, got {options.greedy!r}")
    kernel = Kernel(X, metric=options.metric)
    n = len(kernel)
    check_budget(k, n)
    S = None
    if n <= options.max_dense:
        out = buffer[: n * n].reshape(n, n) if buffer is not None and buffer.size >= n * n else None
        S = kernel.matrix(out=out)
    run = _greedy(kernel, S, k, options, random_state)
    assignment, best = _assign(kernel, S, run.order)
    distance = kernel.distance(np.arange(n), run.order[assignment]) if k else np.full(n, np.nan)
    return Clustering(
        run.order, run.gains, run.objective, assignment, best, distance, S is not None
    )


def _greedy(kernel: Kernel, S: np.ndarray | None, k: int, options: ClusterOptions,
            random_state: int | np.random.Generator) -> Greedy:
    # The greedy options.greedy names, on the dense kernel S when held, else on kernel rows.
    if S is not None and options.greedy == "lazy":
        return lazy_greedy(S, k)
    if S is not None:
        return stochastic_greedy(S, k, epsilon=options.epsilon, random_state=random_state)
    if options.greedy == "lazy":
        return _lazy_greedy_chunked(kernel, k)
    return _stochastic(
        lambda cand, cur: gains(kernel.rows(cand), cur, np.arange(len(cand))),
        lambda j: kernel.rows(np.array([j]))[0],
        len(kernel),
        k,
        options.epsilon,
        np.random.default_rng(random_state),
    )


def _assign(kernel: Kernel, S: np.ndarray | None, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # Each example's position in ``order`` of its most similar medoid, and that similarity;
    # from the dense kernel S when held, else from kernel rows a block of medoids at a time.
    n = len(kernel)
    best = np.full(n, -np.inf, dtype=np.float32)
    assignment = np.full(n, -1, dtype=np.int64)
    for start in range(0, len(order), BLOCK_ROWS):
        medoids = order[start : start + BLOCK_ROWS]
        if S is not None:
            _assign_rows(S, medoids, start, best, assignment)
        else:
            _assign_rows(kernel.rows(medoids), np.arange(len(medoids)), start, best, assignment)
    return assignment, best
