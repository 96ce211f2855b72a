package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/veil-tee/veil/seal"
)

// kmsKind seals data keys into slots of the key service's kind, without a
// key service: enough for veil to try them.
type kmsKind struct{}

func (kmsKind) WrapKey(dek, binding []byte) (seal.Slot, error) {
	return seal.Slot{Kind: "kms", KeyID: "k1v1", Wrapped: bytes.Repeat([]byte{1}, 60)}, nil
}

// TestCLIKMSSlotErrors: a key service that is configured but cannot be
// used is reported as what it is (exit 1, with a hint to fix the
// settings), not as "no key slot opens" (exit 3); without any key service
// the file's kms slot is that.
func TestCLIKMSSlotErrors(t *testing.T) {
	dir := t.TempDir()
	f, err := os.Create(filepath.Join(dir, "data.sealed"))
	if err != nil {
		t.Fatal(err)
	}
	w, err := seal.NewWriter(f, nil, kmsKind{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("secret"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, k := range []string{"VEIL_KMS_URL", "VEIL_KMS_CA", "VEIL_KMS_PROFILE"} {
		t.Setenv(k, "")
	}

	r := veil(t, dir, nil, "decrypt", "-i", "data.sealed", "-o", "out")
	if r.code != ExitIntegrity || !bytes.Contains(r.stderr, []byte("no key slot opens")) || !bytes.Contains(r.stderr, []byte("sealed under key service key k1v1")) {
		t.Errorf("no key service: exit %d, %s", r.code, r.stderr)
	}

	t.Setenv("VEIL_KMS_URL", "https://127.0.0.1:1")
	t.Setenv("VEIL_KMS_CA", filepath.Join(dir, "missing-ca.pem"))
	r = veil(t, dir, nil, "decrypt", "-i", "data.sealed", "-o", "out")
	if r.code != ExitFailure || bytes.Contains(r.stderr, []byte("no key slot opens")) ||
		!bytes.Contains(r.stderr, []byte("missing-ca.pem")) || !bytes.Contains(r.stderr, []byte("VEIL_KMS_CA")) {
		t.Errorf("unreadable CA file: exit %d, %s", r.code, r.stderr)
	}

	// A key service that does not answer: the connection error, exit 1.
	t.Setenv("VEIL_KMS_CA", "")
	r = veil(t, dir, nil, "decrypt", "-i", "data.sealed", "-o", "out")
	if r.code != ExitFailure || bytes.Contains(r.stderr, []byte("no key slot opens")) {
		t.Errorf("unreachable key service: exit %d, %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out")); !os.IsNotExist(err) {
		t.Error("output left behind")
	}
}
