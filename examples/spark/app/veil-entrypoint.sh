#!/usr/bin/bash
# The only entry point of the Spark instance: starts one Spark role as a
# foreground JVM. Every role runs in its own veil instance on its own host
# (a network-namespace host, a machine or a Kubernetes pod); the host
# passes only the role and addresses:
#
#   veil-entrypoint.sh master HOST_IP
#   veil-entrypoint.sh worker HOST_IP spark://MASTER_IP:7077 [CORES [MEMORY]]
#   veil-entrypoint.sh driver HOST_IP spark://MASTER_IP:7077 JOB [ARGS...]
#   veil-entrypoint.sh driver HOST_IP k8s://https://API_SERVER:PORT JOB [ARGS...]
#   veil-entrypoint.sh executor
#
# JOB names a program of the image (/opt/spark/jobs/JOB.py): the host cannot
# submit code of its own, nor Spark options. Spark's authentication secret
# comes from the key service (veil.json secrets, env _SPARK_AUTH_SECRET);
# veil starts nothing if the key service does not release it to this
# instance's measurement. RPC and shuffle/spill encryption are on; local,
# shuffle and work directories are on /tmp, a tmpfs in the instance.
#
# Spark on Kubernetes: the driver with a k8s:// master runs in client mode
# and creates executor pods from the template baked into the image
# (/opt/spark/k8s/executor-template.yaml); each executor pod runs
# `veil-entrypoint.sh executor` (Spark appends the argument) and takes its
# settings from the variables Spark puts in the pod (SPARK_DRIVER_URL,
# SPARK_EXECUTOR_ID, ...: veil.json env.passthrough). The driver reaches
# the API server with SPARK_K8S_TOKEN (the service account's token) and
# SPARK_K8S_CA_CERT (the API server's CA, PEM), and names its namespace,
# executor image and count with SPARK_K8S_NAMESPACE, SPARK_K8S_IMAGE and
# SPARK_K8S_EXECUTORS. Every one of these values is the host's, untrusted,
# and checked here; everything else Spark would pass (SPARK_JAVA_OPT_n,
# SPARK_CLASSPATH, spark-submit's cluster-mode options) never reaches the
# instance. The secret is given to Spark as a file on the instance's tmpfs
# (spark.authenticate.secret.*.file), so Spark neither generates one nor
# puts one in an executor pod's environment, where the API server would
# show it to the cluster's operators.
set -euo pipefail

die() { echo "veil-entrypoint: $*" >&2; exit 2; }
ipv4='^[0-9]{1,3}(\.[0-9]{1,3}){3}$'
ip4() { [[ $1 =~ $ipv4 ]] || die "not an IPv4 address: $(printf '%q' "$1")"; }
master_url() { [[ $1 =~ ^spark://[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}$ ]] || die "not a master URL spark://IP:PORT: $(printf '%q' "$1")"; }
# check NAME REGEX WHAT: the host's variable NAME (untrusted) is set and
# matches REGEX; the error shows the value quoted, on one line.
check() {
	[ -n "${!1:-}" ] || die "$1 is not set: want $3"
	[[ ${!1} =~ $2 ]] || die "$1 is not $3: $(printf '%q' "${!1:0:80}")"
}
dns_label='^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'
dns_name='^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$'
pem='^(-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=[:space:]]+-----END CERTIFICATE-----[[:space:]]*)+$'
executor_template=/opt/spark/k8s/executor-template.yaml
usage="usage: veil-entrypoint.sh master|worker|driver HOST_IP [MASTER_URL] [...], or executor"

[ $# -ge 1 ] || die "$usage"
role=$1
shift
k8s=
case $role in
executor)
	# Spark's executor pod: the settings are the variables Spark put in
	# the pod (veil.json env.passthrough), the pod's IP among them.
	[ $# -eq 0 ] || die "executor takes no arguments (its settings are the pod's SPARK_* variables)"
	check SPARK_DRIVER_URL '^spark://CoarseGrainedScheduler@[0-9]{1,3}(\.[0-9]{1,3}){3}:[0-9]{1,5}$' \
		"a driver URL spark://CoarseGrainedScheduler@IP:PORT"
	check SPARK_EXECUTOR_ID '^[1-9][0-9]{0,8}$' "an executor number"
	check SPARK_EXECUTOR_CORES '^[1-9][0-9]{0,2}$' "a number of cores"
	check SPARK_EXECUTOR_MEMORY '^[1-9][0-9]{1,6}m$' "a heap size in MiB like 768m"
	check SPARK_APPLICATION_ID '^spark-[0-9a-z]{1,64}$' "a Spark application id"
	check SPARK_EXECUTOR_POD_IP "$ipv4" "an IPv4 address"
	check SPARK_EXECUTOR_POD_NAME "$dns_name" "a pod name"
	check SPARK_RESOURCE_PROFILE_ID '^[0-9]{1,9}$' "a resource profile id"
	k8s=1 host=$SPARK_EXECUTOR_POD_IP
	driver_url=$SPARK_DRIVER_URL executor_id=$SPARK_EXECUTOR_ID cores=$SPARK_EXECUTOR_CORES
	mem=$SPARK_EXECUTOR_MEMORY app_id=$SPARK_APPLICATION_ID pod=$SPARK_EXECUTOR_POD_NAME
	profile=$SPARK_RESOURCE_PROFILE_ID
	;;
master | worker)
	[ $# -ge 1 ] || die "$usage"
	host=$1
	shift
	ip4 "$host"
	;;
driver)
	[ $# -ge 3 ] || die "usage: veil-entrypoint.sh driver HOST_IP MASTER_URL JOB [ARGS...]"
	host=$1 master=$2 job=$3
	shift 3
	ip4 "$host"
	case $master in
	spark://*) master_url "$master" ;;
	k8s://*)
		[[ $master =~ ^k8s://https://[a-z0-9.-]{1,253}:[0-9]{1,5}$ ]] ||
			die "not a Kubernetes API server k8s://https://HOST:PORT: $(printf '%q' "$master")"
		: "${SPARK_K8S_NAMESPACE:=veil-jobs}" "${SPARK_K8S_EXECUTORS:=2}"
		check SPARK_K8S_NAMESPACE "$dns_label" "a namespace name"
		check SPARK_K8S_IMAGE '^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$' "an image reference"
		check SPARK_K8S_EXECUTORS '^[1-9][0-9]?$' "a number of executors (1 to 99)"
		[[ ${SPARK_K8S_TOKEN:-} =~ ^[A-Za-z0-9._-]{1,8192}$ ]] ||
			die "SPARK_K8S_TOKEN is not a bearer token (the driver's service account token)"
		[[ ${SPARK_K8S_CA_CERT:-} =~ $pem ]] ||
			die "SPARK_K8S_CA_CERT is not PEM certificates (the API server's CA)"
		[ -z "${SPARK_DRIVER_POD_NAME:-}" ] || check SPARK_DRIVER_POD_NAME "$dns_name" "a pod name"
		[ -f "$executor_template" ] || die "no executor pod template $executor_template in the image"
		k8s=1 namespace=$SPARK_K8S_NAMESPACE image=$SPARK_K8S_IMAGE executors=$SPARK_K8S_EXECUTORS
		token=$SPARK_K8S_TOKEN ca=$SPARK_K8S_CA_CERT driver_pod=${SPARK_DRIVER_POD_NAME:-}
		;;
	*) die "not a master URL spark://IP:PORT or k8s://https://HOST:PORT: $(printf '%q' "$master")" ;;
	esac
	[[ $job =~ ^[a-z0-9_]+$ ]] && [ -f "/opt/spark/jobs/$job.py" ] || die "no job $(printf '%q' "$job") in the image"
	;;
*)
	die "unknown role $(printf '%q' "$role") (master, worker, driver or executor)"
	;;
esac
[ -n "${_SPARK_AUTH_SECRET:-}" ] || die "no Spark authentication secret (the key service released none)"
# The host's variables reach nothing else: Spark and the JVM read some
# SPARK_* variables themselves.
unset SPARK_DRIVER_URL SPARK_EXECUTOR_ID SPARK_EXECUTOR_CORES SPARK_EXECUTOR_MEMORY \
	SPARK_APPLICATION_ID SPARK_EXECUTOR_POD_IP SPARK_EXECUTOR_POD_NAME SPARK_RESOURCE_PROFILE_ID \
	SPARK_K8S_NAMESPACE SPARK_K8S_IMAGE SPARK_K8S_EXECUTORS SPARK_K8S_TOKEN SPARK_K8S_CA_CERT \
	SPARK_DRIVER_POD_NAME

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
auth_file=/tmp/spark-auth/secret
if [ -n "$k8s" ]; then
	# On Kubernetes, Spark takes the secret from a file (the same on
	# the driver and every executor: the instance's tmpfs); it then
	# generates none and puts none in the executor pods. Spark prefers
	# the variable _SPARK_AUTH_SECRET to the file, so it goes.
	mkdir -p /tmp/spark-auth
	printf '%s' "$_SPARK_AUTH_SECRET" >"$auth_file"
	unset _SPARK_AUTH_SECRET
elif [ "$role" = driver ]; then
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
	if [ -n "$k8s" ]; then
		# Client mode in the driver's pod: Spark creates the executor
		# pods from the image's template through the API server.
		mkdir -p /tmp/k8s
		printf '%s' "$token" >/tmp/k8s/token
		printf '%s\n' "$ca" >/tmp/k8s/ca.crt
		cat >>"$SPARK_CONF_DIR/spark-defaults.conf" <<CONF
spark.authenticate.secret.file           $auth_file
spark.authenticate.secret.driver.file    $auth_file
spark.authenticate.secret.executor.file  $auth_file
spark.executor.instances                 $executors
spark.kubernetes.namespace               $namespace
spark.kubernetes.container.image         $image
spark.kubernetes.authenticate.oauthTokenFile  /tmp/k8s/token
spark.kubernetes.authenticate.caCertFile      /tmp/k8s/ca.crt
spark.kubernetes.executor.podTemplateFile     $executor_template
spark.kubernetes.executor.podTemplateContainerName  spark-kubernetes-executor
CONF
		[ -z "$driver_pod" ] || echo "spark.kubernetes.driver.pod.name         $driver_pod" >>"$SPARK_CONF_DIR/spark-defaults.conf"
	fi
	exec "$SPARK_HOME/bin/spark-submit" --master "$master" --deploy-mode client \
		--conf spark.driver.host="$host" --conf spark.driver.bindAddress="$host" \
		"/opt/spark/jobs/$job.py" "$@"
	;;
executor)
	# What Spark's own image runs, with the options Spark's launcher
	# gives every JVM on Java 17 (JavaModuleOptions); the executor reads
	# the secret file (spark.authenticate.secret.file while it asks the
	# driver for the configuration, .executor.file after) with a k8s://
	# master only.
	exec "$JAVA_HOME/bin/java" -Xms"$mem" -Xmx"$mem" \
		-XX:+IgnoreUnrecognizedVMOptions \
		--add-opens=java.base/java.lang=ALL-UNNAMED \
		--add-opens=java.base/java.lang.invoke=ALL-UNNAMED \
		--add-opens=java.base/java.lang.reflect=ALL-UNNAMED \
		--add-opens=java.base/java.io=ALL-UNNAMED \
		--add-opens=java.base/java.net=ALL-UNNAMED \
		--add-opens=java.base/java.nio=ALL-UNNAMED \
		--add-opens=java.base/java.util=ALL-UNNAMED \
		--add-opens=java.base/java.util.concurrent=ALL-UNNAMED \
		--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED \
		--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED \
		--add-opens=java.base/sun.nio.ch=ALL-UNNAMED \
		--add-opens=java.base/sun.nio.cs=ALL-UNNAMED \
		--add-opens=java.base/sun.security.action=ALL-UNNAMED \
		--add-opens=java.base/sun.util.calendar=ALL-UNNAMED \
		--add-opens=java.security.jgss/sun.security.krb5=ALL-UNNAMED \
		-Djdk.reflect.useDirectMethodHandle=false \
		-Dspark.master=k8s://https://kubernetes.default.svc \
		-Dspark.authenticate=true -Dspark.network.crypto.enabled=true \
		-Dspark.authenticate.secret.file="$auth_file" \
		-Dspark.authenticate.secret.executor.file="$auth_file" \
		-Dspark.local.dir=/tmp/spark-local \
		-cp "$SPARK_HOME/jars/*" org.apache.spark.scheduler.cluster.k8s.KubernetesExecutorBackend \
		--driver-url "$driver_url" --executor-id "$executor_id" --cores "$cores" --app-id "$app_id" \
		--hostname "$host" --resourceProfileId "$profile" --podName "$pod"
	;;
esac
