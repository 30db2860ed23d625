"""One epoch of SGD, the victim's loop pieces: the schedule, the batches, the pass.

The trainer (:mod:`poisonlens.train`), the surrogate models of the attacks and the benchmarks
train with these, so a surrogate learns exactly as the victim does. The training images stay
uint8 of shape (n_samples, height, width, channels) and are cropped, flipped and converted to
float one batch at a time, on the run's device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from poisonlens.augment import augment_batch
from poisonlens.config import TrainConfig
from poisonlens.device import seeded_generator
from poisonlens.models import Classifier
from poisonlens.snapshot import model_device


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
        Every training image (the batches index into it); any device, each batch is moved.
    labels : int64 tensor of shape (n_samples,)
        Every training label, already where the model is.
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
