#!/usr/bin/env bash
# bench-spark.sh: TPC-H's 22 queries on the Spark cluster of
# examples/spark/run.sh — network-namespace hosts, a master, two workers
# and a driver, the same entry point and Spark configuration — in three
# modes, each on a cluster of its own:
#
#   plain   outside veil, Spark's protections off (the entry point with its
#           spark.authenticate, RPC and I/O encryption lines deleted)
#   crypto  outside veil, the entry point as it is: spark.authenticate,
#           RPC encryption and shuffle/spill encryption on
#   veil    every JVM in veil run, the data sealed on the shared storage
#           and read through each host's sealed mount, the secret and the
#           key from the key service
#
# The three clusters are brought up one after the other (separate hosts
# and namespaces; each one's start, until every worker has registered,
# instances attested in veil mode, is reported apart) and then stay up
# together, so that the runs alternate mode by mode — plain run 1, crypto
# run 1, veil run 1, plain run 2, ... — and a drift of the machine's load
# spreads over the modes instead of landing on one. The load average is
# recorded before each run. Per-query and total seconds are the medians of
# each mode's RUNS runs (as tpch.py times them, inside the driver: without
# the driver's start-up); each run's wall time of the driver is reported.
#
#   scripts/bench-spark.sh                 SF 1, RUNS 3, all 22 queries
#   SF=0.1 RUNS=1 scripts/bench-spark.sh   a quick run
#
# Environment: SF (1), RUNS (3), QUERIES (all; e.g. 1,6), MODES ("plain
# crypto veil"), VEIL (bin/veil), WORK (a new directory under /var/tmp;
# KEEP=1 keeps it). Needs root (namespaces, FUSE), Java, pyspark and
# tpchgen-cli (scripts/setup.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
SF=${SF:-1}
RUNS=${RUNS:-3}
QUERIES=${QUERIES:-all}
MODES=${MODES:-plain crypto veil}
export VEIL=${VEIL:-$repo/bin/veil}
die() { echo "bench-spark: error: $1" >&2; [ -z "${2:-}" ] || echo "bench-spark: hint: $2" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root" "network namespaces and FUSE mounts: run as root"
[ -x "$VEIL" ] || die "no veil binary at $VEIL" "run make build"
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "RUNS=$RUNS is not a positive number"
java_home=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
[ -x "$java_home/bin/java" ] || die "no Java in $java_home" "install openjdk-17-jre-headless (scripts/setup.sh)"

WORK=${WORK:-$(mktemp -d /var/tmp/veil-bench-spark.XXXXXX)}
mkdir -p "$WORK"

echo "== machine"
echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
echo "cpus: $(nproc) x $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)"
echo "memory: $(awk '/MemTotal/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
echo "kernel: $(uname -r); java: $("$java_home/bin/java" -version 2>&1 | head -n1); veil: $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== TPC-H SF $SF (Parquet), queries $QUERIES, $RUNS run(s) per mode, alternating; modes $MODES; each mode a cluster of master + 2 workers (1 core, 768 MiB executor each) + driver"

declare -A PID
# stop_all: every cluster ends its runs (run.sh's own clean-up removes its
# hosts and mounts); waits up to 10 minutes for each.
stop_all() {
	local m
	for m in "${!PID[@]}"; do touch "$WORK/$m.control/stop"; done
	for m in "${!PID[@]}"; do
		for _ in $(seq 3000); do kill -0 "${PID[$m]}" 2>/dev/null || break; sleep 0.2; done
	done
}
trap 'stop_all; [ "${KEEP:-}" = 1 ] || rm -rf "$WORK"' EXIT
# wait_for MODE FILE SECONDS: until FILE exists; the mode's run.sh ending
# first, or the time running out, fails the benchmark.
wait_for() {
	local i
	for i in $(seq $(($3 * 5))); do
		[ -e "$2" ] && return 0
		kill -0 "${PID[$1]}" 2>/dev/null || break
		sleep 0.2
	done
	tail -40 "$WORK/$1.log" >&2
	die "the $1 cluster ended or took over $3 s (waiting for $(basename "$2")); its log: $WORK/$1.log (KEEP=1 keeps it)"
}

echo "== the clusters, one after the other"
for mode in $MODES; do
	start=$(date +%s)
	echo "-- $mode (load $(cut -d' ' -f1-3 /proc/loadavg))"
	ctl=$WORK/$mode.control
	mkdir -p "$ctl"
	SPARK_MODE=$mode TPCH_CONTROL=$ctl WORK=$WORK/$mode TPCH_SF=$SF TPCH_QUERIES=$QUERIES \
		ROWS=1000 MULTI_PARTY=0 WORKERS=2 "$repo/examples/spark/run.sh" >"$WORK/$mode.log" 2>&1 &
	PID[$mode]=$!
	wait_for "$mode" "$WORK/$mode.control/ready" 7200
	grep -E 'cluster up|job done|identical|differs' "$WORK/$mode.log" | sed 's/^ */   /'
	echo "   $mode: ready in $(($(date +%s) - start)) s (hosts, build, data, the cluster; in veil mode the people query and its check)"
done

echo "== $RUNS run(s), the modes alternating"
for r in $(seq "$RUNS"); do
	for mode in $MODES; do
		load=$(cut -d' ' -f1-3 /proc/loadavg)
		echo "$load" >"$WORK/$mode/times/load.$r"
		touch "$WORK/$mode.control/run.$r"
		wait_for "$mode" "$WORK/$mode.control/done.$r" 14400
		printf '   run %d %-7s %s; driver %s; load before %s\n' "$r" "$mode" \
			"$(grep '^tpch total' "$WORK/$mode/times/tpch.$r")" "$(grep 'job done' "$WORK/$mode.log" | tail -1 | sed 's/^ *//')" "$load"
	done
done
stop_all
for mode in $MODES; do
	wait "${PID[$mode]}" || { tail -40 "$WORK/$mode.log" >&2; die "the $mode cluster failed after its runs; its log: $WORK/$mode.log (KEEP=1 keeps it)"; }
done
grep -E 'identical|differs' "$WORK/veil.log" 2>/dev/null | sed 's/^ */   /' || true

echo "== medians of $RUNS run(s), seconds"
BENCH_SF=$SF /usr/bin/python3 - "$WORK" "$RUNS" $MODES <<'EOF'
import os, statistics, sys
work, runs, modes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
med, names, up = {}, [], {}
for m in modes:
    per = {}
    for r in range(1, runs + 1):
        for line in open("%s/%s/times/tpch.%d" % (work, m, r)):
            f = line.split()
            if len(f) == 3 and f[0] == "tpch":
                per.setdefault(f[1], []).append(float(f[2]))
                if f[1] not in names:
                    names.append(f[1])
    med[m] = {q: statistics.median(v) for q, v in per.items()}
    up[m] = float(open("%s/%s/times/cluster-up" % (work, m)).read())
base = "plain" if "plain" in modes else modes[0]
others = [m for m in modes if m != base]
print("%-8s" % "query" + "".join("%9s" % m for m in modes)
      + "".join("%13s" % ("%s/%s" % (m, base)) for m in others))
for q in names:
    print("%-8s" % q + "".join("%9.2f" % med[m][q] for m in modes)
          + "".join("%13.2f" % (med[m][q] / med[base][q] if med[base][q] else float("nan")) for m in others))
print("%-8s" % "start" + "".join("%9.1f" % up[m] for m in modes)
      + "".join("%13.2f" % (up[m] / up[base]) for m in others))
print("(start: cluster start, master and two workers up and registered, attested in veil mode; one per mode)")
if "veil" in others and "total" in med["veil"] and "total" in med[base]:
    r = med["veil"]["total"] / med[base]["total"]
    print("target veil <= 1.3 x %s in total: %.2f x, %s" % (base, r, "met" if r <= 1.3 else "not met"))
    # A row of make bench's summary table (scripts/benchlib.sh, summary_row).
    if os.environ.get("VEIL_BENCH_SUMMARY") and base == "plain":
        with open(os.environ["VEIL_BENCH_SUMMARY"], "a") as f:
            f.write("Spark TPC-H, SF %s, %d queries, veil / plain in total (medians of %d)\t%.1f s, cluster start %.1f s\t%.1f s, cluster start %.1f s\t%.3f\t<=1.3\tx\n"
                    % (os.environ["BENCH_SF"], len(names) - 1, runs, med["veil"]["total"], up["veil"], med[base]["total"], up[base], r))
EOF
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
