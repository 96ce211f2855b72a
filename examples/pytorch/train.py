#!/usr/bin/python3
"""Train a small CNN on scikit-learn's digits (8x8 images, shipped with
python3-sklearn: nothing is downloaded) and write what the inference job
needs: the model as TorchScript, a few held-out input images, and the
class names.

usage: train.py [--images N] OUTDIR   -> OUTDIR/model.pt, input.npy, classes.txt, labels.txt
"""
import argparse
import os

import numpy as np
import torch
from torch import nn
from sklearn.datasets import load_digits

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class DigitNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classify = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.classify(self.features(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8, help="held-out images to classify (default 8)")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("out")
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1))
    test, train = perm[:200], perm[200:]
    model = DigitNet()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(a.epochs):
        for idx in train.split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test]).argmax(1) == y[test]).float().mean().item()
    print("held-out accuracy: %.3f" % acc)
    os.makedirs(a.out, exist_ok=True)
    torch.jit.script(model).save(os.path.join(a.out, "model.pt"))
    np.save(os.path.join(a.out, "input.npy"), x[test[:a.images]].numpy())
    with open(os.path.join(a.out, "classes.txt"), "w") as f:
        f.write("\n".join(NAMES) + "\n")
    with open(os.path.join(a.out, "labels.txt"), "w") as f:
        f.write("\n".join(NAMES[int(i)] for i in y[test[:a.images]]) + "\n")


if __name__ == "__main__":
    main()
