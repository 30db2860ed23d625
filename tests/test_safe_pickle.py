"""The allow-list unpickler reads images, arrays and plain values, and runs nothing else."""

from __future__ import annotations

import builtins
import copyreg
import io
import os
import pickle
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from poisonlens.data.safe_pickle import safe_load, safe_loads
from poisonlens.errors import InputError
from poisonlens.limits import Limits

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def dump(obj: object, path: Path, protocol: int) -> Path:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return path


class Payload:
    """Unpickling calls ``func(*args)``: what an attacker's pickle would do."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_pil_images_load_with_their_pixels(tmp_path, protocol, mode):
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    image = Image.fromarray(pixels).convert(mode)
    loaded = safe_load(dump([(image, 3)], tmp_path / "p.pickle", protocol))
    assert loaded[0][1] == 3
    assert loaded[0][0].mode == mode
    np.testing.assert_array_equal(np.asarray(loaded[0][0]), np.asarray(image))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_images_opened_from_png_and_jpeg_files_load(tmp_path, protocol):
    images = []
    for fmt in ("PNG", "JPEG"):
        buffer = io.BytesIO()
        Image.new("RGB", (3, 2), (10, 20, 30)).save(buffer, fmt)
        images.append(Image.open(buffer))
    loaded = safe_load(dump(images, tmp_path / "p.pickle", protocol))
    assert [np.asarray(im).shape for im in loaded] == [(2, 3, 3), (2, 3, 3)]


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy_arrays_and_scalars_load(tmp_path, protocol):
    obj = [
        np.arange(6, dtype=np.uint8).reshape(2, 3),
        np.float32([0.5]),
        np.int64(7),
        np.array([[1.5, -2]], dtype=">f8"),  # big-endian: read in native order, same values
        np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    ]
    loaded = safe_load(dump(obj, tmp_path / "a.pickle", protocol))
    for got, want in zip(loaded, obj, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype.newbyteorder("=")
        if isinstance(got, np.ndarray):  # a fresh array, never a view of the file's bytes
            assert got.flags.c_contiguous and got.flags.writeable and got.flags.owndata


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_text_and_object_arrays_are_refused(tmp_path, protocol):
    # only bool, integer and float arrays: no object pointers, no fields
    for obj, dtype in ((np.array(["a"]), "U1"), (np.array([None, 1]), "O8")):
        with pytest.raises(InputError, match=f"numpy dtype '{dtype}'; only bool"):
            safe_load(dump(obj, tmp_path / "a.pickle", protocol))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plain_python_values_load(tmp_path, protocol):
    obj = {"l": [1, 2.5, None, True], "t": (1,), "s": {1}, "f": frozenset({2}), "b": b"\x00\xff"}
    obj |= {"ba": bytearray(b"z"), "c": 1 + 2j, "u": "é"}
    assert safe_load(dump(obj, tmp_path / "v.pickle", protocol)) == obj


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_torch_tensors_load_as_numpy_arrays_for_the_benchmark_patch(tmp_path, protocol):
    torch = pytest.importorskip("torch")
    patch = torch.rand(3, 2, 2)
    loaded = safe_load(dump(patch, tmp_path / "t.pickle", protocol))
    assert isinstance(loaded, np.ndarray) and loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, patch.numpy())


def test_python2_cifar_style_pickle_loads_with_latin1(tmp_path):
    # a protocol-2 pickle with py2 str data, as in cifar-10-batches-py
    data = b"\x80\x02}q\x00U\x04dataq\x01U\x02\x01\xffq\x02s."
    path = tmp_path / "batch"
    path.write_bytes(data)
    assert safe_load(path, encoding="latin1") == {"data": "\x01\xff"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_payload_creating_a_file_is_refused_and_not_run(tmp_path, protocol):
    marker = tmp_path / "marker"
    path = dump([Payload(builtins.open, str(marker), "w")], tmp_path / "evil.pickle", protocol)
    with pytest.raises(InputError, match="refused to unpickle 'io.open'"):
        safe_load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload, name",
    [
        (Payload(os.system, "touch MARKER"), f"{os.system.__module__}.system"),
        (Payload(builtins.eval, "open('MARKER', 'w')"), "builtins.eval"),
        (Payload(builtins.exec, "open('MARKER', 'w')"), "builtins.exec"),
        (Payload(subprocess.Popen, ["touch", "MARKER"]), "subprocess.Popen"),
        (Payload(getattr, [], "clear"), "builtins.getattr"),
    ],
)
def test_dangerous_globals_are_refused_naming_file_and_global(tmp_path, monkeypatch, payload, name):
    monkeypatch.chdir(tmp_path)
    path = dump(payload, tmp_path / "evil.pickle", 2)
    with pytest.raises(InputError) as err:
        safe_load(path)
    assert str(err.value).startswith(f"{path}: refused to unpickle '{name}'")
    assert not (tmp_path / "MARKER").exists()


def test_hand_written_protocol0_global_is_refused(tmp_path):
    path = tmp_path / "evil.pickle"
    path.write_bytes(b"cos\nsystem\n(S'touch MARKER'\ntR.")
    with pytest.raises(InputError, match="'os.system'"):
        safe_load(path)


def test_extension_registry_does_not_bypass_the_allow_list(tmp_path):
    code = 0x7FFF0001
    copyreg.add_extension(os.system.__module__, "system", code)
    try:
        path = dump(os.system, tmp_path / "ext.pickle", 2)
        with pytest.raises(InputError, match="refused"):
            safe_load(path)
    finally:
        copyreg.remove_extension(os.system.__module__, "system", code)


def test_codecs_encode_only_decodes_latin1(tmp_path):
    path = tmp_path / "codec.pickle"
    path.write_bytes(b"c_codecs\nencode\n(Vx\nVrot13\ntR.")
    with pytest.raises(InputError, match="_codecs.encode is only read for latin-1"):
        safe_load(path)


def test_torch_storage_bytes_holding_a_payload_are_refused(tmp_path):
    torch = pytest.importorskip("torch")
    # bytes that torch.load(weights_only=False) would run: a pickled payload
    marker = tmp_path / "marker"
    inner = io.BytesIO()
    torch.save(Payload(builtins.open, str(marker), "w"), inner)
    path = dump(Payload(torch.storage._load_from_bytes, inner.getvalue()), tmp_path / "t.pickle", 2)
    with pytest.raises(InputError, match="persistent id|refused"):
        safe_load(path)
    assert not marker.exists()


def test_truncated_pickle_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(InputError, match=f"^{path}: not a readable pickle"):
        safe_load(path)


def test_missing_file_is_an_input_error_naming_it(tmp_path):
    with pytest.raises(InputError, match="absent.pickle: no such file"):
        safe_load(tmp_path / "absent.pickle")


def test_file_objects_are_named_by_source():
    with pytest.raises(InputError, match="^upload.pickle: refused"):
        safe_load(io.BytesIO(pickle.dumps(Payload(os.system, "x"))), source="upload.pickle")


# ---------------------------------------------------------------- steering attempts (issue 9)


def crafted(name: str) -> bytes:
    from tests.bad_inputs import make_corpus as c

    bodies = {
        "forged flags": c.p_forged_array(),
        "file class": c.p_call(c.p_global("PIL.PngImagePlugin", "PngImageFile"), c.p_str("/etc")),
        "bytearray(n)": c.p_call(c.p_global("builtins", "bytearray"), c.p_int(10**12)),
        "huge image": c.p_image_state("RGB", 30000, 30000, b""),
        "stride 0": c.p_tensor(np.ones(4), (2, 2), (0, 0)),
        "newline": c.p_stack_global("os", "system\nINFO all good"),
    }
    return c.program(bodies[name])


@pytest.mark.parametrize(
    "name, message",
    [
        ("forged flags", "numpy dtype 'u8' with fields or flags set"),
        ("file class", "calling 'PIL.PngImagePlugin.PngImageFile' is not allowed"),
        ("bytearray(n)", r"bytearray\(\) of something other than bytes"),
        ("huge image", "PIL image of 30000x30000 pixels, more than the limit"),
        ("stride 0", r"torch tensor with stride \(0, 0\)"),
        ("newline", r"refused to unpickle 'os.system\\nINFO all good'"),
    ],
)
def test_crafted_pickles_are_refused_before_building_anything(name, message):
    with pytest.raises(InputError, match=f"^evil.pickle: {message}"):
        safe_loads(crafted(name), source="evil.pickle")


def test_a_list_that_holds_itself_is_refused():
    lst: list = []
    lst.append(lst)
    with pytest.raises(InputError, match="holds itself"):
        safe_loads(pickle.dumps(lst, protocol=2))


def test_a_container_changed_after_use_is_refused():
    # [a, a] then APPEND into a: a's nesting would grow behind the outer list's back
    data = b"\x80\x02]q\x00h\x00h\x00\x86q\x01h\x00h\x01a."
    with pytest.raises(InputError, match="changed after it was used"):
        safe_loads(data)


def test_nesting_and_item_counts_are_bounded():
    deep: list = [1]
    for _ in range(40):
        deep = [deep]
    with pytest.raises(InputError, match="nested more than 32 deep"):
        safe_loads(pickle.dumps(deep))
    with pytest.raises(InputError, match="more than 100 container items"):
        safe_loads(pickle.dumps(list(range(200))), limits=Limits(max_items=100))


def test_loaded_images_never_hold_a_file_name():
    buffer = io.BytesIO()
    Image.new("L", (2, 2)).save(buffer, "PNG")
    image = Image.open(buffer)
    image.filename = "/etc/passwd"
    loaded = safe_loads(pickle.dumps(image))
    assert type(loaded) is Image.Image and not getattr(loaded, "filename", "")


def test_python2_numpy_array_as_cifar_batches_hold_it_loads():
    # what Python 2's cPickle wrote for CIFAR-10: numpy.core names, pixels as a py2 str
    raw = bytes([0, 255, 7, 128, 1, 2])
    data = (
        b"\x80\x02}(U\x04datacnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        b"K\x00\x85U\x01b\x87R(K\x01K\x02K\x03\x86cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89U\x06" + raw + b"tb"
        b"U\x06labels](K\x00K\x01eu."
    )
    batch = safe_loads(data, encoding="latin1")
    assert batch["labels"] == [0, 1]
    np.testing.assert_array_equal(batch["data"], np.frombuffer(raw, np.uint8).reshape(2, 3))


# ---------------------------------------------------------------- round 2: what the memo makes cheap


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_keys_that_cannot_collide_by_design_are_read(protocol):
    value = {"a": 1, b"b": 2, 3: 3, -(2**63): 4, 2.5: 5, None: 6, True: 7}
    assert safe_loads(pickle.dumps(value, protocol=protocol)) == value
    assert safe_loads(pickle.dumps({1, 2**63 - 1, "x"}, protocol=protocol)) == {1, 2**63 - 1, "x"}


@pytest.mark.parametrize("key", [5 * (2**61 - 1), (1, 2), 1j, frozenset({1})])
def test_keys_whose_hash_a_file_can_choose_are_refused(key):
    # ints past int64 hash as n mod 2^61-1; tuples, complex and frozensets combine hashes a
    # file can solve for: a set of 40,000 such keys takes minutes to build
    with pytest.raises(InputError, match="dict key or set item"):
        safe_loads(pickle.dumps({key: 0}, protocol=2))
    with pytest.raises(InputError, match="dict key or set item"):
        safe_loads(pickle.dumps([{key}], protocol=4))


def test_one_image_referenced_many_times_is_refused():
    image = Image.new("L", (512, 512))
    data = pickle.dumps([(image, 1)] * 50, protocol=4)  # the memo stores the pair once
    assert len(data) < 300_000
    with pytest.raises(InputError, match="memo bomb"):
        safe_loads(data)


def test_a_few_repeated_references_within_the_file_size_are_read():
    # the same small array twice, and a string repeated: honest pickles do this
    a = np.arange(10)
    loaded = safe_loads(pickle.dumps({"x": [a, a], "names": ["cat"] * 100}, protocol=4))
    np.testing.assert_array_equal(loaded["x"][1], a)
    assert loaded["names"] == ["cat"] * 100


def test_a_list_repeated_past_max_items_is_refused():
    inner = list(range(1000))
    data = pickle.dumps([inner] * 200, protocol=4)  # 200,000 items for numpy to flatten
    with pytest.raises(InputError, match="repeated references"):
        safe_loads(data, limits=Limits(max_items=100_000))
    assert len(safe_loads(data)) == 200


def test_a_flood_of_marks_is_refused_at_the_depth_limit():
    with pytest.raises(InputError, match="nested more than 32 deep"):
        safe_loads(b"\x80\x02" + b"(" * 1000 + b"N.")
