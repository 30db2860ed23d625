"""Gradient Matching ("Witches' Brew", Geiping et al., ICLR 2021): clean-label poisons for a victim
trained from scratch.

The poisons are train images of the adversarial class, perturbed within an l-inf ball, whose
training gradient (over all surrogate parameters) points the same way as the gradient of the
target image labelled ``adv_label``. Training on them then moves the model as training on the
mislabelled target would. Objective, per surrogate and averaged over the ensemble::

    1 - cos( grad_theta CE(f(aug(x_b + delta)), y_b),  grad_theta CE(f(x_t), adv_label) )

minimised over ``delta`` by signed Adam with restarts; labels are never changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from poisonlens.attacks.base import (
    AttackGoal,
    CleanLabelAttack,
    CleanLabelStart,
    register,
    seeded_generator,
)
from poisonlens.augment import augment_batch, resolve_augment
from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet
from poisonlens.models import Classifier, to_tensor


def parameter_gradient(
    model: Classifier, x: torch.Tensor, labels: torch.Tensor, *, create_graph: bool
) -> list[torch.Tensor]:
    """Gradient of the summed cross-entropy of batch ``x`` w.r.t. every trainable parameter.

    Parameters
    ----------
    model : Classifier
        The surrogate.
    x : float tensor of shape (batch, channels, height, width) in [0, 1]
        The images.
    labels : int tensor of shape (batch,)
        The labels the loss is taken against.
    create_graph : bool
        Keep the graph so the gradient can itself be differentiated (crafting needs it).

    Returns
    -------
    list of tensors, one per trainable parameter, each of that parameter's shape
    """
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def cosine(
    grads: list[torch.Tensor], target: list[torch.Tensor], target_norm: torch.Tensor
) -> torch.Tensor:
    """Cosine between two gradients given as lists of per-parameter tensors (one flat vector each).

    Parameters
    ----------
    grads : list of tensors
        The poisons' gradient, one tensor per parameter.
    target : list of tensors
        The target's gradient, with the same shapes.
    target_norm : scalar tensor
        The l2 norm of ``target`` over all parameters (computed once per surrogate).

    Returns
    -------
    scalar tensor in [-1, 1]
    """
    dot = sum((g * t).sum() for g, t in zip(grads, target, strict=True))
    norm = torch.sqrt(sum((g * g).sum() for g in grads)).clamp_min(1e-12)
    return dot / (norm * target_norm)


def alignment(
    models: list[Classifier],
    x: torch.Tensor,
    labels: torch.Tensor,
    targets: list[tuple[list[torch.Tensor], torch.Tensor]],
    *,
    create_graph: bool = False,
) -> torch.Tensor:
    """Mean cosine (over the ensemble) between the poison batch's gradient and the target's.

    Parameters
    ----------
    models : list of Classifier
        The surrogate ensemble.
    x : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
        The poisons.
    labels : int tensor of shape (n_poisons,)
        Their (clean) labels.
    targets : list of (gradient, norm)
        Per surrogate, as :func:`target_gradients` returns.
    create_graph : bool
        Keep the graph to differentiate the alignment w.r.t. ``x`` (crafting).

    Returns
    -------
    scalar tensor in [-1, 1]; 1 is perfect alignment
    """
    cosines = [
        cosine(parameter_gradient(m, x, labels, create_graph=create_graph), g, n)
        for m, (g, n) in zip(models, targets, strict=True)
    ]
    return torch.stack(cosines).mean()


def target_gradients(
    models: list[Classifier], target: torch.Tensor, adv_label: int
) -> list[tuple[list[torch.Tensor], torch.Tensor]]:
    """Per surrogate: the gradient of the target labelled ``adv_label``, and its norm.

    Parameters
    ----------
    models : list of Classifier
        The surrogate ensemble.
    target : float tensor of shape (1, channels, height, width) in [0, 1]
        The target image.
    adv_label : int
        The class the attacker wants the target read as.

    Returns
    -------
    list of (list of tensors, scalar tensor), one per surrogate, detached
    """
    out = []
    label = torch.tensor([adv_label])
    for model in models:
        grads = [g.detach() for g in parameter_gradient(model, target, label, create_graph=False)]
        out.append((grads, torch.sqrt(sum((g * g).sum() for g in grads))))
    return out


@register("gradient-matching")
@dataclass(frozen=True, kw_only=True)
class GradientMatching(CleanLabelAttack):
    """Witches' Brew with its paper defaults (eps 16, 250 steps, 8 restarts, tau 0.1, augmentation)."""

    name: ClassVar[str] = "gradient-matching"

    eps: float = 16.0  # l-inf radius in 0-255 pixel units
    steps: int = 250  # signed-Adam steps per restart
    restarts: int = 8  # random starts inside the ball; the best final alignment is kept
    tau: float = 0.1  # Adam step size as a fraction of eps (decays x0.1 at 3/8, 5/8, 7/8 of steps)
    augment: bool = (
        True  # differentiable crops (flips too for colour) while crafting, as the victim trains
    )
    bases: str = "random"  # {'random', 'closest'}: adv-class train images, drawn or nearest the target in feature space

    def __post_init__(self) -> None:
        self.check(eps=self.eps, steps=self.steps, restarts=self.restarts, tau=self.tau)

    def make_poisons(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
                     show_progress: bool) -> PoisonSet:
        """Craft ``goal.budget`` x n_train poisons; the alignments reached are in ``extra``.

        Parameters
        ----------
        dataset, goal, surrogates, show_progress
            See :meth:`CraftingAttack.make_poisons`; ``surrogates`` (eval mode) replace the
            ones this attack would train on ``dataset``'s train split.
        """
        start = self.start(dataset, goal, surrogates, show_progress)
        labels = torch.as_tensor(dataset.y_train[start.base_indices]).to(start.device)
        targets = target_gradients(start.models, start.target, goal.adv_label)
        alignment_start = float(alignment(start.models, start.base, labels, targets))
        mode = resolve_augment("auto", start.base.shape[1]) if self.augment else "none"
        bar = tqdm(
            total=self.restarts * self.steps, desc=self.name, unit="step", disable=not show_progress
        )
        best, per_restart = start.base_u8, []
        for restart in range(self.restarts):
            gen = seeded_generator(goal.random_state, restart + 1)
            delta = self._brew(start, labels, targets, mode, gen, bar)
            poisons_u8 = self.to_uint8(start.base + delta, start.base_u8)
            poisons = to_tensor(poisons_u8).to(start.device)
            reached = float(alignment(start.models, poisons, labels, targets))
            if reached > max(per_restart, default=-np.inf):
                best = poisons_u8
            per_restart.append(reached)
            bar.set_postfix(alignment=f"{max(per_restart):.3f}")
        bar.close()
        return start.poison_set(dataset, goal, best, attack=self, extra={
            "alignment_start": alignment_start,
            "alignment": max(per_restart),
            "restart_alignments": per_restart,
        })

    def _brew(self, start: CleanLabelStart, labels: torch.Tensor, targets, mode: str,
              gen: torch.Generator, bar) -> torch.Tensor:
        """One restart: signed Adam on delta from a uniform start in the ball; returns delta (P, C, H, W)."""
        models, base = start.models, start.base
        delta = self.random_start(base, gen)
        # augmentation draws on the data's device (a CPU run keeps the CPU stream, as before)
        aug_gen = gen if base.device.type == "cpu" else torch.Generator(device=base.device).manual_seed(
            int(torch.randint(2**62, (1,), generator=gen))
        )
        delta.requires_grad_(True)
        optimizer = torch.optim.Adam([delta], lr=self.tau * (self.eps / 255.0))
        milestones = [int(self.steps * f) for f in (0.375, 0.625, 0.875)]
        schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
        for _ in range(self.steps):
            x = augment_batch(base + delta, mode, aug_gen)
            loss = 1.0 - alignment(models, x, labels, targets, create_graph=True)
            (grad,) = torch.autograd.grad(loss, delta)
            delta.grad = grad.sign()  # signed Adam: the sign of the gradient, as in the paper's code
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                delta.copy_(self.project(base + delta, base) - base)
            bar.update(1)
        return delta.detach()


def gradient_alignment(models: list[Classifier], poisons: PoisonSet) -> float:
    """Alignment (mean cosine) of a poison set's gradient with its target's, on ``models``.

    Parameters
    ----------
    models : list of Classifier
        The models to measure on (surrogates or a trained victim).
    poisons : PoisonSet
        The poisons, their labels, the target and the adversarial class.

    Returns
    -------
    float in [-1, 1]
    """
    device = next(models[0].parameters()).device
    targets = target_gradients(
        models, to_tensor(poisons.target_x[None]).to(device), poisons.adv_label
    )
    labels = torch.as_tensor(np.asarray(poisons.y)).to(device)
    return float(alignment(models, to_tensor(poisons.x).to(device), labels, targets))
