"""Training at scale on the CPU: the trainer against plain PyTorch, side by side in one run.

    .venv/bin/python -m bench.train_scale [--quick] [--cifar ../shared/data/cifar10]

Measures, and writes to bench/results/train_scale.md (train_scale-quick.md with --quick):

1. one training epoch of the trainer (``poisonlens train``'s loop: uint8 batches, the run
   store, epoch 0 and 1 snapshots around it; its ``epoch_seconds``) against a plain PyTorch
   loop of the same model over the same uint8 array (a dozen lines: shuffle, convert, step),
   both without augmentation, alternated ``--reps`` times; goal <= 1.10x;
2. a snapshot (forward passes + softmax - onehot + the Parquet file written) against one
   plain eval-mode forward pass over the training set, on the same model; goal <= 1.15x;
3. peak resident memory of a whole 1-epoch run (``train()`` in its own process, its VmHWM)
   on synthetic 32x32x3 npz sets of N = 50,000 and 1,000,000 images; goal < 8 GB.

``--parts`` picks measurements (e.g. ``--parts 3 --sizes 1000000``); a partial run writes
train_scale-partN.md.

The whole of CIFAR-10 (50,000 training images) is decoded once and handed to both loops as
the same npz. ``--quick`` uses the 5,000-image subset and N = 50,000 / 200,000.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = REPO.parent / "shared" / "data"


def cifar_npz(source: Path, out: Path) -> tuple[Path, float, int]:
    """Decode an ImageFolder once into ``out`` (npz); returns the path, seconds, n_train."""
    from poisonlens.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(f"imagefolder:{source}")
    seconds = time.perf_counter() - t0
    np.savez(out, x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
    return out, seconds, len(ds.y_train)


def plain_epoch(npz: Path, *, width: int, batch_size: int, seed: int = 0) -> float:
    """Seconds of one epoch of a plain PyTorch loop over the uint8 training array."""
    from poisonlens.models import build_model

    data = np.load(npz)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"].astype(np.int64))
    torch.manual_seed(seed)
    model = build_model("smallcnn", n_classes=10, in_channels=3, width=width)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    t0 = time.perf_counter()
    for idx in torch.randperm(len(y), generator=torch.Generator().manual_seed(seed)).split(batch_size):
        xb = x[idx].permute(0, 3, 1, 2).float().div_(255.0).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def trainer_epoch(npz: Path, run_dir: Path, *, width: int, batch_size: int, augment: str) -> dict:
    """The trainer on ``npz`` for 1 epoch (snapshots at 0 and 1); its phase seconds from metrics."""
    from poisonlens.store import open_run
    from poisonlens.train import TrainConfig, train

    config = TrainConfig(dataset=f"npz:{npz}", epochs=1, width=width, batch_size=batch_size,
                         augment=augment, device="cpu", snapshot_every=1)  # fmt: skip
    t0 = time.perf_counter()
    train(config, run_dir, show_progress=False)
    wall = time.perf_counter() - t0
    row = open_run(run_dir).metrics().set_index("epoch").loc[1]
    return {"wall": wall, **{k: float(row[k]) for k in ("epoch_seconds", "snapshot_seconds")}}


def snapshot_vs_forward(npz: Path, out_dir: Path, *, width: int, batch_size: int) -> dict:
    """Seconds of one plain eval forward pass and of a full snapshot (with its Parquet file)."""
    from poisonlens.defense.base import DefenseResult
    from poisonlens.models import build_model
    from poisonlens.phases import snapshot_table
    from poisonlens.snapshot import take_snapshot
    from poisonlens.store import RunWriter

    data = np.load(npz)
    x, y = data["x_train"], data["y_train"].astype(np.int64)
    torch.manual_seed(0)
    model = build_model("smallcnn", n_classes=10, in_channels=3, width=width)
    model = model.to(memory_format=torch.channels_last).eval()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(x), batch_size):
            xb = torch.from_numpy(x[s : s + batch_size]).permute(0, 3, 1, 2).float().div_(255.0)
            model(xb.contiguous(memory_format=torch.channels_last))
    forward = time.perf_counter() - t0
    t0 = time.perf_counter()
    snap, _ = take_snapshot(model, x, y, epoch=1, batch_size=batch_size)
    n = len(y)
    result = DefenseResult(score=np.zeros(n), suspect=np.zeros(n, bool))
    active, dropped = np.ones(n, bool), np.full(n, -1, np.int64)
    table = snapshot_table(snap, result, active, dropped, np.zeros(n, bool), None)
    RunWriter(out_dir).write_snapshot_columns(1, table)
    return {"forward": forward, "snapshot": time.perf_counter() - t0}


def synthetic_npz(path: Path, n: int, seed: int = 0) -> Path:
    """Random 32x32x3 uint8 images in 10 classes (n train, 1,000 test), written in chunks."""
    rng = np.random.default_rng(seed)
    tmp = path.with_suffix(".x.npy")
    x = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, 32, 32, 3))
    for s in range(0, n, 100_000):
        x[s : s + 100_000] = rng.integers(0, 256, size=x[s : s + 100_000].shape, dtype=np.uint8)
    x.flush()
    np.savez(path, x_train=x, y_train=rng.integers(0, 10, n).astype(np.int64),
             x_test=rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8),
             y_test=rng.integers(0, 10, 1000).astype(np.int64))  # fmt: skip
    del x
    tmp.unlink()
    return path


def peak_rss(npz: Path, run_dir: Path, *, width: int) -> dict:
    """Peak resident memory (bytes, the process's VmHWM) and wall time of a 1-epoch run in its
    own process."""
    code = (
        "import sys, torch; torch.set_num_threads(1)\n"
        "from poisonlens.train import TrainConfig, train\n"
        "train(TrainConfig(dataset='npz:' + sys.argv[1], epochs=1, width=int(sys.argv[3]),"
        " batch_size=1024, snapshot_batch_size=2048, snapshot_every=1, device='cpu'), sys.argv[2],"
        " show_progress=False)\n"
        # VmHWM is this process image's own high-water mark; wait4's ru_maxrss would also count
        # the parent's, which the child inherits through vfork + exec.
        "print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code, str(npz), str(run_dir), str(width)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    ok = proc.returncode == 0
    rss = int(out.decode().split()[-1]) * 1024 if ok else 0
    return {"rss": rss, "wall": wall, "ok": ok, "error": "" if ok else err.decode()[-500:]}


def main() -> None:
    """Parse the options, run the three measurements and write the results table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="CIFAR-10 subset, N up to 200,000")
    parser.add_argument("--cifar", default=None, help="ImageFolder of CIFAR-10 (default: shared data)")
    parser.add_argument("--reps", type=int, default=2, help="alternated repetitions of each loop")
    parser.add_argument("--width", type=int, default=32, help="smallcnn width for parts 1 and 2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--sizes", default=None, help="N for part 3, comma-separated")
    parser.add_argument("--parts", default="1,2,3", help="which measurements, e.g. 3 or 1,2")
    parser.add_argument("--rss-width", type=int, default=2, help="smallcnn width for part 3")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cifar = Path(args.cifar or SHARED / ("cifar10-subset" if args.quick else "cifar10"))
    sizes = [int(s) for s in (args.sizes or ("50000,200000" if args.quick else "50000,1000000")).split(",")]
    lines = [
        f"# Training at scale (`python -m bench.train_scale{' --quick' if args.quick else ''}`)",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs; torch {torch.__version__}, 1 thread; smallcnn "
        f"width {args.width}, batch {args.batch_size}, CPU.",
        "",
    ]
    parts = {int(p) for p in args.parts.split(",")}
    with tempfile.TemporaryDirectory(prefix="train_scale-") as tmp:
        tmp = Path(tmp)
        if parts & {1, 2}:
            lines += cifar_parts(args, cifar, tmp)
        if 3 in parts:
            lines += memory_part(sizes, tmp, width=args.rss_width)
    name = "train_scale" + ("-quick" if args.quick else "") + ("" if parts == {1, 2, 3} else "-part" + "".join(map(str, sorted(parts))))
    out = HERE / "results" / f"{name}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps({"wrote": str(out)}))


def cifar_parts(args: argparse.Namespace, cifar: Path, tmp: Path) -> list[str]:
    """Parts 1 and 2 on the CIFAR-10 ImageFolder ``cifar``; returns the report's lines."""
    lines: list[str] = []
    npz, load_s, n = cifar_npz(cifar, tmp / "cifar.npz")
    print(f"decoded {cifar} ({n:,} training images) in {load_s:.1f} s", flush=True)
    plain, trainer = [], []
    for rep in range(args.reps):
        plain.append(plain_epoch(npz, width=args.width, batch_size=args.batch_size))
        trainer.append(trainer_epoch(npz, tmp / f"run{rep}", width=args.width,
                                     batch_size=args.batch_size, augment="none"))  # fmt: skip
        print(f"rep {rep}: plain {plain[-1]:.1f} s, trainer {trainer[-1]['epoch_seconds']:.1f} s "
              f"(run wall {trainer[-1]['wall']:.1f} s)", flush=True)
    snaps = [snapshot_vs_forward(npz, tmp / f"snap{rep}", width=args.width, batch_size=128)
             for rep in range(args.reps)]  # fmt: skip
    for s in snaps:
        print(f"forward {s['forward']:.1f} s, snapshot {s['snapshot']:.1f} s", flush=True)
    p, t = min(plain), min(r["epoch_seconds"] for r in trainer)
    each_t = ", ".join(f"{r['epoch_seconds']:.1f} s" for r in trainer)
    each_wall = ", ".join(f"{r['wall']:.1f} s" for r in trainer)
    each_f = ", ".join(f"{x['forward']:.1f} s" for x in snaps)
    each_s = ", ".join(f"{x['snapshot']:.1f} s" for x in snaps)
    f, s = min(x["forward"] for x in snaps), min(x["snapshot"] for x in snaps)
    lines += [
        f"## 1. One training epoch on {cifar.name} ({n:,} images, no augmentation)",
        "",
        "| loop | epoch (each rep) | best | ratio |",
        "|---|---|---|---|",
        f"| plain PyTorch over the uint8 array | {', '.join(f'{x:.1f} s' for x in plain)} | {p:.1f} s | 1.00x |",
        f"| poisonlens trainer (`epoch_seconds`) | "
        f"{each_t} | {t:.1f} s | **{t / p:.2f}x** (goal <= 1.10x) |",
        "",
        f"Whole trainer runs (load, epoch-0 and epoch-1 snapshots, evaluation, run store): "
        f"{each_wall}. ImageFolder decode: {load_s:.1f} s.",
        "",
        "## 2. Snapshot against one plain forward pass over the training set",
        "",
        "| pass | each rep | best | ratio |",
        "|---|---|---|---|",
        f"| plain eval forward (no_grad, batch 128) | {each_f} | {f:.1f} s | 1.00x |",
        f"| snapshot: forward + softmax - onehot + Parquet file | "
        f"{each_s} | {s:.1f} s | **{s / f:.2f}x** (goal <= 1.15x) |",
        "",
    ]
    return lines


def memory_part(sizes: list[int], tmp: Path, *, width: int) -> list[str]:
    """Part 3: peak RSS of 1-epoch runs on synthetic npz sets; returns the report's lines."""
    lines = [
        "## 3. Peak resident memory of a 1-epoch run (synthetic 32x32x3 npz)",
        "",
        f"smallcnn width {width} (memory is the data's, not the model's; a narrow model keeps the 1M "
        "run short on a shared CPU), batch 1,024, snapshots at epochs 0 and 1, no defense; "
        "`train()` in its own process, peak RSS = its VmHWM at the end. Importing poisonlens and torch "
        "alone takes about 1 GB.",
        "",
        "| N | uint8 pixels | peak RSS | per image | run wall |",
        "|---|---|---|---|---|",
    ]
    for size in sizes:
        path = synthetic_npz(tmp / f"synthetic-{size}.npz", size)
        r = peak_rss(path, tmp / f"rss-{size}", width=width)
        path.unlink()
        status = "" if r["ok"] else f" (failed: {r['error'].strip().splitlines()[-1:]})"
        lines.append(f"| {size:,} | {size * 3072 / 1e9:.2f} GB | {r['rss'] / 1e9:.2f} GB{status} | "
                     f"{r['rss'] / size / 1e3:.1f} KB | {r['wall']:.0f} s |")  # fmt: skip
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
