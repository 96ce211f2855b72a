#!/usr/bin/env bash
# make spark-demo: a Spark standalone cluster of attested instances on
# several hosts (examples/spark/run.sh): network namespaces as hosts, a dev
# key service on one, the master, two workers and the driver each in veil
# run on their own; the people query on sealed shared storage, then TPC-H
# Q1 and Q6 at scale factor 0.1 (TPCH_SF; QUERIES or TPCH_QUERIES, e.g.
# QUERIES=all for the 22; TPCH_SF= skips them), the multi-party query of
# two owners with two key services (MULTI_PARTY=0 skips it), each compared with the same job file run on the plaintext outside
# veil. Installs what it needs (scripts/setup.sh: Java, pyspark,
# tpchgen-cli); leaves nothing running or mounted and no namespace behind.
set -euo pipefail
cd "$(dirname "$0")/.."
export VEIL=${VEIL:-$PWD/bin/veil}
export ROWS=${ROWS:-100000}
export TPCH_SF=${TPCH_SF-0.1} TPCH_QUERIES=${QUERIES:-${TPCH_QUERIES:-1,6}}

./scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
	echo "spark-demo: needs root (network namespaces, FUSE mounts)" >&2
	exit 1
fi
[ -x "$VEIL" ] || { echo "spark-demo: $VEIL missing: run make build" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/veil-spark-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
WORK=$work/spark ./examples/spark/run.sh

# Nothing left behind: no mount (in any mount namespace), no process, no
# namespace of the run.
if grep -qs "$work" /proc/[0-9]*/mountinfo; then
	echo "spark-demo: mounts left under $work" >&2
	exit 1
fi
if grep -qsa "$work" /proc/[0-9]*/cmdline; then
	echo "spark-demo: processes left running:" >&2
	grep -lsa "$work" /proc/[0-9]*/cmdline >&2
	exit 1
fi
for ns in $(cat "$work/spark/netns"); do
	if [ -e "/run/netns/$ns" ]; then
		echo "spark-demo: network namespace $ns left" >&2
		exit 1
	fi
done
printf '\nspark-demo: done in %d s; nothing left running or mounted\n' $(($(date +%s) - start))
