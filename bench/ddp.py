"""Data-parallel throughput on the CPU: `poisonlens train` as one process against the same run
under `torchrun --nproc-per-node 2` (gloo), side by side, same global batch and seed.

Each configuration is run ``--repeats`` times, alternating, and the median is reported. The
figures come from the runs' own metrics (training pass per epoch, snapshot pass) plus the wall
time of the whole command (process start, data loading and rendezvous included).

Usage: python -m bench.ddp [--dataset imagefolder:../shared/data/cifar10-subset] [--epochs 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
POISONLENS = str(Path(sys.executable).parent / "poisonlens")
SUBSET = REPO.parent / "shared" / "data" / "cifar10-subset"


def one_run(nproc: int, args: list[str], runs: Path, name: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    train = [POISONLENS, "train", *args, "--runs-dir", str(runs), "--name", name, "--quiet"]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        train = [*launcher, f"--nproc-per-node={nproc}", "--no-python", *train]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(train, cwd=REPO, env=env, check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter() - t0
    # CPU time of every process of the command (torchrun's workers are waited for by its
    # agent, so they count): on a shared machine, wall time also measures the neighbours
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    from core.store import open_run

    m = open_run(runs / name).metrics()
    trained = m[m["epoch"] > 0]
    return {
        "wall": wall,
        "cpu": cpu,
        "epoch": float(trained["epoch_seconds"].median()),
        "images_per_s": float((trained["n_active"] / trained["epoch_seconds"]).median()),
        "snapshot": float(m.loc[m["snapshot_seconds"] > 0, "snapshot_seconds"].median()),
        "acc": float(m["test_acc"].iloc[-1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = f"imagefolder:{SUBSET}" if SUBSET.is_dir() else "digits"
    parser.add_argument("--dataset", default=default)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    train_args = ["--dataset", args.dataset, "--defense", "epic", "--device", "cpu",
                  "--epochs", str(args.epochs), "--snapshot-every", "1",
                  "--batch-size", str(args.batch_size)]  # fmt: skip
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for nproc in (1, 2) if r % 2 == 0 else (2, 1):
                results[nproc].append(one_run(nproc, train_args, Path(tmp), f"p{nproc}-{r}"))
    med = {k: {f: statistics.median(x[f] for x in v) for f in v[0]} for k, v in results.items()}
    print(f"`poisonlens train --dataset {args.dataset} --defense epic --epochs {args.epochs} "
          f"--snapshot-every 1 --batch-size {args.batch_size} --device cpu`, "
          f"median of {args.repeats} alternating runs, OMP_NUM_THREADS=1, "
          f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    print("| processes | training images/s | epoch (train pass) s | snapshot s | whole command s "
          "| CPU s of the command | final test acc |\n|---|---|---|---|---|---|---|")  # fmt: skip
    for k in (1, 2):
        m = med[k]
        print(f"| {k} | {m['images_per_s']:.0f} | {m['epoch']:.2f} | {m['snapshot']:.2f} "
              f"| {m['wall']:.1f} | {m['cpu']:.1f} | {m['acc']:.3f} |")  # fmt: skip
    ratio = med[2]["images_per_s"] / med[1]["images_per_s"]
    print(f"\n2 processes / 1 process, training throughput: {ratio:.2f}x; "
          f"snapshot: {med[1]['snapshot'] / med[2]['snapshot']:.2f}x faster; "
          f"CPU time: {med[2]['cpu'] / med[1]['cpu']:.2f}x")
    print(f"load average during the runs (1/5/15 min): {os.getloadavg()}")


if __name__ == "__main__":
    main()
