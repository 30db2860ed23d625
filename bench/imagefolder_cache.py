"""ImageFolder load: the list-of-PIL-images reader of round 1, the cold load (decode into one
array, then write the cache) and the cached load, side by side, each in a fresh process so its
peak memory is its own.

Usage: python -m bench.imagefolder_cache [--root ../shared/data/cifar10] [--skip-old]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, os, resource, sys, time
from pathlib import Path
import numpy as np
mode, root = sys.argv[1], Path(sys.argv[2])
t0 = time.perf_counter()
if mode == "old":
    from poisonlens.data import datasets as d
    names = sorted(e.name for e in os.scandir(root / "train") if e.is_dir())
    tr, s_tr, _ = d._read_split(root / "train", names, every_class=True)
    te, s_te, _ = d._read_split(root / "test", names, every_class=False)
    x = d.images_to_array(tr + te, s_tr + s_te)
else:
    from poisonlens.data.datasets import load_imagefolder
    x = load_imagefolder(root).x_train
seconds = time.perf_counter() - t0
usage = resource.getrusage(resource.RUSAGE_SELF)
peak = usage.ru_maxrss / 1024  # KB -> MB on Linux
cpu = usage.ru_utime + usage.ru_stime  # the whole process, imports included
print(json.dumps({"seconds": seconds, "cpu": cpu, "peak_mb": peak, "shape": list(x.shape)}))
"""


def run(mode: str, root: Path, cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POISONLENS_CACHE": str(cache)}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode, str(root)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "data" / "cifar10")
    parser.add_argument("--skip-old", action="store_true", help="skip the round-1 reader")
    args = parser.parse_args()
    if not (args.root / "train").is_dir():
        sys.exit(f"poisonlens: {args.root}: no ImageFolder there")
    with tempfile.TemporaryDirectory() as cache:
        rows = [] if args.skip_old else [("round-1 reader (list of PIL images)", "old")]
        rows += [("cold: decode into one array + write cache", "new"), ("cached", "new")]
        print(f"ImageFolder load of {args.root}, cache in a fresh folder, one process per row\n")
        print("| load | seconds | CPU seconds of the process | peak RSS (MB) |\n|---|---|---|---|")
        for label, mode in rows:
            r = run(mode, args.root, Path(cache))
            print(f"| {label} | {r['seconds']:.2f} | {r['cpu']:.2f} | {r['peak_mb']:.0f} |",
                  flush=True)  # fmt: skip
        print(f"\nload average (1/5/15 min): {os.getloadavg()}")
        print(f"\nshape of x_train: {r['shape']}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")


if __name__ == "__main__":
    main()
