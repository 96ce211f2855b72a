#!/usr/bin/env bash
# multi-party: BigDL's MultiPartySparkQueryExample. Two data owners, each
# with their own key service and key, seal their tables; one job, whose
# measurement both owners register on their own key, joins the two tables
# inside veil and writes the result sealed for each owner: party A's copy
# under A's key, party B's copy under B's key.
#
# Environment: VEIL (default ./bin/veil), ROWS (default 10000), WORK, KEEP=1.
# Results: $WORK/results/veil/{a,b}.csv and $WORK/results/plain/joined.csv.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ROWS=${ROWS:-10000}
mkdir -p "$WORK"/{plain,host/party-a,host/party-b,results/veil,results/plain}

say "key services" "party A and party B each run their own (dev mode, loopback)"
kms_start kms-a
kms_start kms-b

say "data owner A" "enrolls at kms-a and creates a key"
owner_enroll amy kms-a
KEY_A=$(key_create amy people-a)
echo "  key people-a = $KEY_A"
say "data owner B" "enrolls at kms-b and creates a key"
owner_enroll bob kms-b
KEY_B=$(key_create bob incomes-b)
echo "  key incomes-b = $KEY_B"

say "data owners" "generate their tables (A: people, B: incomes) and seal them, each under their own key"
"$PYTHON" "$here/gen_parties.py" --rows "$ROWS" "$WORK/plain/people.csv" "$WORK/plain/incomes.csv"
show as_owner amy "$VEIL" encrypt --key kms:people-a -i "$WORK/plain/people.csv" -o "$WORK/host/party-a/people.csv"
show as_owner bob "$VEIL" encrypt --key kms:incomes-b -i "$WORK/plain/incomes.csv" -o "$WORK/host/party-b/incomes.csv"

say "developer" "builds the join job"
instance_new "$WORK/join"
mkdir -p "$WORK/join/image/app"
cp "$here/app/join.py" "$WORK/join/image/app/join.py"
fill_config "$here/veil.json" "$WORK/join/veil.json" \
	PARTY_A_DIR="$WORK/host/party-a" PARTY_B_DIR="$WORK/host/party-b" KEY_A="$KEY_A" KEY_B="$KEY_B" \
	KMS_A_ADDRESS="$KMS_KMS_A_ADDR" KMS_A_CA_CERT="@file:$KMS_KMS_A_CA" \
	KMS_B_ADDRESS="$KMS_KMS_B_ADDR" KMS_B_CA_CERT="@file:$KMS_KMS_B_CA"
show "$VEIL" build -C "$WORK/join"
echo "  measurement $("$VEIL" print -C "$WORK/join" mrenclave)"

say "data owner A" "registers the same measurement on key people-a"
show as_owner amy "$VEIL" kms policy create --name join-job --from-instance "$WORK/join" --key people-a --allow-sim
say "data owner B" "registers the same measurement on key incomes-b"
show as_owner bob "$VEIL" kms policy create --name join-job --from-instance "$WORK/join" --key incomes-b --allow-sim

say "operator" "runs the join: the workload attests to both key services"
show "$VEIL" run -C "$WORK/join" /app/join.py
ls -l "$WORK/host/party-a" "$WORK/host/party-b" | sed 's/^/    /'

say "data owner A" "decrypts the result: it has a key slot for each party"
"$VEIL" inspect "$WORK/host/party-a/joined.csv" | sed -n '/key slots/,$p' | sed 's/^/    /'
show as_owner amy "$VEIL" decrypt -i "$WORK/host/party-a/joined.csv" -o "$WORK/results/veil/a.csv"
say "data owner B" "decrypts the same file with B's own key service"
show as_owner bob "$VEIL" decrypt -i "$WORK/host/party-a/joined.csv" -o "$WORK/results/veil/b.csv"
sed 's/^/  /' "$WORK/results/veil/b.csv"

say "data owners" "compare with the same join run on the plaintext tables outside veil"
"$PYTHON" "$here/app/join.py" "$WORK/plain/people.csv" "$WORK/plain/incomes.csv" "$WORK/results/plain/joined.csv"
for p in a b; do
	if ! cmp -s "$WORK/results/veil/$p.csv" "$WORK/results/plain/joined.csv"; then
		diff "$WORK/results/plain/joined.csv" "$WORK/results/veil/$p.csv" >&2 || true
		echo "multi-party: party $p's result differs" >&2
		exit 1
	fi
done
echo "  identical: both parties' sealed results agree with the plaintext run"
