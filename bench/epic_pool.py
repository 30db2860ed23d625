"""How much EPIC-0.2 drops under two selection pools and two schedules, offline.

    .venv/bin/python -m bench.epic_pool RUN_DIR

RUN_DIR is an undefended run (``none``) with a snapshot every epoch, e.g. a cell of the
whole-of-CIFAR-10 grid. Its snapshots stand for the victim's training, and EPIC-0.2's selection
is replayed on them with a drop kept for good. Two pools are tried: ``active``, which clusters the
examples still in training, and ``all``, which clusters every example, as the authors' script
does. Two schedules are tried: T = 1 from epoch 2 to 29, and T = 5 at epochs 5 to 25. Each line
gives the examples and poisons dropped. This is an approximation, because a real defended run's
later gradients would follow from its own drops. A drop count close to a real run's shows the
replay holds (docs/epic.md, "Which examples a selection clusters").
"""
import sys
import time

import numpy as np

from poisonlens.defense.epic import select
from poisonlens.store import open_run

run = open_run(sys.argv[1])
ex = run.examples()
labels = ex["label"].to_numpy(np.int64)
poison = ex["is_poison"].to_numpy(bool)
schedules = {"T=1 from 2 to 29": list(range(2, 30)), "T=5 at 5..25": [5, 10, 15, 20, 25]}
have = set(run.snapshot_epochs())
cache = {}
def grads(e):
    if e not in cache:
        cache[e] = np.asarray(run.gradients(e), np.float32)
    return cache[e]
for name, epochs in schedules.items():
    for pool in ("active", "all"):
        active = np.ones(len(labels), bool)
        t0 = time.perf_counter()
        for e in epochs:
            if e not in have:
                continue
            sel = select(grads(e), labels, active=None if pool == "all" else active, subset_size=0.2)
            active &= ~sel.drop
        print(f"{name:18s} pool={pool:6s}: dropped {(~active).sum():6d} ({(~active).mean():.1%}), "
              f"poisons dropped {(~active[poison]).sum()} of {poison.sum()}  [{time.perf_counter()-t0:.0f} s]", flush=True)
