"""The bundled sample: the committed copy matches its manifest, and every run opens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from poisonlens.data import load_poisons
from poisonlens.store import list_runs, open_run
from sample_data.make_sample import MANIFEST, RUNS, recipe
from sample_data.manifest import checksums, differences

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


@pytest.fixture(scope="module")
def manifest() -> dict:
    if not MANIFEST.is_file():
        pytest.fail(f"{MANIFEST} is missing: run `make sample`")
    return json.loads(MANIFEST.read_text())


def test_committed_sample_matches_its_manifest(manifest):
    assert differences(manifest["files"], checksums(SAMPLE)) == []


def test_manifest_records_the_recipe_make_sample_uses(manifest):
    assert manifest["recipe"] == json.loads(json.dumps(recipe()))


def test_every_sample_run_is_finished_with_a_map(manifest):
    infos = {i.name: i for i in list_runs(SAMPLE / "runs")}
    assert set(infos) == set(RUNS)
    for name in RUNS:
        run = open_run(SAMPLE / "runs" / name)
        assert infos[name].status == "finished"
        assert run.projection("umap") is not None


def test_sample_poison_set_is_clean_label_within_eps():
    poisons = load_poisons(SAMPLE / "poisons" / "demo" / "poisons.npz")
    from poisonlens.data import load_dataset

    base = load_dataset("digits").x_train[poisons.base_indices].astype(int)
    assert (abs(poisons.x.astype(int) - base).max()) <= poisons.eps
    assert (poisons.y == poisons.adv_label).all()


def test_sample_is_small_enough_for_git():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size < 15 * 2**20
