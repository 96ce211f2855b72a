#!/usr/bin/env bash
# make bench: run every package's benchmarks (medians of COUNT runs) and the
# end-to-end 1 GiB seal/open measurement and the people query (plaintext vs
# veil); print machine information first.
# At the end it prints the summary table: every speed target with what this
# run measured, its limit from the same run, and met / not met
# (scripts/benchsummary). Results are copied by hand into
# docs/performance.md.
# BASELINE=/path/to/an/older/veil makes the start-up and people runs time
# that binary too, alternating with this one (before/after in one run).
# The Go benchmarks include the image mount's (fusefs, ReadAll) and the
# squashfs reader's (internal/squashfs); `go test` runs each once
# (TestImageBenchmarks, TestBenchmarks) so that they keep working.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/benchlib.sh
COUNT=${COUNT:-5}
PKGS=${PKGS:-./...}
out=${OUT:-bench.txt}

echo "== machine"
echo "date:  $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpu:   $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
echo "mem:   $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
echo "go:    $(go version)"
echo "veil:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== go benchmarks (count=$COUNT) -> $out"
go test -run '^$' -bench . -benchmem -count "$COUNT" $PKGS | tee "$out" | grep -E '^(Benchmark|ok|FAIL)' || true
echo "== medians (benchstat)"
go tool benchstat "$out" || true

echo "== veil encrypt/decrypt of a 1 GiB file (page cache warm, medians of $COUNT)"
tmp=$(mktemp -d /var/tmp/veil-bench.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# The scripts below add their rows of the summary table here.
export VEIL_BENCH_SUMMARY=$tmp/summary.tsv
: >"$VEIL_BENCH_SUMMARY"
./bin/veil gen-key "$tmp/k" >/dev/null
head -c $((1 << 30)) /dev/urandom >"$tmp/in"
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); calc "$e - $s"; }
enc=(); dec=(); cat=()
for i in $(seq "$COUNT"); do
	rm -f "$tmp/in.sealed" "$tmp/out"
	cat+=("$(secs cp "$tmp/in" "$tmp/copy")"); rm -f "$tmp/copy"
	enc+=("$(secs ./bin/veil encrypt --key "file:$tmp/k" -i "$tmp/in" -o "$tmp/in.sealed")")
	dec+=("$(secs ./bin/veil decrypt --key "file:$tmp/k" -i "$tmp/in.sealed" -o "$tmp/out")")
done
cmp "$tmp/in" "$tmp/out"
for name in cat enc dec; do
	declare -n arr=$name
	m=$(printf '%s\n' "${arr[@]}" | median)
	printf '%-28s median %6.3f s  %7.0f MB/s\n' "$( [ $name = cat ] && echo 'cp (plain copy, the disk)' || echo "veil $( [ $name = enc ] && echo encrypt || echo decrypt)")" "$m" "$(calc "1073.741824 / $m")"
done
echo "== veil encrypt/decrypt of 1 GiB through pipes to /dev/null (no disk)"
s=$(date +%s.%N); head -c $((1 << 30)) /dev/zero | ./bin/veil encrypt --key "file:$tmp/k" -i - -o - >"$tmp/zero.sealed"; e=$(date +%s.%N)
printf 'encrypt stdin->file          %6.3f s  %7.0f MB/s\n' "$(calc "$e - $s")" "$(calc "1073.741824 / ($e - $s)")"
s=$(date +%s.%N); ./bin/veil decrypt --key "file:$tmp/k" -i "$tmp/zero.sealed" -o - >/dev/null; e=$(date +%s.%N)
printf 'decrypt file->/dev/null      %6.3f s  %7.0f MB/s\n' "$(calc "$e - $s")" "$(calc "1073.741824 / ($e - $s)")"

echo "== veil run start-up: a trivial static program, without and with a key service (scripts/bench-startup.sh)"
COUNT=$COUNT ./scripts/bench-startup.sh

# End to end: the people query, plaintext vs veil (scripts/bench-people.sh;
# needs root and python3-pandas; PEOPLE=0 skips it).
if [ "${PEOPLE:-1}" = 1 ] && [ "$(id -u)" = 0 ] && /usr/bin/python3 -c 'import pandas' 2>/dev/null; then
	echo "== people query, plaintext vs veil (scripts/bench-people.sh)"
	COUNT=$COUNT ./scripts/bench-people.sh
fi

# The key service under load: one bbolt server, one and three replicas on
# PostgreSQL (scripts/kms-load.sh; KMS=0 skips it; KMS_CLIENTS (200) and
# KMS_DURATION (20s) size it).
if [ "${KMS:-1}" = 1 ]; then
	echo "== key service load (scripts/kms-load.sh)"
	CLIENTS=${KMS_CLIENTS:-200} DURATION=${KMS_DURATION:-20s} ./scripts/kms-load.sh
fi

# Spark TPC-H on the namespace cluster: plaintext, Spark's own encryption,
# veil (scripts/bench-spark.sh; needs root, Java and pyspark; SPARK=0 skips
# it; SPARK_SF (1) and SPARK_RUNS (3) size it).
if [ "${SPARK:-1}" = 1 ] && [ "$(id -u)" = 0 ] && [ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]; then
	echo "== Spark TPC-H: plaintext, Spark's encryption, veil (scripts/bench-spark.sh)"
	SF=${SPARK_SF:-1} RUNS=${SPARK_RUNS:-3} ./scripts/bench-spark.sh
fi

echo "== summary: every speed target, measured in this run (scripts/benchsummary; docs/performance.md keeps them)"
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
go run ./scripts/benchsummary -go "$out" -rows "$VEIL_BENCH_SUMMARY"
