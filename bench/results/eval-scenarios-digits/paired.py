"""EPIC against the random drop of the same size, cell by cell (same poison set, scenario, seed).

usage: python paired.py RUNS.csv [epic-0.2] [random-0.2]
Prints, per scenario, the controlled successes of each and the discordant cells: where EPIC
stopped a flip the random drop let through, and the reverse.
"""

import sys

import pandas as pd

runs = pd.read_csv(sys.argv[1])
epic = sys.argv[2] if len(sys.argv) > 2 else "epic-0.2"
rand = sys.argv[3] if len(sys.argv) > 3 else "random-0.2"
key = ["scenario", "poison_set", "seed"]
for scenario, g in runs.groupby("scenario", sort=False):
    a, b = g[g.defense == epic], g[g.defense == rand]
    n = g[g.defense == "none"][[*key, "controlled_success"]]
    both = a.merge(b, on=key, suffixes=("_epic", "_rand")).merge(n, on=key)
    if both.empty:
        continue
    e, r = both.controlled_success_epic, both.controlled_success_rand
    print(f"{scenario}: cells {len(both)}; controlled success none {int(both.controlled_success.sum())}, "
          f"{epic} {int(e.sum())}, {rand} {int(r.sum())}; {epic} stops where {rand} does not: "
          f"{int(((e == 0) & (r == 1)).sum())}, the reverse: {int(((e == 1) & (r == 0)).sum())}; "
          f"clean acc {both.test_acc_epic.mean():.3f} vs {both.test_acc_rand.mean():.3f}; "
          f"recall {both.recall_epic.mean():.2f} vs {both.recall_rand.mean():.2f}; "
          f"precision {both.precision_epic.mean():.3f} vs {both.precision_rand.mean():.3f}")
