"""The contract every data format meets: :class:`ImageDataset` and its checks.

Images are uint8 of shape (n_samples, height, width, channels), channels 1 or 3, and labels
int64 in [0, n_classes), every class having at least one training example.
:func:`check_dataset` enforces it (with the size limits of :mod:`poisonlens.limits`) and names
the file and field that break it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from poisonlens.errors import InputError
from poisonlens.limits import check_count, current_limits

#: The smallest image side poisonlens trains on (its CNN pools twice).
MIN_IMAGE_SIDE = 4


@dataclass(frozen=True)
class ImageDataset:
    """A train/test split of uint8 images.

    Attributes
    ----------
    x_train, x_test : uint8 arrays of shape (n, height, width, channels)
    y_train, y_test : int64 arrays of shape (n,)
    class_names : tuple of str, one per class
    name : the spec it was loaded from (e.g. ``"digits"``)
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    name: str

    @property
    def n_classes(self) -> int:
        """The number of classes."""
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """The shape of one image, (height, width, channels)."""
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def as_images(x: object, source: str, field: str) -> np.ndarray:
    """Check a field of images: uint8, (n, h, w) or (n, h, w, 1 or 3); returns (n, h, w, c).

    Parameters
    ----------
    x : array-like
        The field's values.
    source : str
        The file named in an error.
    field : str
        The field named in an error (``x_train``).
    """
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise InputError(source, f"field '{field}' has dtype {x.dtype}, expected uint8")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise InputError(
            source,
            f"field '{field}' has shape {x.shape}, expected (n, height, width) "
            "or (n, height, width, channels) with 1 or 3 channels",
        )
    return x


def as_labels(y: object, source: str, field: str, *, n: int | None = None) -> np.ndarray:
    """Check a field of integer labels of shape (n,); returns int64.

    Parameters
    ----------
    y : array-like
        The field's values.
    source : str
        The file named in an error.
    field : str
        The field named in an error (``y_train``).
    n : int, optional
        The length the labels must have (the number of images).
    """
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise InputError(source, f"field '{field}' has dtype {y.dtype}, expected integers")
    if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
        raise InputError(source, f"field '{field}' has value {y.max()}, larger than 2^63 - 1")
    if y.ndim != 1 or (n is not None and len(y) != n):
        expected = f"({n},)" if n is not None else "(n,)"
        raise InputError(source, f"field '{field}' has shape {y.shape}, expected {expected}")
    return y.astype(np.int64)


def check_dataset(dataset: ImageDataset, source: str) -> ImageDataset:
    """Raise :class:`InputError` naming ``source`` and the field if ``dataset`` breaks the contract.

    Parameters
    ----------
    dataset : ImageDataset
        What a loader returned.
    source : str
        The file or folder named in an error.
    """
    x_train = as_images(dataset.x_train, source, "x_train")
    x_test = as_images(dataset.x_test, source, "x_test")
    y_train = as_labels(dataset.y_train, source, "y_train", n=len(x_train))
    y_test = as_labels(dataset.y_test, source, "y_test", n=len(x_test))
    if x_test.shape[1:] != x_train.shape[1:]:
        raise InputError(
            source,
            f"field 'x_test' has images of shape {x_test.shape[1:]}, "
            f"but 'x_train' has {x_train.shape[1:]}",
        )
    if not len(x_train):
        raise InputError(source, "field 'x_train' has no image")
    height, width = x_train.shape[1:3]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise InputError(
            source,
            f"images are {width}x{height}; poisonlens trains on images of at least "
            f"{MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}",
        )
    limits = current_limits()
    check_count(source, "images", len(x_train) + len(x_test), limits.max_images, "--max-images")
    check_count(source, "classes", dataset.n_classes, limits.max_classes, "--max-classes")
    n_classes = dataset.n_classes
    for field, y in (("y_train", y_train), ("y_test", y_test)):
        if y.size and (y.min() < 0 or y.max() >= n_classes):
            bad = int(y[(y < 0) | (y >= n_classes)][0])
            raise InputError(source, f"field '{field}' has label {bad}, outside [0, {n_classes})")
    empty = np.flatnonzero(np.bincount(y_train, minlength=n_classes) == 0)
    if empty.size:
        name = dataset.class_names[empty[0]]
        raise InputError(source, f"field 'y_train' has no example of class {empty[0]} ('{name}')")
    return ImageDataset(x_train, y_train, x_test, y_test, dataset.class_names, dataset.name)
