// Package attest is veil's remote-attestation model: an Issuer produces
// evidence that binds 64 bytes of caller-chosen report data to the TEE the
// caller runs in, a Verifier turns evidence into verified Claims, and a
// Policy decides whether those claims are good enough (for example, for the
// key service to release a key).
//
// What it protects against: a host or network attacker who forges, replays
// into another binding, or alters evidence; a workload that claims another
// measurement, signer, product or security version than it has; platforms
// whose TCB level or debug state the policy does not accept; sim evidence
// being taken for hardware evidence (tee=sim is always reported and always
// refused unless a policy sets allow_sim).
//
// What it does not protect against: a compromised TEE vendor root or a
// vulnerable TEE that the collateral still rates acceptable; replay of a
// whole quote when the caller does not bind a fresh nonce or key hash into
// the report data (see Context.ReportData and the ratls package); sim
// evidence, which anyone who can read the sim platform key can forge.
//
// Backends live in sub-packages (sim, sgx, tdx, snp); package verifier
// combines them into one Verifier configured with trust roots.
package attest

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// TEE names a trusted execution environment type.
type TEE string

// TEE types veil knows.
const (
	TEESim TEE = "sim" // software platform for development; never secure
	TEESGX TEE = "sgx" // Intel SGX enclave, DCAP ECDSA quote v3
	TEETDX TEE = "tdx" // Intel TDX confidential VM, quote v4
	TEESNP TEE = "snp" // AMD SEV-SNP confidential VM, attestation report
)

// ParseTEE parses a TEE name.
func ParseTEE(s string) (TEE, error) {
	switch t := TEE(strings.ToLower(s)); t {
	case TEESim, TEESGX, TEETDX, TEESNP:
		return t, nil
	}
	return "", fmt.Errorf("unknown TEE type %q (want sim, sgx, tdx or snp)", s)
}

// UnmarshalJSON accepts only known TEE names.
func (t *TEE) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := ParseTEE(s)
	if err != nil {
		return err
	}
	*t = v
	return nil
}

// ReportDataSize is the number of caller-chosen bytes evidence binds.
const ReportDataSize = 64

// ReportData is the caller-chosen data bound into evidence.
type ReportData [ReportDataSize]byte

// Evidence is what a TEE produces: the raw quote or report in its native
// format, plus auxiliary data some backends need (for SNP, the certificate
// table the host supplied).
type Evidence struct {
	TEE   TEE    `json:"tee"`
	Quote []byte `json:"quote"`
	Aux   []byte `json:"aux,omitempty"`
}

// Issuer produces evidence for the TEE the caller runs in.
type Issuer interface {
	TEE() TEE
	Issue(ctx context.Context, reportData ReportData) (*Evidence, error)
}

// Verifier checks evidence (signatures, certificate chains, collateral) and
// returns the claims it proves. It does not apply a Policy.
type Verifier interface {
	Verify(ctx context.Context, ev *Evidence) (*Claims, error)
}

// Sentinel errors. Backends wrap them so callers can use errors.Is.
var (
	// ErrMalformed: the evidence or collateral does not parse (bad length,
	// trailing bytes, unknown version).
	ErrMalformed = errors.New("malformed evidence")
	// ErrUnsupported: a well-formed input uses a feature veil does not verify
	// (e.g. an encrypted PPID instead of a PCK certificate chain).
	ErrUnsupported = errors.New("unsupported evidence")
	// ErrSignature: a signature does not verify.
	ErrSignature = errors.New("signature verification failed")
	// ErrChain: a certificate chain does not lead to a trusted root, or a
	// certificate is expired, not yet valid or revoked.
	ErrChain = errors.New("certificate chain not trusted")
	// ErrCollateral: collateral is missing, expired, not yet valid or does
	// not match the evidence.
	ErrCollateral = errors.New("collateral not acceptable")
	// ErrBinding: a value that must be bound to another is not (attestation
	// key hash, report data, certificate key).
	ErrBinding = errors.New("binding check failed")
	// ErrDenied: the claims do not satisfy the policy.
	ErrDenied = errors.New("denied by policy")
	// ErrNoBackend: no verifier is configured for the evidence's TEE type.
	ErrNoBackend = errors.New("no verifier for this TEE type")
)

// Hex is a byte string that is written and read as lowercase hex in JSON.
type Hex []byte

// String returns the lowercase hex form.
func (h Hex) String() string { return hex.EncodeToString(h) }

// MarshalJSON writes h as a hex string.
func (h Hex) MarshalJSON() ([]byte, error) { return json.Marshal(hex.EncodeToString(h)) }

// UnmarshalJSON reads a hex string.
func (h *Hex) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a hex string: %w", err)
	}
	v, err := hex.DecodeString(s)
	if err != nil {
		return fmt.Errorf("invalid hex %q: %w", s, err)
	}
	*h = v
	return nil
}

// Detect recognises the TEE type of a raw quote or report by its header:
// the sim magic, a DCAP quote v3 for SGX (TEE type 0) or v4/v5 for TDX
// (TEE type 0x81), or an SEV-SNP attestation report (1184 bytes, version
// 2 to 5).
func Detect(raw []byte) (TEE, error) {
	switch {
	case len(raw) >= 8 && string(raw[:8]) == "VEILSIMQ":
		return TEESim, nil
	case len(raw) >= 8 && raw[2] == 2 && raw[3] == 0: // attestation key type ECDSA-P256
		ver := uint16(raw[0]) | uint16(raw[1])<<8
		tee := uint32(raw[4]) | uint32(raw[5])<<8 | uint32(raw[6])<<16 | uint32(raw[7])<<24
		switch {
		case ver == 3 && tee == 0:
			return TEESGX, nil
		case (ver == 4 || ver == 5) && tee == 0x81:
			return TEETDX, nil
		case ver == 4 && tee == 0:
			return "", fmt.Errorf("SGX quote v4 is not supported: %w", ErrUnsupported)
		}
	case len(raw) == 0x4a0 && raw[0] >= 2 && raw[0] <= 5 && raw[1] == 0 && raw[2] == 0 && raw[3] == 0:
		return TEESNP, nil
	}
	return "", fmt.Errorf("unrecognised evidence: not a sim quote, SGX v3 or TDX v4 quote or SEV-SNP report: %w", ErrMalformed)
}

// Multi dispatches to a Verifier per TEE type.
type Multi map[TEE]Verifier

// Verify verifies ev with the verifier for its TEE type.
func (m Multi) Verify(ctx context.Context, ev *Evidence) (*Claims, error) {
	if ev == nil {
		return nil, fmt.Errorf("verifying evidence: none: %w", ErrMalformed)
	}
	v, ok := m[ev.TEE]
	if !ok || v == nil {
		return nil, fmt.Errorf("verifying %s evidence: %w", ev.TEE, ErrNoBackend)
	}
	return v.Verify(ctx, ev)
}
