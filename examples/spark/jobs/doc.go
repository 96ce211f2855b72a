// Package jobs holds no Go code: its files are Spark programs with nothing
// of veil in them, so that the same file runs on plaintext outside veil and
// on sealed data inside it (spark-submit supplies the master and the
// configuration):
//
//   - tpch.py runs the TPC-H specification's 22 queries (tpch/q1.sql ...
//     q22.sql, Spark SQL with the specification's validation parameters)
//     over the tables scripts/tpch-gen.sh generates, as Parquet or CSV,
//     and writes each result as CSV.
//   - multi_party.py joins two owners' tables (examples/multi-party).
//   - batch.py runs several of these job files, unchanged, one after the
//     other in one Spark application (one driver start-up).
//
// jobs_test.go runs both in Spark's local mode outside veil and checks
// them: the TPC-H results on Parquet input equal those on CSV input
// (internal/sparkcheck), facts that do not depend on Spark hold (row
// counts the specification fixes, Q1 and Q6 recomputed from the
// generated files, Q13's customers), and the multi-party result equals
// the pandas program's of examples/multi-party.
package jobs
