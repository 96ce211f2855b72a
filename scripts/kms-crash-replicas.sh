#!/usr/bin/env bash
# Crash campaign on three replicas sharing one PostgreSQL: CLIENTS clients
# release data keys and create keys for DURATION while one replica is
# killed with SIGKILL every KILL_EVERY and restarted (unsealed through the
# CLI); then PostgreSQL is restarted with a fast shutdown under the same
# load (kms/e2e TestReplicasKill9CyclesAndPostgresRestart).
#
#   CLIENTS=32 DURATION=60s KILL_EVERY=10s scripts/kms-crash-replicas.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} VEIL_TEST_REQUIRE=all
export VEIL_KMS_CLIENTS=${CLIENTS:-32} VEIL_KMS_DURATION=${DURATION:-60s} VEIL_KMS_KILL_EVERY=${KILL_EVERY:-10s}
echo "kms-crash-replicas: $(date -u +%FT%TZ) veil $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $VEIL_KMS_CLIENTS clients, $VEIL_KMS_DURATION, a kill every $VEIL_KMS_KILL_EVERY; $(uptime)"
go test -count=1 -timeout 1h -v -run '^TestReplicasKill9CyclesAndPostgresRestart$' ./kms/e2e 2>&1 | grep -E 'campaign_test.go|^(--- |ok|FAIL|panic)'
echo "end: $(uptime)"
