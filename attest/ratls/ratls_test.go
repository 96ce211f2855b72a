package ratls

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/attest/verifier"
)

func setup(t testing.TB) (*sim.Platform, *sim.Issuer, attest.Verifier) {
	t.Helper()
	p, _, err := sim.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var id sim.Identity
	id.Measurement[0] = 0x42
	return p, p.Issuer(id), attest.Multi{attest.TEESim: sim.NewVerifier(p.CA)}
}

func measurement(b byte) attest.Hex {
	m := make([]byte, 32)
	m[0] = b
	return m
}

// handshake runs a real TLS handshake on 127.0.0.1 and returns the server's
// and the client's errors.
func handshake(t *testing.T, srvConf, cliConf *tls.Config) (srvErr, cliErr error) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		tc := tls.Server(c, srvConf)
		err = tc.Handshake()
		if err == nil {
			_, err = io.WriteString(tc, "ok")
		}
		done <- err
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(c, cliConf)
	cliErr = tc.Handshake()
	if cliErr == nil {
		var buf [2]byte
		_, cliErr = io.ReadFull(tc, buf[:])
	}
	return <-done, cliErr
}

func serverCert(t *testing.T) *tls.Certificate {
	// An ordinary (non-attested) server certificate, as a KMS outside a TEE has.
	_, iss, _ := setup(t)
	c, err := NewCertificate(context.Background(), iss, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestLoopbackWorkloadToServer(t *testing.T) {
	_, iss, ver := setup(t)
	cert, err := NewCertificate(context.Background(), iss, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var got *attest.Claims
	good := &Peer{Verifier: ver, Policy: &attest.Policy{AllowSim: true, Measurements: []attest.Hex{measurement(0x42)}}, OnVerified: func(c *attest.Claims) { got = c }}
	cli := &tls.Config{Certificates: []tls.Certificate{*cert}, InsecureSkipVerify: true, MinVersion: tls.VersionTLS13} // test client trusts the test server
	srvErr, cliErr := handshake(t, ServerConfig(serverCert(t), good), cli)
	if srvErr != nil || cliErr != nil {
		t.Fatalf("handshake: server %v, client %v", srvErr, cliErr)
	}
	if got == nil || got.TEE != attest.TEESim || got.Measurement.String() != measurement(0x42).String() {
		t.Fatalf("claims %+v", got)
	}

	bad := &Peer{Verifier: ver, Policy: &attest.Policy{AllowSim: true, Measurements: []attest.Hex{measurement(0x43)}}}
	srvErr, _ = handshake(t, ServerConfig(serverCert(t), bad), cli)
	var de *attest.DeniedError
	if !errors.As(srvErr, &de) || de.Unmet[0].Field != "measurements" || !strings.Contains(srvErr.Error(), measurement(0x42).String()) {
		t.Fatalf("changed measurement: %v", srvErr)
	}
	// Without allow_sim the reason says so.
	srvErr, _ = handshake(t, ServerConfig(serverCert(t), &Peer{Verifier: ver}), cli)
	if !errors.As(srvErr, &de) || de.Unmet[0].Field != "allow_sim" {
		t.Fatalf("no allow_sim: %v", srvErr)
	}
}

func TestBidirectional(t *testing.T) {
	_, iss, ver := setup(t)
	ctx := context.Background()
	kmsCert, _ := NewCertificate(ctx, iss, Options{})
	wlCert, _ := NewCertificate(ctx, iss, Options{})
	pol := &attest.Policy{AllowSim: true, Measurements: []attest.Hex{measurement(0x42)}}
	srvErr, cliErr := handshake(t, ServerConfig(kmsCert, &Peer{Verifier: ver, Policy: pol}), ClientConfig(wlCert, &Peer{Verifier: ver, Policy: pol}))
	if srvErr != nil || cliErr != nil {
		t.Fatalf("server %v, client %v", srvErr, cliErr)
	}
	// The workload refuses a server whose measurement its policy does not name.
	strict := &attest.Policy{AllowSim: true, Measurements: []attest.Hex{measurement(0x99)}}
	_, cliErr = handshake(t, ServerConfig(kmsCert, nil), ClientConfig(nil, &Peer{Verifier: ver, Policy: strict}))
	if !errors.Is(cliErr, attest.ErrDenied) {
		t.Fatalf("client accepted a server outside its policy: %v", cliErr)
	}
}

func TestNonceFreshness(t *testing.T) {
	_, iss, ver := setup(t)
	ctx := context.Background()
	nonces := NewNonces(time.Minute)
	now := time.Now()
	n := nonces.New(now)
	cert, err := NewCertificate(ctx, iss, Options{Nonce: n})
	if err != nil {
		t.Fatal(err)
	}
	p := &Peer{Verifier: ver, Policy: &attest.Policy{AllowSim: true}, Nonces: nonces}
	if _, err := p.VerifyCertificate(ctx, cert.Leaf); err != nil {
		t.Fatal(err)
	}
	if _, err := p.VerifyCertificate(ctx, cert.Leaf); !errors.Is(err, ErrStale) {
		t.Fatalf("replayed nonce: %v", err)
	}
	noNonce, _ := NewCertificate(ctx, iss, Options{})
	if _, err := p.VerifyCertificate(ctx, noNonce.Leaf); !errors.Is(err, ErrStale) {
		t.Fatalf("missing nonce: %v", err)
	}
	old := nonces.New(now.Add(-2 * time.Minute))
	oldCert, _ := NewCertificate(ctx, iss, Options{Nonce: old})
	if _, err := p.VerifyCertificate(ctx, oldCert.Leaf); !errors.Is(err, ErrStale) {
		t.Fatalf("expired nonce: %v", err)
	}
}

func TestEvidenceFromAnotherCertificate(t *testing.T) {
	_, iss, ver := setup(t)
	ctx := context.Background()
	a, _ := NewCertificate(ctx, iss, Options{})
	b, _ := NewCertificate(ctx, iss, Options{})
	// Copy a's evidence extension into a certificate for b's key.
	tmpl := *b.Leaf
	tmpl.ExtraExtensions = nil
	for _, e := range a.Leaf.Extensions {
		if e.Id.Equal(OIDTaggedEvidence()) {
			tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, e)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, b.Leaf.PublicKey, b.PrivateKey)
	if err != nil {
		t.Fatal(err)
	}
	forged, _ := x509.ParseCertificate(der)
	p := &Peer{Verifier: ver, Policy: &attest.Policy{AllowSim: true}}
	if _, err := p.VerifyCertificate(ctx, forged); !errors.Is(err, attest.ErrBinding) {
		t.Fatalf("transplanted evidence: %v", err)
	}
}

func TestPEMForms(t *testing.T) {
	_, iss, _ := setup(t)
	c, _ := NewCertificate(context.Background(), iss, Options{})
	for _, typ := range []string{"CERTIFICATE", "TRUSTED CERTIFICATE"} {
		b := c.Certificate[0]
		if typ == "TRUSTED CERTIFICATE" {
			b = append(bytes.Clone(b), 0x30, 0x00) // empty trust settings
		}
		got, err := ParsePEM(pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}))
		if err != nil || !got.Equal(c.Leaf) {
			t.Fatalf("%s: %v", typ, err)
		}
	}
	if _, err := ParsePEM(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1}})); err == nil {
		t.Fatal("private key accepted as certificate")
	}
}

func TestBadExtensions(t *testing.T) {
	enc := func(v any) []byte { b, _ := cbor.Marshal(v); return b }
	claims := enc(map[string]any{"pubkey-hash": []any{1, make([]byte, 32)}})
	cases := map[string][]byte{
		"garbage":       {0xff, 0x00},
		"wrong tag":     enc(cbor.Tag{Number: 1, Content: []any{[]byte{1}, claims}}),
		"three items":   enc(cbor.Tag{Number: TagEvidence, Content: []any{[]byte{1}, claims, []byte{2}}}),
		"unknown claim": enc(cbor.Tag{Number: TagEvidence, Content: []any{[]byte{1}, enc(map[string]any{"pubkey-hash": []any{1, make([]byte, 32)}, "x": 1})}}),
		"sha-1 hash":    enc(cbor.Tag{Number: TagEvidence, Content: []any{[]byte{1}, enc(map[string]any{"pubkey-hash": []any{2, make([]byte, 20)}})}}),
		"no pubkey":     enc(cbor.Tag{Number: TagEvidence, Content: []any{[]byte{1}, enc(map[string]any{"nonce": make([]byte, 32)})}}),
		"oversized":     make([]byte, maxExtensionLen+1),
	}
	for name, b := range cases {
		if _, err := ParseTaggedEvidence(b); !errors.Is(err, ErrExtension) {
			t.Errorf("%s: %v", name, err)
		}
	}
	if x, err := ParseTaggedEvidence(enc(cbor.Tag{Number: TagEvidence, Content: []any{[]byte{1}, claims}})); err != nil || len(x.PubKeyHash) != 32 {
		t.Fatalf("valid extension: %v", err)
	}
}

func FuzzParseTaggedEvidence(f *testing.F) {
	_, iss, _ := setup(f)
	c, _ := NewCertificate(context.Background(), iss, Options{Nonce: make([]byte, 32)})
	for _, e := range c.Leaf.Extensions {
		if e.Id.Equal(OIDTaggedEvidence()) {
			f.Add(e.Value)
		}
	}
	f.Add([]byte{0xd9, 0xea, 0x60, 0x82, 0x41, 0x01, 0x41, 0x02})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseTaggedEvidence(b)
	})
}

func BenchmarkSimCertificate(b *testing.B) {
	_, iss, ver := setup(b)
	p := &Peer{Verifier: ver, Policy: &attest.Policy{AllowSim: true}}
	ctx := context.Background()
	for b.Loop() {
		c, err := NewCertificate(ctx, iss, Options{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := p.VerifyCertificate(ctx, c.Leaf); err != nil {
			b.Fatal(err)
		}
	}
}

func TestLegacyAndCriticalExtensions(t *testing.T) {
	_, iss, ver := setup(t)
	ctx := context.Background()
	c, _ := NewCertificate(ctx, iss, Options{})
	p := &Peer{Verifier: ver, Policy: &attest.Policy{AllowSim: true}}
	resign := func(exts []pkix.Extension) *x509.Certificate {
		tmpl := *c.Leaf
		tmpl.ExtraExtensions = exts
		der, err := x509.CreateCertificate(rand.Reader, &tmpl, &tmpl, c.Leaf.PublicKey, c.PrivateKey)
		if err != nil {
			t.Fatal(err)
		}
		cert, _ := x509.ParseCertificate(der)
		return cert
	}
	var tagged pkix.Extension
	for _, e := range c.Leaf.Extensions {
		if e.Id.Equal(OIDTaggedEvidence()) {
			tagged = e
		}
	}
	// An unknown critical extension makes the certificate unacceptable.
	crit := resign([]pkix.Extension{tagged, {Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Critical: true, Value: []byte{5, 0}}})
	if _, err := p.VerifyCertificate(ctx, crit); !errors.Is(err, ErrExtension) {
		t.Fatalf("critical unknown extension: %v", err)
	}
	// Gramine's legacy extension with a real SGX quote that binds another key.
	quote, err := os.ReadFile("../testdata/sgx/quote_v3_ecdsa_p256_pck_chain.bin")
	if err != nil {
		t.Fatal(err)
	}
	col, err := pcs.LoadDir("../testdata/sgx")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Unix(1671497404, 0)
	sgxPeer := &Peer{Verifier: verifier.New(verifier.Options{Collateral: col, Now: func() time.Time { return at }}), Now: func() time.Time { return c.Leaf.NotBefore.Add(time.Minute) }}
	legacy := resign([]pkix.Extension{{Id: OIDLegacySGXQuote(), Value: quote}})
	x, err := ParseExtension(legacy)
	if err != nil || !x.Legacy {
		t.Fatalf("legacy extension: %v", err)
	}
	if _, err := sgxPeer.VerifyCertificate(ctx, legacy); !errors.Is(err, attest.ErrBinding) {
		t.Fatalf("legacy quote bound to another key: %v", err)
	}
	// The legacy extension carries SGX quotes only.
	ev, _ := iss.Issue(ctx, attest.ReportData{})
	if _, err := p.VerifyCertificate(ctx, resign([]pkix.Extension{{Id: OIDLegacySGXQuote(), Value: ev.Quote}})); !errors.Is(err, ErrExtension) {
		t.Fatalf("legacy extension with sim evidence: %v", err)
	}
	// No evidence at all.
	if _, err := p.VerifyCertificate(ctx, resign(nil)); !errors.Is(err, ErrNotRATLS) {
		t.Fatalf("plain certificate: %v", err)
	}
}

func TestNilPeerFailsClosed(t *testing.T) {
	_, iss, _ := setup(t)
	cert, _ := NewCertificate(context.Background(), iss, Options{})
	_, cliErr := handshake(t, ServerConfig(cert, nil), ClientConfig(nil, nil))
	if cliErr == nil {
		t.Fatal("client without a verifier accepted the server")
	}
}
