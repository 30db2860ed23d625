"""Projections (one layout per run), drift scores and chart selections: core's pure helpers.

Inputs are tiny planted gradients (per-class blobs) or the session's small digits runs.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonlens.cli import main as cli_main
from poisonlens.dashboard.selection import parse_indices, selection_to_indices, update_selection
from poisonlens.drift import MIN_SCALE, cosine_to, drift_scores, group_quantiles
from poisonlens.errors import InputError
from poisonlens.projection import (
    TARGET_INDEX,
    compute_projection,
    ensure_projection,
    fit_sample,
    place,
    project_snapshots,
    projection_is_current,
)
from poisonlens.store import open_run
from tests.dashboard_runs import CLEAN_RUN, POISON_RUN, runs_folder


@pytest.fixture(scope="session")
def dashboard_runs(tmp_path_factory) -> Path:
    """Small digits runs, made once per session (tests/dashboard_runs.py)."""
    return runs_folder(tmp_path_factory)


def blobs(n_per_class: int = 40, n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """softmax - onehot-like rows: class c near -e_c, small noise."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    grads = -np.eye(n_classes)[labels] * 0.5 + rng.normal(scale=0.02, size=(len(labels), n_classes))
    return grads.astype(np.float32), labels


# --- fit_sample ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n_rows=st.lists(st.integers(0, 300), min_size=1, max_size=6), max_fit=st.integers(1, 500),
       seed=st.integers(0, 10))
def test_fit_sample_stays_near_budget_and_within_rows(n_rows, max_fit, seed):
    chosen = fit_sample(np.array(n_rows), max_fit=max_fit, random_state=seed)
    assert len(chosen) == len(n_rows)
    for rows, n in zip(chosen, n_rows, strict=True):
        assert np.all((rows >= 0) & (rows < max(n, 1))) and len(np.unique(rows)) == len(rows)
    total = sum(len(r) for r in chosen)
    if sum(n_rows) <= max_fit:
        assert total == sum(n_rows)
    else:
        assert total <= max_fit + len(n_rows)  # rounding, at most one per snapshot


def test_forced_rows_take_at_most_a_quarter_of_the_budget():
    forced = [np.arange(500)] * 10
    chosen = fit_sample(np.full(10, 50_000), max_fit=4000, always=forced, random_state=0)
    assert sum(len(r) for r in chosen) <= 4000 + 10
    assert sum(np.isin(r, np.arange(500)).sum() for r in chosen) < 1000 + 100  # + the random draw's share


def test_fit_sample_always_keeps_forced_rows_and_is_seeded():
    forced = [np.array([3, 7]), np.array([3, 7])]
    a = fit_sample(np.array([1000, 1000]), max_fit=50, always=forced, random_state=1)
    b = fit_sample(np.array([1000, 1000]), max_fit=50, always=forced, random_state=1)
    assert all({3, 7} <= set(rows.tolist()) for rows in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- placing and projecting ----------------------------------------------------------------


def test_place_puts_a_fitted_row_exactly_on_its_position():
    fit = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], np.float32)
    xy = np.array([[10, 10], [20, 10], [10, 20]], np.float32)
    out = place(fit, xy, fit[[1]], k=3)
    np.testing.assert_allclose(out, xy[[1]])


def test_place_interpolates_between_neighbours():
    fit = np.array([[0.0], [1.0]], np.float32)
    xy = np.array([[0, 0], [10, 0]], np.float32)
    out = place(fit, xy, np.array([[0.5]], np.float32), k=2)
    np.testing.assert_allclose(out, [[5, 0]], atol=1e-5)


@pytest.mark.parametrize("method", ["pca", "umap"])
def test_same_gradient_lands_on_the_same_spot_at_every_epoch(method):
    """One layout per run: the map holds still, so an unchanged example does not move."""
    grads, _ = blobs(n_per_class=30)
    later = grads.copy()
    later[:10] += 0.3  # ten examples move, the rest stay
    target = np.array([0.2, -0.4, 0.2], np.float32)
    frame = project_snapshots([grads, later], [0, 2], targets=[target, target], method=method, max_fit=1000)
    assert list(frame.columns) == ["epoch", "index", "x", "y"]
    assert len(frame) == 2 * len(grads) + 2
    assert np.isfinite(frame[["x", "y"]].to_numpy()).all()
    a = frame[(frame["epoch"] == 0) & (frame["index"] >= 10)][["x", "y"]].to_numpy()
    b = frame[(frame["epoch"] == 2) & (frame["index"] >= 10)][["x", "y"]].to_numpy()
    np.testing.assert_allclose(a, b, atol=1e-4)
    targets = frame[frame["index"] == TARGET_INDEX]
    np.testing.assert_allclose(targets[["x", "y"]].to_numpy()[0], targets[["x", "y"]].to_numpy()[1], atol=1e-4)


def test_the_table_is_in_epoch_then_index_order_whatever_order_the_snapshots_come_in():
    grads, _ = blobs(n_per_class=20)
    target = np.array([0.2, -0.4, 0.2], np.float32)
    frame = project_snapshots([grads, grads + 0.1, grads], [4, 0, 2], targets=[target, None, target],
                              method="pca")
    expected = frame.sort_values(["epoch", "index"], kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, expected)
    assert frame["epoch"].unique().tolist() == [0, 2, 4]
    assert frame[frame["index"] == TARGET_INDEX]["epoch"].tolist() == [2, 4]
    assert frame.dtypes.astype(str).tolist() == ["int32", "int64", "float32", "float32"]
    # each snapshot keeps its own rows: epochs 2 and 4 are the same gradients, epoch 0 the shifted ones
    xy = {e: frame[(frame["epoch"] == e) & (frame["index"] >= 0)][["x", "y"]].to_numpy() for e in (0, 2, 4)}
    np.testing.assert_array_equal(xy[2], xy[4])
    assert not np.allclose(xy[0], xy[2])


def test_an_empty_list_of_snapshots_gives_an_empty_table():
    frame = project_snapshots([], [])
    assert frame.empty and list(frame.columns) == ["epoch", "index", "x", "y"]


def test_umap_neighbours_are_exact_and_each_row_is_its_own_first():
    from sklearn.metrics import pairwise_distances

    from poisonlens.projection import _exact_neighbours

    rows = np.random.default_rng(0).normal(size=(200, 4)).astype(np.float32)
    idx, dist, index = _exact_neighbours(rows, 15)
    assert index is None and idx.shape == dist.shape == (200, 15)
    assert (idx[:, 0] == np.arange(200)).all() and np.allclose(dist[:, 0], 0)
    brute = np.sort(pairwise_distances(rows), axis=1)[:, :15]
    np.testing.assert_allclose(dist, brute, rtol=1e-4, atol=1e-5)


def test_options_are_checked_before_a_run_is_read(tmp_path):
    """A bad placement names the option, before the (here missing) run folder is opened."""
    with pytest.raises(InputError, match="placement"):
        compute_projection(tmp_path / "no-such-run", placement="tsne")
    with pytest.raises(TypeError):
        compute_projection(tmp_path / "no-such-run", colour="red")


def test_subsampled_fit_places_every_row():
    grads, _ = blobs(n_per_class=100)
    frame = project_snapshots([grads, grads], [0, 1], method="pca", max_fit=50)
    assert frame.groupby("epoch").size().tolist() == [len(grads), len(grads)]


# --- the parametric placement (an MLP trained on the fitted UMAP layout places every row) ---


@pytest.fixture(scope="module")
def parametric_maps():
    """Planted data: 4 well-separated classes in 6-D, two snapshots sharing half their rows;
    UMAP fitted on 300 of the 1,600 rows, everything placed by the parametric map, twice."""
    grads, labels = blobs(n_per_class=200, n_classes=4, seed=3)
    grads = np.hstack([grads, np.random.default_rng(4).normal(scale=0.02, size=(len(grads), 2))]).astype(np.float32)
    later = grads.copy()
    moved = np.arange(len(grads)) % 2 == 1
    later[moved] += np.random.default_rng(5).normal(scale=0.01, size=(int(moved.sum()), grads.shape[1])).astype(np.float32)
    run = [project_snapshots([grads, later], [0, 1], max_fit=300, random_state=seed) for seed in (7, 7)]
    return grads, labels, moved, run


def test_parametric_placement_is_deterministic_for_a_seed(parametric_maps):
    *_, (first, second) = parametric_maps
    assert first.attrs["placement"] == "parametric" and first.attrs["n_placed"] == len(first)
    pd.testing.assert_frame_equal(first, second)


def test_parametric_placement_puts_an_unchanged_row_on_the_same_spot_at_every_epoch(parametric_maps):
    """Aligned snapshots: a row identical in two snapshots (at any place in its batches) lands
    on exactly the same position; a row that moved in gradient space may move."""
    grads, _, moved, (frame, _) = parametric_maps
    a = frame[frame["epoch"] == 0].set_index("index")[["x", "y"]].to_numpy()
    b = frame[frame["epoch"] == 1].set_index("index")[["x", "y"]].to_numpy()
    np.testing.assert_array_equal(a[~moved], b[~moved])
    assert not np.array_equal(a[moved], b[moved])


def test_placing_a_row_does_not_depend_on_its_batch():
    from poisonlens.parametric import fit_parametric, place_parametric

    grads, _ = blobs(n_per_class=50, n_classes=3)
    xy = grads[:, :2] * 10
    net = fit_parametric(grads, xy, seed=0)
    alone = place_parametric(net, grads[[17]], batch=64)
    among = place_parametric(net, grads, batch=64)  # row 17 in the first of three batches
    shifted = place_parametric(net, np.concatenate([grads[:100], grads]), batch=64)  # in the third
    np.testing.assert_array_equal(alone[0], among[17])
    np.testing.assert_array_equal(among[17], shifted[117])


def test_parametric_placement_keeps_planted_classes_apart(parametric_maps):
    """Quality on planted data: rows the layout was not fitted on land among their own class:
    the class of each row's 10 nearest neighbours on the map is its own for at least 97%."""
    from sklearn.neighbors import KNeighborsClassifier

    grads, labels, _, (frame, _) = parametric_maps
    xy = frame[frame["epoch"] == 0].set_index("index")[["x", "y"]].to_numpy()
    half = np.arange(len(xy)) % 2 == 0
    knn = KNeighborsClassifier(n_neighbors=10).fit(xy[half], labels[half])
    assert knn.score(xy[~half], labels[~half]) >= 0.97


def test_project_rejects_an_unknown_placement():
    with pytest.raises(InputError, match="placement"):
        project_snapshots([np.zeros((5, 3), np.float32)], [0], placement="tsne")


def test_project_rejects_an_unknown_method(tmp_path):
    with pytest.raises(InputError, match="method"):
        project_snapshots([np.zeros((5, 3), np.float32)], [0], method="tsne")


# --- on a real run -------------------------------------------------------------------------


def test_compute_projection_stores_one_row_per_example_and_snapshot(dashboard_runs, tmp_path):
    shutil.copytree(dashboard_runs / CLEAN_RUN, tmp_path / "run", ignore=shutil.ignore_patterns("projections"))
    run = open_run(tmp_path / "run")
    frame = compute_projection(run.path, method="pca", write=False)
    n = len(run.examples())
    assert len(frame) == n * len(run.snapshot_epochs())
    assert sorted(frame["epoch"].unique()) == run.snapshot_epochs()
    assert run.projection("pca") is None  # write=False
    pd.testing.assert_frame_equal(compute_projection(run.path, method="pca"), frame)
    pd.testing.assert_frame_equal(run.projection("pca"), frame)


def test_stored_projection_covers_the_target_and_is_read_back(dashboard_runs):
    run = open_run(dashboard_runs / POISON_RUN)
    stored = run.projection("umap")
    assert projection_is_current(run, stored)
    assert (stored["index"] == TARGET_INDEX).sum() == len(run.snapshot_epochs())
    path = run.path / "projections" / "umap.parquet"
    before = os.stat(path).st_mtime_ns
    again = ensure_projection(run, method="umap")
    assert os.stat(path).st_mtime_ns == before  # read, not recomputed
    pd.testing.assert_frame_equal(again, stored)


def test_a_projection_missing_an_epoch_is_out_of_date(dashboard_runs):
    run = open_run(dashboard_runs / POISON_RUN)
    stored = run.projection("umap")
    assert not projection_is_current(run, stored[stored["epoch"] != stored["epoch"].max()])
    assert not projection_is_current(run, None)


def test_project_command_writes_the_map(dashboard_runs, capsys):
    run_dir = dashboard_runs / CLEAN_RUN
    assert cli_main(["project", "--run", str(run_dir), "--method", "pca", "--quiet"]) == 0
    assert "pca.parquet" in capsys.readouterr().out
    assert projection_is_current(open_run(run_dir), open_run(run_dir).projection("pca"))


# --- drift ---------------------------------------------------------------------------------


def test_the_planted_outlier_has_the_highest_drift():
    grads, labels = blobs()
    grads[5] = [0.3, -0.1, -0.2]  # class 0, far from its blob
    medoids = np.zeros(len(labels), bool)
    medoids[[0, 1, 40, 41, 80, 81]] = True
    scores = drift_scores(grads, labels, medoids=medoids)
    assert scores["drift"].idxmax() == 5
    assert np.median(scores.loc[labels == 0, "drift"]) == pytest.approx(1.0, rel=0.1)


def test_a_medoid_is_measured_to_the_nearest_other_medoid():
    grads = np.array([[0.0, 0.0], [1.0, 0.0], [0.1, 0.0]], np.float32)
    labels = np.zeros(3, int)
    medoids = np.array([True, True, False])
    d = drift_scores(grads, labels, medoids=medoids)["distance"].to_numpy()
    np.testing.assert_allclose(d, [1.0, 1.0, 0.1], atol=1e-6)


def test_without_medoids_the_class_median_is_the_reference():
    grads = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
    d = drift_scores(grads, np.zeros(4, int))["distance"].to_numpy()
    np.testing.assert_allclose(d, [1.5, 0.5, 0.5, 8.5])


def test_drift_floors_a_collapsed_class_scale():
    grads = np.zeros((5, 2), np.float32)
    grads[4] = [0.01, 0]
    drift = drift_scores(grads, np.zeros(5, int))["drift"].to_numpy()
    assert drift[4] == pytest.approx(0.01 / MIN_SCALE)


def test_target_similarity_is_cosine_and_nan_without_a_target():
    grads = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(cosine_to(grads, np.array([2.0, 0.0])), [1, 0, -1, 0])
    assert drift_scores(grads, np.zeros(4, int))["target_cos"].isna().all()


def test_dropped_examples_are_scored_against_the_active_ones():
    grads = np.array([[0.0], [0.1], [0.2], [5.0]], np.float32)
    active = np.array([True, True, True, False])
    scores = drift_scores(grads, np.zeros(4, int), active=active)
    assert scores["distance"].iloc[3] == pytest.approx(4.9)


def test_group_quantiles_gives_one_row_per_group():
    frame = pd.DataFrame({"epoch": [0] * 4 + [2] * 4, "group": ["a", "a", "b", "b"] * 2, "v": np.arange(8.0)})
    q = group_quantiles(frame, value="v", by=["epoch", "group"])
    assert len(q) == 4 and {"q05", "q50", "q95", "n", "mean"} <= set(q.columns)
    assert q["n"].tolist() == [2, 2, 2, 2]


# --- selections ----------------------------------------------------------------------------


def event(*points):
    return {"selection": {"points": list(points), "point_indices": [], "box": [], "lasso": []}}


def test_selection_reads_the_index_from_customdata_not_point_index():
    sel = event({"curve_number": 3, "point_index": 0, "customdata": [812, "7", "7", "–", 0.1, ""]},
                {"curve_number": 1, "point_index": 0, "customdata": [5]})
    assert selection_to_indices(sel) == [5, 812]


def test_selection_skips_the_target_and_points_without_customdata():
    sel = event({"customdata": [-1]}, {"point_index": 4}, {"customdata": 9}, {"customdata": [9]})
    assert selection_to_indices(sel) == [9]
    assert selection_to_indices(None) == [] and selection_to_indices({}) == []
    assert selection_to_indices(sel["selection"]) == [9]


def test_update_selection_modes():
    assert update_selection([1, 2], [2, 3]) == [2, 3]
    assert update_selection([1, 2], [2, 3], mode="add") == [1, 2, 3]
    assert update_selection([1, 2], [2, 3], mode="remove") == [1]
    with pytest.raises(ValueError):
        update_selection([], [], mode="xor")


def test_parse_indices_accepts_lists_and_ranges_and_names_a_bad_piece():
    assert parse_indices("3, 17 40-42") == [3, 17, 40, 41, 42]
    with pytest.raises(ValueError, match="'x'"):
        parse_indices("1, x")
    with pytest.raises(ValueError, match="out of range"):
        parse_indices("99", n_samples=10)
