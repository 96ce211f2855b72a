#!/usr/bin/python3
"""Multi-party query (BigDL's MultiPartySparkQueryExample): join party A's
people with party B's incomes on name, keep ages 20 to 40, and report per
job the number of people and their mean income. The result is written
once, into party A's sealed mount, whose new files are sealed for both
parties (veil.json: write_key and also_write_keys): either owner opens it.

usage: join.py [PEOPLE INCOMES OUT...]
  default: /party-a/people.csv /party-b/incomes.csv /party-a/joined.csv
"""
import sys

import pandas as pd

args = sys.argv[1:] or ["/party-a/people.csv", "/party-b/incomes.csv",
                        "/party-a/joined.csv"]
if len(args) < 3:
    sys.exit(__doc__)
people = pd.read_csv(args[0], dtype={"name": str, "age": "int16", "job": str})
incomes = pd.read_csv(args[1], dtype={"name": str, "income": "int64"})
joined = people.merge(incomes, on="name", how="inner")
adults = joined[(joined.age >= 20) & (joined.age <= 40)]
result = (adults.groupby("job")
          .agg(people=("name", "size"), mean_income=("income", "mean"))
          .round({"mean_income": 2})
          .sort_index())
for out in args[2:]:
    result.to_csv(out, float_format="%.2f")
print("join: %d x %d rows, %d matched, %d aged 20-40"
      % (len(people), len(incomes), len(joined), len(adults)), file=sys.stderr)
