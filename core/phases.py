"""What an epoch records: the evaluation, the snapshot and the defense's decision, the metrics row.

The phases are helpers that return values; only the run writer and the checkpoint write files.
The columns of metrics.parquet are :data:`METRICS_COLUMNS` (docs/run-format.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from poisonlens.collectives import broadcast_mask
from poisonlens.defense.base import DefenseResult, Snapshot
from poisonlens.models import Classifier
from poisonlens.run_setup import TrainState
from poisonlens.sharded_snapshot import take_snapshot_sharded
from poisonlens.shared_defense import run_defense
from poisonlens.snapshot import forward_batched
from poisonlens.store import json_default

# The columns of metrics.parquet, a row per epoch (docs/run-format.md), in this order:
METRICS_COLUMNS: tuple[str, ...] = (
    "epoch",  # 0 = the model before training
    "lr",  # learning rate used in this epoch
    "train_loss",  # mean cross-entropy over the active examples (NaN at epoch 0)
    "epoch_seconds",  # wall time of the training pass
    "test_acc",  # clean test accuracy
    "target_pred",  # the target's predicted class (-1 without a poison set)
    "target_prob_adv",  # the target's probability of adv_label (NaN without a poison set)
    "attack_success",  # 1.0 when the target is predicted as adv_label (NaN without one)
    "eval_seconds",  # wall time of the evaluation
    "snapshot_seconds",  # wall time of the snapshot pass (0 when none was taken)
    "defense_seconds",  # wall time of the defense (0 when none ran)
    "n_new_drops",  # examples dropped at this epoch's snapshot
    "defense_info",  # the defense's JSON report ('' without a snapshot)
    "n_active",  # examples still trained on, after this epoch's decisions
    "n_dropped",  # examples dropped so far
    "n_poison_dropped",  # poisons among them
)


@torch.inference_mode()
def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Accuracy of ``model`` on uint8 ``images`` of shape (n, height, width, channels).

    Parameters
    ----------
    model : Classifier
        The classifier (evaluated in eval mode, batch-norm folded).
    images : uint8 array of shape (n, height, width, channels)
        The images.
    labels : int array of shape (n,)
        Their labels.
    batch_size : int
        Examples per forward pass.
    """
    logits, _ = forward_batched(model, images, batch_size=batch_size)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def target_metrics(model: Classifier, poisons) -> dict:
    """The target's predicted class, its probability of ``adv_label`` and attack success.

    Parameters
    ----------
    model : Classifier
        The classifier.
    poisons : PoisonSet or None
        The run's poison set (its ``target_x`` and ``adv_label``); None for a clean run.
    """
    if poisons is None:
        return {"target_pred": -1, "target_prob_adv": float("nan"), "attack_success": float("nan")}
    logits, _ = forward_batched(model, poisons.target_x[None])
    p = torch.softmax(torch.from_numpy(logits), 1)[0]
    pred = int(p.argmax())
    return {
        "target_pred": pred,
        "target_prob_adv": float(p[poisons.adv_label]),
        "attack_success": float(pred == poisons.adv_label),
    }


def evaluate(state: TrainState) -> dict:
    """Test accuracy and the target's metrics (``test_acc``, ``target_*``, ``attack_success``).

    Parameters
    ----------
    state : TrainState
        The run's state (its model and data).
    """
    test = state.data.dataset
    acc = accuracy(state.model, test.x_test, test.y_test, state.config.snapshot_batch_size)
    return {"test_acc": acc, **target_metrics(state.model, state.data.poisons)}


@dataclass(frozen=True)
class SnapshotPhase:
    """What one snapshot epoch decided and what it writes.

    Attributes
    ----------
    columns : the snapshot table, column name -> array of shape (n_samples,)
    new_drops : bool of shape (n_samples,), dropped at this snapshot
    target_row : the targets.parquet row, or None for a clean run
    metrics : ``snapshot_seconds``, ``defense_seconds``, ``n_new_drops``, ``defense_info``
    """

    columns: dict[str, np.ndarray]
    new_drops: np.ndarray
    target_row: dict | None
    metrics: dict


NO_SNAPSHOT = {"snapshot_seconds": 0.0, "defense_seconds": 0.0, "n_new_drops": 0, "defense_info": ""}


def snapshot_phase(state: TrainState, epoch: int) -> SnapshotPhase:
    """Take the snapshot, run the defense and build the table; changes nothing in ``state``.

    Parameters
    ----------
    state : TrainState
        The run's state, read only.
    epoch : int
        The snapshot's epoch.

    Returns
    -------
    SnapshotPhase
    """
    config, poisons = state.config, state.data.poisons
    t0 = time.perf_counter()
    snap, target = take_snapshot_sharded(
        state.dist,
        state.model,
        state.images,
        state.data.y_train,
        epoch=epoch,
        target=(poisons.target_x, poisons.adv_label) if poisons else None,
        batch_size=config.snapshot_batch_size,
    )
    t1 = time.perf_counter()
    # rank 0 decides; under torchrun every rank may run a share of the work (EPIC's GreeDi)
    n_classes = state.data.dataset.n_classes
    result = run_defense(state.dist, state.defense, snap, state.data.y_train,
                                     state.active.copy(), n_classes=n_classes)  # fmt: skip
    t2 = time.perf_counter()
    if snap is None:  # a rank other than 0: the drops come by broadcast
        new = broadcast_mask(np.zeros_like(state.active))
        return SnapshotPhase({}, new, None, NO_SNAPSHOT)
    # The last snapshot drops nothing: no training is left for a drop to change.
    in_window = config.drop_after <= epoch < min(config.stop_after, config.epochs)
    new = result.suspect & state.active if in_window else np.zeros_like(state.active)
    new = broadcast_mask(new)  # every rank drops the same examples (alone: a copy)
    table = snapshot_table(snap, result, state.active, state.dropped_epoch, new, state.projection)
    metrics = {
        "snapshot_seconds": t1 - t0,
        "defense_seconds": t2 - t1,
        "n_new_drops": int(new.sum()),
        "defense_info": json.dumps(result.info, default=json_default),
    }
    return SnapshotPhase(table, new, target_row(epoch, target, state.projection), metrics)


def snapshot_table(
    snap: Snapshot,
    result: DefenseResult,
    active: np.ndarray,
    dropped_epoch: np.ndarray,
    new_drops: np.ndarray,
    projection: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The snapshot file's columns (docs/run-format.md), each of shape (n_samples,).

    ``active`` and ``dropped_epoch`` are the masks before this snapshot's decisions;
    ``new_drops`` are those decisions. Embeddings wider than the projection's input are
    stored projected. The arrays are views or fresh arrays, never Python lists.

    Parameters
    ----------
    snap : Snapshot
        The snapshot (on rank 0).
    result : DefenseResult
        The defense's scores, suspects and columns.
    active : bool array of shape (n_samples,)
        The examples trained on before this snapshot.
    dropped_epoch : int64 array of shape (n_samples,)
        The epoch each example was dropped at, -1 if not, before this snapshot.
    new_drops : bool array of shape (n_samples,)
        This snapshot's decisions.
    projection : float32 array of shape (n_features, n_stored) or None
        The fixed projection of wide embeddings.
    """
    emb = snap.embeddings if projection is None else snap.embeddings @ projection
    cols = {"index": np.arange(snap.n_samples, dtype=np.int64), "label": snap.labels}
    cols.update({f"g_{c}": snap.grads[:, c] for c in range(snap.n_classes)})
    cols.update({f"emb_{j}": emb[:, j] for j in range(emb.shape[1])})
    cols.update(
        loss=snap.loss,
        confidence=snap.confidence,
        prediction=snap.prediction,
        active=active.copy(),
        score=np.asarray(result.score, dtype=np.float64),
        suspect=np.asarray(result.suspect, dtype=bool),
        drop=new_drops,
        dropped_epoch=np.where(new_drops, snap.epoch, dropped_epoch),
    )
    cols.update({k: np.asarray(v) for k, v in result.columns.items()})
    return cols


def target_row(epoch: int, target: dict | None, projection: np.ndarray | None) -> dict | None:
    """The targets.parquet row of a snapshot: epoch, prediction, prob_adv, g_*, emb_*.

    Parameters
    ----------
    epoch : int
        The snapshot's epoch.
    target : dict or None
        The target's quantities from ``take_snapshot``; None for a clean run.
    projection : float32 array of shape (n_features, n_stored) or None
        The fixed projection of wide embeddings.
    """
    if target is None:
        return None
    emb = target["embedding"] if projection is None else target["embedding"] @ projection
    return {
        "epoch": epoch,
        "prediction": target["prediction"],
        "prob_adv": target["prob_adv"],
        **{f"g_{c}": float(v) for c, v in enumerate(target["grads"])},
        **{f"emb_{j}": float(v) for j, v in enumerate(emb)},
    }


def drop_counts(state: TrainState) -> dict:
    """``n_active``, ``n_dropped`` and ``n_poison_dropped`` of the current masks (an example
    left out by ``--exclude`` is inactive but was never dropped).

    Parameters
    ----------
    state : TrainState
        The run's state after this epoch's decisions.
    """
    dropped = state.dropped_epoch >= 0
    return {
        "n_active": int(state.active.sum()),
        "n_dropped": int(dropped.sum()),
        "n_poison_dropped": int((dropped & state.data.is_poison).sum()),
    }


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """metrics.parquet from one dict per epoch; every row must have exactly :data:`METRICS_COLUMNS`.

    Parameters
    ----------
    rows : list of dict
        One row per finished epoch.
    """
    for row in rows:
        if set(row) != set(METRICS_COLUMNS):
            raise ValueError(f"metrics row keys {sorted(set(row) ^ set(METRICS_COLUMNS))} differ")
    return pd.DataFrame(rows, columns=list(METRICS_COLUMNS))


def checkpoint_state(state: TrainState) -> dict:
    """What last.pt holds after epoch ``state.epoch - 1``, on the CPU (so any device reads it).

    Parameters
    ----------
    state : TrainState
        The run's state after its epoch.
    """
    ckpt = {
        "epoch": state.epoch - 1,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "active": torch.from_numpy(state.active.copy()),
        "dropped_epoch": torch.from_numpy(state.dropped_epoch.copy()),
    }
    if state.scaler is not None:
        ckpt["scaler"] = state.scaler.state_dict()
    return to_cpu(ckpt)


def to_cpu(obj):
    """``obj`` with every tensor in it detached and copied to the CPU (dicts, lists and tuples
    are rebuilt): checkpoints are written from CPU tensors so that they load anywhere without
    ``map_location``.

    Parameters
    ----------
    obj : tensor, dict, list, tuple or any other object
        A state dict or a checkpoint's contents; other objects are returned as they are.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_cpu(v) for v in obj)
    return obj
