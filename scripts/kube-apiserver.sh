#!/usr/bin/env bash
# kube-apiserver.sh: build Kubernetes' API server once per machine, for the
# tests that validate deploy/ against a real server (server-side dry-run).
# The binary is cached outside the repository; later calls only print its
# path.
#
#   scripts/kube-apiserver.sh           build if missing, print the binary's path
#   scripts/kube-apiserver.sh --check   print the path if built, exit 1 if not
#
# k8s.io/kubernetes is not meant to be required as a module: its go.mod
# points its staging modules (k8s.io/api, client-go, ...) at ./staging. A
# throwaway wrapper module requires it and replaces each staging module by
# its published v0.x release of the same minor. Cold module cache: about
# 6.5 minutes on 2 cores; the binary is about 170 MB.
set -euo pipefail

version=v1.37.2
staging=v0.${version#v1.}
cache=${XDG_CACHE_HOME:-$HOME/.cache}/veil/kube-apiserver-$version
bin=$cache/kube-apiserver

if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi
if [ "${1:-}" = --check ]; then
	echo "kube-apiserver: $bin not built yet: run scripts/kube-apiserver.sh" >&2
	exit 1
fi
command -v go >/dev/null || { echo "kube-apiserver: go not found on PATH" >&2; exit 1; }
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}

mkdir -p "$cache"
# One build per machine even when several test runs ask at once.
exec 9>"$cache/.lock"
flock 9
if [ -x "$bin" ]; then
	echo "$bin"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
echo "kube-apiserver: building k8s.io/kubernetes $version into $cache (several minutes, once per machine)" >&2
cat >go.mod <<MOD
module veil.local/kubeapiserver

go 1.26.0
MOD
# The staging modules, read off kubernetes' own go.mod.
kmod=$(GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -n "$kmod" ] || { echo "kube-apiserver: cannot download k8s.io/kubernetes@$version" >&2; exit 1; }
{
	echo "require k8s.io/kubernetes $version"
	echo
	echo "replace ("
	sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*|	\1 => \1 '"$staging"'|p' "$kmod"
	echo ")"
} >>go.mod
start=$(date +%s)
CGO_ENABLED=0 GOFLAGS=-mod=mod go build -trimpath -ldflags=-s -o "$bin.tmp" k8s.io/kubernetes/cmd/kube-apiserver
mv "$bin.tmp" "$bin"
echo "kube-apiserver: built in $(( $(date +%s) - start ))s" >&2
echo "$bin"
