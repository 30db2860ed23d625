"""2-D maps of a run's gradient snapshots, one layout per run so that epochs stay comparable.

A layout is fitted **once** on gradient rows pooled over every snapshot (subsampled to
``max_fit`` rows when the run is large), and every snapshot is then placed in that same
layout. An example therefore moves across epochs while the map itself holds still.

How the rows are placed (``placement``):

- ``parametric`` (the default): a small MLP is trained to reproduce the fitted rows' UMAP
  positions (:mod:`poisonlens.parametric`), then places **every** row of every snapshot, in
  fixed-size batches (on CUDA when there is one). Its cost is linear in the rows and tiny per
  row; the same network places every snapshot, so a row identical in two snapshots gets the
  identical position. When the whole run fits in ``max_fit`` rows, the fitted positions are
  used as they are.
- ``knn`` (the placement before, kept to compare): rows that were in the fit sample keep their
  fitted position; every other row is placed at the distance-weighted mean of the positions of
  its ``k`` nearest fitted rows in gradient space, which is how UMAP's own ``transform``
  initialises new points (without its slow refinement step). A neighbour search per row.

PCA is linear and places every row exactly.

The result is a table with columns ``epoch, index, x, y`` (the target's row has index -1),
stored in the run as ``projections/<method>.parquet`` and read back by the dashboard.
``umap`` is imported lazily: importing it takes seconds (numba).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from poisonlens import runfs
from poisonlens.errors import InputError
from poisonlens.store import (
    PROJECTIONS,
    Run,
    RunWriter,
    _read_json,
    atomic_write_json,
    open_run,
    pid_alive,
)

METHODS = ("umap", "pca")
PLACEMENTS = ("parametric", "knn")  # how rows outside the UMAP fit are placed (module docstring)
TARGET_INDEX = -1  # the `index` of the target's rows in a projection table
COLUMNS = ("epoch", "index", "x", "y")

#: progress(fraction in [0, 1], message)
Progress = Callable[[float, str], None]


# --- pure helpers --------------------------------------------------------------------------


def fit_sample(
    n_rows: np.ndarray,
    *,
    max_fit: int,
    always: list[np.ndarray] | None = None,
    random_state: int = 0,
) -> list[np.ndarray]:
    """Which rows of each snapshot go into the fit: about ``max_fit`` rows, spread evenly.

    Parameters
    ----------
    n_rows : int ndarray of shape (n_snapshots,), rows per snapshot
    max_fit : the most rows to fit on in all (every row when the run has fewer)
    always : per snapshot, row numbers to include first (e.g. the poisons); they take at most a
        quarter of ``max_fit`` (a random share of them when there are more)
    random_state : seed of the draw

    Returns
    -------
    list of sorted int64 ndarrays, one per snapshot: the chosen row numbers
    """
    n_rows = np.asarray(n_rows, dtype=np.int64)
    rng = np.random.default_rng(random_state)
    total = int(n_rows.sum())
    if total <= max_fit:
        return [np.arange(n, dtype=np.int64) for n in n_rows]
    forced = [np.unique(np.asarray(always[s] if always else [], dtype=np.int64)) for s in range(len(n_rows))]
    n_forced = sum(len(f) for f in forced)
    keep = min(1.0, (max_fit // 4) / n_forced) if n_forced else 0.0
    forced = [f if keep == 1.0 else rng.choice(f, size=int(round(keep * len(f))), replace=False) for f in forced]
    per = max(0, max_fit - sum(len(f) for f in forced)) / total
    chosen = []
    for s, n in enumerate(n_rows):
        rows = rng.choice(n, size=min(int(n), int(round(per * n))), replace=False)
        chosen.append(np.unique(np.concatenate([rows, forced[s]])).astype(np.int64))
    return chosen


@dataclass(frozen=True)
class ProjectionConfig:
    """How a run's map is made (the options of ``poisonlens project``).

    Attributes
    ----------
    method : {'umap', 'pca'}
    max_fit : the most gradient rows the layout is fitted on, pooled over the snapshots (the
        poisons and the target always among them); the page says so when a run has more
    random_state : seed of the subsample, of UMAP and of the parametric map
    placement : {'parametric', 'knn'}, how UMAP places every row (module docstring)
    device : where the parametric map trains and places ('cpu', 'cuda'; None: CUDA when there is one)
    umap_epochs : UMAP's optimisation epochs on the sample (its own default is 500 below 10,000
        rows; 200 keep the placement's trustworthiness at 0.97-0.98 of UMAP transform's in
        bench/projection.py for 40% of the fitting time)
    """

    method: str = "umap"
    max_fit: int = 5000
    random_state: int = 0
    placement: str = "parametric"
    device: str | None = None
    umap_epochs: int = 200

    def __post_init__(self):
        if self.method not in METHODS:
            raise InputError("projection", f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.placement not in PLACEMENTS:
            raise InputError("projection", f"placement must be one of {', '.join(PLACEMENTS)}, got {self.placement!r}")


def fit_layout(
    points: np.ndarray,
    *,
    method: str = "umap",
    random_state: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_epochs: int | None = None,
) -> np.ndarray:
    """Fit a 2-D layout of ``points``.

    UMAP's neighbour graph is computed exactly by scikit-learn (a few tenths of a second for
    5,000 rows) rather than by UMAP's approximate search, whose numba compilation alone took
    30 s of CPU in every process; umap's own functions compile once per machine into numba's
    cache (:mod:`poisonlens.numba_cache`).

    Parameters
    ----------
    points : float32 ndarray of shape (n_fit, n_features), distinct rows
    method : {'umap', 'pca'}
    random_state : seed of UMAP (its layout is reproducible for a seed)
    n_neighbors : UMAP's neighbourhood size (capped at n_fit - 1)
    min_dist : UMAP's minimum distance between points in the layout
    n_epochs : UMAP's optimisation epochs (None: its default, 500 below 10,000 rows)

    Returns
    -------
    float32 ndarray of shape (n_fit, 2)
    """
    points = np.asarray(points, dtype=np.float32)
    if method not in METHODS:
        raise InputError("projection", f"method must be one of {', '.join(METHODS)}, got {method!r}")
    n = len(points)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if method == "pca" or n <= max(n_neighbors, 4):
        return _pca_fit(points)[0]
    try:
        from poisonlens.numba_cache import enable_umap_cache

        enable_umap_cache()  # imports umap (seconds: numba)
        import umap
    except ImportError as err:  # pragma: no cover - umap-learn is a dependency
        raise InputError("projection", "umap-learn is not installed: pip install umap-learn") from err
    import warnings

    k = min(n_neighbors, n - 1)
    reducer = umap.UMAP(
        n_components=2, n_neighbors=k, min_dist=min_dist, n_epochs=n_epochs, random_state=random_state,
        init="spectral",
        # below 4,096 rows UMAP computes every distance itself (no approximate search either)
        precomputed_knn=_exact_neighbours(points, k) if n >= 4096 else (None, None, None),
    )
    with warnings.catch_warnings():
        # "n_jobs overridden by random_state", duplicate rows, no search index: expected here
        warnings.simplefilter("ignore")
        xy = reducer.fit_transform(points)
    return np.asarray(xy, dtype=np.float32)


def _exact_neighbours(points: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Each row's k nearest rows, itself first, as UMAP's ``precomputed_knn`` (no search index)."""
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    return idx, dist.astype(np.float32), None


def _pca_fit(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA to 2-D by SVD: (fitted positions, mean, components of shape (2, n_features))."""
    mean = points.mean(0)
    centred = points - mean
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    comps = np.zeros((2, points.shape[1]))
    comps[: min(2, len(vt))] = vt[:2]
    # Fix the sign so the layout does not flip between identical fits.
    signs = np.sign(comps[np.arange(2), np.abs(comps).argmax(1)])
    comps *= np.where(signs == 0, 1, signs)[:, None]
    return (centred @ comps.T).astype(np.float32), mean, comps


def place(
    fit_points: np.ndarray, fit_xy: np.ndarray, query: np.ndarray, *, k: int = 10
) -> np.ndarray:
    """Place ``query`` rows in a fitted layout by their nearest fitted rows.

    Each row goes to the mean of the positions of its ``k`` nearest fitted rows, weighted by
    1 / distance (a row equal to a fitted row lands exactly on it).

    Parameters
    ----------
    fit_points : float32 ndarray of shape (n_fit, n_features), the fitted rows
    fit_xy : float32 ndarray of shape (n_fit, 2), their positions
    query : float32 ndarray of shape (n, n_features), the rows to place
    k : how many nearest fitted rows each row's position is averaged from

    Returns
    -------
    float32 ndarray of shape (n, 2)
    """
    query = np.asarray(query, dtype=np.float32)
    if len(query) == 0:
        return np.zeros((0, 2), np.float32)
    from sklearn.neighbors import NearestNeighbors

    k = min(k, len(fit_points))
    nn = NearestNeighbors(n_neighbors=k).fit(np.asarray(fit_points, dtype=np.float32))
    dist, idx = nn.kneighbors(query)
    exact = dist[:, 0] <= 1e-12
    weights = 1.0 / np.maximum(dist, 1e-12)
    weights[exact] = 0.0
    weights[exact, 0] = 1.0
    weights /= weights.sum(1, keepdims=True)
    return np.einsum("nk,nkd->nd", weights, np.asarray(fit_xy)[idx]).astype(np.float32)


@dataclass
class _Layout:
    """A fitted layout and how it places rows: ``kind`` is 'pca', 'parametric', 'knn' or
    'fitted' (every row was in the fit); ``points``/``xy`` are the pooled fitted rows (snapshot
    rows, then the target rows) and their positions."""

    kind: str
    points: np.ndarray
    xy: np.ndarray
    pca: tuple[np.ndarray, np.ndarray] | None = None  # (mean, components)
    net: object = None  # the parametric map

    def place(self, rows: np.ndarray, fitted: np.ndarray, offset: int, progress=None) -> np.ndarray:
        """Positions (n, 2) of a snapshot's ``rows``; ``fitted`` are its row numbers in the fit
        sample, pooled from ``offset`` on (used by 'knn' and 'fitted' only)."""
        if self.kind == "pca":
            mean, comps = self.pca
            return ((np.asarray(rows, np.float64) - mean) @ comps.T).astype(np.float32)
        if self.kind == "parametric":
            from poisonlens.parametric import place_parametric

            return place_parametric(self.net, rows, progress=progress)
        xy = np.empty((len(rows), 2), np.float32)
        xy[fitted] = self.xy[offset: offset + len(fitted)]
        rest = np.setdiff1d(np.arange(len(rows)), fitted, assume_unique=True)
        xy[rest] = place(self.points, self.xy, rows[rest])
        return xy


def _fit(pooled: np.ndarray, config: ProjectionConfig, subsampled: bool, report: Progress) -> _Layout:
    """Fit the layout on the pooled rows; for a subsampled UMAP with parametric placement, also
    train the network on it."""
    if config.method == "pca":
        xy, mean, comps = _pca_fit(pooled)
        return _Layout("pca", pooled, xy, pca=(mean, comps))
    # fit each distinct gradient once, so identical rows (e.g. an example that did not move
    # between snapshots) land on exactly the same spot
    unique, inverse = np.unique(pooled, axis=0, return_inverse=True)
    unique_xy = fit_layout(unique, method=config.method, random_state=config.random_state,
                           n_epochs=config.umap_epochs)
    layout = _Layout("knn" if subsampled else "fitted", pooled, unique_xy[inverse.reshape(-1)])
    if subsampled and config.placement == "parametric":
        from poisonlens.device import resolve_device
        from poisonlens.parametric import fit_parametric

        where = resolve_device(config.device or "auto")  # a bad --device: one line naming it
        report(0.5, f"layout fitted; training the parametric map on {len(unique):,} rows ({where.type})")
        layout.kind = "parametric"
        layout.net = fit_parametric(unique, unique_xy, seed=config.random_state, device=where,
                                    progress=lambda share: report(0.5 + 0.2 * share, "training the parametric map"))
    return layout


def project_snapshots(
    grads: list[np.ndarray],
    epochs: list[int],
    *,
    targets: list[np.ndarray | None] | None = None,
    always: np.ndarray | None = None,
    progress: Progress | None = None,
    **options,
) -> pd.DataFrame:
    """One layout for all snapshots: fit on a pooled sample, place every row.

    Parameters
    ----------
    grads : list of float32 ndarrays of shape (n_samples, n_classes), one per snapshot
    epochs : list of int, the snapshots' epochs, same length as ``grads``
    targets : per snapshot, the target's gradient of shape (n_classes,) or None (default: none)
    always : int ndarray of example indices always in the fit sample (e.g. the poisons)
    progress : called as progress(fraction in [0, 1], message) while it works
    **options : fields of :class:`ProjectionConfig` (method, max_fit, random_state, placement,
        device, umap_epochs); an unknown method or placement raises InputError

    Returns
    -------
    DataFrame with columns epoch (int32), index (int64; -1 for the target), x, y (float32),
    sorted by epoch then index; ``attrs`` say how it was made (n_fit, n_placed, placement,
    fit_seconds, place_seconds)
    """
    config = ProjectionConfig(**options)
    report = progress or (lambda fraction, message: None)
    targets = targets if targets is not None else [None] * len(grads)
    if len(grads) != len(epochs) or len(targets) != len(epochs):
        raise ValueError("grads, epochs and targets must have the same length")
    if not grads:
        return _empty()
    n_rows = np.array([len(g) for g in grads])
    forced = [np.asarray(always if always is not None else [], dtype=np.int64)] * len(grads)
    chosen = fit_sample(n_rows, max_fit=config.max_fit, always=forced, random_state=config.random_state)
    target_rows = [np.asarray(t, np.float32)[None] for t in targets if t is not None]
    pooled = np.concatenate([g[rows] for g, rows in zip(grads, chosen, strict=True)] + target_rows)
    n_fit = int(sum(len(c) for c in chosen))
    report(0.05, f"fitting a {config.method.upper()} layout on {len(pooled):,} gradient rows")
    t0 = time.perf_counter()
    layout = _fit(pooled, config, n_fit < int(n_rows.sum()), report)
    fit_seconds = time.perf_counter() - t0
    report(0.7, f"layout fitted in {fit_seconds:.0f} s; placing every snapshot")
    t1 = time.perf_counter()
    placed = _place_all(layout, grads, epochs, chosen, report)
    offset = n_fit
    for s, t in enumerate(targets):  # the target rows were pooled after all snapshot rows
        if t is not None:
            placed[s] = (layout.place(np.asarray(t, np.float32)[None], np.zeros(1, np.int64), offset), placed[s][1])
            offset += 1
    out = _table(epochs, placed)
    n_placed = {"pca": 0, "fitted": 0, "parametric": int(n_rows.sum()), "knn": int(n_rows.sum()) - n_fit}[layout.kind]
    out.attrs.update(n_fit=n_fit, n_placed=n_placed, fit_seconds=round(fit_seconds, 2),
                     place_seconds=round(time.perf_counter() - t1, 2),
                     placement=layout.kind if layout.kind in ("parametric", "knn") else "fitted")
    return out


def _place_all(layout: _Layout, grads: list[np.ndarray], epochs: list[int], chosen: list[np.ndarray],
               report: Progress) -> list[tuple[np.ndarray | None, np.ndarray]]:
    """Every snapshot's positions, as (target's position or None, rows' positions) per snapshot."""
    placed, offset = [], 0
    for s, (g, epoch) in enumerate(zip(grads, epochs, strict=True)):
        def batch_done(done: int, total: int, s=s, epoch=epoch) -> None:
            report(0.7 + 0.3 * (s + done / total) / len(grads), f"placing epoch {epoch}: {done:,} of {total:,} rows")

        placed.append((None, layout.place(g, chosen[s], offset, progress=batch_done)))
        offset += len(chosen[s])
        report(0.7 + 0.3 * (s + 1) / len(grads), f"placed epoch {epoch}")
    return placed


def _table(epochs: list[int], placed: list[tuple[np.ndarray | None, np.ndarray]]) -> pd.DataFrame:
    """The projection table, sorted by epoch then index (the target's row, index -1, first): built
    in that order, so that no sort of millions of rows is needed afterwards."""
    parts = []
    for s in sorted(range(len(epochs)), key=lambda s: epochs[s]):  # stable: equal epochs keep their order
        target_xy, xy = placed[s]
        index = np.arange(len(xy), dtype=np.int64)
        if target_xy is not None:
            index, xy = np.concatenate([[TARGET_INDEX], index]), np.concatenate([target_xy, xy])
        parts.append((np.full(len(index), epochs[s], np.int32), index, xy))
    xy = np.concatenate([p[2] for p in parts]).astype(np.float32, copy=False)
    return pd.DataFrame({"epoch": np.concatenate([p[0] for p in parts]), "index": np.concatenate([p[1] for p in parts]),
                         "x": np.ascontiguousarray(xy[:, 0]), "y": np.ascontiguousarray(xy[:, 1])})


def _empty() -> pd.DataFrame:
    return _table([0], [(None, np.zeros((0, 2), np.float32))])


# --- run store side ------------------------------------------------------------------------


def _target_grads(run: Run, epochs: list[int]) -> list[np.ndarray | None]:
    targets = run.targets()
    if targets.empty:
        return [None] * len(epochs)
    cols = [c for c in targets.columns if c.startswith("g_")]
    by_epoch = {
        int(e): row
        for e, row in zip(targets["epoch"], targets[cols].to_numpy(np.float32), strict=True)
    }
    return [by_epoch.get(e) for e in epochs]


def compute_projection(
    run_dir: str | Path, *, progress: Progress | None = None, write: bool = True, **options
) -> pd.DataFrame:
    """Fit one layout for every snapshot of a run and store it as ``projections/<method>.parquet``.

    Parameters
    ----------
    run_dir : str or Path, a run directory
    progress : called as progress(fraction, message) while it works
    write : store the result in the run (False: only return it)
    **options : fields of :class:`ProjectionConfig`: method ('umap' or 'pca', default 'umap'),
        max_fit (default 5,000 rows; the poisons and the target always included), random_state
        (default 0), placement ('parametric' or 'knn'), device, umap_epochs

    Returns
    -------
    DataFrame with columns epoch, index, x, y (the target's rows have index -1)
    """
    config = ProjectionConfig(**options)  # a bad method or placement: before anything is read
    run = open_run(run_dir)
    damage = run.damage()
    if damage:  # a link or special file anywhere: nothing is computed, nothing written
        raise InputError(run.path, f"damaged run folder, no map computed: {damage}")
    epochs = run.snapshot_epochs()
    if not epochs:
        raise InputError(run.path, "no gradient snapshots yet; nothing to project")
    report = progress or (lambda fraction, message: None)
    grads = []
    for i, epoch in enumerate(epochs):
        grads.append(run.gradients(epoch))
        report(0.05 * (i + 1) / len(epochs), f"read snapshot of epoch {epoch}")
    examples = run.examples()
    poisons = examples["index"].to_numpy()[examples["is_poison"].to_numpy(bool)]
    frame = project_snapshots(grads, epochs, targets=_target_grads(run, epochs), always=poisons,
                              progress=progress, **asdict(config))
    report(1.0, "done")
    if write:
        RunWriter(run.path).write_projection(config.method, frame)
        # last, so that a progress message never overwrites "finished"
        write_job(run.path, config.method, state="finished", fraction=1.0, message="done",
                  n_points=len(examples), n_snapshots=len(epochs), **frame.attrs)
    return frame


def projection_is_current(run: Run, frame: pd.DataFrame | None) -> bool:
    """Whether a stored projection covers exactly the run's snapshot epochs (and its target).

    Parameters
    ----------
    run : Run, the run the projection belongs to
    frame : DataFrame with columns epoch, index, x, y as stored, or None (no projection)

    Returns
    -------
    bool, False for None or an empty table
    """
    if frame is None or frame.empty:
        return False
    epochs = run.snapshot_epochs()
    have = sorted(int(e) for e in frame["epoch"].unique())
    if have != epochs:
        return False
    if run.target is not None and not run.targets().empty:
        if (frame["index"] == TARGET_INDEX).sum() != len(run.targets()):
            return False
    return True


def ensure_projection(
    run: Run, *, method: str = "umap", progress: Progress | None = None, **kwargs
) -> pd.DataFrame:
    """The run's stored projection, computed (and stored) first when missing or out of date.

    Parameters
    ----------
    run : Run, an opened run
    method : {'umap', 'pca'}, which map
    progress : called as progress(fraction, message) while a map is computed
    **kwargs : further options of :func:`compute_projection` (fields of :class:`ProjectionConfig`)

    Returns
    -------
    DataFrame with columns epoch, index, x, y
    """
    frame = run.projection(method)
    if projection_is_current(run, frame):
        return frame
    return compute_projection(run.path, method=method, progress=progress, **kwargs)


def read_projection(run: Run, method: str) -> pd.DataFrame | None:
    """The stored map of ``method`` (None when there is none).

    Parameters
    ----------
    run : Run, an opened run
    method : str, the map's name ('umap' or 'pca')

    Returns
    -------
    DataFrame with columns epoch, index, x, y, or None

    Raises
    ------
    InputError naming ``projections/<method>.parquet`` when the file cannot be read (truncated,
    not Parquet, missing columns)
    """
    path = run.path / PROJECTIONS / f"{method}.parquet"
    try:
        frame = run.projection(method)
    except InputError:
        raise
    except (OSError, pa.ArrowException, ValueError) as err:
        raise InputError(path, f"unreadable Parquet ({type(err).__name__}: {err})") from err
    if frame is not None and not set(COLUMNS) <= set(frame.columns):
        raise InputError(path, f"missing columns {sorted(set(COLUMNS) - set(frame.columns))}")
    return frame


# --- the background process ----------------------------------------------------------------
#
# The dashboard never fits a map inside a page rerun: it starts ``python -m poisonlens.projection``
# in its own session (as poisonlens.launch does for training) and polls the job file it writes.


def job_path(run_dir: str | Path, method: str) -> Path:
    """``projections/<method>.job.json``: state, fraction, message, pid; when finished, how
    many rows the layout was fitted on (``n_fit``) and how many were placed (``n_placed``).

    Parameters
    ----------
    run_dir : str or Path, a run directory
    method : str, the map's name ('umap' or 'pca')
    """
    return Path(run_dir) / PROJECTIONS / f"{method}.job.json"


def write_job(run_dir: str | Path, method: str, **fields) -> None:
    """Write the job file of a map: ``fields`` plus the method and the time now.

    Parameters
    ----------
    run_dir : str or Path, a run directory (the file is written inside it, never through a link)
    method : str, the map's name ('umap' or 'pca')
    **fields : JSON-serialisable values: state, fraction, message, pid, and when finished n_fit,
        n_placed, fit_seconds, place_seconds, placement
    """
    atomic_write_json(job_path(run_dir, method), {**fields, "method": method, "updated": time.time()},
                      root=Path(run_dir))


def read_job(run_dir: str | Path, method: str) -> dict | None:
    """The job file of a map (None when none was started); a 'running' job whose process is
    gone reads as 'failed'.

    Parameters
    ----------
    run_dir : str or Path, a run directory
    method : str, the map's name ('umap' or 'pca')

    Returns
    -------
    dict or None
    """
    try:
        job = _read_json(job_path(run_dir, method), root=Path(run_dir))
    except (FileNotFoundError, InputError):
        return None
    if not isinstance(job.get("pid", 0), int) or not isinstance(job.get("state", ""), str):
        return None
    if job.get("state") == "running" and not pid_alive(job.get("pid")):
        job.update(state="failed", error="the map process stopped before it finished")
    return job


def launch_projection(run_dir: str | Path, *, method: str = "umap", max_fit: int = 5000,
                      placement: str = "parametric") -> int:
    """Start computing a run's map in a detached background process; returns its pid.

    The process writes its progress to :func:`job_path` (read it with :func:`read_job`) and
    the map to ``projections/<method>.parquet``. A job already running is not started twice.

    Parameters
    ----------
    run_dir : str or Path, a run directory
    method : {'umap', 'pca'}
    max_fit : most gradient rows the layout is fitted on (default 5,000)
    placement : {'parametric', 'knn'}, how UMAP places every row

    Returns
    -------
    int, the background process's pid (the running one's when a job was already running)
    """
    if method not in METHODS:
        raise InputError("projection", f"method must be one of {', '.join(METHODS)}, got {method!r}")
    job = read_job(run_dir, method)
    if job and job.get("state") in ("starting", "running"):
        return int(job["pid"])
    # no link at any level: a linked projections/ or <method>.log is refused, never written
    log = runfs.open_append(run_dir, (PROJECTIONS, f"{method}.log"))
    started = time.time()
    try:
        write_job(run_dir, method, state="starting", fraction=0.0, message="starting",
                  pid=os.getpid(), started=started)
    except BaseException:
        os.close(log)
        raise
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "poisonlens.projection", str(run_dir), "--method", method,
             "--max-fit", str(max_fit), "--placement", placement],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=Path(__file__).resolve().parents[1],
        )
    finally:
        os.close(log)
    _CHILDREN.append(child)
    job = read_job(run_dir, method) or {}
    if job.get("state") == "starting":  # the child has not written its own progress yet
        write_job(run_dir, method, state="running", fraction=0.0, message="starting",
                  pid=child.pid, started=started)
    return child.pid


_CHILDREN: list[subprocess.Popen] = []  # reaped by poll() in reap_children (no zombies)


def reap_children() -> None:
    """Forget background map processes that have exited, so none stays a zombie."""
    for child in list(_CHILDREN):
        if child.poll() is not None:
            _CHILDREN.remove(child)


def _job_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poisonlens.projection")
    parser.add_argument("run_dir")
    parser.add_argument("--method", choices=METHODS, default="umap")
    parser.add_argument("--max-fit", type=int, default=5000)
    parser.add_argument("--placement", choices=PLACEMENTS, default="parametric")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when there is one)")
    args = parser.parse_args(argv)
    started = time.time()
    last = [0.0, ""]  # time of the last write, the kind of step it reported

    def progress(fraction: float, message: str) -> None:
        # a few writes a second at most, but never drop the first message of a new step: the
        # one that starts a minute-long UMAP fit was dropped, and the page showed "read
        # snapshot of epoch 0" all along
        kind = message.split(" ", 1)[0]
        if time.time() - last[0] > 0.3 or fraction >= 1.0 or kind != last[1]:
            last[0], last[1] = time.time(), kind
            write_job(args.run_dir, args.method, state="running", fraction=round(fraction, 3),
                      message=message, pid=os.getpid(), started=started)
        print(f"[{fraction:4.0%}] {message}", flush=True)

    try:
        compute_projection(args.run_dir, method=args.method, max_fit=args.max_fit,
                           progress=progress, placement=args.placement, device=args.device)
    except Exception as err:  # noqa: BLE001 - every failure is reported to the page
        write_job(args.run_dir, args.method, state="failed", error=f"{type(err).__name__}: {err}",
                  pid=os.getpid(), started=started)
        print(f"poisonlens: {err}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_job_main())
