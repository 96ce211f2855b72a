package attest

import (
	"bytes"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strings"
	"time"
)

// Policy is a declarative rule over Claims, written as JSON (see
// docs/attestation.md). The zero Policy is the default one: any hardware TEE
// (not sim), no debug, TCB status UpToDate or SWHardeningNeeded.
type Policy struct {
	// AllowSim accepts evidence from the sim backend. Without it, sim
	// evidence is always refused.
	AllowSim bool `json:"allow_sim,omitempty"`
	// TEE lists accepted TEE types; empty means any hardware TEE (and sim
	// when AllowSim is set).
	TEE []TEE `json:"tee,omitempty"`
	// Measurements: the claims' measurement must equal one of them.
	Measurements []Hex `json:"measurements,omitempty"`
	// InstanceMeasurements: the veil instance measurement the runtime bound
	// into its RA-TLS evidence (Claims.Instance) must equal one of them. In
	// a TDX or SEV-SNP VM the TEE measures the VM, so this is what tells
	// one instance from another.
	InstanceMeasurements []Hex `json:"instance_measurements,omitempty"`
	// Signer, ProductID, MinSVN constrain the workload's signer identity.
	Signer    Hex     `json:"signer,omitempty"`
	ProductID *uint16 `json:"product_id,omitempty"`
	MinSVN    *uint16 `json:"min_svn,omitempty"`
	// AllowDebug accepts debuggable workloads (default: refused).
	AllowDebug bool `json:"allow_debug,omitempty"`
	// TCBStatuses lists accepted TCB statuses; empty means UpToDate and
	// SWHardeningNeeded. NotApplicable (sim, SNP) is always accepted.
	TCBStatuses []TCBStatus `json:"tcb_statuses,omitempty"`
	// AdvisoryIDs, when set, lists every advisory ID the policy accepts;
	// claims naming any other advisory are refused. When unset, advisories
	// are judged only through the TCB status.
	AdvisoryIDs []string `json:"advisory_ids,omitempty"`
	// TDX and SNP constrain backend-specific fields.
	TDX *TDXPolicy `json:"tdx,omitempty"`
	SNP *SNPPolicy `json:"snp,omitempty"`
	// ReportData, when set, must be a prefix of the claims' report data
	// (a static binding; per-request bindings use Context.ReportData).
	ReportData Hex `json:"report_data,omitempty"`
	// MaxEvidenceAge refuses evidence older than this (e.g. "5m"). It needs
	// evidence that carries a time (sim quotes, RA-TLS certificates).
	MaxEvidenceAge Duration `json:"max_evidence_age,omitempty"`
}

// TDXPolicy constrains TDX claims.
type TDXPolicy struct {
	// MRTD: any of.
	MRTD []Hex `json:"mrtd,omitempty"`
	// RTMR: for each index, an exact value; empty means any.
	RTMR RTMRs `json:"rtmr,omitzero"`
}

// RTMRs are up to four RTMR values; JSON arrays longer than four are errors.
type RTMRs [4]Hex

// UnmarshalJSON reads at most four hex strings.
func (r *RTMRs) UnmarshalJSON(b []byte) error {
	var l []Hex
	if err := json.Unmarshal(b, &l); err != nil {
		return err
	}
	if len(l) > len(r) {
		return fmt.Errorf("%d values, TDX has %d RTMRs", len(l), len(r))
	}
	*r = RTMRs{}
	copy(r[:], l)
	return nil
}

// SNPPolicy constrains SEV-SNP claims.
type SNPPolicy struct {
	// Measurements: any of.
	Measurements []Hex `json:"measurements,omitempty"`
	// PolicyMask and PolicyValue: (claims policy & mask) must equal value.
	PolicyMask  uint64 `json:"policy_mask,omitempty"`
	PolicyValue uint64 `json:"policy_value,omitempty"`
	// MinReportedTCB and MinLaunchTCB: every part of the report's
	// REPORTED_TCB (the TCB the VCEK is derived from) and LAUNCH_TCB (the
	// TCB the guest was launched with) must be at least the policy's.
	MinReportedTCB *SNPTCB `json:"min_reported_tcb,omitempty"`
	MinLaunchTCB   *SNPTCB `json:"min_launch_tcb,omitempty"`
	// VMPL: the report must come from exactly this VM privilege level
	// (0 is the most privileged; a paravisor runs the guest at 1 or more).
	VMPL *uint32 `json:"vmpl,omitempty"`
	// MinGuestSVN: the guest's security version from its ID block.
	MinGuestSVN *uint32 `json:"min_guest_svn,omitempty"`
	// RequireRevocationCheck: the verifier must have checked the VCEK and
	// ASK against AMD's CRL (snp.Options.CheckRevocations).
	RequireRevocationCheck bool `json:"require_revocation_check,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("90s").
type Duration time.Duration

// MarshalJSON writes the duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration string like \"5m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("negative duration %q", s)
	}
	*d = Duration(v)
	return nil
}

// ErrPolicy is returned for a policy document that does not parse or check.
var ErrPolicy = errors.New("invalid policy")

// PolicyError names the field of a policy document that is wrong.
type PolicyError struct {
	Field string
	Err   error
}

func (e *PolicyError) Error() string   { return fmt.Sprintf("policy field %q: %v", e.Field, e.Err) }
func (e *PolicyError) Unwrap() []error { return []error{ErrPolicy, e.Err} }

// maxPolicySize bounds policy documents.
const maxPolicySize = 1 << 20

// ParsePolicy parses a policy document strictly: unknown fields, duplicate
// fields, wrong types and trailing data are errors naming the field.
func ParsePolicy(r io.Reader) (*Policy, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxPolicySize+1))
	if err != nil {
		return nil, fmt.Errorf("reading policy: %w", err)
	}
	if len(b) > maxPolicySize {
		return nil, &PolicyError{Field: "", Err: fmt.Errorf("document larger than %d bytes", maxPolicySize)}
	}
	var p Policy
	if err := strictDecode(b, &p, ""); err != nil {
		return nil, err
	}
	if err := p.Check(); err != nil {
		return nil, err
	}
	return &p, nil
}

// strictDecode decodes a JSON object into the struct v, field by field, so
// that every error names the field (prefix.name).
func strictDecode(b []byte, v any, prefix string) error {
	var fields map[string]json.RawMessage
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&fields); err != nil {
		return &PolicyError{Field: strings.TrimSuffix(prefix, "."), Err: fmt.Errorf("want a JSON object: %w", err)}
	}
	if fields == nil {
		return &PolicyError{Field: strings.TrimSuffix(prefix, "."), Err: errors.New("want a JSON object, got null")}
	}
	if _, err := dec.Token(); err != io.EOF {
		return &PolicyError{Field: strings.TrimSuffix(prefix, "."), Err: errors.New("trailing data after the JSON object")}
	}
	if err := checkDuplicates(b); err != nil {
		return &PolicyError{Field: strings.TrimSuffix(prefix, "."), Err: err}
	}
	rv := reflect.ValueOf(v).Elem()
	rt := rv.Type()
	byName := map[string]int{}
	for i := range rt.NumField() {
		name, _, _ := strings.Cut(rt.Field(i).Tag.Get("json"), ",")
		byName[name] = i
	}
	for name, raw := range fields {
		i, ok := byName[name]
		if !ok {
			return &PolicyError{Field: prefix + name, Err: errors.New("unknown field")}
		}
		fv := rv.Field(i)
		// Nested policy objects are decoded strictly too.
		if fv.Kind() == reflect.Pointer && fv.Type().Elem().Kind() == reflect.Struct && !bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			nv := reflect.New(fv.Type().Elem())
			if err := strictDecode(raw, nv.Interface(), prefix+name+"."); err != nil {
				return err
			}
			fv.Set(nv)
			continue
		}
		if err := json.Unmarshal(raw, fv.Addr().Interface()); err != nil {
			return &PolicyError{Field: prefix + name, Err: err}
		}
	}
	return nil
}

// checkDuplicates refuses objects with a repeated key at the top level.
func checkDuplicates(b []byte) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	if _, err := dec.Token(); err != nil {
		return err
	}
	seen := map[string]bool{}
	for dec.More() {
		t, err := dec.Token()
		if err != nil {
			return err
		}
		k, _ := t.(string)
		if seen[k] {
			return fmt.Errorf("duplicate field %q", k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return err
		}
	}
	return nil
}

// Check validates values that JSON types alone do not constrain.
func (p *Policy) Check() error {
	for i, m := range p.Measurements {
		if len(m) != 32 && len(m) != 48 {
			return &PolicyError{Field: fmt.Sprintf("measurements[%d]", i), Err: fmt.Errorf("want 32 or 48 bytes, got %d", len(m))}
		}
	}
	for i, m := range p.InstanceMeasurements {
		if len(m) != InstanceSize {
			return &PolicyError{Field: fmt.Sprintf("instance_measurements[%d]", i), Err: fmt.Errorf("want %d bytes, got %d", InstanceSize, len(m))}
		}
	}
	if len(p.Signer) != 0 && len(p.Signer) != 32 {
		return &PolicyError{Field: "signer", Err: fmt.Errorf("want 32 bytes, got %d", len(p.Signer))}
	}
	if len(p.ReportData) > ReportDataSize {
		return &PolicyError{Field: "report_data", Err: fmt.Errorf("at most %d bytes, got %d", ReportDataSize, len(p.ReportData))}
	}
	for i, id := range p.AdvisoryIDs {
		if strings.TrimSpace(id) == "" {
			return &PolicyError{Field: fmt.Sprintf("advisory_ids[%d]", i), Err: errors.New("empty advisory id")}
		}
	}
	if p.TDX != nil {
		for i, m := range p.TDX.MRTD {
			if len(m) != 48 {
				return &PolicyError{Field: fmt.Sprintf("tdx.mrtd[%d]", i), Err: fmt.Errorf("want 48 bytes, got %d", len(m))}
			}
		}
		for i, m := range p.TDX.RTMR {
			if len(m) != 0 && len(m) != 48 {
				return &PolicyError{Field: fmt.Sprintf("tdx.rtmr[%d]", i), Err: fmt.Errorf("want 48 bytes or empty, got %d", len(m))}
			}
		}
	}
	if p.SNP != nil {
		for i, m := range p.SNP.Measurements {
			if len(m) != 48 {
				return &PolicyError{Field: fmt.Sprintf("snp.measurements[%d]", i), Err: fmt.Errorf("want 48 bytes, got %d", len(m))}
			}
		}
		if p.SNP.PolicyValue&^p.SNP.PolicyMask != 0 {
			return &PolicyError{Field: "snp.policy_value", Err: errors.New("sets bits outside snp.policy_mask")}
		}
		if p.SNP.VMPL != nil && *p.SNP.VMPL > 3 {
			return &PolicyError{Field: "snp.vmpl", Err: fmt.Errorf("VMPL %d, want 0 to 3", *p.SNP.VMPL)}
		}
	}
	return nil
}

// DefaultTCBStatuses returns the TCB statuses accepted when a policy lists
// none (a new slice on every call).
func DefaultTCBStatuses() []TCBStatus {
	return []TCBStatus{TCBUpToDate, TCBSWHardeningNeeded}
}

// Unmet is one policy condition the claims do not satisfy.
type Unmet struct {
	// Field is the policy field (JSON name) that is not satisfied.
	Field string `json:"field"`
	// Reason says what was wanted and what the claims have.
	Reason string `json:"reason"`
}

func (u Unmet) String() string { return u.Field + ": " + u.Reason }

// DeniedError lists every unmet condition; it matches ErrDenied.
type DeniedError struct{ Unmet []Unmet }

func (e *DeniedError) Error() string {
	parts := make([]string, len(e.Unmet))
	for i, u := range e.Unmet {
		parts[i] = u.String()
	}
	return "denied by policy: " + strings.Join(parts, "; ")
}

// Is makes errors.Is(err, ErrDenied) true.
func (e *DeniedError) Is(target error) bool { return target == ErrDenied }

// Context carries per-evaluation inputs that are not part of the policy.
type Context struct {
	// Now is the evaluation time (for MaxEvidenceAge); zero means time.Now.
	Now time.Time
	// ReportData, when set, must equal the claims' report data exactly (for
	// example a server-chosen nonce or a key hash). Compared in constant time.
	ReportData []byte
}

// Evaluate checks claims against the policy at the current time and
// returns whether every condition holds and, if not, every unmet one.
func (p *Policy) Evaluate(c *Claims) (bool, []Unmet) {
	return p.EvaluateContext(c, Context{})
}

// Enforce is Evaluate returning a *DeniedError (matching ErrDenied).
func (p *Policy) Enforce(c *Claims, ctx Context) error {
	if ok, unmet := p.EvaluateContext(c, ctx); !ok {
		return &DeniedError{Unmet: unmet}
	}
	return nil
}

// EvaluateContext is Evaluate with explicit per-evaluation inputs.
func (p *Policy) EvaluateContext(c *Claims, ctx Context) (bool, []Unmet) {
	var un []Unmet
	add := func(field, format string, a ...any) {
		un = append(un, Unmet{Field: field, Reason: fmt.Sprintf(format, a...)})
	}
	if c == nil {
		return false, []Unmet{{Field: "tee", Reason: "no claims"}}
	}
	if c.TEE == TEESim && !p.AllowSim {
		add("allow_sim", "evidence is from the sim backend (tee=sim), which is not secure; the policy does not set allow_sim")
	}
	if len(p.TEE) > 0 && !slices.Contains(p.TEE, c.TEE) {
		add("tee", "tee %q is not one of %v", c.TEE, p.TEE)
	}
	if len(p.Measurements) > 0 && !anyEqual(p.Measurements, c.Measurement) {
		add("measurements", "measurement %s is not one of %s", c.Measurement, hexList(p.Measurements))
	}
	if len(p.InstanceMeasurements) > 0 && !anyEqual(p.InstanceMeasurements, c.Instance) {
		add("instance_measurements", "instance measurement %s is not one of %s", hexOrNone(c.Instance), hexList(p.InstanceMeasurements))
	}
	if len(p.Signer) > 0 && subtle.ConstantTimeCompare(p.Signer, c.Signer) != 1 {
		add("signer", "signer %s, want %s", hexOrNone(c.Signer), p.Signer)
	}
	if p.ProductID != nil && c.ProductID != *p.ProductID {
		add("product_id", "product id %d, want %d", c.ProductID, *p.ProductID)
	}
	if p.MinSVN != nil && c.SVN < *p.MinSVN {
		add("min_svn", "svn %d is below the minimum %d", c.SVN, *p.MinSVN)
	}
	// Sim claims are always debug (the host can read everything); allow_sim
	// is the one gate for them, so debug is not counted twice.
	if c.Debug && !p.AllowDebug && c.TEE != TEESim {
		add("allow_debug", "the workload is debuggable (its memory can be read by the host); the policy does not set allow_debug")
	}
	if c.TCBStatus != TCBNotApplicable {
		accepted := p.TCBStatuses
		if len(accepted) == 0 {
			accepted = DefaultTCBStatuses()
		}
		if !slices.Contains(accepted, c.TCBStatus) {
			st := string(c.TCBStatus)
			if st == "" {
				st = "(none)"
			}
			add("tcb_statuses", "TCB status %s is not one of %v", st, accepted)
		}
	}
	if p.AdvisoryIDs != nil {
		var bad []string
		for _, id := range c.AdvisoryIDs {
			if !slices.Contains(p.AdvisoryIDs, id) {
				bad = append(bad, id)
			}
		}
		if len(bad) > 0 {
			add("advisory_ids", "advisories %v are not accepted", bad)
		}
	}
	if p.TDX != nil {
		if c.TDX == nil {
			add("tdx", "the policy constrains TDX fields but the evidence is tee=%s", c.TEE)
		} else {
			if len(p.TDX.MRTD) > 0 && !anyEqual(p.TDX.MRTD, c.TDX.MRTD) {
				add("tdx.mrtd", "MRTD %s is not one of %s", c.TDX.MRTD, hexList(p.TDX.MRTD))
			}
			for i, want := range p.TDX.RTMR {
				if len(want) > 0 && subtle.ConstantTimeCompare(want, c.TDX.RTMR[i]) != 1 {
					add(fmt.Sprintf("tdx.rtmr[%d]", i), "RTMR%d %s, want %s", i, c.TDX.RTMR[i], want)
				}
			}
		}
	}
	if p.SNP != nil {
		if c.SNP == nil {
			add("snp", "the policy constrains SEV-SNP fields but the evidence is tee=%s", c.TEE)
		} else {
			if len(p.SNP.Measurements) > 0 && !anyEqual(p.SNP.Measurements, c.SNP.Measurement) {
				add("snp.measurements", "measurement %s is not one of %s", c.SNP.Measurement, hexList(p.SNP.Measurements))
			}
			if c.SNP.Policy&p.SNP.PolicyMask != p.SNP.PolicyValue {
				add("snp.policy_mask", "guest policy %#x & mask %#x = %#x, want %#x", c.SNP.Policy, p.SNP.PolicyMask, c.SNP.Policy&p.SNP.PolicyMask, p.SNP.PolicyValue)
			}
			if m := p.SNP.MinReportedTCB; m != nil && !DecomposeSNPTCB(c.SNP.ReportedTCB).AtLeast(*m) {
				add("snp.min_reported_tcb", "reported TCB %+v is below %+v", DecomposeSNPTCB(c.SNP.ReportedTCB), *m)
			}
			if m := p.SNP.MinLaunchTCB; m != nil && !DecomposeSNPTCB(c.SNP.LaunchTCB).AtLeast(*m) {
				add("snp.min_launch_tcb", "launch TCB %+v is below %+v", DecomposeSNPTCB(c.SNP.LaunchTCB), *m)
			}
			if p.SNP.VMPL != nil && c.SNP.VMPL != *p.SNP.VMPL {
				add("snp.vmpl", "VMPL %d, want %d", c.SNP.VMPL, *p.SNP.VMPL)
			}
			if p.SNP.MinGuestSVN != nil && c.SNP.GuestSVN < *p.SNP.MinGuestSVN {
				add("snp.min_guest_svn", "guest svn %d is below the minimum %d", c.SNP.GuestSVN, *p.SNP.MinGuestSVN)
			}
			if p.SNP.RequireRevocationCheck && !c.SNP.RevocationChecked {
				add("snp.require_revocation_check", "the VCEK was not checked against AMD's revocation list (verifier without CheckRevocations)")
			}
		}
	}
	if len(p.ReportData) > 0 && (len(c.ReportData) < len(p.ReportData) || subtle.ConstantTimeCompare(p.ReportData, c.ReportData[:len(p.ReportData)]) != 1) {
		add("report_data", "report data does not start with %s", p.ReportData)
	}
	if ctx.ReportData != nil && subtle.ConstantTimeCompare(ctx.ReportData, c.ReportData) != 1 {
		add("report_data", "report data is not bound to the expected value (nonce or key hash)")
	}
	if p.MaxEvidenceAge > 0 {
		now := ctx.Now
		if now.IsZero() {
			now = time.Now()
		}
		switch {
		case c.IssuedAt.IsZero():
			add("max_evidence_age", "the evidence carries no issue time; bind a fresh nonce into the report data instead")
		case now.Sub(c.IssuedAt) > time.Duration(p.MaxEvidenceAge):
			add("max_evidence_age", "evidence issued at %s is older than %s", c.IssuedAt.UTC().Format(time.RFC3339), time.Duration(p.MaxEvidenceAge))
		case c.IssuedAt.Sub(now) > time.Minute:
			add("max_evidence_age", "evidence issued at %s is in the future", c.IssuedAt.UTC().Format(time.RFC3339))
		}
	}
	return len(un) == 0, un
}

func anyEqual(list []Hex, v []byte) bool {
	found := 0
	for _, m := range list {
		found |= subtle.ConstantTimeCompare(m, v)
	}
	return found == 1
}

func hexList(list []Hex) string {
	s := make([]string, len(list))
	for i, m := range list {
		s[i] = hex.EncodeToString(m)
	}
	return "[" + strings.Join(s, " ") + "]"
}

func hexOrNone(b []byte) string {
	if len(b) == 0 {
		return "(none)"
	}
	return hex.EncodeToString(b)
}
