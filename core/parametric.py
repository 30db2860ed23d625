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
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

#: rows per batch when placing (every batch padded to this size: the same kernels for every row).
#: 8,192 rows keep a layer's activations (8,192 x 64 float32, 2 MB) in cache: 1.3x less CPU than
#: 65,536-row batches for the same rows.
PLACE_BATCH = 8_192
#: hidden width: 64 places 3 million rows in ~1.5 s of one core, 128 in ~4 s, for a little better
#: fit (trustworthiness 0.98 against 0.97 of UMAP transform's in bench/projection.py's trial)
WIDTH = 64
DEPTH = 3  # hidden layers


@dataclass(frozen=True)
class ParametricConfig:
    """How the network is shaped and trained.

    Attributes
    ----------
    width, depth : hidden width and number of hidden layers
    epochs : passes over the fitted rows (at least ``min_steps`` optimiser steps in all)
    batch : rows per optimiser step
    lr : Adam's learning rate (one-cycle schedule, annealed to zero)
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


@dataclass(frozen=True)
class Scaling:
    """The standardisation a :class:`ParametricMap` applies to its input and undoes on its output.

    Attributes
    ----------
    mean, scale : float32 ndarrays of shape (n_features,), per gradient column
    xy_mean : float32 ndarray of shape (2,), the fitted layout's centre
    xy_scale : float, the fitted layout's spread (one scale for x and y: the map keeps its aspect)
    """

    mean: np.ndarray
    scale: np.ndarray
    xy_mean: np.ndarray
    xy_scale: float

    @classmethod
    def of(cls, points: np.ndarray, xy: np.ndarray) -> Scaling:
        """The standardisation of fitted rows and their positions.

        Parameters
        ----------
        points : float32 ndarray of shape (n_fit, n_features), the fitted gradient rows
        xy : float32 ndarray of shape (n_fit, 2), their fitted positions

        Returns
        -------
        Scaling: per-column mean and standard deviation (floored at 1e-6) of ``points``; the
        centre of ``xy`` and one standard deviation over both of its columns
        """
        return cls(points.mean(0).astype(np.float32), np.maximum(points.std(0), 1e-6).astype(np.float32),
                   xy.mean(0).astype(np.float32), float(max(xy.std(), 1e-6)))


class ParametricMap(nn.Module):
    """An MLP from standardised gradient rows to standardised map coordinates.

    Parameters
    ----------
    scaling : Scaling
        The input and output standardisation; its ``mean`` gives the number of input columns
        (the number of classes).
    width : int, default WIDTH
        Units in each hidden layer.
    depth : int, default DEPTH
        Number of hidden layers (SiLU after each).
    """

    def __init__(self, scaling: Scaling, *, width: int = WIDTH, depth: int = DEPTH):
        super().__init__()
        layers: list[nn.Module] = []
        size = len(scaling.mean)
        for _ in range(depth):
            layers += [nn.Linear(size, width), nn.SiLU()]
            size = width
        layers.append(nn.Linear(size, 2))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.as_tensor(np.asarray(scaling.mean, np.float32)))
        self.register_buffer("scale", torch.as_tensor(np.asarray(scaling.scale, np.float32)))
        self.register_buffer("xy_mean", torch.as_tensor(np.asarray(scaling.xy_mean, np.float32)))
        self.register_buffer("xy_scale", torch.tensor(float(scaling.xy_scale), dtype=torch.float32))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        """Standardised coordinates of raw gradient rows.

        Parameters
        ----------
        rows : float32 tensor of shape (n, n_features), on the network's device

        Returns
        -------
        float32 tensor of shape (n, 2)
        """
        return self.net((rows - self.mean) / self.scale)

    def to_map(self, rows: torch.Tensor) -> torch.Tensor:
        """Map coordinates of raw gradient rows: :meth:`forward` with the output standardisation undone.

        Parameters
        ----------
        rows : float32 tensor of shape (n, n_features)
            Gradient rows as stored (not standardised), on the network's device.

        Returns
        -------
        float32 tensor of shape (n, 2), x and y in the fitted layout's units
        """
        return self.forward(rows) * self.xy_scale + self.xy_mean


@contextmanager
def _reproducible(threads: int):
    """torch's deterministic algorithms and ``threads`` CPU threads, both put back afterwards."""
    deterministic, before = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(before)


def fit_parametric(points: np.ndarray, xy: np.ndarray, *, seed: int = 0, config: ParametricConfig = ParametricConfig(),
                   device: torch.device | str = "cpu",
                   progress: Callable[[float], None] | None = None) -> ParametricMap:
    """Train a :class:`ParametricMap` to send ``points`` to their fitted positions ``xy``.

    Training runs on one CPU thread: batches of 256 rows are too small to share between threads
    (two threads took more CPU and more wall time under load), and one thread gives the same
    network on every machine.

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
    scaling = Scaling.of(points, xy)
    with _reproducible(threads=1):
        torch.manual_seed(seed)
        model = ParametricMap(scaling, width=config.width, depth=config.depth).to(device)
        x = torch.as_tensor(points, device=device)
        y = torch.as_tensor((xy - scaling.xy_mean) / scaling.xy_scale, device=device)
        near = _neighbours(points, y, config) if config.neighbour_weight > 0 else None
        _train(model, (x, y, near), config, torch.Generator().manual_seed(seed), progress)
    return model.eval()


def _train(model: ParametricMap, data: tuple, config: ParametricConfig, gen: torch.Generator,
           progress: Callable[[float], None] | None) -> None:
    """Adam with a one-cycle schedule on the squared distance to the fitted positions (plus the
    neighbour term when ``config.neighbour_weight`` > 0); ``data`` is (x, y, neighbours or None)."""
    x, y, near = data
    n, device = len(x), x.device
    batch = min(config.batch, n)
    per_epoch = max(1, n // batch)
    epochs = max(config.epochs, -(-config.min_steps // per_epoch))
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=config.lr, total_steps=epochs * per_epoch, pct_start=0.1)
    model.train()
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
        if progress is not None and (epoch + 1) % max(1, epochs // 10) == 0:
            progress((epoch + 1) / epochs)


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
    # one CPU thread: a 64-wide network on 8,192 rows is too little work to share, and a second
    # thread spinning on a busy machine took 2-3x the CPU time (bench/projection.py)
    with _reproducible(threads=1), torch.inference_mode():
        for start in range(0, n, batch):
            stop = min(n, start + batch)
            buf.zero_()
            buf[: stop - start] = torch.from_numpy(np.array(rows[start:stop], dtype=np.float32)).to(device)  # a writable copy
            out[start:stop] = model.to_map(buf)[: stop - start].cpu().numpy()
            if progress is not None:
                progress(stop, n)
    return out
