"""Tables from the finished runs of an evaluate folder only (poisonlens.evaluate.write_results on those cells).

usage: tables.py EVAL_DIR  -- writes runs.csv, detection.csv, summary.csv, summary.md into EVAL_DIR/final/
"""
import sys
from pathlib import Path
sys.path.insert(0, "/work/main")
from poisonlens.evaluate import DEFAULT_DEFENSES, GridRun, to_markdown, write_results
from poisonlens.store import open_run

ev = Path(sys.argv[1])
grid, skipped = [], []
for d in sorted((ev / "runs").iterdir()):
    s, defense, seed = d.name.split("__")
    if (d / "run.json").is_file() and open_run(d).status == "finished":
        grid.append(GridRun(Path(s + ".npz"), defense, int(seed.removeprefix("seed")), d))
    else:
        skipped.append(d.name)
out = ev / "final"
out.mkdir(exist_ok=True)
write_results(grid, list(DEFAULT_DEFENSES), out)
print(to_markdown(__import__("pandas").read_csv(out / "summary.csv")), end="")
print(f"{len(grid)} finished runs; not finished (left out): {skipped or 'none'}")
