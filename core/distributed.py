"""Data-parallel training under ``torchrun``: who this process is, and the few collectives EPIC needs.

``torchrun`` starts one process per device and tells each its place through environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads them into a :class:`DistContext`; without them the process is
alone (world size 1), nothing is initialised and every helper below is the identity, so
``poisonlens train`` without ``torchrun`` behaves exactly as a plain single-process run.

What crosses processes, and why (docs/distributed.md has the full picture):

- nothing for the order of the data: :func:`shard_indices` derives every rank's batches from
  (seed, epoch) alone, so all ranks agree without talking;
- the gradients, inside ``DistributedDataParallel`` (not here);
- at a snapshot, each rank's rows of logits and features: :func:`gather_rows` puts them in
  index order on rank 0, which runs the defense;
- for a defense that splits its work (EPIC's GreeDi, :func:`run_defense`): the gradients,
  broadcast from rank 0 to every rank (:func:`broadcast_array`), and each partition's picks,
  gathered back to rank 0 (:func:`gather_picks`);
- the defense's decision: :func:`broadcast_mask` sends rank 0's drop mask to every rank, and
  :func:`check_same_mask` proves with a digest that they all hold the same one.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from poisonlens.errors import InputError

#: Environment variable naming a file to which every rank appends one line
#: ``<epoch> <rank> <digest>`` per snapshot (the DDP tests read it to check that all ranks
#: dropped the same examples). Unset: nothing is written.
DIGEST_FILE_ENV = "POISONLENS_MASK_DIGESTS"


@dataclass(frozen=True)
class DistContext:
    """This process's place among the processes of one run.

    Attributes
    ----------
    rank : int
        Global index of this process, 0 .. world_size - 1; rank 0 writes the run store.
    local_rank : int
        Index on this machine; picks the GPU (``cuda:<local_rank>``).
    world_size : int
        Number of processes of the run (1 without torchrun).
    device : torch.device or None
        Where this process trains under torchrun; None for a single process, which resolves
        ``--device`` as it always has (``poisonlens.device.resolve_device``).
    backend : str or None
        ``'nccl'`` (CUDA) or ``'gloo'`` (CPU); None when no process group was started.
    """

    rank: int
    local_rank: int
    world_size: int
    device: torch.device | None
    backend: str | None

    @property
    def is_main(self) -> bool:
        """True on the one process that writes the run store, checkpoints and progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when a process group is running (under torchrun, even with one process)."""
        return self.backend is not None


def under_torchrun(environ: dict | None = None) -> bool:
    """True when torchrun (or another launcher speaking its protocol) started this process."""
    env = os.environ if environ is None else environ
    return all(k in env for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def is_main_process() -> bool:
    """True unless this process is a torchrun worker of rank > 0 (only rank 0 writes a run)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def process_device(spec: str) -> torch.device | None:
    """Under torchrun, this process's device for ``--device`` (``cuda:<local rank>``); else None
    (the caller resolves the device as a single process does)."""
    if not under_torchrun():
        return None
    return local_device(spec, _env_int(dict(os.environ), "LOCAL_RANK"), distributed=True)


def device_spec(config, run_dir: Path, *, resume: bool, device: str | None) -> str:
    """The ``--device`` a run will use: ``device``, else (resuming) run.json's, else the config's.

    Read before the process group starts, since the device picks the backend; an unreadable
    run.json gives ``'auto'`` here and its proper error later, from the resume itself.
    """
    if device is not None:
        return device
    if not resume:
        return config.device
    from poisonlens.store import read_json  # bounded: a run folder may come from someone else

    try:
        return str(read_json(Path(run_dir) / "run.json", root=Path(run_dir))["config"]["device"])
    except (OSError, ValueError, KeyError, TypeError):  # InputError is a ValueError
        return "auto"


def _env_int(env: dict, key: str) -> int:
    try:
        value = int(env[key])
    except ValueError as err:
        raise InputError(key, f"environment variable is {env[key]!r}, expected an integer") from err
    if value < 0:
        raise InputError(key, f"environment variable is {value}, expected >= 0")
    return value


def local_device(spec: str, local_rank: int, *, distributed: bool) -> torch.device:
    """The device this process trains on, from ``--device`` and its local rank.

    Parameters
    ----------
    spec : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'}
        ``auto`` is CUDA when present, else the CPU. Under torchrun, ``auto`` and ``cuda``
        mean ``cuda:<local_rank>`` (one GPU per process); ``cuda:N`` is refused there, as
        every process would share one GPU.
    local_rank : int
        This process's index on its machine.
    distributed : bool
        Whether the process is one of several started by torchrun.

    Raises
    ------
    InputError
        ``--device: ...`` when the device is not there or cannot be used this way.
    """
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "mps":
        if distributed:
            raise InputError("--device", "mps has no distributed backend; use --device cpu")
        if not torch.backends.mps.is_available():
            raise InputError("--device", "mps is not available on this machine")
        return torch.device("mps")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError("--device", f"{spec} is not available (torch sees no CUDA device)")
        count = torch.cuda.device_count()
        if spec == "cuda":
            index = local_rank if distributed else 0
        elif distributed:
            raise InputError(
                "--device",
                f"{spec} under torchrun would put every process on one GPU; use --device cuda "
                "(each process takes cuda:<local rank>)",
            )
        else:
            try:
                index = int(spec.split(":", 1)[1])
            except ValueError as err:
                raise InputError("--device", f"{spec!r} is not cuda:<index>") from err
        if not 0 <= index < count:
            raise InputError("--device", f"cuda:{index} is not there ({count} CUDA devices)")
        return torch.device("cuda", index)
    raise InputError("--device", f"unknown device {spec!r}; use auto, cpu, cuda, cuda:N or mps")


def init_distributed(device_spec: str = "auto") -> DistContext:
    """Join the run's process group if torchrun started this process; else a context of one.

    NCCL carries the collectives between GPUs, gloo between CPU processes. The process group
    is started at most once per process (a second call returns the same context).

    Parameters
    ----------
    device_spec : str
        The run's ``--device`` (see :func:`local_device`).

    Returns
    -------
    DistContext (with ``device`` None for a single process: nothing is resolved or started)
    """
    env = dict(os.environ)
    if not under_torchrun(env):
        return DistContext(0, 0, 1, None, None)
    rank, local_rank = _env_int(env, "RANK"), _env_int(env, "LOCAL_RANK")
    world_size = _env_int(env, "WORLD_SIZE")
    device = local_device(device_spec, local_rank, distributed=True)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **kwargs)
        atexit.register(_leave)  # torch warns about a process group left open at exit
    return DistContext(rank, local_rank, world_size, device, dist.get_backend())


def lock_run(ctx: DistContext | None, make_lock) -> contextlib.AbstractContextManager:
    """``make_lock()`` (the run's writer lock) on rank 0; nothing elsewhere, as no other rank writes."""
    return make_lock() if ctx is None or ctx.is_main else contextlib.nullcontext()


class NullWriter:
    """The run writer of ranks other than 0: same methods, writes nothing."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)  # named in the progress bar only; never written to

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def record_world(run_dir: Path, ctx: DistContext) -> None:
    """Write ``world_size`` and ``backend`` (null without torchrun) into run.json (rank 0 only).

    A resumed run records the numbers it continues with.
    """
    from poisonlens.store import atomic_write_json, read_json

    if not ctx.is_main:
        return
    path = Path(run_dir) / "run.json"
    meta = read_json(path, root=Path(run_dir))
    meta.update(world_size=ctx.world_size, backend=ctx.backend)
    atomic_write_json(path, meta, root=Path(run_dir))


class RankStopped(RuntimeError):
    """torchrun stopped this process (SIGTERM), usually because another rank died."""


def stop_on_sigterm(ctx: DistContext) -> None:
    """Turn torchrun's SIGTERM into :class:`RankStopped`, so the run is recorded as failed.

    When a worker dies, torchrun's elastic agent sends SIGTERM to the others; by default that
    kills them on the spot and rank 0 could not write why. The signal often arrives while the
    process is already failing (its collective broke when the peer died) and writing that
    failure; it then changes nothing, so the first reason is the one recorded.
    """
    if not ctx.distributed:
        return

    def handler(signum, frame):
        if sys.exc_info()[1] is not None:
            return  # already handling the failure: let it be written
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise RankStopped("stopped by torchrun (SIGTERM): another process of the run ended")

    signal.signal(signal.SIGTERM, handler)


def failure_reason(err: BaseException) -> str:
    """The one line run.json records for a failure; a broken collective (a peer process died)
    is named as such instead of gloo's or NCCL's multi-clause message."""
    text = f"{type(err).__name__}: {err}".splitlines()[0]
    broken = isinstance(err, getattr(dist, "DistError", ())) or any(
        word in text for word in ("gloo/transport", "Connection reset", "Connection closed", "NCCL")
    )
    if broken and _active():
        return f"another process of the run ended (rank {dist.get_rank()}: {text[:160]})"
    return text


def wrap_model(model: torch.nn.Module, ctx: DistContext | None) -> torch.nn.Module | None:
    """``model`` in ``DistributedDataParallel`` under torchrun, for the training steps; else None.

    The wrapper averages gradients across ranks during ``backward``. Code that reaches into the
    model's parts (head, body, batch-norm folding) keeps using ``model`` itself; both share the
    same parameters.
    """
    if ctx is None or not ctx.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: torch.nn.Module, ctx: DistContext | None) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP averages gradients, so parameters agree; running statistics are updated by each rank
    from its own last batch, so they drift apart by one step. Evaluation, the snapshot and the
    checkpoint must all see one model: rank 0's.
    """
    if ctx is None or not _active():
        return
    device = _comm_device()
    for buf in model.buffers():
        if buf.device == device:
            dist.broadcast(buf, src=0)
        else:  # gloo with a model elsewhere: go through the communication device
            tmp = buf.detach().to(device)
            dist.broadcast(tmp, src=0)
            buf.copy_(tmp)


def rank_batches(
    ctx: DistContext | None, active: np.ndarray, *, seed: int, epoch: int, batch_size: int
) -> list[np.ndarray] | None:
    """This rank's batches of the epoch (:func:`shard_indices` over the active examples), or
    None alone (the single-process loop shuffles as it always has)."""
    if ctx is None or not ctx.distributed:
        return None
    return shard_indices(
        np.flatnonzero(active),
        seed=seed,
        epoch=epoch,
        world_size=ctx.world_size,
        rank=ctx.rank,
        batch_size=batch_size,
    )


def rank_seed(seed: int, ctx: DistContext | None) -> int:
    """The seed of this rank's augmentation: the run's seed on rank 0 (and alone), another one
    per rank elsewhere, so two ranks do not crop their examples alike."""
    return seed if ctx is None else seed + 1_000_003 * ctx.rank


def take_snapshot_sharded(
    ctx: DistContext | None,
    model,
    images,
    labels: np.ndarray,
    **kwargs,
):
    """:func:`poisonlens.snapshot.take_snapshot`, with the forward passes split across the ranks.

    Each rank passes its contiguous block of all examples (:func:`snapshot_shard`) forward;
    the per-example rows (gradients, embeddings, loss, confidence, prediction: n_classes +
    n_features + 3 float32) are gathered to rank 0 in index order. The target (a single
    image) is passed on rank 0 only.

    Parameters
    ----------
    ctx : this process's place, or None alone (then exactly ``take_snapshot``)
    model, images, labels, kwargs : as for ``take_snapshot``
        (images of shape (n_samples, height, width, channels), labels of shape (n_samples,))

    Returns
    -------
    (Snapshot, target) on rank 0, as ``take_snapshot`` returns them; (None, None) elsewhere.
    """
    from poisonlens.defense.base import Snapshot
    from poisonlens.snapshot import take_snapshot

    if ctx is None or not ctx.distributed:
        return take_snapshot(model, images, labels, **kwargs)
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    block = snapshot_shard(n, ctx.world_size, ctx.rank)
    lo, hi = (int(block[0]), int(block[-1]) + 1) if len(block) else (0, 0)
    if not ctx.is_main:
        kwargs = {**kwargs, "target_image": None, "adv_label": None}
    part, target = take_snapshot(model, images[lo:hi], labels[lo:hi], **kwargs)
    n_classes, n_features = part.grads.shape[1], part.embeddings.shape[1]
    rows = np.concatenate(
        [
            part.grads,
            part.embeddings,
            part.loss[:, None],
            part.confidence[:, None],
            part.prediction[:, None].astype(np.float32),  # exact below 2**24 classes
        ],
        axis=1,
        dtype=np.float32,
    )
    whole = gather_rows(rows, block, n)
    if whole is None:
        return None, None
    e0, e1 = n_classes, n_classes + n_features
    snap = Snapshot(
        epoch=part.epoch,
        labels=labels,
        embeddings=np.ascontiguousarray(whole[:, e0:e1]),
        grads=np.ascontiguousarray(whole[:, :e0]),
        loss=whole[:, e1].copy(),
        confidence=whole[:, e1 + 1].copy(),
        prediction=whole[:, e1 + 2].astype(np.int64),
    )
    if target is not None:
        snap = Snapshot(**{**snap.__dict__, "target_grad": target["grads"]})
    return snap, target


def run_defense(
    ctx: DistContext | None,
    defense,
    snap,
    labels: np.ndarray,
    active: np.ndarray,
    *,
    n_classes: int,
):
    """The defense's decision at a snapshot: rank 0 decides; the ranks share a first round.

    A defense that splits its work into independent pieces offers three methods (EPIC does,
    for GreeDi's partitions; :class:`poisonlens.defense.epic.Epic`):

    - ``partitions(labels, active, n_classes=)``: the pieces, computed alike on every rank
      from what every rank holds (the labels and the active mask), so no rank waits to learn
      them; an empty list when there is nothing to split;
    - ``first_round(grads, parts)``: the picks (int arrays of global indices, at most
      ``part.budget`` each) of the given pieces;
    - ``finish(snapshot, active, parts, picks, info=)``: the DefenseResult from every piece's
      picks, ``info`` added to its own.

    Under torchrun with more than one process, when such a defense has pieces at this
    snapshot, rank 0 broadcasts the (n_samples, n_classes) float32 gradients
    (:func:`broadcast_array`), rank r runs the pieces i with ``i % world_size == r``, the
    picks are gathered to rank 0 (:func:`gather_picks`), and rank 0 finishes. Its
    ``info`` gains ``partitions_per_rank``: how many pieces each rank ran, as reported by the
    rank that ran them. Otherwise (one process, another defense, no pieces) rank 0 calls
    ``defense(snap, active)`` alone, as a single process does.

    Every rank must call this at the same snapshots, as its collectives pair up across ranks;
    whether they run depends only on the labels, the mask and the defense's options, which
    every rank shares.

    Parameters
    ----------
    ctx : this process's place, or None alone
    defense : the run's Defense
    snap : Snapshot on rank 0 (from :func:`take_snapshot_sharded`), None on the other ranks
    labels : int array of shape (n_samples,), the training labels (every rank holds them)
    active : bool array of shape (n_samples,), the examples still trained on (the same on
        every rank: :func:`check_same_mask` proves it after every snapshot)
    n_classes : number of classes (columns of the gradients)

    Returns
    -------
    DefenseResult on rank 0, None on the other ranks
    """
    spread = ctx is not None and ctx.world_size > 1 and _active() and _splits(defense)
    labels = np.asarray(labels, dtype=np.int64)
    parts = defense.partitions(labels, active, n_classes=n_classes) if spread else []
    if not parts:
        return None if snap is None else defense(snap, active)
    grads = broadcast_array(
        None if snap is None else snap.grads, (len(labels), n_classes), np.float32
    )
    mine = share(len(parts), ctx.world_size, ctx.rank)
    done = defense.first_round(grads, [parts[i] for i in mine])
    picks, ranks = gather_picks(dict(zip(mine, done, strict=True)), [p.budget for p in parts])
    if snap is None:
        return None
    per_rank = np.bincount(ranks, minlength=ctx.world_size).tolist()
    return defense.finish(snap, active, parts, picks, info={"partitions_per_rank": per_rank})


def _splits(defense) -> bool:
    return all(callable(getattr(defense, m, None)) for m in ("partitions", "first_round", "finish"))


def share(n_items: int, world_size: int, rank: int) -> list[int]:
    """The pieces of work this rank runs: ``i % world_size == rank`` (round-robin).

    GreeDi's plan lists each class's partitions together and its classes in order, so
    round-robin deals every rank a mix of classes and sizes that differ by at most one.

    Returns
    -------
    list of int, ascending
    """
    return list(range(rank, n_items, world_size))


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (a no-op for a process that never joined one)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


# --- the data order: computed, not communicated -------------------------------------------


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

    The active examples are shuffled once from (``seed``, ``epoch``), padded by repeating
    the first shuffled examples up to a multiple of ``world_size`` (as
    ``torch.utils.data.DistributedSampler`` pads), and dealt out round-robin, so every rank
    holds a shard of the same length and takes the same number of steps (a rank with one
    step fewer would leave the others waiting in the gradient all-reduce forever).

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
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size}")
    if batch_size < world_size:
        raise InputError(
            "--batch-size", f"{batch_size} is smaller than the number of processes ({world_size})"
        )
    active_indices = np.asarray(active_indices, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = active_indices[torch.randperm(len(active_indices), generator=gen).numpy()]
    total = -(-len(perm) // world_size) * world_size
    if total > len(perm) and len(perm):
        perm = np.concatenate([perm, np.resize(perm, total - len(perm))])
    shard = perm[rank:total:world_size]
    per_rank = batch_size // world_size
    out = [shard[i : i + per_rank] for i in range(0, len(shard), per_rank)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


def snapshot_shard(n_samples: int, world_size: int, rank: int) -> np.ndarray:
    """The contiguous block of example indices this rank passes forward at a snapshot.

    Blocks differ in length by at most one and together cover 0 .. n_samples - 1 once.

    Returns
    -------
    int64 array of shape (about n_samples / world_size,)
    """
    bounds = np.linspace(0, n_samples, world_size + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


# --- collectives --------------------------------------------------------------------------


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _comm_device() -> torch.device:
    # NCCL moves only CUDA tensors, gloo only CPU ones
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
    """
    local_rows = np.ascontiguousarray(local_rows)
    local_index = np.asarray(local_index, dtype=np.int64)
    if len(local_rows) != len(local_index):
        raise ValueError(f"{len(local_rows)} rows but {len(local_index)} indices")
    if not _active():
        out = np.empty((n_total, *local_rows.shape[1:]), dtype=local_rows.dtype)
        seen = np.zeros(n_total, dtype=bool)
        out[local_index], seen[local_index] = local_rows, True
        if not seen.all():
            raise ValueError(f"rows for {int((~seen).sum())} of {n_total} indices are missing")
        return out
    device = _comm_device()
    world, rank = dist.get_world_size(), dist.get_rank()
    n_max = torch.tensor([len(local_index)], device=device)
    dist.all_reduce(n_max, op=dist.ReduceOp.MAX)
    n_max = int(n_max.item())
    tail = local_rows.shape[1:]
    # torch has no uint16/uint32 collectives everywhere; bool travels as uint8
    rows = torch.zeros((n_max, *tail), dtype=_torch_dtype(local_rows.dtype), device=device)
    rows[: len(local_rows)] = torch.from_numpy(_wire(local_rows)).to(device)
    index = torch.full((n_max,), -1, dtype=torch.int64, device=device)
    index[: len(local_index)] = torch.from_numpy(local_index).to(device)
    if to_all:
        all_rows = [torch.empty_like(rows) for _ in range(world)]
        all_index = [torch.empty_like(index) for _ in range(world)]
        dist.all_gather(all_rows, rows)
        dist.all_gather(all_index, index)
    else:
        keep = rank == 0
        all_rows = [torch.empty_like(rows) for _ in range(world)] if keep else None
        all_index = [torch.empty_like(index) for _ in range(world)] if keep else None
        dist.gather(rows, all_rows, dst=0)
        dist.gather(index, all_index, dst=0)
        if not keep:
            return None
    stacked_index = torch.cat(all_index).cpu().numpy()
    stacked_rows = torch.cat(all_rows).cpu().numpy()
    valid = stacked_index >= 0
    out = np.empty((n_total, *tail), dtype=local_rows.dtype)
    seen = np.zeros(n_total, dtype=bool)
    out[stacked_index[valid]] = stacked_rows[valid].astype(local_rows.dtype, copy=False)
    seen[stacked_index[valid]] = True
    if not seen.all():
        raise ValueError(f"rows for {int((~seen).sum())} of {n_total} indices are missing")
    return out


def _wire(a: np.ndarray) -> np.ndarray:
    return a.view(np.uint8) if a.dtype == np.bool_ else a


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=np.uint8 if dtype == np.bool_ else dtype)).dtype


def broadcast_mask(mask: np.ndarray, *, src: int = 0) -> np.ndarray:
    """Rank ``src``'s boolean mask on every rank (the others' values are replaced).

    Parameters
    ----------
    mask : bool array of shape (n_samples,)
        The same length on every rank.

    Returns
    -------
    bool array of shape (n_samples,)
    """
    mask = np.asarray(mask, dtype=bool)
    if not _active():
        return mask.copy()
    t = torch.from_numpy(mask.astype(np.uint8)).to(_comm_device())
    dist.broadcast(t, src=src)
    return t.cpu().numpy().astype(bool)


def broadcast_array(
    array: np.ndarray | None, shape: tuple[int, ...], dtype, *, src: int = 0
) -> np.ndarray:
    """Rank ``src``'s array on every rank; the others pass None and the shape they expect.

    Parameters
    ----------
    array : array of shape ``shape`` on rank ``src`` (read as ``dtype``); ignored elsewhere
    shape : tuple of int, the same on every rank
    dtype : a numeric numpy dtype, the same on every rank

    Returns
    -------
    array of shape ``shape`` and dtype ``dtype`` (on ``src``, ``array`` itself when it has
    that dtype and is contiguous)
    """
    dtype = np.dtype(dtype)
    if not _active() or dist.get_rank() == src:
        out = np.ascontiguousarray(array, dtype=dtype)
        if out.shape != tuple(shape):
            raise ValueError(f"array of shape {out.shape}, expected {tuple(shape)}")
        if not _active():
            return out
        dist.broadcast(torch.from_numpy(out).to(_comm_device()), src=src)
        return out
    t = torch.empty(tuple(shape), dtype=_torch_dtype(dtype), device=_comm_device())
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
    local : {piece index: int array of shape (<= sizes[i],)}, the picks this rank computed
    sizes : ints >= 1, the most picks each piece may have (GreeDi: the partition's budget)

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
    rank = dist.get_rank() if _active() else 0
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
    """A short hex digest of a boolean mask (its length and its bits): equal masks, equal digests."""
    mask = np.asarray(mask, dtype=bool)
    h = hashlib.sha256(len(mask).to_bytes(8, "little"))
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:16]


def check_same_mask(mask: np.ndarray, *, epoch: int | None = None) -> str:
    """Raise unless every rank holds the same ``mask``; returns its digest.

    The digests travel as 8-byte integers in one all-gather. When the environment variable
    :data:`DIGEST_FILE_ENV` names a file, every rank appends ``<epoch> <rank> <digest>`` to it
    (a record for tests; one short append is atomic on a local file system).

    Raises
    ------
    RuntimeError
        Naming the ranks whose masks differ from rank 0's.
    """
    digest = mask_digest(mask)
    rank = dist.get_rank() if _active() else 0
    path = os.environ.get(DIGEST_FILE_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{epoch if epoch is not None else -1} {rank} {digest}\n")
    if not _active():
        return digest
    value = int(digest[:15], 16)  # 60 bits: fits a signed int64
    mine = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine)
    values = [int(t.item()) for t in every]
    differ = [r for r, v in enumerate(values) if v != values[0]]
    if differ:
        raise RuntimeError(f"ranks {differ} hold another drop mask than rank 0 at epoch {epoch}")
    return digest


def barrier() -> None:
    """Wait for every rank (a no-op alone)."""
    if _active():
        dist.barrier()
