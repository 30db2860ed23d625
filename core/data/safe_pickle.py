"""Read pickles from users without running them: an allow-list unpickler.

A pickle is a program: every class or function it names (a "global") is imported and
may be called. :func:`safe_load` resolves only the globals listed in :data:`ALLOWED`,
the ones needed to rebuild PIL images, numpy arrays, torch tensors and plain Python
values; any other global (``os.system``, ``builtins.eval``, ``subprocess.Popen``, ...)
stops the load with an :class:`InputError` before anything it names is imported or called.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import io
import os
import pickle
from collections.abc import Callable
from typing import BinaryIO

from core.errors import InputError

# Python 2's spellings of module names, as ``pickle`` maps them when reading old pickles.
_PY2_NAMES = _compat_pickle.NAME_MAPPING
_PY2_MODULES = _compat_pickle.IMPORT_MAPPING


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` restricted to what pickle uses it for: bytes written by protocols 0-2."""
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _load_storage_weights_only(data: bytes) -> object:
    """torch's ``_load_from_bytes``, but through torch's own safe loader (``weights_only``)."""
    import torch

    return torch.load(io.BytesIO(data), weights_only=True)


def _import(module: str, name: str) -> Callable[[], object]:
    def resolve() -> object:
        return getattr(importlib.import_module(module), name)

    return resolve


def _numpy_core(submodule: str, name: str) -> Callable[[], object]:
    # numpy 2 renamed numpy.core to numpy._core; pickles from either name the same object.
    def resolve() -> object:
        try:
            module = importlib.import_module(f"numpy._core.{submodule}")
        except ImportError:
            module = importlib.import_module(f"numpy.core.{submodule}")
        return getattr(module, name)

    return resolve


_BUILTINS = (
    "object list tuple dict set frozenset int float complex bool str bytes bytearray slice range"
)

#: (module, name) -> how to resolve it. Everything else is refused.
ALLOWED: dict[tuple[str, str], Callable[[], object]] = {
    **{("builtins", n): _import("builtins", n) for n in _BUILTINS.split()},
    # protocols 0-2 rebuild class instances (0, 1) and bytes (0-2) through these two
    ("copyreg", "_reconstructor"): _import("copyreg", "_reconstructor"),
    ("_codecs", "encode"): lambda: _latin1_encode,
    ("collections", "OrderedDict"): _import("collections", "OrderedDict"),
    ("PIL.Image", "Image"): _import("PIL.Image", "Image"),
    ("PIL.PngImagePlugin", "PngImageFile"): _import("PIL.PngImagePlugin", "PngImageFile"),
    ("PIL.JpegImagePlugin", "JpegImageFile"): _import("PIL.JpegImagePlugin", "JpegImageFile"),
    ("numpy", "ndarray"): _import("numpy", "ndarray"),
    ("numpy", "dtype"): _import("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_core("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"): _numpy_core("multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"): _numpy_core("numeric", "_frombuffer"),
    # a pickled torch tensor (the benchmark's backdoor patch) names these two; the
    # storage loader is swapped for one that cannot run code (torch's own calls torch.load
    # with weights_only=False)
    ("torch._utils", "_rebuild_tensor_v2"): _import("torch._utils", "_rebuild_tensor_v2"),
    ("torch.storage", "_load_from_bytes"): lambda: _load_storage_weights_only,
}


def _canonical(module: str, name: str) -> tuple[str, str]:
    """The (module, name) a global is listed under: Python 3 and numpy 2 spellings."""
    if (module, name) in _PY2_NAMES:
        module, name = _PY2_NAMES[(module, name)]
    elif module in _PY2_MODULES:
        module = _PY2_MODULES[module]
    if module.startswith("numpy.core."):
        module = "numpy._core." + module.removeprefix("numpy.core.")
    return module, name


class _AllowListUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, *, source: str, encoding: str) -> None:
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> object:
        # every opcode that names a global (GLOBAL, STACK_GLOBAL, INST, EXT*) comes here
        # before anything is imported, so refusing here runs nothing
        module, name = _canonical(module, name)
        resolve = ALLOWED.get((module, name))
        if resolve is None:
            raise InputError(
                self._source,
                f"refused to unpickle '{module}.{name}': only PIL images, numpy arrays, "
                "torch tensors and plain Python values are allowed (nothing was run)",
            )
        return resolve()


def safe_load(
    file: str | os.PathLike | BinaryIO, *, source: str | None = None, encoding: str = "ASCII"
) -> object:
    """Unpickle ``file`` allowing only the globals in :data:`ALLOWED`.

    Parameters
    ----------
    file : a path, or a binary file object
    source : the name used in error messages; defaults to the path
    encoding : how to decode Python 2 ``str`` objects, as in :func:`pickle.load`
        (``"latin1"`` for CIFAR-10's batches)

    Raises
    ------
    InputError
        When the file is missing, is not a pickle, or names a global outside the allow-list.
    """
    if isinstance(file, (str, os.PathLike)):
        source = source or str(file)
        try:
            handle = open(file, "rb")
        except OSError as err:
            raise InputError(source, f"cannot read file: {err.strerror or err}") from err
        with handle:
            return safe_load(handle, source=source, encoding=encoding)
    source = source or str(getattr(file, "name", "pickle"))
    try:
        return _AllowListUnpickler(file, source=source, encoding=encoding).load()
    except InputError:
        raise
    except Exception as err:  # any failure inside a load means the file is not a readable pickle
        raise InputError(source, f"not a readable pickle ({type(err).__name__}: {err})") from err
