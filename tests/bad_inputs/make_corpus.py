"""Write the corpus of hostile inputs that tests/test_untrusted_inputs.py feeds the real CLI.

Nothing here is a committed blob: every crafted pickle is written opcode by opcode (so what
it does can be read below), every archive and image is built by the standard library,
numpy or PIL. Each case is one function ``case_<name>(folder) -> Case`` that writes its
files into ``folder`` and says how to run the CLI on them and what must not happen.

Usage: ``python -m tests.bad_inputs.make_corpus OUT_DIR`` writes every case into
``OUT_DIR/<name>/`` and prints the command lines (handy to try one by hand).
"""

from __future__ import annotations

import functools
import io
import json
import os
import pickle
import shutil
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SECRET = "POISONLENS-SECRET-7f3a9c"  # content of a file a payload would try to read
MARKER = "PAYLOAD-RAN"  # a file a payload would try to create


@dataclass
class Case:
    """How to run the CLI on a crafted input, and what the refusal must name.

    Attributes
    ----------
    args : the command line after ``poisonlens``
    names : strings the one error line must contain (the file, the problem)
    marker : a file the payload would create; it must not exist afterwards
    secret_file : a file the payload would read; its content must appear nowhere
    classes : the issue's classes this case covers (1-6)
    """

    args: list[str]
    names: tuple[str, ...]
    marker: Path | None = None
    secret_file: Path | None = None
    classes: tuple[int, ...] = ()
    notes: str = ""
    extra: dict = field(default_factory=dict)


# ---------------------------------------------------------------- pickle opcodes, by hand


def p_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def p_stack_global(module: str, name: str) -> bytes:
    return p_str(module) + p_str(name) + b"\x93"


def p_str(text: str) -> bytes:
    raw = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(raw)) + raw


def p_bytes(raw: bytes) -> bytes:
    return b"B" + struct.pack("<I", len(raw)) + raw


def p_int(n: int) -> bytes:
    return b"I" + str(n).encode() + b"\n"


def p_tuple(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def p_list(*items: bytes) -> bytes:
    return b"](" + b"".join(items) + b"e"


def p_call(func: bytes, *args: bytes) -> bytes:
    """REDUCE: ``func(*args)``."""
    return func + p_tuple(*args) + b"R"


NONE, TRUE, FALSE, EMPTY_DICT = b"N", b"\x88", b"\x89", b"}"


def program(body: bytes) -> bytes:
    """A protocol-2 pickle whose value is ``body``."""
    return b"\x80\x02" + body + b"."


def p_forged_array() -> bytes:
    """numpy array of one u8 item whose dtype state carries forged object flags.

    With the real ``numpy.dtype.__setstate__`` the flags make numpy treat the 8 bytes as a
    ``PyObject*`` (0x4141414141414141): reading the item dereferences it (SIGSEGV).
    """
    dtype = p_call(p_global("numpy", "dtype"), p_str("u8"), FALSE, TRUE)
    # (version, byteorder, subarray, names, fields, elsize, alignment, flags): flags 63 =
    # NPY_ITEM_HASOBJECT | NPY_ITEM_REFCOUNT | NPY_LIST_PICKLE | ...
    dtype += p_tuple(p_int(3), p_str("<"), NONE, NONE, NONE, p_int(8), p_int(8), p_int(63)) + b"b"
    array = p_call(
        p_global("numpy._core.multiarray", "_reconstruct"),
        p_global("numpy", "ndarray"),
        p_tuple(p_int(0)),
        p_bytes(b"b"),
    )
    state = p_tuple(p_int(1), p_tuple(p_int(1)), dtype, FALSE, p_bytes(b"A" * 8))
    return array + state + b"b"


def p_image_state(mode: str, width: int, height: int, raw: bytes) -> bytes:
    """A PIL image made by NEWOBJ and filled by BUILD (PIL's own ``__setstate__`` path)."""
    new = p_global("PIL.Image", "Image") + b")\x81"
    state = p_list(
        EMPTY_DICT, p_str(mode), p_tuple(p_int(width), p_int(height)), NONE, p_bytes(raw)
    )
    return new + state + b"b"


def p_legacy_storage(values: np.ndarray) -> bytes:
    """torch's legacy storage bytes (what ``torch.storage._load_from_bytes`` reads)."""
    values = np.ascontiguousarray(values, dtype="<f4")
    records = [
        pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
        pickle.dumps(1001, protocol=2),
        pickle.dumps({"protocol_version": 1001, "little_endian": True}, protocol=2),
        program(
            p_tuple(
                p_str("storage"),
                p_global("torch", "FloatStorage"),
                p_str("0"),
                p_str("cpu"),
                p_int(values.size),
            )
            + b"Q"
        ),
        pickle.dumps(["0"], protocol=2),
    ]
    return b"".join(records) + struct.pack("<q", values.size) + values.tobytes()


def p_tensor(values: np.ndarray, size: tuple[int, ...], stride: tuple[int, ...]) -> bytes:
    storage = p_call(
        p_global("torch.storage", "_load_from_bytes"), p_bytes(p_legacy_storage(values))
    )
    return p_call(
        p_global("torch._utils", "_rebuild_tensor_v2"),
        storage,
        p_int(0),
        p_tuple(*map(p_int, size)),
        p_tuple(*map(p_int, stride)),
        FALSE,
        p_call(p_global("collections", "OrderedDict")),
    )


# ---------------------------------------------------------------- folders and files


def tiny_npz(path: Path, *, side: int = 8, n: int = 20, **overrides: np.ndarray) -> Path:
    """A small valid ``npz:`` data set (grey side x side, 2 classes), fields overridable."""
    rng = np.random.default_rng(0)
    fields = {
        "x_train": rng.integers(0, 256, (n, side, side), dtype=np.uint8),
        "y_train": np.arange(n) % 2,
        "x_test": rng.integers(0, 256, (4, side, side), dtype=np.uint8),
        "y_test": np.arange(4) % 2,
    } | overrides
    with open(path, "wb") as f:
        np.savez(f, **fields)
    return path


def poison_folder(
    folder: Path,
    *,
    poisons: bytes | None = None,
    base: bytes | None = None,
    target: bytes | None = None,
    side_json: str | None = None,
) -> Path:
    """A benchmark poison folder; each file valid unless given crafted bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("L", (8, 8), 7)
    files = {
        "poisons.pickle": poisons or pickle.dumps([(image, 1)], protocol=2),
        "base_indices.pickle": base or pickle.dumps([0], protocol=2),
        "target.pickle": target or pickle.dumps((image, 0), protocol=2),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    if side_json is not None:
        (folder / "poisonlens.json").write_text(side_json)
    return folder


def cifar_folder(folder: Path, data_batch_1: bytes) -> Path:
    """A ``cifar-10-batches-py`` folder whose first train batch is ``data_batch_1``."""
    folder.mkdir(parents=True, exist_ok=True)
    batch = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}
    (folder / "data_batch_1").write_bytes(data_batch_1)
    (folder / "test_batch").write_bytes(pickle.dumps(batch, protocol=2))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": ["a", "b"]}, protocol=2))
    return folder


def image_folder(root: Path, *, side: int = 8) -> Path:
    """A valid ImageFolder: train/{a,b}/0.png, test/{a,b}/0.png."""
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            Image.new("L", (side, side), 40 if c == "a" else 200).save(root / split / c / "0.png")
    return root


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height, with a tiny (wrong) data stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """An ``.npy`` version 1.0 header claiming ``shape`` (no data follows)."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def write_secret(folder: Path) -> Path:
    path = folder / "secret.txt"
    path.write_text(SECRET + "\n")
    return path


def train(dataset: str, poisons: Path | None, folder: Path) -> list[str]:
    args = ["train", "--dataset", dataset, "--epochs", "1", "--quiet"]
    args += ["--runs-dir", str(folder / "runs"), "--name", "case"]
    return args + (["--poisons", str(poisons)] if poisons is not None else [])


def with_poisons(folder: Path, **files: object) -> tuple[list[str], Path]:
    data = tiny_npz(folder / "data.npz")
    poisons = poison_folder(folder / "poisons", **files)
    return train(f"npz:{data}", poisons, folder), poisons


# ---------------------------------------------------------------- the cases
# Class numbers follow issue 9: 1 memory corruption, 2 image classes opening files,
# 3 bombs, 4 folder hangs, 5 tracebacks, 6 silently accepted.


def case_forged_dtype_flags_in_poisons(folder: Path) -> Case:
    args, _ = with_poisons(folder, poisons=program(p_list(p_tuple(p_forged_array(), p_int(1)))))
    return Case(args, ("poisons.pickle", "flags"), classes=(1,))


def case_forged_dtype_flags_in_cifar_batch(folder: Path) -> Case:
    batch = program(EMPTY_DICT + p_str("data") + p_forged_array() + b"s")
    root = cifar_folder(folder / "cifar-10-batches-py", batch)
    return Case(train(f"cifar10:{root}", None, folder), ("data_batch_1", "flags"), classes=(1,))


def case_object_dtype_array(folder: Path) -> Case:
    dtype = p_call(p_global("numpy", "dtype"), p_str("O8"), FALSE, TRUE)
    args, _ = with_poisons(
        folder,
        base=program(
            p_call(p_global("numpy._core.multiarray", "scalar"), dtype, p_bytes(b"A" * 8))
        ),
    )
    return Case(args, ("base_indices.pickle", "'O8'"), classes=(1,))


def case_reduce_on_an_item(folder: Path) -> Case:
    # REDUCE whose callable is an array item: with a forged pointer, a call at a chosen address
    marker = folder / MARKER
    item = p_call(
        p_global("numpy._core.multiarray", "scalar"),
        p_call(p_global("numpy", "dtype"), p_str("u8"), FALSE, TRUE),
        p_bytes(b"A" * 8),
    )
    args, _ = with_poisons(folder, target=program(item + p_tuple(p_str(str(marker))) + b"R"))
    return Case(args, ("target.pickle", "REDUCE"), marker=marker, classes=(1,))


def case_os_system_in_cifar_batch(folder: Path) -> Case:
    marker = folder / MARKER
    batch = program(p_call(p_global("os", "system"), p_str(f"touch {marker}")))
    root = cifar_folder(folder / "cifar-10-batches-py", batch)
    args = train(f"cifar10:{root}", None, folder)
    return Case(args, ("data_batch_1", "os.system"), marker=marker, classes=(1,))


def case_pil_file_class_reads_a_path(folder: Path) -> Case:
    secret = write_secret(folder)
    image = p_call(p_global("PIL.PngImagePlugin", "PngImageFile"), p_str(str(secret)))
    args, _ = with_poisons(folder, target=program(p_tuple(image, p_int(0))))
    return Case(args, ("target.pickle", "PngImageFile"), secret_file=secret, classes=(2,))


def case_pil_file_class_on_a_fifo(folder: Path) -> Case:
    fifo = folder / "pipe.png"
    os.mkfifo(fifo)
    image = p_call(p_global("PIL.JpegImagePlugin", "JpegImageFile"), p_str(str(fifo)))
    args, _ = with_poisons(folder, poisons=program(p_list(p_tuple(image, p_int(1)))))
    return Case(args, ("poisons.pickle", "JpegImageFile"), classes=(2, 4))


def case_bytearray_bomb(folder: Path) -> Case:
    bomb = p_call(p_global("builtins", "bytearray"), p_int(10**12))
    args, _ = with_poisons(folder, target=program(p_tuple(bomb, p_int(0))))
    return Case(args, ("target.pickle", "bytearray"), classes=(3,))


def case_range_list_bomb(folder: Path) -> Case:
    bomb = p_call(
        p_global("builtins", "list"), p_call(p_global("builtins", "range"), p_int(10**10))
    )
    args, _ = with_poisons(folder, base=program(bomb))
    return Case(args, ("base_indices.pickle", "refused"), classes=(3,))


def case_frozenset_bomb(folder: Path) -> Case:
    rng = p_call(p_global("__builtin__", "xrange"), p_int(10**10))  # Python 2 spelling
    args, _ = with_poisons(folder, base=program(p_call(p_global("builtins", "frozenset"), rng)))
    return Case(args, ("base_indices.pickle", "range"), classes=(3,))


def case_pil_setstate_30000_square(folder: Path) -> Case:
    image = p_image_state("L", 30000, 30000, b"\0" * 64)
    args, _ = with_poisons(folder, poisons=program(p_list(p_tuple(image, p_int(1)))))
    return Case(args, ("poisons.pickle", "30000x30000"), classes=(3,))


def case_stride0_tensor_patch(folder: Path) -> Case:
    patch = p_tensor(np.ones(4), (3, 100_000, 100_000), (0, 0, 0))
    target = program(
        p_tuple(p_image_state("L", 8, 8, b"\0" * 64), p_int(0), patch, p_list(p_int(0), p_int(0)))
    )
    args, _ = with_poisons(folder, target=target)
    return Case(args, ("target.pickle", "bytes"), classes=(3,))


def case_stride0_tensor_small_claim(folder: Path) -> Case:
    patch = p_tensor(np.ones(4), (3, 500, 500), (0, 0, 0))
    target = program(
        p_tuple(p_image_state("L", 8, 8, b"\0" * 64), p_int(0), patch, p_list(p_int(0), p_int(0)))
    )
    args, _ = with_poisons(folder, target=target)
    return Case(args, ("target.pickle", "stride"), classes=(3,))


@functools.cache
def zip_bomb_bytes() -> bytes:
    """An .npz of ~1 MiB whose x_train inflates to 1 GiB of zeros (built once per process)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("y_train.npy", _npy_bytes(np.zeros(20, np.int64)))
        with archive.open("x_train.npy", "w", force_zip64=True) as member:
            member.write(npy_header(((1 << 30) // 64, 8, 8)))
            zeros = bytes(1 << 22)
            for _ in range((1 << 30) // len(zeros)):
                member.write(zeros)
    return buffer.getvalue()


def case_zip_bomb_npz(folder: Path) -> Case:
    # 1 GiB of zeros deflates to ~1 MiB: the run would need a GiB if it were decompressed
    path = folder / "bomb.npz"
    path.write_bytes(zip_bomb_bytes())
    return Case(train(f"npz:{path}", None, folder), ("bomb.npz", "zip bomb"), classes=(3,))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def case_npz_header_claims_58_tib(folder: Path) -> Case:
    path = folder / "claims.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x_train.npy", npy_header((58 << 40,)) + b"\0" * 16)
    return Case(train(f"npz:{path}", None, folder), ("claims.npz", "x_train"), classes=(3,))


def case_npy_file_claims_58_tib(folder: Path) -> Case:
    path = folder / "claims.npy"
    path.write_bytes(npy_header((58 << 40,)) + b"\0" * 16)
    data = tiny_npz(folder / "data.npz")
    return Case(train(f"npz:{data}", path, folder), ("claims.npy", ".npy"), classes=(3,))


def case_label_of_a_billion(folder: Path) -> Case:
    path = tiny_npz(folder / "labels.npz", y_train=np.array([10**9] + [0, 1] * 9 + [1]))
    return Case(train(f"npz:{path}", None, folder), ("labels.npz", "classes"), classes=(3,))


def case_poison_label_of_a_billion(folder: Path) -> Case:
    items = program(p_list(p_tuple(p_image_state("L", 8, 8, b"\0" * 64), p_int(10**9))))
    args, _ = with_poisons(folder, poisons=items)
    return Case(args, ("poisons.pickle", "1000000000"), classes=(3,))


def case_huge_png(folder: Path) -> Case:
    root = image_folder(folder / "images")
    png_header_only(root / "train" / "a" / "1.png", 5000, 5000)
    return Case(train(f"imagefolder:{root}", None, folder), ("1.png", "5000x5000"), classes=(3,))


def case_symlink_loop_in_imagefolder(folder: Path) -> Case:
    root = image_folder(folder / "images")
    os.symlink("..", root / "train" / "a" / "loop")
    return Case(train(f"imagefolder:{root}", None, folder), ("loop",), classes=(4,))


def case_symlink_out_of_imagefolder(folder: Path) -> Case:
    secret = write_secret(folder)
    root = image_folder(folder / "images")
    os.symlink(secret, root / "train" / "a" / "1.png")
    args = train(f"imagefolder:{root}", None, folder)
    return Case(args, ("1.png", "outside"), secret_file=secret, classes=(4,))


def case_fifo_png_in_imagefolder(folder: Path) -> Case:
    root = image_folder(folder / "images")
    os.mkfifo(root / "train" / "b" / "1.png")
    return Case(train(f"imagefolder:{root}", None, folder), ("1.png", "regular"), classes=(4,))


def case_fifo_poison_pickle(folder: Path) -> Case:
    args, poisons = with_poisons(folder)
    (poisons / "poisons.pickle").unlink()
    os.mkfifo(poisons / "poisons.pickle")
    return Case(args, ("poisons.pickle", "regular"), classes=(4,))


def case_side_json_nested_100000_deep(folder: Path) -> Case:
    text = '{"extra": ' + "[" * 100_000 + "]" * 100_000 + "}"
    args, _ = with_poisons(folder, side_json=text)
    return Case(args, ("poisonlens.json", "nested"), classes=(5,))


def case_side_json_5000_digit_int(folder: Path) -> Case:
    args, _ = with_poisons(folder, side_json='{"target_index": ' + "9" * 5000 + "}")
    return Case(args, ("poisonlens.json", "digits"), classes=(5,))


def case_base_index_2_pow_63(folder: Path) -> Case:
    args, _ = with_poisons(folder, base=pickle.dumps([2**63], protocol=2))
    return Case(args, ("base_indices.pickle", str(2**63)), classes=(5,))


def case_images_0x0(folder: Path) -> Case:
    path = tiny_npz(
        folder / "empty.npz",
        x_train=np.zeros((20, 0, 0), np.uint8),
        x_test=np.zeros((4, 0, 0), np.uint8),
    )
    return Case(train(f"npz:{path}", None, folder), ("empty.npz", "0x0"), classes=(5,))


def case_images_1x1(folder: Path) -> Case:
    root = image_folder(folder / "images", side=1)
    return Case(train(f"imagefolder:{root}", None, folder), ("images", "1x1"), classes=(5,))


def case_empty_poison_npz(folder: Path) -> Case:
    path = folder / "empty.npz"
    path.write_bytes(b"")
    data = tiny_npz(folder / "data.npz")
    return Case(train(f"npz:{data}", path, folder), ("empty.npz", "npz"), classes=(5,))


def case_truncated_poison_npz(folder: Path) -> Case:
    data = tiny_npz(folder / "data.npz")
    whole = data.read_bytes()
    path = folder / "cut.npz"
    path.write_bytes(whole[: len(whole) // 2])
    return Case(train(f"npz:{data}", path, folder), ("cut.npz", "npz"), classes=(5,))


def case_pickled_image_mode_La(folder: Path) -> Case:
    items = program(p_list(p_tuple(p_image_state("La", 8, 8, b"\0" * 128), p_int(1))))
    args, _ = with_poisons(folder, poisons=items)
    return Case(args, ("poisons.pickle", "'La'"), classes=(5,))


def case_nan_backdoor_patch(folder: Path) -> Case:
    patch = np.full((1, 2, 2), np.nan, np.float32)
    target = pickle.dumps((Image.new("L", (8, 8)), 0, patch, [0, 0]), protocol=2)
    args, _ = with_poisons(folder, target=target)
    return Case(args, ("target.pickle", "NaN"), classes=(6,))


def case_refused_global_name_with_newline(folder: Path) -> Case:
    forged = "system\npoisonlens: all inputs verified"
    args, _ = with_poisons(folder, target=program(p_stack_global("os", forged)))
    return Case(args, ("target.pickle", "\\n"), classes=(5,))


# ---------------------------------------------------------------- round 2: found by attacking
# the readers of round 1 (each failed before its fix in the loader named in its note)


def case_hash_collision_set_of_ints(folder: Path) -> Case:
    # ints k*(2^61-1) all hash to 0: a frozenset of 40,000 of them takes a minute to build
    # (each insertion compares with every earlier key); fixed in safe_pickle's key check
    mersenne = (1 << 61) - 1
    items = b"".join(
        b"\x8a\x28" + (k * mersenne).to_bytes(40, "little", signed=True) for k in range(1, 40_000)
    )
    args, _ = with_poisons(folder, base=program(b"\x8f(" + items + b"\x90"))
    return Case(args, ("base_indices.pickle", "int64"), classes=(3,))


def case_memo_repeats_one_big_image(folder: Path) -> Case:
    # one 2048x2048 image (4 MiB) put in the memo, then 400 references of 2 bytes each:
    # stacking the poisons would allocate 1.6 GiB; fixed by weighing every reference
    image = p_image_state("L", 2048, 2048, bytes(2048 * 2048))
    items = b"](" + p_tuple(image + b"\x94", p_int(1)) + b"\x94" + b"h\x01" * 400 + b"e"
    args, _ = with_poisons(folder, poisons=program(items))
    return Case(args, ("poisons.pickle", "memo"), classes=(3,))


def case_memo_repeats_a_label_list_in_cifar_batch(folder: Path) -> Case:
    # 'labels' is 2,000 references to one list of 100,000 ints: np.asarray makes 1.6 GB
    inner = b"](" + b"K\x00" * 100_000 + b"e\x94"
    labels = b"](" + inner + b"h\x00" * 2000 + b"e"
    data = np.zeros((2, 3072), np.uint8).tobytes()
    batch = program(
        EMPTY_DICT + p_str("labels") + labels + b"s" + p_str("data") + p_bytes(data) + b"s"
    )
    root = cifar_folder(folder / "cifar-10-batches-py", batch)
    args = train(f"cifar10:{root}", None, folder)
    return Case(args, ("data_batch_1", "repeated"), classes=(3,))


def case_memo_bytes_copied_into_many_arrays(folder: Path) -> Case:
    # one 4 MiB string in the memo, then 400 arrays made from it, left on the stack (no
    # container to weigh): each is a real 4 MiB copy, 1.6 GiB in all; fixed by charging
    # every array and image made against twice the file's size
    frombuffer = p_global("numpy._core.numeric", "_frombuffer")
    dtype = p_call(p_global("numpy", "dtype"), p_str("u1"), FALSE, TRUE)
    n = 4 << 20
    array = p_call(frombuffer, b"h\x00", dtype, p_tuple(p_int(n)), p_str("C"))
    target = program(p_bytes(bytes(n)) + b"\x94" + array * 400)
    args, _ = with_poisons(folder, target=target)
    return Case(args, ("target.pickle", "memo bomb"), classes=(3,))


def case_empty_set_flood(folder: Path) -> Case:
    # 3.5 MB of EMPTY_SET opcodes: 370 bytes of objects per byte, 1.3 GB on the stack;
    # fixed by charging each container made against --max-items
    args, _ = with_poisons(folder, target=program(b"\x8f" * 3_500_000 + NONE))
    return Case(args, ("target.pickle", "max-items"), classes=(3,))


def case_mark_flood(folder: Path) -> Case:
    # 16 MB of MARK opcodes: each opens a new stack list (64 bytes per byte, 1 GB)
    args, _ = with_poisons(folder, target=program(b"(" * 16_000_000 + NONE))
    return Case(args, ("target.pickle", "deep"), classes=(3,))


def deflated_zip(members: list[tuple[str, bytes, int, int]], *, claim_size: bool = False) -> bytes:
    """A zip archive of already-deflated members: (name, deflate stream, inflated size, CRC).

    Written by hand so one stream can be reused for many members (no compression per
    case) and so the sizes can lie: with ``claim_size`` each entry claims a compressed
    size equal to its inflated size (ratio 1).
    """
    local_parts, central_parts, offset = [], [], 0
    for name, deflated, size, crc in members:
        raw_name = name.encode()
        claimed = size if claim_size else len(deflated)
        fields = (20, 0, 8, 0, 0, crc, claimed, size, len(raw_name), 0)
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, *fields) + raw_name
        central_parts.append(
            struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, *fields, 0, 0, 0, 0, offset)
            + raw_name
        )
        local_parts.append(local + deflated)
        offset += len(local) + len(deflated)
    central = b"".join(central_parts)
    n = len(members)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, n, n, len(central), offset, 0)
    return b"".join(local_parts) + central + end


def deflated_member(name: str, data: bytes) -> tuple[str, bytes, int, int]:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -15)
    return name, squeeze.compress(data) + squeeze.flush(), len(data), zlib.crc32(data)


@functools.cache
def zeros_npy_deflated(n_bytes: int) -> tuple[str, bytes, int, int]:
    """An .npy member of ``n_bytes`` uint8 zeros, deflated once per process."""
    return deflated_member("x_train.npy", npy_header((n_bytes,)) + bytes(n_bytes))


def case_npz_members_each_under_the_bomb_threshold(folder: Path) -> Case:
    # 70 members of 16 MiB of zeros (16 KiB each deflated): each passes the per-member
    # zip-bomb check, together they are 1.1 GiB; fixed by checking the whole archive's ratio
    _, deflated, size, crc = zeros_npy_deflated((16 << 20) - 256)
    members = [deflated_member("y_train.npy", _npy_bytes(np.zeros(20, np.int64)))]
    members += [(f"x{i}.npy", deflated, size, crc) for i in range(70)]
    path = folder / "many.npz"
    path.write_bytes(deflated_zip(members))
    return Case(train(f"npz:{path}", None, folder), ("many.npz", "zip bomb"), classes=(3,))


def case_npz_member_lies_about_its_compressed_size(folder: Path) -> Case:
    # refused before as "field 'x_train' cannot be read ()" (zipfile ran out of data);
    # now by the sizes the archive declares, before anything is inflated
    path = folder / "liar.npz"
    path.write_bytes(deflated_zip([zeros_npy_deflated(64 << 20)], claim_size=True))
    return Case(train(f"npz:{path}", None, folder), ("liar.npz", "forged"), classes=(3,))


def case_imagefolder_links_to_one_big_png(folder: Path) -> Case:
    # 40 links to one 4096x4096 PNG of one colour (25 KB): 1 MB on disk decoding to 2.2 GB
    # (the cache's array for all images); fixed by checking the decoded total against
    # the files' size before allocating (poisonlens.data.datasets.check_decoded_size)
    root = image_folder(folder / "images", side=4096)
    for i in range(40):
        os.symlink("0.png", root / "train" / "a" / f"link{i}.png")
    args = train(f"imagefolder:{root}", None, folder)
    return Case(args, ("images", "decompression bomb"), classes=(3,))


def case_imagefolder_train_links_out(folder: Path) -> Case:
    # train/ itself a link to a folder outside the data set (someone's pictures): the walk
    # checked links inside class folders only, so the outside images were trained on
    outside = image_folder(folder / "elsewhere")
    root = image_folder(folder / "images")
    shutil.rmtree(root / "train")
    os.symlink(outside / "train", root / "train")
    args = train(f"imagefolder:{root}", None, folder)
    return Case(args, ("train", "outside"), classes=(4,))


def tiff_with_a_tag_past_the_end(side: int) -> bytes:
    """A grey side x side TIFF whose ImageDescription tag points past the end of the file."""
    entries = [  # (tag, type 3 short / 4 long / 2 ascii, count, value)
        (256, 3, 1, side),
        (257, 3, 1, side),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (270, 2, 1000, 100_000),  # 1,000 bytes of description at offset 100,000
        (273, 4, 1, 8 + 2 + 12 * 10 + 4),  # the pixels follow the directory
        (277, 3, 1, 1),
        (278, 3, 1, side),
        (279, 4, 1, side * side),
    ]
    out = b"II*\x00" + struct.pack("<IH", 8, len(entries))
    for tag, kind, count, value in entries:
        # a value fits in the entry's last 4 bytes: a short padded, or a long / an offset
        field = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, count) + field
    return out + struct.pack("<I", 0) + bytes(side * side)


def case_tiff_warning_beside_the_refusal(folder: Path) -> Case:
    # PIL's UserWarning for the bad tag printed two more lines (its own source) on stderr
    # before the one-line refusal (the 6x6 image among 8x8 ones)
    root = image_folder(folder / "images")
    (root / "train" / "a" / "1.png").write_bytes(tiff_with_a_tag_past_the_end(6))
    return Case(train(f"imagefolder:{root}", None, folder), ("1.png", "6x6"), classes=(5,))


def case_eps_named_png_runs_ghostscript(folder: Path) -> Case:
    # PIL opens any format whatever the name: an EPS's load() runs Ghostscript on the
    # file's PostScript. A fake 'gs' first on PATH shows whether it would have run
    marker = folder / MARKER
    bin_dir = folder / "bin"
    bin_dir.mkdir()
    gs = bin_dir / "gs"
    gs.write_text(f"#!/bin/sh\ntouch '{marker}'\necho 10.0\n")
    gs.chmod(0o755)
    root = image_folder(folder / "images")
    eps = "%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nshowpage\n%%EOF\n"
    (root / "train" / "a" / "1.png").write_text(eps)
    args = train(f"imagefolder:{root}", None, folder)
    return Case(
        args, ("1.png", "format"), marker=marker, classes=(1,), extra={"path_prepend": str(bin_dir)}
    )


CASES: dict[str, Callable[[Path], Case]] = {
    name.removeprefix("case_"): fn
    for name, fn in sorted(globals().items())
    if name.startswith("case_") and callable(fn)
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.split("\n\n")[-1], file=sys.stderr)
        return 2
    out = Path(argv[0])
    for name, make in CASES.items():
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        case = make(folder)
        print(json.dumps({"case": name, "args": case.args, "names": case.names}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
