"""Bad command-line input ends as one line ``poisonlens: <option or file>: <problem>``, exit 2.

The cases of issue 9 (sections 5 and 6) for ``poisonlens train``'s options. Most fail while the
arguments are parsed, so they run in-process through ``poisonlens.cli.main`` (cheap); a batch runs the
real CLI in subprocesses, which also shows that no traceback and nothing outside the runs
folder comes out of them, and that ``select`` and ``--help`` never import torch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from poisonlens.cli import guarded, main

REPO = Path(__file__).resolve().parents[1]
DEMO_POISONS = REPO / "sample_data" / "poisons" / "demo" / "poisons.npz"

# (extra arguments, the option or file the message must name)
PARSE_CASES = [
    (["--subset-size", "0"], "--subset-size"),
    (["--subset-size", "1.5"], "--subset-size"),
    (["--subset-size", "nan"], "--subset-size"),
    (["--subset-size", "-0.1"], "--subset-size"),
    (["--defense-param", "novalue"], "--defense-param"),
    (["--defense-param", "=3"], "--defense-param"),
    (["--defense-param", "k=NaN"], "--defense-param"),
    (["--defense-param", "k=" + "[" * 100_000], "--defense-param"),
    (["--seed", "-1"], "--seed"),
    (["--seed", "9" * 5000], "--seed"),
    (["--width", "0"], "--width"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--weight-decay", "nan"], "--weight-decay"),
    (["--lr", "inf"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--epochs", "1.5"], "--epochs"),
    (["--lr-milestones", "0.5,2"], "--lr-milestones"),
    (["--model", "vgg"], "--model"),
    (["--device", "gpu"], "--device"),
    (["--name", "x" * 300], "--name"),
    (["--name", "../../x"], "--name"),
    (["--name", "/tmp/absolute"], "--name"),
    (["--name", "a/b"], "--name"),
    (["--name", "."], "--name"),
    (["--name", ".."], "--name"),
    (["--name", "new\nline"], "--name"),
    (["--dataset", ""], "--dataset"),
    (["--no-such-option"], "--no-such-option"),
    (["--epochs"], "--epochs"),
]
# checked after parsing, before anything is loaded or written
RUN_CASES = [
    (["--defense", "bogus"], "--defense"),
    (["--defense", "epic", "--defense-param", "no_such_param=1"], "--defense-param"),
    (["--drop-after", "9", "--stop-after", "3"], "--drop-after"),
    (["--scenario", "finetune"], "--scenario"),
    (["--clean-control"], "--clean-control"),
]


def call(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's --help and parse errors
        code = done.code
    return code, capsys.readouterr().err


def files_under(folder: Path) -> set[Path]:
    return {p.relative_to(folder) for p in folder.rglob("*")}


def assert_one_line(code: int, err: str, source: str) -> None:
    assert code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"poisonlens: {source}: "), err
    assert "Traceback" not in err and len(err) < 400


@pytest.mark.parametrize("extra, source", PARSE_CASES + RUN_CASES, ids=lambda v: repr(v)[:40])
def test_a_bad_option_is_one_line_naming_it(tmp_path, monkeypatch, capsys, extra, source):
    monkeypatch.chdir(tmp_path)
    code, err = call(["train", "--quiet", "--epochs", "1", "--runs-dir", "runs", *extra], capsys)
    assert_one_line(code, err, source)
    assert files_under(tmp_path) == set()  # nothing written, not even the runs folder


def test_a_name_cannot_forge_a_second_line(tmp_path, capsys):
    code, err = call(["train", "--runs-dir", str(tmp_path), "--name", "ok\npoisonlens: forged"], capsys)
    assert_one_line(code, err, "--name")
    assert "\\n" in err


def test_runs_dir_naming_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    code, err = call(["train", "--runs-dir", str(tmp_path / "afile")], capsys)
    assert_one_line(code, err, "--runs-dir")
    assert "is a file" in err


def test_a_refused_run_leaves_no_runs_folder_behind(tmp_path, capsys):
    # the data set is refused after the run's lock was taken: the folders made for it go too
    runs = tmp_path / "new" / "runs"
    code, err = call(["train", "--runs-dir", str(runs), "--dataset", "nosuch:x", "--quiet"], capsys)
    assert_one_line(code, err, "nosuch:x")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content, problem",
    [
        ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
        ('{"seed": ' + "9" * 5000 + "}", "not valid JSON"),
        ('{"epochs": "ten"}', "wrong type"),
        ('{"seed": -1}', "seed"),
        ("not json", "not valid JSON"),
    ],
    ids=["deep", "long-int", "type", "range", "text"],
)
def test_a_bad_config_file_is_one_line_naming_it(tmp_path, capsys, content, problem):
    path = tmp_path / "c.json"
    path.write_text(content)
    code, err = call(["train", "--config", str(path), "--runs-dir", str(tmp_path / "runs")], capsys)
    assert_one_line(code, err, "--config")
    assert str(path) in err and problem in err
    assert not (tmp_path / "runs").exists()


def test_an_unexpected_error_is_one_line_with_status_1_and_debug_shows_the_traceback(capsys):
    def broken() -> int:
        raise RuntimeError("internal\nsecond line")

    assert guarded(broken) == 1
    err = capsys.readouterr().err
    assert err == "poisonlens: error: RuntimeError: internal (run with --debug for the traceback)\n"
    assert guarded(broken, debug=True) == 1
    assert "Traceback" in capsys.readouterr().err


def test_a_file_the_system_refuses_is_input_with_status_2(tmp_path, capsys):
    def opens_a_folder() -> int:
        open(tmp_path).read()  # IsADirectoryError, naming the path
        return 0

    assert guarded(opens_a_folder) == 2
    assert capsys.readouterr().err.startswith(f"poisonlens: {tmp_path}: ")


# --- the real CLI, in subprocesses ---------------------------------------------------------


def run_cli(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "poisonlens.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_real_cli_refuses_bad_input_in_one_line(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    cases = [
        (["--subset-size", "nan"], "--subset-size"),
        (["--name", "../../x"], "--name"),
        (["--defense", "bogus"], "--defense"),
        (["--config", str(deep)], "--config"),
        (["--dataset", "npz:/no/such/file.npz"], "/no/such/file.npz"),
        (["--scenario", "finetune", "--pretrained", str(garbage)], str(garbage)),
    ]
    for extra, source in cases:
        done = run_cli("train", "--quiet", "--epochs", "1", "--runs-dir", "runs", *extra, cwd=tmp_path)
        assert_one_line(done.returncode, done.stderr, source)
        assert done.stdout == ""
    leftovers = {p for p in files_under(tmp_path) if p.parts[0] != "runs"}
    assert leftovers == {Path("garbage.pt"), Path("deep.json")}


def test_select_with_a_folder_as_output_is_one_line(tmp_path):
    import numpy as np

    np.savez(tmp_path / "g.npz", grads=np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5],
             labels=np.array([0, 1, 2, 3] * 5))
    (tmp_path / "out").mkdir()
    done = run_cli("select", "--input", "g.npz", "--subset-size", "0.5", "--out", "out", cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("poisonlens: out") and "Traceback" not in done.stderr


DRIVER = """
import json, sys
from poisonlens.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as done:
    code = done.code
heavy = [m for m in ("torch", "poisonlens.train", "poisonlens.commands.train", "poisonlens.commands.select")
         if m in sys.modules]
print(json.dumps({"code": code, "loaded": heavy}), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv, code, loaded",
    [
        (["--help"], 0, []),
        (["train", "--help"], 0, ["poisonlens.commands.train"]),
        (["select", "--help"], 0, ["poisonlens.commands.select"]),
        (["select", "--input", "g.npz", "--subset-size", "0.5", "--out", "d.csv"], 0,
         ["poisonlens.commands.select"]),
        # issue 17: a misspelt data set and evaluate's help answered only after torch loaded (5 s)
        (["train", "--dataset", "digts", "--runs-dir", "runs"], 2, ["poisonlens.commands.train"]),
        (["train", "--dataset", "nosuch:x", "--runs-dir", "runs"], 2, ["poisonlens.commands.train"]),
        # evaluate's options come from TrainConfig's metadata, not from train's command module
        (["evaluate", "--help"], 0, []),
        (["evaluate", "--dataset", "digts", "--out", "res"], 2, []),
    ],
    ids=["help", "train-help", "select-help", "select", "train-digts", "train-nosuch",
         "evaluate-help", "evaluate-digts"],
)
def test_a_command_imports_only_its_own_module_and_select_never_torch(tmp_path, argv, code, loaded):
    import numpy as np

    np.savez(tmp_path / "g.npz", grads=np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5],
             labels=np.array([0, 1, 2, 3] * 5))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", DRIVER, *argv], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result == {"code": code, "loaded": loaded}, done.stderr
