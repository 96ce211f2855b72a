package pcs

import (
	"bytes"
	"encoding/asn1"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"

	"crypto/x509"

	"github.com/veil-tee/veil/attest"
)

var (
	oidSGXExtensions = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1}
	oidTCB           = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 2}
	oidPCEID         = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 3}
	oidFMSPC         = asn1.ObjectIdentifier{1, 2, 840, 113741, 1, 13, 1, 4}
)

// PCKInfo is what the SGX extensions of a PCK certificate say about the
// platform.
type PCKInfo struct {
	FMSPC      string // uppercase hex, 6 bytes
	PCEID      string // uppercase hex, 2 bytes
	PCESVN     uint16
	CPUSVN     []byte    // 16 bytes
	Components [16]uint8 // SGX TCB components (CPUSVN split)
}

type extEntry struct {
	ID    asn1.ObjectIdentifier
	Value asn1.RawValue
}

// ParsePCKExtensions reads the SGX extensions of a PCK certificate.
func ParsePCKExtensions(c *x509.Certificate) (*PCKInfo, error) {
	bad := func(format string, a ...any) error {
		return fmt.Errorf("parsing PCK certificate SGX extensions: %s: %w", fmt.Sprintf(format, a...), attest.ErrMalformed)
	}
	var raw []byte
	for _, e := range c.Extensions {
		if e.Id.Equal(oidSGXExtensions) {
			raw = e.Value
		}
	}
	if raw == nil {
		return nil, bad("missing")
	}
	var entries []extEntry
	if rest, err := asn1.Unmarshal(raw, &entries); err != nil || len(rest) != 0 {
		return nil, bad("not a sequence of (oid, value)")
	}
	info := &PCKInfo{}
	var haveTCB, haveFMSPC, havePCEID bool
	for _, e := range entries {
		switch {
		case e.ID.Equal(oidFMSPC):
			var b []byte
			if _, err := asn1.Unmarshal(e.Value.FullBytes, &b); err != nil || len(b) != 6 {
				return nil, bad("FMSPC")
			}
			info.FMSPC, haveFMSPC = strings.ToUpper(hex.EncodeToString(b)), true
		case e.ID.Equal(oidPCEID):
			var b []byte
			if _, err := asn1.Unmarshal(e.Value.FullBytes, &b); err != nil || len(b) != 2 {
				return nil, bad("PCE-ID")
			}
			info.PCEID, havePCEID = strings.ToUpper(hex.EncodeToString(b)), true
		case e.ID.Equal(oidTCB):
			var tcb []extEntry
			if rest, err := asn1.Unmarshal(e.Value.FullBytes, &tcb); err != nil || len(rest) != 0 {
				return nil, bad("TCB")
			}
			seen := 0
			for _, t := range tcb {
				if len(t.ID) != len(oidTCB)+1 || !t.ID[:len(oidTCB)].Equal(oidTCB) {
					return nil, bad("unknown TCB entry %v", t.ID)
				}
				n := t.ID[len(oidTCB)]
				switch {
				case n >= 1 && n <= 16:
					var v int
					if _, err := asn1.Unmarshal(t.Value.FullBytes, &v); err != nil || v < 0 || v > 255 {
						return nil, bad("TCB component %d", n)
					}
					info.Components[n-1] = uint8(v)
					seen |= 1 << n
				case n == 17:
					var v int
					if _, err := asn1.Unmarshal(t.Value.FullBytes, &v); err != nil || v < 0 || v > 65535 {
						return nil, bad("PCESVN")
					}
					info.PCESVN = uint16(v)
					seen |= 1 << n
				case n == 18:
					var b []byte
					if _, err := asn1.Unmarshal(t.Value.FullBytes, &b); err != nil || len(b) != 16 {
						return nil, bad("CPUSVN")
					}
					info.CPUSVN = b
					seen |= 1 << n
				}
			}
			if seen != (1<<19)-2 {
				return nil, bad("incomplete TCB")
			}
			haveTCB = true
		}
	}
	if !haveTCB || !haveFMSPC || !havePCEID {
		return nil, bad("TCB, FMSPC or PCE-ID missing")
	}
	return info, nil
}

// Result is the outcome of TCB evaluation.
type Result struct {
	Status      attest.TCBStatus
	AdvisoryIDs []string
	QEStatus    attest.TCBStatus
	// BelowAllLevels: the platform is older than every level the TCB info
	// lists; Status is then OutOfDate.
	BelowAllLevels bool
}

func sgxLevelMatches(l *TCBLevel, p *PCKInfo) bool {
	if len(l.TCB.SGXComponents) != 16 {
		return false
	}
	for i, c := range l.TCB.SGXComponents {
		if p.Components[i] < c.SVN {
			return false
		}
	}
	return p.PCESVN >= l.TCB.PCESVN
}

// EvaluateSGX returns the status of the first TCB level the platform
// (as its PCK certificate says) reaches.
func EvaluateSGX(t *TCBInfo, p *PCKInfo) (*Result, error) {
	if err := matchPlatform(t, p); err != nil {
		return nil, err
	}
	for i := range t.TCBLevels {
		l := &t.TCBLevels[i]
		if sgxLevelMatches(l, p) {
			return &Result{Status: l.TCBStatus, AdvisoryIDs: l.AdvisoryIDs}, nil
		}
	}
	return belowAll(), nil
}

// belowAll is the result for a platform older than every listed TCB level:
// Intel lists levels newest first, so such a platform is out of date.
func belowAll() *Result {
	return &Result{Status: attest.TCBOutOfDate, BelowAllLevels: true}
}

func matchPlatform(t *TCBInfo, p *PCKInfo) error {
	if !strings.EqualFold(t.FMSPC, p.FMSPC) || !strings.EqualFold(t.PCEID, p.PCEID) {
		return fmt.Errorf("TCB info is for FMSPC %s / PCE-ID %s, the PCK certificate says %s / %s: %w", t.FMSPC, t.PCEID, p.FMSPC, p.PCEID, attest.ErrCollateral)
	}
	return nil
}

// TDXInput is what TDX TCB evaluation needs from the quote body.
type TDXInput struct {
	TEETCBSVN      []byte // 16 bytes
	MRSignerSeam   []byte // 48 bytes
	SeamAttributes []byte // 8 bytes
}

// EvaluateTDX evaluates a TDX quote's TCB: the SGX components and PCESVN
// from the PCK certificate and the TDX components from TEE_TCB_SVN, then the
// TDX module identity for the module's major version.
func EvaluateTDX(t *TCBInfo, p *PCKInfo, in TDXInput) (*Result, error) {
	if t.ID != "TDX" {
		return nil, fmt.Errorf("TCB info id %q is not TDX: %w", t.ID, attest.ErrCollateral)
	}
	if err := matchPlatform(t, p); err != nil {
		return nil, err
	}
	if len(in.TEETCBSVN) != 16 {
		return nil, fmt.Errorf("TEE_TCB_SVN has %d bytes: %w", len(in.TEETCBSVN), attest.ErrMalformed)
	}
	if m := t.TDXModule; m != nil {
		if !bytes.Equal(m.MRSigner, in.MRSignerSeam) {
			return nil, fmt.Errorf("MRSIGNERSEAM %x is not the TDX module signer of the TCB info: %w", in.MRSignerSeam, attest.ErrCollateral)
		}
		if !maskedEqual(in.SeamAttributes, m.AttributesMask, m.Attributes) {
			return nil, fmt.Errorf("SEAM attributes %x do not match the TCB info: %w", in.SeamAttributes, attest.ErrCollateral)
		}
	}
	var res *Result
	for i := range t.TCBLevels {
		l := &t.TCBLevels[i]
		if !sgxLevelMatches(l, p) || len(l.TCB.TDXComponents) != 16 {
			continue
		}
		ok := true
		for j, c := range l.TCB.TDXComponents {
			if in.TEETCBSVN[j] < c.SVN {
				ok = false
				break
			}
		}
		if ok {
			res = &Result{Status: l.TCBStatus, AdvisoryIDs: l.AdvisoryIDs}
			break
		}
	}
	if res == nil {
		return belowAll(), nil
	}
	// TDX module versions >= 1 are rated by a module identity.
	if in.TEETCBSVN[1] > 0 && len(t.TDXModuleIdentities) > 0 {
		id := fmt.Sprintf("TDX_%02X", in.TEETCBSVN[1])
		var mod *TDXModuleIdentity
		for i := range t.TDXModuleIdentities {
			if strings.EqualFold(t.TDXModuleIdentities[i].ID, id) {
				mod = &t.TDXModuleIdentities[i]
			}
		}
		if mod == nil {
			return nil, fmt.Errorf("no TDX module identity %s in the TCB info: %w", id, attest.ErrCollateral)
		}
		var ml *TCBLevel
		for i := range mod.TCBLevels {
			if uint16(in.TEETCBSVN[0]) >= mod.TCBLevels[i].TCB.ISVSVN {
				ml = &mod.TCBLevels[i]
				break
			}
		}
		if ml == nil {
			return nil, fmt.Errorf("TDX module %s SVN %d is below every level: %w", id, in.TEETCBSVN[0], attest.ErrCollateral)
		}
		res.Status = combine(res.Status, ml.TCBStatus)
		res.AdvisoryIDs = union(res.AdvisoryIDs, ml.AdvisoryIDs)
	}
	return res, nil
}

func maskedEqual(v, mask, want []byte) bool {
	if len(v) != len(mask) || len(mask) != len(want) {
		return false
	}
	for i := range v {
		if v[i]&mask[i] != want[i] {
			return false
		}
	}
	return true
}

// QEReport is the part of a QE's enclave report that QE identity checks.
type QEReport struct {
	MiscSelect uint32
	Attributes []byte // 16 bytes
	MRSigner   []byte
	ISVProdID  uint16
	ISVSVN     uint16
}

// MatchQE checks a QE report against the QE identity and returns the QE's
// TCB status and advisories.
func MatchQE(q *QEIdentity, r QEReport) (*Result, error) {
	var ms [4]byte
	binary.LittleEndian.PutUint32(ms[:], r.MiscSelect)
	if !maskedEqual(ms[:], q.MiscSelectMask, q.MiscSelect) {
		return nil, fmt.Errorf("QE MISCSELECT %x does not match the QE identity: %w", ms, attest.ErrCollateral)
	}
	if !maskedEqual(r.Attributes, q.AttributesMask, q.Attributes) {
		return nil, fmt.Errorf("QE attributes %x do not match the QE identity: %w", r.Attributes, attest.ErrCollateral)
	}
	if !bytes.Equal(r.MRSigner, q.MRSigner) {
		return nil, fmt.Errorf("QE MRSIGNER %x is not Intel's (QE identity): %w", r.MRSigner, attest.ErrCollateral)
	}
	if r.ISVProdID != q.ISVProdID {
		return nil, fmt.Errorf("QE product id %d, QE identity says %d: %w", r.ISVProdID, q.ISVProdID, attest.ErrCollateral)
	}
	for _, l := range q.TCBLevels {
		if r.ISVSVN >= l.TCB.ISVSVN {
			return &Result{Status: l.TCBStatus, AdvisoryIDs: l.AdvisoryIDs}, nil
		}
	}
	return nil, fmt.Errorf("QE SVN %d is below every level of the QE identity: %w", r.ISVSVN, attest.ErrCollateral)
}

// Combine merges the platform and QE results: the QE can only lower the
// status (an out-of-date or revoked QE makes the whole quote so).
func Combine(platform, qe *Result) *Result {
	return &Result{
		Status:      combine(platform.Status, qe.Status),
		AdvisoryIDs: union(platform.AdvisoryIDs, qe.AdvisoryIDs),
		QEStatus:    qe.Status,

		BelowAllLevels: platform.BelowAllLevels,
	}
}

var rank = map[attest.TCBStatus]int{
	attest.TCBUpToDate: 0, attest.TCBSWHardeningNeeded: 1, attest.TCBConfigurationNeeded: 2,
	attest.TCBConfigurationAndSWHardeningNeeded: 3, attest.TCBOutOfDate: 4,
	attest.TCBOutOfDateConfigurationNeeded: 5, attest.TCBRevoked: 6,
}

func combine(a, b attest.TCBStatus) attest.TCBStatus {
	switch {
	case a == attest.TCBRevoked || b == attest.TCBRevoked:
		return attest.TCBRevoked
	case b == attest.TCBUpToDate:
		return a
	case b == attest.TCBOutOfDate || b == attest.TCBOutOfDateConfigurationNeeded:
		if a == attest.TCBConfigurationNeeded || a == attest.TCBConfigurationAndSWHardeningNeeded || a == attest.TCBOutOfDateConfigurationNeeded {
			return attest.TCBOutOfDateConfigurationNeeded
		}
		return attest.TCBOutOfDate
	}
	if rank[b] > rank[a] {
		return b
	}
	return a
}

func union(a, b []string) []string {
	out := append([]string(nil), a...)
	for _, x := range b {
		found := false
		for _, y := range out {
			found = found || x == y
		}
		if !found {
			out = append(out, x)
		}
	}
	return out
}
