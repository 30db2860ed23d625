"""Image files as uint8 pixels: one file decoded with its size checked first, folders walked safely.

The files are untrusted (docs/security.md): a file's pixel count is checked against
:func:`poisonlens.limits.current_limits` from its header before it is decoded, only the decoders
of :data:`IMAGE_FORMATS` are reachable, folder walks read only regular files and follow no link
out of the data set's folder, and each problem is one :class:`InputError` naming the file. Used
by the ``imagefolder:`` format (:mod:`poisonlens.data_formats.imagefolder`), its cache
(:mod:`poisonlens.data.cache`) and the benchmark poison sets.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from poisonlens.errors import InputError
from poisonlens.limits import Limits, check_count, current_limits, open_regular, resolve_inside

#: File endings read as images, as in torchvision's ``ImageFolder``.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

#: The decoders an image file may reach, whatever its name ends with: the formats of
#: :data:`IMG_EXTENSIONS`. PIL otherwise tries every plugin it has, EPS among them, whose
#: ``load()`` runs Ghostscript (an interpreter of the file's PostScript) when installed.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "PPM", "TIFF", "WEBP")

# PIL modes that hold one grey channel (with or without alpha); every other mode is read as RGB
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_BOMB_CHECK_BYTES = 16 << 20  # decoded sizes below this are never called bombs


def _scale_to_uint8(pixels: np.ndarray, top: int) -> np.ndarray:
    # round(v * 255 / top): 16-bit 65535 -> 255, 32768 -> 128; integer arithmetic, no clipping
    wide = pixels.astype(np.int64)
    return ((wide * 255 + top // 2) // top).astype(np.uint8)


def image_pixels(image: Image.Image, source: object) -> np.ndarray:
    """The pixels of ``image`` as uint8: (height, width) for grey modes, (height, width, 3) else.

    16-bit and 32-bit integer modes are scaled to 0..255 (not clipped); float mode ``F``
    must be finite, in [0, 1] (scaled) or [0, 255]; alpha is dropped; a palette image is
    read through RGBA, so a transparency given as bytes is understood.

    Parameters
    ----------
    image : PIL.Image.Image
        A decoded image, in any mode PIL reads.
    source : object
        The file named in an error.

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


def open_image(path: str | os.PathLike, *, limits: Limits | None = None) -> Image.Image:
    """Decode one image file into mode L or RGB, checking its size before decoding.

    Only a regular file is opened (a FIFO named ``.png`` is refused without blocking);
    width x height is checked against ``max_pixels_per_image`` from the header, before
    the pixels are decompressed.

    Parameters
    ----------
    path : str or path
        The image file; only a regular file is opened.
    limits : Limits, optional
        The size limits (default: :func:`poisonlens.limits.current_limits`).

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
    """Names of the sub-folders of ``split_dir``, sorted; links must stay inside ``root``.

    Parameters
    ----------
    split_dir : path
        A split's folder (``<root>/train``).
    root : path
        The data set folder every link must stay inside.
    """
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

    Parameters
    ----------
    class_dir : path
        One class's folder.
    root : path, optional
        The folder links must stay inside (default: two levels above ``class_dir``).
    limits : Limits, optional
        The size limits; ``max_images`` bounds the files counted.

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
