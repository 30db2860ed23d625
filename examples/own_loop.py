"""EPIC in your own training loop: plain PyTorch on scikit-learn's digits, with poisonlens.EpicTracker.

    python examples/own_loop.py --runs-dir runs --name own-loop --epochs 12
    poisonlens ui --runs-dir runs

The loop is ordinary PyTorch (SGD, a crop augmentation, an eval pass over the training set
after each epoch). With the same options it drops exactly the examples, at exactly the epochs,
that `poisonlens train --dataset digits --defense epic` drops (tests/test_own_loop.py shows
it), because it builds the same model from the same seed and visits the same batches:
``poisonlens.data.load_dataset`` (the digits split), ``poisonlens.models.build_model`` (the
small CNN) and ``poisonlens.augment.augment_batch`` (the crop) are the three helpers it borrows
for that; everything else is written out here. Your loop does not need them: any model, data
and augmentation work with the tracker.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import poisonlens
from poisonlens.augment import augment_batch
from poisonlens.data import load_dataset
from poisonlens.models import build_model


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--name", default="own-loop")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--width", type=int, default=32, help="channels of the small CNN's first block")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--subset-size", type=float, default=0.1)
    p.add_argument("--snapshot-every", type=int, default=2)
    p.add_argument("--drop-after", type=int, default=4)
    p.add_argument("--stop-after", type=int, default=30)
    return p.parse_args(argv)


def lr_at(epoch: int, args) -> float:
    """Multi-step decay: x0.1 at 3/8, 5/8 and 7/8 of the run (poisonlens train's default)."""
    passed = sum(epoch > round(m * args.epochs) for m in (0.375, 0.625, 0.875))
    return args.lr * 0.1**passed


@torch.no_grad()
def forward_all(model, images: torch.Tensor, batch_size: int = 128):
    """Eval-mode logits and penultimate features over uint8 images (n, height, width, channels)."""
    model.eval()
    logits, feats = [], []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].permute(0, 3, 1, 2).float().div(255)
        f = model.features(x.contiguous(memory_format=torch.channels_last))
        logits.append(model.head(f))
        feats.append(f)
    return torch.cat(logits), torch.cat(feats)


def main(argv=None) -> str:
    args = parse_args(argv)
    data = load_dataset("digits")
    images, labels = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train).long()
    test_images, test_labels = torch.from_numpy(data.x_test), torch.from_numpy(data.y_test).long()

    torch.manual_seed(args.seed)
    model = build_model("smallcnn", n_classes=data.n_classes, in_channels=1, width=args.width)
    model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True,
                                weight_decay=5e-4)  # fmt: skip

    options = poisonlens.TrackerOptions(
        subset_size=args.subset_size, drop_after=args.drop_after, stop_after=args.stop_after,
        snapshot_every=args.snapshot_every, epochs=args.epochs, seed=args.seed,
        class_names=data.class_names,
    )  # fmt: skip
    tracker = poisonlens.EpicTracker(f"{args.runs_dir}/{args.name}", labels, options, images=data.x_train)
    with tracker:  # a crash in the loop marks the run failed
        for epoch in range(args.epochs + 1):  # epoch 0: the snapshot before training
            loss_sum, seen = 0.0, 0
            if epoch > 0:
                for group in optimizer.param_groups:
                    group["lr"] = lr_at(epoch, args)
                model.train()
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
                active = torch.from_numpy(tracker.active_indices())
                order = active[torch.randperm(len(active), generator=gen)]
                batches = list(order.split(args.batch_size))
                if len(batches) > 1 and len(batches[-1]) == 1:  # batch norm cannot train on one
                    batches[-2:] = [torch.cat(batches[-2:])]
                for idx in batches:
                    x = augment_batch(images[idx].permute(0, 3, 1, 2), "crop", gen)
                    x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
                    loss = F.cross_entropy(model(x), labels[idx])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    loss_sum, seen = loss_sum + float(loss.detach()) * len(idx), seen + len(idx)
            test_logits, _ = forward_all(model, test_images)
            test_acc = float((test_logits.argmax(1) == test_labels).float().mean())
            logits = features = None
            if tracker.wants_snapshot(epoch):  # skip the pass over the training set otherwise
                logits, features = forward_all(model, images)
            dropped = tracker.snapshot(epoch, logits=logits, features=features, test_acc=test_acc,
                                       train_loss=loss_sum / seen if seen else None,
                                       lr=lr_at(max(epoch, 1), args))  # fmt: skip
            print(f"epoch {epoch:3d}  test acc {test_acc:.3f}  dropped {len(dropped):3d}  "
                  f"active {len(tracker.active_indices())}")  # fmt: skip
    print(f"run written to {tracker.run_dir}; see it with: poisonlens ui --runs-dir {args.runs_dir}")
    return str(tracker.run_dir)


if __name__ == "__main__":
    main()
