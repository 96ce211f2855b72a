package dcap

import (
	"encoding/binary"
	"fmt"

	"github.com/veil-tee/veil/attest"
)

// ReportBodySize is the size of an SGX enclave report body: an SGX quote's
// body and the quoting enclave's report in SGX and TDX quotes.
const ReportBodySize = 384

// ReportBody is an SGX enclave report body.
type ReportBody struct {
	CPUSVN     [16]byte
	MiscSelect uint32
	Attributes [16]byte // flags (8) || xfrm (8)
	MREnclave  [32]byte
	MRSigner   [32]byte
	ISVProdID  uint16
	ISVSVN     uint16
	ReportData [64]byte
	raw        []byte
}

// ParseReportBody parses a 384-byte report body; the result keeps b.
func ParseReportBody(b []byte) (ReportBody, error) {
	var r ReportBody
	if len(b) != ReportBodySize {
		return r, fmt.Errorf("parsing enclave report: %d bytes, want %d: %w", len(b), ReportBodySize, attest.ErrMalformed)
	}
	copy(r.CPUSVN[:], b[0:16])
	r.MiscSelect = binary.LittleEndian.Uint32(b[16:20])
	copy(r.Attributes[:], b[48:64])
	copy(r.MREnclave[:], b[64:96])
	copy(r.MRSigner[:], b[128:160])
	r.ISVProdID = binary.LittleEndian.Uint16(b[256:258])
	r.ISVSVN = binary.LittleEndian.Uint16(b[258:260])
	copy(r.ReportData[:], b[320:384])
	r.raw = b[:ReportBodySize:ReportBodySize]
	return r, nil
}

// Raw returns the bytes the report was parsed from (signed as they are).
func (r *ReportBody) Raw() []byte { return r.raw }

// Flags returns the attribute flags (DEBUG is bit 1).
func (r *ReportBody) Flags() uint64 { return binary.LittleEndian.Uint64(r.Attributes[:8]) }

// Debug reports the DEBUG attribute.
func (r *ReportBody) Debug() bool { return r.Flags()&2 != 0 }
