#!/usr/bin/env bash
# pytorch: the Gramine PyTorch tutorial's flow without downloads. The data
# owner trains a small CNN on scikit-learn's digits, seals the model, the
# input images and the class names; the inference job (Debian's
# python3-torch) runs inside veil and writes result.txt, sealed, with the
# top-3 classes of each image; the owner decrypts it.
#
# Needs the Debian packages python3-torch and python3-sklearn (about 600 MB
# installed with their dependencies).
# Environment: VEIL (default ./bin/veil), WORK, KEEP=1 (see ../lib.sh).
# Results: $WORK/results/veil/result.txt and $WORK/results/plain/result.txt.
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib.sh"
mkdir -p "$WORK"/{owner,host/data,results/veil,results/plain}

say "key service" "starts (dev mode, loopback)"
kms_start owner

say "data owner" "enrolls and creates a key"
owner_enroll alice owner
KEY=$(key_create alice model-key)
echo "  key model-key = $KEY"

say "data owner" "trains the model on the digits data set and seals model, inputs and class names"
show "$PYTHON" "$here/train.py" "$WORK/owner"
for f in model.pt input.npy classes.txt; do
	show as_owner alice "$VEIL" encrypt --key kms:model-key -i "$WORK/owner/$f" -o "$WORK/host/data/$f"
done

say "developer" "builds the inference instance: python3 + torch from Debian"
instance_new "$WORK/infer"
mkdir -p "$WORK/infer/image/app"
cp "$here/app/infer.py" "$WORK/infer/image/app/"
fill_config "$here/veil.json" "$WORK/infer/veil.json" \
	DATA_DIR="$WORK/host/data" KEY_ID="$KEY" \
	KMS_ADDRESS="$KMS_OWNER_ADDR" KMS_CA_CERT="@file:$KMS_OWNER_CA"
show "$VEIL" build -C "$WORK/infer"

say "developer" "registers the measurement as the key's release policy (with the owner's app credentials)"
show as_owner alice "$VEIL" kms policy create --name infer-job --from-instance "$WORK/infer" --key model-key --allow-sim

say "operator" "runs the inference"
show "$VEIL" run -C "$WORK/infer" /app/infer.py
ls -l "$WORK/host/data" | sed 's/^/    /'

say "data owner" "decrypts result.txt"
show as_owner alice "$VEIL" decrypt -i "$WORK/host/data/result.txt" -o "$WORK/results/veil/result.txt"
sed 's/^/  /' "$WORK/results/veil/result.txt"
echo "  true labels: $(tr '\n' ' ' <"$WORK/owner/labels.txt")"

say "data owner" "runs the same inference on the plaintext outside veil and compares"
show "$PYTHON" "$here/app/infer.py" "$WORK/owner"
cp "$WORK/owner/result.txt" "$WORK/results/plain/result.txt"
if cmp -s "$WORK/results/veil/result.txt" "$WORK/results/plain/result.txt"; then
	echo "  identical: the sealed run and the plaintext run agree"
else
	diff "$WORK/results/plain/result.txt" "$WORK/results/veil/result.txt" >&2 || true
	echo "pytorch: results differ" >&2
	exit 1
fi
