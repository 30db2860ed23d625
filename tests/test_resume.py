"""Resume: killed runs continue, damaged files give one line, one writer at a time, no leftovers."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import tests.train_driver  # noqa: F401  (registers the 'test-slow' defense)
from poisonlens.checkpoint import LOCK, load_checkpoint, load_weights, save_checkpoint
from poisonlens.errors import InputError
from poisonlens.store import CHECKPOINTS, METRICS, RUN_JSON, TARGETS, open_run
from poisonlens.train import TrainConfig, train
from tests.conftest import REPO, tiny_config

POISONS = REPO / "sample_data" / "poisons" / "demo" / "poisons.npz"


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / CHECKPOINTS / "model.pt", weights_only=True)


def start_driver(run_dir: Path, config: TrainConfig, *, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "POISONLENS_TEST_SLEEP": str(sleep), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.train_driver", str(run_dir), json.dumps(config.to_json())]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip


def wait_for_phase(run_dir: Path, phase: str, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            if json.loads((run_dir / "progress.json").read_text()).get("phase") == phase:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"training never reached phase {phase!r}")


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def one_line(err: BaseException) -> str:
    text = str(err)
    assert "\n" not in text and "weights_only" not in text and "Traceback" not in text, text
    return text


@pytest.fixture
def stopped_run(tmp_path) -> Path:
    """A run stopped cleanly after epoch 1 of 3 (its last.pt is at epoch 1)."""
    return train(tiny_config(epochs=3, defense="test-slow"), tmp_path / "r", show_progress=False,
                 stop_at_epoch=1)  # fmt: skip


def test_a_run_killed_before_its_first_checkpoint_starts_over_on_resume(tmp_path):
    config = tiny_config(epochs=2, defense="test-slow")
    proc = start_driver(tmp_path / "killed", config, sleep=60)
    wait_for_phase(tmp_path / "killed", "snapshot", proc)  # epoch 0's snapshot, before any checkpoint
    kill(proc)
    assert not (tmp_path / "killed" / CHECKPOINTS / "last.pt").exists()
    train(TrainConfig(), tmp_path / "killed", resume=True, show_progress=False)
    whole = train(config, tmp_path / "whole", show_progress=False)
    assert open_run(tmp_path / "killed").status == "finished"
    for k, v in weights(whole).items():
        torch.testing.assert_close(v, weights(tmp_path / "killed")[k], rtol=0, atol=0)


def test_a_second_writer_is_refused_while_the_first_lives_and_a_dead_ones_lock_is_taken_over(
    tmp_path,
):
    run_dir = tmp_path / "r"
    proc = start_driver(run_dir, tiny_config(epochs=2, defense="test-slow"), sleep=60)
    try:
        wait_for_phase(run_dir, "snapshot", proc)
        with pytest.raises(InputError, match=f"run is being written by process {proc.pid}"):
            train(TrainConfig(), run_dir, resume=True, show_progress=False)
    finally:
        kill(proc)
    assert json.loads((run_dir / LOCK).read_text())["pid"] == proc.pid  # left behind by the kill
    train(TrainConfig(), run_dir, resume=True, show_progress=False)
    assert open_run(run_dir).status == "finished" and not (run_dir / LOCK).exists()


def test_temporary_files_of_interrupted_writes_are_removed_at_the_next_open(stopped_run):
    leftovers = [stopped_run / CHECKPOINTS / ".last.pt.k2j3h4.tmp", stopped_run / ".metrics.parquet.x1.tmp"]
    for path in leftovers:
        path.write_bytes(os.urandom(1 << 20))  # what a write killed before os.replace leaves
    train(TrainConfig(), stopped_run, resume=True, show_progress=False)
    assert not any(p.exists() for p in leftovers)
    assert not list(stopped_run.rglob("*.tmp"))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Payload:
    """Pickles to a call of os.system: loading it must never run it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("damage", ["truncated", "empty", "not torch", "malicious"])
def test_a_damaged_checkpoint_gives_one_line_naming_it(stopped_run, tmp_path, damage):
    last = stopped_run / CHECKPOINTS / "last.pt"
    marker = tmp_path / "payload-ran"
    if damage == "truncated":
        truncate(last)
    elif damage == "empty":
        last.write_bytes(b"")
    elif damage == "not torch":
        last.write_text("epoch,loss\n1,0.5\n")
    else:
        torch.save({"epoch": 1, "model": Payload(marker)}, last)
    with pytest.raises(InputError) as err:
        train(TrainConfig(), stopped_run, resume=True, show_progress=False)
    assert one_line(err.value).startswith(str(last))
    assert not marker.exists()


def test_the_cli_refuses_a_malicious_checkpoint_in_one_line_without_running_it(tmp_path):
    stopped_run = train(tiny_config(epochs=3), tmp_path / "r", show_progress=False, stop_at_epoch=1)
    marker = tmp_path / "payload-ran"
    torch.save({"epoch": 1, "model": Payload(marker)}, stopped_run / CHECKPOINTS / "last.pt")
    out = subprocess.run([sys.executable, "-m", "poisonlens.cli", "train", "--quiet", "--resume", str(stopped_run)],
                         cwd=REPO, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "last.pt" in out.stderr, out.stderr
    assert "weights_only" not in out.stderr and not marker.exists()


def test_a_bad_config_in_run_json_names_run_json(stopped_run):
    meta = json.loads((stopped_run / RUN_JSON).read_text())
    meta["config"]["epochs"] = "many"
    (stopped_run / RUN_JSON).write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        train(TrainConfig(), stopped_run, resume=True, show_progress=False)
    assert one_line(err.value).startswith(str(stopped_run / RUN_JSON)) and "epochs" in str(err.value)


def test_a_truncated_metrics_table_names_the_file(stopped_run):
    truncate(stopped_run / METRICS)
    with pytest.raises(InputError) as err:
        train(TrainConfig(), stopped_run, resume=True, show_progress=False)
    assert one_line(err.value).startswith(str(stopped_run / METRICS))


def test_a_truncated_targets_table_names_the_file(tmp_path):
    if not POISONS.is_file():
        pytest.skip(f"sample poison set not found at {POISONS}")
    run = train(tiny_config(epochs=3, poisons=str(POISONS)), tmp_path / "p", show_progress=False,
                stop_at_epoch=2)  # fmt: skip
    truncate(run / TARGETS)
    with pytest.raises(InputError) as err:
        train(TrainConfig(), run, resume=True, show_progress=False)
    assert one_line(err.value).startswith(str(run / TARGETS))


def test_a_checkpoint_round_trips_through_map_location_and_holds_only_cpu_tensors(stopped_run, tmp_path):
    state = load_checkpoint(stopped_run / CHECKPOINTS / "last.pt", n_samples=1347,
                            map_location=torch.device("cpu"))  # fmt: skip
    tensors = [*state["model"].values(), state["active"], state["dropped_epoch"]]
    assert state["epoch"] == 1 and all(t.device.type == "cpu" for t in tensors)
    # written back and read onto the 'meta' device: map_location decides where tensors go
    save_checkpoint(tmp_path / "copy.pt", state)
    moved = load_checkpoint(tmp_path / "copy.pt", n_samples=1347, map_location="meta")
    assert all(t.device.type == "meta" for t in moved["model"].values())
    with pytest.raises(InputError, match="masks do not fit"):
        load_checkpoint(tmp_path / "copy.pt", n_samples=10, map_location="cpu")


def test_a_resume_on_an_explicit_cpu_device_equals_the_uninterrupted_run(stopped_run, tmp_path):
    train(TrainConfig(), stopped_run, resume=True, show_progress=False, device="cpu")
    whole = train(tiny_config(epochs=3, defense="test-slow"), tmp_path / "whole", show_progress=False)
    for k, v in weights(whole).items():
        torch.testing.assert_close(v, weights(stopped_run)[k], rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["not torch", "malicious", "not a state dict"])
def test_a_bad_pretrained_file_gives_one_line_naming_it(tmp_path, kind):
    path, marker = tmp_path / "model.pt", tmp_path / "payload-ran"
    if kind == "not torch":
        path.write_bytes(pickle.dumps({"a": 1}))
    elif kind == "malicious":
        torch.save({"body.0.weight": Payload(marker)}, path)
    else:
        torch.save([torch.zeros(3)], path)
    with pytest.raises(InputError) as err:
        load_weights(path)
    assert one_line(err.value).startswith(str(path)) and not marker.exists()
    with pytest.raises(InputError, match="model.pt"):
        train(tiny_config(scenario="finetune", pretrained=str(path)), tmp_path / "r", show_progress=False)


def test_the_cli_resumes_on_the_device_it_is_given(tmp_path):
    run = train(tiny_config(epochs=2), tmp_path / "r", show_progress=False, stop_at_epoch=1)
    cli = [sys.executable, "-m", "poisonlens.cli", "train", "--quiet", "--resume", str(run), "--device"]
    missing = subprocess.run([*cli, "cuda:7"], cwd=REPO, capture_output=True, text=True, timeout=120)
    if torch.cuda.device_count() <= 7:
        lines = missing.stderr.strip().splitlines()
        assert missing.returncode == 2 and len(lines) == 1 and "--device" in lines[0], missing.stderr
    subprocess.run([*cli, "cpu"], cwd=REPO, check=True, capture_output=True, timeout=300)
    assert open_run(run).status == "finished" and open_run(run).metrics()["epoch"].max() == 2
