package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

type testCert struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
}

func mkCert(t *testing.T, name string, parent *testCert, isCA bool) *testCert {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: isCA, BasicConstraintsValid: true,
	}
	if isCA {
		tmpl.KeyUsage = x509.KeyUsageCertSign
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1)}
		tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	}
	signer, signKey := tmpl, key
	if parent != nil {
		signer, signKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &key.PublicKey, signKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return &testCert{c, key}
}

func pinOf(c *testCert) []byte { h := sha256.Sum256(c.cert.RawSubjectPublicKeyInfo); return h[:] }

// serveChain starts a TLS server on loopback presenting chain (leaf first).
func serveChain(t *testing.T, chain ...*testCert) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"initialized":true,"sealed":false,"progress":0}`))
	}))
	tc := tls.Certificate{PrivateKey: chain[0].key}
	for _, c := range chain {
		tc.Certificate = append(tc.Certificate, c.cert.Raw)
	}
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{tc}, MinVersion: tls.VersionTLS13}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.URL
}

func statusWithPin(t *testing.T, url string, pin []byte) error {
	t.Helper()
	c, err := New(Config{URL: url, PinSHA256: pin, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Status(context.Background())
	return err
}

func TestPinnedServiceKey(t *testing.T) {
	caA := mkCert(t, "ca-a", nil, true)
	caB := mkCert(t, "ca-b", nil, true)
	leafA := mkCert(t, "kms", caA, false)
	url := serveChain(t, leafA, caA)

	if err := statusWithPin(t, url, pinOf(leafA)); err != nil {
		t.Fatalf("pinned leaf key: %v", err)
	}
	if err := statusWithPin(t, url, pinOf(caA)); err != nil {
		t.Fatalf("pinned CA key: %v", err)
	}
	if err := statusWithPin(t, url, pinOf(caB)); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("a service whose chain lacks the pinned key: %v, want ErrNotPinned", err)
	}
	// Attack: present the pinned CA's certificate beside a leaf it did not sign.
	rogue := mkCert(t, "kms", caB, false)
	if err := statusWithPin(t, serveChain(t, rogue, caA), pinOf(caA)); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("a leaf not signed by the pinned CA, beside the CA's certificate: %v, want ErrNotPinned", err)
	}
	if _, err := New(Config{URL: url, PinSHA256: []byte("short")}); err == nil {
		t.Fatal("a pin of the wrong length was accepted")
	}
}
