"""Models: the same small CNN from 8x8 to 32x32, ResNet-18 on 32x32, batch-norm folding."""

import pytest
import torch

from poisonlens.models import build_model
from poisonlens.snapshot import fold_batchnorm


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (1, 28), (3, 32)])
def test_small_cnn_gives_logits_and_features_for_every_supported_size(channels, size):
    model = build_model("smallcnn", n_classes=10, in_channels=channels, width=8)
    x = torch.rand(3, channels, size, size)
    assert model(x).shape == (3, 10)
    assert model.features(x).shape == (3, model.n_features)


def test_resnet18_takes_32x32_colour_images():
    model = build_model("resnet18", n_classes=10, in_channels=3)
    assert model.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 10) and model.n_features == 512


def test_unknown_model_is_refused():
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg", n_classes=2, in_channels=1)


@pytest.mark.parametrize("name", ["smallcnn", "resnet18"])
def test_folding_batchnorm_keeps_eval_outputs(name):
    torch.manual_seed(0)
    model = build_model(name, n_classes=10, in_channels=3, width=8)
    model.train()
    for _ in range(3):  # give batch norm non-trivial running statistics
        model(torch.rand(16, 3, 32, 32) * 2)
    model.eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        expected = model.body((x - model.mean) / model.std)
        folded = fold_batchnorm(model.body)((x - model.mean) / model.std)
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-5)
    if name == "smallcnn":
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fold_batchnorm(model.body).modules())
