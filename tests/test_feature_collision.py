"""Feature collision (Poison Frogs): poisons whose features move onto the target's, within eps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonlens.attacks import AttackGoal, build_attack, check_within_eps
from poisonlens.attacks.base import max_perturbation
from poisonlens.attacks.feature_collision import relative_distance
from poisonlens.attacks.surrogate import train_surrogates
from poisonlens.data import load_dataset
from poisonlens.errors import InputError
from poisonlens.models import to_tensor

GOAL = AttackGoal(target_index=0, adv_label=3, budget=0.005, random_state=0)  # 7 poisons


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def tiny_model(digits):
    # A few epochs: an untrained net maps every digit to nearly the same feature.
    options = build_attack("feature-collision", width=4, surrogate_epochs=(4,))
    return train_surrogates(digits, options, random_state=0)[0]


def craft(digits, model, **params):
    attack = build_attack("feature-collision", width=4, **params)
    return attack(digits, GOAL, surrogates=[model])


def distance(model, images, target) -> np.ndarray:
    with torch.no_grad():
        return relative_distance([model], to_tensor(images), to_tensor(target[None])).numpy()


def test_each_poisons_feature_moves_onto_the_targets(digits, tiny_model):
    poisons = craft(digits, tiny_model, eps=32, steps=60, lr=0.01)
    before = distance(tiny_model, digits.x_train[poisons.base_indices], poisons.target_x)
    after = distance(tiny_model, poisons.x, poisons.target_x)
    assert (after < 0.5 * before).all(), (before, after)
    assert poisons.extra["feature_distance"] < 0.5 * poisons.extra["feature_distance_start"]


def test_every_poison_stays_within_eps_of_its_base_and_keeps_its_label(digits, tiny_model):
    poisons = craft(digits, tiny_model, eps=8, steps=30, lr=0.05)
    assert max_perturbation(poisons, digits).max() <= 8
    assert check_within_eps(poisons, digits) <= 8
    assert (poisons.y == digits.y_train[poisons.base_indices]).all()
    assert (poisons.y == GOAL.adv_label).all()  # clean label: bases of the adversarial class
    assert len(np.unique(poisons.base_indices)) == poisons.n_poisons == 7  # one poison per base


def test_a_larger_ball_lets_the_feature_get_closer(digits, tiny_model):
    small = craft(digits, tiny_model, eps=4, steps=40, lr=0.05)
    large = craft(digits, tiny_model, eps=64, steps=40, lr=0.05)
    assert large.extra["feature_distance"] < small.extra["feature_distance"]


def test_a_heavier_beta_keeps_the_image_closer_to_its_base(digits, tiny_model):
    free = craft(digits, tiny_model, eps=255, steps=40, lr=0.05, beta=0.0, watermark=0.0)
    held = craft(digits, tiny_model, eps=255, steps=40, lr=0.05, beta=50.0, watermark=0.0)
    moved = lambda p: np.abs(p.x.astype(int) - digits.x_train[p.base_indices].astype(int)).sum()  # noqa: E731
    assert moved(held) < 0.5 * moved(free)


def test_bad_parameters_are_one_line_input_errors():
    with pytest.raises(InputError, match="eps must be positive"):
        build_attack("feature-collision", eps=0)
    with pytest.raises(InputError, match="watermark"):
        build_attack("feature-collision", watermark=2.0)
