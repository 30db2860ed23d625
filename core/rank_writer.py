"""Only rank 0 writes a run: its lock, its writer, and what it records of the processes.

Every other rank gets a :class:`NullWriter` with the same methods that writes nothing, so the
training loop has one write path for every rank.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from poisonlens.device import DistContext


def lock_run(ctx: DistContext, make_lock) -> contextlib.AbstractContextManager:
    """``make_lock()`` (the run's writer lock) on rank 0; nothing elsewhere, as no other rank writes.

    Parameters
    ----------
    ctx : DistContext
        This process's place.
    make_lock : callable
        Returns the context manager that holds the run's lock.

    Returns
    -------
    context manager
    """
    return make_lock() if ctx.is_main else contextlib.nullcontext()


class NullWriter:
    """The run writer of ranks other than 0: same methods, writes nothing.

    Parameters
    ----------
    run_dir : Path
        The run's folder, named in the progress bar only; never written to.
    """

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


def run_writer(run_dir: Path, ctx: DistContext):
    """The writer this rank uses: a :class:`poisonlens.store.RunWriter` on rank 0, else a
    :class:`NullWriter`.

    Parameters
    ----------
    run_dir : Path
        The run's folder.
    ctx : DistContext
        This process's place.

    Returns
    -------
    RunWriter or NullWriter
    """
    from poisonlens.store import RunWriter

    return RunWriter(run_dir) if ctx.is_main else NullWriter(run_dir)


def record_world(run_dir: Path, ctx: DistContext) -> None:
    """Write ``world_size`` and ``backend`` (null without torchrun) into run.json (rank 0 only).

    A resumed run records the numbers it continues with.

    Parameters
    ----------
    run_dir : Path
        The run's folder (its run.json exists).
    ctx : DistContext
        This process's place.
    """
    from poisonlens.store import atomic_write_json, read_json

    if not ctx.is_main:
        return
    path = Path(run_dir) / "run.json"
    meta = read_json(path, root=Path(run_dir))
    meta.update(world_size=ctx.world_size, backend=ctx.backend)
    atomic_write_json(path, meta, root=Path(run_dir))
