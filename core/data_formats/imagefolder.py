"""The ``imagefolder:<dir>`` format: torchvision's ImageFolder layout, decoded once and cached."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from poisonlens.data_formats import register
from poisonlens.errors import InputError

if TYPE_CHECKING:  # numpy and PIL load when the data set does, not for --help
    from poisonlens.data.image_dataset import ImageDataset


@register(
    "imagefolder",
    arg="<dir>",
    doc="<dir>/train/<class>/* and <dir>/test/<class>/* image files (PNG, JPEG, ...), "
    "torchvision's ImageFolder order",
)
def load_imagefolder(root: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
    """Images in ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``.

    Classes are the sub-folders of ``train/`` in sorted order and files are ordered as
    torchvision's ``ImageFolder`` orders them, so indices match it. All images must
    share one size; they are read as RGB if any is colour, else as L.

    Parameters
    ----------
    root : str or path
        The data set folder, holding ``train/`` and ``test/``.
    name : str, optional
        The data set's name (default ``imagefolder:<root>``).

    Returns
    -------
    ImageDataset with x of shape (n, height, width, 1 or 3)
    """
    from poisonlens.data.cache import load_imagefolder_pixels
    from poisonlens.data.image_dataset import ImageDataset, check_dataset
    from poisonlens.data.images import class_folders

    root = Path(root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise InputError(
                root / split,
                "no such folder; expected <dir>/train/<class>/* and <dir>/test/<class>/*",
            )
    class_names = class_folders(root / "train", root=root)
    if not class_names:
        raise InputError(root / "train", "no class folders")
    # decoded once into one array (both splits, so sizes and colour mode are chosen together),
    # then read back from the user cache while the folder is unchanged (core/data/cache.py)
    x, listing = load_imagefolder_pixels(root, class_names)
    n_train = listing.n_train
    dataset = ImageDataset(
        x[:n_train],
        listing.labels[:n_train],
        x[n_train:],
        listing.labels[n_train:],
        tuple(class_names),
        name or f"imagefolder:{root}",
    )
    return check_dataset(dataset, str(root))
