"""``--model``: torchvision:NAME, timm:NAME and module.path:factory, and when a spec may import code."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from poisonlens.model_spec import parse
from poisonlens.models import build_model, wrap_network
from poisonlens.store import open_run

REPO = Path(__file__).resolve().parents[1]
POISONLENS = Path(sys.executable).parent / "poisonlens"
CUSTOM = "tests.custom_model:tiny_mlp"
TINY = ["--dataset", "digits", "--defense", "epic", "--subset-size", "0.2", "--snapshot-every", "1",
        "--drop-after", "1", "--device", "cpu", "--quiet"]  # fmt: skip


def cli(*argv: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(POISONLENS), *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


@pytest.mark.parametrize(
    ("spec", "kind"),
    [("smallcnn", "builtin"), ("torchvision:resnet50", "torchvision"), ("timm:vit_tiny_patch16_224", "timm"),
     ("my.models:make_net", "module")],
)  # fmt: skip
def test_specs_are_read_by_their_form(spec, kind):
    assert parse(spec)[0] == kind


def test_checking_a_spec_imports_nothing():
    code = ("import sys; from poisonlens.config import TrainConfig; "
            "TrainConfig(model='no_such_module_xyz:factory').validate(); "
            "TrainConfig(model='torchvision:resnet50').validate(); "
            "print('torch' in sys.modules, 'no_such_module_xyz' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("vgg", "unknown model"),
        ("torchvision:no_such_net", "torchvision has no classifier"),
        ("tests.custom_model:not_a_module", "not an nn.Module"),
        ("tests.custom_model:missing", "no callable"),
        ("no_such_module_xyz:f", "cannot import"),
        ("os.system('x'):f", "module.path:factory"),
        ("torchvision:../x", "not a model name"),
    ],
)
def test_a_bad_spec_is_one_line_exit_2(spec, problem, tmp_path):
    done = cli("train", "--model", spec, "--epochs", "1", "--runs-dir", str(tmp_path), "--name", "r", *TINY)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("poisonlens: --model") and problem in done.stderr
    assert not (tmp_path / "r" / "run.json").exists()


def test_a_torchvision_classifier_takes_grey_digits_and_its_head_is_the_last_linear():
    torch.manual_seed(0)
    model = build_model("torchvision:resnet18", n_classes=10, in_channels=1)
    x = torch.rand(3, 1, 8, 8)
    assert model.n_features == 512 and model.head.out_features == 10
    assert model.features(x).shape == (3, 512)
    torch.testing.assert_close(model(x), model.head(model.features(x)))


def test_the_features_are_the_input_of_the_last_linear():
    # what a forward hook on the original network's last Linear sees is what the wrapper calls features
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 5))
    seen = {}
    net[3].register_forward_hook(lambda m, inp, out: seen.update(x=inp[0], y=out))
    x = torch.rand(4, 1, 8, 8)
    net((x - 0.5) / 0.25)
    model = wrap_network(net, "test", n_classes=5, in_channels=1)
    torch.testing.assert_close(model.features(x), seen["x"])
    torch.testing.assert_close(model(x), seen["y"])
    resized = wrap_network(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 7)), "t", n_classes=3,
                           in_channels=1)  # fmt: skip
    assert resized.head.out_features == 3 and resized.n_features == 64


def test_a_model_without_a_linear_is_refused():
    with pytest.raises(ValueError, match="no nn.Linear"):
        wrap_network(torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1)), "conv", n_classes=3, in_channels=1)


@pytest.mark.slow
def test_train_with_your_own_factory_and_the_resume_rule(tmp_path):
    done = cli("train", "--model", CUSTOM, "--epochs", "2", "--runs-dir", str(tmp_path), "--name", "own", *TINY)
    assert done.returncode == 0, done.stderr
    run = open_run(tmp_path / "own")
    assert run.status == "finished" and run.config["model"] == CUSTOM
    assert run.snapshot(2).filter(regex="^emb_").shape[1] == 32  # the MLP's penultimate width
    # someone else's run.json must not make poisonlens import the module it names
    meta = json.loads((tmp_path / "own" / "run.json").read_text())
    meta["status"] = "running"
    (tmp_path / "own" / "run.json").write_text(json.dumps(meta))
    refused = cli("train", "--resume", str(tmp_path / "own"))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"pass --model {CUSTOM} again" in refused.stderr
    config = tmp_path / "config.json"
    config.write_text(json.dumps(meta["config"]))
    refused = cli("train", "--config", str(config), "--runs-dir", str(tmp_path), "--name", "again")
    assert refused.returncode == 2 and "--model" in refused.stderr and not (tmp_path / "again").exists()
    allowed = cli("train", "--config", str(config), "--model", CUSTOM, "--runs-dir", str(tmp_path),
                  "--name", "again", "--quiet")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    assert open_run(tmp_path / "again").status == "finished"


@pytest.mark.slow
def test_train_with_a_torchvision_model(tmp_path):
    done = cli("train", "--model", "torchvision:resnet18", "--epochs", "1", "--runs-dir", str(tmp_path),
               "--name", "tv", *TINY)  # fmt: skip
    assert done.returncode == 0, done.stderr
    run = open_run(tmp_path / "tv")
    assert run.status == "finished" and run.snapshot_epochs() == [0, 1]
    assert run.snapshot(1).filter(regex="^emb_").shape[1] == 64  # 512 features, projected to 64


def test_timm_models_when_timm_is_installed():
    if importlib.util.find_spec("timm") is None:
        pytest.skip("timm is not installed (pip install timm): timm:NAME is not tested")
    model = build_model("timm:resnet18", n_classes=4, in_channels=1)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 4)
