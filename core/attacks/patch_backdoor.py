"""Patch backdoor (BadNets, Gu et al. 2017): a fast, *not* clean-label contrast to the clean-label attacks.

A small checkerboard trigger is stamped on the poisons; the target carries the same trigger at
test time, so the model learns "trigger -> adv_label". Two label rules:

- ``relabel=True`` (default, BadNets): the bases are train images of *other* classes and their
  label is changed to ``adv_label``. This is the variant measured in FINDINGS (2%, 3x3 patch).
- ``relabel=False`` (clean-label variant): the bases are images of ``adv_label`` itself, labels
  unchanged; only the trigger is added.

The poisons are unbounded (``eps`` None): the trigger replaces pixels outright.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from poisonlens.attacks.base import (
    AttackGoal,
    CraftingAttack,
    choose_bases,
    n_poisons_for,
    register,
)
from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet
from poisonlens.errors import InputError


def checkerboard(size: int, channels: int) -> np.ndarray:
    """A black-and-white checkerboard, white in the top-left corner.

    Parameters
    ----------
    size : int
        Side of the square, pixels.
    channels : int
        Colour channels (1 grey, 3 RGB).

    Returns
    -------
    uint8 ndarray of shape (size, size, channels), values 0 or 255
    """
    cells = (np.add.outer(np.arange(size), np.arange(size)) % 2 == 0).astype(np.uint8) * 255
    return np.repeat(cells[:, :, None], channels, axis=2)


def stamp(images: np.ndarray, trigger: np.ndarray, xy: tuple[int, int]) -> np.ndarray:
    """Copy of ``images`` with ``trigger`` pasted at column x, row y.

    Parameters
    ----------
    images : uint8 ndarray of shape (n, height, width, channels)
        The images to stamp (not changed).
    trigger : uint8 ndarray of shape (trigger_height, trigger_width, channels)
        The patch.
    xy : (int, int)
        Column and row of the patch's top-left pixel.

    Returns
    -------
    uint8 ndarray of images' shape
    """
    x, y = xy
    th, tw = trigger.shape[:2]
    out = images.copy()
    out[:, y : y + th, x : x + tw, :] = trigger
    return out


@register("patch-backdoor")
@dataclass(frozen=True, kw_only=True)
class PatchBackdoor(CraftingAttack):
    """BadNets-style trigger poisons; the target is the test image with the trigger stamped on."""

    name: ClassVar[str] = "patch-backdoor"
    needs_surrogate: ClassVar[bool] = False

    patch_size: int = 3  # side of the square checkerboard trigger, pixels
    margin: int = 0  # gap between the trigger and the bottom-right corner, pixels
    relabel: bool = (
        True  # True: other classes relabelled adv (BadNets); False: adv-class bases, labels kept
    )

    def make_poisons(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
                     show_progress: bool) -> PoisonSet:
        """Stamp the trigger on ``goal.budget`` x n_train train images.

        Parameters
        ----------
        dataset, goal, surrogates, show_progress
            See :meth:`CraftingAttack.make_poisons`; the trigger needs no surrogate.
        """
        h, w, c = dataset.image_shape
        if self.patch_size < 1 or self.margin < 0 or self.patch_size + self.margin > min(h, w):
            raise InputError(
                self.name,
                f"patch size {self.patch_size} with margin {self.margin} "
                f"does not fit {h}x{w} images",
            )
        trigger = checkerboard(self.patch_size, c)
        xy = (w - self.margin - self.patch_size, h - self.margin - self.patch_size)
        if self.relabel:
            classes = [k for k in range(dataset.n_classes) if k != goal.adv_label]
        else:
            classes = [goal.adv_label]
        n_poisons = n_poisons_for(goal.budget, len(dataset.y_train))
        base_indices = choose_bases(
            dataset.y_train, classes, n_poisons, random_state=goal.random_state
        )
        return PoisonSet(
            x=stamp(dataset.x_train[base_indices], trigger, xy),
            y=np.full(n_poisons, goal.adv_label, dtype=np.int64),
            base_indices=base_indices,
            target_x=stamp(dataset.x_test[goal.target_index][None], trigger, xy)[0],
            target_label=int(dataset.y_test[goal.target_index]),
            adv_label=goal.adv_label,
            attack=self.name,
            eps=None,
            trigger=trigger,
            trigger_xy=xy,
            target_index=goal.target_index,
            extra={
                "relabel": self.relabel,
                "label_rule": "relabelled to adv" if self.relabel else "clean-label",
            },
        )
