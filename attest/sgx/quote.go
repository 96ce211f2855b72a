package sgx

import (
	"encoding/binary"
	"fmt"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/dcap"
)

// Sizes and constants of the DCAP ECDSA quote v3 format.
const (
	HeaderSize     = 48
	ReportBodySize = dcap.ReportBodySize
	// MaxQuoteSize bounds a quote; real ones are about 5 KiB.
	MaxQuoteSize = 64 << 10

	attKeyECDSAP256 = 2
	teeTypeSGX      = 0
)

// Header is the quote header.
type Header struct {
	Version    uint16
	AttKeyType uint16
	TEEType    uint32
	QESVN      uint16
	PCESVN     uint16
	QEVendorID [16]byte
	UserData   [20]byte
}

// ReportBody is an SGX enclave report body (also the QE report).
type ReportBody = dcap.ReportBody

// Quote is a parsed quote v3.
type Quote struct {
	Header         Header
	Body           ReportBody
	Signature      [64]byte // ECDSA r||s over header||body with the attestation key
	AttestationKey [64]byte // P-256 x||y
	QEReport       ReportBody
	QESignature    [64]byte // over the QE report, by the PCK key
	QEAuthData     []byte
	CertType       uint16
	CertData       []byte
	// Padding is the number of zero bytes after the signature data (quote
	// buffers handed back by DCAP get-quote APIs carry some); nothing
	// signed covers them and Marshal restores them.
	Padding int
	signed  []byte // header || body
}

type reader struct {
	b   []byte
	off int
	err error
}

func (r *reader) take(n int, what string) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || len(r.b)-r.off < n {
		r.err = fmt.Errorf("truncated %s: need %d bytes at offset %d, have %d", what, n, r.off, len(r.b)-r.off)
		return nil
	}
	s := r.b[r.off : r.off+n : r.off+n]
	r.off += n
	return s
}

func (r *reader) u16(what string) uint16 {
	if b := r.take(2, what); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *reader) u32(what string) uint32 {
	if b := r.take(4, what); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// ParseQuote parses a DCAP ECDSA-P256 quote v3 strictly: every length field
// must match, and only zero bytes (padding) may follow the signature data.
// It verifies nothing.
func ParseQuote(b []byte) (*Quote, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("parsing SGX quote: %s: %w", fmt.Sprintf(format, a...), attest.ErrMalformed)
	}
	if len(b) > MaxQuoteSize {
		return nil, bad("%d bytes, more than the maximum %d", len(b), MaxQuoteSize)
	}
	r := &reader{b: b}
	var q Quote
	h := r.take(HeaderSize, "header")
	if r.err != nil {
		return nil, bad("%v", r.err)
	}
	q.Header = Header{
		Version:    binary.LittleEndian.Uint16(h[0:]),
		AttKeyType: binary.LittleEndian.Uint16(h[2:]),
		TEEType:    binary.LittleEndian.Uint32(h[4:]),
		QESVN:      binary.LittleEndian.Uint16(h[8:]),
		PCESVN:     binary.LittleEndian.Uint16(h[10:]),
	}
	copy(q.Header.QEVendorID[:], h[12:28])
	copy(q.Header.UserData[:], h[28:48])
	if q.Header.Version != 3 {
		return nil, bad("version %d, want 3", q.Header.Version)
	}
	if q.Header.AttKeyType != attKeyECDSAP256 {
		return nil, bad("attestation key type %d, want 2 (ECDSA-256-with-P-256)", q.Header.AttKeyType)
	}
	if q.Header.TEEType != teeTypeSGX {
		return nil, bad("TEE type %#x, want 0 (SGX)", q.Header.TEEType)
	}
	body := r.take(ReportBodySize, "report body")
	sigLen := r.u32("signature data length")
	if r.err != nil {
		return nil, bad("%v", r.err)
	}
	q.Body, _ = dcap.ParseReportBody(body)
	q.signed = b[: HeaderSize+ReportBodySize : HeaderSize+ReportBodySize]
	rest := len(b) - r.off
	if int64(sigLen) > int64(rest) {
		return nil, bad("signature data length %d, but %d bytes follow", sigLen, rest)
	}
	end := r.off + int(sigLen)
	if i := firstNonZero(b[end:]); i >= 0 {
		return nil, bad("non-zero byte at offset %d, after the signature data (only zero padding may follow it)", end+i)
	}
	q.Padding = len(b) - end
	r.b = b[:end:end]
	copy(q.Signature[:], r.take(64, "quote signature"))
	copy(q.AttestationKey[:], r.take(64, "attestation key"))
	qe := r.take(ReportBodySize, "QE report")
	copy(q.QESignature[:], r.take(64, "QE report signature"))
	authLen := r.u16("QE authentication data length")
	q.QEAuthData = r.take(int(authLen), "QE authentication data")
	q.CertType = r.u16("certification data type")
	certLen := r.u32("certification data length")
	if r.err != nil {
		return nil, bad("%v", r.err)
	}
	q.QEReport, _ = dcap.ParseReportBody(qe)
	if rest := len(r.b) - r.off; int64(certLen) != int64(rest) {
		if int64(certLen) < int64(rest) {
			return nil, bad("%d trailing bytes after the certification data", int64(rest)-int64(certLen))
		}
		return nil, bad("certification data length %d, but %d bytes follow", certLen, rest)
	}
	q.CertData = r.take(int(certLen), "certification data")
	if q.CertType < 1 || q.CertType > 7 {
		return nil, bad("unknown certification data type %d", q.CertType)
	}
	return &q, nil
}

// Marshal re-encodes the quote; for a parsed quote it is byte-identical.
func (q *Quote) Marshal() []byte {
	out := append([]byte(nil), q.signed...)
	sd := make([]byte, 0, 64*2+ReportBodySize+64+2+len(q.QEAuthData)+6+len(q.CertData))
	sd = append(sd, q.Signature[:]...)
	sd = append(sd, q.AttestationKey[:]...)
	sd = append(sd, q.QEReport.Raw()...)
	sd = append(sd, q.QESignature[:]...)
	sd = binary.LittleEndian.AppendUint16(sd, uint16(len(q.QEAuthData)))
	sd = append(sd, q.QEAuthData...)
	sd = binary.LittleEndian.AppendUint16(sd, q.CertType)
	sd = binary.LittleEndian.AppendUint32(sd, uint32(len(q.CertData)))
	sd = append(sd, q.CertData...)
	out = binary.LittleEndian.AppendUint32(out, uint32(len(sd)))
	out = append(out, sd...)
	return append(out, make([]byte, q.Padding)...)
}

// firstNonZero returns the index of the first non-zero byte of b, or -1.
func firstNonZero(b []byte) int {
	for i, c := range b {
		if c != 0 {
			return i
		}
	}
	return -1
}
