"""Regenerate the bundled sample: `make sample` (about 10 minutes on 2 cores).

1. craft a gradient-matching poison set on digits (the recipe in docs/attacks.md that succeeds
   from scratch here: eps 32, 5% of the training set, 8 restarts, an ensemble of 2 surrogates);
2. train the same victim four times, each step a fresh `poisonlens` process: no defense, EPIC at subset 0.1, a random drop of as many
   examples as the EPIC run dropped at each snapshot, and the clean control (poisons restored to their base images);
3. compute each run's 2-D map, drop the checkpoints (the runs are finished), and write
   manifest.json: the recipe and a checksum of every file (see sample_data/manifest.py).

``--check`` only compares the committed copy with the manifest.
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


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--check", action="store_true", help="only compare the copy here with the manifest"
    )
    args = parser.parse_args()
    from sample_data.manifest import checksums, differences

    old = json.loads(MANIFEST.read_text()) if MANIFEST.is_file() else None
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
