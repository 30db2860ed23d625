"""Classifiers with an explicit penultimate layer: ``forward(x) = head(features(x))``.

Inputs are float tensors of shape (batch, channels, height, width) scaled to [0, 1]
and normalised by :func:`normalize` inside the model, so attacks can work in pixel space.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from poisonlens.config import MODEL_NAMES  # noqa: E402,F401  (one list of networks)


class Classifier(nn.Module):
    """A feature extractor followed by a linear head; inputs in [0, 1], shape (B, C, H, W)."""

    def __init__(
        self, body: nn.Module, n_features: int, n_classes: int, mean: float = 0.5, std: float = 0.25
    ):
        super().__init__()
        self.body = body
        self.head = nn.Linear(n_features, n_classes)
        self.n_features = n_features
        self.mean = mean
        self.std = std

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate embedding of shape (B, n_features)."""
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, n_classes) for pixels ``x`` of shape (B, C, H, W) in [0, 1]."""
        return self.head(self.features(x))


class PoolIfLarge(nn.Module):
    """2x2 max-pool for inputs of at least ``min_size`` pixels; identity for small ones (8x8 digits)."""

    def __init__(self, min_size: int = 16):
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H/2, W/2) when ``H >= min_size``, else ``x``."""
        return F.max_pool2d(x, 2) if x.shape[-1] >= self.min_size else x


def _small_cnn_body(in_channels: int, width: int) -> nn.Module:
    # Three conv blocks; pooling early on large inputs keeps a 32x32 epoch cheap on a CPU, and
    # adaptive pooling makes the same weights work from 8x8 to 32x32.
    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        """conv 3x3 -> batch norm -> ReLU (-> 2x2 max-pool)."""
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return layers

    return nn.Sequential(
        *block(in_channels, width, False),
        PoolIfLarge(),
        *block(width, 2 * width, True),
        *block(2 * width, 4 * width, True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def _resnet18_body(in_channels: int) -> tuple[nn.Module, int]:
    # torchvision's ResNet-18 adapted to 32x32: 3x3 stem, no max-pool (as in the CIFAR literature).
    net = torchvision.models.resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    n_features = net.fc.in_features
    net.fc = nn.Identity()
    return net, n_features


def build_model(name: str, *, n_classes: int, in_channels: int, width: int = 32) -> Classifier:
    """Make a fresh model: ``smallcnn`` (default for digits) or ``resnet18`` (32x32 inputs).

    Parameters
    ----------
    name : {'smallcnn', 'resnet18'}
    n_classes : number of output classes
    in_channels : 1 for grey, 3 for RGB
    width : channels of the small CNN's first block (ignored by resnet18)

    Returns
    -------
    Classifier, on the CPU, in float32, with torch's default (seeded) initialisation.
    """
    if name == "smallcnn":
        return Classifier(_small_cnn_body(in_channels, width), 4 * width, n_classes)
    if name == "resnet18":
        body, n_features = _resnet18_body(in_channels)
        return Classifier(body, n_features, n_classes)
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")


def to_tensor(images) -> torch.Tensor:
    """uint8 images -> float pixels in [0, 1].

    Parameters
    ----------
    images : uint8 array or tensor of shape (n, height, width, channels)

    Returns
    -------
    float32 tensor of shape (n, channels, height, width), laid out channels-last (the
    permuted view of the input's memory order, which the convolutions prefer), on the
    input's device. Made per batch by the trainer: the whole set stays uint8.
    """
    t = torch.as_tensor(images)
    return t.permute(0, 3, 1, 2).float().div_(255.0)
