package e2e

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/fusefs"
	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/seal"
)

// fileIssuer is what a workload does with /dev/attestation: it writes its
// report data to user_report_data and reads the quote.
type fileIssuer struct{ dir string }

func (f fileIssuer) TEE() attest.TEE {
	b, _ := os.ReadFile(filepath.Join(f.dir, "attestation_type"))
	return attest.TEE(b)
}

func (f fileIssuer) Issue(_ context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	if err := os.WriteFile(filepath.Join(f.dir, "user_report_data"), rd[:], 0); err != nil {
		return nil, err
	}
	q, err := os.ReadFile(filepath.Join(f.dir, "quote"))
	if err != nil {
		return nil, err
	}
	return &attest.Evidence{TEE: f.TEE(), Quote: q}, nil
}

// TestWorkloadQuoteRefusedForKeys: a workload mints RA-TLS certificates
// with quotes from its instance's /dev/attestation (a real FUSE mount) —
// with plain Gramine-style report data and with the runtime's claims
// copied — and asks the key service for a key its instance's measurement
// may have: every one is refused as unverified. The runtime's own
// certificate for the same instance gets the key.
func TestWorkloadQuoteRefusedForKeys(t *testing.T) {
	veiltest.NeedFUSE(t)
	home := t.TempDir()
	p := serveHome(t, home, "--dev", "--data", t.TempDir())
	var enr struct {
		AppID  string `json:"app_id"`
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(must(t, p.env, "", "kms", "enroll", "--name", "carol", "--json")), &enr); err != nil {
		t.Fatal(err)
	}
	carol := merge(p.env, "VEIL_APP_ID", enr.AppID, "VEIL_API_KEY", enr.APIKey)
	must(t, carol, "", "kms", "key", "create", "--name", "carol-cmk")
	var instance [attest.InstanceSize]byte
	copy(instance[:], bytes.Repeat([]byte{0x5a}, 32))
	pol := filepath.Join(t.TempDir(), "policy.json")
	os.WriteFile(pol, []byte(`{"allow_sim": true, "measurements": ["`+hex.EncodeToString(instance[:])+`"], "instance_measurements": ["`+hex.EncodeToString(instance[:])+`"]}`), 0o600)
	must(t, carol, "", "kms", "policy", "create", "--key", "carol-cmk", "--document", pol)
	dir := t.TempDir()
	plain := []byte("carol's data\n")
	os.WriteFile(filepath.Join(dir, "in"), plain, 0o600)
	must(t, carol, "", "encrypt", "--key", "kms:carol-cmk", "-i", filepath.Join(dir, "in"), "-o", filepath.Join(dir, "in.sealed"))
	sealed, _ := os.ReadFile(filepath.Join(dir, "in.sealed"))

	platform, err := sim.Load(filepath.Join(home, "sim"))
	if err != nil {
		t.Fatal(err)
	}
	runtimeIssuer := platform.Issuer(sim.Identity{Measurement: instance})
	mp := t.TempDir()
	srv, err := fusefs.MountAttestation(mp, fusefs.AttestationOptions{Issuer: &attest.WorkloadIssuer{Issuer: runtimeIssuer, Instance: instance}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Unmount()

	ca, _ := os.ReadFile(p.env["VEIL_KMS_CA"])
	open := func(cert *tls.Certificate) ([]byte, error) {
		cl, err := client.New(client.Config{URL: p.env["VEIL_KMS_URL"], CAPEM: ca,
			WorkloadCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }})
		if err != nil {
			t.Fatal(err)
		}
		r, err := seal.NewReader(bytes.NewReader(sealed), &client.Slot{Client: cl}, nil)
		if err != nil {
			return nil, err
		}
		defer r.Close()
		return io.ReadAll(r)
	}
	ctx := context.Background()
	for name, o := range map[string]ratls.Options{
		"gramine-style":         {},
		"runtime claims copied": {Instance: &instance},
	} {
		cert, err := ratls.NewCertificate(ctx, fileIssuer{mp}, o)
		if err != nil {
			t.Fatalf("%s: minting a certificate through /dev/attestation: %v", name, err)
		}
		if _, err := open(cert); !errors.Is(err, client.ErrWorkloadAuth) {
			t.Fatalf("%s: a workload's own certificate: %v; want it refused as workload_unverified", name, err)
		}
	}
	cert, err := ratls.NewCertificate(ctx, runtimeIssuer, ratls.Options{Instance: &instance})
	if err != nil {
		t.Fatal(err)
	}
	if got, err := open(cert); err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("the runtime's certificate: %v", err)
	}
	if out := must(t, p.env, "", "kms", "audit", "list"); !strings.Contains(out, "unverified") && !strings.Contains(out, "denied") {
		t.Logf("audit list:\n%s", out)
	}
}
