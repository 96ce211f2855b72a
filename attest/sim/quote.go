package sim

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/veil-tee/veil/attest"
)

// Wire format of a sim quote (docs/formats/sim-quote.md). All integers are
// little-endian, as in SGX structures.
const (
	Magic          = "VEILSIMQ"
	Version uint16 = 1

	headerSize = 8 + 2 + 2         // magic, version, reserved
	bodySize   = 32 + 32 + 2 + 2 + // measurement, signer, product id, svn
		8 + 8 + // attributes flags, xfrm
		64 + 8 // report data, issued-at (unix seconds)
	// MaxQuoteSize bounds a sim quote (certificate and signature included).
	MaxQuoteSize = 16 << 10
	maxCertSize  = 8 << 10
	maxSigSize   = 80
)

// SGX-compatible attribute flags.
const (
	AttrInit    uint64 = 1 << 0
	AttrDebug   uint64 = 1 << 1
	AttrMode64  uint64 = 1 << 2
	defaultXFRM uint64 = 3
)

// Body is the signed report body, mirroring an SGX report.
type Body struct {
	Measurement [32]byte
	Signer      [32]byte
	ProductID   uint16
	SVN         uint16
	Attributes  uint64
	XFRM        uint64
	ReportData  attest.ReportData
	IssuedAt    int64 // unix seconds
}

// Quote is a parsed sim quote.
type Quote struct {
	Body      Body
	CertDER   []byte // platform certificate (issued by the sim root CA)
	Signature []byte // ECDSA ASN.1 over header || body || cert length || cert
	signed    []byte
}

func (b *Body) marshal(w *bytes.Buffer) {
	w.Write(b.Measurement[:])
	w.Write(b.Signer[:])
	_ = binary.Write(w, binary.LittleEndian, b.ProductID)
	_ = binary.Write(w, binary.LittleEndian, b.SVN)
	_ = binary.Write(w, binary.LittleEndian, b.Attributes)
	_ = binary.Write(w, binary.LittleEndian, b.XFRM)
	w.Write(b.ReportData[:])
	_ = binary.Write(w, binary.LittleEndian, b.IssuedAt)
}

// signedBytes returns the bytes the signature covers.
func signedBytes(b *Body, cert []byte) []byte {
	var w bytes.Buffer
	w.WriteString(Magic)
	_ = binary.Write(&w, binary.LittleEndian, Version)
	_ = binary.Write(&w, binary.LittleEndian, uint16(0))
	b.marshal(&w)
	_ = binary.Write(&w, binary.LittleEndian, uint32(len(cert)))
	w.Write(cert)
	return w.Bytes()
}

// Marshal encodes q.
func (q *Quote) Marshal() []byte {
	s := signedBytes(&q.Body, q.CertDER)
	out := make([]byte, 0, len(s)+2+len(q.Signature))
	out = append(out, s...)
	out = binary.LittleEndian.AppendUint16(out, uint16(len(q.Signature)))
	return append(out, q.Signature...)
}

// ParseQuote decodes a sim quote strictly: exact lengths, known version,
// zero reserved field, no trailing bytes. It does not verify anything.
func ParseQuote(b []byte) (*Quote, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("parsing sim quote: %s: %w", fmt.Sprintf(format, a...), attest.ErrMalformed)
	}
	if len(b) > MaxQuoteSize {
		return nil, bad("%d bytes, more than the maximum %d", len(b), MaxQuoteSize)
	}
	if len(b) < headerSize+bodySize+4 {
		return nil, bad("truncated: %d bytes", len(b))
	}
	if string(b[:8]) != Magic {
		return nil, bad("bad magic")
	}
	if v := binary.LittleEndian.Uint16(b[8:]); v != Version {
		return nil, bad("unknown version %d", v)
	}
	if r := binary.LittleEndian.Uint16(b[10:]); r != 0 {
		return nil, bad("reserved field is %d, want 0", r)
	}
	p := b[headerSize:]
	var q Quote
	copy(q.Body.Measurement[:], p[0:32])
	copy(q.Body.Signer[:], p[32:64])
	q.Body.ProductID = binary.LittleEndian.Uint16(p[64:])
	q.Body.SVN = binary.LittleEndian.Uint16(p[66:])
	q.Body.Attributes = binary.LittleEndian.Uint64(p[68:])
	q.Body.XFRM = binary.LittleEndian.Uint64(p[76:])
	copy(q.Body.ReportData[:], p[84:148])
	q.Body.IssuedAt = int64(binary.LittleEndian.Uint64(p[148:]))
	p = p[bodySize:]
	certLen := int(binary.LittleEndian.Uint32(p))
	p = p[4:]
	if certLen == 0 || certLen > maxCertSize || certLen > len(p) {
		return nil, bad("certificate length %d out of range", certLen)
	}
	q.CertDER = p[:certLen:certLen]
	p = p[certLen:]
	if len(p) < 2 {
		return nil, bad("truncated before signature length")
	}
	sigLen := int(binary.LittleEndian.Uint16(p))
	p = p[2:]
	if sigLen == 0 || sigLen > maxSigSize {
		return nil, bad("signature length %d out of range", sigLen)
	}
	if len(p) < sigLen {
		return nil, bad("truncated signature: %d of %d bytes", len(p), sigLen)
	}
	if len(p) > sigLen {
		return nil, bad("%d trailing bytes after the signature", len(p)-sigLen)
	}
	q.Signature = p[:sigLen:sigLen]
	q.signed = b[:len(b)-2-sigLen]
	return &q, nil
}
