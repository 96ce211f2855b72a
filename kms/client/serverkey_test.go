package client

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestRequireServerKey: once a client requires the key it attested, a
// server with another certificate from the same trusted CA is refused —
// on new connections and on connections made before.
func TestRequireServerKey(t *testing.T) {
	ca := mkCert(t, "ca", nil, true)
	a, b := mkCert(t, "kms-a", ca, false), mkCert(t, "kms-b", ca, false)
	var useB atomic.Bool
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"initialized":true,"sealed":false,"progress":0}`))
	}))
	chain := func(c *testCert) *tls.Certificate {
		return &tls.Certificate{Certificate: [][]byte{c.cert.Raw, ca.cert.Raw}, PrivateKey: c.key}
	}
	// The client dials an IP address (no SNI): the certificate is chosen
	// per connection through GetConfigForClient.
	srv.TLS = &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*chain(a)},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			c := chain(a)
			if useB.Load() {
				c = chain(b)
			}
			return &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{*c}}, nil
		}}
	srv.StartTLS()
	defer srv.Close()

	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	c, err := New(Config{URL: srv.URL, CAPEM: caPEM, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx := context.Background()
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}
	useB.Store(true)
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("without a required key, any certificate of the CA is accepted: %v", err)
	}
	useB.Store(false)
	c.hc.CloseIdleConnections()
	if _, err := c.Status(ctx); err != nil {
		t.Fatal(err)
	}
	c.RequireServerKey(a.cert.RawSubjectPublicKeyInfo)
	if _, err := c.Status(ctx); err != nil {
		t.Fatalf("the required key is refused: %v", err)
	}
	useB.Store(true)
	c.hc.CloseIdleConnections() // a new connection, to the impostor
	_, err = c.Status(ctx)
	if err == nil || !strings.Contains(err.Error(), "another key than the one it attested") {
		t.Fatalf("another certificate of the same CA: %v, want a refusal", err)
	}
}
