"""EPIC's selection: budgets, clusters, isolation, drops, scores, and the registered defense."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from poisonlens.defense import build_defense, defense_names
from poisonlens.defense.base import Snapshot
from poisonlens.defense.epic import Epic, EpicConfig, budgets, isolation, select

SETTINGS = settings(max_examples=25, deadline=None)


def snapshot_grads(n: int, n_classes: int = 4, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Softmax - onehot rows of a half-trained classifier, labels spread over all classes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(0, 1, (n, n_classes))
    logits[np.arange(n), labels] += rng.gamma(2.0, 2.0, n)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n), labels] -= 1
    return p.astype(np.float32), labels


def planted(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two classes in 3-d, each three tight blobs of 33 and one far outlier; class 2 is empty.

    The blobs sit at +a, -a and b (|a| = |b| = 4, a orthogonal to b), the outlier at 20 c with
    c orthogonal to both, so it is far for both metrics. With subset_size 0.04 each class gets
    4 medoids: one per blob, then the outlier.
    """
    rng = np.random.default_rng(seed)
    grads, labels, outliers = [], [], []
    for c in range(2):
        a, b, _ = np.linalg.qr(rng.normal(0, 1, (3, 3)))[0].T
        for centre in (4 * a, -4 * a, 4 * b):
            grads.append(centre + rng.normal(0, 1e-3, (33, 3)))
        outliers.append(sum(len(g) for g in grads))
        grads.append(20 * np.cross(a, b)[None, :] * rng.choice([-1, 1]))
        labels += [c] * 100
    order = rng.permutation(200)  # mix the classes and hide the outliers
    grads = np.concatenate(grads)[order].astype(np.float32)
    return grads, np.array(labels)[order], np.argsort(order)[outliers]


# --------------------------------------------------------------------------- budgets


@SETTINGS
@given(
    counts=st.lists(st.integers(0, 300), min_size=1, max_size=12),
    subset_size=st.floats(0.001, 1.0),
    seed=st.integers(0, 1000),
)
def test_budgets_sum_to_B_and_respect_class_sizes(counts, subset_size, seed):
    counts = np.array(counts)
    assume(counts.sum() > 0)
    k = budgets(counts, subset_size, random_state=seed)
    B = round(subset_size * counts.sum())
    assert k.sum() == max(B, np.count_nonzero(counts))
    assert np.all(k[counts == 0] == 0)
    assert np.all((1 <= k[counts > 0]) & (k[counts > 0] <= counts[counts > 0]))


@SETTINGS
@given(
    counts=st.lists(st.integers(1, 300), min_size=1, max_size=12), subset_size=st.floats(0.05, 1.0)
)
def test_budgets_are_proportional_to_class_sizes_rounded_up_then_trimmed(counts, subset_size):
    counts = np.array(counts)
    B = round(subset_size * counts.sum())
    assume(B >= len(counts))
    ceil = np.ceil(counts * B / counts.sum() - 1e-9).astype(int)
    # Each class gives back at most one, unless too few classes have one to spare.
    assume(ceil.sum() - B <= np.count_nonzero(ceil > 1))
    assert np.all(np.isin(budgets(counts, subset_size) - ceil, [-1, 0]))


def test_budgets_for_equal_classes_are_equal():
    assert budgets(np.full(10, 5000), 0.1).tolist() == [500] * 10


def test_budgets_are_reproducible_for_a_seed():
    counts = np.array([97, 103, 88, 120, 91])
    assert np.array_equal(
        budgets(counts, 0.1, random_state=3), budgets(counts, 0.1, random_state=3)
    )


# --------------------------------------------------------------------------- invariants


@st.composite
def snapshots(draw):
    n = draw(st.integers(1, 120))
    grads, labels = snapshot_grads(n, draw(st.integers(1, 5)), seed=draw(st.integers(0, 10_000)))
    active = np.random.default_rng(draw(st.integers(0, 10_000))).random(n) < draw(st.floats(0.3, 1))
    return grads, labels, active


@SETTINGS
@given(
    snap=snapshots(), subset_size=st.floats(0.01, 1), greedy=st.sampled_from(["lazy", "stochastic"])
)
def test_every_active_example_is_assigned_once_to_an_active_medoid_of_its_class(
    snap, subset_size, greedy
):
    grads, labels, active = snap
    out = select(grads, labels, active=active, subset_size=subset_size, greedy=greedy)
    m = out.medoid[active]
    assert np.all(m >= 0)
    assert np.all(active[m]) and np.all(out.is_medoid[m])
    assert np.array_equal(labels[m], labels[active])
    assert np.all(out.medoid[out.is_medoid & (out.cluster_size > 0)] >= 0)


@SETTINGS
@given(snap=snapshots(), subset_size=st.floats(0.01, 1), thresh=st.integers(0, 3))
def test_cluster_sizes_count_the_members_and_sum_to_the_class_size(snap, subset_size, thresh):
    grads, labels, active = snap
    out = select(grads, labels, active=active, subset_size=subset_size, cluster_thresh=thresh)
    members = np.bincount(out.medoid[active], minlength=len(labels))
    assert np.array_equal(out.cluster_size[active], members[out.medoid[active]])
    for c in range(grads.shape[1]):
        in_class = active & (labels == c)
        medoids = np.flatnonzero(out.is_medoid & (labels == c))
        assert len(medoids) == out.k[c]
        assert members[medoids].sum() == in_class.sum()


@SETTINGS
@given(snap=snapshots(), subset_size=st.floats(0.01, 1), thresh=st.integers(0, 3))
def test_drops_are_the_members_of_isolated_clusters(snap, subset_size, thresh):
    grads, labels, active = snap
    out = select(grads, labels, active=active, subset_size=subset_size, cluster_thresh=thresh)
    members = np.bincount(out.medoid[active], minlength=len(labels))
    want_isolated = out.is_medoid & (members >= 1) & (members <= thresh)
    assert np.array_equal(out.isolated, want_isolated)
    assert np.array_equal(out.drop[active], out.isolated[out.medoid[active]])


@SETTINGS
@given(snap=snapshots())
def test_inactive_examples_get_no_decision(snap):
    grads, labels, active = snap
    out = select(grads, labels, active=active)
    off = ~active
    assert np.all(out.medoid[off] == -1) and np.all(out.cluster_size[off] == 0)
    assert not (out.is_medoid[off].any() or out.isolated[off].any() or out.drop[off].any())
    assert np.all(np.isnan(out.score[off])) and not np.isnan(out.score[active]).any()


def assert_permuted(a, b, perm: np.ndarray) -> None:
    """``b`` is ``a`` with the examples reordered by ``perm`` (b's row r is a's row perm[r])."""
    assert np.array_equal(b.medoid, np.argsort(perm)[a.medoid[perm]])
    for name in ("cluster_size", "is_medoid", "isolated", "drop", "score"):
        assert np.array_equal(getattr(b, name), getattr(a, name)[perm]), name


@settings(max_examples=15, deadline=None)
@given(
    sizes=st.lists(st.integers(3, 30), min_size=1, max_size=4),
    n_outliers=st.integers(0, 2),
    n_features=st.integers(2, 5),
    seed=st.integers(0, 10_000),
)
def test_permuting_the_input_permutes_the_output(sizes, n_outliers, n_features, seed):
    # Blobs and outliers with one medoid each: no two candidates tie, so no decision can
    # depend on the order of the examples. (A mutual pair of uncovered examples always ties,
    # and then the lower index wins, so arbitrary data is not permutation-invariant.)
    rng = np.random.default_rng(seed)
    rotation = np.linalg.qr(rng.normal(0, 1, (n_features, n_features)))[0]
    points = [
        8 * b * rotation[0] + rng.normal(0, 1e-2, (size, n_features))
        for b, size in enumerate(sizes)
    ]
    points += [8 * (j + 1) * rotation[1] - 8 * rotation[0] for j in range(n_outliers)]
    grads = np.vstack(points).astype(np.float32)
    labels = np.zeros(len(grads), dtype=int)
    subset_size = (len(sizes) + n_outliers) / len(grads)
    perm = rng.permutation(len(grads))
    a = select(grads, labels, subset_size=subset_size)
    b = select(grads[perm], labels[perm], subset_size=subset_size)
    assert_permuted(a, b, perm)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 150), subset_size=st.floats(0.02, 1))
def test_interleaving_the_classes_differently_permutes_the_output(seed, n, subset_size):
    grads, labels = snapshot_grads(n, seed=seed)
    perm = np.random.default_rng(seed).permutation(n)
    for c in np.unique(labels):  # keep each class's own order, so ties break the same way
        perm[labels[perm] == c] = np.sort(perm[labels[perm] == c])
    a = select(grads, labels, subset_size=subset_size, greedy="stochastic")
    b = select(grads[perm], labels[perm], subset_size=subset_size, greedy="stochastic")
    assert_permuted(a, b, perm)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), metric=st.sampled_from(["euclidean", "cosine"]))
def test_planted_isolated_outliers_in_tight_blobs_are_flagged(seed, metric):
    grads, labels, outliers = planted(seed)
    out = select(grads, labels, subset_size=0.04, metric=metric)
    assert out.k.tolist() == [4, 4, 0]
    assert set(np.flatnonzero(out.isolated)) == set(outliers)
    assert set(np.flatnonzero(out.drop)) == set(outliers)
    assert np.all(out.score[outliers] > np.delete(out.score, outliers).max())


@pytest.mark.parametrize("greedy", ["lazy", "stochastic"])
def test_the_same_seed_gives_the_same_result(greedy):
    grads, labels = snapshot_grads(400, seed=1)
    a = select(grads, labels, subset_size=0.2, greedy=greedy, random_state=7)
    b = select(grads, labels, subset_size=0.2, greedy=greedy, random_state=7)
    for name in (
        "medoid",
        "cluster_size",
        "is_medoid",
        "isolated",
        "drop",
        "score",
        "k",
        "objective",
    ):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


# --------------------------------------------------------------------------- scores


def test_a_kept_example_scores_inverse_cluster_size_plus_half_the_relative_distance():
    grads, labels = snapshot_grads(300, seed=2)
    out = select(grads, labels, subset_size=0.1)
    for c in range(4):
        members = np.flatnonzero(labels == c)
        d = np.linalg.norm(grads[members] - grads[out.medoid[members]], axis=1)
        relative = np.where(d > 0, d / (d + np.median(d)), 0)
        kept = ~out.drop[members]
        np.testing.assert_allclose(
            out.score[members][kept],
            (1 / out.cluster_size[members] + 0.5 * relative)[kept],
            rtol=1e-6,
        )


def brute_isolation(grads, labels, out, i):
    """r of epic's docstring for example i, from the full distance matrix of its class."""
    members = np.flatnonzero(labels == labels[i])
    d = np.linalg.norm(grads[members][:, None] - grads[members][None], axis=2)
    np.fill_diagonal(d, np.inf)
    scale = max(np.median(d.min(axis=1)), 1e-3)
    outside = out.medoid[members] != out.medoid[i]
    return np.linalg.norm(grads[members][outside] - grads[i], axis=1).min() / scale


def test_a_dropped_example_scores_by_how_isolated_it_is():
    # Three outliers of class 0 at growing distances from a tight blob: all three are isolated
    # medoids; the farther out, the higher the score, and each isolation is the brute-force ratio.
    rng = np.random.default_rng(0)
    grads = rng.normal(scale=0.02, size=(300, 4))
    labels = np.repeat([0, 1, 2], 100)
    grads[labels == 1] += 0.5
    grads[labels == 2] -= 0.5
    for i, shift in ((3, 0.3), (4, -0.6), (5, 0.9)):
        grads[i, i - 3] += shift
    out = select(grads, labels, subset_size=0.1)
    assert set(np.flatnonzero(out.drop)) == {3, 4, 5}
    assert out.score[5] > out.score[4] > out.score[3] >= 1 > np.delete(out.score, [3, 4, 5]).max()
    for i in (3, 4, 5):
        assert out.isolation[i] == pytest.approx(brute_isolation(grads, labels, out, i), rel=1e-5)
        log_r = np.log1p(out.isolation[i])
        assert out.score[i] == pytest.approx(1 + log_r / (1 + log_r))
    assert np.isnan(np.delete(out.isolation, [3, 4, 5])).all()


def test_isolation_samples_the_scale_of_a_large_class_and_stays_close():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(3000, 3))
    X[0] += 8.0
    groups = np.arange(3000)
    exact = isolation(X, groups, np.array([0]), sample=3000)
    sampled = isolation(X, groups, np.array([0]), sample=500, random_state=3)
    assert sampled == pytest.approx(exact, rel=0.1)
    assert sampled[0] > 10


def test_examples_alone_in_their_cluster_score_above_all_others():
    grads, labels = snapshot_grads(500, seed=3)
    out = select(grads, labels, subset_size=0.2)
    alone = out.cluster_size == 1
    assert alone.any() and (~alone).any()
    assert out.score[alone].min() >= 1 > out.score[~alone].max()


# --------------------------------------------------------------------------- degenerate inputs


def test_a_class_of_one_example_is_its_own_isolated_medoid():
    grads, labels = snapshot_grads(50, seed=4)
    labels[labels == 3] = 2
    labels[17] = 3
    out = select(grads, labels, subset_size=0.1)
    assert out.k[3] == 1 and out.medoid[17] == 17 and out.cluster_size[17] == 1
    # no other example of its class to be near: isolation inf, the highest score, 2
    assert out.isolated[17] and out.drop[17] and out.score[17] == 2 and out.isolation[17] == np.inf


def test_identical_gradients_drop_nothing():
    grads = np.tile(np.array([[-0.5, 0.5, 0.0]], dtype=np.float32), (60, 1))
    out = select(grads, np.zeros(60, dtype=int), subset_size=0.1)
    assert out.is_medoid.sum() == 6 and np.all(out.medoid == 0)
    assert not out.isolated.any() and not out.drop.any()


def test_choosing_every_example_isolates_every_example():
    grads, labels = snapshot_grads(40, seed=5)
    out = select(grads, labels, subset_size=1.0)
    assert out.is_medoid.all() and np.array_equal(out.medoid, np.arange(40))
    assert out.drop.all()


def test_an_empty_class_gets_no_medoid_and_zero_statistics():
    grads, labels = snapshot_grads(80, seed=6)
    active = labels != 1
    out = select(grads, labels, active=active, subset_size=0.2)
    assert out.k[1] == 0 and out.objective[1] == 0 and out.seconds[1] == 0
    assert out.k.sum() == round(0.2 * active.sum())


def test_nothing_active_selects_nothing():
    grads, labels = snapshot_grads(10, seed=7)
    out = select(grads, labels, active=np.zeros(10, dtype=bool))
    assert out.k.sum() == 0 and np.all(out.medoid == -1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_in_grads_is_a_clear_error(bad):
    grads, labels = snapshot_grads(10, seed=8)
    grads[4, 1] = bad
    with pytest.raises(ValueError, match=r"grads has NaN or inf in 1 rows \(first: row 4\)"):
        select(grads, labels)


@pytest.mark.parametrize("subset_size", [0, -0.1, 1.01, math.nan])
def test_subset_size_outside_0_1_is_a_clear_error(subset_size):
    grads, labels = snapshot_grads(10, seed=9)
    with pytest.raises(ValueError, match=r"subset_size must be in \(0, 1\]"):
        select(grads, labels, subset_size=subset_size)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"metric": "manhattan"}, "metric must be one of"),
        ({"greedy": "exhaustive"}, "greedy must be one of"),
        ({"cluster_thresh": -1}, "cluster_thresh must be >= 0"),
        ({"epsilon": 0}, r"epsilon must be in \(0, 1\)"),
        ({"random_state": -1}, "random_state must be an int >= 0"),
    ],
)
def test_bad_options_are_clear_errors(kwargs, message):
    grads, labels = snapshot_grads(10, seed=10)
    with pytest.raises(ValueError, match=message):
        select(grads, labels, **kwargs)


def test_labels_out_of_range_are_a_clear_error():
    grads, labels = snapshot_grads(10, seed=11)
    labels[3] = 4
    with pytest.raises(ValueError, match=r"labels must be in \[0, 4\), got 4 at row 3"):
        select(grads, labels)


def test_mismatched_shapes_are_a_clear_error():
    grads, labels = snapshot_grads(10, seed=12)
    with pytest.raises(ValueError, match=r"labels must be ints of shape \(10,\)"):
        select(grads, labels[:-1])


# --------------------------------------------------------------------------- the defense


def _snapshot(grads: np.ndarray, labels: np.ndarray, epoch: int = 3) -> Snapshot:
    n = len(labels)
    return Snapshot(
        epoch=epoch,
        labels=labels,
        grads=grads,
        embeddings=np.zeros((n, 2), np.float32),
        loss=np.zeros(n, np.float32),
        confidence=np.zeros(n, np.float32),
        prediction=labels,
    )


def test_epic_is_registered():
    assert "epic" in defense_names()
    assert isinstance(build_defense("epic", subset_size=0.2), Epic)


def test_epic_defense_reports_selects_decisions():
    grads, labels = snapshot_grads(300, seed=13)
    active = np.arange(300) % 7 != 0
    result = build_defense("epic", subset_size=0.2, random_state=1)(
        _snapshot(grads, labels), active
    )
    want = select(grads, labels, active=active, subset_size=0.2, random_state=1)
    assert np.array_equal(result.suspect, want.drop)
    assert np.array_equal(result.score, want.score, equal_nan=True)
    assert set(result.columns) == {"medoid", "cluster_size", "is_medoid", "isolated", "isolation"}
    assert np.array_equal(result.columns["medoid"], want.medoid)
    assert result.info["k"] == want.k.tolist() and result.info["n_isolated"] == int(
        want.isolated.sum()
    )
    json.dumps(result.info)


def test_epic_config_has_the_documented_defaults():
    assert EpicConfig() == EpicConfig(
        subset_size=0.1,
        metric="euclidean",
        greedy="lazy",
        cluster_thresh=1,
        epsilon=0.01,
        random_state=0,
    )


def test_epic_rejects_unknown_or_bad_parameters_when_built():
    with pytest.raises(TypeError):
        Epic(subset=0.1)
    with pytest.raises(ValueError, match="subset_size"):
        Epic(subset_size=2.0)


@SETTINGS
@given(snap=snapshots(), subset_size=st.floats(0.01, 1))
def test_pool_all_clusters_every_example_and_decides_on_the_active_ones(snap, subset_size):
    # the authors' script: every selection clusters the whole training set (dropped examples
    # included, the budget a fraction of all of it), and only examples still in training drop
    grads, labels, active = snap
    out = select(grads, labels, active=active, subset_size=subset_size, pool="all")
    every = select(grads, labels, subset_size=subset_size)
    assert np.array_equal(out.k, every.k)
    for name in ("medoid", "cluster_size", "is_medoid", "isolated", "drop", "score"):
        assert np.array_equal(getattr(out, name)[active], getattr(every, name)[active]), name
    off = ~active
    assert np.all(out.medoid[off] == -1) and np.all(out.cluster_size[off] == 0)
    assert not (out.is_medoid[off].any() or out.isolated[off].any() or out.drop[off].any())
    assert np.all(np.isnan(out.score[off]))


def test_pool_all_with_every_example_active_is_the_default_selection():
    grads, labels = snapshot_grads(300, 4, seed=3)
    a, b = select(grads, labels, subset_size=0.2), select(grads, labels, subset_size=0.2, pool="all")
    for name in ("medoid", "cluster_size", "drop", "score", "k"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name


def test_the_defense_hook_and_its_distributed_pieces_honour_the_pool():
    grads, labels = snapshot_grads(400, 4, seed=5)
    active = np.random.default_rng(0).random(400) < 0.6
    snap = _snapshot(grads, labels)
    epic = build_defense("epic", subset_size=0.2, pool="all", method="greedi", partition_size=40)
    whole = epic(snap, active)
    parts = epic.partitions(labels, active, n_classes=4)
    split = epic.finish(snap, active, parts, epic.first_round(grads, parts))
    want = select(grads, labels, active=active, subset_size=0.2, pool="all", method="greedi", partition_size=40)
    assert np.array_equal(whole.suspect, want.drop) and np.array_equal(split.suspect, want.drop)
    assert not whole.suspect[~active].any() and sum(want.k) == round(0.2 * 400)
