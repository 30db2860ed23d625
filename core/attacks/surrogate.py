"""Surrogate models: what the attacker trains on the clean training split to craft against.

Training reuses the victim's loop pieces from :mod:`poisonlens.epoch` (same optimiser, schedule and
augmentation) but writes no run store; it never sees the test split.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from poisonlens import runfs
from poisonlens.augment import resolve_augment
from poisonlens.config import TrainConfig
from poisonlens.data.datasets import ImageDataset
from poisonlens.epoch import epoch_generator, iter_batches, lr_at, make_optimizer, train_one_epoch
from poisonlens.errors import InputError
from poisonlens.models import Classifier, build_model, to_tensor


@dataclass(frozen=True, kw_only=True)
class SurrogateOptions:
    """How the attacker's surrogates are made; attacks that need them inherit these fields."""

    model: str = "smallcnn"  # surrogate architecture, {'smallcnn', 'resnet18'}
    width: int = 32  # channels of the small CNN's first block
    surrogate_epochs: tuple[int, ...] = (40,)  # each surrogate joins the ensemble at these epochs
    ensemble: int = 1  # independently seeded surrogates (x len(surrogate_epochs) members)

    def surrogate_models(self, dataset: ImageDataset, goal, surrogates: list | None,
                         show_progress: bool) -> list[Classifier]:
        """The models to craft against, in eval mode: ``surrogates`` when given, else the
        ensemble :func:`train_surrogates` trains on ``dataset`` with ``goal``'s seed.

        Parameters
        ----------
        dataset : ImageDataset
        goal : AttackGoal, whose ``random_state`` seeds the surrogates
        surrogates : list of Classifier or None
        show_progress : bool, progress bars while training
        """
        models = surrogates or train_surrogates(
            dataset, self, random_state=goal.random_state, show_progress=show_progress
        )
        for m in models:
            m.eval()
        return models

    def train_config(self, seed: int) -> TrainConfig:
        """The training configuration of one surrogate seeded with ``seed``.

        Parameters
        ----------
        seed : int
            The surrogate's training seed.

        Returns
        -------
        TrainConfig
            This architecture and width, trained for ``max(surrogate_epochs)`` epochs.
        """
        return TrainConfig(
            model=self.model, width=self.width, epochs=max(self.surrogate_epochs), seed=seed
        )


def build_surrogate(dataset: ImageDataset, options: SurrogateOptions) -> Classifier:
    """A fresh, untrained model of the surrogate architecture for ``dataset``.

    Parameters
    ----------
    dataset : ImageDataset
        Sets the number of classes and input channels.
    options : SurrogateOptions
        The architecture and width.

    Returns
    -------
    Classifier
    """
    return build_model(
        options.model,
        n_classes=dataset.n_classes,
        in_channels=dataset.x_train.shape[-1],
        width=options.width,
    )


def train_surrogates(
    dataset: ImageDataset,
    options: SurrogateOptions,
    *,
    random_state: int,
    show_progress: bool = False,
    device: torch.device | str = "cpu",
) -> list[Classifier]:
    """Train ``options.ensemble`` surrogates on the clean train split; returns the ensemble in eval mode.

    Surrogate ``i`` uses seed ``random_state + i`` and contributes a copy of itself at every
    epoch in ``options.surrogate_epochs`` (snapshots of one run make a cheap ensemble). The
    surrogates train and stay on ``device``; the attacks craft on the surrogates' device.

    Parameters
    ----------
    dataset : ImageDataset
        Its training split is what the surrogates learn (never the test split).
    options : SurrogateOptions
        Architecture, width, ensemble size and the epochs at which members are kept.
    random_state : int
        Seed of surrogate 0; surrogate ``i`` uses ``random_state + i``.
    show_progress : bool
        A progress bar per surrogate.
    device : torch.device or str
        Where they train, e.g. ``'cpu'`` or ``'cuda:0'``.

    Returns
    -------
    list of Classifier, ``ensemble * len(surrogate_epochs)`` members
    """
    device = torch.device(device)
    if options.ensemble < 1 or not options.surrogate_epochs or min(options.surrogate_epochs) < 1:
        raise InputError("surrogate", "need ensemble >= 1 and surrogate epochs >= 1")
    x_all = torch.from_numpy(dataset.x_train).to(device)  # uint8; converted to float per batch
    y_all = torch.as_tensor(dataset.y_train).to(device)
    indices = np.arange(len(dataset.y_train))
    augment = resolve_augment("auto", dataset.x_train.shape[-1])
    keep = set(options.surrogate_epochs)
    members: list[Classifier] = []
    for i in range(options.ensemble):
        config = options.train_config(random_state + i)
        torch.manual_seed(config.seed)
        model = build_surrogate(dataset, options).to(device)
        optimizer = make_optimizer(config, model)
        for epoch in tqdm(
            range(1, config.epochs + 1),
            desc=f"surrogate {i}",
            unit="epoch",
            disable=not show_progress,
            leave=False,
        ):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(config, epoch)
            feed = iter_batches(x_all, y_all, indices, batch_size=config.batch_size,
                                augment=augment, gen=epoch_generator(config.seed, epoch))
            train_one_epoch(model, optimizer, feed)
            if epoch in keep:
                members.append(_frozen_copy(dataset, options, model))
    return members


def _frozen_copy(dataset: ImageDataset, options: SurrogateOptions, model: Classifier) -> Classifier:
    copy = build_surrogate(dataset, options).to(next(model.parameters()).device)
    copy.load_state_dict(model.state_dict())
    # Eval mode: batch norm uses its running statistics, so a poison's gradient does not
    # depend on which other images share its batch. Parameters keep requires_grad because
    # gradient matching differentiates through the parameter gradient.
    return copy.eval()


def load_surrogate(
    path: str | Path,
    dataset: ImageDataset,
    options: SurrogateOptions,
    device: torch.device | str = "cpu",
) -> Classifier:
    """Load a ``model.pt`` state dict (e.g. a clean run's checkpoint) as a frozen surrogate on
    ``device``.

    Parameters
    ----------
    path : str or Path
        The weights file; read bounded, never through a link or FIFO.
    dataset : ImageDataset
        Sets the number of classes and input channels the weights must fit.
    options : SurrogateOptions
        The architecture and width the weights must fit.
    device : torch.device or str
        Where the model goes.

    Returns
    -------
    Classifier in eval mode
    """
    from poisonlens.checkpoint import load_weights  # bounded, no link or FIFO, one-line errors

    model = build_surrogate(dataset, options)
    state = load_weights(path)
    try:
        model.load_state_dict(state)
        model.to(torch.device(device))
    except (RuntimeError, KeyError) as err:
        raise InputError(
            path,
            f"does not fit a {options.model} of width {options.width}: {str(err).splitlines()[0]}",
        ) from err
    return _frozen_copy(dataset, options, model)


def save_surrogate(model: Classifier, path: str | Path) -> None:
    """Write ``model``'s state dict so a victim can start from it (``TrainConfig(pretrained=path)``).

    Parameters
    ----------
    model : Classifier
        The surrogate, on any device (saved as CPU tensors).
    path : str or Path
        The file to write.
    """
    buf = io.BytesIO()
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, buf)  # loads on any machine
    path = Path(path)
    runfs.write_bytes(path.parent, (path.name,), buf.getvalue())  # never through a link


@torch.no_grad()
def feature_distances(
    models: list[Classifier], images: np.ndarray, target: np.ndarray
) -> np.ndarray:
    """Squared distance of each image's penultimate feature to the target's, summed over the ensemble.

    Each member's distance is relative to the target feature's squared norm.

    Parameters
    ----------
    models : list of Classifier
        The surrogate ensemble.
    images : uint8 ndarray of shape (n, height, width, channels)
        The candidate bases.
    target : uint8 ndarray of shape (height, width, channels)
        The target image.

    Returns
    -------
    float64 ndarray of shape (n,)
    """
    device = next(models[0].parameters()).device
    x, t = to_tensor(images).to(device), to_tensor(target[None]).to(device)
    total = torch.zeros(len(images), dtype=torch.float64, device=device)
    for model in models:
        f, ft = model.features(x), model.features(t)
        total += ((f - ft) ** 2).sum(1).double() / (ft**2).sum().clamp_min(1e-12).double()
    return total.cpu().numpy()
