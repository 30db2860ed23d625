"""Devices: --device is resolved once, a missing device is one line before anything starts."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from poisonlens.device import resolve_device, seeded_generator
from poisonlens.errors import InputError
from tests.conftest import REPO

MISSING = [d for d in ("cuda:7", "mps") if not (
    (d == "mps" and torch.backends.mps.is_available()) or (d == "cuda:7" and torch.cuda.device_count() > 7)
)]  # fmt: skip


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_cpu_is_always_there():
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:1:2", ""])
def test_a_misspelt_device_is_refused_naming_the_option(spec):
    with pytest.raises(InputError, match="^--device: .* is not a device"):
        resolve_device(spec)


def test_cuda_without_cuda_says_so():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(InputError, match="^--device: cuda is not available on this machine$"):
        resolve_device("cuda")


@pytest.mark.parametrize("device", MISSING)
def test_the_cli_refuses_a_missing_device_in_one_line_before_making_a_run(tmp_path, device):
    cmd = [sys.executable, "-m", "poisonlens.cli", "train", "--device", device, "--epochs", "1",
           "--runs-dir", str(tmp_path), "--name", "r", "--quiet"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device" in lines[0] and "not available" in lines[0], out.stderr
    assert not (tmp_path / "r").exists()


def test_seeded_generators_repeat_per_stream_and_differ_across_streams():
    a, b = seeded_generator(3, 5), seeded_generator(3, 5)
    assert torch.equal(torch.randperm(50, generator=a), torch.randperm(50, generator=b))
    c, d = seeded_generator(3, 5), seeded_generator(3, 6)
    assert not torch.equal(torch.randperm(50, generator=c), torch.randperm(50, generator=d))
