"""poisonlens.lightning.EpicCallback in a real PyTorch Lightning fit on digits."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import poisonlens
from poisonlens.data import load_dataset
from poisonlens.models import build_model
from poisonlens.store import open_run

L = pytest.importorskip("lightning.pytorch", reason="PyTorch Lightning is not installed (pip install lightning)")
APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
EPOCHS = 4


class DigitsModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = build_model("smallcnn", n_classes=10, in_channels=1, width=4)
        self.seen: dict[int, list[int]] = {}

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y, idx = batch
        self.seen.setdefault(self.current_epoch + 1, []).extend(idx.tolist())
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from poisonlens.lightning import EpicCallback

    data = load_dataset("digits")
    x = torch.from_numpy(data.x_train).permute(0, 3, 1, 2).float() / 255
    y = torch.from_numpy(data.y_train)
    run_dir = tmp_path_factory.mktemp("lightning") / "runs" / "lit"
    options = poisonlens.TrackerOptions(subset_size=0.2, drop_after=1, snapshot_every=1,
                                        class_names=data.class_names)
    epic = EpicCallback(run_dir, y, snapshot_loader=DataLoader(TensorDataset(x, y), batch_size=256),
                        options=options, images=x)
    train = DataLoader(TensorDataset(x, y, torch.arange(len(y))), batch_size=128, sampler=epic.sampler())
    module = DigitsModule()
    trainer = L.Trainer(max_epochs=EPOCHS, callbacks=[epic], accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, use_distributed_sampler=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train)
    return run_dir, epic, module


def test_the_callback_records_a_finished_run_with_epics_drops(fitted):
    run_dir, epic, _ = fitted
    run = open_run(run_dir)
    assert run.status == "finished"
    assert run.snapshot_epochs() == list(range(EPOCHS + 1))
    total = 0
    for epoch, dropped in epic.dropped.items():
        assert np.array_equal(np.flatnonzero(run.snapshot(epoch)["drop"].to_numpy()), dropped)
        total += len(dropped)
    assert total > 0 and len(epic.dropped[EPOCHS]) == 0  # the last snapshot drops nothing
    # the features are the input of the model's last Linear (4 * width = 16)
    assert run.snapshot(1).filter(regex="^emb_").shape[1] == 16
    assert not np.isnan(run.metrics()["train_loss"].iloc[1:]).any()


def test_drops_apply_to_the_next_epochs_sampling(fitted):
    _, epic, module = fitted
    n = len(epic.labels)
    assert sorted(module.seen[1]) == list(range(n))  # epoch 1: every example
    gone: set[int] = set()
    for epoch in range(1, EPOCHS + 1):
        seen = set(module.seen[epoch])
        assert seen == set(range(n)) - gone, epoch  # exactly the active examples, once each
        assert len(module.seen[epoch]) == len(seen)
        gone |= set(epic.dropped[epoch].tolist())


@pytest.mark.parametrize("page", ["views/overview.py", "views/gradient_space.py", "views/drift.py",
                                  "views/suspects.py"])  # fmt: skip
def test_the_dashboard_opens_the_lightning_run(fitted, monkeypatch, page):
    from streamlit.testing.v1 import AppTest

    run_dir, _, _ = fitted
    monkeypatch.setenv("POISONLENS_RUNS", str(run_dir.parent))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = run_dir.name
    at.session_state["gs_method"] = "pca"
    at.switch_page(page)
    at.run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]


def test_without_lightning_the_callback_says_how_to_install_it(tmp_path):
    # a lightning that cannot be imported, as in an install without the extra
    (tmp_path / "lightning").mkdir()
    (tmp_path / "lightning" / "__init__.py").write_text("raise ImportError('not here')\n")
    code = ("from poisonlens.lightning import EpicCallback\n"
            "try:\n    EpicCallback('r', [0, 1], snapshot_loader=[])\n"
            "except ValueError as err:\n    print(err)\n")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"})  # fmt: skip
    assert out.stdout.strip() == "lightning: PyTorch Lightning is not installed: pip install 'poisonlens[lightning]'"


@pytest.mark.slow
def test_the_lightning_example_runs_and_the_dashboard_opens_its_run(tmp_path, monkeypatch):
    from streamlit.testing.v1 import AppTest

    example = Path(__file__).resolve().parents[1] / "examples" / "lightning_loop.py"
    done = subprocess.run([sys.executable, str(example), "--runs-dir", str(tmp_path), "--epochs", "4"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    run = open_run(tmp_path / "lightning")
    assert run.status == "finished" and run.snapshot_epochs() == [0, 2, 4]
    monkeypatch.setenv("POISONLENS_RUNS", str(tmp_path))
    monkeypatch.setenv("POISONLENS_SAMPLES", "")
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["run"] = "lightning"
    at.switch_page("views/overview.py")
    at.run()
    assert not at.exception and not at.error
