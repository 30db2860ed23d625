"""Label flipping: a fast, *not* clean-label contrast. No pixel changes (``eps`` 0).

The poisons are train images of the target's own class, unmodified, relabelled ``adv_label``.
By default they are the ones nearest the target in pixel space, which flips the target's
neighbourhood, so one target can flip with a small budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from poisonlens.attacks.base import (
    AttackGoal,
    CraftingAttack,
    check_choice,
    choose_bases,
    n_poisons_for,
    register,
)
from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet

SELECTIONS = ("nearest", "random")


@register("label-flip")
@dataclass(frozen=True, kw_only=True)
class LabelFlip(CraftingAttack):
    """Relabel ``goal.budget`` x n_train images of the target's class as ``adv_label``."""

    name: ClassVar[str] = "label-flip"
    needs_surrogate: ClassVar[bool] = False

    selection: str = "nearest"  # {'nearest', 'random'}: target-class images nearest the target (pixel l2) or drawn

    def __post_init__(self) -> None:
        check_choice(self.name, "selection", self.selection, SELECTIONS)

    def make_poisons(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
                     show_progress: bool) -> PoisonSet:
        """Relabel ``goal.budget`` x n_train train images as the adversarial class (no surrogate).

        Parameters
        ----------
        dataset, goal, surrogates, show_progress
            See :meth:`CraftingAttack.make_poisons`; no surrogate is used, nothing to show.
        """
        target_x = dataset.x_test[goal.target_index]
        target_label = int(dataset.y_test[goal.target_index])
        distances = None
        if self.selection == "nearest":
            diff = dataset.x_train.astype(np.float64) - target_x.astype(np.float64)
            distances = (diff**2).reshape(len(diff), -1).sum(1)
        n_poisons = n_poisons_for(goal.budget, len(dataset.y_train))
        base_indices = choose_bases(
            dataset.y_train,
            target_label,
            n_poisons,
            random_state=goal.random_state,
            distances=distances,
        )
        return PoisonSet(
            x=dataset.x_train[base_indices].copy(),
            y=np.full(n_poisons, goal.adv_label, dtype=np.int64),
            base_indices=base_indices,
            target_x=target_x.copy(),
            target_label=target_label,
            adv_label=goal.adv_label,
            attack=self.name,
            eps=0.0,
            target_index=goal.target_index,
            extra={"selection": self.selection},
        )
