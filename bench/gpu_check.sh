#!/usr/bin/env bash
# The GPU check: ResNet-18 on the whole of CIFAR-10 under EPIC (subset 0.1), 2 epochs, a snapshot
# each epoch, on CUDA; then the run's checkpoint is resumed on the CPU.
#
#   bench/gpu_check.sh          # one GPU (python)
#   bench/gpu_check.sh 4        # 4 GPUs on this machine (torchrun --nproc-per-node 4)
#
# Prints images/s of training, snapshot and selection seconds per epoch, peak GPU memory per
# process, and whether the CPU resume of the GPU checkpoint gives the same weights and logits.
# Environment: CIFAR (ImageFolder with train/ and test/, default ../shared/data/cifar10),
# PYTHON (default .venv/bin/python, else python3), AMP (off|bf16|fp16, default off),
# BATCH (global batch size, default 128). Exits 0 with a message where there is no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
CIFAR=${CIFAR:-../shared/data/cifar10}
NGPUS=${1:-}

if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check: no CUDA device on this machine; nothing to check (run it where there is a GPU)"
    exit 0
fi
if [ ! -d "$CIFAR/train" ]; then
    echo "gpu_check: CIFAR-10 not found at $CIFAR (set CIFAR=<ImageFolder with train/ and test/>)" >&2
    exit 2
fi
if [ -n "$NGPUS" ] && ! [[ "$NGPUS" =~ ^[1-9][0-9]*$ ]]; then
    echo "gpu_check: the argument is the number of GPUs (got '$NGPUS')" >&2
    exit 2
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
cat >"$WORK/check.py" <<'PYEOF'
import os
import sys
import time
from pathlib import Path

import torch

from poisonlens.models import build_model
from poisonlens.store import CHECKPOINTS, open_run
from poisonlens.train import TrainConfig, train

cifar, run_dir, step = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
rank = int(os.environ.get("RANK", "0"))
config = TrainConfig(
    dataset=f"imagefolder:{cifar}", model="resnet18", defense="epic",
    defense_params={"subset_size": 0.1}, epochs=2, snapshot_every=1, drop_after=1,
    batch_size=int(os.environ.get("BATCH", "128")), snapshot_batch_size=1024,
    device="auto", amp=os.environ.get("AMP", "off"),
)
if step == "train":
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    train(config, run_dir, show_progress=False)
    wall = time.perf_counter() - t0
    print(f"rank {rank}: peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
          f"({torch.cuda.get_device_name()}); whole run (data load included) {wall:.1f} s", flush=True)
    sys.exit(0)
# step 'report' (one plain process, after training ended on every rank)
run = open_run(run_dir)
m = run.metrics().set_index("epoch")
n = len(run.examples())
seen = n + int(m.loc[1, "n_active"])  # epoch 1 trains on all, epoch 2 on what epoch 1 kept
print(f"training: {seen / m.loc[1:, 'epoch_seconds'].sum():,.0f} images/s "
      f"(epochs {', '.join(f'{s:.1f} s' for s in m.loc[1:, 'epoch_seconds'])}; amp {config.amp})")
for epoch, row in m.iterrows():
    print(f"epoch {epoch}: snapshot {row.snapshot_seconds:.2f} s, selection {row.defense_seconds:.2f} s, "
          f"eval {row.eval_seconds:.2f} s, test acc {row.test_acc:.3f}, dropped {int(row.n_dropped)}")

# CPU resume: last.pt is at the final epoch, so the resumed run loads it on the CPU, trains no
# epoch, and writes model.pt again from the CPU copy.
gpu = torch.load(run_dir / CHECKPOINTS / "model.pt", map_location="cpu", weights_only=True)
t0 = time.perf_counter()
train(config, run_dir, resume=True, device="cpu", show_progress=False)
cpu = torch.load(run_dir / CHECKPOINTS / "model.pt", map_location="cpu", weights_only=True)
same = gpu.keys() == cpu.keys() and all(torch.equal(gpu[k], cpu[k]) for k in gpu)
x = torch.rand(64, 3, 32, 32)
nets = []
for device in ("cuda", "cpu"):
    net = build_model("resnet18", n_classes=10, in_channels=3)
    net.load_state_dict(cpu)
    nets.append(net.to(device).eval())
with torch.no_grad():
    diff = (nets[0](x.cuda()).cpu() - nets[1](x)).abs().max().item()
ok = same and diff < 1e-2 and open_run(run_dir).status == "finished"
print(f"CPU resume of the GPU checkpoint: {'ok' if ok else 'FAILED'} "
      f"(weights identical: {same}; logits GPU vs CPU max diff {diff:.2e}; {time.perf_counter() - t0:.1f} s)")
sys.exit(0 if ok else 1)
PYEOF

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ -n "$NGPUS" ]; then
    "$PY" -m torch.distributed.run --standalone --nproc-per-node "$NGPUS" \
        "$WORK/check.py" "$CIFAR" "$WORK/run" train
else
    "$PY" "$WORK/check.py" "$CIFAR" "$WORK/run" train
fi
"$PY" "$WORK/check.py" "$CIFAR" "$WORK/run" report
