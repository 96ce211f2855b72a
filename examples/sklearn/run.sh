#!/usr/bin/env bash
# sklearn: the seed's LinearRegression script (BigDL PPML guide, section
# 2.3), unchanged, inside veil; its printed figures are written into a
# sealed mount, so only the data owner can read them.
#
# Environment: VEIL (default ./bin/veil), WORK, KEEP=1 (see ../lib.sh).
# Results: $WORK/results/veil/result.txt and $WORK/results/plain/result.txt.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
mkdir -p "$WORK"/{host/out,results/veil,results/plain}

say "key service" "starts (dev mode, loopback)"
kms_start owner

say "data owner" "enrolls and creates the key the results are sealed under"
owner_enroll alice owner
KEY=$(key_create alice sklearn-results)
echo "  key sklearn-results = $KEY"

say "developer" "builds the instance: python3 + scikit-learn from Debian, sklearn_example.py as published"
instance_new "$WORK/sklearn"
mkdir -p "$WORK/sklearn/image/app"
cp "$here/app/sklearn_example.py" "$here/app/job.py" "$WORK/sklearn/image/app/"
fill_config "$here/veil.json" "$WORK/sklearn/veil.json" \
	OUT_DIR="$WORK/host/out" KEY_ID="$KEY" \
	KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
show "$VEIL" build -C "$WORK/sklearn"

say "developer" "registers the measurement as the key's release policy (with the owner's app credentials)"
show as_owner alice "$VEIL" kms policy create --name sklearn-job --from-instance "$WORK/sklearn" --key sklearn-results --allow-sim

say "operator" "runs the job"
show "$VEIL" run -C "$WORK/sklearn" /app/job.py
ls -l "$WORK/host/out" | sed 's/^/    /'
if grep -q intercept "$WORK/host/out/result.txt"; then echo "plaintext visible on the host!" >&2; exit 1; fi

say "data owner" "decrypts the result"
show as_owner alice "$VEIL" decrypt -i "$WORK/host/out/result.txt" -o "$WORK/results/veil/result.txt"
sed 's/^/  /' "$WORK/results/veil/result.txt"

say "data owner" "runs the same script outside veil and compares"
show "$PYTHON" "$here/app/job.py" "$WORK/results/plain/result.txt"
if cmp -s "$WORK/results/veil/result.txt" "$WORK/results/plain/result.txt"; then
	echo "  identical: the sealed run and the plaintext run agree"
else
	diff "$WORK/results/plain/result.txt" "$WORK/results/veil/result.txt" >&2 || true
	echo "sklearn: results differ" >&2
	exit 1
fi
