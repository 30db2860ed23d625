"""GreeDi (Mirzasoleiman et al., NeurIPS 2013): facility location on classes too big for one kernel.

Exact greedy facility location holds (or recomputes) an n_c x n_c kernel per class, which at
100,000 examples a class is 40 GB. GreeDi splits the work in two rounds:

1. :func:`partition_plan` splits each class's active examples into seeded random partitions of
   at most ``partition_size``; :func:`greedy_on_partition` runs the exact lazy greedy of
   :mod:`poisonlens.defense.facility_location` on one partition's dense kernel, choosing
   ``ceil(OVERSAMPLE * K_c * |P| / n_c)`` examples (``OVERSAMPLE`` times its share of the
   class's budget, so the second round has a choice to make).
2. :func:`merge_picks` runs exact lazy greedy again with the union of a class's picks as the
   candidates, maximising F over the whole class, or, when the class has more than
   ``merge_sample`` examples besides the candidates, over every candidate plus a seeded
   weighted sample of the others (a stratified estimate of F; a plain sample loses the
   outliers EPIC isolates). The kernel rows candidate x evaluated examples are computed when
   scored, never held as a matrix. Every example of the class then joins its most similar
   final medoid (ties to the medoid chosen first, as in the exact path; :func:`assign` when
   F was sampled), so cluster sizes and isolation are decided against the whole class in
   O(n_c) memory.

Round 1 is embarrassingly parallel: :func:`run_partitions` runs the partitions in a thread
pool (the compiled kernels release the GIL). Under torch DDP rank ``r`` runs the partitions
``i % world_size == r`` of the same plan (it depends only on the labels, the active mask and
the seed), the picks are gathered, and rank 0 merges and decides (see
:func:`poisonlens.defense.epic.plan` and :func:`poisonlens.defense.epic.finish_selection`)::

    parts, _ = plan(labels, active=active, config=config, n_classes=n_classes)
    mine = {i: greedy_on_partition(grads, parts[i]) for i in range(rank, len(parts), world)}
    # ... gather the dicts on rank 0, then, there:
    selection = finish_selection(grads, labels, parts, picks, active=active, config=config)

With one partition per class the decisions are exact greedy's (the first K of a longer
greedy run are the K-step run, and the merge re-scores the same kernel to a float32 ulp).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from poisonlens.defense.epic_config import EpicConfig
from poisonlens.defense.facility_location import Clustering, Kernel, gains, lazy_greedy
from poisonlens.defense.kernels import (
    BLOCK_ROWS,
    check_budget,
    dot_products,
    fill_rows,
    jit_exact,
    jit_fast,
    sift_down,
    squared_distances,
)

# Each partition chooses three times its share of the class's budget. Measured at 50,000 x 10
# classes, subset 0.1, partitions of 1,000 and 2,500 (bench/select.py), the isolated set's
# Jaccard with exact greedy is 0.35-0.49 with 1 (the union is about K_c, the merge can only
# reorder it), 0.89-0.93 with 2, 0.97-0.98 with 3 and 0.99 with 4; each step costs one more
# K_c x n_c of kernel rows in the merge.
OVERSAMPLE = 3.0


@dataclass(frozen=True, eq=False)
class Partition:
    """One partition of one class: the unit of work of GreeDi's first round.

    Attributes
    ----------
    label : the class
    index : int64 array of shape (n_part,), global row indices, ascending
    budget : number of examples greedy chooses in it, 1 <= budget <= n_part
    """

    label: int
    index: np.ndarray
    budget: int


def partition_plan(
    labels: np.ndarray,
    k: np.ndarray,
    *,
    active: np.ndarray | None = None,
    partition_size: int = 10_000,
    random_state: int = 0,
) -> list[Partition]:
    """Split each class's active examples into random partitions of at most ``partition_size``.

    Class c's n_c active examples are shuffled with the seed ``[random_state, c]`` and cut into
    ``ceil(n_c / partition_size)`` parts whose sizes differ by at most one. Every rank of a
    distributed run computes the same plan from the same inputs, without communicating.

    Parameters
    ----------
    labels : int array of shape (n_samples,)
    k : int array of shape (n_classes,), the class budgets K_c (see :func:`epic.budgets`)
    active : bool array of shape (n_samples,), the examples taking part (default: all)
    partition_size : int >= 1, the largest partition
    random_state : non-negative int

    Returns
    -------
    plan : list of Partition, classes in ascending order, each class's parts consecutive;
        every active example of a class with K_c > 0 is in exactly one part
    """
    labels = np.asarray(labels, dtype=np.int64)
    if active is None:
        active = np.ones(len(labels), dtype=bool)
    if partition_size < 1:
        raise ValueError(f"partition_size must be >= 1, got {partition_size!r}")
    plan = []
    for c in np.flatnonzero(np.asarray(k) > 0):
        members = np.flatnonzero(active & (labels == c))
        n_c = len(members)
        n_parts = max(1, -(-n_c // partition_size))
        if n_parts > 1:
            members = np.random.default_rng([random_state, int(c)]).permutation(members)
        for part in np.array_split(members, n_parts):
            share = OVERSAMPLE * int(k[c]) * len(part) / n_c
            budget = min(len(part), max(1, math.ceil(share)))
            plan.append(Partition(int(c), np.sort(part), int(budget)))
    return plan


def greedy_on_partition(
    grads: np.ndarray, part: Partition, *, metric: str = "euclidean"
) -> np.ndarray:
    """GreeDi's first round on one partition: exact lazy greedy on its dense kernel.

    Parameters
    ----------
    grads : float array of shape (n_samples, n_classes), the whole snapshot (read as float32)
    part : Partition from :func:`partition_plan`
    metric : {'euclidean', 'cosine'}

    Returns
    -------
    picks : int64 array of shape (part.budget,), global indices in the order chosen
    """
    kernel = Kernel(np.asarray(grads)[part.index], metric=metric)
    run = lazy_greedy(kernel.matrix(), part.budget)
    return part.index[run.order]


# Rows of the merge are cached sparsely once at most 1/SPARSE_DIV of their entries can still
# add gain; the cache holds at most this many (index, similarity) pairs per class (8 bytes
# each, so 384 MB per merging thread at most). Measured on one class of the 1,000,000 x 10
# input (100,000 examples, K_c = 10,000, bench/results/select.md): n/64 and 16M pairs 8.5 CPU-s
# in the lazy greedy, n/16 and 32M 7.5, n/8 and 40-96M 5.9-6.7, n/4 and 64M 7.1.
_POOL_ENTRIES = 48_000_000
SPARSE_DIV = 8
# Merge steps run as plain greedy over every candidate before the compiled lazy greedy.
BATCH_STEPS = 2


_CHUNK = 2048  # examples per pass of _eval_row: 8 KB of squared distances stay in L1


# exp(x) on [_EXP_LOW, 0] as its Taylor polynomial of degree 9 in float64 (truncation error below
# 1e-11 relative, far under a float32 ulp), so that the loop vectorises; the float32 result is
# the correctly rounded exp(x) but for double rounding (8 in 5,000,000 measured, 1 ulp;
# numba's libm exp misses by 1 ulp about 1 in 1,300, numpy's SIMD exp on 45% of entries).
_EXP_LOW = -0.35
_EXP_COEF = tuple(1.0 / math.factorial(p) for p in range(10))


@jit_exact
def _poly_exp(x):  # pragma: no cover - compiled
    # exp(x) for x in [_EXP_LOW, 0]: Horner on the Taylor coefficients, in float64.
    c0, c1, c2, c3, c4, c5, c6, c7, c8, c9 = _EXP_COEF
    p = c9
    p = p * x + c8
    p = p * x + c7
    p = p * x + c6
    p = p * x + c5
    p = p * x + c4
    p = p * x + c3
    p = p * x + c2
    p = p * x + c1
    return p * x + c0


@jit_exact
def _far_d2(scale):  # pragma: no cover - compiled
    # Squared distances past which -sqrt(d2) / d < _EXP_LOW: redone with libm's exp.
    return np.float32(_EXP_LOW / scale) ** 2


@jit_exact
def _exp_of_distances(d2, scale, out):  # pragma: no cover - compiled
    # out[e] = float32(exp(float32(sqrt(d2[e])) * scale)), what Kernel.rows computes, over
    # contiguous memory so that the polynomial vectorises; arguments below _EXP_LOW (far
    # examples, few features) are redone with libm's exp. _exp_of_distance is the same, one
    # at a time, bit for bit.
    for e in range(d2.shape[0]):
        out[e] = np.float32(_poly_exp(np.float64(np.float32(math.sqrt(d2[e])) * scale)))
    far = _far_d2(scale)
    for e in range(d2.shape[0]):
        if d2[e] > far:
            out[e] = np.float32(math.exp(np.float32(math.sqrt(d2[e])) * scale))


@jit_exact
def _exp_of_distance(d2, scale):  # pragma: no cover - compiled
    # One entry of _exp_of_distances, for loops that take exp rarely (the assignment).
    if d2 > _far_d2(scale):
        return np.float32(math.exp(np.float32(math.sqrt(d2)) * scale))
    return np.float32(_poly_exp(np.float64(np.float32(math.sqrt(d2)) * scale)))


@jit_exact
def _eval_row(Z, Zt, j, col, euclidean, self_sim, cur, rad2, w, acc, live, vals):  # pragma: no cover
    # Row j of the kernel (Z's row j against Zt's columns; Zt's column col is the same example,
    # -1 if none). Returns its gain sum_i w_i max(0, s_ji - cur_i) (ascending i, float64), how
    # many entries add to it, and m: live[:m] are the columns (ascending) where s_ji may exceed
    # the cover, acc[i] = s_ji there (acc elsewhere is scratch). s_ji is computed as
    # Kernel.rows does (float32); under euclidean only for the examples closer than rad2
    # (squared), past which s_ji cannot exceed cur_i: exp costs more than the distance, and
    # late in the greedy almost every example is already covered better. The columns are
    # taken in chunks that stay in L1, and the live ones are gathered without a branch (the
    # test is a coin flip early in the greedy, where a branch mispredicts half the time).
    d, n = Zt.shape
    scale = np.float32(-1.0 / d)
    m = 0
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        if euclidean:
            squared_distances(Z[j], Zt, lo, hi, acc[lo:hi])
        else:
            a = acc[lo:hi]
            a[:] = 0.0
            for f in range(d):
                zj = Z[j, f]
                z = Zt[f, lo:hi]
                for i in range(hi - lo):
                    a[i] += z[i] * zj
        if euclidean:
            for i in range(lo, hi):
                live[m] = i
                m += 1 if acc[i] < rad2[i] else 0
        else:
            for i in range(lo, hi):
                live[m] = i
                m += 1
    if euclidean:
        d2 = vals[n:]  # vals holds 2 n: the live squared distances, then their similarities
        for e in range(m):
            d2[e] = acc[live[e]]
        _exp_of_distances(d2[:m], scale, vals[:m])
    g = 0.0
    count = 0
    for e in range(m):
        i = live[e]
        if euclidean:
            s = vals[e]
        elif i == col:
            s = self_sim[j]
        else:
            s = min(max(acc[i], np.float32(-1.0)), np.float32(1.0))
        acc[i] = s
        v = np.float64(s) - np.float64(cur[i])
        if v > 0.0:
            g += v * w[i]  # w_i is 1.0 (exact) unless the class is sampled
            count += 1
    return g, count, m


@jit_fast
def _weighted_gains(S, cur, weight, out):  # pragma: no cover - compiled
    # sum_i w_i max(0, S[r, i] - cur_i) per row. Only sampled merges use it, whose gains are
    # estimates anyway: the sum may be reassociated (vectorised), 4-8x faster than in order.
    for r in range(S.shape[0]):
        g = 0.0
        for i in range(S.shape[1]):
            v = np.float64(S[r, i]) - np.float64(cur[i])
            if v > 0.0:
                g += v * weight[i]
        out[r] = g


@jit_fast
def _sum_weighted_excess(vals, cur, weight):  # pragma: no cover - compiled
    # sum_i w_i max(0, vals[i] - cur[i]), reassociated (vectorised): as _weighted_gains.
    g = 0.0
    for i in range(vals.shape[0]):
        v = np.float64(vals[i]) - np.float64(cur[i])
        if v > 0.0:
            g += v * weight[i]
    return g


@jit_exact
def _add_excess(vals, cur_j, w_j, out):  # pragma: no cover - compiled
    # out[i] += w_j max(0, vals[i] - cur_j): the pairs of one row, credited to their columns.
    for i in range(vals.shape[0]):
        v = np.float64(vals[i]) - cur_j
        if v > 0.0:
            out[i] += v * w_j


@jit_exact
def _chunk_similarities(z, Zt, lo, hi, scale, acc, vals):  # pragma: no cover - compiled
    # The euclidean kernel entries of z against Zt's columns lo..hi-1, into vals[: hi - lo]
    # (acc is scratch for the squared distances); returns that slice.
    a = acc[: hi - lo]
    squared_distances(z, Zt, lo, hi, a)
    v = vals[: hi - lo]
    _exp_of_distances(a, scale, v)
    return v


@jit_exact
def _candidate_scores(Zc, wc, cc, Zr, wr, cr, out):  # pragma: no cover - compiled
    # Estimated gains sum_i w_i max(0, s_ji - cur_i), euclidean, of every candidate j over the
    # evaluated examples: the candidates themselves (features Zc, weights wc, covers cc) and
    # the others (Zr, wr, cr). Chunk by chunk in L1, with the vectorised exp, never writing a
    # row out. Candidate x candidate is symmetric (the squared differences are the same bit
    # for bit either way round), so each pair is computed once, from the upper triangle, and
    # credited to both rows: 3/5 of the pairs at 3 K_c candidates and 5,000 others.
    d, m = Zc.shape
    r = Zr.shape[1]
    scale = np.float32(-1.0 / d)
    acc = np.empty(_CHUNK, np.float32)
    vals = np.empty(_CHUNK, np.float32)
    out[:] = 0.0
    for j in range(m):
        g = 0.0
        for lo in range(j, m, _CHUNK):
            hi = min(m, lo + _CHUNK)
            v = _chunk_similarities(Zc[:, j], Zc, lo, hi, scale, acc, vals)
            g += _sum_weighted_excess(v, cc[lo:hi], wc[lo:hi])
            first = 1 if lo == j else 0  # the diagonal counts once, in its row
            _add_excess(v[first:], np.float64(cc[j]), wc[j], out[lo + first : hi])
        for lo in range(0, r, _CHUNK):
            hi = min(r, lo + _CHUNK)
            v = _chunk_similarities(Zc[:, j], Zr, lo, hi, scale, acc, vals)
            g += _sum_weighted_excess(v, cr[lo:hi], wr[lo:hi])
        out[j] += g


@jit_exact
def _radius2(v, d):  # pragma: no cover - compiled
    # Squared distance beyond which exp(-distance / d) cannot round above v, with slack for
    # float32 rounding (a larger radius only costs time, never a wrong gain).
    if v <= 0.0:
        return np.float32(np.inf)
    lo = np.float64(v) * (1.0 - 1e-6)
    r = -d * math.log(lo) * 1.0001 + 1e-6
    return np.float32(r * r)


@jit_exact
def _compact(start, length, pidx, pval):  # pragma: no cover - compiled
    # Move the live lists to the front of the pool, in offset order; return the new end.
    order = np.argsort(start)
    end = 0
    for q in order:
        if start[q] < 0:
            continue
        s0 = start[q]
        for e in range(length[q]):
            pidx[end + e] = pidx[s0 + e]
            pval[end + e] = pval[s0 + e]
        start[q] = end
        end += length[q]
    return end


@jit_exact
def _cover(values, rows, state, t, d):  # pragma: no cover - compiled
    # The medoid chosen at step t has similarity values[e] to example rows[e] (-1 where it
    # cannot beat the cover): raise the cover (and its distance radius), and move the example
    # to this medoid where it is strictly more similar (ties stay with the earlier medoid).
    _, _, cur, best, position, rad2, _, euclidean = state
    for e in range(rows.shape[0]):
        i = rows[e]
        v = values[e]
        if v > cur[i]:
            cur[i] = v
            if euclidean:
                rad2[i] = _radius2(v, d)
        if v > best[i]:
            best[i] = v
            position[i] = t


@jit_exact
def _merge_greedy(Z, Zt, col, weight, cand, keys, state, t0, pool_entries, sparse_max):  # noqa: E501
    # Exact lazy greedy over the candidate rows from step t0 on, F summed over every column of
    # Zt (col[j]: Zt's column of Z's row j, -1 if none); keys are upper bounds computed at step t0 - 1. A candidate's row is computed in full
    # while many of its entries exceed the cover; once at most sparse_max do, those entries
    # are cached (cover only grows, so the others can never add gain again) and later
    # re-scorings read the short list instead of recomputing the row. Gains are summed in
    # ascending example order whichever way the row is read.
    order, chosen_gains, cur, best, position, rad2, self_sim, euclidean = state
    k = order.shape[0]
    n = Zt.shape[1]
    m = cand.shape[0]
    d = Z.shape[1]
    acc = np.empty(n, np.float32)
    live = np.empty(n, np.int64)
    vals = np.empty(2 * n, np.float32)
    pidx = np.empty(pool_entries, np.int32)
    pval = np.empty(pool_entries, np.float32)
    start = np.full(m, -1, np.int64)
    length = np.zeros(m, np.int64)
    end = 0
    garbage = 0  # pool entries no list holds any more (shrunk or chosen)
    idx = np.arange(m)
    fresh_at = np.full(m, t0 - 1, np.int64)
    size = m
    for pos in range(m // 2 - 1, -1, -1):
        sift_down(keys, idx, pos, size)
    for t in range(t0, k):
        while fresh_at[idx[0]] != t:
            q = idx[0]
            g = 0.0
            if start[q] >= 0:
                w = start[q]
                for e in range(start[q], start[q] + length[q]):
                    i = pidx[e]
                    v = np.float64(pval[e]) - np.float64(cur[i])
                    if v > 0.0:
                        g += v * weight[i]
                        pidx[w] = i
                        pval[w] = pval[e]
                        w += 1
                garbage += start[q] + length[q] - w
                length[q] = w - start[q]
            else:
                j = cand[q]
                g, count, m_live = _eval_row(
                    Z, Zt, j, col[j], euclidean, self_sim, cur, rad2, weight, acc, live, vals
                )
                if count <= sparse_max:
                    # compact only when a quarter of the pool is garbage: a full pool of
                    # live lists would otherwise be compacted for every row that does not fit
                    if end + count > pool_entries and 4 * garbage >= pool_entries:
                        end = _compact(start, length, pidx, pval)
                        garbage = 0
                    if end + count <= pool_entries:
                        start[q] = end
                        for e in range(m_live):
                            i = live[e]
                            if acc[i] > cur[i]:
                                pidx[end] = i
                                pval[end] = acc[i]
                                end += 1
                        length[q] = count
            keys[0] = g
            fresh_at[q] = t
            sift_down(keys, idx, 0, size)
        q = idx[0]
        order[t], chosen_gains[t] = cand[q], keys[0]
        size -= 1
        if size > 0:
            keys[0], idx[0] = keys[size], idx[size]
            sift_down(keys, idx, 0, size)
        # Cover and most similar medoid. A cached list holds every entry above the cover,
        # which is every entry that changes anything once the best similarity is the cover:
        # always under euclidean (s > 0) after the first medoid; cosine recomputes the row.
        if start[q] >= 0 and euclidean and t > 0:
            _cover(
                pval[start[q] : start[q] + length[q]],
                pidx[start[q] : start[q] + length[q]],
                state,
                t,
                d,
            )
        else:
            j = cand[q]
            _, _, m_live = _eval_row(Z, Zt, j, col[j], euclidean, self_sim, cur, rad2, weight, acc, live, vals)
            _cover(acc[live[:m_live]], live[:m_live], state, t, d)
        if start[q] >= 0:
            garbage += length[q]
        start[q] = -1  # chosen: its list is garbage now


@jit_exact
def _assign_block(Mt, X, medoid, col_base, euclidean, self_sim, best_acc, best, position):  # noqa: E501 pragma: no cover
    # Medoids Mt[:, b] (chosen at position col_base + b, class row medoid[b]) against every
    # row of X: move an example to a medoid only where it is strictly more similar than its
    # medoid so far, so ties stay with the medoid chosen first, as in the greedy's cover.
    # Distances are summed as _eval_row sums them (same operands, same order, no fast math)
    # and exp is the same function, so the similarities agree with the greedy's bit for bit. exp is taken only where the
    # squared distance beats the best one so far, which late in the block is almost never.
    d, b = Mt.shape
    acc = np.empty(b, np.float32)
    scale = np.float32(-1.0 / d)
    for i in range(X.shape[0]):
        if euclidean:
            squared_distances(X[i], Mt, 0, b, acc)
        else:
            dot_products(X[i], Mt, 0, b, acc)
        if euclidean:
            if _block_min(acc) >= best_acc[i]:
                continue
            for e in range(b):
                if acc[e] < best_acc[i]:
                    s = _exp_of_distance(acc[e], scale)
                    if s > best[i]:
                        best[i] = s
                        best_acc[i] = acc[e]
                        position[i] = col_base + e
        else:
            for e in range(b):
                if medoid[e] == i:
                    s = self_sim[i]
                else:
                    s = min(max(acc[e], np.float32(-1.0)), np.float32(1.0))
                if s > best[i]:
                    best[i] = s
                    position[i] = col_base + e


@jit_fast
def _block_min(acc):  # pragma: no cover - compiled
    # The minimum does not depend on the order it is taken in, so it may be vectorised.
    low = np.float32(np.inf)
    for e in range(acc.shape[0]):
        low = min(low, acc[e])
    return low


# Medoids compared with every example per pass of the assignment: 256 x 10 float32 is 10 KB,
# which stays in L1 while every example streams past it.
_ASSIGN_BLOCK = 256


def assign(kernel: Kernel, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each example's most similar medoid, ties to the medoid chosen first: O(n k d) time.

    Memory is O(n); the work is n * k distances of n_features floats, vectorised over a block
    of medoids, with exp taken only where an example finds a closer medoid.

    Parameters
    ----------
    kernel : Kernel of the class
    order : int array of shape (k,), medoids (class-local indices) in the order chosen

    Returns
    -------
    assignment : int64 array of shape (n_samples,), position in ``order`` of each example's
        medoid (-1 when k is 0)
    similarity : float32 array of shape (n_samples,), the similarity to it
    """
    n = len(kernel)
    order = np.asarray(order, dtype=np.int64)
    best = np.full(n, -np.inf, dtype=np.float32)
    best_acc = np.full(n, np.inf, dtype=np.float32)
    position = np.full(n, -1, dtype=np.int64)
    euclidean = kernel.metric == "euclidean"
    for start in range(0, len(order), _ASSIGN_BLOCK):
        block = order[start : start + _ASSIGN_BLOCK]
        Mt = np.ascontiguousarray(kernel.Z[block].T)
        _assign_block(
            Mt, kernel.Z, block, start, euclidean, kernel.self_similarity, best_acc, best, position
        )
    return position, best


def _cross_rows(kernel: Kernel, Zt: np.ndarray, col: np.ndarray, rows: np.ndarray) -> np.ndarray:
    # Kernel rows of the class rows ``rows`` against the columns of Zt, as Kernel.rows computes
    # them (the same when Zt is the whole class).
    out = np.empty((len(rows), Zt.shape[1]), dtype=np.float32)
    fill_rows(kernel.Z, Zt, rows, kernel.metric == "euclidean", out)
    if kernel.metric == "euclidean":
        np.exp(out, out=out)
    else:
        np.clip(out, -1.0, 1.0, out=out)
        here = col[rows] >= 0
        out[np.flatnonzero(here), col[rows][here]] = kernel.self_similarity[rows][here]
    return out


def merge_picks(
    X: np.ndarray,
    candidates: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    sample: int | None = None,
    random_state: int | np.random.Generator = 0,
):
    """GreeDi's second round on one class: exact lazy greedy over ``candidates``.

    F is evaluated on the whole class when ``sample`` is None or at least the number of
    non-candidates. Otherwise on every candidate plus a seeded uniform sample of ``sample``
    of the other examples, each of those weighted (non-candidates / sample): a stratified,
    unbiased estimate of F whose cost is candidates x (candidates + sample) instead of
    candidates x class. The candidates are kept whole because an outlier's gain is mostly its
    own cover, and outliers are the examples EPIC isolates. Either way every example of the
    class is then assigned to its most similar medoid (:func:`assign`, ties to the medoid
    chosen first), so cluster sizes and isolation are decided against the whole class.

    Kernel rows (candidate x evaluated examples) are computed when scored, one at a time; once
    few of a row's entries can still add gain, those are cached as a short list. Memory is
    O(n_class + 48M pairs), never n_class^2. Ties go to the lowest class-local index, so when
    F is on the whole class and ``candidates`` holds a prefix of exact greedy's sequence on X
    the first ``k`` chosen are exact greedy's (up to float rounding of the gain sums in near
    ties).

    Parameters
    ----------
    X : array of shape (n_class, n_features), the whole class's gradients
    candidates : int array of shape (n_candidates,), class-local indices (the union of picks)
    k : number of medoids, 0 <= k <= n_candidates
    metric : {'euclidean', 'cosine'}
    sample : int >= 1 or None, how many non-candidates F is evaluated on (None: all)
    random_state : seed or Generator of the sample

    Returns
    -------
    Clustering of the whole class (``order`` holds class-local indices; ``gains`` are gains
    in F as evaluated; ``dense`` is False)
    """
    kernel = Kernel(X, metric=metric)
    n_class = len(kernel)
    candidates = np.unique(np.asarray(candidates, dtype=np.int64))
    check_budget(k, len(candidates))
    cols = _evaluated_columns(kernel, candidates, sample, random_state)
    n = cols.Zt.shape[1]
    sparse_max = max(64, n // SPARSE_DIV)
    pool = int(min(_POOL_ENTRIES, max(1024, len(candidates) * sparse_max)))
    state = _merge_state(kernel, k, n)
    order, t0 = state[0], min(k, BATCH_STEPS)
    left, keys = _plain_steps(kernel, cols, candidates, state, t0)
    if k > t0:  # the gains of step t0 - 1 are upper bounds from step t0 on
        _merge_greedy(kernel.Z, cols.Zt, cols.col, cols.weight, left, keys, state, t0, pool,
                      sparse_max)
    # sampled: the merge's cover is over the sample, so assign the whole class to the medoids
    position, best = assign(kernel, order) if cols.sampled else (state[4], state[3])
    objective = float(np.maximum(best, 0).sum(dtype=np.float64)) if k else 0.0
    distance = kernel.distance(np.arange(n_class), order[position]) if k else np.full(n_class, np.nan)
    return Clustering(order, state[1], objective, position, best, distance, False)


def _merge_state(kernel: Kernel, k: int, n: int) -> tuple:
    # What the compiled merge updates in place, over the n evaluated columns.
    return (
        np.empty(k, dtype=np.int64),  # order: the medoids chosen
        np.empty(k, dtype=np.float64),  # the gains
        np.zeros(n, dtype=np.float32),  # cur: the cover, 0 for the empty set
        np.full(n, -np.inf, dtype=np.float32),  # best similarity to a medoid so far
        np.full(n, -1, dtype=np.int64),  # position (in order) of that medoid
        np.full(n, np.inf, dtype=np.float32),  # rad2: squared distance beyond which s <= cur
        kernel.self_similarity,
        kernel.metric == "euclidean",
    )


@dataclass(frozen=True, eq=False)
class _Columns:
    # The examples F is evaluated on in a merge: Zt holds their rows as columns (ascending),
    # col maps a class-local index to its column (-1 when not evaluated), weight is what each
    # stands for, sampled says whether they are a sample of the class.
    Zt: np.ndarray
    col: np.ndarray
    weight: np.ndarray
    sampled: bool


def _evaluated_columns(kernel: Kernel, candidates: np.ndarray, sample: int | None,
                       random_state: int | np.random.Generator) -> _Columns:
    n_class = len(kernel)
    others = n_class - len(candidates)
    if sample is None or sample >= others:
        return _Columns(kernel.Zt, np.arange(n_class), np.ones(n_class), False)
    # Stratified: every candidate (a candidate's own cover is most of an outlier's gain,
    # and outliers are what EPIC isolates) and a uniform sample of the other examples,
    # each standing for others / sample of them. F on these, weighted, is an unbiased
    # estimate of F on the class.
    rng = np.random.default_rng(random_state)
    rest = np.setdiff1d(np.arange(n_class), candidates, assume_unique=True)
    drawn = rng.choice(rest, size=int(sample), replace=False)
    evaluated = np.concatenate([candidates, drawn])
    weight = np.concatenate([np.ones(len(candidates)), np.full(len(drawn), others / sample)])
    by_row = np.argsort(evaluated)
    evaluated, weight = evaluated[by_row], weight[by_row]
    col = np.full(n_class, -1, dtype=np.int64)
    col[evaluated] = np.arange(len(evaluated))
    return _Columns(np.ascontiguousarray(kernel.Z[evaluated].T), col, weight, True)


def _plain_steps(kernel: Kernel, cols: _Columns, candidates: np.ndarray, state: tuple,
                 t0: int) -> tuple[np.ndarray, np.ndarray]:
    # The first BATCH_STEPS steps re-score every candidate anyway (after the first medoid every
    # stale bound is far above every fresh gain), and every entry needs its exp, so these steps
    # run as plain greedy over all candidates: a sampled euclidean merge (F is an estimate)
    # through _candidate_scores, each candidate pair once; a whole-class merge over numpy row
    # blocks, in the arithmetic of the exact path. Returns the candidates left and their gains
    # at the last step (upper bounds from then on).
    Zt, col, weight = cols.Zt, cols.col, cols.weight
    n = Zt.shape[1]
    order, euclidean = state[0], state[7]
    rows = max(1, min(BLOCK_ROWS, (1 << 22) // max(n, 1)))  # blocks of at most 16 MB
    pairwise = cols.sampled and euclidean  # every candidate is an evaluated column (see above)
    if pairwise:
        mine = col[candidates]
        theirs = np.setdiff1d(np.arange(n), mine, assume_unique=True)
        Zc, Zr = np.ascontiguousarray(Zt[:, mine]), np.ascontiguousarray(Zt[:, theirs])
    pos = np.arange(len(candidates))  # the candidates not chosen yet
    scratch = (np.empty(n, dtype=np.float32), np.empty(2 * n, dtype=np.float32))
    live = np.empty(n, dtype=np.int64)
    keys = np.empty(0)
    for t in range(t0):
        if pairwise:
            every = np.empty(len(candidates), dtype=np.float64)
            cur = state[2]
            _candidate_scores(Zc, weight[mine], cur[mine], Zr, weight[theirs], cur[theirs], every)
            keys = every[pos]
        else:
            keys = np.empty(len(pos), dtype=np.float64)
            for start in range(0, len(pos), rows):
                block = candidates[pos[start : start + rows]]
                S = _cross_rows(kernel, Zt, col, block)
                if cols.sampled:
                    scored = np.empty(len(block), dtype=np.float64)
                    _weighted_gains(S, state[2], weight, scored)
                else:
                    scored = gains(S, state[2], np.arange(len(block)))
                keys[start : start + len(block)] = scored
        q = int(np.argmax(keys))  # the first maximum: the lowest index
        j = candidates[pos[q]]
        order[t], state[1][t] = j, keys[q]
        # the chosen row as the lazy greedy computes its rows (same exp), so that the cover,
        # and the assignment computed from the medoids alone, agree bit for bit
        _, _, m = _eval_row(kernel.Z, Zt, j, col[j], euclidean, kernel.self_similarity, state[2],
                            state[5], weight, scratch[0], live, scratch[1])
        _cover(scratch[0][live[:m]], live[:m], state, t, kernel.Z.shape[1])
        pos, keys = np.delete(pos, q), np.delete(keys, q)
    return candidates[pos], keys


def run_partitions(
    grads: np.ndarray, plan: Sequence[Partition], *, metric: str = "euclidean", n_jobs: int = 1
) -> list[np.ndarray]:
    """:func:`greedy_on_partition` on every partition of ``plan``, ``n_jobs`` at a time.

    Threads, not processes: the kernel and the greedy are compiled without the GIL, and threads
    share ``grads`` instead of copying it. Each thread holds one partition's dense kernel
    (partition_size^2 float32), so memory grows with ``n_jobs``.

    Parameters
    ----------
    grads : float array of shape (n_samples, n_classes)
    plan : partitions from :func:`partition_plan`
    metric : {'euclidean', 'cosine'}
    n_jobs : threads; -1 for every core this process may use

    Returns
    -------
    picks : list of int64 arrays, ``picks[i]`` of shape (plan[i].budget,)
    """
    grads = np.asarray(grads, dtype=np.float32)
    workers = _workers(n_jobs)
    if workers == 1 or len(plan) <= 1:
        return [greedy_on_partition(grads, part, metric=metric) for part in plan]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(lambda part: greedy_on_partition(grads, part, metric=metric), plan))


def _workers(n_jobs: int | None) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if n_jobs is None or n_jobs == 0:
        return 1
    return max(1, cores or 1) if n_jobs < 0 else int(n_jobs)


def picks_by_class(plan: Sequence[Partition], picks: Sequence[np.ndarray]) -> dict[int, list[np.ndarray]]:
    """The picks of round one grouped by class, in the plan's order.

    Parameters
    ----------
    plan : sequence of Partition
        The partitions of :func:`partition_plan`.
    picks : sequence of int arrays
        ``picks[i]``, the global indices chosen in ``plan[i]``.

    Returns
    -------
    dict
        class -> list of its partitions' picks.
    """
    by_class: dict[int, list[np.ndarray]] = {}
    for part, chosen in zip(plan, picks, strict=True):
        by_class.setdefault(part.label, []).append(chosen)
    return by_class


def timed_merges(
    grads: np.ndarray,
    labels: np.ndarray,
    active: np.ndarray,
    by_class: dict[int, list[np.ndarray]],
    k: np.ndarray,
    *,
    config: EpicConfig,
) -> dict[int, tuple[np.ndarray, Clustering, float]]:
    """:func:`merge_picks` for every class of ``by_class``, ``config.n_jobs`` classes at a time.

    Parameters
    ----------
    grads : float array of shape (n_samples, n_classes)
        Every example's gradient.
    labels : int array of shape (n_samples,)
        The classes.
    active : bool array of shape (n_samples,)
        The examples still in training; a class's active ones are clustered.
    by_class : dict
        class -> its partitions' picks (global indices), as :func:`picks_by_class` groups them.
    k : int array of shape (n_classes,)
        The class budgets K_c.
    config : EpicConfig
        Its ``metric``; ``n_jobs`` threads (-1: every core), each merging one class at a time;
        ``merge_sample``, the most examples of a class F is evaluated on (None: all); and
        ``random_state``: class c's sample is drawn with the seed ``[random_state, c]``.

    Returns
    -------
    {class: (members, Clustering, seconds)}
        ``members`` the class's active rows, ascending; the Clustering over them (class-local
        indices, as :func:`facility_location.cluster`).
    """

    def one(c: int) -> tuple[int, tuple[np.ndarray, Clustering, float]]:
        start = time.perf_counter()
        members = np.flatnonzero(active & (labels == c))
        union = np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in by_class[c]]))
        fit = merge_picks(np.asarray(grads)[members], np.searchsorted(members, union), int(k[c]),
                          metric=config.metric, sample=config.merge_sample,
                          random_state=np.random.default_rng([config.random_state, c]))
        return c, (members, fit, time.perf_counter() - start)

    workers = _workers(config.n_jobs)
    if workers == 1 or len(by_class) <= 1:
        return dict(one(c) for c in by_class)
    with ThreadPoolExecutor(workers) as pool:
        return dict(pool.map(one, list(by_class)))
