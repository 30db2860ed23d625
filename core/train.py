"""Training with gradient snapshots and a defense hook, written to a run store.

The state of a run is one :class:`~poisonlens.run_setup.TrainState` (made by
:func:`~poisonlens.run_setup.start_run` or :func:`~poisonlens.run_setup.resume_run`).
:func:`train` runs the loop, which reads in order, once per epoch: set lr -> train on the
active examples -> evaluate (test accuracy, the target) -> snapshot + defense (every
``snapshot_every`` epochs and at the last) -> record the epoch -> checkpoint. Epoch 0 is a
snapshot before training. The phases (:mod:`poisonlens.phases`) return values; only
``writer.record_epoch`` and the checkpoint write files. One epoch's SGD pass is
:mod:`poisonlens.epoch`.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from poisonlens import runfs
from poisonlens.augment import resolve_augment
from poisonlens.checkpoint import FINAL, LAST, RunLock, save_checkpoint
from poisonlens.collectives import check_same_mask
from poisonlens.config import TrainConfig
from poisonlens.device import device_spec
from poisonlens.epoch import epoch_generator, feed_batches, iter_batches, lr_at, train_one_epoch
from poisonlens.errors import InputError
from poisonlens.phases import (
    NO_SNAPSHOT,
    SnapshotPhase,
    checkpoint_state,
    drop_counts,
    evaluate,
    metrics_frame,
    snapshot_phase,
    to_cpu,
)
from poisonlens.process_group import init_distributed, sync_buffers, wrap_model
from poisonlens.rank_signals import failure_reason, stop_on_sigterm
from poisonlens.rank_writer import lock_run, record_world, run_writer
from poisonlens.run_setup import TrainState, check_config, resume_run, start_run
from poisonlens.sharding import rank_batches, rank_seed
from poisonlens.store import CHECKPOINTS, RUN_JSON, RunWriter


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    stop_at_epoch: int | None = None,
    device: str | None = None,
) -> Path:
    """Train under ``config.defense``, writing everything to ``run_dir``; returns ``run_dir``.

    Parameters
    ----------
    config : the run's options (ignored with ``resume=True``: run.json holds them)
    run_dir : the run directory (must not hold a run unless resuming)
    resume : continue from the last checkpoint; the run ends identical to an uninterrupted one
        on the CPU
    show_progress : a progress bar on stderr
    stop_at_epoch : end the process early after this epoch's checkpoint (as a kill would, but
        cleanly); for tests and benchmarks
    device : with ``resume``, the device to continue on (None: the one in run.json)

    Raises
    ------
    InputError
        for bad options, a missing device, an existing run, or a run another live process is
        writing; raised before anything is written.
    """
    run_dir = Path(run_dir)
    if resume and not (run_dir / RUN_JSON).is_file():
        runfs.kind(run_dir, RUN_JSON)  # a link, FIFO or device: refused with its own reason
        raise InputError(run_dir, f"not a poisonlens run (no {RUN_JSON})")
    checked = None
    if not resume:
        checked = check_config(config)  # before a run directory exists; the run's one check
        if (run_dir / RUN_JSON).exists():
            raise InputError(run_dir, "run already exists; pass --resume to continue it or choose another --name")
    # after the checks above: rank 0 cannot create run.json before every rank has joined
    ctx = init_distributed(device_spec(config, run_dir, resume=resume, device=device))
    stop_on_sigterm(ctx)
    with lock_run(ctx, lambda: RunLock(run_dir)):
        state = resume_run(run_dir, device=device) if resume else start_run(config, run_dir, device=checked)
        state.dist, state.ddp = ctx, wrap_model(state.model, ctx)
        writer = run_writer(run_dir, ctx)
        record_world(run_dir, ctx)
        try:
            run_loop(state, writer, stop_at_epoch=stop_at_epoch, show_progress=show_progress)
        except KeyboardInterrupt:
            writer.set_status("failed", "interrupted")
            raise
        except Exception as err:
            writer.set_status("failed", failure_reason(err))
            raise
    return run_dir


def train_phase(state: TrainState, epoch: int, augment: str) -> float:
    """One epoch's training pass over the active examples (this rank's shard under torchrun).

    Parameters
    ----------
    state : TrainState
        Its model and optimiser are trained in place; under torchrun every rank then holds
        rank 0's batch-norm statistics.
    epoch : int
        The epoch, >= 1 (it sets the learning rate and the generator).
    augment : {'none', 'crop', 'crop-flip'}
        The resolved augmentation.

    Returns
    -------
    float, the mean training loss
    """
    config = state.config
    for group in state.optimizer.param_groups:
        group["lr"] = lr_at(config, epoch)
    gen = epoch_generator(rank_seed(config.seed, state.dist), epoch)
    shard = rank_batches(state.dist, state.active, seed=config.seed, epoch=epoch, batch_size=config.batch_size)
    if shard is None:
        feed = iter_batches(state.images, state.labels, np.flatnonzero(state.active),
                            batch_size=config.batch_size, augment=augment, gen=gen)  # fmt: skip
    else:
        feed = feed_batches(state.images, state.labels, shard, augment=augment, gen=gen)
    loss = train_one_epoch(state.ddp or state.model, state.optimizer, feed, amp_dtype=state.amp_dtype,
                           scaler=state.scaler, freeze_body=config.scenario == "transfer")  # fmt: skip
    sync_buffers(state.model, state.dist)  # one model for eval and snapshot
    return loss


def apply_snapshot(state: TrainState, snap: SnapshotPhase, epoch: int) -> None:
    """Make a snapshot's drops final in ``state`` (every rank proves it holds the same ones).

    Parameters
    ----------
    state : TrainState
        Its ``active``, ``dropped_epoch`` and ``targets`` are updated.
    snap : SnapshotPhase
        What :func:`snapshot_phase` decided at ``epoch``.
    epoch : int
        The snapshot's epoch.
    """
    state.active &= ~snap.new_drops
    state.dropped_epoch[snap.new_drops] = epoch
    check_same_mask(state.active, epoch=epoch)  # all ranks, the same drops
    if snap.target_row is not None:
        state.targets.append(snap.target_row)


def run_loop(
    state: TrainState, writer: RunWriter, *, stop_at_epoch: int | None, show_progress: bool
) -> None:
    """The epochs from ``state.epoch`` to the last (or ``stop_at_epoch``), in order.

    Parameters
    ----------
    state : TrainState
        The run's state, advanced in place.
    writer : RunWriter or NullWriter
        Where the epochs are recorded (a NullWriter on ranks other than 0).
    stop_at_epoch : int or None
        End early after this epoch's checkpoint (None: run to the last epoch).
    show_progress : bool
        A progress bar on stderr (rank 0 only).
    """
    config, main = state.config, state.dist.is_main  # under torchrun only rank 0 writes
    snapshot_epochs = set(config.snapshot_epochs())
    augment = resolve_augment(config.augment, state.data.x_train.shape[-1])
    bar = tqdm(total=config.epochs + 1, initial=state.epoch, desc=writer.dir.name, unit="epoch",
               disable=not show_progress or not main)  # fmt: skip
    for epoch in range(state.epoch, config.epochs + 1):
        # 1. train (epoch 0 is the untrained model)
        writer.write_progress(epoch=epoch, epochs=config.epochs, phase="train")
        t0 = time.perf_counter()
        train_loss = train_phase(state, epoch, augment) if epoch > 0 else float("nan")
        t1 = time.perf_counter()
        # 2. evaluate
        writer.write_progress(epoch=epoch, epochs=config.epochs, phase="evaluate")
        scores = evaluate(state)
        t2 = time.perf_counter()
        # 3. snapshot and defense; drops are final
        snap = None
        if epoch in snapshot_epochs:
            writer.write_progress(epoch=epoch, epochs=config.epochs, phase="snapshot")
            snap = snapshot_phase(state, epoch)
            apply_snapshot(state, snap, epoch)
        # 4. record the epoch (one write path), then checkpoint: a resume redoes at most one epoch
        state.metrics.append({"epoch": epoch, "lr": lr_at(config, max(epoch, 1)), "train_loss": train_loss,
                              "epoch_seconds": t1 - t0, "eval_seconds": t2 - t1, **scores,
                              **(snap.metrics if snap else NO_SNAPSHOT), **drop_counts(state)})  # fmt: skip
        writer.record_epoch(metrics_frame(state.metrics),
                            targets=pd.DataFrame(state.targets) if snap and snap.target_row else None,
                            snapshot=(epoch, snap.columns) if snap else None)  # fmt: skip
        state.epoch = epoch + 1
        if main:
            save_checkpoint(writer.dir / CHECKPOINTS / LAST, checkpoint_state(state), root=writer.dir)
        bar.update(1)
        bar.set_postfix(acc=f"{scores['test_acc']:.3f}", dropped=int((state.dropped_epoch >= 0).sum()))
        if stop_at_epoch is not None and stop_at_epoch <= epoch < config.epochs:
            writer.write_progress(epoch=epoch, epochs=config.epochs, phase="stopped")
            return bar.close()
    bar.close()
    finish_run(state, writer)


def finish_run(state: TrainState, writer: RunWriter) -> None:
    """Write the final weights (rank 0) and mark the run finished.

    Parameters
    ----------
    state : TrainState
        The run after its last epoch.
    writer : RunWriter or NullWriter
        The run's writer.
    """
    if state.dist.is_main:
        save_checkpoint(writer.dir / CHECKPOINTS / FINAL, to_cpu(state.model.state_dict()),
                        root=writer.dir)  # fmt: skip
    writer.write_progress(epoch=state.config.epochs, epochs=state.config.epochs, phase="done")
    writer.set_status("finished")
