"""poisonlens.EpicTracker: EPIC in a training loop the user writes, recorded as a normal run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import poisonlens
from poisonlens.cli import main as cli_main
from poisonlens.data import load_dataset
from poisonlens.device import DistContext
from poisonlens.errors import InputError
from poisonlens.models import build_model
from poisonlens.sharding import shard_indices
from poisonlens.store import open_run

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
PAGES = ["views/overview.py", "views/gradient_space.py", "views/drift.py", "views/suspects.py",
         "views/new_run.py", "views/about.py"]  # fmt: skip
N_POISONS = 20


def own_loop_run(run_dir: Path, *, epochs: int = 4, **options) -> tuple[Path, dict[int, np.ndarray]]:
    """A real loop on digits (a tiny CNN, SGD) with its labels partly flipped, through the
    tracker with torch tensors; returns the run and what each snapshot call returned."""
    data = load_dataset("digits")
    y = data.y_train.copy()
    flipped = np.flatnonzero(y == 1)[:N_POISONS]
    y[flipped] = 7
    is_poison = np.zeros(len(y), bool)
    is_poison[flipped] = True
    torch.manual_seed(0)
    model = build_model("smallcnn", n_classes=10, in_channels=1, width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x_all = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).float() / 255  # channels first
    y_all = torch.from_numpy(y)
    returned = {}
    options = poisonlens.TrackerOptions(**{"subset_size": 0.2, "drop_after": 1, "snapshot_every": 1,
                                           "class_names": data.class_names, "epochs": epochs, **options})
    with poisonlens.EpicTracker(run_dir, y_all, options, images=x_all, is_poison=is_poison) as tracker:
        sampler = tracker.sampler()
        for epoch in range(epochs + 1):
            if epoch:
                sampler.set_epoch(epoch)
                model.train()
                for idx in torch.tensor(list(sampler)).split(128):
                    loss = F.cross_entropy(model(x_all[idx]), y_all[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            model.eval()
            with torch.no_grad():
                features = model.features(x_all)
                logits = model.head(features)
            returned[epoch] = tracker.snapshot(epoch, logits=logits, features=features, test_acc=0.5)
    return run_dir, returned


@pytest.fixture(scope="module")
def own_run(tmp_path_factory) -> tuple[Path, dict[int, np.ndarray]]:
    return own_loop_run(tmp_path_factory.mktemp("own") / "runs" / "mine")


def test_import_poisonlens_stays_light():
    code = "import sys, poisonlens; print('torch' in sys.modules, poisonlens.EpicTracker.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # only touching the name imports the tracker (and torch with it)
    assert out.stdout.split() == ["False", "EpicTracker"]
    light = subprocess.run([sys.executable, "-c", "import sys, poisonlens; print('torch' in sys.modules)"],
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert light.stdout.strip() == "False"


def test_the_drops_returned_are_the_ones_recorded(own_run):
    run_dir, returned = own_run
    run = open_run(run_dir)
    assert run.status == "finished"
    assert run.snapshot_epochs() == [0, 1, 2, 3, 4]
    total = sum(len(r) for r in returned.values())
    assert total > 0, "EPIC dropped nothing on a label-flipped set"
    for epoch, dropped in returned.items():
        snap = run.snapshot(epoch)
        assert np.array_equal(np.flatnonzero(snap["drop"].to_numpy()), dropped)
        assert (snap.loc[dropped, "dropped_epoch"] == epoch).all()
    assert len(returned[0]) == 0  # epoch 0 is before drop_after
    assert len(returned[4]) == 0  # the last epoch's snapshot drops nothing
    metrics = run.metrics()
    assert metrics["n_dropped"].iloc[-1] == total
    assert metrics["n_poison_dropped"].iloc[-1] == int(run.examples()["is_poison"].to_numpy()[
        np.concatenate(list(returned.values()))].sum())  # fmt: skip
    # softmax - onehot was computed by the tracker: rows sum to 0, the label's entry is p - 1
    snap = run.snapshot(2)
    g = snap.filter(regex="^g_").to_numpy()
    np.testing.assert_allclose(g.sum(1), 0, atol=1e-5)
    assert (g[np.arange(len(g)), snap["label"].to_numpy()] <= 0).all()
    assert run.images().shape == (len(g), 8, 8, 1)  # channels-first floats stored as NHWC uint8


def test_runs_export_and_project_read_a_tracker_run(own_run, tmp_path, capsys):
    run_dir, returned = own_run
    assert cli_main(["runs", "--runs-dir", str(run_dir.parent)]) == 0
    line = capsys.readouterr().out.splitlines()[1]
    assert "mine" in line and "finished" in line and "epic" in line
    out = tmp_path / "x.csv"
    assert cli_main(["export", "--run", str(run_dir), "--epoch", "4", "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out)  # the dropped examples, and those flagged at epoch 4 but kept
    dropped = table[table["dropped_epoch"] >= 0]
    assert sorted(dropped["index"]) == sorted(np.concatenate(list(returned.values())).tolist())
    assert cli_main(["project", "--run", str(run_dir), "--method", "pca", "--quiet"]) == 0
    assert open_run(run_dir).projection("pca") is not None


@pytest.mark.parametrize("page", PAGES)
def test_every_dashboard_page_opens_a_tracker_run(own_run, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    run_dir, _ = own_run
    monkeypatch.setenv("POISONLENS_RUNS", str(run_dir.parent))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run_dir.name
    at.session_state["gs_method"] = "pca"
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    assert at.title[0].value


def test_resume_refuses_a_tracker_run(own_run, capsys):
    run_dir, _ = own_run
    assert cli_main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EpicTracker" in err


def test_a_failing_loop_records_a_failed_run(tmp_path):
    labels = np.arange(40) % 4
    with pytest.raises(RuntimeError, match="out of memory"):
        with poisonlens.EpicTracker(tmp_path / "r", labels=labels) as tracker:
            tracker.snapshot(0, logits=np.zeros((40, 4)))
            raise RuntimeError("CUDA out of memory")
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["status"] == "failed" and "out of memory" in meta["error"]
    assert open_run(tmp_path / "r").status == "failed"


@pytest.mark.parametrize(
    ("call", "source"),
    [
        (lambda t: t.snapshot(0, logits=np.zeros((40, 3))), "logits"),
        (lambda t: t.snapshot(0, logits=np.zeros((39, 4))), "logits"),
        (lambda t: t.snapshot(0), "logits"),
        (lambda t: t.snapshot(0, logits=np.full((40, 4), np.nan)), "logits"),
        (lambda t: t.snapshot(0, logits=np.zeros((40, 4)), features=np.zeros(40)), "features"),
        (lambda t: t.snapshot(-1, logits=np.zeros((40, 4))), "epoch"),
    ],
)
def test_wrong_shapes_are_refused_with_one_line(tmp_path, call, source):
    tracker = poisonlens.EpicTracker(tmp_path / "r", labels=np.arange(40) % 4)
    with pytest.raises(InputError) as err:
        call(tracker)
    assert err.value.source == source and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("labels", "options", "examples", "source"),
    [
        (np.zeros((4, 2), np.int64), {}, {}, "labels"),
        (np.array([0.5, 1.5]), {}, {}, "labels"),
        (np.array([0, 5]), {"class_names": ["a", "b"]}, {}, "labels"),
        (np.arange(4), {}, {"images": np.zeros((3, 8, 8), np.uint8)}, "images"),
        (np.arange(4), {}, {"is_poison": np.zeros(5, bool)}, "is_poison"),
        (np.arange(4), {"drop_after": 5, "stop_after": 2}, {}, "drop_after"),
        (np.arange(4), {"subset_size": 2.0}, {}, "subset_size"),
        (np.arange(4), {"epic": {"no_such_option": 1}}, {}, "epic"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(tmp_path, labels, options, examples, source):
    with pytest.raises(InputError) as err:
        poisonlens.EpicTracker(tmp_path / "r", labels, poisonlens.TrackerOptions(**options), **examples)
    assert source in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "r" / "run.json").exists()


def test_an_existing_run_is_refused(own_run):
    with pytest.raises(InputError, match="already exists"):
        poisonlens.EpicTracker(own_run[0], labels=np.arange(4))


def test_greedi_runs_above_max_dense(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 300)
    options = poisonlens.TrackerOptions(subset_size=0.1, drop_after=0, epic={"max_dense": 100, "partition_size": 100})
    tracker = poisonlens.EpicTracker(tmp_path / "r", labels, options)
    tracker.snapshot(0, logits=rng.normal(size=(600, 2)))
    from poisonlens.defense.epic import EpicConfig, plan, select

    config = EpicConfig(subset_size=0.1, max_dense=100, partition_size=100)
    parts, _ = plan(labels, active=np.ones(600, bool), config=config, n_classes=2)
    assert len(parts) >= 4  # both classes go to GreeDi's partitions
    snap = open_run(tmp_path / "r").snapshot(0)
    expected = select(snap.filter(regex="^g_").to_numpy(), labels, config=config)
    assert np.array_equal(snap["is_medoid"].to_numpy(), expected.is_medoid)


def test_the_sampler_alone_visits_the_active_examples_in_the_trainers_order(own_run, tmp_path):
    from poisonlens.device import seeded_generator
    from poisonlens.epoch import batches

    tracker = poisonlens.EpicTracker(tmp_path / "r", np.arange(50) % 5, poisonlens.TrackerOptions(seed=3))
    tracker.active[[1, 7, 20]] = False
    sampler = tracker.sampler()
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(order) == tracker.active_indices().tolist() and len(sampler) == 47
    expected = np.concatenate(batches(tracker.active_indices(), 8, seeded_generator(3, 2)))
    assert order == expected.tolist()
    sampler.set_epoch(3)
    assert list(sampler) != order


def test_the_sampler_gives_each_rank_the_trainers_shard(tmp_path):
    tracker = poisonlens.EpicTracker(tmp_path / "r", np.arange(51) % 5, poisonlens.TrackerOptions(seed=1))
    tracker.active[[4, 9]] = False
    shards = []
    for rank in range(3):
        tracker.ctx = DistContext(rank=rank, local_rank=rank, world_size=3, device=None, backend="gloo")
        sampler = tracker.sampler()
        sampler.set_epoch(5)
        mine = list(sampler)
        expected = shard_indices(tracker.active_indices(), seed=1, epoch=5, world_size=3, rank=rank,
                                 batch_size=3)  # fmt: skip
        assert mine == np.concatenate(expected).tolist() and len(mine) == len(sampler)
        shards.append(mine)
    assert len({len(s) for s in shards}) == 1  # every rank takes the same number of steps
    assert set(np.concatenate(shards)) == set(tracker.active_indices().tolist())


@pytest.mark.slow
def test_the_tracker_under_torchrun_gives_every_rank_the_same_drops_and_its_own_shard(tmp_path):
    from tests.test_ddp import torchrun

    proc = torchrun(2, str(REPO / "tests" / "ddp_tracker_driver.py"), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    run = open_run(tmp_path / "run")
    assert run.status == "finished" and run.snapshot_epochs() == [0, 1, 2, 3]
    np.testing.assert_array_equal(ranks[0]["active"], ranks[1]["active"])
    active = np.ones(600, bool)
    for epoch in range(1, 4):
        a, b = ranks[0][f"seen{epoch}"], ranks[1][f"seen{epoch}"]
        assert len(a) == len(b)  # the same number of steps on every rank
        assert set(a) | set(b) == set(np.flatnonzero(active))  # together, every active example
        assert len(set(a) & set(b)) <= 1  # disjoint but for the padding
        np.testing.assert_array_equal(ranks[0][f"drop{epoch}"], ranks[1][f"drop{epoch}"])
        recorded = np.flatnonzero(run.snapshot(epoch)["drop"].to_numpy())
        np.testing.assert_array_equal(recorded, ranks[0][f"drop{epoch}"])
        active[recorded] = False
    assert (~active).any(), "nothing dropped: the comparison would prove nothing"
    info = json.loads(run.metrics()["defense_info"].iloc[1])
    assert info.get("partitions_per_rank") and min(info["partitions_per_rank"]) > 0, info


@pytest.fixture(scope="module")
def bare_run(tmp_path_factory) -> Path:
    """A tracker run given only labels and logits: no features, no images, no ground truth."""
    run_dir = tmp_path_factory.mktemp("bare") / "runs" / "bare"
    rng = np.random.default_rng(1)
    labels = np.arange(300) % 3
    options = poisonlens.TrackerOptions(subset_size=0.2, drop_after=1, epochs=3)
    with poisonlens.EpicTracker(run_dir, labels, options) as tracker:
        for epoch in range(4):
            tracker.snapshot(epoch, logits=rng.normal(size=(300, 3)) + 3 * np.eye(3)[labels])
    return run_dir


@pytest.mark.parametrize("page", PAGES)
def test_every_page_opens_a_run_without_features_or_images(bare_run, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("POISONLENS_RUNS", str(bare_run.parent))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    assert cli_main(["project", "--run", str(bare_run), "--method", "pca", "--quiet"]) == 0
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = bare_run.name
    at.session_state["gs_method"] = "pca"
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
