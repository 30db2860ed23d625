"""The review loop's files: review.parquet, `poisonlens review --import/--export`, `train --exclude`."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from poisonlens.cli import main
from poisonlens.review import REVIEW, mark, read_review, unmark
from poisonlens.store import DamagedFile, atomic_write_parquet, open_run
from tests.conftest import REPO

SAMPLE_EPIC = REPO / "sample_data" / "runs" / "demo-epic"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A copy of the sample's EPIC run (1,347 examples), so marking never touches the sample."""
    dest = tmp_path / "demo-epic"
    shutil.copytree(SAMPLE_EPIC, dest)
    return dest


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


# --------------------------------------------------------------------------- review.parquet


def test_marking_keeps_one_verdict_per_example_with_who_and_when(run_dir):
    run = open_run(run_dir)
    assert read_review(run).empty
    mark(run, [866, 777], "poison", note="far from its class", who="ana")
    mark(run, [777], "clean", who="bo")  # a second verdict replaces the first
    review = read_review(open_run(run_dir))
    assert review["index"].tolist() == [777, 866]
    assert review["verdict"].tolist() == ["clean", "poison"]
    assert review["who"].tolist() == ["bo", "ana"]
    assert review.loc[1, "note"] == "far from its class"
    assert all(len(w) == 20 and w.endswith("Z") for w in review["when"])
    unmark(run, [866])
    assert read_review(open_run(run_dir))["index"].tolist() == [777]


def test_who_defaults_to_the_os_user(run_dir):
    import getpass

    mark(open_run(run_dir), [3], "unsure")
    assert read_review(open_run(run_dir))["who"].tolist() == [getpass.getuser()]


def test_a_verdict_outside_the_three_or_an_index_outside_the_run_is_refused(run_dir):
    run = open_run(run_dir)
    with pytest.raises(ValueError, match="verdict 'maybe'"):
        mark(run, [1], "maybe")
    with pytest.raises(ValueError, match="not an example of the run"):
        mark(run, [1347], "poison")
    assert not (run_dir / REVIEW).exists()


def test_a_tampered_review_file_is_one_damaged_file_error(run_dir):
    frame = pd.DataFrame({"index": [5, 10**9], "verdict": ["poison", "clean"], "note": ["", ""],
                          "who": ["a", "b"], "when": ["", ""]})  # fmt: skip
    atomic_write_parquet(run_dir / REVIEW, frame)
    with pytest.raises(DamagedFile, match="review.parquet.*not an example"):
        read_review(open_run(run_dir))
    (run_dir / REVIEW).write_bytes(b"PAR1 not really")
    with pytest.raises(DamagedFile, match="review.parquet"):
        read_review(open_run(run_dir))


def test_a_review_link_out_of_the_run_folder_is_refused(run_dir, tmp_path):
    outside = tmp_path / "elsewhere.parquet"
    atomic_write_parquet(outside, pd.DataFrame({"index": [1]}))
    os.symlink(outside, run_dir / REVIEW)
    with pytest.raises(DamagedFile, match="symbolic link"):
        read_review(open_run(run_dir))


# --------------------------------------------------------------------------- poisonlens review


def test_review_import_then_export_round_trips(run_dir, tmp_path, capsys):
    src = write_csv(tmp_path / "in.csv", [
        ["index", "verdict", "note", "who"],
        ["866", "poison", 'far out, "isolated"', "ana"],
        ["777", "clean", "", ""],
        ["12", "unsure", "=HYPERLINK() in a note stays text", "bo"],
    ])  # fmt: skip
    assert main(["review", "--run", str(run_dir), "--import", str(src)]) == 0
    assert "3 verdicts imported" in capsys.readouterr().out
    out = tmp_path / "out.csv"
    assert main(["review", "--run", str(run_dir), "--export", str(out)]) == 0
    exported = list(csv.DictReader(out.open(newline="")))
    assert [r["index"] for r in exported] == ["12", "777", "866"]
    assert exported[0]["note"].startswith("'=")  # a spreadsheet does not run it
    assert exported[2]["note"] == 'far out, "isolated"'
    # the export imported into a fresh copy gives the same review, formula escape undone
    other = tmp_path / "copy"
    shutil.copytree(SAMPLE_EPIC, other)
    assert main(["review", "--run", str(other), "--import", str(out)]) == 0
    a, b = read_review(open_run(run_dir)), read_review(open_run(other))
    pd.testing.assert_frame_equal(a, b)
    assert b.loc[b["index"] == 12, "note"].item() == "=HYPERLINK() in a note stays text"
    assert b.loc[b["index"] == 777, "who"].item()  # an empty who became the OS user


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"index,verdict\n5,poison\n9,maybe\n", "verdict 'maybe'"),
        (b"index,verdict\n5,poison\n99999,clean\n", "not an example of the run"),
        (b"index,verdict\n-3,clean\n", "not an example of the run"),
        (b"idx,verdict\n5,poison\n", "no 'index' column"),
        (b"index,verdict\n5,poison\n5,clean\n", "index 5 has two verdicts"),
        (b"index,verdict\n\xff\xfe,poison\n", "not UTF-8"),
        (b"", "empty file"),
    ],
)
def test_a_bad_review_file_is_one_line_and_exit_2(run_dir, tmp_path, capsys, content, problem):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    assert main(["review", "--run", str(run_dir), "--import", str(bad)]) == 2
    err = one_line_error(capsys)
    assert problem in err and "bad.csv" in err
    assert not (run_dir / REVIEW).exists()  # nothing half-imported


def test_a_fifo_given_as_the_review_file_is_refused_without_blocking(run_dir, tmp_path, capsys):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    assert main(["review", "--run", str(run_dir), "--import", str(fifo)]) == 2
    assert "not a regular file" in one_line_error(capsys)


def test_the_suspects_export_carries_the_review(run_dir, tmp_path):
    mark(open_run(run_dir), [866], "poison", note="n", who="ana")
    out = tmp_path / "s.csv"
    assert main(["export", "--run", str(run_dir), "--dropped-only", "--out", str(out)]) == 0
    rows = {r["index"]: r for r in csv.DictReader(out.open(newline=""))}
    assert (rows["866"]["review"], rows["866"]["review_note"], rows["866"]["review_who"]) == ("poison", "n", "ana")
    assert rows["777"]["review"] == ""


# --------------------------------------------------------------------------- train --exclude


def test_excluded_examples_are_never_trained_on_and_recorded(tmp_path, capsys):
    # Leave out every training 9: a model that never sees a 9 hardly ever predicts one, while
    # the examples it trains on are predicted well. The run records what was left out.
    from poisonlens.data.datasets import load_digits_dataset

    labels = np.asarray(load_digits_dataset().y_train)
    nines = np.flatnonzero(labels == 9)
    listing = tmp_path / "suspects.csv"
    pd.DataFrame({"rank": np.arange(len(nines)) + 1, "index": nines}).to_csv(listing, index=False)
    code = main(["train", "--quiet", "--epochs", "8", "--width", "8", "--snapshot-every", "4",
                 "--exclude", str(listing), "--runs-dir", str(tmp_path), "--name", "no9"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    run = open_run(tmp_path / "no9")
    record = run.meta["exclude"]
    assert record["count"] == len(nines) and record["file"] == str(listing)
    assert len(record["sha256"]) == 64 and record["n_poisons"] == 0
    assert np.array_equal(np.flatnonzero(run.examples()["excluded"]), nines)
    for epoch in run.snapshot_epochs():
        snap = run.snapshot(epoch, columns=["active", "dropped_epoch", "prediction", "label"])
        assert not snap["active"].to_numpy()[nines].any()
        assert (snap["dropped_epoch"].to_numpy()[nines] == -1).all()  # left out, not dropped
    last = run.snapshot(run.snapshot_epochs()[-1], columns=["prediction", "label"])
    seen = labels != 9
    assert (last["prediction"].to_numpy()[seen] == labels[seen]).mean() > 0.8
    assert (last["prediction"].to_numpy()[nines] == 9).mean() < 0.05
    metrics = run.metrics()
    assert (metrics["n_active"] == len(labels) - len(nines)).all()
    assert (metrics["n_dropped"] == 0).all()


def test_exclude_takes_only_the_poison_rows_of_a_review_export(tmp_path, run_dir):
    from poisonlens.review import read_index_csv

    mark(open_run(run_dir), [4, 9], "poison")
    mark(open_run(run_dir), [7], "clean")
    mark(open_run(run_dir), [8], "unsure")
    out = tmp_path / "review.csv"
    assert main(["review", "--run", str(run_dir), "--export", str(out)]) == 0
    indices, digest = read_index_csv(out)
    assert indices.tolist() == [4, 9] and len(digest) == 64


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"rank,idx\n1,5\n", "no 'index' column"),
        (b"index\n5\nfive\n", "line 3: index 'five'"),
        (b"index\n5\n-1\n", "line 3: index '-1'"),
        (b"index\n5\n100000\n", "index 100000 is not an example of this data set"),
        (b"\xff\xfeindex\n", "not UTF-8"),
    ],
)
def test_a_bad_exclude_file_is_one_line_exit_2_and_no_run(tmp_path, capsys, content, problem):
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    runs = tmp_path / "runs"
    code = main(["train", "--quiet", "--epochs", "1", "--width", "4", "--exclude", str(bad),
                 "--runs-dir", str(runs), "--name", "x"])  # fmt: skip
    assert code == 2
    err = one_line_error(capsys)
    assert problem in err and "--exclude" in err
    assert not (runs / "x" / "run.json").exists()


def test_the_exclude_option_is_in_the_saved_config(tmp_path):
    from poisonlens.config import TrainConfig

    config = TrainConfig(exclude="a.csv")
    assert json.loads(json.dumps(config.to_json()))["exclude"] == "a.csv"
    assert TrainConfig.from_json(config.to_json()) == config
