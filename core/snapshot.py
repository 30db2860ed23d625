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

from poisonlens.defense.base import Snapshot
from poisonlens.models import Classifier, to_tensor


def fold_batchnorm(body: nn.Module) -> nn.Module:
    """An eval-mode copy of ``body`` with every Conv2d directly followed by a BatchNorm2d in a
    Sequential merged into one convolution (same outputs up to float rounding, fewer passes).

    Parameters
    ----------
    body : a feature extractor (left unchanged)

    Returns
    -------
    nn.Module on the same device as ``body``
    """
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


def model_device(model: nn.Module) -> torch.device:
    """The device ``model``'s parameters live on (where its inputs must be sent).

    Parameters
    ----------
    model : nn.Module
        A model with at least one parameter.
    """
    return next(model.parameters()).device


@torch.inference_mode()
def iter_forward(model: Classifier, images, *, batch_size: int = 128):
    """Eval-mode forward passes over ``images`` in batches, on the model's device.

    Runs a batch-norm-folded, channels-last copy of the model: on a CPU this pass costs about a
    fifth of a training step per example, which keeps snapshots cheap. Moderate batches are
    faster than huge ones there (they stay in cache).

    Parameters
    ----------
    model : the classifier (left in whatever mode it is in)
    images : uint8 array or tensor of shape (n, height, width, channels), on any device
    batch_size : examples per forward pass

    Yields
    ------
    (start, logits, features) : the batch's first row, float32 logits of shape
        (batch, n_classes) and features of shape (batch, n_features), on the model's device
    """
    device = model_device(model)
    body = fold_batchnorm(model.body).to(memory_format=torch.channels_last)
    for start in range(0, len(images), batch_size):
        batch = torch.as_tensor(images[start : start + batch_size]).to(device, non_blocking=True)
        x = to_tensor(batch).contiguous(memory_format=torch.channels_last)
        f = body((x - model.mean) / model.std)
        yield start, model.head(f).float(), f.float()


def forward_batched(
    model: Classifier, images, *, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode logits of shape (n, n_classes) and features of shape (n, n_features), float32.

    The same passes as :func:`iter_forward`, gathered into host arrays; ``images`` is uint8 of
    shape (n, height, width, channels).

    Parameters
    ----------
    model : Classifier
        The classifier (left in whatever mode it is in).
    images : uint8 array or tensor of shape (n, height, width, channels)
        On any device.
    batch_size : int
        Examples per forward pass.
    """
    n_classes, n_features = model.head.out_features, model.n_features
    logits = np.empty((len(images), n_classes), np.float32)
    feats = np.empty((len(images), n_features), np.float32)
    for start, out, f in iter_forward(model, images, batch_size=batch_size):
        logits[start : start + len(out)] = out.cpu().numpy()
        feats[start : start + len(out)] = f.cpu().numpy()
    return logits, feats


def _stats(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    # Every per-example quantity a snapshot stores, computed where the logits are.
    log_p = F.log_softmax(logits, dim=1)
    p = log_p.exp()
    rows = torch.arange(len(labels), device=logits.device)
    grads = p.clone()
    grads[rows, labels] -= 1.0
    return {
        "grads": grads,
        "loss": -log_p[rows, labels],
        "confidence": p[rows, labels],
        "prediction": logits.argmax(dim=1).long(),
    }


def last_layer_stats(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Per-example last-layer quantities from logits of shape (n, C) and labels of shape (n,).

    Parameters
    ----------
    logits : float array of shape (n, n_classes)
        The model's outputs.
    labels : int array of shape (n,)
        The class each row is read against.

    Returns
    -------
    dict with ``grads`` float32 (n, C) = softmax - onehot, ``loss`` float32 (n,),
    ``confidence`` float32 (n,) (probability of the label) and ``prediction`` int64 (n,).
    """
    t = torch.from_numpy(np.asarray(logits, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    return {k: v.numpy() for k, v in _stats(t, y).items()}


def take_snapshot(
    model: Classifier,
    images,
    labels: np.ndarray,
    *,
    epoch: int,
    target: tuple[np.ndarray, int] | None = None,
    batch_size: int = 128,
) -> tuple[Snapshot, dict | None]:
    """Snapshot of every training example, plus the target's row for its adversarial label.

    Forward passes run in batches on the model's device, in float32 (never under autocast);
    each batch's results are copied into preallocated host arrays, so memory is one batch plus
    the stored columns.

    Parameters
    ----------
    model : Classifier
        The classifier.
    images : uint8 array or tensor of shape (n_samples, height, width, channels)
        The training images, on any device.
    labels : int array of shape (n_samples,)
        Their labels.
    epoch : int
        The epoch the snapshot is taken after.
    target : (image, adv_label) or None
        The target, uint8 of shape (height, width, channels), and the class the attacker wants
        it read as; None for a clean run.
    batch_size : int
        Examples per forward pass.

    Returns
    -------
    snapshot : :class:`Snapshot` (with ``target_grad`` when a target is given)
    target : dict with the target's ``grads`` (n_classes,), ``embedding`` (n_features,),
        ``prediction`` and ``prob_adv``; None without a target
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    cols = {"grads": np.empty((n, model.head.out_features), np.float32),
            "loss": np.empty(n, np.float32), "confidence": np.empty(n, np.float32),
            "prediction": np.empty(n, np.int64)}  # fmt: skip
    feats = np.empty((n, model.n_features), np.float32)
    device = model_device(model)
    with torch.autocast(device.type, enabled=False):
        for start, logits, f in iter_forward(model, images, batch_size=batch_size):
            rows = slice(start, start + len(logits))
            y = torch.from_numpy(labels[rows]).to(device, non_blocking=True)
            for name, value in _stats(logits, y).items():
                cols[name][rows] = value.cpu().numpy()
            feats[rows] = f.cpu().numpy()
    snap = Snapshot(epoch=epoch, labels=labels, embeddings=feats, **cols)
    row = None if target is None else target_stats(model, *target)
    if row is not None:
        snap = Snapshot(**{**snap.__dict__, "target_grad": row["grads"]})
    return snap, row


def target_stats(model: Classifier, image: np.ndarray, adv_label: int) -> dict:
    """The target's last-layer quantities, read against the attacker's label.

    Parameters
    ----------
    model : Classifier
        The classifier, on any device.
    image : uint8 array of shape (height, width, channels)
        The target image.
    adv_label : int
        The class the attacker wants the target read as.

    Returns
    -------
    dict with ``grads`` float32 (n_classes,) = softmax - onehot(adv_label), ``embedding``
    float32 (n_features,), ``prediction`` int and ``prob_adv`` float
    """
    t_logits, t_feats = forward_batched(model, np.asarray(image)[None])
    t_stats = last_layer_stats(t_logits, np.array([adv_label]))
    return {
        "grads": t_stats["grads"][0],
        "embedding": t_feats[0],
        "prediction": int(t_stats["prediction"][0]),
        "prob_adv": float(t_stats["confidence"][0]),
    }


def storage_projection(
    n_features: int, n_stored: int = 64, *, random_state: int = 0
) -> np.ndarray | None:
    """A fixed (n_features, n_stored) Gaussian projection for wide embeddings, or None when
    ``n_features <= n_stored``.

    The same matrix is used at every epoch of a run, so stored embeddings stay comparable;
    distances are kept approximately (Johnson-Lindenstrauss).

    Parameters
    ----------
    n_features : int
        Width of the model's penultimate features.
    n_stored : int
        Columns stored per snapshot (``--embedding-dims``).
    random_state : int
        Seed of the Gaussian matrix (the run's seed).
    """
    if n_features <= n_stored:
        return None
    rng = np.random.default_rng(random_state)
    return (rng.standard_normal((n_features, n_stored)) / np.sqrt(n_stored)).astype(np.float32)
