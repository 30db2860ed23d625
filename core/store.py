"""The run store: one directory per run, the one contract between training and the dashboard.

Layout and columns are documented in docs/run-format.md. Every file is written atomically
(a temporary file in the same directory, then ``os.replace``), so a reader polling a run
while it trains sees either the old or the new version of a file, never half of one.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from poisonlens.errors import InputError

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
    """Write ``obj`` as sorted, indented JSON to ``path`` atomically."""
    atomic_write_bytes(
        path, json.dumps(obj, indent=2, sort_keys=True, default=json_default).encode()
    )


def atomic_write_parquet(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as a zstd Parquet file to ``path`` atomically."""
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


def atomic_write_parquet_columns(
    path: Path, columns: dict[str, np.ndarray], *, row_group_size: int = 65_536
) -> None:
    """Write equal-length 1-D arrays as a Parquet table, ``row_group_size`` rows at a time.

    Streams through ``pyarrow.ParquetWriter`` (same encodings as :func:`atomic_write_parquet`),
    so the memory used beyond the arrays themselves is one row group, never a DataFrame.
    """
    names = list(columns)
    n = len(next(iter(columns.values()))) if columns else 0

    def part(lo: int, hi: int) -> pa.Table:
        return pa.table({k: pa.array(np.asarray(columns[k])[lo:hi]) for k in names})

    schema = part(0, 0).schema
    floats = [f.name for f in schema if pa.types.is_floating(f.type)]
    others = [f.name for f in schema if f.name not in floats]

    def write(f) -> None:
        with pq.ParquetWriter(
            f, schema, compression="zstd", use_dictionary=others, use_byte_stream_split=floats
        ) as out:
            for lo in range(0, max(n, 1), row_group_size):
                out.write_table(part(lo, min(lo + row_group_size, n)))

    _atomic(path, write)


def atomic_write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file (no pickled objects) to ``path`` atomically."""
    _atomic(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False))


def json_default(obj):
    """``json.dumps``'s ``default`` for numpy scalars and arrays and paths (the one used by every writer)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _read_json(path: Path) -> dict:
    return read_json(path)


# --- writing (the trainer's side) ----------------------------------------------------------


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    """The path of the snapshot file of ``epoch`` in ``run_dir``."""
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
        extra: dict | None = None,
    ) -> None:
        """Start a run: run.json with status ``running``. ``target`` holds the poison set's
        target_label, adv_label, target_index, attack, eps and n_poisons (None for a clean run);
        ``extra`` holds more top-level keys (e.g. ``exclude``, docs/run-format.md)."""
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
                **(extra or {}),
            },
        )

    def set_status(self, status: str, error: str | None = None) -> None:
        """Set the run's status (one of ``STATUSES``) and error in run.json.

        A status other than 'running' also records when the run finished.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        meta = _read_json(self.dir / RUN_JSON)
        now = time.time()
        meta.update(status=status, error=error, updated=now, pid=os.getpid())
        meta["finished"] = now if status != "running" else None
        atomic_write_json(self.dir / RUN_JSON, meta)

    def write_progress(self, **fields) -> None:
        """Replace progress.json with ``fields`` and the time now."""
        atomic_write_json(self.dir / PROGRESS_JSON, {**fields, "updated": time.time()})

    def write_examples(self, frame: pd.DataFrame) -> None:
        """Write the per-example table (examples.parquet)."""
        atomic_write_parquet(self.dir / EXAMPLES, frame)

    def write_images(self, images: np.ndarray, target_image: np.ndarray | None) -> None:
        """Write the training images and, if given, the target test image.

        Parameters
        ----------
        images : ndarray of shape (n_samples, height, width, channels)
            The training images as the victim sees them.
        target_image : ndarray of shape (height, width, channels) or None
            The attack's target test image; None for a clean run.
        """
        atomic_write_npy(self.dir / IMAGES, images)
        if target_image is not None:
            atomic_write_npy(self.dir / TARGET_IMAGE, target_image)

    def write_metrics(self, frame: pd.DataFrame) -> None:
        """Write the per-epoch metrics table (metrics.parquet)."""
        atomic_write_parquet(self.dir / METRICS, frame)

    def write_targets(self, frame: pd.DataFrame) -> None:
        """Write the target-prediction table (targets.parquet)."""
        atomic_write_parquet(self.dir / TARGETS, frame)

    def write_snapshot(self, epoch: int, frame: pd.DataFrame) -> None:
        """Write the snapshot table of ``epoch``."""
        atomic_write_parquet(snapshot_path(self.dir, epoch), frame)

    def write_snapshot_columns(self, epoch: int, columns: dict[str, np.ndarray]) -> None:
        """The snapshot table of ``epoch`` from per-column arrays, streamed in row groups."""
        atomic_write_parquet_columns(snapshot_path(self.dir, epoch), columns)

    def record_epoch(
        self,
        metrics: pd.DataFrame,
        *,
        targets: pd.DataFrame | None = None,
        snapshot: tuple[int, dict[str, np.ndarray]] | None = None,
    ) -> None:
        """Everything one finished epoch writes: its snapshot (``(epoch, columns)``), the target
        rows and the metrics table, in that order (a metrics row means the epoch is complete)."""
        if snapshot is not None:
            self.write_snapshot_columns(*snapshot)
        if targets is not None and len(targets):
            self.write_targets(targets)
        self.write_metrics(metrics)

    def write_projection(self, name: str, frame: pd.DataFrame) -> None:
        """Write the 2-D map ``name`` to ``projections/<name>.parquet``."""
        atomic_write_parquet(self.dir / PROJECTIONS / f"{name}.parquet", frame)


# --- reading (the dashboard's side) --------------------------------------------------------
#
# A run folder may come from someone else, so its readers trust nothing in it: every file must
# lie inside the run folder once links are resolved; JSON is bounded in size, depth and digits;
# tables are read with pyarrow only (never a pickle) and their declared size is checked before
# anything is decoded; arrays are .npy without pickles, of the expected type. A file that fails
# any of this raises DamagedFile, naming the file and the problem.

MAX_JSON_BYTES = 1 << 20  # run.json / progress.json hold a config and a few counters (~5 kB)
MAX_JSON_DEPTH = 32  # nesting of run.json: config -> defense_params -> value is 3 deep
MAX_INT_DIGITS = 64  # digits of one JSON integer
# declared uncompressed data of one Parquet file (1M rows x 100 columns x 8 B = 0.8 GB)
MAX_TABLE_BYTES = 16 << 30
MAX_TABLE_COLUMNS = 10_000
MAX_TARGET_BYTES = 64 << 20  # target.npy is one image
_SNAPSHOT_NAME = re.compile(r"epoch_(\d{1,6})\.parquet")
_PROJECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class DamagedFile(InputError):
    """A run file that exists (or must exist) but cannot be read: missing, truncated, corrupt,
    too large, of the wrong type, or a link out of its run folder.

    ``source`` is the file and ``problem`` the reason, as for every :class:`InputError`; pages
    catch this one type to show a short message and go on with what they can read.
    """


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _depth(obj) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        )
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return deepest


def read_json(path: Path, *, max_bytes: int | None = None) -> dict:
    """A JSON object from ``path``, refused (DamagedFile) when it is larger than ``max_bytes``
    (default ``MAX_JSON_BYTES``), nested deeper than ``MAX_JSON_DEPTH``, holds an integer of
    more than ``MAX_INT_DIGITS`` digits, or is not an object. FileNotFoundError passes through."""
    limit = MAX_JSON_BYTES if max_bytes is None else max_bytes
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise
    except OSError as err:
        raise DamagedFile(path, f"unreadable ({_first_line(err)})") from err
    if len(data) > limit:
        raise DamagedFile(path, f"larger than {limit:,} bytes; refused")
    try:
        obj = json.loads(data, parse_int=_bounded_int)
    except RecursionError as err:
        raise DamagedFile(path, "JSON nested too deeply; refused") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and _bounded_int's
        raise DamagedFile(path, f"not valid JSON ({_first_line(err)})") from err
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"not a JSON object (found {type(obj).__name__})")
    if _depth(obj) > MAX_JSON_DEPTH:
        raise DamagedFile(path, f"JSON nested more than {MAX_JSON_DEPTH} deep; refused")
    return obj


def _parquet_metadata(f, path: Path) -> pq.ParquetFile:
    """Open a Parquet file on handle ``f`` and check what its footer declares before any read."""
    pfile = pq.ParquetFile(f)
    meta = pfile.metadata
    if meta.num_columns > MAX_TABLE_COLUMNS:
        raise DamagedFile(
            path, f"{meta.num_columns:,} columns; refused (at most {MAX_TABLE_COLUMNS:,})"
        )
    declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if declared > MAX_TABLE_BYTES:
        raise DamagedFile(
            path,
            f"declares {declared:,} bytes of data, larger than the {MAX_TABLE_BYTES:,} a reader accepts",
        )
    return pfile


def read_parquet(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a Parquet file through one open handle, checking its declared size first.

    A path-based read may open the file more than once (footer, then pages); if the writer
    replaces the file in between, the reader mixes two versions. One handle pins one version.
    The pandas metadata a file carries is ignored: the frame is built from the Arrow types alone.
    Errors: FileNotFoundError, DamagedFile, or pyarrow's own (see :meth:`Run.snapshot`, which
    turns every error into DamagedFile).
    """
    with open(path, "rb") as f:
        return _parquet_metadata(f, path).read(columns=columns).to_pandas(ignore_metadata=True)


def _read_table(path: Path, columns: list[str] | None = None) -> pd.DataFrame:
    try:
        return read_parquet(path, columns=columns)
    except DamagedFile:
        raise
    except FileNotFoundError as err:
        raise DamagedFile(path, "missing file") from err
    except (OSError, pa.ArrowException, ValueError, TypeError, KeyError, IndexError) as err:
        raise DamagedFile(path, f"damaged Parquet file ({_first_line(err)})") from err


def _table_info(path: Path) -> tuple[int, list[str]]:
    """(rows, column names) of a Parquet file from its footer alone."""
    try:
        with open(path, "rb") as f:
            pfile = _parquet_metadata(f, path)
            return pfile.metadata.num_rows, list(pfile.schema_arrow.names)
    except DamagedFile:
        raise
    except FileNotFoundError as err:
        raise DamagedFile(path, "missing file") from err
    except (OSError, pa.ArrowException, ValueError, TypeError, KeyError, IndexError) as err:
        raise DamagedFile(path, f"damaged Parquet file ({_first_line(err)})") from err


def _read_npy(path: Path, *, ndim: int, mmap: bool) -> np.ndarray:
    """A uint8 array of ``ndim`` dimensions from a .npy file (no pickles, nothing else)."""
    try:
        # Always map first: a header that claims more bytes than the file holds is refused by
        # the mapping, before anything of the claimed size is allocated.
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError as err:
        raise DamagedFile(path, "missing file") from err
    except (OSError, ValueError, EOFError, MemoryError) as err:
        raise DamagedFile(path, f"damaged .npy file ({_first_line(err)})") from err
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != ndim:
        found = (
            f"{array.dtype} {array.shape}"
            if isinstance(array, np.ndarray)
            else type(array).__name__
        )
        raise DamagedFile(path, f"expected a {ndim}-D uint8 array, found {found}")
    return array if mmap else np.array(array)


@dataclass(frozen=True)
class RunInfo:
    """One line of ``poisonlens runs``: where a run is and how it stands.

    ``status`` is ``unreadable`` when run.json cannot be read; ``unreadable`` then holds the
    reason, as it does (with the status from run.json) when metrics.parquet is damaged.
    """

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
    unreadable: str | None = None


def _check_meta(meta: dict, path: Path) -> None:
    """The keys every reader relies on, with their types (a hand-edited or foreign run.json)."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise InputError(
            path,
            f"format_version {meta.get('format_version')!r}; this poisonlens reads {FORMAT_VERSION}",
        )
    expected = {"name": str, "config": dict, "status": str}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise DamagedFile(path, f"'{key}' missing or not a {kind.__name__}")
    if meta["status"] not in STATUSES:
        raise DamagedFile(path, f"unknown status {meta['status']!r}")
    if not isinstance(meta.get("class_names", []), list) or not isinstance(
        meta.get("target"), (dict, type(None))
    ):
        raise DamagedFile(path, "'class_names' or 'target' of the wrong type")
    if not isinstance(meta["config"].get("defense_params", {}), dict):
        raise DamagedFile(path, "'config.defense_params' is not an object")
    target, n_classes = meta.get("target"), len(meta.get("class_names", []))
    for key in ("target_label", "adv_label") if target else ():
        label = target.get(key)
        if not isinstance(label, int) or label < 0 or (n_classes and label >= n_classes):
            raise DamagedFile(path, f"'target.{key}' is not a class of the run ({label!r})")


class Run:
    """A run directory opened for reading. Cheap to make: files are read on demand.

    Every read goes through :meth:`file`, so a link that leads out of the run folder is
    refused; every unreadable file raises :class:`DamagedFile`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not os.path.lexists(self.path / RUN_JSON):
            raise InputError(self.path, f"not a poisonlens run (no {RUN_JSON})")
        self._root = self.path.resolve()
        self.meta  # noqa: B018  (reads and checks run.json now, so a bad run fails to open)

    def file(self, *parts: str) -> Path:
        """The real path of a file of this run; DamagedFile when links take it out of the run."""
        path = self.path.joinpath(*parts)
        real = path.resolve()
        if not real.is_relative_to(self._root):
            raise DamagedFile(path, f"refused: a link to {real}, outside the run folder")
        return real

    # metadata
    @property
    def meta(self) -> dict:
        """The checked contents of run.json; DamagedFile when it is missing or malformed."""
        path = self.file(RUN_JSON)
        try:
            meta = read_json(path)
        except FileNotFoundError as err:
            raise DamagedFile(path, "missing file") from err
        _check_meta(meta, path)
        return meta

    @property
    def config(self) -> dict:
        """The training configuration recorded in run.json."""
        return self.meta["config"]

    @property
    def name(self) -> str:
        """The run's name."""
        return self.meta["name"]

    @property
    def class_names(self) -> list[str]:
        """The data set's class names, as text (empty when none were recorded)."""
        return [str(c) for c in self.meta.get("class_names", [])]

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
        """progress.json ({} before the trainer wrote it)."""
        try:
            return read_json(self.file(PROGRESS_JSON))
        except FileNotFoundError:
            return {}

    # tables
    def _optional_table(self, name: str) -> pd.DataFrame:
        path = self.file(name)
        return _read_table(path) if path.exists() else pd.DataFrame()

    def metrics(self) -> pd.DataFrame:
        """A row per finished epoch (columns in docs/run-format.md); empty before epoch 0 is done."""
        return self._optional_table(METRICS)

    def examples(self) -> pd.DataFrame:
        """A row per training example: index, label, is_poison, base_index."""
        return _read_table(self.file(EXAMPLES))

    def targets(self) -> pd.DataFrame:
        """A row per snapshot epoch: the target's gradient for ``adv_label``, embedding, prediction."""
        return self._optional_table(TARGETS)

    def _snapshot_file(self, epoch: int) -> Path:
        return self.file(SNAPSHOTS, f"epoch_{int(epoch):04d}.parquet")

    def snapshot_epochs(self) -> list[int]:
        """The epochs that have a snapshot file (readable or not: see :meth:`damaged_snapshots`)."""
        folder = self.path / SNAPSHOTS
        if not folder.is_dir():
            return []
        found = (_SNAPSHOT_NAME.fullmatch(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def damaged_snapshots(self) -> dict[int, str]:
        """Snapshot epochs whose file cannot be read, with the one-line reason.

        Reads each file's footer only (a truncated file has none) and checks it holds a row per
        training example, so a page can leave these epochs out before reading any of them.
        """
        try:
            n_samples = _table_info(self.file(EXAMPLES))[0]
        except DamagedFile:
            n_samples = None
        damaged = {}
        for epoch in self.snapshot_epochs():
            try:
                rows = _table_info(self._snapshot_file(epoch))[0]
            except DamagedFile as err:
                damaged[epoch] = str(err)
                continue
            if n_samples is not None and rows != n_samples:
                damaged[epoch] = (
                    f"{snapshot_path(self.path, epoch)}: {rows:,} rows; the run has {n_samples:,} examples"
                )
        return damaged

    def snapshot(self, epoch: int, columns: list[str] | None = None) -> pd.DataFrame:
        """The snapshot table of ``epoch`` (a row per example, in index order)."""
        return _read_table(self._snapshot_file(epoch), columns=columns)

    def snapshot_columns(self, epoch: int) -> list[str]:
        """The column names of the snapshot of ``epoch``, read from the file's footer."""
        return _table_info(self._snapshot_file(epoch))[1]

    def gradients(self, epoch: int) -> np.ndarray:
        """float32 (n_samples, n_classes): the snapshot's softmax - onehot."""
        cols = [c for c in self.snapshot_columns(epoch) if c.startswith("g_")]
        return self.snapshot(epoch, columns=cols).to_numpy(np.float32)

    def projection(self, name: str = "umap") -> pd.DataFrame | None:
        """The stored 2-D layout ``projections/<name>.parquet``; None when there is none."""
        if not _PROJECTION_NAME.fullmatch(name):
            raise InputError(name, "not a projection name")
        path = self.file(PROJECTIONS, f"{name}.parquet")
        return _read_table(path) if path.exists() else None

    # images, memory-mapped so a page can take a few thumbnails of a large run cheaply
    def images(self) -> np.ndarray:
        """uint8 (n_samples, height, width, channels), memory-mapped."""
        return _read_npy(self.file(IMAGES), ndim=4, mmap=True)

    def target_image(self) -> np.ndarray | None:
        """uint8 (height, width, channels): the target test image; None for a clean run."""
        path = self.file(TARGET_IMAGE)
        if not path.exists():
            return None
        if path.stat().st_size > MAX_TARGET_BYTES:
            raise DamagedFile(path, f"larger than {MAX_TARGET_BYTES:,} bytes; refused")
        return _read_npy(path, ndim=3, mmap=False)

    def info(self) -> RunInfo:
        """This run's line of ``poisonlens runs``; a damaged metrics.parquet is reported in
        ``unreadable`` rather than raised."""
        meta = self.meta
        cfg = meta["config"]
        unreadable = None
        try:
            m = self.metrics()
        except DamagedFile as err:
            m, unreadable = pd.DataFrame(), str(err)
        last = m.iloc[-1] if len(m) else None
        success = None
        if last is not None and "attack_success" in m and not pd.isna(last["attack_success"]):
            success = bool(last["attack_success"])
        return RunInfo(
            path=self.path,
            name=meta["name"],
            status=self.status,
            created=float(meta.get("created") or 0.0),
            updated=float(meta.get("updated") or 0.0),
            epochs_done=int(last["epoch"]) if last is not None else -1,
            epochs=int(cfg.get("epochs") or 0),
            defense=str(cfg.get("defense", "?")),
            test_acc=float(last["test_acc"]) if last is not None else float("nan"),
            attack_success=success,
            n_dropped=int(last["n_dropped"]) if last is not None else 0,
            error=None if meta.get("error") is None else str(meta.get("error")),
            unreadable=unreadable,
        )


def _alive(pid: int | None) -> bool:
    """Whether process ``pid`` still exists on this machine (True when unknown)."""
    if not pid:
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True
    return True


def open_run(path: str | Path) -> Run:
    """Open a run directory for reading; a clear error when it is not one (InputError) or its
    run.json cannot be read (DamagedFile)."""
    return Run(Path(path))


def unreadable_info(path: Path, reason: str) -> RunInfo:
    """The line of ``poisonlens runs`` for a run whose run.json cannot be read."""
    try:
        stamp = (Path(path) / RUN_JSON).lstat().st_mtime
    except OSError:
        stamp = 0.0
    return RunInfo(
        path=Path(path),
        name=Path(path).name,
        status="unreadable",
        created=stamp,
        updated=stamp,
        epochs_done=-1,
        epochs=0,
        defense="?",
        test_acc=float("nan"),
        attack_success=None,
        n_dropped=0,
        error=None,
        unreadable=reason,
    )


def list_runs(*roots: str | Path) -> list[RunInfo]:
    """Every run directly inside the given folders (or a folder that is itself a run), newest first.

    A folder holding a run.json is a run; one that cannot be read is listed with status
    ``unreadable`` and the reason, never left out.
    """
    infos: list[RunInfo] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        if os.path.lexists(root / RUN_JSON):
            candidates = [root]
        else:
            candidates = sorted(
                p for p in root.iterdir() if p.is_dir() and os.path.lexists(p / RUN_JSON)
            )
        for path in candidates:
            try:
                infos.append(Run(path).info())
            except (InputError, KeyError, ValueError, TypeError, OSError) as err:
                reason = (
                    str(err)
                    if isinstance(err, InputError)
                    else f"{path / RUN_JSON}: {_first_line(err)}"
                )
                infos.append(unreadable_info(path, reason))
    return sorted(infos, key=lambda i: i.created, reverse=True)
