"""Data sets and poison sets."""

from poisonlens.data.datasets import ImageDataset, load_dataset
from poisonlens.data.poisons import PoisonedDataset, PoisonSet, apply_poisons, load_poisons

__all__ = [
    "ImageDataset",
    "PoisonSet",
    "PoisonedDataset",
    "apply_poisons",
    "load_dataset",
    "load_poisons",
]
