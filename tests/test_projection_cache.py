"""Numba's on-disk cache for UMAP (poisonlens.numba_cache): where it lives, what it refuses, and
that a second projection loads UMAP's compiled functions instead of compiling them again."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from poisonlens.numba_cache import numba_cache_folder

# A fresh process fits UMAP on 300 planted rows through the projection code and says how many of
# umap's numba functions it compiled and how many it loaded from the cache.
FIT = """
import json, numpy as np
from numba.core.registry import CPUDispatcher
from poisonlens.projection import fit_layout
import umap.umap_, umap.layouts
rng = np.random.default_rng(0)
points = (np.repeat(np.eye(3), 100, 0) + rng.normal(scale=0.05, size=(300, 3))).astype(np.float32)
fit_layout(points, n_epochs=20)
stats = {k: v.stats for m in (umap.umap_, umap.layouts) for k, v in vars(m).items() if isinstance(v, CPUDispatcher)}
print(json.dumps({"hits": sum(sum(s.cache_hits.values()) for s in stats.values()),
                  "missed": sorted(k for k, s in stats.items() if sum(s.cache_misses.values()))}))
"""


def fit_in_fresh_process(cache: Path) -> dict:
    env = {**os.environ, "POISONLENS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("NUMBA_CACHE_DIR", None)
    done = subprocess.run([sys.executable, "-c", FIT], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # two fresh processes fitting UMAP, the first compiling it
def test_a_second_projection_loads_umap_from_the_cache_instead_of_compiling(tmp_path):
    first = fit_in_fresh_process(tmp_path)
    assert len(first["missed"]) >= 3, first  # compiled, and written to the cache
    folder = tmp_path / "numba"
    assert any(folder.rglob("*.nbi")) and any(folder.rglob("*.nbc"))
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    second = fit_in_fresh_process(tmp_path)
    # loaded instead of compiled; numba compiles again only the odd function it cannot cache
    assert second["hits"] >= 2 * len(second["missed"]) and set(second["missed"]) < set(first["missed"]), (first, second)


def test_the_cache_folder_is_private_and_under_the_user_cache_root(tmp_path, monkeypatch):
    monkeypatch.setenv("POISONLENS_CACHE", str(tmp_path / "root"))
    folder = numba_cache_folder()
    assert folder == tmp_path / "root" / "numba"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    os.chmod(folder, 0o777)  # loosened by someone: made private again before use
    assert numba_cache_folder() == folder and stat.S_IMODE(os.stat(folder).st_mode) == 0o700


def test_a_linked_cache_folder_is_not_used(tmp_path, monkeypatch, capsys):
    """numba reads its cache with pickle: a link planted where the cache would be is refused (no
    caching, one line on stderr), and nothing is written where it points."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "numba").symlink_to(elsewhere)
    monkeypatch.setenv("POISONLENS_CACHE", str(tmp_path / "root"))
    assert numba_cache_folder() is None
    assert "no numba cache" in capsys.readouterr().err
    assert list(elsewhere.iterdir()) == []


def test_a_file_where_the_cache_folder_would_be_is_not_used(tmp_path, monkeypatch):
    (tmp_path / "numba").write_text("not a folder")
    monkeypatch.setenv("POISONLENS_CACHE", str(tmp_path))
    assert numba_cache_folder() is None
