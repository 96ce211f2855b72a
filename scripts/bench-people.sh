#!/usr/bin/env bash
# The people query (examples/people) at 1 M and 10 M rows: the same program
# on plaintext files outside veil vs sealed input and output inside veil
# (veil run: verify, attest, key fetch, mounts, sandbox), same machine, same
# run. Medians of COUNT runs (default 5); the program reports its own read,
# compute and write times, the rest is start-up (Python imports, and inside
# veil attestation, key release and mounts).
#
# usage: scripts/bench-people.sh [ROWS...]   (default: 1000000 10000000)
#
# BASELINE=/path/to/an/older/veil adds rows for that binary, run in the same
# loop (plain, veil, baseline alternating) on the same instances: the
# before/after of a change in one run.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${COUNT:-5}
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(1000000 10000000)
export VEIL=${VEIL:-$PWD/bin/veil}
"$VEIL" run --help >/dev/null 2>&1 || { echo "bench-people: veil run is not available in $VEIL" >&2; exit 1; }
export TMPDIR=${TMPDIR:-/var/tmp}
. examples/lib.sh
people=$examples_dir/people

echo "== machine"
echo "date:  $(date -u +%Y-%m-%dT%H:%M:%SZ), load: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "cpu:   $(lscpu | sed -n 's/^Model name: *//p') ($(nproc) cores)"
echo "mem:   $(free -g | awk '/^Mem:/ {print $2 " GiB"}')"
echo "veil:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "python: $("$PYTHON" -c 'import sys, pandas; print(sys.version.split()[0], "pandas", pandas.__version__)')"

kms_start owner >/dev/null
owner_enroll alice owner >/dev/null
KEY=$(key_create alice people-key)

. scripts/benchlib.sh
# timed OUTFILE CMD...: run CMD, print "total read compute write" seconds.
timed() {
	local err=$1 s e
	shift
	s=$(now)
	"$@" >/dev/null 2>"$err"
	e=$(now)
	local t
	t=$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f", e - s}')
	sed -n 's/.*read \([0-9.]*\) s, compute \([0-9.]*\) s, write \([0-9.]*\) s.*/\1 \2 \3/p' "$err" | {
		read -r r c w || { echo "no timing line from the query:" >&2; cat "$err" >&2; return 1; }
		echo "$t $r $c $w"
	}
}
col() { awk -v i="$1" '{print $i}'; }

# Where veil's fixed start-up goes: a probe instance of the same image and
# mounts whose entrypoint is the interpreter itself (other measurement, own
# policy), running "pass" and "import pandas" inside veil and outside.
probe() {
	local d=$WORK/probe
	mkdir -p "$d/host"
	"$PYTHON" "$people/gen_people.py" --rows 1000 "$d/people.csv"
	as_owner alice "$VEIL" encrypt --key kms:people-key -i "$d/people.csv" -o "$d/host/people.csv" >/dev/null
	instance_new "$d/inst"
	fill_config "$people/veil.json" "$d/inst/veil.json" DATA_DIR="$d/host" KEY_ID="$KEY" \
		KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
	sed -i 's|"entrypoints": \["/app/query.py"\]|"entrypoints": ["/usr/bin/python3"]|; s|"args": {"passthrough": false}|"args": {"passthrough": true}|' "$d/inst/veil.json"
	"$VEIL" build -C "$d/inst" >/dev/null 2>&1
	as_owner alice "$VEIL" kms policy create --name probe --from-instance "$d/inst" --key people-key --allow-sim >/dev/null
	local what cmd i t
	printf '\n%-44s %9s %9s %9s\n' "start-up (medians of $COUNT)" plain veil "${BASELINE:+baseline}"
	for what in "python3 -c pass" "python3 -c 'import pandas'" "python3 -c 'open(\"/data/people.csv\").read()'"; do
		case $what in
		*pass) cmd=(-c pass) ;;
		*pandas*) cmd=(-c "import pandas") ;;
		*) cmd=(-c "open('/data/people.csv').read()") ;;
		esac
		local p=() v=() b=()
		for i in $(seq "$COUNT"); do
			if [[ $what != *open* ]]; then
				s=$(now); "$PYTHON" "${cmd[@]}"; e=$(now); p+=("$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f", e - s}')")
			fi
			s=$(now); "$VEIL" run -C "$d/inst" /usr/bin/python3 "${cmd[@]}" 2>/dev/null; e=$(now)
			v+=("$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f", e - s}')")
			if [ -n "${BASELINE:-}" ]; then
				s=$(now); "$BASELINE" run -C "$d/inst" /usr/bin/python3 "${cmd[@]}" 2>/dev/null; e=$(now)
				b+=("$(awk -v s="$s" -v e="$e" 'BEGIN {printf "%.3f", e - s}')")
			fi
		done
		printf '%-44s %9s %9s %9s\n' "$what" "$( [ ${#p[@]} -gt 0 ] && printf '%s\n' "${p[@]}" | median || echo -)" "$(printf '%s\n' "${v[@]}" | median)" \
			"$( [ ${#b[@]} -gt 0 ] && printf '%s\n' "${b[@]}" | median || true)"
		if [[ $what == *pandas* ]]; then
			local pm vm
			pm=$(printf '%s\n' "${p[@]}" | median) vm=$(printf '%s\n' "${v[@]}" | median)
			summary_row "\`python3 -c 'import pandas'\`, veil / plain" "$vm s" "plain $pm s" "$(calc "$vm / $pm")" "<=1.3" x
		fi
	done
	rm -rf "$d"
}
probe

printf '\n%-10s %-8s %9s %9s %9s %9s %9s %7s\n' rows where total read compute write other ratio
for rows in "${sizes[@]}"; do
	d=$WORK/r$rows
	mkdir -p "$d/plain" "$d/host"
	"$PYTHON" "$people/gen_people.py" --rows "$rows" "$d/plain/people.csv"
	as_owner alice "$VEIL" encrypt --key kms:people-key -i "$d/plain/people.csv" -o "$d/host/people.csv" >/dev/null
	instance_new "$d/inst"
	mkdir -p "$d/inst/image/app"
	cp "$people/app/query.py" "$d/inst/image/app/"
	fill_config "$people/veil.json" "$d/inst/veil.json" DATA_DIR="$d/host" KEY_ID="$KEY" \
		KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
	"$VEIL" build -C "$d/inst" >/dev/null 2>&1
	as_owner alice "$VEIL" kms policy create --name "bench-$rows" --from-instance "$d/inst" --key people-key --allow-sim >/dev/null
	: >"$d/plain.txt"
	: >"$d/veil.txt"
	: >"$d/baseline.txt"
	# Warm the page cache once for each, then alternate plain and veil runs.
	timed "$d/err" "$PYTHON" "$people/app/query.py" "$d/plain/people.csv" "$d/plain/out.csv" >/dev/null
	timed "$d/err" "$VEIL" run -C "$d/inst" /app/query.py >/dev/null
	for i in $(seq "$COUNT"); do
		timed "$d/err" "$PYTHON" "$people/app/query.py" "$d/plain/people.csv" "$d/plain/out.csv" >>"$d/plain.txt"
		timed "$d/err" "$VEIL" run -C "$d/inst" /app/query.py >>"$d/veil.txt"
		if [ -n "${BASELINE:-}" ]; then
			timed "$d/err" "$BASELINE" run -C "$d/inst" /app/query.py >>"$d/baseline.txt"
		fi
	done
	as_owner alice "$VEIL" decrypt -i "$d/host/out.csv" -o "$d/veil-out.csv" >/dev/null
	cmp "$d/veil-out.csv" "$d/plain/out.csv"
	pt=$(col 1 <"$d/plain.txt" | median)
	for where in plain veil ${BASELINE:+baseline}; do
		f=$d/$where.txt
		t=$(col 1 <"$f" | median); r=$(col 2 <"$f" | median); c=$(col 3 <"$f" | median); w=$(col 4 <"$f" | median)
		o=$(awk -v t="$t" -v r="$r" -v c="$c" -v w="$w" 'BEGIN {printf "%.3f", t - r - c - w}')
		ratio=$(awk -v t="$t" -v p="$pt" 'BEGIN {printf "%.2fx", t / p}')
		printf '%-10s %-8s %9s %9s %9s %9s %9s %7s\n' "$rows" "$where" "$t" "$r" "$c" "$w" "$o" "$ratio"
	done
	vt=$(col 1 <"$d/veil.txt" | median)
	case $rows in
	1000000) summary_row "people query, 1 M rows, sealed in and out / plaintext" "$vt s" "plain $pt s" "$(calc "$vt / $pt")" "<=1.5" x ;;
	10000000) summary_row "people query, 10 M rows, sealed in and out / plaintext" "$vt s" "plain $pt s" "$(calc "$vt / $pt")" "<=1.10" x ;;
	esac
	rm -rf "$d"
done
echo "load at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "(seconds, medians of $COUNT; other = total - read - compute - write: interpreter start-up, and inside veil verification, attestation, key release, mounts, sandbox)"
