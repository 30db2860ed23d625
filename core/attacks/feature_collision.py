"""Feature Collision ("Poison Frogs!", Shafahi et al., NeurIPS 2018): clean-label poisons for a
victim that retrains the last layer on a fixed feature extractor (the ``transfer`` scenario).

One poison per base: a train image of the adversarial class is moved, in pixel space, until its
penultimate feature sits on the target's, while the image stays close to its base. The paper's
objective, per poison::

    || phi(x) - phi(t) ||^2 + beta || x - b ||^2

minimised by forward-backward splitting: a gradient step on the feature term (forward), then the
proximal step of the beta term (backward), ``x = (x_hat + lr * beta * b) / (1 + lr * beta)``. As
in the poisoning benchmark (Schwarzschild et al., 2021), the start is the base with 30% of the
target blended in ("watermark"), every iterate is clipped into the l-inf ball of radius ``eps``
around its base, and the step size shrinks by 5x whenever the objective rises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from poisonlens.attacks.base import AttackGoal, CleanLabelAttack, register
from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet
from poisonlens.errors import InputError
from poisonlens.models import Classifier, to_tensor


def collision_loss(models: list[Classifier], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-poison squared feature distance to the target, summed over the ensemble; shape (P,).

    Parameters
    ----------
    models : list of Classifier
        Surrogates; each contributes its squared feature distance.
    x : float tensor (n_poisons, channels, height, width), values in [0, 1]
        The poisons being crafted.
    target : float tensor (1, channels, height, width), values in [0, 1]
        The image whose feature the poisons move to.

    Returns
    -------
    float tensor of shape (n_poisons,), differentiable in ``x``
    """
    total = torch.zeros(len(x), device=x.device)
    for model in models:
        ft = model.features(target).detach()
        total = total + ((model.features(x) - ft) ** 2).sum(1)
    return total


def relative_distance(models: list[Classifier], x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||phi(x) - phi(t)||^2 / ||phi(t)||^2 per poison, ensemble mean.

    Parameters
    ----------
    models, x, target
        As for :func:`collision_loss`.

    Returns
    -------
    float tensor of shape (n_poisons,); 0 means the poison's feature sits on the target's
    """
    out = torch.zeros(len(x), device=x.device)
    for model in models:
        ft = model.features(target).detach()
        out = out + ((model.features(x) - ft) ** 2).sum(1) / (ft**2).sum().clamp_min(1e-12)
    return out / len(models)


@register("feature-collision")
@dataclass(frozen=True, kw_only=True)
class FeatureCollision(CleanLabelAttack):
    """Feature collision with the poisoning benchmark's defaults (eps 8, 120 steps, lr 0.001)."""

    name: ClassVar[str] = "feature-collision"

    eps: float = 8.0  # l-inf radius in 0-255 pixel units (the benchmark's 8/255)
    steps: int = 120  # forward-backward iterations (the benchmark's crafting_iters)
    lr: float = 0.001  # step size of the forward (gradient) step, [0, 1] pixel units
    beta: float = 0.1  # weight of ||x - b||^2 (the benchmark's value for unnormalised inputs)
    watermark: float = 0.3  # opacity of the target blended into the starting point
    bases: str = "closest"  # {'random', 'closest'}: adv-class train images nearest the target in feature space, or drawn

    def __post_init__(self) -> None:
        self.check(eps=self.eps, steps=self.steps, lr=self.lr)
        if self.beta < 0 or not 0 <= self.watermark <= 1:
            raise InputError(self.name, "need beta >= 0 and watermark in [0, 1]")

    def craft(self, models: list[Classifier], base: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Poisons for ``base`` (P, C, H, W) against ``target`` (1, C, H, W), floats in [0, 1].

        Each poison has its own step size (the benchmark crafts them one at a time), so one
        poison's overshoot does not slow the others.

        Parameters
        ----------
        models : list of Classifier
            Surrogates with frozen parameters.
        base : float tensor (n_poisons, channels, height, width), values in [0, 1]
            The images the poisons start from (and must stay within ``eps`` of).
        target : float tensor (1, channels, height, width), values in [0, 1]
            The image whose feature the poisons move to.

        Returns
        -------
        float tensor of base's shape, within ``eps`` of ``base``
        """
        lr = torch.full((len(base), 1, 1, 1), self.lr, device=base.device)
        x = self.project(self.watermark * target + (1 - self.watermark) * base, base)
        best = torch.full((len(base),), float("inf"), device=base.device)
        for _ in range(self.steps):
            x.requires_grad_(True)
            loss = collision_loss(models, x, target)
            (grad,) = torch.autograd.grad(loss.sum(), x)
            with torch.no_grad():
                x_hat = x - lr * grad  # forward: gradient step on the feature term
                x_new = (x_hat + lr * self.beta * base) / (1 + lr * self.beta)  # backward: prox
                x_new = self.project(x_new, base)
                obj = loss.detach() + self.beta * ((x - base) ** 2).flatten(1).sum(1)
                # The benchmark's rule: a rising objective shrinks the step and keeps the iterate.
                rose = obj > best
                lr[rose] *= 0.2
                x = torch.where(rose[:, None, None, None], x.detach(), x_new)
                best = torch.where(rose, best, obj)
        return x.detach()

    def make_poisons(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
                     show_progress: bool) -> PoisonSet:
        """Craft ``goal.budget`` x n_train poisons, one per base; distances reached in ``extra``.

        Parameters
        ----------
        dataset, goal, surrogates, show_progress
            See :meth:`CraftingAttack.make_poisons`; every surrogate's feature of each
            poison is pulled onto the target's.
        """
        start = self.start(dataset, goal, surrogates, show_progress)
        models, base, target = start.models, start.base, start.target
        for m in models:
            for p in m.parameters():
                p.requires_grad_(False)
        with torch.no_grad():
            dist_start = float(relative_distance(models, base, target).mean())
        chunks = list(torch.split(torch.arange(len(base)), 64))
        out = [
            self.craft(models, base[idx], target)
            for idx in tqdm(chunks, desc=self.name, unit="batch", disable=not show_progress)
        ]
        poisons_u8 = self.to_uint8(torch.cat(out).cpu(), start.base_u8)
        with torch.no_grad():
            dist_end = float(
                relative_distance(models, to_tensor(poisons_u8).to(start.device), target).mean()
            )
        return start.poison_set(dataset, goal, poisons_u8, attack=self, extra={
            "feature_distance_start": dist_start, "feature_distance": dist_end})
