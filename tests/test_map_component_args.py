"""The map component's Python side: what it hands the frame (the browser side is tested in
tests/test_map_points_browser.py and, through AppTest, tests/test_map.py)."""

from __future__ import annotations

import hashlib
import inspect
import json

import numpy as np

from poisonlens.dashboard.components import gradient_map as gm


def test_framed_puts_a_digest_in_front_and_hashes_a_large_file_once():
    data = np.arange(1 << 19, dtype=np.float32).tobytes()  # 2 MiB: kept
    out = gm.framed(data)
    assert out[:gm.HEADER] == hashlib.blake2b(data, digest_size=gm.HEADER).digest() and out[gm.HEADER:] == data
    assert gm.framed(data) is out  # the same object again: not hashed again
    other = bytes(bytearray(data))  # equal bytes, another object: framed afresh, the same result
    assert other is not data and gm.framed(other) == out and gm.framed(other) is not out
    changed = bytearray(data)
    changed[len(data) // 3] ^= 1  # one byte away from the head, middle and tail Streamlit fingerprints
    assert gm.framed(bytes(changed))[:gm.HEADER] != out[:gm.HEADER]


def test_framed_keeps_few_files():
    files = [np.full(1 << 19, k, np.float32).tobytes() for k in range(6)]
    for data in files:
        gm.framed(data)
    assert len(gm._FRAMED) <= 4
    assert gm.framed(b"small") == hashlib.blake2b(b"small", digest_size=gm.HEADER).digest() + b"small"


def test_the_points_arguments_are_json_and_name_what_the_frame_reads():
    view = gm.PointsView("/media/c.bin", ["#112233", "#00000000"], ["class 0", ""], [{"name": "class 0", "color": "#112233"}],
                         [{"name": "poison (2)", "symbol": "circle", "color": "#000", "size": 6.0, "index": [3, 9]}],
                         [np.float32(-1.5), np.float64(2.0)], [0, 1], target=[np.float32(0.25), 1.0])
    where = gm.Positions("/media/p.bin", np.int64(2), np.int64(1_000_000))
    args = {**where.args(), **view.args()}
    assert json.loads(json.dumps(args)) == args  # numpy scalars turned into JSON numbers
    assert args["slot"] == 2 and args["n_samples"] == 1_000_000 and args["x_range"] == [-1.5, 2.0]
    assert args["target"] == [0.25, 1.0] and gm.PointsView(*list(vars(view).values())[:7]).args()["target"] is None
    # what points.js and map.js read from a render message
    assert {"positions", "slot", "n_samples", "colors", "palette", "names", "legend", "overlays", "x_range",
            "y_range", "target"} <= set(args)


def test_the_component_functions_take_at_most_six_parameters():
    for fn in (gm.gradient_map, gm.gradient_points):
        assert len(inspect.signature(fn).parameters) <= 6, fn.__name__


def test_quantized_positions_stay_within_half_a_step_and_mark_missing_ones():
    rng = np.random.default_rng(0)
    xy = rng.normal(scale=5.0, size=(3, 1000, 2)).astype(np.float32)
    xy[1, 7] = np.nan  # an example without a position at one snapshot
    data, (x0, dx, y0, dy) = gm.quantized_positions(xy)
    codes = np.frombuffer(data, "<u2").reshape(xy.shape)
    assert len(data) == xy.size * 2  # half of float32
    assert (codes[1, 7] == gm.QUANT_MISSING).all() and (np.delete(codes.reshape(-1, 2), 1007, axis=0) < gm.QUANT_MISSING).all()
    back = np.stack([x0 + codes[..., 0] * dx, y0 + codes[..., 1] * dy], axis=-1)
    placed = np.isfinite(xy).all(-1)
    assert np.abs(back[placed] - xy[placed]).max(axis=0).tolist() <= [dx / 2 + 1e-6, dy / 2 + 1e-6]
    assert codes[..., 0][placed].min() == 0 and codes[..., 0][placed].max() == gm.QUANT_MISSING - 1  # the whole range
    assert gm.quantized_positions(xy)[0] is data  # the same array again: not quantized again
