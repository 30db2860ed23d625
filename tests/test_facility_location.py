"""Facility location on one class: the kernel, exact lazy greedy, stochastic greedy, assignment."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonlens.defense import facility_location as fl

SETTINGS = settings(max_examples=40, deadline=None)


def softmax_minus_onehot(
    n: int, n_classes: int = 4, *, seed: int = 0, scale: float = 3.0
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (n, n_classes))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[:, 0] -= 1  # everyone is labelled 0: one class
    return p.astype(np.float32)


def exact_kernel(X: np.ndarray, metric: str) -> np.ndarray:
    X = X.astype(np.float64)
    if metric == "euclidean":
        dist = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
        return np.exp(-dist / X.shape[1])
    norm = np.linalg.norm(X, axis=1)
    unit = np.divide(X, norm[:, None], out=np.zeros_like(X), where=norm[:, None] > 0)
    S = unit @ unit.T
    np.fill_diagonal(S, (norm > 0).astype(float))
    return S


def F(S: np.ndarray, chosen) -> float:
    """Facility location in float64: sum_i max(0, max_{j in chosen} s_ij)."""
    chosen = list(chosen)
    if not chosen:
        return 0.0
    return float(np.maximum(S[:, chosen].astype(np.float64).max(axis=1), 0).sum())


def plain_greedy(S: np.ndarray, k: int) -> list[int]:
    """Greedy that scores every candidate at every step with fl.gains; ties to the lowest index."""
    n = len(S)
    cur = np.zeros(n, dtype=np.float32)
    order: list[int] = []
    for _ in range(k):
        left = np.array([j for j in range(n) if j not in order])
        g = fl.gains(S, cur, left)
        j = int(left[np.flatnonzero(g == g.max())[0]])
        order.append(j)
        cur = np.maximum(cur, S[j])
    return order


def plain_greedy_float64(S: np.ndarray, k: int) -> list[int]:
    """An independent reference: float64 numpy, gains from scratch, ties to the lowest index."""
    S = S.astype(np.float64)
    cur = np.zeros(len(S))
    order: list[int] = []
    for _ in range(k):
        g = np.maximum(S - cur[None, :], 0).sum(axis=1)
        g[order] = -np.inf
        j = int(np.argmax(g))
        order.append(j)
        cur = np.maximum(cur, S[j])
    return order


matrices = st.builds(
    lambda n, d, seed, dup: _with_duplicates(
        np.random.default_rng(seed).normal(0, 1, (n, d)), dup, seed
    ),
    n=st.integers(1, 30),
    d=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    dup=st.floats(0, 0.5),
)


def _with_duplicates(X: np.ndarray, share: float, seed: int) -> np.ndarray:
    # Copy some rows onto others: exact ties, as saturated softmax rows produce.
    rng = np.random.default_rng(seed + 1)
    n = len(X)
    targets = rng.random(n) < share
    X[targets] = X[rng.integers(0, n, targets.sum())]
    return X.astype(np.float32)


# --------------------------------------------------------------------------- kernel


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kernel_is_the_documented_similarity(metric):
    X = softmax_minus_onehot(60, seed=1)
    S = fl.Kernel(X, metric=metric).matrix()
    assert S.dtype == np.float32
    np.testing.assert_allclose(S, exact_kernel(X, metric), atol=3e-7)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kernel_is_exactly_symmetric_with_unit_diagonal(metric):
    S = fl.Kernel(softmax_minus_onehot(50, seed=2), metric=metric).matrix()
    assert np.array_equal(S, S.T)
    assert np.all(np.diag(S) == 1)


def test_duplicate_rows_have_similarity_exactly_one():
    X = softmax_minus_onehot(10, seed=3)
    X[7] = X[2]
    S = fl.Kernel(X, metric="euclidean").matrix()
    assert S[2, 7] == 1 and S[7, 2] == 1


def test_cosine_similarity_of_a_zero_row_is_zero_even_to_itself():
    X = softmax_minus_onehot(6, seed=4)
    X[3] = 0
    S = fl.Kernel(X, metric="cosine").matrix()
    assert np.all(S[3] == 0) and np.all(S[:, 3] == 0)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_kernel_rows_equal_the_matrix_rows_bit_for_bit(metric):
    kernel = fl.Kernel(softmax_minus_onehot(300, seed=5), metric=metric)
    rows = np.array([299, 0, 17, 17, 150])
    assert np.array_equal(kernel.rows(rows), kernel.matrix()[rows])


def test_unknown_metric_is_rejected():
    with pytest.raises(ValueError, match="metric"):
        fl.Kernel(np.zeros((3, 2)), metric="manhattan")


# --------------------------------------------------------------------------- lazy greedy


@SETTINGS
@given(X=matrices, metric=st.sampled_from(["euclidean", "cosine"]), data=st.data())
def test_lazy_greedy_returns_the_plain_greedy_sequence(X, metric, data):
    S = fl.Kernel(X, metric=metric).matrix()
    k = data.draw(st.integers(0, len(X)))
    assert fl.lazy_greedy(S, k).order.tolist() == plain_greedy(S, k)


@pytest.mark.parametrize("seed", range(5))
def test_lazy_greedy_matches_an_independent_float64_greedy(seed):
    S = fl.Kernel(softmax_minus_onehot(120, seed=seed), metric="euclidean").matrix()
    assert fl.lazy_greedy(S, 30).order.tolist() == plain_greedy_float64(S, 30)


@SETTINGS
@given(
    X=matrices.filter(lambda X: len(X) <= 9),
    metric=st.sampled_from(["euclidean", "cosine"]),
    data=st.data(),
)
def test_lazy_greedy_reaches_1_minus_1_over_e_of_the_optimum(X, metric, data):
    S = fl.Kernel(X, metric=metric).matrix()
    k = data.draw(st.integers(1, min(3, len(X))))
    opt = max(F(S, subset) for subset in itertools.combinations(range(len(X)), k))
    got = F(S, fl.lazy_greedy(S, k).order)
    assert (1 - 1 / math.e) * opt - 1e-9 <= got <= opt + 1e-9


def test_ties_go_to_the_lowest_index():
    X = np.ones((8, 3), dtype=np.float32)
    S = fl.Kernel(X, metric="euclidean").matrix()
    assert fl.lazy_greedy(S, 4).order.tolist() == [0, 1, 2, 3]


def test_gains_are_the_marginal_gains_of_F():
    S = fl.Kernel(softmax_minus_onehot(40, seed=6), metric="euclidean").matrix()
    chosen = [3, 11]
    cur = np.maximum(S[3], S[11])
    got = fl.gains(S, cur, np.arange(40))
    want = [F(S, chosen + [j]) - F(S, chosen) for j in range(40)]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_objective_is_F_of_the_chosen_set():
    S = fl.Kernel(softmax_minus_onehot(80, seed=7), metric="euclidean").matrix()
    run = fl.lazy_greedy(S, 9)
    assert run.objective == pytest.approx(F(S, run.order), abs=1e-9)
    assert run.objective == pytest.approx(run.gains.sum(), rel=1e-12)


def test_budget_outside_0_to_n_is_rejected():
    S = fl.Kernel(np.zeros((3, 2)), metric="euclidean").matrix()
    with pytest.raises(ValueError, match="k must be"):
        fl.lazy_greedy(S, 4)


# --------------------------------------------------------------------------- stochastic greedy


def test_stochastic_greedy_is_reproducible_for_a_seed():
    S = fl.Kernel(softmax_minus_onehot(200, seed=8), metric="euclidean").matrix()
    a = fl.stochastic_greedy(S, 20, random_state=5).order
    b = fl.stochastic_greedy(S, 20, random_state=5).order
    c = fl.stochastic_greedy(S, 20, random_state=6).order
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_stochastic_greedy_scoring_every_candidate_is_exact_greedy():
    # With epsilon tiny the sample covers all candidates left.
    S = fl.Kernel(softmax_minus_onehot(60, seed=9), metric="euclidean").matrix()
    got = fl.stochastic_greedy(S, 5, epsilon=1e-12, random_state=0).order
    assert got.tolist() == plain_greedy(S, 5)


def test_stochastic_greedy_chooses_distinct_examples_with_a_near_greedy_value():
    S = fl.Kernel(softmax_minus_onehot(400, seed=10), metric="euclidean").matrix()
    run = fl.stochastic_greedy(S, 40, random_state=1)
    assert len(set(run.order.tolist())) == 40
    assert run.objective >= 0.99 * fl.lazy_greedy(S, 40).objective


# --------------------------------------------------------------------------- clustering


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_every_example_joins_its_most_similar_medoid_first_chosen_on_ties(metric):
    X = softmax_minus_onehot(150, seed=11)
    X[100:110] = X[0]  # ties
    fit = fl.cluster(X, 12, fl.ClusterOptions(metric=metric))
    S = fl.Kernel(X, metric=metric).matrix()
    sims = S[:, fit.order]
    assert np.array_equal(fit.assignment, np.argmax(sims, axis=1))  # argmax: first maximum
    assert np.array_equal(fit.similarity, sims.max(axis=1))


def test_medoids_belong_to_their_own_clusters():
    fit = fl.cluster(softmax_minus_onehot(100, seed=12), 10)
    assert np.array_equal(fit.assignment[fit.order], np.arange(10))
    assert np.all(fit.distance[fit.order] == 0)


def test_a_medoid_duplicating_an_earlier_one_has_an_empty_cluster():
    X = np.ones((5, 2), dtype=np.float32)
    fit = fl.cluster(X, 3)
    assert fit.order.tolist() == [0, 1, 2]
    assert np.all(fit.assignment == 0)


def test_choosing_every_example_makes_each_its_own_medoid():
    fit = fl.cluster(softmax_minus_onehot(25, seed=13), 25)
    assert sorted(fit.order.tolist()) == list(range(25))
    assert np.array_equal(fit.order[fit.assignment], np.arange(25))


def test_a_single_example_is_its_own_medoid():
    fit = fl.cluster(softmax_minus_onehot(1, seed=14), 1)
    assert fit.order.tolist() == [0] and fit.assignment.tolist() == [0]
    assert fit.objective == 1.0


@pytest.mark.parametrize("greedy", ["lazy", "stochastic"])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_rows_on_demand_give_the_same_decisions_as_the_dense_kernel(greedy, metric):
    X = softmax_minus_onehot(500, seed=15)
    X[200:260] = X[3]  # duplicates: ties must break the same way
    dense = fl.cluster(X, 40, fl.ClusterOptions(metric, greedy), random_state=4)
    chunked = fl.cluster(X, 40, fl.ClusterOptions(metric, greedy, max_dense=100), random_state=4)
    assert dense.dense and not chunked.dense
    assert np.array_equal(dense.order, chunked.order)
    assert np.array_equal(dense.assignment, chunked.assignment)
    assert dense.objective == chunked.objective


def test_kernel_buffer_is_reused():
    X = softmax_minus_onehot(30, seed=16)
    buffer = np.zeros(40 * 40, dtype=np.float32)
    with_buffer = fl.cluster(X, 5, buffer=buffer)
    assert np.any(buffer != 0)
    assert np.array_equal(with_buffer.order, fl.cluster(X, 5).order)
