package secretprov

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// The protocol's messages, as Gramine's secret-provisioning library sends
// them inside the TLS session: the client's request is the ASCII string
// below with its terminating NUL; the server's answer is the response
// string with its NUL, the secret's length as a big-endian uint32, and the
// secret. Nothing else in this package reads or writes these bytes.
const (
	request        = "SECRET_PROVISION_RA_TLS_REQUEST_V1\x00"
	responsePrefix = "SECRET_PROVISION_RA_TLS_RESPONSE_V1:\x00"
)

// MaxSecret bounds the secret a client accepts (the server sends what the
// key service stores, at most kms.MaxSecretValue).
const MaxSecret = 1 << 20

// ErrProtocol: a message is not what the protocol says.
var ErrProtocol = errors.New("not a Gramine secret-provisioning message")

// WriteRequest writes the client's request.
func WriteRequest(w io.Writer) error {
	_, err := io.WriteString(w, request)
	return err
}

// ReadRequest reads the client's request and checks it byte for byte.
func ReadRequest(r io.Reader) error {
	b := make([]byte, len(request))
	if _, err := io.ReadFull(r, b); err != nil {
		return fmt.Errorf("reading the request: %w", err)
	}
	if string(b) != request {
		return fmt.Errorf("reading the request: %q: %w", bytes.TrimRight(b, "\x00"), ErrProtocol)
	}
	return nil
}

// WriteResponse writes the response carrying secret.
func WriteResponse(w io.Writer, secret []byte) error {
	if len(secret) == 0 || uint64(len(secret)) > uint64(^uint32(0)>>1) {
		return fmt.Errorf("writing the response: a secret of %d bytes cannot be sent", len(secret))
	}
	msg := make([]byte, 0, len(responsePrefix)+4+len(secret))
	msg = append(msg, responsePrefix...)
	msg = binary.BigEndian.AppendUint32(msg, uint32(len(secret)))
	msg = append(msg, secret...)
	_, err := w.Write(msg)
	clear(msg)
	return err
}

// ReadResponse reads the server's response and returns the secret.
func ReadResponse(r io.Reader) ([]byte, error) {
	hdr := make([]byte, len(responsePrefix)+4)
	if _, err := io.ReadFull(r, hdr); err != nil {
		return nil, fmt.Errorf("reading the response: %w", err)
	}
	if string(hdr[:len(responsePrefix)]) != responsePrefix {
		return nil, fmt.Errorf("reading the response: %w", ErrProtocol)
	}
	n := binary.BigEndian.Uint32(hdr[len(responsePrefix):])
	if n == 0 || n > MaxSecret {
		return nil, fmt.Errorf("reading the response: a secret of %d bytes: %w", n, ErrProtocol)
	}
	secret := make([]byte, n)
	if _, err := io.ReadFull(r, secret); err != nil {
		return nil, fmt.Errorf("reading the secret: %w", err)
	}
	return secret, nil
}
