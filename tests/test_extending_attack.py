"""docs/extending.md's worked example of an attack runs as written: the file and its test (the
defense and data-format examples: test_extending.py; the page example: test_pages.py)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from poisonlens.attacks import base
from poisonlens.cli import main
from poisonlens.data import load_poisons

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def _blocks(section: str) -> dict[str, str]:
    """The python blocks of a section of docs/extending.md, by the path in their first line."""
    text = DOC.read_text(encoding="utf-8")
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", body, flags=re.S)
    return {block.splitlines()[0].removeprefix("# "): block for block in blocks}


@pytest.fixture
def random_noise(tmp_path, monkeypatch):
    """The documented attack module, imported from a copy (and unregistered afterwards)."""
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    path = tmp_path / "random_noise.py"
    path.write_text(_blocks("An attack")["core/attacks/random_noise.py"])
    spec = importlib.util.spec_from_file_location("doc_random_noise", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_documented_attack_passes_its_documented_test(random_noise):
    namespace: dict = {}
    exec(_blocks("An attack")["tests/test_attack_random_noise.py"], namespace)  # noqa: S102
    tests = [f for name, f in namespace.items() if name.startswith("test_")]
    assert tests
    for test in tests:
        test()


def test_the_documented_attack_is_offered_by_craft(random_noise, tmp_path):
    out = tmp_path / "noise"
    assert main(["craft", "--attack", "random-noise", "--param", "eps=4", "--dataset", "digits",
                 "--target-index", "12", "--adv-class", "3", "--budget", "0.02", "--out", str(out),
                 "--quiet"]) == 0
    folder, npz = load_poisons(out), load_poisons(out / "poisons.npz")
    assert folder.attack == npz.attack == "random-noise" and npz.eps == 4
    assert np.array_equal(folder.x, npz.x)
