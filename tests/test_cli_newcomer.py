"""Newcomer defects of the command line (issue 17): each seen in a fresh clone.

- ``train --resume`` of a finished run says so in one line and trains nothing;
- a command whose reader goes away (``poisonlens runs | head -3``) ends without BrokenPipeError;
- ``train --dataset digts`` and ``evaluate --help`` answer without importing torch
  (tests/test_cli_inputs.py checks which heavy modules each command loads).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from poisonlens.cli import COMMANDS
from tests.conftest import REPO, tiny_config

SAMPLE_RUNS = REPO / "sample_data" / "runs"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# what a finished run's resume must not load: the trainer, and with it torch
HEAVY = "import sys; from poisonlens.cli import main; code = main(sys.argv[1:]); print('torch' in sys.modules, file=sys.stderr); sys.exit(code)"


def test_resuming_a_finished_run_says_so_in_one_line_and_trains_nothing(tmp_path):
    from poisonlens.store import open_run
    from poisonlens.train import train

    run = train(tiny_config(epochs=1), tmp_path / "r", show_progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    done = subprocess.run([sys.executable, "-c", HEAVY, "train", "--resume", str(run)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines[-1] == "False"  # torch never loaded: nothing was trained
    message = lines[:-1]
    assert len(message) == 1, done.stderr
    assert message[0] == f"poisonlens: {run}: already finished (epoch 1 of 1); nothing to resume"
    assert done.stdout == f"{run}\n"  # the run directory, as every successful train prints
    after = {p.name: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    assert after == before and open_run(run).status == "finished"


def run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run the CLI with a stdout whose reader has gone, as ``| head -3`` leaves it."""
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write now fails with EPIPE
    try:
        return subprocess.run([sys.executable, "-m", "poisonlens.cli", *args], cwd=REPO, env=ENV,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120)  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [["runs", "--runs-dir", str(SAMPLE_RUNS)], ["--help"]]
    + [[name, "--help"] for name in COMMANDS]
    + [["export", "--run", str(SAMPLE_RUNS / "demo-epic"), "--out", "-"]],
    ids=lambda a: " ".join(a)[:30],
)
def test_a_reader_that_goes_away_ends_the_command_quietly(args):
    done = run_into_a_closed_pipe(*args)
    assert "BrokenPipeError" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == ""
    # 141 = 128 + SIGPIPE, as a shell reports `yes | head -1`'s yes; argparse's --help ignores
    # a failed write itself and exits 0
    assert done.returncode == (0 if args[-1] == "--help" else 141)


def test_runs_piped_into_head_ends_cleanly():
    # the user's own pipeline, through a real shell
    cli = f"{sys.executable} -m poisonlens.cli runs --runs-dir {SAMPLE_RUNS}"
    done = subprocess.run(["bash", "-c", f"set -o pipefail; {cli} | head -1; echo \"rc=${{PIPESTATUS[0]}}\""],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.stdout.startswith("name ") and "Traceback" not in done.stderr, done.stderr
    assert done.stdout.rstrip().splitlines()[-1] in ("rc=0", "rc=141")


def test_a_misspelt_dataset_is_refused_before_any_folder_is_made(tmp_path):
    done = subprocess.run([sys.executable, "-m", "poisonlens.cli", "train", "--dataset", "digts",
                           "--runs-dir", "runs"], cwd=tmp_path, env=ENV, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr == (
        "poisonlens: digts: unknown data set; use digits, cifar10:<dir>, imagefolder:<dir> or "
        "npz:<file>\n"
    )
    assert list(Path(tmp_path).iterdir()) == []
