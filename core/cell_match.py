"""Whether a cell already in an evaluate folder was trained as the grid would train it now.

``poisonlens evaluate`` never trains a finished cell again, so a grid asked for with other
options (``--epochs``, a ``--defense-param``, a re-crafted poison set under the same name) must
not take the old runs for its own. :func:`config_differences` compares a stored config (run.json's,
or a cell record's) with the planned one; :func:`input_digests` names the files a cell reads
besides its data set by their contents, kept in the run's tags, so a file replaced under the same
name is a different input.

Not compared: paths (a grid carried to another machine is the same grid; the data set is
compared by its kind and folder name, the other files by their digests), the device, the
snapshot batch size, a defense's thread count, and, for an undefended cell (or the clean
control), the drop schedule, which changes nothing in its training.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import stat
from pathlib import Path

from poisonlens import runfs
from poisonlens.config import TrainConfig
from poisonlens.errors import one_line
from poisonlens.limits import current_limits

# where or with what a run was computed, not what it computed
PLACE_OPTIONS = frozenset({"poisons", "pretrained", "exclude", "device", "snapshot_batch_size", "tags"})
# what only a dropping defense reads: the authors' schedule may reuse the grid's undefended cells
DROP_OPTIONS = frozenset({"snapshot_every", "drop_after", "stop_after", "embedding_dims", "defense_params"})
RUNTIME_PARAMS = frozenset({"n_jobs"})  # a defense's threads: the same selection either way
INPUTS = ("poisons", "pretrained", "exclude")  # the files a cell reads besides its data set


def file_digest(path: str | Path | None) -> str | None:
    """``sha256:<hex>`` of a regular file's bytes; None for no file, a folder or a missing one.

    Read as any user file is (no link followed, no FIFO opened, at most the limits'
    ``max_file_bytes``); a file that cannot be read so has no digest, and the loader that
    reads it for training says why.
    """
    if path is None:
        return None
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    # a grid asks for the same files' digests once per cell: hash each version of a file once
    return _digest(str(path), st.st_size, st.st_mtime_ns, st.st_ino)


@functools.lru_cache(maxsize=64)
def _digest(path: str, size: int, mtime_ns: int, inode: int) -> str | None:
    where = Path(path)
    try:
        with runfs.open_file(where.parent, where.name, max_bytes=current_limits().max_file_bytes) as handle:
            digest = hashlib.sha256()
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except (runfs.RunFileError, OSError):
        return None
    return "sha256:" + digest.hexdigest()


def input_digests(config: TrainConfig) -> dict:
    """{input: digest} of the files of :data:`INPUTS` that ``config`` names (:func:`file_digest`)."""
    return {name: file_digest(getattr(config, name)) for name in INPUTS}


def _dataset_name(spec: object) -> str:
    """``kind:folder-name`` of a data set spec: the path up to its last part is the machine's."""
    kind, _, path = str(spec).partition(":")
    return f"{kind}:{Path(path).name}" if path else kind


def _with_defaults(defense: str, params: object) -> object:
    """A defense's parameters with its declared defaults filled in, so that a run made before
    an option existed (EPIC's ``pool``) equals one that names the default."""
    if not isinstance(params, dict):
        return params
    from poisonlens.defense import defense_options

    return {**{f.name: f.default for f in defense_options(defense)}, **params}


def _lr(config: dict) -> object:
    """The learning rate a config trains at (``lr``, or its scenario's default)."""
    lr = config.get("lr")
    if lr is not None:
        return lr
    return 0.01 if config.get("scenario") == "finetune" else 0.1


def same(a: object, b: object) -> bool:
    """JSON values equal, with ``true`` never equal to ``1`` (Python's ``==`` says it is)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if _number(a) and _number(b):  # 30 and 30.0 alike
        return a == b
    return type(a) is type(b) and a == b


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def config_differences(want: TrainConfig, have: object) -> list[str]:
    """How a stored run's options differ from the ones a grid would train it with now.

    Parameters
    ----------
    want : TrainConfig
        The cell's config as the grid plans it (:func:`poisonlens.evaluate.cell_config`), its
        input digests in ``tags['inputs']``.
    have : dict
        The config the cell was trained with (run.json's, or its record's); any JSON.

    Returns
    -------
    list of str, one per differing option (``"epochs 1, this grid 3"``,
    ``"defense_params.pool 'active', this grid 'all'"``); empty when alike. An input's digest
    is compared where both configs have one (runs made before digests were kept have none).
    """
    if not isinstance(have, dict):
        return ["its config is not an object"]
    planned = json.loads(json.dumps(want.to_json()))  # tuples as lists, keys as strings: as stored
    out = []
    for key, value in planned.items():
        other = have.get(key)
        if key in PLACE_OPTIONS or (want.defense == "none" and key in DROP_OPTIONS):
            continue
        if key == "dataset":
            value, other = _dataset_name(value), _dataset_name(other)
        elif key == "lr":
            value, other = _lr(planned), _lr(have)
        elif key == "defense_params":
            value, other = _with_defaults(want.defense, value), _with_defaults(want.defense, other)
            if isinstance(other, dict):  # name the parameter that differs, not the whole dict
                out += [_difference(f"{key}.{k}", other.get(k), value.get(k))
                        for k in sorted(set(value) | set(other), key=str)
                        if k not in RUNTIME_PARAMS and not same(value.get(k), other.get(k))]
                continue
        if not same(value, other):
            out.append(_difference(key, other, value))
    stored = (have.get("tags") or {}).get("inputs") if isinstance(have.get("tags"), dict) else None
    if isinstance(stored, dict):
        for name, digest in (planned["tags"].get("inputs") or {}).items():
            if name in stored and not same(stored[name], digest):
                out.append(f"another {name} file than this grid's ({_short(stored[name])}, this grid {_short(digest)})")
    return out


def _short(digest: object) -> str:
    return one_line(digest, 20) if isinstance(digest, str) else one_line(repr(digest), 20)


def _difference(key: str, stored: object, planned: object) -> str:
    return f"{key} {one_line(repr(stored), 60)}, this grid {one_line(repr(planned), 60)}"
