package kms_test

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"testing"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/seal"
)

func TestSealSlotAsAppAndWorkload(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	k, _ := bob.CreateKey(ctx, "bob-cmk", "", "")
	dek := bytes.Repeat([]byte{7}, 32)
	binding := []byte("VEILSEAL v1 file-id-1")

	w := &client.Slot{Client: bob, KeyRef: "bob-cmk"}
	sl, err := w.WrapKey(dek, binding)
	if err != nil {
		t.Fatal(err)
	}
	if sl.Kind != "kms" || sl.KeyID != k.ID+"/v1" || len(sl.Wrapped) > seal.MaxWrappedLen || bytes.Contains(sl.Wrapped, dek) {
		t.Fatalf("slot %+v", sl)
	}
	got, err := (&client.Slot{Client: bob}).UnwrapKey(sl, binding)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap as owner: %v", err)
	}
	// Moved to another file: the binding differs.
	if _, err := w.UnwrapKey(sl, []byte("VEILSEAL v1 file-id-2")); !errors.Is(err, client.ErrDecryptFailed) {
		t.Fatalf("other binding: %v", err)
	}
	// Not ours.
	if _, err := w.UnwrapKey(seal.Slot{Kind: "file", KeyID: "x"}, binding); !errors.Is(err, seal.ErrSlotMismatch) {
		t.Fatalf("file slot: %v", err)
	}
	other := &client.Slot{Client: bob, KeyRef: "k_00000000000000000000000000000000"}
	if _, err := other.UnwrapKey(sl, binding); !errors.Is(err, seal.ErrSlotMismatch) {
		t.Fatalf("other key id: %v", err)
	}
	// A slot whose key id was rewritten to point elsewhere does not open.
	forged := sl
	forged.KeyID = "k_11111111111111111111111111111111/v1"
	if _, err := (&client.Slot{Client: bob}).UnwrapKey(forged, binding); !errors.Is(err, client.ErrDecryptFailed) {
		t.Fatalf("forged key id: %v", err)
	}

	// An attested workload unwraps once a policy names it.
	meas := hexString("ab").repeat32()
	bob.CreatePolicy(ctx, "p", json.RawMessage(`{"measurements":["`+meas+`"]}`))
	bob.AttachKeyPolicy(ctx, "bob-cmk", "p")
	cert := workloadCert(t, kms.Workload{TEE: "sim", Measurement: meas})
	wl := s.client(t, client.Config{WorkloadCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
	got, err = (&client.Slot{Client: wl, KeyRef: k.ID}).UnwrapKey(sl, binding)
	if err != nil || !bytes.Equal(got, dek) {
		t.Fatalf("unwrap as workload: %v", err)
	}
}
