"""Numba's on-disk cache for UMAP's compiled functions, in a private folder of the user's own.

umap-learn compiles its functions with numba the first time they run in a process, and marks
almost none of them for numba's cache: every ``poisonlens project`` (and every map the dashboard
starts in the background) spent 9-12 s of CPU compiling before it fitted anything
(bench/results/projection/). :func:`enable_umap_cache` turns numba's cache on for umap's
functions, so that only the first projection on a machine compiles and later ones load the
machine code from disk.

Where: ``$POISONLENS_CACHE/numba/`` (default ``~/.cache/poisonlens/numba/``, beside the image
cache of :mod:`poisonlens.data.cache`), a 0700 folder owned by the user; a few MB. Numba reads
its cache with pickle, so the folder must be one only the user can write: it is never inside a
run folder, no run or file a user hands us can name it (only the user's environment can), and
when it is a link, not a folder, not the user's own, or cannot be made private, nothing is
cached (every process compiles, as before). A ``NUMBA_CACHE_DIR`` the user set is used as it is.
Safe to delete at any time; numba recompiles when umap-learn or numba changes.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

#: umap-learn's modules whose numba functions a fit runs (nearest neighbours are exact, by
#: scikit-learn, so pynndescent's functions are not run)
UMAP_MODULES = ("umap.umap_", "umap.layouts", "umap.spectral", "umap.utils", "umap.distances", "umap.sparse")

_enabled: list[Path | None] = []  # once per process: the folder used (None: no caching)


def numba_cache_folder() -> Path | None:
    """The private folder numba caches into, made if missing; None when it cannot be trusted.

    Returns
    -------
    Path of a 0700 folder owned by this user (``$POISONLENS_CACHE/numba`` or
    ``~/.cache/poisonlens/numba``), or None (with a line on stderr) when it is a link, not a
    folder, someone else's, or cannot be made
    """
    from poisonlens.data.cache import cache_root

    folder = cache_root() / "numba"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # opened without following a link (a link fails here), then checked and made private
        # through that descriptor, so what is checked is what numba will use
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.fstat(fd).st_uid != os.getuid():
                raise OSError("not a folder of this user")
            os.fchmod(fd, 0o700)  # only this user may write what numba unpickles
        finally:
            os.close(fd)
    except OSError as err:
        print(f"poisonlens: {folder}: no numba cache, UMAP compiles in every process ({err})", file=sys.stderr)
        return None
    return folder


def enable_umap_cache() -> Path | None:
    """Turn numba's on-disk cache on for umap-learn's functions (imports umap); once per process.

    Functions already compiled in this process stay as they are; the others compile once into,
    or load from, :func:`numba_cache_folder` (or the user's own ``NUMBA_CACHE_DIR``).

    Returns
    -------
    the cache folder, or None when nothing is cached
    """
    if _enabled:
        return _enabled[0]
    import importlib

    from numba.core import config
    from numba.core.registry import CPUDispatcher

    user_dir = os.environ.get("NUMBA_CACHE_DIR")
    folder = Path(user_dir) if user_dir else numba_cache_folder()
    if folder is not None:
        before = config.CACHE_DIR
        config.CACHE_DIR = str(folder)  # read when each function's cache is made, just below
        try:
            for name in UMAP_MODULES:
                for value in vars(importlib.import_module(name)).values():
                    if isinstance(value, CPUDispatcher):
                        _cache_one(value)
        finally:
            config.CACHE_DIR = before
    _enabled.append(folder)
    return folder


def _cache_one(dispatcher) -> None:
    """Give one numba function a cache in ``config.CACHE_DIR`` (also one numba cached elsewhere)."""
    with warnings.catch_warnings():
        # numba warns and compiles in memory when a function cannot be cached (e.g. a closure)
        warnings.simplefilter("ignore")
        try:
            dispatcher.enable_caching()
        except Exception:  # noqa: BLE001 - numba raises RuntimeError or its own errors here
            pass
