"""Poison sets: both formats round-trip, the benchmark's folders read, bad sets are named."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from poisonlens.data.datasets import ImageDataset
from poisonlens.data.poisons import (
    PoisonSet,
    apply_poisons,
    load_poisons,
    save_poisons_folder,
    save_poisons_npz,
    validate_poisons,
)
from poisonlens.errors import InputError


def make_dataset(n_train: int = 10, channels: int = 3) -> ImageDataset:
    """n_train 6x5 images whose pixels all equal their index; 3 classes."""
    x = np.broadcast_to(
        np.arange(n_train, dtype=np.uint8)[:, None, None, None], (n_train, 6, 5, channels)
    )
    y = np.arange(n_train, dtype=np.int64) % 3
    return ImageDataset(x.copy(), y, x[:4].copy(), y[:4].copy(), ("a", "b", "c"), "toy")


def make_poisons(channels: int = 3, **changes) -> PoisonSet:
    rng = np.random.default_rng(0)
    poisons = PoisonSet(
        x=rng.integers(0, 256, (3, 6, 5, channels), dtype=np.uint8),
        y=np.array([2, 2, 1]),
        base_indices=np.array([7, 1, 4]),
        target_x=rng.integers(0, 256, (6, 5, channels), dtype=np.uint8),
        target_label=0,
        adv_label=2,
    )
    return dataclasses.replace(poisons, **changes)


def make_backdoor(channels: int = 3) -> PoisonSet:
    trigger = np.random.default_rng(1).integers(0, 256, (2, 3, channels), dtype=np.uint8)
    poisons = make_poisons(
        channels, attack="patch-backdoor", eps=8.0, trigger=trigger, trigger_xy=(1, 3)
    )
    target_x = poisons.target_x.copy()
    target_x[3:5, 1:4] = trigger  # a backdoor target carries its trigger
    return dataclasses.replace(poisons, target_x=target_x, target_index=2, extra={"seed": 5})


def assert_same(a: PoisonSet, b: PoisonSet) -> None:
    for f in dataclasses.fields(PoisonSet):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if isinstance(va, np.ndarray) or isinstance(vb, np.ndarray):
            np.testing.assert_array_equal(va, vb, err_msg=f.name)
            assert np.asarray(va).dtype == np.asarray(vb).dtype, f.name
        else:
            assert va == vb, f.name


def write_benchmark_folder(folder: Path, items, base, target) -> Path:
    folder.mkdir()
    for name, obj in (("poisons", items), ("base_indices", base), ("target", target)):
        (folder / f"{name}.pickle").write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    return folder


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize(
    "poisons", [make_poisons(), make_poisons(1), make_backdoor(), make_backdoor(1)]
)
def test_npz_round_trip_is_equal(tmp_path, poisons):
    save_poisons_npz(poisons, tmp_path / "p.npz")
    assert_same(load_poisons(tmp_path / "p.npz"), poisons)


@pytest.mark.parametrize(
    "poisons", [make_poisons(), make_poisons(1), make_backdoor(), make_backdoor(1)]
)
def test_folder_round_trip_is_equal(tmp_path, poisons):
    save_poisons_folder(poisons, tmp_path / "p")
    assert_same(load_poisons(tmp_path / "p"), poisons)


def test_npz_keeps_its_file_name_without_npz_suffix(tmp_path):
    save_poisons_npz(make_poisons(), tmp_path / "poisons.bin")
    assert_same(load_poisons(tmp_path / "poisons.bin"), make_poisons())


def test_folder_is_what_the_benchmark_writes(tmp_path):
    poisons = make_backdoor()
    save_poisons_folder(poisons, tmp_path)
    items = pickle.loads((tmp_path / "poisons.pickle").read_bytes())
    assert all(type(im) is Image.Image and type(label) is int for im, label in items)
    assert pickle.loads((tmp_path / "base_indices.pickle").read_bytes()) == [7, 1, 4]
    image, label, patch, xy = pickle.loads((tmp_path / "target.pickle").read_bytes())
    assert (image.mode, label, xy) == ("RGB", 0, [1, 3])
    assert patch.shape == (3, 2, 3) and patch.dtype == np.float32 and patch.max() <= 1
    assert json.loads((tmp_path / "poisonlens.json").read_text())["adv_label"] == 2


# ---------------------------------------------------------------- benchmark folders


def test_benchmark_folder_takes_adv_label_from_the_poison_labels(tmp_path):
    items = [(Image.new("RGB", (5, 6), (i, 0, 0)), label) for i, label in enumerate([4, 4, 1])]
    folder = write_benchmark_folder(
        tmp_path / "p", items, np.array([3, 0, 8]), (Image.new("RGB", (5, 6)), 2)
    )
    poisons = load_poisons(folder)
    assert (poisons.adv_label, poisons.target_label, poisons.attack, poisons.target_index) == (
        4,
        2,
        "unknown",
        -1,
    )
    assert poisons.x.shape == (3, 6, 5, 3) and poisons.x[1, 0, 0, 0] == 1
    np.testing.assert_array_equal(poisons.base_indices, [3, 0, 8])


def test_benchmark_patch_tensor_is_pasted_onto_the_target(tmp_path):
    torch = pytest.importorskip("torch")
    items = [(Image.new("RGB", (8, 8)), 1)]
    patch = torch.ones(3, 2, 2)  # as craft_poisons_htbd.py saves it: floats in [0, 1]
    target = (Image.new("RGB", (8, 8)), 0, patch, [5, 1])
    poisons = load_poisons(write_benchmark_folder(tmp_path / "p", items, [0], target))
    assert poisons.attack == "patch-backdoor" and poisons.trigger_xy == (5, 1)
    np.testing.assert_array_equal(poisons.trigger, np.full((2, 2, 3), 255, np.uint8))
    assert poisons.target_x[1:3, 5:7].min() == 255 and poisons.target_x.sum() == 255 * 12


def test_grey_benchmark_target_beside_colour_poisons_becomes_rgb(tmp_path):
    items = [(Image.new("RGB", (5, 6)), 1)]
    folder = write_benchmark_folder(tmp_path / "p", items, [0], (Image.new("L", (5, 6), 9), 0))
    np.testing.assert_array_equal(load_poisons(folder).target_x[0, 0], [9, 9, 9])


def test_benchmark_pickle_that_runs_code_is_refused(tmp_path):
    folder = write_benchmark_folder(tmp_path / "p", [], [], (Image.new("L", (5, 6)), 0))
    (folder / "target.pickle").write_bytes(b"cos\nsystem\n(S'touch MARKER'\ntR.")
    with pytest.raises(InputError, match=r"target.pickle: refused to unpickle 'os.system'"):
        load_poisons(folder)


@pytest.mark.parametrize(
    "items, base, target, message",
    [
        (
            [(np.zeros((6, 5)), 1)],
            [0],
            (Image.new("L", (5, 6)), 0),
            "poisons.pickle: item 0 is not a",
        ),
        (
            [(Image.new("L", (5, 6)), 1), (Image.new("L", (4, 4)), 1)],
            [0, 1],
            (Image.new("L", (5, 6)), 0),
            "poisons.pickle, item 1: image is 4x4",
        ),
        (
            [(Image.new("L", (5, 6)), 1)],
            [0.5],
            (Image.new("L", (5, 6)), 0),
            "base_indices.pickle: expected a list",
        ),
        (
            [(Image.new("L", (5, 6)), 1)],
            [0, 1],
            (Image.new("L", (5, 6)), 0),
            r"base_indices.pickle: field 'base_indices' has shape \(2,\)",
        ),
        (
            [(Image.new("L", (5, 6)), 1)],
            [0],
            (Image.new("L", (5, 6)),),
            "target.pickle: expected \\(PIL image, label\\)",
        ),
        (
            [(Image.new("L", (5, 6)), 1)],
            [0],
            (Image.new("L", (5, 6)), 0, np.ones((1, 2, 2)), [4, 0]),
            r"target.pickle: field '\[x, y\]' puts the 2x2 patch at \(4, 0\), outside",
        ),
        (
            [(Image.new("L", (5, 6)), 1)],
            [0],
            (Image.new("L", (5, 6)), 0, np.full((1, 2, 2), 3.0), [0, 0]),
            "target.pickle: field 'patch' has float values outside",
        ),
        ([], [], (Image.new("L", (5, 6)), 0), "poisons.pickle: holds no poison"),
    ],
)
def test_bad_benchmark_folder_names_file_and_field(tmp_path, items, base, target, message):
    folder = write_benchmark_folder(tmp_path / "p", items, base, target)
    with pytest.raises(InputError, match=message):
        load_poisons(folder)


def test_benchmark_folder_missing_a_file_names_it(tmp_path):
    folder = write_benchmark_folder(tmp_path / "p", [], [], (Image.new("L", (5, 6)), 0))
    (folder / "base_indices.pickle").unlink()
    with pytest.raises(InputError, match="base_indices.pickle: no such file"):
        load_poisons(folder)


def test_side_file_with_a_wrong_type_is_named(tmp_path):
    save_poisons_folder(make_poisons(), tmp_path)
    (tmp_path / "poisonlens.json").write_text(json.dumps({"adv_label": "two"}))
    with pytest.raises(InputError, match="poisonlens.json: field 'adv_label' has the wrong type"):
        load_poisons(tmp_path)


# ---------------------------------------------------------------- npz errors


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("x", np.zeros((3, 6, 5, 3), np.float32), "field 'x' has dtype float32, expected uint8"),
        ("y", np.array([1, 2]), r"field 'y' has shape \(2,\), expected \(3,\)"),
        ("base_indices", np.array([1, 1, 2]), "field 'base_indices' repeats index 1"),
        ("target_x", np.zeros((6, 6, 3), np.uint8), r"field 'target_x' has shape \(6, 6, 3\)"),
        (
            "adv_label",
            np.array([1, 2]),
            "field 'adv_label' is int64 of shape \\(2,\\), expected a single value",
        ),
        ("target_label", None, "field 'target_label' is missing"),
        ("format_version", np.array(99), "format version 99 is newer"),
    ],
)
def test_bad_npz_field_names_file_and_field(tmp_path, field, value, message):
    save_poisons_npz(make_poisons(), tmp_path / "p.npz")
    fields = dict(np.load(tmp_path / "p.npz"))
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(InputError, match=f"^{tmp_path / 'bad.npz'}: {message}"):
        load_poisons(tmp_path / "bad.npz")


def test_npz_with_only_required_fields_loads_with_defaults(tmp_path):
    required = ("x", "y", "base_indices", "target_x", "target_label", "adv_label")
    np.savez(tmp_path / "p.npz", **{f: getattr(make_poisons(), f) for f in required})
    assert_same(load_poisons(tmp_path / "p.npz"), make_poisons())


def test_missing_poison_path_is_named(tmp_path):
    with pytest.raises(InputError, match="absent: no such file or folder"):
        load_poisons(tmp_path / "absent")


# ---------------------------------------------------------------- against a data set


@pytest.mark.parametrize(
    "poisons, message",
    [
        (
            make_poisons(1),
            r"field 'x' has images of shape \(6, 5, 1\), but the data set 'toy' has \(6, 5, 3\): made for another image size",
        ),
        (make_poisons(y=np.array([2, 3, 1])), r"field 'y' has label 3, outside \[0, 3\)"),
        (make_poisons(adv_label=5), r"field 'adv_label' has label 5"),
        (
            make_poisons(base_indices=np.array([7, 10, 4])),
            r"field 'base_indices' has index 10, outside \[0, 10\)",
        ),
        (make_poisons(base_indices=np.array([7, -1, 4])), r"field 'base_indices' has index -1"),
        (make_poisons(base_indices=np.array([7, 4, 4])), "field 'base_indices' repeats index 4"),
        (make_poisons(target_index=4), r"field 'target_index' has index 4, outside \[0, 4\)"),
    ],
)
def test_poisons_that_do_not_fit_the_dataset_are_named(poisons, message):
    with pytest.raises(InputError, match=f"^my.npz: {message}"):
        validate_poisons(poisons, make_dataset(), source="my.npz")


def test_apply_poisons_replaces_the_base_rows_and_marks_them():
    dataset, poisons = make_dataset(), make_poisons()
    poisoned = apply_poisons(dataset, poisons)
    np.testing.assert_array_equal(np.flatnonzero(poisoned.is_poison), [1, 4, 7])
    np.testing.assert_array_equal(poisoned.x_train[[7, 1, 4]], poisons.x)
    np.testing.assert_array_equal(poisoned.y_train[[7, 1, 4]], poisons.y)
    np.testing.assert_array_equal(poisoned.x_train[0], dataset.x_train[0])
    np.testing.assert_array_equal(poisoned.base_index, np.arange(10))
    assert poisoned.dataset.x_test is dataset.x_test


def test_apply_without_poisons_is_the_clean_set():
    poisoned = apply_poisons(make_dataset(), None)
    assert not poisoned.is_poison.any() and poisoned.poisons is None


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(0, 29), unique=True, max_size=30))
def test_apply_poisons_marks_exactly_the_base_indices(base):
    dataset = make_dataset(30)
    n = len(base)
    poisons = make_poisons(
        x=np.full((n, 6, 5, 3), 200, np.uint8),
        y=np.zeros(n, np.int64),
        base_indices=np.array(base, np.int64),
    )
    poisoned = apply_poisons(dataset, poisons)
    assert poisoned.n_samples == 30 and poisoned.is_poison.sum() == n
    assert set(np.flatnonzero(poisoned.is_poison)) == set(base)
    assert (poisoned.x_train[poisoned.is_poison] == 200).all()
    np.testing.assert_array_equal(
        poisoned.x_train[~poisoned.is_poison], dataset.x_train[~poisoned.is_poison]
    )


# ---------------------------------------------------------------- untrusted files (issue 9)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_benchmark_patch_with_nan_is_refused_not_zeroed(tmp_path, value):
    patch = np.full((1, 2, 2), value, np.float32)
    target = (Image.new("L", (5, 6)), 0, patch, [0, 0])
    folder = write_benchmark_folder(tmp_path / "p", [(Image.new("L", (5, 6)), 1)], [0], target)
    with pytest.raises(InputError, match="target.pickle: field 'patch' has NaN or infinite"):
        load_poisons(folder)


@pytest.mark.parametrize("index", [2**63, 2**100, -1])
def test_benchmark_base_index_outside_int64_is_named(tmp_path, index):
    items = [(Image.new("L", (5, 6)), 1)]
    folder = write_benchmark_folder(tmp_path / "p", items, [index], (Image.new("L", (5, 6)), 0))
    with pytest.raises(InputError, match=f"base_indices.pickle: index {index} is outside"):
        load_poisons(folder)


def test_npz_base_index_past_int64_is_named(tmp_path):
    save_poisons_npz(make_poisons(), tmp_path / "p.npz")
    fields = dict(np.load(tmp_path / "p.npz"))
    fields["base_indices"] = np.array([7, 2**63, 4], dtype=np.uint64)
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(InputError, match="field 'base_indices' has value 9223372036854775808"):
        load_poisons(tmp_path / "bad.npz")


def test_benchmark_poison_label_of_a_billion_is_refused(tmp_path):
    items = [(Image.new("L", (5, 6)), 10**9)]
    folder = write_benchmark_folder(tmp_path / "p", items, [0], (Image.new("L", (5, 6)), 0))
    with pytest.raises(InputError, match="poisons.pickle: item 0 has label 1000000000"):
        load_poisons(folder)


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"extra": ' + "[" * 5000 + "]" * 5000 + "}", "JSON nested 5001 deep"),
        ('{"target_index": ' + "9" * 5000 + "}", "JSON integer of 5,000 digits"),
        ('{"eps": NaN}', "JSON value NaN is not allowed"),
        ('{"eps": 1e999}', "field 'eps' is inf"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_bad_side_file_is_named(tmp_path, text, message):
    save_poisons_folder(make_poisons(), tmp_path)
    (tmp_path / "poisonlens.json").write_text(text)
    with pytest.raises(InputError, match=f"poisonlens.json: {message}"):
        load_poisons(tmp_path)


def test_npz_extra_json_nested_too_deep_is_named(tmp_path):
    save_poisons_npz(make_poisons(), tmp_path / "p.npz")
    fields = dict(np.load(tmp_path / "p.npz"))
    fields["extra_json"] = np.array("[" * 1000 + "]" * 1000)
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(InputError, match="bad.npz: field 'extra_json': JSON nested 1000 deep"):
        load_poisons(tmp_path / "bad.npz")


def test_benchmark_pickle_linked_from_outside_the_folder_is_refused(tmp_path):
    save_poisons_folder(make_poisons(), tmp_path / "p")
    (tmp_path / "p/target.pickle").rename(tmp_path / "target.pickle")
    os.symlink(tmp_path / "target.pickle", tmp_path / "p/target.pickle")
    with pytest.raises(InputError, match="target.pickle: symbolic link to .* outside"):
        load_poisons(tmp_path / "p")


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_empty_or_truncated_poison_npz_is_named(tmp_path, content):
    (tmp_path / "p.npz").write_bytes(content)
    with pytest.raises(InputError, match="p.npz: not a readable .npz file"):
        load_poisons(tmp_path / "p.npz")


def test_poison_path_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "p.npz")
    with pytest.raises(InputError, match="p.npz: not a regular file"):
        load_poisons(tmp_path / "p.npz")


@pytest.mark.parametrize("name", ["poisons.npz", "poisons.pickle", "base_indices.pickle",
                                  "target.pickle", "poisonlens.json", "surrogate.pt"])
def test_writers_never_write_through_a_link_planted_in_the_output_folder(tmp_path, name):
    # `craft --out` may be a folder copied from someone else: a link planted under a name the
    # writers use must not carry the write outside it. Before they went through runfs, each of
    # these writes replaced the sentinel's contents.
    import torch

    from poisonlens.attacks.surrogate import save_surrogate
    from poisonlens.models import build_model
    from poisonlens.runfs import RunFileError

    sentinel = tmp_path / "bashrc"
    sentinel.write_text("keep me\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(sentinel)
    with pytest.raises(RunFileError, match="link"):
        if name == "poisons.npz":
            save_poisons_npz(make_poisons(), out / name)
        elif name == "surrogate.pt":
            torch.manual_seed(0)
            save_surrogate(build_model("smallcnn", n_classes=10, in_channels=3, width=4), out / name)
        else:
            save_poisons_folder(make_poisons(), out)
    assert sentinel.read_text() == "keep me\n"
    assert (out / name).is_symlink()
