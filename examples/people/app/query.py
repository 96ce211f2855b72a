#!/usr/bin/python3
"""People query (the BigDL SimpleQuery / PySpark SQL example): keep the
people aged 20 to 40 and count them by job.

usage: query.py [IN [OUT]]   (default /data/people.csv /data/out.csv)

The same program runs on plaintext files outside veil and, unchanged, on
the sealed mount inside veil. Timings go to standard error.
"""
import sys
import time

import pandas as pd

src = sys.argv[1] if len(sys.argv) > 1 else "/data/people.csv"
dst = sys.argv[2] if len(sys.argv) > 2 else "/data/out.csv"

t0 = time.perf_counter()
people = pd.read_csv(src, usecols=["age", "job"], dtype={"age": "int16", "job": "category"})
t1 = time.perf_counter()
adults = people[(people.age >= 20) & (people.age <= 40)]
counts = adults.groupby("job", observed=True).size().sort_index()
t2 = time.perf_counter()
counts.rename("count").to_csv(dst, index_label="job")
t3 = time.perf_counter()
print("query: %d rows, %d selected; read %.3f s, compute %.3f s, write %.3f s"
      % (len(people), len(adults), t1 - t0, t2 - t1, t3 - t2), file=sys.stderr)
