"""The ImageFolder decode cache: a hit reads the same pixels back; any change to the folder misses."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonlens.data import cache
from poisonlens.data.datasets import load_imagefolder
from poisonlens.errors import InputError


def make_folder(root: Path, *, n_train: int = 3, n_test: int = 2, colour: bool = True) -> Path:
    """A tiny ImageFolder of PNGs whose pixels encode (split, class, file)."""
    for split, n in (("train", n_train), ("test", n_test)):
        for c, name in enumerate(("cat", "dog")):
            for i in range(n):
                value = (100 * (split == "test") + 10 * c + i) % 256
                shape = (4, 5, 3) if colour else (4, 5)
                path = root / split / name / f"{i:02d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full(shape, value, np.uint8)).save(path)
    return root


@pytest.fixture
def cache_dir(tmp_path, monkeypatch) -> Path:
    """A private cache, with caching on for folders of any size."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "MIN_FILES", 0)
    return tmp_path / "cache" / "imagefolder"


def entries(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.npy"))


def load(root: Path) -> np.ndarray:
    d = load_imagefolder(root)
    return np.concatenate([d.x_train, d.x_test])


def test_second_load_reads_the_cache_and_gives_the_same_arrays(tmp_path, cache_dir, monkeypatch):
    root = make_folder(tmp_path / "data")
    first = load_imagefolder(root)
    assert len(entries(cache_dir)) == 1
    # prove the second load reads the entry (a planted pixel would now fail its checksum):
    # decoding is made impossible
    def no_decode(paths, **kw):
        raise AssertionError("decoded although the cache holds this folder")

    monkeypatch.setattr(cache, "decode_images", no_decode)
    second = load_imagefolder(root)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    np.testing.assert_array_equal(second.x_test, first.x_test)
    np.testing.assert_array_equal(second.y_train, first.y_train)
    assert second.class_names == first.class_names == ("cat", "dog")


def test_cached_pixels_equal_a_fresh_decode(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data")
    cold = load(root)
    warm = load(root)
    np.testing.assert_array_equal(cold, warm)
    assert cold[0, 0, 0].tolist() == [0, 0, 0] and cold[-1, 0, 0].tolist() == [111] * 3


def _poison_entry(cache_dir: Path) -> None:
    # were the stale entry served, the load would show these values
    entry = entries(cache_dir)[0]
    x = np.load(entry)
    x[:] = 222
    np.save(entry, x)


@pytest.mark.parametrize("change", ["touched", "resized", "added", "removed", "renamed"])
def test_a_changed_folder_is_never_served_from_the_stale_cache(tmp_path, cache_dir, change):
    root = make_folder(tmp_path / "data")
    load(root)
    _poison_entry(cache_dir)
    path = root / "train" / "dog" / "01.png"
    if change == "touched":  # same bytes, new mtime
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    elif change == "resized":  # other pixels, other size, mtime put back
        st = path.stat()
        Image.fromarray(np.full((4, 5, 3), 99, np.uint8)).save(path, compress_level=0)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert path.stat().st_size != st.st_size
    elif change == "added":
        Image.fromarray(np.full((4, 5, 3), 55, np.uint8)).save(root / "train/dog/03.png")
    elif change == "removed":
        path.unlink()
    elif change == "renamed":
        path.rename(root / "train" / "dog" / "05.png")
    x = load(root)
    assert not (x == 222).any()
    expected = {"added": 11, "removed": 9, "touched": 10, "resized": 10, "renamed": 10}[change]
    assert len(x) == expected
    if change == "resized":
        assert x[4, 0, 0, 0] == 99  # train: cat 00 01 02, dog 00 01
    # the new version replaced the stale entry
    assert len(entries(cache_dir)) == 1


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong shape", "wrong dtype", "empty"])
def test_a_damaged_entry_is_ignored_and_rebuilt(tmp_path, cache_dir, damage):
    root = make_folder(tmp_path / "data")
    good = load(root)
    entry = entries(cache_dir)[0]
    if damage == "truncated":
        entry.write_bytes(entry.read_bytes()[:-50])
    elif damage == "garbage":
        entry.write_bytes(b"\x93NUMPY not really" * 10)
    elif damage == "wrong shape":
        np.save(entry, good[:-1])
    elif damage == "wrong dtype":
        np.save(entry, good.astype(np.float32))
    elif damage == "empty":
        entry.write_bytes(b"")
    np.testing.assert_array_equal(load(root), good)
    # rebuilt: the entry is well-formed again
    np.testing.assert_array_equal(np.load(entry), good)


def test_a_pickled_entry_is_not_loaded(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data")
    good = load(root)
    entry = entries(cache_dir)[0]
    np.save(entry, np.array([{"not": "pixels"}], dtype=object), allow_pickle=True)
    np.testing.assert_array_equal(load(root), good)


def test_grey_folders_keep_one_channel_through_the_cache(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data", colour=False)
    assert load(root).shape == (10, 4, 5, 1)
    assert load(root).shape == (10, 4, 5, 1)


def test_no_temporary_file_is_left_behind(tmp_path, cache_dir):
    load(make_folder(tmp_path / "data"))
    assert [p.name for p in cache_dir.iterdir() if p.suffix not in (".npy", ".sum") and p.name != ".secret"] == []


def test_small_folders_are_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    load(make_folder(tmp_path / "data"))  # 10 files < MIN_FILES
    assert not (tmp_path / "cache").exists()


def test_an_unwritable_cache_still_loads(tmp_path, cache_dir, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker))  # a file, so no folder can be made in it
    x = load(make_folder(tmp_path / "data"))
    assert x.shape == (10, 4, 5, 3)
    assert "cannot write the image cache" in capsys.readouterr().err


def test_a_bad_image_still_names_the_file(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data")
    load(root)
    (root / "train/dog/01.png").write_bytes(b"not a png")
    with pytest.raises(InputError, match=r"train/dog/01.png: unreadable image"):
        load(root)


def test_parallel_decode_equals_serial(tmp_path):
    root = make_folder(tmp_path / "data", n_train=300)  # more than one chunk of 256
    listing = cache.list_imagefolder(root, ("cat", "dog"))
    serial = cache.decode_images(listing.paths, n_threads=1)
    np.testing.assert_array_equal(cache.decode_images(listing.paths, n_threads=4), serial)
    np.testing.assert_array_equal(serial[299], np.asarray(Image.open(listing.paths[299])))


def test_the_key_names_files_relative_to_the_root(tmp_path, monkeypatch):
    make_folder(tmp_path / "data")
    far = cache.list_imagefolder(tmp_path / "data", ("cat", "dog"))
    monkeypatch.chdir(tmp_path / "data")
    here = cache.list_imagefolder(Path("."), ("cat", "dog"))
    assert here.stamps == far.stamps
    assert far.stamps.splitlines()[0].startswith("train/cat/00.png\t")
    assert cache.folder_key(here) == cache.folder_key(far)


def test_other_pixels_at_the_same_size_and_mtime_miss_the_cache(tmp_path, cache_dir):
    """tar, rsync -t, cp -p and unzip put the old mtime back on new bytes: the key is content."""
    root = make_folder(tmp_path / "data")
    path = root / "train" / "dog" / "01.png"
    Image.fromarray(np.full((4, 5, 3), 10, np.uint8)).save(path, compress_level=0)
    first = load(root)
    st = path.stat()
    Image.fromarray(np.full((4, 5, 3), 99, np.uint8)).save(path, compress_level=0)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns
    x = load(root)
    assert first[4, 0, 0, 0] == 10 and x[4, 0, 0, 0] == 99  # train: cat 00 01 02, dog 00 01
    assert len(entries(cache_dir)) == 1


def test_the_cache_folder_is_private(tmp_path, cache_dir):
    load(make_folder(tmp_path / "data"))
    assert (cache_dir.stat().st_mode & 0o777) == 0o700
    assert all((p.stat().st_mode & 0o077) == 0 for p in cache_dir.iterdir())


def test_an_entry_it_did_not_write_is_never_served(tmp_path, cache_dir):
    """An entry planted under the computable name, with a well-formed .sum whose checksum is
    not keyed by this cache's secret, is ignored and rebuilt."""
    import json

    root = make_folder(tmp_path / "data")
    good = load(root)
    entry = entries(cache_dir)[0]
    planted = np.full_like(good, 222)
    np.save(entry, planted)
    meta = json.loads(entry.with_suffix(".sum").read_text())
    import hashlib
    import hmac

    meta["checksum"] = hmac.new(b"x" * 32, b"guess", hashlib.blake2b).hexdigest()
    entry.with_suffix(".sum").write_text(json.dumps(meta))
    np.testing.assert_array_equal(load(root), good)


def test_a_linked_entry_is_not_followed(tmp_path, cache_dir):
    root = make_folder(tmp_path / "data")
    good = load(root)
    entry = entries(cache_dir)[0]
    elsewhere = tmp_path / "elsewhere.npy"
    entry.rename(elsewhere)
    entry.symlink_to(elsewhere)
    np.testing.assert_array_equal(load(root), good)
