"""EPIC in your own training loop: :class:`EpicTracker` records snapshots in a run store.

::

    options = poisonlens.TrackerOptions(subset_size=0.1, drop_after=1, epochs=epochs)
    tracker = poisonlens.EpicTracker("runs/mine", y_train, options)
    for epoch in range(1, epochs + 1):
        for batch in my_batches(tracker.active_indices()):   # the examples still trained on
            ...                                              # the user's own training step
        logits, features = my_forward_over_the_training_set()   # numpy or torch, any device
        newly_dropped = tracker.snapshot(epoch, logits=logits, features=features)
    tracker.finish()

The run it writes is like a ``poisonlens train`` run (docs/run-format.md): run.json,
examples.parquet, images.npy when images are given, a snapshot table per snapshot epoch and a
metrics row per call of :meth:`EpicTracker.snapshot`; ``poisonlens runs``, ``export``,
``project`` and every dashboard page read it. The snapshot's columns and the drop rule are the
trainer's own (:func:`poisonlens.phases.snapshot_table`, ``drop_after <= epoch < min(stop_after,
epochs)``), and EPIC runs through :func:`poisonlens.shared_defense.run_defense`, so GreeDi takes
over above ``max_dense`` and, under ``torch.distributed``, every rank runs a share of it.

Under ``torch.distributed`` every rank makes the tracker and calls :meth:`snapshot` at the same
epochs; rank 0 passes the logits of the whole training set (the others may pass None), decides,
writes the run, and every rank receives the same drops. :class:`ActiveSampler` gives each rank
its shard of the active examples.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poisonlens.collectives import barrier, broadcast_mask
from poisonlens.device import this_process
from poisonlens.errors import InputError
from poisonlens.rank_writer import run_writer
from poisonlens.sharding import deal
from poisonlens.shared_defense import run_defense

# A run written by this module says so in run.json (config.tags.source): `poisonlens train
# --resume` refuses it, since the training loop that made it is the user's, not ours.
SOURCE = "EpicTracker"


def _to_numpy(value, name: str, *, dtype=None) -> np.ndarray:
    """``value`` (numpy, torch on any device, or a sequence) as a host numpy array."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, on any device
        value = value.detach()
        if str(getattr(value, "dtype", "")) in ("torch.bfloat16", "torch.float16"):
            value = value.float()
        value = value.cpu().numpy()
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise InputError(name, f"not an array ({str(err).splitlines()[0][:80]})") from None


def _images_nhwc(images, n: int) -> np.ndarray:
    """uint8 (n, height, width, channels) from uint8 or [0, 1] float images, channels first or last."""
    x = _to_numpy(images, "images")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or len(x) != n:
        raise InputError("images", f"expected shape ({n}, height, width, channels), got {x.shape}")
    if x.shape[-1] not in (1, 3) and x.shape[1] in (1, 3):
        x = x.transpose(0, 2, 3, 1)  # channels first (torch's layout)
    if x.shape[-1] not in (1, 3):
        raise InputError("images", f"expected 1 or 3 channels, got shape {x.shape}")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise InputError("images", f"expected uint8 or float in [0, 1], got {x.dtype}")
    return np.ascontiguousarray(np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8))


@dataclass(frozen=True)
class TrackerOptions:
    """EPIC's schedule and options for an :class:`EpicTracker`, and what its run.json records.

    Attributes
    ----------
    subset_size : float
        EPIC's subset size, the share of each class kept as medoids, in (0, 1] (default 0.1).
    drop_after : int
        First epoch whose snapshot may drop examples (default 1).
    stop_after : int or None
        Snapshots at this epoch or later drop nothing (None: never stop).
    snapshot_every : int
        Epochs between snapshots (EPIC's T, default 1); epoch 0 and ``epochs`` are snapshot
        epochs too.
    epochs : int or None
        The last epoch, when known: its snapshot drops nothing (no training is left for a drop
        to change), as in ``poisonlens train``; None records the last epoch seen.
    seed : int
        The run's seed (the stored projection of wide features, the sampler's shuffle); EPIC's
        own seed is its option ``random_state``, as in ``poisonlens train``.
    embedding_dims : int
        Penultimate features stored per snapshot (wider: a fixed random projection; default 64).
    class_names : sequence of str or None
        A name per class (default: '0', '1', ...).
    n_classes : int or None
        Number of classes (default: ``len(class_names)``, else ``max(labels) + 1``).
    name : str or None
        The run's name (default: the folder's name).
    config : mapping or None
        Further keys for run.json's ``config`` (e.g. your learning rate), JSON types only.
    epic : mapping
        EPIC's other options (:class:`poisonlens.defense.epic.EpicConfig`: ``cluster_thresh``,
        ``metric``, ``max_dense``, ``partition_size``, ``random_state``, ...).
    """

    subset_size: float = 0.1
    drop_after: int = 1
    stop_after: int | None = None
    snapshot_every: int = 1
    epochs: int | None = None
    seed: int = 0
    embedding_dims: int = 64
    class_names: Sequence[str] | None = None
    n_classes: int | None = None
    name: str | None = None
    config: Mapping | None = None
    epic: Mapping = field(default_factory=dict)

    @property
    def last_drop(self) -> int:
        """``stop_after``, with "never" as a large epoch."""
        return 1_000_000 if self.stop_after is None else self.stop_after

    def check(self) -> None:
        """Raise :class:`InputError` naming the option for a schedule value out of range."""
        schedule = {"drop_after": self.drop_after, "stop_after": self.last_drop, "seed": self.seed,
                    "snapshot_every": self.snapshot_every, "embedding_dims": self.embedding_dims}  # fmt: skip
        for key, value in schedule.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InputError(key, f"must be an integer >= 0, got {value!r}")
        if self.snapshot_every < 1 or self.embedding_dims < 1:
            raise InputError("snapshot_every" if self.snapshot_every < 1 else "embedding_dims", "must be at least 1")
        epochs = self.epochs
        if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1):
            raise InputError("epochs", f"must be an integer >= 1 or None, got {epochs!r}")
        if self.drop_after > self.last_drop:
            raise InputError("drop_after", f"must be at most stop_after ({self.last_drop}), got {self.drop_after}")

    def defense_params(self) -> dict:
        """EPIC's parameters as ``build_defense('epic', ...)`` and run.json take them."""
        return {"subset_size": self.subset_size, **dict(self.epic)}


def _class_labels(labels, options: TrackerOptions) -> tuple[np.ndarray, list[str]]:
    """The labels as int64 class indices, and a name per class; one-line errors naming ``labels``."""
    y = _to_numpy(labels, "labels")
    if y.ndim != 1 or len(y) == 0 or not (np.issubdtype(y.dtype, np.integer) or y.dtype == bool):
        raise InputError("labels", f"expected a 1-D array of class indices, got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise InputError("labels", f"class indices must be >= 0, found {int(y.min())}")
    names, n_classes = options.class_names, options.n_classes
    if n_classes is None:
        n_classes = len(names) if names is not None else int(y.max()) + 1
    names = [str(c) for c in range(n_classes)] if names is None else list(names)
    if len(names) != n_classes or int(y.max()) >= n_classes:
        raise InputError("labels", f"labels up to {int(y.max())} do not fit {n_classes} classes "
                         f"({len(names)} class names)")  # fmt: skip
    return y, names


def _epic(options: TrackerOptions):
    """EPIC built from the options, its refusals as one line naming the option."""
    from poisonlens.defense import build_defense

    try:
        return build_defense("epic", **options.defense_params())
    except TypeError as err:  # an option EPIC does not have
        raise InputError("epic", str(err)) from None
    except ValueError as err:  # EpicConfig's check: "<option> <problem>"
        option, _, problem = str(err).partition(" ")
        raise InputError(option, problem) from None


class EpicTracker:
    """EPIC's snapshots, schedule and run store for a training loop you write yourself.

    Parameters
    ----------
    run_dir : str or os.PathLike
        The run directory to create (must not hold a run yet).
    labels : int array of shape (n_samples,)
        The training labels in the order of your training set (numpy, a list or a torch tensor).
    options : TrackerOptions or None
        EPIC's schedule and options, the class names and what run.json records (None: the
        defaults).
    images : array of shape (n_samples, height, width, channels) or None
        The training images, for the dashboard's thumbnails: uint8 or float in [0, 1], channels
        last or first ((n_samples, channels, height, width)).
    is_poison : bool array of shape (n_samples,) or None
        Ground truth of a poisoning experiment (the dashboard then scores the drops against it).
    base_index : int array of shape (n_samples,) or None
        The clean example each row was made from (default: its own index).

    Raises
    ------
    InputError
        one line naming the argument, for a bad value or shape, or an existing run.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        labels,
        options: TrackerOptions | None = None,
        *,
        images=None,
        is_poison=None,
        base_index=None,
    ) -> None:
        from poisonlens.store import RUN_JSON

        self.run_dir = Path(run_dir)
        self.options = options = TrackerOptions() if options is None else options
        self.labels, class_names = _class_labels(labels, options)
        self.n_classes = len(class_names)
        options.check()
        self.drop_after, self.stop_after = options.drop_after, options.last_drop
        self.snapshot_every, self.epochs = options.snapshot_every, options.epochs
        self.seed, self.embedding_dims = options.seed, options.embedding_dims
        # EPIC's own random_state (default 0) is left as `poisonlens train` leaves it
        self.defense, self.defense_params = _epic(options), options.defense_params()
        n = len(self.labels)
        self.is_poison = np.zeros(n, bool) if is_poison is None else self._per_example(is_poison, "is_poison", bool)
        self.base_index = (np.arange(n, dtype=np.int64) if base_index is None
                           else self._per_example(base_index, "base_index", np.int64))  # fmt: skip
        images = None if images is None else _images_nhwc(images, n)
        self.active = np.ones(n, dtype=bool)
        self.dropped_epoch = np.full(n, -1, dtype=np.int64)
        self.metrics: list[dict] = []
        self.projection = None
        self._n_features: int | None = None
        self._finished = False
        self._last_call: float | None = None
        self.ctx = this_process()
        if (self.run_dir / RUN_JSON).exists():
            raise InputError(self.run_dir, "run already exists; choose another folder")
        self.config = {**self._train_config(), **dict(options.config or {})}
        try:
            json.dumps(self.config)
        except (TypeError, ValueError) as err:
            raise InputError("config", f"not JSON ({err})") from None
        self.writer = run_writer(self.run_dir, self.ctx)
        if self.ctx.is_main:
            self._create(options.name or self.run_dir.name, class_names, images)
        barrier()

    # --- setup -------------------------------------------------------------------------

    def _per_example(self, value, name: str, dtype) -> np.ndarray:
        arr = _to_numpy(value, name)
        if arr.shape != self.labels.shape:
            raise InputError(name, f"expected shape {self.labels.shape}, got {arr.shape}")
        return arr.astype(dtype)

    def _train_config(self) -> dict:
        """run.json's config: the TrainConfig keys a reader looks at, filled with this run's."""
        from poisonlens.config import TrainConfig

        base = TrainConfig(
            dataset="own-loop",
            epochs=self.epochs or 1,
            snapshot_every=self.snapshot_every,
            defense="epic",
            defense_params=self.defense_params,
            drop_after=self.drop_after,
            stop_after=self.stop_after,
            seed=self.seed,
            embedding_dims=self.embedding_dims,
            tags={"source": SOURCE},
        ).to_json()
        # what this loop does not tell us is not claimed: the model, optimiser and data are the user's
        for key in ("model", "width", "lr", "batch_size", "augment", "device", "amp", "scenario"):
            base[key] = None
        return base

    def _create(self, name: str, class_names: list[str], images: np.ndarray | None) -> None:
        import pandas as pd

        from poisonlens.run_setup import versions

        self.writer.create(name, self.config, versions(), class_names=list(class_names), target=None)
        n = len(self.labels)
        self.writer.write_examples(pd.DataFrame({
            "index": np.arange(n, dtype=np.int64), "label": self.labels,
            "is_poison": self.is_poison, "base_index": self.base_index,
        }))  # fmt: skip
        if images is not None:
            self.writer.write_images(images, None)

    # --- the schedule ------------------------------------------------------------------

    def wants_snapshot(self, epoch: int) -> bool:
        """Whether ``epoch`` is a snapshot epoch (0, every ``snapshot_every``, and ``epochs``):
        skip the forward pass over the training set at other epochs.

        Parameters
        ----------
        epoch : int
            The epoch just trained (0: before training).
        """
        return epoch == 0 or epoch % self.snapshot_every == 0 or epoch == self.epochs

    def may_drop(self, epoch: int) -> bool:
        """Whether the snapshot of ``epoch`` may drop examples (``poisonlens train``'s window).

        Parameters
        ----------
        epoch : int
            A snapshot epoch.
        """
        last = self.epochs if self.epochs is not None else math.inf
        return self.drop_after <= epoch < min(self.stop_after, last)

    def active_indices(self) -> np.ndarray:
        """int64 of shape (n_active,): the examples still trained on, in index order."""
        return np.flatnonzero(self.active).astype(np.int64)

    def sampler(self, *, shuffle: bool = True, seed: int | None = None) -> ActiveSampler:
        """A torch ``Sampler`` over the active examples (a rank's shard under torch.distributed);
        call its ``set_epoch(epoch)`` at the start of every epoch, as with ``DistributedSampler``.

        Parameters
        ----------
        shuffle : bool, default True
            Shuffle every epoch; False visits the active examples in index order.
        seed : int, optional
            Seeds the shuffle (with the epoch); default: the tracker options' ``seed``.
        """
        return ActiveSampler(self, shuffle=shuffle, seed=self.seed if seed is None else seed)

    # --- one epoch ---------------------------------------------------------------------

    def snapshot(
        self,
        epoch: int,
        *,
        logits=None,
        features=None,
        train_loss: float | None = None,
        test_acc: float | None = None,
        lr: float | None = None,
    ) -> np.ndarray:
        """Record ``epoch``: at a snapshot epoch, the snapshot and EPIC's decisions.

        Parameters
        ----------
        epoch : the epoch just trained (0: before training); larger than the last one recorded
        logits : float of shape (n_samples, n_classes) over the whole training set in index
            order, from the model in eval mode without augmentation (numpy or torch, any device);
            needed at snapshot epochs (:meth:`wants_snapshot`) on rank 0, ignored otherwise
        features : float of shape (n_samples, n_features), the penultimate-layer features of the
            same pass (the dashboard's embedding columns); None stores none
        train_loss, test_acc, lr : this epoch's numbers for metrics.parquet (NaN when not given)

        Returns
        -------
        int64 of shape (n_new,): the indices dropped at this epoch (empty when none); they are no
        longer in :meth:`active_indices`.
        """
        from poisonlens.phases import NO_SNAPSHOT, metrics_frame

        if self._finished:
            raise InputError("snapshot", "the tracker is finished")
        if isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0:
            raise InputError("epoch", f"must be an integer >= 0, got {epoch!r}")
        epoch = int(epoch)
        if self.metrics and epoch <= self.metrics[-1]["epoch"]:
            raise InputError("epoch", f"{epoch} is not after the last epoch recorded ({self.metrics[-1]['epoch']})")
        # the loop's own time: from the end of the last call to this one (the training pass and
        # whatever else the loop did); NaN for the first call
        started = time.perf_counter()
        loop_seconds = float("nan") if self._last_call is None else started - self._last_call
        new = np.zeros_like(self.active)
        phase, columns = dict(NO_SNAPSHOT), None
        if self.wants_snapshot(epoch):
            new, columns, phase = self._decide(epoch, logits, features)
            self.active &= ~new
            self.dropped_epoch[new] = epoch
        self.writer.write_progress(epoch=epoch, epochs=self.epochs or epoch, phase="train")
        self.metrics.append({
            "epoch": epoch, "lr": _num(lr), "train_loss": _num(train_loss),
            "epoch_seconds": loop_seconds, "test_acc": _num(test_acc), "target_pred": -1,
            "target_prob_adv": float("nan"), "attack_success": float("nan"), "eval_seconds": 0.0,
            **phase, "n_active": int(self.active.sum()), "n_dropped": int((~self.active).sum()),
            "n_poison_dropped": int((~self.active & self.is_poison).sum()),
        })  # fmt: skip
        self.writer.record_epoch(metrics_frame(self.metrics),
                                 snapshot=(epoch, columns) if columns is not None else None)  # fmt: skip
        self._last_call = time.perf_counter()
        return np.flatnonzero(new).astype(np.int64)

    def _decide(self, epoch: int, logits, features) -> tuple[np.ndarray, dict | None, dict]:
        from poisonlens.defense.base import Snapshot
        from poisonlens.phases import snapshot_table
        from poisonlens.snapshot import last_layer_stats, storage_projection
        from poisonlens.store import json_default

        n = len(self.labels)
        snap = None
        t0 = time.perf_counter()
        if self.ctx.is_main:
            if logits is None:
                raise InputError("logits", f"needed at epoch {epoch}, a snapshot epoch")
            z = _to_numpy(logits, "logits", dtype=np.float32)
            if z.shape != (n, self.n_classes):
                raise InputError("logits", f"expected shape ({n}, {self.n_classes}), got {z.shape}")
            if not np.isfinite(z).all():
                raise InputError("logits", f"not finite at {int((~np.isfinite(z)).any(1).sum())} examples")
            feats = np.zeros((n, 0), np.float32)
            if features is not None:
                feats = _to_numpy(features, "features", dtype=np.float32)
                if feats.ndim < 2 or len(feats) != n:
                    raise InputError("features", f"expected shape ({n}, n_features), got {feats.shape}")
                feats = feats.reshape(n, -1)  # e.g. (n, C, 1, 1) from a pooling layer
            if self._n_features is None:
                self._n_features = feats.shape[1]
                self.projection = storage_projection(feats.shape[1], self.embedding_dims, random_state=self.seed)
            elif feats.shape[1] != self._n_features:
                raise InputError("features", f"expected {self._n_features} features, got {feats.shape[1]}")
            stats = last_layer_stats(z, self.labels)  # softmax - onehot, loss, confidence, prediction
            snap = Snapshot(epoch=epoch, labels=self.labels, embeddings=feats, **stats)
        t1 = time.perf_counter()
        result = run_defense(self.ctx, self.defense, snap, self.labels, self.active.copy(),
                                  n_classes=self.n_classes)  # fmt: skip
        t2 = time.perf_counter()
        new = np.zeros_like(self.active)
        if snap is not None and self.may_drop(epoch):
            new = result.suspect & self.active
        new = broadcast_mask(new)  # every rank drops the same examples (alone: a copy)
        if snap is None:
            return new, None, {"snapshot_seconds": 0.0, "defense_seconds": 0.0, "n_new_drops": int(new.sum()),
                               "defense_info": ""}  # fmt: skip
        table = snapshot_table(snap, result, self.active, self.dropped_epoch, new, self.projection)
        phase = {"snapshot_seconds": t1 - t0, "defense_seconds": t2 - t1, "n_new_drops": int(new.sum()),
                 "defense_info": json.dumps(result.info, default=json_default)}  # fmt: skip
        return new, table, phase

    # --- the end -----------------------------------------------------------------------

    def finish(self, status: str = "finished", error: str | None = None) -> None:
        """Mark the run finished (or ``failed`` with ``error``); nothing is recorded after this.

        Parameters
        ----------
        status : {'finished', 'failed'}
            What run.json records.
        error : str or None
            One line saying why a failed run failed.
        """
        if self._finished:
            return
        self._finished = True
        last = self.metrics[-1]["epoch"] if self.metrics else 0
        if self.epochs is None and self.ctx.is_main:  # the schedule's end is now known
            self.writer.update_config({**self.config, "epochs": max(last, 1)})
        if status == "finished":
            self.writer.write_progress(epoch=last, epochs=self.epochs or last, phase="done")
        self.writer.set_status(status, error)

    def __enter__(self) -> EpicTracker:
        return self

    def __exit__(self, kind, err, tb) -> None:
        if kind is None:
            self.finish()
        elif issubclass(kind, KeyboardInterrupt):
            self.finish("failed", "interrupted")
        else:
            from poisonlens.errors import one_line

            self.finish("failed", one_line(f"{kind.__name__}: {err}", 200))


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def _sampler_base():
    from torch.utils.data import Sampler

    return Sampler


class ActiveSampler(_sampler_base()):
    """A torch ``Sampler`` over a tracker's active examples, correct under torch.distributed.

    Alone, an epoch is a permutation of the active examples drawn from
    ``seeded_generator(seed, epoch)``: the order ``poisonlens train`` visits them in. Under
    torch.distributed, each rank gets its shard as :func:`poisonlens.sharding.deal`
    deals them (shuffled from ``(seed, epoch)``, padded to a multiple of the world size, dealt
    round-robin), so every rank takes the same number of steps and together they cover every
    active example. Drops take effect at the next ``set_epoch``'s iteration.

    Parameters
    ----------
    tracker : the EpicTracker whose active examples are sampled
    shuffle : False visits them in index order (padded and dealt the same way)
    seed : the shuffle's seed
    """

    def __init__(self, tracker: EpicTracker, *, shuffle: bool = True, seed: int = 0) -> None:
        self.tracker, self.shuffle, self.seed, self.epoch = tracker, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s shuffle (call it before each epoch's iteration).

        Parameters
        ----------
        epoch : int
            The epoch about to be trained (1-based); it fixes the shuffle.
        """
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """int64: this rank's examples of the epoch, in visiting order."""
        ctx = self.tracker.ctx
        return deal(self.tracker.active_indices(), seed=self.seed, epoch=self.epoch,
                    world_size=ctx.world_size, rank=ctx.rank, shuffle=self.shuffle)  # fmt: skip

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return -(-int(self.tracker.active.sum()) // self.tracker.ctx.world_size)
