"""Training with gradient snapshots and a defense hook, written to a run store.

The loop reads in order, once per epoch: set lr -> train on the active examples ->
evaluate (test accuracy, the target) -> snapshot + defense (every ``snapshot_every``
epochs and at the last) -> metrics -> checkpoint. Epoch 0 is a snapshot before training.
"""

from __future__ import annotations

import io
import json
import platform
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import core
from core.config import AUGMENTS, SCENARIOS, TrainConfig  # noqa: F401  (re-exported)
from core.data import PoisonedDataset, apply_poisons, load_dataset, load_poisons
from core.defense import build_defense
from core.errors import InputError
from core.models import Classifier, build_model, to_tensor
from core.snapshot import forward_batched, storage_projection, take_snapshot
from core.store import CHECKPOINTS, RunWriter, atomic_write_bytes, open_run


def versions() -> dict:
    import sklearn

    return {
        "poisonlens": core.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
    }


# --- small pure helpers --------------------------------------------------------------------


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The RNG for one epoch's shuffling and augmentation; a resumed run re-makes it exactly."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def lr_at(config: TrainConfig, epoch: int) -> float:
    """Learning rate during ``epoch`` (1-based): multi-step decay at fractions of the run."""
    passed = sum(epoch > round(m * config.epochs) for m in config.lr_milestones)
    return config.resolved_lr * config.lr_gamma**passed


def augment_batch(x: torch.Tensor, mode: str, gen: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding of size/8) and, for 'crop-flip', horizontal flips; x is (B, C, H, W)."""
    if mode == "none":
        return x
    b, c, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[
        torch.arange(b)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols
    ]
    if mode == "crop-flip":
        flip = torch.rand(b, generator=gen) < 0.5
        out[flip] = out[flip].flip(3)
    return out


def resolve_augment(mode: str, n_channels: int) -> str:
    if mode != "auto":
        return mode
    # Digits are not mirror-symmetric; natural colour images are.
    return "crop-flip" if n_channels == 3 else "crop"


def batches(indices: np.ndarray, batch_size: int, gen: torch.Generator) -> list[np.ndarray]:
    """Shuffle ``indices`` and cut them into batches; a last batch of one joins the previous one
    (batch norm cannot train on a single example)."""
    perm = indices[torch.randperm(len(indices), generator=gen).numpy()]
    out = [perm[i : i + batch_size] for i in range(0, len(perm), batch_size)]
    if len(out) > 1 and len(out[-1]) == 1:
        last = out.pop()
        out[-1] = np.concatenate([out[-1], last])
    return out


@torch.inference_mode()
def accuracy(model: Classifier, images: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    logits, _ = forward_batched(model, images, batch_size=batch_size)
    return float((logits.argmax(1) == labels).mean()) if len(labels) else float("nan")


# --- setup ---------------------------------------------------------------------------------


def load_training_data(config: TrainConfig) -> PoisonedDataset:
    """The training set as the victim sees it; for the clean control, the poison rows are
    restored to their base images and only the target is kept."""
    dataset = load_dataset(config.dataset)
    poisons = load_poisons(config.poisons) if config.poisons else None
    data = apply_poisons(dataset, poisons, source=config.poisons or "")
    if config.clean_control and poisons is not None:
        data = replace(apply_poisons(dataset, None), poisons=poisons)
    return data


def make_model(config: TrainConfig, data: PoisonedDataset) -> Classifier:
    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        n_classes=data.dataset.n_classes,
        in_channels=data.x_train.shape[-1],
        width=config.width,
    )
    if config.scenario == "scratch":
        return model
    state = torch.load(config.pretrained, map_location="cpu", weights_only=True)
    head_shape = (model.head.out_features, model.head.in_features)
    if (
        config.scenario == "transfer"
        or tuple(state.get("head.weight", torch.empty(0)).shape) != head_shape
    ):
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    body_missing = [k for k in missing if not k.startswith("head.")]
    if body_missing or unexpected:
        raise InputError(
            config.pretrained,
            f"checkpoint does not fit model {config.model!r} "
            f"(missing {body_missing[:3]}, unexpected {list(unexpected)[:3]})",
        )
    if config.scenario == "transfer":
        for p in model.body.parameters():
            p.requires_grad_(False)
    return model


def make_optimizer(config: TrainConfig, model: Classifier) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params,
        lr=config.resolved_lr,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
    )


# --- the loop ------------------------------------------------------------------------------


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = True,
    stop_at_epoch: int | None = None,
) -> Path:
    """Train under ``config.defense``, writing everything to ``run_dir``; returns ``run_dir``.

    With ``resume=True`` the run continues from its last checkpoint and ends identical to an
    uninterrupted run. ``stop_at_epoch`` ends the process early after that epoch's checkpoint
    (as a kill would, but cleanly); used by tests and benchmarks.
    """
    run_dir = Path(run_dir)
    writer = RunWriter(run_dir)
    if resume:
        config = TrainConfig.from_json(open_run(run_dir).config)
    elif (run_dir / "run.json").exists():
        raise InputError(
            run_dir, "run already exists; pass --resume to continue it or choose another --name"
        )
    config.validate()
    data = load_training_data(config)
    model = make_model(config, data).to(
        memory_format=torch.channels_last
    )  # faster convolutions on CPU
    optimizer = make_optimizer(config, model)
    defense = build_defense(config.defense, **config.defense_params)
    poisons = data.poisons
    n = data.n_samples
    active = np.ones(n, dtype=bool)
    dropped_epoch = np.full(n, -1, dtype=np.int64)
    metrics: list[dict] = []
    targets: list[dict] = []
    start = 0

    if resume:
        state = torch.load(run_dir / CHECKPOINTS / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        active = state["active"].numpy().astype(bool)
        dropped_epoch = state["dropped_epoch"].numpy().astype(np.int64)
        start = int(state["epoch"]) + 1
        run = open_run(run_dir)
        metrics = [r for r in run.metrics().to_dict("records") if r["epoch"] < start]
        targets = [r for r in run.targets().to_dict("records") if r["epoch"] < start]
        writer.set_status("running")
    else:
        target = None
        if poisons is not None:
            target = {
                "target_label": poisons.target_label,
                "adv_label": poisons.adv_label,
                "target_index": poisons.target_index,
                "attack": poisons.attack,
                "eps": poisons.eps,
                "n_poisons": int(data.is_poison.sum()),
                "clean_control": config.clean_control,
            }
        writer.create(
            run_dir.name,
            config.to_json(),
            versions(),
            class_names=list(data.dataset.class_names),
            target=target,
        )
        writer.write_examples(
            pd.DataFrame(
                {
                    "index": np.arange(n, dtype=np.int64),
                    "label": data.y_train,
                    "is_poison": data.is_poison,
                    "base_index": data.base_index,
                }
            )
        )
        writer.write_images(data.x_train, poisons.target_x if poisons else None)

    augment = resolve_augment(config.augment, data.x_train.shape[-1])
    projection = storage_projection(
        model.n_features, config.embedding_dims, random_state=config.seed
    )
    snapshot_epochs = set(config.snapshot_epochs())
    x_all = to_tensor(data.x_train)
    y_all = torch.as_tensor(data.y_train)
    bar = tqdm(
        total=config.epochs + 1,
        initial=start,
        desc=run_dir.name,
        unit="epoch",
        disable=not show_progress,
    )
    try:
        for epoch in range(start, config.epochs + 1):
            row = {"epoch": epoch, "lr": lr_at(config, max(epoch, 1))}
            writer.write_progress(epoch=epoch, epochs=config.epochs, phase="train")
            # 1. train (epoch 0 is the untrained model)
            t0 = time.perf_counter()
            row["train_loss"] = float("nan")
            if epoch > 0:
                for group in optimizer.param_groups:
                    group["lr"] = row["lr"]
                row["train_loss"] = train_one_epoch(
                    model,
                    optimizer,
                    x_all,
                    y_all,
                    np.flatnonzero(active),
                    config,
                    augment,
                    epoch_generator(config.seed, epoch),
                )
            row["epoch_seconds"] = time.perf_counter() - t0
            # 2. evaluate
            writer.write_progress(epoch=epoch, epochs=config.epochs, phase="evaluate")
            t0 = time.perf_counter()
            row["test_acc"] = accuracy(
                model, data.dataset.x_test, data.dataset.y_test, config.snapshot_batch_size
            )
            row.update(target_metrics(model, poisons))
            row["eval_seconds"] = time.perf_counter() - t0
            # 3. snapshot and defense
            row["snapshot_seconds"] = row["defense_seconds"] = 0.0
            row["n_new_drops"] = 0
            row["defense_info"] = ""
            if epoch in snapshot_epochs:
                writer.write_progress(epoch=epoch, epochs=config.epochs, phase="snapshot")
                new = snapshot_and_defend(
                    model,
                    data,
                    config,
                    defense,
                    epoch,
                    active,
                    dropped_epoch,
                    projection,
                    writer,
                    row,
                    targets,
                )
                active &= ~new
                dropped_epoch[new] = epoch
                row["n_new_drops"] = int(new.sum())
            row["n_active"] = int(active.sum())
            row["n_dropped"] = int((~active).sum())
            row["n_poison_dropped"] = int((~active & data.is_poison).sum())
            metrics.append(row)
            writer.write_metrics(pd.DataFrame(metrics))
            if targets:
                writer.write_targets(pd.DataFrame(targets))
            # 4. checkpoint: the last thing of an epoch, so a resume redoes at most one epoch
            save_checkpoint(run_dir, epoch, model, optimizer, active, dropped_epoch)
            bar.update(1)
            bar.set_postfix(acc=f"{row['test_acc']:.3f}", dropped=row["n_dropped"])
            if stop_at_epoch is not None and epoch >= stop_at_epoch and epoch < config.epochs:
                writer.write_progress(epoch=epoch, epochs=config.epochs, phase="stopped")
                return run_dir
        buf = io.BytesIO()
        torch.save(model.state_dict(), buf)
        atomic_write_bytes(run_dir / CHECKPOINTS / "model.pt", buf.getvalue())
        writer.write_progress(epoch=config.epochs, epochs=config.epochs, phase="done")
        writer.set_status("finished")
    except KeyboardInterrupt:
        writer.set_status("failed", "interrupted")
        raise
    except Exception as err:
        writer.set_status("failed", f"{type(err).__name__}: {err}".splitlines()[0])
        raise
    finally:
        bar.close()
    return run_dir


def train_one_epoch(
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    x_all: torch.Tensor,
    y_all: torch.Tensor,
    indices: np.ndarray,
    config: TrainConfig,
    augment: str,
    gen: torch.Generator,
) -> float:
    """One pass over ``indices`` (the active examples); returns the mean training loss."""
    model.train()
    if config.scenario == "transfer":
        model.body.eval()  # a frozen extractor keeps its batch-norm statistics
    total, count = 0.0, 0
    for batch in batches(indices, config.batch_size, gen):
        idx = torch.from_numpy(batch)
        x = augment_batch(x_all[idx], augment, gen).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), y_all[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / max(count, 1)


def target_metrics(model: Classifier, poisons) -> dict:
    """The target's predicted class, its probability of ``adv_label`` and attack success."""
    if poisons is None:
        return {"target_pred": -1, "target_prob_adv": float("nan"), "attack_success": float("nan")}
    logits, _ = forward_batched(model, poisons.target_x[None])
    p = torch.softmax(torch.from_numpy(logits), 1)[0]
    pred = int(p.argmax())
    return {
        "target_pred": pred,
        "target_prob_adv": float(p[poisons.adv_label]),
        "attack_success": float(pred == poisons.adv_label),
    }


def snapshot_and_defend(
    model,
    data: PoisonedDataset,
    config: TrainConfig,
    defense,
    epoch: int,
    active: np.ndarray,
    dropped_epoch: np.ndarray,
    projection,
    writer: RunWriter,
    row: dict,
    targets: list[dict],
) -> np.ndarray:
    """Take the snapshot, run the defense, write the snapshot table; returns the new drops."""
    poisons = data.poisons
    t0 = time.perf_counter()
    snap, target = take_snapshot(
        model,
        data.x_train,
        data.y_train,
        epoch=epoch,
        target_image=poisons.target_x if poisons else None,
        adv_label=poisons.adv_label if poisons else None,
        batch_size=config.snapshot_batch_size,
    )
    row["snapshot_seconds"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = defense(snap, active.copy())
    row["defense_seconds"] = time.perf_counter() - t0
    # The last snapshot drops nothing: no training is left for a drop to change.
    in_window = config.drop_after <= epoch < min(config.stop_after, config.epochs)
    new = result.suspect & active if in_window else np.zeros_like(active)
    row["defense_info"] = json.dumps(result.info, default=_jsonable)
    emb = snap.embeddings if projection is None else snap.embeddings @ projection
    frame = {"index": np.arange(snap.n_samples, dtype=np.int64), "label": snap.labels}
    frame.update({f"g_{c}": snap.grads[:, c] for c in range(snap.n_classes)})
    frame.update({f"emb_{j}": emb[:, j] for j in range(emb.shape[1])})
    after = np.where(new, epoch, dropped_epoch)
    frame.update(
        loss=snap.loss,
        confidence=snap.confidence,
        prediction=snap.prediction,
        active=active.copy(),
        score=result.score.astype(np.float64),
        suspect=result.suspect,
        drop=new,
        dropped_epoch=after,
    )
    frame.update(result.columns)
    writer.write_snapshot(epoch, pd.DataFrame(frame))
    if target is not None:
        t_emb = target["embedding"] if projection is None else target["embedding"] @ projection
        targets.append(
            {
                "epoch": epoch,
                "prediction": target["prediction"],
                "prob_adv": target["prob_adv"],
                **{f"g_{c}": float(v) for c, v in enumerate(target["grads"])},
                **{f"emb_{j}": float(v) for j, v in enumerate(t_emb)},
            }
        )
    return new


def save_checkpoint(
    run_dir: Path,
    epoch: int,
    model: Classifier,
    optimizer: torch.optim.Optimizer,
    active: np.ndarray,
    dropped_epoch: np.ndarray,
) -> None:
    """Atomically replace checkpoints/last.pt (tensors only, so it loads with weights_only=True)."""
    buf = io.BytesIO()
    torch.save(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "active": torch.from_numpy(active.copy()),
            "dropped_epoch": torch.from_numpy(dropped_epoch.copy()),
        },
        buf,
    )
    atomic_write_bytes(run_dir / CHECKPOINTS / "last.pt", buf.getvalue())


def _jsonable(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def with_overrides(config: TrainConfig, **overrides) -> TrainConfig:
    """``config`` with some fields replaced (None values are ignored)."""
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})
