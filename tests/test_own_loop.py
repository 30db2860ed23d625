"""examples/own_loop.py (plain PyTorch + EpicTracker) drops exactly what `poisonlens train` drops."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from poisonlens.store import open_run

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "own_loop.py"
POISONLENS = Path(sys.executable).parent / "poisonlens"
SCHEDULE = ["--epochs", "6", "--width", "8", "--snapshot-every", "1", "--drop-after", "1",
            "--stop-after", "5", "--subset-size", "0.2", "--seed", "3"]  # fmt: skip


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def both_runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parity")
    # run from another folder, as a user would
    out = run([sys.executable, str(EXAMPLE), "--runs-dir", str(root), "--name", "own", *SCHEDULE], root)
    assert "run written to" in out
    run([str(POISONLENS), "train", "--dataset", "digits", "--defense", "epic", "--device", "cpu",
         "--runs-dir", str(root), "--name", "train", *SCHEDULE], root)  # fmt: skip
    return root / "own", root / "train"


@pytest.mark.slow
def test_the_own_loop_drops_what_train_drops(both_runs):
    own, train = open_run(both_runs[0]), open_run(both_runs[1])
    assert own.status == train.status == "finished"
    assert own.snapshot_epochs() == train.snapshot_epochs() == list(range(7))
    total = 0
    for epoch in own.snapshot_epochs():
        a, b = own.snapshot(epoch), train.snapshot(epoch)
        assert np.array_equal(a["dropped_epoch"].to_numpy(), b["dropped_epoch"].to_numpy()), epoch
        assert np.array_equal(a["drop"].to_numpy(), b["drop"].to_numpy()), epoch
        total += int(a["drop"].sum())
    assert total > 0  # the comparison means something only when EPIC dropped examples
    np.testing.assert_array_equal(own.metrics()["n_dropped"], train.metrics()["n_dropped"])
    np.testing.assert_allclose(own.metrics()["test_acc"], train.metrics()["test_acc"])


@pytest.mark.slow
@pytest.mark.parametrize("page", ["views/overview.py", "views/gradient_space.py", "views/suspects.py"])
def test_the_dashboard_opens_the_example_run(both_runs, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("POISONLENS_RUNS", str(both_runs[0].parent))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.query_params["run"] = "own"
    at.session_state["gs_method"] = "pca"
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
