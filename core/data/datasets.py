"""Image data sets as uint8 arrays, named on the CLI as ``digits``, ``imagefolder:<dir>``, ...

Every loader returns an :class:`ImageDataset` whose images are uint8 of shape
(n_samples, height, width, channels), channels 1 or 3, and labels int64 in
[0, n_classes), every class having at least one training example. The formats are
described field by field in docs/data-formats.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from core.data.safe_pickle import safe_load
from core.errors import InputError

#: File endings read as images, as in torchvision's ``ImageFolder``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

# PIL modes that hold one grey channel; every other mode is read as RGB
_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16L", "I;16B", "F"})


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
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


def images_to_array(images: Sequence[Image.Image], sources: Sequence[str]) -> np.ndarray:
    """Stack PIL images into one uint8 array, all in one mode.

    Grey images become mode L, every other mode RGB; if any image is colour the grey
    ones are repeated over three channels (what PIL's L to RGB conversion does).

    Parameters
    ----------
    images : n PIL images of one size
    sources : n names for error messages (file names, or ``"poisons.pickle, item 3"``)

    Returns
    -------
    uint8 array of shape (n, height, width, 1 or 3)
    """
    arrays = []
    for image, source in zip(images, sources, strict=True):
        if image.size != images[0].size:
            w0, h0 = images[0].size
            raise InputError(
                source,
                f"image is {image.width}x{image.height} but {sources[0]} is {w0}x{h0}; "
                "all images must have the same size",
            )
        mode = "L" if image.mode in _GREY_MODES else "RGB"
        arrays.append(np.asarray(image.convert(mode) if image.mode != mode else image))
    if not arrays:
        return np.zeros((0, 0, 0, 1), dtype=np.uint8)
    n_channels = 3 if any(a.ndim == 3 for a in arrays) else 1
    out = np.empty((len(arrays), *arrays[0].shape[:2], n_channels), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a if a.ndim == 3 else a[..., None]
    return out


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, refusing pickled (object) arrays.

    Raises
    ------
    InputError
        Naming the file, and the field when one cannot be read.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise InputError(path, "no such file") from err
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable .npz file ({err})") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(path, "not an .npz archive (a single .npy array?)")
    fields = {}
    with archive:
        for name in archive.files:
            try:
                fields[name] = archive[name]
            except (OSError, ValueError) as err:
                # np.load raises ValueError for object arrays when allow_pickle=False
                raise InputError(path, f"field '{name}' cannot be read ({err})") from err
    return fields


def as_images(x: object, source: str, field: str) -> np.ndarray:
    """Check a field of images: uint8, (n, h, w) or (n, h, w, 1 or 3); returns (n, h, w, c)."""
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
    """Check a field of integer labels of shape (n,); returns int64."""
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise InputError(source, f"field '{field}' has dtype {y.dtype}, expected integers")
    if y.ndim != 1 or (n is not None and len(y) != n):
        expected = f"({n},)" if n is not None else "(n,)"
        raise InputError(source, f"field '{field}' has shape {y.shape}, expected {expected}")
    return y.astype(np.int64)


def check_dataset(dataset: ImageDataset, source: str) -> ImageDataset:
    """Raise :class:`InputError` naming ``source`` and the field if ``dataset`` breaks the contract."""
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


def load_digits_dataset(*, test_size: float = 0.25, random_state: int = 0) -> ImageDataset:
    """scikit-learn's ``load_digits`` (1,797 8x8 images) with a fixed, seeded, stratified split.

    Pixel values 0..16 are rescaled to 0..255 uint8; shape (n, 8, 8, 1).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=random_state
    )
    return ImageDataset(x_tr, y_tr, x_te, y_te, tuple(str(c) for c in range(10)), "digits")


def _find_images(class_dir: Path) -> list[Path]:
    # torchvision's ImageFolder order: directories walked sorted, files sorted within each
    return [
        Path(root, name)
        for root, _, names in sorted(os.walk(class_dir, followlinks=True))
        for name in sorted(names)
        if name.lower().endswith(IMG_EXTENSIONS)
    ]


def _read_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            image.load()
            return image
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise InputError(path, f"unreadable image ({err})") from err


def _read_split(
    split_dir: Path, class_names: Sequence[str], *, every_class: bool
) -> tuple[list[Image.Image], list[str], np.ndarray]:
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    unknown = sorted(set(classes) - set(class_names))
    if unknown:
        raise InputError(split_dir / unknown[0], "class folder not present in train/")
    images, sources, labels = [], [], []
    for label, name in enumerate(class_names):
        paths = _find_images(split_dir / name) if name in classes else []
        if every_class and not paths:
            raise InputError(split_dir / name, "class folder has no image")
        images += [_read_image(p) for p in paths]
        sources += [str(p) for p in paths]
        labels += [label] * len(paths)
    return images, sources, np.asarray(labels, dtype=np.int64)


def load_imagefolder(root: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
    """Images in ``<root>/train/<class>/*`` and ``<root>/test/<class>/*``.

    Classes are the sub-folders of ``train/`` in sorted order and files are ordered as
    torchvision's ``ImageFolder`` orders them, so indices match it. All images must
    share one size; they are read as RGB if any is colour, else as L.

    Returns
    -------
    ImageDataset with x of shape (n, height, width, 1 or 3)
    """
    root = Path(root)
    for split in ("train", "test"):
        if not (root / split).is_dir():
            raise InputError(
                root / split,
                "no such folder; expected <dir>/train/<class>/* and <dir>/test/<class>/*",
            )
    class_names = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    if not class_names:
        raise InputError(root / "train", "no class folders")
    train_images, train_sources, y_train = _read_split(
        root / "train", class_names, every_class=True
    )
    test_images, test_sources, y_test = _read_split(root / "test", class_names, every_class=False)
    if not test_images:
        raise InputError(root / "test", "no image")
    # one stack for both splits so sizes and colour mode are checked and chosen together
    x = images_to_array(train_images + test_images, train_sources + test_sources)
    dataset = ImageDataset(
        x[: len(y_train)],
        y_train,
        x[len(y_train) :],
        y_test,
        tuple(class_names),
        name or f"imagefolder:{root}",
    )
    return check_dataset(dataset, str(root))


def _batch_field(batch: dict, key: str, source: Path) -> object:
    # the original batches are Python 2 pickles: keys are str read as latin1, or bytes
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise InputError(source, f"field '{key}' is missing")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load(path, encoding="latin1")
    if not isinstance(batch, dict):
        raise InputError(
            path, f"expected a dict of 'data' and 'labels', got {type(batch).__name__}"
        )
    data = np.asarray(_batch_field(batch, "data", path))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise InputError(
            path, f"field 'data' is {data.dtype} of shape {data.shape}, expected uint8 (n, 3072)"
        )
    labels = as_labels(_batch_field(batch, "labels", path), str(path), "labels", n=len(data))
    # rows are channel planes (3, 32, 32); images are stored channels-last
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def load_cifar10_batches(root: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
    """CIFAR-10's python batches: ``data_batch_*``, ``test_batch``, ``batches.meta``.

    ``root`` is the ``cifar-10-batches-py`` folder or a folder holding it. Train
    batches are concatenated in numeric order. Read through :func:`safe_load`.

    Returns
    -------
    ImageDataset with x of shape (n, 32, 32, 3)
    """
    root = Path(root)
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    if not root.is_dir():
        raise InputError(root, "no such folder")
    train_files = sorted(
        (p for p in root.iterdir() if re.fullmatch(r"data_batch_\d+", p.name)),
        key=lambda p: int(p.name.rsplit("_", 1)[1]),
    )
    if not train_files:
        raise InputError(root, "no data_batch_<n> file; expected the cifar-10-batches-py folder")
    train = [_read_cifar_batch(p) for p in train_files]
    x_test, y_test = _read_cifar_batch(root / "test_batch")
    meta = safe_load(root / "batches.meta", encoding="latin1")
    if not isinstance(meta, dict):
        raise InputError(root / "batches.meta", "expected a dict with 'label_names'")
    label_names = _batch_field(meta, "label_names", root / "batches.meta")
    if not isinstance(label_names, (list, tuple)):
        raise InputError(root / "batches.meta", "field 'label_names' is not a list of names")
    class_names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in label_names)
    dataset = ImageDataset(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        x_test,
        y_test,
        class_names,
        name or f"cifar10:{root}",
    )
    return check_dataset(dataset, str(root))


def load_npz_dataset(path: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
    """An ``.npz`` with ``x_train``, ``y_train``, ``x_test``, ``y_test``, optional ``class_names``.

    Images are uint8 of shape (n, h, w) or (n, h, w, c); without ``class_names`` the
    classes are named ``"0"``, ``"1"``, ... up to the largest label.

    Returns
    -------
    ImageDataset with x of shape (n, height, width, 1 or 3)
    """
    fields = read_npz(path)
    for field in ("x_train", "y_train", "x_test", "y_test"):
        if field not in fields:
            raise InputError(path, f"field '{field}' is missing")
    y_train = as_labels(fields["y_train"], str(path), "y_train")
    y_test = as_labels(fields["y_test"], str(path), "y_test")
    if "class_names" in fields:
        names = fields["class_names"]
        if names.ndim != 1 or names.dtype.kind not in "US":
            raise InputError(
                path,
                f"field 'class_names' is {names.dtype} of shape {names.shape}, expected 1-d strings",
            )
        class_names = tuple(str(n) for n in names)
    else:
        n_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
        class_names = tuple(str(c) for c in range(n_classes))
    dataset = ImageDataset(
        as_images(fields["x_train"], str(path), "x_train"),
        y_train,
        as_images(fields["x_test"], str(path), "x_test"),
        y_test,
        class_names,
        name or f"npz:{path}",
    )
    return check_dataset(dataset, str(path))


def load_dataset(spec: str) -> ImageDataset:
    """Load a data set from its CLI name.

    Parameters
    ----------
    spec : {'digits', 'imagefolder:<dir>', 'cifar10:<dir>', 'npz:<file>'}
    """
    kind, _, arg = spec.partition(":")
    if kind == "digits" and not arg:
        return load_digits_dataset()
    loaders = {
        "imagefolder": load_imagefolder,
        "cifar10": load_cifar10_batches,
        "npz": load_npz_dataset,
    }
    if kind in loaders and arg:
        return loaders[kind](arg, name=spec)
    raise InputError(
        spec, "unknown data set; use digits, imagefolder:<dir>, cifar10:<dir> or npz:<file>"
    )
