// Package dcap verifies what Intel SGX and TDX ECDSA quotes share: the PCK
// certificate chain and its CRLs, the quoting enclave (QE) report signed by
// the PCK key, the attestation key bound in the QE report data, the quote
// signature by the attestation key, the QE identity and TCB info collateral
// and the TCB level with its advisory IDs. The sgx and tdx backends parse
// their quote formats, hand a Quote to one Verifier and turn its Result
// into claims; neither repeats any of these steps.
//
// What it protects against: forged or altered quotes and collateral; PCK
// chains that are not Intel's profile (three ECDSA P-256 certificates with
// Intel's names, each issued by the next) or do not end in the trusted
// root; quoting enclaves whose identity the collateral does not rate;
// platforms below every TCB level of the collateral.
//
// What it does not protect against: replay of a genuine quote (bind a nonce
// or key hash into the report data); revoked PCK certificates when no CRL is
// supplied; certification data other than a PCK chain (encrypted PPIDs need
// Intel's PCS online and are refused).
package dcap

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"fmt"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
)

// Quote is what the shared verification reads from an SGX or TDX quote.
type Quote struct {
	// TEE is attest.TEESGX or attest.TEETDX; it selects the collateral
	// (QE or TD_QE identity, SGX or TDX TCB info).
	TEE attest.TEE
	// Signed is the header and body the quote signature covers.
	Signed []byte
	// Signature is the raw r||s ECDSA P-256 signature over Signed by the
	// attestation key.
	Signature []byte
	// AttestationKey is the raw x||y P-256 attestation key.
	AttestationKey []byte
	// QEReport is the quoting enclave's report; QEReportSignature its raw
	// r||s signature by the PCK key.
	QEReport          ReportBody
	QEReportSignature []byte
	// QEAuthData is the QE authentication data bound with the attestation
	// key into the QE report data.
	QEAuthData []byte
	// CertType and CertData are the PCK certification data (type 5: PEM
	// PCK chain).
	CertType uint16
	CertData []byte
	// TDX is what TDX TCB evaluation reads from the TD quote body;
	// required when TEE is TDX.
	TDX *pcs.TDXInput
}

// Result is what a verified quote's platform is rated.
type Result struct {
	// PCK is what the PCK certificate says about the platform.
	PCK *pcs.PCKInfo
	// TCB is the TCB status and advisories of platform and QE together.
	TCB *pcs.Result
}

// Verifier verifies SGX and TDX quotes against Intel's roots and the PCS
// collateral.
type Verifier struct{ o pcs.VerifierOptions }

// NewVerifier returns a verifier with the given options.
func NewVerifier(o pcs.VerifierOptions) *Verifier { return &Verifier{o: o} }

type teeProfile struct {
	name       string   // for messages
	qeID       string   // QE identity id
	tcbID      string   // TCB info id
	pckIssuers []string // accepted PCK CA common names
}

func profile(t attest.TEE) (*teeProfile, error) {
	switch t {
	case attest.TEESGX:
		return &teeProfile{"SGX", "QE", "SGX", []string{cnPlatform, cnProcessor}}, nil
	case attest.TEETDX:
		// TDX platforms' PCK certificates are issued by the platform CA.
		return &teeProfile{"TDX", "TD_QE", "TDX", []string{cnPlatform}}, nil
	}
	return nil, fmt.Errorf("verifying DCAP quote: TEE %q is not SGX or TDX: %w", t, attest.ErrUnsupported)
}

// PCKChain returns the parsed PCK chain of q, refusing certification data
// that is not a PCK chain and PCK CAs the TEE does not use.
func PCKChain(q *Quote) ([]*x509.Certificate, error) {
	p, err := profile(q.TEE)
	if err != nil {
		return nil, err
	}
	if q.CertType != CertPCKChain {
		return nil, fmt.Errorf("verifying %s quote: certification data is a %s (type %d), not a PCK certificate chain; it can only be verified online through Intel's PCS: %w",
			p.name, CertTypeName(q.CertType), q.CertType, attest.ErrUnsupported)
	}
	chain, err := ParsePCKChain(q.CertData)
	if err != nil {
		return nil, err
	}
	if err := checkProfile(chain[1], p.pckIssuers); err != nil {
		return nil, fmt.Errorf("parsing PCK chain of a %s quote: %w", p.name, err)
	}
	return chain, nil
}

// CertTypeName names a certification data type.
func CertTypeName(t uint16) string {
	switch t {
	case 1:
		return "plain PPID (PCK cert id)"
	case 2:
		return "PPID encrypted with RSA-2048-OAEP"
	case 3:
		return "PPID encrypted with RSA-3072-OAEP"
	case 4:
		return "PCK leaf certificate only"
	case 5:
		return "PCK certificate chain"
	case 6:
		return "QE report certification data"
	case 7:
		return "platform manifest"
	}
	return "unknown certification data"
}

// Verify runs every shared step on q, in this order: PCK chain (profile,
// validity, trusted root), CRLs, QE report signature, attestation key
// binding, quote signature, QE identity, TCB info and TCB evaluation.
func (v *Verifier) Verify(q *Quote) (*Result, error) {
	p, err := profile(q.TEE)
	if err != nil {
		return nil, err
	}
	if q.TEE == attest.TEETDX && q.TDX == nil {
		return nil, fmt.Errorf("verifying TDX quote: no TD quote body: %w", attest.ErrMalformed)
	}
	o := v.o.Options()
	chain, err := PCKChain(q)
	if err != nil {
		return nil, err
	}
	if err := pcs.VerifyChain("PCK certificate", chain, o); err != nil {
		return nil, fmt.Errorf("verifying PCK chain: %w", err)
	}
	col := v.o.Collateral
	if col == nil {
		return nil, fmt.Errorf("verifying %s quote: no collateral (TCB info, QE identity): %w", p.name, attest.ErrCollateral)
	}
	for _, crl := range col.PCKCRLs {
		if err := pcs.CheckRevoked("PCK certificate", chain[0], crl, o, chain[1]); err != nil {
			return nil, fmt.Errorf("checking PCK CRL: %w", err)
		}
	}
	if col.RootCRL != nil {
		if err := pcs.CheckRevoked("PCK issuer CA", chain[1], col.RootCRL, o, chain[2]); err != nil {
			return nil, fmt.Errorf("checking root CA CRL: %w", err)
		}
	}
	if err := verifyQE(q, chain[0]); err != nil {
		return nil, err
	}
	attKey, err := P256Key(q.AttestationKey)
	if err != nil {
		return nil, err
	}
	if !pcs.VerifyP256(attKey, q.Signed, q.Signature) {
		return nil, fmt.Errorf("verifying quote signature with the attestation key: %w", attest.ErrSignature)
	}
	pck, err := pcs.ParsePCKExtensions(chain[0])
	if err != nil {
		return nil, err
	}
	// Collateral: QE identity first, then TCB info.
	qeID, err := col.FindQEIdentity(p.qeID, o.Now)
	if err != nil {
		return nil, err
	}
	if err := qeID.Verify(col, o); err != nil {
		return nil, err
	}
	qr := &q.QEReport
	qeRes, err := pcs.MatchQE(qeID, pcs.QEReport{
		MiscSelect: qr.MiscSelect, Attributes: qr.Attributes[:],
		MRSigner: qr.MRSigner[:], ISVProdID: qr.ISVProdID, ISVSVN: qr.ISVSVN,
	})
	if err != nil {
		return nil, err
	}
	tcbInfo, err := col.FindTCBInfo(p.tcbID, pck.FMSPC, o.Now)
	if err != nil {
		return nil, err
	}
	if err := tcbInfo.Verify(col, o); err != nil {
		return nil, err
	}
	var platRes *pcs.Result
	if q.TEE == attest.TEETDX {
		platRes, err = pcs.EvaluateTDX(tcbInfo, pck, *q.TDX)
	} else {
		platRes, err = pcs.EvaluateSGX(tcbInfo, pck)
	}
	if err != nil {
		return nil, err
	}
	return &Result{PCK: pck, TCB: pcs.Combine(platRes, qeRes)}, nil
}

// verifyQE checks the QE report signature with the PCK leaf key and that
// the QE report data binds the attestation key and QE authentication data:
// report_data = SHA-256(attestation key || auth data) || 0^32.
func verifyQE(q *Quote, pckLeaf *x509.Certificate) error {
	pub, ok := pckLeaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pcs.VerifyP256(pub, q.QEReport.Raw(), q.QEReportSignature) {
		return fmt.Errorf("verifying QE report signature with the PCK certificate: %w", attest.ErrSignature)
	}
	h := sha256.New()
	h.Write(q.AttestationKey)
	h.Write(q.QEAuthData)
	want := append(h.Sum(nil), make([]byte, 32)...)
	if rd := q.QEReport.ReportData[:]; !bytes.Equal(rd, want) {
		return fmt.Errorf("QE report data %s does not bind the attestation key: %w", hex.EncodeToString(rd[:32]), attest.ErrBinding)
	}
	return nil
}
