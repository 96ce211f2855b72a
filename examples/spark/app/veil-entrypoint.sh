#!/usr/bin/bash
# The only entry point of the Spark instance: starts one Spark role as a
# foreground JVM. Every role runs in its own veil instance on its own host;
# the host passes only the role and addresses:
#
#   veil-entrypoint.sh master HOST_IP
#   veil-entrypoint.sh worker HOST_IP spark://MASTER_IP:7077 [CORES [MEMORY]]
#   veil-entrypoint.sh driver HOST_IP spark://MASTER_IP:7077 JOB [ARGS...]
#
# JOB names a program of the image (/opt/spark/jobs/JOB.py): the host cannot
# submit code of its own, nor Spark options. Spark's authentication secret
# comes from the key service (veil.json secrets, env _SPARK_AUTH_SECRET);
# veil starts nothing if the key service does not release it to this
# instance's measurement. RPC and shuffle/spill encryption are on; local,
# shuffle and work directories are on /tmp, a tmpfs in the instance.
set -euo pipefail

die() { echo "veil-entrypoint: $*" >&2; exit 2; }
ip4() { [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || die "not an IPv4 address: $1"; }
master_url() { [[ $1 =~ ^spark://[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}$ ]] || die "not a master URL spark://IP:PORT: $1"; }

[ $# -ge 2 ] || die "usage: veil-entrypoint.sh master|worker|driver HOST_IP [MASTER_URL] [...]"
role=$1 host=$2
shift 2
ip4 "$host"
[ -n "${_SPARK_AUTH_SECRET:-}" ] || die "no Spark authentication secret (the key service released none)"

export SPARK_LOCAL_IP=$host SPARK_LOCAL_HOSTNAME=$host SPARK_PUBLIC_DNS=$host
export SPARK_CONF_DIR=/tmp/spark-conf SPARK_LOG_DIR=/tmp/spark-logs
export SPARK_DAEMON_MEMORY=384m
# Short-lived and coordinating JVMs (the launcher, master, worker, driver)
# start faster with the client compiler alone and one GC thread; the
# executors, which do the work, keep the JVM's defaults.
quick="-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"
export SPARK_LAUNCHER_OPTS=$quick SPARK_DAEMON_JAVA_OPTS=$quick
mkdir -p "$SPARK_CONF_DIR" /tmp/spark-local /tmp/spark-work "$SPARK_LOG_DIR"
umask 077
cat >"$SPARK_CONF_DIR/spark-defaults.conf" <<CONF
spark.authenticate                  true
spark.network.crypto.enabled        true
spark.io.encryption.enabled         true
spark.local.dir                     /tmp/spark-local
spark.ui.enabled                    false
spark.ui.showConsoleProgress        false
spark.driver.memory                 512m
spark.driver.extraJavaOptions       $quick
spark.executor.memory               768m
spark.executor.cores                1
spark.sql.shuffle.partitions        4
spark.sql.files.maxPartitionBytes   1m
spark.sql.adaptive.enabled          false
spark.worker.cleanup.enabled        false
spark.deploy.recoveryMode           NONE
CONF
if [ "$role" = driver ]; then
	# The driver checks that the secret is configured (standalone mode
	# takes it from the configuration, not the environment); the file is
	# on the instance's tmpfs, never on the host's disk or command line.
	printf 'spark.authenticate.secret           %s\n' "$_SPARK_AUTH_SECRET" >>"$SPARK_CONF_DIR/spark-defaults.conf"
fi

cd /tmp
case $role in
master)
	[ $# -eq 0 ] || die "master takes no more arguments"
	exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.master.Master \
		--host "$host" --port 7077 --webui-port 8080
	;;
worker)
	[ $# -ge 1 ] && [ $# -le 3 ] || die "usage: veil-entrypoint.sh worker HOST_IP MASTER_URL [CORES [MEMORY]]"
	master_url "$1"
	cores=${2:-1} mem=${3:-1g}
	[[ $cores =~ ^[0-9]+$ ]] || die "cores: not a number: $cores"
	[[ $mem =~ ^[0-9]+[mg]$ ]] || die "memory: not a size like 1g: $mem"
	exec "$SPARK_HOME/bin/spark-class" org.apache.spark.deploy.worker.Worker \
		--host "$host" --port 7078 --webui-port 8081 --cores "$cores" --memory "$mem" \
		--work-dir /tmp/spark-work "$1"
	;;
driver)
	[ $# -ge 2 ] || die "usage: veil-entrypoint.sh driver HOST_IP MASTER_URL JOB [ARGS...]"
	master_url "$1"
	job=$2
	[[ $job =~ ^[a-z0-9_]+$ ]] && [ -f "/opt/spark/jobs/$job.py" ] || die "no job $job in the image"
	master=$1
	shift 2
	exec "$SPARK_HOME/bin/spark-submit" --master "$master" --deploy-mode client \
		--conf spark.driver.host="$host" --conf spark.driver.bindAddress="$host" \
		"/opt/spark/jobs/$job.py" "$@"
	;;
*)
	die "unknown role $role (master, worker or driver)"
	;;
esac
