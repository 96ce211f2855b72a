#!/usr/bin/python3
"""Run sklearn_example.py (the seed's script, unchanged) with its standard
output going to a file: inside veil that file is on a sealed mount, so the
regression's figures leave the TEE only sealed.

usage: job.py [OUT]   (default /out/result.txt)

The script draws its noise from NumPy's global generator; it is seeded here
so that the run inside veil and the plaintext run outside print the same
figures and can be compared.
"""
import contextlib
import os
import runpy
import sys

import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else "/out/result.txt"
script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sklearn_example.py")
np.random.seed(2357)
with open(out, "w") as f, contextlib.redirect_stdout(f):
    runpy.run_path(script, run_name="__main__")
