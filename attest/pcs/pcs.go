// Package pcs handles Intel DCAP collateral as served by the Intel
// Provisioning Certification Service (PCS) or a PCCS: TCB info, QE identity,
// their issuer chain and CRLs. It parses them strictly, verifies their
// signatures up to a trusted Intel SGX root CA, checks their validity
// windows, parses the SGX extensions of PCK certificates and evaluates TCB
// levels. The sgx and tdx backends share it.
//
// What it protects against: forged or altered collateral (signatures are
// checked against the trusted root, never against a root the input
// supplies), stale collateral (issue date and next-update or an explicit
// validity window), revoked signing or PCK certificates when CRLs are given.
//
// What it does not protect against: a verifier that is given old collateral
// and a long validity window, or no CRLs, accepts what that collateral
// accepted when it was issued.
package pcs

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"crypto/x509"

	"github.com/veil-tee/veil/attest"
)

//go:embed intel_sgx_root_ca.pem
var intelRootPEM []byte

// IntelRootCA returns Intel's SGX Root CA certificate (embedded), the root
// of PCK certificates and of TCB info / QE identity signing chains.
func IntelRootCA() *x509.Certificate { return intelRoot() }

var intelRoot = sync.OnceValue(func() *x509.Certificate {
	blk, _ := pem.Decode(intelRootPEM)
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		panic("pcs: embedded Intel root CA does not parse: " + err.Error())
	}
	return c
})

// ValidityError says that a certificate or collateral item is used outside
// its validity window. It wraps attest.ErrChain (certificates) or
// attest.ErrCollateral (TCB info, QE identity, CRLs).
type ValidityError struct {
	What       string // e.g. "PCK certificate", "QE identity"
	Now        time.Time
	Start, End time.Time
	Expired    bool // false: not yet valid
	base       error
}

func (e *ValidityError) Error() string {
	if e.Expired {
		return fmt.Sprintf("%s expired at %s (verification time %s)", e.What, e.End.UTC().Format(time.RFC3339), e.Now.UTC().Format(time.RFC3339))
	}
	return fmt.Sprintf("%s not yet valid: issued %s, after the verification time %s", e.What, e.Start.UTC().Format(time.RFC3339), e.Now.UTC().Format(time.RFC3339))
}

func (e *ValidityError) Unwrap() error { return e.base }

// CheckCertTime checks a certificate's validity at now.
func CheckCertTime(what string, c *x509.Certificate, now time.Time) error {
	if now.Before(c.NotBefore) {
		return &ValidityError{What: what, Now: now, Start: c.NotBefore, End: c.NotAfter, base: attest.ErrChain}
	}
	if now.After(c.NotAfter) {
		return &ValidityError{What: what, Now: now, Start: c.NotBefore, End: c.NotAfter, Expired: true, base: attest.ErrChain}
	}
	return nil
}

// Options for collateral checks.
type Options struct {
	// Roots are the trusted Intel root CAs; nil means the embedded one.
	Roots []*x509.Certificate
	// Now is the verification time (required).
	Now time.Time
	// Window, when non-zero, replaces each collateral item's nextUpdate:
	// the item is valid from its issueDate for Window. Zero uses Intel's
	// issueDate..nextUpdate.
	Window time.Duration
}

// VerifierOptions configure the SGX and TDX verifiers, which share Intel's
// collateral, roots and clock.
type VerifierOptions struct {
	// Collateral is the PCS collateral; required.
	Collateral *Collateral
	// Roots are trusted Intel SGX root CAs; nil means the embedded one.
	Roots []*x509.Certificate
	// Now returns the verification time; nil means time.Now.
	Now func() time.Time
	// CollateralWindow, when non-zero, is how long TCB info and QE identity
	// are accepted after their issue date (instead of their nextUpdate).
	CollateralWindow time.Duration
}

// Options returns the collateral checks' options at the current time.
func (v *VerifierOptions) Options() *Options {
	now := time.Now()
	if v.Now != nil {
		now = v.Now()
	}
	return &Options{Roots: v.Roots, Now: now, Window: v.CollateralWindow}
}

func (o *Options) roots() []*x509.Certificate {
	if len(o.Roots) > 0 {
		return o.Roots
	}
	return []*x509.Certificate{IntelRootCA()}
}

// VerifyChain verifies that leaf chains through intermediates to one of the
// trusted roots at o.Now, naming the first certificate outside its validity
// window. The chain's own root (if any) must equal a trusted root.
func VerifyChain(what string, chain []*x509.Certificate, o *Options) error {
	if len(chain) == 0 {
		return fmt.Errorf("%s: empty certificate chain: %w", what, attest.ErrChain)
	}
	for i, c := range chain {
		n := what
		switch {
		case i > 0 && bytes.Equal(c.RawIssuer, c.RawSubject):
			n = what + " root CA"
		case i > 0:
			n = what + " issuer CA"
		}
		if err := CheckCertTime(n, c, o.Now); err != nil {
			return err
		}
	}
	roots := x509.NewCertPool()
	for _, r := range o.roots() {
		roots.AddCert(r)
	}
	key := chainKey(chain, o.roots())
	if _, ok := chainsVerified.get(key); ok {
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if !c.IsCA {
			return fmt.Errorf("%s: issuer certificate %q is not a CA: %w", what, c.Subject.CommonName, attest.ErrChain)
		}
		inter.AddCert(c)
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: o.Now, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return fmt.Errorf("verifying %s chain: %v: %w", what, err, attest.ErrChain)
	}
	last := chain[len(chain)-1]
	if bytes.Equal(last.RawIssuer, last.RawSubject) {
		trusted := false
		for _, r := range o.roots() {
			trusted = trusted || r.Equal(last)
		}
		if !trusted {
			return fmt.Errorf("%s: chain root %q is not a trusted root: %w", what, last.Subject.CommonName, attest.ErrChain)
		}
	}
	chainsVerified.put(key, true)
	return nil
}

// VerifyP256 verifies a raw r||s ECDSA P-256 signature over SHA-256(msg).
func VerifyP256(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	if len(sig) != 64 {
		return false
	}
	d := sha256.Sum256(msg)
	r := new(big.Int).SetBytes(sig[:32])
	s := new(big.Int).SetBytes(sig[32:])
	return ecdsa.Verify(pub, d[:], r, s)
}

// signedItem is what TCB info and QE identity share: a raw JSON body and a
// signature by the TCB signing certificate.
type signedItem struct {
	raw        json.RawMessage
	signature  []byte
	issueDate  time.Time
	nextUpdate time.Time
	// verifiedBy is the signing certificate the signature was last
	// verified with (signatures do not depend on time).
	verifiedBy atomic.Pointer[x509.Certificate]
}

// parseSigned splits {"<key>": {...}, "signature": "hex"} strictly.
func parseSigned(b []byte, key string) (*signedItem, error) {
	var top map[string]json.RawMessage
	if err := json.Unmarshal(b, &top); err != nil {
		return nil, err
	}
	for k := range top {
		if k != key && k != "signature" {
			return nil, fmt.Errorf("unknown field %q", k)
		}
	}
	raw, ok := top[key]
	if !ok {
		return nil, fmt.Errorf("field %q missing", key)
	}
	var sigHex string
	if err := json.Unmarshal(top["signature"], &sigHex); err != nil {
		return nil, fmt.Errorf("field \"signature\": %v", err)
	}
	sig, err := hex.DecodeString(sigHex)
	if err != nil || len(sig) != 64 {
		return nil, fmt.Errorf("field \"signature\": want 64 bytes of hex")
	}
	return &signedItem{raw: raw, signature: sig}, nil
}

func (s *signedItem) verify(what string, chain []*x509.Certificate, rootCRL *x509.RevocationList, o *Options) error {
	if len(chain) == 0 {
		return fmt.Errorf("verifying %s: no TCB signing certificate chain in the collateral: %w", what, attest.ErrCollateral)
	}
	if err := VerifyChain(what+" signing certificate", chain, o); err != nil {
		return fmt.Errorf("verifying %s: %w", what, err)
	}
	if rootCRL != nil {
		if err := CheckRevoked(what+" signing certificate", chain[0], rootCRL, o, chain[len(chain)-1]); err != nil {
			return fmt.Errorf("verifying %s: %w", what, err)
		}
	}
	if s.verifiedBy.Load() != chain[0] {
		pub, ok := chain[0].PublicKey.(*ecdsa.PublicKey)
		if !ok || !VerifyP256(pub, s.raw, s.signature) {
			return fmt.Errorf("verifying %s signature with %q: %w", what, chain[0].Subject.CommonName, attest.ErrSignature)
		}
		s.verifiedBy.Store(chain[0])
	}
	return s.checkWindow(what, o)
}

func (s *signedItem) checkWindow(what string, o *Options) error {
	end := s.nextUpdate
	if o.Window > 0 {
		end = s.issueDate.Add(o.Window)
	}
	if o.Now.Before(s.issueDate) {
		return &ValidityError{What: what, Now: o.Now, Start: s.issueDate, End: end, base: attest.ErrCollateral}
	}
	if o.Now.After(end) {
		return &ValidityError{What: what, Now: o.Now, Start: s.issueDate, End: end, Expired: true, base: attest.ErrCollateral}
	}
	return nil
}

// CheckRevoked verifies crl (signature by its issuer, validity window) and
// that cert is not on it. The CRL's issuer must be cert's issuer; its
// signature is checked against issuer when given.
func CheckRevoked(what string, cert *x509.Certificate, crl *x509.RevocationList, o *Options, issuer ...*x509.Certificate) error {
	if !bytes.Equal(crl.RawIssuer, cert.RawIssuer) {
		return nil // not this certificate's CRL
	}
	for _, is := range issuer {
		if err := crl.CheckSignatureFrom(is); err != nil {
			return fmt.Errorf("verifying CRL of %q: %v: %w", is.Subject.CommonName, err, attest.ErrCollateral)
		}
	}
	if o.Now.Before(crl.ThisUpdate) {
		return &ValidityError{What: "CRL of " + crl.Issuer.CommonName, Now: o.Now, Start: crl.ThisUpdate, End: crl.NextUpdate, base: attest.ErrCollateral}
	}
	end := crl.NextUpdate
	if o.Window > 0 {
		end = crl.ThisUpdate.Add(o.Window)
	}
	if !end.IsZero() && o.Now.After(end) {
		return &ValidityError{What: "CRL of " + crl.Issuer.CommonName, Now: o.Now, Start: crl.ThisUpdate, End: end, Expired: true, base: attest.ErrCollateral}
	}
	for _, e := range crl.RevokedCertificateEntries {
		if e.SerialNumber.Cmp(cert.SerialNumber) == 0 {
			return fmt.Errorf("%s (serial %x) was revoked at %s: %w", what, cert.SerialNumber, e.RevocationTime.UTC().Format(time.RFC3339), attest.ErrChain)
		}
	}
	return nil
}

// ParsePEMChain parses concatenated PEM certificates (a trailing NUL, as
// quotes carry, is allowed). Anything else is an error.
func ParsePEMChain(b []byte) ([]*x509.Certificate, error) {
	b = bytes.TrimRight(b, "\x00")
	var out []*x509.Certificate
	rest := b
	for {
		var blk *pem.Block
		blk, rest = pem.Decode(rest)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("unexpected PEM block %q in certificate chain", blk.Type)
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parsing certificate %d of chain: %v", len(out)+1, err)
		}
		out = append(out, c)
	}
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, errors.New("trailing data after the PEM certificates")
	}
	if len(out) == 0 {
		return nil, errors.New("no PEM certificate")
	}
	return out, nil
}

func isTCBSigning(c *x509.Certificate) bool {
	return strings.Contains(c.Subject.CommonName, "TCB Signing")
}
