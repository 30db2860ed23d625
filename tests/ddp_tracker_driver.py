"""Run by tests/test_tracker.py under ``torchrun --nproc-per-node 2``: an EpicTracker in a real
DDP loop on gloo. Every rank writes what it saw to ``<out>/rank<r>.npz``.

Usage: torchrun --standalone --nproc-per-node 2 tests/ddp_tracker_driver.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

import poisonlens

N, CLASSES, EPOCHS = 600, 2, 3


def main(out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    rng = np.random.default_rng(0)  # the same data on every rank
    x = torch.from_numpy(rng.normal(size=(N, 8)).astype(np.float32))
    y = torch.from_numpy(np.repeat(np.arange(CLASSES), N // CLASSES))
    torch.manual_seed(0)
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(8, CLASSES))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # GreeDi's partitions (classes of 300 > max_dense 100) are spread over the ranks
    options = poisonlens.TrackerOptions(subset_size=0.1, drop_after=1, snapshot_every=1, epochs=EPOCHS,
                                        epic={"max_dense": 100, "partition_size": 100})
    tracker = poisonlens.EpicTracker(out / "run", y, options)
    sampler = tracker.sampler()
    seen, drops = {}, {}
    for epoch in range(EPOCHS + 1):
        if epoch:
            sampler.set_epoch(epoch)
            idx = torch.tensor(list(sampler))
            seen[epoch] = idx.numpy()
            for batch in idx.split(50):
                loss = F.cross_entropy(model(x[batch]), y[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():  # only rank 0 needs the logits
            logits = model.module(x) if rank == 0 else None
        drops[epoch] = tracker.snapshot(epoch, logits=logits)
    tracker.finish()
    np.savez(out / f"rank{rank}.npz", **{f"seen{e}": s for e, s in seen.items()},
             **{f"drop{e}": d for e, d in drops.items()}, active=tracker.active)  # fmt: skip
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
