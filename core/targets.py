"""Choosing (target, adversarial class) pairs to attack, from a model's test-set probabilities.

Three rules, all restricted to test images the model classifies correctly (a target that is
already misclassified says nothing about an attack):

- ``benchmark``: the poisoning benchmark's rule (Schwarzschild et al., "Just How Toxic is Data
  Poisoning?", which EPIC's paper follows): a target class and a different adversarial class
  drawn uniformly at random, then a random correctly classified test image of the target class;
- ``random``: a random correctly classified image, its adversarial class the model's runner-up;
- ``low-margin``: the correctly classified images with the smallest gap between the top two
  probabilities (the easiest to flip), adversarial class the runner-up.

Pure functions of arrays; :func:`class_probabilities` is the one step that runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poisonlens.errors import InputError

RULES = ("benchmark", "random", "low-margin")


@dataclass(frozen=True)
class Target:
    """One pair to attack: the test image ``index`` should be read as ``adv_class``."""

    index: int  # index of the target in the test split
    label: int  # its true class
    adv_class: int  # the class the attacker wants it read as
    prob_label: float  # the model's probability of the true class (it is correctly classified)


def pick_targets(
    probs: np.ndarray, labels: np.ndarray, n: int, *, rule: str = "benchmark", random_state: int = 0
) -> list[Target]:
    """Choose ``n`` distinct targets by ``rule``.

    Parameters
    ----------
    probs : float ndarray of shape (n_test, n_classes), the model's class probabilities
    labels : int ndarray of shape (n_test,), the true classes
    n : how many targets, >= 1
    rule : {'benchmark', 'random', 'low-margin'}, see the module docstring
    random_state : seed of the draws (``low-margin`` draws nothing)

    Returns
    -------
    list of Target, in the order drawn (``low-margin``: smallest margin first)

    Raises
    ------
    InputError
        For an unknown rule, mismatched shapes, or fewer correctly classified images than ``n``.
    """
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if rule not in RULES:
        raise InputError("--rule", f"unknown rule {rule!r}; use {', '.join(RULES)}")
    if probs.ndim != 2 or labels.shape != (len(probs),) or probs.shape[1] < 2:
        raise InputError("targets", f"probabilities {probs.shape} do not fit labels {labels.shape}")
    if n < 1:
        raise InputError("--n", "must be at least 1")
    order = np.argsort(-probs, axis=1, kind="stable")
    correct = np.flatnonzero(order[:, 0] == labels)
    if len(correct) < n:
        raise InputError("targets", f"only {len(correct)} test images are classified correctly; asked for {n}")
    rng = np.random.default_rng(random_state)
    if rule == "low-margin":
        margin = probs[correct, order[correct, 0]] - probs[correct, order[correct, 1]]
        rows = correct[np.argsort(margin, kind="stable")[:n]]
    elif rule == "random":
        rows = rng.choice(correct, size=n, replace=False)
    else:
        return _benchmark_draw(probs, labels, correct, n, rng)
    return [_target(probs, labels, i, order[i, 1]) for i in rows]


def _target(probs: np.ndarray, labels: np.ndarray, i: int, adv: int) -> Target:
    return Target(int(i), int(labels[i]), int(adv), float(probs[i, labels[i]]))


def _benchmark_draw(probs: np.ndarray, labels: np.ndarray, correct: np.ndarray, n: int,
                    rng: np.random.Generator) -> list[Target]:
    """The benchmark's rule: a random target class, a different adversarial class, then a random
    untaken correctly classified image of the target class (``correct`` is never empty)."""
    n_classes = probs.shape[1]
    by_class = {c: correct[labels[correct] == c] for c in range(n_classes)}
    chosen: list[Target] = []
    taken: set[int] = set()
    for _ in range(100 * n):  # a class with no (untaken) correct image is drawn again
        if len(chosen) == n:
            break
        cls = int(rng.integers(n_classes))
        adv = int(rng.integers(n_classes - 1))
        adv += adv >= cls  # uniform over the other classes
        pool = [i for i in by_class[cls] if i not in taken]
        if not pool:
            continue
        i = int(rng.choice(pool))
        taken.add(i)
        chosen.append(_target(probs, labels, i, adv))
    if len(chosen) < n:
        raise InputError("targets", f"could draw only {len(chosen)} of {n} targets")
    return chosen


def class_probabilities(model, images: np.ndarray, *, batch_size: int = 1000) -> np.ndarray:
    """Class probabilities of ``model`` on uint8 images, in batches on the model's device.

    Parameters
    ----------
    model : a torch classifier (logits out), already on its device
    images : uint8 ndarray of shape (n, height, width, channels)
    batch_size : images per forward pass

    Returns
    -------
    float32 ndarray of shape (n, n_classes)
    """
    import torch

    from poisonlens.models import to_tensor

    device = next(model.parameters()).device
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            x = to_tensor(images[lo:lo + batch_size]).to(device)
            out.append(torch.softmax(model(x).float(), 1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
