#!/usr/bin/env bash
# people: the BigDL SimpleQuery example end to end. The data owner seals
# people.csv under a key of their key service; the developer builds an
# instance whose program keeps ages 20 to 40 and counts by job, and has its
# measurement registered as the key's release policy; the operator runs it
# on an untrusted host; the owner decrypts the result and compares it with
# the same program run on the plaintext outside veil.
#
# With PACKAGED=1 the developer then ships the instance as an OCI image
# (veil package) and the operator unpacks it into a fresh root (veil
# unpack verifies it) and runs it from there, the key service's address
# given at run time as a Kubernetes ConfigMap would (docs/deploy.md).
#
# Environment: VEIL (default ./bin/veil), ROWS (default 10000), PACKAGED,
# WORK (kept if given, else a temporary directory), KEEP=1 keeps a
# temporary WORK. Results: $WORK/results/veil/out.csv,
# $WORK/results/plain/out.csv and with PACKAGED=1
# $WORK/results/packaged/out.csv.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ROWS=${ROWS:-10000}
mkdir -p "$WORK"/{owner,host/data,results/veil,results/plain,results/packaged}

say "key service" "starts (dev mode, loopback)"
kms_start owner

say "data owner" "enrolls at the key service and creates a key"
owner_enroll alice owner
KEY=$(key_create alice people-key)
echo "  key people-key = $KEY"

say "data owner" "generates people.csv ($ROWS rows) and seals it under the key"
show "$PYTHON" "$here/gen_people.py" --rows "$ROWS" "$WORK/owner/people.csv"
show as_owner alice "$VEIL" encrypt --key kms:people-key -i "$WORK/owner/people.csv" -o "$WORK/host/data/people.csv"
"$VEIL" inspect "$WORK/host/data/people.csv" | sed 's/^/  /'
echo "  (uploads host/data/people.csv to the operator's machine)"

say "developer" "builds the instance: python3 + pandas from Debian, the query program"
instance_new "$WORK/people"
mkdir -p "$WORK/people/image/app"
cp "$here/app/query.py" "$WORK/people/image/app/query.py"
fill_config "$here/veil.json" "$WORK/people/veil.json" \
	DATA_DIR="$WORK/host/data" KEY_ID="$KEY" \
	KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
show "$VEIL" build -C "$WORK/people"
MR=$("$VEIL" print -C "$WORK/people" mrenclave)
echo "  measurement $MR"

say "developer" "registers the instance's measurement as the release policy of the owner's key (with the owner's consent: the owner's app credentials)"
show as_owner alice "$VEIL" kms policy create --name people-job --from-instance "$WORK/people" --key people-key --allow-sim

say "operator" "runs the job on the untrusted host"
printf '  $ veil run -C people /app/query.py\n'
"$VEIL" run -C "$WORK/people" /app/query.py 2>&1 | sed 's/^/  [workload] /'
echo "  the host sees only sealed files:"
ls -l "$WORK/host/data" | sed 's/^/    /'
if grep -q Engineer "$WORK/host/data/out.csv"; then echo "plaintext visible on the host!" >&2; exit 1; fi

say "data owner" "decrypts the result"
show as_owner alice "$VEIL" decrypt -i "$WORK/host/data/out.csv" -o "$WORK/results/veil/out.csv"
cat "$WORK/results/veil/out.csv" | sed 's/^/  /'

say "data owner" "runs the same program on the plaintext outside veil and compares"
show "$PYTHON" "$here/app/query.py" "$WORK/owner/people.csv" "$WORK/results/plain/out.csv"
if cmp -s "$WORK/results/veil/out.csv" "$WORK/results/plain/out.csv"; then
	echo "  identical: the sealed run and the plaintext run agree"
else
	diff "$WORK/results/plain/out.csv" "$WORK/results/veil/out.csv" >&2 || true
	echo "people: results differ" >&2
	exit 1
fi

[ "${PACKAGED:-0}" = 1 ] || exit 0

say "developer" "packages the instance as an OCI image; the address it names is the cluster's business"
# Not measured: the image carries a placeholder where nothing listens
# (in a cluster, the key service's Service name), and the same measurement.
fill_config "$here/veil.json" "$WORK/people/veil.json" \
	DATA_DIR="$WORK/host/data" KEY_ID="$KEY" \
	KMS_ADDRESS="127.0.0.1:1" KMS_CA_CERT="@file:$KMS_OWNER_CA"
[ "$("$VEIL" print -C "$WORK/people" mrenclave)" = "$MR" ] || { echo "people: the address changed the measurement" >&2; exit 1; }
show "$VEIL" package -C "$WORK/people" -o "$WORK/people.tar"
echo "  (pushes people.tar to the cluster's registry)"

say "operator" "unpacks the image into a fresh root (veil unpack checks it first) and runs it from there"
show "$VEIL" unpack --measurement "$MR" "$WORK/people.tar" "$WORK/host/root"
rm -f "$WORK/host/data/out.csv"
printf '  $ VEIL_KMS_ADDRESS_OWNER=%s root/usr/local/bin/veil run -C root/instance /app/query.py\n' "$KMS_OWNER_ADDR"
VEIL_KMS_ADDRESS_OWNER=$KMS_OWNER_ADDR "$WORK/host/root/usr/local/bin/veil" run -C "$WORK/host/root/instance" /app/query.py 2>&1 | sed 's/^/  [workload] /'
if grep -q Engineer "$WORK/host/data/out.csv"; then echo "plaintext visible on the host!" >&2; exit 1; fi

say "data owner" "decrypts the packaged run's result and compares"
show as_owner alice "$VEIL" decrypt -i "$WORK/host/data/out.csv" -o "$WORK/results/packaged/out.csv"
if cmp -s "$WORK/results/packaged/out.csv" "$WORK/results/plain/out.csv"; then
	echo "  identical: the packaged run and the plaintext run agree"
else
	diff "$WORK/results/plain/out.csv" "$WORK/results/packaged/out.csv" >&2 || true
	echo "people: the packaged run's result differs" >&2
	exit 1
fi
