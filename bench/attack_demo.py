"""Demo measurement: do crafted poisons flip their target in a victim, beside the clean control?

For each (target, adv class) pair: craft against the attacker's surrogate (seed ``--seed``),
train a victim with another seed (``--victim-seed``) on the poisoned train split, and train the
same victim on the clean split (the clean control: poisons restored to their base images).
A success is a poisoned victim predicting ``adv`` while its clean control does not.
One JSON line per pair goes to ``--out``.

    python bench/attack_demo.py --attack gradient-matching --pairs 6 --budget 0.02 \
        --eps 16 --param restarts=4 --scenario finetune
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, Python puts bench/ first on the path, where bench/select.py would shadow the
# standard library's select module; the repository root goes there instead.
sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import asdict, replace  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from poisonlens.attacks import AttackGoal, build_attack, check_within_eps  # noqa: E402
from poisonlens.attacks.surrogate import SurrogateOptions, train_surrogates  # noqa: E402
from poisonlens.augment import resolve_augment  # noqa: E402
from poisonlens.commands.craft import parse_params  # noqa: E402
from poisonlens.config import TrainConfig  # noqa: E402
from poisonlens.data import apply_poisons, load_dataset  # noqa: E402
from poisonlens.epoch import epoch_generator, iter_batches, lr_at, make_optimizer, train_one_epoch  # noqa: E402
from poisonlens.models import Classifier  # noqa: E402
from poisonlens.phases import accuracy, target_metrics  # noqa: E402
from poisonlens.run_setup import make_model  # noqa: E402
from poisonlens.targets import class_probabilities, pick_targets  # noqa: E402


def train_victim(dataset, poisons, config: TrainConfig, *, clean: bool) -> dict:
    """The trainer's loop without a run store; ``clean=True`` trains on the clean split (control)."""
    data = apply_poisons(dataset, None if clean else poisons)
    model = make_model(config, data)
    optimizer = make_optimizer(config, model)
    x_all, y_all = torch.from_numpy(data.x_train), torch.as_tensor(data.y_train)
    augment = resolve_augment(config.augment, data.x_train.shape[-1])
    for epoch in range(1, config.epochs + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(config, epoch)
        feed = iter_batches(x_all, y_all, np.arange(data.n_samples), batch_size=config.batch_size,
                            augment=augment, gen=epoch_generator(config.seed, epoch))
        train_one_epoch(model, optimizer, feed)
    row = target_metrics(model, poisons)
    row["test_acc"] = accuracy(model, dataset.x_test, dataset.y_test, 1024)
    return row


@torch.no_grad()
def pick_pairs(dataset, model: Classifier, n_pairs: int, *, rule: str, seed: int) -> list[tuple[int, int]]:
    """(target index, adv class) pairs by ``rule`` (:func:`poisonlens.targets.pick_targets`)."""
    probs = class_probabilities(model, dataset.x_test)
    return [(t.index, t.adv_class) for t in pick_targets(probs, dataset.y_test, n_pairs, rule=rule, random_state=seed)]


def state_file(model: Classifier, folder: Path) -> str:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    path = folder / "surrogate.pt"
    path.write_bytes(buf.getvalue())
    return str(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--attack", default="gradient-matching")
    p.add_argument("--pairs", type=int, default=6)
    p.add_argument("--targets", default="low-margin", choices=["low-margin", "random"])
    p.add_argument("--pair", action="append", default=[], metavar="TARGET:ADV",
                   help="craft for these pairs instead of picking --pairs of them (repeatable)")
    p.add_argument("--budget", type=float, default=0.02)
    p.add_argument("--eps", type=float, default=None)
    p.add_argument("--param", action="append", default=[])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--victim-seed", type=int, action="append", default=None,
                   help="victim seed (repeatable; default 1)")
    p.add_argument("--scenario", default="scratch", choices=["scratch", "finetune", "transfer"])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--out", default="results/attack_demo.jsonl")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    dataset = load_dataset(args.dataset)
    params = parse_params(args.param)
    if args.eps is not None:
        params["eps"] = args.eps
    attack = build_attack(args.attack, **params)
    options = attack if isinstance(attack, SurrogateOptions) else SurrogateOptions()
    t0 = time.perf_counter()
    surrogates = train_surrogates(dataset, options, random_state=args.seed)
    surrogate_seconds = time.perf_counter() - t0
    final = surrogates[len(set(options.surrogate_epochs)) - 1]
    pairs = ([tuple(int(v) for v in pair.split(":")) for pair in args.pair]
             or pick_pairs(dataset, final, args.pairs, rule=args.targets, seed=args.seed))
    victim_seeds = args.victim_seed or [1]

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    wins = runs = 0
    with tempfile.TemporaryDirectory() as tmp:
        pretrained = None if args.scenario == "scratch" else state_file(final, Path(tmp))
        for target, adv in pairs:
            goal = AttackGoal(target_index=target, adv_label=adv, budget=args.budget, random_state=args.seed)
            t0 = time.perf_counter()
            poisons = attack(dataset, goal, surrogates=surrogates if attack.needs_surrogate else None)
            craft_seconds = time.perf_counter() - t0
            check_within_eps(poisons, dataset)
            for victim_seed in victim_seeds:
                victim = TrainConfig(dataset=args.dataset, width=args.width, epochs=args.epochs, seed=victim_seed,
                                     scenario=args.scenario, pretrained=pretrained)
                poisoned = train_victim(dataset, poisons, victim, clean=False)
                control = train_victim(dataset, poisons, victim, clean=True)
                success = poisoned["attack_success"] == 1.0 and control["attack_success"] == 0.0
                wins += success
                runs += 1
                row = {"attack": args.attack, "params": asdict(attack), "budget": args.budget,
                       "n_poisons": poisons.n_poisons, "target": target, "target_label": poisons.target_label,
                       "adv": adv, "scenario": args.scenario, "victim": asdict(replace(victim, pretrained=None)),
                       "targets": args.targets, "surrogate_seconds": surrogate_seconds,
                       "craft_seconds": craft_seconds,
                       "extra": {k: v for k, v in poisons.extra.items() if not isinstance(v, list)},
                       "poisoned": poisoned, "control": control, "success": bool(success)}
                with out.open("a") as handle:
                    handle.write(json.dumps(row) + "\n")
                print(f"target {target} ({poisons.target_label}->{adv}) victim seed {victim_seed}: poisoned pred "
                      f"{poisoned['target_pred']} p_adv {poisoned['target_prob_adv']:.3f} | control pred "
                      f"{control['target_pred']} p_adv {control['target_prob_adv']:.3f} | acc "
                      f"{poisoned['test_acc']:.3f} | craft {craft_seconds:.0f}s {json.dumps(row['extra'])}",
                      flush=True)
    print(f"{wins}/{runs} successes", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
