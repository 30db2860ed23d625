"""A defense's decision at a snapshot under torchrun: rank 0 decides; the ranks share a first round.

A defense that splits its work into independent pieces offers three methods (EPIC does, for
GreeDi's partitions; :class:`poisonlens.defense.epic.Epic`):

- ``partitions(labels, active, n_classes=)``: the pieces, computed alike on every rank from
  what every rank holds (the labels and the active mask), so no rank waits to learn them; an
  empty list when there is nothing to split;
- ``first_round(grads, parts)``: the picks (int arrays of global indices, at most
  ``part.budget`` each) of the given pieces;
- ``finish(snapshot, active, parts, picks, info=)``: the DefenseResult from every piece's
  picks, ``info`` added to its own.
"""

from __future__ import annotations

import numpy as np

from poisonlens.collectives import active as group_active
from poisonlens.collectives import broadcast_array, gather_picks
from poisonlens.device import DistContext
from poisonlens.sharding import share


def splits(defense) -> bool:
    """Whether ``defense`` offers the three methods that let the ranks share its work.

    Parameters
    ----------
    defense : Defense
        The run's defense.

    Returns
    -------
    bool
    """
    return all(callable(getattr(defense, m, None)) for m in ("partitions", "first_round", "finish"))


def run_defense(ctx: DistContext, defense, snap, labels: np.ndarray, active: np.ndarray, *, n_classes: int):
    """The defense's decision at a snapshot: rank 0 decides; the ranks share a first round.

    Under torchrun with more than one process, when the defense :func:`splits` and has pieces
    at this snapshot, rank 0 broadcasts the (n_samples, n_classes) float32 gradients, rank r
    runs the pieces i with ``i % world_size == r``, the picks are gathered to rank 0, and rank
    0 finishes; its ``info`` gains ``partitions_per_rank`` (how many pieces each rank ran, as
    reported by the rank that ran them). Otherwise rank 0 calls ``defense(snap, active)``
    alone, as a single process does. Every rank must call this at the same snapshots, as its
    collectives pair up across ranks; whether they run depends only on the labels, the mask
    and the defense's options, which every rank shares.

    Parameters
    ----------
    ctx : DistContext
        This process's place.
    defense : Defense
        The run's defense.
    snap : Snapshot or None
        On rank 0 (from :func:`poisonlens.sharded_snapshot.take_snapshot_sharded`); None on
        the other ranks.
    labels : int array of shape (n_samples,)
        The training labels (every rank holds them).
    active : bool array of shape (n_samples,)
        The examples still trained on, the same on every rank
        (:func:`poisonlens.collectives.check_same_mask` proves it after every snapshot).
    n_classes : int
        Number of classes (columns of the gradients).

    Returns
    -------
    DefenseResult on rank 0, None on the other ranks
    """
    spread = ctx.world_size > 1 and group_active() and splits(defense)
    labels = np.asarray(labels, dtype=np.int64)
    parts = defense.partitions(labels, active, n_classes=n_classes) if spread else []
    if not parts:
        return None if snap is None else defense(snap, active)
    grads = broadcast_array(None if snap is None else snap.grads, (len(labels), n_classes), np.float32)
    mine = share(len(parts), ctx.world_size, ctx.rank)
    done = defense.first_round(grads, [parts[i] for i in mine])
    picks, ranks = gather_picks(dict(zip(mine, done, strict=True)), [p.budget for p in parts])
    if snap is None:
        return None
    per_rank = np.bincount(ranks, minlength=ctx.world_size).tolist()
    return defense.finish(snap, active, parts, picks, info={"partitions_per_rank": per_rank})
