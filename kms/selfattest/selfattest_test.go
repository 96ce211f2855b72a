package selfattest

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/tsm"
	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/kms"
)

func devCert(t *testing.T) (*tls.Certificate, []byte) {
	t.Helper()
	dc, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	c, err := tls.X509KeyPair(dc.CertPEM, dc.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return &c, leaf.RawSubjectPublicKeyInfo
}

func nonce(t *testing.T) []byte {
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSimEvidenceBindsKeyNonceAndBinary(t *testing.T) {
	if tsm.Available() {
		veiltest.Skip(t, "configfs-tsm is available: the service would use it, not the sim platform")
	}
	simDir := t.TempDir()
	p, _, err := sim.Init(simDir)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "veil")
	if err := os.WriteFile(bin, []byte("a key service binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	cert, spki := devCert(t)
	src, m, tee, err := New(cert, Options{SimDir: simDir, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	want := sha256.Sum256([]byte("a key service binary"))
	if tee != attest.TEESim || !bytes.Equal(m, want[:]) {
		t.Fatalf("tee %s measurement %x; want sim %x", tee, m, want)
	}
	ctx := context.Background()
	n := nonce(t)
	a, err := src(ctx, n)
	if err != nil {
		t.Fatal(err)
	}
	if a.TEE != string(attest.TEESim) {
		t.Fatalf("attestation TEE %q", a.TEE)
	}
	peer := &ratls.Peer{Verifier: sim.NewVerifier(p.CA), DeferPolicy: true}
	c, err := peer.VerifyKeyBinding(ctx, a.Evidence, spki, n)
	if err != nil {
		t.Fatalf("the service's own evidence does not verify: %v", err)
	}
	if !bytes.Equal(c.Measurement, want[:]) {
		t.Fatalf("claims measurement %x, want %x", c.Measurement, want)
	}
	// An impostor replaying this evidence on another TLS key, or for
	// another client's nonce, is refused.
	_, otherSPKI := devCert(t)
	if _, err := peer.VerifyKeyBinding(ctx, a.Evidence, otherSPKI, n); err == nil {
		t.Fatal("evidence accepted for another TLS key")
	}
	if _, err := peer.VerifyKeyBinding(ctx, a.Evidence, spki, nonce(t)); !errors.Is(err, ratls.ErrStale) {
		t.Fatalf("evidence for another nonce: err = %v; want ratls.ErrStale", err)
	}
}

func TestNoPlatform(t *testing.T) {
	if tsm.Available() {
		veiltest.Skip(t, "configfs-tsm is available: there is always a platform")
	}
	cert, _ := devCert(t)
	_, _, _, err := New(cert, Options{SimDir: filepath.Join(t.TempDir(), "none")})
	if !errors.Is(err, ErrNoPlatform) {
		t.Fatalf("err = %v; want ErrNoPlatform", err)
	}
}
