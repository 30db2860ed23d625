"""``poisonlens select``: EPIC's selection on saved gradients, decisions to a CSV.

Input: a ``.npz`` with ``grads`` (n_samples x n_classes, softmax - onehot) and ``labels``
(n_samples ints). Output: one row per example, in index order, with the header ``COLUMNS``.
"""

from __future__ import annotations

import argparse
import csv
import zipfile
from pathlib import Path

import numpy as np

from core.defense.epic import EpicConfig, Selection, select
from core.defense.facility_location import GREEDY, METRICS
from core.errors import InputError

COLUMNS = ["index", "label", "medoid", "cluster_size", "is_medoid", "isolated", "score"]
_DEFAULTS = EpicConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "select",
        help="run EPIC's selection on saved gradients and write its decisions to a CSV",
        description=(
            "Cluster each class's gradients around medoids chosen by greedy facility location "
            "(EPIC) and write, per example, its medoid, cluster size, whether it is an isolated "
            "medoid, and its suspicion score (higher = more suspicious)."
        ),
    )
    parser.add_argument(
        "--input",
        required=True,
        type=Path,
        metavar="GRADS.npz",
        help="required: npz with 'grads' (n_samples x n_classes floats, softmax - onehot) "
        "and 'labels' (n_samples ints)",
    )
    parser.add_argument(
        "--subset-size",
        required=True,
        type=float,
        metavar="FRACTION",
        help="required: medoids as a fraction of the examples, in (0, 1], e.g. 0.1",
    )
    parser.add_argument(
        "--metric",
        choices=METRICS,
        default=_DEFAULTS.metric,
        help="gradient similarity: exp(-distance / n_classes) or cosine (default: %(default)s)",
    )
    parser.add_argument(
        "--greedy",
        choices=GREEDY,
        default=_DEFAULTS.greedy,
        help="lazy = exact greedy; stochastic = stochastic greedy, which changes what is isolated "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--thresh",
        type=float,
        default=_DEFAULTS.cluster_thresh,
        metavar="N",
        help="a medoid is isolated when its cluster has at most N examples (default: %(default)g)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.random_state,
        help="random seed for the budget rounding and stochastic greedy (default: %(default)s)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DECISIONS.csv",
        help="required: CSV to write, one row per example with the header " + ",".join(COLUMNS),
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not 0 < args.subset_size <= 1:
        raise InputError("--subset-size", f"must be in (0, 1], got {args.subset_size}")
    if not args.thresh >= 0:
        raise InputError("--thresh", f"must be >= 0, got {args.thresh}")
    if args.seed < 0:
        raise InputError("--seed", f"must be >= 0, got {args.seed}")
    if not args.out.parent.is_dir():
        raise InputError(args.out, "its folder does not exist")
    grads, labels = load_grads(args.input)
    try:
        chosen = select(
            grads,
            labels,
            subset_size=args.subset_size,
            metric=args.metric,
            greedy=args.greedy,
            cluster_thresh=args.thresh,
            random_state=args.seed,
        )
    except ValueError as err:
        raise InputError(args.input, str(err)) from None
    write_decisions(args.out, labels, chosen)
    print(
        f"{len(labels)} examples, {int(chosen.k.sum())} medoids, {int(chosen.isolated.sum())} isolated, "
        f"{int(chosen.drop.sum())} would be dropped ({chosen.seconds.sum():.2f} s); wrote {args.out}"
    )
    return 0


def load_grads(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``grads`` and ``labels`` from an npz; InputError naming the file and the problem."""
    if not path.is_file():
        raise InputError(path, "no such file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(path, f"not a readable .npz archive ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise InputError(path, "is a single .npy array; expected an .npz with 'grads' and 'labels'")
    with archive:
        missing = [key for key in ("grads", "labels") if key not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "nothing"
            raise InputError(path, f"missing array {missing[0]!r} (found: {found})")
        try:
            return archive["grads"], archive["labels"]
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise InputError(path, f"unreadable array ({err})") from None


def write_decisions(path: Path, labels: np.ndarray, chosen: Selection) -> None:
    """One CSV row per example in index order; booleans as true/false, score with 9 digits."""
    flag = np.array(["false", "true"])
    columns = [
        np.arange(len(labels)),
        labels,
        chosen.medoid,
        chosen.cluster_size,
        flag[chosen.is_medoid.astype(int)],
        flag[chosen.isolated.astype(int)],
        [f"{s:.9g}" for s in chosen.score],
    ]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        writer.writerows(zip(*(np.asarray(c).tolist() for c in columns), strict=True))
