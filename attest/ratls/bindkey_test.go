package ratls

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/veil-tee/veil/attest"
)

func newSPKI(t *testing.T) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func newNonce(t *testing.T) []byte {
	n := make([]byte, nonceSize)
	rand.Read(n)
	return n
}

// TestKeyBinding: evidence from BindKey is accepted for exactly the key
// and the challenge it was issued for, and only under a policy it meets.
func TestKeyBinding(t *testing.T) {
	ctx := context.Background()
	_, iss, v := setup(t)
	spki, nonce := newSPKI(t), newNonce(t)
	ev, err := BindKey(ctx, iss, spki, nonce)
	if err != nil {
		t.Fatal(err)
	}
	good := &Peer{Verifier: v, Policy: &attest.Policy{AllowSim: true, AllowDebug: true, Measurements: []attest.Hex{measurement(0x42)}}}
	c, err := good.VerifyKeyBinding(ctx, ev, spki, nonce)
	if err != nil {
		t.Fatalf("genuine binding refused: %v", err)
	}
	if c.Measurement[0] != 0x42 {
		t.Fatalf("claims %+v", c)
	}

	// A relay: another server (another key) passes on the genuine
	// service's evidence for the client's challenge.
	if _, err := good.VerifyKeyBinding(ctx, ev, newSPKI(t), nonce); !errors.Is(err, attest.ErrBinding) {
		t.Fatalf("evidence of another key: %v, want ErrBinding", err)
	}
	// A replay: an answer recorded for an earlier challenge.
	if _, err := good.VerifyKeyBinding(ctx, ev, spki, newNonce(t)); !errors.Is(err, ErrStale) {
		t.Fatalf("evidence for another nonce: %v, want ErrStale", err)
	}
	// A service in another TEE identity.
	other := &Peer{Verifier: v, Policy: &attest.Policy{AllowSim: true, AllowDebug: true, Measurements: []attest.Hex{measurement(0x43)}}}
	if _, err := other.VerifyKeyBinding(ctx, ev, spki, nonce); !errors.Is(err, attest.ErrDenied) {
		t.Fatalf("wrong measurement: %v, want ErrDenied", err)
	}
	// A platform the client does not trust.
	_, _, stranger := setup(t)
	if _, err := (&Peer{Verifier: stranger, Policy: good.Policy}).VerifyKeyBinding(ctx, ev, spki, nonce); err == nil {
		t.Fatal("evidence from an untrusted platform accepted")
	}
	// Any flipped byte of the evidence is refused.
	for i := 0; i < len(ev); i += 7 {
		bad := append([]byte(nil), ev...)
		bad[i] ^= 0x01
		if _, err := good.VerifyKeyBinding(ctx, bad, spki, nonce); err == nil {
			t.Fatalf("evidence with byte %d flipped accepted", i)
		}
	}
	if _, err := BindKey(ctx, iss, spki, []byte("short")); err == nil {
		t.Fatal("BindKey accepted a short nonce")
	}
}
