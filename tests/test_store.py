"""The run store: atomic files, readable while a run trains, clear errors, resume after a real kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from poisonlens.errors import InputError
from poisonlens.store import (
    CHECKPOINTS,
    RUN_JSON,
    atomic_write_parquet,
    list_runs,
    open_run,
    pid_alive,
)
from poisonlens.train import TrainConfig, train
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def start_training(run_dir: Path, epochs: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "poisonlens.cli", "train", "--quiet", "--epochs", str(epochs), "--width", "8",
           "--snapshot-every", "1", "--runs-dir", str(run_dir.parent), "--name", run_dir.name]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_atomic_write_leaves_no_partial_file_when_writing_fails(tmp_path):
    path = tmp_path / "t.parquet"
    atomic_write_parquet(path, pd.DataFrame({"a": [1, 2]}))
    with pytest.raises(pa.ArrowInvalid):
        atomic_write_parquet(path, pd.DataFrame({"a": [object()]}))
    assert pd.read_parquet(path)["a"].tolist() == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_run_files_get_the_usual_permissions(tmp_path):
    run_dir = train(tiny_config(epochs=1), tmp_path / "r", show_progress=False)
    mask = os.umask(0)
    os.umask(mask)
    for path in (run_dir / RUN_JSON, run_dir / "metrics.parquet", run_dir / "images.npy"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_finished_run_reads_back_everything(tmp_path):
    run = open_run(train(tiny_config(epochs=2), tmp_path / "r", show_progress=False))
    assert run.status == "finished"
    assert run.snapshot_epochs() == [0, 2]
    n = len(run.examples())
    assert run.images().shape == (n, 8, 8, 1) and run.images().dtype == np.uint8
    assert run.gradients(2).shape == (n, 10)
    np.testing.assert_allclose(run.gradients(2).sum(1), 0, atol=1e-5)
    assert run.class_names == [str(c) for c in range(10)]
    assert TrainConfig.from_json(run.config) == tiny_config(epochs=2)


def test_open_run_on_a_folder_that_is_not_a_run_names_it(tmp_path):
    with pytest.raises(InputError, match=f"{tmp_path}.*not a poisonlens run"):
        open_run(tmp_path)


def test_open_run_refuses_an_unknown_format_version(tmp_path):
    run_dir = train(tiny_config(epochs=1), tmp_path / "r", show_progress=False)
    meta = json.loads((run_dir / RUN_JSON).read_text())
    (run_dir / RUN_JSON).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(InputError, match="format_version 99"):
        open_run(run_dir)


def test_list_runs_finds_runs_newest_first_and_skips_other_folders(tmp_path):
    train(tiny_config(epochs=1), tmp_path / "old", show_progress=False)
    train(tiny_config(epochs=1), tmp_path / "new", show_progress=False)
    (tmp_path / "junk").mkdir()
    assert [i.name for i in list_runs(tmp_path)] == ["new", "old"]


@pytest.mark.slow
def test_a_reader_polling_a_training_run_never_sees_a_partial_file(tmp_path):
    run_dir = tmp_path / "live"
    proc = start_training(run_dir, epochs=8)
    reads, seen_epochs = 0, set()
    try:
        while proc.poll() is None or reads == 0:
            if (run_dir / RUN_JSON).exists():
                run = open_run(run_dir)
                m = run.metrics()
                for e in run.snapshot_epochs():
                    assert len(run.snapshot(e)) == 1347
                    seen_epochs.add(e)
                run.progress()
                run.targets()
                if len(m):
                    assert m["epoch"].tolist() == list(range(len(m)))
                reads += 1
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == 0, proc.stderr.read().decode()
    assert reads > 10 and seen_epochs == set(range(9))


@pytest.mark.slow
def test_a_run_killed_with_sigkill_resumes_and_ends_like_an_uninterrupted_one(tmp_path):
    run_dir = tmp_path / "killed"
    proc = start_training(run_dir, epochs=8)
    last = run_dir / CHECKPOINTS / "last.pt"
    deadline = time.time() + 240
    while time.time() < deadline:
        if last.exists() and torch.load(last, weights_only=True)["epoch"] >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert open_run(run_dir).status == "interrupted"
    subprocess.run([sys.executable, "-m", "poisonlens.cli", "train", "--quiet", "--resume", str(run_dir)],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    # the uninterrupted twin also runs as its own process, as a user would run it
    whole = tmp_path / "whole"
    assert start_training(whole, epochs=8).wait(timeout=300) == 0
    a = torch.load(run_dir / CHECKPOINTS / "model.pt", weights_only=True)
    b = torch.load(whole / CHECKPOINTS / "model.pt", weights_only=True)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    assert open_run(run_dir).status == "finished"


def test_pid_alive_tells_a_live_process_from_a_finished_one():
    assert pid_alive(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # reaped: the id no longer names a process
    assert not pid_alive(child.pid)
    assert pid_alive(None) and pid_alive(0)  # not recorded: never marked as killed
