package kms_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"testing"

	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/client"
)

func parsePub(t *testing.T, p string) crypto.PublicKey {
	t.Helper()
	b, _ := pem.Decode([]byte(p))
	if b == nil {
		t.Fatal("no PEM public key")
	}
	k, err := x509.ParsePKIXPublicKey(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestAsymmetricKeys(t *testing.T) {
	s := newServer(t, false)
	bob, _ := s.app(t, "bob")
	alice, _ := s.app(t, "alice")
	msg := []byte("release notes v1")
	d := sha256.Sum256(msg)

	ec, err := bob.CreateKey(ctx, "signing", api.SpecECP256, "")
	if err != nil {
		t.Fatal(err)
	}
	sig, err := bob.Sign(ctx, "signing", msg)
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := bob.PublicKey(ctx, ec.ID, 0)
	if !ecdsa.VerifyASN1(parsePub(t, pub.PublicKey).(*ecdsa.PublicKey), d[:], sig.Signature) {
		t.Fatal("EC signature does not verify with the public key")
	}
	if v, err := bob.Verify(ctx, "signing", msg, sig.Signature, 0); err != nil || !v.Valid {
		t.Fatalf("verify: %+v %v", v, err)
	}
	if v, _ := bob.Verify(ctx, "signing", []byte("other"), sig.Signature, 0); v.Valid {
		t.Fatal("signature valid for another message")
	}
	// Rotation: old signatures still verify against their version.
	bob.KeyAction(ctx, "signing", "rotate")
	if v, err := bob.Verify(ctx, "signing", msg, sig.Signature, 1); err != nil || !v.Valid {
		t.Fatalf("verify v1 after rotate: %+v %v", v, err)
	}
	if v, _ := bob.Verify(ctx, "signing", msg, sig.Signature, 0); v.Valid || v.KeyVersion != 2 {
		t.Fatalf("v2 verified a v1 signature: %+v", v)
	}
	// Symmetric operations are refused on signing keys, and the reverse.
	if _, err := bob.Encrypt(ctx, "signing", []byte("x"), nil); !errors.Is(err, client.Code("invalid_state")) {
		t.Fatalf("encrypt with EC key: %v", err)
	}
	bob.CreateKey(ctx, "aes", "", "")
	if _, err := bob.Sign(ctx, "aes", msg); !errors.Is(err, client.Code("invalid_state")) {
		t.Fatalf("sign with AES key: %v", err)
	}
	// Another app cannot sign with bob's key.
	if _, err := alice.Sign(ctx, ec.ID, msg); !errors.Is(err, client.ErrKeyNotFound) {
		t.Fatalf("alice signs: %v", err)
	}

	if testing.Short() {
		t.Skip("RSA-3072 key generation skipped in -short")
	}
	rk, err := bob.CreateKey(ctx, "rsa", api.SpecRSA3072, "")
	if err != nil {
		t.Fatal(err)
	}
	pub, _ = bob.PublicKey(ctx, rk.ID, 0)
	rpub := parsePub(t, pub.PublicKey).(*rsa.PublicKey)
	if rpub.N.BitLen() != 3072 {
		t.Fatalf("RSA modulus %d bits", rpub.N.BitLen())
	}
	sig, err = bob.Sign(ctx, "rsa", msg)
	if err != nil {
		t.Fatal(err)
	}
	if err := rsa.VerifyPSS(rpub, crypto.SHA256, d[:], sig.Signature, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}); err != nil {
		t.Fatalf("PSS signature: %v", err)
	}
	ct, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, rpub, []byte("wrapped secret"), nil)
	if pt, err := bob.AsymmetricDecrypt(ctx, "rsa", ct, 0); err != nil || string(pt.Plaintext) != "wrapped secret" {
		t.Fatalf("asymmetric decrypt: %v", err)
	}
	ct[10] ^= 1
	if _, err := bob.AsymmetricDecrypt(ctx, "rsa", ct, 0); !errors.Is(err, client.ErrDecryptFailed) {
		t.Fatalf("tampered OAEP: %v", err)
	}
	if _, err := bob.AsymmetricDecrypt(ctx, "signing", ct, 0); !errors.Is(err, client.Code("invalid_state")) {
		t.Fatalf("OAEP with EC key: %v", err)
	}
}
