"""TrainConfig is the one source of the run's options: every field reaches the CLI and comes back.

``every_field_changed`` gives each field a value other than its default; a new field without
one fails :func:`test_every_field_has_a_non_default_value_here`, so the round trips below (and
the launcher's, in tests/test_launch.py) always cover every field.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from poisonlens.cli import build_parser
from poisonlens.commands._options import add_config_arguments, config_from_args, config_to_argv
from poisonlens.config import (
    TrainConfig,
    option_fields,
    option_name,
    parse_defense_param,
    parse_defense_params,
)
from poisonlens.errors import InputError, one_line

REPO = Path(__file__).resolve().parents[1]
DEMO_POISONS = REPO / "sample_data" / "poisons" / "demo" / "poisons.npz"


def digits_npz(folder: Path) -> Path:
    """The digits data set as an ``npz:`` file (same split, so the demo poison set fits it)."""
    from poisonlens.data import load_dataset

    d = load_dataset("digits")
    path = folder / "digits.npz"
    np.savez(path, x_train=d.x_train, y_train=d.y_train, x_test=d.x_test, y_test=d.y_test)
    (folder / "exclude.csv").write_text("index\n5\n7\n")  # every_field_changed's --exclude
    return path


def every_field_changed(folder: Path) -> TrainConfig:
    """A valid config whose every field differs from TrainConfig's default."""
    return TrainConfig(
        dataset=f"npz:{folder / 'digits.npz'}",
        poisons=str(DEMO_POISONS),
        clean_control=True,
        exclude=str(folder / "exclude.csv"),
        model="resnet18",
        width=8,
        scenario="finetune",
        pretrained=str(folder / "model.pt"),
        epochs=3,
        batch_size=64,
        lr=0.05,
        momentum=0.8,
        nesterov=False,
        weight_decay=1e-3,
        lr_milestones=(0.5,),
        lr_gamma=0.2,
        augment="crop",
        snapshot_every=1,
        defense="epic",
        defense_params={"subset_size": 0.3, "metric": "cosine"},
        drop_after=1,
        stop_after=2,
        seed=7,
        embedding_dims=16,
        snapshot_batch_size=64,
        device="cpu",
        amp="bf16",
        tags={"twin": "a", "seed": 7},
    )


def test_every_field_has_a_non_default_value_here():
    changed, default = every_field_changed(Path("/data")), TrainConfig()
    same = [f.name for f in fields(TrainConfig) if getattr(changed, f.name) == getattr(default, f.name)]
    assert same == [], f"give these fields a non-default value in every_field_changed: {same}"
    changed.validate()


def test_every_field_round_trips_through_the_train_command_line():
    config = replace(every_field_changed(Path("/data")), tags={})  # tags: not an option
    args = build_parser().parse_args(["train", *config_to_argv(config)])
    assert config_from_args(args) == config


def test_every_command_line_field_is_an_option_of_train():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    options = {s for a in train._actions for s in a.option_strings}
    for f in option_fields():
        wanted = "--defense-param" if f.name == "defense_params" else option_name(f.name)
        assert wanted in options, f.name
    assert "--tags" not in options  # cli=False
    assert {"--config", "--runs-dir", "--name", "--resume", "--quiet", "--subset-size"} <= options


def test_a_config_file_gives_the_base_and_options_override_it(tmp_path):
    saved = every_field_changed(tmp_path)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(saved.to_json()))
    args = build_parser().parse_args(
        ["train", "--config", str(path), "--epochs", "9", "--no-clean-control", "--subset-size", "0.5"]
    )
    got = config_from_args(args)
    want_params = {"subset_size": 0.5, "metric": "cosine"}
    assert got == replace(saved, epochs=9, clean_control=False, defense_params=want_params)
    assert got.tags == saved.tags  # not an option, but carried by the file


def test_add_config_arguments_can_leave_out_the_fields_a_command_sets_itself():
    import argparse

    parser = argparse.ArgumentParser()
    add_config_arguments(parser, exclude=("defense", "defense_params", "seed"))
    options = {s for a in parser._actions for s in a.option_strings}
    assert "--defense" not in options and "--seed" not in options and "--subset-size" not in options
    args = parser.parse_args(["--epochs", "2"])
    assert config_from_args(args, defense="random", seed=3) == TrainConfig(
        epochs=2, defense="random", seed=3
    )
    only = argparse.ArgumentParser()
    add_config_arguments(only, include=("epochs", "width"))
    assert {s for a in only._actions for s in a.option_strings} == {"-h", "--help", "--epochs", "--width"}


def test_help_shows_each_default_once_and_none_for_unset_options():
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(train.format_help().split())
    assert "(default: None)" not in text
    assert text.count("(default: 40)") == 1
    assert "(default: on)" in text and "(default: off) (default" not in text
    for f in option_fields():
        option = "--defense-param" if f.name == "defense_params" else option_name(f.name)
        assert option + " " in text, f.name


@pytest.mark.parametrize(
    "change, option",
    [
        (dict(seed=-1), "--seed"),
        (dict(width=0), "--width"),
        (dict(weight_decay=-1.0), "--weight-decay"),
        (dict(weight_decay=math.nan), "--weight-decay"),
        (dict(lr=math.inf), "--lr"),
        (dict(lr=0.0), "--lr"),
        (dict(momentum=1.0), "--momentum"),
        (dict(lr_milestones=(0.5, 1.5)), "--lr-milestones"),
        (dict(epochs=True), "--epochs"),
        (dict(model="vgg"), "--model"),
        (dict(device="gpu"), "--device"),
        (dict(drop_after=10, stop_after=5), "--drop-after"),
        (dict(scenario="transfer"), "--scenario"),
        (dict(clean_control=True), "--clean-control"),
        (dict(defense_params={"not a name": 1}), "--defense-param"),
    ],
)
def test_validate_names_the_option_of_a_bad_value(change, option):
    with pytest.raises(InputError) as err:
        replace(TrainConfig(), **change).validate()
    assert err.value.source == option


def test_check_defense_asks_the_registry():
    TrainConfig(defense="epic", defense_params={"subset_size": 0.2}).check_defense()
    with pytest.raises(InputError, match="unknown defense 'bogus'"):
        TrainConfig(defense="bogus").check_defense()
    with pytest.raises(InputError, match="--defense-param"):
        TrainConfig(defense="epic", defense_params={"subset_size": 2.0}).check_defense()
    with pytest.raises(InputError, match="--defense-param"):
        TrainConfig(defense="epic", defense_params={"no_such_param": 1}).check_defense()


def test_defense_params_are_json_when_they_can_be():
    assert parse_defense_params(["k=3", "metric=cosine", "xs=[1, 2]"], 0.2) == {
        "k": 3,
        "metric": "cosine",
        "xs": [1, 2],
        "subset_size": 0.2,
    }
    for bad in ["novalue", "=1", "two words=1", "x=NaN", "x=-Infinity", "x=" + "[" * 2000]:
        with pytest.raises(InputError, match="--defense-param"):
            parse_defense_param(bad)


def test_a_config_file_is_bounded():
    with pytest.raises(InputError, match="not valid JSON"):
        TrainConfig.from_json_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InputError, match="not valid JSON"):
        TrainConfig.from_json_text('{"seed": ' + "9" * 5000 + "}")
    with pytest.raises(InputError, match="unknown option"):
        TrainConfig.from_json_text('{"sneaky": 1}')


def test_messages_are_one_printable_bounded_line():
    assert one_line("a\nb\x1b[31m\u2028") == "a\\nb\\x1b[31m\\u2028"
    long = one_line("x" * 1000 + "END", 100)
    assert len(long) == 100 and long.endswith("END")
    err = InputError("run\nname", "bad\r\nline")
    assert "\n" not in str(err) and "\r" not in str(err)


def test_a_run_json_or_launch_json_is_a_config_file(tmp_path):
    saved = every_field_changed(tmp_path)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"format_version": 1, "status": "finished", "config": saved.to_json()}))
    args = build_parser().parse_args(["train", "--config", str(path), "--seed", "1"])
    assert config_from_args(args) == replace(saved, seed=1)
