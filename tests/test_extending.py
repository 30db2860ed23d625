"""docs/extending.md's worked examples run as written: a defense and a data format, one file each.

Each block of the page is executed as the module it says it is (registered into a copy of the
registry, so other tests never see it), then every claim the page makes about it is checked.
"""

from __future__ import annotations

import os
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import poisonlens.data_formats as formats
from poisonlens.config import TrainConfig, check_dataset_spec
from poisonlens.data import load_dataset
from poisonlens.defense import base
from poisonlens.errors import InputError
from poisonlens.options import fill_names

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def doc_block(first_line: str) -> str:
    """The ```python block of docs/extending.md whose first line is ``first_line``."""
    for block in re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S):
        if block.startswith(first_line + "\n"):
            return block
    raise AssertionError(f"docs/extending.md has no block starting {first_line!r}")


def run_block(monkeypatch, first_line: str, module: str) -> types.ModuleType:
    """Execute the block as module ``module`` (dataclasses look their module up by name)."""
    mod = types.ModuleType(module)
    monkeypatch.setitem(sys.modules, module, mod)
    exec(compile(doc_block(first_line), f"docs/extending.md ({first_line})", "exec"), mod.__dict__)
    return mod


@pytest.fixture
def confidence(monkeypatch):
    """The documented defense, registered in a copy of the registry."""
    base._load_builtin()
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    return run_block(monkeypatch, "# core/defense/confidence.py", "poisonlens.defense.confidence")


@pytest.fixture
def csv_format(monkeypatch):
    """The documented data format, registered in a copy of the registry."""
    formats._load_builtin()
    monkeypatch.setattr(formats, "_REGISTRY", dict(formats._REGISTRY))
    return run_block(monkeypatch, "# core/data_formats/csv.py", "poisonlens.data_formats.csv")


def planted_snapshot(n: int = 40, planted=(3, 17, 29)) -> base.Snapshot:
    """Examples whose loss is small but for the ``planted`` ones (loss 3: p(label) = 0.05)."""
    loss = np.full(n, 0.05, dtype=np.float32)
    loss[list(planted)] = 3.0
    return base.Snapshot(
        epoch=4,
        labels=np.arange(n) % 2,
        grads=np.zeros((n, 2), np.float32),
        embeddings=np.zeros((n, 3), np.float32),
        loss=loss,
        confidence=np.exp(-loss),
        prediction=np.arange(n) % 2,
    )


def test_the_documented_defense_finds_the_planted_examples_among_the_active(confidence):
    defense = base.build_defense("confidence", fraction=0.1)
    active = np.ones(40, dtype=bool)
    active[29] = False  # a planted example already dropped: never scored again
    result = defense(planted_snapshot(), active)
    # floor(0.1 * 39) = 3 suspects: the two active planted examples, then the first of the
    # tied rest (ties go to the lower index)
    assert np.flatnonzero(result.suspect).tolist() == [0, 3, 17]
    assert np.isnan(result.score[29]) and result.info["fraction"] == 0.1
    again = defense(planted_snapshot(), active)
    assert np.array_equal(again.suspect, result.suspect)


def test_the_documented_defense_is_in_every_registry_reader(confidence):
    from poisonlens.evaluate import parse_defense

    assert "confidence" in base.defense_names()
    assert base.parse_spec("confidence-0.1") == ("confidence", {"fraction": 0.1})
    assert parse_defense("confidence-0.1")["defense_params"] == {"fraction": 0.1}
    assert base.spec_label("confidence", {"fraction": 0.1}) == "confidence-0.1"
    assert "confidence-<fraction>" in base.spec_forms()
    [option] = base.defense_options("confidence")
    assert (option.name, option.metadata["range"].describe()) == ("fraction", "must be in [0, 1]")
    assert base.output_columns("confidence")["score"] == "1 - p(label), higher = more suspicious"
    assert "confidence" in fill_names("{defenses}")


def test_the_documented_defense_refuses_a_fraction_outside_its_range_in_one_line(confidence):
    config = TrainConfig(defense="confidence", defense_params={"fraction": 1.5})
    with pytest.raises(InputError) as caught:
        config.check_defense()
    assert str(caught.value) == "--defense-param: confidence: fraction must be in [0, 1], got 1.5"


def write_csv(path: Path, rows: list[tuple[str, int, list[int]]]) -> Path:
    path.write_text("".join(f"{s},{y},{','.join(map(str, p))}\n" for s, y, p in rows))
    return path


def test_the_documented_format_round_trips_pixels_and_labels(csv_format, tmp_path):
    rows = [("train", c, [(16 * c + i) % 256 for i in range(16)]) for c in (0, 1, 2, 1)]
    rows.append(("test", 2, [7] * 16))
    path = write_csv(tmp_path / "faces.csv", rows)
    data = load_dataset(f"csv:{path}")
    assert data.x_train.shape == (4, 4, 4, 1) and data.x_test.shape == (1, 4, 4, 1)
    assert data.y_train.tolist() == [0, 1, 2, 1] and data.y_test.tolist() == [2]
    assert data.x_train[2].ravel().tolist() == rows[2][2]
    assert data.class_names == ("0", "1", "2") and data.name == f"csv:{path}"


def test_the_documented_format_is_in_the_help_and_the_spec_check(csv_format, tmp_path):
    assert "csv:<file>" in fill_names("{formats}")
    assert "csv:<file>" in fill_names(TrainConfig.__dataclass_fields__["dataset"].metadata["help"])
    check_dataset_spec("csv:faces.csv")
    TrainConfig(dataset="csv:faces.csv").validate()
    with pytest.raises(InputError, match=r"cvs:faces.csv: unknown data set; use .*csv:<file>"):
        check_dataset_spec("cvs:faces.csv")


@pytest.mark.parametrize(
    "text, problem",
    [
        ("train,0,1,2,3\ntrain,1,1,2\n", "every line must be split,label and the k\\*k pixels"),
        ("train,0,1,2,3,300\n", "pixels must be in 0..255"),
        ("train,zero,1,2,3,4\n", "labels and pixels must be integers"),
    ],
)
def test_the_documented_format_refuses_a_bad_file_in_one_line(csv_format, tmp_path, text, problem):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(InputError, match=f"^{re.escape(str(path))}: {problem}"):
        load_dataset(f"csv:{path}")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_the_documented_format_refuses_a_fifo_without_blocking(csv_format, tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="data.csv"):
        load_dataset(f"csv:{fifo}")
