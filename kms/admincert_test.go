package kms_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms/client"
)

// issue returns a certificate for usage signed by ca (self-signed if nil).
func issue(t *testing.T, ca *tls.Certificate, isCA bool, usage x509.ExtKeyUsage) *tls.Certificate {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: "admin"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{usage}, KeyUsage: x509.KeyUsageDigitalSignature}
	if isCA {
		tmpl.IsCA, tmpl.BasicConstraintsValid, tmpl.KeyUsage = true, true, x509.KeyUsageCertSign
		tmpl.ExtKeyUsage = nil
	}
	parent, signer := tmpl, any(key)
	if ca != nil {
		parent, _ = x509.ParseCertificate(ca.Certificate[0])
		signer = ca.PrivateKey
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, signer)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestAdminClientCertificate(t *testing.T) {
	s := newServer(t, false)
	ca := issue(t, nil, true, 0)
	caCert, _ := x509.ParseCertificate(ca.Certificate[0])
	s.adminCAs = x509.NewCertPool()
	s.adminCAs.AddCert(caCert)
	s.restart(false)

	certClient := func(c *tls.Certificate) *client.Client {
		return s.client(t, client.Config{WorkloadCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return c, nil }})
	}
	admin := certClient(issue(t, ca, false, x509.ExtKeyUsageClientAuth))
	if _, err := admin.Enroll(ctx, "bob"); err != nil {
		t.Fatalf("admin by client certificate: %v", err)
	}
	// Signed by another CA, or by the admin CA for the wrong usage: not admin.
	for name, c := range map[string]*tls.Certificate{
		"self-signed":  issue(t, nil, false, x509.ExtKeyUsageClientAuth),
		"server usage": issue(t, ca, false, x509.ExtKeyUsageServerAuth),
	} {
		if _, err := certClient(c).ListApps(ctx); err == nil {
			t.Errorf("%s certificate accepted as admin", name)
		}
	}
}
