"""The run store: one directory per run, the one contract between training and the dashboard.

Layout and columns are documented in docs/run-format.md. Every file is written atomically
(a temporary file in the same directory, then ``os.replace``), so a reader polling a run
while it trains sees either the old or the new version of a file, never half of one.
"""

from __future__ import annotations

import json
import math
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

from poisonlens import runfs
from poisonlens.errors import InputError, one_line
from poisonlens.limits import current_limits

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


def _atomic(path: Path, write, *, root: Path | None = None) -> None:
    """Write ``path`` atomically. With ``root`` (a run directory holding ``path``) the write goes
    through :mod:`poisonlens.runfs`: no folder on the way and no final name is a link."""
    path = Path(path)
    if root is not None:
        runfs.write_atomic(root, runfs.parts_of(root, path), write)
        return
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


def atomic_write_bytes(path: Path, data: bytes, *, root: Path | None = None) -> None:
    """Write ``data`` to ``path`` so that readers never see a partial file.

    The bytes go to a temporary file in the same folder, are flushed to disk, then replace
    ``path`` in one ``os.replace``: a reader sees the old file or the new one.

    Parameters
    ----------
    path : Path
        The file to write.
    data : bytes
        Its whole new contents.
    root : Path, optional
        The run directory that holds ``path``. Given, the write goes through
        :mod:`poisonlens.runfs`: no folder on the way and no final name may be a link. Default
        None: a plain atomic write, creating missing folders.
    """
    _atomic(path, lambda f: f.write(data), root=root)


def atomic_write_json(path: Path, obj: dict, *, root: Path | None = None) -> None:
    """Write ``obj`` as sorted, indented JSON to ``path`` atomically.

    Parameters
    ----------
    path : Path
        The JSON file to write.
    obj : dict
        A JSON-serialisable object; numpy scalars, arrays and paths are converted by
        :func:`json_default`.
    root : Path, optional
        The run directory that holds ``path``. Given, the write goes through
        :mod:`poisonlens.runfs`: no folder on the way and no final name may be a link. Default
        None: a plain atomic write, creating missing folders.
    """
    atomic_write_bytes(
        path, json.dumps(obj, indent=2, sort_keys=True, default=json_default).encode(), root=root
    )


def atomic_write_parquet(path: Path, frame: pd.DataFrame, *, root: Path | None = None) -> None:
    """Write ``frame`` as a zstd Parquet file to ``path`` atomically.

    Float columns are stored byte-stream-split, the others dictionary-encoded; the index is
    not stored.

    Parameters
    ----------
    path : Path
        The Parquet file to write.
    frame : pandas.DataFrame
        The table, any number of rows.
    root : Path, optional
        The run directory that holds ``path``. Given, the write goes through
        :mod:`poisonlens.runfs`: no folder on the way and no final name may be a link. Default
        None: a plain atomic write, creating missing folders.
    """
    table = pa.Table.from_pandas(frame, preserve_index=False)
    floats = [f.name for f in table.schema if pa.types.is_floating(f.type)]
    others = [f.name for f in table.schema if f.name not in floats]
    # Byte-stream-split floats compress about a quarter smaller than dictionary-encoded ones.
    _atomic(
        path,
        lambda f: pq.write_table(
            table, f, compression="zstd", use_dictionary=others, use_byte_stream_split=floats
        ),
        root=root,
    )


def atomic_write_parquet_columns(
    path: Path, columns: dict[str, np.ndarray], *, row_group_size: int = 65_536,
    root: Path | None = None,
) -> None:
    """Write equal-length 1-D arrays as a Parquet table, ``row_group_size`` rows at a time.

    Streams through ``pyarrow.ParquetWriter`` (same encodings as :func:`atomic_write_parquet`),
    so the memory used beyond the arrays themselves is one row group, never a DataFrame.

    Parameters
    ----------
    path : Path
        The Parquet file to write.
    columns : dict of str to ndarray of shape (n_rows,)
        Column name to values, all of the same length, in column order; an empty dict writes
        an empty table.
    row_group_size : int, default 65,536
        Rows per row group, and so the most rows converted to Arrow at once.
    root : Path, optional
        The run directory that holds ``path``. Given, the write goes through
        :mod:`poisonlens.runfs`: no folder on the way and no final name may be a link. Default
        None: a plain atomic write, creating missing folders.
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

    _atomic(path, write, root=root)


def atomic_write_npy(path: Path, array: np.ndarray, *, root: Path | None = None) -> None:
    """Write ``array`` as a ``.npy`` file (no pickled objects) to ``path`` atomically.

    Parameters
    ----------
    path : Path
        The ``.npy`` file to write.
    array : ndarray of any shape and numeric dtype
        Written C-contiguous; an object array is refused by numpy (``allow_pickle=False``).
    root : Path, optional
        The run directory that holds ``path``. Given, the write goes through
        :mod:`poisonlens.runfs`: no folder on the way and no final name may be a link. Default
        None: a plain atomic write, creating missing folders.
    """
    _atomic(path, lambda f: np.save(f, np.ascontiguousarray(array), allow_pickle=False), root=root)


def json_default(obj):
    """``json.dumps``'s ``default`` for numpy scalars and arrays and paths (the one used by every writer).

    Parameters
    ----------
    obj : object
        A value ``json`` cannot write itself.

    Returns
    -------
    int, float, bool, str or list
        A numpy scalar's Python value, an array as nested lists, a path as text.

    Raises
    ------
    TypeError
        For any other type, as ``json.dumps`` expects.
    """
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def _read_json(path: Path, root: Path | None = None) -> dict:
    return read_json(path, root=root)


# --- writing (the trainer's side) ----------------------------------------------------------


def snapshot_path(run_dir: Path, epoch: int) -> Path:
    """The path of the snapshot file of ``epoch`` in ``run_dir``.

    Parameters
    ----------
    run_dir : Path
        The run directory.
    epoch : int
        The epoch, from 0; written with at least four digits (``epoch_0007.parquet``).

    Returns
    -------
    Path, ``<run_dir>/snapshots/epoch_NNNN.parquet``
    """
    return Path(run_dir) / SNAPSHOTS / f"epoch_{epoch:04d}.parquet"


class RunWriter:
    """Writes one run directory; used by the trainer. Every method is one atomic write."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = Path(run_dir)

    # every write goes through poisonlens.runfs (root=self.dir): never through a link
    def _json(self, name: str, obj: dict) -> None:
        atomic_write_json(self.dir / name, obj, root=self.dir)

    def _parquet(self, path: Path, frame: pd.DataFrame) -> None:
        atomic_write_parquet(path, frame, root=self.dir)

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
        """Start a run: run.json with status ``running``, this process's id and the time now.

        Parameters
        ----------
        name : str
            The run's name, as the dashboard lists it.
        config : dict
            The training configuration (``TrainConfig.to_dict()``).
        versions : dict
            Package versions of the training process (torch, numpy, poisonlens ...).
        class_names : list of str
            The data set's class names, in label order.
        target : dict or None
            The poison set's ``target_label``, ``adv_label``, ``target_index``, ``attack``,
            ``eps`` and ``n_poisons``; None for a clean run.
        extra : dict, optional
            More top-level keys of run.json (e.g. ``exclude``, docs/run-format.md).
        """
        now = time.time()
        self._json(
            RUN_JSON,
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
        """Set the run's status and error in run.json.

        A status other than 'running' also records when the run finished.

        Parameters
        ----------
        status : str
            One of ``STATUSES``: ``running``, ``finished`` or ``failed``.
        error : str, optional
            Why the run failed, one line; None (the default) clears it.

        Raises
        ------
        ValueError
            When ``status`` is not one of ``STATUSES``.
        """
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}")
        meta = _read_json(self.dir / RUN_JSON, root=self.dir)
        now = time.time()
        meta.update(status=status, error=error, updated=now, pid=os.getpid())
        meta["finished"] = now if status != "running" else None
        self._json(RUN_JSON, meta)

    def update_config(self, config: dict) -> None:
        """Replace the config in run.json (a run written by your own loop learns its last epoch
        only at the end: :class:`poisonlens.tracker.EpicTracker`).

        Parameters
        ----------
        config : dict
            The whole new configuration (``TrainConfig.to_dict()``); the other keys of
            run.json are kept.
        """
        meta = _read_json(self.dir / RUN_JSON)
        meta.update(config=config, updated=time.time())
        atomic_write_json(self.dir / RUN_JSON, meta)

    def write_progress(self, **fields) -> None:
        """Replace progress.json with ``fields`` and the time now.

        Parameters
        ----------
        **fields
            JSON-serialisable values, e.g. ``epoch=3, epochs=40, phase="train"``; the
            dashboard checks ``epoch`` and ``epochs`` as whole numbers.
        """
        self._json(PROGRESS_JSON, {**fields, "updated": time.time()})

    def write_examples(self, frame: pd.DataFrame) -> None:
        """Write the per-example table (examples.parquet).

        Parameters
        ----------
        frame : pandas.DataFrame of n_samples rows
            Columns ``index``, ``label``, ``is_poison``, ``base_index`` (docs/run-format.md).
        """
        self._parquet(self.dir / EXAMPLES, frame)

    def write_images(self, images: np.ndarray, target_image: np.ndarray | None) -> None:
        """Write the training images and, if given, the target test image.

        Parameters
        ----------
        images : ndarray of shape (n_samples, height, width, channels)
            The training images as the victim sees them.
        target_image : ndarray of shape (height, width, channels) or None
            The attack's target test image; None for a clean run.
        """
        atomic_write_npy(self.dir / IMAGES, images, root=self.dir)
        if target_image is not None:
            atomic_write_npy(self.dir / TARGET_IMAGE, target_image, root=self.dir)

    def write_metrics(self, frame: pd.DataFrame) -> None:
        """Write the per-epoch metrics table (metrics.parquet).

        Parameters
        ----------
        frame : pandas.DataFrame
            A row per finished epoch, every epoch so far (the file is replaced whole).
        """
        self._parquet(self.dir / METRICS, frame)

    def write_targets(self, frame: pd.DataFrame) -> None:
        """Write the target-prediction table (targets.parquet).

        Parameters
        ----------
        frame : pandas.DataFrame
            A row per snapshot epoch so far: the target's gradient, embedding and prediction.
        """
        self._parquet(self.dir / TARGETS, frame)

    def write_snapshot(self, epoch: int, frame: pd.DataFrame) -> None:
        """Write the snapshot table of ``epoch``.

        Parameters
        ----------
        epoch : int
            The epoch the snapshot was taken at.
        frame : pandas.DataFrame of n_samples rows
            A row per training example, in index order (columns in docs/run-format.md).
        """
        self._parquet(snapshot_path(self.dir, epoch), frame)

    def write_snapshot_columns(self, epoch: int, columns: dict[str, np.ndarray]) -> None:
        """Write the snapshot table of ``epoch`` from per-column arrays, streamed in row groups.

        Parameters
        ----------
        epoch : int
            The epoch the snapshot was taken at.
        columns : dict of str to ndarray of shape (n_samples,)
            Column name to a value per training example, in index order.
        """
        atomic_write_parquet_columns(snapshot_path(self.dir, epoch), columns, root=self.dir)

    def record_epoch(
        self,
        metrics: pd.DataFrame,
        *,
        targets: pd.DataFrame | None = None,
        snapshot: tuple[int, dict[str, np.ndarray]] | None = None,
    ) -> None:
        """Everything one finished epoch writes: its snapshot, the target rows and the metrics
        table, in that order (a metrics row means the epoch is complete).

        Parameters
        ----------
        metrics : pandas.DataFrame
            The metrics table with this epoch's row last.
        targets : pandas.DataFrame, optional
            The target table so far; None or empty writes nothing.
        snapshot : (int, dict of str to ndarray of shape (n_samples,)), optional
            ``(epoch, columns)`` as :meth:`write_snapshot_columns` takes them; None when this
            epoch takes no snapshot.
        """
        if snapshot is not None:
            self.write_snapshot_columns(*snapshot)
        if targets is not None and len(targets):
            self.write_targets(targets)
        self.write_metrics(metrics)

    def write_projection(self, name: str, frame: pd.DataFrame) -> None:
        """Write the 2-D map ``name`` to ``projections/<name>.parquet``.

        Parameters
        ----------
        name : str
            The layout method, e.g. ``umap`` or ``pca`` (letters, digits, ``_`` and ``-``).
        frame : pandas.DataFrame
            A row per (epoch, example) placed, and the target's rows (``index`` -1).
        """
        self._parquet(self.dir / PROJECTIONS / f"{name}.parquet", frame)


# --- reading (the dashboard's side) --------------------------------------------------------
#
# A run folder may come from someone else, so its readers trust nothing in it: every file is
# opened through poisonlens.runfs (no link followed at any level, no FIFO or device opened,
# sizes bounded); JSON is bounded in size, depth and digits and holds finite numbers only;
# tables are read with pyarrow only (never a pickle) and their row count, column types and
# declared size are checked against the run's own facts before anything is decoded; labels
# and indices are checked against the class and example counts; arrays are .npy without
# pickles, of the expected type. A file that fails any of this raises DamagedFile, naming the
# file and the problem.

MAX_JSON_BYTES = 1 << 20  # run.json / progress.json hold a config and a few counters (~5 kB)
MAX_JSON_DEPTH = 32  # nesting of run.json: config -> defense_params -> value is 3 deep
MAX_INT_DIGITS = 64  # digits of one JSON integer
# declared uncompressed data of one Parquet file (1M rows x 100 columns x 8 B = 0.8 GB)
MAX_TABLE_BYTES = 16 << 30
MAX_TABLE_COLUMNS = 10_000
MAX_TARGET_BYTES = 64 << 20  # target.npy is one image
MAX_EPOCHS = 100_000  # the most epochs a run may record (metrics and targets have a row each)
_SNAPSHOT_NAME = re.compile(r"epoch_(\d{1,6})\.parquet")
_PROJECTION_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# columns holding counts of examples (never negative, never more than a data set holds)
_COUNT_COLUMNS = ("n_active", "n_dropped", "n_poison_dropped", "n_new_drops", "n_flagged", "n_medoids")

DamagedFile = runfs.DamagedFile


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is out of range")
    return value


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


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


def _root_parts(path: Path, root: Path | None) -> tuple[Path, tuple[str, ...]]:
    path = Path(path)
    root = path.parent if root is None else Path(root)
    return root, runfs.parts_of(root, path)


def read_json(path: Path, *, max_bytes: int | None = None, root: Path | None = None) -> dict:
    """A JSON object from ``path``, checked before and while it is decoded.

    Parameters
    ----------
    path : Path
        The JSON file (run.json, progress.json, launch.json ...).
    max_bytes : int, optional
        The largest file accepted, in bytes. Default ``MAX_JSON_BYTES`` (1 MiB).
    root : Path, optional
        The folder below which no component of ``path`` may be a link or special file.
        Default: the file's own folder.

    Returns
    -------
    dict

    Raises
    ------
    DamagedFile
        When the file is larger than ``max_bytes``, nested deeper than ``MAX_JSON_DEPTH``,
        holds an integer of more than ``MAX_INT_DIGITS`` digits or a number that is not
        finite (``1e999``, ``NaN``), is not a JSON object, or is a link or special file.
    FileNotFoundError
        When there is no such file.
    """
    limit = MAX_JSON_BYTES if max_bytes is None else max_bytes
    root, parts = _root_parts(path, root)
    try:
        data = runfs.read_bytes(root, *parts, max_bytes=limit)
    except runfs.RunFileError as err:
        if err.missing:
            raise FileNotFoundError(str(path)) from None
        raise
    except OSError as err:
        raise DamagedFile(path, f"unreadable ({_first_line(err)})") from err
    try:
        obj = json.loads(
            data, parse_int=_bounded_int, parse_float=_finite_float, parse_constant=_no_constant
        )
    except RecursionError as err:
        raise DamagedFile(path, "JSON nested too deeply; refused") from err
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError and the parse hooks'
        raise DamagedFile(path, f"not valid JSON ({_first_line(err)})") from err
    if not isinstance(obj, dict):
        raise DamagedFile(path, f"not a JSON object (found {type(obj).__name__})")
    if _depth(obj) > MAX_JSON_DEPTH:
        raise DamagedFile(path, f"JSON nested more than {MAX_JSON_DEPTH} deep; refused")
    return obj


def _numeric(kind: pa.DataType) -> bool:
    return (
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_null(kind)
    )


def _parquet_metadata(
    f, path: Path, *, max_rows: int | None = None, text: bool = False
) -> pq.ParquetFile:
    """Open a Parquet file on handle ``f`` and check what its footer declares before any read:
    columns, rows (at most ``max_rows``, default the image limit), numeric column types (so the
    decoded size is rows x columns x 8 bytes at most; ``text`` also allows text columns, as
    metrics.parquet has one, whose rows are bounded by ``max_rows``) and the declared data size."""
    pfile = pq.ParquetFile(f)
    meta = pfile.metadata
    if meta.num_columns > MAX_TABLE_COLUMNS:
        raise DamagedFile(
            path, f"{meta.num_columns:,} columns; refused (at most {MAX_TABLE_COLUMNS:,})"
        )
    rows = meta.num_rows
    group_rows = sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    limit = current_limits().max_images if max_rows is None else max_rows
    if rows < 0 or group_rows != rows:
        raise DamagedFile(path, f"footer declares {rows:,} rows but its row groups {group_rows:,}")
    if rows > limit:
        raise DamagedFile(path, f"{rows:,} rows; refused (this table may hold at most {limit:,})")
    for field in pfile.schema_arrow:
        if not (_numeric(field.type) or (text and (pa.types.is_string(field.type)
                                                   or pa.types.is_large_string(field.type)))):
            raise DamagedFile(
                path, f"column {one_line(field.name, 40)!r} is {field.type}; run tables hold numbers only"
            )
    declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    decoded = rows * max(meta.num_columns, 1) * 8
    if max(declared, decoded) > MAX_TABLE_BYTES:
        raise DamagedFile(
            path,
            f"declares {max(declared, decoded):,} bytes of data, larger than the {MAX_TABLE_BYTES:,} a reader accepts",
        )
    return pfile


def read_parquet(
    path: Path, columns: list[str] | None = None, *, root: Path | None = None,
    max_rows: int | None = None, text: bool = False,
) -> pd.DataFrame:
    """Read a Parquet file through one open handle, checking its footer first (see
    :func:`_parquet_metadata`); no link or special file is opened below ``root`` (default:
    its folder).

    A path-based read may open the file more than once (footer, then pages); if the writer
    replaces the file in between, the reader mixes two versions. One handle pins one version.
    The pandas metadata a file carries is ignored: the frame is built from the Arrow types alone.

    Parameters
    ----------
    path : Path
        The Parquet file.
    columns : list of str, optional
        Read only these columns. Default: all.
    root : Path, optional
        The folder below which no component of ``path`` may be a link or special file.
        Default: the file's own folder.
    max_rows : int, optional
        The most rows its footer may declare. Default: the ``--max-images`` limit.
    text : bool, default False
        Also accept text columns (metrics.parquet has one); otherwise only numeric and bool
        columns are accepted, which bounds the decoded size by rows x columns x 8 bytes.

    Returns
    -------
    pandas.DataFrame

    Raises
    ------
    FileNotFoundError, DamagedFile, or pyarrow's own errors (see :meth:`Run.snapshot`, which
    turns every error into DamagedFile).
    """
    root, parts = _root_parts(path, root)
    try:
        f = runfs.open_file(root, *parts)
    except runfs.RunFileError as err:
        if err.missing:
            raise FileNotFoundError(str(path)) from None
        raise
    with f:
        pfile = _parquet_metadata(f, path, max_rows=max_rows, text=text)
        return pfile.read(columns=columns).to_pandas(ignore_metadata=True)


_PARQUET_ERRORS = (OSError, pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OverflowError)


def _read_table(
    path: Path, columns: list[str] | None = None, *, root: Path | None = None,
    max_rows: int | None = None, text: bool = False,
) -> pd.DataFrame:
    try:
        return read_parquet(path, columns=columns, root=root, max_rows=max_rows, text=text)
    except DamagedFile:
        raise
    except FileNotFoundError as err:
        raise DamagedFile(path, "missing file") from err
    except MemoryError as err:
        raise DamagedFile(path, "too large to decode; refused") from err
    except _PARQUET_ERRORS as err:
        raise DamagedFile(path, f"damaged Parquet file ({_first_line(err)})") from err


def _table_info(path: Path, *, root: Path | None = None) -> tuple[int, list[str]]:
    """(rows, column names) of a Parquet file from its footer alone."""
    root, parts = _root_parts(path, root)
    try:
        with runfs.open_file(root, *parts) as f:
            pfile = _parquet_metadata(f, path, max_rows=current_limits().max_images * 64)
            return pfile.metadata.num_rows, list(pfile.schema_arrow.names)
    except runfs.RunFileError as err:
        if err.missing:
            raise DamagedFile(path, "missing file") from None
        raise
    except DamagedFile:
        raise
    except _PARQUET_ERRORS as err:
        raise DamagedFile(path, f"damaged Parquet file ({_first_line(err)})") from err


def _read_npy(
    path: Path, *, ndim: int, mmap: bool, root: Path | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """A uint8 array of ``ndim`` dimensions from a .npy file (no pickles, nothing else).

    The header is read from the opened file and checked (type, dimensions, and a size that the
    file really holds) before anything is mapped or allocated.
    """
    root, parts = _root_parts(path, root)
    try:
        f = runfs.open_file(root, *parts, max_bytes=max_bytes)
    except runfs.RunFileError as err:
        if err.missing:
            raise DamagedFile(path, "missing file") from None
        raise
    with f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unknown .npy version {version}")
        except (OSError, ValueError, EOFError, SyntaxError, TypeError) as err:
            raise DamagedFile(path, f"damaged .npy file ({_first_line(err)})") from err
        if dtype != np.uint8 or len(shape) != ndim:
            raise DamagedFile(path, f"expected a {ndim}-D uint8 array, found {dtype} {shape}")
        offset = f.tell()
        size = os.fstat(f.fileno()).st_size
        need = math.prod(int(d) for d in shape)
        if need != size - offset:
            raise DamagedFile(
                path, f"header declares {need:,} bytes of pixels, the file holds {size - offset:,}"
            )
        if need == 0:
            return np.zeros(shape, np.uint8)
        try:
            array = np.memmap(f, dtype=np.uint8, mode="r", offset=offset, shape=tuple(shape),
                              order="F" if fortran else "C")
        except (OSError, ValueError) as err:
            raise DamagedFile(path, f"damaged .npy file ({_first_line(err)})") from err
    return array if mmap else np.array(array)


def _check_range(frame: pd.DataFrame, column: str, lo: int, hi: int, path: Path) -> None:
    """Every value of ``frame[column]`` finite, whole and in [lo, hi); DamagedFile otherwise."""
    if column not in frame or not len(frame):
        return
    values = frame[column].to_numpy()
    if values.dtype == object or values.dtype.kind not in "biuf":
        raise DamagedFile(path, f"column {column!r} is not numeric")
    values = values.astype(np.float64)
    if not np.isfinite(values).all() or (values != np.round(values)).any():
        raise DamagedFile(path, f"column {column!r} holds values that are not whole numbers")
    if values.min() < lo or values.max() >= hi:
        raise DamagedFile(
            path, f"column {column!r} holds {values.min():.0f}..{values.max():.0f}; expected {lo}..{hi - 1}"
        )


def _no_infinity(frame: pd.DataFrame, path: Path) -> None:
    for column in frame.columns:
        values = frame[column].to_numpy()
        if values.dtype.kind == "f" and np.isinf(values).any():
            raise DamagedFile(path, f"column {column!r} holds an infinite value")


def _as_int(value, default: int = 0) -> int:
    """A finite number as int (``default`` for None, NaN, inf or anything else)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return int(number) if math.isfinite(number) and abs(number) < 2**62 else default


def _as_float(value, default: float = float("nan")) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return default
    return number if math.isfinite(number) else default


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
    """The keys every reader relies on, with their types and ranges (a hand-edited or foreign
    run.json)."""
    if meta.get("format_version") != FORMAT_VERSION:
        raise DamagedFile(
            path,
            f"format_version {one_line(meta.get('format_version'), 40)}; this poisonlens reads {FORMAT_VERSION}",
        )
    expected = {"name": str, "config": dict, "status": str}
    for key, kind in expected.items():
        if not isinstance(meta.get(key), kind):
            raise DamagedFile(path, f"'{key}' missing or not a {kind.__name__}")
    if meta["status"] not in STATUSES:
        raise DamagedFile(path, f"unknown status {one_line(meta['status'], 40)!r}")
    if not isinstance(meta.get("class_names", []), list) or not isinstance(
        meta.get("target"), (dict, type(None))
    ):
        raise DamagedFile(path, "'class_names' or 'target' of the wrong type")
    n_classes = len(meta.get("class_names", []))
    if n_classes > current_limits().max_classes:
        raise DamagedFile(path, f"{n_classes:,} class names; refused")
    cfg = meta["config"]
    if not isinstance(cfg.get("defense_params", {}), dict):
        raise DamagedFile(path, "'config.defense_params' is not an object")
    for key, top in (("epochs", MAX_EPOCHS), ("drop_after", 10**9), ("stop_after", 10**9),
                     ("snapshot_every", 10**9)):
        value = cfg.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top
        ):
            raise DamagedFile(path, f"'config.{key}' is not a whole number in 0..{top:,}")
    for key in ("created", "updated", "finished"):
        value = meta.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DamagedFile(path, f"'{key}' is not a time")
    for key in ("error",):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise DamagedFile(path, f"'{key}' is not text")
    target = meta.get("target")
    for key in ("target_label", "adv_label") if target else ():
        label = target.get(key)
        if not isinstance(label, int) or label < 0 or (n_classes and label >= n_classes):
            raise DamagedFile(path, f"'target.{key}' is not a class of the run ({one_line(label, 40)})")


class Run:
    """A run directory opened for reading. Cheap to make: files are read on demand.

    Every read goes through :mod:`poisonlens.runfs`: a link or special file at any level of
    the run is refused (never followed or opened); every unreadable file raises
    :class:`DamagedFile`.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not os.path.lexists(self.path / RUN_JSON):
            raise InputError(self.path, f"not a poisonlens run (no {RUN_JSON})")
        self.meta  # noqa: B018  (reads and checks run.json now, so a bad run fails to open)

    def file(self, *parts: str) -> Path:
        """The path of a file of this run (as written: never resolved through links).

        Parameters
        ----------
        *parts : str
            Path components below the run folder, e.g. ``"snapshots", "epoch_0003.parquet"``.

        Returns
        -------
        Path
        """
        return self.path.joinpath(*parts)

    def _exists(self, *parts: str) -> bool:
        """Whether a file of this run is there (DamagedFile for a link or special file)."""
        return runfs.exists(self.path, *parts)

    def _table(self, *parts: str, columns: list[str] | None = None, max_rows: int | None = None,
               text: bool = False) -> pd.DataFrame:
        return _read_table(self.file(*parts), columns=columns, root=self.path, max_rows=max_rows,
                           text=text)

    # metadata
    @property
    def meta(self) -> dict:
        """The checked contents of run.json; DamagedFile when it is missing or malformed."""
        path = self.file(RUN_JSON)
        try:
            meta = read_json(path, root=self.path)
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
        if meta["status"] == "running" and not pid_alive(meta.get("pid")):
            return "interrupted"
        return meta["status"]

    def damage(self) -> str | None:
        """Why this run folder is damaged as a whole (a link or special file anywhere in it), or None."""
        return runfs.check_tree(self.path)

    def progress(self) -> dict:
        """progress.json ({} before the trainer wrote it); ``epoch`` and ``epochs`` are checked."""
        path = self.file(PROGRESS_JSON)
        try:
            progress = read_json(path, root=self.path)
        except FileNotFoundError:
            return {}
        for key in ("epoch", "epochs"):
            value = progress.get(key)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_EPOCHS
            ):
                raise DamagedFile(path, f"'{key}' is not a whole number in 0..{MAX_EPOCHS:,}")
        return progress

    def n_classes(self) -> int:
        """The number of classes of the run (its class names; the class limit when none)."""
        return len(self.class_names) or current_limits().max_classes

    # tables
    def _optional_table(self, name: str, max_rows: int, text: bool = False) -> pd.DataFrame:
        return self._table(name, max_rows=max_rows, text=text) if self._exists(name) else pd.DataFrame()

    def metrics(self) -> pd.DataFrame:
        """A row per finished epoch (columns in docs/run-format.md); empty before epoch 0 is done."""
        frame = self._optional_table(METRICS, MAX_EPOCHS + 1, text=True)
        path = self.file(METRICS)
        _no_infinity(frame, path)
        _check_range(frame, "epoch", 0, MAX_EPOCHS + 1, path)
        _check_range(frame, "target_pred", -1, self.n_classes(), path)
        for column in _COUNT_COLUMNS:
            if column in frame:
                values = frame[column].to_numpy(np.float64)
                values = values[~np.isnan(values)]
                if len(values) and (values.min() < 0 or values.max() > current_limits().max_images
                                    or (values != np.round(values)).any()):
                    raise DamagedFile(path, f"column {column!r} holds a count out of range")
        return frame

    def n_examples(self) -> int:
        """Rows of examples.parquet, from its footer."""
        return _table_info(self.file(EXAMPLES), root=self.path)[0]

    def examples(self) -> pd.DataFrame:
        """A row per training example: index, label, is_poison, base_index."""
        frame = self._table(EXAMPLES)
        path, n = self.file(EXAMPLES), len(frame)
        missing = [c for c in ("index", "label", "is_poison") if c not in frame]
        if missing:
            raise DamagedFile(path, f"no column {missing[0]!r}")
        _check_range(frame, "index", 0, max(n, 1), path)
        _check_range(frame, "label", 0, self.n_classes(), path)
        _check_range(frame, "base_index", -1, current_limits().max_images, path)
        return frame

    def targets(self) -> pd.DataFrame:
        """A row per snapshot epoch: the target's gradient for ``adv_label``, embedding, prediction."""
        frame = self._optional_table(TARGETS, MAX_EPOCHS + 1)
        path = self.file(TARGETS)
        _no_infinity(frame, path)
        _check_range(frame, "epoch", 0, MAX_EPOCHS + 1, path)
        _check_range(frame, "prediction", 0, self.n_classes(), path)
        return frame

    def _snapshot_parts(self, epoch: int) -> tuple[str, str]:
        return SNAPSHOTS, f"epoch_{int(epoch):04d}.parquet"

    def snapshot_epochs(self) -> list[int]:
        """The epochs that have a snapshot file (readable or not: see :meth:`damaged_snapshots`)."""
        try:
            names = runfs.listdir(self.path, SNAPSHOTS)
        except DamagedFile:
            return []
        found = (_SNAPSHOT_NAME.fullmatch(name) for name in names)
        return sorted(int(m.group(1)) for m in found if m)

    def damaged_snapshots(self) -> dict[int, str]:
        """Snapshot epochs whose file cannot be read, with the one-line reason.

        Reads each file's footer only (a truncated file has none) and checks it holds a row per
        training example, so a page can leave these epochs out before reading any of them.
        """
        try:
            n_samples = self.n_examples()
        except DamagedFile:
            n_samples = None
        damaged = {}
        for epoch in self.snapshot_epochs():
            try:
                rows = _table_info(self.file(*self._snapshot_parts(epoch)), root=self.path)[0]
            except DamagedFile as err:
                damaged[epoch] = str(err)
                continue
            if n_samples is not None and rows != n_samples:
                damaged[epoch] = (
                    f"{snapshot_path(self.path, epoch)}: {rows:,} rows; the run has {n_samples:,} examples"
                )
        return damaged

    def snapshot(self, epoch: int, columns: list[str] | None = None) -> pd.DataFrame:
        """The snapshot table of ``epoch`` (a row per example, in index order).

        Parameters
        ----------
        epoch : int
            A snapshot epoch (one of :meth:`snapshot_epochs`).
        columns : list of str, optional
            Read only these columns. Default: all.

        Returns
        -------
        pandas.DataFrame of n_samples rows

        Raises
        ------
        DamagedFile
            When the file is missing, damaged, or its rows or its labels and predictions do not
            fit the run.
        """
        path = self.file(*self._snapshot_parts(epoch))
        try:
            n_samples = self.n_examples()
        except DamagedFile:
            n_samples = None
        frame = self._table(*self._snapshot_parts(epoch), columns=columns, max_rows=n_samples)
        if n_samples is not None and len(frame) != n_samples:
            raise DamagedFile(path, f"{len(frame):,} rows; the run has {n_samples:,} examples")
        n_classes = self.n_classes()
        for column in ("label", "prediction"):
            _check_range(frame, column, 0, n_classes, path)
        return frame

    def snapshot_columns(self, epoch: int) -> list[str]:
        """The column names of the snapshot of ``epoch``, read from the file's footer.

        Parameters
        ----------
        epoch : int
            One of :meth:`snapshot_epochs`; only the footer of its file is read.

        Returns
        -------
        list of str
        """
        return _table_info(self.file(*self._snapshot_parts(epoch)), root=self.path)[1]

    def gradients(self, epoch: int) -> np.ndarray:
        """The last-layer gradients of the snapshot of ``epoch``: softmax - onehot.

        Parameters
        ----------
        epoch : int
            The snapshot's epoch; its ``g_*`` columns are read, not the others.

        Returns
        -------
        float32 ndarray of shape (n_samples, n_classes)
            The ``g_*`` columns, in column order.
        """
        cols = [c for c in self.snapshot_columns(epoch) if c.startswith("g_")]
        return self.snapshot(epoch, columns=cols).to_numpy(np.float32)

    def projection(self, name: str = "umap") -> pd.DataFrame | None:
        """The stored 2-D layout ``projections/<name>.parquet``; None when there is none.

        Parameters
        ----------
        name : str, default "umap"
            The layout method: 1 to 64 letters, digits, ``_`` or ``-``.

        Returns
        -------
        pandas.DataFrame or None
            Columns ``epoch, index, x, y``, a row per (snapshot epoch, example); the target's
            rows have index -1.

        Raises
        ------
        InputError
            When ``name`` is not a projection name.
        DamagedFile
            When the file is damaged or its epochs or indices do not fit the run.
        """
        if not _PROJECTION_NAME.fullmatch(name):
            raise InputError(name, "not a projection name")
        parts = (PROJECTIONS, f"{name}.parquet")
        if not self._exists(*parts):
            return None
        n = self.n_examples()
        frame = self._table(*parts, max_rows=(len(self.snapshot_epochs()) or 1) * (n + 1))
        _check_range(frame, "index", -1, max(n, 1), self.file(*parts))
        _check_range(frame, "epoch", 0, MAX_EPOCHS + 1, self.file(*parts))
        return frame

    # images, memory-mapped so a page can take a few thumbnails of a large run cheaply
    def images(self) -> np.ndarray:
        """uint8 (n_samples, height, width, channels), memory-mapped."""
        return _read_npy(self.file(IMAGES), ndim=4, mmap=True, root=self.path)

    def target_image(self) -> np.ndarray | None:
        """uint8 (height, width, channels): the target test image; None for a clean run."""
        if not self._exists(TARGET_IMAGE):
            return None
        return _read_npy(self.file(TARGET_IMAGE), ndim=3, mmap=False, root=self.path,
                         max_bytes=MAX_TARGET_BYTES)

    def info(self) -> RunInfo:
        """This run's line of ``poisonlens runs``; a damaged metrics.parquet, or a link or
        special file anywhere in the run, is reported in ``unreadable`` rather than raised."""
        meta = self.meta
        cfg = meta["config"]
        unreadable = self.damage()
        try:
            m = self.metrics()
        except DamagedFile as err:
            m, unreadable = pd.DataFrame(), unreadable or str(err)
        last = m.iloc[-1] if len(m) else None
        success = None
        if last is not None and "attack_success" in m and not pd.isna(last["attack_success"]):
            success = bool(last["attack_success"])
        return RunInfo(
            path=self.path,
            name=meta["name"],
            status=self.status,
            created=_as_float(meta.get("created"), 0.0),
            updated=_as_float(meta.get("updated"), 0.0),
            epochs_done=_as_int(last.get("epoch"), -1) if last is not None else -1,
            epochs=_as_int(cfg.get("epochs")),
            defense=str(cfg.get("defense", "?")),
            test_acc=_as_float(last.get("test_acc")) if last is not None else float("nan"),
            attack_success=success,
            n_dropped=_as_int(last.get("n_dropped")) if last is not None else 0,
            error=None if meta.get("error") is None else str(meta.get("error")),
            unreadable=unreadable,
        )


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` still exists on this machine.

    Shared by the run list (a ``running`` run whose process is gone is shown as killed), the
    background launcher and the projection jobs. It sends signal 0, which checks the process
    without touching it.

    Parameters
    ----------
    pid : int or None
        A process id as recorded in run.json, launch.json or a projection job file; ``None``
        or 0 means "not recorded".

    Returns
    -------
    bool
        False only when no such process exists; True when it exists, when ``pid`` is not
        recorded or not a valid id, or when it belongs to another user (``PermissionError``),
        so that a doubt never marks a live run as killed.
    """
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
    """Open a run directory for reading; its run.json is read and checked now.

    Parameters
    ----------
    path : str or Path
        The run directory, the folder that holds run.json.

    Returns
    -------
    Run

    Raises
    ------
    InputError
        When the folder holds no run.json.
    DamagedFile
        When its run.json cannot be read or is malformed.
    """
    return Run(Path(path))


def unreadable_info(path: Path, reason: str) -> RunInfo:
    """The line of ``poisonlens runs`` for a run whose run.json cannot be read.

    Parameters
    ----------
    path : Path
        The run folder whose run.json failed to read; its name is shown as the run's.
    reason : str
        One line saying what is wrong, shown in place of the metrics.

    Returns
    -------
    RunInfo
        Status ``unreadable``, created and updated at run.json's modification time (0 when
        even that cannot be read), no metrics.
    """
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

    A folder holding a run.json is a run; one that cannot be read (or is itself a link) is
    listed with status ``unreadable`` and the reason, never left out, and never hides the others.

    Parameters
    ----------
    *roots : str or Path
        Folders of runs (``--runs-dir``); a folder that does not exist or cannot be listed is
        skipped.

    Returns
    -------
    list of RunInfo
        Newest first, by creation time.
    """
    infos: list[RunInfo] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            continue
        if os.path.lexists(root / RUN_JSON):
            candidates = [root]
        else:
            try:
                entries = sorted(root.iterdir())
            except OSError:
                continue
            candidates = [p for p in entries if _is_dir_entry(p) and os.path.lexists(p / RUN_JSON)]
        for path in candidates:
            if path.is_symlink():
                infos.append(unreadable_info(path, f"{path}: the run folder is a symbolic link; not followed"))
                continue
            try:
                infos.append(Run(path).info())
            except (InputError, KeyError, ValueError, TypeError, OSError, OverflowError,
                    MemoryError, RecursionError) as err:
                reason = (
                    str(err)
                    if isinstance(err, InputError)
                    else f"{path / RUN_JSON}: {one_line(_first_line(err))}"
                )
                infos.append(unreadable_info(path, reason))
    return sorted(infos, key=lambda i: i.created, reverse=True)


def _is_dir_entry(path: Path) -> bool:
    try:
        return path.is_dir()
    except OSError:
        return False
