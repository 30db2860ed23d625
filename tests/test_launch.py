"""Launching training in the background: parameters checked first, a detached process, its status."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path

import pytest

from core.cli import build_parser
from core.errors import InputError
from core.launch import (
    LAUNCH_JSON,
    LOG,
    check_launch,
    launch_status,
    launch_training,
    list_launches,
    train_argv,
)
from core.store import list_runs, open_run
from core.train import TrainConfig
from tests.conftest import tiny_config


def wait_until_done(run_dir: Path, timeout: float = 240.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = launch_status(run_dir)
        if status.done and status.state != "mapping":
            return status
        time.sleep(0.5)
    raise AssertionError(f"{run_dir} not done after {timeout} s: {launch_status(run_dir)}")


def test_train_argv_reproduces_the_config_through_the_cli(tmp_path):
    config = TrainConfig(dataset="digits", defense="epic", defense_params={"subset_size": 0.3, "metric": "cosine"},
                         epochs=7, width=8, lr=0.05, drop_after=1, seed=3)
    argv = train_argv(config, runs_dir=tmp_path, name="x")
    args = build_parser().parse_args(argv)
    assert (args.dataset, args.defense, args.epochs, args.width, args.lr, args.drop_after, args.seed) == \
        ("digits", "epic", 7, 8, 0.05, 1, 3)
    assert sorted(args.defense_param) == ['metric="cosine"', "subset_size=0.3"]
    assert (args.runs_dir, args.name, args.quiet) == (str(tmp_path), "x", True)


@pytest.mark.parametrize("change, message", [
    (dict(dataset="mnist"), "unknown data set"),
    (dict(dataset="npz:/no/such/file.npz"), "not found"),
    (dict(poisons="/no/such/poisons.npz"), "not found"),
    (dict(epochs=0), "epochs"),
    (dict(defense="nope"), "unknown defense"),
    (dict(defense="epic", defense_params={"subset_size": 2.0}), "subset_size"),
    (dict(defense="epic", defense_params={"not_a_param": 1}), "bad parameter"),
    (dict(scenario="finetune"), "pretrained"),
    (dict(momentum=0.5), "momentum"),
])
def test_bad_parameters_are_refused_before_anything_starts(tmp_path, change, message):
    with pytest.raises(InputError, match=message):
        check_launch(replace(tiny_config(), **change), runs_dir=tmp_path, name="bad")
    assert not (tmp_path / "bad").exists()


def test_a_bad_name_or_an_existing_run_is_refused(tmp_path):
    with pytest.raises(InputError, match="run name"):
        check_launch(tiny_config(), runs_dir=tmp_path, name="../escape")
    (tmp_path / "taken").mkdir()
    with pytest.raises(InputError, match="already exists"):
        launch_training(tiny_config(), runs_dir=tmp_path, name="taken")


def test_a_launched_run_trains_detached_and_is_listed_when_done(tmp_path):
    run_dir = launch_training(tiny_config(epochs=2, defense="random", defense_params={"fraction": 0.05}),
                              runs_dir=tmp_path, name="bg", projection="pca")
    launch = (run_dir / LAUNCH_JSON).read_text()
    assert "poisonlens train" in launch and (run_dir / LOG).exists()
    pid = launch_status(run_dir).pid
    assert os.getsid(pid) != os.getsid(0)  # its own session: survives the dashboard
    assert launch_status(run_dir).state in ("starting", "running", "mapping", "finished")
    status = wait_until_done(run_dir)
    assert status.state == "finished", status.log_tail
    assert [i.name for i in list_runs(tmp_path)] == ["bg"]
    assert open_run(run_dir).projection("pca") is not None
    assert [s.name for s in list_launches(tmp_path)] == ["bg"]


def test_a_run_that_dies_before_its_store_exists_shows_the_error(tmp_path):
    garbage = tmp_path / "not-a-dataset.npz"
    garbage.write_bytes(b"this is not an npz file")
    run_dir = launch_training(tiny_config(dataset=f"npz:{garbage}"), runs_dir=tmp_path / "runs", name="dies",
                              projection=None)
    status = wait_until_done(run_dir)
    assert status.state == "failed"
    assert status.error and "not-a-dataset.npz" in status.log_tail
