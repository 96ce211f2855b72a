#!/usr/bin/env bash
# vulncheck.sh: govulncheck over the module, against Go's vulnerability
# database taken from the module proxy (golang.org/x/vulndb at a pinned
# version, indexed locally once and cached), so it needs no other host.
# Raise VULNDB_VERSION to take newer reports.
set -euo pipefail
cd "$(dirname "$0")/.."
# As make does: the toolchain go.mod pins, fetched if the installed Go is older.
export GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
VULNDB_VERSION=v0.0.0-20261105234957-e22db6528018
cache=${XDG_CACHE_HOME:-$HOME/.cache}/veil/vulndb-$VULNDB_VERSION
if [ ! -f "$cache/index/db.json" ]; then
	echo "vulncheck: indexing the vulnerability database $VULNDB_VERSION (once per machine)"
	src=$(go mod download -json "golang.org/x/vulndb@$VULNDB_VERSION" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')
	[ -d "$src/data/osv" ] || { echo "vulncheck: $src/data/osv missing" >&2; exit 1; }
	mkdir -p "${cache%/*}"
	tmp=$(mktemp -d "${cache%/*}/tmp.XXXXXX")
	trap 'rm -rf "$tmp"' EXIT
	(cd "$tmp" && go run "golang.org/x/vulndb/cmd/indexdb@$VULNDB_VERSION" -vulns "$src/data/osv" -out "$tmp/db")
	rm -rf "$cache" && mv "$tmp/db" "$cache"
fi
go tool govulncheck -db "file://$cache" ./...
