"""Shared fixtures: small real inputs (digits, tiny CNNs) so the suite stays fast on 2 cores."""

from __future__ import annotations

import os
from pathlib import Path

import hypothesis
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# next to the checkout (/work/main -> /work/shared), or above a worktree (/work/wt/NAME)
CIFAR_SUBSET = next(
    (p for p in (R / "shared" / "data" / "cifar10-subset" for R in (REPO.parent, REPO.parent.parent))
     if p.is_dir()),
    REPO.parent / "shared" / "data" / "cifar10-subset",
)

torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# No per-example deadline: speed is measured in bench/, never by tests, and a loaded machine
# made hypothesis fail test_roc_auc_equals_sklearn on time alone (DeadlineExceeded).
hypothesis.settings.register_profile("poisonlens", deadline=None)
hypothesis.settings.load_profile("poisonlens")


def pytest_configure(config):
    # The ImageFolder decode cache goes to a per-session temporary folder, never ~/.cache.
    import tempfile

    os.environ.setdefault("POISONLENS_CACHE", tempfile.mkdtemp(prefix="poisonlens-cache-"))
    # The New run page's record of launched runs, likewise (never ~/.local/state).
    os.environ.setdefault("POISONLENS_STATE_DIR", tempfile.mkdtemp(prefix="poisonlens-state-"))


def tiny_config(**overrides):
    """A digits run that trains in a second or two."""
    from poisonlens.train import TrainConfig

    base = dict(epochs=4, width=4, snapshot_every=2, drop_after=0, stop_after=100, batch_size=256)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def cifar_subset() -> Path:
    if not (CIFAR_SUBSET / "train").is_dir():
        pytest.skip(f"CIFAR-10 subset not found at {CIFAR_SUBSET}")
    return CIFAR_SUBSET


@pytest.fixture
def one_set(tmp_path) -> Path:
    """A folder holding one label-flip poison set, ``a.npz``, for digits (20 poisons)."""
    from tests.test_evaluate import label_flip_set

    folder = tmp_path / "sets"
    folder.mkdir()
    label_flip_set(folder / "a.npz", 20, 0)
    return folder
