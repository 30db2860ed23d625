"""Spec tests for ``poisonlens craft``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from poisonlens.attacks import check_within_eps
from poisonlens.cli import main
from poisonlens.data import load_dataset, load_poisons

torch.set_num_threads(1)

TINY_GM = ["--param", "steps=3", "--param", "restarts=1", "--param", "width=4",
           "--param", "surrogate_epochs=[1]"]


def craft(out, *extra: str) -> int:
    return main(["craft", "--dataset", "digits", "--target-index", "12", "--adv-class", "3",
                 "--budget", "0.02", "--seed", "0", "--out", str(out), "--quiet", *extra])


@pytest.fixture(scope="module")
def gm_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("craft") / "demo"
    assert craft(out, "--attack", "gradient-matching", "--eps", "16", *TINY_GM) == 0
    return out


def test_craft_writes_both_formats_that_load_back_alike(gm_out):
    folder, npz = load_poisons(gm_out), load_poisons(gm_out / "poisons.npz")
    assert np.array_equal(folder.x, npz.x) and np.array_equal(folder.base_indices, npz.base_indices)
    assert (folder.attack, folder.eps, folder.target_index, folder.adv_label) == ("gradient-matching", 16.0, 12, 3)


def test_crafted_poisons_stay_within_eps_of_their_bases(gm_out):
    dataset = load_dataset("digits")
    assert check_within_eps(load_poisons(gm_out / "poisons.npz"), dataset) <= 16


def test_craft_records_its_parameters_and_the_alignment(gm_out):
    extra = load_poisons(gm_out / "poisons.npz").extra
    assert extra["params"]["steps"] == 3 and extra["seed"] == 0 and extra["budget"] == 0.02
    assert "alignment" in extra and "alignment_start" in extra


def test_craft_saves_the_surrogate_for_a_fine_tuning_victim(gm_out):
    state = torch.load(gm_out / "surrogate.pt", weights_only=True)
    assert "head.weight" in state


def test_craft_prints_what_it_wrote(tmp_path, capsys):
    assert craft(tmp_path / "flip", "--attack", "label-flip") == 0
    out = capsys.readouterr().out
    assert "27 label-flip poisons" in out and "class 8 -> 3" in out


def test_craft_is_reproducible_with_a_seed(gm_out, tmp_path):
    assert craft(tmp_path / "again", "--attack", "gradient-matching", "--eps", "16", *TINY_GM) == 0
    assert np.array_equal(load_poisons(tmp_path / "again").x, load_poisons(gm_out).x)


def test_craft_writes_the_clean_control_when_asked(tmp_path):
    assert craft(tmp_path / "c", "--attack", "label-flip", "--control") == 0
    poisons, control = load_poisons(tmp_path / "c"), load_poisons(tmp_path / "c" / "control" / "poisons.npz")
    dataset = load_dataset("digits")
    assert np.array_equal(control.base_indices, poisons.base_indices)
    assert np.array_equal(control.y, dataset.y_train[poisons.base_indices])
    assert np.array_equal(control.target_x, poisons.target_x)


def test_patch_backdoor_writes_its_trigger(tmp_path):
    assert craft(tmp_path / "bd", "--attack", "patch-backdoor", "--param", "patch_size=2") == 0
    poisons = load_poisons(tmp_path / "bd" / "poisons.npz")
    assert poisons.eps is None and poisons.trigger.shape == (2, 2, 1)
    assert not (tmp_path / "bd" / "surrogate.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["--attack", "label-flip", "--target-index", "9999"], "--target-index"),
    (["--attack", "label-flip", "--adv-class", "8"], "already the target's label"),
    (["--attack", "label-flip", "--eps", "16"], "has no eps"),
    (["--attack", "gradient-matching", "--param", "stepz=3"], "unknown parameter"),
    (["--attack", "gradient-matching", "--param", "steps"], "KEY=VALUE"),
    (["--attack", "no-such-attack"], "unknown attack"),
    (["--attack", "label-flip", "--budget", "0.5"], "only"),
    (["--attack", "feature-collision", "--device", "tpu"], "--device"),
])
def test_bad_input_is_one_line_and_exit_status_2(tmp_path, capsys, args, message):
    assert craft(tmp_path / "bad", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "bad" / "poisons.npz").exists()


def test_craft_refuses_to_overwrite_without_asking(tmp_path, capsys):
    assert craft(tmp_path / "o", "--attack", "label-flip") == 0
    assert craft(tmp_path / "o", "--attack", "label-flip") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert craft(tmp_path / "o", "--attack", "label-flip", "--overwrite") == 0


def test_help_documents_every_option_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["craft", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--dataset", "--attack", "--target-index", "--adv-class", "--budget", "--eps",
                   "--seed", "--param", "--surrogate", "--device", "--out", "--control", "--overwrite",
                   "--quiet"):
        assert option in text
    assert "(default: 0.01)" in text and "(default: digits)" in text


def test_feature_collision_crafts_on_the_cpu_when_asked(tmp_path):
    out = tmp_path / "fc"
    assert craft(out, "--attack", "feature-collision", "--eps", "16", "--device", "cpu",
                 "--param", "width=4", "--param", "surrogate_epochs=[2]", "--param", "steps=5") == 0
    poisons = load_poisons(out / "poisons.npz")
    assert poisons.attack == "feature-collision" and poisons.n_poisons == 27
    assert check_within_eps(poisons, load_dataset("digits")) <= 16
    assert poisons.extra["params"]["steps"] == 5 and "feature_distance" in poisons.extra
