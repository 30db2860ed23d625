"""Spec tests for core/attacks: eps balls, label rules, alignment, seeds, formats."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonlens.attacks import (
    AttackGoal,
    attack_names,
    build_attack,
    check_within_eps,
    choose_bases,
    clean_control,
)
from poisonlens.attacks.base import max_perturbation, project_linf, to_uint8_within, validate_goal
from poisonlens.attacks.gradient_matching import gradient_alignment
from poisonlens.attacks.surrogate import train_surrogates
from poisonlens.data import apply_poisons, load_poisons
from poisonlens.data.datasets import ImageDataset, load_dataset
from poisonlens.data.poisons import save_poisons_folder, save_poisons_npz
from poisonlens.errors import InputError

torch.set_num_threads(1)

# tiny settings: width-4/8 CNNs trained a few epochs, a few crafting steps
TINY = {
    "gradient-matching": {"eps": 16.0, "steps": 30, "restarts": 2, "width": 8, "surrogate_epochs": (10,)},
    "bullseye-polytope": {"eps": 8.0, "steps": 10, "width": 4, "surrogate_epochs": (2,)},
    "patch-backdoor": {},
    "label-flip": {},
}
CLEAN_LABEL = ("gradient-matching", "bullseye-polytope")


@pytest.fixture(scope="module")
def digits() -> ImageDataset:
    """400 train and 60 test images of scikit-learn's digits: enough for every class."""
    full = load_dataset("digits")
    return ImageDataset(full.x_train[:400], full.y_train[:400], full.x_test[:60], full.y_test[:60],
                        full.class_names, "digits-small")


@pytest.fixture(scope="module")
def goal(digits) -> AttackGoal:
    target = 5
    adv = (int(digits.y_test[target]) + 3) % 10
    return AttackGoal(target_index=target, adv_label=adv, budget=0.02, random_state=0)


@pytest.fixture(scope="module")
def crafted(digits, goal) -> dict:
    return {name: build_attack(name, **TINY[name])(digits, goal) for name in TINY}


def test_the_four_attacks_are_registered():
    assert set(TINY) <= set(attack_names())


@pytest.mark.parametrize("name", list(TINY))
def test_poisons_stay_inside_the_eps_ball(crafted, digits, name):
    poisons = crafted[name]
    if poisons.eps is not None:
        assert max_perturbation(poisons, digits).max() <= poisons.eps
    check_within_eps(poisons, digits)


@pytest.mark.parametrize("name", list(TINY))
def test_budget_sets_the_number_of_poisons_and_bases_are_distinct(crafted, name):
    poisons = crafted[name]
    assert poisons.n_poisons == 8  # 2% of 400
    assert len(np.unique(poisons.base_indices)) == poisons.n_poisons


@pytest.mark.parametrize("name", CLEAN_LABEL)
def test_clean_label_attacks_perturb_adv_class_images_and_keep_their_labels(crafted, digits, goal, name):
    poisons = crafted[name]
    assert (digits.y_train[poisons.base_indices] == goal.adv_label).all()
    assert (poisons.y == digits.y_train[poisons.base_indices]).all()
    assert poisons.eps == TINY[name]["eps"]
    assert max_perturbation(poisons, digits).max() > 0


@pytest.mark.parametrize("name", CLEAN_LABEL)
def test_clean_label_target_is_the_clean_test_image(crafted, digits, goal, name):
    poisons = crafted[name]
    assert np.array_equal(poisons.target_x, digits.x_test[goal.target_index])
    assert poisons.target_label == digits.y_test[goal.target_index]
    assert poisons.target_index == goal.target_index and poisons.attack == name


def test_patch_backdoor_relabels_other_classes_and_stamps_the_trigger(crafted, digits, goal):
    poisons = crafted["patch-backdoor"]
    x, y = poisons.trigger_xy
    h, w = poisons.trigger.shape[:2]
    assert poisons.eps is None and poisons.attack == "patch-backdoor"
    assert (digits.y_train[poisons.base_indices] != goal.adv_label).all()
    assert (poisons.y == goal.adv_label).all()
    assert (poisons.x[:, y : y + h, x : x + w] == poisons.trigger).all()
    assert (poisons.target_x[y : y + h, x : x + w] == poisons.trigger).all()


def test_patch_backdoor_clean_label_variant_keeps_adv_class_labels(digits, goal):
    poisons = build_attack("patch-backdoor", relabel=False)(digits, goal)
    assert (digits.y_train[poisons.base_indices] == goal.adv_label).all()
    assert (poisons.y == goal.adv_label).all()


def test_label_flip_relabels_unchanged_images_of_the_target_class(crafted, digits, goal):
    poisons = crafted["label-flip"]
    target_label = digits.y_test[goal.target_index]
    assert poisons.eps == 0.0
    assert (digits.y_train[poisons.base_indices] == target_label).all()
    assert (poisons.y == goal.adv_label).all()
    assert np.array_equal(poisons.x, digits.x_train[poisons.base_indices])


def test_label_flip_takes_the_target_class_images_nearest_the_target(crafted, digits, goal):
    poisons = crafted["label-flip"]
    same = np.flatnonzero(digits.y_train == digits.y_test[goal.target_index])
    diff = digits.x_train[same].astype(float) - digits.x_test[goal.target_index].astype(float)
    nearest = same[np.argsort((diff**2).reshape(len(same), -1).sum(1), kind="stable")[:8]]
    assert set(poisons.base_indices) == set(nearest)


def test_gradient_matching_raises_alignment_over_its_start(crafted):
    extra = crafted["gradient-matching"].extra
    # a tiny surrogate starts well aligned (about 0.84), so the gain is small but clear
    assert extra["alignment"] > extra["alignment_start"] + 0.01
    assert len(extra["restart_alignments"]) == 2


def test_reported_alignment_is_that_of_the_written_poisons(digits, goal):
    attack = build_attack("gradient-matching", **TINY["gradient-matching"])
    models = train_surrogates(digits, attack, random_state=0)
    poisons = attack(digits, goal, surrogates=models)
    assert gradient_alignment(models, poisons) == pytest.approx(poisons.extra["alignment"], abs=1e-5)


def test_bullseye_brings_the_mean_feature_closer_to_the_target(crafted):
    extra = crafted["bullseye-polytope"].extra
    assert extra["feature_distance"] < extra["feature_distance_start"]


@pytest.mark.parametrize("name", list(TINY))
def test_crafting_is_reproducible_with_a_seed(crafted, digits, goal, name):
    again = build_attack(name, **TINY[name])(digits, goal)
    assert np.array_equal(again.x, crafted[name].x)
    assert np.array_equal(again.base_indices, crafted[name].base_indices)


def test_another_seed_gives_other_poisons(crafted, digits, goal):
    other = build_attack("gradient-matching", **TINY["gradient-matching"])(
        digits, AttackGoal(goal.target_index, goal.adv_label, goal.budget, random_state=1))
    assert not np.array_equal(other.x, crafted["gradient-matching"].x)


def test_crafting_never_reads_test_images_other_than_the_target(crafted, digits, goal):
    scrambled = digits.x_test.copy()
    keep = scrambled[goal.target_index].copy()
    scrambled[:] = 255 - scrambled
    scrambled[goal.target_index] = keep
    other = ImageDataset(digits.x_train, digits.y_train, scrambled, digits.y_test, digits.class_names, "x")
    again = build_attack("gradient-matching", **TINY["gradient-matching"])(other, goal)
    assert np.array_equal(again.x, crafted["gradient-matching"].x)


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("fmt", ["npz", "folder"])
def test_both_output_formats_load_back_through_the_training_loader(crafted, digits, tmp_path, name, fmt):
    poisons = crafted[name]
    path = tmp_path / "p.npz" if fmt == "npz" else tmp_path / "p"
    (save_poisons_npz if fmt == "npz" else save_poisons_folder)(poisons, path)
    loaded = load_poisons(path)
    for field in ("x", "y", "base_indices", "target_x"):
        assert np.array_equal(getattr(loaded, field), getattr(poisons, field)), field
    assert (loaded.attack, loaded.eps, loaded.adv_label, loaded.target_label, loaded.target_index) == (
        poisons.attack, poisons.eps, poisons.adv_label, poisons.target_label, poisons.target_index)
    check_within_eps(loaded, digits)
    assert apply_poisons(digits, loaded).is_poison.sum() == poisons.n_poisons


@pytest.mark.parametrize("name", list(TINY))
def test_clean_control_restores_every_poison_to_its_base_image_and_label(crafted, digits, name):
    control = clean_control(crafted[name], digits)
    trained = apply_poisons(digits, control)
    assert np.array_equal(trained.x_train, digits.x_train) and np.array_equal(trained.y_train, digits.y_train)
    assert np.array_equal(control.target_x, crafted[name].target_x) and control.attack == "clean-control"


def test_check_within_eps_rejects_a_poison_outside_the_ball(crafted, digits):
    poisons = crafted["gradient-matching"]
    x = digits.x_train[poisons.base_indices].copy()
    x[3, 0, 0, 0] = 255 if x[3, 0, 0, 0] < 128 else 0
    from dataclasses import replace
    with pytest.raises(InputError, match="poison 3"):
        check_within_eps(replace(poisons, x=x), digits)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.0, 40.0))
def test_rounding_to_uint8_never_leaves_the_ball(seed, eps):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(3, 4, 4, 1), dtype=np.uint8)
    base_t = torch.from_numpy(base).permute(0, 3, 1, 2).float() / 255
    x = project_linf(base_t + torch.from_numpy(rng.normal(0, 0.2, base_t.shape)).float(), base_t, eps)
    out = to_uint8_within(x, base, eps)
    assert np.abs(out.astype(int) - base.astype(int)).max() <= eps


def test_choose_bases_draws_distinct_indices_of_the_asked_class():
    labels = np.array([0, 1, 1, 2, 1, 0, 1])
    chosen = choose_bases(labels, 1, 3, random_state=0)
    assert len(set(chosen)) == 3 and (labels[chosen] == 1).all()


def test_choose_bases_with_distances_takes_the_nearest():
    labels = np.array([1, 1, 0, 1, 1])
    distances = np.array([5.0, 1.0, 0.0, 3.0, 2.0])
    assert choose_bases(labels, 1, 2, random_state=0, distances=distances).tolist() == [1, 4]


def test_choose_bases_refuses_a_budget_larger_than_the_class():
    with pytest.raises(InputError, match="only 2"):
        choose_bases(np.array([1, 1, 0]), 1, 3, random_state=0)


@pytest.mark.parametrize("goal_args, message", [
    ((60, 1), "outside the test split"),
    ((-1, 1), "outside the test split"),
    ((0, 10), "outside"),
    ((0, None), "already the target's label"),
])
def test_a_goal_that_does_not_fit_the_data_is_refused(digits, goal_args, message):
    index, adv = goal_args
    adv = int(digits.y_test[index]) if adv is None else adv
    with pytest.raises(InputError, match=message):
        validate_goal(digits, AttackGoal(index, adv))


def test_unknown_attack_parameters_are_refused():
    with pytest.raises(InputError, match="unknown parameter"):
        build_attack("gradient-matching", epsilon=16)
    with pytest.raises(InputError, match="unknown attack"):
        build_attack("poison-toads")
    with pytest.raises(InputError, match="bases"):
        build_attack("gradient-matching", bases="farthest")
