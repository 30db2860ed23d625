"""Pick (target, adv) pairs: correctly classified test images with the smallest top-2 margin under a clean surrogate; adv = runner-up."""
import sys, json
sys.path.insert(0, "/work/main"); sys.path.append("/work/main/bench")  # append: bench/select.py would shadow stdlib select
import torch
torch.set_num_threads(1)
from poisonlens.data import load_dataset
from poisonlens.attacks.surrogate import SurrogateOptions, train_surrogates, load_surrogate
from attack_demo import pick_pairs
ds_spec, n = sys.argv[1], int(sys.argv[2])
ds = load_dataset(ds_spec)
if len(sys.argv) > 3:
    model = load_surrogate(sys.argv[3], ds, SurrogateOptions())
else:
    model = train_surrogates(ds, SurrogateOptions(), random_state=0)[-1]
low = pick_pairs(ds, model, n, rule="low-margin", seed=0)
rnd = [p for p in pick_pairs(ds, model, 3 * n, rule="random", seed=0) if p not in low][:n]
print(json.dumps({"low-margin": low, "random": rnd}))
