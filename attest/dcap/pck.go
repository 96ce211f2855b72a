package dcap

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"fmt"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
)

// CertPCKChain is the certification data type of a PEM PCK certificate
// chain (leaf, intermediate CA, root CA), the only one verified offline.
const CertPCKChain = 5

// Common names of the certificates of a PCK chain.
const (
	cnRoot      = "Intel SGX Root CA"
	cnPlatform  = "Intel SGX PCK Platform CA"
	cnProcessor = "Intel SGX PCK Processor CA"
	cnPCK       = "Intel SGX PCK Certificate"
)

// ParsePCKChain parses the PEM PCK chain of a quote's certification data:
// exactly three certificates (PCK leaf, PCK CA, root CA), at most one NUL
// after them, each an X.509 v3 certificate with an ECDSA P-256 key signed
// with ECDSA-SHA256, with Intel's common names, each issued by the next.
// The PCK CA may be Intel's platform or processor CA. It verifies no
// signature and no validity window (Verifier.Verify does).
func ParsePCKChain(b []byte) ([]*x509.Certificate, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("parsing PCK chain: %s: %w", fmt.Sprintf(format, a...), attest.ErrMalformed)
	}
	rest := b
	for i := 0; i < 3; i++ {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			return nil, bad("%d certificates, want 3 (PCK, intermediate CA, root CA)", i)
		}
		if blk.Type != "CERTIFICATE" {
			return nil, bad("unexpected PEM block %q", blk.Type)
		}
	}
	if len(rest) > 1 || (len(rest) == 1 && rest[0] != 0) {
		if blk, _ := pem.Decode(rest); blk != nil {
			return nil, bad("more than 3 certificates (PCK, intermediate CA, root CA)")
		}
		return nil, bad("%d bytes after the certificates", len(rest))
	}
	chain, err := pcs.ParsePEMChainCached(b)
	if err != nil {
		return nil, bad("%v", err)
	}
	if len(chain) != 3 {
		return nil, bad("%d certificates, want 3 (PCK, intermediate CA, root CA)", len(chain))
	}
	names := [3][]string{{cnPCK}, {cnPlatform, cnProcessor}, {cnRoot}}
	for i, c := range chain {
		if err := checkProfile(c, names[i]); err != nil {
			return nil, fmt.Errorf("parsing PCK chain: certificate %d: %w", i+1, err)
		}
		parent := chain[min(i+1, 2)]
		if !bytes.Equal(c.RawIssuer, parent.RawSubject) {
			return nil, fmt.Errorf("parsing PCK chain: %q is not issued by %q: %w", c.Subject.CommonName, parent.Subject.CommonName, attest.ErrChain)
		}
	}
	return chain, nil
}

func checkProfile(c *x509.Certificate, names []string) error {
	ok := false
	for _, n := range names {
		ok = ok || c.Subject.CommonName == n
	}
	if !ok {
		return fmt.Errorf("common name %q, want %q: %w", c.Subject.CommonName, names, attest.ErrChain)
	}
	if c.Version != 3 {
		return fmt.Errorf("%q is an X.509 v%d certificate, want v3: %w", c.Subject.CommonName, c.Version, attest.ErrChain)
	}
	if c.SignatureAlgorithm != x509.ECDSAWithSHA256 {
		return fmt.Errorf("%q is signed with %v, want ECDSA-SHA256: %w", c.Subject.CommonName, c.SignatureAlgorithm, attest.ErrChain)
	}
	if k, isEC := c.PublicKey.(*ecdsa.PublicKey); !isEC || k.Curve != elliptic.P256() {
		return fmt.Errorf("%q does not hold an ECDSA P-256 key: %w", c.Subject.CommonName, attest.ErrChain)
	}
	return nil
}

// P256Key decodes a raw x||y P-256 public key.
func P256Key(b []byte) (*ecdsa.PublicKey, error) {
	if len(b) != 64 {
		return nil, fmt.Errorf("attestation key has %d bytes: %w", len(b), attest.ErrMalformed)
	}
	// Parsing checks that the point is on the curve.
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append([]byte{4}, b...))
	if err != nil {
		return nil, fmt.Errorf("attestation key is not a P-256 point: %w", attest.ErrMalformed)
	}
	return k, nil
}
