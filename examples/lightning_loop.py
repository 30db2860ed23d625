"""EPIC in a PyTorch Lightning fit: poisonlens.lightning.EpicCallback on scikit-learn's digits.

    pip install 'poisonlens[lightning]'
    python examples/lightning_loop.py --runs-dir runs --name lightning --epochs 8
    poisonlens ui --runs-dir runs
"""

from __future__ import annotations

import argparse

import lightning.pytorch as L
import torch
import torch.nn as nn
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import poisonlens
from poisonlens.lightning import EpicCallback


class Net(L.LightningModule):
    """A small CNN; its last nn.Linear is the head, whose input EPIC's dashboard shows."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, n_classes),
        )  # fmt: skip

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--name", default="lightning")
    p.add_argument("--epochs", type=int, default=8)
    args = p.parse_args(argv)

    digits = load_digits()
    x = torch.tensor(digits.images[:, None] / 16.0, dtype=torch.float32)  # (n, 1, 8, 8) in [0, 1]
    y = torch.tensor(digits.target)
    epic = EpicCallback(
        f"{args.runs_dir}/{args.name}", y,
        snapshot_loader=DataLoader(TensorDataset(x, y), batch_size=512),  # in order, no augmentation
        options=poisonlens.TrackerOptions(subset_size=0.1, drop_after=2, snapshot_every=2), images=x,
    )  # fmt: skip
    train = DataLoader(TensorDataset(x, y), batch_size=128, sampler=epic.sampler())
    torch.manual_seed(0)
    trainer = L.Trainer(max_epochs=args.epochs, callbacks=[epic], use_distributed_sampler=False,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)  # fmt: skip
    trainer.fit(Net(), train)
    dropped = sum(len(d) for d in epic.dropped.values())
    print(f"{dropped} examples dropped; run written to {epic.run_dir}; "
          f"see it with: poisonlens ui --runs-dir {args.runs_dir}")  # fmt: skip
    return str(epic.run_dir)


if __name__ == "__main__":
    main()
