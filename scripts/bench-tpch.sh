#!/usr/bin/env bash
# bench-tpch.sh: TPC-H's 22 queries on Spark (examples/spark/jobs/tpch.py),
# per-query and total seconds, median of RUNS runs of each configuration,
# the configurations alternating run by run:
#
#   plain    Spark as it comes
#   crypto   Spark's own protection on: spark.authenticate with a secret,
#            RPC encryption (spark.network.crypto.enabled) and the
#            encryption of shuffle and spill files (spark.io.encryption.enabled)
#
#   scripts/bench-tpch.sh [SF] [parquet|csv]        (default: 1 parquet)
#
# Environment: RUNS (3), MASTER (local[2]; in local mode there is no RPC
# between executors, so `crypto` costs only its I/O encryption), QUERIES
# (all 22; e.g. 1,6), CONFIGS ("plain crypto"), WORK (a temporary directory;
# KEEP=1 keeps it), SPARK_CONF (extra spark-submit arguments for every
# configuration). The data come from scripts/tpch-gen.sh (cached per
# machine); pyspark and tpchgen-cli from scripts/setup.sh.
#
# A configuration is a case in run_config below: it runs tpch.py once and
# leaves its stdout (the `tpch qN SECONDS` lines) in the file it is given.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
SF=${1:-1}
FORMAT=${2:-parquet}
RUNS=${RUNS:-3}
MASTER=${MASTER:-local[2]}
QUERIES=${QUERIES:-$(seq -s, 1 22)}
CONFIGS=${CONFIGS:-plain crypto}
JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
die() { echo "bench-tpch: error: $1" >&2; [ -z "${2:-}" ] || echo "bench-tpch: hint: $2" >&2; exit 1; }

pyspark_version=$(sed -n 's/^pyspark==\([^ ]*\) .*/\1/p' "$here/pyspark-requirements.txt")
pyspark=${VEIL_PYSPARK_DIR:-/var/cache/veil/pip/pyspark-$pyspark_version}
[ -d "$pyspark/pyspark" ] || die "pyspark $pyspark_version not found in $pyspark" "run scripts/setup.sh"
[ -x "$JAVA_HOME/bin/java" ] || die "no Java in $JAVA_HOME" "install openjdk-17-jre-headless (scripts/setup.sh)"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS is not a positive number"

WORK=${WORK:-$(mktemp -d /tmp/veil-bench-tpch.XXXXXX)}
[ "${KEEP:-}" = 1 ] || trap 'rm -rf "$WORK"' EXIT
mkdir -p "$WORK/tmp" "$WORK/times"

echo "== machine"
echo "cpus: $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)"
echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "kernel: $(uname -r); java: $("$JAVA_HOME/bin/java" -version 2>&1 | head -n1); spark: $pyspark_version"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"

echo "== data"
VEIL_TPCH_LINK=1 "$here/tpch-gen.sh" "$SF" "$WORK/data" "$FORMAT" | grep -v ': [0-9]* files,' || die "generating the data failed"

submit() { # OUT [spark-submit arguments...]
	local out=$1
	shift
	rm -rf "$WORK/out"
	JAVA_HOME=$JAVA_HOME SPARK_HOME=$pyspark/pyspark PYTHONPATH=$pyspark \
		PYSPARK_PYTHON=/usr/bin/python3 PYSPARK_DRIVER_PYTHON=/usr/bin/python3 SPARK_LOCAL_IP=127.0.0.1 \
		"$pyspark/pyspark/bin/spark-submit" --master "$MASTER" \
		--conf spark.ui.enabled=false --conf spark.ui.showConsoleProgress=false \
		--conf spark.local.dir="$WORK/tmp" --driver-java-options "-Djava.io.tmpdir=$WORK/tmp" \
		${SPARK_CONF:-} "$@" \
		"$repo/examples/spark/jobs/tpch.py" --data "$WORK/data" --format "$FORMAT" --out "$WORK/out" \
		--queries "$QUERIES" >"$out" 2>"$out.log" ||
		die "spark-submit failed; its log: $out.log (KEEP=1 keeps it)"
}

run_config() { # NAME OUT
	case $1 in
	plain) submit "$2" ;;
	crypto)
		submit "$2" --conf spark.authenticate=true \
			--conf spark.authenticate.secret="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')" \
			--conf spark.network.crypto.enabled=true --conf spark.io.encryption.enabled=true
		;;
	*) die "no configuration $1" "CONFIGS names plain and crypto" ;;
	esac
}

echo "== runs: $RUNS of each of $CONFIGS, alternating; SF $SF $FORMAT, master $MASTER"
for run in $(seq 1 "$RUNS"); do
	for cfg in $CONFIGS; do
		start=$(date +%s)
		run_config "$cfg" "$WORK/times/$cfg.$run"
		echo "run $run $cfg: $(sed -n 's/^tpch total //p' "$WORK/times/$cfg.$run") s of queries, $(($(date +%s) - start)) s with start-up; load $(cut -d' ' -f1 /proc/loadavg)"
	done
done

echo "== median seconds of $RUNS runs"
/usr/bin/python3 - "$WORK/times" "$RUNS" $CONFIGS <<'EOF'
import statistics, sys
times, runs, configs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med = {}
names = []
for c in configs:
    per = {}
    for r in range(1, runs + 1):
        for line in open("%s/%s.%d" % (times, c, r)):
            f = line.split()
            if len(f) == 3 and f[0] == "tpch":
                per.setdefault(f[1], []).append(float(f[2]))
                if f[1] not in names:
                    names.append(f[1])
    med[c] = {q: statistics.median(v) for q, v in per.items()}
base = configs[0]
print("%-6s" % "query" + "".join("%10s" % c for c in configs)
      + "".join("%12s" % ("%s/%s" % (c, base)) for c in configs[1:]))
for q in names:
    row = "%-6s" % q + "".join("%10.2f" % med[c][q] for c in configs)
    row += "".join("%12.2f" % (med[c][q] / med[base][q] if med[base][q] else float("nan")) for c in configs[1:])
    print(row)
EOF
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
