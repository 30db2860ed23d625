"""The ``cifar10:<dir>`` format: CIFAR-10's python batches, read through the safe unpickler."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from poisonlens.data_formats import register
from poisonlens.errors import InputError

if TYPE_CHECKING:  # numpy loads when the data set does, not for --help
    import numpy as np

    from poisonlens.data.image_dataset import ImageDataset


def _batch_field(batch: dict, key: str, source: Path) -> object:
    # the original batches are Python 2 pickles: keys are str read as latin1, or bytes
    for k in (key, key.encode()):
        if k in batch:
            return batch[k]
    raise InputError(source, f"field '{key}' is missing")


def _read_cifar_batch(path: Path, root: Path) -> tuple[np.ndarray, np.ndarray]:
    import numpy as np

    from poisonlens.data.image_dataset import as_labels
    from poisonlens.data.safe_pickle import safe_load

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


def _class_names(root: Path) -> tuple[str, ...]:
    """``batches.meta``'s label names, their number bounded by ``--max-classes``."""
    from poisonlens.data.safe_pickle import safe_load
    from poisonlens.limits import check_count, current_limits

    source = root / "batches.meta"
    meta = safe_load(source, encoding="latin1", root=root)
    if not isinstance(meta, dict):
        raise InputError(source, "expected a dict with 'label_names'")
    names = _batch_field(meta, "label_names", source)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (str, bytes)) for n in names):
        raise InputError(source, "field 'label_names' is not a list of names")
    check_count(source, "label names", len(names), current_limits().max_classes, "--max-classes")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else n for n in names)


@register(
    "cifar10",
    arg="<dir>",
    doc="CIFAR-10's python batches (data_batch_*, test_batch, batches.meta), the "
    "cifar-10-batches-py folder or one holding it",
)
def load_cifar10_batches(root: str | os.PathLike, *, name: str | None = None) -> ImageDataset:
    """CIFAR-10's python batches: ``data_batch_*``, ``test_batch``, ``batches.meta``.

    Train batches are concatenated in numeric order. Read through
    :func:`poisonlens.data.safe_pickle.safe_load`.

    Parameters
    ----------
    root : str or path
        The ``cifar-10-batches-py`` folder or a folder holding it.
    name : str, optional
        The data set's name (default ``cifar10:<root>``).

    Returns
    -------
    ImageDataset with x of shape (n, 32, 32, 3)
    """
    import numpy as np

    from poisonlens.data.image_dataset import ImageDataset, check_dataset

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
    dataset = ImageDataset(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        x_test,
        y_test,
        _class_names(root),
        name or f"cifar10:{root}",
    )
    return check_dataset(dataset, str(root))
