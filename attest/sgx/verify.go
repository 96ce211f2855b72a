// Package sgx verifies Intel SGX DCAP ECDSA quotes (version 3) in pure Go:
// strict parsing, the PCK certificate chain up to Intel's SGX Root CA, the
// QE report signature, the attestation key's binding in the QE report data,
// the quote signature, the QE identity and TCB info collateral (signatures,
// issuer chain, validity windows, CRLs when supplied) and TCB level
// evaluation with advisory IDs.
//
// What it protects against: forged or altered quotes and collateral, quotes
// from a quoting enclave that is not Intel's, platforms or QEs that the
// collateral rates below the policy, certification chains not rooted in the
// trusted root.
//
// What it does not protect against: replay of a genuine quote (bind a nonce
// or key hash into the report data); revoked PCK certificates when no CRL is
// supplied; quotes with encrypted-PPID certification data, which need Intel's
// PCS online and are rejected.
package sgx

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
)

// Options configure a Verifier.
type Options = pcs.VerifierOptions

// Verifier verifies SGX quotes.
type Verifier struct{ o Options }

// NewVerifier returns a verifier with the given options.
func NewVerifier(o Options) *Verifier { return &Verifier{o: o} }

func (v *Verifier) pcsOptions() *pcs.Options { return v.o.Options() }

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

// VerifyQuote verifies a parsed quote.
func (v *Verifier) VerifyQuote(q *Quote) (*attest.Claims, error) {
	o := v.pcsOptions()
	chain, err := PCKChain(q)
	if err != nil {
		return nil, err
	}
	if err := pcs.VerifyChain("PCK certificate", chain, o); err != nil {
		return nil, fmt.Errorf("verifying PCK chain: %w", err)
	}
	col := v.o.Collateral
	if col == nil {
		return nil, fmt.Errorf("verifying SGX quote: no collateral (TCB info, QE identity): %w", attest.ErrCollateral)
	}
	for _, crl := range col.PCKCRLs {
		if err := pcs.CheckRevoked("PCK certificate", chain[0], crl, o, chain[1]); err != nil {
			return nil, fmt.Errorf("checking PCK CRL: %w", err)
		}
	}
	if col.RootCRL != nil && len(chain) > 1 {
		if err := pcs.CheckRevoked("PCK issuer CA", chain[1], col.RootCRL, o, chain[len(chain)-1]); err != nil {
			return nil, fmt.Errorf("checking root CA CRL: %w", err)
		}
	}
	if err := VerifyQESignatures(q.QEReport.raw, q.QESignature[:], q.AttestationKey[:], q.QEAuthData, q.QEReport.ReportData[:], chain[0]); err != nil {
		return nil, err
	}
	attKey, err := P256Key(q.AttestationKey[:])
	if err != nil {
		return nil, err
	}
	if !pcs.VerifyP256(attKey, q.signed, q.Signature[:]) {
		return nil, fmt.Errorf("verifying quote signature with the attestation key: %w", attest.ErrSignature)
	}
	pck, err := pcs.ParsePCKExtensions(chain[0])
	if err != nil {
		return nil, err
	}
	// Collateral: QE identity first, then TCB info.
	qeID, err := col.FindQEIdentity("QE", o.Now)
	if err != nil {
		return nil, err
	}
	if err := qeID.Verify(col, o); err != nil {
		return nil, err
	}
	qeRes, err := pcs.MatchQE(qeID, pcs.QEReport{
		MiscSelect: q.QEReport.MiscSelect, Attributes: q.QEReport.Attributes[:],
		MRSigner: q.QEReport.MRSigner[:], ISVProdID: q.QEReport.ISVProdID, ISVSVN: q.QEReport.ISVSVN,
	})
	if err != nil {
		return nil, err
	}
	tcbInfo, err := col.FindTCBInfo("SGX", pck.FMSPC, o.Now)
	if err != nil {
		return nil, err
	}
	if err := tcbInfo.Verify(col, o); err != nil {
		return nil, err
	}
	platRes, err := pcs.EvaluateSGX(tcbInfo, pck)
	if err != nil {
		return nil, err
	}
	res := pcs.Combine(platRes, qeRes)
	b := &q.Body
	return &attest.Claims{
		TEE:         attest.TEESGX,
		Measurement: bytes.Clone(b.MREnclave[:]),
		Signer:      bytes.Clone(b.MRSigner[:]),
		ProductID:   b.ISVProdID,
		SVN:         b.ISVSVN,
		Debug:       b.Debug(),
		ReportData:  bytes.Clone(b.ReportData[:]),
		TCBStatus:   res.Status,
		AdvisoryIDs: res.AdvisoryIDs,
		Platform: attest.Platform{
			FMSPC: pck.FMSPC, PCEID: pck.PCEID,
			QESVN: q.Header.QESVN, PCESVN: q.Header.PCESVN,
			CPUSVN: bytes.Clone(b.CPUSVN[:]),
		},
	}, nil
}

// PCKChain returns the PCK certificate chain of a quote whose certification
// data is type 5, and a clear error for the other types.
func PCKChain(q *Quote) ([]*x509.Certificate, error) {
	if q.CertType != certPCKChain {
		return nil, fmt.Errorf("verifying SGX quote: certification data is a %s (type %d), not a PCK certificate chain; it can only be verified online through Intel's PCS: %w",
			certTypeNames[q.CertType], q.CertType, attest.ErrUnsupported)
	}
	return ParsePCKChain(q.CertData)
}

// ParsePCKChain parses a PEM PCK chain: leaf, intermediate CA, root CA.
func ParsePCKChain(b []byte) ([]*x509.Certificate, error) {
	chain, err := pcs.ParsePEMChainCached(b)
	if err != nil {
		return nil, fmt.Errorf("parsing PCK chain: %v: %w", err, attest.ErrMalformed)
	}
	if len(chain) != 3 {
		return nil, fmt.Errorf("parsing PCK chain: %d certificates, want 3 (PCK, intermediate CA, root CA): %w", len(chain), attest.ErrMalformed)
	}
	if !strings.Contains(chain[0].Subject.CommonName, "PCK Certificate") {
		return nil, fmt.Errorf("parsing PCK chain: leaf %q is not a PCK certificate: %w", chain[0].Subject.CommonName, attest.ErrChain)
	}
	return chain, nil
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

// VerifyQESignatures checks the QE report signature with the PCK leaf key
// and that the QE report data binds the attestation key and QE
// authentication data: report_data = SHA-256(att key || auth data) || 0^32.
func VerifyQESignatures(qeReport, qeSig, attKey, authData, qeReportData []byte, pckLeaf *x509.Certificate) error {
	pub, ok := pckLeaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pcs.VerifyP256(pub, qeReport, qeSig) {
		return fmt.Errorf("verifying QE report signature with the PCK certificate: %w", attest.ErrSignature)
	}
	h := sha256.New()
	h.Write(attKey)
	h.Write(authData)
	want := append(h.Sum(nil), make([]byte, 32)...)
	if !bytes.Equal(qeReportData, want) {
		return fmt.Errorf("QE report data %s does not bind the attestation key: %w", hex.EncodeToString(qeReportData[:32]), attest.ErrBinding)
	}
	return nil
}
