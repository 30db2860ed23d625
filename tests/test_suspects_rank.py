"""The suspects table: ranked by what the defense knew when it dropped each example.

A small run store is written by hand with planted decisions (three snapshots, two classes), so
the expected ranking is known; one real EPIC run checks the same rule on a trained model.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from poisonlens.cli import main
from poisonlens.export import suspects_table, to_safe_csv
from poisonlens.store import RunWriter, open_run
from tests.dashboard_runs import POISON_RUN, runs_folder

N = 8


def snapshot_frame(
    epoch: int, dropped_epoch: np.ndarray, decisions: dict[int, dict]
) -> pd.DataFrame:
    """A snapshot of N examples; ``decisions`` sets an example's score and EPIC facts at this epoch.

    Examples dropped before ``epoch`` are inactive: NaN score, medoid -1, cluster size 0,
    not isolated (what the trainer writes for them).
    """
    active = (dropped_epoch < 0) | (dropped_epoch >= epoch)
    frame = pd.DataFrame(
        {
            "index": np.arange(N),
            "label": np.arange(N) % 2,
            "g_0": np.linspace(-0.5, 0.5, N, dtype=np.float32),
            "g_1": np.linspace(0.5, -0.5, N, dtype=np.float32),
            "loss": np.full(N, 0.1 * epoch),
            "confidence": np.full(N, 0.9),
            "prediction": np.arange(N) % 2,
            "active": active,
            "score": np.where(active, 0.05, np.nan),
            "suspect": np.zeros(N, bool),
            "drop": dropped_epoch == epoch,
            "dropped_epoch": np.where(dropped_epoch <= epoch, dropped_epoch, -1),
            "medoid": np.where(active, 0, -1),
            "cluster_size": np.where(active, 3, 0),
            "is_medoid": np.zeros(N, bool),
            "isolated": np.zeros(N, bool),
        }
    )
    for i, facts in decisions.items():
        for col, value in facts.items():
            frame.loc[i, col] = value
    return frame


def isolated(score: float, i: int) -> dict:
    return {
        "score": score,
        "suspect": True,
        "medoid": i,
        "cluster_size": 1,
        "is_medoid": True,
        "isolated": True,
    }


@pytest.fixture
def planted(tmp_path):
    """Examples 1 and 5 dropped at epoch 2 (isolated, scores 0.9 and 0.4), example 6 at epoch 4
    (isolated, 0.7); example 2 flagged at epoch 4 but kept (0.95)."""
    run_dir = tmp_path / "planted"
    writer = RunWriter(run_dir)
    writer.create(
        "planted", {"defense": "epic", "epochs": 4}, {}, class_names=["a", "b"], target=None
    )
    writer.write_examples(
        pd.DataFrame(
            {
                "index": np.arange(N),
                "label": np.arange(N) % 2,
                "is_poison": np.isin(np.arange(N), [1, 6]),
                "base_index": np.arange(N),
            }
        )
    )
    dropped = np.full(N, -1)
    dropped[[1, 5]] = 2
    dropped[6] = 4
    writer.write_snapshot(0, snapshot_frame(0, dropped, {}))
    writer.write_snapshot(2, snapshot_frame(2, dropped, {1: isolated(0.9, 1), 5: isolated(0.4, 5)}))
    writer.write_snapshot(
        4,
        snapshot_frame(
            4,
            dropped,
            {6: isolated(0.7, 6), 2: {"score": 0.95, "suspect": True, "cluster_size": 2}},
        ),
    )
    writer.set_status("finished")
    return open_run(run_dir)


def test_dropped_examples_are_ranked_by_the_score_that_dropped_them(planted):
    table = suspects_table(planted)
    assert table["index"].tolist() == [1, 6, 5, 2]  # dropped by score, then flagged
    assert table["rank"].tolist() == [1, 2, 3, 4]
    assert table["score"].tolist() == pytest.approx([0.9, 0.7, 0.4, 0.95])
    assert table["dropped_epoch"].tolist() == [2, 4, 2, -1]


def test_an_example_dropped_earlier_keeps_its_cluster_facts(planted):
    row = suspects_table(planted).set_index("index").loc[5]
    # at epoch 4 it is inactive (medoid -1, cluster 0); the table shows epoch 2's row
    assert row["isolated"] and row["cluster_size"] == 1 and row["medoid"] == 5
    assert row["loss"] == pytest.approx(0.2)  # the dropping snapshot's loss, not epoch 4's


def test_an_earlier_epoch_ranks_only_what_was_dropped_by_then(planted):
    table = suspects_table(planted, 2)
    assert table["index"].tolist() == [1, 5]


def test_the_defense_columns_come_from_the_snapshot_not_a_fixed_list(tmp_path, planted):
    """A defense without EPIC's columns, with one of its own: the table follows the snapshot."""
    run_dir = tmp_path / "other"
    writer = RunWriter(run_dir)
    writer.create(
        "other",
        {"defense": "not-a-registered-defense", "epochs": 2},
        {},
        class_names=["a", "b"],
        target=None,
    )
    writer.write_examples(planted.examples())
    snap = planted.snapshot(2).drop(columns=["medoid", "cluster_size", "is_medoid", "isolated"])
    writer.write_snapshot(2, snap.assign(knn_disagreement=np.arange(N) / N))
    table = suspects_table(open_run(run_dir))
    assert "knn_disagreement" in table.columns
    assert not {"medoid", "cluster_size", "isolated"} & set(table.columns)
    assert table.set_index("index").loc[1, "knn_disagreement"] == pytest.approx(1 / N)


@pytest.mark.parametrize("epoch", ["-5", "3", "99"])
def test_export_at_an_epoch_without_a_snapshot_names_the_option(planted, tmp_path, capsys, epoch):
    out = tmp_path / "s.csv"
    code = main(["export", "--run", str(planted.path), "--epoch", epoch, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--epoch" in err and "0, 2, 4" in err
    assert not out.exists()


def test_export_writes_the_ranked_table(planted, tmp_path):
    out = tmp_path / "s.csv"
    assert main(["export", "--run", str(planted.path), "--epoch", "4", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [int(r["index"]) for r in rows] == [1, 6, 5, 2]
    assert out.read_bytes() == to_safe_csv(suspects_table(planted, 4)).encode()


@pytest.fixture(scope="module")
def epic_run(tmp_path_factory):
    return open_run(runs_folder(tmp_path_factory) / POISON_RUN)


def test_on_a_real_epic_run_every_dropped_row_carries_its_dropping_snapshots_facts(epic_run):
    table = suspects_table(epic_run, include_flagged=False)
    assert len(table) > 0
    assert table["score"].notna().all()
    scores = table["score"].to_numpy()
    assert (np.diff(scores) <= 0).all()  # most suspicious first
    for epoch, rows in table.groupby("dropped_epoch"):
        snap = epic_run.snapshot(int(epoch)).set_index("index").loc[rows["index"]]
        np.testing.assert_allclose(rows["score"].to_numpy(), snap["score"].to_numpy())
        assert (rows["cluster_size"].to_numpy() == snap["cluster_size"].to_numpy()).all()
        assert (rows["isolated"].to_numpy(bool) == snap["isolated"].to_numpy(bool)).all()


def test_a_defense_that_declares_its_columns_is_read_by_its_declaration(tmp_path, planted):
    from poisonlens.defense import output_columns

    run_dir = tmp_path / "declared"
    writer = RunWriter(run_dir)
    writer.create(
        "declared", {"defense": "epic", "epochs": 2}, {}, class_names=["a", "b"], target=None
    )
    writer.write_examples(planted.examples())
    writer.write_snapshot(
        2, planted.snapshot(2).assign(scratch=np.zeros(N))
    )  # written, not declared
    table = suspects_table(open_run(run_dir))
    written = planted.snapshot(2).columns
    declared = [c for c in output_columns("epic") if c not in ("score", "suspect") and c in written]
    from poisonlens.export import REVIEW_COLUMNS

    facts = [c for c in table.columns if c not in REVIEW_COLUMNS]  # the review comes last
    assert facts[-len(declared) :] == declared
    assert table.columns[-len(REVIEW_COLUMNS) :].tolist() == list(REVIEW_COLUMNS)
    assert "scratch" not in table.columns


# --------------------------------------------------------------------------- the bundled sample


def test_the_samples_epic_export_grades_its_drops_in_the_documented_order(tmp_path):
    # Before the isolation term every isolated medoid scored exactly 1.0: one value for all 310
    # drops, so "most suspicious first" was index order.
    from pathlib import Path

    sample = Path(__file__).resolve().parent.parent / "sample_data" / "runs" / "demo-epic"
    out = tmp_path / "suspects.csv"
    assert main(["export", "--run", str(sample), "--dropped-only", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert len(table) == 310 and (table["dropped_epoch"] >= 0).all()
    assert table["score"].nunique() > 0.8 * len(table)  # real spread, not one tied value
    assert (np.diff(table["score"].to_numpy()) <= 0).all()
    # docs/epic.md: a dropped example scores 1 + L / (1 + L), L = log(1 + isolation), in [1, 2]
    log_r = np.log1p(table["isolation"].to_numpy())
    np.testing.assert_allclose(table["score"], 1 + log_r / (1 + log_r), rtol=1e-9)
    assert table["score"].between(1, 2).all()
    # drift is exported, and the prediction is a class name like class_name
    assert table["drift"].notna().all()
    assert set(table["prediction"].astype(str)) <= set(table["class_name"].astype(str)) | {
        str(c) for c in range(10)
    }


def test_kept_examples_rank_below_every_dropped_one_in_the_samples_epic_snapshots():
    from pathlib import Path

    run = open_run(Path(__file__).resolve().parent.parent / "sample_data" / "runs" / "demo-epic")
    for epoch in run.snapshot_epochs():
        snap = run.snapshot(epoch, columns=["active", "suspect", "score"])
        active = snap["active"].to_numpy(bool)
        suspect = snap["suspect"].to_numpy(bool)
        score = snap["score"].to_numpy()
        if suspect.any():
            assert score[suspect].min() >= 1 > score[active & ~suspect].max(), epoch
