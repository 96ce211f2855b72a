#!/usr/bin/env bash
# make demo: the data owner's round trip with sealed files. It grows into the
# full people example (owner, developer, operator, workload) as the key
# service and the runtime land.
set -euo pipefail
cd "$(dirname "$0")/.."
veil=./bin/veil
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
say() { printf '\n[%s] %s\n' "$1" "$2"; }

say "data owner" "creates a wrap key"
$veil gen-key "$work/owner.key"

say "data owner" "generates people.csv (10000 rows)"
{
	echo "name,age,job"
	jobs=(engineer teacher doctor artist nurse)
	for i in $(seq 1 10000); do echo "person$i,$((18 + i * 7 % 50)),${jobs[$((i % 5))]}"; done
} >"$work/people.csv"
wc -c "$work/people.csv"

say "data owner" "seals it: veil encrypt --key file:owner.key -i people.csv -o people.csv.sealed"
$veil encrypt --key "file:$work/owner.key" -i "$work/people.csv" -o "$work/people.csv.sealed"
$veil inspect "$work/people.csv.sealed"

say "untrusted host" "sees only ciphertext:"
head -c 64 "$work/people.csv.sealed" | od -An -c | head -3
if grep -q person1 "$work/people.csv.sealed"; then echo "plaintext visible!"; exit 1; fi

say "attacker" "flips one byte of the sealed file; decrypt must refuse"
cp "$work/people.csv.sealed" "$work/tampered.sealed"
printf '\x00' | dd of="$work/tampered.sealed" bs=1 seek=5000 conv=notrunc status=none
if $veil decrypt --key "file:$work/owner.key" -i "$work/tampered.sealed" -o "$work/tampered.csv"; then
	echo "tampering was not detected!"; exit 1
fi
test ! -e "$work/tampered.csv" && echo "(no plaintext was written)"

say "data owner" "opens the original: veil decrypt"
$veil decrypt --key "file:$work/owner.key" -i "$work/people.csv.sealed" -o "$work/back.csv"
cmp "$work/people.csv" "$work/back.csv" && echo "round trip OK: $(wc -l <"$work/back.csv") lines"
