#!/usr/bin/env bash
# make demo: the people example end to end (examples/people/run.sh): the
# data owner seals people.csv under a key of a dev key service, the
# developer builds the query instance and registers its measurement, the
# operator runs it with veil run, the owner decrypts the result.
# Installs the Debian packages it needs if they are missing (scripts/setup.sh); starts and
# stops its own key service on a free loopback port; leaves nothing running
# or mounted.
set -euo pipefail
cd "$(dirname "$0")/.."
export VEIL=${VEIL:-$PWD/bin/veil}
ROWS=${ROWS:-100000}

./scripts/setup.sh
if [ "$(id -u)" != 0 ]; then
	echo "demo: veil run needs root here (FUSE mounts, namespaces)" >&2
	exit 1
fi
[ -x "$VEIL" ] || { echo "demo: $VEIL missing: run make build" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/veil-demo.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
ROWS=$ROWS WORK=$work/people ./examples/people/run.sh

# Nothing left behind: no key service, no mount under the work directory.
if grep -q "$work" /proc/mounts; then
	echo "demo: mounts left under $work:" >&2
	grep "$work" /proc/mounts >&2
	exit 1
fi
if pgrep -f "kms serve --dev --data $work" >/dev/null; then
	echo "demo: a key service is still running" >&2
	exit 1
fi
printf '\ndemo: done in %d s; nothing left running or mounted\n' $(($(date +%s) - start))
