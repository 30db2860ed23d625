"""Checkpoints and the run's writer lock: what makes ``--resume`` safe.

- :func:`save_checkpoint` / :func:`load_checkpoint`: ``checkpoints/last.pt`` holds tensors and
  plain containers only and is read with ``torch.load(weights_only=True, map_location=...)``,
  so a run started on a GPU resumes on a CPU and the other way round. Any file torch refuses
  (truncated, empty, not a checkpoint, or one that asks to build Python objects) becomes one
  :class:`~poisonlens.errors.InputError` line naming the file, never torch's multi-line message.
- :class:`RunLock`: ``<run>/writer.lock`` holds the writing process's pid and host. A second
  writer is refused while that process lives; a lock left by a dead process is taken over.
- :func:`remove_temp_files`: temporaries left by an atomic write that was killed midway
  (``.<name>.<random>.tmp``, see :mod:`poisonlens.store`) are removed when a writer opens the run.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import socket
import struct
import warnings
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import torch

from poisonlens import runfs
from poisonlens.errors import InputError
from poisonlens.limits import current_limits
from poisonlens.store import CHECKPOINTS, SNAPSHOTS, atomic_write_bytes, read_parquet

MAX_LOCK_BYTES = 4096  # writer.lock holds {"pid": ..., "host": ...}

LAST = "last.pt"
FINAL = "model.pt"
LOCK = "writer.lock"
CHECKPOINT_KEYS = ("epoch", "model", "optimizer", "active", "dropped_epoch")


# --- checkpoints -----------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict, *, root: Path | None = None) -> None:
    """Atomically write ``state`` (tensors, numbers, strings, lists and dicts only) to ``path``;
    with ``root`` (the run directory) no folder or name on the way is followed as a link.

    Parameters
    ----------
    path : the checkpoint file, e.g. ``<run>/checkpoints/last.pt``
    state : for ``last.pt``: epoch (int), model and optimizer state dicts, active (bool tensor
        of shape (n_samples,)), dropped_epoch (int64 tensor of shape (n_samples,)) and,
        under fp16 mixed precision, the grad scaler's state.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue(), root=root)


def torch_load(
    path: str | Path, *, map_location: torch.device | str = "cpu", root: str | Path | None = None,
    max_bytes: int | None = None,
):
    """``torch.load(path, weights_only=True)`` whose every failure is one :class:`InputError` line.

    Parameters
    ----------
    path : a file written by ``torch.save``
    map_location : where the tensors are put (the device this process runs on)
    root : the folder ``path`` is inside (default: its own folder); no link or special file
        below it is followed or opened
    max_bytes : the most bytes the file may hold and its tensors decode to (default: the
        limits' ``max_file_bytes``); ``torch.save`` stores its zip entries uncompressed, so a
        compressed entry (a small file that would inflate) is refused before anything is decoded

    Raises
    ------
    InputError
        ``<path>: missing file``, ``<path>: not a readable torch file (...)`` for a truncated,
        empty or foreign file, and ``<path>: refused: ...`` for a file that asks to build Python
        objects other than tensors (nothing from it is run).
    """
    path = Path(path)
    root = path.parent if root is None else Path(root)
    limit = current_limits().max_file_bytes if max_bytes is None else max_bytes
    try:
        handle = runfs.open_file(root, *runfs.parts_of(root, path), max_bytes=limit)
    except runfs.RunFileError as err:
        raise InputError(path, "missing file" if err.missing else err.problem) from None
    with handle:
        if os.fstat(handle.fileno()).st_size == 0:
            raise InputError(path, "empty file (a write was interrupted?)")
        _check_zip_entries(handle, path, limit)
        return _torch_load(handle, path, map_location)


# The zip's central directory: Python's zipfile (and torch's reader) hold every entry it lists in
# memory. A model's is kilobytes (a ResNet-18's ~120 tensors: 12 KB); 4 MiB lists ~50,000.
MAX_ZIP_DIRECTORY = 4 * 2**20
ZIP_MAGIC = b"PK\x03\x04"  # how torch.load tells its zip format from the legacy one


class _ZipTooLarge(Exception):
    pass


class _CappedReads:
    """A file's seek, tell and read, a single read capped: zipfile reads the whole central
    directory in one call, so whatever end record it trusts, it cannot list more than this."""

    def __init__(self, handle, cap: int):
        self._handle, self._cap = handle, cap

    def seek(self, *args):
        """The file's own seek."""
        return self._handle.seek(*args)

    def tell(self):
        """The file's own tell."""
        return self._handle.tell()

    def read(self, n: int | None = -1):
        """At most the cap's bytes, else :class:`_ZipTooLarge`."""
        if n is None or n < 0:  # to the end (zipfile reads its end record so)
            here = self._handle.tell()
            n = self._handle.seek(0, os.SEEK_END) - here
            self._handle.seek(here)
        if n > self._cap:
            raise _ZipTooLarge
        return self._handle.read(n)


def _directory_size(handle, path: Path) -> int:
    """The central directory size a torch zip declares, from its end records at the places
    ``torch.save`` writes them: the end record as the last 22 bytes (no comment), and a zip64
    locator just before it with its zip64 record (where it points and just before it, as zip
    readers look in either place). Any other shape is refused: zip readers disagree about it.
    """
    end = handle.seek(0, os.SEEK_END)
    if end < 22 + len(ZIP_MAGIC):
        raise InputError(path, "not a readable torch file (a truncated zip)")
    handle.seek(end - 22)
    record = handle.read(22)
    if record[:4] != b"PK\x05\x06" or record[20:] != b"\0\0":
        raise InputError(path, "refused: a zip that does not end with its end record (torch.save's do)")
    size = struct.unpack_from("<L", record, 12)[0]
    if end < 22 + 20:
        return size
    handle.seek(end - 42)
    locator = handle.read(20)
    if locator[:4] != b"PK\x06\x07":
        return size
    sizes = []
    for offset in {struct.unpack_from("<Q", locator, 8)[0], end - 42 - 56}:
        if 0 <= offset <= end - 42 - 56:
            handle.seek(offset)
            zip64 = handle.read(56)
            if zip64[:4] == b"PK\x06\x06":
                sizes.append(struct.unpack_from("<Q", zip64, 40)[0])
    if not sizes:
        raise InputError(path, "not a readable torch file (a damaged zip64 end record)")
    return max(sizes)  # a plain record's size is then 0xFFFFFFFF or the same


def _check_zip_entries(handle, path: Path, limit: int) -> None:
    """Refuse a torch zip whose central directory is over :data:`MAX_ZIP_DIRECTORY`, or whose
    entries are compressed or declare more than ``limit`` bytes (read from its directory only).

    A file is a zip when it starts as one, as torch.load decides: one that fools zipfile into
    saying it is not (a stray end signature after its end) is still checked. The legacy
    non-zip format is left to torch.
    """
    handle.seek(0)
    if handle.read(len(ZIP_MAGIC)) != ZIP_MAGIC:
        handle.seek(0)
        return
    if _directory_size(handle, path) > MAX_ZIP_DIRECTORY:
        # checked before zipfile lists the entries: millions of tiny ones would fill memory
        raise InputError(path, f"refused: its zip directory is over {MAX_ZIP_DIRECTORY:,} bytes "
                               "(a model's lists its tensors in kilobytes)")
    handle.seek(0)
    try:
        with zipfile.ZipFile(_CappedReads(handle, MAX_ZIP_DIRECTORY + 2**17)) as archive:
            entries = archive.infolist()
    except _ZipTooLarge:
        raise InputError(path, f"refused: its zip directory is over {MAX_ZIP_DIRECTORY:,} bytes") from None
    except Exception:  # zipfile fails in many ways on foreign bytes (BadZipFile, NotImplementedError, ...)
        raise InputError(path, "not a readable torch file (a damaged zip)") from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise InputError(path, "refused: compressed entries (torch.save writes none; it could "
                               "inflate far beyond its size)")
    if sum(e.file_size for e in entries) > limit:
        raise InputError(path, f"refused: its entries hold more than {limit:,} bytes")
    handle.seek(0)


def _torch_load(handle, path: Path, map_location):
    try:
        with warnings.catch_warnings():
            # torch warns about foreign pickle protocols on stderr: the refusal says enough
            warnings.simplefilter("ignore")
            return torch.load(handle, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's message is many lines and suggests weights_only=False, which would run the
        # file's code: never pass that on.
        if "Weights only load failed" in str(err) or "Unsupported global" in str(err):
            raise InputError(
                path, "refused: it asks to build Python objects other than tensors"
            ) from None
        raise InputError(path, "not a readable torch file (truncated or another format)") from None
    except Exception:  # the unpickler fails in many ways on foreign bytes (IndexError, ...)
        raise InputError(path, "not a readable torch file (truncated or another format)") from None


def load_checkpoint(
    path: Path, *, n_samples: int, map_location: torch.device | str, root: Path | None = None
) -> dict:
    """Read and check ``last.pt``; returns its dict with tensors on ``map_location``.

    Parameters
    ----------
    path : ``<run>/checkpoints/last.pt``
    n_samples : the training set's size; the masks in the checkpoint must have this length
    map_location : the device the resumed run trains on
    root : the run directory (links and special files below it are refused)

    Raises
    ------
    InputError
        naming ``path``, for any file that is not a checkpoint of this run.
    """
    state = torch_load(path, map_location=map_location, root=root)
    if not isinstance(state, dict) or any(k not in state for k in CHECKPOINT_KEYS):
        raise InputError(path, f"not a poisonlens checkpoint (needs keys {', '.join(CHECKPOINT_KEYS)})")
    masks_ok = all(
        isinstance(state[k], torch.Tensor) and tuple(state[k].shape) == (n_samples,)
        for k in ("active", "dropped_epoch")
    )
    if not masks_ok:
        raise InputError(path, f"masks do not fit this run's {n_samples} training examples")
    if not isinstance(state["epoch"], int) or state["epoch"] < 0:
        raise InputError(path, "epoch must be an integer >= 0")
    if not isinstance(state["model"], dict) or not isinstance(state["optimizer"], dict):
        raise InputError(path, "model and optimizer must be state dicts")
    return state


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A model state dict (e.g. another run's ``checkpoints/model.pt``) for ``--pretrained``.

    Parameters
    ----------
    path : str or Path
        The state dict file; read with the safe loader (no link, no FIFO, bounded).

    Returns
    -------
    dict mapping parameter names to CPU tensors.

    Raises
    ------
    InputError
        naming ``path``: a missing, foreign, truncated or malicious file, or one that is not a
        mapping of names to tensors.
    """
    state = torch_load(path, map_location="cpu")
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(path, "not a model state dict (names -> tensors)")
    return state


def read_table(path: Path, *, root: Path | None = None) -> pd.DataFrame:
    """A Parquet table of the run (metrics, targets) that must be readable to resume (``root``:
    the run directory; links and special files below it are refused).

    Parameters
    ----------
    path : Path
        The Parquet file (``metrics.parquet`` or ``targets.parquet``).
    root : Path or None
        The run directory the file must lie in; no link or special file below it is opened
        (None: the file's own folder).

    Raises
    ------
    InputError
        ``<path>: unreadable Parquet (...)`` for a truncated or foreign file, in one line.
    """
    try:
        return read_parquet(path, root=root, max_rows=1_000_001, text=True)
    except FileNotFoundError:
        raise InputError(path, "missing file") from None
    except InputError:
        raise
    except (OSError, pa.ArrowException, ValueError) as err:
        first = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        raise InputError(path, f"unreadable Parquet ({first})") from None


# --- the writer lock and leftovers -----------------------------------------------------------


class RunLock:
    """Context manager: hold ``<run>/writer.lock`` while this process writes the run.

    The lock file is created with ``O_EXCL`` and holds ``{"pid": ..., "host": ...}``. A lock
    whose process is gone (same host, no such pid) is stale and taken over; a live one, or one
    from another host (whose pid cannot be checked), is refused with an :class:`InputError`.
    On entry, temporary files left by interrupted atomic writes are removed.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK
        self.held = False
        self.made_dirs: list[Path] = []  # the folders this lock created, innermost first

    def __enter__(self) -> RunLock:
        folder = self.path.parent
        self.made_dirs = [d for d in (folder, *folder.parents) if not os.path.lexists(d)]
        folder.mkdir(parents=True, exist_ok=True)
        damage = runfs.check_tree(folder)
        if damage:  # a link or FIFO anywhere in the run: nothing is read or written through it
            raise InputError(folder, f"damaged run folder, not written: {damage}")
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(3):
            if not runfs.create_exclusive(folder, (LOCK,), json.dumps(me).encode()):
                owner = _read_lock(self.path)
                if _lock_is_live(owner, me["host"]):
                    where = "" if owner.get("host") == me["host"] else f" on {owner.get('host')}"
                    raise InputError(
                        self.path.parent,
                        f"run is being written by process {owner.get('pid')}{where}",
                    ) from None
                runfs.remove(folder, (LOCK,))  # stale: its writer is gone
                continue
            self.held = True
            remove_temp_files(self.path.parent)
            return self
        raise InputError(self.path, "could not take the lock (another writer keeps taking it)")

    def __exit__(self, *exc) -> None:
        if self.held and _read_lock(self.path).get("pid") == os.getpid():
            runfs.remove(self.path.parent, (LOCK,))
        self.held = False
        # a run that failed before writing anything leaves no folder, nor a runs folder made
        # for it (a refused `--runs-dir new/place` leaves nothing behind)
        for folder in self.made_dirs:
            if folder.is_symlink() or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def _read_lock(path: Path) -> dict:
    """The lock's owner; a link, FIFO or device as writer.lock is refused (never read)."""
    try:
        data = runfs.read_bytes(path.parent, path.name, max_bytes=MAX_LOCK_BYTES)
    except runfs.RunFileError as err:
        if err.missing:
            return {}
        raise InputError(path, err.problem) from None
    try:
        owner = json.loads(data)
    except ValueError:
        return {}  # half-written: treated as stale
    return owner if isinstance(owner, dict) else {}


def _lock_is_live(owner: dict, host: str) -> bool:
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if owner.get("host") != host:
        return True  # cannot check a process on another machine: refuse rather than share
    if pid == os.getpid():
        return False  # our own leftover (e.g. a test that resumes in the same process)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete ``.*.tmp`` files left by killed atomic writes in the run's own folders.

    Only the folders the trainer writes (the run, ``checkpoints/``, ``snapshots/``); the
    projection folder is left alone, since a projector may be writing there right now.

    Parameters
    ----------
    run_dir : str or Path
        The run directory.

    Returns
    -------
    list of the removed paths
    """
    run_dir = Path(run_dir)
    removed = []
    for dirs in ((), (CHECKPOINTS,), (SNAPSHOTS,)):
        try:
            names = runfs.listdir(run_dir, *dirs)
        except runfs.RunFileError:
            continue  # a linked folder: never looked into, let alone deleted from
        for name in names:
            if name.startswith(".") and name.endswith(".tmp") and runfs.remove(run_dir, (*dirs, name)):
                removed.append(run_dir.joinpath(*dirs, name))
    return removed
