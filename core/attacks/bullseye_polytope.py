"""Bullseye Polytope (Aghakhani et al., EuroS&P 2021): clean-label feature collision for victims
that reuse the attacker's feature extractor (the ``transfer`` and ``finetune`` scenarios).

The poisons are train images of the adversarial class, perturbed within an l-inf ball so that the
*mean* of their penultimate features sits on the target's feature ("bullseye": equal convex
weights). A head retrained on them learns the target's spot in feature space as the adversarial
class. Objective, averaged over the surrogate ensemble::

    || mean_j phi(x_j + delta_j) - phi(x_t) ||^2 / || phi(x_t) ||^2

minimised over ``delta`` by Adam with projection onto the ball after every step; labels unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from poisonlens.attacks.base import AttackGoal, CleanLabelAttack, register, seeded_generator
from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet
from poisonlens.models import Classifier, to_tensor


def bullseye_loss(models: list[Classifier], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Relative squared distance between the poisons' mean feature and the target's, ensemble mean.

    Parameters
    ----------
    models : list of Classifier
        The surrogate ensemble (anything with ``features(x) -> (n, d)``).
    x : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
        The poisons.
    target : float tensor of shape (1, channels, height, width) in [0, 1]
        The target image.

    Returns
    -------
    scalar float tensor, differentiable in ``x``
    """
    losses = []
    for model in models:
        ft = model.features(target)[0].detach()
        losses.append(
            ((model.features(x).mean(0) - ft) ** 2).sum() / (ft**2).sum().clamp_min(1e-12)
        )
    return torch.stack(losses).mean()


@register("bullseye-polytope")
@dataclass(frozen=True, kw_only=True)
class BullseyePolytope(CleanLabelAttack):
    """Bullseye Polytope with the paper's transfer-learning defaults (Adam, lr 0.04, 4000 steps)."""

    name: ClassVar[str] = "bullseye-polytope"

    eps: float = 8.0  # l-inf radius in 0-255 pixel units (the paper's 8/255)
    steps: int = 4000  # Adam steps
    lr: float = 0.04  # Adam step size in [0, 1] pixel units
    bases: str = "closest"  # {'random', 'closest'}: adv-class train images nearest the target in feature space, or drawn

    def __post_init__(self) -> None:
        self.check(eps=self.eps, steps=self.steps, lr=self.lr)

    def make_poisons(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
                     show_progress: bool) -> PoisonSet:
        """Craft ``goal.budget`` x n_train poisons; the feature distance reached is in ``extra``.

        Parameters
        ----------
        dataset, goal, surrogates, show_progress
            See :meth:`CraftingAttack.make_poisons`; the surrogates given (or trained) are
            the ensemble whose mean feature is pulled onto the target's.
        """
        start = self.start(dataset, goal, surrogates, show_progress)
        models, base, target = start.models, start.base, start.target
        with torch.no_grad():
            loss_start = float(bullseye_loss(models, base, target))
        delta = self.random_start(base, seeded_generator(goal.random_state, 1))
        delta.requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.lr)
        for _ in tqdm(range(self.steps), desc=self.name, unit="step", disable=not show_progress):
            loss = bullseye_loss(models, base + delta, target)
            # autograd.grad, not backward: the surrogates' parameter gradients are not needed
            (delta.grad,) = torch.autograd.grad(loss, delta)
            optimizer.step()
            with torch.no_grad():
                delta.copy_(self.project(base + delta, base) - base)
        poisons_u8 = self.to_uint8(base + delta, start.base_u8)
        with torch.no_grad():
            loss_end = float(bullseye_loss(models, to_tensor(poisons_u8).to(start.device), target))
        return start.poison_set(dataset, goal, poisons_u8, attack=self, extra={
            "feature_distance_start": loss_start, "feature_distance": loss_end})
