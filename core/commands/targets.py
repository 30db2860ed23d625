"""``poisonlens targets``: choose (target, adversarial class) pairs to craft poisons for."""

from __future__ import annotations

import argparse
import sys

from poisonlens.commands import add_command
from poisonlens.commands._options import nonneg_int, positive_int, text
from poisonlens.targets import RULES


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``targets`` subcommand and its options to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        The ``poisonlens`` command's subcommands, to which ``targets`` is added.
    """
    p = add_command(
        sub, "targets", run,
        description="Print one `TARGET ADV_CLASS` line per pair (the test index and the class "
        "it should be read as), for `poisonlens craft --target-index TARGET --adv-class "
        "ADV_CLASS`. Only test images the model classifies correctly are chosen. Rules: "
        "benchmark (random target and adversarial classes, as the poisoning benchmark and "
        "EPIC's paper do), random (a random image, its runner-up class), low-margin (the "
        "smallest top-2 gap first).",
    )
    p.add_argument("--dataset", type=text, default="digits", help="data set spec (default: digits)")
    p.add_argument("--surrogate", type=text, required=True,
                   help="the model.pt of a clean run (e.g. <run>/checkpoints/model.pt)")
    p.add_argument("--arch", choices=("smallcnn", "resnet18"), default="smallcnn",
                   help="its architecture (default: smallcnn)")
    p.add_argument("--width", type=positive_int, default=32,
                   help="channels of the small CNN's first block (default: 32)")
    p.add_argument("--n", type=positive_int, default=4, help="how many pairs (default: 4)")
    p.add_argument("--rule", choices=RULES, default="benchmark", help="how to choose (default: benchmark)")
    p.add_argument("--seed", type=nonneg_int, default=0, help="seed of the draws (default: 0)")
    p.add_argument("--device", default="auto", help="where the model runs: auto, cpu, cuda, cuda:N or mps")


def run(args: argparse.Namespace) -> int:
    """Print the chosen pairs, one ``TARGET ADV_CLASS`` line each.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed ``targets`` options: data set, surrogate weights, rule, seed, device.

    Returns
    -------
    int
        0 (a bad input raises :class:`InputError`).
    """
    from poisonlens.attacks.surrogate import SurrogateOptions, load_surrogate
    from poisonlens.data import load_dataset
    from poisonlens.device import resolve_device
    from poisonlens.targets import class_probabilities, pick_targets

    device = resolve_device(args.device)
    data = load_dataset(args.dataset)
    model = load_surrogate(args.surrogate, data, SurrogateOptions(model=args.arch, width=args.width),
                           device=device)
    probs = class_probabilities(model, data.x_test)
    for t in pick_targets(probs, data.y_test, args.n, rule=args.rule, random_state=args.seed):
        print(t.index, t.adv_class)
    sys.stdout.flush()
    return 0
