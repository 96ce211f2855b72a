package secretprov_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/ratls"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/verifier"
	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/api"
	"github.com/veil-tee/veil/kms/audit"
	"github.com/veil-tee/veil/kms/secretprov"
	"github.com/veil-tee/veil/kms/store"
	"github.com/veil-tee/veil/kms/workload"
)

// wrapKey is what a Gramine workload's SECRET_PROVISION_SET_KEY expects:
// a 128-bit key in hex, NUL-terminated.
var wrapKey = []byte("00112233445566778899aabbccddeeff\x00")

// fixture is an unsealed key service with one app that owns the secret
// "wrap-key" under the release policy doc.
type fixture struct {
	svc    *kms.Service
	admin  kms.Caller
	secret string
}

func newFixture(t *testing.T, doc string) *fixture {
	t.Helper()
	ctx := context.Background()
	st, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	res, err := kms.Initialize(ctx, st, kms.ModeDev, 0, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kms.New(ctx, kms.Options{Store: st, Evaluator: workload.Policies{}, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(svc.Close)
	if err := svc.UnsealWithRootKey(res.RootKey); err != nil {
		t.Fatal(err)
	}
	admin, err := svc.AuthenticateAdmin(ctx, res.AdminToken)
	if err != nil {
		t.Fatal(err)
	}
	enr, err := svc.Enroll(ctx, admin, api.EnrollRequest{Name: "gramine-app"})
	if err != nil {
		t.Fatal(err)
	}
	app := kms.Caller{Kind: kms.KindApp, AppID: enr.AppID}
	pol, err := svc.CreatePolicy(ctx, app, api.CreatePolicyRequest{Name: "enclave", Document: json.RawMessage(doc)})
	if err != nil {
		t.Fatal(err)
	}
	sec, err := svc.PutSecret(ctx, app, "wrap-key", api.PutSecretRequest{Value: wrapKey})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.SetSecretPolicy(ctx, app, sec.ID, pol.ID, true); err != nil {
		t.Fatal(err)
	}
	return &fixture{svc: svc, admin: admin, secret: sec.ID}
}

// serve starts a secret-provisioning listener on loopback; refusals are
// delivered on the returned channel.
func (f *fixture) serve(t *testing.T, v kms.WorkloadVerifier) (addr string, roots *x509.CertPool, refused <-chan error) {
	t.Helper()
	cert, roots := serverCert(t)
	ch := make(chan error, 4)
	srv, err := secretprov.New(secretprov.Options{
		Service: f.svc, Verifier: v, Secret: f.secret, Certificate: cert,
		Logger: slog.New(slog.DiscardHandler), Timeout: 10 * time.Second,
		Refused: func(err error) { ch <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return ln.Addr().String(), roots, ch
}

// lastAudit returns the newest audit entry.
func (f *fixture) lastAudit(t *testing.T) audit.Entry {
	t.Helper()
	page, err := f.svc.AuditEntries(context.Background(), f.admin, "", 0, 1000)
	if err != nil || len(page.Entries) == 0 {
		t.Fatalf("audit: %d entries, %v", len(page.Entries), err)
	}
	var e audit.Entry
	if err := json.Unmarshal(page.Entries[len(page.Entries)-1], &e); err != nil {
		t.Fatal(err)
	}
	return e
}

// serverCert makes the server's self-signed certificate for 127.0.0.1 and
// the pool that trusts it (Gramine's SECRET_PROVISION_CA_CHAIN_PATH).
func serverCert(t *testing.T) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "veil kms"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	pool := x509.NewCertPool()
	pool.AddCert(c)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pool
}

// gramineClient is the enclave's side written from the protocol, byte
// for byte, independently of the package's wire code, over TLS 1.2 as
// Gramine's mbedTLS speaks it.
func gramineClient(addr string, roots *x509.CertPool, cert tls.Certificate) ([]byte, error) {
	raw, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
	conn := tls.Client(raw, &tls.Config{RootCAs: roots, ServerName: "127.0.0.1",
		MinVersion: tls.VersionTLS12, MaxVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}})
	if _, err := conn.Write([]byte("SECRET_PROVISION_RA_TLS_REQUEST_V1\x00")); err != nil {
		return nil, err
	}
	hdr := make([]byte, 37+4)
	if _, err := io.ReadFull(conn, hdr); err != nil {
		return nil, err
	}
	if string(hdr[:37]) != "SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00" {
		return nil, fmt.Errorf("response header %q", hdr[:37])
	}
	secret := make([]byte, binary.BigEndian.Uint32(hdr[37:]))
	if _, err := io.ReadFull(conn, secret); err != nil {
		return nil, err
	}
	return secret, nil
}

func simEnclave(t *testing.T) (cert tls.Certificate, v kms.WorkloadVerifier, measurement string) {
	t.Helper()
	p, _, err := sim.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var id sim.Identity
	id.Measurement[0], id.Measurement[31] = 0x6a, 0x11
	c, err := ratls.NewCertificate(context.Background(), p.Issuer(id), ratls.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return *c, workload.NewEnclaveVerifier(attest.Multi{attest.TEESim: sim.NewVerifier(p.CA)}, nil), hex.EncodeToString(id.Measurement[:])
}

// TestSimEnclaveGetsSecret: an enclave with sim evidence that the secret's
// policy names receives the secret, both through the byte-level Gramine
// client (TLS 1.2) and through Fetch; the release is audited as granted.
func TestSimEnclaveGetsSecret(t *testing.T) {
	cert, v, m := simEnclave(t)
	f := newFixture(t, `{"allow_sim": true, "measurements": ["`+m+`"]}`)
	addr, roots, refused := f.serve(t, v)
	got, err := gramineClient(addr, roots, cert)
	if err != nil {
		t.Fatalf("Gramine client: %v (refusal: %v)", err, pending(refused))
	}
	if !bytes.Equal(got, wrapKey) {
		t.Fatalf("secret %q, want %q", got, wrapKey)
	}
	if e := f.lastAudit(t); e.Op != "secret.get" || e.Result != audit.Granted || e.Secret != f.secret || e.Actor.Kind != kms.KindWorkload || e.Actor.Workload == nil || e.Actor.Workload.Measurement != m {
		t.Errorf("audit entry %+v, want a granted secret.get of %s by the enclave", e, f.secret)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	got, err = secretprov.Fetch(ctx, addr, "127.0.0.1", roots, cert)
	if err != nil || !bytes.Equal(got, wrapKey) {
		t.Fatalf("Fetch: %q, %v", got, err)
	}
}

// TestPolicyMismatchRefused: the same enclave asks for a secret whose
// policy names another measurement: no secret is sent, and the refusal is
// the key service's policy denial, audited.
func TestPolicyMismatchRefused(t *testing.T) {
	cert, v, _ := simEnclave(t)
	f := newFixture(t, `{"allow_sim": true, "measurements": ["`+strings.Repeat("ab", 32)+`"]}`)
	addr, roots, refused := f.serve(t, v)
	got, err := gramineClient(addr, roots, cert)
	if err == nil {
		t.Fatalf("an enclave the policy does not name received %q", got)
	}
	if r := pending(refused); !errors.Is(r, kms.ErrPolicyDenied) {
		t.Fatalf("refusal %v, want policy_denied", r)
	}
	if e := f.lastAudit(t); e.Op != "secret.get" || e.Result != audit.Denied || e.Secret != f.secret || !strings.HasPrefix(e.Reason, "policy_denied") {
		t.Errorf("audit entry %+v, want a denied secret.get of %s", e, f.secret)
	}
}

// TestCertificateWithoutEvidenceRefused: an ordinary client certificate
// (no RA-TLS evidence) gets nothing, and the refusal is audited.
func TestCertificateWithoutEvidenceRefused(t *testing.T) {
	_, v, m := simEnclave(t)
	f := newFixture(t, `{"allow_sim": true, "measurements": ["`+m+`"]}`)
	addr, roots, refused := f.serve(t, v)
	plain, _ := serverCert(t)
	if got, err := gramineClient(addr, roots, plain); err == nil {
		t.Fatalf("a client without evidence received %q", got)
	}
	if r := pending(refused); !errors.Is(r, ratls.ErrNotRATLS) {
		t.Fatalf("refusal %v, want %v", r, ratls.ErrNotRATLS)
	}
	if e := f.lastAudit(t); e.Result != audit.Denied || !strings.HasPrefix(e.Reason, "workload_unverified") {
		t.Errorf("audit entry %+v, want a denied workload_unverified", e)
	}
}

func pending(ch <-chan error) error {
	select {
	case err := <-ch:
		return err
	case <-time.After(10 * time.Second):
		return errors.New("no refusal reported")
	}
}

// dcapDir finds the captured SGX DCAP quote and its collateral in the
// shared test data beside the repository.
func dcapDir(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs(".")
	for range 8 {
		dir = filepath.Dir(dir)
		p := filepath.Join(dir, "shared", "testdata", "attestation", "sgx-dcap-v3")
		if _, err := os.Stat(filepath.Join(p, "quote_v3_ecdsa_p256_pck_chain.bin")); err == nil {
			return p
		}
	}
	veiltest.Skip(t, "SGX DCAP test data not found: want shared/testdata/attestation/sgx-dcap-v3 beside the repository checkout")
	return ""
}

// quoteCert makes a fresh key and a self-signed certificate carrying quote
// in Gramine's legacy SGX extension or in tagged evidence whose
// pubkey-hash claim names the key (what a forger can write), valid around
// the pinned time.
func quoteCert(t *testing.T, quote []byte, tagged bool, at time.Time) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	spki, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	ext := pkix.Extension{Id: ratls.OIDLegacySGXQuote(), Value: quote}
	if tagged {
		ext = pkix.Extension{Id: ratls.OIDTaggedEvidence(), Value: taggedEvidence(quote, spki)}
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "RA-TLS"},
		NotBefore: at.Add(-time.Hour), NotAfter: at.Add(time.Hour), ExtraExtensions: []pkix.Extension{ext}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TestDCAPQuoteNotBoundRefused: a real SGX DCAP quote, embedded in a
// certificate for a key it was not made for, verifies at its pinned time
// against the captured collateral, and the release is then refused
// because the quote's report data does not bind the certificate's key.
// At a time when the quote's PCK certificate has expired the refusal is
// the quote's own, which shows the DCAP path ran.
func TestDCAPQuoteNotBoundRefused(t *testing.T) {
	dir := dcapDir(t)
	quote, err := os.ReadFile(filepath.Join(dir, "quote_v3_ecdsa_p256_pck_chain.bin"))
	if err != nil {
		t.Fatal(err)
	}
	col, err := pcs.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	const mrEnclave = "68823bc62f409ee33a32ea270cfe45d4b19a6fb3c8570d7bc186cbe062398e8f"
	for _, tc := range []struct {
		name   string
		tagged bool
		unix   int64
		want   error
	}{
		{"legacy extension", false, 1671497404, attest.ErrBinding},
		{"tagged evidence", true, 1671497404, attest.ErrBinding},
		{"PCK certificate expired", false, 1891163522, attest.ErrChain},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := time.Unix(tc.unix, 0)
			now := func() time.Time { return at }
			v := workload.NewEnclaveVerifier(verifier.New(verifier.Options{Collateral: col, Now: now}), now)
			f := newFixture(t, `{"measurements": ["`+mrEnclave+`"]}`)
			addr, roots, refused := f.serve(t, v)
			if got, err := gramineClient(addr, roots, quoteCert(t, quote, tc.tagged, at)); err == nil {
				t.Fatalf("a quote that does not bind the key released %q", got)
			}
			r := pending(refused)
			e := f.lastAudit(t)
			if e.Result != audit.Denied || e.Secret != f.secret || !strings.HasPrefix(e.Reason, "workload_unverified") {
				t.Errorf("audit entry %+v, want a denied workload_unverified for %s", e, f.secret)
			}
			if tc.want == attest.ErrChain {
				if !errors.Is(r, attest.ErrChain) || errors.Is(r, attest.ErrBinding) {
					t.Fatalf("refusal %v, want the quote's expired PCK certificate", r)
				}
				return
			}
			if !errors.Is(r, tc.want) || !strings.Contains(r.Error(), "evidence report data does not bind the peer's key") {
				t.Fatalf("refusal %v, want: the quote's report data does not bind the certificate's key", r)
			}
			if !strings.Contains(e.Reason, "evidence report data does not bind the peer's key") {
				t.Errorf("audited reason %q does not name the binding", e.Reason)
			}
		})
	}
}
