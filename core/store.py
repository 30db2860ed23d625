"""The run store: one directory per run, the one contract between training and the dashboard.

Layout and columns are documented in docs/run-format.md. Every file is written atomically
(a temporary file in the same directory, then ``os.replace``), so a reader polling a run
while it trains sees either the old or the new version of a file, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from core.errors import InputError

FORMAT_VERSION = 1
RUN_JSON = "run.json"
PROGRESS_JSON = "progress.json"
METRICS = "metrics.parquet"
EXAMPLES = "examples.parquet"
IMAGES = "images.npy"
TARGET_IMAGE = "target.npy"
TARGETS = "targets.parquet"
SNAPSHOTS = "snapshots"
PROJECTIONS = "projections"
CHECKPOINTS = "checkpoints"

STATUSES = ("running", "finished", "failed")


# --- atomic writes ---------------------------------------------------------------------------


def _atomic(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file."""
    _atomic(path, lambda f: f.write(data))


def atomic_write_json(path: Path, obj: dict) -> None:
    atomic_write_bytes(
        path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode()
    )


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    others = [f.name for f in table.schema if f.name not in floats]
    # Byte-stream-split floats compress about a quarter smaller than dictionary-encoded ones.
    _atomic(
        path,
        lambda f: pq.write_table(
            table, f, compression="zstd", use_dictionary=others, use_byte_stream_split=floats
        ),
    )


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    _atomic(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise InputError(path, f"unreadable JSON ({err})") from err


# --- writing (the trainer's side) ----------------------------------------------------------


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / SNAPSHOTS / f"epoch_{epoch:04d}.parquet"


class RunWriter:
    """Writes one run directory; used by the trainer. Every method is one atomic write."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    def create(
        self,
        name: str,
        config: dict,
        versions: dict,
        *,
        class_names: list[str],
        target: dict | None,
    ) -> None:
        """Start a run: run.json with status ``running``. ``target`` holds the poison set's
        target_label, adv_label, target_index, attack, eps and n_poisons (None for a clean run)."""
        now = time.time()
        atomic_write_json(
            self.dir / RUN_JSON,
            {
                "format_version": FORMAT_VERSION,
                "name": name,
                "config": config,
                "versions": versions,
                "class_names": list(class_names),
                "target": target,
                "status": "running",
                "pid": os.getpid(),
                "error": None,
                "created": now,
                "updated": now,
                "finished": None,
            },
        )

    def set_status(self, status: str, error: str | None = None) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        meta = _read_json(self.dir / RUN_JSON)
        now = time.time()
        meta.update(status=status, error=error, updated=now, pid=os.getpid())
        meta["finished"] = now if status != "running" else None
        atomic_write_json(self.dir / RUN_JSON, meta)

    def write_progress(self, **fields) -> None:
        atomic_write_json(self.dir / PROGRESS_JSON, {**fields, "updated": time.time()})

    def write_examples(self, frame: pd.DataFrame) -> None:
        atomic_write_parquet(self.dir / EXAMPLES, frame)

    def write_images(self, images: np.ndarray, target_image: np.ndarray | None) -> None:
        atomic_write_npy(self.dir / IMAGES, images)
        if target_image is not None:
            atomic_write_npy(self.dir / TARGET_IMAGE, target_image)

    def write_metrics(self, frame: pd.DataFrame) -> None:
        atomic_write_parquet(self.dir / METRICS, frame)

    def write_targets(self, frame: pd.DataFrame) -> None:
        atomic_write_parquet(self.dir / TARGETS, frame)

    def write_snapshot(self, epoch: int, frame: pd.DataFrame) -> None:
        atomic_write_parquet(snapshot_path(self.dir, epoch), frame)

    def write_projection(self, name: str, frame: pd.DataFrame) -> None:
        atomic_write_parquet(self.dir / PROJECTIONS / f"{name}.parquet", frame)


# --- reading (the dashboard's side) --------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One line of ``poisonlens runs``: where a run is and how it stands."""

    path: Path
    name: str
    status: str
    created: float
    updated: float
    epochs_done: int
    epochs: int
    defense: str
    test_acc: float
    attack_success: bool | None
    n_dropped: int
    error: str | None


class Run:
    """A run directory opened for reading. Cheap to make: files are read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not (self.path / RUN_JSON).is_file():
            raise InputError(self.path, f"not a poisonlens run (no {RUN_JSON})")
        meta = self.meta
        if meta.get("format_version") != FORMAT_VERSION:
            raise InputError(
                self.path / RUN_JSON,
                f"format_version {meta.get('format_version')!r}; this poisonlens reads {FORMAT_VERSION}",
            )

    # metadata
    @property
    def meta(self) -> dict:
        return _read_json(self.path / RUN_JSON)

    @property
    def config(self) -> dict:
        return self.meta["config"]

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def class_names(self) -> list[str]:
        return list(self.meta.get("class_names", []))

    @property
    def target(self) -> dict | None:
        """target_label, adv_label, target_index, attack, eps, n_poisons; None for a clean run."""
        return self.meta.get("target")

    @property
    def status(self) -> str:
        """``running``, ``finished``, ``failed``, or ``interrupted`` (running, but its process is gone)."""
        meta = self.meta
        if meta["status"] == "running" and not _alive(meta.get("pid")):
            return "interrupted"
        return meta["status"]

    def progress(self) -> dict:
        try:
            return _read_json(self.path / PROGRESS_JSON)
        except FileNotFoundError:
            return {}

    # tables
    def metrics(self) -> pd.DataFrame:
        """A row per finished epoch (columns in docs/run-format.md); empty before epoch 0 is done."""
        path = self.path / METRICS
        return read_parquet(path) if path.is_file() else pd.DataFrame()

    def examples(self) -> pd.DataFrame:
        """A row per training example: index, label, is_poison, base_index."""
        return _read_parquet(self.path / EXAMPLES)

    def targets(self) -> pd.DataFrame:
        """A row per snapshot epoch: the target's gradient for ``adv_label``, embedding, prediction."""
        path = self.path / TARGETS
        return read_parquet(path) if path.is_file() else pd.DataFrame()

    def snapshot_epochs(self) -> list[int]:
        folder = self.path / SNAPSHOTS
        if not folder.is_dir():
            return []
        return sorted(int(p.stem.split("_")[1]) for p in folder.glob("epoch_*.parquet"))

    def snapshot(self, epoch: int, columns: list[str] | None = None) -> pd.DataFrame:
        """The snapshot table of ``epoch`` (a row per example, in index order)."""
        return _read_parquet(snapshot_path(self.path, epoch), columns=columns)

    def snapshot_columns(self, epoch: int) -> list[str]:
        return pq.read_schema(snapshot_path(self.path, epoch)).names

    def gradients(self, epoch: int) -> np.ndarray:
        """float32 (n_samples, n_classes): the snapshot's softmax - onehot."""
        cols = [c for c in self.snapshot_columns(epoch) if c.startswith("g_")]
        return self.snapshot(epoch, columns=cols).to_numpy(np.float32)

    def projection(self, name: str = "umap") -> pd.DataFrame | None:
        path = self.path / PROJECTIONS / f"{name}.parquet"
        return read_parquet(path) if path.is_file() else None

    # images, memory-mapped so a page can take a few thumbnails of a large run cheaply
    def images(self) -> np.ndarray:
        """uint8 (n_samples, height, width, channels), memory-mapped."""
        return np.load(self.path / IMAGES, mmap_mode="r", allow_pickle=False)

    def target_image(self) -> np.ndarray | None:
        path = self.path / TARGET_IMAGE
        return np.load(path, allow_pickle=False) if path.is_file() else None

    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINTS

    def info(self) -> RunInfo:
        meta = self.meta
        cfg = meta.get("config", {})
        m = self.metrics()
        last = m.iloc[-1] if len(m) else None
        success = None
        if last is not None and "attack_success" in m and not pd.isna(last["attack_success"]):
            success = bool(last["attack_success"])
        return RunInfo(
            path=self.path,
            name=meta.get("name", self.path.name),
            status=self.status,
            created=float(meta.get("created", 0.0)),
            updated=float(meta.get("updated", 0.0)),
            epochs_done=int(last["epoch"]) if last is not None else -1,
            epochs=int(cfg.get("epochs", 0)),
            defense=str(cfg.get("defense", "?")),
            test_acc=float(last["test_acc"]) if last is not None else float("nan"),
            attack_success=success,
            n_dropped=int(last["n_dropped"]) if last is not None else 0,
            error=meta.get("error"),
        )


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file through one open handle.

    A path-based read may open the file more than once (footer, then pages); if the writer
    replaces the file in between, the reader mixes two versions. One handle pins one version.
    """
    with open(path, "rb") as f:
        return pq.read_table(f, columns=columns).to_pandas()


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still exists on this machine (True when unknown)."""
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return read_parquet(path, columns=columns)
    except FileNotFoundError as err:
        raise InputError(path, "missing file") from err
    except (OSError, pa.ArrowException) as err:
        raise InputError(path, f"unreadable Parquet ({err})") from err


def open_run(path: str | Path) -> Run:
    """Open a run directory for reading; a clear error when it is not one."""
    return Run(Path(path))


def list_runs(*roots: str | Path) -> list[RunInfo]:
    """Every run directly inside the given folders (or a folder that is itself a run), newest first."""
    infos: list[RunInfo] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        candidates = (
            [root]
            if (root / RUN_JSON).is_file()
            else sorted(p for p in root.iterdir() if (p / RUN_JSON).is_file())
        )
        for path in candidates:
            try:
                infos.append(Run(path).info())
            except (InputError, KeyError, ValueError):
                continue
    return sorted(infos, key=lambda i: i.created, reverse=True)
