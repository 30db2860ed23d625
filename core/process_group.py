"""Joining and leaving a run's process group under ``torchrun``, and keeping one model across it.

``torchrun`` starts one process per device and tells each its place through environment
variables (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``).
:func:`init_distributed` reads them (:func:`poisonlens.device.torchrun_place`) and joins the
group; without them the process is alone (:data:`poisonlens.device.ALONE`), nothing is
initialised and every helper is the identity, so ``poisonlens train`` without ``torchrun``
behaves exactly as a plain single-process run. What crosses processes, and why:
docs/distributed.md.
"""

from __future__ import annotations

import atexit

import torch
import torch.distributed as dist

from poisonlens.collectives import active, comm_device
from poisonlens.device import ALONE, DistContext, resolve_device, torchrun_place


def init_distributed(device_spec: str = "auto") -> DistContext:
    """Join the run's process group if torchrun started this process; else :data:`ALONE`.

    NCCL carries the collectives between GPUs, gloo between CPU processes. The process group
    is started at most once per process (a second call returns the same context).

    Parameters
    ----------
    device_spec : str
        The run's ``--device`` (:func:`poisonlens.device.resolve_device` with the local rank).

    Returns
    -------
    DistContext
        With ``device`` None for a single process: nothing is resolved or started.
    """
    place = torchrun_place()
    if place is None:
        return ALONE
    device = resolve_device(device_spec, local_rank=place.local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)  # NCCL's collectives run on the current device
    if not dist.is_initialized():
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, rank=place.rank, world_size=place.world_size, **kwargs)
        atexit.register(_leave)  # torch warns about a process group left open at exit
    return DistContext(place.rank, place.local_rank, place.world_size, device, dist.get_backend())


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (a no-op for a process that never joined one).

    Parameters
    ----------
    ctx : DistContext
        This process's place, from :func:`init_distributed`.
    """
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module | None:
    """``model`` in ``DistributedDataParallel`` under torchrun, for the training steps; else None.

    The wrapper averages gradients across ranks during ``backward``. Code that reaches into the
    model's parts (head, body, batch-norm folding) keeps using ``model`` itself; both share the
    same parameters.

    Parameters
    ----------
    model : torch.nn.Module
        The model, already on ``ctx.device``.
    ctx : DistContext
        This process's place.

    Returns
    -------
    DistributedDataParallel or None
    """
    if not ctx.distributed:
        return None
    from torch.nn.parallel import DistributedDataParallel

    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def sync_buffers(model: torch.nn.Module, ctx: DistContext) -> None:
    """Give every rank rank 0's buffers (batch-norm running statistics).

    DDP averages gradients, so parameters agree; running statistics are updated by each rank
    from its own last batch, so they drift apart by one step. Evaluation, the snapshot and the
    checkpoint must all see one model: rank 0's.

    Parameters
    ----------
    model : torch.nn.Module
        Changed in place on every rank but 0.
    ctx : DistContext
        This process's place (alone: nothing happens).
    """
    if not ctx.distributed or not active():
        return
    device = comm_device()
    for buf in model.buffers():
        if buf.device == device:
            dist.broadcast(buf, src=0)
        else:  # gloo with a model elsewhere: go through the communication device
            tmp = buf.detach().to(device)
            dist.broadcast(tmp, src=0)
            buf.copy_(tmp)
