"""Checksums of the sample's content, and the check that a copy matches them.

Wall-clock fields (timestamps, process ids, ``*_seconds`` columns, the defense's timing report)
and package versions change from one regeneration to the next, so they are left out of the
checksums; everything else (images, labels, gradients, decisions, metrics, the 2-D layout
rounded to 1e-3) must match bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

VOLATILE_JSON_KEYS = {"created", "updated", "finished", "pid", "versions", "seconds"}
VOLATILE_NPZ_FIELDS = {"extra_json"}  # holds the crafting report, timings included
# A person's review of a sample run (poisonlens.review) is theirs, not part of the sample.
USER_FILES = {"review.parquet"}


def _canonical_parquet(path: Path) -> bytes:
    frame = pd.read_parquet(path)
    frame = frame[[c for c in frame.columns if not c.endswith("_seconds") and c != "defense_info"]]
    if path.parent.name == "projections":
        frame = frame.round(3)
    return frame.to_csv(index=False, float_format="%.9g").encode()


def _drop_volatile(value):
    if isinstance(value, dict):
        return {k: _drop_volatile(v) for k, v in value.items() if k not in VOLATILE_JSON_KEYS}
    if isinstance(value, list):
        return [_drop_volatile(v) for v in value]
    return value


def _canonical_json(path: Path) -> bytes:
    return json.dumps(_drop_volatile(json.loads(path.read_text())), sort_keys=True).encode()


def _canonical_npz(path: Path) -> bytes:
    # the zip container stores write times; the arrays are what matters
    with np.load(path, allow_pickle=False) as data:
        return b"".join(
            name.encode() + data[name].tobytes()
            for name in sorted(data.files)
            if name not in VOLATILE_NPZ_FIELDS
        )


def canonical_bytes(path: Path) -> bytes:
    """The bytes a file's checksum is taken over (see the module docstring)."""
    if path.suffix == ".parquet":
        return _canonical_parquet(path)
    if path.suffix == ".json":
        return _canonical_json(path)
    if path.suffix == ".npz":
        return _canonical_npz(path)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False).tobytes()
    return path.read_bytes()


def checksums(root: Path, folders: tuple[str, ...] = ("poisons", "runs")) -> dict[str, str]:
    """sha256 of the canonical bytes of every file in ``folders`` of ``root``, keyed by path."""
    files = sorted(
        p
        for f in folders
        for p in (root / f).rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name not in USER_FILES
    )
    return {str(p.relative_to(root)): hashlib.sha256(canonical_bytes(p)).hexdigest() for p in files}


def differences(expected: dict[str, str], actual: dict[str, str]) -> list[str]:
    """One line per file missing, extra or changed."""
    lines = [f"missing: {k}" for k in sorted(expected.keys() - actual.keys())]
    lines += [f"extra: {k}" for k in sorted(actual.keys() - expected.keys())]
    lines += [
        f"changed: {k}" for k in sorted(expected.keys() & actual.keys()) if expected[k] != actual[k]
    ]
    return lines
