"""``poisonlens runs``: list the runs in a folder with their status and headline metrics."""

from __future__ import annotations

import argparse
import time

from core.store import list_runs


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "runs",
        help="list runs with status and headline metrics",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--runs-dir", default="runs", help="folder that holds run directories")
    p.set_defaults(func=run)


def format_runs(infos) -> str:
    header = f"{'name':<32} {'status':<11} {'epoch':>9} {'defense':<10} {'test acc':>8} {'attack':>7} {'dropped':>7}  created"
    lines = [header]
    for i in infos:
        attack = "-" if i.attack_success is None else ("success" if i.attack_success else "failed")
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created))
        lines.append(
            f"{i.name[:32]:<32} {i.status:<11} {f'{max(i.epochs_done, 0)}/{i.epochs}':>9} "
            f"{i.defense[:10]:<10} {i.test_acc:>8.3f} {attack:>7} {i.n_dropped:>7}  {created}"
        )
        if i.error:
            lines.append(f"{'':<32} error: {i.error}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    infos = list_runs(args.runs_dir)
    if not infos:
        print(f"no runs in {args.runs_dir}")
        return 0
    print(format_runs(infos))
    return 0
