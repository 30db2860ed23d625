"""A parametric map: a small MLP trained to reproduce a fitted 2-D layout, then applied to every row.

UMAP is fitted on a sample of a run's gradient rows (a few thousand); placing the other rows
(millions, at ImageNet size) by nearest neighbours in gradient space costs a neighbour search per
row. A small network taught the sample's layout (regression on the fitted coordinates) places a
row with three matrix products instead: linear in the number of rows, in fixed-size batches, on
the GPU when there is one.

The same network places every snapshot, so the run keeps one layout: a row that is identical in
two snapshots gets the identical position (every batch has the same shape, padded at the end, so
the same kernels compute every row). Training is seeded and runs with torch's deterministic
algorithms, so a seed gives the same network and the same map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: rows per batch when placing (every batch padded to this size: the same kernels for every row)
PLACE_BATCH = 65_536
WIDTH = 128  # hidden width (256 fits the layout a little better but places 3-4x slower)
DEPTH = 3  # hidden layers


@dataclass(frozen=True)
class ParametricConfig:
    """How the network is shaped and trained.

    Attributes
    ----------
    width, depth : hidden width and number of hidden layers
    epochs : passes over the fitted rows (at least ``min_steps`` optimiser steps in all)
    batch : rows per optimiser step
    lr : Adam's learning rate (cosine-annealed to zero)
    neighbour_weight : weight of the term keeping each fitted row's distances to its nearest
        fitted neighbours (0: plain regression on the coordinates)
    """

    width: int = WIDTH
    depth: int = DEPTH
    epochs: int = 60
    min_steps: int = 1500
    batch: int = 256
    lr: float = 3e-3
    neighbour_weight: float = 0.0


class ParametricMap(nn.Module):
    """An MLP from standardised gradient rows to standardised map coordinates.

    Parameters
    ----------
    n_features : columns of a gradient row (the number of classes)
    mean, scale : float32 (n_features,), the input standardisation
    xy_mean : float32 (2,), xy_scale : float, the output's
    width, depth : hidden width and number of hidden layers
    """

    def __init__(self, n_features: int, mean: np.ndarray, scale: np.ndarray, xy_mean: np.ndarray, xy_scale: float,
                 *, width: int = WIDTH, depth: int = DEPTH):
        super().__init__()
        layers: list[nn.Module] = []
        size = n_features
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, 2))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale, np.float32)))
        self.register_buffer("xy_mean", torch.as_tensor(np.asarray(xy_mean, np.float32)))
        self.register_buffer("xy_scale", torch.tensor(float(xy_scale), dtype=torch.float32))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Standardised coordinates (n, 2) of raw gradient rows (n, n_features)."""
        return self.net((rows - self.mean) / self.scale)

    def to_map(self, rows: torch.Tensor) -> torch.Tensor:
        """Map coordinates (n, 2), in the fitted layout's units, of raw gradient rows (n, n_features)."""
        return self.forward(rows) * self.xy_scale + self.xy_mean


def fit_parametric(points: np.ndarray, xy: np.ndarray, *, seed: int = 0, config: ParametricConfig = ParametricConfig(),
                   device: torch.device | str = "cpu",
                   progress: Callable[[float], None] | None = None) -> ParametricMap:
    """Train a :class:`ParametricMap` to send ``points`` to their fitted positions ``xy``.

    Parameters
    ----------
    points : float32 ndarray of shape (n_fit, n_features), the rows the layout was fitted on
    xy : float32 ndarray of shape (n_fit, 2), their fitted positions
    seed : seeds the initialisation and the batch order
    config : the network's shape and training schedule
    device : where to train (the network is returned there)
    progress : called with the share of training done, a few times

    Returns
    -------
    ParametricMap in eval mode
    """
    points = np.asarray(points, np.float32)
    xy = np.asarray(xy, np.float32)
    mean = points.mean(0)
    scale = np.maximum(points.std(0), 1e-6)
    xy_mean = xy.mean(0)
    xy_scale = float(max(xy.std(), 1e-6))
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    # batches of 256 rows are too small to share between threads: one thread trains faster and
    # the same on every machine
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = ParametricMap(points.shape[1], mean, scale, xy_mean, xy_scale, width=config.width,
                              depth=config.depth).to(device)
        x = torch.as_tensor(points, device=device)
        y = torch.as_tensor((xy - xy_mean) / xy_scale, device=device)
        n = len(x)
        batch = min(config.batch, n)
        per_epoch = max(1, n // batch)
        epochs = max(config.epochs, -(-config.min_steps // per_epoch))
        steps = epochs * per_epoch
        opt = torch.optim.Adam(model.parameters(), lr=config.lr)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=steps, pct_start=0.1)
        near = _neighbours(points, y, config) if config.neighbour_weight > 0 else None
        gen = torch.Generator().manual_seed(seed)
        model.train()
        step = 0
        for epoch in range(epochs):
            order = torch.randperm(n, generator=gen).to(device)
            for b in range(per_epoch):
                rows = order[b * batch:(b + 1) * batch]
                out = model(x[rows])
                loss = ((out - y[rows]) ** 2).sum(1).mean()
                if near is not None:
                    nb, target_d = near[0][rows.cpu()].to(device), near[1][rows.cpu()].to(device)
                    dist = (out[:, None, :] - model(x[nb.reshape(-1)]).reshape(len(rows), -1, 2)).norm(dim=2)
                    loss = loss + config.neighbour_weight * ((dist - target_d) ** 2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
            if progress is not None and (epoch + 1) % max(1, epochs // 10) == 0:
                progress((epoch + 1) / epochs)
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    return model.eval()


def _neighbours(points: np.ndarray, y: torch.Tensor, config: ParametricConfig, k: int = 8):
    """Each fitted row's k nearest fitted rows and their distances in the fitted layout."""
    from sklearn.neighbors import NearestNeighbors

    idx = NearestNeighbors(n_neighbors=min(k + 1, len(points))).fit(points).kneighbors(points)[1][:, 1:]
    idx_t = torch.as_tensor(idx, dtype=torch.int64)
    yc = y.detach().cpu()
    return idx_t, (yc[:, None, :] - yc[idx_t]).norm(dim=2)


def place_parametric(model: ParametricMap, rows: np.ndarray, *, batch: int = PLACE_BATCH,
                     progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Place every row with the network, in padded batches of ``batch`` rows.

    Parameters
    ----------
    model : from :func:`fit_parametric` (its device is used)
    rows : float32 ndarray of shape (n, n_features)
    batch : rows per batch; the last batch is padded to this size so every row goes through
        the same kernels (identical rows get identical positions wherever they sit)
    progress : called as progress(rows done, n) after each batch

    Returns
    -------
    float32 ndarray of shape (n, 2)
    """
    rows = np.asarray(rows, np.float32)
    n = len(rows)
    out = np.empty((n, 2), np.float32)
    if n == 0:
        return out
    device = model.mean.device
    buf = torch.zeros((batch, rows.shape[1]), dtype=torch.float32, device=device)
    with torch.inference_mode():
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            buf.zero_()
            buf[: stop - start] = torch.from_numpy(np.array(rows[start:stop], dtype=np.float32)).to(device)  # a writable copy
            out[start:stop] = model.to_map(buf)[: stop - start].cpu().numpy()
            if progress is not None:
                progress(stop, n)
    return out
