"""The map's background computation at scale: UMAP on a sample, then every row placed, two ways.

    .venv/bin/python -m bench.projection [--keep DIR] [--out bench/results/projection/README.md]
        [--skip-big-knn] [--big 1000000]

1. Builds two synthetic run stores with ``bench.dashboard.build_run`` (8x8 grey images; ``--keep
   DIR`` keeps them and reuses stores already there): 50,000 examples x 11 snapshots and
   1,000,000 examples x 3 snapshots.
2. For each store and each placement (``knn``: the nearest-neighbour placement used before;
   ``parametric``: the MLP trained on the fitted layout), runs the background process the page
   starts (``python -m poisonlens.projection DIR --placement P``) and records its wall time, CPU time
   and peak memory (the child's own max RSS, from ``os.wait4``), side by side in one run.
3. Layout quality on a held-out sample: UMAP fitted on 5,000 gradient rows pooled over the
   snapshots (as the map is), then 2,000 other rows placed by UMAP's own ``transform``, by the
   nearest-neighbour placement and by the parametric map; for each, sklearn's trustworthiness at
   k = 15 and the share of each row's 15 nearest neighbours (in gradient space) that are among its
   15 nearest on the map.
4. Writes a markdown table with the command, the load average and the thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from bench.dashboard import build_run
from poisonlens.store import open_run

REPO = Path(__file__).resolve().parents[1]


def build(runs: Path, name: str, n: int, epochs: list[int], seed: int) -> Path:
    """A synthetic EPIC-like store (reused when ``runs/name`` is already there)."""
    if not (runs / name / "metrics.parquet").exists():
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        build_run(runs / name, labels=rng.integers(0, 10, n),
                  images=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), epochs=epochs, seed=seed)
        print(f"{name}: store built in {time.perf_counter() - t0:.0f} s", flush=True)
    return runs / name


def time_map(run_dir: Path, placement: str) -> dict:
    """``python -m poisonlens.projection`` as the page starts it: wall, CPU, the child's peak RSS."""
    t0 = time.perf_counter()
    load = os.getloadavg()[0]
    child = subprocess.Popen([sys.executable, "-m", "poisonlens.projection", str(run_dir), "--placement", placement],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise RuntimeError(f"projection failed ({status}) on {run_dir}")
    job = json.loads((run_dir / "projections" / "umap.job.json").read_text())
    return {"placement": placement, "seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "max_rss_mb": usage.ru_maxrss / 1024, "load_before": load, "load_after": os.getloadavg()[0],
            "n_fit": job.get("n_fit"), "n_placed": job.get("n_placed"), "fit_seconds": job.get("fit_seconds"),
            "place_seconds": job.get("place_seconds")}


def knn_kept(high: np.ndarray, low: np.ndarray, k: int = 15) -> float:
    """Mean share of each row's k nearest neighbours in ``high`` that are among its k nearest in ``low``."""
    from sklearn.neighbors import NearestNeighbors

    a = NearestNeighbors(n_neighbors=k + 1).fit(high).kneighbors(high)[1][:, 1:]
    b = NearestNeighbors(n_neighbors=k + 1).fit(low).kneighbors(low)[1][:, 1:]
    return float(np.mean([len(set(x) & set(y)) / k for x, y in zip(a, b, strict=True)]))


def quality(run_dir: Path, *, n_fit: int = 5000, n_held: int = 2000, seed: int = 0) -> dict:
    """Trustworthiness (k = 15) and neighbours kept on a held-out sample: UMAP transform, knn, parametric."""
    import umap
    from sklearn.manifold import trustworthiness

    from poisonlens.parametric import fit_parametric, place_parametric
    from poisonlens.projection import place

    run = open_run(run_dir)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([run.gradients(e) for e in run.snapshot_epochs()])
    order = rng.permutation(len(pooled))
    fit, held = pooled[order[:n_fit]], pooled[order[n_fit:n_fit + n_held]]
    fit = np.unique(fit, axis=0)
    out = {"n_fit": len(fit), "n_held": len(held)}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed, init="spectral")
        xy = reducer.fit_transform(fit).astype(np.float32)
        out["umap_fit_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        placed = {"UMAP transform": reducer.transform(held)}
        out["umap_transform_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    placed["knn (before)"] = place(fit, xy, held)
    out["knn_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    net = fit_parametric(fit, xy, seed=seed)
    placed["parametric (new)"] = place_parametric(net, held)
    out["parametric_s"] = time.perf_counter() - t0
    out["scores"] = {name: {"trustworthiness": float(trustworthiness(held, low, n_neighbors=15)),
                            "kept": knn_kept(held, low)} for name, low in placed.items()}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default=None, help="build the run stores here and keep them")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "projection" / "README.md"))
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--skip-big-knn", action="store_true",
                        help="skip the nearest-neighbour placement on the large store (minutes)")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    runs = Path(args.keep or tempfile.mkdtemp(prefix="bench-projection-")) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    stores = [("synthetic-50k", 50_000, list(range(0, 21, 2)), 0),
              (f"synthetic-{args.big // 1000}k", args.big, [0, 10, 20], 1)]
    results = []
    for name, n, epochs, seed in stores:
        run_dir = build(runs, name, n, epochs, seed)
        for placement in ("knn", "parametric"):
            if placement == "knn" and n > 100_000 and args.skip_big_knn:
                continue
            r = time_map(run_dir, placement) | {"run": f"{n:,} × {len(epochs)}"}
            print(json.dumps(r), flush=True)
            results.append(r)
    qual = {} if args.skip_quality else {name: quality(runs / name) for name, *_ in stores[:1]}
    print(json.dumps(qual), flush=True)
    import torch

    lines = ["# The map's background computation: nearest-neighbour placement against the parametric map", "",
             f"`{Path(sys.executable).name} -m bench.projection {' '.join(sys.argv[1:])}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"2 CPU cores shared with other engineers' tests, torch threads {torch.get_num_threads()}, "
             f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. Both placements measured in this one run, "
             "one after the other, by `python -m poisonlens.projection RUN --placement P` (the page's background process); "
             "peak memory is that process's own max RSS.", "",
             "| run (examples × snapshots) | placement | wall time | CPU time | peak memory | rows fitted | rows placed | "
             "UMAP fit | placing | 1-min load before → after |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['placement']} | {r['seconds']:.1f} s | {r['cpu_seconds']:.1f} s | "
                     f"{r['max_rss_mb']:.0f} MB | {r['n_fit']:,} | {r['n_placed']:,} | {r['fit_seconds']} s | "
                     f"{r['place_seconds']} s | {r['load_before']:.1f} → {r['load_after']:.1f} |")
    for name, q in qual.items():
        lines += ["", f"Layout quality on a held-out sample of `{name}`: UMAP fitted on {q['n_fit']:,} distinct rows "
                  f"pooled over the snapshots ({q['umap_fit_s']:.0f} s), {q['n_held']:,} other rows placed three ways "
                  f"(UMAP transform {q['umap_transform_s']:.1f} s incl. numba compilation, knn {q['knn_s']:.2f} s, "
                  f"parametric {q['parametric_s']:.1f} s incl. training).", "",
                  "| placement | trustworthiness (k = 15) | share of 15 nearest neighbours kept | trustworthiness / UMAP transform's |",
                  "|---|---|---|---|"]
        ref = q["scores"]["UMAP transform"]["trustworthiness"]
        for method, s in q["scores"].items():
            lines.append(f"| {method} | {s['trustworthiness']:.4f} | {s['kept']:.3f} | {s['trustworthiness'] / ref:.3f} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
