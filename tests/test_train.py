"""Training: reproducibility, resume after a kill, drops leave the loader, scenarios, devices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from poisonlens.augment import augment_batch
from poisonlens.config import TrainConfig
from poisonlens.defense.base import DefenseResult, register
from poisonlens.epoch import batches, epoch_generator, lr_at, make_optimizer
from poisonlens.errors import InputError
from poisonlens.phases import METRICS_COLUMNS
from poisonlens.run_setup import load_training_data, make_model
from poisonlens.store import CHECKPOINTS, open_run
from poisonlens.train import train
from tests.conftest import tiny_config


@register("test-first-active")
class FirstActive:
    """Suspects the `k` active examples with the lowest indices: a predictable defense for tests."""

    name = "test-first-active"

    def __init__(self, k: int = 5):
        self.k = k

    def __call__(self, snapshot, active):
        suspect = np.zeros(snapshot.n_samples, dtype=bool)
        suspect[np.flatnonzero(active)[: self.k]] = True
        score = np.where(active, -np.arange(snapshot.n_samples, dtype=float), np.nan)
        return DefenseResult(score=score, suspect=suspect, info={"k": self.k})


def weights(run_dir):
    return torch.load(run_dir / CHECKPOINTS / "model.pt", weights_only=True)


def test_same_seed_gives_identical_runs(tmp_path):
    a = train(tiny_config(), tmp_path / "a", show_progress=False)
    b = train(tiny_config(), tmp_path / "b", show_progress=False)
    for k, v in weights(a).items():
        torch.testing.assert_close(v, weights(b)[k], rtol=0, atol=0)


def test_a_run_validates_its_config_once_fresh_and_resumed(tmp_path, monkeypatch):
    calls = []
    validate = TrainConfig.validate

    def counted(self):
        calls.append(self.epochs)
        return validate(self)

    monkeypatch.setattr(TrainConfig, "validate", counted)
    train(tiny_config(epochs=2), tmp_path / "r", show_progress=False, stop_at_epoch=1)
    assert calls == [2]  # a fresh run: once, before its folder exists
    calls.clear()
    train(TrainConfig(), tmp_path / "r", resume=True, show_progress=False)
    assert calls == [2]  # a resumed run: once, the config read from run.json
    assert open_run(tmp_path / "r").status == "finished"


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    config = tiny_config(epochs=5, defense="test-first-active", defense_params={"k": 3})
    whole = train(config, tmp_path / "whole", show_progress=False)
    part = train(config, tmp_path / "part", show_progress=False, stop_at_epoch=2)
    assert open_run(part).metrics()["epoch"].max() == 2
    train(TrainConfig(), part, resume=True, show_progress=False)
    for k, v in weights(whole).items():
        torch.testing.assert_close(v, weights(part)[k], rtol=0, atol=0)
    cols = ["epoch", "train_loss", "test_acc", "n_active", "n_dropped"]
    pd.testing.assert_frame_equal(open_run(whole).metrics()[cols], open_run(part).metrics()[cols])
    pd.testing.assert_frame_equal(open_run(whole).snapshot(4), open_run(part).snapshot(4))
    assert open_run(part).status == "finished"


def test_dropped_examples_are_final_and_counted(tmp_path):
    run = open_run(
        train(tiny_config(epochs=4, defense="test-first-active", defense_params={"k": 5}),
              tmp_path / "r", show_progress=False)
    )  # fmt: skip
    m = run.metrics().set_index("epoch")
    # snapshots at 0 and 2 each drop 5 more; the last one (4) drops nothing: no training is left
    assert list(m.loc[[0, 2, 4], "n_new_drops"]) == [5, 5, 0]
    assert m.loc[4, "n_dropped"] == 10 and m.loc[4, "n_active"] == run.examples().shape[0] - 10
    last = run.snapshot(4)
    assert set(last.loc[last.dropped_epoch == 0, "index"]) == set(range(5))
    assert set(last.loc[last.dropped_epoch == 2, "index"]) == set(range(5, 10))
    assert not last.loc[last.dropped_epoch.between(0, 2), "active"].any()
    assert last["suspect"].sum() == 5  # still recorded, for the dashboard


def test_snapshots_outside_the_drop_window_drop_nothing(tmp_path):
    run = open_run(train(tiny_config(epochs=4, drop_after=2, stop_after=4, defense="test-first-active"),
                         tmp_path / "r", show_progress=False))
    m = run.metrics().set_index("epoch")
    assert list(m.loc[[0, 2, 4], "n_new_drops"]) == [0, 5, 0]
    assert run.snapshot(0)["suspect"].sum() == 5  # still recorded, for the dashboard


def test_snapshot_epochs_are_zero_every_t_and_the_last():
    assert TrainConfig(epochs=7, snapshot_every=3).snapshot_epochs() == [0, 3, 6, 7]


def test_lr_decays_at_milestones():
    config = TrainConfig(epochs=8, lr=0.1)
    assert [round(lr_at(config, e), 6) for e in (1, 3, 4, 5, 6, 7, 8)] == [0.1, 0.1, 0.01, 0.01, 0.001, 0.001, 0.0001]


def test_batches_cover_active_indices_once_and_never_leave_a_single_example():
    indices = np.arange(0, 301, 2)  # 151 active examples
    got = batches(indices, 50, epoch_generator(0, 1))
    assert sorted(np.concatenate(got).tolist()) == indices.tolist()
    assert min(len(b) for b in got) > 1


def test_augmentation_crops_are_shifted_windows_of_the_zero_padded_image():
    x = torch.arange(1, 65, dtype=torch.float32).view(1, 1, 8, 8).repeat(32, 1, 1, 1)
    out = augment_batch(x, "crop", epoch_generator(0, 1))
    padded = torch.nn.functional.pad(x[0, 0], (1, 1, 1, 1))
    windows = [padded[i:i + 8, j:j + 8] for i in range(3) for j in range(3)]
    assert out.shape == x.shape
    assert all(any(torch.equal(o[0], w) for w in windows) for o in out)
    assert len({tuple(o[0].flatten().tolist()) for o in out}) > 1  # not always the same shift


def test_transfer_scenario_keeps_the_feature_extractor_frozen(tmp_path):
    base = train(tiny_config(epochs=1), tmp_path / "base", show_progress=False)
    pretrained = base / CHECKPOINTS / "model.pt"
    run = train(tiny_config(epochs=2, scenario="transfer", pretrained=str(pretrained)), tmp_path / "t", show_progress=False)
    before, after = weights(base), weights(run)
    for k in before:
        if k.startswith("body.") and "num_batches" not in k:
            torch.testing.assert_close(before[k], after[k], rtol=0, atol=0)
    assert not torch.equal(before["head.weight"], after["head.weight"])


def test_bad_parameters_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(InputError, match="drop-after"):
        train(tiny_config(drop_after=5, stop_after=2), tmp_path / "r", show_progress=False)
    with pytest.raises(InputError, match="needs --pretrained"):
        train(tiny_config(scenario="finetune"), tmp_path / "r", show_progress=False)
    assert not (tmp_path / "r").exists()


def test_existing_run_is_not_overwritten(tmp_path):
    train(tiny_config(epochs=1), tmp_path / "r", show_progress=False)
    with pytest.raises(InputError, match="already exists"):
        train(tiny_config(epochs=1), tmp_path / "r", show_progress=False)


def reference_training(config: TrainConfig) -> tuple[dict, float]:
    """The loop as it was before the uint8 path: one float copy of the whole training set,
    batches and augmentation from one CPU generator, a loss read per step. Returns the final
    weights and the test accuracy."""
    data = load_training_data(config)
    model = make_model(config, data).to(memory_format=torch.channels_last)
    optimizer = make_optimizer(config, model)
    x_all = torch.as_tensor(data.x_train).permute(0, 3, 1, 2).float().div_(255.0)
    y_all = torch.as_tensor(data.y_train)
    for epoch in range(1, config.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch)
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        model.train()
        perm = torch.randperm(data.n_samples, generator=gen).numpy()
        chunks = [perm[i:i + config.batch_size] for i in range(0, len(perm), config.batch_size)]
        if len(chunks[-1]) == 1:
            chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
        for batch in chunks:
            x = x_all[torch.from_numpy(batch)]
            b, c, h, w = x.shape  # random crop of the 1-pixel zero-padded image, as before
            padded = torch.nn.functional.pad(x, (1, 1, 1, 1))
            dy = torch.randint(0, 3, (b,), generator=gen)
            dx = torch.randint(0, 3, (b,), generator=gen)
            x = torch.stack([padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])
            loss = torch.nn.functional.cross_entropy(
                model(x.contiguous(memory_format=torch.channels_last)), y_all[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        x_test = torch.as_tensor(data.dataset.x_test).permute(0, 3, 1, 2).float().div_(255.0)
        acc = float((model(x_test).argmax(1).numpy() == data.dataset.y_test).mean())
    return model.state_dict(), acc


def test_uint8_per_batch_training_equals_the_float_copy_reference_on_digits(tmp_path):
    config = tiny_config(epochs=3, device="cpu")  # digits: grey, so 'auto' augmentation = crop
    run = train(config, tmp_path / "r", show_progress=False)
    ref_weights, ref_acc = reference_training(config)
    for k, v in weights(run).items():
        torch.testing.assert_close(v, ref_weights[k], rtol=0, atol=0)
    # evaluation folds batch norm, so accuracy may differ by a rounding flip at most
    assert abs(open_run(run).metrics()["test_acc"].iloc[-1] - ref_acc) <= 2 / 450


def test_explicit_cpu_device_trains_and_is_recorded(tmp_path):
    run = open_run(train(tiny_config(epochs=1, device="cpu"), tmp_path / "r", show_progress=False))
    assert run.config["device"] == "cpu" and run.status == "finished"
    assert list(run.metrics().columns) == list(METRICS_COLUMNS)


@pytest.mark.parametrize("device", ["cuda:7", "mps", "tpu"])
def test_a_device_this_machine_lacks_is_refused_before_a_run_directory_exists(tmp_path, device):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    if device == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(InputError, match="--device"):
        train(tiny_config(device=device), tmp_path / "r", show_progress=False)
    assert not (tmp_path / "r").exists()


def test_mixed_precision_is_refused_off_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present: --amp is allowed here")
    with pytest.raises(InputError, match="--amp"):
        train(tiny_config(device="cpu", amp="bf16"), tmp_path / "r", show_progress=False)
