"""Decode an ImageFolder once: its pixels cached as one uint8 ``.npy`` in a user cache folder.

Decoding the 60,000 JPEGs of CIFAR-10 takes tens of seconds; reading the cached 184 MB back
takes a fraction of one. The cache is keyed by **content**: the poisonlens cache format, the
class names, and every image file's path relative to the root with a BLAKE2b hash of its bytes.
Sizes and modification times are not trusted (tar, ``rsync -t``, ``cp -p`` and unzip put an old
mtime back on new bytes): a file whose bytes changed misses, whatever its size and mtime.
Hashing the files costs a read of their bytes, a small share of decoding them.

Where: ``$POISONLENS_CACHE/imagefolder/`` (default ``~/.cache/poisonlens/imagefolder/``), a
0700 folder, one file ``<folder hash>-<key>.npy`` per folder with a ``.sum`` beside it; writing
a new version of a folder deletes the older ones. Everything there is safe to delete at any
time: a missing entry is decoded again. An entry is written atomically (a temporary file, then
a rename) and read without pickles, never through a link or from a FIFO. Before use it is
verified: its ``.sum`` must carry the key, the shape, dtype and size, and a BLAKE2b checksum of
the pixels keyed by a secret of this cache folder (``.secret``, 0600), so an entry this cache
did not write for that content (planted, copied, stale, damaged) is ignored and rebuilt.
Described for users in docs/data-formats.md.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import stat
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from poisonlens.data.images import (
    check_decoded_size,
    class_folders,
    find_image_files,
    open_image,
)
from poisonlens.errors import InputError

#: Environment variable naming the cache root (default ``~/.cache/poisonlens``).
CACHE_ENV = "POISONLENS_CACHE"
#: Bumped whenever what is cached or how it is decoded changes; old entries then miss.
CACHE_FORMAT = 2
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
    stamps : str, one line per file: relative path and the BLAKE2b hash of its bytes (what the
        key hashes)
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


def list_imagefolder(
    root: Path, class_names: Sequence[str], *, hash_content: bool = True
) -> FolderListing:
    """List ``root/train`` and ``root/test``; raises :class:`InputError` naming a bad folder.

    ``hash_content=False`` leaves ``stamps`` empty (no file is read): for a folder too small
    to be cached.

    Parameters
    ----------
    root : path
        The data set folder, holding ``train/`` and ``test/``.
    class_names : sequence of str
        The classes, in label order (the sub-folders of ``train/``).
    hash_content : bool
        Hash every file's bytes into ``stamps`` (default True).
    """
    root = Path(root)
    train, y_train = _list_split(root / "train", class_names, root=root, every_class=True)
    test, y_test = _list_split(root / "test", class_names, root=root, every_class=False)
    if not test:
        raise InputError(root / "test", "no image")
    files = train + test
    # what the key hashes: each file's path relative to the root and a hash of its bytes
    prefix = len(str(root / "x")) - 1  # str(Path(".") / "x") is "x": no "./" to cut
    stamps = "".join(
        f"{p[prefix:]}\t{content_hash(p)}\n".replace(os.sep, "/") for p, _ in files
    ) if hash_content else ""
    return FolderListing(
        [Path(p) for p, _ in files],
        np.asarray(y_train + y_test, dtype=np.int64),
        len(train),
        tuple(class_names),
        stamps,
    )


def content_hash(path: str | Path) -> str:
    """BLAKE2b (128 bits) of a file's bytes. The listing already checked each file (a regular
    file, links inside the root only); it is opened non-blocking and checked again with
    ``fstat``, so a file swapped for a FIFO since is refused, never waited on.

    Parameters
    ----------
    path : str or path
        An image file the listing already checked.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(path, "not a regular file (a folder, FIFO, socket or device)")
        h = hashlib.blake2b(digest_size=16)
        while block := os.read(fd, 1 << 20):
            h.update(block)
        return h.hexdigest()
    finally:
        os.close(fd)


def folder_key(listing: FolderListing) -> str:
    """A hash of everything that could change the decoded pixels (format, classes, files).

    Parameters
    ----------
    listing : FolderListing
        What :func:`list_imagefolder` found.
    """
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


def _cache_dir() -> Path | None:
    """The 0700 cache folder, made if missing; None (no caching) when it is a link, not ours,
    or cannot be made private."""
    folder = cache_root() / "imagefolder"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(folder)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise OSError(f"{folder} is not a folder of this user")
        if stat.S_IMODE(info.st_mode) != 0o700:
            os.chmod(folder, 0o700)
    except OSError as err:
        print(f"poisonlens: {folder}: cannot write the image cache ({err})", file=sys.stderr)
        return None
    return folder


def _secret(folder: Path) -> bytes:
    """This cache folder's random key (``.secret``, 0600), made on first use."""
    from poisonlens import runfs

    try:
        data = runfs.read_bytes(folder, ".secret", max_bytes=64)
        if len(data) == 32:
            return data
    except runfs.RunFileError:
        pass
    runfs.write_atomic(folder, (".secret",), lambda f: f.write(os.urandom(32)), mode=0o600)
    return runfs.read_bytes(folder, ".secret", max_bytes=64)


def _checksum(secret: bytes, key: str, x: np.ndarray) -> str:
    h = hmac.new(secret, f"{key}\n{x.dtype.str}\n{x.shape}\n".encode(), hashlib.blake2b)
    h.update(memoryview(np.ascontiguousarray(x)).cast("B"))
    return h.hexdigest()


def _read_entry(path: Path, listing: FolderListing, size: tuple[int, int]) -> np.ndarray | None:
    """The cached pixels if ``path`` holds an entry this cache wrote for ``listing``'s content
    (key, shape, dtype, size and keyed checksum verified), else None."""
    from poisonlens import runfs
    from poisonlens.store import _read_npy

    folder, key = path.parent, path.stem.split("-", 1)[-1]
    try:
        meta = json.loads(runfs.read_bytes(folder, path.stem + ".sum", max_bytes=4096))
        x = _read_npy(path, ndim=4, mmap=False, root=folder)
    except (OSError, ValueError, EOFError, MemoryError):  # InputError is a ValueError
        return None  # missing, truncated, a link or FIFO, not ours: decode again and replace it
    w, h = size
    ok = (
        isinstance(meta, dict)
        and meta.get("key") == key
        and x.shape[:3] == (len(listing.paths), h, w)
        and x.shape[3] in (1, 3)
        and meta.get("shape") == list(x.shape)
        and meta.get("dtype") == "uint8"
        and meta.get("nbytes") == x.nbytes
        and hmac.compare_digest(str(meta.get("checksum", "")), _checksum(_secret(folder), key, x))
    )
    return x if ok else None


def _write_entry(path: Path, x: np.ndarray) -> None:
    """Atomically write ``x`` and its ``.sum``, then delete this folder's older entries; never
    fails the load."""
    from poisonlens import runfs

    folder, key = path.parent, path.stem.split("-", 1)[-1]
    try:
        meta = {"key": key, "shape": list(x.shape), "dtype": "uint8", "nbytes": int(x.nbytes),
                "checksum": _checksum(_secret(folder), key, x)}
        runfs.write_atomic(folder, (path.name,), lambda f: np.save(f, x, allow_pickle=False), mode=0o600)
        runfs.write_atomic(folder, (path.stem + ".sum",), lambda f: f.write(json.dumps(meta).encode()),
                           mode=0o600)
        folder_id = path.name.split("-", 1)[0]
        for old in runfs.listdir(folder):
            if old.startswith(f"{folder_id}-") and old not in (path.name, path.stem + ".sum"):
                runfs.remove(folder, (old,))
    except (OSError, InputError) as err:
        # a read-only home or a full disk costs the next load a decode, nothing more
        print(f"poisonlens: {folder}: cannot write the image cache ({err})", file=sys.stderr)


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
    threshold = MIN_FILES if min_files is None else min_files
    listing = list_imagefolder(root, class_names, hash_content=False)
    if len(listing.paths) < threshold:
        return decode_images(listing.paths), listing
    listing = list_imagefolder(root, class_names)  # now with every file's content hash
    folder = _cache_dir()
    if folder is None:
        return decode_images(listing.paths), listing
    entry = folder / f"{_folder_id(root)}-{folder_key(listing)}.npy"
    x = _read_entry(entry, listing, open_image(listing.paths[0]).size)
    if x is None:
        x = decode_images(listing.paths)
        _write_entry(entry, x)
    return x, listing
