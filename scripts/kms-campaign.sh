#!/usr/bin/env bash
# Key service campaigns on the PostgreSQL store with replicas: repeated
# kill -9 of a replica under write load (the client fails over, no
# acknowledged write is lost, the audit chain verifies), then the store
# contract and replica tests under -race, then the throughput benchmarks.
# Every test starts its own PostgreSQL (postgresql-15, scripts/setup.sh).
#
#   ROUNDS=20 PHASE=10s scripts/kms-campaign.sh
#
# The longer campaigns are scripts/kms-crash-embedded.sh (kill -9 cycles on
# bbolt), scripts/kms-crash-replicas.sh (three replicas, kill -9 every 10 s,
# PostgreSQL fast restart) and scripts/kms-load.sh (ops/s, p50/p99, CPU).
#
# ROUNDS: kill -9 rounds (default 5); PHASE: load before and after each kill
# (default 5s); OUT: directory for the logs (default a new one under
# /var/tmp). Environment skips are failures here (VEIL_TEST_REQUIRE=all).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
PHASE=${PHASE:-5s}
OUT=${OUT:-$(mktemp -d /var/tmp/veil-kms-campaign.XXXXXX)}
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} VEIL_TEST_REQUIRE=all
mkdir -p "$OUT"
echo "kms-campaign: $(date -u +%Y-%m-%dT%H:%M:%SZ) veil $(git rev-parse --short HEAD 2>/dev/null || echo unknown), logs in $OUT"

fail=0
echo "== kill -9 of a replica under load: $ROUNDS rounds, $PHASE before and after each kill"
for i in $(seq "$ROUNDS"); do
	if VEIL_KMS_CRASH_PHASE=$PHASE go test -count=1 -v -run '^TestReplicaBinariesFailOverUnderKill9$' ./kms/e2e >"$OUT/crash-$i.log" 2>&1; then
		echo "round $i: ok: $(grep -o '[0-9]* writes acknowledged.*' "$OUT/crash-$i.log" | head -1)"
	else
		echo "round $i: FAILED (see $OUT/crash-$i.log)"
		fail=1
	fi
done

echo "== store contract, migrations, replicas (-race)"
if go test -race -count=1 ./kms/store ./internal/pgtest >"$OUT/store.log" 2>&1 &&
	go test -race -count=1 -run 'Replica|Idempotent|PostgresPolicy|ClientFailsOver' ./kms >>"$OUT/store.log" 2>&1; then
	echo "ok"
else
	echo "FAILED (see $OUT/store.log)"
	fail=1
fi

echo "== benchmarks (bbolt vs PostgreSQL with two replicas)"
go test -run '^$' -bench 'BenchmarkSecretPut|DataKeyUnwrap' -count 3 ./kms | tee "$OUT/bench.txt" | grep -E '^(Benchmark|ok|FAIL)' || fail=1
exit $fail
