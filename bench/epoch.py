"""Time a training epoch with and without gradient snapshots (digits and the CIFAR-10 subset).

    .venv/bin/python -m bench.epoch [--cifar ../shared/data/cifar10-subset] [--epochs 6]

Trains the same run twice per data set: snapshots only at epoch 0 and the last (the floor)
and every 2 epochs; reports the mean epoch time (train + evaluation), the mean snapshot
time and the overhead ratio. Writes bench/results/epoch.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from poisonlens.store import open_run
from poisonlens.train import TrainConfig, train

HERE = Path(__file__).resolve().parent


def measure(config: TrainConfig) -> dict:
    """Train ``config`` into a temporary run; mean and total phase seconds from its metrics."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = open_run(train(config, Path(tmp) / "run", show_progress=False))
        wall = time.perf_counter() - t0
        m = run.metrics()
    trained = m[m.epoch > 0]
    snaps = m[(m.epoch > 0) & (m.snapshot_seconds > 0)]
    return {
        "wall": wall,
        "train": float((trained.epoch_seconds + trained.eval_seconds).mean()),
        "snapshot": float(snaps.snapshot_seconds.mean()) if len(snaps) else 0.0,
        "snapshot_total": float(trained.snapshot_seconds.sum()),
        "train_total": float((trained.epoch_seconds + trained.eval_seconds).sum()),
    }


def main() -> None:
    """Measure digits and the CIFAR-10 subset; write bench/results/epoch.md."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cifar", default=str(HERE.parent.parent / "shared/data/cifar10-subset"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = [("digits", "digits")]
    if (Path(args.cifar) / "train").is_dir():
        cases.append(("cifar10-subset (5,000)", f"imagefolder:{args.cifar}"))
    lines = [
        f"torch threads: {args.threads}; {args.epochs} epochs; smallcnn width 32; batch 128",
        "",
        "| data | epoch (train + eval) | snapshot pass | snapshots every 2 epochs: added time | every epoch |",
        "|---|---|---|---|---|",
    ]
    for label, spec in cases:
        every2 = measure(TrainConfig(dataset=spec, epochs=args.epochs, snapshot_every=2))
        overhead2 = every2["snapshot_total"] / every2["train_total"]
        overhead1 = every2["snapshot"] / every2["train"]
        lines.append(f"| {label} | {every2['train']:.2f} s | {every2['snapshot']:.2f} s | "
                     f"{overhead2:+.1%} | {overhead1:+.1%} |")
        print(lines[-1], flush=True)
    out = HERE / "results" / "epoch.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
