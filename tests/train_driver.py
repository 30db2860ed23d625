"""Runs one training in its own process, for the kill-and-resume tests (tests/test_resume.py).

    python -m tests.train_driver RUN_DIR CONFIG_JSON [--resume]

Registers ``test-slow``: a defense that sleeps ``POISONLENS_TEST_SLEEP`` seconds at every
snapshot (0 when unset) and otherwise suspects nothing, so a test can kill the process at a
known phase.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import torch

from poisonlens.defense.base import DefenseResult, register


@register("test-slow")
class Slow:
    """Sleeps at each snapshot; suspects the first ``k`` active examples."""

    name = "test-slow"

    def __init__(self, k: int = 3):
        self.k = k

    def __call__(self, snapshot, active):
        time.sleep(float(os.environ.get("POISONLENS_TEST_SLEEP", "0")))
        suspect = np.zeros(snapshot.n_samples, dtype=bool)
        suspect[np.flatnonzero(active)[: self.k]] = True
        return DefenseResult(score=np.where(active, 0.0, np.nan), suspect=suspect)


def main(argv: list[str]) -> int:
    from poisonlens.train import TrainConfig, train

    torch.set_num_threads(1)
    run_dir, config = argv[0], TrainConfig.from_json(json.loads(argv[1]))
    train(config, run_dir, resume="--resume" in argv, show_progress=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
