"""A network defined outside poisonlens, for ``--model tests.custom_model:tiny_mlp``."""

import torch.nn as nn


def tiny_mlp() -> nn.Module:
    """An MLP on 8x8 grey digits whose last Linear is its output (10 classes)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def not_a_module():
    """Returns something that is not a network."""
    return 42
