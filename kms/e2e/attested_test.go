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

	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/kms/client"
	"github.com/veil-tee/veil/seal"
)

// TestAttestedWorkloadUnwrap: the owner seals a file under a KMS key whose
// policy names a measurement; a sim workload with that measurement opens it
// over RA-TLS, one with another measurement is denied with the reason.
func TestAttestedWorkloadUnwrap(t *testing.T) {
	home := t.TempDir()
	p := serveHome(t, home, "--dev", "--data", t.TempDir())
	var enr struct {
		AppID  string `json:"app_id"`
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(must(t, p.env, "", "kms", "enroll", "--name", "bob", "--json")), &enr); err != nil {
		t.Fatal(err)
	}
	bob := merge(p.env, "VEIL_APP_ID", enr.AppID, "VEIL_API_KEY", enr.APIKey)
	must(t, bob, "", "kms", "key", "create", "--name", "bob-cmk")
	// The developer builds an instance; its identity becomes the policy.
	app := filepath.Join(t.TempDir(), "app")
	must(t, nil, "", "new", app)
	os.MkdirAll(filepath.Join(app, "image", "app"), 0o755)
	os.WriteFile(filepath.Join(app, "image", "app", "job.py"), []byte("print('job')\n"), 0o644)
	signKey := filepath.Join(t.TempDir(), "sign.pem")
	must(t, nil, "", "gen-sign-key", signKey)
	must(t, nil, "", "build", "-C", app, "--sign-key", signKey)
	good, _ := hex.DecodeString(strings.TrimSpace(must(t, nil, "", "print", "-C", app, "mrenclave")))
	signer, _ := hex.DecodeString(strings.TrimSpace(must(t, nil, "", "print", "-C", app, "mrsigner")))
	if len(good) != 32 || len(signer) != 32 {
		t.Fatalf("veil print: %x %x", good, signer)
	}
	must(t, bob, "", "kms", "policy", "create", "--key", "bob-cmk", "--allow-sim", "--from-instance", app)

	dir := t.TempDir()
	plain := []byte("name,age,job\nbob,30,engineer\n")
	os.WriteFile(filepath.Join(dir, "people.csv"), plain, 0o600)
	must(t, bob, "", "encrypt", "--key", "kms:bob-cmk", "-i", filepath.Join(dir, "people.csv"), "-o", filepath.Join(dir, "people.sealed"))
	sealed, _ := os.ReadFile(filepath.Join(dir, "people.sealed"))

	platform, err := sim.Load(filepath.Join(home, "sim"))
	if err != nil {
		t.Fatalf("the --dev server did not create the local sim platform: %v", err)
	}
	ca, _ := os.ReadFile(p.env["VEIL_KMS_CA"])
	open := func(measurement []byte) ([]byte, error) {
		var id sim.Identity
		copy(id.Measurement[:], measurement)
		copy(id.Signer[:], signer)
		cert, err := ratls.NewCertificate(context.Background(), platform.Issuer(id), ratls.Options{Instance: &id.Measurement})
		if err != nil {
			t.Fatal(err)
		}
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
	got, err := open(good)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("workload with the policy's measurement: %v", err)
	}
	_, err = open(bytes.Repeat([]byte{0x33}, 32))
	if !errors.Is(err, client.ErrPolicyDenied) || !strings.Contains(err.Error(), "measurement") {
		t.Fatalf("workload with another measurement: %v; want policy_denied naming the measurement", err)
	}
	// The denial is in the audit log, and the log verifies.
	if out := must(t, p.env, "", "kms", "audit", "list"); !strings.Contains(out, "denied") {
		t.Fatalf("audit list shows no denial:\n%s", out)
	}
	must(t, p.env, "", "kms", "audit", "verify")
}
