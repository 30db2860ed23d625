"""The limits object, its overrides, and the bounded readers every format uses."""

from __future__ import annotations

import os

import pytest

from poisonlens.errors import InputError
from poisonlens.limits import (
    Limits,
    current_limits,
    json_depth,
    open_regular,
    parse_json,
    read_regular,
    set_limits,
)


def test_defaults_fit_real_data_sets():
    limits = Limits()
    assert limits.max_images >= 1_000_000  # an npz of a million images
    assert limits.max_array_bytes >= 60_000 * 32 * 32 * 3  # CIFAR-10 whole, one array
    assert limits.max_pixels_per_image >= 224 * 224  # ImageNet-sized images
    assert limits.max_array_bytes < 58 << 40  # an .npy header claiming 58 TiB


@pytest.mark.parametrize(
    "value, expected", [(1000, 1000), ("2G", 2 << 30), ("512M", 512 << 20), ("1.5K", 1536)]
)
def test_overrides_take_numbers_and_binary_suffixes(value, expected):
    assert Limits.from_overrides(Limits(), max_array_bytes=value).max_array_bytes == expected


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_arrays": 3}, "--max-arrays: unknown limit"),
        ({"max_depth": 0}, "--max-depth: must be > 0"),
        ({"max_depth": "-1"}, "--max-depth: expected a positive number"),
        ({"max_items": "lots"}, "--max-items: expected a positive number"),
        ({"max_compression_ratio": "nan"}, "--max-compression-ratio: expected a positive"),
    ],
)
def test_bad_overrides_name_the_flag(overrides, message):
    with pytest.raises(InputError, match=f"^{message}"):
        Limits.from_overrides(Limits(), **overrides)


def test_set_limits_changes_what_readers_see_and_returns_the_previous():
    previous = set_limits(max_depth=3)
    try:
        assert current_limits().max_depth == 3
        with pytest.raises(InputError, match="nested 4 deep"):
            parse_json("[[[[1]]]]", "x.json")
    finally:
        set_limits(previous)
    assert current_limits() == previous


def test_json_depth_ignores_brackets_inside_strings():
    assert json_depth('{"a": "[[[[", "b": [1, {"c": "]]"}]}') == 3
    assert json_depth("7") == 0


def test_parse_json_bounds_depth_without_recursing():
    with pytest.raises(InputError, match="^f.json: JSON nested 200000 deep"):
        parse_json("[" * 200_000 + "]" * 200_000, "f.json")


def test_open_regular_refuses_a_fifo_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InputError, match="pipe: not a regular file"):
        open_regular(tmp_path / "pipe")


def test_open_regular_refuses_a_folder_and_a_large_file(tmp_path):
    with pytest.raises(InputError, match="not a regular file"):
        open_regular(tmp_path)
    (tmp_path / "big").write_bytes(b"x" * 100)
    with pytest.raises(InputError, match="file size 100 exceeds the limit 10"):
        read_regular(tmp_path / "big", max_bytes=10)
    assert read_regular(tmp_path / "big", max_bytes=100) == b"x" * 100


def test_links_are_followed_only_inside_the_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "outside").write_text("secret")
    (tmp_path / "root/inside").write_text("fine")
    os.symlink(tmp_path / "outside", tmp_path / "root/out")
    os.symlink("inside", tmp_path / "root/in")
    assert read_regular(tmp_path / "root/in", root=tmp_path / "root") == b"fine"
    with pytest.raises(InputError, match="out: symbolic link to .* outside"):
        read_regular(tmp_path / "root/out", root=tmp_path / "root")
