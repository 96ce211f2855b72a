#!/usr/bin/python3
"""Generate people.csv (name,age,job) with a fixed seed: the input of the
people example (the BigDL SimpleQuery data set).

usage: gen_people.py [--rows N] [--seed S] OUT
"""
import argparse
import sys

import numpy as np

FIRST = ["Ada", "Ben", "Chloe", "Dan", "Eve", "Farid", "Grace", "Hugo", "Iris",
         "Jon", "Kemal", "Lena", "Mei", "Nils", "Olga", "Pablo", "Quinn", "Rosa",
         "Sven", "Tara", "Uma", "Vlad", "Wen", "Ximena", "Yusuf", "Zoe"]
JOBS = ["Developer", "Engineer", "Teacher", "Doctor", "Nurse", "Artist",
        "Lawyer", "Farmer", "Driver", "Chef"]
CHUNK = 1_000_000


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000, help="number of rows (default 10000)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("out", help="output CSV file, - for standard output")
    a = ap.parse_args()
    if a.rows < 0:
        ap.error("--rows must be at least 0")
    rng = np.random.default_rng(a.seed)
    first = np.array(FIRST)
    jobs = np.array(JOBS)
    out = sys.stdout if a.out == "-" else open(a.out, "w", newline="")
    with out:
        out.write("name,age,job\n")
        for start in range(0, a.rows, CHUNK):
            n = min(CHUNK, a.rows - start)
            names = first[rng.integers(0, len(first), n)].tolist()
            ages = rng.integers(16, 71, n).tolist()
            job = jobs[rng.integers(0, len(jobs), n)].tolist()
            out.write("".join("%s%d,%d,%s\n" % r for r in zip(names, range(start, start + n), ages, job)))


if __name__ == "__main__":
    main()
