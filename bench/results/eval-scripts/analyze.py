"""Per-set tables, the controlled success, detection AUC and crafting times from an evaluate folder.

usage: analyze.py EVAL_DIR CRAFT_TIMES_CSV DATASET SEED LAST_DROP_EPOCH [CLEAN_MODEL]
CLEAN_MODEL: a clean run's model.pt; its prediction on every target is the clean control for sets
without their own `clean` run (the clean control trains on exactly the clean train split, so it
is the same run for every pair at one seed).
"""
import sys, json
sys.path.insert(0, "/work/main")
import numpy as np, pandas as pd, torch
torch.set_num_threads(1)
from poisonlens.data import load_dataset, load_poisons
from poisonlens.models import to_tensor

ev, times_csv, ds_spec, seed, last_drop = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
clean_model = sys.argv[6] if len(sys.argv) > 6 else None
runs = pd.read_csv(f"{ev}/runs.csv")
det = pd.read_csv(f"{ev}/detection.csv")
times = pd.read_csv(times_csv)
out = []
p = lambda *a: out.append(" ".join(str(x) for x in a))

order = [d for d in ["clean", "none", "epic-0.1", "epic-0.2", "epic-0.3", "random-0.2", "deepknn", "spectral", "activation-clustering", "loss"] if d in set(runs.defense)]
# clean control per set: own clean run, else the shared clean model
clean = {}
for _, r in runs[runs.defense == "clean"].iterrows():
    clean[r.poison_set] = (r.target_prob_adv, r.attack_success)
if clean_model:
    from poisonlens.attacks.surrogate import SurrogateOptions, load_surrogate
    ds = load_dataset(ds_spec)
    m = load_surrogate(clean_model, ds, SurrogateOptions()).eval()
    for _, t in times.iterrows():
        if t.set in clean:
            pass
        with torch.no_grad():
            pr = m(to_tensor(ds.x_test[[int(t.target)]])).softmax(1)[0].numpy()
        derived = (float(pr[int(t.adv)]), float(pr.argmax() == int(t.adv)))
        if t.set in clean:
            p(f"<!-- check: {t.set} own clean run p_adv {clean[t.set][0]:.4f}, from shared clean model {derived[0]:.4f} -->")
        else:
            clean[t.set] = derived

# per-set p_adv table
p("| set | target → adv | pair rule | craft s | alignment | clean control p_adv | " + " | ".join(d for d in order if d != "clean") + " |")
p("|" + "---|" * (5 + len(order)) )
for _, t in times.iterrows():
    rs = runs[runs.poison_set == t.set].set_index("defense")
    info = json.loads(open(f"{ev}/../{'cifar' if 'cifar' in ev else 'digits'}/sets/{t.set}/poisonlens.json").read()) if False else None
    try:
        ps = load_poisons(f"{ev}/../{'cifar' if 'cifar' in ev else 'digits'}/sets/{t.set}/poisons.npz")
        al = f"{ps.extra['alignment_start']:.2f}→{ps.extra['alignment']:.2f}"
        tl = ps.target_label
    except Exception as e:
        al, tl = "?", "?"
    c = clean.get(t.set)
    cells = []
    for d in order:
        if d == "clean":
            continue
        if d in rs.index:
            r = rs.loc[d]
            mark = "**" if r.attack_success == 1 else ""
            cells.append(f"{mark}{r.target_prob_adv:.2f}{mark}")
        else:
            cells.append("–")
    cs = "–" if c is None else (f"**{c[0]:.2f}**" if c[1] == 1 else f"{c[0]:.2f}")
    rule = t.get("rule", "low-margin")
    p(f"| {t.set} | {t.target}: {tl} → {t.adv} | {rule} | {t.seconds:.0f} | {al} | {cs} | " + " | ".join(cells) + " |")

# success counts, raw and controlled
p("")
p("| defense | runs | attack success (pred = adv) | controlled success (and the clean control does not predict adv) | mean p_adv | test acc | poisons dropped (recall) | precision of drops | rows dropped (share) | ROC-AUC at epoch %d | precision at epoch %d |" % (last_drop, last_drop))
p("|" + "---|" * 11)
ntrain = None
for d in order:
    rs = runs[runs.defense == d]
    ctrl = [clean.get(s, (np.nan, np.nan))[1] for s in rs.poison_set]
    controlled = sum(1 for a, c in zip(rs.attack_success, ctrl) if a == 1 and c == 0)
    dd = det[(det.defense == d) & (det.epoch == last_drop)]
    auc = dd.roc_auc.dropna()
    prec = dd.precision.dropna()
    p(f"| {d} | {len(rs)} | {int(rs.attack_success.sum())}/{len(rs)} | {controlled if d != 'clean' else '–'}/{len(rs)} | {rs.target_prob_adv.mean():.2f} | {rs.test_acc.mean():.3f} ± {rs.test_acc.std(ddof=0):.3f} | "
      + (f"{rs.recall.mean():.2f} | {rs.precision.mean():.3f} | {rs.n_dropped.mean():.0f} | " if rs.n_dropped.sum() else "– | – | 0 | ")
      + (f"{auc.mean():.2f} ± {auc.std(ddof=0):.2f} (n={len(auc)}) | " if len(auc) else "– | ")
      + (f"{prec.mean():.3f} |" if len(prec) else "– |"))
p("")
p(f"crafting: {times.seconds.mean():.0f} ± {times.seconds.std(ddof=0):.0f} s per set (n={len(times)}, min {times.seconds.min():.0f}, max {times.seconds.max():.0f}, total {times.seconds.sum()/60:.1f} min)")
p(f"training: {runs.seconds.sum()/60:.1f} min summed over {len(runs)} runs; per run {runs.seconds.mean():.1f} ± {runs.seconds.std(ddof=0):.1f} s")
print("\n".join(out))

# stops and new flips relative to `none`, controlled by the clean control
print("")
none = runs[runs.defense == "none"].set_index("poison_set")
ok = lambda s: clean.get(s, (np.nan, np.nan))[1] == 0
base_succ = [s for s in none.index if none.loc[s, "attack_success"] == 1 and ok(s)]
print(f"controlled successes without defense: {', '.join(base_succ) or 'none'}")
print("| defense | sets run | of the no-defense successes run here: stopped | new controlled successes where no defense had none | ROC-AUC mean over drop-window snapshots |")
print("|---|---|---|---|---|")
win = det[(det.epoch >= 4) & (det.epoch <= last_drop)]
for d in order:
    if d in ("clean", "none"):
        continue
    rs = runs[runs.defense == d].set_index("poison_set")
    here = [s for s in base_succ if s in rs.index]
    stopped = [s for s in here if rs.loc[s, "attack_success"] == 0]
    new = [s for s in rs.index if s in none.index and s not in base_succ and ok(s) and rs.loc[s, "attack_success"] == 1]
    a = win[win.defense == d].roc_auc.dropna()
    print(f"| {d} | {len(rs)} | {len(stopped)}/{len(here)} ({', '.join(stopped) or '-'}) | {len(new)} ({', '.join(new) or '-'}) | {a.mean():.2f} (n={len(a)}) |" if len(a) else f"| {d} | {len(rs)} | {len(stopped)}/{len(here)} ({', '.join(stopped) or '-'}) | {len(new)} ({', '.join(new) or '-'}) | – |")
