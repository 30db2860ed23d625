"""One grid cell in its own process: ``python -m poisonlens.evaluate_worker CONFIG.json RUN_DIR [--resume]``.

``poisonlens evaluate`` starts one of these per run, so a run's numbers never depend on what an
earlier run left behind in the same process (allocator state, thread pools, cached kernels).
"""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str]) -> int:
    """Train one grid run from a config file; return the exit status.

    Parameters
    ----------
    argv : list of str
        ``CONFIG.json RUN_DIR [--resume]``.

    Returns
    -------
    int
        0 on success, 2 on a usage or input error.
    """
    from poisonlens.config import TrainConfig
    from poisonlens.errors import InputError
    from poisonlens.train import train

    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] != "--resume"):
        print("usage: python -m poisonlens.evaluate_worker CONFIG.json RUN_DIR [--resume]", file=sys.stderr)
        return 2
    config_path, run_dir = Path(argv[0]), Path(argv[1])
    try:
        config = TrainConfig.from_json_text(config_path.read_text())
        train(config, run_dir, resume=len(argv) == 3, show_progress=False)
    except InputError as err:
        print(f"poisonlens: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
