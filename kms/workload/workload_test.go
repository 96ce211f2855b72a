package workload

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/kms"
)

// platform makes a sim platform in a temporary directory.
func platform(t *testing.T) *sim.Platform {
	t.Helper()
	p, _, err := sim.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// runtimeCert is the certificate the runtime presents for a workload with
// measurement m on platform p.
func runtimeCert(t *testing.T, p *sim.Platform, m byte) *x509.Certificate {
	t.Helper()
	var id sim.Identity
	id.Measurement[0] = m
	id.Signer[0] = 0x5e
	id.ProductID, id.SVN = 7, 3
	c, err := ratls.NewCertificate(context.Background(), p.Issuer(id), ratls.Options{Instance: &id.Measurement})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

func trusting(t *testing.T, p *sim.Platform) *Verifier {
	t.Helper()
	// The platform's CA, as --sim-ca names it.
	dir := t.TempDir()
	if err := writePEM(dir+"/ca.pem", p.CA.Raw); err != nil {
		t.Fatal(err)
	}
	wv, _, err := New(Trust{SimCA: dir + "/ca.pem"})
	if err != nil {
		t.Fatal(err)
	}
	return wv
}

func TestVerifyPeerRuntimeCertificate(t *testing.T) {
	p := platform(t)
	w, err := trusting(t, p).VerifyPeer([]*x509.Certificate{runtimeCert(t, p, 0xaa)})
	if err != nil {
		t.Fatal(err)
	}
	want := "aa" + strings.Repeat("00", 31)
	if w.TEE != string(attest.TEESim) || w.Measurement != want || w.ProductID != 7 || w.SVN != 3 || w.Claims == nil {
		t.Fatalf("workload = %+v; want tee sim, measurement %s, product 7, svn 3, claims", w, want)
	}
	if !strings.HasPrefix(w.Signer, "5e") {
		t.Fatalf("signer %s", w.Signer)
	}
}

// A certificate whose evidence comes from a platform the service does not
// trust must not authenticate, whatever identity it claims.
func TestVerifyPeerRefusesUntrustedPlatform(t *testing.T) {
	trusted, other := platform(t), platform(t)
	_, err := trusting(t, trusted).VerifyPeer([]*x509.Certificate{runtimeCert(t, other, 0xaa)})
	if err == nil {
		t.Fatal("evidence from an untrusted sim platform was accepted")
	}
}

// Evidence a workload asks for itself (no runtime instance claim) is not
// the runtime's word about which instance runs: refused.
func TestVerifyPeerRefusesWorkloadEvidence(t *testing.T) {
	p := platform(t)
	var id sim.Identity
	id.Measurement[0] = 0xaa
	c, err := ratls.NewCertificate(context.Background(), p.Issuer(id), ratls.Options{})
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(c.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := trusting(t, p).VerifyPeer([]*x509.Certificate{leaf}); !errors.Is(err, attest.ErrBinding) {
		t.Fatalf("workload-requested evidence: err = %v; want attest.ErrBinding", err)
	}
}

func TestVerifyPeerRefusesPlainCertificate(t *testing.T) {
	p := platform(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "workload"},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	v := trusting(t, p)
	if _, err := v.VerifyPeer([]*x509.Certificate{leaf}); !errors.Is(err, ratls.ErrNotRATLS) {
		t.Fatalf("plain certificate: err = %v; want ratls.ErrNotRATLS", err)
	}
	if _, err := v.VerifyPeer(nil); err == nil {
		t.Fatal("no certificate: accepted")
	}
}

func TestPolicies(t *testing.T) {
	p := platform(t)
	w, err := trusting(t, p).VerifyPeer([]*x509.Certificate{runtimeCert(t, p, 0xaa)})
	if err != nil {
		t.Fatal(err)
	}
	pin := func(m string, allowSim bool) []byte {
		return fmt.Appendf(nil, `{"measurements":[%q],"allow_sim":%v}`, m, allowSim)
	}
	other := hex.EncodeToString(make([]byte, 32))
	var pol Policies
	if ok, unmet := pol.Evaluate(pin(w.Measurement, true), w); !ok {
		t.Fatalf("matching policy refused: %v", unmet)
	}
	if ok, unmet := pol.Evaluate(pin(other, true), w); ok || len(unmet) == 0 {
		t.Fatalf("policy for another measurement: ok=%v unmet=%v", ok, unmet)
	}
	if ok, unmet := pol.Evaluate(pin(w.Measurement, false), w); ok || !strings.HasPrefix(strings.Join(unmet, ";"), "allow_sim:") {
		t.Fatalf("sim evidence without allow_sim: ok=%v unmet=%v", ok, unmet)
	}
	// A workload whose claims were not verified satisfies nothing, even a
	// policy its summary fields match.
	forged := kms.Workload{TEE: w.TEE, Measurement: w.Measurement}
	if ok, unmet := pol.Evaluate(pin(w.Measurement, true), forged); ok || unmet[0] != "claims: the workload's evidence was not verified" {
		t.Fatalf("unverified workload: ok=%v unmet=%v", ok, unmet)
	}
	if err := pol.ValidatePolicy([]byte(`{"measurements":["zz"]}`)); err == nil {
		t.Fatal("invalid policy validated")
	}
	if ok, unmet := pol.Evaluate([]byte(`{`), w); ok || !strings.HasPrefix(unmet[0], "policy: ") {
		t.Fatalf("unparsable policy: ok=%v unmet=%v", ok, unmet)
	}
}

func TestEvidenceVerifierErrors(t *testing.T) {
	if _, err := (Trust{SimCA: t.TempDir() + "/missing.pem"}).EvidenceVerifier(); err == nil {
		t.Fatal("missing --sim-ca file accepted")
	}
	if _, err := (Trust{Collateral: t.TempDir() + "/missing"}).EvidenceVerifier(); err == nil || !strings.HasPrefix(err.Error(), "loading collateral: ") {
		t.Fatalf("missing collateral: %v", err)
	}
}

func writePEM(path string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
