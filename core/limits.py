"""How big an untrusted input may be, and bounded readers that check before they allocate.

poisonlens opens data that someone may have crafted against it, so every reader asks
:func:`current_limits` how many images, pixels, bytes and nesting levels it may accept,
and refuses with an :class:`~poisonlens.errors.InputError` *before* allocating anything a file
claims. The defaults fit real use (CIFAR-10 whole, an ``.npz`` of a million images,
ImageNet-sized pictures) and stop a file that claims terabytes. ``docs/security.md``
lists them with the CLI flags that override them.

This module also holds the two bounded readers every format needs:
:func:`open_regular` (a regular file, never a FIFO or device, never through a link that
leaves its folder) and :func:`parse_json` (bounded nesting and integer length).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import BinaryIO

from poisonlens.errors import InputError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30


@dataclass(frozen=True)
class Limits:
    """The most any one input may hold; every reader checks these before allocating.

    Attributes
    ----------
    max_file_bytes : size of one file read whole (a pickle, an image, an ``.npz``); 8 GiB
    max_array_bytes : one array, as declared by its header or its pickle; 16 GiB
        (a million 64x64 RGB images are 12 GiB)
    max_total_bytes : all arrays of one file together; 32 GiB
    max_images : images in one data set or poison set; 2,000,000
    max_pixels_per_image : width x height of one image; 4096 x 4096 (PIL's own bomb
        limit is 89 million)
    max_classes : classes of a data set (a label of 1e9 must not make 1e9 names); 100,000
    max_depth : nesting of lists, tuples and dicts in a pickle or a JSON file; 32
    max_items : container items in one pickle, all containers together; 5,000,000
    max_int_digits : decimal digits of an integer in JSON or a text pickle; 40
    max_members : arrays in one ``.npz``; 1,000
    max_compression_ratio : declared / compressed size of an ``.npz`` member over 16 MiB
        (a zip bomb is ~1000); 200
    max_json_bytes : size of a side JSON file; 16 MiB
    """

    max_file_bytes: int = 8 * GiB
    max_array_bytes: int = 16 * GiB
    max_total_bytes: int = 32 * GiB
    max_images: int = 2_000_000
    max_pixels_per_image: int = 4096 * 4096
    max_classes: int = 100_000
    max_depth: int = 32
    max_items: int = 5_000_000
    max_int_digits: int = 40
    max_members: int = 1_000
    max_compression_ratio: float = 200.0
    max_json_bytes: int = 16 * MiB

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise InputError(f"--{f.name.replace('_', '-')}", f"must be > 0, got {value!r}")

    @classmethod
    def from_overrides(cls, base: Limits | None = None, **overrides: object) -> Limits:
        """``base`` (default: the current limits) with some fields replaced.

        Values may be ints, or strings with a binary suffix (``"512M"``, ``"2G"``), as a
        CLI flag gives them.

        Parameters
        ----------
        base : Limits, optional
            The limits to start from. Default: :func:`current_limits`.
        **overrides : int, float or str
            Field name to new value, e.g. ``max_images=3_000_000`` or ``max_file_bytes="8G"``;
            ``max_compression_ratio`` keeps a fraction, the others are whole numbers.

        Returns
        -------
        Limits

        Raises
        ------
        InputError
            For an unknown name or a value that is not a positive number, naming the flag
            (``--max-array-bytes``).
        """
        base = base or current_limits()
        names = {f.name: f for f in fields(cls)}
        parsed = {}
        for key, value in overrides.items():
            flag = f"--{key.replace('_', '-')}"
            if key not in names:
                raise InputError(flag, f"unknown limit; known: {', '.join(names)}")
            parsed[key] = _parse_size(value, flag, as_float=key == "max_compression_ratio")
        return dataclasses.replace(base, **parsed)


_SUFFIXES = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}


def _parse_size(value: object, flag: str, *, as_float: bool = False) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(value), re.I)
        if not match:
            raise InputError(flag, f"expected a positive number such as 1000 or 2G, got {value!r}")
        number = float(match[1]) * _SUFFIXES[match[2].upper()]
    if not number > 0 or number != number or number == float("inf"):
        raise InputError(flag, f"must be > 0, got {value!r}")
    return float(number) if as_float else int(number)


_current = Limits()


def current_limits() -> Limits:
    """The limits readers check now (the defaults unless :func:`set_limits` changed them)."""
    return _current


def set_limits(limits: Limits | None = None, **overrides: object) -> Limits:
    """Make ``limits`` (or the current ones with ``overrides``) the process-wide limits.

    The CLI calls this once from its limit flags, before any file is read.

    Parameters
    ----------
    limits : Limits, optional
        The new limits, before ``overrides``. Default: the current ones.
    **overrides : int, float or str
        Fields to replace, as :meth:`Limits.from_overrides` takes them.

    Returns
    -------
    Limits
        The previous limits, so a test can put them back.
    """
    global _current
    previous = _current
    _current = Limits.from_overrides(limits or _current, **overrides)
    return previous


def check_count(source: object, what: str, n: int, limit: int, flag: str) -> None:
    """Raise :class:`InputError` when ``n`` exceeds ``limit``; the message names the flag.

    Parameters
    ----------
    source : object
        The file or option the error names, e.g. a path.
    what : str
        What ``n`` counts, e.g. ``"images"`` or ``"file size"``.
    n : int
        The count found (or declared) in the input.
    limit : int
        The most allowed; ``n == limit`` passes.
    flag : str
        The flag that raises the limit, e.g. ``"--max-images"``, quoted in the message.
    """
    if n > limit:
        raise InputError(source, f"{what} {n:,} exceeds the limit {limit:,} (raise it with {flag})")


# ---------------------------------------------------------------- regular files


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(path: str | os.PathLike, root: str | os.PathLike) -> Path:
    """``path`` with links resolved, refused unless it stays inside ``root``.

    Parameters
    ----------
    path : str or PathLike
        A path that must exist.
    root : str or PathLike
        The folder ``path`` must stay inside once every link is resolved (``root`` itself
        counts as inside).

    Returns
    -------
    Path
        The resolved, absolute path.

    Raises
    ------
    InputError
        For a link leading out of ``root``, a link loop, or a broken link.
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
        real_root = Path(root).resolve(strict=True)
    except (OSError, RuntimeError) as err:  # RuntimeError: a link loop (Python < 3.13)
        raise InputError(path, "broken symbolic link or link loop") from err
    if not _inside(real, real_root):
        raise InputError(
            path, f"symbolic link to {str(real)!r}, outside {str(real_root)!r}; not followed"
        )
    return real


def open_regular(
    path: str | os.PathLike,
    *,
    root: str | os.PathLike | None = None,
    max_bytes: int | None = None,
) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file of at most ``max_bytes``.

    A FIFO, socket or device is refused without blocking (opened non-blocking and checked
    with ``fstat``, so the check and the read see the same file); with ``root``, a path
    whose links lead outside ``root`` is refused.

    Parameters
    ----------
    path : str or PathLike
        The file to open.
    root : str or PathLike, optional
        When given, links in ``path`` are resolved and must stay inside it. Default None:
        links are followed.
    max_bytes : int, optional
        The largest size accepted, in bytes. Default: the ``--max-file-bytes`` limit.

    Returns
    -------
    BinaryIO
        A blocking binary reader; the caller closes it.

    Raises
    ------
    InputError
        Naming ``path``: missing, not a regular file, too large, or a link out of ``root``.
    """
    source = str(path)
    if root is not None:
        path = resolve_inside(path, root)
    max_bytes = current_limits().max_file_bytes if max_bytes is None else max_bytes
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as err:
        raise InputError(source, "no such file") from err
    except OSError as err:
        raise InputError(source, f"cannot read file: {err.strerror or err}") from err
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(source, "not a regular file (a folder, FIFO, socket or device)")
        check_count(source, "file size", info.st_size, max_bytes, "--max-file-bytes")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(
    path: str | os.PathLike, *, root: str | os.PathLike | None = None, max_bytes: int | None = None
) -> bytes:
    """The bytes of a regular file, checked as in :func:`open_regular`.

    Parameters
    ----------
    path : str or PathLike
        The file to read.
    root : str or PathLike, optional
        When given, links in ``path`` must stay inside it (see :func:`open_regular`).
    max_bytes : int, optional
        The largest size accepted, in bytes. Default: the ``--max-file-bytes`` limit.

    Returns
    -------
    bytes

    Raises
    ------
    InputError
        As :func:`open_regular`, or when the read fails.
    """
    with open_regular(path, root=root, max_bytes=max_bytes) as handle:
        try:
            return handle.read()
        except OSError as err:
            raise InputError(path, f"cannot read file: {err.strerror or err}") from err


# ---------------------------------------------------------------- JSON

# a JSON string (skipped whole) or one bracket; enough to measure nesting without parsing
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.S)


def json_depth(text: str) -> int:
    """How deeply ``text`` nests arrays and objects (0 for a scalar), without recursion.

    Brackets inside JSON strings are skipped; the text is not otherwise parsed, so this is
    cheap to run before :func:`json.loads` on text of any depth.

    Parameters
    ----------
    text : str
        JSON text, valid or not.

    Returns
    -------
    int, e.g. 2 for ``{"a": [1]}``
    """
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif token in "]}":
            depth -= 1
    return deepest


def parse_json(text: str | bytes, source: object, *, limits: Limits | None = None) -> object:
    """``json.loads`` of untrusted text: bounded size, nesting and integer length, no NaN.

    Parameters
    ----------
    text : str or bytes
        The JSON text; bytes must be UTF-8.
    source : object
        The file or option named in an error.
    limits : Limits, optional
        Where ``max_json_bytes``, ``max_depth`` and ``max_int_digits`` come from. Default:
        :func:`current_limits`.

    Returns
    -------
    object
        Whatever the text holds: dict, list, str, int, float, bool or None.

    Raises
    ------
    InputError
        Naming ``source`` and what is wrong; never RecursionError or a 4300-digit ValueError.
    """
    limits = limits or current_limits()
    check_count(source, "JSON size in bytes", len(text), limits.max_json_bytes, "--max-json-bytes")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise InputError(source, f"not UTF-8 text ({err.reason} at byte {err.start})") from err
    depth = json_depth(text)
    if depth > limits.max_depth:
        raise InputError(
            source, f"JSON nested {depth} deep, more than the limit {limits.max_depth}"
        )

    def bounded_int(digits: str) -> int:
        if len(digits.lstrip("-")) > limits.max_int_digits:
            raise InputError(
                source, f"JSON integer of {len(digits):,} digits (limit {limits.max_int_digits})"
            )
        return int(digits)

    def no_constant(name: str) -> float:
        raise InputError(source, f"JSON value {name} is not allowed (not a finite number)")

    try:
        return json.loads(text, parse_int=bounded_int, parse_constant=no_constant)
    except InputError:
        raise
    except json.JSONDecodeError as err:
        raise InputError(source, f"not valid JSON ({err.msg} at line {err.lineno})") from err
    except (ValueError, RecursionError) as err:  # belt and braces: depth was checked above
        raise InputError(source, f"not valid JSON ({type(err).__name__})") from err
