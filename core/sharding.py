"""Which examples and which pieces of work each rank takes: computed from shared facts, never sent.

Every rank derives its share from what all ranks hold (the seed, the epoch, the active mask, the
world size), so the ranks agree without talking (docs/distributed.md).
"""

from __future__ import annotations

import numpy as np
import torch

from poisonlens.device import DistContext
from poisonlens.errors import InputError


def deal(
    indices: np.ndarray, *, seed: int, epoch: int, world_size: int, rank: int, shuffle: bool = True
) -> np.ndarray:
    """This rank's share of ``indices`` for one epoch, as ``DistributedSampler`` deals them.

    The indices are shuffled once from (``seed``, ``epoch``) (unless ``shuffle`` is False),
    padded by repeating the first ones up to a multiple of ``world_size``, and dealt out
    round-robin, so every rank holds a share of the same length.

    Parameters
    ----------
    indices : int array of shape (n,)
        The examples to deal (e.g. the active ones).
    seed, epoch : int
        Fix the shuffle; the same on every rank.
    world_size, rank : int
        Number of processes and this one's rank.
    shuffle : bool
        False keeps ``indices`` in their order before padding and dealing.

    Returns
    -------
    int64 array of shape (ceil(n / world_size),)
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    perm = np.asarray(indices, dtype=np.int64)
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = perm[torch.randperm(len(perm), generator=gen).numpy()]
    total = -(-len(perm) // world_size) * world_size
    if total > len(perm) and len(perm):
        perm = np.concatenate([perm, np.resize(perm, total - len(perm))])
    return perm[rank:total:world_size]


def shard_indices(
    active_indices: np.ndarray,
    *,
    seed: int,
    epoch: int,
    world_size: int,
    rank: int,
    batch_size: int,
) -> list[np.ndarray]:
    """This rank's training batches for one epoch; every rank computes them alone.

    The active examples are dealt by :func:`deal` (shuffled from (``seed``, ``epoch``), padded
    to a multiple of ``world_size``, round-robin), so every rank takes the same number of steps
    (a rank with one step fewer would leave the others waiting in the gradient all-reduce
    forever).

    ``batch_size`` is the global batch: each rank's batches hold ``batch_size // world_size``
    examples, and ``DistributedDataParallel`` averages the ranks' gradients, so one step is
    the step of one batch of ``batch_size`` examples and the learning rate need not change
    with the number of processes (docs/distributed.md).

    Parameters
    ----------
    active_indices : int array of shape (n_active,)
        Indices of the examples still trained on.
    seed, epoch : int
        The run's seed and the epoch (1-based); they fix the shuffle.
    world_size, rank : int
        Number of processes and this one's rank.
    batch_size : int
        Global batch size (``--batch-size``); at least ``world_size``.

    Returns
    -------
    list of int64 arrays
        The batches of this rank, in training order; the same number on every rank. A last
        batch of a single example joins the one before (batch norm cannot train on one).
    """
    if batch_size < world_size:
        raise InputError(
            "--batch-size", f"{batch_size} is smaller than the number of processes ({world_size})"
        )
    shard = deal(active_indices, seed=seed, epoch=epoch, world_size=world_size, rank=rank)
    per_rank = batch_size // world_size
    out = [shard[i : i + per_rank] for i in range(0, len(shard), per_rank)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


def rank_batches(
    ctx: DistContext, active: np.ndarray, *, seed: int, epoch: int, batch_size: int
) -> list[np.ndarray] | None:
    """This rank's batches of the epoch (:func:`shard_indices` over the active examples), or
    None alone (the single-process loop shuffles as it always has).

    Parameters
    ----------
    ctx : DistContext
        This process's place.
    active : bool array of shape (n_samples,)
        The examples still trained on.
    seed, epoch, batch_size : int
        As for :func:`shard_indices`.

    Returns
    -------
    list of int64 arrays, or None without a process group
    """
    if not ctx.distributed:
        return None
    return shard_indices(np.flatnonzero(active), seed=seed, epoch=epoch,
                         world_size=ctx.world_size, rank=ctx.rank, batch_size=batch_size)  # fmt: skip


def rank_seed(seed: int, ctx: DistContext) -> int:
    """The seed of this rank's augmentation: the run's seed on rank 0 (and alone), another one
    per rank elsewhere, so two ranks do not crop their examples alike.

    Parameters
    ----------
    seed : int
        The run's seed.
    ctx : DistContext
        This process's place.

    Returns
    -------
    int
    """
    return seed + 1_000_003 * ctx.rank


def snapshot_shard(n_samples: int, world_size: int, rank: int) -> np.ndarray:
    """The contiguous block of example indices this rank passes forward at a snapshot.

    Blocks differ in length by at most one and together cover 0 .. n_samples - 1 once.

    Parameters
    ----------
    n_samples : int
        Examples in the training set.
    world_size, rank : int
        Number of processes and this one's rank.

    Returns
    -------
    int64 array of shape (about n_samples / world_size,)
    """
    bounds = np.linspace(0, n_samples, world_size + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


def share(n_items: int, world_size: int, rank: int) -> list[int]:
    """The pieces of work this rank runs: ``i % world_size == rank`` (round-robin).

    GreeDi's plan lists each class's partitions together and its classes in order, so
    round-robin deals every rank a mix of classes and sizes that differ by at most one.

    Parameters
    ----------
    n_items : int
        Number of pieces of work.
    world_size, rank : int
        Number of processes and this one's rank.

    Returns
    -------
    list of int, ascending
    """
    return list(range(rank, n_items, world_size))
