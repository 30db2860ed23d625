"""``poisonlens craft``: craft a poison set for one target and write it in both poison formats.

The output folder holds the benchmark's pickles (``poisons.pickle``, ``base_indices.pickle``,
``target.pickle``, ``poisonlens.json``), the same set as ``poisons.npz``, and, for attacks that
use one, the attacker's surrogate as ``surrogate.pt`` (for ``--scenario finetune/transfer``);
with ``--control``, the clean control (poisons restored to their bases) in ``control/``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields, replace
from pathlib import Path

import numpy as np

from poisonlens.errors import InputError

NPZ_FILE = "poisons.npz"
SURROGATE_FILE = "surrogate.pt"
CONTROL_DIR = "control"


def add_parser(subparsers) -> None:
    """Add the ``craft`` subcommand and its options to ``subparsers``.

    Parameters
    ----------
    subparsers : argparse._SubParsersAction
        What ``ArgumentParser.add_subparsers()`` returned for the ``poisonlens`` command.
    """
    p = subparsers.add_parser(
        "craft",
        help="craft a poison set (gradient matching, bullseye polytope, feature collision, "
        "patch backdoor, label flip)",
        description="Craft poisons that make the test image --target-index be predicted as --adv-class. "
        "Never uses test images other than the target. Writes the poisonlens .npz and the "
        "poisoning benchmark's pickle folder into --out.",
    )
    _add_goal_options(p)
    _add_attack_options(p)
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--control", action="store_true",
                   help="also write the clean control to <out>/control: the same target and rows with "
                        "every poison restored to its base image and label")
    p.add_argument("--overwrite", action="store_true", help="replace a poison set already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def _add_goal_options(p: argparse.ArgumentParser) -> None:
    # what is attacked: the data set, the target and its adversarial class, the budget
    p.add_argument(
        "--dataset",
        default="digits",
        help="data set: {formats} (default: %(default)s)",
    )
    p.add_argument(
        "--target-index", type=int, required=True, help="index of the target in the test split"
    )
    p.add_argument(
        "--adv-class",
        type=int,
        required=True,
        help="class the target should be predicted as (not its own label)",
    )
    p.add_argument(
        "--budget",
        type=float,
        default=0.01,
        help="poisons as a fraction of the training set (default: %(default)s)",
    )


def _add_attack_options(p: argparse.ArgumentParser) -> None:
    # how it is attacked: the attack, its parameters, the surrogate and the device
    p.add_argument(
        "--attack",
        default="gradient-matching",
        help="{attacks} (default: %(default)s)",
    )
    p.add_argument(
        "--eps",
        type=float,
        default=None,
        help="l-inf radius in 0-255 pixel units (gradient-matching, bullseye-polytope, "
        "feature-collision) (default: the attack's own, 16, 8 and 8)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for bases, surrogates and restarts (default: %(default)s)",
    )
    p.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another attack parameter, VALUE in JSON (repeatable), e.g. restarts=4, "
        "ensemble=2, 'surrogate_epochs=[10,20,40]', bases=closest; parameters and their "
        "defaults are in docs/attacks.md",
    )
    p.add_argument(
        "--surrogate",
        default=None,
        help="a model.pt (e.g. a clean run's checkpoints/model.pt) to craft against instead of "
        "training surrogates; its architecture is given by the model/width params "
        "(default: train them)",
    )
    p.add_argument(
        "--device",
        default="auto",
        help="where surrogates train and poisons are optimised: auto (CUDA when present), cpu, "
        "cuda, cuda:N or mps (default: %(default)s)",
    )


def parse_params(items: list[str]) -> dict:
    """``["restarts=4", "surrogate_epochs=[10,20]"]`` -> ``{"restarts": 4, "surrogate_epochs": (10, 20)}``.

    Values are read as JSON; a value that is not JSON is kept as a string; lists become tuples.

    Parameters
    ----------
    items : list of str
        The ``--param`` values, each ``KEY=VALUE``; dashes in KEY become underscores.

    Returns
    -------
    dict
        Parameter name -> value, ready for :func:`poisonlens.attacks.build_attack`.
    """
    params = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError("--param", f"expected KEY=VALUE, got {item!r}")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        params[key.strip().replace("-", "_")] = tuple(value) if isinstance(value, list) else value
    return params


def run(args: argparse.Namespace) -> int:
    """Craft a poison set and write it to ``--out``.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``craft`` options (see :func:`add_parser`).

    Returns
    -------
    int
        0; a bad input raises :class:`InputError` (one line, exit code 2).
    """
    from poisonlens.attacks import AttackGoal, check_within_eps, clean_control
    from poisonlens.attacks.base import validate_goal
    from poisonlens.data import load_dataset
    from poisonlens.device import resolve_device

    device = resolve_device(args.device)
    out = Path(args.out)
    if (out / NPZ_FILE).exists() and not args.overwrite:
        raise InputError(
            out, "already holds a poison set; pass --overwrite or choose another --out"
        )
    attack = _attack(args)
    dataset = load_dataset(args.dataset)
    goal = AttackGoal(
        target_index=args.target_index,
        adv_label=args.adv_class,
        budget=args.budget,
        random_state=args.seed,
    )
    validate_goal(dataset, goal)  # before any surrogate is trained
    surrogates = _surrogates(args, attack, dataset, device)
    poisons = attack(dataset, goal, surrogates=surrogates, show_progress=not args.quiet)
    poisons = replace(
        poisons,
        extra={
            **poisons.extra,
            "params": asdict(attack),
            "budget": args.budget,
            "seed": args.seed,
            "dataset": args.dataset,
        },
    )

    check_within_eps(poisons, dataset, source="crafted poisons")
    largest = write_both(poisons, out, dataset)
    if args.control:
        write_both(clean_control(poisons, dataset), out / CONTROL_DIR, dataset)
    print(summary(poisons, largest, out))
    return 0


def _attack(args: argparse.Namespace):
    """The attack ``--attack`` names, with ``--param`` and ``--eps`` applied."""
    from poisonlens.attacks import attack_class, build_attack

    params = parse_params(args.param)
    if args.eps is not None:
        if "eps" not in {f.name for f in fields(attack_class(args.attack))}:
            raise InputError(
                "--eps", f"attack {args.attack} has no eps (its poisons are not l-inf bounded)"
            )
        params["eps"] = args.eps
    return build_attack(args.attack, **params)


def _surrogates(args: argparse.Namespace, attack, dataset, device) -> list | None:
    """The models to craft against (loaded or trained), saved to ``--out``; None for attacks without."""
    from poisonlens.attacks.surrogate import load_surrogate, save_surrogate, train_surrogates

    out = Path(args.out)
    if args.surrogate and not attack.needs_surrogate:
        raise InputError("--surrogate", f"attack {args.attack} uses no surrogate")
    if not attack.needs_surrogate:
        (out / SURROGATE_FILE).unlink(missing_ok=True)
        return None
    if args.surrogate:
        surrogates = [load_surrogate(args.surrogate, dataset, attack, device)]
        final = surrogates[0]
    else:
        surrogates = train_surrogates(
            dataset, attack, random_state=args.seed, show_progress=not args.quiet, device=device,
        )
        final = surrogates[len(set(attack.surrogate_epochs)) - 1]  # first surrogate, fully trained
    out.mkdir(parents=True, exist_ok=True)
    save_surrogate(final, out / SURROGATE_FILE)  # the model a fine-tuning victim starts from
    return surrogates


def write_both(poisons, folder: Path, dataset) -> float:
    """Write the benchmark folder and ``poisons.npz``, read both back and check the eps ball again.

    Parameters
    ----------
    poisons : PoisonSet
        The set to write.
    folder : Path
        Where the benchmark's pickles and ``poisons.npz`` go (created).
    dataset : ImageDataset
        The clean data set the bases come from (to check the eps ball).

    Returns
    -------
    float
        The largest change of a poison from its base, 0-255 units.
    """
    from poisonlens.attacks import check_within_eps
    from poisonlens.data import load_poisons
    from poisonlens.data.poisons import save_poisons_folder, save_poisons_npz

    folder.mkdir(parents=True, exist_ok=True)
    save_poisons_folder(poisons, folder)
    save_poisons_npz(poisons, folder / NPZ_FILE)
    for written in (folder, folder / NPZ_FILE):  # what a victim will read must still be inside the ball
        reloaded = load_poisons(written)
        if not np.array_equal(reloaded.x, poisons.x):
            raise RuntimeError(f"{written}: poisons changed on the way to disk")
        largest = check_within_eps(reloaded, dataset, source=str(written))
    return largest


def summary(poisons, largest: float, out: Path) -> str:
    """One paragraph: what was written and how far the attack got.

    Parameters
    ----------
    poisons : PoisonSet
        The crafted set; its ``extra`` holds the attack's figures.
    largest : float
        The largest change of a poison from its base, 0-255 units.
    out : Path
        The output folder (a control or surrogate found there is mentioned).

    Returns
    -------
    str
    """
    bound = "unbounded" if poisons.eps is None else f"eps {poisons.eps:g}"
    lines = [
        f"wrote {poisons.n_poisons} {poisons.attack} poisons ({bound}, largest change {largest:g}/255) "
        f"for target {poisons.target_index} (class {poisons.target_label} -> {poisons.adv_label}) to {out}"
    ]
    extra = poisons.extra
    if "alignment" in extra:
        lines.append(
            f"gradient alignment {extra['alignment_start']:.3f} -> {extra['alignment']:.3f} "
            f"({extra['n_surrogates']} surrogate(s), {extra['seconds']:.0f} s)"
        )
    if "feature_distance" in extra:
        lines.append(
            f"relative feature distance {extra['feature_distance_start']:.3f} -> "
            f"{extra['feature_distance']:.3f} ({extra['seconds']:.0f} s)"
        )
    if (out / CONTROL_DIR / NPZ_FILE).exists():
        lines.append(f"clean control: {out / CONTROL_DIR} (train it beside the attack with the same settings)")
    if (out / SURROGATE_FILE).exists():
        lines.append(
            f"surrogate: {out / SURROGATE_FILE} (victim: --scenario finetune --pretrained <it>)"
        )
    return "\n".join(lines)
