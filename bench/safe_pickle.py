"""The pickle reader against the standard library's, on the two pickles poisonlens reads.

    .venv/bin/python -m bench.safe_pickle [--repeats 5]

Side by side, in this process, on the same bytes (median of ``--repeats`` loads each):

- a CIFAR-10 training batch as the original files hold it (a dict of 10,000 x 3072 uint8
  ``data`` and 10,000 ``labels``; protocol 2, so the pixels travel as latin-1 text);
- a benchmark ``poisons.pickle`` of 5,000 32x32 RGB PIL images with labels (protocol 4).

``pickle.loads`` is the reference (it is what reading these files cost before, and it
builds from the file's own globals, which poisonlens no longer does). Prints the ratio
safe / reference; timings on a shared machine are noisy, the ratio much less so.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import numpy as np
from PIL import Image

from poisonlens.data.safe_pickle import safe_loads


def cifar_batch() -> bytes:
    rng = np.random.default_rng(0)
    batch = {
        "data": rng.integers(0, 256, (10_000, 3072), dtype=np.uint8),
        "labels": [int(v) for v in rng.integers(0, 10, 10_000)],
    }
    return pickle.dumps(batch, protocol=2)


def poisons_pickle() -> bytes:
    rng = np.random.default_rng(1)
    items = [
        (Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)), int(i % 10))
        for i in range(5_000)
    ]
    return pickle.dumps(items, protocol=4)


def median_seconds(load, data: bytes, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        load(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| pickle | size | pickle.loads | safe_loads | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, data, encoding in (
        ("CIFAR-10 batch (protocol 2)", cifar_batch(), "latin1"),
        ("poisons.pickle, 5,000 images (protocol 4)", poisons_pickle(), "ASCII"),
    ):
        ref = median_seconds(lambda d, e=encoding: pickle.loads(d, encoding=e), data, args.repeats)
        ours = median_seconds(lambda d, e=encoding: safe_loads(d, encoding=e), data, args.repeats)
        print(
            f"| {name} | {len(data) / 1e6:.1f} MB | {ref * 1e3:.0f} ms | {ours * 1e3:.0f} ms "
            f"| {ours / ref:.2f} |"
        )


if __name__ == "__main__":
    main()
