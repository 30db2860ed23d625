"""The ``random`` defense: seeded random drops, optionally as many as EPIC would drop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from poisonlens.defense import build_defense, defense_names
from poisonlens.defense.base import Snapshot
from poisonlens.defense.epic import select
from poisonlens.defense.random import RandomDrop


def snapshot(n: int = 200, *, epoch: int = 2, seed: int = 0) -> Snapshot:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    p = rng.dirichlet(np.ones(3), n)
    p[np.arange(n), labels] -= 1
    return Snapshot(
        epoch=epoch,
        labels=labels,
        grads=p.astype(np.float32),
        embeddings=np.zeros((n, 2), np.float32),
        loss=np.zeros(n, np.float32),
        confidence=np.zeros(n, np.float32),
        prediction=labels,
    )


def test_random_is_registered():
    assert "random" in defense_names()
    assert isinstance(build_defense("random", fraction=0.1), RandomDrop)


@settings(max_examples=30, deadline=None)
@given(
    fraction=st.floats(0, 1), n=st.integers(1, 300), keep=st.floats(0, 1), seed=st.integers(0, 1000)
)
def test_fraction_drops_that_share_of_the_active_examples_only(fraction, n, keep, seed):
    active = np.random.default_rng(seed).random(n) < keep
    result = RandomDrop(fraction=fraction)(snapshot(n, seed=seed), active)
    assert result.suspect.sum() == round(fraction * active.sum())
    assert not (result.suspect & ~active).any()


def test_match_subset_drops_as_many_as_epic_would():
    snap = snapshot(300, seed=1)
    active = np.arange(300) % 5 != 0
    result = RandomDrop(match_subset=0.3, random_state=4)(snap, active)
    epic = select(snap.grads, snap.labels, active=active, subset_size=0.3, random_state=4)
    assert epic.drop.sum() > 0
    assert result.suspect.sum() == epic.drop.sum() == result.info["n_drop"]


def test_counts_drop_the_scheduled_number_at_each_epoch_even_with_string_keys():
    active = np.ones(200, dtype=bool)
    drop = RandomDrop(counts={"2": 7, "4": 3})
    assert drop(snapshot(epoch=2), active).suspect.sum() == 7
    assert drop(snapshot(epoch=4), active).suspect.sum() == 3
    assert drop(snapshot(epoch=6), active).suspect.sum() == 0


def test_scores_are_uniform_for_active_and_nan_for_inactive_examples():
    active = np.arange(200) % 3 != 0
    score = RandomDrop(fraction=0.2)(snapshot(), active).score
    assert np.all(np.isnan(score[~active]))
    assert np.all((score[active] >= 0) & (score[active] < 1))


def test_the_suspects_are_the_highest_scores():
    result = RandomDrop(fraction=0.25)(snapshot(), np.ones(200, dtype=bool))
    assert result.score[result.suspect].min() > result.score[~result.suspect].max()


def test_the_same_seed_and_epoch_give_the_same_draws():
    active = np.ones(200, dtype=bool)
    a = RandomDrop(fraction=0.1, random_state=3)(snapshot(epoch=4), active)
    b = RandomDrop(fraction=0.1, random_state=3)(snapshot(epoch=4), active)
    assert np.array_equal(a.score, b.score) and np.array_equal(a.suspect, b.suspect)


@pytest.mark.parametrize(("seed", "epoch"), [(4, 4), (3, 5)])
def test_another_seed_or_epoch_gives_other_draws(seed, epoch):
    active = np.ones(200, dtype=bool)
    a = RandomDrop(fraction=0.1, random_state=3)(snapshot(epoch=4), active)
    b = RandomDrop(fraction=0.1, random_state=seed)(snapshot(epoch=epoch), active)
    assert not np.array_equal(a.suspect, b.suspect)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({}, "exactly one of fraction, match_subset or counts"),
        ({"fraction": 0.1, "match_subset": 0.1}, "exactly one of fraction, match_subset or counts"),
        ({"counts": {"2": -1}}, "counts must be non-negative"),
        ({"fraction": 1.5}, r"fraction must be in \[0, 1\]"),
        ({"match_subset": 0}, r"match_subset must be in \(0, 1\]"),
        ({"fraction": 0.1, "random_state": -1}, "random_state must be at least 0"),
    ],
)
def test_bad_parameters_are_clear_errors(params, message):
    with pytest.raises(ValueError, match=message):
        RandomDrop(**params)
