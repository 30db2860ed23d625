"""Poison sets: the poisoned images, which train images they replace, and the target.

Two on-disk formats are read and written (see docs/data-formats.md, "Poison sets"):
the poisonlens ``.npz`` and the poisoning benchmark's pickle folder (Schwarzschild
et al., "Just How Toxic is Data Poisoning?", 2021).
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from poisonlens import runfs
from poisonlens.data.datasets import ImageDataset, as_images, as_labels, images_to_array, read_npz
from poisonlens.data.safe_pickle import safe_load
from poisonlens.errors import InputError
from poisonlens.limits import current_limits, parse_json, read_regular

FORMAT_VERSION = 1  # of the .npz and of poisonlens.json; newer versions are refused

# the benchmark folder's files, and our side file with what its pickles cannot hold
POISONS_FILE = "poisons.pickle"
BASE_INDICES_FILE = "base_indices.pickle"
TARGET_FILE = "target.pickle"
SIDE_FILE = "poisonlens.json"


@dataclass(frozen=True)
class PoisonSet:
    """P poisoned training images and the target they aim at.

    Attributes
    ----------
    x : uint8 array of shape (P, height, width, channels)
    y : int64 array of shape (P,), the labels the poisons are trained with
    base_indices : int64 array of shape (P,), the train images they replace
    target_x : uint8 array of shape (height, width, channels), the target test image
        (for a backdoor: already carrying the trigger)
    target_label : the target's true class
    adv_label : the class the attacker wants the target predicted as
    attack : name of the attack that made it (``"gradient-matching"``, ``"patch-backdoor"``, ...)
    eps : l-infinity radius in 0-255 pixel units, or None when unbounded
    trigger : uint8 patch (h, w, channels) for backdoors, else None
    trigger_xy : (x, y) of the patch's top-left corner, else None
    target_index : index of the target in the test split, or -1 when unknown
    extra : JSON-serialisable notes from the attack (kept by both formats)
    """

    x: np.ndarray
    y: np.ndarray
    base_indices: np.ndarray
    target_x: np.ndarray
    target_label: int
    adv_label: int
    attack: str = "unknown"
    eps: float | None = None
    trigger: np.ndarray | None = None
    trigger_xy: tuple[int, int] | None = None
    target_index: int = -1
    extra: dict = field(default_factory=dict)

    @property
    def n_poisons(self) -> int:
        """The number of poisons."""
        return int(len(self.x))


@dataclass(frozen=True)
class PoisonedDataset:
    """The training set as the victim sees it, with ground truth kept beside it.

    Attributes
    ----------
    dataset : the clean data set (test split untouched)
    x_train : uint8 (n_samples, h, w, c), base images replaced by their poisons
    y_train : int64 (n_samples,)
    is_poison : bool (n_samples,), ground truth (all False without a poison set)
    base_index : int64 (n_samples,), the clean train index each row stands for (= its index)
    poisons : the poison set, or None for a clean run
    """

    dataset: ImageDataset
    x_train: np.ndarray
    y_train: np.ndarray
    is_poison: np.ndarray
    base_index: np.ndarray
    poisons: PoisonSet | None

    @property
    def n_samples(self) -> int:
        """The number of training examples."""
        return int(len(self.y_train))


def check_poisons(poisons: PoisonSet, source: str) -> None:
    """Raise :class:`InputError` naming ``source`` and the field when ``poisons`` is malformed.

    These checks need no data set: dtypes, shapes, lengths, repeated base indices, and
    that the trigger fits inside the image.

    Parameters
    ----------
    poisons : PoisonSet
        The set to check, as read from a file or made by an attack.
    source : str
        The file (or description) named in the message.
    """
    x = as_images(poisons.x, source, "x")
    n = len(x)
    as_labels(poisons.y, source, "y", n=n)
    base = as_labels(poisons.base_indices, source, "base_indices", n=n)
    target = np.asarray(poisons.target_x)
    if target.dtype != np.uint8:
        raise InputError(source, f"field 'target_x' has dtype {target.dtype}, expected uint8")
    if n and target.shape != x.shape[1:]:
        raise InputError(
            source, f"field 'target_x' has shape {target.shape}, but the poisons are {x.shape[1:]}"
        )
    values, counts = np.unique(base, return_counts=True)
    if (counts > 1).any():
        raise InputError(source, f"field 'base_indices' repeats index {int(values[counts > 1][0])}")
    if poisons.trigger is not None:
        trigger = np.asarray(poisons.trigger)
        if trigger.dtype != np.uint8 or trigger.ndim != 3:
            raise InputError(
                source,
                f"field 'trigger' is {trigger.dtype} of shape {trigger.shape}, expected uint8 (h, w, channels)",
            )
        if trigger.shape[-1] != target.shape[-1]:
            raise InputError(
                source,
                f"field 'trigger' has {trigger.shape[-1]} channels, 'target_x' {target.shape[-1]}",
            )
        if poisons.trigger_xy is None:
            raise InputError(source, "field 'trigger_xy' is missing; a trigger needs its position")
        (h, w, _), (px, py) = trigger.shape, poisons.trigger_xy
        if px < 0 or py < 0 or py + h > target.shape[0] or px + w > target.shape[1]:
            raise InputError(
                source,
                f"field 'trigger_xy' puts the {w}x{h} trigger at ({px}, {py}), outside the {target.shape[1]}x{target.shape[0]} image",
            )


def validate_poisons(
    poisons: PoisonSet, dataset: ImageDataset, *, source: str = "poison set"
) -> None:
    """Raise :class:`InputError` naming ``source`` and the field when ``poisons`` does not fit ``dataset``.

    Parameters
    ----------
    poisons : PoisonSet
        The set to check: image shape, labels in [0, n_classes), base indices in the
        training split, target index in the test split (or -1).
    dataset : ImageDataset
        The clean data set it is meant for.
    source : str
        The file (or option) named in the message.
    """
    check_poisons(poisons, source)
    if (
        poisons.x.shape[1:] != dataset.x_train.shape[1:]
        or poisons.target_x.shape != dataset.x_train.shape[1:]
    ):
        field_name = "x" if poisons.n_poisons else "target_x"
        shape = poisons.x.shape[1:] if poisons.n_poisons else poisons.target_x.shape
        raise InputError(
            source,
            f"field '{field_name}' has images of shape {tuple(shape)}, but the data set "
            f"'{dataset.name}' has {tuple(dataset.x_train.shape[1:])}: made for another image size?",
        )
    n_classes, n_train, n_test = dataset.n_classes, len(dataset.y_train), len(dataset.y_test)
    labels = (
        ("y", poisons.y),
        ("target_label", [poisons.target_label]),
        ("adv_label", [poisons.adv_label]),
    )
    for name, values in labels:
        values = np.asarray(values)
        outside = values[(values < 0) | (values >= n_classes)]
        if outside.size:
            raise InputError(
                source,
                f"field '{name}' has label {outside[0]}, outside [0, {n_classes}) of '{dataset.name}'",
            )
    base = np.asarray(poisons.base_indices)
    outside = base[(base < 0) | (base >= n_train)]
    if outside.size:
        raise InputError(
            source,
            f"field 'base_indices' has index {outside[0]}, outside [0, {n_train}) of '{dataset.name}'",
        )
    if not -1 <= poisons.target_index < n_test:  # -1: the target's index is unknown
        raise InputError(
            source,
            f"field 'target_index' has index {poisons.target_index}, outside [0, {n_test}) of '{dataset.name}'",
        )


def apply_poisons(
    dataset: ImageDataset, poisons: PoisonSet | None, *, source: str = "poison set"
) -> PoisonedDataset:
    """Replace the base images of ``dataset`` by ``poisons``; every row keeps its index.

    Parameters
    ----------
    dataset : ImageDataset
        The clean data set (not changed).
    poisons : PoisonSet or None
        The poisons, checked against ``dataset`` first; None gives the clean training set.
    source : str
        The file (or option) named in the message when they do not fit.

    Returns
    -------
    PoisonedDataset
        The training images and labels with the poisons in place, and ``is_poison`` of shape
        (n_train,) marking their rows.
    """
    x = dataset.x_train.copy()
    y = dataset.y_train.copy()
    is_poison = np.zeros(len(y), dtype=bool)
    if poisons is not None:
        validate_poisons(poisons, dataset, source=source)
        x[poisons.base_indices] = poisons.x
        y[poisons.base_indices] = poisons.y
        is_poison[poisons.base_indices] = True
    return PoisonedDataset(dataset, x, y, is_poison, np.arange(len(y), dtype=np.int64), poisons)


# ---------------------------------------------------------------- poisonlens .npz


def _scalar(value: np.ndarray, source: str, field_name: str, kind: str) -> np.ndarray:
    if value.shape != () or value.dtype.kind not in kind:
        raise InputError(
            source,
            f"field '{field_name}' is {value.dtype} of shape {value.shape}, expected a single value",
        )
    return value


def load_poisons_npz(path: str | os.PathLike) -> PoisonSet:
    """Read a poison set from a poisonlens ``.npz`` (fields in docs/data-formats.md).

    Parameters
    ----------
    path : str or PathLike
        The file; read bounded, never through a FIFO or a broken link.

    Returns
    -------
    PoisonSet
    """
    source = str(path)
    fields = read_npz(path)
    for name in ("x", "y", "base_indices", "target_x", "target_label", "adv_label"):
        if name not in fields:
            raise InputError(source, f"field '{name}' is missing")
    version = int(
        _scalar(fields.get("format_version", np.array(1)), source, "format_version", "iu")
    )
    if version > FORMAT_VERSION:
        raise InputError(
            source,
            f"format version {version} is newer than this poisonlens reads ({FORMAT_VERSION})",
        )
    optional: dict = {}
    if "attack" in fields:
        optional["attack"] = str(_scalar(fields["attack"], source, "attack", "U"))
    if "eps" in fields:
        optional["eps"] = _finite_eps(float(_scalar(fields["eps"], source, "eps", "iuf")), source)
    if "trigger" in fields:
        trigger, xy = fields["trigger"], fields.get("trigger_xy", np.zeros(0))
        if xy.shape != (2,) or xy.dtype.kind not in "iu":
            raise InputError(
                source, f"field 'trigger_xy' is {xy.dtype} of shape {xy.shape}, expected 2 integers"
            )
        optional["trigger"] = trigger[..., None] if trigger.ndim == 2 else trigger
        optional["trigger_xy"] = (int(xy[0]), int(xy[1]))
    if "target_index" in fields:
        optional["target_index"] = int(
            _scalar(fields["target_index"], source, "target_index", "iu")
        )
    if "extra_json" in fields:
        optional["extra"] = _parse_extra(
            str(_scalar(fields["extra_json"], source, "extra_json", "U")), source
        )
    target_x = fields["target_x"]
    poisons = PoisonSet(
        x=as_images(fields["x"], source, "x"),
        y=as_labels(fields["y"], source, "y"),
        base_indices=as_labels(fields["base_indices"], source, "base_indices"),
        target_x=target_x[..., None] if target_x.ndim == 2 else target_x,
        target_label=int(_scalar(fields["target_label"], source, "target_label", "iu")),
        adv_label=int(_scalar(fields["adv_label"], source, "adv_label", "iu")),
        **optional,
    )
    check_poisons(poisons, source)
    return poisons


def save_poisons_npz(poisons: PoisonSet, path: str | os.PathLike) -> None:
    """Write ``poisons`` as a poisonlens ``.npz``; optional fields only when set.

    Parameters
    ----------
    poisons : PoisonSet
        The set to write (checked first).
    path : str or PathLike
        The file, written under exactly this name (no ``.npz`` added).
    """
    check_poisons(poisons, str(path))
    fields: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION),
        "x": np.asarray(poisons.x, dtype=np.uint8),
        "y": np.asarray(poisons.y, dtype=np.int64),
        "base_indices": np.asarray(poisons.base_indices, dtype=np.int64),
        "target_x": np.asarray(poisons.target_x, dtype=np.uint8),
        "target_label": np.array(poisons.target_label, dtype=np.int64),
        "adv_label": np.array(poisons.adv_label, dtype=np.int64),
        "attack": np.array(poisons.attack),
        "target_index": np.array(poisons.target_index, dtype=np.int64),
    }
    if poisons.eps is not None:
        fields["eps"] = np.array(poisons.eps, dtype=np.float64)
    if poisons.trigger is not None:
        fields["trigger"] = np.asarray(poisons.trigger, dtype=np.uint8)
        fields["trigger_xy"] = np.asarray(poisons.trigger_xy, dtype=np.int64)
    if poisons.extra:
        fields["extra_json"] = np.array(json.dumps(poisons.extra))
    # np.savez adds ".npz" to names without it; write the handle ourselves to keep the name, and
    # through runfs: never through a link planted under that name, never half-written
    path = Path(path)
    runfs.write_atomic(path.parent, (path.name,), lambda handle: np.savez_compressed(handle, **fields))


def _finite_eps(eps: float, source: object) -> float:
    if not math.isfinite(eps) or eps < 0:
        raise InputError(source, f"field 'eps' is {eps}, expected a finite radius >= 0")
    return eps


def _parse_extra(text: str, source: str) -> dict:
    try:
        extra = parse_json(text, source)
    except InputError as err:
        raise InputError(source, f"field 'extra_json': {err.problem}") from None
    if not isinstance(extra, dict):
        raise InputError(source, "field 'extra_json' is not a JSON object")
    return extra


# ---------------------------------------------------------------- benchmark folder


def _is_int(value: object) -> bool:
    return isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)


def _image_label_pairs(items: object, source: str) -> tuple[list[Image.Image], list[int]]:
    if not isinstance(items, (list, tuple)):
        raise InputError(
            source, f"expected a list of (PIL image, label), got {type(items).__name__}"
        )
    images, labels = [], []
    for i, item in enumerate(items):
        if not (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and isinstance(item[0], Image.Image)
            and _is_int(item[1])
        ):
            raise InputError(source, f"item {i} is not a (PIL image, integer label) pair")
        _check_label(item[1], source, f"item {i}")
        images.append(item[0])
        labels.append(int(item[1]))
    return images, labels


def _check_label(label: int, source: str, what: str) -> None:
    # before any bincount or int64 array: a label of 1e9 must not allocate 1e9 counters
    n = current_limits().max_classes
    if not 0 <= int(label) < n:
        raise InputError(
            source, f"{what} has label {int(label)}, outside [0, {n:,}) (--max-classes)"
        )


def _patch_to_uint8(patch: object, source: str) -> np.ndarray:
    """The benchmark's patch, (channels, h, w) floats in [0, 1] (a tensor or array), as uint8 (h, w, channels)."""
    if isinstance(patch, Image.Image):
        return images_to_array([patch], [source])[0]
    try:
        patch = np.asarray(patch)
    except (TypeError, ValueError, RuntimeError) as err:
        raise InputError(source, f"field 'patch' is not an array ({err})") from err
    if patch.ndim == 2:
        patch = patch[None]
    if patch.ndim != 3 or patch.shape[0] not in (1, 3):
        raise InputError(
            source, f"field 'patch' has shape {patch.shape}, expected (channels, h, w)"
        )
    if patch.dtype.kind == "f":
        if not np.isfinite(patch).all():  # NaN would silently become 0 in the cast below
            raise InputError(source, "field 'patch' has NaN or infinite values")
        if patch.size and (patch.min() < 0 or patch.max() > 1):
            raise InputError(source, "field 'patch' has float values outside [0, 1]")
        patch = np.round(patch * 255)
    elif patch.dtype != np.uint8:
        raise InputError(
            source, f"field 'patch' has dtype {patch.dtype}, expected floats in [0, 1] or uint8"
        )
    return patch.astype(np.uint8).transpose(1, 2, 0)


def _read_side_file(path: Path) -> dict:
    limits = current_limits()
    side = parse_json(read_regular(path, root=path.parent, max_bytes=limits.max_json_bytes), path)
    if not isinstance(side, dict):
        raise InputError(path, "expected a JSON object")
    expected = {
        "format_version": int,
        "attack": str,
        "eps": (int, float, type(None)),
        "adv_label": int,
        "target_index": int,
        "extra": dict,
    }
    for key, kind in expected.items():
        if key in side and (not isinstance(side[key], kind) or isinstance(side[key], bool)):
            raise InputError(path, f"field '{key}' has the wrong type ({type(side[key]).__name__})")
    if side.get("eps") is not None:
        _finite_eps(float(side["eps"]), path)
    if side.get("format_version", 1) > FORMAT_VERSION:
        raise InputError(
            path,
            f"format version {side['format_version']} is newer than this poisonlens reads ({FORMAT_VERSION})",
        )
    return side


def _read_target(
    path: Path, n_channels: int
) -> tuple[np.ndarray, int, np.ndarray | None, tuple[int, int] | None]:
    """``target.pickle`` as (target_x with any patch pasted, label, trigger, trigger_xy)."""
    source = str(path)
    target = safe_load(path, root=path.parent)
    if not (
        isinstance(target, (list, tuple))
        and len(target) in (2, 4)
        and isinstance(target[0], Image.Image)
        and _is_int(target[1])
    ):
        raise InputError(source, "expected (PIL image, label) or (PIL image, label, patch, [x, y])")
    _check_label(target[1], source, "the target")
    target_x = images_to_array([target[0]], [source])[0]
    if target_x.shape[-1] < n_channels:  # a grey target beside colour poisons
        target_x = np.repeat(target_x, n_channels, axis=-1)
    if len(target) == 2:
        return target_x, int(target[1]), None, None
    trigger = _patch_to_uint8(target[2], source)
    xy = target[3]
    if not (isinstance(xy, (list, tuple)) and len(xy) == 2 and all(_is_int(v) for v in xy)):
        raise InputError(source, "field '[x, y]' is not two integers")
    (h, w, c), (px, py) = trigger.shape, (int(xy[0]), int(xy[1]))
    if c != target_x.shape[-1]:
        raise InputError(source, f"field 'patch' has {c} channels, the image {target_x.shape[-1]}")
    if px < 0 or py < 0 or py + h > target_x.shape[0] or px + w > target_x.shape[1]:
        raise InputError(
            source, f"field '[x, y]' puts the {w}x{h} patch at ({px}, {py}), outside the image"
        )
    # the benchmark pastes the patch at test time; a PoisonSet's target already carries it
    target_x = target_x.copy()
    target_x[py : py + h, px : px + w] = trigger
    return target_x, int(target[1]), trigger, (px, py)


def load_poisons_folder(folder: str | os.PathLike) -> PoisonSet:
    """Read the benchmark's folder: ``poisons.pickle``, ``base_indices.pickle``, ``target.pickle``.

    The pickles are read through :func:`safe_load`. The adversarial label is the most
    common poison label (the benchmark's poisons all carry it) unless ``poisonlens.json``
    says otherwise. A 4-tuple target ``(image, label, patch, [x, y])`` is a patch
    backdoor: the patch is pasted onto the target image at column x, row y.

    Parameters
    ----------
    folder : str or PathLike
        The folder; a link out of it, a FIFO or a missing pickle is refused by name.

    Returns
    -------
    PoisonSet
    """
    folder = Path(folder)
    for name in (POISONS_FILE, BASE_INDICES_FILE, TARGET_FILE):
        # lexists: a FIFO or a link out of the folder is named as such when it is opened
        if not os.path.lexists(folder / name):
            raise InputError(
                folder / name,
                "no such file; a poison folder holds poisons.pickle, base_indices.pickle and target.pickle",
            )
    source = str(folder / POISONS_FILE)
    images, labels = _image_label_pairs(safe_load(folder / POISONS_FILE, root=folder), source)
    x = images_to_array(images, [f"{source}, item {i}" for i in range(len(images))])

    base = _read_base_indices(folder, n=len(x))
    target_x, target_label, trigger, trigger_xy = _read_target(folder / TARGET_FILE, x.shape[-1])
    if not len(x):  # no image to take the shape from
        x = np.zeros((0, *target_x.shape), dtype=np.uint8)
    elif target_x.shape[-1] > x.shape[-1]:  # grey poisons beside a colour target
        x = np.repeat(x, target_x.shape[-1], axis=-1)

    side = _read_side_file(folder / SIDE_FILE) if os.path.lexists(folder / SIDE_FILE) else {}
    if "adv_label" not in side and not labels:
        raise InputError(
            folder / POISONS_FILE, "holds no poison, so the adversarial label is unknown"
        )
    poisons = PoisonSet(
        x=x,
        y=np.asarray(labels, dtype=np.int64),
        base_indices=base,
        target_x=target_x,
        target_label=target_label,
        # the benchmark's poisons all carry the adversarial label
        adv_label=side["adv_label"] if "adv_label" in side else int(np.bincount(labels).argmax()),
        attack=side.get("attack", "unknown" if trigger is None else "patch-backdoor"),
        eps=None if side.get("eps") is None else float(side["eps"]),
        trigger=trigger,
        trigger_xy=trigger_xy,
        target_index=side.get("target_index", -1),
        extra=side.get("extra", {}),
    )
    check_poisons(poisons, str(folder))
    return poisons


def _read_base_indices(folder: Path, n: int) -> np.ndarray:
    # base_indices.pickle: a list (or array) of n training rows, as int64.
    source = str(folder / BASE_INDICES_FILE)
    base = safe_load(folder / BASE_INDICES_FILE, root=folder)
    if isinstance(base, (list, tuple)) and all(_is_int(b) for b in base):
        outside = [int(b) for b in base if not 0 <= int(b) < 2**63]
        if outside:  # np.asarray would raise OverflowError past int64
            raise InputError(source, f"index {outside[0]} is outside [0, 2^63)")
        base = np.asarray(base, dtype=np.int64)  # int64 even when empty
    if not isinstance(base, np.ndarray):
        raise InputError(source, "expected a list or array of integer indices")
    return as_labels(base, source, "base_indices", n=n)


def _to_pil(image: np.ndarray) -> Image.Image:
    return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def save_poisons_folder(poisons: PoisonSet, folder: str | os.PathLike) -> None:
    """Write ``poisons`` as the benchmark's folder, plus ``poisonlens.json`` for the rest.

    The pickles hold what the benchmark's own scripts write (PIL images, int labels, a
    list of indices; for a backdoor the patch as float32 (channels, h, w) in [0, 1]), so
    its ``poison_test.py`` reads the folder as it is.

    Parameters
    ----------
    poisons : PoisonSet
        The set to write (checked first).
    folder : str or PathLike
        The folder, created when missing.
    """
    folder = Path(folder)
    check_poisons(poisons, str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    items = [
        (_to_pil(image), int(label)) for image, label in zip(poisons.x, poisons.y, strict=True)
    ]
    target: tuple = (_to_pil(np.asarray(poisons.target_x)), int(poisons.target_label))
    if poisons.trigger is not None:
        patch = np.asarray(poisons.trigger, dtype=np.float32).transpose(2, 0, 1) / 255
        target = (*target, patch, list(poisons.trigger_xy))
    for name, obj in (
        (POISONS_FILE, items),
        (BASE_INDICES_FILE, [int(i) for i in poisons.base_indices]),
        (TARGET_FILE, target),
    ):
        runfs.write_bytes(folder, (name,), pickle.dumps(obj))
    side = {
        "format_version": FORMAT_VERSION,
        "attack": poisons.attack,
        "eps": poisons.eps,
        "adv_label": int(poisons.adv_label),
        "target_index": int(poisons.target_index),
        "extra": poisons.extra,
    }
    runfs.write_bytes(folder, (SIDE_FILE,), (json.dumps(side, indent=2) + "\n").encode())


def load_poisons(path: str | os.PathLike) -> PoisonSet:
    """Read a poison set from a poisonlens ``.npz`` file or a benchmark pickle folder.

    Parameters
    ----------
    path : str or PathLike
        A folder (the benchmark's pickles) or a file (a poisonlens ``.npz``).

    Returns
    -------
    PoisonSet
    """
    path = Path(path)
    if path.is_dir():
        return load_poisons_folder(path)
    if os.path.lexists(path):  # read_npz refuses a FIFO, a device or a broken link by name
        return load_poisons_npz(path)
    raise InputError(
        path, "no such file or folder; expected a poisonlens .npz or a benchmark poison folder"
    )
