"""Benchmark EPIC's selection against apricot and submodlib on softmax - onehot inputs.

    .venv/bin/python bench/select.py [--sizes 10000 50000] [--subsets 0.1 0.3] [--epoch-share]

Every (implementation, N, subset size) runs in a fresh subprocess with one thread (BLAS,
OpenMP and numba), on the same seeded input: N softmax - onehot rows of 10 balanced classes
(see :func:`softmax_minus_onehot`), with the same per-class budgets K_c. Reported per run:

- the wall time of the selection: the median of 5 runs in the process for poisonlens (3 for
  its rows-on-demand path), one run for the slow peers;
- the start-up apart: imports and a first call on a tiny input, where numba loads or compiles;
- the peak resident memory of the process, and how much the selection added to it;
- evaluated here for all with one kernel (``exp(-||g_i - g_j|| / 10)``): the objective reached
  and the isolated set (every example joins its most similar medoid, ties to the lowest index;
  a medoid is isolated when it is alone), compared with submodlib's LazyGreedy, the library
  EPIC's code uses.

``--epoch-share`` also trains digits and the CIFAR-10 subset under EPIC and reports the
selection's share of an epoch. Writes bench/results/select.md. Timings on a shared 2-core
machine are noisy.

``--greedi`` instead compares GreeDi with exact greedy on the same inputs (subset 0.1), each
run a fresh process, and rewrites only the '## GreeDi' section of the results file::

    .venv/bin/python bench/select.py --greedi --sizes 50000 200000 1000000 \
        --partition-sizes 1000 2500 10000 --jobs 2
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on the import path, and its name would hide
# the standard library's `select` (which subprocess imports): put the repository root there.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [os.path.dirname(HERE)] + [p for p in sys.path if os.path.abspath(p or ".") != HERE]

import argparse  # noqa: E402
import platform  # noqa: E402
import shlex  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(HERE)
ROOT = HERE.parent

N_CLASSES = 10
EPSILON = 0.01  # stochastic greedy's epsilon, for every implementation
REFERENCE = "submodlib LazyGreedy"
ONE_THREAD = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}


def softmax_minus_onehot(n_samples: int, n_classes: int = N_CLASSES, *, random_state: int = 0):
    """Gradients of a part-trained classifier: G = softmax(logits) - onehot(label).

    Logits are N(0, 1) plus a Gamma(2, 4) margin on the label (on another class for 8% of the
    rows, the confused ones), so confidence ranges from unsure to saturated, and about 5% of
    the rows have p_label == 1 in float32. Classes are balanced.

    Returns
    -------
    grads : float32 (n_samples, n_classes); labels : int64 (n_samples,)
    """
    rng = np.random.default_rng(random_state)
    labels = np.arange(n_samples) % n_classes
    logits = rng.normal(0, 1, (n_samples, n_classes)).astype(np.float32)
    confused = rng.random(n_samples) < 0.08
    favoured = np.where(
        confused, (labels + rng.integers(1, n_classes, n_samples)) % n_classes, labels
    )
    logits[np.arange(n_samples), favoured] += rng.gamma(2.0, 4.0, n_samples).astype(np.float32)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(n_samples), labels] -= 1
    return p.astype(np.float32), labels


# --------------------------------------------------------------------------- implementations
# Each takes one class's rows, K_c and a seed, and returns the medoids in the order chosen.


def plain_numpy_greedy(X: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Exact greedy with incremental gain updates: the plain dense floor."""
    from scipy.spatial.distance import cdist

    S = np.exp(-cdist(X, X) / X.shape[1]).astype(np.float32)
    cur = np.zeros(len(X), dtype=np.float32)
    gain = S.sum(axis=0, dtype=np.float64)
    order = []
    for _ in range(k):
        j = int(np.argmax(gain))
        order.append(j)
        new = np.maximum(cur, S[j])
        changed = np.flatnonzero(new > cur)
        rows = S[changed]
        lost = np.maximum(rows - cur[changed, None], 0) - np.maximum(rows - new[changed, None], 0)
        gain -= lost.sum(axis=0, dtype=np.float64)
        gain[order] = -np.inf
        cur = new
    return np.array(order)


def submodlib_greedy(optimizer: str):
    def run(X: np.ndarray, k: int, seed: int) -> np.ndarray:
        from submodlib import FacilityLocationFunction

        f = FacilityLocationFunction(n=len(X), mode="dense", data=X, metric="euclidean")
        chosen = f.maximize(
            budget=k,
            optimizer=optimizer,
            stopIfZeroGain=False,
            stopIfNegativeGain=False,
            epsilon=EPSILON,
            verbose=False,
            show_progress=False,
        )
        return np.array([j for j, _ in chosen])

    return run


def apricot_greedy(optimizer: str):
    def run(X: np.ndarray, k: int, seed: int) -> np.ndarray:
        from apricot import FacilityLocationSelection
        from scipy.spatial.distance import cdist

        S = np.exp(-cdist(X, X) / X.shape[1])  # the paper's similarity, as a precomputed kernel
        kwds = {"epsilon": EPSILON} if optimizer == "stochastic" else {}
        model = FacilityLocationSelection(
            k, metric="precomputed", optimizer=optimizer, optimizer_kwds=kwds, random_state=seed
        )
        return np.asarray(model.fit(S).ranking)

    return run


PEERS = {
    "poisonlens lazy": None,  # select() itself, see worker()
    "poisonlens stochastic": None,
    "poisonlens lazy, rows on demand": None,
    "plain numpy greedy": plain_numpy_greedy,
    "submodlib LazyGreedy": submodlib_greedy("LazyGreedy"),
    "submodlib StochasticGreedy": submodlib_greedy("StochasticGreedy"),
    "apricot lazy": apricot_greedy("lazy"),
    "apricot stochastic": apricot_greedy("stochastic"),
}
IMPORTS = {"submodlib": "submodlib", "apricot": "apricot"}
# Runs per process for the quick implementations (the table shows the median); the others,
# at 10-40 s a run, run once.
REPEATS = {"poisonlens lazy": 5, "poisonlens stochastic": 5, "poisonlens lazy, rows on demand": 3}


def available(name: str) -> bool:
    module = next((m for prefix, m in IMPORTS.items() if name.startswith(prefix)), None)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- one run


def _memory_mb(field: str) -> float:
    # VmHWM (peak) and VmRSS (now) belong to this process image; ru_maxrss would carry the
    # parent's peak over fork and exec.
    with open("/proc/self/status") as fh:
        line = next(line for line in fh if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


def _poisonlens(name: str):
    from poisonlens.defense.epic import select

    def run(grads: np.ndarray, labels: np.ndarray, subset: float):
        return select(
            grads,
            labels,
            subset_size=subset,
            greedy="stochastic" if "stochastic" in name else "lazy",
            method="exact",  # these rows compare the exact path with its peers; GreeDi is below
            max_dense=0 if "on demand" in name else 20_000,
        )

    return run


def worker(name: str, n: int, subset: float, out: str) -> None:
    """Run one implementation in this (fresh) process; save its medoids and costs to ``out``."""
    from poisonlens.defense.epic import budgets

    grads, labels = softmax_minus_onehot(n)
    k = budgets(np.bincount(labels, minlength=N_CLASSES), subset, random_state=0)
    # Start-up: imports, and a first call on a tiny input (numba loads or compiles its code).
    t0 = time.perf_counter()
    if name.startswith("poisonlens"):
        run = _poisonlens(name)
        run(grads[:50], labels[:50], 0.1)
    else:
        PEERS[name](grads[labels == 0][:20], 2, 0)
    started = time.perf_counter() - t0
    rss_start = _memory_mb("VmRSS")
    times = []
    for _ in range(REPEATS.get(name, 1)):
        t0 = time.perf_counter()
        isolated = np.array([], dtype=np.int64)
        if name.startswith("poisonlens"):
            chosen = run(grads, labels, subset)
            medoids, isolated = np.flatnonzero(chosen.is_medoid), np.flatnonzero(chosen.isolated)
        else:
            parts = []
            for c in range(N_CLASSES):
                members = np.flatnonzero(labels == c)
                parts.append(members[PEERS[name](grads[members], int(k[c]), 0)])
            medoids = np.concatenate(parts)
        times.append(time.perf_counter() - t0)
    peak = _memory_mb("VmHWM")
    costs = np.array([np.median(times), started, peak, rss_start, len(times), min(times)])
    np.savez(out, medoids=medoids, isolated=isolated, costs=costs)


def run_worker(name: str, n: int, subset: float, env: dict | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [sys.executable, __file__, "--worker", name, "--n", str(n), "--subset", str(subset)]
        cmd += ["--out", str(out)]
        env = {**os.environ, **ONE_THREAD, **(env or {})}
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit {done.returncode}"}
        with np.load(out) as saved:
            seconds, started, peak, rss_start, runs, best = saved["costs"]
            return {
                "runs": int(runs),
                "best": best,
                "medoids": saved["medoids"],
                "own_isolated": saved["isolated"],
                "seconds": seconds,
                "started": started,
                "peak_mb": peak,
                "start_mb": rss_start,
            }


# --------------------------------------------------------------------------- evaluation


def evaluate(results: dict, grads: np.ndarray, labels: np.ndarray) -> None:
    """Add each result's F and isolated medoids, under one kernel (built once per class).

    Every example joins its most similar medoid (ties: the lowest index); a medoid is isolated
    when exactly one example joins it.
    """
    from poisonlens.defense.facility_location import Kernel

    ok = {name: res for name, res in results.items() if "error" not in res}
    for res in ok.values():
        res.update(objective=0.0, isolated=[])
    for c in range(N_CLASSES):
        members = np.flatnonzero(labels == c)
        S = Kernel(grads[members], metric="euclidean").matrix()
        for res in ok.values():
            mine = np.flatnonzero(np.isin(members, res["medoids"]))
            sims = S[:, mine]
            res["objective"] += float(np.maximum(sims.max(axis=1), 0).sum(dtype=np.float64))
            sizes = np.bincount(np.argmax(sims, axis=1), minlength=len(mine))
            res["isolated"].append(members[mine[sizes == 1]])
    for res in ok.values():
        res["isolated"] = np.concatenate(res["isolated"])


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    a, b = set(a.tolist()), set(b.tolist())
    return len(a & b) / len(a | b) if a | b else 1.0


def bench(sizes: list[int], subsets: list[float], names: list[str]) -> list[str]:
    lines = [
        "| N | subset | implementation | time (s) | runs: best | start-up (s) | peak RSS (MB) "
        "| added (MB) | objective | vs reference | isolated | Jaccard vs reference |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        grads, labels = softmax_minus_onehot(n)
        for subset in subsets:
            results = {}
            for name in names:
                if name == "poisonlens lazy, rows on demand" and subset != subsets[0]:
                    continue  # slow and exact: once per size is enough
                results[name] = run_worker(name, n, subset)
                brief = {k: round(float(v), 3) for k, v in results[name].items() if np.isscalar(v)}
                print(name, n, subset, brief or results[name], flush=True)
            evaluate(results, grads, labels)
            ref = results.get(REFERENCE)
            if ref is None or "error" in ref:
                ref = results["plain numpy greedy"]
            for name, res in results.items():
                if "error" in res:
                    lines.append(f"| {n:,} | {subset} | {name} | failed: {res['error']} |||||||||")
                    continue
                if name.startswith("poisonlens") and not np.array_equal(
                    np.sort(res["own_isolated"]), np.sort(res["isolated"])
                ):
                    print(f"note: {name} flags {len(res['own_isolated'])} itself", flush=True)
                gap = (res["objective"] - ref["objective"]) / ref["objective"]
                lines.append(
                    f"| {n:,} | {subset} | {name} | {res['seconds']:.2f} | {res['runs']}: {res['best']:.2f} | "
                    f"{res['started']:.2f} | "
                    f"{res['peak_mb']:,.0f} | {res['peak_mb'] - res['start_mb']:,.0f} | "
                    f"{res['objective']:,.2f} | {gap:+.4%} | "
                    f"{len(res['isolated']):,} | {jaccard(res['isolated'], ref['isolated']):.3f} |"
                )
    return lines


def compile_cost(n: int, subset: float) -> str:
    """The one-off numba compile: a run with an empty cache."""
    with tempfile.TemporaryDirectory() as cache:
        cold = run_worker("poisonlens lazy", n, subset, env={"NUMBA_CACHE_DIR": cache})
    return (
        f"- poisonlens's start-up is importing numba and loading its cached machine code. With an "
        f"empty numba cache (a fresh machine) the start-up compiles instead: {cold['started']:.1f} s, "
        "once; the cache sits in `core/defense/__pycache__`."
    )


def kernel_check() -> str:
    """Largest difference between submodlib's dense kernel and ours on one class."""
    if not available(REFERENCE):
        return "- submodlib is not installed: no kernel comparison."
    from submodlib import FacilityLocationFunction

    from poisonlens.defense.facility_location import Kernel

    grads, labels = softmax_minus_onehot(50_000)
    X = grads[labels == 0]
    theirs = FacilityLocationFunction(n=len(X), mode="dense", data=X, metric="euclidean").sijs
    ours = Kernel(X, metric="euclidean").matrix()
    return (
        f"- Kernel check (one class of {len(X):,}): largest |s_submodlib - s_poisonlens| = "
        f"{np.abs(theirs - ours).max():.1e}."
    )


def epoch_share(cifar: Path, epochs: int) -> list[str]:
    """Train under EPIC (subset 0.1, a snapshot every epoch) and time the selection."""
    import torch

    from poisonlens.store import open_run
    from poisonlens.train import TrainConfig, train

    torch.set_num_threads(1)
    cases = [("digits", "digits")]
    if (cifar / "train").is_dir():
        cases.append(("CIFAR-10 subset (5,000)", f"imagefolder:{cifar}"))
    lines = [
        "| data | rows | epoch (train + eval) | snapshot pass | EPIC selection | selection / epoch |",
        "|---|---|---|---|---|---|",
    ]
    for label, spec in cases:
        config = TrainConfig(
            dataset=spec,
            epochs=epochs,
            snapshot_every=1,
            defense="epic",
            defense_params={"subset_size": 0.1},
            drop_after=epochs + 1,  # time the selection, drop nothing
            stop_after=epochs + 1,
        )
        with tempfile.TemporaryDirectory() as tmp:
            m = open_run(train(config, Path(tmp) / "run", show_progress=False)).metrics()
        trained = m[m.epoch > 0]
        epoch = float((trained.epoch_seconds + trained.eval_seconds).mean())
        selection = float(trained.defense_seconds.mean())
        rows = int(trained.n_active.iloc[0])
        lines.append(
            f"| {label} | {rows:,} | {epoch:.2f} s | {float(trained.snapshot_seconds.mean()):.2f} s | "
            f"{selection:.3f} s | {selection / epoch:.1%} |"
        )
        print(lines[-1], flush=True)
    return lines


# --------------------------------------------------------------------------- GreeDi


def greedi_worker(spec: str, n: int, subset: float, out: str) -> None:
    """One EPIC selection in this fresh process: ``spec`` is 'exact' or 'greedi:P:JOBS:SAMPLE'."""
    from poisonlens.defense.epic import select

    grads, labels = softmax_minus_onehot(n)
    if spec == "exact":
        options = {"method": "exact"}
    else:
        _, size, jobs, sample = spec.split(":")
        options = {
            "method": "greedi",
            "partition_size": int(size),
            "n_jobs": int(jobs),
            "merge_sample": int(sample),
        }
    select(grads[:200], labels[:200], subset_size=0.1, **{**options, "partition_size": 10, "merge_sample": 5})
    rss_start = _memory_mb("VmRSS")
    t0, cpu0 = time.perf_counter(), time.process_time()
    chosen = select(grads, labels, subset_size=subset, **options)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    costs = np.array([seconds, _memory_mb("VmHWM"), rss_start, chosen.objective.sum(), cpu])
    np.savez(out, isolated=np.flatnonzero(chosen.isolated), costs=costs)


def run_greedi_worker(spec: str, n: int, subset: float, timeout: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.npz"
        cmd = [sys.executable, __file__, "--greedi-worker", spec, "--n", str(n)]
        cmd += ["--subset", str(subset), "--out", str(out)]
        try:
            done = subprocess.run(
                cmd,
                env={**os.environ, **ONE_THREAD},
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {timeout:.0f} s"}
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines()
            return {"error": lines[-1] if lines else f"exit {done.returncode}"}
        with np.load(out) as saved:
            seconds, peak, start, objective, cpu = saved["costs"]
            return {
                "seconds": seconds,
                "cpu": cpu,
                "peak_mb": peak,
                "start_mb": start,
                "objective": objective,
                "isolated": saved["isolated"],
            }


def greedi_bench(
    sizes: list[int],
    partitions: list[int],
    samples: list[int],
    jobs: int,
    exact_max: int,
    timeout: float,
) -> list[str]:
    """GreeDi against exact greedy on the same inputs (subset 0.1), each run a fresh process."""
    lines = [
        "| N | method | partition size | merge sample | threads | time (s) | CPU (s) "
        "| peak RSS (MB) | objective | vs exact | isolated | Jaccard vs exact |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        exact = run_greedi_worker("exact", n, 0.1, timeout) if n <= exact_max else None
        runs = [("exact", "", "", 1, exact)] if exact is not None else []
        for size in partitions:
            if size >= n // N_CLASSES:
                continue  # one partition per class: GreeDi runs exact greedy
            for sample in samples:
                spec = f"greedi:{size}:{jobs}:{sample}"
                res = run_greedi_worker(spec, n, 0.1, timeout)
                runs.append(("greedi", f"{size:,}", f"{min(sample, n // N_CLASSES):,}", jobs, res))
        for method, size, sample, threads, res in runs:
            print(n, method, size, sample, {k: v for k, v in res.items() if np.isscalar(v)})
            head = f"| {n:,} | {method} | {size} | {sample} | {threads} |"
            if "error" in res:
                lines.append(f"{head} {res['error']} |||||||")
                continue
            ok = exact is not None and "error" not in exact
            gap = (
                f"{(res['objective'] - exact['objective']) / exact['objective']:+.4%}" if ok else ""
            )
            jac = f"{jaccard(res['isolated'], exact['isolated']):.3f}" if ok else "(no exact run)"
            lines.append(
                f"{head} {res['seconds']:.1f} | "
                f"{res['cpu']:.1f} | {res['peak_mb']:,.0f} | {res['objective']:,.1f} | {gap} | "
                f"{len(res['isolated']):,} | {jac} |"
            )
    return lines


def write_greedi_section(out: Path, lines: list[str]) -> None:
    """Replace the '## GreeDi' section of ``out`` (everything after it) with ``lines``."""
    text = out.read_text() if out.exists() else ""
    head = text.split("\n## GreeDi")[0].rstrip("\n")
    out.write_text(head + "\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    parser.add_argument("--subsets", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument(
        "--only", nargs="+", choices=list(PEERS), help="run only these implementations"
    )
    parser.add_argument("--epoch-share", action="store_true", help="also time EPIC inside training")
    parser.add_argument("--cifar", type=Path, default=ROOT.parent / "shared/data/cifar10-subset")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "select.md")
    parser.add_argument(
        "--greedi",
        action="store_true",
        help="only GreeDi against exact (--sizes, --partition-sizes, --jobs); rewrites the "
        "'## GreeDi' section of --out",
    )
    parser.add_argument("--partition-sizes", type=int, nargs="+", default=[1000, 2500, 10_000])
    parser.add_argument(
        "--merge-samples", type=int, nargs="+", default=[10_000], help="GreeDi merge_sample"
    )
    parser.add_argument("--jobs", type=int, default=2, help="GreeDi threads")
    parser.add_argument("--exact-max", type=int, default=200_000, help="largest N run exactly")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per run")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--greedi-worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--subset", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.n, args.subset, args.out)
        return
    if args.greedi_worker:
        greedi_worker(args.greedi_worker, args.n, args.subset, args.out)
        return
    if args.greedi:
        command = "python bench/select.py " + shlex.join(sys.argv[1:])
        lines = [
            "## GreeDi against exact greedy",
            "",
            f"`{command.strip()}`: each run a fresh process (BLAS/numba one thread; GreeDi's "
            f"own threads as listed), on {os.cpu_count()} cores shared with other work. Input "
            "`softmax_minus_onehot(N)`, 10 balanced classes, subset 0.1, the same seeded input "
            "for both methods. Peak RSS is the worker process's VmHWM; CPU is the worker's user + "
            "system time during the selection (on a loaded machine wall time overstates the "
            "work; CPU / threads is the wall time on idle cores).",
            "",
            *greedi_bench(
                args.sizes,
                args.partition_sizes,
                args.merge_samples,
                args.jobs,
                args.exact_max,
                args.timeout,
            ),
        ]
        write_greedi_section(args.out, lines)
        print("\n".join(lines))
        return

    names = [name for name in (args.only or PEERS) if available(name)]
    missing = [name for name in (args.only or PEERS) if name not in names]
    command = "python bench/select.py " + shlex.join(sys.argv[1:])
    lines = [
        "# EPIC selection: poisonlens against its peers",
        "",
        f"`{command.strip()}` on {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other work, one thread per run, each run a fresh "
        "process. 'time' is the median of the runs, 'runs: best' their number and the fastest; "
        "other work on the machine makes single runs vary by tens of percent.",
        f"Input: `softmax_minus_onehot(N)`, {N_CLASSES} balanced classes; reference: {REFERENCE}. "
        "Objective and isolated set are recomputed for every implementation with the same float32 "
        "kernel; 'isolated' counts medoids alone in their cluster (cluster_thresh = 1).",
        "",
        *bench(args.sizes, args.subsets, names),
        "",
    ]
    if missing:
        lines.append(f"Not installed, not run: {', '.join(missing)}.")
    lines += ["", "## Notes", "", compile_cost(min(args.sizes), args.subsets[0]), kernel_check()]
    if args.epoch_share:
        lines += [
            "",
            "## Share of an EPIC training epoch",
            "",
            *epoch_share(args.cifar, args.epochs),
        ]
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
