"""Pick (target, adv class) pairs: correctly classified test images with the smallest top-2
probability gap under a model (adv = its runner-up class). Prints one "target adv" per line.

usage: python pick_targets.py MODEL.pt DATASET N [--width W]
"""

import sys

import numpy as np
import torch

from poisonlens.data import load_dataset
from poisonlens.models import build_model, to_tensor

path, spec, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
width = int(sys.argv[5]) if len(sys.argv) > 5 else 32
data = load_dataset(spec)
model = build_model("smallcnn", n_classes=data.n_classes, in_channels=data.x_train.shape[-1], width=width)
model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
with torch.no_grad():
    probs = model.eval()(to_tensor(data.x_test)).softmax(1).numpy()
order = np.argsort(-probs, axis=1)
correct = np.flatnonzero(order[:, 0] == data.y_test)
margin = probs[correct, order[correct, 0]] - probs[correct, order[correct, 1]]
for t in correct[np.argsort(margin, kind="stable")[:n]]:
    print(int(t), int(order[t, 1]))
