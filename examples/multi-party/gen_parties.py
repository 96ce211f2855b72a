#!/usr/bin/python3
"""Generate the two parties' tables of the multi-party example.

usage: gen_parties.py [--rows N] [--seed S] PEOPLE_CSV INCOMES_CSV

PEOPLE_CSV (party A, name,age,job) holds N people; INCOMES_CSV (party B,
name,income) holds incomes for about two thirds of them plus people party A
does not know, in another order: the join is on name.
"""
import argparse

import numpy as np

JOBS = ["Developer", "Engineer", "Teacher", "Doctor", "Nurse", "Artist",
        "Lawyer", "Farmer", "Driver", "Chef"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("people")
    ap.add_argument("incomes")
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    n = a.rows
    ages = rng.integers(16, 71, n).tolist()
    jobs = np.array(JOBS)[rng.integers(0, len(JOBS), n)].tolist()
    with open(a.people, "w") as f:
        f.write("name,age,job\n")
        f.write("".join("p%07d,%d,%s\n" % r for r in zip(range(n), ages, jobs)))
    # Party B: people i with i % 3 != 0, and as many again that A lacks.
    ids = [i for i in range(n) if i % 3] + list(range(n, n + n // 3))
    rng.shuffle(ids)
    incomes = rng.integers(18000, 160000, len(ids)).tolist()
    with open(a.incomes, "w") as f:
        f.write("name,income\n")
        f.write("".join("p%07d,%d\n" % r for r in zip(ids, incomes)))


if __name__ == "__main__":
    main()
