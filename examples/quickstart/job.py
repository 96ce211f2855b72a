#!/usr/bin/python3
"""The README's job: count the people aged 20 to 40 by job.

Reads /data/people.csv and writes /data/out.csv (inside veil, /data is the
sealed mount: the program reads and writes plain CSV, unchanged).
"""
import csv

counts = {}
with open("/data/people.csv", newline="") as f:
    for row in csv.DictReader(f):
        if 20 <= int(row["age"]) <= 40:
            counts[row["job"]] = counts.get(row["job"], 0) + 1

with open("/data/out.csv", "w", newline="") as f:
    out = csv.writer(f, lineterminator="\n")
    out.writerow(["job", "count"])
    for job in sorted(counts):
        out.writerow([job, counts[job]])
