"""``poisonlens project``: precompute a run's 2-D gradient map, as the dashboard would on first open."""

from __future__ import annotations

import argparse
import os
import sys
import time

from poisonlens.errors import one_line
from poisonlens.projection import METHODS, PLACEMENTS, compute_projection, write_job


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``project`` subcommand and its options to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        Subcommands of ``poisonlens``. This one's options: the run, the layout method, how
        many rows it is fitted on, how the others are placed, the device, the seed.
    """
    p = sub.add_parser(
        "project",
        help="precompute the 2-D gradient map the dashboard shows",
        description="Fit one 2-D layout on the gradients of every snapshot of a run and "
        "store it in <run>/projections/<method>.parquet.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--run", required=True, help="run directory")
    p.add_argument("--method", choices=METHODS, default="umap", help="layout method")
    p.add_argument(
        "--max-fit",
        type=int,
        default=5000,
        help="most gradient rows the layout is fitted on (the rest are placed by --placement)",
    )
    p.add_argument(
        "--placement",
        choices=PLACEMENTS,
        default="parametric",
        help="how UMAP places every row: parametric = a small MLP trained on the fitted layout places every row "
        "(linear, fast); knn = the distance-weighted mean of the 10 nearest fitted rows (the placement before). "
        "UMAP's compiled code is cached in $POISONLENS_CACHE/numba (default ~/.cache/poisonlens/numba)",
    )
    p.add_argument("--device", default=None, help="where the parametric map runs: cpu or cuda (default: CUDA when "
                   "there is one)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subsample and of UMAP")
    p.add_argument("--quiet", action="store_true", help="no progress messages")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Compute and store a run's 2-D gradient map; return 0.

    Progress goes to standard error and to the job file the dashboard polls.

    Parameters
    ----------
    args : argparse.Namespace
        ``run``, ``method`` (umap or pca), ``max_fit`` (rows the layout is fitted on),
        ``placement``, ``device``, ``seed`` and ``quiet``.
    """
    started, last = time.time(), [0.0]

    def progress(fraction: float, message: str) -> None:
        if time.time() - last[0] > 0.3:  # the dashboard shows this job's progress live
            last[0] = time.time()
            write_job(args.run, args.method, state="running", fraction=round(fraction, 3),
                      message=message, pid=os.getpid(), started=started)
        if not args.quiet:
            print(f"[{fraction:4.0%}] {message}", file=sys.stderr, flush=True)

    frame = compute_projection(
        args.run,
        method=args.method,
        max_fit=args.max_fit,
        random_state=args.seed,
        progress=progress,
        placement=args.placement,
        device=args.device,
    )
    print(
        f"{frame['epoch'].nunique()} snapshots, {len(frame):,} points -> {one_line(args.run)}/projections/{args.method}.parquet"
    )
    return 0
