package pcs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
)

func TestEmbeddedRoot(t *testing.T) {
	sum := sha256.Sum256(IntelRootCA().Raw)
	if hex.EncodeToString(sum[:]) != "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3" {
		t.Fatalf("embedded root fingerprint %x", sum)
	}
}

func TestLoadDirGarbage(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x.json"), []byte(`{"tcbInfo": {"id": "SGX", "bogus": 1}, "signature": "00"}`), 0o644)
	if _, err := LoadDir(dir); !errors.Is(err, attest.ErrCollateral) {
		t.Fatalf("garbage TCB info: %v", err)
	}
	dir2 := t.TempDir()
	os.WriteFile(filepath.Join(dir2, "notes.txt"), []byte("hello"), 0o644)
	if _, err := LoadDir(dir2); !errors.Is(err, attest.ErrCollateral) {
		t.Fatalf("no collateral: %v", err)
	}
}

func TestLoadDirRecognisesByContent(t *testing.T) {
	dir := t.TempDir()
	names := map[string]string{"a": "tcb_info_v3_fmspc_00606A000000.json", "b": "qe_identity_v2.json", "c": "tcb_info_v3_fmspc_00606A000000_certs.pem", "d": "quote_v3_ecdsa_p256_pck_chain.bin"}
	for dst, src := range names {
		b, err := os.ReadFile(filepath.Join("../testdata/sgx", src))
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(filepath.Join(dir, dst), b, 0o644)
	}
	c, err := LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.TCBInfos) != 1 || len(c.QEIdentities) != 1 || len(c.SigningChain) != 2 || len(c.Skipped) != 1 || c.Skipped[0] != "d" {
		t.Fatalf("%+v", c)
	}
}

func TestCRLRevocation(t *testing.T) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	now := time.Now()
	caT := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "Test Root CA"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caT, caT, &caKey.PublicKey, caKey)
	ca, _ := x509.ParseCertificate(caDER)
	leafKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	lT := &x509.Certificate{SerialNumber: big.NewInt(77), Subject: pkix.Name{CommonName: "Test PCK Certificate"}, NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour)}
	lDER, _ := x509.CreateCertificate(rand.Reader, lT, ca, &leafKey.PublicKey, caKey)
	leaf, _ := x509.ParseCertificate(lDER)
	mk := func(serials ...int64) *x509.RevocationList {
		var ents []x509.RevocationListEntry
		for _, s := range serials {
			ents = append(ents, x509.RevocationListEntry{SerialNumber: big.NewInt(s), RevocationTime: now.Add(-time.Minute)})
		}
		der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(1), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour), RevokedCertificateEntries: ents}, ca, caKey)
		if err != nil {
			t.Fatal(err)
		}
		crl, _ := x509.ParseRevocationList(der)
		return crl
	}
	o := &Options{Now: now, Roots: []*x509.Certificate{ca}}
	if err := VerifyChain("PCK certificate", []*x509.Certificate{leaf, ca}, o); err != nil {
		t.Fatal(err)
	}
	if err := CheckRevoked("PCK certificate", leaf, mk(5), o, ca); err != nil {
		t.Fatalf("not revoked: %v", err)
	}
	if err := CheckRevoked("PCK certificate", leaf, mk(5, 77), o, ca); !errors.Is(err, attest.ErrChain) {
		t.Fatalf("revoked: %v", err)
	}
	o.Now = now.Add(2 * time.Hour)
	var ve *ValidityError
	if err := CheckRevoked("PCK certificate", leaf, mk(5), o, ca); !errors.As(err, &ve) || !ve.Expired {
		t.Fatalf("stale CRL: %v", err)
	}
	// A CRL signed by another key is refused.
	o.Now = now
	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, _ := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{Number: big.NewInt(2), ThisUpdate: now.Add(-time.Hour), NextUpdate: now.Add(time.Hour)}, ca, other)
	forged, _ := x509.ParseRevocationList(der)
	if err := CheckRevoked("PCK certificate", leaf, forged, o, ca); !errors.Is(err, attest.ErrCollateral) {
		t.Fatalf("forged CRL: %v", err)
	}
}

func FuzzCollateralAdd(f *testing.F) {
	for _, n := range []string{"tcb_info_v3_fmspc_00606A000000.json", "qe_identity_v2.json", "tcb_info_v3_fmspc_00606A000000_certs.pem"} {
		b, err := os.ReadFile(filepath.Join("../testdata/sgx", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var c Collateral
		_, _ = c.Add("fuzz", b)
	})
}

// BenchmarkP256Verify is the floor for quote verification: one ECDSA
// P-256 signature check (SGX needs two per quote once collateral and the
// PCK chain are cached, TDX four).
func BenchmarkP256Verify(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	msg := make([]byte, 432)
	d := sha256.Sum256(msg)
	r, s, _ := ecdsa.Sign(rand.Reader, k, d[:])
	sig := append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...)
	for b.Loop() {
		if !VerifyP256(&k.PublicKey, msg, sig) {
			b.Fatal("verify failed")
		}
	}
}
