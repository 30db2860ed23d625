"""``poisonlens runs``: list the runs in a folder with their status and headline metrics."""

from __future__ import annotations

import argparse
import time

from poisonlens.commands import add_command
from poisonlens.errors import one_line
from poisonlens.store import list_runs

SAMPLE_HINT = (
    "(the dashboard also lists the bundled sample runs in sample_data/runs; "
    "`poisonlens runs --runs-dir sample_data/runs` shows them)"
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add the ``runs`` subcommand and its options to ``sub``.

    Parameters
    ----------
    sub : argparse._SubParsersAction
        As :func:`poisonlens.cli.build_parser` makes it; ``runs`` has one option, ``--runs-dir``.
    """
    p = add_command(sub, "runs", run)
    p.add_argument("--runs-dir", default="runs", help="folder that holds run directories")


def target_text(attack_success: bool | None) -> str:
    """What happened to the attack's target test image: '-' for a clean run (no target).

    Parameters
    ----------
    attack_success : bool or None
        Whether the target is now predicted as the attacker's class; None for a clean run.

    Returns
    -------
    str: 'flipped', 'not flipped' or '-'
    """
    if attack_success is None:
        return "-"
    return "flipped" if attack_success else "not flipped"


def format_runs(infos) -> str:
    """One line per run (a second line with the error of a failed run or why a run is unreadable).

    ``target`` says whether the attack's target test image is now predicted as the attacker's
    class (``flipped``: the attack succeeded), so that it does not read as the run's status.

    Parameters
    ----------
    infos : iterable of poisonlens.store.RunInfo
        The runs, in the order to print them (:func:`poisonlens.store.list_runs`: newest
        first). Names, defenses and errors are escaped to one printable line each.

    Returns
    -------
    str
        A header line, then the runs' lines, joined by newlines (no trailing newline).
    """
    header = (
        f"{'name':<32} {'status':<11} {'epoch':>9} {'defense':<10} {'test acc':>8} "
        f"{'target':>11} {'dropped':>7}  created"
    )
    lines = [header]
    for i in infos:
        # everything from run.json is escaped: a name with ESC sequences or newlines must not
        # retitle the terminal or forge a line
        try:
            created = time.strftime("%Y-%m-%d %H:%M", time.localtime(i.created))
        except (OverflowError, OSError, ValueError):
            created = "?"
        name, defense = one_line(i.name, 32), one_line(i.defense, 10)
        lines.append(
            f"{name[:32]:<32} {i.status:<11} {f'{max(i.epochs_done, 0)}/{i.epochs}':>9} "
            f"{defense[:10]:<10} {i.test_acc:>8.3f} {target_text(i.attack_success):>11} "
            f"{i.n_dropped:>7}  {created}"
        )
        if i.error:
            lines.append(f"{'':<32} error: {one_line(i.error)}")
        if getattr(i, "unreadable", None):
            lines.append(f"{'':<32} damaged, unreadable: {one_line(i.unreadable)}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Print the runs in ``--runs-dir`` with status and headline metrics; return 0.

    Parameters
    ----------
    args : argparse.Namespace
        ``runs_dir``: the folder of runs (or a run folder itself).
    """
    infos = list_runs(args.runs_dir)
    if not infos:
        print(f"no runs in {one_line(args.runs_dir)} {SAMPLE_HINT}")
        return 0
    print(format_runs(infos))
    return 0
