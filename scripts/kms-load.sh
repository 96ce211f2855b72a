#!/usr/bin/env bash
# Load on loopback: CLIENTS concurrent clients unwrapping data keys for
# DURATION against one bbolt server, one replica on PostgreSQL and three
# replicas on PostgreSQL, all the built `veil kms serve` (kms/e2e
# TestLoadEmbeddedAndReplicas, load client internal/kmsload). Prints ops/s,
# p50/p99, errors and CPU per op (servers + PostgreSQL + load client, from
# /proc). For a server started by hand, use the load client alone:
#   go run ./scripts/kmsload --url URL --ca CA --admin-token T --clients 200 --duration 60s --pids PID
#
#   CLIENTS=200 DURATION=60s scripts/kms-load.sh
#
# Before/after in one run: BINARIES=old-veil,new-veil ROUNDS=3 runs every
# configuration with each binary in turn, alternating. CONFIGS=bbolt,pg1,pg3
# picks configurations, LEAN=1 uses the lighter load client (raw HTTP/1.1 on
# each client's TLS connection), PROFILE=DIR writes a CPU profile per server,
# RATE=N offers N operations per second in all (open loop, latency counted
# from when each operation was due) instead of sending back to back.
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} VEIL_TEST_REQUIRE=all
export VEIL_KMS_LOAD_CLIENTS=${CLIENTS:-200} VEIL_KMS_LOAD_DURATION=${DURATION:-60s}
export VEIL_KMS_LOAD_BINARIES=${BINARIES:-} VEIL_KMS_LOAD_ROUNDS=${ROUNDS:-1} VEIL_KMS_LOAD_CONFIGS=${CONFIGS:-}
export VEIL_KMS_LOAD_LEAN=${LEAN:-} VEIL_KMS_LOAD_PROFILE=${PROFILE:-} VEIL_KMS_LOAD_RATE=${RATE:-}
echo "kms-load: $(date -u +%FT%TZ) veil $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $VEIL_KMS_LOAD_CLIENTS clients, $VEIL_KMS_LOAD_DURATION each; $(uptime)"
go test -count=1 -timeout 1h -v -run '^TestLoadEmbeddedAndReplicas$' ./kms/e2e 2>&1 | grep -E 'campaign_test.go|^(--- |ok|FAIL|panic)'
echo "end: $(uptime)"
