#!/usr/bin/env bash
# Start-up overhead of `veil run`: a trivial static program run natively,
# under veil without a key service, and under veil with attestation and a
# key fetched from a local key service (a sealed mount whose key the
# service releases after checking the evidence). Prints medians of COUNT
# runs in milliseconds. Needs root (or user namespaces), FUSE, mksquashfs
# and Go (to build the trivial program). VEIL_TIMING=1 on one run shows
# where the time goes. BASELINE=/path/to/an/older/veil adds rows for that
# binary, alternating with this one in the same loop (before/after).
set -euo pipefail
COUNT=${COUNT:-15}
source "$(dirname "$0")/../examples/lib.sh"

source "$(dirname "$0")/benchlib.sh"
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; "$@" >&2 || true; exit 1; }; e=$(date +%s%N); echo $(((e - s) / 1000000)); }

"$VEIL" sim init >/dev/null
mkdir -p "$WORK/src"
printf 'package main\nfunc main() { println("hello") }\n' >"$WORK/src/main.go"
(cd "$WORK/src" && go mod init hello >/dev/null 2>&1 && CGO_ENABLED=0 go build -o "$WORK/hello-bin" .)

# hello: no key service; the default resources of veil new (memory and
# process limits) apply.
instance_new "$WORK/hello"
mkdir -p "$WORK/hello/image/bin"
cp "$WORK/hello-bin" "$WORK/hello/image/bin/hello"
sed -i 's|"entrypoints": \[[^]]*\]|"entrypoints": ["/bin/"]|' "$WORK/hello/veil.json"
"$VEIL" build -C "$WORK/hello" >/dev/null 2>&1

# hello-kms: the same program with a sealed /data whose key a local key
# service releases to this measurement only.
kms_start bench >/dev/null
owner_enroll alice bench >/dev/null
key=$(key_create alice bench-key)
instance_new "$WORK/hello-kms"
mkdir -p "$WORK/hello-kms/image/bin" "$WORK/data"
cp "$WORK/hello-bin" "$WORK/hello-kms/image/bin/hello"
"$PYTHON" - "$WORK/hello-kms/veil.json" "$WORK/data" "$key" "$KMS_BENCH_ADDR" "$KMS_BENCH_CA" <<'PY'
import json, sys
p, data, key, addr, ca = sys.argv[1:]
c = json.load(open(p))
c["entrypoints"] = ["/bin/"]
c["mounts"] = [{"target": "/data", "type": "sealed", "source": data, "key": "kms:%s@bench" % key}]
c["kms"] = [{"name": "bench", "address": addr, "ca_cert": open(ca).read()}]
json.dump(c, open(p, "w"), indent=2)
PY
"$VEIL" build -C "$WORK/hello-kms" >/dev/null 2>&1
as_owner alice "$VEIL" kms policy create --from-instance "$WORK/hello-kms" --key bench-key --allow-sim >/dev/null

nat=(); run=(); kms=(); brun=(); bkms=()
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$COUNT"); do
	nat+=("$(ms "$WORK/hello-bin")")
	run+=("$(ms "$VEIL" run -C "$WORK/hello" /bin/hello)")
	kms+=("$(ms "$VEIL" run -C "$WORK/hello-kms" /bin/hello)")
	if [ -n "${BASELINE:-}" ]; then
		brun+=("$(ms "$BASELINE" run -C "$WORK/hello" /bin/hello)")
		bkms+=("$(ms "$BASELINE" run -C "$WORK/hello-kms" /bin/hello)")
	fi
done
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
n=$(printf '%s\n' "${nat[@]}" | median)
r=$(printf '%s\n' "${run[@]}" | median)
k=$(printf '%s\n' "${kms[@]}" | median)
printf '%-44s %6s ms\n' "native exec (median of $COUNT)" "$n"
printf '%-44s %6s ms  (overhead %s ms)\n' "veil run, sim, no key service" "$r" "$((r - n))"
printf '%-44s %6s ms  (overhead %s ms)\n' "veil run, sim, attested key from local KMS" "$k" "$((k - n))"
summary_row "\`veil run\` start-up overhead, no key service" "$r ms" "native exec $n ms" "$((r - n))" "<15" ms
summary_row "\`veil run\` start-up overhead, attested key from a local key service" "$k ms" "native exec $n ms" "$((k - n))" "<150" ms
if [ -n "${BASELINE:-}" ]; then
	r=$(printf '%s\n' "${brun[@]}" | median)
	k=$(printf '%s\n' "${bkms[@]}" | median)
	printf '%-44s %6s ms  (overhead %s ms)\n' "baseline: veil run, sim, no key service" "$r" "$((r - n))"
	printf '%-44s %6s ms  (overhead %s ms)\n' "baseline: the same with the local KMS" "$k" "$((k - n))"
fi
echo "where the time goes (one run, VEIL_TIMING=1):"
VEIL_TIMING=1 "$VEIL" run -C "$WORK/hello-kms" /bin/hello 2>&1 | grep 'timing:' | sed 's/^veil: timing: /  /'
