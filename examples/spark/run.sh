#!/usr/bin/env bash
# spark: a Spark standalone cluster of attested instances on several hosts.
#
# Hosts are network namespaces joined by a bridge (a switch namespace):
# the key service, the data owner, the Spark master, WORKERS workers and
# the driver each have an address of their own and reach nothing else. A
# host directory stands in for shared storage; every Spark host sees it
# through its own sealed mount at /data. The owner seals people.csv under a
# key and stores Spark's authentication secret at the key service; both are
# released only to the Spark instance's measurement. Every JVM (master,
# workers, the executors the workers start, the driver) runs in veil run
# with network: host in its host's namespace. The people query runs through
# spark-submit on the cluster; the owner decrypts its part files and
# compares them with the same job run on the plaintext outside veil.
#
# Environment: VEIL (default ./bin/veil), ROWS (default 20000), WORKERS
# (default 2), PYSPARK_DIR (default /var/cache/veil/pip/pyspark-3.5.9),
# WORK, KEEP=1. Needs root (namespaces, FUSE).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ROWS=${ROWS:-20000}
WORKERS=${WORKERS:-2}
PYSPARK_DIR=${PYSPARK_DIR:-/var/cache/veil/pip/pyspark-3.5.9}
export JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
mkdir -p "$WORK"/{owner,shared,logs,results/veil,results/plain}
# The shared storage: the sandboxes' root (a mapped uid) writes there
# through the sealed mounts.
chown 1073741824:1073741824 "$WORK/shared"

# Hosts: namespaces named veil-<run>-<host>; 10.<a>.<b>.0/24, random per run.
run_id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
net="10.$((0x${run_id:0:2} % 64 + 160)).$((0x${run_id:2:2}))"
hosts=(kms owner master driver)
for i in $(seq "$WORKERS"); do hosts+=("worker$i"); done
declare -A IP PID
_spark_pids=()
_netns_cleanup() {
	local pid
	for pid in "${_spark_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${_spark_pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	local h
	for h in "${hosts[@]}" switch; do ip netns del "veil-$run_id-$h" 2>/dev/null || true; done
}
trap '_netns_cleanup; _cleanup' EXIT
ns() { echo "veil-$run_id-$1"; }
on() { local h=$1; shift; ip netns exec "$(ns "$h")" "$@"; }

say "hosts" "network namespaces on $net.0/24, joined by a bridge"
ip netns add "$(ns switch)"
ip -n "$(ns switch)" link add br0 type bridge
ip -n "$(ns switch)" link set br0 up
n=1
for h in "${hosts[@]}"; do
	n=$((n + 1))
	IP[$h]=$net.$n
	ip netns add "$(ns "$h")"
	ip link add eth0 netns "$(ns "$h")" type veth peer name "p$n" netns "$(ns switch)"
	ip -n "$(ns switch)" link set "p$n" master br0 up
	ip -n "$(ns "$h")" addr add "${IP[$h]}/24" dev eth0
	ip -n "$(ns "$h")" link set eth0 up
	ip -n "$(ns "$h")" link set lo up
	printf '  %-8s %s\n' "$h" "${IP[$h]}"
done
for h in "${hosts[@]}" switch; do ns "$h"; done >"$WORK/netns"

say "key service" "starts on host kms (dev mode)"
kdir=$WORK/kms
mkdir -p "$kdir"
# (ip netns exec directly, not through a function: $! is then the key
# service's own process, which the clean-up stops.)
ip netns exec "$(ns kms)" "$VEIL" kms serve --dev --data "$kdir/data" --listen "${IP[kms]}:8443" >"$kdir/env" 2>"$kdir/log" &
_kms_pids+=($!)
for _ in $(seq 100); do
	grep -q VEIL_ADMIN_TOKEN "$kdir/env" 2>/dev/null && break
	kill -0 "${_kms_pids[-1]}" 2>/dev/null || { cat "$kdir/log" >&2; exit 1; }
	sleep 0.1
done
KMS_OWNER_URL=$(sed -n 's/^export VEIL_KMS_URL=//p' "$kdir/env")
KMS_OWNER_CA=$(sed -n 's/^export VEIL_KMS_CA=//p' "$kdir/env")
KMS_OWNER_TOKEN=$(sed -n 's/^export VEIL_ADMIN_TOKEN=//p' "$kdir/env")
KMS_OWNER_ADDR=${KMS_OWNER_URL#https://}
echo "  at $KMS_OWNER_URL"

say "data owner" "enrolls (from host owner), creates a key and Spark's authentication secret"
# The owner's commands run on the owner's host.
OWNER_VEIL=$WORK/veil-on-owner
printf '#!/bin/sh\nexec ip netns exec %s %s "$@"\n' "$(ns owner)" "$VEIL" >"$OWNER_VEIL"
chmod +x "$OWNER_VEIL"
_veil=$VEIL
VEIL=$OWNER_VEIL
owner_enroll alice owner
KEY=$(key_create alice people-key)
echo "  key people-key = $KEY"
od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$WORK/owner/spark-auth"
SECRET=$(as_owner alice "$OWNER_VEIL" kms secret put spark-auth --file "$WORK/owner/spark-auth" | cut -d' ' -f1)
rm -f "$WORK/owner/spark-auth"
echo "  secret spark-auth = $SECRET"

say "data owner" "generates people.csv ($ROWS rows) and seals it onto the shared storage"
"$PYTHON" "$here/../people/gen_people.py" --rows "$ROWS" "$WORK/owner/people.csv"
show as_owner alice "$OWNER_VEIL" encrypt --key kms:people-key -i "$WORK/owner/people.csv" -o "$WORK/shared/people.csv"
VEIL=$_veil

say "developer" "builds the Spark instance: Debian's python3 and OpenJDK 17, pyspark, the entry point and the jobs"
inst=$WORK/spark
instance_new "$inst"
mkdir -p "$inst/image/opt/spark/jobs" "$inst/image/etc"
cp "$here/app/veil-entrypoint.sh" "$inst/image/opt/spark/"
cp "$here"/jobs/*.py "$inst/image/opt/spark/jobs/"
cp -r "$here/jobs/tpch" "$inst/image/opt/spark/jobs/"
printf '127.0.0.1\tlocalhost veil\n::1\tlocalhost\n' >"$inst/image/etc/hosts"
printf 'root:x:0:0:root:/tmp:/usr/sbin/nologin\n' >"$inst/image/etc/passwd"
fill_config "$here/veil.json" "$inst/veil.json" \
	DATA_DIR="$WORK/shared" KEY_ID="$KEY" SECRET_ID="$SECRET" PYSPARK_DIR="$PYSPARK_DIR" \
	KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
show "$VEIL" build -C "$inst"
echo "  measurement $("$VEIL" print -C "$inst" mrenclave)"

say "data owner" "releases the key and the secret to that measurement only"
show as_owner alice "$OWNER_VEIL" kms policy create --name spark-cluster \
	--from-instance "$inst" --key people-key --secret spark-auth --allow-sim

# since T0: seconds since T0 (date +%s%N), with one decimal.
since() { local ms=$((($(date +%s%N) - $1) / 1000000)); printf '%d.%d s' $((ms / 1000)) $((ms % 1000 / 100)); }
# plain_submit NAME JOB ARGS...: the job file in local mode outside veil.
plain_submit() {
	local name=$1
	shift
	PYTHONPATH=$PYSPARK_DIR SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON=$PYTHON "$PYSPARK_DIR/pyspark/bin/spark-submit" \
		--master 'local[2]' --conf spark.ui.enabled=false --conf spark.driver.memory=1g \
		--conf spark.sql.shuffle.partitions=4 "$@" >"$WORK/logs/plain-$name.log" 2>&1 || {
		tail -30 "$WORK/logs/plain-$name.log" >&2
		exit 1
	}
}
# driver NAME JOB ARGS...: the job on the cluster, from the driver's host.
driver() {
	local name=$1 t0
	shift
	t0=$(date +%s%N)
	printf '  $ veil run -C spark /opt/spark/veil-entrypoint.sh driver %s %s %s\n' "${IP[driver]}" "$master" "$*"
	on driver "$VEIL" run -C "$inst" /opt/spark/veil-entrypoint.sh driver "${IP[driver]}" "$master" "$@" \
		>"$WORK/logs/driver-$name.log" 2>&1 || {
		tail -50 "$WORK/logs/driver-$name.log" >&2
		exit 1
	}
	echo "  job done in $(since "$t0")"
}

# spark_start HOST ROLE ARGS...: veil run of the Spark instance on HOST.
spark_start() {
	local h=$1 role=$2
	shift 2
	ip netns exec "$(ns "$h")" "$VEIL" run -C "$inst" /opt/spark/veil-entrypoint.sh "$role" "${IP[$h]}" "$@" \
		>"$WORK/logs/$h.log" 2>&1 &
	PID[$h]=$!
	_spark_pids+=($!)
}
# wait_log HOST PATTERN SECONDS
wait_log() {
	local i
	for i in $(seq $(($3 * 10))); do
		grep -q "$2" "$WORK/logs/$1.log" 2>/dev/null && return 0
		kill -0 "${PID[$1]}" 2>/dev/null || break
		sleep 0.1
	done
	echo "$1: no '$2' (within $3 s, or it ended):" >&2
	tail -30 "$WORK/logs/$1.log" >&2
	return 1
}

say "operator" "starts the cluster: the master and $WORKERS workers, each in veil run on its host"
t0=$(date +%s%N)
spark_start master master
wait_log master "Starting Spark master at" 120
master=spark://${IP[master]}:7077
for i in $(seq "$WORKERS"); do spark_start "worker$i" worker "$master"; done
for i in $(seq "$WORKERS"); do wait_log "worker$i" "Successfully registered with master" 180; done
echo "  cluster up (instances attested, workers registered) in $(since "$t0")"

say "operator" "submits the people query from the driver's host"
driver people people_query /data/people.csv /data/out/people
echo "  the shared storage holds only sealed files:"
find "$WORK/shared/out" -type f | sed "s|$WORK/||; s/^/    /"
if grep -rq Engineer "$WORK/shared"; then echo "plaintext visible on the shared storage!" >&2; exit 1; fi

say "data owner" "decrypts the part files"
for f in "$WORK"/shared/out/people/part-*.csv; do
	as_owner alice "$OWNER_VEIL" decrypt -i "$f" -o "$WORK/results/veil/$(basename "$f")"
done
cat "$WORK"/results/veil/part-*.csv | sed 's/^/  /'

say "data owner" "runs the same job file on the plaintext outside veil (local mode) and compares"
plain_submit people "$here/jobs/people_query.py" "$WORK/owner/people.csv" "$WORK/results/plain/people"
rows() { tail -q -n +2 "$@" | LC_ALL=C sort; }
if [ "$(rows "$WORK"/results/veil/part-*.csv)" = "$(rows "$WORK"/results/plain/people/part-*.csv)" ]; then
	echo "  identical: the cluster's sealed run and the plaintext run agree"
else
	diff <(rows "$WORK"/results/plain/people/part-*.csv) <(rows "$WORK"/results/veil/part-*.csv) >&2 || true
	echo "spark: results differ" >&2
	exit 1
fi

[ -n "${TPCH_SF:-}" ] || exit 0
say "data owner" "generates TPC-H at scale factor $TPCH_SF (tpchgen-cli, Parquet) and seals it onto the shared storage"
"$here/../../scripts/tpch-gen.sh" "$TPCH_SF" "$WORK/owner/tpch" parquet >/dev/null
show as_owner alice "$OWNER_VEIL" encrypt --key kms:people-key -i "$WORK/owner/tpch" -o "$WORK/shared/tpch"
chown -R 1073741824:1073741824 "$WORK/shared/tpch"

say "operator" "runs TPC-H queries ${TPCH_QUERIES:=1,6} (examples/spark/jobs/tpch.py) on the cluster"
driver tpch tpch --data /data/tpch --format parquet --out /data/out/tpch --queries "$TPCH_QUERIES"
grep '^tpch ' "$WORK/logs/driver-tpch.log" | sed 's/^/  /'

say "data owner" "decrypts the results and compares them with the same job file on the plaintext"
show as_owner alice "$OWNER_VEIL" decrypt -i "$WORK/shared/out/tpch" -o "$WORK/results/veil/tpch"
plain_submit tpch "$here/jobs/tpch.py" --data "$WORK/owner/tpch" --format parquet --out "$WORK/results/plain/tpch" --queries "$TPCH_QUERIES"
for q in ${TPCH_QUERIES//,/ }; do
	if [ "$(cat "$WORK"/results/veil/tpch/q$q/part-*.csv)" = "$(cat "$WORK"/results/plain/tpch/q$q/part-*.csv)" ]; then
		echo "  q$q: $(($(cat "$WORK"/results/veil/tpch/q$q/part-*.csv | wc -l) - 1)) rows, identical to the plaintext run"
	else
		diff <(cat "$WORK"/results/plain/tpch/q$q/part-*.csv) <(cat "$WORK"/results/veil/tpch/q$q/part-*.csv) >&2 || true
		echo "spark: TPC-H q$q differs" >&2
		exit 1
	fi
done
