#!/usr/bin/env bash
# setup.sh: what veil's tests, demo and benchmarks need of a Debian 12
# machine, installed if missing. Shared by `make test`, `make demo` and
# .ci/run. Go tools (staticcheck, govulncheck) are not installed here: they
# come through go.mod's tool directive (`go tool NAME`).
#
#   scripts/setup.sh           check Go, install missing Debian packages
#   scripts/setup.sh --check   only report what is missing (exit 1 if any)
set -euo pipefail
cd "$(dirname "$0")/.."

# The Debian packages, one group per user.
PACKAGES=(
	make git                                   # the build
	fuse3                                      # sealed and image mounts (fusermount3)
	squashfs-tools cryptsetup-bin              # veil build (mksquashfs), image tests
	gocryptfs                                  # the sealed-mount benchmark's peer
	postgresql-15                              # the key service's PostgreSQL store tests (initdb, postgres)
	python3 python3-pandas python3-sklearn python3-torch   # examples/ run these unmodified
	openjdk-17-jre-headless                    # the bom snippet debian/openjdk-17, JVM and Spark tests
	python3-pip                                # installs pyspark for the Spark test (below)
	skopeo                                     # reads veil package's archives in the ociimage test
	etcd-server                                # the store of the kube-apiserver that validates deploy/
	iproute2                                   # network-namespace hosts of the Spark cluster test and demo (ip)
)

check_only=false
[ "${1:-}" = --check ] && check_only=true

# Go: go.mod names the toolchain; any Go from 1.21 on fetches it through
# the module proxy by itself (GOTOOLCHAIN=auto).
if ! command -v go >/dev/null 2>&1; then
	echo "setup: go not found on PATH: install Go 1.21 or newer (Go at /usr/local/go/bin is found if it is on PATH)" >&2
	exit 1
fi
want=$(sed -n 's/^toolchain go//p' go.mod)
have=$(GOTOOLCHAIN=local go env GOVERSION | sed 's/^go//')
older() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n1)" = "$1" ] && [ "$1" != "$2" ]; }
if older "$have" 1.21; then
	echo "setup: Go $have is too old: install Go 1.21 or newer (veil builds with Go $want, which newer Go fetches by itself)" >&2
	exit 1
fi
if [ "${GOTOOLCHAIN:-auto}" = local ] && older "$have" "$want"; then
	echo "setup: GOTOOLCHAIN=local but Go $have is older than go.mod's toolchain $want: unset GOTOOLCHAIN or install Go $want" >&2
	exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
	dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
	if $check_only; then
		echo "setup: missing Debian packages: ${missing[*]}" >&2
		exit 1
	fi
	if [ "$(id -u)" != 0 ]; then
		echo "setup: missing Debian packages: ${missing[*]}" >&2
		echo "setup: hint: sudo apt-get install --no-install-recommends ${missing[*]}" >&2
		exit 1
	fi
	echo "setup: installing Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# pip_target PACKAGE REQUIREMENTS DIR VARIABLE MARKER [SIZE]: installs the
# requirements file (pinned by version and hash) into the pip target
# directory DIR unless DIR/MARKER is there; VARIABLE is the environment
# variable that names another DIR (the tests read the same).
pip_target() {
	local pkg=$1 reqs=$2 dir=$3 var=$4 marker=$5 size=${6:+ ($6)}
	[ -e "$dir/$marker" ] && return 0
	if $check_only; then
		echo "setup: missing $pkg in $dir" >&2
		exit 1
	fi
	if [ "$(id -u)" != 0 ] && [ -z "${!var:-}" ]; then
		echo "setup: missing $pkg in $dir" >&2
		echo "setup: hint: run as root, or set $var to a directory of yours (for the tests too)" >&2
		exit 1
	fi
	echo "setup: installing $pkg into $dir$size"
	rm -rf "$dir.tmp"
	mkdir -p "$(dirname "$dir")"
	(umask 022 && /usr/bin/python3 -m pip install -q --no-cache-dir --disable-pip-version-check --no-compile \
		--require-hashes --target "$dir.tmp" -r "$reqs")
	rm -rf "$dir" && mv "$dir.tmp" "$dir"
}

# pyspark for the Spark tests: a pip target directory (what bom.python_packages
# places in an image), pinned by version and hash in
# scripts/pyspark-requirements.txt, kept in /var/cache/veil/pip/pyspark-VERSION
# (VEIL_PYSPARK_DIR overrides). pyspark is an sdist: pip builds its wheel
# with setuptools fetched from PyPI.
pyspark_version=$(sed -n 's/^pyspark==\([^ ]*\) .*/\1/p' scripts/pyspark-requirements.txt)
pip_target "pyspark $pyspark_version" scripts/pyspark-requirements.txt \
	"${VEIL_PYSPARK_DIR:-/var/cache/veil/pip/pyspark-$pyspark_version}" VEIL_PYSPARK_DIR \
	"pyspark-$pyspark_version.dist-info" "about 340 MB"

# tpchgen-cli for the TPC-H data (scripts/tpch-gen.sh): a binary wheel,
# pinned in scripts/tpchgen-requirements.txt, kept in
# /var/cache/veil/pip/tpchgen-cli-VERSION (VEIL_TPCHGEN_DIR overrides).
tpchgen_version=$(sed -n 's/^tpchgen-cli==\([^ ]*\) .*/\1/p' scripts/tpchgen-requirements.txt)
pip_target "tpchgen-cli $tpchgen_version" scripts/tpchgen-requirements.txt \
	"${VEIL_TPCHGEN_DIR:-/var/cache/veil/pip/tpchgen-cli-$tpchgen_version}" VEIL_TPCHGEN_DIR \
	bin/tpchgen-cli

$check_only || go mod download
