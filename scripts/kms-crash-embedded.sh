#!/usr/bin/env bash
# Crash campaign on the embedded (bbolt) store: CYCLES times, kill -9 of the
# built `veil kms serve` under a load of WRITERS clients creating keys,
# writing secrets and releasing data keys; after each restart every
# acknowledged write must be there, released data keys must still decrypt
# and `veil kms audit verify` must pass (kms/e2e TestEmbeddedKill9Cycles).
#
#   CYCLES=200 WRITERS=4 scripts/kms-crash-embedded.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto} VEIL_TEST_REQUIRE=all
export VEIL_KMS_CYCLES=${CYCLES:-200} VEIL_KMS_WRITERS=${WRITERS:-4}
echo "kms-crash-embedded: $(date -u +%FT%TZ) veil $(git rev-parse --short HEAD 2>/dev/null || echo unknown), $VEIL_KMS_CYCLES cycles, $VEIL_KMS_WRITERS writers; $(uptime)"
go test -count=1 -timeout 2h -v -run '^TestEmbeddedKill9Cycles$' ./kms/e2e 2>&1 | grep -E 'campaign_test.go|^(--- |ok|FAIL|panic)'
echo "end: $(uptime)"
