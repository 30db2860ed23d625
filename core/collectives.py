"""The few collectives EPIC needs across the processes of a run, on numpy arrays.

Every function is the identity (or a copy) for a process that is alone, so callers need no
branch for a single process. Tensors travel on the backend's device (NCCL: the current GPU,
gloo: the CPU); bool travels as uint8. No pickled object crosses between processes: only
fixed-size tensors (docs/distributed.md).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist

from poisonlens.device import this_process

#: Environment variable naming a file to which every rank appends one line
#: ``<epoch> <rank> <digest>`` per snapshot (the DDP tests read it to check that all ranks
#: dropped the same examples). Unset: nothing is written.
DIGEST_FILE_ENV = "POISONLENS_MASK_DIGESTS"


def active() -> bool:
    """True when a process group of more than one process is running (collectives then talk)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def comm_device() -> torch.device:
    """Where tensors must be to travel: the current GPU under NCCL, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (a no-op alone)."""
    if active():
        dist.barrier()


def _in_index_order(rows: np.ndarray, index: np.ndarray, n_total: int, dtype) -> np.ndarray:
    # rows with index -1 are padding; every index 0 .. n_total - 1 must be covered
    valid = index >= 0
    out = np.empty((n_total, *rows.shape[1:]), dtype=dtype)
    seen = np.zeros(n_total, dtype=bool)
    out[index[valid]] = rows[valid].astype(dtype, copy=False)
    seen[index[valid]] = True
    if not seen.all():
        raise ValueError(f"rows for {int((~seen).sum())} of {n_total} indices are missing")
    return out


def _padded(local_rows: np.ndarray, local_index: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    # every rank's block padded to the longest one (index -1), on the communication device
    device = comm_device()
    n_max = torch.tensor([len(local_index)], device=device)
    dist.all_reduce(n_max, op=dist.ReduceOp.MAX)
    n_max = int(n_max.item())
    rows = torch.zeros((n_max, *local_rows.shape[1:]), dtype=_torch_dtype(local_rows.dtype), device=device)
    rows[: len(local_rows)] = torch.from_numpy(_wire(local_rows)).to(device)
    index = torch.full((n_max,), -1, dtype=torch.int64, device=device)
    index[: len(local_index)] = torch.from_numpy(local_index).to(device)
    return rows, index


def gather_rows(
    local_rows: np.ndarray,
    local_index: np.ndarray,
    n_total: int,
    *,
    to_all: bool = False,
) -> np.ndarray | None:
    """Assemble per-rank rows into one array in index order.

    Every rank calls this with its rows and their global indices; the shards may differ in
    length (they are padded for the transfer). Indices seen on several ranks (padding) must
    carry the same rows.

    Parameters
    ----------
    local_rows : array of shape (n_local, ...)
        This rank's rows (any numeric or bool dtype, the same on every rank).
    local_index : int array of shape (n_local,)
        The global index of each row.
    n_total : int
        Number of rows of the whole; every index in 0 .. n_total - 1 must come from some rank.
    to_all : bool
        Give the result to every rank (all-gather) instead of rank 0 only (gather).

    Returns
    -------
    array of shape (n_total, ...) on rank 0 (on every rank with ``to_all``), else None.

    Raises
    ------
    ValueError
        When rows and indices differ in length, or some index has no row.
    """
    local_rows = np.ascontiguousarray(local_rows)
    local_index = np.asarray(local_index, dtype=np.int64)
    if len(local_rows) != len(local_index):
        raise ValueError(f"{len(local_rows)} rows but {len(local_index)} indices")
    if not active():
        return _in_index_order(local_rows, local_index, n_total, local_rows.dtype)
    rows, index = _padded(local_rows, local_index)
    world = dist.get_world_size()
    keep = to_all or this_process().is_main
    all_rows = [torch.empty_like(rows) for _ in range(world)] if keep else None
    all_index = [torch.empty_like(index) for _ in range(world)] if keep else None
    if to_all:
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_index, index)
    else:
        dist.gather(rows, all_rows, dst=0)
        dist.gather(index, all_index, dst=0)
    if not keep:
        return None
    stacked_index = torch.cat(all_index).cpu().numpy()
    return _in_index_order(torch.cat(all_rows).cpu().numpy(), stacked_index, n_total, local_rows.dtype)


def _wire(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8) if a.dtype == np.bool_ else a


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    # torch has no uint16/uint32 collectives everywhere; bool travels as uint8
    return torch.from_numpy(np.zeros(0, dtype=np.uint8 if dtype == np.bool_ else dtype)).dtype


def broadcast_mask(mask: np.ndarray, *, src: int = 0) -> np.ndarray:
    """Rank ``src``'s boolean mask on every rank (the others' values are replaced).

    Parameters
    ----------
    mask : bool array of shape (n_samples,)
        The same length on every rank.
    src : int
        The rank whose mask wins.

    Returns
    -------
    bool array of shape (n_samples,)
    """
    mask = np.asarray(mask, dtype=bool)
    if not active():
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.uint8)).to(comm_device())
    dist.broadcast(t, src=src)
    return t.cpu().numpy().astype(bool)


def broadcast_array(
    array: np.ndarray | None, shape: tuple[int, ...], dtype, *, src: int = 0
) -> np.ndarray:
    """Rank ``src``'s array on every rank; the others pass None and the shape they expect.

    Parameters
    ----------
    array : array of shape ``shape`` or None
        The array on rank ``src`` (read as ``dtype``); ignored elsewhere.
    shape : tuple of int
        The same on every rank.
    dtype : numpy dtype
        A numeric dtype, the same on every rank.
    src : int
        The rank that holds the array.

    Returns
    -------
    array of shape ``shape`` and dtype ``dtype`` (on ``src``, ``array`` itself when it has
    that dtype and is contiguous)
    """
    dtype = np.dtype(dtype)
    if not active() or this_process().rank == src:
        out = np.ascontiguousarray(array, dtype=dtype)
        if out.shape != tuple(shape):
            raise ValueError(f"array of shape {out.shape}, expected {tuple(shape)}")
        if active():
            dist.broadcast(torch.from_numpy(out).to(comm_device()), src=src)
        return out
    t = torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=comm_device())
    dist.broadcast(t, src=src)
    return t.cpu().numpy()


def gather_picks(
    local: dict[int, np.ndarray], sizes: Sequence[int]
) -> tuple[list[np.ndarray] | None, np.ndarray | None]:
    """Every piece's picks on rank 0, in piece order, and which rank computed each.

    Every rank calls this with the pieces it ran; together the ranks must cover every piece.
    Piece i's picks fill its ``sizes[i]`` slots of one int64 table (short picks padded with
    -1), which :func:`gather_rows` assembles on rank 0: fixed-size tensors, no pickles.

    Parameters
    ----------
    local : dict of int to int array of shape (<= sizes[i],)
        The picks this rank computed, by piece index.
    sizes : sequence of int >= 1
        The most picks each piece may have (GreeDi: the partition's budget).

    Returns
    -------
    picks : list of int64 arrays, ``picks[i]`` as the rank that ran piece i gave it, on rank 0
        (alone: on the one process); None elsewhere
    ranks : int64 array of shape (len(sizes),), the rank that ran each piece; None elsewhere
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    if (sizes < 1).any():
        raise ValueError("every piece must have room for at least one pick")
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rank = this_process().rank if active() else 0
    rows, index = [np.empty((0, 2), np.int64)], [np.empty(0, np.int64)]
    for i, chosen in sorted(local.items()):
        chosen = np.asarray(chosen, dtype=np.int64)
        if len(chosen) > sizes[i]:
            raise ValueError(f"piece {i} has {len(chosen)} picks, room for {sizes[i]}")
        block = np.full((sizes[i], 2), -1, dtype=np.int64)
        block[: len(chosen), 0], block[:, 1] = chosen, rank
        rows.append(block)
        index.append(np.arange(offsets[i], offsets[i + 1]))
    table = gather_rows(np.concatenate(rows), np.concatenate(index), int(offsets[-1]))
    if table is None:
        return None, None
    ends = zip(offsets[:-1], offsets[1:], strict=True)
    picks = [table[a:b, 0][table[a:b, 0] >= 0] for a, b in ends]
    return picks, table[offsets[:-1], 1].copy()


def mask_digest(mask: np.ndarray) -> str:
    """A short hex digest of a boolean mask (its length and its bits): equal masks, equal digests.

    Parameters
    ----------
    mask : bool array of shape (n_samples,)

    Returns
    -------
    str
        16 hex characters.
    """
    mask = np.asarray(mask, dtype=bool)
    h = hashlib.sha256(len(mask).to_bytes(8, "little"))
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:16]


def check_same_mask(mask: np.ndarray, *, epoch: int | None = None) -> str:
    """Raise unless every rank holds the same ``mask``; returns its digest.

    The digests travel as 8-byte integers in one all-gather. When the environment variable
    :data:`DIGEST_FILE_ENV` names a file, every rank appends ``<epoch> <rank> <digest>`` to it
    (a record for tests; one short append is atomic on a local file system).

    Parameters
    ----------
    mask : bool array of shape (n_samples,)
        This rank's mask (the active examples).
    epoch : int or None
        The epoch, for the record and the message (-1 in the record when None).

    Returns
    -------
    str
        The mask's digest (:func:`mask_digest`).

    Raises
    ------
    RuntimeError
        Naming the ranks whose masks differ from rank 0's.
    """
    digest = mask_digest(mask)
    rank = this_process().rank if active() else 0
    path = os.environ.get(DIGEST_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{epoch if epoch is not None else -1} {rank} {digest}\n")
    if not active():
        return digest
    value = int(digest[:15], 16)  # 60 bits: fits a signed int64
    mine = torch.tensor([value], dtype=torch.int64, device=comm_device())
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    values = [int(t.item()) for t in every]
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise RuntimeError(f"ranks {differ} hold another drop mask than rank 0 at epoch {epoch}")
    return digest
