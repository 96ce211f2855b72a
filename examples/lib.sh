# Shared by the examples' run.sh scripts (sourced, not run).
#
# Every veil operation goes through the one binary in $VEIL. A script sets
# WORK (a scratch directory; default a fresh one, removed at exit unless
# KEEP=1) and calls the functions below. Dev key services are started on a
# free loopback port and stopped at exit, so nothing is left running.

set -euo pipefail

examples_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VEIL=${VEIL:-$examples_dir/../bin/veil}
case $VEIL in /*) ;; *) VEIL=$PWD/$VEIL ;; esac
if [ ! -x "$VEIL" ]; then
	echo "veil binary not found at $VEIL (run 'make build' or set VEIL)" >&2
	exit 1
fi
# The Debian interpreter: the same one the images carry.
PYTHON=${PYTHON:-/usr/bin/python3}

if [ -z "${WORK:-}" ]; then
	WORK=$(mktemp -d "${TMPDIR:-/tmp}/veil-example.XXXXXX")
	_work_made=1
fi
if [ -z "${_work_made:-}" ] && [ -n "$(ls -A "$WORK" 2>/dev/null)" ]; then
	echo "WORK=$WORK is not empty: give a new or empty directory" >&2
	exit 2
fi
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
# Sim platform key, development signing key: kept inside the work dir.
export VEIL_HOME=${VEIL_HOME:-$WORK/home}
unset VEIL_KMS_URL VEIL_KMS_CA VEIL_ADMIN_TOKEN VEIL_APP_ID VEIL_API_KEY VEIL_KMS_PROFILE

_kms_pids=()
_cleanup() {
	local rc=$?
	for pid in "${_kms_pids[@]}"; do
		kill "$pid" 2>/dev/null || true
	done
	for pid in "${_kms_pids[@]}"; do
		wait "$pid" 2>/dev/null || true
	done
	if [ "${_work_made:-}" = 1 ] && [ "${KEEP:-0}" != 1 ]; then
		rm -rf "$WORK"
	fi
	return $rc
}
trap _cleanup EXIT
trap 'exit 130' INT TERM

# say ROLE TEXT: one step, printed as the role that performs it.
say() { printf '\n\033[1m[%s]\033[0m %s\n' "$1" "$2"; }
# show CMD...: print a command, then run it.
show() { printf '  $ %s\n' "$*" | sed "s|$VEIL|veil|g; s|$WORK/||g"; "$@"; }

# kms_start NAME: start a dev key service; sets KMS_<NAME>_URL, _CA, _ADDR,
# _TOKEN (NAME in upper case letters and digits).
kms_start() {
	local name=$1 dir=$WORK/kms-$1 up
	up=$(echo "$name" | tr 'a-z-' 'A-Z_')
	mkdir -p "$dir"
	"$VEIL" kms serve --dev --data "$dir/data" --listen 127.0.0.1:0 >"$dir/env" 2>"$dir/log" &
	_kms_pids+=($!)
	local i
	for i in $(seq 100); do
		grep -q VEIL_ADMIN_TOKEN "$dir/env" 2>/dev/null && break
		if ! kill -0 "${_kms_pids[-1]}" 2>/dev/null; then
			echo "key service $name did not start:" >&2
			cat "$dir/log" >&2
			return 1
		fi
		sleep 0.1
	done
	local url ca token
	url=$(sed -n 's/^export VEIL_KMS_URL=//p' "$dir/env")
	ca=$(sed -n 's/^export VEIL_KMS_CA=//p' "$dir/env")
	token=$(sed -n 's/^export VEIL_ADMIN_TOKEN=//p' "$dir/env")
	[ -n "$url" ] && [ -n "$ca" ] && [ -n "$token" ] || { echo "key service $name printed no address" >&2; return 1; }
	printf -v "KMS_${up}_URL" '%s' "$url"
	printf -v "KMS_${up}_CA" '%s' "$ca"
	printf -v "KMS_${up}_ADDR" '%s' "${url#https://}"
	printf -v "KMS_${up}_TOKEN" '%s' "$token"
	echo "  key service '$name' at $url (dev mode: root key on disk, development only)"
}

# as_owner NAME CMD...: run CMD with the credentials of owner NAME (set by
# owner_enroll) against the key service the owner uses.
as_owner() {
	local name=$1
	shift
	local -n _e=OWNER_${name^^}
	VEIL_KMS_URL=${_e[url]} VEIL_KMS_CA=${_e[ca]} VEIL_APP_ID=${_e[app]} VEIL_API_KEY=${_e[key]} "$@"
}

# owner_enroll NAME KMSNAME: enroll owner NAME as an app at a key service;
# the app id and API key land in the associative array OWNER_<NAME>.
owner_enroll() {
	local name=$1 kms=${2^^}
	kms=${kms//-/_}
	local url_var=KMS_${kms}_URL ca_var=KMS_${kms}_CA tok_var=KMS_${kms}_TOKEN
	local out
	out=$(VEIL_KMS_URL=${!url_var} VEIL_KMS_CA=${!ca_var} VEIL_ADMIN_TOKEN=${!tok_var} \
		"$VEIL" kms enroll --name "$name" 2>/dev/null)
	declare -gA "OWNER_${name^^}"
	local -n _o=OWNER_${name^^}
	_o[url]=${!url_var}
	_o[ca]=${!ca_var}
	_o[app]=$(echo "$out" | sed -n 's/^export VEIL_APP_ID=//p')
	_o[key]=$(echo "$out" | sed -n 's/^export VEIL_API_KEY=//p')
	[ -n "${_o[app]}" ] && [ -n "${_o[key]}" ] || { echo "enrolling $name failed" >&2; return 1; }
	echo "  app id ${_o[app]} (the API key is kept by the owner)"
}

# key_create OWNER KEYNAME: create a key; prints its id.
key_create() {
	as_owner "$1" "$VEIL" kms key create --name "$2" --json | sed -n 's/^  "id": "\(k_[0-9a-f]*\)",$/\1/p'
}

# fill_config TEMPLATE OUT NAME=VALUE...: copy a veil.json template,
# replacing each @NAME@ by VALUE, JSON-escaped (a value @file:PATH is the
# content of PATH, e.g. a PEM certificate).
fill_config() {
	local tmpl=$1 out=$2
	shift 2
	"$PYTHON" - "$tmpl" "$out" "$@" <<'EOF'
import json, sys
tmpl, out, pairs = sys.argv[1], sys.argv[2], sys.argv[3:]
text = open(tmpl).read()
for p in pairs:
    name, value = p.split("=", 1)
    if value.startswith("@file:"):
        value = open(value[6:]).read()
    text = text.replace("@" + name + "@", json.dumps(value)[1:-1])
import re
left = re.findall(r"@[A-Z0-9_]+@", text)
if left:
    sys.exit("unfilled placeholders in %s: %s" % (tmpl, " ".join(sorted(set(left)))))
json.loads(text)
open(out, "w").write(text)
EOF
}

# instance_new DIR: an instance directory the developer fills.
instance_new() {
	rm -rf "$1"
	"$VEIL" new "$1" >/dev/null 2>&1
}
