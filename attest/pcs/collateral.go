package pcs

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"crypto/x509"

	"github.com/veil-tee/veil/attest"
)

// HexBytes is hex in JSON (either case).
type HexBytes []byte

// UnmarshalJSON decodes a hex string.
func (h *HexBytes) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("invalid hex %q", s)
	}
	*h = v
	return nil
}

// TCBComponent is one SVN component of a TCB level.
type TCBComponent struct {
	SVN      uint8  `json:"svn"`
	Category string `json:"category,omitempty"`
	Type     string `json:"type,omitempty"`
}

// TCB is the TCB of a level.
type TCB struct {
	SGXComponents []TCBComponent `json:"sgxtcbcomponents,omitempty"`
	TDXComponents []TCBComponent `json:"tdxtcbcomponents,omitempty"`
	PCESVN        uint16         `json:"pcesvn,omitempty"`
	ISVSVN        uint16         `json:"isvsvn,omitempty"`
}

// TCBLevel is one level of TCB info or QE identity.
type TCBLevel struct {
	TCB         TCB              `json:"tcb"`
	TCBDate     time.Time        `json:"tcbDate"`
	TCBStatus   attest.TCBStatus `json:"tcbStatus"`
	AdvisoryIDs []string         `json:"advisoryIDs,omitempty"`
}

// TDXModule describes the expected TDX module (SEAM) signer and attributes.
type TDXModule struct {
	MRSigner       HexBytes `json:"mrsigner"`
	Attributes     HexBytes `json:"attributes"`
	AttributesMask HexBytes `json:"attributesMask"`
}

// TDXModuleIdentity rates TDX module versions.
type TDXModuleIdentity struct {
	ID string `json:"id"`
	TDXModule
	TCBLevels []TCBLevel `json:"tcbLevels"`
}

// TCBInfoBody is the signed "tcbInfo" object (version 3).
type TCBInfoBody struct {
	ID                      string              `json:"id"`
	Version                 int                 `json:"version"`
	IssueDate               time.Time           `json:"issueDate"`
	NextUpdate              time.Time           `json:"nextUpdate"`
	FMSPC                   string              `json:"fmspc"`
	PCEID                   string              `json:"pceId"`
	TCBType                 int                 `json:"tcbType"`
	TCBEvaluationDataNumber int                 `json:"tcbEvaluationDataNumber"`
	TDXModule               *TDXModule          `json:"tdxModule,omitempty"`
	TDXModuleIdentities     []TDXModuleIdentity `json:"tdxModuleIdentities,omitempty"`
	TCBLevels               []TCBLevel          `json:"tcbLevels"`
}

// TCBInfo is a parsed TCB info response.
type TCBInfo struct {
	TCBInfoBody
	signed *signedItem
}

// QEIdentityBody is the signed "enclaveIdentity" object (version 2).
type QEIdentityBody struct {
	ID                      string     `json:"id"`
	Version                 int        `json:"version"`
	IssueDate               time.Time  `json:"issueDate"`
	NextUpdate              time.Time  `json:"nextUpdate"`
	TCBEvaluationDataNumber int        `json:"tcbEvaluationDataNumber"`
	MiscSelect              HexBytes   `json:"miscselect"`
	MiscSelectMask          HexBytes   `json:"miscselectMask"`
	Attributes              HexBytes   `json:"attributes"`
	AttributesMask          HexBytes   `json:"attributesMask"`
	MRSigner                HexBytes   `json:"mrsigner"`
	ISVProdID               uint16     `json:"isvprodid"`
	TCBLevels               []TCBLevel `json:"tcbLevels"`
}

// QEIdentity is a parsed QE identity response.
type QEIdentity struct {
	QEIdentityBody
	signed *signedItem
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}

// ParseTCBInfo parses a PCS TCB info response body ({"tcbInfo":..,"signature":..}).
func ParseTCBInfo(b []byte) (*TCBInfo, error) {
	s, err := parseSigned(b, "tcbInfo")
	if err != nil {
		return nil, fmt.Errorf("parsing TCB info: %v: %w", err, attest.ErrCollateral)
	}
	var t TCBInfo
	if err := strictUnmarshal(s.raw, &t.TCBInfoBody); err != nil {
		return nil, fmt.Errorf("parsing TCB info: %v: %w", err, attest.ErrCollateral)
	}
	if (t.ID != "SGX" && t.ID != "TDX") || t.Version != 3 {
		return nil, fmt.Errorf("parsing TCB info: id %q version %d, want SGX or TDX version 3: %w", t.ID, t.Version, attest.ErrCollateral)
	}
	if len(t.TCBLevels) == 0 {
		return nil, fmt.Errorf("parsing TCB info: no TCB levels: %w", attest.ErrCollateral)
	}
	if t.TCBType != 0 {
		return nil, fmt.Errorf("parsing TCB info: tcbType %d, only 0 is defined: %w", t.TCBType, attest.ErrCollateral)
	}
	s.issueDate, s.nextUpdate = t.IssueDate, t.NextUpdate
	t.signed = s
	return &t, nil
}

// ParseQEIdentity parses a PCS QE identity response body.
func ParseQEIdentity(b []byte) (*QEIdentity, error) {
	s, err := parseSigned(b, "enclaveIdentity")
	if err != nil {
		return nil, fmt.Errorf("parsing QE identity: %v: %w", err, attest.ErrCollateral)
	}
	var q QEIdentity
	if err := strictUnmarshal(s.raw, &q.QEIdentityBody); err != nil {
		return nil, fmt.Errorf("parsing QE identity: %v: %w", err, attest.ErrCollateral)
	}
	if (q.ID != "QE" && q.ID != "TD_QE") || q.Version != 2 {
		return nil, fmt.Errorf("parsing QE identity: id %q version %d, want QE or TD_QE version 2: %w", q.ID, q.Version, attest.ErrCollateral)
	}
	if len(q.MiscSelect) != 4 || len(q.MiscSelectMask) != 4 || len(q.Attributes) != 16 || len(q.AttributesMask) != 16 || len(q.MRSigner) != 32 || len(q.TCBLevels) == 0 {
		return nil, fmt.Errorf("parsing QE identity: bad field sizes or no TCB levels: %w", attest.ErrCollateral)
	}
	s.issueDate, s.nextUpdate = q.IssueDate, q.NextUpdate
	q.signed = s
	return &q, nil
}

// Collateral is the set of PCS items a verifier uses. Several TCB infos and
// QE identities may be present; the one matching the quote is chosen.
type Collateral struct {
	TCBInfos     []*TCBInfo
	QEIdentities []*QEIdentity
	// SigningChain is the TCB-Info-Issuer-Chain / SGX-Enclave-Identity-
	// Issuer-Chain: Intel SGX TCB Signing certificate and its root.
	SigningChain []*x509.Certificate
	// PCKCRLs are CRLs of the PCK Platform / Processor CAs.
	PCKCRLs []*x509.RevocationList
	// RootCRL is the Intel SGX Root CA's CRL.
	RootCRL *x509.RevocationList
	// Skipped lists files LoadDir did not recognise as collateral.
	Skipped []string
}

// Add classifies one item by content: TCB info JSON, QE identity JSON, a
// PEM certificate chain, a PEM or DER CRL. ok is false for content that is
// none of these.
func (c *Collateral) Add(name string, b []byte) (ok bool, err error) {
	trimmed := bytes.TrimSpace(b)
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{':
		var probe map[string]json.RawMessage
		if json.Unmarshal(trimmed, &probe) != nil {
			return false, nil
		}
		if _, ok := probe["tcbInfo"]; ok {
			t, err := ParseTCBInfo(trimmed)
			if err != nil {
				return false, fmt.Errorf("%s: %w", name, err)
			}
			c.TCBInfos = append(c.TCBInfos, t)
			return true, nil
		}
		if _, ok := probe["enclaveIdentity"]; ok {
			q, err := ParseQEIdentity(trimmed)
			if err != nil {
				return false, fmt.Errorf("%s: %w", name, err)
			}
			c.QEIdentities = append(c.QEIdentities, q)
			return true, nil
		}
		return false, nil
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN CERTIFICATE")):
		chain, err := ParsePEMChain(trimmed)
		if err != nil {
			return false, fmt.Errorf("%s: %v: %w", name, err, attest.ErrCollateral)
		}
		if isTCBSigning(chain[0]) {
			if c.SigningChain != nil && !chain[0].Equal(c.SigningChain[0]) {
				return false, fmt.Errorf("%s: a second, different TCB signing chain: %w", name, attest.ErrCollateral)
			}
			c.SigningChain = chain
			return true, nil
		}
		// Other chains (e.g. the PCK CRL issuer chain) are not needed: PCK
		// CRLs are checked against the CA in the quote's own PCK chain.
		return false, nil
	case bytes.HasPrefix(trimmed, []byte("-----BEGIN X509 CRL")):
		blk, _ := pem.Decode(trimmed)
		if blk == nil {
			return false, fmt.Errorf("%s: bad PEM CRL: %w", name, attest.ErrCollateral)
		}
		return c.addCRL(name, blk.Bytes)
	case len(b) > 0 && b[0] == 0x30:
		if _, err := x509.ParseRevocationList(b); err == nil {
			return c.addCRL(name, b)
		}
		return false, nil
	}
	// PCS may serve DER CRLs hex-encoded.
	if der, err := hex.DecodeString(string(trimmed)); err == nil && len(der) > 0 && der[0] == 0x30 {
		if _, err := x509.ParseRevocationList(der); err == nil {
			return c.addCRL(name, der)
		}
	}
	return false, nil
}

func (c *Collateral) addCRL(name string, der []byte) (bool, error) {
	crl, err := x509.ParseRevocationList(der)
	if err != nil {
		return false, fmt.Errorf("%s: parsing CRL: %v: %w", name, err, attest.ErrCollateral)
	}
	if strings.Contains(crl.Issuer.CommonName, "Root CA") {
		c.RootCRL = crl
	} else {
		c.PCKCRLs = append(c.PCKCRLs, crl)
	}
	return true, nil
}

// maxCollateralFile bounds the size of one collateral file.
const maxCollateralFile = 1 << 20

// LoadDir reads every regular file in dir (not recursively) and keeps those
// recognised as collateral by content; file names do not matter. Other
// files (quotes, READMEs) are listed in Skipped. A recognisable but invalid
// item is an error naming the file.
func LoadDir(dir string) (*Collateral, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading collateral directory: %w", err)
	}
	sort.Slice(ents, func(i, j int) bool { return ents[i].Name() < ents[j].Name() })
	c := &Collateral{}
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		p := filepath.Join(dir, e.Name())
		info, err := e.Info()
		if err != nil {
			return nil, err
		}
		if info.Size() > maxCollateralFile {
			c.Skipped = append(c.Skipped, e.Name())
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("reading collateral: %w", err)
		}
		ok, err := c.Add(p, b)
		if err != nil {
			return nil, err
		}
		if !ok {
			c.Skipped = append(c.Skipped, e.Name())
		}
	}
	if len(c.TCBInfos) == 0 && len(c.QEIdentities) == 0 {
		return nil, fmt.Errorf("%s: no TCB info or QE identity found: %w", dir, attest.ErrCollateral)
	}
	return c, nil
}

// LoadFS is LoadDir over an fs.FS directory (e.g. embedded test data).
func LoadFS(fsys fs.FS, dir string) (*Collateral, error) {
	ents, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, err
	}
	c := &Collateral{}
	for _, e := range ents {
		b, err := fs.ReadFile(fsys, dir+"/"+e.Name())
		if err != nil {
			return nil, err
		}
		if ok, err := c.Add(e.Name(), b); err != nil {
			return nil, err
		} else if !ok {
			c.Skipped = append(c.Skipped, e.Name())
		}
	}
	return c, nil
}

// ErrNoMatch: the collateral has no item for this platform.
var ErrNoMatch = errors.New("no matching collateral")

// pick chooses, among items with issue dates, the latest one issued at or
// before now; if all are issued after now, the earliest (whose check then
// reports it as not yet valid). -1 when there are none.
func pick(issued []time.Time, now time.Time) int {
	best := -1
	for i, t := range issued {
		switch {
		case best == -1:
			best = i
		case !t.After(now) && (issued[best].After(now) || t.After(issued[best])):
			best = i
		case issued[best].After(now) && t.Before(issued[best]):
			best = i
		}
	}
	return best
}

// FindTCBInfo returns the TCB info for id ("SGX" or "TDX") and fmspc; when
// several match, the newest one issued at or before now.
func (c *Collateral) FindTCBInfo(id, fmspc string, now time.Time) (*TCBInfo, error) {
	var cand []*TCBInfo
	var dates []time.Time
	for _, t := range c.TCBInfos {
		if t.ID == id && strings.EqualFold(t.FMSPC, fmspc) {
			cand, dates = append(cand, t), append(dates, t.IssueDate)
		}
	}
	if i := pick(dates, now); i >= 0 {
		return cand[i], nil
	}
	return nil, fmt.Errorf("no %s TCB info for FMSPC %s in the collateral: %w", id, strings.ToUpper(fmspc), errors.Join(ErrNoMatch, attest.ErrCollateral))
}

// FindQEIdentity returns the QE identity with id ("QE" or "TD_QE"); when
// several match, the newest one issued at or before now.
func (c *Collateral) FindQEIdentity(id string, now time.Time) (*QEIdentity, error) {
	var cand []*QEIdentity
	var dates []time.Time
	for _, q := range c.QEIdentities {
		if q.ID == id {
			cand, dates = append(cand, q), append(dates, q.IssueDate)
		}
	}
	if i := pick(dates, now); i >= 0 {
		return cand[i], nil
	}
	return nil, fmt.Errorf("no %s identity in the collateral: %w", id, errors.Join(ErrNoMatch, attest.ErrCollateral))
}

// Verify checks t's signature, chain and validity window.
func (t *TCBInfo) Verify(c *Collateral, o *Options) error {
	return t.signed.verify("TCB info", c.SigningChain, c.RootCRL, o)
}

// Verify checks q's signature, chain and validity window.
func (q *QEIdentity) Verify(c *Collateral, o *Options) error {
	return q.signed.verify("QE identity", c.SigningChain, c.RootCRL, o)
}
