"""What every attack shares: the goal it is given, the registry, base choice and the eps ball;
and :class:`CleanLabelAttack`, the scaffolding of the attacks that craft against surrogates.

Pixel units: images are uint8 0-255 on disk; inside crafting they are float tensors of shape
(P, C, H, W) in [0, 1] (see :func:`poisonlens.models.to_tensor`); ``eps`` is always in 0-255 units.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import ClassVar

import numpy as np
import torch

from poisonlens.attacks.surrogate import SurrogateOptions, feature_distances
from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import PoisonSet
from poisonlens.errors import InputError
from poisonlens.models import to_tensor


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
        """The attack itself, given a goal already checked against ``dataset``.

        Parameters
        ----------
        dataset : ImageDataset
            The clean data set.
        goal : AttackGoal
            The target, adversarial class, budget and seed (valid for ``dataset``).
        surrogates : list of Classifier or None
            Models to craft against, for attacks that use surrogates; None: train their own.
        show_progress : bool
            Progress bars for the long steps.

        Returns
        -------
        PoisonSet
        """
        raise NotImplementedError


Attack = CraftingAttack  # the type of a configured attack: ``attack(dataset, goal) -> PoisonSet``


_REGISTRY: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make an attack (a frozen config dataclass) available under ``name``.

    Parameters
    ----------
    name : str
        The name ``poisonlens craft --attack`` and :func:`build_attack` take, e.g. ``'label-flip'``.

    Returns
    -------
    callable
        The decorator; it returns the class unchanged.
    """

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
    """The config dataclass registered as ``name``; :class:`InputError` for an unknown name.

    Parameters
    ----------
    name : str
        A registered attack name (see :func:`attack_names`).

    Returns
    -------
    type
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise InputError(name, f"unknown attack; choose from {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def build_attack(name: str, **params) -> Attack:
    """Make the attack registered as ``name`` with keyword ``params`` (its paper defaults otherwise).

    Parameters
    ----------
    name : str
        A registered attack name.
    **params
        Fields of the attack's dataclass, e.g. ``eps=8.0, steps=100``; an unknown one is an
        :class:`InputError` naming the ones it takes.

    Returns
    -------
    Attack
        The configured attack: ``attack(dataset, goal) -> PoisonSet``.
    """
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
    """Number of poisons for ``budget`` (fraction of ``n_train``), rounded half up; at least one.

    Parameters
    ----------
    budget : float
        Poisons as a fraction of the training set, in (0, 1].
    n_train : int
        Size of the training split.

    Returns
    -------
    int
    """
    return max(1, int(math.floor(budget * n_train + 0.5)))


def validate_goal(dataset: ImageDataset, goal: AttackGoal) -> None:
    """Raise :class:`InputError` for a target, class or budget that does not fit ``dataset``.

    Parameters
    ----------
    dataset : ImageDataset
        The data set the attack will read.
    goal : AttackGoal
        Its ``target_index`` must lie in the test split, ``adv_label`` be a class other than
        the target's own, and ``budget`` be in (0, 1].
    """
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
    """Raise :class:`InputError` if any of the named parameters is not positive.

    Parameters
    ----------
    name : str
        The attack, named in the message.
    **positive : float
        The parameters that must be > 0, by name (``eps=8.0, steps=100``).
    """
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
    labels : int ndarray of shape (n_train,)
        The training labels.
    classes : int or list of int
        The class (or classes) bases are drawn from.
    n_poisons : int
        How many to pick; more than the eligible rows is an :class:`InputError`.
    random_state : int
        Seed of the random draw (used when ``distances`` is None).
    distances : float ndarray of shape (n_train,), optional
        When given, the ``n_poisons`` eligible rows with the smallest distance are taken
        (ties: lower index first).

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

    Parameters
    ----------
    x : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
        The iterate to project.
    base : float tensor of x's shape in [0, 1]
        The images the poisons started from: the centres of the balls.
    eps : float
        Radius in 0-255 units.

    Returns
    -------
    float tensor of x's shape
    """
    radius = eps / 255.0
    return torch.maximum(torch.minimum(x, base + radius), base - radius).clamp(0.0, 1.0)


def to_uint8_within(x: torch.Tensor, base: np.ndarray, eps: float) -> np.ndarray:
    """Float (P, C, H, W) in [0, 1] -> uint8 (P, H, W, C), rounded but never further than ``eps`` from ``base``.

    Parameters
    ----------
    x : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
        The crafted poisons, on any device.
    base : uint8 ndarray of shape (n_poisons, height, width, channels)
        The images the poisons started from.
    eps : float
        Radius in 0-255 units; only whole pixel steps within it are kept.

    Returns
    -------
    uint8 ndarray of shape (n_poisons, height, width, channels)
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
    attack: CraftingAttack,
    extra: dict,
) -> PoisonSet:
    """The poison set of a targeted clean-label attack: poisons keep their bases' labels.

    Parameters
    ----------
    dataset : ImageDataset
        The training and test data the attack was crafted on.
    goal : AttackGoal
        The target test image and the class the attacker wants it read as.
    x : uint8 ndarray of shape (n_poisons, height, width, channels)
        The poisons, within ``attack.eps`` of their bases.
    base_indices : int ndarray of shape (n_poisons,)
        Training rows the poisons replace.
    attack : CraftingAttack
        The attack that made them; its ``name`` and ``eps`` are recorded with the set.
    extra : dict
        The attack's own figures (distances reached, seconds), recorded with the set.

    Returns
    -------
    PoisonSet
    """
    return PoisonSet(
        x=x,
        y=dataset.y_train[base_indices].copy(),
        base_indices=base_indices,
        target_x=dataset.x_test[goal.target_index].copy(),
        target_label=int(dataset.y_test[goal.target_index]),
        adv_label=goal.adv_label,
        attack=attack.name,
        eps=attack.eps,
        target_index=goal.target_index,
        extra=extra,
    )


# --- the scaffolding of the clean-label attacks that craft against surrogates ----------------

BASE_CHOICES = ("random", "closest")  # how a clean-label attack picks its bases


def check_choice(name: str, option: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`InputError` if ``value`` is not one of ``choices``.

    Parameters
    ----------
    name : str
        The attack, named in the message.
    option : str
        The parameter being checked, e.g. ``'bases'``.
    value : str
        What the user gave.
    choices : tuple of str
        The accepted spellings.
    """
    if value not in choices:
        raise InputError(name, f"{option} must be one of {', '.join(choices)}, got {value!r}")


@dataclass(frozen=True)
class CleanLabelStart:
    """Where a clean-label attack starts: its surrogates, bases and target, on the surrogates' device.

    Attributes
    ----------
    models : list of Classifier, the surrogates in eval mode
    base_indices : int64 array of shape (n_poisons,), the training rows perturbed
    base_u8 : uint8 array of shape (n_poisons, height, width, channels), those rows' images
    base : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
    target : float tensor of shape (1, channels, height, width) in [0, 1], the target test image
    started : time.perf_counter() when crafting began (surrogate training included)
    """

    models: list
    base_indices: np.ndarray
    base_u8: np.ndarray
    base: torch.Tensor
    target: torch.Tensor
    started: float

    @property
    def device(self) -> torch.device:
        """The device the surrogates (and so the crafting) run on."""
        return self.base.device

    def poison_set(self, dataset: ImageDataset, goal: AttackGoal, poisons_u8: np.ndarray, *,
                   attack: CraftingAttack, extra: dict) -> PoisonSet:
        """The crafted set, with the ensemble size and the seconds taken added to ``extra``.

        Parameters
        ----------
        dataset : ImageDataset
            The data set crafted on.
        goal : AttackGoal
            The goal crafted for.
        poisons_u8 : uint8 ndarray of shape (n_poisons, height, width, channels)
            The poisons, one per row of ``base_indices``.
        attack : CraftingAttack
            The attack, whose ``name`` and ``eps`` are recorded.
        extra : dict
            The attack's own figures (feature distances, alignments).

        Returns
        -------
        PoisonSet
        """
        extra = {**extra, "n_surrogates": len(self.models),
                 "seconds": time.perf_counter() - self.started}
        return targeted_poison_set(dataset, goal, poisons_u8, self.base_indices, attack=attack,
                                   extra=extra)


@dataclass(frozen=True, kw_only=True)
class CleanLabelAttack(SurrogateOptions, CraftingAttack):
    """Base of the clean-label attacks that perturb adversarial-class images against surrogates.

    A subclass declares ``name``, ``eps`` (the l-inf radius, 0-255 units), ``bases``
    ({'random', 'closest'}) and its own parameters, and writes only its objective and
    optimisation in ``make_poisons``: :meth:`start` trains (or takes) the surrogates and picks
    the bases, :meth:`random_start`, :meth:`project` and :meth:`to_uint8` keep the iterate in
    the ball, and :meth:`CleanLabelStart.poison_set` records the result.
    """

    needs_surrogate: ClassVar[bool] = True

    def check(self, **positive: float) -> None:
        """Raise :class:`InputError` for a non-positive parameter or an unknown ``bases``.

        Parameters
        ----------
        **positive : float
            The parameters that must be > 0, by name (``eps=8.0, steps=100``).
        """
        check_params(self.name, **positive)
        check_choice(self.name, "bases", self.bases, BASE_CHOICES)

    def start(self, dataset: ImageDataset, goal: AttackGoal, surrogates: list | None,
              show_progress: bool) -> CleanLabelStart:
        """Surrogates, then ``goal.budget`` x n_train bases of the adversarial class, on one device.

        Bases are drawn with ``goal.random_state`` (``bases='random'``) or taken nearest the
        target in the surrogates' feature space (``'closest'``).

        Parameters
        ----------
        dataset : ImageDataset
            The clean data set; bases come from its training split.
        goal : AttackGoal
            The target, the adversarial class, the budget and the seed.
        surrogates : list of Classifier or None
            Models to craft against; None trains this attack's own ensemble.
        show_progress : bool
            Progress bars while surrogates train.

        Returns
        -------
        CleanLabelStart
        """
        started = time.perf_counter()
        models = self.surrogate_models(dataset, goal, surrogates, show_progress)
        device = next(models[0].parameters()).device  # the surrogates' device is the attack's
        target_x = dataset.x_test[goal.target_index]
        distances = (
            feature_distances(models, dataset.x_train, target_x) if self.bases == "closest" else None
        )
        base_indices = choose_bases(
            dataset.y_train,
            goal.adv_label,
            n_poisons_for(goal.budget, len(dataset.y_train)),
            random_state=goal.random_state,
            distances=distances,
        )
        base_u8 = dataset.x_train[base_indices]
        return CleanLabelStart(models, base_indices, base_u8, to_tensor(base_u8).to(device),
                               to_tensor(target_x[None]).to(device), started)

    def random_start(self, base: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """A perturbation drawn uniformly from the ``eps`` ball around ``base`` (kept in [0, 1]).

        Parameters
        ----------
        base : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
            The images the poisons start from.
        gen : torch.Generator
            CPU generator of the draw (one stream per restart, see :func:`seeded_generator`).

        Returns
        -------
        float tensor of base's shape: delta with ``base + delta`` inside the ball.
        """
        noise = (torch.rand(base.shape, generator=gen) * 2 - 1).to(base.device)
        return project_linf(base + noise * (self.eps / 255.0), base, self.eps) - base

    def project(self, x: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
        """:func:`project_linf` of ``x`` into this attack's ``eps`` ball around ``base``.

        Parameters
        ----------
        x : float tensor of shape (n_poisons, channels, height, width)
            The iterate.
        base : float tensor of x's shape in [0, 1]
            The centres.

        Returns
        -------
        float tensor of x's shape, in the ball and in [0, 1]
        """
        return project_linf(x, base, self.eps)

    def to_uint8(self, x: torch.Tensor, base_u8: np.ndarray) -> np.ndarray:
        """:func:`to_uint8_within` this attack's ``eps`` of the uint8 bases.

        Parameters
        ----------
        x : float tensor of shape (n_poisons, channels, height, width) in [0, 1]
            The crafted poisons.
        base_u8 : uint8 ndarray of shape (n_poisons, height, width, channels)
            Their bases.

        Returns
        -------
        uint8 ndarray of shape (n_poisons, height, width, channels)
        """
        return to_uint8_within(x, base_u8, self.eps)


def max_perturbation(poisons: PoisonSet, dataset: ImageDataset) -> np.ndarray:
    """Per-poison l-inf distance (0-255 units) from its base image.

    Parameters
    ----------
    poisons : PoisonSet
        The poisons and the training rows they replace.
    dataset : ImageDataset
        The clean data set whose ``x_train`` holds the bases.

    Returns
    -------
    float64 ndarray of shape (n_poisons,)
    """
    base = dataset.x_train[poisons.base_indices].astype(np.int16)
    diff = np.abs(poisons.x.astype(np.int16) - base)
    return diff.reshape(len(diff), -1).max(axis=1).astype(np.float64) if len(diff) else np.zeros(0)


def check_within_eps(
    poisons: PoisonSet, dataset: ImageDataset, source: str = "poison set"
) -> float:
    """Raise :class:`InputError` if a poison leaves the ``eps`` ball of its base; returns the largest distance.

    A poison set with ``eps`` None (a backdoor) is unbounded and always passes.

    Parameters
    ----------
    poisons : PoisonSet
        The set to check, with the ``eps`` it claims.
    dataset : ImageDataset
        The clean data set whose ``x_train`` holds the bases.
    source : str
        What the message names (a file or option).

    Returns
    -------
    float
        The largest distance of a poison from its base, 0-255 units.
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

    Parameters
    ----------
    poisons : PoisonSet
        The poison set to take the target and rows from.
    dataset : ImageDataset
        The clean data set the bases come from.

    Returns
    -------
    PoisonSet
        Attack ``'clean-control'``, ``eps`` 0.
    """
    base = np.asarray(poisons.base_indices)
    return replace(poisons, x=dataset.x_train[base].copy(), y=dataset.y_train[base].copy(),
                   attack="clean-control", eps=0.0, extra={"control_of": poisons.attack})


def seeded_generator(random_state: int, stream: int = 0) -> torch.Generator:
    """A CPU torch generator for one independent stream (e.g. one restart) of a seeded attack.

    Parameters
    ----------
    random_state : int
        The attack's seed (``AttackGoal.random_state``).
    stream : int
        Which stream: 0, 1, 2, ... give independent draws for the same seed.

    Returns
    -------
    torch.Generator
    """
    return torch.Generator().manual_seed(random_state * 1_000_003 + stream)
