"""Run by tests/test_ddp.py under ``torchrun --nproc-per-node 2``: EPIC's GreeDi spread over the
ranks by ``poisonlens.shared_defense.run_defense`` on a seeded synthetic snapshot; each rank writes what
it saw to ``<out>/rank<r>.npz`` (rank 0: the decisions; every rank: the gradients it received).

Usage: torchrun --standalone --nproc-per-node 2 tests/ddp_greedi_driver.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from poisonlens.collectives import barrier, broadcast_array
from poisonlens.defense.base import Snapshot
from poisonlens.defense.epic import Epic
from poisonlens.process_group import init_distributed, shutdown
from poisonlens.shared_defense import run_defense

N, N_CLASSES = 900, 3
PARAMS = dict(subset_size=0.15, method="greedi", partition_size=60, random_state=2)


def synthetic(seed: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients softmax - onehot of random logits, labels, and an active mask with holes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, N)
    logits = rng.normal(size=(N, N_CLASSES)) * 2
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    grads = (p - np.eye(N_CLASSES)[labels]).astype(np.float32)
    return grads, labels, np.arange(N) % 9 != 0


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    grads, labels, active = synthetic()
    snap = None
    if ctx.is_main:  # as after take_snapshot_sharded: only rank 0 holds the snapshot
        zeros = np.zeros(N, np.float32)
        snap = Snapshot(0, labels, grads, np.zeros((N, 1), np.float32), zeros, zeros, labels)
    result = run_defense(ctx, Epic(**PARAMS), snap, labels, active, n_classes=N_CLASSES)
    # the broadcast alone: rank 1 passes nothing and receives rank 0's gradients
    received = broadcast_array(grads if ctx.is_main else None, grads.shape, np.float32)
    saved = {"received": received, "result_is_none": np.array(result is None)}
    if result is not None:
        saved.update(suspect=result.suspect, score=result.score, info=json.dumps(result.info),
                     **{k: v for k, v in result.columns.items()})  # fmt: skip
    np.savez(out / f"rank{ctx.rank}.npz", **saved)
    barrier()
    shutdown(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
