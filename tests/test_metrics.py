"""Detection metrics: precision, recall and a rank-based ROC-AUC, NaN where undefined."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from poisonlens.metrics import DetectionMetrics, detection_metrics, roc_auc

# Labels with both kinds present, and scores from a small pool (many ties) or anywhere.
labels_and_scores = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda y: 0 < sum(y) < n),
        st.one_of(
            st.lists(st.integers(-3, 3).map(float), min_size=n, max_size=n),
            st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=n, max_size=n),
        ),
    )
)


@given(labels_and_scores)
def test_roc_auc_equals_sklearn(case):
    y_true, score = case
    assert roc_auc(np.array(y_true), np.array(score)) == pytest.approx(
        roc_auc_score(y_true, score), abs=1e-12
    )


@given(labels_and_scores, st.data())
def test_roc_auc_ignores_nan_scores(case, data):
    y_true, score = np.array(case[0]), np.array(case[1])
    hidden = np.array(data.draw(st.lists(st.booleans(), min_size=len(score), max_size=len(score))))
    with_nan = np.where(hidden, np.nan, score)
    # assert_allclose counts NaN == NaN: hiding all of one kind makes both undefined.
    np.testing.assert_allclose(
        roc_auc(y_true, with_nan), roc_auc(y_true[~hidden], score[~hidden]), atol=1e-12
    )


def test_roc_auc_is_one_when_every_poison_outscores_every_clean_example():
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9])) == 1.0


def test_roc_auc_is_zero_when_every_poison_scores_lowest():
    assert roc_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.9])) == 0.0


def test_roc_auc_counts_ties_as_half():
    assert roc_auc(np.array([1, 0, 0, 1]), np.ones(4)) == 0.5


@pytest.mark.parametrize("y_true", [[0, 0, 0], [1, 1, 1], []])
def test_roc_auc_is_nan_without_both_kinds(y_true):
    assert math.isnan(roc_auc(np.array(y_true, dtype=bool), np.arange(len(y_true), dtype=float)))


def test_roc_auc_is_nan_when_the_scored_rows_hold_one_kind():
    assert math.isnan(roc_auc(np.array([1, 0, 0]), np.array([np.nan, 0.1, 0.2])))


def test_detection_metrics_counts_a_known_case():
    is_poison = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    suspect = np.array([1, 1, 0, 1, 0, 0, 0, 0], dtype=bool)
    metrics = detection_metrics(is_poison, suspect)
    assert (metrics.n_suspect, metrics.n_poison, metrics.true_positives) == (3, 3, 2)
    assert metrics.precision == pytest.approx(2 / 3)
    assert metrics.recall == pytest.approx(2 / 3)


def test_detection_metrics_roc_auc_is_nan_without_a_score():
    metrics = detection_metrics(np.array([1, 0]), np.array([True, False]))
    assert math.isnan(metrics.roc_auc)


def test_detection_metrics_roc_auc_uses_the_score():
    metrics = detection_metrics(
        np.array([1, 0, 0]), np.zeros(3, dtype=bool), np.array([0.9, 0.1, np.nan])
    )
    assert metrics.roc_auc == 1.0


def test_precision_is_nan_when_nothing_is_flagged():
    metrics = detection_metrics(np.array([1, 0, 0]), np.zeros(3, dtype=bool))
    assert math.isnan(metrics.precision)
    assert metrics.recall == 0.0


def test_recall_is_nan_without_poisons():
    metrics = detection_metrics(np.zeros(3, dtype=bool), np.array([True, False, False]))
    assert math.isnan(metrics.recall)
    assert metrics.precision == 0.0


def test_active_mask_restricts_every_count():
    is_poison = np.array([1, 1, 0, 0], dtype=bool)
    suspect = np.array([0, 1, 1, 0], dtype=bool)
    score = np.array([np.nan, 0.8, 0.9, 0.1])
    active = np.array([False, True, True, True])
    metrics = detection_metrics(is_poison, suspect, score, active=active)
    assert (metrics.n_suspect, metrics.n_poison, metrics.true_positives) == (2, 1, 1)
    assert metrics.recall == 1.0
    assert metrics.roc_auc == 0.5


def test_metrics_are_plain_python_numbers():
    metrics = detection_metrics(
        np.array([1, 0, 0]), np.array([True, True, False]), np.array([3.0, 2.0, 1.0])
    )
    for field in dataclasses.fields(DetectionMetrics):
        assert type(getattr(metrics, field.name)) in (int, float)


def test_detection_metrics_is_frozen():
    metrics = detection_metrics(np.array([1, 0]), np.array([True, False]))
    with pytest.raises(dataclasses.FrozenInstanceError):
        metrics.precision = 1.0  # type: ignore[misc]


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        detection_metrics(np.array([1, 0, 0]), np.array([True, False]))
    with pytest.raises(ValueError, match="shape"):
        roc_auc(np.array([1, 0, 0]), np.array([0.1, 0.2]))


def test_labels_other_than_zero_and_one_are_rejected():
    with pytest.raises(ValueError, match="0/1"):
        detection_metrics(np.array([2, 0]), np.array([True, False]))
