"""Gradient snapshots: per-example last-layer quantities in eval mode, without augmentation.

The gradient approximation EPIC clusters is g = softmax(logits) - onehot(label), which is
exactly d(cross-entropy)/d(logits) for each example.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.defense.base import Snapshot
from core.models import Classifier, to_tensor


def fold_batchnorm(body: nn.Module) -> nn.Module:
    """An eval-mode copy of ``body`` in which every Conv2d directly followed by a BatchNorm2d in a
    Sequential is merged into one convolution (same outputs up to float rounding, fewer passes)."""
    body = copy.deepcopy(body).eval()
    for module in body.modules():
        if not isinstance(module, nn.Sequential):
            continue
        layers = list(module)
        for i in range(len(layers) - 1):
            conv, bn = layers[i], layers[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                fused = nn.Conv2d(
                    conv.in_channels,
                    conv.out_channels,
                    conv.kernel_size,
                    conv.stride,
                    conv.padding,
                    conv.dilation,
                    conv.groups,
                    bias=True,
                )
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                fused.weight.data = (conv.weight * scale[:, None, None, None]).detach()
                fused.bias.data = ((bias - bn.running_mean) * scale + bn.bias).detach()
                module[i], module[i + 1] = fused, nn.Identity()
    return body


@torch.inference_mode()
def forward_batched(
    model: Classifier, images: np.ndarray, *, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits (n, n_classes) and penultimate features (n, n_features), float32.

    Runs a batch-norm-folded, channels-last copy of the model: on a CPU this pass costs about a
    fifth of a training step per example, which keeps snapshots cheap. Moderate batches are
    faster than huge ones here (they stay in cache).
    """
    body = fold_batchnorm(model.body).to(memory_format=torch.channels_last)
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        x = to_tensor(images[start : start + batch_size]).contiguous(
            memory_format=torch.channels_last
        )
        f = body((x - model.mean) / model.std)
        logits.append(model.head(f).numpy())
        feats.append(f.numpy())
    n_classes = model.head.out_features
    if not logits:
        return np.zeros((0, n_classes), np.float32), np.zeros((0, model.n_features), np.float32)
    return np.concatenate(logits), np.concatenate(feats)


def last_layer_stats(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """From logits (n, C) and labels (n,): grads (n, C) = softmax - onehot, loss, confidence, prediction."""
    t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_p = F.log_softmax(t, dim=1)
    p = log_p.exp()
    grads = p.clone()
    grads[torch.arange(len(y)), y] -= 1.0
    return {
        "grads": grads.numpy(),
        "loss": (-log_p[torch.arange(len(y)), y]).numpy(),
        "confidence": p[torch.arange(len(y)), y].numpy(),
        "prediction": t.argmax(dim=1).numpy().astype(np.int64),
    }


def take_snapshot(
    model: Classifier,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epoch: int,
    target_image: np.ndarray | None = None,
    adv_label: int | None = None,
    batch_size: int = 128,
) -> tuple[Snapshot, dict | None]:
    """Snapshot of every training example, plus the target's row for ``adv_label``.

    Returns the :class:`Snapshot` and, when a target is given, a dict with the target's
    ``grads`` (C,), ``embedding`` (n_features,), ``prediction`` and ``prob_adv``.
    """
    logits, feats = forward_batched(model, images, batch_size=batch_size)
    stats = last_layer_stats(logits, labels)
    snap = Snapshot(epoch=epoch, labels=np.asarray(labels, np.int64), embeddings=feats, **stats)
    target = None
    if target_image is not None and adv_label is not None:
        t_logits, t_feats = forward_batched(model, target_image[None])
        t_stats = last_layer_stats(t_logits, np.array([adv_label]))
        target = {
            "grads": t_stats["grads"][0],
            "embedding": t_feats[0],
            "prediction": int(t_stats["prediction"][0]),
            "prob_adv": float(t_stats["confidence"][0]),
        }
        snap = Snapshot(**{**snap.__dict__, "target_grad": target["grads"]})
    return snap, target


def storage_projection(
    n_features: int, n_stored: int = 64, *, random_state: int = 0
) -> np.ndarray | None:
    """A fixed (n_features, n_stored) Gaussian projection for wide embeddings, or None when
    ``n_features <= n_stored``.

    The same matrix is used at every epoch of a run, so stored embeddings stay comparable;
    distances are kept approximately (Johnson-Lindenstrauss).
    """
    if n_features <= n_stored:
        return None
    rng = np.random.default_rng(random_state)
    return (rng.standard_normal((n_features, n_stored)) / np.sqrt(n_stored)).astype(np.float32)
