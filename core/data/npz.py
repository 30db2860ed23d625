"""Read an ``.npz`` without pickles: numbers and fixed-width text only, sizes checked first.

Every member's declared size (its zip entry and its .npy header, which must agree) is checked
against :func:`poisonlens.limits.current_limits`, and one that expands more than
``max_compression_ratio`` times (a zip bomb) is refused, before anything is decompressed; then
exactly the declared bytes are read.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from poisonlens.errors import InputError
from poisonlens.limits import Limits, check_count, current_limits, open_regular

# dtypes an .npz may hold: numbers and fixed-width text, never objects
_NPZ_KINDS = frozenset("biufUS")
_BOMB_CHECK_BYTES = 16 << 20  # members smaller than this are never called zip bombs
_CHUNK = 16 << 20  # bytes read from an .npz member at a time


def _read_npy_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, field: str, limits: Limits
) -> np.ndarray:
    """One array of an .npz: its header checked, then exactly the bytes it declares read."""
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
        else:
            raise InputError(source, f"field '{field}' has .npy format version {version}")
        if dtype.kind not in _NPZ_KINDS or dtype.hasobject or dtype.fields or dtype.subdtype:
            raise InputError(
                source, f"field '{field}' has dtype {dtype}; only numbers and text are read"
            )
        n_bytes = dtype.itemsize
        for s in shape:
            n_bytes *= s  # Python ints: a 58 TiB claim is just a number here
        check_count(
            source,
            f"field '{field}' size in bytes",
            n_bytes,
            limits.max_array_bytes,
            "--max-array-bytes",
        )
        header = member.tell()
        if header + n_bytes != info.file_size:
            raise InputError(
                source,
                f"field '{field}' declares {n_bytes:,} bytes of data but holds "
                f"{info.file_size - header:,}",
            )
        buffer = np.empty(n_bytes, dtype=np.uint8)
        done = 0
        while done < n_bytes:
            chunk = member.read(min(_CHUNK, n_bytes - done))
            if not chunk:
                raise InputError(source, f"field '{field}' is truncated")
            buffer[done : done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            done += len(chunk)
        member.read(1)  # reach the end, so zipfile checks the CRC
    array = buffer.view(dtype).reshape(shape, order="F" if fortran else "C")
    return array if dtype.isnative else array.astype(dtype.newbyteorder("="))


def _check_member(info: zipfile.ZipInfo, source: str, archive_size: int, limits: Limits) -> None:
    """Refuse a member before decompressing it: encrypted, an unknown compression, a compressed
    size past the end of the file, too large, or expanding past ``max_compression_ratio``."""
    field = info.filename.removesuffix(".npy")
    if info.flag_bits & 0x1:
        raise InputError(source, f"field '{field}' is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise InputError(source, f"field '{field}' uses an unsupported compression")
    # the sizes below are the archive's word: a compressed size past the end of the file
    # would let a member claim ratio 1 while inflating 1,000 times
    if info.header_offset + info.compress_size > archive_size:
        raise InputError(
            source,
            f"field '{field}' claims {info.compress_size:,} compressed bytes, past the end of "
            "the file (a forged zip entry)",
        )
    check_count(
        source,
        f"field '{field}' size in bytes",
        info.file_size,
        limits.max_array_bytes + 65536,
        "--max-array-bytes",
    )
    _check_ratio(source, f"field '{field}' expands", info.compress_size, info.file_size, limits)


def _check_ratio(source: str, what: str, compressed: int, total: int, limits: Limits) -> None:
    """A zip bomb: past 16 MiB, more than ``max_compression_ratio`` times the compressed size."""
    ratio = limits.max_compression_ratio
    if total > _BOMB_CHECK_BYTES and total > ratio * max(compressed, 1):
        raise InputError(
            source,
            f"{what} from {compressed:,} to {total:,} bytes, more than {ratio:g} times (a zip "
            "bomb?; raise --max-compression-ratio)",
        )


def _check_archive(archive: zipfile.ZipFile, source: str, archive_size: int, limits: Limits):
    """Every member checked (:func:`_check_member`), then their total, as one bomb too."""
    infos = archive.infolist()
    check_count(source, "arrays", len(infos), limits.max_members, "--max-members")
    total = compressed = 0
    for info in infos:
        _check_member(info, source, archive_size, limits)
        total += info.file_size
        compressed += info.compress_size
        check_count(source, "bytes of arrays", total, limits.max_total_bytes, "--max-total-bytes")
    # members each just under the threshold (1,000 of 16 MiB of zeros, 16 KiB each) are one
    # zip bomb of 16 GiB
    _check_ratio(source, "arrays expand", compressed, total, limits)
    return infos


def read_npz(path: str | os.PathLike, *, limits: Limits | None = None) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file: numbers and text only, sizes checked before reading.

    Every member's declared size (its zip entry and its .npy header, which must agree)
    is checked against the limits, and one that expands more than
    ``max_compression_ratio`` times (a zip bomb) is refused, before anything is
    decompressed; then exactly the declared bytes are read.

    Parameters
    ----------
    path : str or path
        The ``.npz`` file; only a regular file is opened.
    limits : Limits, optional
        The size limits (default: :func:`poisonlens.limits.current_limits`).

    Returns
    -------
    dict of {field name: ndarray}

    Raises
    ------
    InputError
        Naming the file, and the field when one cannot be read.
    """
    limits = limits or current_limits()
    source = str(path)
    with open_regular(path, max_bytes=limits.max_file_bytes) as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise InputError(
                source, "a single .npy array; expected an .npz archive of named arrays"
            )
        handle.seek(0)
        try:
            archive = zipfile.ZipFile(handle)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise InputError(source, f"not a readable .npz file ({err})") from err
        with archive:
            infos = _check_archive(archive, source, os.fstat(handle.fileno()).st_size, limits)
            fields = {}
            for info in infos:
                field = info.filename.removesuffix(".npy")
                try:
                    fields[field] = _read_npy_member(archive, info, source, field, limits)
                except InputError:
                    raise
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as err:
                    raise InputError(source, f"field '{field}' cannot be read ({err})") from err
    return fields
