package secretprov

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
)

// Fetch is the enclave's side of the protocol, as Gramine's
// secret_prov_attest runs it: it connects to addr presenting cert (an
// RA-TLS certificate), checks the server's certificate against roots with
// serverName, sends the request and returns the secret. The server closes
// the connection without an answer when it refuses.
func Fetch(ctx context.Context, addr, serverName string, roots *x509.CertPool, cert tls.Certificate) ([]byte, error) {
	var d net.Dialer
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("secret provisioning: %w", err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	conn := tls.Client(raw, &tls.Config{
		RootCAs: roots, ServerName: serverName, MinVersion: tls.VersionTLS12,
		Certificates: []tls.Certificate{cert},
	})
	if err := conn.HandshakeContext(ctx); err != nil {
		return nil, fmt.Errorf("secret provisioning: handshake: %w", err)
	}
	if err := WriteRequest(conn); err != nil {
		return nil, fmt.Errorf("secret provisioning: %w", err)
	}
	secret, err := ReadResponse(conn)
	if err != nil {
		return nil, fmt.Errorf("secret provisioning: %w", err)
	}
	return secret, nil
}
