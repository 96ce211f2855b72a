package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/kms/secretprov"
)

// TestGramineSecretProvisioning: `veil kms serve --secret-prov-listen`
// sends an app's secret to a sim enclave its policy names, over Gramine's
// protocol, and refuses (and audits) an enclave with another measurement.
func TestGramineSecretProvisioning(t *testing.T) {
	home, data := t.TempDir(), t.TempDir()
	p := serveHome(t, home, "--dev", "--data", data)
	var enr struct {
		AppID  string `json:"app_id"`
		APIKey string `json:"api_key"`
	}
	if err := json.Unmarshal([]byte(must(t, p.env, "", "kms", "enroll", "--name", "gramine", "--json")), &enr); err != nil {
		t.Fatal(err)
	}
	app := merge(p.env, "VEIL_APP_ID", enr.AppID, "VEIL_API_KEY", enr.APIKey)
	key := []byte("00112233445566778899aabbccddeeff\x00")
	file := filepath.Join(t.TempDir(), "wrap-key.secret")
	if err := os.WriteFile(file, key, 0o600); err != nil {
		t.Fatal(err)
	}
	var sec struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal([]byte(must(t, app, "", "kms", "secret", "put", "wrap-key", "--file", file, "--json")), &sec); err != nil {
		t.Fatal(err)
	}
	good := bytes.Repeat([]byte{0x5e}, 32)
	must(t, app, "", "kms", "policy", "create", "--allow-sim", "--mrenclave", hex.EncodeToString(good), "--secret", "wrap-key")
	p.stop(t)

	if _, errs, code := run(t, nil, "", "kms", "serve", "--dev", "--data", data, "--secret-prov-listen", "127.0.0.1:0"); code != 2 || !strings.Contains(errs, "--secret-prov-secret") {
		t.Fatalf("--secret-prov-listen alone: exit %d\n%s", code, errs)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	p = serveHome(t, home, "--dev", "--data", data, "--secret-prov-listen", addr, "--secret-prov-secret", sec.ID)
	defer p.stop(t)

	platform, err := sim.Load(filepath.Join(home, "sim"))
	if err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(p.env["VEIL_KMS_CA"])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	fetch := func(m []byte) ([]byte, error) {
		var id sim.Identity
		copy(id.Measurement[:], m)
		cert, err := ratls.NewCertificate(context.Background(), platform.Issuer(id), ratls.Options{})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return secretprov.Fetch(ctx, addr, "127.0.0.1", roots, *cert)
	}
	got, err := fetch(good)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("enclave the policy names: %q, %v\n%s", got, err, p.stderr)
	}
	if got, err := fetch(bytes.Repeat([]byte{0x33}, 32)); err == nil {
		t.Fatalf("enclave with another measurement received %q", got)
	}
	out := must(t, p.env, "", "kms", "audit", "list")
	if !strings.Contains(out, "denied") || !strings.Contains(out, "policy_denied") {
		t.Fatalf("audit list shows no policy denial:\n%s", out)
	}
	must(t, p.env, "", "kms", "audit", "verify")
}
