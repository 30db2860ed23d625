"""The CLI: help on every command, train / runs / export end to end, one-line errors."""

from __future__ import annotations

import csv
import io
import re

import pandas as pd
import pytest

import poisonlens.commands
from poisonlens.cli import COMMANDS, build_parser, main
from poisonlens.export import neutralise_formula, suspects_table, to_safe_csv
from poisonlens.store import open_run
from poisonlens.train import train
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


def test_the_command_table_lists_every_command_module_with_its_own_help():
    import pkgutil

    modules = {m.name for m in pkgutil.iter_modules(poisonlens.commands.__path__) if not m.name.startswith("_")}
    assert {module.rsplit(".", 1)[1] for module, _ in COMMANDS.values()} == modules
    sub = build_parser()._subparsers._group_actions[0]
    shown = {a.dest: a.help for a in sub._choices_actions}
    # `poisonlens --help` shows the table's line without importing the module: keep them equal
    assert shown == {name: helptext for name, (_, helptext) in COMMANDS.items()}, "update poisonlens.cli.COMMANDS"


def test_no_help_prints_a_default_twice_or_a_none_default(capsys):
    for name, sub in build_parser()._subparsers._group_actions[0].choices.items():
        text = " ".join(sub.format_help().split())
        assert "(default: None)" not in text, name
        assert not re.search(r"\(default: [^)]*\) \(default:", text), name


def test_debug_anywhere_on_the_line_is_accepted(tmp_path, capsys):
    assert main(["train", "--quiet", "--epochs", "1", "--width", "4", "--runs-dir", str(tmp_path),
                 "--name", "dbg", "--debug"]) == 0
    assert (tmp_path / "dbg" / "run.json").is_file()


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


def test_the_dashboard_does_not_import_cli_code():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "dashboard"
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "poisonlens.commands" not in text and "poisonlens.cli" not in text, path


def test_a_limit_flag_in_any_position_changes_what_a_reader_accepts(tmp_path, capsys):
    """--max-images lowers the limit for this command only; the npz reader then refuses."""
    import numpy as np

    from poisonlens.limits import current_limits, set_limits

    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8),
        y_train=np.arange(20) % 2,
        x_test=rng.integers(0, 256, (4, 8, 8, 1), dtype=np.uint8),
        y_test=np.arange(4) % 2,
    )
    previous = current_limits()
    try:
        status = main(["train", "--dataset", f"npz:{path}", "--max-images", "10",
                       "--runs-dir", str(tmp_path / "runs"), "--name", "x", "--epochs", "1"])
    finally:
        set_limits(previous)
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert len(err.splitlines()) == 1
    assert "--max-images" in err and "data.npz" in err
    assert not (tmp_path / "runs" / "x" / "run.json").exists()


def test_a_bad_limit_value_is_one_line_naming_the_flag(capsys):
    assert main(["select", "--max-depth", "-3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("poisonlens: --max-depth:") and len(err.splitlines()) == 1


def test_top_level_help_lists_the_commands_and_leaves_the_limits_to_help_limits(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "--max-" not in text.split("`poisonlens help")[0]  # the commands come first, no limits
    assert text.index("train") < text.index("help limits")


def test_help_limits_lists_every_limit_flag_with_its_default(capsys):
    from poisonlens.cli import LIMIT_FLAGS
    from poisonlens.limits import Limits

    assert main(["help", "limits"]) == 0
    text = capsys.readouterr().out
    for flag in LIMIT_FLAGS:
        default = getattr(Limits(), flag[2:].replace("-", "_"))
        assert re.search(rf"{flag} N\s+default {default:,}", text), flag


def test_help_of_a_command_and_of_an_unknown_topic(capsys):
    assert main(["help", "export"]) == 0
    assert "usage: poisonlens export" in capsys.readouterr().out
    assert main(["help", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown topic" in err


def test_limit_flags_still_work_at_any_position(tmp_path, capsys):
    from poisonlens.limits import current_limits, set_limits

    previous = current_limits()
    try:
        assert main(["runs", "--runs-dir", str(tmp_path), "--max-json-bytes", "1K"]) == 0
        assert current_limits().max_json_bytes == 1024
        assert main(["--max-json-bytes", "oops", "runs", "--runs-dir", str(tmp_path)]) == 2
        assert "--max-json-bytes" in capsys.readouterr().err
    finally:
        set_limits(previous)  # the flags set this process's limits: later tests need the defaults
