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
        """Penultimate embedding of shape (B, n_features).

        Parameters
        ----------
        x : float tensor of shape (B, C, H, W)
            Pixels in [0, 1]; normalised here by the model's ``mean`` and ``std``.

        Returns
        -------
        float tensor of shape (B, n_features), on ``x``'s device
        """
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape (B, n_classes) for pixels ``x``.

        Parameters
        ----------
        x : float tensor of shape (B, C, H, W)
            Pixels in [0, 1], as the data sets hold them.

        Returns
        -------
        float tensor of shape (B, n_classes): the head applied to :meth:`features`
        """
        return self.head(self.features(x))


class PoolIfLarge(nn.Module):
    """2x2 max-pool for inputs of at least ``min_size`` pixels; identity for small ones (8x8 digits)."""

    def __init__(self, min_size: int = 16):
        super().__init__()
        self.min_size = min_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Halve large inputs, pass small ones unchanged.

        Parameters
        ----------
        x : tensor of shape (B, C, H, W)
            Square feature maps; the width decides, as the data sets hold square images.

        Returns
        -------
        tensor of shape (B, C, H // 2, W // 2) when ``W >= min_size``, else ``x`` itself
        """
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
    name : 'smallcnn', 'resnet18', 'torchvision:NAME', 'timm:NAME' or 'module.path:factory'
        (:mod:`poisonlens.model_spec`; a module spec must have been given on the command line)
    n_classes : number of output classes
    in_channels : 1 for grey, 3 for RGB
    width : channels of the small CNN's first block (ignored by resnet18)

    Returns
    -------
    Classifier, on the CPU, in float32, with torch's default (seeded) initialisation.
    """
    from poisonlens.model_spec import check_trusted, parse

    kind, spec = parse(name)  # an InputError (a ValueError) naming --model for a bad spec
    if name == "smallcnn":
        return Classifier(_small_cnn_body(in_channels, width), 4 * width, n_classes)
    if name == "resnet18":
        body, n_features = _resnet18_body(in_channels)
        return Classifier(body, n_features, n_classes)
    check_trusted(name)  # a module:factory spec read from a file is refused here
    return wrap_network(_external_network(kind, spec, n_classes, in_channels), name,
                        n_classes=n_classes, in_channels=in_channels,
                        grey_to_rgb=kind in ("torchvision",))  # fmt: skip


class GreyToRGB(nn.Module):
    """(B, 1, H, W) -> (B, 3, H, W) by repeating the channel: grey images into an RGB network."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Repeat a single channel three times; other inputs pass unchanged.

        Parameters
        ----------
        x : tensor of shape (B, C, H, W)
            Grey images (C = 1) or already RGB ones (C = 3).

        Returns
        -------
        tensor of shape (B, 3, H, W); a grey input is expanded (a view, no copy)
        """
        return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _external_network(kind: str, spec: str, n_classes: int, in_channels: int) -> nn.Module:
    from poisonlens.errors import InputError

    if kind == "torchvision":
        names = torchvision.models.list_models(module=torchvision.models)  # classifiers only
        if spec not in names:
            raise InputError("--model", f"torchvision has no classifier {spec!r} (e.g. {', '.join(names[:4])})")
        return torchvision.models.get_model(spec, weights=None, num_classes=n_classes)
    if kind == "timm":
        try:
            import timm
        except ImportError:
            raise InputError("--model", "timm is not installed: pip install timm") from None
        if not timm.is_model(spec):
            raise InputError("--model", f"timm has no model {spec!r}")
        return timm.create_model(spec, pretrained=False, num_classes=n_classes, in_chans=in_channels)
    import importlib
    import os
    import sys

    module_name, _, attr = spec.partition(":")
    if os.getcwd() not in sys.path:  # as `python -m` and uvicorn do: your folder's modules import
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise InputError("--model", f"cannot import {module_name} ({err})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError("--model", f"{module_name} has no callable {attr!r}")
    net = factory()
    if not isinstance(net, nn.Module):
        raise InputError("--model", f"{spec}() returned {type(net).__name__}, not an nn.Module")
    return net


def wrap_network(
    net: nn.Module, name: str, *, n_classes: int, in_channels: int, grey_to_rgb: bool = False
) -> Classifier:
    """Any classifier as a :class:`Classifier`: its last ``nn.Linear`` is the head, and what that
    layer reads (its input) is the penultimate features.

    The last Linear is replaced in ``net`` by an identity, so ``net`` itself computes the
    features; the network's output must be that layer's output (true of torchvision's and timm's
    classifiers). A head with another number of outputs is replaced by a fresh
    ``nn.Linear(in_features, n_classes)``.

    Parameters
    ----------
    net : the network, taking (B, C, H, W) pixels
    name : its spec, for messages
    n_classes, in_channels : the data set's
    grey_to_rgb : repeat a grey image's channel for a network that reads RGB

    Returns
    -------
    Classifier with ``head`` the (resized) last Linear and ``n_features`` its ``in_features``
    """
    from poisonlens.errors import InputError

    linears = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InputError("--model", f"{name} has no nn.Linear layer to take as its head")
    path, head = linears[-1]
    parent_path, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent_path) if parent_path else net, child, nn.Identity())
    if head.out_features != n_classes:
        head = nn.Linear(head.in_features, n_classes, bias=head.bias is not None)
    body = nn.Sequential(GreyToRGB(), net) if grey_to_rgb and in_channels == 1 else net
    model = Classifier(body, head.in_features, n_classes)
    model.head = head
    return model


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
