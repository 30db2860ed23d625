"""Read pickles from users without running them: a pickle reader that builds every object itself.

A pickle is a program for a small stack machine: it names classes and functions
("globals") and calls them. ``pickle.Unpickler`` with an allow-list still calls the
allowed globals with whatever the file passes, and several of them can be steered (a
``numpy.dtype`` state with forged object flags makes array items raw pointers; a PIL
image-file class opens any path; ``bytearray(10**12)`` fills memory). So this module is its
own stack machine (:class:`_Machine`, the opcodes of protocols 0-5): no global named by
the file is ever imported or called. Each allowed name maps to a small validating
constructor of ours (:data:`ALLOWED`), which rebuilds

- a plain numeric numpy array from dtype name + shape + bytes: a fixed set of dtypes
  (bool, ints, floats), no flags or fields taken from the file, size checked against
  :class:`poisonlens.limits.Limits` before anything is allocated, always a fresh contiguous copy;
- a PIL image from mode + size + bytes: modes L, RGB, RGBA, P (palette checked), size limited;
- a torch tensor (the benchmark's backdoor patch) as a numpy array, read from torch's legacy
  storage bytes by this same machine;
- plain ``str``, ``bytes``, ``int``, ``float``, ``list``, ``tuple``, ``dict``, ``set`` with the
  number of items and the nesting depth bounded, and no container that refers to itself;
  items and bytes are counted per reference (the memo repeats an object for 2 bytes, so it
  could otherwise make gigabytes of a few), and dict keys and set items are only of kinds
  whose hashes a file cannot make collide (text, bytes, int64, float, bool, None).

The design follows torch's ``weights_only`` unpickler (its own machine, rebuild functions
that check their arguments) and Trail of Bits' fickling (judge the opcodes, not the objects).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import io
import os
import struct
import warnings
from collections import OrderedDict
from collections.abc import Callable
from typing import BinaryIO

import numpy as np
from PIL import Image

from poisonlens.errors import InputError
from poisonlens.limits import Limits, current_limits, open_regular

# Python 2's spellings of module names, as ``pickle`` maps them when reading old pickles.
_PY2_NAMES = _compat_pickle.NAME_MAPPING
_PY2_MODULES = _compat_pickle.IMPORT_MAPPING

#: numpy dtype names a pickle may name: plain numbers, nothing with pointers or fields.
NUMERIC_DTYPES = frozenset(
    "b1 ? u1 u2 u4 u8 i1 i2 i4 i8 f2 f4 f8 bool uint8 int8 int16 int32 int64 float32 float64"
    " uint16 uint32 uint64 float16".split()
)

#: PIL modes a pickled image may have, with their bytes per pixel.
IMAGE_MODES = {"L": 1, "P": 1, "RGB": 3, "RGBA": 4}

_MAX_NDIM = 32
_MAX_TEXT_LINE = 1 << 16  # a GLOBAL, INT or FLOAT line; longer ones are not real pickles


class _Refused(Exception):
    """A reason to stop reading; becomes ``InputError(source, reason)``."""


class _Malformed(_Refused):
    """Bytes that are not a pickle at all; becomes ``not a readable pickle: <reason>``."""


# ---------------------------------------------------------------- markers and pending objects


class _Global:
    """What a named global becomes: a marker that only our own functions know how to use.

    ``call`` runs on REDUCE (``f(*args)``), ``new`` on NEWOBJ (``cls.__new__(cls, *args)``);
    a marker with neither is data (``numpy.ndarray`` passed to ``_reconstruct``).
    """

    __slots__ = ("name", "call", "new")

    def __init__(self, name: str, call: Callable | None = None, new: Callable | None = None):
        self.name, self.call, self.new = name, call, new

    def __repr__(self) -> str:
        return f"<global {self.name}>"


class _Pending:
    """An object made by REDUCE or NEWOBJ whose content comes with the following BUILD."""

    __slots__ = ("value", "done", "memo_keys")

    def __init__(self) -> None:
        self.value, self.done, self.memo_keys = None, False, []

    def build(self, machine: _Machine, state: object) -> object:
        """Fill in the object from its BUILD ``state``; return the finished value."""
        raise NotImplementedError

    def unbuilt(self) -> object:
        """The value when no BUILD came; refused by default."""
        raise _Refused(f"a {self.kind} without its content (no BUILD)")

    kind = "object"


class _PendingImage(_Pending):
    __slots__ = ()
    kind = "PIL image"

    def build(self, machine: _Machine, state: object) -> object:
        """Make the PIL image from its pickled state."""
        return machine.make_image(state)


class _PendingDType(_Pending):
    __slots__ = ("name",)
    kind = "numpy dtype"

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def build(self, machine: _Machine, state: object) -> object:
        """Make the numpy dtype from its pickled state."""
        return _dtype_from_state(self.name, state)

    def unbuilt(self) -> object:
        """The dtype named, without the state a BUILD would add."""
        return np.dtype(self.name)


class _PendingArray(_Pending):
    __slots__ = ()
    kind = "numpy array"

    def build(self, machine: _Machine, state: object) -> object:
        """Make the array from its (shape, dtype, fortran, bytes) state."""
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _Refused("numpy array state is not (shape, dtype, fortran, bytes)")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(dtype, np.dtype):
            raise _Refused("numpy array state has no numeric dtype")
        if isinstance(raw, str):  # protocols 0-2 written by Python 2: latin-1 text
            raw = _latin1(raw)
        if not isinstance(raw, (bytes, bytearray)):
            raise _Refused("numpy array data is not bytes (an object array?)")
        return machine.make_array(raw, dtype, shape, order="F" if fortran is True else "C")


class _Storage:
    """A torch storage read from its legacy bytes: a 1-d numpy array."""

    __slots__ = ("array",)

    def __init__(self, array: np.ndarray) -> None:
        self.array = array


def _latin1(text: str) -> bytes:
    try:
        return text.encode("latin1")
    except UnicodeEncodeError as err:
        raise _Refused("bytes written as text are not latin-1") from err


def _dtype_from_state(name: str, state: object) -> np.dtype:
    # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata]):
    # only the byte order is taken; fields and flags from a file are how an object dtype
    # is forged, so any value there is refused
    if not (isinstance(state, tuple) and len(state) in (8, 9)):
        raise _Refused("numpy dtype state is not a plain dtype's")
    byteorder, rest, flags = state[1], state[2:5], state[7]
    if byteorder not in ("<", ">", "|", "=") or any(v is not None for v in rest) or flags != 0:
        raise _Refused(
            f"numpy dtype {name!r} with fields or flags set; only plain numbers are read"
        )
    if len(state) == 9 and state[8] is not None:
        raise _Refused("numpy dtype with metadata")
    dtype = np.dtype(name)
    return dtype.newbyteorder(byteorder) if byteorder in "<>" else dtype


# ---------------------------------------------------------------- the allowed globals


def _no_call(name: str) -> Callable:
    def refuse(*args: object) -> object:
        raise _Refused(f"calling {name!r} is not allowed (nothing was run)")

    return refuse


def _allowed() -> dict[tuple[str, str], _Global]:
    g: dict[tuple[str, str], _Global] = {}

    def add(module: str, name: str, **kw: Callable) -> None:
        g[(module, name)] = _Global(f"{module}.{name}", **kw)

    add("builtins", "set", call=lambda m, *a: m.make_set(set, a))
    add("builtins", "frozenset", call=lambda m, *a: m.make_set(frozenset, a))
    add("builtins", "bytes", call=lambda m, *a: m.make_bytes(bytes, a))
    add("builtins", "bytearray", call=lambda m, *a: m.make_bytes(bytearray, a))
    add("builtins", "complex", call=lambda m, *a: _complex(a))
    add("builtins", "object")
    add("_codecs", "encode", call=lambda m, *a: _codecs_encode(a))
    add("collections", "OrderedDict", call=lambda m, *a: m.make_ordered_dict(a))
    add("copyreg", "_reconstructor", call=lambda m, *a: _reconstructor(a))
    for module, name in (
        ("PIL.Image", "Image"),
        ("PIL.PngImagePlugin", "PngImageFile"),
        ("PIL.JpegImagePlugin", "JpegImageFile"),
    ):
        # NEWOBJ makes an empty image to be filled by BUILD; calling an image-file class
        # (REDUCE) would open the path it is given, so it is refused
        add(module, name, call=_no_call(f"{module}.{name}"), new=lambda m, *a: _new_image(a))
    add("numpy", "ndarray")
    add("numpy", "dtype", call=lambda m, *a: _new_dtype(a))
    add("numpy._core.multiarray", "_reconstruct", call=lambda m, *a: _reconstruct(a))
    add("numpy._core.multiarray", "scalar", call=lambda m, *a: m.make_scalar(a))
    add("numpy._core.numeric", "_frombuffer", call=lambda m, *a: m.make_frombuffer(a))
    add("torch._utils", "_rebuild_tensor_v2", call=lambda m, *a: m.make_tensor(a))
    add("torch.storage", "_load_from_bytes", call=lambda m, *a: m.make_storage(a))
    return g


#: (module, name) -> marker; any other global stops the read. Names are canonical
#: (Python 3 module names, numpy 2's ``numpy._core``).
ALLOWED: dict[tuple[str, str], _Global] = _allowed()

#: torch storage classes in a tensor's legacy storage bytes, and their numpy dtypes.
TORCH_STORAGES = {
    "FloatStorage": "f4",
    "DoubleStorage": "f8",
    "HalfStorage": "f2",
    "ByteStorage": "u1",
    "CharStorage": "i1",
    "ShortStorage": "i2",
    "IntStorage": "i4",
    "LongStorage": "i8",
    "BoolStorage": "b1",
}
_TORCH_GLOBALS = {("torch", n): _Global(f"torch.{n}") for n in TORCH_STORAGES}


def _complex(args: tuple) -> complex:
    if len(args) > 2 or not all(isinstance(a, (int, float)) for a in args):
        raise _Refused("complex() with arguments that are not numbers")
    return complex(*args)


def _codecs_encode(args: tuple) -> bytes:
    # how protocols 0-2 write bytes: _codecs.encode(text, 'latin1')
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise _Refused("_codecs.encode is only read for latin-1 text")
    return _latin1(args[0])


def _reconstructor(args: tuple) -> _Pending:
    # protocols 0-1 make a class instance as copyreg._reconstructor(cls, object, None)
    if (
        len(args) == 3
        and isinstance(args[0], _Global)
        and args[0].new is not None
        and isinstance(args[1], _Global)
        and args[1].name == "builtins.object"
        and args[2] is None
    ):
        return args[0].new(None)
    raise _Refused("copyreg._reconstructor is only read for PIL images")


def _new_image(args: tuple) -> _Pending:
    if args not in ((), (None,)):
        raise _Refused("a PIL image made with arguments (a file path?)")
    return _PendingImage()


def _new_dtype(args: tuple) -> _Pending:
    if not (1 <= len(args) <= 3) or not isinstance(args[0], str):
        raise _Refused("numpy.dtype with arguments other than a name")
    if args[0] not in NUMERIC_DTYPES:
        raise _Refused(f"numpy dtype {args[0][:40]!r}; only bool, integers and floats are read")
    return _PendingDType(args[0])


def _reconstruct(args: tuple) -> _Pending:
    if not (len(args) == 3 and isinstance(args[0], _Global) and args[0].name == "numpy.ndarray"):
        raise _Refused("numpy _reconstruct is only read for numpy.ndarray")
    return _PendingArray()


def _canonical(module: str, name: str) -> tuple[str, str]:
    """The (module, name) a global is listed under: Python 3 and numpy 2 spellings."""
    if (module, name) in _PY2_NAMES:
        module, name = _PY2_NAMES[(module, name)]
    elif module in _PY2_MODULES:
        module = _PY2_MODULES[module]
    if module.startswith("numpy.core."):
        module = "numpy._core." + module.removeprefix("numpy.core.")
    return module, name


# ---------------------------------------------------------------- the machine

_TRACKED = frozenset({list, tuple, dict, set, frozenset, OrderedDict})  # depth is recorded
_MUTABLE = frozenset({list, dict, set, OrderedDict})  # sealed once used
_SAFE_KEYS = frozenset({str, bytes, bool, float, type(None)})  # dict keys and set items
_CONTAINER_COST = 8  # items one container made counts as (an empty set is 216 bytes)


class _Machine:
    """A pickle stack machine that builds only what :data:`ALLOWED` constructors return.

    Every container it makes is recorded with its nesting depth; a mutable container that
    has been put inside another one (or passed to a constructor) is sealed, so no later
    opcode can make it refer to itself or deepen what already holds it.
    """

    def __init__(
        self,
        data: bytes,
        *,
        encoding: str,
        limits: Limits,
        globals_: dict[tuple[str, str], _Global] = ALLOWED,
        persistent_load: Callable[[object], object] | None = None,
        pos: int = 0,
    ) -> None:
        self.data, self.pos, self.encoding, self.limits = data, pos, encoding, limits
        self.view = memoryview(data)
        self.globals, self.persistent_load = globals_, persistent_load
        self.stack: list = []
        self.marks: list[list] = []
        self.memo: dict[int, object] = {}
        self.depth: dict[int, tuple[int, object]] = {}  # id -> (depth, obj kept alive)
        self.sealed: dict[int, object] = {}
        self.n_items = 0
        self.n_images = 0
        self.total_bytes = 0
        # honest pickles hold each array's bytes once; references beyond twice the file
        # are an object repeated through the memo (2 bytes a reference)
        self.max_referenced_bytes = 2 * len(data) + (1 << 20)

    # -- reading the byte stream

    def _advance(self, n: int) -> int:
        # Move past the next n bytes and return where they start; _Malformed when fewer are left.
        if n < 0 or self.pos + n > len(self.data):
            raise _Malformed(
                f"truncated: an opcode wants {n:,} bytes, {self.remaining():,} are left"
            )
        start, self.pos = self.pos, self.pos + n
        return start

    def read_view(self, n: int) -> memoryview:
        """Like :meth:`read`, without copying (for text decoded straight from the file)."""
        start = self._advance(n)
        return self.view[start : self.pos]

    def read(self, n: int) -> bytes:
        """The next ``n`` bytes; _Malformed when fewer are left."""
        start = self._advance(n)
        return self.data[start : self.pos]

    def remaining(self) -> int:
        """The number of bytes not read yet."""
        return len(self.data) - self.pos

    def readline(self) -> bytes:
        """The next line, without its newline; _Malformed when too long or unterminated."""
        end = self.data.find(b"\n", self.pos, self.pos + _MAX_TEXT_LINE)
        if end < 0:
            if self.remaining() > _MAX_TEXT_LINE:
                raise _Malformed("a text opcode's line is too long")
            raise _Malformed("truncated: a text opcode has no end of line")
        line, self.pos = self.data[self.pos : end], end + 1
        return line

    def read_uint(self, n: int) -> int:
        """The next ``n`` bytes as a little-endian unsigned integer."""
        return int.from_bytes(self.read(n), "little")

    # -- stack, values and containers

    def pop(self) -> object:
        """Pop the top of the stack, as a value; _Malformed when the stack is empty."""
        if not self.stack:
            raise _Malformed("stack underflow (not a pickle?)")
        return self.value(self.stack.pop())

    def pop_mark(self) -> list:
        """Pop the items above the last MARK, as values, and restore the stack below it."""
        if not self.marks:
            raise _Malformed("no MARK on the stack (not a pickle?)")
        items, self.stack = self.stack, self.marks.pop()
        return [self.value(x) for x in items]

    def top(self) -> object:
        """The top of the stack, left on it; _Malformed when the stack is empty."""
        if not self.stack:
            raise _Malformed("stack underflow (not a pickle?)")
        return self.stack[-1]

    def value(self, x: object) -> object:
        """``x`` itself, or for a pending object its built (or unbuilt) value."""
        if isinstance(x, _Pending):
            return x.value if x.done else x.unbuilt()
        return x

    def depth_of(self, x: object) -> int:
        """The nesting depth recorded for container ``x`` (0 when none is)."""
        entry = self.depth.get(id(x))
        return entry[0] if entry is not None and entry[1] is x else 0

    def scan(self, items: list | tuple) -> tuple[int, int, int]:
        """Count ``items``, seal the mutable containers among them.

        Returns their deepest nesting, and what they hold counting every reference: items
        (all levels) and bytes of arrays and images. A memo entry can be referenced any
        number of times at 2 bytes each, so these, not the objects made, bound what a
        caller that flattens the result (``np.asarray``, stacking images) allocates.
        """
        self.n_items += len(items)
        if self.n_items > self.limits.max_items:
            raise _Refused(
                f"more than {self.limits.max_items:,} container items (raise --max-items)"
            )
        deepest, n_all, n_bytes, depth, sealed = 0, len(items), 0, self.depth, self.sealed
        for item in items:
            kind = type(item)
            if kind in _TRACKED:  # scalars are depth 0: skip the lookups
                entry = depth.get(id(item))
                if entry is not None and entry[1] is item:
                    deepest = max(deepest, entry[0])
                    n_all += entry[2]
                    n_bytes += entry[3]
                if kind in _MUTABLE:
                    sealed[id(item)] = item
            elif kind is np.ndarray:
                n_bytes += item.nbytes
            elif kind is Image.Image:
                n_bytes += item.width * item.height * IMAGE_MODES.get(item.mode, 4)
        return deepest, n_all, n_bytes

    def record(self, container: object, items: list | tuple) -> object:
        """Note a new container of ``items`` (counted, sealed, its depth checked)."""
        # an empty set or dict costs memory like a few items: charge it, so a file of
        # one-byte EMPTY_SET opcodes cannot make 370 bytes of objects per byte
        self.n_items += _CONTAINER_COST
        self.set_weight(container, *self.scan(items), add_level=True)
        return container

    def set_weight(
        self, container: object, deepest: int, n_all: int, n_bytes: int, *, add_level: bool
    ) -> None:
        """Record the depth and weight of ``container``; refused past the limits.

        Parameters
        ----------
        container : object
            The container.
        deepest : int
            The deepest nesting among its items.
        n_all : int
            Items it holds, counting repeated references.
        n_bytes : int
            Bytes of arrays and images it references.
        add_level : bool
            Whether the container adds a level above ``deepest``.
        """
        depth = deepest + 1 if add_level else deepest
        if depth > self.limits.max_depth:
            raise _Refused(f"nested more than {self.limits.max_depth} deep (raise --max-depth)")
        if n_all > self.limits.max_items:
            raise _Refused(
                f"a container holding {n_all:,} items counting repeated references, more "
                f"than {self.limits.max_items:,} (raise --max-items)"
            )
        if n_bytes > self.max_referenced_bytes:
            raise _Refused(
                f"arrays and images referenced {n_bytes:,} bytes' worth, far more than the "
                f"file holds ({len(self.data):,} bytes): one object repeated (a memo bomb)"
            )
        self.depth[id(container)] = (depth, container, n_all, n_bytes)

    def add_to(self, container: object, items: list) -> None:
        """APPEND(S), SETITEM(S), ADDITEMS: into an open container only."""
        if not isinstance(container, (list, dict, set)):
            raise _Refused(f"items added to a {type(container).__name__}")
        if self.sealed.get(id(container)) is container:
            raise _Refused("a container changed after it was used (a self-referring pickle?)")
        if any(item is container for item in items):
            raise _Refused("a container that holds itself")
        deepest, n_all, n_bytes = self.scan(items)
        entry = self.depth.get(id(container))
        if entry is not None and entry[1] is container:
            deepest, n_all, n_bytes = (
                max(deepest + 1, entry[0]),
                n_all + entry[2],
                n_bytes + entry[3],
            )
        else:
            deepest += 1
        self.set_weight(container, deepest, n_all, n_bytes, add_level=False)

    def hashable(self, items: list) -> None:
        """Refuse dict keys or set items whose hashes a file could make collide."""
        # only keys whose hashes a file cannot make collide: str and bytes hashes are salted
        # per process, an int64 shares its hash with at most 7 others. Python's int hash is
        # n mod 2^61-1, so 40,000 keys k*(2^61-1), or complex or tuple keys built to one
        # hash, make each dict insertion scan all earlier keys: minutes from a 1 MB pickle
        for item in items:
            kind = type(item)
            if kind in _SAFE_KEYS:
                continue
            if kind is int and -(1 << 63) <= item < (1 << 63):
                continue
            raise _Refused(
                f"a dict key or set item of type {kind.__name__}"
                + (" past int64" if kind is int else "")
                + "; only text, bytes, int64 and float keys are read"
            )

    # -- constructors the allowed globals map to

    def make_set(self, kind: type, args: tuple) -> object:
        """Make a set or frozenset of ``kind`` from a REDUCE's ``args``."""
        if not args:
            return self.record(kind(), [])
        if len(args) != 1 or not isinstance(args[0], (list, tuple, set, frozenset)):
            raise _Refused(f"{kind.__name__}() of something other than a list")
        items = list(args[0])
        self.hashable(items)
        return self.record(kind(items), items)

    def make_bytes(self, kind: type, args: tuple) -> object:
        """Make bytes or bytearray of ``kind`` from bytes or latin-1 text, never from a size."""
        # never bytearray(n): an int argument is how a few bytes ask for gigabytes
        if not args:
            return kind()
        if len(args) == 1 and isinstance(args[0], (bytes, bytearray)):
            return kind(args[0])
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            return kind(_latin1(args[0]))
        raise _Refused(f"{kind.__name__}() of something other than bytes")

    def make_ordered_dict(self, args: tuple) -> object:
        """Make an empty OrderedDict; its items come later."""
        if args:
            raise _Refused("OrderedDict() with arguments")
        return self.record(OrderedDict(), [])

    def check_array(
        self, dtype: np.dtype, shape: object, *, charge: bool = True
    ) -> tuple[tuple[int, ...], int]:
        """``shape`` as a tuple of ints, and the bytes it needs; refused past the limits."""
        if isinstance(shape, int) and not isinstance(shape, bool):
            shape = (shape,)
        if not (
            isinstance(shape, (tuple, list))
            and len(shape) <= _MAX_NDIM
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise _Refused("numpy array shape is not a tuple of non-negative integers")
        n_bytes = dtype.itemsize
        for s in shape:
            n_bytes *= s  # Python ints: a forged shape cannot overflow past the check
        if n_bytes > self.limits.max_array_bytes:
            raise _Refused(
                f"an array of shape {tuple(shape)} needs {n_bytes:,} bytes, more than the "
                f"limit {self.limits.max_array_bytes:,} (raise --max-array-bytes)"
            )
        if charge:
            self.charge(n_bytes)
        return tuple(shape), n_bytes

    def charge(self, n_bytes: int) -> None:
        """Count ``n_bytes`` of arrays or images about to be made, refused past the limits.

        Past twice the file's size too: every array or image is a copy of bytes the file
        holds, unless one memo entry of bytes is the data of many (400 arrays from one
        4 MB string, each a real 4 MB copy)
        """
        self.total_bytes += n_bytes
        if self.total_bytes > self.limits.max_total_bytes:
            raise _Refused(
                f"arrays of more than {self.limits.max_total_bytes:,} bytes in all "
                "(raise --max-total-bytes)"
            )
        if self.total_bytes > self.max_referenced_bytes:
            raise _Refused(
                f"arrays and images of {self.total_bytes:,} bytes, far more than the file "
                f"holds ({len(self.data):,} bytes): one object repeated (a memo bomb)"
            )

    def make_array(self, raw: bytes, dtype: np.dtype, shape: object, *, order: str) -> np.ndarray:
        """A new array of ``shape`` and ``dtype`` copied from ``raw``; refused past the limits.

        Parameters
        ----------
        raw : bytes
            Exactly the bytes the array needs.
        dtype : numpy.dtype
            Its element type (returned in native byte order).
        shape : object
            An int or a tuple of ints, checked here.
        order : {'C', 'F'}
            The memory order of ``raw``.

        Returns
        -------
        ndarray of shape ``shape``
            A writable, C-contiguous copy.
        """
        shape, n_bytes = self.check_array(dtype, shape)
        if len(raw) != n_bytes:
            raise _Refused(
                f"an array of shape {shape} and dtype {dtype.str} needs {n_bytes:,} bytes, "
                f"the pickle holds {len(raw):,}"
            )
        flat = np.frombuffer(raw, dtype=dtype)
        # a fresh, writable, C-contiguous, native-order copy: no view into the file's bytes
        return np.ascontiguousarray(
            flat.reshape(shape, order=order), dtype=dtype.newbyteorder("=")
        ).copy()

    def make_scalar(self, args: tuple) -> object:
        """Make a numpy scalar from a (dtype, bytes) pair."""
        if len(args) != 2 or not isinstance(args[0], np.dtype):
            raise _Refused("numpy scalar without a numeric dtype")
        raw = _latin1(args[1]) if isinstance(args[1], str) else args[1]
        if not isinstance(raw, bytes) or len(raw) != args[0].itemsize:
            raise _Refused("numpy scalar whose bytes do not match its dtype")
        return np.frombuffer(raw, dtype=args[0])[0].astype(args[0].newbyteorder("="))

    def make_frombuffer(self, args: tuple) -> np.ndarray:
        """Make an array from numpy's _frombuffer(bytes, dtype, shape, order) arguments."""
        if len(args) != 4 or not isinstance(args[1], np.dtype) or args[3] not in ("C", "F"):
            raise _Refused("numpy _frombuffer with unexpected arguments")
        if not isinstance(args[0], (bytes, bytearray)):
            raise _Refused("numpy _frombuffer of something other than bytes")
        return self.make_array(bytes(args[0]), args[1], args[2], order=args[3])

    def make_storage(self, args: tuple) -> _Storage:
        """Read a legacy torch storage from _load_from_bytes' bytes."""
        if len(args) != 1 or not isinstance(args[0], bytes):
            raise _Refused("torch _load_from_bytes of something other than bytes")
        return _Storage(_read_torch_legacy_storage(args[0], self))

    def make_tensor(self, args: tuple) -> np.ndarray:
        """Make a contiguous torch tensor (as an ndarray) from _rebuild_tensor_v2's arguments."""
        # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])
        if len(args) not in (6, 7) or not isinstance(args[0], _Storage):
            raise _Refused("torch tensor without a storage read from its bytes")
        storage, offset, size, stride = args[0].array, args[1], args[2], args[3]
        shape, n_bytes = self.check_array(storage.dtype, size, charge=False)
        if not isinstance(offset, int) or not isinstance(stride, tuple):
            raise _Refused("torch tensor with a malformed offset or stride")
        # only the contiguous layout torch writes: a stride of 0 or a wild offset is how a
        # small storage poses as a tensor of 1e12 elements
        expected, step = [], 1
        for s in reversed(shape):
            expected.append(step)
            step *= s
        n = step
        if tuple(reversed(expected)) != stride and n > 1:
            raise _Refused(f"torch tensor with stride {stride}; only contiguous tensors are read")
        if not 0 <= offset <= len(storage) - n:
            raise _Refused("torch tensor outside its storage")
        self.charge(n_bytes)  # once its layout is known: a bad stride is named as such
        return storage[offset : offset + n].reshape(shape).copy()

    def make_image(self, state: object) -> Image.Image:
        """Make a PIL image (L, RGB, RGBA or P) from its pickled state; refused past the limits."""
        # PIL's __getstate__: [info, mode, size, palette, bytes]; info is not read
        # an image-file class adds its file name (never opened), JPEG its layers (unused)
        if not (isinstance(state, (list, tuple)) and 5 <= len(state) <= 8):
            raise _Refused("PIL image state is not [info, mode, size, palette, bytes]")
        _, mode, size, palette, raw = state[:5]
        if mode not in IMAGE_MODES:
            raise _Refused(f"PIL image mode {str(mode)[:20]!r}; only L, RGB, RGBA and P are read")
        if not (
            isinstance(size, (tuple, list))
            and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        ):
            raise _Refused("PIL image size is not two integers")
        width, height = size
        if width < 1 or height < 1:
            raise _Refused(f"PIL image of size {width}x{height}")
        if width * height > self.limits.max_pixels_per_image:
            raise _Refused(
                f"PIL image of {width}x{height} pixels, more than the limit "
                f"{self.limits.max_pixels_per_image:,} (raise --max-pixels-per-image)"
            )
        self.n_images += 1
        if self.n_images > self.limits.max_images:
            raise _Refused(f"more than {self.limits.max_images:,} images (raise --max-images)")
        if not isinstance(raw, bytes) or len(raw) != width * height * IMAGE_MODES[mode]:
            raise _Refused(f"PIL image of {width}x{height} {mode} whose bytes do not match")
        self.charge(len(raw))
        image = Image.frombytes(mode, (width, height), raw)
        if mode == "P":
            if isinstance(palette, (bytes, bytearray)):
                palette = list(palette)
            if not (
                isinstance(palette, list)
                and len(palette) % 3 == 0
                and len(palette) <= 768
                and all(isinstance(v, int) and 0 <= v <= 255 for v in palette)
            ):
                raise _Refused("PIL palette is not up to 256 RGB triples of 0-255")
            image.putpalette(palette, "RGB")
        return image

    # -- the loop

    def load(self) -> object:
        """Run the opcodes up to STOP; return the unpickled object."""
        dispatch, data, end = _DISPATCH, self.data, len(self.data)
        while True:
            if self.pos >= end:
                raise _Malformed("truncated: no STOP opcode")
            code = data[self.pos]
            self.pos += 1
            op = dispatch[code]
            if op is None:
                code = bytes([code])
                name = _REFUSED_OPS.get(code)
                if name:
                    raise _Refused(
                        f"refused opcode {name} at byte {self.pos - 1} (nothing was run)"
                    )
                raise _Malformed(f"unknown opcode {code!r} at byte {self.pos - 1}")
            if op is _stop:
                result = self.pop()
                if isinstance(result, _Global):
                    raise _Refused(f"the pickle is the bare global {result.name!r}")
                return result
            op(self)

    def find_global(self, module: object, name: object) -> _Global:
        """The allowed global ``module.name``; refused when it is not on the list."""
        if not isinstance(module, str) or not isinstance(name, str):
            raise _Malformed("a global whose name is not text")
        canonical = _canonical(module, name)
        marker = self.globals.get(canonical)
        if marker is None:
            # repr: a name holding a newline or an escape code cannot forge a log line
            shown = f"{canonical[0]}.{canonical[1]}"
            shown = shown if len(shown) <= 120 else shown[:120] + "..."
            raise _Refused(
                f"refused to unpickle {shown!r}: only PIL images, numpy arrays, "
                "torch tensors and plain Python values are allowed (nothing was run)"
            )
        return marker


# ---------------------------------------------------------------- opcodes


def _push(m: _Machine, x: object) -> None:
    m.stack.append(x)


def _stop(m: _Machine) -> None:  # handled in the loop
    pass


def _text_int(m: _Machine, line: bytes, *, long: bool = False) -> int:
    text = line.decode("ascii", "replace").strip()
    if long and text.endswith("L"):
        text = text[:-1]
    if len(text.lstrip("+-")) > m.limits.max_int_digits:
        raise _Refused(f"an integer of {len(text):,} digits (limit {m.limits.max_int_digits})")
    try:
        return int(text)
    except ValueError as err:
        raise _Malformed("a malformed integer") from err


def _op_int(m: _Machine) -> None:
    line = m.readline()
    _push(m, {b"00": False, b"01": True}[line] if line in (b"00", b"01") else _text_int(m, line))


def _op_long(m: _Machine) -> None:
    _push(m, _text_int(m, m.readline(), long=True))


def _binlong(m: _Machine, n: int) -> None:
    if n > 64:  # 64 bytes is 154 decimal digits; no label or index needs more
        raise _Refused(f"an integer of {n:,} bytes")
    _push(m, int.from_bytes(m.read(n), "little", signed=True))


def _op_float(m: _Machine) -> None:
    try:
        _push(m, float(m.readline()))
    except ValueError as err:
        raise _Malformed("a malformed float") from err


def _py2_string(m: _Machine, raw: bytes) -> None:
    if m.encoding == "bytes":
        _push(m, raw)
        return
    try:
        _push(m, raw.decode(m.encoding))
    except (UnicodeDecodeError, LookupError) as err:
        raise _Refused(f"a Python 2 string not in {m.encoding}") from err


def _op_string(m: _Machine) -> None:
    line = m.readline().rstrip(b"\r")
    if len(line) < 2 or line[:1] != line[-1:] or line[:1] not in (b"'", b'"'):
        raise _Malformed("a malformed STRING opcode")
    try:
        with warnings.catch_warnings():  # an invalid escape warns; it must not print a line
            warnings.simplefilter("ignore")
            raw = codecs.escape_decode(line[1:-1])[0]
    except ValueError as err:
        raise _Malformed("a malformed STRING opcode") from err
    _py2_string(m, raw)


def _unicode(m: _Machine, raw: bytes | memoryview, codec: str = "utf-8") -> None:
    try:
        _push(m, str(raw, codec, "surrogatepass"))
    except UnicodeDecodeError as err:
        raise _Malformed("a string that is not valid UTF-8") from err


def _tuple(m: _Machine, items: list) -> None:
    _push(m, m.record(tuple(items), items))


def _op_tuple_n(n: int) -> Callable[[_Machine], None]:
    def op(m: _Machine) -> None:
        if len(m.stack) < n:
            raise _Malformed("stack underflow (not a pickle?)")
        items = [m.value(x) for x in m.stack[len(m.stack) - n :]] if n else []
        del m.stack[len(m.stack) - n :]
        _tuple(m, items)

    return op


def _op_dict(m: _Machine) -> None:
    items = m.pop_mark()
    if len(items) % 2:
        raise _Malformed("DICT with an odd number of items")
    container: dict = {}
    m.record(container, [])
    _add_pairs(m, container, items)
    _push(m, container)


def _add_pairs(m: _Machine, container: object, items: list) -> None:
    if len(items) % 2:
        raise _Malformed("SETITEMS with an odd number of items")
    keys = items[0::2]
    m.hashable(keys)
    m.add_to(container, items)
    for k, v in zip(keys, items[1::2], strict=True):
        container[k] = v


def _op_list(m: _Machine) -> None:
    items = m.pop_mark()
    container: list = []
    m.record(container, [])
    m.add_to(container, items)
    container.extend(items)
    _push(m, container)


def _op_append(m: _Machine) -> None:
    item = m.pop()
    _append(m, [item])


def _op_appends(m: _Machine) -> None:
    _append(m, m.pop_mark())


def _open_container(m: _Machine, kind: type, action: str) -> list | dict | set:
    # The container on top of the stack that APPEND(S), SETITEM(S) or ADDITEMS fill; refused
    # when it is not a ``kind`` (``action`` names the opcode in the message).
    target = m.value(m.top())
    if not isinstance(target, kind):
        raise _Refused(f"{action} a {type(target).__name__}")
    return target


def _append(m: _Machine, items: list) -> None:
    target = _open_container(m, list, "APPEND to")
    m.add_to(target, items)
    target.extend(items)


def _op_setitem(m: _Machine) -> None:
    value = m.pop()
    key = m.pop()
    _setitems(m, [key, value])


def _op_setitems(m: _Machine) -> None:
    _setitems(m, m.pop_mark())


def _setitems(m: _Machine, items: list) -> None:
    _add_pairs(m, _open_container(m, dict, "SETITEM on"), items)


def _op_additems(m: _Machine) -> None:
    items = m.pop_mark()
    target = _open_container(m, set, "ADDITEMS to")
    m.hashable(items)
    m.add_to(target, items)
    target.update(items)


def _op_frozenset(m: _Machine) -> None:
    items = m.pop_mark()
    m.hashable(items)
    _push(m, m.record(frozenset(items), items))


def _op_empty(kind: type) -> Callable[[_Machine], None]:
    def op(m: _Machine) -> None:
        _push(m, m.record(kind(), []))

    return op


def _op_mark(m: _Machine) -> None:
    # each MARK opens one container, so real pickles nest marks no deeper than their data;
    # unbounded, a file of MARK opcodes makes 60 bytes of lists per byte
    if len(m.marks) > m.limits.max_depth + 8:
        raise _Refused(f"nested more than {m.limits.max_depth} deep (raise --max-depth)")
    m.marks.append(m.stack)
    m.stack = []


def _op_pop(m: _Machine) -> None:
    if m.stack:
        m.stack.pop()
    elif m.marks:  # POP of a MARK, as pickle does
        m.stack = m.marks.pop()
    else:
        raise _Malformed("stack underflow (not a pickle?)")


def _op_pop_mark(m: _Machine) -> None:
    m.pop_mark()


def _op_dup(m: _Machine) -> None:
    _push(m, m.top())


def _get(m: _Machine, key: int) -> None:
    if key not in m.memo:
        raise _Malformed(f"memo key {key} is not set")
    _push(m, m.memo[key])


def _put(m: _Machine, key: int) -> None:
    if key < 0:
        raise _Malformed("a negative memo key")
    x = m.top()
    if key not in m.memo:  # each entry costs memory like an item: bounded by --max-items
        m.n_items += 1
        if m.n_items > m.limits.max_items:
            raise _Refused(f"more than {m.limits.max_items:,} memo entries (raise --max-items)")
    if isinstance(x, _Pending) and not x.done:
        x.memo_keys.append(key)  # BUILD will put the finished object there
    m.memo[key] = x


def _op_get(m: _Machine) -> None:
    _get(m, _text_int(m, m.readline()))


def _op_put(m: _Machine) -> None:
    _put(m, _text_int(m, m.readline()))


def _op_memoize(m: _Machine) -> None:
    _put(m, len(m.memo))


def _op_global(m: _Machine) -> None:
    try:
        module = m.readline().decode("utf-8")
        name = m.readline().decode("utf-8")
    except UnicodeDecodeError as err:
        raise _Malformed("a global whose name is not text") from err
    _push(m, m.find_global(module, name))


def _op_stack_global(m: _Machine) -> None:
    name = m.pop()
    module = m.pop()
    _push(m, m.find_global(module, name))


def _op_reduce(m: _Machine) -> None:
    args = m.pop()
    func = m.pop()
    if not isinstance(func, _Global) or not isinstance(args, tuple):
        raise _Refused(f"REDUCE of a {type(func).__name__}, not an allowed global")
    if func.call is None:
        raise _Refused(f"calling {func.name!r} is not allowed (nothing was run)")
    _push(m, func.call(m, *args))  # the args tuple sealed its items when it was made


def _op_newobj(m: _Machine) -> None:
    args = m.pop()
    cls = m.pop()
    if not isinstance(cls, _Global) or cls.new is None or not isinstance(args, tuple):
        name = cls.name if isinstance(cls, _Global) else type(cls).__name__
        raise _Refused(f"NEWOBJ of {name!r}, not an allowed class")
    _push(m, cls.new(m, *args))


def _op_build(m: _Machine) -> None:
    state = m.pop()
    if not m.stack:
        raise _Malformed("stack underflow (not a pickle?)")
    target = m.stack[-1]
    if not isinstance(target, _Pending) or target.done:
        raise _Refused(f"BUILD of a {type(m.value(target)).__name__}; only images and arrays")
    target.value, target.done = target.build(m, state), True
    for key in target.memo_keys:
        if m.memo.get(key) is target:
            m.memo[key] = target.value
    m.stack[-1] = target.value


def _op_persid(m: _Machine, pid: object) -> None:
    if m.persistent_load is None:
        raise _Refused("a persistent id (an object stored outside the pickle)")
    _push(m, m.persistent_load(pid))


def _op_proto(m: _Machine) -> None:
    if m.read_uint(1) > 5:
        raise _Malformed("pickle protocol newer than 5")


def _u(fmt: str, n: int) -> Callable[[_Machine], int]:
    s = struct.Struct(fmt)
    return lambda m: s.unpack(m.read(n))[0]


def _u1(m: _Machine) -> int:
    if m.pos >= len(m.data):
        raise _Malformed("truncated: an opcode wants 1 bytes, 0 are left")
    m.pos += 1
    return m.data[m.pos - 1]


_u2, _u4, _u8 = _u("<H", 2), _u("<I", 4), _u("<Q", 8)
_i4 = _u("<i", 4)

def _memo_op(op: Callable[[_Machine, int], None], index: Callable[[_Machine], int]):
    # BINGET, BINPUT and their LONG_ forms: op applied to a 1- or 4-byte memo index.
    return lambda m: op(m, index(m))


_OPS: dict[str, Callable[[_Machine], None]] = {
    "INT": _op_int,
    "BININT": lambda m: _push(m, _i4(m)),
    "BININT1": lambda m: _push(m, _u1(m)),
    "BININT2": lambda m: _push(m, _u2(m)),
    "LONG": _op_long,
    "LONG1": lambda m: _binlong(m, _u1(m)),
    "LONG4": lambda m: _binlong(m, _i4(m)),
    "STRING": _op_string,
    "BINSTRING": lambda m: _py2_string(m, m.read(_i4(m))),
    "SHORT_BINSTRING": lambda m: _py2_string(m, m.read(_u1(m))),
    "BINBYTES": lambda m: _push(m, m.read(_u4(m))),
    "SHORT_BINBYTES": lambda m: _push(m, m.read(_u1(m))),
    "BINBYTES8": lambda m: _push(m, m.read(_u8(m))),
    "BYTEARRAY8": lambda m: _push(m, bytearray(m.read(_u8(m)))),
    "NONE": lambda m: _push(m, None),
    "NEWTRUE": lambda m: _push(m, True),
    "NEWFALSE": lambda m: _push(m, False),
    "UNICODE": lambda m: _unicode(m, m.readline(), "raw-unicode-escape"),
    "SHORT_BINUNICODE": lambda m: _unicode(m, m.read(_u1(m))),
    "BINUNICODE": lambda m: _unicode(m, m.read_view(_u4(m))),
    "BINUNICODE8": lambda m: _unicode(m, m.read_view(_u8(m))),
    "FLOAT": _op_float,
    "BINFLOAT": lambda m: _push(m, struct.unpack(">d", m.read(8))[0]),
    "EMPTY_LIST": _op_empty(list),
    "APPEND": _op_append,
    "APPENDS": _op_appends,
    "LIST": _op_list,
    "EMPTY_TUPLE": _op_tuple_n(0),
    "TUPLE": lambda m: _tuple(m, m.pop_mark()),
    "TUPLE1": _op_tuple_n(1),
    "TUPLE2": _op_tuple_n(2),
    "TUPLE3": _op_tuple_n(3),
    "EMPTY_DICT": _op_empty(dict),
    "DICT": _op_dict,
    "SETITEM": _op_setitem,
    "SETITEMS": _op_setitems,
    "EMPTY_SET": _op_empty(set),
    "ADDITEMS": _op_additems,
    "FROZENSET": _op_frozenset,
    "POP": _op_pop,
    "DUP": _op_dup,
    "MARK": _op_mark,
    "POP_MARK": _op_pop_mark,
    "GET": _op_get,
    "BINGET": _memo_op(_get, _u1),
    "LONG_BINGET": _memo_op(_get, _u4),
    "PUT": _op_put,
    "BINPUT": _memo_op(_put, _u1),
    "LONG_BINPUT": _memo_op(_put, _u4),
    "MEMOIZE": _op_memoize,
    "GLOBAL": _op_global,
    "STACK_GLOBAL": _op_stack_global,
    "REDUCE": _op_reduce,
    "BUILD": _op_build,
    "NEWOBJ": _op_newobj,
    "PROTO": _op_proto,
    "STOP": _stop,
    "FRAME": lambda m: _u8(m),  # framing only groups opcodes; the data is all in memory
    "PERSID": lambda m: _op_persid(m, m.readline().decode("ascii", "replace")),
    "BINPERSID": lambda m: _op_persid(m, m.pop()),
    # not read: EXT1/2/4 (the copyreg extension registry), INST and OBJ (call any class),
    # NEWOBJ_EX (keyword arguments), NEXT_BUFFER and READONLY_BUFFER (out-of-band data)
}


def _dispatch() -> list[Callable[[_Machine], None] | None]:
    import pickletools

    codes = {op.name: ord(op.code) for op in pickletools.opcodes}
    table: list[Callable[[_Machine], None] | None] = [None] * 256
    for name, fn in _OPS.items():
        table[codes[name]] = fn
    return table


_DISPATCH = _dispatch()
_REFUSED_OPS = {
    op.code.encode("latin1"): op.name
    for op in __import__("pickletools").opcodes
    if op.name not in _OPS
}


# ---------------------------------------------------------------- torch's legacy storage bytes


def _read_torch_legacy_storage(data: bytes, outer: _Machine) -> np.ndarray:
    """A storage as ``torch.save(storage, _use_new_zipfile_serialization=False)`` writes it.

    Six records: a magic number, the protocol version, system info, the storage's
    persistent id ``('storage', torch.<Type>Storage, key, location, numel)``, the list of
    keys, then per key an int64 element count and the raw little-endian elements.
    """
    limits, pos = outer.limits, 0
    found: list = []

    def persistent(pid: object) -> object:
        if not (
            isinstance(pid, tuple)
            and len(pid) in (5, 6)
            and pid[0] == "storage"
            and isinstance(pid[1], _Global)
            and isinstance(pid[4], int)
        ):
            raise _Refused("torch storage with an unexpected persistent id")
        found.append(pid)
        return pid

    records = []
    for i in range(5):
        machine = _Machine(
            data,
            encoding="utf-8",
            limits=limits,
            globals_=_TORCH_GLOBALS,
            persistent_load=persistent if i == 3 else None,
            pos=pos,
        )
        records.append(machine.load())
        pos = machine.pos
    if records[0] != 0x1950A86A20F9469CFC6C or records[1] != 1001 or len(found) != 1:
        raise _Refused("torch storage bytes that are not torch's legacy format")
    _, storage_type, key, _, numel = found[0][:5]
    dtype = np.dtype(TORCH_STORAGES[storage_type.name.removeprefix("torch.")]).newbyteorder("<")
    if records[4] != [key]:
        raise _Refused("torch storage bytes whose keys do not match")
    machine = _Machine(data, encoding="utf-8", limits=limits, pos=pos)
    count = int.from_bytes(machine.read(8), "little")
    if count != numel:
        raise _Refused("torch storage whose element count does not match")
    _, n_bytes = outer.check_array(dtype, (count,))
    return np.frombuffer(machine.read(n_bytes), dtype=dtype).astype(dtype.newbyteorder("="))


# ---------------------------------------------------------------- entry point


def safe_load(
    file: str | os.PathLike | BinaryIO,
    *,
    source: str | None = None,
    encoding: str = "ASCII",
    root: str | os.PathLike | None = None,
    limits: Limits | None = None,
) -> object:
    """Read a pickle, building only plain values, numeric numpy arrays and PIL images.

    Parameters
    ----------
    file : str, PathLike or binary file object
        The pickle; a path is opened as a regular file only (no FIFO, no device).
    source : str, optional
        The name used in error messages; defaults to the path.
    encoding : str
        How to decode Python 2 ``str`` objects, as in :func:`pickle.load` (``"latin1"`` for
        CIFAR-10's batches, ``"bytes"`` to keep them as bytes).
    root : str or PathLike, optional
        With a path: refuse it if its links lead outside this folder.
    limits : Limits, optional
        Size bounds; defaults to :func:`poisonlens.limits.current_limits`.

    Returns
    -------
    object
        Made only of ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``,
        ``bytes``, ``bytearray``, ``list``, ``tuple``, ``dict`` (``OrderedDict``), ``set``,
        ``frozenset``, numpy arrays and scalars of bool/int/float dtypes, PIL images in
        mode L, RGB, RGBA or P; a pickled torch tensor is returned as a numpy array.

    Raises
    ------
    InputError
        When the file is missing, is not a regular file, is not a pickle, exceeds a
        limit, or names a global outside :data:`ALLOWED`. Nothing named by the file is
        imported or called, whatever it holds.
    """
    limits = limits or current_limits()
    if isinstance(file, (str, os.PathLike)):
        source = source or str(file)
        with open_regular(file, root=root, max_bytes=limits.max_file_bytes) as handle:
            data = handle.read()
    else:
        source = source or str(getattr(file, "name", "pickle"))
        data = _read_bounded(file, source, limits.max_file_bytes)
    if isinstance(data, str):
        raise InputError(source, "opened in text mode; a pickle is bytes")
    return _run_machine(bytes(data), source, encoding, limits)


def _run_machine(data: bytes, source: str, encoding: str, limits: Limits) -> object:
    # Every way the machine can refuse the bytes becomes one InputError line naming source.
    try:
        return _Machine(data, encoding=encoding, limits=limits).load()
    except _Malformed as err:
        raise InputError(source, f"not a readable pickle: {err}") from None
    except _Refused as err:
        raise InputError(source, str(err)) from None
    except InputError:
        raise
    except (RecursionError, MemoryError) as err:
        raise InputError(source, f"not a readable pickle ({type(err).__name__})") from None
    except Exception as err:  # a bug of ours on odd input must still be one clean line
        raise InputError(
            source, f"not a readable pickle ({type(err).__name__}: {str(err)[:200]!r})"
        ) from None


def _read_bounded(file: BinaryIO, source: str, max_bytes: int) -> bytes | str:
    # An open file's contents, refused once past max_bytes; read in chunks because read(n)
    # may reserve all n bytes. A text-mode file gives str (refused by the caller).
    chunks, size = [], 0
    while size <= max_bytes:
        chunk = file.read(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise InputError(source, f"larger than the limit {max_bytes:,} bytes (--max-file-bytes)")
    return b"".join(chunks) if chunks and isinstance(chunks[0], bytes) else "".join(chunks)


def safe_loads(data: bytes, *, source: str = "pickle", **kw: object) -> object:
    """:func:`safe_load` of bytes in memory.

    Parameters
    ----------
    data : bytes
        The pickle.
    source : str
        The name used in error messages.
    **kw
        ``encoding``, ``limits``: as for :func:`safe_load`.

    Returns
    -------
    object
        As :func:`safe_load` returns.
    """
    return safe_load(io.BytesIO(data), source=source, **kw)  # type: ignore[arg-type]
