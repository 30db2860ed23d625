"""The map's background computation at scale: today's method against the new one, in one run.

    .venv/bin/python -m bench.projection [--keep DIR] [--out bench/results/projection/README.md]
        [--before REV] [--small 50000] [--big 1000000] [--warm 1] [--skip-quality]

1. Builds two synthetic run stores with ``bench.dashboard.build_run`` (8x8 grey images; ``--keep
   DIR`` keeps them and reuses stores already there): 50,000 examples x 11 snapshots and
   1,000,000 examples x 3 snapshots.
2. For each store runs the background process the page starts (``python -m poisonlens.projection
   DIR --placement P``), one after the other, and records its wall time, CPU time and peak memory
   (the child's own, from ``os.wait4``):

   - *before*: today's method, the code of ``--before REV`` (default: the commit before this
     change, extracted with ``git archive`` into a temporary folder and put first on PYTHONPATH),
     ``--placement knn``: UMAP with its own neighbour search and 500 epochs on the 5,000-row
     sample, every other row placed by its 10 nearest fitted rows;
   - *new, cold cache*: this tree, ``--placement parametric``, with an empty numba cache folder
     (``POISONLENS_CACHE`` set to a fresh folder): a machine's first projection, compiling UMAP;
   - *new, warm cache*: the same again (``--warm N`` times), loading UMAP's compiled functions
     from that folder.
3. Layout quality on a held-out sample of the 50,000 store: 5,000 rows pooled over the snapshots,
   2,000 other rows placed by today's fit (UMAP's defaults) and its ``transform``, by today's
   nearest-neighbour placement on that fit, and by the new method (exact neighbours, fewer
   epochs, the parametric map); for each, sklearn's trustworthiness at k = 15 and the share of
   each row's 15 nearest neighbours (in gradient space) that are among its 15 nearest on the map.
4. Writes a markdown table with the command, the 1-minute load before and after each run, the
   machine's cores and the thread settings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from io import BytesIO
from pathlib import Path

import numpy as np

from bench.dashboard import build_run
from poisonlens.store import open_run

REPO = Path(__file__).resolve().parents[1]
BEFORE = "b22fa86"  # the last commit before the faster projection


def build(runs: Path, name: str, n: int, epochs: list[int], seed: int) -> Path:
    """A synthetic EPIC-like store (reused when ``runs/name`` is already there)."""
    if not (runs / name / "metrics.parquet").exists():
        rng = np.random.default_rng(seed)
        t0 = time.perf_counter()
        build_run(runs / name, labels=rng.integers(0, 10, n),
                  images=rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8), epochs=epochs, seed=seed)
        print(f"{name}: store built in {time.perf_counter() - t0:.0f} s", flush=True)
    return runs / name


def checkout(rev: str, where: Path) -> Path:
    """``core/`` of ``rev`` as an importable ``poisonlens`` package under ``where``; returns the
    folder to put first on PYTHONPATH."""
    data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "core"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(where, filter="data")
    (where / "pkg").mkdir(exist_ok=True)
    (where / "pkg" / "poisonlens").symlink_to(where / "core")
    return where / "pkg"


def time_map(run_dir: Path, placement: str, env: dict) -> dict:
    """``python -m poisonlens.projection`` as the page starts it: wall, CPU, the child's peak RSS."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "poisonlens.projection", str(run_dir), "--placement", placement],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, env={**os.environ, **env})
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
    """Trustworthiness (k = 15) and neighbours kept on a held-out sample: UMAP transform, knn, new."""
    import umap
    from sklearn.manifold import trustworthiness

    from poisonlens.parametric import fit_parametric, place_parametric
    from poisonlens.projection import ProjectionConfig, fit_layout, place

    run = open_run(run_dir)
    rng = np.random.default_rng(seed)
    pooled = np.concatenate([run.gradients(e) for e in run.snapshot_epochs()])
    order = rng.permutation(len(pooled))
    fit, held = np.unique(pooled[order[:n_fit]], axis=0), pooled[order[n_fit:n_fit + n_held]]
    out, t0 = {"n_fit": len(fit), "n_held": len(held)}, time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=15, min_dist=0.1, random_state=seed, init="spectral")
        xy = reducer.fit_transform(fit).astype(np.float32)
        out["umap_fit_s"], t0 = time.perf_counter() - t0, time.perf_counter()
        placed = {"UMAP transform (today's fit)": reducer.transform(held)}
        out["umap_transform_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    placed["knn on today's fit (before)"] = place(fit, xy, held)
    out["knn_s"], t0 = time.perf_counter() - t0, time.perf_counter()
    new_xy = fit_layout(fit, random_state=seed, n_epochs=ProjectionConfig().umap_epochs)
    placed["parametric on the new fit (new)"] = place_parametric(fit_parametric(fit, new_xy, seed=seed), held)
    out["new_s"] = time.perf_counter() - t0
    out["scores"] = {name: {"trustworthiness": float(trustworthiness(held, low, n_neighbors=15)),
                            "kept": knn_kept(held, low)} for name, low in placed.items()}
    return out


def run_all(runs: Path, args: argparse.Namespace, before_path: Path) -> list[dict]:
    """Every store, every variant, one after the other."""
    stores = [(f"synthetic-{args.small // 1000}k", args.small, list(range(0, 21, 2)), 0),
              (f"synthetic-{args.big // 1000}k", args.big, [0, 10, 20], 1)]
    results = []
    for name, n, epochs, seed in stores:
        if n == 0:  # --big 0: the 50,000-point store alone
            continue
        run_dir = build(runs, name, n, epochs, seed)
        cache = Path(tempfile.mkdtemp(prefix="bench-projection-cache-"))  # an empty numba cache
        variants = [("before", "knn", "–", {"PYTHONPATH": str(before_path)}),
                    ("new", "parametric", "cold", {"POISONLENS_CACHE": str(cache)}),
                    *[("new", "parametric", "warm", {"POISONLENS_CACHE": str(cache)})] * args.warm]
        for code, placement, state, env in variants:
            r = time_map(run_dir, placement, env) | {"run": f"{n:,} × {len(epochs)}", "code": code, "cache": state}
            print(json.dumps(r), flush=True)
            results.append(r)
    return results


def report(args: argparse.Namespace, results: list[dict], qual: dict) -> list[str]:
    """The markdown page."""
    lines = ["# The map's background computation: today's method against the new one", "",
             f"`.venv/bin/python -m bench.projection {' '.join(sys.argv[1:])}`, "
             f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPU cores shared with "
             f"other engineers' tests, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}. Every row is one "
             "run of `python -m poisonlens.projection RUN --placement P` (the page's background process), one after "
             f"the other; *before* is the code of `{args.before}` (today's method), *new* this tree; peak memory is "
             "that process's own max RSS; the numba cache is cold on a machine's first projection, warm after.", "",
             "| run (examples × snapshots) | code | placement | numba cache | wall time | CPU time | peak memory | "
             "rows fitted | rows placed | fit (UMAP; new: + network) | placing | 1-min load before → after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['run']} | {r['code']} | {r['placement']} | {r['cache']} | {r['seconds']:.1f} s | "
                     f"{r['cpu_seconds']:.1f} s | {r['max_rss_mb']:.0f} MB | {r['n_fit']:,} | {r['n_placed']:,} | "
                     f"{r['fit_seconds']} s | {r['place_seconds']} s | {r['load_before']:.1f} → {r['load_after']:.1f} |")
    for name, q in qual.items():
        lines += ["", f"Layout quality on a held-out sample of `{name}`: {q['n_fit']:,} distinct rows pooled over "
                  f"the snapshots fitted, {q['n_held']:,} other rows placed (today's UMAP fit {q['umap_fit_s']:.0f} s, "
                  f"its transform {q['umap_transform_s']:.1f} s incl. compilation, knn {q['knn_s']:.2f} s, "
                  f"the new fit + network + placing {q['new_s']:.1f} s).", "",
                  "| placement | trustworthiness (k = 15) | share of 15 nearest neighbours kept | "
                  "trustworthiness / UMAP transform's |", "|---|---|---|---|"]
        ref = q["scores"]["UMAP transform (today's fit)"]["trustworthiness"]
        for method, s in q["scores"].items():
            lines.append(f"| {method} | {s['trustworthiness']:.4f} | {s['kept']:.3f} | {s['trustworthiness'] / ref:.3f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", default=None, help="build the run stores here and keep them")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "projection" / "README.md"))
    parser.add_argument("--before", default=BEFORE, help="git revision whose code is today's method")
    parser.add_argument("--small", type=int, default=50_000, help="examples of the 11-snapshot store")
    parser.add_argument("--big", type=int, default=1_000_000, help="examples of the 3-snapshot store (0: none)")
    parser.add_argument("--warm", type=int, default=1, help="warm-cache runs of the new method per store")
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()
    runs = Path(args.keep or tempfile.mkdtemp(prefix="bench-projection-")) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    before_path = checkout(args.before, Path(tempfile.mkdtemp(prefix="bench-projection-before-")))
    results = run_all(runs, args, before_path)
    qual = {} if args.skip_quality else {name: quality(runs / name) for name in [f"synthetic-{args.small // 1000}k"]}
    print(json.dumps(qual), flush=True)
    lines = report(args, results, qual)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
