// Package tdx verifies Intel TDX quotes (version 4) and issues them inside
// a TDX guest through Linux configfs-tsm. Parsing, the quote signature, the
// QE report signature and the attestation-key binding use
// github.com/google/go-tdx-guest; the PCK chain (with named validity
// errors), the collateral (TCB info, QE identity, CRLs) and the TCB level
// with advisory IDs are checked by package pcs, shared with SGX, so that
// every TCB status reaches the policy instead of only UpToDate.
//
// What it protects against: forged or altered quotes and collateral, a TD
// quoting enclave that is not Intel's, a TDX module whose signer or version
// the collateral does not rate, trailing bytes smuggled after the quote.
//
// What it does not protect against: replay of a genuine quote (bind a nonce
// into the report data); revoked PCK certificates when no CRL is supplied;
// what the TD runs beyond what MRTD and the RTMRs measure.
package tdx

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/binary"
	"fmt"

	"github.com/google/go-tdx-guest/abi"
	pb "github.com/google/go-tdx-guest/proto/tdx"
	"github.com/google/go-tdx-guest/verify"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/sgx"
	"github.com/veil-tee/veil/attest/tsm"
)

// MaxQuoteSize bounds a TDX quote.
const MaxQuoteSize = 64 << 10

// Options configure a Verifier (the collateral holds TDX TCB info and the
// TD_QE identity).
type Options = pcs.VerifierOptions

// Verifier verifies TDX quotes.
type Verifier struct{ o Options }

// NewVerifier returns a verifier with the given options.
func NewVerifier(o Options) *Verifier { return &Verifier{o: o} }

// ParseQuote parses a TDX quote v4 strictly (no trailing bytes).
func ParseQuote(b []byte) (q *pb.QuoteV4, err error) {
	if len(b) > MaxQuoteSize {
		return nil, fmt.Errorf("parsing TDX quote: %d bytes, more than the maximum %d: %w", len(b), MaxQuoteSize, attest.ErrMalformed)
	}
	defer func() {
		// The parser is a dependency; a panic on hostile input must not
		// take the verifier down.
		if r := recover(); r != nil {
			q, err = nil, fmt.Errorf("parsing TDX quote: %v: %w", r, attest.ErrMalformed)
		}
	}()
	if len(b) >= 8 && binary.LittleEndian.Uint16(b) == 5 {
		return nil, fmt.Errorf("parsing TDX quote: version 5 is not supported yet: %w", attest.ErrUnsupported)
	}
	a, err := abi.QuoteToProto(b)
	if err != nil {
		return nil, fmt.Errorf("parsing TDX quote: %v: %w", err, attest.ErrMalformed)
	}
	q, ok := a.(*pb.QuoteV4)
	if !ok {
		return nil, fmt.Errorf("parsing TDX quote: %T is not a quote v4: %w", a, attest.ErrUnsupported)
	}
	if n := len(q.GetExtraBytes()); n > 0 {
		return nil, fmt.Errorf("parsing TDX quote: %d trailing bytes after the signature data: %w", n, attest.ErrMalformed)
	}
	if q.GetHeader().GetTeeType() != abi.TeeTDX {
		return nil, fmt.Errorf("parsing TDX quote: TEE type %#x is not TDX: %w", q.GetHeader().GetTeeType(), attest.ErrMalformed)
	}
	if err := abi.CheckQuoteV4(q); err != nil {
		return nil, fmt.Errorf("parsing TDX quote: %v: %w", err, attest.ErrMalformed)
	}
	return q, nil
}

// Verify checks a TDX quote and returns its claims.
func (v *Verifier) Verify(_ context.Context, ev *attest.Evidence) (*attest.Claims, error) {
	if ev == nil || ev.TEE != attest.TEETDX {
		return nil, fmt.Errorf("verifying TDX quote: evidence is not tee=tdx: %w", attest.ErrUnsupported)
	}
	q, err := ParseQuote(ev.Quote)
	if err != nil {
		return nil, err
	}
	o := v.o.Options()
	now := o.Now
	qeCert := q.GetSignedData().GetCertificationData().GetQeReportCertificationData()
	chainData := qeCert.GetPckCertificateChainData()
	if chainData.GetCertificateDataType() != 5 {
		return nil, fmt.Errorf("verifying TDX quote: certification data type %d is not a PCK certificate chain: %w", chainData.GetCertificateDataType(), attest.ErrUnsupported)
	}
	chain, err := sgx.ParsePCKChain(chainData.GetPckCertChain())
	if err != nil {
		return nil, err
	}
	if err := pcs.VerifyChain("PCK certificate", chain, o); err != nil {
		return nil, fmt.Errorf("verifying PCK chain: %w", err)
	}
	col := v.o.Collateral
	if col == nil {
		return nil, fmt.Errorf("verifying TDX quote: no collateral (TCB info, QE identity): %w", attest.ErrCollateral)
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
	// Signatures and the attestation-key binding, by go-tdx-guest; the
	// collateral is evaluated below so that every TCB status is reported.
	roots := x509.NewCertPool()
	if len(v.o.Roots) == 0 {
		roots.AddCert(pcs.IntelRootCA())
	}
	for _, r := range v.o.Roots {
		roots.AddCert(r)
	}
	if err := verify.TdxQuote(q, &verify.Options{Now: now, TrustedRoots: roots}); err != nil {
		return nil, fmt.Errorf("verifying TDX quote signatures: %v: %w", err, attest.ErrSignature)
	}
	pck, err := pcs.ParsePCKExtensions(chain[0])
	if err != nil {
		return nil, err
	}
	qeID, err := col.FindQEIdentity("TD_QE", o.Now)
	if err != nil {
		return nil, err
	}
	if err := qeID.Verify(col, o); err != nil {
		return nil, err
	}
	qr := qeCert.GetQeReport()
	qeRes, err := pcs.MatchQE(qeID, pcs.QEReport{
		MiscSelect: qr.GetMiscSelect(), Attributes: qr.GetAttributes(), MRSigner: qr.GetMrSigner(),
		ISVProdID: uint16(qr.GetIsvProdId()), ISVSVN: uint16(qr.GetIsvSvn()),
	})
	if err != nil {
		return nil, err
	}
	tcbInfo, err := col.FindTCBInfo("TDX", pck.FMSPC, o.Now)
	if err != nil {
		return nil, err
	}
	if err := tcbInfo.Verify(col, o); err != nil {
		return nil, err
	}
	body := q.GetTdQuoteBody()
	platRes, err := pcs.EvaluateTDX(tcbInfo, pck, pcs.TDXInput{
		TEETCBSVN: body.GetTeeTcbSvn(), MRSignerSeam: body.GetMrSignerSeam(), SeamAttributes: body.GetSeamAttributes(),
	})
	if err != nil {
		return nil, err
	}
	res := pcs.Combine(platRes, qeRes)
	return claims(q, pck, res), nil
}

// TD attribute bit 0 (TUD.DEBUG): the TD is debuggable.
const tdAttrDebug = 1

func claims(q *pb.QuoteV4, pck *pcs.PCKInfo, res *pcs.Result) *attest.Claims {
	b := q.GetTdQuoteBody()
	t := &attest.TDXClaims{
		MRTD:         bytes.Clone(b.GetMrTd()),
		MRConfigID:   bytes.Clone(b.GetMrConfigId()),
		MROwner:      bytes.Clone(b.GetMrOwner()),
		MROwnerCfg:   bytes.Clone(b.GetMrOwnerConfig()),
		MRSeam:       bytes.Clone(b.GetMrSeam()),
		TDAttributes: bytes.Clone(b.GetTdAttributes()),
		XFAM:         bytes.Clone(b.GetXfam()),
		TEETCBSVN:    bytes.Clone(b.GetTeeTcbSvn()),
	}
	for i, r := range b.GetRtmrs() {
		if i < 4 {
			t.RTMR[i] = bytes.Clone(r)
		}
	}
	h := q.GetHeader()
	return &attest.Claims{
		TEE:         attest.TEETDX,
		Measurement: bytes.Clone(t.MRTD),
		Debug:       len(t.TDAttributes) > 0 && t.TDAttributes[0]&tdAttrDebug != 0,
		ReportData:  bytes.Clone(b.GetReportData()),
		TCBStatus:   res.Status,
		AdvisoryIDs: res.AdvisoryIDs,
		Platform: attest.Platform{
			FMSPC: pck.FMSPC, PCEID: pck.PCEID,
			QESVN: le16(h.GetQeSvn()), PCESVN: le16(h.GetPceSvn()),
			CPUSVN: bytes.Clone(pck.CPUSVN),
		},
		TDX: t,
	}
}

func le16(b []byte) uint16 {
	if len(b) < 2 {
		return 0
	}
	return binary.LittleEndian.Uint16(b)
}

// NewIssuer returns an issuer of TDX quotes through the kernel's
// configfs-tsm interface; it fails on machines that are not TDX guests.
func NewIssuer() (*tsm.Issuer, error) { return tsm.NewLinuxIssuer(attest.TEETDX) }
