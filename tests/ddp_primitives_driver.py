"""Run by tests/test_ddp.py under ``torchrun --nproc-per-node 2``: exercises poisonlens.collectives
collectives in real processes on gloo and writes what each rank saw to ``<out>/rank<r>.npz``.

Usage: torchrun --standalone --nproc-per-node 2 tests/ddp_primitives_driver.py OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from poisonlens.collectives import barrier, broadcast_mask, check_same_mask, gather_rows
from poisonlens.process_group import init_distributed, shutdown
from poisonlens.sharding import snapshot_shard

N = 101  # odd, so the snapshot shards differ in length


def main(out: Path) -> None:
    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    result: dict[str, np.ndarray] = {
        "rank": np.array(ctx.rank),
        "world_size": np.array(ctx.world_size),
        "backend": np.array(str(ctx.backend)),
    }
    # every example's "snapshot row" is a function of its index only, so rank 0 can check order
    index = snapshot_shard(N, ctx.world_size, ctx.rank)
    rows = np.stack([index * 1.5, -index.astype(np.float64)], axis=1).astype(np.float32)
    gathered = gather_rows(rows, index, N)
    result["gathered_is_none"] = np.array(gathered is None)
    if gathered is not None:
        result["gathered"] = gathered
    result["gathered_all"] = gather_rows(rows, index, N, to_all=True)
    result["gathered_bool"] = gather_rows(index % 3 == 0, index, N, to_all=True)
    # each rank starts with a different mask; after the broadcast all hold rank 0's
    own = np.random.default_rng(ctx.rank).random(N) < 0.3
    mask = broadcast_mask(own)
    result["own_mask"], result["mask"] = own, mask
    result["digest"] = np.array(check_same_mask(mask, epoch=7))
    try:
        check_same_mask(own, epoch=8)
        result["mismatch_error"] = np.array("")
    except RuntimeError as err:
        result["mismatch_error"] = np.array(str(err))
    np.savez(out / f"rank{ctx.rank}.npz", **result)
    barrier()
    shutdown(ctx)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
