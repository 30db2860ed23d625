"""Data sets and poison sets."""

from core.data.datasets import ImageDataset, load_dataset
from core.data.poisons import PoisonedDataset, PoisonSet, apply_poisons, load_poisons

__all__ = [
    "ImageDataset",
    "PoisonSet",
    "PoisonedDataset",
    "apply_poisons",
    "load_dataset",
    "load_poisons",
]
