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

# pyspark for the Spark test: a pip target directory (what bom.python_packages
# places in an image), pinned by version and hash in
# scripts/pyspark-requirements.txt, kept in /var/cache/veil/pip/pyspark-VERSION
# (VEIL_PYSPARK_DIR overrides; the test reads the same variable). pyspark is
# an sdist: pip builds its wheel with setuptools fetched from PyPI.
pyspark_version=$(sed -n 's/^pyspark==\([^ ]*\) .*/\1/p' scripts/pyspark-requirements.txt)
pyspark_dir=${VEIL_PYSPARK_DIR:-/var/cache/veil/pip/pyspark-$pyspark_version}
if [ ! -d "$pyspark_dir/pyspark-$pyspark_version.dist-info" ]; then
	if $check_only; then
		echo "setup: missing pyspark $pyspark_version in $pyspark_dir" >&2
		exit 1
	fi
	if [ "$(id -u)" != 0 ] && [ -z "${VEIL_PYSPARK_DIR:-}" ]; then
		echo "setup: missing pyspark $pyspark_version in $pyspark_dir" >&2
		echo "setup: hint: run as root, or set VEIL_PYSPARK_DIR to a directory of yours (for the tests too)" >&2
		exit 1
	fi
	echo "setup: installing pyspark $pyspark_version into $pyspark_dir (about 340 MB)"
	rm -rf "$pyspark_dir.tmp"
	mkdir -p "$(dirname "$pyspark_dir")"
	(umask 022 && /usr/bin/python3 -m pip install -q --no-cache-dir --disable-pip-version-check --no-compile \
		--require-hashes --target "$pyspark_dir.tmp" -r scripts/pyspark-requirements.txt)
	rm -rf "$pyspark_dir" && mv "$pyspark_dir.tmp" "$pyspark_dir"
fi

# tpchgen-cli for the TPC-H data (scripts/tpch-gen.sh): the same kind of pip
# target directory, pinned in scripts/tpchgen-requirements.txt, kept in
# /var/cache/veil/pip/tpchgen-cli-VERSION (VEIL_TPCHGEN_DIR overrides;
# tpch-gen.sh and the tests read the same variable). A binary wheel.
tpchgen_version=$(sed -n 's/^tpchgen-cli==\([^ ]*\) .*/\1/p' scripts/tpchgen-requirements.txt)
tpchgen_dir=${VEIL_TPCHGEN_DIR:-/var/cache/veil/pip/tpchgen-cli-$tpchgen_version}
if [ ! -x "$tpchgen_dir/bin/tpchgen-cli" ]; then
	if $check_only; then
		echo "setup: missing tpchgen-cli $tpchgen_version in $tpchgen_dir" >&2
		exit 1
	fi
	if [ "$(id -u)" != 0 ] && [ -z "${VEIL_TPCHGEN_DIR:-}" ]; then
		echo "setup: missing tpchgen-cli $tpchgen_version in $tpchgen_dir" >&2
		echo "setup: hint: run as root, or set VEIL_TPCHGEN_DIR to a directory of yours (for the tests too)" >&2
		exit 1
	fi
	echo "setup: installing tpchgen-cli $tpchgen_version into $tpchgen_dir"
	rm -rf "$tpchgen_dir.tmp"
	mkdir -p "$(dirname "$tpchgen_dir")"
	(umask 022 && /usr/bin/python3 -m pip install -q --no-cache-dir --disable-pip-version-check --no-compile \
		--require-hashes --target "$tpchgen_dir.tmp" -r scripts/tpchgen-requirements.txt)
	rm -rf "$tpchgen_dir" && mv "$tpchgen_dir.tmp" "$tpchgen_dir"
fi

$check_only || go mod download
