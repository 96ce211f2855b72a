# benchlib.sh: what the benchmark scripts share; sourced, not run.

# median: the median of the numbers on standard input, one per line.
median() { sort -n | awk '{a[NR]=$1} END {if (NR % 2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }
now() { date +%s.%N; }
calc() { awk "BEGIN {print $*}"; }

# summary_row WHAT VEIL LIMIT VALUE TARGET UNIT adds a row to make bench's
# summary table (scripts/benchsummary prints it) when VEIL_BENCH_SUMMARY
# names a file: VALUE is compared with TARGET (">=0.8", "<=1.3", "<15"),
# UNIT is "x" for a ratio, or the unit of VALUE ("ms"); "-" for a value
# that could not be measured.
summary_row() {
	[ -n "${VEIL_BENCH_SUMMARY:-}" ] || return 0
	[ $# -eq 6 ] || { echo "summary_row: want 6 arguments, got $#" >&2; return 1; }
	local IFS=$'\t'
	echo "$*" >>"$VEIL_BENCH_SUMMARY"
}
