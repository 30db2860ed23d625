"""GreeDi: EPIC's selection by partitions, then greedy over the union of their picks."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonlens.defense import greedi
from poisonlens.defense.epic import EpicConfig, budgets, finish_selection, plan, select
from poisonlens.defense.facility_location import Kernel

SETTINGS = settings(max_examples=20, deadline=None)
FIELDS = ("medoid", "cluster_size", "is_medoid", "isolated", "drop", "score", "k", "objective")


def snapshot_grads(n: int, n_classes: int = 3, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax - onehot rows of a half-trained classifier."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), labels] += rng.gamma(2.0, 2.0, n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), labels] -= 1
    return p.astype(np.float32), labels


def blobs_and_outliers(seed: int, per_blob: int = 60) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes in 3-d, each three tight blobs and two far outliers, rows shuffled.

    K_c = 5 at subset_size 10 / n: greedy takes one medoid per blob, then the two outliers,
    which are alone in their clusters. Returns grads, labels, the outliers' indices.
    """
    rng = np.random.default_rng(seed)
    grads, labels, outliers = [], [], []
    for c in range(2):
        a, b, e = np.linalg.qr(rng.normal(0, 1, (3, 3)))[0].T
        for centre in (4 * a, -4 * a, 4 * b):
            grads.append(centre + rng.normal(0, 1e-3, (per_blob, 3)))
        for sign in (1, -1):
            outliers.append(sum(len(g) for g in grads))
            grads.append(20 * sign * e[None, :])
        labels += [c] * (3 * per_blob + 2)
    order = rng.permutation(len(labels))
    grads = np.concatenate(grads)[order].astype(np.float32)
    return grads, np.array(labels)[order], np.argsort(order)[outliers]


def assert_same(a, b) -> None:
    for name in FIELDS:
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def assert_same_decisions(a, b) -> None:
    """The same medoids, clusters and drops; similarities may differ by a float32 ulp.

    The merge computes kernel entries with its polynomial exp, the dense kernel with numpy's.
    """
    for name in ("medoid", "cluster_size", "is_medoid", "isolated", "drop", "k"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    np.testing.assert_allclose(a.score, b.score, rtol=1e-6)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-6)


# --------------------------------------------------------------------------- planted answer


@SETTINGS
@given(seed=st.integers(0, 10_000), metric=st.sampled_from(["euclidean", "cosine"]))
def test_greedi_isolates_the_planted_outliers_as_exact_greedy_does(seed, metric):
    grads, labels, outliers = blobs_and_outliers(seed)
    subset = 10 / len(labels)
    exact = select(grads, labels, subset_size=subset, metric=metric, method="exact")
    parted = select(
        grads, labels, subset_size=subset, metric=metric, method="greedi", partition_size=61
    )
    assert parted.k.tolist() == [5, 5, 0]
    assert set(np.flatnonzero(exact.isolated)) == set(outliers)
    assert set(np.flatnonzero(parted.isolated)) == set(outliers)
    assert set(np.flatnonzero(parted.drop)) == set(outliers)
    assert np.all(parted.score[outliers] > np.delete(parted.score, outliers).max())


def test_the_plan_really_splits_the_planted_classes():
    _, labels, _ = blobs_and_outliers(0)
    parts = greedi.partition_plan(labels, np.array([5, 5]), partition_size=61)
    assert [p.label for p in parts] == [0, 0, 0, 1, 1, 1]
    assert all(len(p.index) <= 61 for p in parts)


# --------------------------------------------------------------------------- invariants


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    subset_size=st.floats(0.02, 1),
    partition_size=st.integers(1, 80),
    inactive=st.floats(0, 0.5),
    merge_sample=st.integers(1, 300),
)
def test_budgets_masks_and_assignments_hold_under_greedi(
    seed, n, subset_size, partition_size, inactive, merge_sample
):
    grads, labels = snapshot_grads(n, seed=seed)
    active = np.random.default_rng(seed).random(n) >= inactive
    out = select(
        grads,
        labels,
        active=active,
        subset_size=subset_size,
        method="greedi",
        partition_size=partition_size,
        merge_sample=merge_sample,
    )
    counts = np.bincount(labels[active], minlength=3)
    assert np.array_equal(out.k, budgets(counts, subset_size))
    for name in ("medoid", "cluster_size", "is_medoid", "isolated", "drop", "score"):
        assert getattr(out, name).shape == (n,), name
    assert np.array_equal(np.bincount(labels[out.is_medoid], minlength=3), out.k)
    assert not (out.is_medoid & ~active).any() and not (out.drop & ~active).any()
    assert np.all(out.medoid[~active] == -1)
    members = np.flatnonzero(active)
    assert np.all(out.is_medoid[out.medoid[members]])
    assert np.array_equal(labels[out.medoid[members]], labels[members])
    sizes = np.bincount(out.medoid[members], minlength=n)
    assert np.array_equal(out.cluster_size[members], sizes[out.medoid[members]])
    assert np.array_equal(out.drop[members], out.isolated[out.medoid[members]])


@SETTINGS
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 300),
    partition_size=st.integers(1, 100),
    random_state=st.integers(0, 5),
)
def test_the_plan_covers_every_active_example_once_within_budget(
    seed, n, partition_size, random_state
):
    _, labels = snapshot_grads(n, seed=seed)
    active = np.random.default_rng(seed).random(n) < 0.8
    k = budgets(np.bincount(labels[active], minlength=3), 0.1)
    parts = greedi.partition_plan(
        labels, k, active=active, partition_size=partition_size, random_state=random_state
    )
    covered = np.concatenate([p.index for p in parts]) if parts else np.array([], int)
    assert np.array_equal(np.sort(covered), np.flatnonzero(active & (k[labels] > 0)))
    for p in parts:
        assert 1 <= p.budget <= len(p.index) <= partition_size
        assert np.all(labels[p.index] == p.label)
    again = greedi.partition_plan(
        labels, k, active=active, partition_size=partition_size, random_state=random_state
    )
    assert all(np.array_equal(a.index, b.index) for a, b in zip(parts, again, strict=True))


def test_the_same_seed_gives_the_same_result_and_threads_do_not_change_it():
    grads, labels = snapshot_grads(900, seed=3)
    options = {"subset_size": 0.1, "method": "greedi", "partition_size": 70, "random_state": 4}
    a = select(grads, labels, **options)
    assert_same(a, select(grads, labels, **options))
    assert_same(a, select(grads, labels, **options, n_jobs=2))


def test_another_seed_draws_other_partitions():
    _, labels = snapshot_grads(900, seed=3)
    k = budgets(np.bincount(labels, minlength=3), 0.1)
    a = greedi.partition_plan(labels, k, partition_size=70, random_state=0)
    b = greedi.partition_plan(labels, k, partition_size=70, random_state=1)
    assert any(not np.array_equal(p.index, q.index) for p, q in zip(a, b, strict=True))


# --------------------------------------------------------------------------- against exact


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_one_partition_per_class_merges_to_exact_greedy(metric):
    # Through the pure API, without select()'s shortcut: the partition greedy runs on the whole
    # class, the merge re-runs greedy with its picks as candidates and F over the class.
    grads, labels = snapshot_grads(600, seed=5)
    active = np.ones(len(labels), dtype=bool)
    config = EpicConfig(subset_size=0.1, metric=metric)
    _, k = plan(labels, active=active, config=config, n_classes=3)
    parts = greedi.partition_plan(labels, k, partition_size=10_000)
    assert len(parts) == 3
    picks = [greedi.greedy_on_partition(grads, p, metric=metric) for p in parts]
    merged = finish_selection(grads, labels, parts, picks, active=active, config=config)
    assert_same_decisions(merged, select(grads, labels, config=config))


def test_greedi_with_partitions_as_large_as_the_classes_is_exact():
    grads, labels = snapshot_grads(500, seed=6)
    exact = select(grads, labels, subset_size=0.2, method="exact")
    assert_same(exact, select(grads, labels, subset_size=0.2, method="greedi"))


def test_merge_picks_maximises_the_whole_class_not_the_candidates_alone():
    # One class: candidates are two of four points; F counts all four, so the candidate nearer
    # to the two non-candidates wins although it covers the candidates no better.
    X = np.array([[0.0, 0.0], [3.0, 0.0], [3.1, 0.0], [3.2, 0.0]], np.float32)
    fit = greedi.merge_picks(X, np.array([0, 1]), 1)
    assert fit.order.tolist() == [1]
    assert fit.assignment.tolist() == [0, 0, 0, 0]
    assert not fit.dense


def test_merge_assigns_each_example_to_its_most_similar_final_medoid():
    grads, labels = snapshot_grads(400, seed=7)
    X = grads[labels == 0]
    fit = greedi.merge_picks(X, np.arange(0, len(X), 2), 12)
    S = Kernel(X, metric="euclidean").matrix()[:, fit.order]
    best = S.max(axis=1)
    first_best = np.argmax(S == best[:, None], axis=1)  # ties: the medoid chosen first
    assert np.array_equal(fit.assignment, first_best)
    np.testing.assert_allclose(fit.similarity, best, rtol=2e-7)
    np.testing.assert_allclose(fit.objective, np.maximum(best, 0).sum(dtype=np.float64), rtol=1e-6)


# --------------------------------------------------------------------------- the DDP contract


def test_ranks_taking_every_world_size_th_partition_reproduce_select():
    grads, labels = snapshot_grads(900, seed=8)
    active = np.arange(900) % 9 != 0
    config = EpicConfig(subset_size=0.15, method="greedi", partition_size=60, random_state=2)
    parts, _ = plan(labels, active=active, config=config, n_classes=3)
    world_size = 3
    gathered: dict[int, np.ndarray] = {}
    for rank in range(world_size):  # what each rank computes, without talking to the others
        mine = range(rank, len(parts), world_size)
        gathered.update({i: greedi.greedy_on_partition(grads, parts[i]) for i in mine})
    picks = [gathered[i] for i in range(len(parts))]
    on_rank_0 = finish_selection(grads, labels, parts, picks, active=active, config=config)
    assert_same(on_rank_0, select(grads, labels, active=active, config=config))


# --------------------------------------------------------------------------- options


def test_auto_uses_greedi_only_above_max_dense():
    grads, labels = snapshot_grads(600, seed=9)
    config = EpicConfig(method="auto", partition_size=50, max_dense=150)
    parts, _ = plan(labels, active=np.ones(600, bool), config=config, n_classes=3)
    big = np.bincount(labels, minlength=3) > 150
    assert {p.label for p in parts} == set(np.flatnonzero(big))
    small = EpicConfig(method="auto", partition_size=50, max_dense=10_000)
    assert plan(labels, active=np.ones(600, bool), config=small, n_classes=3)[0] == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "fast"}, "method must be one of auto, exact, greedi"),
        ({"partition_size": 0}, "partition_size must be an int >= 1"),
        ({"partition_size": 2.5}, "partition_size must be an int >= 1"),
        ({"n_jobs": -2}, "n_jobs must be an int >= -1"),
        ({"method": "greedi", "greedy": "stochastic"}, "use greedy='lazy'"),
    ],
)
def test_bad_greedi_options_are_clear_errors(options, message):
    grads, labels = snapshot_grads(30, seed=10)
    with pytest.raises(ValueError, match=message):
        select(grads, labels, **options)


# --------------------------------------------------------------------------- the sampled merge


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_assign_gives_each_example_its_most_similar_medoid_ties_to_the_first(metric):
    grads, labels = snapshot_grads(700, seed=11)
    X = np.concatenate([grads[labels == 1], np.zeros((5, 3), np.float32)])  # zero rows tie
    kernel = Kernel(X, metric=metric)
    order = np.random.default_rng(0).permutation(len(X))[:300]  # more than one block of 256
    position, best = greedi.assign(kernel, order)
    S = kernel.matrix()[:, order]
    top = S.max(axis=1)
    assert np.array_equal(position, np.argmax(S == top[:, None], axis=1))
    np.testing.assert_allclose(best, top, rtol=2e-7)


def test_a_sampled_merge_still_assigns_every_example_of_the_class():
    grads, labels = snapshot_grads(900, seed=12)
    X = grads[labels == 2]
    candidates = np.arange(0, len(X), 3)
    fit = greedi.merge_picks(X, candidates, 20, sample=50, random_state=1)
    assert len(fit.order) == 20 and set(fit.order) <= set(candidates)
    S = Kernel(X, metric="euclidean").matrix()[:, fit.order]
    best = S.max(axis=1)
    assert np.array_equal(fit.assignment, np.argmax(S == best[:, None], axis=1))
    np.testing.assert_allclose(fit.objective, best.sum(dtype=np.float64), rtol=1e-6)
    again = greedi.merge_picks(X, candidates, 20, sample=50, random_state=1)
    assert np.array_equal(fit.order, again.order)
    whole = greedi.merge_picks(X, candidates, 20)
    assert np.array_equal(greedi.merge_picks(X, candidates, 20, sample=len(X)).order, whole.order)


def test_a_sampled_merge_maximises_f_on_its_sample():
    # Four points near the origin, two near (3, 0); one candidate in each group. On the whole
    # class the origin's candidate covers more. Sampling one non-candidate, the far one, it
    # stands for all four non-candidates, and the far candidate wins.
    X = np.array([[0, 0], [0.1, 0], [0, 0.1], [0.1, 0.1], [3, 0], [3.1, 0]], np.float32)
    candidates = np.array([0, 4])
    assert greedi.merge_picks(X, candidates, 1).order.tolist() == [0]
    rest = np.array([1, 2, 3, 5])
    far = [s for s in range(200) if np.random.default_rng(s).choice(rest, 1, False)[0] == 5]
    fit = greedi.merge_picks(X, candidates, 1, sample=1, random_state=far[0])
    assert fit.order.tolist() == [4]
    assert fit.assignment.tolist() == [0] * 6  # every example, sampled or not, is assigned
    near = [s for s in range(200) if np.random.default_rng(s).choice(rest, 1, False)[0] != 5]
    assert greedi.merge_picks(X, candidates, 1, sample=1, random_state=near[0]).order == [0]


def test_the_vectorised_exp_is_exp_to_a_float32_ulp_on_both_sides_of_its_polynomial_range():
    # squared distances whose -sqrt/d spans the polynomial's range [-0.35, 0] and far past it
    d2 = np.concatenate([np.linspace(0, 40, 20_001), [0.0, 1e-30, 1e4, 1e30]]).astype(np.float32)
    for d in (10, 2, 1000):
        scale = np.float32(-1.0 / d)
        out = np.empty_like(d2)
        greedi._exp_of_distances(d2, scale, out)
        x = (np.sqrt(d2) * scale).astype(np.float32)
        truth = np.exp(x.astype(np.float64)).astype(np.float32)
        ulps = np.abs(out.view(np.int32).astype(np.int64) - truth.view(np.int32))
        assert ulps.max() <= 1, d
        assert (ulps > 0).mean() < 1e-3, d  # correctly rounded but for rare double roundings


def test_the_assignment_s_exp_is_the_greedy_s_bit_for_bit():
    # the assignment takes exp one entry at a time; the merge's greedy in vectorised loops
    rng = np.random.default_rng(4)
    for d in (10, 2, 1000):
        scale = np.float32(-1.0 / d)
        far = np.float32(0.35 * d) ** 2  # where the polynomial hands over to libm's exp
        d2 = np.concatenate([rng.uniform(0, 3 * far, 3000), np.nextafter(far, [0, np.inf]), [far, 0.0]])
        d2 = d2.astype(np.float32)
        out = np.empty_like(d2)
        greedi._exp_of_distances(d2, scale, out)
        one = np.array([greedi._exp_of_distance(v, scale) for v in d2], dtype=np.float32)
        assert np.array_equal(out.view(np.int32), one.view(np.int32)), d


def test_the_symmetric_candidate_scores_equal_the_numpy_path():
    # every candidate's estimated gain over the candidates (each pair computed once) and a
    # weighted sample of the others, against whole kernel rows from numpy
    grads, labels = snapshot_grads(3000, seed=13)
    kernel = Kernel(grads[labels == 1], metric="euclidean")
    rng = np.random.default_rng(0)
    picked = rng.permutation(len(kernel))
    mine, theirs = np.sort(picked[:2500]), np.sort(picked[2500:2800])  # 2,500 > one chunk
    columns = np.concatenate([mine, theirs])
    cur = rng.uniform(0, 1, len(columns)).astype(np.float32)
    cur[:40] = 0  # some uncovered
    weight = rng.uniform(1, 5, len(columns))
    c, o = slice(0, len(mine)), slice(len(mine), None)
    fused = np.empty(len(mine))
    greedi._candidate_scores(np.ascontiguousarray(kernel.Z[mine].T), weight[c], cur[c],
                             np.ascontiguousarray(kernel.Z[theirs].T), weight[o], cur[o], fused)
    Zt = np.ascontiguousarray(kernel.Z[columns].T)
    numpy_path = np.empty(len(mine))
    rows = greedi._cross_rows(kernel, Zt, np.full(len(kernel), -1), mine)
    greedi._weighted_gains(rows, cur, weight, numpy_path)
    np.testing.assert_allclose(fused, numpy_path, rtol=1e-6)
    assert (fused > 0).all() and (fused < weight.sum()).all()


def test_a_merge_whose_row_cache_overflows_decides_as_one_that_fits(monkeypatch):
    # A pool too small for the short lists: rows are recomputed instead of cached, and the pool
    # is compacted only when a quarter of it is garbage, never once per row.
    grads, labels = snapshot_grads(4000, seed=14)
    X = grads[labels == 0]
    candidates = np.arange(0, len(X), 2)
    roomy = greedi.merge_picks(X, candidates, 60, sample=300, random_state=3)
    monkeypatch.setattr(greedi, "_POOL_ENTRIES", 64)
    tight = greedi.merge_picks(X, candidates, 60, sample=300, random_state=3)
    assert np.array_equal(roomy.order, tight.order)
    assert np.array_equal(roomy.assignment, tight.assignment)
    np.testing.assert_allclose(roomy.gains, tight.gains, rtol=1e-12)


def test_the_assignment_reproduces_the_greedy_s_own_cover_bit_for_bit():
    # A whole-class merge keeps the cover its greedy built; assign() recomputes it from the
    # medoids alone. Both take the same exp, so every similarity agrees exactly.
    grads, labels = snapshot_grads(9000, seed=15)
    X = grads[labels == 0]
    fit = greedi.merge_picks(X, np.arange(0, len(X), 2), 150)
    position, best = greedi.assign(Kernel(X, metric="euclidean"), fit.order)
    assert np.array_equal(position, fit.assignment)
    assert np.array_equal(best.view(np.int32), fit.similarity.view(np.int32))
