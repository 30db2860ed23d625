"""``poisonlens select``: EPIC's selection on saved gradients, decisions to a CSV.

Input: a ``.npz`` with ``grads`` (n_samples x n_classes, softmax - onehot) and ``labels``
(n_samples ints). Output: one row per example, in index order, with the header ``COLUMNS``.
"""

from __future__ import annotations

import argparse
import csv
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from poisonlens.defense.epic_config import (
    EpicConfig,
    check_option,
    describe_range,
    flag_of,
    option_fields,
)
from poisonlens.errors import InputError

if TYPE_CHECKING:  # numpy and numba load only when the command runs, not for --help
    import numpy as np

    from poisonlens.defense.epic import Selection

COLUMNS = ["index", "label", "medoid", "cluster_size", "is_medoid", "isolated", "score"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``poisonlens select``; its EPIC options are generated from :class:`EpicConfig`.

    Parameters
    ----------
    subparsers : the ``poisonlens`` parser's subcommand registry
    """
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
    defaults = EpicConfig()
    for f in option_fields():
        m = f.metadata
        # Values are read as text and checked in run(), so a bad one is one line naming the
        # option (argparse's own type errors print the usage too).
        if m["required"]:
            parser.add_argument(
                flag_of(f),
                dest=f.name,
                required=True,
                metavar=m["metavar"] or f.name.upper(),
                help=f"required: {m['help']} ({describe_range(f)}), e.g. {getattr(defaults, f.name):g}",
            )
            continue
        default = getattr(defaults, f.name)
        shown = f"{default:g}" if isinstance(default, float | int) else default
        choices = "{" + ",".join(m["choices"]) + "}" if m["choices"] else None
        allowed = "" if choices else describe_range(f) + "; "  # choices show in the metavar
        parser.add_argument(
            flag_of(f),
            dest=f.name,
            default=None,
            metavar=m["metavar"] or choices,
            help=f"{m['help']} ({allowed}default: {shown})",
        )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        metavar="DECISIONS.csv",
        help="required: CSV to write, one row per example with the header " + ",".join(COLUMNS),
    )
    parser.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> EpicConfig:
    """The :class:`EpicConfig` the command line asked for.

    Parameters
    ----------
    args : parsed ``poisonlens select`` arguments; each EPIC option is text or None (default)

    Returns
    -------
    EpicConfig

    Raises
    ------
    InputError
        Naming the option (``--subset-size: must be in (0, 1], got 1.5``) for a bad value.
    """
    values = {}
    for f in option_fields():
        text = getattr(args, f.name)
        if text is None:
            continue
        kind = f.metadata["kind"]
        try:
            value = kind(text) if kind is not str else text
        except ValueError:
            what = "an int" if kind is int else "a number"
            raise InputError(flag_of(f), f"must be {what}, got {text!r}") from None
        problem = check_option(f, value)
        if problem:
            raise InputError(flag_of(f), problem)
        values[f.name] = value
    try:
        return EpicConfig(**values)
    except ValueError as err:
        raise InputError("select", str(err)) from None


def run(args: argparse.Namespace) -> int:
    """Run ``poisonlens select``: read the npz, select, write the CSV; 0 on success.

    Parameters
    ----------
    args : parsed arguments (``--input``, the EPIC options, ``--out``)

    Returns
    -------
    exit status 0 (bad input raises :class:`InputError`, which the CLI turns into status 2)
    """
    config = config_from_args(args)
    if args.out.is_dir():
        raise InputError(args.out, "is a folder; give a file name for the CSV")
    if not args.out.parent.is_dir():
        raise InputError(args.out, "its folder does not exist")
    grads, labels = load_grads(args.input)
    from poisonlens.defense.epic import select

    start = time.perf_counter()
    try:
        chosen = select(grads, labels, config=config)
    except ValueError as err:
        raise InputError(args.input, str(err)) from None
    # wall time: chosen.seconds holds each class's, which overlap when classes run in threads
    elapsed = time.perf_counter() - start
    write_decisions(args.out, labels, chosen)
    print(
        f"{len(labels)} examples, {int(chosen.k.sum())} medoids, {int(chosen.isolated.sum())} isolated, "
        f"{int(chosen.drop.sum())} would be dropped (selection {elapsed:.2f} s); wrote {args.out}"
    )
    return 0


def load_grads(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``grads`` and ``labels`` from an npz; InputError naming the file and the problem.

    Parameters
    ----------
    path : the .npz file

    Returns
    -------
    grads : array of shape (n_samples, n_classes), as stored
    labels : array of shape (n_samples,), as stored
    """
    from poisonlens.data.datasets import read_npz

    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as handle:
        if handle.read(6) == b"\x93NUMPY":
            raise InputError(
                path, "is a single .npy array; expected an .npz with 'grads' and 'labels'"
            )
    if not zipfile.is_zipfile(path):
        raise InputError(path, "not a readable .npz archive (not a zip file, or truncated)")
    # the project's bounded reader: sizes checked against the limits before allocating
    arrays = read_npz(path)
    missing = [key for key in ("grads", "labels") if key not in arrays]
    if missing:
        found = ", ".join(arrays) or "nothing"
        raise InputError(path, f"missing array {missing[0]!r} (found: {found})")
    return arrays["grads"], arrays["labels"]


def write_decisions(path: Path, labels: np.ndarray, chosen: Selection) -> None:
    """One CSV row per example in index order; booleans as true/false, score with 9 digits.

    Parameters
    ----------
    path : the CSV to write
    labels : int array of shape (n_samples,)
    chosen : the Selection for those examples
    """
    import numpy as np

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
