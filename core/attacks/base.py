"""What every attack shares: the goal it is given, the registry, base choice and the eps ball.

Pixel units: images are uint8 0-255 on disk; inside crafting they are float tensors of shape
(P, C, H, W) in [0, 1] (see :func:`poisonlens.models.to_tensor`); ``eps`` is always in 0-255 units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet
from poisonlens.errors import InputError


@dataclass(frozen=True)
class AttackGoal:
    """What the attacker wants: ``x_test[target_index]`` predicted as ``adv_label``.

    Attributes
    ----------
    target_index : index of the target in the test split
    adv_label : the class the target should be predicted as
    budget : poisons as a fraction of the training set (0.01 = 1% of n_train)
    random_state : seed for base choice, surrogates and restarts
    """

    target_index: int
    adv_label: int
    budget: float = 0.01
    random_state: int = 0


class CraftingAttack:
    """Base of the attacks: checks the goal against the data set once, then makes the poisons."""

    def __call__(
        self,
        dataset: ImageDataset,
        goal: AttackGoal,
        *,
        surrogates: list | None = None,
        show_progress: bool = False,
    ) -> PoisonSet:
        """Craft a poison set for ``goal`` from ``dataset``'s training split.

        Parameters
        ----------
        dataset : ImageDataset
            The clean data set; only its training split and the target are read.
        goal : AttackGoal
            The target, the class it should be read as, the budget and the seed.
        surrogates : list of Classifier, optional
            Models to craft against instead of the ones the attack would train (attacks that
            use surrogates; the others ignore it).
        show_progress : bool
            Progress bars for the long steps.

        Returns
        -------
        PoisonSet
        """
        validate_goal(dataset, goal)
        return self.make_poisons(dataset, goal, surrogates, show_progress)

    def make_poisons(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
                     show_progress: bool) -> PoisonSet:
        """The attack itself, given a checked goal; see ``__call__``."""
        raise NotImplementedError


Attack = CraftingAttack  # the type of a configured attack: ``attack(dataset, goal) -> PoisonSet``


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an attack (a frozen config dataclass) available under ``name``."""

    def wrap(cls: type) -> type:
        _REGISTRY[name] = cls
        return cls

    return wrap


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    import importlib
    import pkgutil

    import poisonlens.attacks as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name not in {"base", "surrogate"}:
            importlib.import_module(f"poisonlens.attacks.{mod.name}")


def attack_names() -> list[str]:
    """Names of all registered attacks."""
    _load_builtin()
    return sorted(_REGISTRY)


def attack_class(name: str) -> type:
    """The config dataclass registered as ``name``; :class:`InputError` for an unknown name."""
    _load_builtin()
    if name not in _REGISTRY:
        raise InputError(name, f"unknown attack; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_attack(name: str, **params) -> Attack:
    """Make the attack registered as ``name`` with keyword ``params`` (its paper defaults otherwise)."""
    cls = attack_class(name)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise InputError(
            name,
            f"unknown parameter(s) {', '.join(unknown)}; "
            f"this attack takes {', '.join(sorted(known))}",
        )
    return cls(**params)


# --- checking the goal ---------------------------------------------------------------------


def n_poisons_for(budget: float, n_train: int) -> int:
    """Number of poisons for ``budget`` (fraction of ``n_train``); at least one."""
    return max(1, int(math.floor(budget * n_train + 0.5)))


def validate_goal(dataset: ImageDataset, goal: AttackGoal) -> None:
    """Raise :class:`InputError` for a target, class or budget that does not fit ``dataset``."""
    n_test = len(dataset.y_test)
    if not 0 <= goal.target_index < n_test:
        raise InputError(
            "--target-index", f"{goal.target_index} is outside the test split [0, {n_test})"
        )
    if not 0 <= goal.adv_label < dataset.n_classes:
        raise InputError("--adv-class", f"{goal.adv_label} is outside [0, {dataset.n_classes})")
    target_label = int(dataset.y_test[goal.target_index])
    if goal.adv_label == target_label:
        raise InputError(
            "--adv-class", f"{goal.adv_label} is already the target's label; choose another class"
        )
    if not 0.0 < goal.budget <= 1.0:
        raise InputError("--budget", f"must be in (0, 1], got {goal.budget}")


def check_params(name: str, **positive: float) -> None:
    """Raise :class:`InputError` if any of the named parameters is not positive."""
    for key, value in positive.items():
        if not value > 0:
            raise InputError(name, f"{key} must be positive, got {value}")


# --- bases ---------------------------------------------------------------------------------


def choose_bases(
    labels: np.ndarray,
    classes: int | list[int],
    n_poisons: int,
    *,
    random_state: int,
    distances: np.ndarray | None = None,
) -> np.ndarray:
    """Pick ``n_poisons`` distinct train indices whose label is in ``classes``.

    Parameters
    ----------
    labels : int array of shape (n_train,)
    classes : the class (or classes) bases are drawn from
    n_poisons : how many to pick
    random_state : seed of the random draw (used when ``distances`` is None)
    distances : optional float array of shape (n_train,); when given, the ``n_poisons``
        eligible rows with the smallest distance are taken (ties: lower index first)

    Returns
    -------
    int64 array of shape (n_poisons,), sorted ascending.
    """
    eligible = np.flatnonzero(np.isin(labels, np.atleast_1d(classes)))
    if n_poisons > len(eligible):
        raise InputError(
            "--budget",
            f"{n_poisons} poisons asked for, but only {len(eligible)} "
            f"training images of class {classes} can serve as bases",
        )
    if distances is None:
        chosen = np.random.default_rng(random_state).choice(eligible, size=n_poisons, replace=False)
    else:
        chosen = eligible[np.argsort(np.asarray(distances)[eligible], kind="stable")[:n_poisons]]
    return np.sort(chosen).astype(np.int64)


# --- the eps ball --------------------------------------------------------------------------


def project_linf(x: torch.Tensor, base: torch.Tensor, eps: float) -> torch.Tensor:
    """Clamp ``x`` into the l-inf ball of radius ``eps`` (0-255 units) around ``base`` and into [0, 1].

    ``x`` and ``base`` are float tensors in [0, 1] of the same shape.
    """
    radius = eps / 255.0
    return torch.maximum(torch.minimum(x, base + radius), base - radius).clamp(0.0, 1.0)


def to_uint8_within(x: torch.Tensor, base: np.ndarray, eps: float) -> np.ndarray:
    """Float (P, C, H, W) in [0, 1] -> uint8 (P, H, W, C), rounded but never further than ``eps`` from ``base``.

    ``base`` is the uint8 (P, H, W, C) images the poisons started from.
    """
    pixels = x.detach().cpu().permute(0, 2, 3, 1).numpy().astype(np.float64) * 255.0
    radius = math.floor(eps)  # integer pixels within eps; exact, unlike base -/+ eps in floats
    base = base.astype(np.int64)
    return np.clip(
        np.round(pixels), np.maximum(base - radius, 0), np.minimum(base + radius, 255)
    ).astype(np.uint8)


def targeted_poison_set(
    dataset: ImageDataset,
    goal: AttackGoal,
    x: np.ndarray,
    base_indices: np.ndarray,
    *,
    attack: str,
    eps: float,
    extra: dict,
) -> PoisonSet:
    """The poison set of a targeted clean-label attack: poisons keep their bases' labels.

    Parameters
    ----------
    dataset : the training and test data the attack was crafted on
    goal : the target test image and the class the attacker wants it read as
    x : uint8 poisons of shape (n_poisons, height, width, channels)
    base_indices : training rows the poisons replace, of shape (n_poisons,)
    attack, eps, extra : recorded with the set (``extra``: the attack's own figures)
    """
    return PoisonSet(
        x=x,
        y=dataset.y_train[base_indices].copy(),
        base_indices=base_indices,
        target_x=dataset.x_test[goal.target_index].copy(),
        target_label=int(dataset.y_test[goal.target_index]),
        adv_label=goal.adv_label,
        attack=attack,
        eps=eps,
        target_index=goal.target_index,
        extra=extra,
    )


def max_perturbation(poisons: PoisonSet, dataset: ImageDataset) -> np.ndarray:
    """Per-poison l-inf distance (0-255 units) from its base image; float array of shape (P,)."""
    base = dataset.x_train[poisons.base_indices].astype(np.int16)
    diff = np.abs(poisons.x.astype(np.int16) - base)
    return diff.reshape(len(diff), -1).max(axis=1).astype(np.float64) if len(diff) else np.zeros(0)


def check_within_eps(
    poisons: PoisonSet, dataset: ImageDataset, source: str = "poison set"
) -> float:
    """Raise :class:`InputError` if a poison leaves the ``eps`` ball of its base; returns the largest distance.

    A poison set with ``eps`` None (a backdoor) is unbounded and always passes.
    """
    dist = max_perturbation(poisons, dataset)
    largest = float(dist.max()) if len(dist) else 0.0
    if poisons.eps is not None and largest > poisons.eps:
        worst = int(dist.argmax())
        raise InputError(
            source,
            f"poison {worst} (train image {int(poisons.base_indices[worst])}) is "
            f"{largest:g} from its base, more than eps {poisons.eps:g}",
        )
    return largest


def clean_control(poisons: PoisonSet, dataset: ImageDataset) -> PoisonSet:
    """The same target and rows with every poison restored to its base image and label.

    Training on it is the clean control: a target that flips here flips without any poison.
    """
    base = np.asarray(poisons.base_indices)
    return replace(poisons, x=dataset.x_train[base].copy(), y=dataset.y_train[base].copy(),
                   attack="clean-control", eps=0.0, extra={"control_of": poisons.attack})


def seeded_generator(random_state: int, stream: int = 0) -> torch.Generator:
    """A torch generator for one independent stream (e.g. one restart) of a seeded attack."""
    return torch.Generator().manual_seed(random_state * 1_000_003 + stream)
