// Package tdx verifies Intel TDX quotes (version 4) and issues them inside
// a TDX guest through Linux configfs-tsm. Parsing uses
// github.com/google/go-tdx-guest's abi package; everything else (PCK chain
// with named validity errors, QE report signature, attestation-key binding,
// quote signature, collateral, TCB level with advisory IDs) is package
// dcap's verification, shared with SGX, so that every TCB status reaches
// the policy instead of only UpToDate.
//
// What it protects against: forged or altered quotes and collateral, a TD
// quoting enclave that is not Intel's, a TDX module whose signer or version
// the collateral does not rate, non-zero bytes smuggled after the signature
// data (zero padding is accepted: nothing signed covers it).
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

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/dcap"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/tsm"
)

// MaxQuoteSize bounds a TDX quote.
const MaxQuoteSize = 64 << 10

// Options configure a Verifier (the collateral holds TDX TCB info and the
// TD_QE identity).
type Options = pcs.VerifierOptions

// Verifier verifies TDX quotes.
type Verifier struct{ d *dcap.Verifier }

// NewVerifier returns a verifier with the given options.
func NewVerifier(o Options) *Verifier { return &Verifier{d: dcap.NewVerifier(o)} }

// ParseQuote parses a TDX quote v4 strictly: only zero bytes (padding) may
// follow the signature data; the quote keeps them as its extra bytes, so
// abi.QuoteToAbiBytes gives back the input.
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
	// Quote buffers from DCAP get-quote APIs and TDX guest stacks carry
	// zero padding after the signature data; nothing signed covers it, so
	// anything else there is refused.
	extra := q.GetExtraBytes()
	if i := bytes.IndexFunc(extra, func(c rune) bool { return c != 0 }); i >= 0 { // any non-zero byte decodes to a non-zero rune
		return nil, fmt.Errorf("parsing TDX quote: non-zero byte at offset %d, after the signature data (only zero padding may follow it): %w", len(b)-len(extra)+i, attest.ErrMalformed)
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
	d, err := DCAP(q)
	if err != nil {
		return nil, err
	}
	res, err := v.d.Verify(d)
	if err != nil {
		return nil, err
	}
	return claims(q, res.PCK, res.TCB), nil
}

// DCAP returns what the shared DCAP verification reads from a parsed quote.
func DCAP(q *pb.QuoteV4) (*dcap.Quote, error) {
	bad := func(err error) error {
		return fmt.Errorf("encoding TDX quote: %v: %w", err, attest.ErrMalformed)
	}
	header, err := abi.HeaderToAbiBytes(q.GetHeader())
	if err != nil {
		return nil, bad(err)
	}
	body, err := abi.TdQuoteBodyToAbiBytes(q.GetTdQuoteBody())
	if err != nil {
		return nil, bad(err)
	}
	sd := q.GetSignedData()
	qeCert := sd.GetCertificationData().GetQeReportCertificationData()
	rawQE, err := abi.EnclaveReportToAbiBytes(qeCert.GetQeReport())
	if err != nil {
		return nil, bad(err)
	}
	qeReport, err := dcap.ParseReportBody(rawQE)
	if err != nil {
		return nil, err
	}
	chainData := qeCert.GetPckCertificateChainData()
	tb := q.GetTdQuoteBody()
	return &dcap.Quote{
		TEE:               attest.TEETDX,
		Signed:            append(header, body...),
		Signature:         sd.GetSignature(),
		AttestationKey:    sd.GetEcdsaAttestationKey(),
		QEReport:          qeReport,
		QEReportSignature: qeCert.GetQeReportSignature(),
		QEAuthData:        qeCert.GetQeAuthData().GetData(),
		CertType:          uint16(chainData.GetCertificateDataType()),
		CertData:          chainData.GetPckCertChain(),
		TDX: &pcs.TDXInput{
			TEETCBSVN: tb.GetTeeTcbSvn(), MRSignerSeam: tb.GetMrSignerSeam(), SeamAttributes: tb.GetSeamAttributes(),
		},
	}, nil
}

// PCKChain returns the PCK certificate chain of a parsed quote.
func PCKChain(q *pb.QuoteV4) ([]*x509.Certificate, error) {
	d, err := DCAP(q)
	if err != nil {
		return nil, err
	}
	return dcap.PCKChain(d)
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
