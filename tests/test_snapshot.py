"""Gradient snapshots: g = softmax - onehot, taken in eval mode."""

import numpy as np
import torch
import torch.nn.functional as F

from core.models import build_model
from core.snapshot import last_layer_stats, storage_projection, take_snapshot


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
        model, images, np.zeros(5, dtype=np.int64), epoch=2, target_image=images[0], adv_label=2
    )
    assert target["grads"][2] < 0 and np.isclose(target["grads"].sum(), 0, atol=1e-6)
    np.testing.assert_array_equal(snap.target_grad, target["grads"])
    assert np.isclose(target["prob_adv"], target["grads"][2] + 1, atol=1e-6)


def test_wide_embeddings_get_a_fixed_projection_and_narrow_ones_none():
    assert storage_projection(64) is None
    a, b = storage_projection(512, random_state=3), storage_projection(512, random_state=3)
    assert a.shape == (512, 64) and storage_projection(128, 16).shape == (128, 16)
    np.testing.assert_array_equal(a, b)
