"""Write the tables of the finished runs only (for a grid cut off by the deadline).

usage: [DEFENSES=a,b,...] python tables.py OUT DEST [DATASET]  — reads OUT/runs/<scenario>/*, writes
runs.csv, detection.csv, summary.csv and summary.md to DEST. A cell counts only once its run.json
says 'finished'; a defense not run in a scenario is left out of its table.
"""

import os
import sys
from pathlib import Path

from poisonlens.evaluate import (
    SCENARIOS,
    cell_state,
    dataset_key,
    plan_grid,
    poison_sets_for,
    write_results,
)

out, dest = Path(sys.argv[1]), Path(sys.argv[2])
defenses = os.environ.get(
    "DEFENSES", "clean,none,epic-0.2,random-0.2,deepknn,spectral,activation-clustering,loss").split(",")
key = dataset_key(sys.argv[3] if len(sys.argv) > 3 else "digits")
pretrained = {s: out / "pretrained" / key / "seed0/checkpoints/model.pt" for s in (0, 1, 2)}
grid = []
for scenario in SCENARIOS:
    if not (out / "runs" / scenario).is_dir():
        continue
    sets = poison_sets_for(out / "poisons", scenario)
    cells = plan_grid(sets, defenses, [0, 1, 2], out, scenario=scenario,
                      pretrained=pretrained if scenario != "scratch" else None)
    grid += [c for c in cells if cell_state(c.run_dir) == "finished"]
dest.mkdir(parents=True, exist_ok=True)
write_results(grid, defenses, dest)
print((dest / "summary.md").read_text())
print(f"{len(grid)} finished runs")
