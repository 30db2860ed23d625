"""The ``npz:<file>`` format: a numpy ``.npz`` of train and test arrays, read without pickles."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from poisonlens.data_formats import register
from poisonlens.errors import InputError

if TYPE_CHECKING:  # numpy loads when the data set does, not for --help
    import numpy as np

    from poisonlens.data.image_dataset import ImageDataset


def _class_names(fields: dict, y_train: np.ndarray, y_test: np.ndarray, path) -> tuple[str, ...]:
    """``class_names`` when the file has it, else ``"0"``, ``"1"``, ... up to the largest label."""
    from poisonlens.limits import check_count, current_limits

    max_classes = current_limits().max_classes
    if "class_names" in fields:
        names = fields["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(
                path,
                f"field 'class_names' is {names.dtype} of shape {names.shape}, expected 1-d strings",
            )
        check_count(path, "class names", len(names), max_classes, "--max-classes")
        return tuple(str(n) for n in names)
    # a label of 1e9 must not make 1e9 names: count the classes before naming them
    n_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
    check_count(path, "classes (largest label + 1)", n_classes, max_classes, "--max-classes")
    return tuple(str(c) for c in range(n_classes))


@register(
    "npz",
    arg="<file>",
    doc="a numpy .npz with x_train, y_train, x_test, y_test (uint8 images, int labels) and "
    "optional class_names",
)
def load_npz_dataset(path: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
    """An ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``, optional ``class_names``.

    Images are uint8 of shape (n, h, w) or (n, h, w, c); without ``class_names`` the
    classes are named ``"0"``, ``"1"``, ... up to the largest label.

    Parameters
    ----------
    path : str or path
        The ``.npz`` file (read by :func:`poisonlens.data.npz.read_npz`).
    name : str, optional
        The data set's name (default ``npz:<path>``).

    Returns
    -------
    ImageDataset with x of shape (n, height, width, 1 or 3)
    """
    from poisonlens.data.image_dataset import ImageDataset, as_images, as_labels, check_dataset
    from poisonlens.data.npz import read_npz

    fields = read_npz(path)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        if field not in fields:
            raise InputError(path, f"field '{field}' is missing")
    y_train = as_labels(fields["y_train"], str(path), "y_train")
    y_test = as_labels(fields["y_test"], str(path), "y_test")
    dataset = ImageDataset(
        as_images(fields["x_train"], str(path), "x_train"),
        y_train,
        as_images(fields["x_test"], str(path), "x_test"),
        y_test,
        _class_names(fields, y_train, y_test, path),
        name or f"npz:{path}",
    )
    return check_dataset(dataset, str(path))
