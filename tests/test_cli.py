"""The CLI: help on every command, train / runs / export end to end, one-line errors."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from core.cli import build_parser, main
from core.export import neutralise_formula, suspects_table, to_safe_csv
from core.store import open_run
from core.train import train
from tests.conftest import tiny_config
from tests.test_train import FirstActive  # noqa: F401  (registers the test defense)


def test_every_command_has_help_that_names_its_defaults(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"train", "runs", "export"} <= set(commands)
    for name, sub in commands.items():
        text = sub.format_help()
        assert "usage: poisonlens" in text, name
    assert "(default: 40)" in commands["train"].format_help()


def test_train_then_runs_lists_the_run(tmp_path, capsys):
    assert main(["train", "--quiet", "--epochs", "1", "--width", "4", "--runs-dir", str(tmp_path), "--name", "one"]) == 0
    capsys.readouterr()
    assert main(["runs", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "one" in out and "finished" in out and "1/1" in out


def test_bad_input_is_one_line_naming_the_problem(tmp_path, capsys):
    code = main(["train", "--quiet", "--dataset", "npz:/nowhere.npz", "--runs-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "/nowhere.npz" in err


def test_export_writes_the_dropped_examples_ranked(tmp_path, capsys):
    run_dir = train(tiny_config(epochs=2, defense="test-first-active", defense_params={"k": 4}),
                    tmp_path / "r", show_progress=False)
    out = tmp_path / "s.csv"
    assert main(["export", "--run", str(run_dir), "--epoch", "0", "--dropped-only", "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(newline="")))
    assert [int(r["index"]) for r in rows] == [0, 1, 2, 3]
    assert {r["dropped_epoch"] for r in rows} == {"0"}
    everything = list(csv.DictReader(io.StringIO(newline="", initial_value=to_safe_csv(suspects_table(open_run(run_dir))))))
    assert len(everything) == 4 + 4  # dropped at 0 and at 2 (the last snapshot flags what it drops)


@pytest.mark.parametrize("cell", ["=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\r=1"])
def test_no_text_cell_can_be_read_as_a_formula(cell):
    assert neutralise_formula(cell) == "'" + cell
    text = to_safe_csv(pd.DataFrame({"name": [cell], "n": [-1]}))
    row = next(csv.DictReader(io.StringIO(text, newline="")))
    assert row["name"].startswith("'") and row["n"] == "-1"
