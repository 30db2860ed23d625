"""Regenerate the bundled sample: `make sample` (about 10 minutes on 2 cores).

1. craft a gradient-matching poison set on digits (the recipe in docs/attacks.md that succeeds
   from scratch here: eps 32, 5% of the training set, 8 restarts, an ensemble of 2 surrogates);
2. train the same victim four times, each step a fresh `poisonlens` process: no defense, EPIC at subset 0.1, a random drop of as many
   examples as the EPIC run dropped at each snapshot, and the clean control (poisons restored to their base images);
3. compute each run's 2-D map, drop the checkpoints (the runs are finished), and write
   manifest.json: the recipe and a checksum of every file (see sample_data/manifest.py).

``--check`` only compares the committed copy with the manifest. ``--rescore`` recomputes the EPIC
runs' suspicion columns (``score``, ``isolation``) from their stored gradients with this
version's EPIC, checks that every decision it makes is the one stored, rewrites those columns
and the manifest's checksums, and trains nothing (seconds instead of ten minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MANIFEST = HERE / "manifest.json"

CRAFT = [
    "--dataset", "digits", "--attack", "gradient-matching", "--target-index", "32",
    "--adv-class", "3", "--budget", "0.05", "--eps", "32", "--seed", "0",
    "--param", "restarts=8", "--param", "ensemble=2", "--param", "surrogate_epochs=[20,40]",
]  # fmt: skip
VICTIM = ["--dataset", "digits", "--epochs", "30", "--seed", "1", "--embedding-dims", "4"]
RUNS = {
    "demo-none": ["--defense", "none"],
    "demo-epic": ["--defense", "epic", "--subset-size", "0.1"],
    "demo-random": ["--defense", "random"],  # + counts: demo-epic's drops at each snapshot
    "demo-clean-control": ["--defense", "none", "--clean-control"],
}


def recipe() -> dict:
    return {"craft": CRAFT, "victim": VICTIM, "runs": RUNS}


def poisonlens(*args: str) -> None:
    # A fresh process per step, as a user runs them: results then depend on nothing left over
    # from an earlier step in the same process.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "poisonlens.cli", *args], check=True, cwd=REPO, env=env)


def make(out: Path) -> None:
    from poisonlens.evaluate import drop_schedule

    poisons = out / "poisons" / "demo"
    poisonlens("craft", "--quiet", *CRAFT, "--overwrite", "--out", str(poisons))
    (poisons / "surrogate.pt").unlink(missing_ok=True)
    # demo-random copies the drops of an EPIC run, and the dashboard opens on the newest run:
    # EPIC is trained once into a scratch folder for its schedule, then again (identically) last.
    scratch = out / "runs" / ".epic-schedule"
    poisonlens("train", "--quiet", *VICTIM, *RUNS["demo-epic"], "--poisons", str(poisons.relative_to(REPO)),
               "--runs-dir", str(scratch.parent), "--name", scratch.name)  # fmt: skip
    counts = drop_schedule(scratch)
    shutil.rmtree(scratch)
    for name in ["demo-clean-control", "demo-none", "demo-random", "demo-epic"]:
        extra = []
        if name == "demo-random":
            extra = ["--defense-param", "counts=" + json.dumps(counts, sort_keys=True)]
        poisonlens("train", "--quiet", *VICTIM, *RUNS[name], *extra, "--poisons",
                   str(poisons.relative_to(REPO)), "--runs-dir", str(out / "runs"), "--name", name)  # fmt: skip
        poisonlens("project", "--quiet", "--run", str(out / "runs" / name))
        shutil.rmtree(out / "runs" / name / "checkpoints")


def rescore(out: Path) -> list[str]:
    """Recompute the score and isolation columns of every EPIC run's snapshots under ``out``.

    The selection is re-run on each snapshot's stored gradients and active mask; a decision
    (medoid, cluster size, suspect) that differs from the stored one stops it with an error,
    so only the columns this version scores differently are replaced. Returns the files written.
    """
    import numpy as np

    from poisonlens.defense.epic import EpicConfig, select
    from poisonlens.store import atomic_write_parquet, open_run

    written = []
    for run_dir in sorted((out / "runs").iterdir()):
        run = open_run(run_dir)
        if run.config.get("defense") != "epic":
            continue
        config = EpicConfig(**run.config.get("defense_params", {}))
        for epoch in run.snapshot_epochs():
            frame = run.snapshot(epoch)
            grads = frame.filter(regex="^g_").to_numpy(np.float32)
            chosen = select(grads, frame["label"].to_numpy(np.int64),
                            active=frame["active"].to_numpy(bool), config=config)  # fmt: skip
            for name, mine in (("medoid", chosen.medoid), ("cluster_size", chosen.cluster_size),
                               ("suspect", chosen.drop)):  # fmt: skip
                if not np.array_equal(frame[name].to_numpy(), mine):
                    raise SystemExit(f"{run_dir.name} epoch {epoch}: {name} differs; run `make sample`")
            frame["score"] = chosen.score
            at = frame.columns.get_loc("isolated") + 1 if "isolation" not in frame else None
            if at is not None:
                frame.insert(at, "isolation", chosen.isolation)
            else:
                frame["isolation"] = chosen.isolation
            path = run.file("snapshots", f"epoch_{epoch:04d}.parquet")
            atomic_write_parquet(path, frame)
            written.append(str(path.relative_to(out)))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare the copy here with the manifest"
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="recompute the EPIC runs' score columns from their stored gradients (no training)",
    )
    args = parser.parse_args()
    from sample_data.manifest import checksums, differences

    old = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else None
    if args.rescore:
        print(f"rescored {len(rescore(HERE))} snapshot files")
        old["files"] = checksums(HERE)
        MANIFEST.write_text(json.dumps(old, indent=1) + "\n")
        return 0
    if not args.check:
        for sub in ("poisons", "runs"):
            shutil.rmtree(HERE / sub, ignore_errors=True)
        make(HERE)
        MANIFEST.write_text(
            json.dumps({"recipe": recipe(), "files": checksums(HERE)}, indent=1) + "\n"
        )
    if old is None:
        return 0
    problems = differences(old["files"], checksums(HERE))
    if old["recipe"] != json.loads(json.dumps(recipe())):
        problems.insert(0, "recipe: make_sample.py's recipe differs from the manifest's")
    print("\n".join(problems) if problems else "sample matches its manifest")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
