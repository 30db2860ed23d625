"""Nearest neighbours of one example (poisonlens.neighbours), against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from poisonlens.errors import InputError
from poisonlens.neighbours import nearest_neighbours, space_columns


def reference(index, X, k, mask=None):
    out = []
    for j in range(len(X)):
        if j == index or (mask is not None and not mask[j]) or not np.isfinite(X[j]).all():
            continue
        out.append((float(np.sqrt(((X[j].astype(np.float64) - X[index]) ** 2).sum())), j))
    out.sort()
    return [j for _, j in out[:k]], [d for d, _ in out[:k]]


def test_a_planted_cluster_is_found_nearest_first():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10)).astype(np.float32) * 10
    X[[5, 17, 42, 99]] = X[3] + np.array([[0.01], [0.02], [0.03], [0.04]], np.float32)
    labels = np.arange(200) % 3
    found = nearest_neighbours(3, X, labels, k=4)
    assert found.indices.tolist() == [5, 17, 42, 99]
    assert np.all(np.diff(found.distances) >= 0) and found.distances[0] > 0
    assert found.same_label.tolist() == [labels[i] == labels[3] for i in (5, 17, 42, 99)]


@given(st.integers(2, 60), st.integers(1, 12), st.integers(0, 10_000), st.booleans())
def test_it_equals_the_slow_reference(n, k, seed, use_mask):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 4, size=(n, 3)).astype(np.float32)  # many ties
    mask = rng.random(n) < 0.7 if use_mask else None
    index = int(rng.integers(n))
    found = nearest_neighbours(index, X, k=k, mask=mask)
    want, dist = reference(index, X, k, mask)
    assert found.indices.tolist() == want
    np.testing.assert_allclose(found.distances, dist)


def test_rows_without_a_position_are_skipped_and_the_example_itself_never_returned():
    X = np.array([[0, 0], [np.nan, 0], [1, 0], [0, 0]], np.float32)
    found = nearest_neighbours(0, X, k=8)
    assert found.indices.tolist() == [3, 2]


@pytest.mark.parametrize("index, k", [(-1, 3), (4, 3), (0, 0)])
def test_bad_requests_are_one_line(index, k):
    with pytest.raises(InputError):
        nearest_neighbours(index, np.zeros((4, 2)), k=k)


def test_the_spaces_are_the_stored_columns():
    cols = ["index", "label", "g_0", "g_1", "emb_0", "emb_1", "emb_x", "loss"]
    assert space_columns(cols, "gradient") == ["g_0", "g_1"]
    assert space_columns(cols, "features") == ["emb_0", "emb_1"]
    assert space_columns(["g_0"], "features") == []
