"""The numbers of a finished grid cell, kept beside its run folder and outliving it.

A run folder of the whole of CIFAR-10 holds about 300 MB (the training images and a snapshot
per epoch); the numbers ``poisonlens evaluate`` reports from it fit in a few kilobytes. When a
cell finishes, evaluate writes them to ``<run>.cell.json`` beside the run folder (and, for a
clean control, its final weights to ``<run>.model.pt``, which every poison set's target is read
out of). A cell whose run folder has gone but whose record is there counts as finished: its
rows in the tables and, for an EPIC cell, the drop counts its random twin copies come from the
record. So a grid can be carried from one machine to the next, or its run folders deleted to
free the disk, without training anything again.

A record is a file a user may hand over like a run folder, and is read as one: bounded
(:func:`poisonlens.store.read_json`), no link followed, every field checked for its type and
range before it is used; its identity (scenario, poison set, defense, seed) must be the cell's.
"""

from __future__ import annotations

import math
from pathlib import Path

from poisonlens import runfs
from poisonlens.errors import InputError
from poisonlens.store import MAX_EPOCHS, atomic_write_bytes, atomic_write_json, read_json

FORMAT = "poisonlens.evaluate.cell"
VERSION = 1
RECORD_SUFFIX = ".cell.json"
MODEL_SUFFIX = ".model.pt"
MAX_RECORD_BYTES = 4 << 20  # a config, a dozen numbers and one short row per snapshot
MAX_MODEL_BYTES = 1 << 30
SUMMARY_KEYS = ("test_acc", "attack_success", "recall", "precision", "n_dropped", "roc_auc",
                "seconds", "target_prob_adv")
DETECTION_KEYS = ("epoch", "n_suspect", "precision", "recall", "roc_auc")
IDENTITY_KEYS = ("scenario", "poison_set", "defense", "seed")


def record_path(run_dir: Path) -> Path:
    """``<run>.cell.json``: the record of the cell trained in ``run_dir``."""
    return run_dir.with_name(run_dir.name + RECORD_SUFFIX)


def model_path(run_dir: Path) -> Path:
    """``<run>.model.pt``: the final weights a clean control's record keeps."""
    return run_dir.with_name(run_dir.name + MODEL_SUFFIX)


def _number(value) -> float | None:
    """JSON has no NaN: a missing number (no poisons, no drops) is written as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_record(
    run_dir: Path,
    *,
    identity: dict,
    config: dict,
    summary: dict,
    detection: list[dict],
    drops: dict[int, int],
    model: bytes | None = None,
) -> None:
    """Write the record of a finished cell beside its run folder (atomically, never through a link).

    Parameters
    ----------
    run_dir : Path
        The cell's run folder (the record goes to its parent).
    identity : dict
        ``scenario``, ``poison_set``, ``defense``, ``seed``: the run's tags.
    config : dict
        The run's TrainConfig as JSON (run.json's ``config``).
    summary : dict
        :func:`poisonlens.evaluate.run_summary` of the run.
    detection : list of dict
        One row per snapshot (:func:`poisonlens.evaluate.detection_rows`, less the identity).
    drops : dict
        {epoch: examples dropped at that snapshot}.
    model : bytes, optional
        The run's final weights (``model.pt``), kept for a clean control.
    """
    if model is not None:
        atomic_write_bytes(model_path(run_dir), model, root=run_dir.parent)
    record = {
        "format": FORMAT,
        "version": VERSION,
        "run": run_dir.name,
        "identity": {k: identity[k] for k in IDENTITY_KEYS},
        "config": config,
        "summary": {k: _number(summary[k]) for k in SUMMARY_KEYS},
        "detection": [{k: _number(row[k]) for k in DETECTION_KEYS} for row in detection],
        "drops": [[int(e), int(n)] for e, n in sorted(drops.items())],
        "model": model is not None,
    }
    atomic_write_json(record_path(run_dir), record, root=run_dir.parent)


def remove_record(run_dir: Path) -> None:
    """Delete a cell's record and kept model (a cell trained again from scratch)."""
    for path in (record_path(run_dir), model_path(run_dir)):
        runfs.remove(path.parent, (path.name,))


def has_record(run_dir: Path) -> bool:
    """True when ``<run>.cell.json`` is there (a regular file, not a link)."""
    return runfs.kind(run_dir.parent, record_path(run_dir).name) == "file"


def read_record(run_dir: Path, identity: dict) -> dict:
    """The checked record of the cell trained in ``run_dir``.

    Parameters
    ----------
    run_dir : Path
        The cell's run folder (it need not exist any more).
    identity : dict
        The cell's ``scenario``, ``poison_set``, ``defense`` and ``seed``; the record must
        name the same.

    Returns
    -------
    dict
        ``identity``, ``config``, ``summary`` (floats, NaN where null), ``detection`` (list of
        dicts), ``drops`` ({epoch: count}), ``run`` (str) and ``model`` (the kept weights'
        path, or None).

    Raises
    ------
    InputError
        Naming the record, when it is missing, too large, not this format or version, names
        another cell, or holds a value of the wrong type or out of range.
    """
    path = record_path(run_dir)
    try:
        raw = read_json(path, max_bytes=MAX_RECORD_BYTES)
    except FileNotFoundError:
        raise InputError(path, "missing file") from None
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise InputError(path, f"not a {FORMAT} record of version {VERSION}")
    ident = raw.get("identity")
    if not isinstance(ident, dict) or any(ident.get(k) != identity[k] for k in IDENTITY_KEYS):
        raise InputError(path, f"records another cell ({ident!r}), not {identity!r}")
    if not isinstance(raw.get("config"), dict):
        raise InputError(path, "'config' is not an object")
    summary = _numbers(raw.get("summary"), SUMMARY_KEYS, path, "summary")
    detection = raw.get("detection")
    if not isinstance(detection, list) or len(detection) > MAX_EPOCHS + 1:
        raise InputError(path, f"'detection' is not a list of at most {MAX_EPOCHS + 1:,} rows")
    rows = [_numbers(row, DETECTION_KEYS, path, "detection") for row in detection]
    drops = raw.get("drops")
    if not isinstance(drops, list) or len(drops) > MAX_EPOCHS + 1 or not all(
        isinstance(p, list) and len(p) == 2 and all(type(v) is int for v in p)
        and 0 <= p[0] <= MAX_EPOCHS and 0 <= p[1] <= 1 << 40 for p in drops
    ):
        raise InputError(path, "'drops' is not a list of [epoch, count] pairs of whole numbers")
    run = raw.get("run")
    if type(raw.get("model")) is not bool or not isinstance(run, str):
        raise InputError(path, "'model' is not true/false or 'run' is not text")
    return {
        "identity": {k: ident[k] for k in IDENTITY_KEYS},
        "config": raw["config"],
        "summary": summary,
        "detection": rows,
        "drops": {e: n for e, n in drops},
        "run": run[:200],
        "model": model_path(run_dir) if raw["model"] else None,
    }


def _numbers(obj, keys: tuple[str, ...], path: Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(path, f"'{what}' is not an object")
    out = {}
    for key in keys:
        value = obj.get(key)
        if value is None:
            out[key] = float("nan")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(path, f"'{what}.{key}' is not a number")
        else:
            out[key] = float(value)
    return out
