"""Image data sets as uint8 arrays, named on the CLI as ``digits``, ``imagefolder:<dir>``, ...

Every loader returns an :class:`ImageDataset` whose images are uint8 of shape
(n_samples, height, width, channels), channels 1 or 3, and labels int64 in
[0, n_classes), every class having at least one training example. The formats are
described field by field in docs/data-formats.md.

The files are untrusted (docs/security.md): every reader checks the sizes a file declares
against :func:`poisonlens.limits.current_limits` before allocating, folder walks read only
regular files and follow no link out of the data set's folder, and each problem is one
:class:`InputError` naming the file.
"""

from __future__ import annotations

import os
import re
import stat
import warnings
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from poisonlens.config import DATASET_RULE
from poisonlens.data.safe_pickle import safe_load
from poisonlens.errors import InputError
from poisonlens.limits import Limits, check_count, current_limits, open_regular, resolve_inside

#: File endings read as images, as in torchvision's ``ImageFolder``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: The decoders an image file may reach, whatever its name ends with: the formats of
#: :data:`IMG_EXTENSIONS`. PIL otherwise tries every plugin it has, EPS among them, whose
#: ``load()`` runs Ghostscript (an interpreter of the file's PostScript) when installed.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP")

#: The smallest image side poisonlens trains on (its CNN pools twice).
MIN_IMAGE_SIDE = 4

# PIL modes that hold one grey channel (with or without alpha); every other mode is read as RGB
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})

# dtypes an .npz may hold: numbers and fixed-width text, never objects
_NPZ_KINDS = frozenset("biufUS")
_BOMB_CHECK_BYTES = 16 << 20  # members smaller than this are never called zip bombs
_CHUNK = 16 << 20  # bytes read from an .npz member at a time


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


def _scale_to_uint8(pixels: np.ndarray, top: int) -> np.ndarray:
    # round(v * 255 / top): 16-bit 65535 -> 255, 32768 -> 128; integer arithmetic, no clipping
    wide = pixels.astype(np.int64)
    return ((wide * 255 + top // 2) // top).astype(np.uint8)


def image_pixels(image: Image.Image, source: object) -> np.ndarray:
    """The pixels of ``image`` as uint8: (height, width) for grey modes, (height, width, 3) else.

    16-bit and 32-bit integer modes are scaled to 0..255 (not clipped); float mode ``F``
    must be finite, in [0, 1] (scaled) or [0, 255]; alpha is dropped; a palette image is
    read through RGBA, so a transparency given as bytes is understood.

    Raises
    ------
    InputError
        Naming ``source`` for a mode that cannot be read or values out of range.
    """
    mode = image.mode
    try:
        if mode in ("L", "1"):
            return np.asarray(image.convert("L") if mode == "1" else image)
        if mode in ("LA", "La"):
            return np.asarray(image)[..., 0].copy()
        if mode.startswith("I"):  # I, I;16, I;16B, ...: 16-bit samples (PNG) or 32-bit
            pixels = np.asarray(image)
            if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
                raise InputError(source, f"image mode {mode} with values outside 0..65535")
            return _scale_to_uint8(pixels, 65535)
        if mode == "F":
            pixels = np.asarray(image, dtype=np.float64)
            if not np.isfinite(pixels).all():
                raise InputError(source, "float image with NaN or infinite pixels")
            top = 1.0 if pixels.size == 0 or pixels.max() <= 1.0 else 255.0
            if pixels.size and (pixels.min() < 0 or pixels.max() > 255):
                raise InputError(source, "float image with values outside [0, 1] or [0, 255]")
            return np.round(pixels * (255.0 / top)).astype(np.uint8)
        if mode == "RGB":
            return np.asarray(image)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's note on bytes transparency: handled by RGBA
            if mode in ("P", "PA"):
                image = image.convert("RGBA")
            return np.asarray(image.convert("RGB"))
    except InputError:
        raise
    except (ValueError, OSError, TypeError) as err:
        raise InputError(source, f"image mode {mode!r} cannot be read ({err})") from err


def images_to_array(images: Sequence[Image.Image], sources: Sequence[str]) -> np.ndarray:
    """Stack PIL images into one uint8 array, all in one mode.

    Grey images become one channel, every other mode RGB (see :func:`image_pixels`); if
    any image is colour the grey ones are repeated over three channels (what PIL's L to
    RGB conversion does).

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
        arrays.append(image_pixels(image, source))
    if not arrays:
        return np.zeros((0, 0, 0, 1), dtype=np.uint8)
    n_channels = 3 if any(a.ndim == 3 for a in arrays) else 1
    out = np.empty((len(arrays), *arrays[0].shape[:2], n_channels), dtype=np.uint8)
    for i, a in enumerate(arrays):
        out[i] = a if a.ndim == 3 else a[..., None]
    return out


def _read_npy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, field: str, limits: Limits
) -> np.ndarray:
    """One array of an .npz: its header checked, then exactly the bytes it declares read."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise InputError(source, f"field '{field}' has .npy format version {version}")
        if dtype.kind not in _NPZ_KINDS or dtype.hasobject or dtype.fields or dtype.subdtype:
            raise InputError(
                source, f"field '{field}' has dtype {dtype}; only numbers and text are read"
            )
        n_bytes = dtype.itemsize
        for s in shape:
            n_bytes *= s  # Python ints: a 58 TiB claim is just a number here
        check_count(
            source,
            f"field '{field}' size in bytes",
            n_bytes,
            limits.max_array_bytes,
            "--max-array-bytes",
        )
        header = member.tell()
        if header + n_bytes != info.file_size:
            raise InputError(
                source,
                f"field '{field}' declares {n_bytes:,} bytes of data but holds "
                f"{info.file_size - header:,}",
            )
        buffer = np.empty(n_bytes, dtype=np.uint8)
        done = 0
        while done < n_bytes:
            chunk = member.read(min(_CHUNK, n_bytes - done))
            if not chunk:
                raise InputError(source, f"field '{field}' is truncated")
            buffer[done : done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            done += len(chunk)
        member.read(1)  # reach the end, so zipfile checks the CRC
    array = buffer.view(dtype).reshape(shape, order="F" if fortran else "C")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def read_npz(path: str | os.PathLike, *, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file: numbers and text only, sizes checked before reading.

    Every member's declared size (its zip entry and its .npy header, which must agree)
    is checked against the limits, and one that expands more than
    ``max_compression_ratio`` times (a zip bomb) is refused, before anything is
    decompressed; then exactly the declared bytes are read.

    Raises
    ------
    InputError
        Naming the file, and the field when one cannot be read.
    """
    limits = limits or current_limits()
    source = str(path)
    with open_regular(path, max_bytes=limits.max_file_bytes) as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise InputError(
                source, "a single .npy array; expected an .npz archive of named arrays"
            )
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise InputError(source, f"not a readable .npz file ({err})") from err
        with archive:
            infos = archive.infolist()
            check_count(source, "arrays", len(infos), limits.max_members, "--max-members")
            total = compressed = 0
            archive_size = os.fstat(handle.fileno()).st_size
            for info in infos:
                field = info.filename.removesuffix(".npy")
                if info.flag_bits & 0x1:
                    raise InputError(source, f"field '{field}' is encrypted")
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                    raise InputError(source, f"field '{field}' uses an unsupported compression")
                declared = info.file_size
                # the sizes below are the archive's word: a compressed size past the end of
                # the file would let a member claim ratio 1 while inflating 1,000 times
                if info.header_offset + info.compress_size > archive_size:
                    raise InputError(
                        source,
                        f"field '{field}' claims {info.compress_size:,} compressed bytes, "
                        "past the end of the file (a forged zip entry)",
                    )
                check_count(
                    source,
                    f"field '{field}' size in bytes",
                    declared,
                    limits.max_array_bytes + 65536,
                    "--max-array-bytes",
                )
                if declared > _BOMB_CHECK_BYTES and declared > limits.max_compression_ratio * max(
                    info.compress_size, 1
                ):
                    raise InputError(
                        source,
                        f"field '{field}' expands from {info.compress_size:,} to {declared:,} "
                        f"bytes, more than {limits.max_compression_ratio:g} times (a zip bomb?; "
                        "raise --max-compression-ratio)",
                    )
                total += declared
                compressed += info.compress_size
                check_count(
                    source, "bytes of arrays", total, limits.max_total_bytes, "--max-total-bytes"
                )
            # the bomb check on the whole archive too: members each just under the threshold
            # (1,000 of 16 MiB of zeros, 16 KiB each) are one zip bomb of 16 GiB
            if total > _BOMB_CHECK_BYTES and total > limits.max_compression_ratio * max(
                compressed, 1
            ):
                raise InputError(
                    source,
                    f"arrays expand from {compressed:,} to {total:,} bytes, more than "
                    f"{limits.max_compression_ratio:g} times (a zip bomb?; "
                    "raise --max-compression-ratio)",
                )
            fields = {}
            for info in infos:
                field = info.filename.removesuffix(".npy")
                try:
                    fields[field] = _read_npy_member(archive, info, source, field, limits)
                except InputError:
                    raise
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                    raise InputError(source, f"field '{field}' cannot be read ({err})") from err
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
    if y.dtype.kind == "u" and y.size and y.max() > np.iinfo(np.int64).max:
        raise InputError(source, f"field '{field}' has value {y.max()}, larger than 2^63 - 1")
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


def open_image(path: str | os.PathLike, *, limits: Limits | None = None) -> Image.Image:
    """Decode one image file into mode L or RGB, checking its size before decoding.

    Only a regular file is opened (a FIFO named ``.png`` is refused without blocking);
    width x height is checked against ``max_pixels_per_image`` from the header, before
    the pixels are decompressed.

    Raises
    ------
    InputError
        Naming the file: not a regular file, too large, 0x0, an unknown or broken format.
    """
    limits = limits or current_limits()
    with open_regular(path, max_bytes=limits.max_file_bytes) as handle:
        try:
            with warnings.catch_warnings():
                # PIL warns (and refuses at twice the size) past its own bomb limit;
                # ours, checked below before load(), is the one that applies. Its other
                # warnings (a TIFF tag past the end of the file, ...) would print two lines
                # of PIL's source on stderr beside our one-line refusal: every problem that
                # matters is an exception here, so none is shown
                warnings.simplefilter("ignore")
                image = Image.open(handle, formats=IMAGE_FORMATS)
                width, height = image.size
                if width < 1 or height < 1:
                    raise InputError(path, f"image is {width}x{height}: it has no pixel")
                check_count(
                    path,
                    f"image of {width}x{height} =",
                    width * height,
                    limits.max_pixels_per_image,
                    "--max-pixels-per-image",
                )
                image.load()
        except InputError:
            raise
        except Image.UnidentifiedImageError as err:
            raise InputError(
                path, f"unreadable image (not in a format read: {', '.join(IMAGE_FORMATS)})"
            ) from err
        except Image.DecompressionBombError as err:  # over twice PIL's own limit, at open
            raise InputError(path, f"image too large to decode ({err})") from err
        except Exception as err:  # PIL raises many kinds on a broken file; all mean "unreadable"
            raise InputError(path, f"unreadable image ({type(err).__name__}: {err})") from err
    grey = image.mode in _GREY_MODES
    pixels = image_pixels(image, path)
    return Image.fromarray(pixels, "L" if grey else "RGB")


def check_decoded_size(
    paths: Sequence[str | os.PathLike],
    width: int,
    height: int,
    *,
    channels: int = 3,
    source: object = None,
    limits: Limits | None = None,
) -> None:
    """Refuse a folder of images that decodes to far more memory than it takes on disk.

    Each image is checked alone (:func:`open_image`), but an image compresses up to
    ~1,000 times (one colour), and links or copies inside the folder repeat it: 40 links
    to one 50 KB PNG of 4096x4096 ask for 2 GB. Called with the first image's size before
    the array for all of them is allocated: the total is checked against
    ``max_total_bytes``, and past 16 MiB it may not exceed ``max_compression_ratio``
    times the files' size on disk (what the ``.npz`` zip-bomb check does).

    Parameters
    ----------
    paths : the n image files (links followed, as the decoder will)
    width, height : the size every image must have (the first one's)
    channels : channels of the array to be allocated
    source : the name in the message (default: the first file's folder)

    Raises
    ------
    InputError
    """
    limits = limits or current_limits()
    source = source if source is not None else (Path(paths[0]).parent if paths else "images")
    total = len(paths) * width * height * channels
    check_count(
        source, "bytes of decoded images", total, limits.max_total_bytes, "--max-total-bytes"
    )
    if total <= _BOMB_CHECK_BYTES:
        return
    on_disk = sum(os.stat(p).st_size for p in paths)
    if total > limits.max_compression_ratio * max(on_disk, 1):
        raise InputError(
            source,
            f"{len(paths):,} images of {width}x{height} decode to {total:,} bytes from "
            f"{on_disk:,} on disk, more than {limits.max_compression_ratio:g} times (a "
            "decompression bomb?; raise --max-compression-ratio)",
        )


def _read_image(path: Path) -> Image.Image:
    """One image file in mode L or RGB (see :func:`open_image`)."""
    return open_image(path)


# ---------------------------------------------------------------- folder walks


def class_folders(split_dir: Path, *, root: Path) -> list[str]:
    """Names of the sub-folders of ``split_dir``, sorted; links must stay inside ``root``."""
    # split_dir itself too: a data set whose train/ links to the user's home would else be
    # walked as if it were inside (the checks below only look at links one level down)
    resolve_inside(split_dir, root)
    names = []
    with os.scandir(split_dir) as it:
        for entry in it:
            if entry.is_symlink():
                if resolve_inside(entry.path, root).is_dir():
                    names.append(entry.name)
            elif entry.is_dir(follow_symlinks=False):
                names.append(entry.name)
    return sorted(names)


def find_image_files(
    class_dir: Path, *, root: Path | None = None, limits: Limits | None = None
) -> list[tuple[str, os.stat_result]]:
    """Image files under ``class_dir`` with their stat, in torchvision's ImageFolder order.

    Directories are walked sorted by path and files sorted within each, as
    ``os.walk(followlinks=True)`` would, but a link is followed only if it stays inside
    ``root`` (default: the data set folder, two levels above ``class_dir``), a folder
    reached twice (a link loop) is an error, and a file with an image ending that is not
    a regular file (a FIFO, a socket, a device) is refused without being opened.

    Returns
    -------
    list of (path, os.stat_result), the stat of the file a link points to
    """
    root = Path(class_dir).parents[1] if root is None else Path(root)
    resolve_inside(class_dir, root)  # the walk starts inside, whatever links led here
    limits = limits or current_limits()
    seen: set[tuple[int, int]] = set()
    folders: list[tuple[str, list[tuple[str, os.stat_result]]]] = []
    pending = [str(class_dir)]
    n_files = 0
    while pending:
        folder = pending.pop()
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen:
            raise InputError(folder, "symbolic link loop: this folder is reached twice")
        seen.add((info.st_dev, info.st_ino))
        files = []
        with os.scandir(folder) as it:
            for entry in it:
                if entry.is_symlink():
                    info = os.stat(resolve_inside(entry.path, root))
                else:
                    info = entry.stat(follow_symlinks=False)
                if stat.S_ISDIR(info.st_mode):
                    pending.append(entry.path)
                elif entry.name.lower().endswith(IMG_EXTENSIONS):
                    if not stat.S_ISREG(info.st_mode):
                        raise InputError(
                            entry.path, "not a regular file (a FIFO, socket or device)"
                        )
                    files.append((entry.path, info))
        n_files += len(files)
        check_count(folder, "image files", n_files, limits.max_images, "--max-images")
        folders.append((folder, sorted(files, key=lambda f: f[0])))
    return [f for _, files in sorted(folders, key=lambda d: d[0]) for f in files]


def _find_images(class_dir: Path) -> list[Path]:
    return [Path(p) for p, _ in find_image_files(class_dir)]


def _read_split(
    split_dir: Path, class_names: Sequence[str], *, every_class: bool
) -> tuple[list[Image.Image], list[str], np.ndarray]:
    classes = class_folders(split_dir, root=split_dir.parent)
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
    class_names = class_folders(root / "train", root=root)
    if not class_names:
        raise InputError(root / "train", "no class folders")
    # decoded once into one array (both splits, so sizes and colour mode are chosen together),
    # then read back from the user cache while the folder is unchanged (core/data/cache.py)
    from poisonlens.data.cache import load_imagefolder_pixels

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


def _batch_field(batch: dict, key: str, source: Path) -> object:
    # the original batches are Python 2 pickles: keys are str read as latin1, or bytes
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise InputError(source, f"field '{key}' is missing")


def _read_cifar_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = safe_load(path, encoding="latin1", root=root)
    if not isinstance(batch, dict):
        raise InputError(
            path, f"expected a dict of 'data' and 'labels', got {type(batch).__name__}"
        )
    data = _batch_field(batch, "data", path)
    if not isinstance(data, np.ndarray):
        raise InputError(path, f"field 'data' is a {type(data).__name__}, expected a numpy array")
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
    train = [_read_cifar_batch(p, root) for p in train_files]
    x_test, y_test = _read_cifar_batch(root / "test_batch", root)
    meta = safe_load(root / "batches.meta", encoding="latin1", root=root)
    if not isinstance(meta, dict):
        raise InputError(root / "batches.meta", "expected a dict with 'label_names'")
    label_names = _batch_field(meta, "label_names", root / "batches.meta")
    if not isinstance(label_names, (list, tuple)) or not all(
        isinstance(n, (str, bytes)) for n in label_names
    ):
        raise InputError(root / "batches.meta", "field 'label_names' is not a list of names")
    check_count(
        root / "batches.meta",
        "label names",
        len(label_names),
        current_limits().max_classes,
        "--max-classes",
    )
    class_names = tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in label_names)
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
        check_count(path, "class names", len(names), current_limits().max_classes, "--max-classes")
        class_names = tuple(str(n) for n in names)
    else:
        # a label of 1e9 must not make 1e9 names: count the classes before naming them
        n_classes = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
        check_count(
            path,
            "classes (largest label + 1)",
            n_classes,
            current_limits().max_classes,
            "--max-classes",
        )
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
    raise InputError(spec, DATASET_RULE)
