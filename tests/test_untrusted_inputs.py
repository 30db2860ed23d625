"""Hostile files through the real command line: each is refused in one line, and nothing else.

Every case of tests/bad_inputs/make_corpus.py (crafted pickles, archives, images, folders;
issue 9's classes 1-4 and the data-file items of 5-6) runs ``poisonlens train ...`` in its
own process (tests/untrusted.py), which must end with exit status 2, one line on standard
error naming the file and the problem, no traceback, no effect of the payload (a file it
would create is absent, a file it would read is not echoed or stored), within 30 CPU
seconds and 1 GiB of anonymous resident memory. Every case runs in a fork of this process
calling ``poisonlens.cli.main`` (a fraction of a second each); a few also run in a fresh
``python -m poisonlens.cli`` exactly as a user would (seconds each, most of it importing torch).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.bad_inputs.make_corpus import CASES, SECRET
from tests.untrusted import assert_refused, run_cli, run_cli_forked

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="FIFOs and /proc are POSIX")


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()]


# one case per kind of reader, also run as a user runs it (a fresh interpreter); the TIFF
# case must be: in a fork of pytest, warnings are recorded by pytest instead of printed
FRESH = ["forged_dtype_flags_in_cifar_batch", "zip_bomb_npz", "tiff_warning_beside_the_refusal"]


def check_case(tmp_path: Path, name: str, *, fresh: bool, monkeypatch=None) -> None:
    case = CASES[name](tmp_path)
    if "path_prepend" in case.extra:  # a fake program the payload would make PIL run
        monkeypatch.setenv("PATH", case.extra["path_prepend"] + os.pathsep + os.environ["PATH"])
    if fresh:  # a loaded shared machine can take a minute of wall time to import torch
        result = run_cli(case.args, cwd=tmp_path, timeout=180, cpu_timeout=30, max_rss_mb=1024)
    else:
        result = run_cli_forked(case.args, cwd=tmp_path, timeout=60, cpu_timeout=30)
    line = assert_refused(result, *case.names)
    if case.marker is not None:
        assert not case.marker.exists(), "the payload ran"
    if case.secret_file is not None:
        assert SECRET not in result.stdout + result.stderr
        runs = tmp_path / "runs"
        stored = [p for p in _files_under(runs) if SECRET.encode() in p.read_bytes()]
        assert not stored, f"the secret was copied into {stored}"
    assert "\n" not in line and "\x1b" not in line


@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_refused_in_one_line_without_effect(tmp_path, name, monkeypatch):
    check_case(tmp_path, name, fresh=False, monkeypatch=monkeypatch)


@pytest.mark.parametrize("name", FRESH)
def test_hostile_input_is_refused_by_a_fresh_poisonlens_process(tmp_path, name):
    check_case(tmp_path, name, fresh=True)


def test_every_class_of_the_issue_is_covered(tmp_path):
    # classes 1-4 of issue 9 entirely, and the data-file items of 5 and 6
    covered = set()
    for name, make in CASES.items():
        folder = tmp_path / name
        folder.mkdir()
        covered |= set(make(folder).classes)
    assert covered >= {1, 2, 3, 4, 5, 6}


def test_harness_catches_a_memory_blow_up(tmp_path):
    # the harness itself: a child that allocates past the cap is killed and reported
    script = tmp_path / "hog.py"
    script.write_text("import time\nx = bytearray(600 << 20)\ntime.sleep(5)\n")
    from tests import untrusted

    result = untrusted.run_python([str(script)], timeout=20, max_rss_mb=300)
    assert result.killed == "memory" and result.returncode != 0 and result.peak_mb > 300


def test_harness_catches_a_hang(tmp_path):
    from tests import untrusted

    result = untrusted.run_python(["-c", "import time; time.sleep(60)"], timeout=1)
    assert result.killed == "timeout" and result.seconds < 10


def test_harness_does_not_charge_a_fresh_child_for_the_test_process_memory():
    # CI defect: the watcher sampled the child between fork and exec, when it still held a
    # copy of a pytest process grown past 1 GiB, and killed a 30 MiB child "for memory"
    from tests import untrusted

    ballast = bytearray(1400 * 2**20)
    ballast[:: 4096] = b"\x01" * len(ballast[:: 4096])  # touch every page: resident, anonymous
    results = [untrusted.run_python(["-c", "pass"], max_rss_mb=1024) for _ in range(5)]
    del ballast
    assert all(r.killed is None and r.returncode == 0 for r in results), results
    assert max(r.peak_mb for r in results) < 200
