"""Small real runs for the dashboard tests: digits, a tiny CNN, a few epochs (seconds each).

Test modules wrap :func:`runs_folder` in a session-scoped ``dashboard_runs`` fixture; the
runs are made once per test session, whichever module asks first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import tiny_config

POISON_RUN = "epic-poisoned"
CLEAN_RUN = "random-clean"
N_POISONS = 24
ADV_LABEL = 7
_MADE: dict[str, Path] = {}


def make_label_flip(path: Path) -> Path:
    """A label-flip poison set on digits: class-1 training images relabelled as ``ADV_LABEL``."""
    from poisonlens.data import load_dataset
    from poisonlens.data.poisons import PoisonSet, save_poisons_npz

    data = load_dataset("digits")
    base = np.flatnonzero(data.y_train == 1)[:N_POISONS]
    target_index = int(np.flatnonzero(data.y_test == 1)[0])
    poisons = PoisonSet(x=data.x_train[base], y=np.full(len(base), ADV_LABEL, np.int64), base_indices=base,
                        target_x=data.x_test[target_index], target_label=1, adv_label=ADV_LABEL,
                        attack="label-flip", eps=None, target_index=target_index)
    save_poisons_npz(poisons, path)
    return path


def make_runs(root: Path) -> Path:
    """Two finished runs in ``root/runs``: EPIC on a poisoned set (with a stored UMAP map) and a
    clean run under the random defense (no map yet)."""
    from poisonlens.projection import compute_projection
    from poisonlens.train import train

    runs = root / "runs"
    poisons = make_label_flip(root / "label-flip.npz")
    train(tiny_config(epochs=4, poisons=str(poisons), defense="epic", defense_params={"subset_size": 0.2},
                      drop_after=2), runs / POISON_RUN, show_progress=False)
    compute_projection(runs / POISON_RUN, method="umap", max_fit=400)
    train(tiny_config(epochs=2, defense="random", defense_params={"fraction": 0.05}, drop_after=2),
          runs / CLEAN_RUN, show_progress=False)
    return runs


def runs_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs folder of :func:`make_runs`, made once per test session (every module's
    ``dashboard_runs`` fixture calls this)."""
    if "runs" not in _MADE:
        _MADE["runs"] = make_runs(tmp_path_factory.mktemp("dashboard"))
    return _MADE["runs"]
