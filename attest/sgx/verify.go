// Package sgx parses Intel SGX DCAP ECDSA quotes (version 3) strictly and
// verifies them in pure Go through package dcap, which SGX shares with TDX:
// the PCK certificate chain up to Intel's SGX Root CA, the QE report
// signature, the attestation key's binding in the QE report data, the quote
// signature, the QE identity and TCB info collateral (signatures, issuer
// chain, validity windows, CRLs when supplied) and TCB level evaluation with
// advisory IDs. This package turns the verified quote into claims.
//
// What it protects against: forged or altered quotes and collateral, quotes
// from a quoting enclave that is not Intel's, platforms or QEs that the
// collateral rates below the policy, certification chains not rooted in the
// trusted root, non-zero bytes appended after the signature data.
//
// What it does not protect against: replay of a genuine quote (bind a nonce
// or key hash into the report data); revoked PCK certificates when no CRL is
// supplied; quotes with encrypted-PPID certification data, which need Intel's
// PCS online and are rejected.
package sgx

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/dcap"
	"github.com/veil-tee/veil/attest/pcs"
)

// Options configure a Verifier.
type Options = pcs.VerifierOptions

// Verifier verifies SGX quotes.
type Verifier struct{ d *dcap.Verifier }

// NewVerifier returns a verifier with the given options.
func NewVerifier(o Options) *Verifier { return &Verifier{d: dcap.NewVerifier(o)} }

// Verify checks an SGX quote and returns its claims.
func (v *Verifier) Verify(_ context.Context, ev *attest.Evidence) (*attest.Claims, error) {
	if ev == nil || ev.TEE != attest.TEESGX {
		return nil, fmt.Errorf("verifying SGX quote: evidence is not tee=sgx: %w", attest.ErrUnsupported)
	}
	q, err := ParseQuote(ev.Quote)
	if err != nil {
		return nil, err
	}
	return v.VerifyQuote(q)
}

// DCAP returns what the shared DCAP verification reads from the quote.
func (q *Quote) DCAP() *dcap.Quote {
	return &dcap.Quote{
		TEE:               attest.TEESGX,
		Signed:            q.signed,
		Signature:         q.Signature[:],
		AttestationKey:    q.AttestationKey[:],
		QEReport:          q.QEReport,
		QEReportSignature: q.QESignature[:],
		QEAuthData:        q.QEAuthData,
		CertType:          q.CertType,
		CertData:          q.CertData,
	}
}

// VerifyQuote verifies a parsed quote.
func (v *Verifier) VerifyQuote(q *Quote) (*attest.Claims, error) {
	res, err := v.d.Verify(q.DCAP())
	if err != nil {
		return nil, err
	}
	b := &q.Body
	return &attest.Claims{
		TEE:         attest.TEESGX,
		Measurement: bytes.Clone(b.MREnclave[:]),
		Signer:      bytes.Clone(b.MRSigner[:]),
		ProductID:   b.ISVProdID,
		SVN:         b.ISVSVN,
		Debug:       b.Debug(),
		ReportData:  bytes.Clone(b.ReportData[:]),
		TCBStatus:   res.TCB.Status,
		AdvisoryIDs: res.TCB.AdvisoryIDs,
		Platform: attest.Platform{
			FMSPC: res.PCK.FMSPC, PCEID: res.PCK.PCEID,
			QESVN: q.Header.QESVN, PCESVN: q.Header.PCESVN,
			CPUSVN: bytes.Clone(b.CPUSVN[:]),
		},
	}, nil
}

// PCKChain returns the PCK certificate chain of a quote whose certification
// data is type 5, and a clear error for the other types.
func PCKChain(q *Quote) ([]*x509.Certificate, error) { return dcap.PCKChain(q.DCAP()) }
