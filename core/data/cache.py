"""Decode an ImageFolder once: its pixels cached as one uint8 ``.npy`` in a user cache folder.

Decoding the 60,000 JPEGs of CIFAR-10 takes tens of seconds; reading the cached 184 MB back
takes a fraction of one. The cache is keyed by what could change the pixels: the poisonlens
cache format, the class names, and every image file's path relative to the root, size and
modification time (nanoseconds). A file added, removed, renamed, rewritten or touched changes
the key, so a changed folder is never served from a stale cache; listing and stat-ing the files
is the whole cost of a check.

Where: ``$POISONLENS_CACHE/imagefolder/`` (default ``~/.cache/poisonlens/imagefolder/``), one
file ``<folder hash>-<key>.npy`` per folder; writing a new version of a folder deletes the older
ones. Everything there is safe to delete at any time: a missing entry is decoded again. An
entry is written atomically (a temporary file, then a rename) and read without pickles; one
whose shape or dtype does not match the folder's listing is ignored and rebuilt.
Described for users in docs/data-formats.md.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poisonlens.data.datasets import (
    check_decoded_size,
    class_folders,
    find_image_files,
    open_image,
)
from poisonlens.errors import InputError

#: Environment variable naming the cache root (default ``~/.cache/poisonlens``).
CACHE_ENV = "POISONLENS_CACHE"
#: Bumped whenever what is cached or how it is decoded changes; old entries then miss.
CACHE_FORMAT = 1
#: Folders with fewer images are decoded every time (faster than a cache round trip).
MIN_FILES = 1000

_CHUNK = 256  # images per task of the decoding pool


@dataclass(frozen=True)
class FolderListing:
    """The image files of an ImageFolder in torchvision's order, with their labels.

    Attributes
    ----------
    paths : list of Path, train files then test files
    labels : int64 array of shape (n_files,)
    n_train : int, how many of ``paths`` are training images
    class_names : tuple of str
    stamps : str, one line per file: relative path, size, mtime in ns (what the key hashes)
    """

    paths: list[Path]
    labels: np.ndarray
    n_train: int
    class_names: tuple[str, ...]
    stamps: str


def cache_root() -> Path:
    """The folder holding poisonlens's caches (``$POISONLENS_CACHE`` or ``~/.cache/poisonlens``)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "poisonlens"


def _list_split(
    split_dir: Path, class_names: Sequence[str], *, root: Path, every_class: bool
) -> tuple[list[tuple[str, os.stat_result]], list[int]]:
    # the readers' walk (poisonlens.data.datasets): links stay inside root, loops and FIFOs refused
    classes = set(class_folders(split_dir, root=root))
    unknown = sorted(classes - set(class_names))
    if unknown:
        raise InputError(split_dir / unknown[0], "class folder not present in train/")
    files: list[tuple[str, os.stat_result]] = []
    labels: list[int] = []
    for label, name in enumerate(class_names):
        found = find_image_files(split_dir / name, root=root) if name in classes else []
        if every_class and not found:
            raise InputError(split_dir / name, "class folder has no image")
        files += found
        labels += [label] * len(found)
    return files, labels


def list_imagefolder(root: Path, class_names: Sequence[str]) -> FolderListing:
    """List ``root/train`` and ``root/test``; raises :class:`InputError` naming a bad folder."""
    root = Path(root)
    train, y_train = _list_split(root / "train", class_names, root=root, every_class=True)
    test, y_test = _list_split(root / "test", class_names, root=root, every_class=False)
    if not test:
        raise InputError(root / "test", "no image")
    files = train + test
    # what the key hashes: each file's path relative to the root, size and mtime
    prefix = len(str(root / "x")) - 1  # str(Path(".") / "x") is "x": no "./" to cut
    stamps = "".join(
        f"{p[prefix:]}\t{st.st_size}\t{st.st_mtime_ns}\n".replace(os.sep, "/") for p, st in files
    )
    return FolderListing(
        [Path(p) for p, _ in files],
        np.asarray(y_train + y_test, dtype=np.int64),
        len(train),
        tuple(class_names),
        stamps,
    )


def folder_key(listing: FolderListing) -> str:
    """A hash of everything that could change the decoded pixels (format, classes, files)."""
    h = hashlib.sha256(f"poisonlens imagefolder cache {CACHE_FORMAT}\n".encode())
    h.update(("\0".join(listing.class_names) + f"\n{listing.n_train}\n").encode())
    h.update(listing.stamps.encode())
    return h.hexdigest()[:32]


def _folder_id(root: Path) -> str:
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]


def decode_images(paths: Sequence[Path], *, n_threads: int | None = None) -> np.ndarray:
    """Decode image files straight into one preallocated uint8 array, in parallel threads.

    No list of decoded images is ever held (that list was the loading spike: about 14 KB per
    32x32 image on top of the array). Each file is read by ``poisonlens.data.datasets.open_image``
    (its checks and modes); if any image is colour the grey ones are repeated over three
    channels, else the result has one channel (the rules of ``images_to_array``).

    Parameters
    ----------
    paths : n image files, all of one size
    n_threads : decoding threads (default: the CPUs this process may use, at most 8)

    Returns
    -------
    uint8 array of shape (n, height, width, 1 or 3)

    Raises
    ------
    InputError
        Naming the first unreadable file, or a file whose size differs from the first one's.
    """
    if not paths:
        return np.zeros((0, 0, 0, 1), dtype=np.uint8)
    w0, h0 = open_image(paths[0]).size
    check_decoded_size(paths, w0, h0)  # before the array for all of them is allocated
    out = np.empty((len(paths), h0, w0, 3), dtype=np.uint8)
    grey = np.zeros(len(paths), dtype=bool)

    def decode(start: int) -> None:
        # PIL releases the GIL while decoding, so threads do decode in parallel
        for i in range(start, min(start + _CHUNK, len(paths))):
            image = open_image(paths[i])  # the readers' checks; mode L or RGB
            if image.size != (w0, h0):
                raise InputError(
                    paths[i],
                    f"image is {image.width}x{image.height} but {paths[0]} is {w0}x{h0}; "
                    "all images must have the same size",
                )
            grey[i] = image.mode == "L"
            pixels = np.asarray(image)
            out[i] = pixels[..., None] if grey[i] else pixels

    if n_threads is None:
        n_threads = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)
    starts = range(0, len(paths), _CHUNK)
    if n_threads <= 1:
        for s in starts:
            decode(s)
    else:
        with ThreadPoolExecutor(n_threads) as pool:
            # list() re-raises the first error of any chunk, in order
            list(pool.map(decode, starts))
    return np.ascontiguousarray(out[..., :1]) if grey.all() else out


def _read_entry(path: Path, listing: FolderListing, size: tuple[int, int]) -> np.ndarray | None:
    """The cached pixels if ``path`` holds a well-formed entry for ``listing``, else None."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, EOFError):
        return None  # truncated or corrupt: decode again and replace it
    w, h = size
    ok = (
        isinstance(x, np.ndarray)
        and x.dtype == np.uint8
        and x.ndim == 4
        and x.shape[:3] == (len(listing.paths), h, w)
        and x.shape[3] in (1, 3)
    )
    return x if ok else None


def _write_entry(path: Path, x: np.ndarray) -> None:
    """Atomically write ``x``, then delete this folder's older entries; never fails the load."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, x, allow_pickle=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        folder_id = path.name.split("-", 1)[0]
        for old in path.parent.glob(f"{folder_id}-*.npy"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError as err:
        # a read-only home or a full disk costs the next load a decode, nothing more
        print(f"poisonlens: {path.parent}: cannot write the image cache ({err})", file=sys.stderr)


def load_imagefolder_pixels(
    root: str | os.PathLike, class_names: Sequence[str], *, min_files: int | None = None
) -> tuple[np.ndarray, FolderListing]:
    """All images of an ImageFolder, decoded once and then read from the cache.

    Parameters
    ----------
    root : the folder holding ``train/<class>/*`` and ``test/<class>/*``
    class_names : the classes, in label order (the sub-folders of ``train/``, sorted)
    min_files : folders with fewer images are not cached (default :data:`MIN_FILES`)

    Returns
    -------
    x : uint8 array of shape (n_files, height, width, 1 or 3), train images then test images
    listing : the files and their labels, in the same order
    """
    root = Path(root)
    listing = list_imagefolder(root, class_names)
    threshold = MIN_FILES if min_files is None else min_files
    if len(listing.paths) < threshold:
        return decode_images(listing.paths), listing
    entry = cache_root() / "imagefolder" / f"{_folder_id(root)}-{folder_key(listing)}.npy"
    x = _read_entry(entry, listing, open_image(listing.paths[0]).size)
    if x is None:
        x = decode_images(listing.paths)
        _write_entry(entry, x)
    return x, listing
