"""Gradient snapshots: g = softmax - onehot, taken in eval mode."""

import numpy as np
import torch
import torch.nn.functional as F

from poisonlens.models import build_model
from poisonlens.snapshot import last_layer_stats, storage_projection, take_snapshot


def test_snapshot_gradient_equals_autograd_gradient_of_loss_wrt_logits(rng):
    logits = rng.normal(size=(20, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, size=20)
    t = torch.tensor(logits, requires_grad=True)
    F.cross_entropy(t, torch.tensor(labels), reduction="sum").backward()
    np.testing.assert_allclose(last_layer_stats(logits, labels)["grads"], t.grad.numpy(), atol=1e-6)


def test_loss_confidence_and_prediction_agree_with_softmax(rng):
    logits = rng.normal(size=(10, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=10)
    stats = last_layer_stats(logits, labels)
    p = torch.softmax(torch.tensor(logits), 1).numpy()
    np.testing.assert_allclose(stats["confidence"], p[np.arange(10), labels], rtol=1e-5)
    np.testing.assert_allclose(stats["loss"], -np.log(p[np.arange(10), labels]), rtol=1e-5)
    np.testing.assert_array_equal(stats["prediction"], logits.argmax(1))


def test_snapshot_is_taken_in_eval_mode_and_leaves_training_mode_alone(rng):
    model = build_model("smallcnn", n_classes=3, in_channels=1, width=4)
    model.train()
    images = rng.integers(0, 256, size=(9, 8, 8, 1), dtype=np.uint8)
    first, _ = take_snapshot(model, images, np.zeros(9, dtype=np.int64), epoch=0, batch_size=4)
    second, _ = take_snapshot(model, images, np.zeros(9, dtype=np.int64), epoch=0, batch_size=9)
    assert model.training
    # eval mode: batch statistics do not leak in, so batch size does not change the result
    np.testing.assert_allclose(first.grads, second.grads, atol=1e-5)


def test_snapshot_includes_target_gradient_for_adv_label(rng):
    model = build_model("smallcnn", n_classes=3, in_channels=1, width=4)
    images = rng.integers(0, 256, size=(5, 8, 8, 1), dtype=np.uint8)
    snap, target = take_snapshot(
        model, images, np.zeros(5, dtype=np.int64), epoch=2, target=(images[0], 2)
    )
    assert target["grads"][2] < 0 and np.isclose(target["grads"].sum(), 0, atol=1e-6)
    np.testing.assert_array_equal(snap.target_grad, target["grads"])
    assert np.isclose(target["prob_adv"], target["grads"][2] + 1, atol=1e-6)


def test_wide_embeddings_get_a_fixed_projection_and_narrow_ones_none():
    assert storage_projection(64) is None
    a, b = storage_projection(512, random_state=3), storage_projection(512, random_state=3)
    assert a.shape == (512, 64) and storage_projection(128, 16).shape == (128, 16)
    np.testing.assert_array_equal(a, b)


def test_snapshot_columns_stream_in_row_groups_and_read_back_as_the_table(tmp_path, rng):
    import pandas as pd
    import pyarrow.parquet as pq

    from poisonlens.store import atomic_write_parquet_columns, read_parquet

    cols = {
        "index": np.arange(10, dtype=np.int64),
        "g_0": rng.normal(size=10).astype(np.float32),
        "active": rng.random(10) < 0.5,
        "dropped_epoch": np.full(10, -1, dtype=np.int64),
    }
    atomic_write_parquet_columns(tmp_path / "s.parquet", cols, row_group_size=4)
    assert pq.ParquetFile(tmp_path / "s.parquet").metadata.num_row_groups == 3
    pd.testing.assert_frame_equal(read_parquet(tmp_path / "s.parquet"), pd.DataFrame(cols))
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_trained_runs_snapshot_has_the_documented_columns_in_order(tmp_path):
    from poisonlens.store import open_run
    from poisonlens.train import train
    from tests.conftest import tiny_config

    run = open_run(train(tiny_config(epochs=1, defense="epic"), tmp_path / "r", show_progress=False))
    cols = run.snapshot_columns(1)
    n_emb = sum(c.startswith("emb_") for c in cols)
    expected = ["index", "label", *[f"g_{c}" for c in range(10)], *[f"emb_{j}" for j in range(n_emb)],
                "loss", "confidence", "prediction", "active", "score", "suspect", "drop", "dropped_epoch"]
    assert cols[: len(expected)] == expected and n_emb == 16  # width 4 -> 16 features
    assert {"medoid", "cluster_size", "isolated"} <= set(cols[len(expected):])  # EPIC's own
