"""Every data-set loader, and each bad input it must name clearly."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonlens.data.datasets import (
    ImageDataset,
    image_pixels,
    load_cifar10_batches,
    load_dataset,
    load_imagefolder,
    load_npz_dataset,
    read_npz,
)
from poisonlens.errors import InputError
from poisonlens.limits import Limits

CIFAR10_SUBSET = Path(__file__).resolve().parents[2] / "shared/data/cifar10-subset"


def write_image(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, fmt)


def make_imagefolder(
    root: Path, *, classes=("cat", "dog"), n_train=2, n_test=1, shape=(4, 5)
) -> Path:
    """A tiny ImageFolder whose pixel value encodes (split, class, file)."""
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(classes):
            for i in range(n):
                value = 100 * (split == "test") + 10 * c + i
                write_image(root / split / name / f"{i:02d}.png", np.full(shape, value, np.uint8))
    return root


# ---------------------------------------------------------------- digits


def test_digits_is_the_default_with_a_seeded_stratified_split():
    a, b = load_dataset("digits"), load_dataset("digits")
    assert a.x_train.shape[1:] == (8, 8, 1) and a.x_train.dtype == np.uint8
    assert len(a.y_train) + len(a.y_test) == 1797
    np.testing.assert_array_equal(a.y_train, b.y_train)
    train_share = np.bincount(a.y_train) / len(a.y_train)
    test_share = np.bincount(a.y_test) / len(a.y_test)
    assert np.abs(train_share - test_share).max() < 0.01


# ---------------------------------------------------------------- imagefolder


@pytest.mark.skipif(not CIFAR10_SUBSET.is_dir(), reason=f"{CIFAR10_SUBSET} is absent")
def test_imagefolder_reads_the_cifar10_subset():
    data = load_dataset(f"imagefolder:{CIFAR10_SUBSET}")
    assert data.x_train.shape == (5000, 32, 32, 3) and data.x_test.shape == (1000, 32, 32, 3)
    assert data.class_names[:3] == ("airplane", "automobile", "bird")
    np.testing.assert_array_equal(np.bincount(data.y_train), [500] * 10)
    # file 0000 of the first class comes first, as in ImageFolder
    first = np.asarray(Image.open(CIFAR10_SUBSET / "train/airplane/0000.jpg").convert("RGB"))
    np.testing.assert_array_equal(data.x_train[0], first)


def test_imagefolder_order_matches_torchvision(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    root = make_imagefolder(tmp_path, classes=("b", "a", "c"), n_train=3)
    write_image(root / "train/a/sub/00.png", np.full((4, 5), 77, np.uint8))
    ours = load_imagefolder(root)
    theirs = datasets.ImageFolder(str(root / "train"))
    assert list(ours.class_names) == theirs.classes
    assert list(ours.y_train) == theirs.targets
    for i, (path, _) in enumerate(theirs.samples):
        np.testing.assert_array_equal(ours.x_train[i, ..., 0], np.asarray(Image.open(path)))


def test_imagefolder_of_grey_images_has_one_channel(tmp_path):
    data = load_imagefolder(make_imagefolder(tmp_path))
    assert data.x_train.shape == (4, 4, 5, 1) and data.x_test.shape == (2, 4, 5, 1)
    assert list(data.y_train) == [0, 0, 1, 1] and data.class_names == ("cat", "dog")
    assert data.x_test[1, 0, 0, 0] == 110


def test_imagefolder_with_one_colour_image_is_rgb(tmp_path):
    root = make_imagefolder(tmp_path)
    write_image(root / "train/cat/00.png", np.full((4, 5, 3), [1, 2, 3], np.uint8))
    data = load_imagefolder(root)
    assert data.x_train.shape == (4, 4, 5, 3)
    np.testing.assert_array_equal(data.x_train[0, 0, 0], [1, 2, 3])
    np.testing.assert_array_equal(data.x_train[1, 0, 0], [1, 1, 1])  # grey repeated


def test_imagefolder_ignores_non_image_files(tmp_path):
    root = make_imagefolder(tmp_path)
    (root / "train/cat/notes.txt").write_text("not an image")
    assert len(load_imagefolder(root).y_train) == 4


def test_imagefolder_mixed_sizes_name_the_odd_file(tmp_path):
    root = make_imagefolder(tmp_path)
    write_image(root / "test/dog/00.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(InputError, match=r"test/dog/00.png: image is 6x6 but .*cat/00.png is 5x4"):
        load_imagefolder(root)


def test_imagefolder_unreadable_image_names_the_file(tmp_path):
    root = make_imagefolder(tmp_path)
    (root / "train/dog/01.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"train/dog/01.png: unreadable image"):
        load_imagefolder(root)


def test_imagefolder_class_without_train_example_names_the_folder(tmp_path):
    root = make_imagefolder(tmp_path)
    (root / "train/emu").mkdir()
    with pytest.raises(InputError, match=r"train/emu: class folder has no image"):
        load_imagefolder(root)


def test_imagefolder_test_class_unknown_to_train_names_the_folder(tmp_path):
    root = make_imagefolder(tmp_path)
    write_image(root / "test/emu/00.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(InputError, match=r"test/emu: class folder not present in train/"):
        load_imagefolder(root)


def test_imagefolder_without_test_folder_names_it(tmp_path):
    root = make_imagefolder(tmp_path)
    os.rename(root / "test", root / "val")
    with pytest.raises(InputError, match=r"/test: no such folder"):
        load_dataset(f"imagefolder:{root}")


# ---------------------------------------------------------------- cifar10 batches


def write_cifar(root: Path, *, n_per_batch=3, n_batches=2, keys=str) -> Path:
    """cifar-10-batches-py with tiny batches; pixel (row, col, channel) = (i + c) % 256."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, n_batches + 1)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8)
        labels = (
            [i % 10 for i in range(n_per_batch)]
            if name == "test_batch"
            else list(range(10))[:n_per_batch]
        )
        batch = {keys("data"): data, keys("labels"): labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {keys("label_names"): [f"c{i}" for i in range(n_per_batch)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar10_batches_are_concatenated_channels_last(tmp_path):
    folder = write_cifar(tmp_path)
    data = load_dataset(f"cifar10:{tmp_path}")
    assert data.x_train.shape == (6, 32, 32, 3) and data.x_test.shape == (3, 32, 32, 3)
    first = pickle.loads((folder / "data_batch_1").read_bytes())["data"][0]
    np.testing.assert_array_equal(data.x_train[0, :, :, 1], first[1024:2048].reshape(32, 32))
    assert data.class_names == ("c0", "c1", "c2") and list(data.y_train) == [0, 1, 2, 0, 1, 2]


def test_cifar10_batches_with_bytes_keys_load_from_the_batches_folder(tmp_path):
    folder = write_cifar(tmp_path, keys=str.encode)
    assert load_cifar10_batches(folder).x_train.shape == (6, 32, 32, 3)


def test_cifar10_batches_order_train_batches_numerically(tmp_path):
    folder = write_cifar(tmp_path, n_batches=10)
    tenth = pickle.loads((folder / "data_batch_10").read_bytes())["data"]
    np.testing.assert_array_equal(load_cifar10_batches(folder).x_train[-3:, 0, 0, 0], tenth[:, 0])


def test_cifar10_bad_data_shape_names_file_and_field(tmp_path):
    folder = write_cifar(tmp_path)
    batch = {"data": np.zeros((3, 100), np.uint8), "labels": [0, 1, 2]}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(InputError, match=r"test_batch: field 'data' is uint8 of shape \(3, 100\)"):
        load_cifar10_batches(folder)


def test_cifar10_label_count_mismatch_names_file_and_field(tmp_path):
    folder = write_cifar(tmp_path)
    batch = {"data": np.zeros((3, 3072), np.uint8), "labels": [0, 1]}
    (folder / "data_batch_2").write_bytes(pickle.dumps(batch))
    with pytest.raises(InputError, match=r"data_batch_2: field 'labels' has shape \(2,\)"):
        load_cifar10_batches(folder)


def test_cifar10_batch_that_runs_code_is_refused(tmp_path):
    folder = write_cifar(tmp_path)
    (folder / "data_batch_1").write_bytes(b"cos\nsystem\n(S'touch MARKER'\ntR.")
    with pytest.raises(InputError, match=r"data_batch_1: refused to unpickle 'os.system'"):
        load_cifar10_batches(folder)


def test_cifar10_without_batches_is_an_error(tmp_path):
    with pytest.raises(InputError, match="no data_batch_<n> file"):
        load_cifar10_batches(tmp_path)


# ---------------------------------------------------------------- npz


def write_npz(path: Path, **overrides) -> Path:
    fields = {
        "x_train": np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4),
        "y_train": np.array([0, 1, 2, 1]),
        "x_test": np.zeros((2, 4, 4), np.uint8),
        "y_test": np.array([2, 0]),
    } | overrides
    np.savez(path, **{k: v for k, v in fields.items() if v is not None})
    return path


def test_npz_grey_images_get_a_channel_axis_and_default_names(tmp_path):
    data = load_dataset(f"npz:{write_npz(tmp_path / 'd.npz')}")
    assert data.x_train.shape == (4, 4, 4, 1) and data.x_train[1, 0, 1, 0] == 17
    assert data.class_names == ("0", "1", "2") and data.y_train.dtype == np.int64


def test_npz_colour_images_and_class_names_are_kept(tmp_path):
    path = write_npz(
        tmp_path / "d.npz",
        x_train=np.ones((4, 4, 4, 3), np.uint8),
        x_test=np.ones((2, 4, 4, 3), np.uint8),
        class_names=np.array(["a", "b", "c"]),
    )
    data = load_npz_dataset(path)
    assert data.image_shape == (4, 4, 3) and data.class_names == ("a", "b", "c")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"x_train": np.zeros((4, 3, 2), np.float32)},
            "field 'x_train' has dtype float32, expected uint8",
        ),
        (
            {"y_train": np.array([0.0, 1, 2, 1])},
            "field 'y_train' has dtype float64, expected integers",
        ),
        ({"y_train": np.array([0, 1, 2])}, r"field 'y_train' has shape \(3,\), expected \(4,\)"),
        (
            {"x_test": np.zeros((2, 3, 3), np.uint8)},
            r"field 'x_test' has images of shape \(3, 3, 1\)",
        ),
        (
            {"x_train": np.zeros((4, 3, 2, 2), np.uint8)},
            "field 'x_train' has shape .* 1 or 3 channels",
        ),
        (
            {"y_test": np.array([0, 5]), "class_names": np.array(["a", "b", "c"])},
            r"field 'y_test' has label 5, outside \[0, 3\)",
        ),
        ({"y_train": np.array([0, 2, 2, 0])}, "field 'y_train' has no example of class 1"),
        (
            {"class_names": np.array(["a", "b", "c", "d"])},
            r"field 'y_train' has no example of class 3 \('d'\)",
        ),
        ({"y_test": None}, "field 'y_test' is missing"),
        (
            {"class_names": np.array([{"a": 1}], dtype=object)},
            "field 'class_names' has dtype object; only numbers and text",
        ),
    ],
)
def test_npz_bad_field_names_file_and_field(tmp_path, overrides, message):
    path = write_npz(tmp_path / "d.npz", **overrides)
    with pytest.raises(InputError, match=f"^{path}: {message}"):
        load_npz_dataset(path)


def test_npz_missing_file_is_named(tmp_path):
    with pytest.raises(InputError, match="absent.npz: no such file"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


# ---------------------------------------------------------------- specs


@pytest.mark.parametrize("spec", ["mnist", "npz:", "digits:extra", "imagefolder"])
def test_unknown_spec_lists_the_choices(spec):
    with pytest.raises(InputError, match="unknown data set; use digits, cifar10:<dir>, imagefolder:<dir>"):
        load_dataset(spec)


def test_loaded_dataset_is_named_by_its_spec(tmp_path):
    spec = f"npz:{write_npz(tmp_path / 'd.npz')}"
    assert isinstance(load_dataset(spec), ImageDataset) and load_dataset(spec).name == spec


# ---------------------------------------------------------------- untrusted files (issue 9)


def test_16_bit_png_is_scaled_to_8_bits_not_clipped(tmp_path):
    root = make_imagefolder(tmp_path, shape=(4, 4))
    pixels = np.array([[0, 257, 32896, 65535]] * 4, dtype=np.uint16)
    Image.fromarray(pixels).save(root / "train/cat/00.png")
    assert Image.open(root / "train/cat/00.png").mode.startswith("I")
    data = load_imagefolder(root)
    np.testing.assert_array_equal(data.x_train[0, 0, :, 0], [0, 1, 128, 255])


def test_palette_png_with_bytes_transparency_reads_its_colours(tmp_path):
    root = make_imagefolder(tmp_path, shape=(4, 4))
    image = Image.new("P", (4, 4), 1)
    image.putpalette([0, 0, 0, 10, 20, 30])
    image.save(root / "train/cat/00.png", transparency=b"\x00\x80")
    data = load_imagefolder(root)
    assert data.x_train.shape[-1] == 3
    np.testing.assert_array_equal(data.x_train[0, 0, 0], [10, 20, 30])


@pytest.mark.parametrize(
    "mode, pixels, expected",
    [
        ("LA", np.array([[[7, 200]]], np.uint8), 7),
        ("La", np.array([[[7, 200]]], np.uint8), 7),
        ("I", np.array([[65535]], np.int32), 255),
        ("F", np.array([[0.5]], np.float32), 128),
        ("F", np.array([[100.0]], np.float32), 100),
    ],
)
def test_every_grey_mode_is_read_as_8_bit_grey(mode, pixels, expected):
    image = Image.frombytes(mode, (1, 1), pixels.tobytes())
    assert image_pixels(image, "x.png").tolist() == [[expected]]


@pytest.mark.parametrize("value", [np.nan, np.inf, -1.0, 300.0])
def test_float_image_with_bad_values_is_refused(value):
    image = Image.frombytes("F", (1, 1), np.float32([value]).tobytes())
    with pytest.raises(InputError, match="^x.png: float image"):
        image_pixels(image, "x.png")


def test_link_to_an_image_inside_the_folder_is_followed(tmp_path):
    root = make_imagefolder(tmp_path)
    (root / "test/cat/00.png").unlink()
    os.symlink("../../train/cat/01.png", root / "test/cat/00.png")
    data = load_imagefolder(root)
    np.testing.assert_array_equal(data.x_test[0], data.x_train[1])


@pytest.mark.parametrize("kind", ["out", "loop", "fifo", "broken"])
def test_bad_links_and_fifos_in_an_imagefolder_are_named(tmp_path, kind):
    root = make_imagefolder(tmp_path / "d")
    place = root / "train/dog/02.png"
    if kind == "out":
        write_image(tmp_path / "elsewhere.png", np.zeros((4, 5), np.uint8))
        os.symlink(tmp_path / "elsewhere.png", place)
        message = "02.png: symbolic link to .* outside"
    elif kind == "loop":
        os.symlink("..", root / "train/dog/up")
        message = "up/dog: symbolic link loop"
    elif kind == "fifo":
        os.mkfifo(place)
        message = "02.png: not a regular file"
    else:
        os.symlink(tmp_path / "absent.png", place)
        message = "02.png: broken symbolic link"
    with pytest.raises(InputError, match=message):
        load_imagefolder(root)


def test_png_larger_than_the_pixel_limit_is_refused_before_decoding(tmp_path):
    from tests.bad_inputs.make_corpus import png_header_only

    root = make_imagefolder(tmp_path)
    png_header_only(root / "train/cat/00.png", 5_000, 5_000)
    with pytest.raises(InputError, match=r"00.png: image of 5000x5000 = 25,000,000 exceeds"):
        load_imagefolder(root)
    png_header_only(root / "train/cat/00.png", 20_000, 20_000)  # past PIL's own bomb limit
    with pytest.raises(InputError, match=r"00.png: image too large to decode \(.*400000000"):
        load_imagefolder(root)


def test_imagenet_sized_images_load_under_the_default_limits(tmp_path):
    root = make_imagefolder(tmp_path, shape=(224, 224), n_train=1)
    assert load_imagefolder(root).image_shape == (224, 224, 1)


def test_a_million_images_load_under_the_default_limits(tmp_path):
    n = 1_000_000
    path = write_npz(
        tmp_path / "big.npz",
        x_train=np.zeros((n, 4, 4), np.uint8),
        y_train=np.arange(n) % 3,
        x_test=np.zeros((3, 4, 4), np.uint8),
        y_test=np.arange(3),
    )
    assert len(load_npz_dataset(path).y_train) == n


def test_a_label_of_a_billion_is_refused_before_naming_classes(tmp_path):
    import tracemalloc

    path = write_npz(tmp_path / "d.npz", y_train=np.array([0, 1, 2, 10**9]))
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match="classes .* 1,000,000,001 exceeds the limit"):
            load_npz_dataset(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 << 20


def test_npz_arrays_keep_their_values_in_any_byte_order_and_layout(tmp_path):
    x = np.arange(4 * 4 * 4, dtype=np.uint8).reshape(4, 4, 4)
    path = write_npz(
        tmp_path / "d.npz",
        x_train=np.asfortranarray(x),
        y_train=np.array([0, 1, 2, 1], dtype=">i8"),
    )
    fields = read_npz(path)
    np.testing.assert_array_equal(fields["x_train"], x)
    np.testing.assert_array_equal(fields["y_train"], [0, 1, 2, 1])
    assert fields["y_train"].dtype.isnative and fields["x_train"].flags.writeable


def test_npz_member_that_expands_too_much_is_refused_before_decompressing(tmp_path):
    # 32 MiB of runs of 16 equal bytes: deflate shrinks it about 10x, a zip bomb ~1000x
    rng = np.random.default_rng(0)
    x = np.repeat(rng.integers(0, 256, 2 << 20, dtype=np.uint8), 16)
    path = tmp_path / "z.npz"
    np.savez_compressed(path, x=x)
    with pytest.raises(InputError, match="field 'x' expands from .* more than 2 times"):
        read_npz(path, limits=Limits(max_compression_ratio=2))
    np.testing.assert_array_equal(read_npz(path)["x"], x)
