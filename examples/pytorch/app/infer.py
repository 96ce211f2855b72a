#!/usr/bin/python3
"""Classify images with a TorchScript model and write the top-3 classes of
each (the Gramine PyTorch tutorial's flow, on the digits data set).

usage: infer.py [DIR]   (default /data): reads DIR/model.pt, DIR/input.npy,
DIR/classes.txt; writes DIR/result.txt
"""
import os
import sys

import numpy as np
import torch

d = sys.argv[1] if len(sys.argv) > 1 else "/data"
torch.set_num_threads(1)
model = torch.jit.load(os.path.join(d, "model.pt"))
model.eval()
images = torch.from_numpy(np.load(os.path.join(d, "input.npy")))
with open(os.path.join(d, "classes.txt")) as f:
    classes = [line.strip() for line in f if line.strip()]
with torch.no_grad():
    prob = torch.softmax(model(images), dim=1)
top = prob.topk(3, dim=1)
with open(os.path.join(d, "result.txt"), "w") as f:
    for i in range(len(images)):
        f.write("image %d: %s\n" % (i, ", ".join(
            "%s (%.1f%%)" % (classes[int(c)], 100 * float(p)) for p, c in zip(top.values[i], top.indices[i]))))
