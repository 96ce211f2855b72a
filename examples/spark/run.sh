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
# compares them with the same job run on the plaintext outside veil. Then
# the multi-party query: party B, with its own key service on host kmsb,
# seals its incomes table under its own key; the job joins it with the
# owner's (party A's) people and writes one result through a mount that
# seals it for both keys; each party decrypts it with its own key service.
# With TPCH_SF, TPC-H (Parquet, sealed) runs TPCH_RUNS times on the cluster.
#
# Environment: VEIL (default ./bin/veil), ROWS (default 20000), WORKERS
# (default 2), PYSPARK_DIR (default /var/cache/veil/pip/pyspark-3.5.9),
# MULTI_PARTY (1; 0 skips it), TPCH_SF (none), TPCH_QUERIES (1,6; all for
# the 22), TPCH_RUNS (1), TPCH_CONTROL (a directory: run TPC-H when asked
# there, for scripts/bench-spark.sh, instead of TPCH_RUNS times), SPARK_MODE (veil; plain or crypto run the same
# entry point outside veil on the same hosts, for scripts/bench-spark.sh:
# TPC-H only, on plaintext), WORK, KEEP=1. Needs root (namespaces, FUSE).
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
ROWS=${ROWS:-20000}
WORKERS=${WORKERS:-2}
PYSPARK_DIR=${PYSPARK_DIR:-/var/cache/veil/pip/pyspark-3.5.9}
export JAVA_HOME=${JAVA_HOME:-/usr/lib/jvm/java-17-openjdk-amd64}
SPARK_MODE=${SPARK_MODE:-veil}
case $SPARK_MODE in veil | plain | crypto) ;; *) echo "spark: SPARK_MODE is veil, plain or crypto, not $SPARK_MODE" >&2; exit 2 ;; esac
TPCH_RUNS=${TPCH_RUNS:-1}
[ "${TPCH_QUERIES:-}" != all ] || TPCH_QUERIES=$(seq -s, 1 22)
mkdir -p "$WORK"/{owner,shared,shared-b,joint,logs,results/veil,results/plain}
# The shared storage (the owner's, party B's, the joint output): the
# sandboxes' root (a mapped uid) writes there through the sealed mounts.
chown 1073741824:1073741824 "$WORK/shared" "$WORK/shared-b" "$WORK/joint"

# Hosts: namespaces named veil-<run>-<host>; 10.<a>.<b>.0/24, random per run.
run_id=$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
net="10.$((0x${run_id:0:2} % 64 + 160)).$((0x${run_id:2:2}))"
hosts=(master driver)
[ "$SPARK_MODE" != veil ] || hosts+=(kms kmsb owner)
for i in $(seq "$WORKERS"); do hosts+=("worker$i"); done
declare -A IP PID
_spark_pids=()
_netns_cleanup() {
	local pid
	# The key services first, gently (lib.sh's _cleanup waits for them).
	for pid in "${_kms_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${_kms_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
	for pid in "${_spark_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
	for pid in "${_spark_pids[@]}"; do
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$pid" 2>/dev/null || true
		wait "$pid" 2>/dev/null || true
	done
	local h
	# Whatever is left in a host (outside veil, executors a killed worker
	# started): only this run's namespaces.
	for h in "${hosts[@]}"; do ip netns pids "veil-$run_id-$h" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true; done
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

# kms_on HOST NAME: a dev key service on HOST; sets KMS_<NAME>_URL, _CA,
# _TOKEN and _ADDR (NAME in upper case, - as _).
kms_on() {
	local h=$1 up dir=$WORK/$1
	up=$(echo "$2" | tr 'a-z-' 'A-Z_')
	mkdir -p "$dir"
	# (ip netns exec directly, not through a function: $! is then the key
	# service's own process, which the clean-up stops.)
	ip netns exec "$(ns "$h")" "$VEIL" kms serve --dev --data "$dir/data" --listen "${IP[$h]}:8443" >"$dir/env" 2>"$dir/log" &
	_kms_pids+=($!)
	for _ in $(seq 100); do
		grep -q VEIL_ADMIN_TOKEN "$dir/env" 2>/dev/null && break
		kill -0 "${_kms_pids[-1]}" 2>/dev/null || { cat "$dir/log" >&2; exit 1; }
		sleep 0.1
	done
	local v
	for v in URL CA TOKEN; do
		printf -v "KMS_${up}_$v" '%s' "$(sed -n "s/^export VEIL_\(KMS\|ADMIN\)_$v=//p" "$dir/env")"
	done
	v=KMS_${up}_URL
	printf -v "KMS_${up}_ADDR" '%s' "${!v#https://}"
	echo "  at ${!v}"
}
if [ "$SPARK_MODE" = veil ]; then
say "key services" "start on host kms (the owner's, party A's) and host kmsb (party B's), dev mode"
kms_on kms owner
kms_on kmsb party-b

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

say "party B" "enrolls at its own key service (kmsb), creates a key, seals its incomes table onto its storage"
owner_enroll bob party-b
KEY_B=$(key_create bob incomes-key)
echo "  key incomes-key = $KEY_B"
"$PYTHON" "$here/../multi-party/gen_parties.py" --rows "$ROWS" "$WORK/owner/party-a.csv" "$WORK/owner/party-b.csv"
show as_owner alice "$OWNER_VEIL" encrypt --key kms:people-key -i "$WORK/owner/party-a.csv" -o "$WORK/shared/party-a.csv"
show as_owner bob "$OWNER_VEIL" encrypt --key kms:incomes-key -i "$WORK/owner/party-b.csv" -o "$WORK/shared-b/incomes.csv"
chown -R 1073741824:1073741824 "$WORK/shared" "$WORK/shared-b"
VEIL=$_veil

say "developer" "builds the Spark instance: Debian's python3 and OpenJDK 17, pyspark, the entry point and the jobs"
inst=$WORK/spark
instance_new "$inst"
mkdir -p "$inst/image/opt/spark/jobs" "$inst/image/etc"
cp "$here/app/veil-entrypoint.sh" "$inst/image/opt/spark/"
# The executor pod template a driver on Kubernetes uses (measured with the image).
mkdir -p "$inst/image/opt/spark/k8s"
cp "$here/../../deploy/k8s/spark-executor-template.yaml" "$inst/image/opt/spark/k8s/executor-template.yaml"
cp "$here"/jobs/*.py "$inst/image/opt/spark/jobs/"
cp -r "$here/jobs/tpch" "$inst/image/opt/spark/jobs/"
printf '127.0.0.1\tlocalhost veil\n::1\tlocalhost\n' >"$inst/image/etc/hosts"
printf 'root:x:0:0:root:/tmp:/usr/sbin/nologin\n' >"$inst/image/etc/passwd"
fill_config "$here/veil.json" "$inst/veil.json" \
	DATA_DIR="$WORK/shared" KEY_ID="$KEY" SECRET_ID="$SECRET" PYSPARK_DIR="$PYSPARK_DIR" \
	KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA" \
	PARTY_B_DIR="$WORK/shared-b" JOINT_DIR="$WORK/joint" KEY_B_ID="$KEY_B" \
	KMS_B_ADDRESS="$KMS_PARTY_B_ADDR" KMS_B_CA_CERT="@file:$KMS_PARTY_B_CA"
show "$VEIL" build -C "$inst"
echo "  measurement $("$VEIL" print -C "$inst" mrenclave)"

say "data owner" "releases the key and the secret to that measurement only"
show as_owner alice "$OWNER_VEIL" kms policy create --name spark-cluster \
	--from-instance "$inst" --key people-key --secret spark-auth --allow-sim
say "party B" "releases its key to the same measurement at its own key service"
show as_owner bob "$OWNER_VEIL" kms policy create --name spark-cluster \
	--from-instance "$inst" --key incomes-key --allow-sim
launch=("$VEIL" run -C "$inst" /opt/spark/veil-entrypoint.sh)
DATA=/data
else
# Outside veil (the benchmark's baselines): the same entry point and jobs,
# run directly with the machine's Java and pyspark on the same hosts. Each
# role gets a mount namespace of its own with a tmpfs at /tmp (as in the
# instance), the entry point and jobs at /opt/spark and the shared storage,
# plaintext, at /opt/data. SPARK_MODE=plain deletes the entry point's three
# protections (spark.authenticate, RPC and I/O encryption); crypto keeps it
# as it is, with a random secret in _SPARK_AUTH_SECRET.
say "operator" "outside veil ($SPARK_MODE): the entry point and jobs run directly with Java and pyspark of the machine"
inst=$WORK/spark-outside
mkdir -p "$inst/jobs"
cp "$here"/jobs/*.py "$inst/jobs/"
cp -r "$here/jobs/tpch" "$inst/jobs/"
if [ "$SPARK_MODE" = plain ]; then
	sed '/^spark\.authenticate  /d; /^spark\.network\.crypto\.enabled /d; /^spark\.io\.encryption\.enabled /d' \
		"$here/app/veil-entrypoint.sh" >"$inst/veil-entrypoint.sh"
else
	cp "$here/app/veil-entrypoint.sh" "$inst/veil-entrypoint.sh"
fi
chmod 755 "$inst/veil-entrypoint.sh"
_SPARK_AUTH_SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export _SPARK_AUTH_SECRET
boot='set -e
pys=$3
mount -t tmpfs -o mode=755 tmpfs /opt
mkdir /opt/spark /opt/data
mount --bind "$1" /opt/spark
mount --bind "$2" /opt/data
mount -t tmpfs -o size=1g tmpfs /tmp
shift 3
cd /
exec env -i PATH=/usr/bin:/bin LANG=C.UTF-8 HOME=/tmp PYTHONDONTWRITEBYTECODE=1 PYSPARK_PYTHON=/usr/bin/python3 \
	JAVA_HOME="$JAVA_HOME" PYTHONPATH="$pys" SPARK_HOME="$pys/pyspark" _SPARK_AUTH_SECRET="$_SPARK_AUTH_SECRET" \
	/opt/spark/veil-entrypoint.sh "$@"'
launch=(unshare -m --propagation private bash -c "$boot" boot "$inst" "$WORK/shared" "$PYSPARK_DIR")
DATA=/opt/data
fi

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
	printf '  $ %s /opt/spark/veil-entrypoint.sh driver %s %s %s\n' "$(launcher)" "${IP[driver]}" "$master" "$*"
	on driver "${launch[@]}" driver "${IP[driver]}" "$master" "$@" \
		>"$WORK/logs/driver-$name.log" 2>&1 || {
		tail -50 "$WORK/logs/driver-$name.log" >&2
		exit 1
	}
	echo "  job done in $(since "$t0")"
}

launcher() { if [ "$SPARK_MODE" = veil ]; then echo "veil run -C spark"; else echo "(outside veil)"; fi; }
# spark_start HOST ROLE ARGS...: veil run of the Spark instance on HOST
# (outside veil: the entry point in a mount namespace of its own).
spark_start() {
	local h=$1 role=$2
	shift 2
	ip netns exec "$(ns "$h")" "${launch[@]}" "$role" "${IP[$h]}" "$@" \
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

mkdir -p "$WORK/times"
say "operator" "starts the cluster: the master and $WORKERS workers, each $(launcher) on its host"
t0=$(date +%s%N)
spark_start master master
wait_log master "Starting Spark master at" 120
master=spark://${IP[master]}:7077
for i in $(seq "$WORKERS"); do spark_start "worker$i" worker "$master"; done
for i in $(seq "$WORKERS"); do wait_log "worker$i" "Successfully registered with master" 180; done
up=$(since "$t0")
echo "${up% s}" >"$WORK/times/cluster-up"
echo "  cluster up (instances attested, workers registered) in $up"

if [ "$SPARK_MODE" = veil ]; then

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

if [ "${MULTI_PARTY:-1}" = 1 ]; then
	say "operator" "submits the multi-party query: A's people (/data) joined with B's incomes (/party-b)"
	driver multi-party multi_party /data/party-a.csv /party-b/incomes.csv /joint/out
	say "parties A and B" "each decrypt the one joined result with their own key service, and compare with a plaintext run"
	part=$(ls "$WORK"/joint/out/part-*.csv)
	show as_owner alice "$OWNER_VEIL" decrypt -i "$part" -o "$WORK/results/veil/mp-a.csv"
	show as_owner bob "$OWNER_VEIL" decrypt -i "$part" -o "$WORK/results/veil/mp-b.csv"
	plain_submit multi-party "$here/jobs/multi_party.py" "$WORK/owner/party-a.csv" "$WORK/owner/party-b.csv" "$WORK/results/plain/mp"
	sed 's/^/  /' "$WORK/results/veil/mp-a.csv"
	for p in a b; do
		cmp -s "$WORK/results/veil/mp-$p.csv" "$WORK"/results/plain/mp/part-*.csv || { echo "spark: the multi-party result party ${p^^} decrypted differs" >&2; exit 1; }
	done
	echo "  identical for A and for B; B cannot open A's input:"
	if as_owner bob "$OWNER_VEIL" decrypt -i "$WORK/shared/party-a.csv" -o "$WORK/results/stolen" >"$WORK/logs/stolen.log" 2>&1; then
		echo "spark: party B decrypted party A's input" >&2
		exit 1
	fi
	sed 's/^/    /' "$WORK/logs/stolen.log"
fi

fi

[ -n "${TPCH_SF:-}" ] || exit 0
if [ "$SPARK_MODE" = veil ]; then
	say "data owner" "generates TPC-H at scale factor $TPCH_SF (tpchgen-cli, Parquet) and seals it onto the shared storage"
	VEIL_TPCH_LINK=1 "$here/../../scripts/tpch-gen.sh" "$TPCH_SF" "$WORK/owner/tpch" parquet >/dev/null
	show as_owner alice "$OWNER_VEIL" encrypt --key kms:people-key -i "$WORK/owner/tpch" -o "$WORK/shared/tpch"
	chown -R 1073741824:1073741824 "$WORK/shared/tpch"
else
	say "operator" "generates TPC-H at scale factor $TPCH_SF (tpchgen-cli, Parquet) onto the shared storage, plaintext"
	VEIL_TPCH_LINK=1 "$here/../../scripts/tpch-gen.sh" "$TPCH_SF" "$WORK/shared/tpch" parquet >/dev/null
fi

# tpch_run R: run R of the queries (the driver's log driver-tpch[-R].log,
# the times tpch.py prints in times/tpch.R).
tpch_run() {
	local name=tpch
	[ "$1" = 1 ] || name=tpch-$1
	driver "$name" tpch --data "$DATA/tpch" --format parquet --out "$DATA/out/$name" --queries "$TPCH_QUERIES"
	grep '^tpch ' "$WORK/logs/driver-$name.log" | tee "$WORK/times/tpch.$1" | sed 's/^/  /' | tr '\n' ' ' | fold -s -w 100 | sed 's/^/  /'
	echo
}
if [ -z "${TPCH_CONTROL:-}" ]; then
	say "operator" "runs TPC-H queries ${TPCH_QUERIES:=1,6} (examples/spark/jobs/tpch.py) on the cluster, $TPCH_RUNS time(s)"
	for r in $(seq "$TPCH_RUNS"); do tpch_run "$r"; done
else
	# Driven from outside (scripts/bench-spark.sh, which alternates the
	# runs of several clusters): the cluster is ready once the file ready
	# exists in the directory TPCH_CONTROL; each file run.R there asks for
	# run R, answered by done.R; the file stop (or the end of the process
	# that started this one, or 6 hours without a request) ends the runs.
	say "operator" "runs TPC-H queries ${TPCH_QUERIES:=1,6} (examples/spark/jobs/tpch.py) on the cluster when $TPCH_CONTROL/run.N appears"
	parent=$PPID
	touch "$TPCH_CONTROL/ready"
	r=1
	while :; do
		for _ in $(seq 108000); do
			[ ! -e "$TPCH_CONTROL/run.$r" ] && [ ! -e "$TPCH_CONTROL/stop" ] && kill -0 "$parent" 2>/dev/null || break
			sleep 0.2
		done
		[ -e "$TPCH_CONTROL/run.$r" ] || break
		tpch_run "$r"
		touch "$TPCH_CONTROL/done.$r"
		r=$((r + 1))
	done
	TPCH_RUNS=$((r - 1))
	[ "$TPCH_RUNS" -ge 1 ] || { echo "spark: no TPC-H run was asked for" >&2; exit 1; }
fi
[ "$SPARK_MODE" = veil ] || exit 0

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
