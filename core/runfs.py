"""The one I/O layer for files inside a run folder: no link followed, no special file opened.

A run folder may come from someone else (a tarball, a shared drive, ``rsync -a``), so every
path inside it is walked one component at a time from a descriptor of the run directory,
each component opened with ``O_NOFOLLOW`` (``dir_fd`` walking): a folder or file that is a
symbolic link is refused, never followed, whichever level it is at. Files are opened
non-blocking (a FIFO never blocks the reader), checked with ``fstat`` on the opened
descriptor (a regular file, of at most ``max_bytes``) and only then switched back to blocking
reads. Writes go to a temporary file created with ``O_EXCL | O_NOFOLLOW`` inside the real run
directory and renamed over the final name; nothing is written, appended or deleted through a
link. Every refusal is a :class:`RunFileError` (an :class:`~poisonlens.errors.InputError`)
naming the path and the problem, so readers show a damaged file, never a traceback.

Paths are given as the run directory plus its relative parts (``("snapshots",
"epoch_0003.parquet")``), or as a path inside the run directory (:func:`parts_of`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from poisonlens.errors import InputError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
MAX_TREE_ENTRIES = 100_000  # entries :func:`check_tree` looks at before calling a run damaged
TEMP_PREFIX = "."
TEMP_SUFFIX = ".tmp"


class DamagedFile(InputError):
    """A run file that exists (or must exist) but cannot be read: missing, truncated, corrupt,
    too large, of the wrong type, a link or a special file.

    ``source`` is the file and ``problem`` the reason, as for every :class:`InputError`; pages
    catch this one type to show a short message and go on with what they can read
    (:mod:`poisonlens.store` re-exports it).
    """


class RunFileError(DamagedFile):
    """A file or folder of a run refused by this layer: a link, a special file, too large, or
    not there (``missing`` is True then, so callers can treat an optional file as absent)."""

    def __init__(self, source: object, problem: str, *, missing: bool = False) -> None:
        super().__init__(source, problem)
        self.missing = missing


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "not a regular file"


def parts_of(root: str | os.PathLike, path: str | os.PathLike) -> tuple[str, ...]:
    """The components of ``path`` relative to the run directory ``root``.

    Parameters
    ----------
    root : str or PathLike
        The run directory.
    path : str or PathLike
        A path inside it, absolute or as written relative to the same folder as ``root``;
        compared as written (normalised, never resolved through links).

    Returns
    -------
    tuple of str, e.g. ``("snapshots", "epoch_0003.parquet")``; empty for ``root`` itself

    Raises
    ------
    RunFileError
        When ``path`` is not inside ``root`` (compared as written, never resolved) or has a
        ``..`` component.
    """
    try:
        base = os.path.normpath(root)
        rel = Path(os.path.normpath(path))
        rel = rel.relative_to(base) if base != "." or rel.is_absolute() else rel
    except ValueError:
        raise RunFileError(path, f"not inside the run folder {root}") from None
    parts = rel.parts
    if any(p in ("..", "") for p in parts):
        raise RunFileError(path, "a path leaving the run folder")
    return parts


def _display(root: Path, parts: tuple[str, ...]) -> Path:
    return Path(root).joinpath(*parts)


def open_root(root: str | os.PathLike) -> int:
    """A descriptor of the run directory itself (its last component must not be a link).

    Parameters
    ----------
    root : str or PathLike
        The run directory. Only its last component is checked here (``O_NOFOLLOW``).

    Returns
    -------
    int
        An ``O_RDONLY | O_DIRECTORY`` descriptor; the caller closes it.

    Raises
    ------
    RunFileError
        ``missing`` set when there is no such folder; otherwise a link, not a folder, or
        unreadable.
    """
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise RunFileError(root, "no such run folder", missing=True) from None
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.ENOTDIR):
            raise RunFileError(root, "the run folder is a link or not a folder; not followed") from None
        raise RunFileError(root, f"cannot open the run folder ({err.strerror})") from None


def _open_dir_at(parent: int, name: str, shown: Path, *, create: bool) -> int:
    for _ in range(2):
        try:
            return os.open(name, _DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise RunFileError(shown, "missing folder", missing=True) from None
            with contextlib.suppress(FileExistsError):
                os.mkdir(name, 0o777, dir_fd=parent)
        except OSError as err:
            if err.errno in (errno.ELOOP, errno.ENOTDIR):
                mode = _lstat_mode(parent, name)
                raise RunFileError(shown, f"{_kind(mode)}, not a folder; refused") from None
            raise RunFileError(shown, f"cannot open folder ({err.strerror})") from None
    raise RunFileError(shown, "cannot create folder")


def _lstat_mode(parent: int, name: str) -> int:
    try:
        return os.lstat(name, dir_fd=parent).st_mode
    except OSError:
        return 0


@contextlib.contextmanager
def folder(root: str | os.PathLike, dirs: tuple[str, ...] = (), *, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder ``root/dirs...``, walked without following any link.

    A context manager: the descriptor is closed on leaving it.

    Parameters
    ----------
    root : str or PathLike
        The run directory, where the walk starts.
    dirs : tuple of str, default ()
        Folder names below ``root``, outermost first; empty for ``root`` itself.
    create : bool, default False
        Make missing folders, ``root`` included (never through a link).

    Yields
    ------
    int
        A directory descriptor, for ``dir_fd=`` calls.

    Raises
    ------
    RunFileError
        When a component is a link or not a folder; ``missing`` set when one is missing and
        ``create`` is False.
    """
    root = Path(root)
    if create and not os.path.lexists(root):
        root.mkdir(parents=True, exist_ok=True)
    fd = open_root(root)
    try:
        for i, name in enumerate(dirs):
            nxt = _open_dir_at(fd, name, _display(root, dirs[: i + 1]), create=create)
            os.close(fd)
            fd = nxt
        yield fd
    finally:
        os.close(fd)


def lstat(root: str | os.PathLike, *parts: str) -> os.stat_result | None:
    """``lstat`` of ``root/parts`` (None when it or a folder above it is missing).

    Parameters
    ----------
    root, *parts : str or PathLike, then str
        The run directory and the components of the name below it (:func:`parts_of`); no
        parts: ``root`` itself.

    Returns
    -------
    os.stat_result or None
        Of the last component itself, never of what a link points to.

    Raises
    ------
    RunFileError
        When a folder on the way is a link or not a folder.
    """
    try:
        with folder(root, parts[:-1]) as fd:
            try:
                return os.lstat(parts[-1], dir_fd=fd) if parts else os.fstat(fd)
            except FileNotFoundError:
                return None
    except RunFileError as err:
        if err.missing:
            return None
        raise


def kind(root: str | os.PathLike, *parts: str) -> str | None:
    """What ``root/parts`` is: ``"file"``, ``"folder"``, or None when it is missing.

    Parameters
    ----------
    root, *parts : str or PathLike, then str
        The name to look at: the run directory, then its components below it.

    Returns
    -------
    str or None

    Raises
    ------
    RunFileError
        For a link or special file (FIFO, socket, device), at the end or on the way.
    """
    info = lstat(root, *parts)
    if info is None:
        return None
    if stat.S_ISREG(info.st_mode):
        return "file"
    if stat.S_ISDIR(info.st_mode):
        return "folder"
    raise RunFileError(_display(Path(root), parts), f"{_kind(info.st_mode)}; refused")


def exists(root: str | os.PathLike, *parts: str) -> bool:
    """Whether ``root/parts`` is a regular file (a link or special file raises RunFileError).

    Parameters
    ----------
    root, *parts : str or PathLike, then str
        The run folder and the file's path inside it, e.g. ``run, "run.json"``.

    Returns
    -------
    bool
        False for a missing name or a folder.
    """
    return kind(root, *parts) == "file"


def listdir(root: str | os.PathLike, *dirs: str) -> list[str]:
    """The names in folder ``root/dirs`` ([] when it is missing); a linked folder is refused.

    Parameters
    ----------
    root : str or PathLike
        The run folder.
    *dirs : str
        Folder names below ``root``, outermost first; none for ``root`` itself.

    Returns
    -------
    list of str
        Sorted; entries are named, not checked (links among them are listed).

    Raises
    ------
    RunFileError
        When a folder on the way is a link or not a folder.
    """
    try:
        with folder(root, dirs) as fd:
            return sorted(os.listdir(fd))
    except RunFileError as err:
        if err.missing:
            return []
        raise


def open_file(root: str | os.PathLike, *parts: str, max_bytes: int | None = None) -> BinaryIO:
    """A binary reader of the regular file ``root/parts``, at most ``max_bytes`` long.

    The file is opened non-blocking (a FIFO cannot hang the reader) and checked on the opened
    descriptor before the reader is returned.

    Parameters
    ----------
    root : str or PathLike
        The run directory; no component from it down is followed if it is a link.
    *parts : str
        The file's components below ``root``, e.g. ``"snapshots", "epoch_0003.parquet"``.
    max_bytes : int, optional
        The largest size accepted, in bytes. Default None: any size.

    Returns
    -------
    BinaryIO
        A blocking reader positioned at the start; the caller closes it.

    Raises
    ------
    RunFileError
        ``missing`` set for a missing file; otherwise a link, FIFO, device, socket or folder
        at any component, or a file larger than ``max_bytes``.
    """
    shown = _display(Path(root), parts)
    if not parts:
        raise RunFileError(shown, "not a file")
    with folder(root, parts[:-1]) as parent:
        try:
            fd = os.open(parts[-1], os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC, dir_fd=parent)
        except FileNotFoundError:
            raise RunFileError(shown, "missing file", missing=True) from None
        except OSError as err:
            mode = _lstat_mode(parent, parts[-1])
            what = _kind(mode) if mode else err.strerror
            raise RunFileError(shown, f"{what}; refused (not followed or opened)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise RunFileError(shown, f"{_kind(info.st_mode)}; refused (not a regular file)")
        if max_bytes is not None and info.st_size > max_bytes:
            raise RunFileError(shown, f"larger than {max_bytes:,} bytes; refused")
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(root: str | os.PathLike, *parts: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/parts`` (checked as in :func:`open_file`); never
    more than ``max_bytes`` are read, even if the file grows meanwhile.

    Parameters
    ----------
    root, *parts : str or PathLike, then str
        Which file: the run folder, then the components of its path inside.
    max_bytes : int
        The largest size accepted, in bytes.

    Returns
    -------
    bytes

    Raises
    ------
    RunFileError
        As :func:`open_file`, and when more than ``max_bytes`` could be read.
    """
    with open_file(root, *parts, max_bytes=max_bytes) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RunFileError(_display(Path(root), parts), f"larger than {max_bytes:,} bytes; refused")
    return data


def tail_bytes(root: str | os.PathLike, *parts: str, max_bytes: int) -> bytes:
    """The last ``max_bytes`` of the regular file ``root/parts`` (a log of any size).

    Parameters
    ----------
    root, *parts : str or PathLike, then str
        The log: its run folder and its path inside, e.g. ``run, "train.log"``.
    max_bytes : int
        How many bytes from the end to return, at most.

    Returns
    -------
    bytes
        The whole file when it is shorter.
    """
    with open_file(root, *parts) as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - max_bytes))
        return f.read(max_bytes)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_atomic(
    root: str | os.PathLike, parts: tuple[str, ...], write: Callable[[BinaryIO], None], *, mode: int | None = None
) -> None:
    """Write ``root/parts`` atomically: ``write(handle)`` fills a temporary file created with
    ``O_EXCL | O_NOFOLLOW`` in the real folder (folders made as needed, none followed), then it
    is renamed over the name. An existing link or special file under the name is refused.

    Parameters
    ----------
    root : str or PathLike
        The run directory (made when missing).
    parts : tuple of str
        The file's path components below ``root``, the last one its name; missing folders on
        the way are made (never through a link).
    write : callable
        ``write(handle)`` writes the whole contents to a binary handle; if it raises, the
        temporary file is removed and the old file is left as it was.
    mode : int, optional
        Permission bits of the new file. Default: 0o666 less the umask, as ``open`` makes.

    Raises
    ------
    RunFileError
        When the name or a folder on the way is a link or special file.
    """
    shown = _display(Path(root), parts)
    with folder(root, parts[:-1], create=True) as parent:
        name = parts[-1]
        mode_now = _lstat_mode(parent, name)
        if mode_now and not stat.S_ISREG(mode_now):
            raise RunFileError(shown, f"{_kind(mode_now)}; not written through")
        perm = (0o666 & ~_umask()) if mode is None else mode
        fd, tmp = -1, ""
        for attempt in range(100):
            tmp = f"{TEMP_PREFIX}{name}.{os.getpid()}.{os.urandom(4).hex()}{TEMP_SUFFIX}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, perm,
                             dir_fd=parent)
                break
            except FileExistsError:
                if attempt == 99:
                    raise
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=parent)
            raise


def write_bytes(root: str | os.PathLike, parts: tuple[str, ...], data: bytes) -> None:
    """Write ``data`` to ``root/parts`` atomically (see :func:`write_atomic`).

    Parameters
    ----------
    root, parts : str or PathLike, tuple of str
        Where to write, as :func:`write_atomic` takes it.
    data : bytes
        The file's whole new contents.
    """
    write_atomic(root, parts, lambda f: f.write(data))


def create_exclusive(root: str | os.PathLike, parts: tuple[str, ...], data: bytes, *, perm: int = 0o644) -> bool:
    """Create ``root/parts`` holding ``data`` only if nothing has that name (``O_EXCL``, no
    link followed): a lock or a claim that two processes cannot both win.

    Parameters
    ----------
    root, parts : str or PathLike, tuple of str
        The run folder and the new file's components inside it (folders made as needed).
    data : bytes
        The new file's contents (e.g. the owner's process id).
    perm : int, default 0o644
        Permission bits of the new file (less the umask).

    Returns
    -------
    bool
        True when this call created the file, False when the name was taken (by a file, a
        folder or a link, which is not followed).
    """
    with folder(root, parts[:-1], create=True) as parent:
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, perm,
                         dir_fd=parent)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True


def open_append(root: str | os.PathLike, parts: tuple[str, ...]) -> int:
    """A write descriptor appending to the regular file ``root/parts`` (created when missing),
    for a child process's log; a link or special file under the name is refused.

    Parameters
    ----------
    root, parts : str or PathLike, tuple of str
        The log's run folder and its path components there, e.g. ``run, ("train.log",)``.

    Returns
    -------
    int
        A blocking ``O_WRONLY | O_APPEND`` descriptor; the caller (or the child it is handed
        to) closes it.

    Raises
    ------
    RunFileError
        When the name is a link, FIFO, socket, device or folder.
    """
    shown = _display(Path(root), parts)
    with folder(root, parts[:-1], create=True) as parent:
        try:
            fd = os.open(parts[-1], os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC,
                         0o644, dir_fd=parent)
        except OSError as err:
            mode = _lstat_mode(parent, parts[-1])
            raise RunFileError(shown, f"{_kind(mode) if mode else err.strerror}; not written through") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise RunFileError(shown, f"{_kind(info.st_mode)}; not written through")
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    return fd


def remove(root: str | os.PathLike, parts: tuple[str, ...]) -> bool:
    """Delete the regular file ``root/parts`` (the folders above it walked without following
    links); a link or special file is left alone.

    Parameters
    ----------
    root, parts : str or PathLike, tuple of str
        The file to delete: its run folder, then its components below it.

    Returns
    -------
    bool
        True when a file was removed; False when it was missing, not a regular file, or a
        folder on the way was refused.
    """
    try:
        with folder(root, parts[:-1]) as parent:
            mode = _lstat_mode(parent, parts[-1])
            if not stat.S_ISREG(mode):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(parts[-1], dir_fd=parent)
                return True
    except RunFileError:
        return False
    return False


def check_tree(root: str | os.PathLike, *, max_entries: int = MAX_TREE_ENTRIES) -> str | None:
    """Why the run folder is damaged (a link or special file anywhere in it), or None.

    Walks every folder of the run (each opened without following links) and ``lstat`` s each
    entry.

    Parameters
    ----------
    root : str or PathLike
        The run folder to walk (itself opened without following a link).
    max_entries : int, default ``MAX_TREE_ENTRIES`` (100,000)
        The most entries looked at; a larger tree is called damaged rather than walked on.

    Returns
    -------
    str or None
        One line for the first offender, e.g. ``"<path>: a symbolic link; refused (not
        followed)"``; None when every entry is a regular file or a folder.
    """
    seen = 0
    todo: list[tuple[str, ...]] = [()]
    root = Path(root)
    while todo:
        dirs = todo.pop()
        try:
            with folder(root, dirs) as fd:
                for name in sorted(os.listdir(fd)):
                    seen += 1
                    if seen > max_entries:
                        return f"{root}: more than {max_entries:,} entries; refused"
                    mode = _lstat_mode(fd, name)
                    if stat.S_ISDIR(mode):
                        todo.append((*dirs, name))
                    elif mode and not stat.S_ISREG(mode):
                        return f"{_display(root, (*dirs, name))}: {_kind(mode)}; refused (not followed)"
        except RunFileError as err:
            return str(err)
    return None
