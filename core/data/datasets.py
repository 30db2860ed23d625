"""Image data sets as uint8 arrays, named on the CLI as ``digits``, ``imagefolder:<dir>``, ...

:func:`load_dataset` reads a spec through the data format registry
(:mod:`poisonlens.data_formats`: one module per format, its prefix, loader and documentation
line). Every loader returns an :class:`ImageDataset` whose images are uint8 of shape
(n_samples, height, width, channels), channels 1 or 3, and labels int64 in [0, n_classes),
every class having at least one training example; :func:`load_dataset` checks that contract
(:func:`check_dataset`) whatever format read the data. The formats are described field by field
in docs/data-formats.md.

The files are untrusted (docs/security.md): readers check the sizes a file declares against
:func:`poisonlens.limits.current_limits` before allocating, walk folders without following a
link out of them, and report each problem as one :class:`InputError` naming the file. The
readers live by job: :mod:`poisonlens.data.images` (image files and folders),
:mod:`poisonlens.data.npz` (``.npz`` archives), :mod:`poisonlens.data.image_dataset` (the
contract); their names are importable from here too.
"""

from __future__ import annotations

from poisonlens.data.image_dataset import (
    MIN_IMAGE_SIDE,
    ImageDataset,
    as_images,
    as_labels,
    check_dataset,
)
from poisonlens.data.images import (
    IMAGE_FORMATS,
    IMG_EXTENSIONS,
    _read_split,
    check_decoded_size,
    class_folders,
    find_image_files,
    image_pixels,
    images_to_array,
    open_image,
)
from poisonlens.data.npz import read_npz
from poisonlens.data_formats import find_format
from poisonlens.data_formats.cifar10 import load_cifar10_batches
from poisonlens.data_formats.digits import load_digits_dataset
from poisonlens.data_formats.imagefolder import load_imagefolder
from poisonlens.data_formats.npz import load_npz_dataset

__all__ = [
    "IMAGE_FORMATS",
    "IMG_EXTENSIONS",
    "MIN_IMAGE_SIDE",
    "ImageDataset",
    "_read_split",  # bench/imagefolder_cache.py times the walk without the cache
    "as_images",
    "as_labels",
    "check_dataset",
    "check_decoded_size",
    "class_folders",
    "find_image_files",
    "image_pixels",
    "images_to_array",
    "load_cifar10_batches",
    "load_dataset",
    "load_digits_dataset",
    "load_imagefolder",
    "load_npz_dataset",
    "open_image",
    "read_npz",
]


def load_dataset(spec: str) -> ImageDataset:
    """Load a data set from its CLI name, through the format registered for its prefix.

    Parameters
    ----------
    spec : str
        A registered format's spec: ``digits``, ``imagefolder:<dir>``, ``cifar10:<dir>``,
        ``npz:<file>`` or any other format of :mod:`poisonlens.data_formats`.

    Returns
    -------
    ImageDataset, checked by :func:`check_dataset`

    Raises
    ------
    InputError
        Naming the spec when no format reads it (the message lists the formats), or the file
        and field a format found wrong.
    """
    found, arg = find_format(spec)
    dataset = found.loader(arg, name=spec)
    if not isinstance(dataset, ImageDataset):
        raise TypeError(f"the {found.prefix!r} loader returned {type(dataset).__name__}")
    return check_dataset(dataset, arg or spec)
