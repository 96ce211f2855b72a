#!/usr/bin/env bash
# tpch-gen.sh: the 8 TPC-H tables at a scale factor, generated with
# tpchgen-cli (scripts/setup.sh installs it), one directory per table:
#
#   scripts/tpch-gen.sh SF OUTDIR [parquet|csv]      (default parquet)
#
# writes OUTDIR/region/ ... OUTDIR/lineitem/, each holding the table's part
# files (<table>.<n>.parquet or .csv). CSV files have a header line, a comma
# between fields and double quotes around fields that need them (text with
# commas); examples/spark/jobs/tpch.py reads both formats with one schema.
#
# Generated once per machine into $VEIL_TPCH_CACHE/sf<SF>-<format> (default
# /var/cache/veil/tpch) and copied from there; VEIL_TPCH_LINK=1 hard-links
# instead (for readers only: a file written in place would change the cache).
#
# Environment: VEIL_TPCHGEN_DIR (the pip target directory holding
# bin/tpchgen-cli, as in scripts/setup.sh), VEIL_TPCH_CACHE, VEIL_TPCH_LINK,
# VEIL_TPCH_PARTS (files per large table; default max(2, 8 x SF)).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
die() { echo "tpch-gen: error: $1" >&2; [ -z "${2:-}" ] || echo "tpch-gen: hint: $2" >&2; exit 1; }

[ $# -ge 2 ] && [ $# -le 3 ] || die "usage: tpch-gen.sh SF OUTDIR [parquet|csv]" "for example: scripts/tpch-gen.sh 0.1 /tmp/tpch parquet"
sf=$1 out=$2 fmt=${3:-parquet}
[[ $sf =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v s="$sf" 'BEGIN { exit !(s > 0) }' ||
	die "scale factor $sf is not a positive number" "TPC-H's are 1, 10, 100...; 0.01 and 0.1 make small test sets"
case $fmt in parquet | csv) ;; *) die "format $fmt is neither parquet nor csv" ;; esac
tables=(region nation supplier customer part partsupp orders lineitem)

version=$(sed -n 's/^tpchgen-cli==\([^ ]*\) .*/\1/p' "$here/tpchgen-requirements.txt")
gen=${VEIL_TPCHGEN_DIR:-/var/cache/veil/pip/tpchgen-cli-$version}/bin/tpchgen-cli
[ -x "$gen" ] || die "tpchgen-cli $version not found at $gen" "run scripts/setup.sh (as root), or set VEIL_TPCHGEN_DIR to the pip target directory holding it"

parts=${VEIL_TPCH_PARTS:-$(awk -v s="$sf" 'BEGIN { p = int(8 * s + 0.999); print (p < 2 ? 2 : p) }')}
[[ $parts =~ ^[1-9][0-9]*$ ]] || die "VEIL_TPCH_PARTS=$parts is not a positive integer"

cache=${VEIL_TPCH_CACHE:-/var/cache/veil/tpch}/sf$sf-$fmt
complete() { for t in "${tables[@]}"; do [ -d "$1/$t" ] || return 1; done; [ -f "$1/.complete" ]; }
if ! complete "$cache"; then
	mkdir -p "$(dirname "$cache")" || die "cannot create the cache directory $(dirname "$cache")" "set VEIL_TPCH_CACHE to a directory of yours"
	tmp=$(mktemp -d "$cache.tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	echo "tpch-gen: generating TPC-H SF $sf as $fmt ($parts files per large table) with tpchgen-cli $version into $cache"
	start=$(date +%s.%N)
	"$gen" "$fmt" --scale-factor "$sf" --parts "$parts" --output-dir "$tmp" --no-progress --quiet ||
		die "tpchgen-cli failed generating SF $sf as $fmt"
	for t in "${tables[@]}"; do
		[ -d "$tmp/$t" ] || die "tpchgen-cli wrote no directory $t in $tmp"
	done
	echo "tpchgen-cli $version sf=$sf format=$fmt parts=$parts" >"$tmp/.complete"
	chmod -R a+rX "$tmp"
	# Another run may have finished first: keep its copy.
	if mv -T "$tmp" "$cache" 2>/dev/null; then
		chmod -R a-w "$cache"/*/
	else
		complete "$cache" || die "cannot move the generated tables to $cache"
		rm -rf "$tmp"
	fi
	trap - EXIT
	echo "tpch-gen: generated in $(awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s: $(du -sh "$cache" | cut -f1)"
else
	echo "tpch-gen: TPC-H SF $sf $fmt from the cache $cache"
fi

mkdir -p "$out" || die "cannot create $out"
for t in "${tables[@]}"; do
	[ ! -e "$out/$t" ] || die "$out/$t already exists" "give an empty or new OUTDIR"
done
how=copied
for t in "${tables[@]}"; do
	if [ "${VEIL_TPCH_LINK:-}" = 1 ] && cp -al "$cache/$t" "$out/$t" 2>/dev/null; then
		chmod u+w "$out/$t" # the directory, not the files it shares with the cache
		how=hard-linked
	else
		rm -rf "${out:?}/$t"
		cp -r "$cache/$t" "$out/$t" || die "cannot copy $cache/$t to $out"
		chmod -R u+w "$out/$t"
	fi
	echo "tpch-gen: $t: $(find "$out/$t" -type f | wc -l) files, $(du -sh "$out/$t" | cut -f1)"
done
echo "tpch-gen: SF $sf $fmt $how into $out"
