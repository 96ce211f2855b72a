#!/usr/bin/env bash
# denied: the people job with one byte of its program changed. The owner's
# key is released only to the measurement the owner registered; an
# operator who alters the program (here: "<= 40" becomes "<= 90", widening
# the filter) and rebuilds gets a different measurement. The key service
# refuses the key, veil run stops before the program starts (exit code 4)
# and prints the service's reason; nothing is written.
#
# Environment: VEIL (default ./bin/veil), ROWS (default 1000), WORK, KEEP=1.
# Results: $WORK/results/denied.txt (exit code and reason).
here=$(cd "$(dirname "$0")" && pwd)
people=$here/../people
. "$here/../lib.sh"
ROWS=${ROWS:-1000}
mkdir -p "$WORK"/{owner,host/data,results}

say "key service" "starts (dev mode, loopback)"
kms_start owner

say "data owner" "enrolls, creates a key, seals people.csv ($ROWS rows)"
owner_enroll alice owner
KEY=$(key_create alice people-key)
"$PYTHON" "$people/gen_people.py" --rows "$ROWS" "$WORK/owner/people.csv"
show as_owner alice "$VEIL" encrypt --key kms:people-key -i "$WORK/owner/people.csv" -o "$WORK/host/data/people.csv"

say "developer" "builds the genuine people job and registers its measurement on the owner's key"
build_job() { # DIR PROGRAM
	instance_new "$1"
	mkdir -p "$1/image/app"
	cp "$2" "$1/image/app/query.py"
	fill_config "$here/veil.json" "$1/veil.json" \
		DATA_DIR="$WORK/host/data" KEY_ID="$KEY" \
		KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
	"$VEIL" build -C "$1" 2>&1 | grep -v 'development signing key' | sed 's/^/  /'
}
build_job "$WORK/genuine" "$people/app/query.py"
echo "  measurement $("$VEIL" print -C "$WORK/genuine" mrenclave)"
show as_owner alice "$VEIL" kms policy create --name people-job --from-instance "$WORK/genuine" --key people-key --allow-sim

say "operator" "changes one byte of the program (<= 40 becomes <= 90) and rebuilds"
sed 's/people.age <= 40/people.age <= 90/' "$people/app/query.py" >"$WORK/query-altered.py"
{ cmp -lb "$people/app/query.py" "$WORK/query-altered.py" || true; } | awk '{print "  byte " $1 ": " $3 " -> " $5}'
test "$(cmp -l "$people/app/query.py" "$WORK/query-altered.py" | wc -l)" = 1
build_job "$WORK/altered" "$WORK/query-altered.py"
echo "  measurement $("$VEIL" print -C "$WORK/altered" mrenclave)"

say "operator" "runs the altered job"
printf '  $ veil run -C altered /app/query.py\n'
set +e
"$VEIL" run -C "$WORK/altered" /app/query.py >"$WORK/run.out" 2>"$WORK/run.err"
rc=$?
set -e
sed 's/^/  /' "$WORK/run.err"
echo "  exit code $rc"
{
	echo "exit=$rc"
	cat "$WORK/run.err"
} >"$WORK/results/denied.txt"
if [ "$rc" != 4 ]; then
	echo "denied: expected exit code 4 (policy not accepted), got $rc" >&2
	exit 1
fi
if [ -e "$WORK/host/data/out.csv" ] || [ -s "$WORK/run.out" ]; then
	echo "denied: the altered program ran!" >&2
	exit 1
fi
echo "  the program never started: no out.csv, no output"

say "key service admin" "the refusal is in the audit log"
VEIL_KMS_URL=$KMS_OWNER_URL VEIL_KMS_CA=$KMS_OWNER_CA VEIL_ADMIN_TOKEN=$KMS_OWNER_TOKEN \
	"$VEIL" kms audit list --key "$KEY" | grep -i denied | tail -3 | sed 's/^/  /' || true
