"""A run's state: made for a new run (:func:`start_run`) or read back from its checkpoint
(:func:`resume_run`).

The state is one :class:`TrainState` (as in nanoGPT); its config is checked once per run
(:func:`check_config`), before anything is made.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

import poisonlens
from poisonlens import runfs
from poisonlens.checkpoint import LAST, load_checkpoint, load_weights, read_table
from poisonlens.config import TrainConfig
from poisonlens.data import PoisonedDataset, apply_poisons, load_dataset, load_poisons
from poisonlens.defense import build_defense
from poisonlens.defense.base import Defense
from poisonlens.device import ALONE, DistContext, fits_on_device, process_device, this_process
from poisonlens.epoch import make_optimizer
from poisonlens.errors import InputError
from poisonlens.model_spec import check_trusted
from poisonlens.models import Classifier, build_model
from poisonlens.snapshot import storage_projection
from poisonlens.store import CHECKPOINTS, METRICS, RUN_JSON, TARGETS, RunWriter, open_run


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
