"""Launching training in the background: parameters checked first, a detached process, its status."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields, replace
from pathlib import Path

import pytest

from poisonlens.config import TrainConfig
from poisonlens.errors import InputError
from poisonlens.launch import (
    CONFIG_LINE,
    LAUNCH_JSON,
    LOG,
    check_launch,
    launch_status,
    launch_training,
    list_launches,
)
from poisonlens.store import list_runs, open_run
from tests.conftest import tiny_config
from tests.test_config import DEMO_POISONS, digits_npz, every_field_changed


def wait_until_done(run_dir: Path, timeout: float = 240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = launch_status(run_dir)
        if status.done and status.state != "mapping":
            return status
        time.sleep(0.5)
    raise AssertionError(f"{run_dir} not done after {timeout} s: {launch_status(run_dir)}")


def child_config(run_dir: Path, timeout: float = 120.0) -> dict:
    """The config the background process logged as the one it trains with."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = (run_dir / LOG).read_text() if (run_dir / LOG).exists() else ""
        for line in text.splitlines():
            if line.startswith(CONFIG_LINE):
                return json.loads(line[len(CONFIG_LINE):])
        if launch_status(run_dir).done:
            break
        time.sleep(0.2)
    raise AssertionError(f"no config line in {run_dir / LOG}: {launch_status(run_dir).log_tail}")


def test_every_field_reaches_the_background_process(tmp_path):
    digits_npz(tmp_path)
    config = every_field_changed(tmp_path)
    run_dir = launch_training(config, runs_dir=tmp_path / "runs", name="every", projection=None)
    launched = json.loads((run_dir / LAUNCH_JSON).read_text())["config"]
    got = TrainConfig.from_json(child_config(run_dir))
    assert got == TrainConfig.from_json(launched)
    default = TrainConfig()
    for f in fields(TrainConfig):  # nothing reset to its default on the way
        assert getattr(got, f.name) != getattr(default, f.name), f.name
    assert got == replace(config, dataset=f"npz:{(tmp_path / 'digits.npz').resolve()}",
                          poisons=str(DEMO_POISONS.resolve()), pretrained=str((tmp_path / "model.pt").resolve()),
                          exclude=str((tmp_path / "exclude.csv").resolve()))
    wait_until_done(run_dir)


def test_the_bundled_poison_set_passes_the_checks(tmp_path):
    config, run_dir = check_launch(tiny_config(poisons=str(DEMO_POISONS), defense="epic",
                                              defense_params={"subset_size": 0.2}),
                                   runs_dir=tmp_path, name="demo")
    assert config.poisons == str(DEMO_POISONS.resolve()) and run_dir == tmp_path.resolve() / "demo"


@pytest.mark.parametrize("change, message", [
    (dict(dataset="mnist"), "unknown data set"),
    (dict(dataset="npz:{tmp}/no/such/file.npz"), "not found"),
    (dict(poisons="{tmp}/no/such/poisons.npz"), "not found"),
    (dict(dataset="npz:/no/such/file.npz"), "outside the folders"),
    (dict(poisons="/etc/passwd"), "outside the folders"),
    (dict(epochs=100_000), "more than the 1000"),
    (dict(epochs=0), "epochs"),
    (dict(defense="nope"), "unknown defense"),
    (dict(defense="epic", defense_params={"subset_size": 2.0}), "subset_size"),
    (dict(defense="epic", defense_params={"not_a_param": 1}), "not_a_param"),
    (dict(scenario="finetune"), "pretrained"),
    (dict(momentum=1.5), "momentum"),
    (dict(lr=float("nan")), "--lr"),
])
def test_bad_parameters_are_refused_before_anything_starts(tmp_path, change, message):
    change = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in change.items()}
    with pytest.raises(InputError, match=message):
        check_launch(replace(tiny_config(), **change), runs_dir=tmp_path, name="bad")
    assert not (tmp_path / "bad").exists()


def test_a_bad_name_or_an_existing_run_is_refused(tmp_path):
    for bad in ("../escape", "/abs", "a/b", ".", "..", "x" * 101, "new\nline"):
        with pytest.raises(InputError, match="plain run name"):
            check_launch(tiny_config(), runs_dir=tmp_path, name=bad)
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        launch_training(tiny_config(), runs_dir=tmp_path, name="taken")


def test_a_launched_run_trains_detached_and_is_listed_when_done(tmp_path):
    run_dir = launch_training(tiny_config(epochs=2, defense="random", defense_params={"fraction": 0.05}),
                              runs_dir=tmp_path, name="bg", projection="pca")
    launch = json.loads((run_dir / LAUNCH_JSON).read_text())
    assert launch["command"].startswith("poisonlens train") and (run_dir / LOG).exists()
    pid = launch_status(run_dir).pid
    assert os.getsid(pid) != os.getsid(0)  # its own session: survives the dashboard
    assert launch_status(run_dir).state in ("starting", "running", "mapping", "finished")
    status = wait_until_done(run_dir)
    assert status.state == "finished", status.log_tail
    assert [i.name for i in list_runs(tmp_path)] == ["bg"]
    assert open_run(run_dir).projection("pca") is not None
    assert TrainConfig.from_json(open_run(run_dir).config) == TrainConfig.from_json(launch["config"])
    assert [s.name for s in list_launches(tmp_path)] == ["bg"]


def test_a_run_that_dies_before_its_store_exists_shows_the_error(tmp_path):
    garbage = tmp_path / "not-a-dataset.npz"
    garbage.write_bytes(b"this is not an npz file")
    run_dir = launch_training(tiny_config(dataset=f"npz:{garbage}"), runs_dir=tmp_path / "runs", name="dies",
                              projection=None)
    status = wait_until_done(run_dir)
    assert status.state == "failed"
    assert status.error and "not-a-dataset.npz" in status.log_tail


def test_the_map_phase_reports_the_projection_progress():
    from poisonlens.launch import _map_progress

    tail = "$ poisonlens train ...\n[ 10%] loading 8 snapshots\n[ 70%] layout fitted in 3 s; placing every snapshot"
    assert _map_progress(tail) == {"map_fraction": 0.7, "map_message": "layout fitted in 3 s; placing every snapshot"}
    assert _map_progress("no progress yet") == {"map_fraction": 0.0, "map_message": "starting"}


# --- stop, resume, and a poison set made for another data set (issue 17) ---------------------


def wait_for_epoch(run_dir: Path, epoch: int, timeout: float = 240.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = launch_status(run_dir)
        assert not status.done, status.log_tail
        if (status.epoch or 0) >= epoch:
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} never reached epoch {epoch}: {launch_status(run_dir)}")


def test_a_launched_run_is_stopped_and_resumed_to_the_end(tmp_path):
    from poisonlens.launch import resume_launch, stop_run

    run_dir = launch_training(tiny_config(epochs=40, snapshot_every=10), runs_dir=tmp_path,
                              name="stoppable", projection=None)  # fmt: skip
    wait_for_epoch(run_dir, 2)
    pid = launch_status(run_dir).pid
    stop_run(run_dir)
    status = launch_status(run_dir)
    assert status.state == "interrupted", status
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group is gone
    stopped_at = open_run(run_dir).metrics()["epoch"].max()
    assert stopped_at < 40
    with pytest.raises(InputError, match="not running"):
        stop_run(run_dir)
    resume_launch(run_dir)
    assert json.loads((run_dir / LAUNCH_JSON).read_text())["command"].endswith(f"train --resume {run_dir}")
    status = wait_until_done(run_dir)
    assert status.state == "finished", status.log_tail
    metrics = open_run(run_dir).metrics()
    assert metrics["epoch"].tolist() == list(range(41))  # every epoch once, none lost or doubled
    with pytest.raises(InputError, match="cannot resume a run that is finished"):
        resume_launch(run_dir)


def test_stop_signals_only_a_process_this_dashboard_started(tmp_path):
    from poisonlens.launch import stop_run

    # launch.json is a file in the run folder: a pid written there (here, ours) is not trusted
    run_dir = tmp_path / "forged"
    run_dir.mkdir()
    (run_dir / LAUNCH_JSON).write_text(json.dumps({"pid": os.getpid(), "command": "x", "started": 0}))
    assert launch_status(run_dir).state == "starting"
    with pytest.raises(InputError, match="not one this dashboard started"):
        stop_run(run_dir)


def test_a_poison_set_for_another_data_set_is_refused_before_starting_as_the_cli_does(
    tmp_path, cifar_subset, monkeypatch
):
    import subprocess
    import sys

    monkeypatch.setenv("POISONLENS_DATA_ROOTS", str(cifar_subset))  # a folder the form may read

    # resolved: the launcher makes the spec's path absolute and real, and the CLI's line is
    # compared with its own (shared/ may be a link to the data, as in a fresh clone beside it)
    config = tiny_config(dataset=f"imagefolder:{cifar_subset.resolve()}", poisons=str(DEMO_POISONS))
    with pytest.raises(InputError) as err:
        launch_training(config, runs_dir=tmp_path, name="mismatch", projection=None)
    assert not (tmp_path / "mismatch").exists()
    cli = subprocess.run(
        [sys.executable, "-m", "poisonlens.cli", "train", "--dataset", config.dataset,
         "--poisons", str(DEMO_POISONS.resolve()), "--runs-dir", str(tmp_path), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 2
    assert cli.stderr == f"poisonlens: {err.value}\n"  # the same one line
    assert "made for another image size" in cli.stderr


def test_a_second_training_is_refused_while_one_runs(tmp_path):
    """The page is a web form: by default one training at a time (6 launches in 1.9 s all
    trained at once before)."""
    first = launch_training(tiny_config(epochs=3), runs_dir=tmp_path, name="first", projection=None)
    try:
        with pytest.raises(InputError, match="still training"):
            launch_training(tiny_config(epochs=2), runs_dir=tmp_path, name="second", projection=None)
        assert not (tmp_path / "second").exists()
    finally:
        wait_until_done(first)
    second = launch_training(tiny_config(epochs=1), runs_dir=tmp_path, name="second", projection=None)
    assert wait_until_done(second).state == "finished"


def test_a_copied_run_with_a_log_linking_out_is_never_shown(tmp_path):
    """A launch.json and a train.log linking to a secret: not a launch of this page, so not
    listed; its status reads nothing through the link either."""
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-LINE\n")
    run_dir = tmp_path / "runs" / "copied"
    run_dir.mkdir(parents=True)
    (run_dir / LAUNCH_JSON).write_text(json.dumps({"pid": 1, "command": "x", "started": 1.0}))
    (run_dir / LOG).symlink_to(secret)
    assert list_launches(tmp_path / "runs") == []
    status = launch_status(run_dir)
    assert "TOP-SECRET" not in status.log_tail and "symbolic link" in status.log_tail
    (run_dir / LOG).unlink()
    os.mkfifo(run_dir / LOG)  # nor does a FIFO as the log hang it
    assert "FIFO" in launch_status(run_dir).log_tail
