"""Training with gradient snapshots and a defense hook, written to a run store.

The state of a run is one :class:`TrainState` (made by :func:`start_run` or :func:`resume_run`).
:func:`train` runs the loop, which reads in order, once per epoch: set lr -> train on the
active examples -> evaluate (test accuracy, the target) -> snapshot + defense (every
``snapshot_every`` epochs and at the last) -> record the epoch -> checkpoint. Epoch 0 is a
snapshot before training. The phases are helpers that return values; only
``writer.record_epoch`` and the checkpoint write files.

The training images stay uint8 of shape (n_samples, height, width, channels) and are cropped,
flipped and converted to float one batch at a time, on the run's device.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import poisonlens
from poisonlens import runfs
from poisonlens.augment import augment_batch, resolve_augment  # noqa: F401  (re-exported for attacks)
from poisonlens.checkpoint import (
    FINAL,
    LAST,
    RunLock,
    load_checkpoint,
    load_weights,
    read_table,
    save_checkpoint,
)
from poisonlens.collectives import broadcast_mask, check_same_mask
from poisonlens.config import AUGMENTS, SCENARIOS, TrainConfig  # noqa: F401  (re-exported)
from poisonlens.data import PoisonedDataset, apply_poisons, load_dataset, load_poisons
from poisonlens.defense import build_defense
from poisonlens.defense.base import Defense, DefenseResult, Snapshot
from poisonlens.device import (
    ALONE,
    DistContext,
    device_spec,
    fits_on_device,
    process_device,
    seeded_generator,
    this_process,
)
from poisonlens.errors import InputError
from poisonlens.model_spec import check_trusted
from poisonlens.models import Classifier, build_model
from poisonlens.process_group import init_distributed, sync_buffers, wrap_model
from poisonlens.rank_signals import failure_reason, stop_on_sigterm
from poisonlens.rank_writer import lock_run, record_world, run_writer
from poisonlens.sharded_snapshot import take_snapshot_sharded
from poisonlens.sharding import rank_batches, rank_seed
from poisonlens.shared_defense import run_defense
from poisonlens.snapshot import forward_batched, model_device, storage_projection
from poisonlens.store import (
    CHECKPOINTS,
    METRICS,
    RUN_JSON,
    TARGETS,
    RunWriter,
    json_default,
    open_run,
)

# The columns of metrics.parquet, a row per epoch (docs/run-format.md), in this order:
METRICS_COLUMNS: tuple[str, ...] = (
    "epoch",  # 0 = the model before training
    "lr",  # learning rate used in this epoch
    "train_loss",  # mean cross-entropy over the active examples (NaN at epoch 0)
    "epoch_seconds",  # wall time of the training pass
    "test_acc",  # clean test accuracy
    "target_pred",  # the target's predicted class (-1 without a poison set)
    "target_prob_adv",  # the target's probability of adv_label (NaN without a poison set)
    "attack_success",  # 1.0 when the target is predicted as adv_label (NaN without one)
    "eval_seconds",  # wall time of the evaluation
    "snapshot_seconds",  # wall time of the snapshot pass (0 when none was taken)
    "defense_seconds",  # wall time of the defense (0 when none ran)
    "n_new_drops",  # examples dropped at this epoch's snapshot
    "defense_info",  # the defense's JSON report ('' without a snapshot)
    "n_active",  # examples still trained on, after this epoch's decisions
    "n_dropped",  # examples dropped so far
    "n_poison_dropped",  # poisons among them
)


def versions() -> dict:
    """Versions of poisonlens and the libraries that decide a run's numbers (for run.json)."""
    import sklearn

    return {
        "poisonlens": poisonlens.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


# --- the state of a run ----------------------------------------------------------------------


@dataclass
class TrainState:
    """Everything the loop carries from one epoch to the next (one object, as in nanoGPT).

    Attributes
    ----------
    config : the run's options
    data : the training set as the victim sees it, with ground truth
    device : where training, evaluation and snapshots run
    model, optimizer, defense : the network, its SGD optimiser, the defense hook
    images : uint8 tensor of shape (n_samples, height, width, channels): on ``device`` when it
        fits there, else in (pinned, for CUDA) host memory
    labels : int64 tensor of shape (n_samples,), on ``device``
    active : bool of shape (n_samples,), the examples still trained on
    dropped_epoch : int64 of shape (n_samples,), the epoch each example was dropped at, -1 if not
    epoch : the next epoch to run (0 = the snapshot before training)
    metrics : one dict per finished epoch, keyed by :data:`METRICS_COLUMNS`
    targets : one dict per snapshot of a poisoned run (targets.parquet rows)
    projection : fixed (n_features, embedding_dims) projection for stored embeddings, or None
    amp_dtype : autocast dtype for training (None: float32)
    scaler : fp16 gradient scaler, or None
    dist : this process's place (:data:`poisonlens.device.ALONE` for a single process;
        docs/distributed.md)
    ddp : the DistributedDataParallel wrapper the training steps go through, or None
    """

    config: TrainConfig
    data: PoisonedDataset
    device: torch.device
    model: Classifier
    optimizer: torch.optim.Optimizer
    defense: Defense
    images: torch.Tensor
    labels: torch.Tensor
    active: np.ndarray
    dropped_epoch: np.ndarray
    epoch: int = 0
    metrics: list[dict] = field(default_factory=list)
    targets: list[dict] = field(default_factory=list)
    projection: np.ndarray | None = None
    amp_dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None
    dist: DistContext = ALONE
    ddp: torch.nn.Module | None = None


def check_config(config: TrainConfig) -> torch.device:
    """Validate ``config`` and resolve its device; every problem is an :class:`InputError`.

    A run calls this once: :func:`train` before anything is made, or :func:`start_run` /
    :func:`resume_run` when called on their own.

    Parameters
    ----------
    config : TrainConfig
        The run's options.

    Returns
    -------
    torch.device the run trains on
    """
    config.validate()
    return run_device(config)


def run_device(config: TrainConfig) -> torch.device:
    """The device a validated ``config`` trains on in this process (``cuda:<local rank>`` under
    torchrun), after the checks that need this machine: the model's source and ``--amp``.

    Parameters
    ----------
    config : TrainConfig
        The run's options, already validated.

    Returns
    -------
    torch.device
    """
    check_trusted(config.model)  # a module:factory model read from a file needs --model again
    device = process_device(config.device)
    if config.amp != "off" and device.type != "cuda":
        raise InputError("--amp", f"{config.amp} needs a CUDA device (this run is on {device})")
    return device


def load_training_data(config: TrainConfig) -> PoisonedDataset:
    """The training set as the victim sees it; for the clean control, the poison rows are
    restored to their base images and only the target is kept.

    Parameters
    ----------
    config : TrainConfig
        The run's options (``dataset``, ``poisons``, ``clean_control``).
    """
    dataset = load_dataset(config.dataset)
    poisons = load_poisons(config.poisons) if config.poisons else None
    if poisons is None or config.clean_control:
        # Nothing to replace: train on the loaded array itself (a copy is 3 GB at 1M images).
        n = len(dataset.y_train)
        return PoisonedDataset(dataset, dataset.x_train, dataset.y_train, np.zeros(n, dtype=bool),
                               np.arange(n, dtype=np.int64), poisons)  # fmt: skip
    data = apply_poisons(dataset, poisons, source=config.poisons)
    # The clean training images are not used again: keep one copy of the set, not two.
    return replace(data, dataset=replace(dataset, x_train=data.x_train))


def make_model(config: TrainConfig, data: PoisonedDataset) -> Classifier:
    """A seeded model for ``data`` on the CPU, with ``config.pretrained`` loaded for
    transfer / finetune (transfer also freezes the body).

    Parameters
    ----------
    config : TrainConfig
        The run's options (``model``, ``width``, ``seed``, ``scenario``, ``pretrained``).
    data : PoisonedDataset
        The training set (its classes and channels size the model).
    """
    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        n_classes=data.dataset.n_classes,
        in_channels=data.x_train.shape[-1],
        width=config.width,
    )
    if config.scenario == "scratch":
        return model
    state = load_weights(config.pretrained)
    head_shape = (model.head.out_features, model.head.in_features)
    if (
        config.scenario == "transfer"
        or tuple(state.get("head.weight", torch.empty(0)).shape) != head_shape
    ):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # same names, other shapes
        raise InputError(
            config.pretrained, f"checkpoint does not fit model {config.model!r} (shapes differ)"
        ) from err
    body_missing = [k for k in missing if not k.startswith("head.")]
    if body_missing or unexpected:
        raise InputError(
            config.pretrained,
            f"checkpoint does not fit model {config.model!r} "
            f"(missing {body_missing[:3]}, unexpected {list(unexpected)[:3]})",
        )
    if config.scenario == "transfer":
        for p in model.body.parameters():
            p.requires_grad_(False)
    return model


def make_optimizer(config: TrainConfig, model: Classifier) -> torch.optim.Optimizer:
    """SGD over the trainable parameters, with the config's momentum and weight decay.

    Parameters
    ----------
    config : TrainConfig
        The run's options (learning rate, momentum, Nesterov, weight decay).
    model : Classifier
        The model; frozen parameters (transfer) are left out.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params,
        lr=config.resolved_lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


def place_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """The uint8 training images where batches are cut from: the CPU's own array (no copy),
    the GPU's memory when they fit in half of what is free, else pinned host memory.

    Parameters
    ----------
    images : uint8 array of shape (n_samples, height, width, channels)
        The training images.
    device : torch.device
        Where the run trains.
    """
    host = torch.from_numpy(np.ascontiguousarray(images))
    if device.type == "cpu":
        return host
    if device.type != "cuda" or fits_on_device(host.nbytes, device):
        return host.to(device)
    return host.pin_memory()


def _setup(config: TrainConfig, device: torch.device) -> TrainState:
    data = load_training_data(config)
    model = make_model(config, data).to(device, memory_format=torch.channels_last)
    n = data.n_samples
    amp_dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[config.amp]
    return TrainState(
        config=config,
        data=data,
        device=device,
        model=model,
        optimizer=make_optimizer(config, model),
        defense=build_defense(config.defense, **config.defense_params),
        images=place_images(data.x_train, device),
        labels=torch.as_tensor(np.asarray(data.y_train, np.int64)).to(device),
        active=np.ones(n, dtype=bool),
        dropped_epoch=np.full(n, -1, dtype=np.int64),
        projection=storage_projection(
            model.n_features, config.embedding_dims, random_state=config.seed
        ),
        amp_dtype=amp_dtype,
        scaler=torch.amp.GradScaler("cuda") if config.amp == "fp16" else None,
    )


def start_run(config: TrainConfig, run_dir: str | Path, *, device: torch.device | None = None) -> TrainState:
    """Set up a new run and write its fixed files (run.json, examples, images).

    Parameters
    ----------
    config : TrainConfig
        The run's options.
    run_dir : str or Path
        The run directory; files already in it are replaced.
    device : torch.device or None
        Where to train, from :func:`check_config` when the caller has already checked
        ``config``; None checks it here.

    Returns
    -------
    TrainState at epoch 0
    """
    state = _setup(config, check_config(config) if device is None else device)
    excluded, record = excluded_examples(config, state.data.n_samples)
    if record:
        record["n_poisons"] = int(state.data.is_poison[excluded].sum())
    state.active[excluded] = False  # never trained on, never seen by the defense as active
    if not this_process().is_main:
        return state  # under torchrun only rank 0 writes the run
    data, poisons = state.data, state.data.poisons
    writer = RunWriter(Path(run_dir))
    target = None
    if poisons is not None:
        target = {
            "target_label": poisons.target_label,
            "adv_label": poisons.adv_label,
            "target_index": poisons.target_index,
            "attack": poisons.attack,
            "eps": poisons.eps,
            "n_poisons": int(data.is_poison.sum()),
            "clean_control": config.clean_control,
        }
    writer.create(
        Path(run_dir).name,
        config.to_json(),
        versions(),
        class_names=list(data.dataset.class_names),
        target=target,
        extra={"exclude": record} if record else None,
    )
    n = data.n_samples
    examples = {"index": np.arange(n, dtype=np.int64), "label": data.y_train}
    examples.update(is_poison=data.is_poison, base_index=data.base_index)
    if record:
        examples["excluded"] = ~state.active
    writer.write_examples(pd.DataFrame(examples))
    writer.write_images(data.x_train, poisons.target_x if poisons else None)
    return state


def excluded_examples(config: TrainConfig, n_samples: int) -> tuple[np.ndarray, dict | None]:
    """The examples ``config.exclude`` lists, and what run.json records of them.

    Parameters
    ----------
    config : the run's options; ``exclude`` is a CSV path or None
    n_samples : training examples of the data set

    Returns
    -------
    indices : sorted int64 array (empty without ``exclude``)
    record : {'file', 'sha256', 'count'} for run.json's ``exclude``, or None without ``exclude``

    Raises
    ------
    InputError
        ``--exclude``: the file is unreadable, malformed, or lists an index outside the data set.
    """
    if not config.exclude:
        return np.zeros(0, dtype=np.int64), None
    from poisonlens.review import read_index_csv

    indices, digest = read_index_csv(config.exclude)
    if len(indices) and indices[-1] >= n_samples:
        raise InputError(
            f"--exclude {config.exclude}",
            f"index {int(indices[-1])} is not an example of this data set (0 to {n_samples - 1})",
        )
    return indices, {"file": str(config.exclude), "sha256": digest, "count": int(len(indices))}


def resume_run(run_dir: str | Path, *, device: str | None = None) -> TrainState:
    """The state of a run to continue from its last checkpoint.

    A run killed before its first checkpoint starts again from the beginning.

    Parameters
    ----------
    run_dir : an existing run directory
    device : {'auto', 'cpu', 'cuda', 'cuda:N', 'mps'} to resume on, or None for the device in
        run.json; tensors are loaded with ``map_location``, so any device can continue any run

    Returns
    -------
    TrainState at the epoch after the checkpoint's

    Raises
    ------
    InputError
        naming run.json, last.pt, metrics.parquet or targets.parquet when one is unusable.
    """
    run_dir = Path(run_dir)
    run = open_run(run_dir)
    if (run.config.get("tags") or {}).get("source") == "EpicTracker":
        raise InputError(run_dir, "written by EpicTracker in your own training loop; continue it there")
    try:
        config = TrainConfig.from_json(run.config)
        config.validate()
        config.check_defense()  # an unknown defense in a copied run.json is its fault, not ours
    except InputError as err:
        raise InputError(run_dir / RUN_JSON, f"config: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise InputError(run_dir / RUN_JSON, f"config: unusable ({err})") from None
    if device is not None:
        config = replace(config, device=device)
    dev = run_device(config)  # a missing device names --device: pass another to move the run
    last = run_dir / CHECKPOINTS / LAST
    if not runfs.exists(run_dir, CHECKPOINTS, LAST):  # a linked checkpoints/ raises
        return start_run(config, run_dir, device=dev)  # killed before its first checkpoint: start over
    state = _setup(config, dev)
    ckpt = load_checkpoint(last, n_samples=state.data.n_samples, map_location=dev, root=run_dir)
    try:
        state.model.load_state_dict(ckpt["model"])
        state.optimizer.load_state_dict(ckpt["optimizer"])
        if state.scaler is not None and "scaler" in ckpt:
            state.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as err:
        raise InputError(last, f"does not fit this run's model ({str(err).splitlines()[0][:100]})") from None
    state.active = ckpt["active"].cpu().numpy().astype(bool)
    state.dropped_epoch = ckpt["dropped_epoch"].cpu().numpy().astype(np.int64)
    state.epoch = int(ckpt["epoch"]) + 1
    state.metrics = _rows_before(run_dir, METRICS, state.epoch, range(state.epoch))
    if state.data.poisons is not None:
        snaps = [e for e in config.snapshot_epochs() if e < state.epoch]
        state.targets = _rows_before(run_dir, TARGETS, state.epoch, snaps)
    if this_process().is_main:
        RunWriter(run_dir).set_status("running")
    return state


def _rows_before(run_dir: Path, name: str, epoch: int, expected: Iterable[int]) -> list[dict]:
    # The rows a resumed run keeps; they must cover every epoch the checkpoint has seen.
    expected = list(expected)
    path = run_dir / name
    present = expected or runfs.exists(run_dir, name)
    table = read_table(path, root=run_dir) if present else pd.DataFrame({"epoch": []})
    if "epoch" not in table:
        raise InputError(path, "has no epoch column")
    epochs = pd.to_numeric(table["epoch"], errors="coerce").to_numpy(np.float64)
    if not np.isfinite(epochs).all() or (np.abs(epochs) > 1e9).any():
        raise InputError(path, "epoch column holds values that are not epochs")
    rows = [r for r in table.to_dict("records") if r["epoch"] < epoch]
    if sorted(int(r["epoch"]) for r in rows) != expected:
        raise InputError(path, f"does not hold every epoch before {epoch}; the run cannot continue")
    return rows


# --- the phases: pure helpers that return values -----------------------------------------------


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate during ``epoch`` (1-based): multi-step decay at fractions of the run.

    Parameters
    ----------
    config : TrainConfig
        The run's options (``lr``, ``lr_milestones`` as fractions of ``epochs``, ``lr_gamma``).
    epoch : int
        The epoch, >= 1.
    """
    passed = sum(epoch > round(m * config.epochs) for m in config.lr_milestones)
    return config.resolved_lr * config.lr_gamma**passed


def epoch_generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator for one epoch's shuffling and augmentation (``seeded_generator(seed, epoch)``);
    a resumed run re-makes it exactly.

    Parameters
    ----------
    seed : int
        The run's (or this rank's) seed.
    epoch : int
        The epoch, its stream.
    device : torch.device or str
        Where the generator draws.
    """
    return seeded_generator(seed, epoch, device)


def batches(indices: np.ndarray, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """Shuffle ``indices`` and cut them into batches; a last batch of one joins the previous one
    (batch norm cannot train on a single example).

    Parameters
    ----------
    indices : int of shape (n,), the examples to visit
    batch_size : examples per batch
    gen : a CPU generator (draws one permutation)

    Returns
    -------
    list of int arrays, together a permutation of ``indices``
    """
    perm = indices[torch.randperm(len(indices), generator=gen).numpy()]
    out = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


def iter_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    indices: np.ndarray,
    *,
    batch_size: int,
    augment: str,
    gen: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of training batches over ``indices``, shuffled and cut by :func:`batches`,
    then fed by :func:`feed_batches`.

    Parameters
    ----------
    images : uint8 tensor of shape (n_samples, height, width, channels)
        The training images, on any device.
    labels : int64 tensor of shape (n_samples,)
        On the device to train on.
    indices : int array of shape (n,)
        The examples to visit (the active ones).
    batch_size : int
        Examples per batch.
    augment : {'none', 'crop', 'crop-flip'}
        The augmentation.
    gen : torch.Generator
        CPU generator: it draws the shuffle, then (on a CPU run) the augmentation.

    Returns
    -------
    iterator of (x, y), as :func:`feed_batches` yields them
    """
    return feed_batches(images, labels, batches(indices, batch_size, gen), augment=augment, gen=gen)


def feed_batches(
    images: torch.Tensor,
    labels: torch.Tensor,
    order: list[np.ndarray],
    *,
    augment: str,
    gen: torch.Generator,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches already cut (by :func:`batches`, or a rank's shard under torchrun), taken from
    uint8 images, augmented and converted one batch at a time.

    Parameters
    ----------
    images : uint8 tensor of shape (n_samples, height, width, channels)
        The training images, on any device.
    labels : int64 tensor of shape (n_samples,)
        On the device to train on.
    order : list of int arrays
        The batches, in training order.
    augment : {'none', 'crop', 'crop-flip'}
        The augmentation.
    gen : torch.Generator
        CPU generator; on a CPU run it draws the augmentation (so CPU runs repeat exactly),
        elsewhere a generator on the device with the same seed does.

    Yields
    ------
    (x, y) : float32 pixels of shape (batch, channels, height, width) in [0, 1], channels-last,
        and int64 labels of shape (batch,), both on ``labels.device``
    """
    device = labels.device
    aug_gen = gen
    if device.type != "cpu":
        aug_gen = torch.Generator(device=device).manual_seed(gen.initial_seed())
    for batch in order:
        idx = torch.from_numpy(batch)
        x = images[idx.to(images.device)].to(device, non_blocking=True)
        # Crop and flip while still uint8 (a quarter of the bytes), then convert.
        x = augment_batch(x.permute(0, 3, 1, 2), augment, aug_gen)
        x = x.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        yield x, labels[idx.to(device)]


def train_one_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    scaler: torch.amp.GradScaler | None = None,
    freeze_body: bool = False,
) -> float:
    """One pass of SGD over ``batches``; returns the mean training loss.

    Parameters
    ----------
    model, optimizer : trained in place
    batches : (x, y) pairs on the model's device, e.g. from :func:`iter_batches`
    amp_dtype : autocast dtype (bfloat16 or float16, CUDA only), or None for float32
    scaler : a GradScaler for float16, else None
    freeze_body : keep the feature extractor in eval mode (transfer: frozen batch-norm statistics)

    Returns
    -------
    float, the loss averaged over examples. The loss is summed on the device and read once,
    so the GPU never waits for the host inside the epoch.
    """
    model.train()
    if freeze_body:
        getattr(model, "module", model).body.eval()  # through a DDP wrapper to the model
    device = model_device(model)
    # float64 keeps CPU runs equal to a per-step float sum; MPS has no float64.
    total = torch.zeros((), dtype=torch.float32 if device.type == "mps" else torch.float64,
                        device=device)  # fmt: skip
    count = 0
    for x, y in batches:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        total += loss.detach().to(total.dtype) * len(y)
        count += len(y)
    return float(total) / max(count, 1)


@torch.inference_mode()
def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """Accuracy of ``model`` on uint8 ``images`` of shape (n, height, width, channels).

    Parameters
    ----------
    model : Classifier
        The classifier (evaluated in eval mode, batch-norm folded).
    images : uint8 array of shape (n, height, width, channels)
        The images.
    labels : int array of shape (n,)
        Their labels.
    batch_size : int
        Examples per forward pass.
    """
    logits, _ = forward_batched(model, images, batch_size=batch_size)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


def target_metrics(model: Classifier, poisons) -> dict:
    """The target's predicted class, its probability of ``adv_label`` and attack success.

    Parameters
    ----------
    model : Classifier
        The classifier.
    poisons : PoisonSet or None
        The run's poison set (its ``target_x`` and ``adv_label``); None for a clean run.
    """
    if poisons is None:
        return {"target_pred": -1, "target_prob_adv": float("nan"), "attack_success": float("nan")}
    logits, _ = forward_batched(model, poisons.target_x[None])
    p = torch.softmax(torch.from_numpy(logits), 1)[0]
    pred = int(p.argmax())
    return {
        "target_pred": pred,
        "target_prob_adv": float(p[poisons.adv_label]),
        "attack_success": float(pred == poisons.adv_label),
    }


def evaluate(state: TrainState) -> dict:
    """Test accuracy and the target's metrics (``test_acc``, ``target_*``, ``attack_success``).

    Parameters
    ----------
    state : TrainState
        The run's state (its model and data).
    """
    test = state.data.dataset
    acc = accuracy(state.model, test.x_test, test.y_test, state.config.snapshot_batch_size)
    return {"test_acc": acc, **target_metrics(state.model, state.data.poisons)}


@dataclass(frozen=True)
class SnapshotPhase:
    """What one snapshot epoch decided and what it writes.

    Attributes
    ----------
    columns : the snapshot table, column name -> array of shape (n_samples,)
    new_drops : bool of shape (n_samples,), dropped at this snapshot
    target_row : the targets.parquet row, or None for a clean run
    metrics : ``snapshot_seconds``, ``defense_seconds``, ``n_new_drops``, ``defense_info``
    """

    columns: dict[str, np.ndarray]
    new_drops: np.ndarray
    target_row: dict | None
    metrics: dict


NO_SNAPSHOT = {"snapshot_seconds": 0.0, "defense_seconds": 0.0, "n_new_drops": 0, "defense_info": ""}


def snapshot_phase(state: TrainState, epoch: int) -> SnapshotPhase:
    """Take the snapshot, run the defense and build the table; changes nothing in ``state``.

    Parameters
    ----------
    state : TrainState
        The run's state, read only.
    epoch : int
        The snapshot's epoch.

    Returns
    -------
    SnapshotPhase
    """
    config, poisons = state.config, state.data.poisons
    t0 = time.perf_counter()
    snap, target = take_snapshot_sharded(
        state.dist,
        state.model,
        state.images,
        state.data.y_train,
        epoch=epoch,
        target=(poisons.target_x, poisons.adv_label) if poisons else None,
        batch_size=config.snapshot_batch_size,
    )
    t1 = time.perf_counter()
    # rank 0 decides; under torchrun every rank may run a share of the work (EPIC's GreeDi)
    n_classes = state.data.dataset.n_classes
    result = run_defense(state.dist, state.defense, snap, state.data.y_train,
                                     state.active.copy(), n_classes=n_classes)  # fmt: skip
    t2 = time.perf_counter()
    if snap is None:  # a rank other than 0: the drops come by broadcast
        new = broadcast_mask(np.zeros_like(state.active))
        return SnapshotPhase({}, new, None, NO_SNAPSHOT)
    # The last snapshot drops nothing: no training is left for a drop to change.
    in_window = config.drop_after <= epoch < min(config.stop_after, config.epochs)
    new = result.suspect & state.active if in_window else np.zeros_like(state.active)
    new = broadcast_mask(new)  # every rank drops the same examples (alone: a copy)
    table = snapshot_table(snap, result, state.active, state.dropped_epoch, new, state.projection)
    metrics = {
        "snapshot_seconds": t1 - t0,
        "defense_seconds": t2 - t1,
        "n_new_drops": int(new.sum()),
        "defense_info": json.dumps(result.info, default=json_default),
    }
    return SnapshotPhase(table, new, target_row(epoch, target, state.projection), metrics)


def snapshot_table(
    snap: Snapshot,
    result: DefenseResult,
    active: np.ndarray,
    dropped_epoch: np.ndarray,
    new_drops: np.ndarray,
    projection: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """The snapshot file's columns (docs/run-format.md), each of shape (n_samples,).

    ``active`` and ``dropped_epoch`` are the masks before this snapshot's decisions;
    ``new_drops`` are those decisions. Embeddings wider than the projection's input are
    stored projected. The arrays are views or fresh arrays, never Python lists.

    Parameters
    ----------
    snap : Snapshot
        The snapshot (on rank 0).
    result : DefenseResult
        The defense's scores, suspects and columns.
    active : bool array of shape (n_samples,)
        The examples trained on before this snapshot.
    dropped_epoch : int64 array of shape (n_samples,)
        The epoch each example was dropped at, -1 if not, before this snapshot.
    new_drops : bool array of shape (n_samples,)
        This snapshot's decisions.
    projection : float32 array of shape (n_features, n_stored) or None
        The fixed projection of wide embeddings.
    """
    emb = snap.embeddings if projection is None else snap.embeddings @ projection
    cols = {"index": np.arange(snap.n_samples, dtype=np.int64), "label": snap.labels}
    cols.update({f"g_{c}": snap.grads[:, c] for c in range(snap.n_classes)})
    cols.update({f"emb_{j}": emb[:, j] for j in range(emb.shape[1])})
    cols.update(
        loss=snap.loss,
        confidence=snap.confidence,
        prediction=snap.prediction,
        active=active.copy(),
        score=np.asarray(result.score, dtype=np.float64),
        suspect=np.asarray(result.suspect, dtype=bool),
        drop=new_drops,
        dropped_epoch=np.where(new_drops, snap.epoch, dropped_epoch),
    )
    cols.update({k: np.asarray(v) for k, v in result.columns.items()})
    return cols


def target_row(epoch: int, target: dict | None, projection: np.ndarray | None) -> dict | None:
    """The targets.parquet row of a snapshot: epoch, prediction, prob_adv, g_*, emb_*.

    Parameters
    ----------
    epoch : int
        The snapshot's epoch.
    target : dict or None
        The target's quantities from ``take_snapshot``; None for a clean run.
    projection : float32 array of shape (n_features, n_stored) or None
        The fixed projection of wide embeddings.
    """
    if target is None:
        return None
    emb = target["embedding"] if projection is None else target["embedding"] @ projection
    return {
        "epoch": epoch,
        "prediction": target["prediction"],
        "prob_adv": target["prob_adv"],
        **{f"g_{c}": float(v) for c, v in enumerate(target["grads"])},
        **{f"emb_{j}": float(v) for j, v in enumerate(emb)},
    }


def drop_counts(state: TrainState) -> dict:
    """``n_active``, ``n_dropped`` and ``n_poison_dropped`` of the current masks (an example
    left out by ``--exclude`` is inactive but was never dropped).

    Parameters
    ----------
    state : TrainState
        The run's state after this epoch's decisions.
    """
    dropped = state.dropped_epoch >= 0
    return {
        "n_active": int(state.active.sum()),
        "n_dropped": int(dropped.sum()),
        "n_poison_dropped": int((dropped & state.data.is_poison).sum()),
    }


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    """metrics.parquet from one dict per epoch; every row must have exactly :data:`METRICS_COLUMNS`.

    Parameters
    ----------
    rows : list of dict
        One row per finished epoch.
    """
    for row in rows:
        if set(row) != set(METRICS_COLUMNS):
            raise ValueError(f"metrics row keys {sorted(set(row) ^ set(METRICS_COLUMNS))} differ")
    return pd.DataFrame(rows, columns=list(METRICS_COLUMNS))


def checkpoint_state(state: TrainState) -> dict:
    """What last.pt holds after epoch ``state.epoch - 1``, on the CPU (so any device reads it).

    Parameters
    ----------
    state : TrainState
        The run's state after its epoch.
    """
    ckpt = {
        "epoch": state.epoch - 1,
        "model": state.model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "active": torch.from_numpy(state.active.copy()),
        "dropped_epoch": torch.from_numpy(state.dropped_epoch.copy()),
    }
    if state.scaler is not None:
        ckpt["scaler"] = state.scaler.state_dict()
    return _to_cpu(ckpt)


# --- the loop ------------------------------------------------------------------------------


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
        save_checkpoint(writer.dir / CHECKPOINTS / FINAL, _to_cpu(state.model.state_dict()),
                        root=writer.dir)  # fmt: skip
    writer.write_progress(epoch=state.config.epochs, epochs=state.config.epochs, phase="done")
    writer.set_status("finished")


def _to_cpu(obj):
    # Checkpoints are written from CPU tensors so that they load anywhere without map_location.
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj
