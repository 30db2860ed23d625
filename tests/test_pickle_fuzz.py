"""Fuzzing the pickle reader: mutated benchmark pickles either load within the limits or are
refused with an InputError; nothing else escapes, and the process never crashes."""

from __future__ import annotations

import pickle
import pickletools
import random
import sys
import tracemalloc
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from poisonlens.data.safe_pickle import safe_loads
from poisonlens.errors import InputError
from poisonlens.limits import Limits
from tests.untrusted import run_python

# small limits, so a mutation that slips past a check would show as a breach here
LIMITS = Limits(
    max_array_bytes=1 << 20,
    max_total_bytes=4 << 20,
    max_images=64,
    max_pixels_per_image=64 * 64,
    max_depth=8,
    max_items=20_000,
)
PEAK_BYTES = 64 << 20  # what one load may allocate in all, far above any legitimate seed


def seeds() -> list[bytes]:
    """Valid pickles of what the benchmark format holds, in several protocols."""
    rng = np.random.default_rng(0)
    palette = Image.new("P", (5, 4))
    palette.putpalette(list(range(48)))
    items = [
        (Image.fromarray(rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)), 3),
        (Image.new("L", (5, 4), 9), 1),
        (palette, 2),
    ]
    target = (Image.new("RGB", (5, 4)), 0, np.full((3, 2, 2), 0.5, np.float32), [1, 1])
    batch = {"data": rng.integers(0, 256, (2, 12), dtype=np.uint8), "labels": [0, 1]}
    objects = [items, target, [3, 1, 4], np.arange(6, dtype=np.int64), batch, {"s": {1, 2}}]
    return [pickle.dumps(o, protocol=p) for o in objects for p in (0, 2, 4, 5)]


SEEDS = seeds()
OPCODE_BYTES = sorted({op.code.encode("latin1") for op in pickletools.opcodes})


def opcode_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every opcode of a valid pickle."""
    ops = list(pickletools.genops(data))
    starts = [pos for _, _, pos in ops] + [len(data)]
    return list(zip(starts, starts[1:], strict=False))


def walk(obj: object, depth: int = 0, seen: set | None = None) -> tuple[int, int]:
    """(deepest nesting, array bytes) of a loaded value, each object counted once."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return depth, 0
    seen.add(id(obj))
    if isinstance(obj, np.ndarray):
        assert obj.dtype.kind in "biuf" and obj.flags.c_contiguous
        return depth, obj.nbytes
    if isinstance(obj, Image.Image):
        assert obj.mode in ("L", "RGB", "RGBA", "P")
        assert obj.width * obj.height <= LIMITS.max_pixels_per_image
        return depth, 0
    if isinstance(obj, dict):
        children = [*obj.keys(), *obj.values()]
    elif isinstance(obj, (list, tuple, set, frozenset)):
        children = list(obj)
    else:
        return depth, 0
    deepest, total = depth + 1, 0
    for child in children:
        d, n = walk(child, depth + 1, seen)
        deepest, total = max(deepest, d), total + n
    return deepest, total


def load_within_limits(data: bytes) -> None:
    """Load ``data``; it must succeed within the limits or raise InputError, nothing else."""
    tracemalloc.start()
    try:
        try:
            value = safe_loads(data, source="fuzz.pickle", encoding="latin1", limits=LIMITS)
        except InputError as err:
            assert "\n" not in str(err)
            return
        finally:
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"one load allocated {peak:,} bytes"
    depth, array_bytes = walk(value)
    assert depth <= LIMITS.max_depth
    assert array_bytes <= LIMITS.max_total_bytes


def test_every_seed_loads():
    for data in SEEDS:
        load_within_limits(data)
        assert safe_loads(data, encoding="latin1") is not None


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    edits=st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=6),
    cut=st.none() | st.integers(0, 1 << 16),
)
def test_byte_mutations_load_or_are_refused(seed, edits, cut):
    data = bytearray(seed)
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut is not None:
        del data[cut % len(data) :]
    load_within_limits(bytes(data))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.sampled_from(SEEDS),
    ops=st.lists(
        st.tuples(
            st.sampled_from(["swap", "delete", "repeat", "move"]),
            st.integers(0, 1 << 16),
            st.integers(0, 1 << 16),
            st.sampled_from(OPCODE_BYTES),
        ),
        min_size=1,
        max_size=4,
    ),
)
def test_opcode_mutations_load_or_are_refused(seed, ops):
    # edits that keep opcodes whole: the reader sees well-formed opcodes in a wrong program
    data = seed
    for kind, i, j, code in ops:
        spans = opcode_spans(data) if _parses(data) else [(k, k + 1) for k in range(len(data))]
        a, b = spans[i % len(spans)]
        c, d = spans[j % len(spans)]
        if kind == "swap":  # another opcode in the same place, arguments kept
            data = data[:a] + code + data[a + 1 :]
        elif kind == "delete":
            data = data[:a] + data[b:]
        elif kind == "repeat":  # an opcode 1-50 times more: DUP, APPEND, BUILD, ...
            data = data[:b] + data[a:b] * (1 + j % 50) + data[b:]
        else:  # an opcode moved elsewhere
            data = data[:c] + data[a:b] + data[c:] if c < a else data[:a] + data[b:]
        if not data:
            return
    load_within_limits(data)


def _parses(data: bytes) -> bool:
    try:
        with warnings.catch_warnings():  # pickletools warns on an invalid escape in STRING
            warnings.simplefilter("ignore")
            for _ in pickletools.genops(data):
                pass
        return True
    except Exception:  # a mutated stream: fall back to byte positions
        return False


def mutants(n: int, seed: int = 0) -> list[bytes]:
    """``n`` mutated seeds, deterministic (for the subprocess batch)."""
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        data = bytearray(rnd.choice(SEEDS))
        for _ in range(rnd.randint(1, 4)):
            if not data:
                break
            choice = rnd.random()
            pos = rnd.randrange(len(data))
            if choice < 0.5:
                data[pos] = rnd.randrange(256)
            elif choice < 0.75:
                data[pos:pos] = rnd.choice(OPCODE_BYTES) * rnd.randint(1, 20)
            else:
                del data[pos : pos + rnd.randint(1, 8)]
        out.append(bytes(data))
    return out


CHILD = """
import sys
from pathlib import Path
from poisonlens.data.safe_pickle import safe_loads
from poisonlens.errors import InputError
loaded = refused = 0
for path in sorted(Path(sys.argv[1]).iterdir()):
    try:
        safe_loads(path.read_bytes(), source=path.name, encoding="latin1")
        loaded += 1
    except InputError:
        refused += 1
print(f"done {loaded} loaded {refused} refused")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="uses /proc")
def test_a_batch_of_mutants_never_crashes_the_process(tmp_path):
    # in a child process, so a segfault (the failure mode of a forged numpy dtype) would show
    folder = tmp_path / "mutants"
    folder.mkdir()
    batch = mutants(2000)
    for i, data in enumerate(batch):
        (folder / f"{i:04d}.pickle").write_bytes(data)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    result = run_python([str(script), str(folder)], timeout=300, cpu_timeout=60, max_rss_mb=1024)
    assert result.returncode == 0 and result.killed is None, result.stderr[-2000:]
    assert result.stdout.startswith("done"), result.stdout
    loaded, refused = (int(w) for w in result.stdout.split()[1::2])
    assert loaded + refused == len(batch) and refused > 0


def test_the_forged_dtype_corpus_case_is_refused_in_process():
    from tests.bad_inputs.make_corpus import p_forged_array, p_int, p_list, p_tuple, program

    with pytest.raises(InputError, match="flags"):
        safe_loads(program(p_list(p_tuple(p_forged_array(), p_int(1)))))


def test_the_seeds_cover_what_the_benchmark_format_holds():
    kinds = {type(safe_loads(s, encoding="latin1")).__name__ for s in SEEDS}
    assert {"list", "tuple", "ndarray", "dict"} <= kinds
