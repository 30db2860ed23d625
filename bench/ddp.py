"""Data-parallel throughput on the CPU: `poisonlens train` as one process against the same run
under `torchrun --nproc-per-node 2` (gloo), side by side, same global batch and seed.

Each configuration is run ``--repeats`` times, alternating, and the median is reported. The
figures come from the runs' own metrics (training pass per epoch, snapshot pass) plus the wall
time of the whole command (process start, data loading and rendezvous included).

Usage: python -m bench.ddp [--dataset imagefolder:../shared/data/cifar10-subset] [--epochs 3]

``--greedi`` measures EPIC's GreeDi selection alone instead (``poisonlens.shared_defense.run_defense``
on a synthetic snapshot, ``--n-samples`` x 10 classes, subset 0.1, ``method=greedi``): one
process with one thread, one process with two threads (``n_jobs=2``) and two gloo processes
of one thread each, alternating; every configuration must reach the same suspects.

Usage: python -m bench.ddp --greedi [--n-samples 200000] [--partition-size 2500]
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
    from poisonlens.store import open_run

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


def greedi_worker(n_samples: int, partition_size: int, n_jobs: int) -> None:
    """One selection, timed on rank 0 (alone or under torchrun); prints one JSON line there."""
    import numpy as np
    import torch

    from bench.select import softmax_minus_onehot
    from poisonlens.collectives import barrier
    from poisonlens.defense.base import Snapshot
    from poisonlens.defense.epic import Epic, select
    from poisonlens.process_group import init_distributed, shutdown
    from poisonlens.shared_defense import run_defense

    torch.set_num_threads(1)
    ctx = init_distributed("cpu")
    grads, labels = softmax_minus_onehot(n_samples)
    active = np.ones(n_samples, dtype=bool)
    epic = Epic(subset_size=0.1, method="greedi", partition_size=partition_size, n_jobs=n_jobs)
    snap = None
    if ctx.is_main:  # as after the snapshot's gather: rank 0 alone holds the rows
        z = np.zeros(n_samples, np.float32)
        snap = Snapshot(0, labels, grads, np.zeros((n_samples, 1), np.float32), z, z, labels)
    # load the compiled kernels from numba's cache before the clock starts
    select(grads[:2000], labels[:2000], method="greedi", partition_size=100)
    barrier()
    t0 = time.perf_counter()
    result = run_defense(ctx, epic, snap, labels, active, n_classes=grads.shape[1])
    seconds = time.perf_counter() - t0
    if result is not None:
        digest = hashlib.sha256(np.packbits(result.suspect).tobytes()).hexdigest()[:12]
        print(json.dumps({"seconds": seconds, "suspects": digest,
                          "n_suspects": int(result.suspect.sum()),
                          "per_rank": result.info.get("partitions_per_rank")}))  # fmt: skip
    shutdown(ctx)


def greedi_run(nproc: int, n_jobs: int, n_samples: int, partition_size: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": str(n_jobs)}
    cmd = ["-m", "bench.ddp", "--greedi-worker", "--n-samples", str(n_samples),
           "--partition-size", str(partition_size), "--n-jobs", str(n_jobs)]  # fmt: skip
    if nproc > 1:
        cmd = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *cmd]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run([sys.executable, *cmd], cwd=REPO, env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
    row["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return row


def greedi_phases(n_samples: int, partition_size: int) -> tuple[float, float]:
    """Seconds of GreeDi's two rounds in this process (one thread): the first round is the
    part the ranks share, the merge and the decision stay on rank 0."""
    import numpy as np

    from bench.select import softmax_minus_onehot
    from poisonlens.defense.epic import EpicConfig, finish_selection, plan, select
    from poisonlens.defense.greedi import run_partitions

    select(*softmax_minus_onehot(2000), method="greedi", partition_size=100)  # warm numba
    grads, labels = softmax_minus_onehot(n_samples)
    active = np.ones(n_samples, dtype=bool)
    config = EpicConfig(subset_size=0.1, method="greedi", partition_size=partition_size)
    t0 = time.perf_counter()
    parts, _ = plan(labels, active=active, config=config, n_classes=grads.shape[1])
    picks = run_partitions(grads, parts)
    t1 = time.perf_counter()
    finish_selection(grads, labels, parts, picks, active=active, config=config)
    return t1 - t0, time.perf_counter() - t1


def greedi_main(args) -> None:
    first, rest = greedi_phases(args.n_samples, args.partition_size)
    configs = [(1, 1), (1, 2), (2, 1)]  # (processes, threads each)
    rows: dict[tuple[int, int], list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        for c in configs if r % 2 == 0 else configs[::-1]:
            rows[c].append(greedi_run(*c, args.n_samples, args.partition_size))
    digests = {x["suspects"] for v in rows.values() for x in v}
    assert len(digests) == 1, f"the configurations chose different suspects: {rows}"
    print(f"EPIC selection (`poisonlens.shared_defense.run_defense`) on softmax - onehot of {args.n_samples:,}"
          f" x 10 classes, subset 0.1, method=greedi, partition_size {args.partition_size}; "
          f"median of {args.repeats} alternating runs, {os.cpu_count()} CPUs, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")  # fmt: skip
    print("| processes x threads | selection s (rank 0, wall) | CPU s of the command "
          "| partitions per rank | suspects |\n|---|---|---|---|---|")  # fmt: skip
    med = {c: statistics.median(x["seconds"] for x in v) for c, v in rows.items()}
    for c, v in rows.items():
        print(f"| {c[0]} x {c[1]} | {med[c]:.2f} | {statistics.median(x['cpu'] for x in v):.1f} "
              f"| {v[0]['per_rank'] or '-'} | {v[0]['n_suspects']} |")  # fmt: skip
    print(f"\n2 processes / 1 process (1 thread each): {med[(1, 1)] / med[(2, 1)]:.2f}x faster; "
          f"1 process with 2 threads: {med[(1, 1)] / med[(1, 2)]:.2f}x; same suspects in every run")
    print(f"one process, one thread: first round (shared by the ranks) {first:.2f} s, merge and "
          f"decision (rank 0) {rest:.2f} s")  # fmt: skip
    print(f"load average during the runs (1/5/15 min): {os.getloadavg()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = f"imagefolder:{SUBSET}" if SUBSET.is_dir() else "digits"
    parser.add_argument("--dataset", default=default)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--greedi", action="store_true", help="time GreeDi's selection instead")
    parser.add_argument("--greedi-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--partition-size", type=int, default=2_500)
    parser.add_argument("--n-jobs", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.greedi_worker:
        return greedi_worker(args.n_samples, args.partition_size, args.n_jobs)
    if args.greedi:
        return greedi_main(args)
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
