package sim

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
)

func testID() Identity {
	var id Identity
	id.Measurement[0], id.Signer[0] = 0x68, 0x9a
	id.ProductID, id.SVN = 2, 7
	return id
}

func TestInitIdempotent(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sim")
	p1, created, err := Init(dir)
	if err != nil || !created {
		t.Fatalf("first init: created=%v err=%v", created, err)
	}
	p2, created, err := Init(dir)
	if err != nil || created {
		t.Fatalf("second init: created=%v err=%v", created, err)
	}
	if !p1.Cert.Equal(p2.Cert) || !p1.CA.Equal(p2.CA) {
		t.Fatal("second init changed the platform")
	}
	st, err := os.Stat(filepath.Join(dir, PlatformKeyFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("platform key mode: %v %v", st.Mode(), err)
	}
}

func TestIssueVerify(t *testing.T) {
	dir := t.TempDir()
	p, _, err := Init(dir)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := NewIssuer(dir, testID())
	if err != nil {
		t.Fatal(err)
	}
	var rd attest.ReportData
	copy(rd[:], "nonce")
	ev, err := iss.Issue(context.Background(), rd)
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(p.CA)
	c, err := v.Verify(context.Background(), ev)
	if err != nil {
		t.Fatal(err)
	}
	id := testID()
	if c.TEE != attest.TEESim || !c.Debug || !bytes.Equal(c.Measurement, id.Measurement[:]) || !bytes.Equal(c.Signer, id.Signer[:]) ||
		c.ProductID != 2 || c.SVN != 7 || !bytes.Equal(c.ReportData, rd[:]) || time.Since(c.IssuedAt) > time.Minute {
		t.Fatalf("claims: %+v", c)
	}
	var pol attest.Policy
	if ok, un := pol.Evaluate(c); ok || un[0].Field != "allow_sim" {
		t.Fatalf("default policy: %v", un)
	}
	pol.AllowSim = true
	if ok, un := pol.Evaluate(c); !ok {
		t.Fatal(un)
	}
}

func TestVerifyAttacks(t *testing.T) {
	dir := t.TempDir()
	p, _, _ := Init(dir)
	other, _, _ := Init(t.TempDir())
	ev, err := p.Issuer(testID()).Issue(context.Background(), attest.ReportData{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A platform whose CA the verifier does not trust.
	if _, err := NewVerifier(other.CA).Verify(ctx, ev); !errors.Is(err, attest.ErrChain) {
		t.Fatalf("untrusted CA: %v", err)
	}
	v := NewVerifier(p.CA)
	// Every single-byte change in the signed part must be detected.
	for i := 0; i < headerSize+bodySize; i++ {
		b := bytes.Clone(ev.Quote)
		b[i] ^= 1
		_, err := v.Verify(ctx, &attest.Evidence{TEE: attest.TEESim, Quote: b})
		if err == nil {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
	// Trailing bytes, truncation, oversize.
	for _, b := range [][]byte{append(bytes.Clone(ev.Quote), 0), ev.Quote[:len(ev.Quote)-1], ev.Quote[:10], make([]byte, MaxQuoteSize+1)} {
		if _, err := v.Verify(ctx, &attest.Evidence{TEE: attest.TEESim, Quote: b}); !errors.Is(err, attest.ErrMalformed) {
			t.Fatalf("len %d: %v", len(b), err)
		}
	}
	// An expired platform certificate.
	v.Now = func() time.Time { return time.Now().AddDate(30, 0, 0) }
	if _, err := v.Verify(ctx, ev); !errors.Is(err, attest.ErrChain) {
		t.Fatalf("expired: %v", err)
	}
	// A quote signed by a key the certificate does not name.
	q, _ := ParseQuote(ev.Quote)
	q.CertDER = other.Cert.Raw
	v2 := NewVerifier(other.CA)
	if _, err := v2.Verify(ctx, &attest.Evidence{TEE: attest.TEESim, Quote: q.Marshal()}); !errors.Is(err, attest.ErrSignature) {
		t.Fatalf("swapped cert: %v", err)
	}
}

func TestLoadMissing(t *testing.T) {
	if _, err := NewIssuer(t.TempDir(), testID()); !errors.Is(err, ErrNoPlatform) {
		t.Fatalf("got %v", err)
	}
}

func TestParseRoundTrip(t *testing.T) {
	p, _, _ := Init(t.TempDir())
	ev, _ := p.Issuer(testID()).Issue(context.Background(), attest.ReportData{1})
	q, err := ParseQuote(ev.Quote)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(q.Marshal(), ev.Quote) {
		t.Fatal("parse/marshal not identical")
	}
	if _, err := x509.ParseCertificate(q.CertDER); err != nil {
		t.Fatal(err)
	}
}

func FuzzParseQuote(f *testing.F) {
	p, _, err := Init(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	ev, _ := p.Issuer(testID()).Issue(context.Background(), attest.ReportData{})
	f.Add(ev.Quote)
	f.Add([]byte(Magic))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			return
		}
		if !bytes.Equal(q.Marshal(), b) {
			t.Fatal("parse -> marshal not byte-identical")
		}
	})
}

func BenchmarkIssueVerify(b *testing.B) {
	p, _, err := Init(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	iss, v := p.Issuer(testID()), NewVerifier(p.CA)
	ctx := context.Background()
	for b.Loop() {
		ev, err := iss.Issue(ctx, attest.ReportData{})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

// TestGoldenV1 decodes and verifies the committed version-1 test vector.
func TestGoldenV1(t *testing.T) {
	q, err := os.ReadFile("../testdata/sim/quote_v1.bin")
	if err != nil {
		t.Fatal(err)
	}
	ca, err := readCert("../testdata/sim/ca.pem")
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(ca)
	v.Now = func() time.Time { return time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC) }
	c, err := v.Verify(context.Background(), &attest.Evidence{TEE: attest.TEESim, Quote: q})
	if err != nil {
		t.Fatal(err)
	}
	var m, s [32]byte
	for i := range m {
		m[i], s[i] = byte(i), byte(0xff-i)
	}
	var rd attest.ReportData
	copy(rd[:], "veil sim quote v1 test vector")
	if !bytes.Equal(c.Measurement, m[:]) || !bytes.Equal(c.Signer, s[:]) || c.ProductID != 7 || c.SVN != 3 ||
		!bytes.Equal(c.ReportData, rd[:]) || !c.Debug || c.IssuedAt.Unix() != 1790000000 {
		t.Fatalf("claims %+v", c)
	}
	p, _ := ParseQuote(q)
	if p.Body.Attributes != AttrInit|AttrDebug|AttrMode64 || p.Body.XFRM != 3 || !bytes.Equal(p.Marshal(), q) {
		t.Fatalf("body %+v", p.Body)
	}
}
