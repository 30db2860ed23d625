"""Data formats: each one module here that registers its prefix, its loader and its one-line doc.

A data set is named on the command line by a spec: a format's prefix alone (``digits``) or the
prefix, a colon and a path (``npz:<file>``). :func:`register` declares a format; the modules of
this folder are imported when the registry is first read, so a new file is found without editing
any list. ``--dataset``'s help, the spec check (:func:`check_dataset_spec`, run before torch or a
data set loads), its error message and :func:`poisonlens.data.load_dataset` all read this
registry. A format module imports its heavy readers (numpy, PIL) inside its loader, so reading
the registry stays instant. docs/extending.md walks through adding one.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from poisonlens.errors import InputError


@dataclass(frozen=True)
class DataFormat:
    """A registered data format.

    Attributes
    ----------
    prefix : the spec's word before the colon (``npz``), or the whole spec (``digits``)
    arg : what follows the colon (``<file>``, ``<dir>``), or '' for a format that takes none
    doc : one line for ``--help`` and docs: what the format reads
    loader : ``loader(arg, *, name)`` returning a :class:`poisonlens.data.ImageDataset`
        (``arg`` is '' for a format without one; ``name`` is the whole spec)
    """

    prefix: str
    arg: str
    doc: str
    loader: Callable

    @property
    def spec(self) -> str:
        """How the format is written on the command line, e.g. ``npz:<file>``."""
        return f"{self.prefix}:{self.arg}" if self.arg else self.prefix


_REGISTRY: dict[str, DataFormat] = {}


def register(prefix: str, *, arg: str = "", doc: str) -> Callable[[Callable], Callable]:
    """Decorator: make ``loader`` read the specs ``<prefix>`` (``arg`` empty) or ``<prefix>:<arg>``.

    Parameters
    ----------
    prefix : str
        The format's name on the command line, letters, digits and '-' (``npz``).
    arg : str
        What the spec carries after the colon, as shown in help (``<file>``, ``<dir>``); empty
        for a format that takes nothing (``digits``).
    doc : str
        One line: what the format reads (shown by ``--help`` and ``poisonlens help formats``).

    Returns
    -------
    decorator returning the loader unchanged
    """
    if not prefix.replace("-", "").isalnum():
        raise ValueError(f"a data format prefix is letters, digits and '-', got {prefix!r}")

    def wrap(loader: Callable) -> Callable:
        _REGISTRY[prefix] = DataFormat(prefix, arg, doc, loader)
        return loader

    return wrap


def _load_builtin() -> None:
    # Importing the modules runs their @register decorators.
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


def data_formats() -> list[DataFormat]:
    """Every registered data format, ``digits`` (the default) first, then by prefix.

    Returns
    -------
    list of DataFormat
    """
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda f: (f.prefix != "digits", f.prefix))


def format_specs() -> list[str]:
    """How each format is written, e.g. ``['digits', 'cifar10:<dir>', ..., 'npz:<file>']``.

    Returns
    -------
    list of str
    """
    return [f.spec for f in data_formats()]


def dataset_rule() -> str:
    """The message for a spec no format reads, naming every format."""
    specs = format_specs()
    return f"unknown data set; use {', '.join(specs[:-1])} or {specs[-1]}"


def find_format(spec: str) -> tuple[DataFormat, str]:
    """The format that reads ``spec``, and the argument after its colon ('' for none).

    Only the form is checked, nothing is read: a misspelt ``digts`` is refused before torch or
    a data set loads.

    Parameters
    ----------
    spec : str
        A data set spec, e.g. ``digits`` or ``npz:data/mine.npz``.

    Raises
    ------
    InputError
        Naming ``spec``, when no format reads it (the message lists the formats).
    """
    prefix, sep, arg = spec.partition(":")
    _load_builtin()
    found = _REGISTRY.get(prefix)
    if found is None or bool(found.arg) != bool(sep and arg):
        raise InputError(spec, dataset_rule())
    return found, arg


def load(spec: str):
    """Load the data set ``spec`` names through its format's loader.

    Parameters
    ----------
    spec : str
        A data set spec (see :func:`find_format`).

    Returns
    -------
    ImageDataset
    """
    found, arg = find_format(spec)
    return found.loader(arg, name=spec)
