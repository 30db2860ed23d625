"""A snapshot taken by every rank: each passes its block of examples forward, rank 0 gets the rows.

A snapshot's per-example rows travel as one float32 table of ``n_classes + n_features + 3``
columns (:func:`pack_rows`, :func:`unpack_rows`): the gradients softmax - onehot, the
penultimate features, then loss, confidence and prediction (exact as float32 below 2**24
classes).
"""

from __future__ import annotations

import numpy as np

from poisonlens.collectives import gather_rows
from poisonlens.defense.base import Snapshot
from poisonlens.device import DistContext
from poisonlens.sharding import snapshot_shard
from poisonlens.snapshot import take_snapshot


def pack_rows(snap: Snapshot) -> np.ndarray:
    """A snapshot's per-example columns as one float32 table.

    Parameters
    ----------
    snap : Snapshot
        Of ``n`` examples, ``n_classes`` classes and ``n_features`` features.

    Returns
    -------
    float32 array of shape (n, n_classes + n_features + 3)
    """
    return np.concatenate(
        [snap.grads, snap.embeddings, snap.loss[:, None], snap.confidence[:, None],
         snap.prediction[:, None].astype(np.float32)],
        axis=1, dtype=np.float32,
    )  # fmt: skip


def unpack_rows(table: np.ndarray, labels: np.ndarray, *, epoch: int, n_classes: int) -> Snapshot:
    """The snapshot a :func:`pack_rows` table holds.

    Parameters
    ----------
    table : float32 array of shape (n, n_classes + n_features + 3)
        Rows in index order.
    labels : int64 array of shape (n,)
        The training labels.
    epoch : int
        The epoch the snapshot was taken after.
    n_classes : int
        Columns of the gradients (the features fill the rest but three).

    Returns
    -------
    Snapshot
    """
    e0, e1 = n_classes, table.shape[1] - 3
    return Snapshot(
        epoch=epoch,
        labels=labels,
        embeddings=np.ascontiguousarray(table[:, e0:e1]),
        grads=np.ascontiguousarray(table[:, :e0]),
        loss=table[:, e1].copy(),
        confidence=table[:, e1 + 1].copy(),
        prediction=table[:, e1 + 2].astype(np.int64),
    )


def take_snapshot_sharded(ctx: DistContext, model, images, labels: np.ndarray, **kwargs):
    """:func:`poisonlens.snapshot.take_snapshot`, with the forward passes split across the ranks.

    Each rank passes its contiguous block of all examples
    (:func:`poisonlens.sharding.snapshot_shard`) forward; the rows are gathered to rank 0 in
    index order. The target (a single image) is passed on rank 0 only.

    Parameters
    ----------
    ctx : DistContext
        This process's place; alone, exactly ``take_snapshot``.
    model : Classifier
        The classifier (unwrapped from DDP).
    images : uint8 array or tensor of shape (n_samples, height, width, channels)
        The training images.
    labels : int array of shape (n_samples,)
        Their labels.
    **kwargs
        ``take_snapshot``'s options (``epoch``, ``target``, ``batch_size``).

    Returns
    -------
    (Snapshot, target) on rank 0, as ``take_snapshot`` returns them; (None, None) elsewhere.
    """
    if not ctx.distributed:
        return take_snapshot(model, images, labels, **kwargs)
    labels = np.asarray(labels, np.int64)
    block = snapshot_shard(len(labels), ctx.world_size, ctx.rank)
    lo, hi = (int(block[0]), int(block[-1]) + 1) if len(block) else (0, 0)
    if not ctx.is_main:
        kwargs = {**kwargs, "target": None}
    part, target = take_snapshot(model, images[lo:hi], labels[lo:hi], **kwargs)
    whole = gather_rows(pack_rows(part), block, len(labels))
    if whole is None:
        return None, None
    snap = unpack_rows(whole, labels, epoch=part.epoch, n_classes=part.grads.shape[1])
    if target is not None:
        snap = Snapshot(**{**snap.__dict__, "target_grad": target["grads"]})
    return snap, target
