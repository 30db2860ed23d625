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

from core.data.safe_pickle import safe_load
from core.errors import InputError

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
        np.array(["a"]),
    ]
    loaded = safe_load(dump(obj, tmp_path / "a.pickle", protocol))
    for got, want in zip(loaded, obj, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_plain_python_values_load(tmp_path, protocol):
    obj = {"l": [1, 2.5, None, True], "t": (1,), "s": {1}, "f": frozenset({2}), "b": b"\x00\xff"}
    obj |= {"ba": bytearray(b"z"), "c": 1 + 2j, "u": "é"}
    assert safe_load(dump(obj, tmp_path / "v.pickle", protocol)) == obj


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_torch_tensors_load_as_the_benchmark_patch(tmp_path, protocol):
    torch = pytest.importorskip("torch")
    patch = torch.rand(3, 2, 2)
    assert torch.equal(safe_load(dump(patch, tmp_path / "t.pickle", protocol)), patch)


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
    with pytest.raises(InputError, match="not a readable pickle"):
        safe_load(path)


def test_torch_storage_is_loaded_with_weights_only(tmp_path):
    torch = pytest.importorskip("torch")
    # bytes that torch.load(weights_only=False) would run: a pickled payload
    marker = tmp_path / "marker"
    inner = io.BytesIO()
    torch.save(Payload(builtins.open, str(marker), "w"), inner)
    path = dump(Payload(torch.storage._load_from_bytes, inner.getvalue()), tmp_path / "t.pickle", 2)
    with pytest.raises(InputError, match="not a readable pickle"):
        safe_load(path)
    assert not marker.exists()


def test_truncated_pickle_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.pickle"
    path.write_bytes(pickle.dumps([1, 2, 3])[:-3])
    with pytest.raises(InputError, match=f"^{path}: not a readable pickle"):
        safe_load(path)


def test_missing_file_is_an_input_error_naming_it(tmp_path):
    with pytest.raises(InputError, match="cannot read file"):
        safe_load(tmp_path / "absent.pickle")


def test_file_objects_are_named_by_source():
    with pytest.raises(InputError, match="^upload.pickle: refused"):
        safe_load(io.BytesIO(pickle.dumps(Payload(os.system, "x"))), source="upload.pickle")
