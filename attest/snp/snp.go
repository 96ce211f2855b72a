// Package snp verifies AMD SEV-SNP attestation reports and issues them
// inside an SNP guest through Linux configfs-tsm (package tsm). Parsing and
// verification (VCEK/VLEK signature, ASK/ARK chain to AMD's roots embedded
// in github.com/google/go-sev-guest, or injected ones) use go-sev-guest.
//
// What it protects against: forged or altered reports, reports signed by a
// key that does not chain to AMD's roots, debug guests (the policy's DEBUG
// bit is reported as Claims.Debug).
//
// What it does not protect against: replay of a genuine report (bind a
// nonce into the report data); revoked VCEKs or ASKs unless
// Options.CheckRevocations is set, with a current CRL in TrustedRoots or
// AllowNetwork; TCB ratings — SNP has no TCB-info status, so claims carry
// TCB status NotApplicable and the reported, launch, committed and current
// TCB values, which policies bound part by part (snp.min_reported_tcb,
// snp.min_launch_tcb), with the VMPL and guest SVN.
package snp

import (
	"bytes"
	"context"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/google/go-sev-guest/abi"
	spb "github.com/google/go-sev-guest/proto/sevsnp"
	"github.com/google/go-sev-guest/verify"
	"github.com/google/go-sev-guest/verify/trust"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/tsm"
)

// ReportSize is the size of an attestation report.
const ReportSize = abi.ReportSize

// maxAux bounds the certificate table.
const maxAux = 64 << 10

// Options configure a Verifier.
type Options struct {
	// VCEK is the endorsement key certificate (DER) to use when the evidence
	// carries no certificate table.
	VCEK []byte
	// TrustedRoots maps product lines ("Milan", "Genoa", ...) to AMD
	// ARK/ASK roots; nil means the roots embedded in go-sev-guest.
	TrustedRoots map[string][]*trust.AMDRootCerts
	// AllowNetwork lets the verifier fetch missing certificates, and the
	// CRL for CheckRevocations, from AMD's KDS (never used in tests).
	AllowNetwork bool
	// CheckRevocations checks the VCEK and ASK against the ARK-signed CRL:
	// the one in TrustedRoots (AMDRootCerts.CRL) while it is current, else
	// fetched with AllowNetwork; without either, verification fails.
	// Claims then carry SNP.RevocationChecked.
	CheckRevocations bool
	// Now returns the verification time; nil means time.Now.
	Now func() time.Time
}

// Verifier verifies SEV-SNP reports.
type Verifier struct{ o Options }

// NewVerifier returns a verifier.
func NewVerifier(o Options) *Verifier { return &Verifier{o: o} }

// ParseReport parses a raw report strictly (exact size).
func ParseReport(b []byte) (r *spb.Report, err error) {
	if len(b) != ReportSize {
		return nil, fmt.Errorf("parsing SEV-SNP report: %d bytes, want %d: %w", len(b), ReportSize, attest.ErrMalformed)
	}
	defer func() {
		if p := recover(); p != nil {
			r, err = nil, fmt.Errorf("parsing SEV-SNP report: %v: %w", p, attest.ErrMalformed)
		}
	}()
	r, err = abi.ReportToProto(b)
	if err != nil {
		return nil, fmt.Errorf("parsing SEV-SNP report: %v: %w", err, attest.ErrMalformed)
	}
	return r, nil
}

// Verify checks the report's signature and certificate chain.
func (v *Verifier) Verify(ctx context.Context, ev *attest.Evidence) (*attest.Claims, error) {
	if ev == nil || ev.TEE != attest.TEESNP {
		return nil, fmt.Errorf("verifying SEV-SNP report: evidence is not tee=snp: %w", attest.ErrUnsupported)
	}
	r, err := ParseReport(ev.Quote)
	if err != nil {
		return nil, err
	}
	chain := &spb.CertificateChain{}
	if len(ev.Aux) > 0 {
		if len(ev.Aux) > maxAux {
			return nil, fmt.Errorf("parsing SEV-SNP certificate table: %d bytes: %w", len(ev.Aux), attest.ErrMalformed)
		}
		var t abi.CertTable
		if err := t.Unmarshal(ev.Aux); err != nil {
			return nil, fmt.Errorf("parsing SEV-SNP certificate table: %v: %w", err, attest.ErrMalformed)
		}
		chain = t.Proto()
	}
	if len(chain.GetVcekCert()) == 0 && len(chain.GetVlekCert()) == 0 && len(v.o.VCEK) > 0 {
		chain.VcekCert = v.o.VCEK
	}
	if len(chain.GetVcekCert()) > 0 {
		if _, err := x509.ParseCertificate(chain.GetVcekCert()); err != nil {
			return nil, fmt.Errorf("parsing VCEK certificate: %v: %w", err, attest.ErrMalformed)
		}
	}
	now := time.Now()
	if v.o.Now != nil {
		now = v.o.Now()
	}
	opts := &verify.Options{Now: now, DisableCertFetching: !v.o.AllowNetwork, TrustedRoots: v.o.TrustedRoots, CheckRevocations: v.o.CheckRevocations}
	if v.o.CheckRevocations && !v.o.AllowNetwork {
		opts.Getter = noNetwork{}
	}
	if err := verify.SnpAttestationContext(ctx, &spb.Attestation{Report: r, CertificateChain: chain}, opts); err != nil {
		return nil, fmt.Errorf("verifying SEV-SNP report: %v: %w", err, attest.ErrSignature)
	}
	pol, err := abi.ParseSnpPolicy(r.GetPolicy())
	if err != nil {
		return nil, fmt.Errorf("parsing SEV-SNP guest policy: %v: %w", err, attest.ErrMalformed)
	}
	return &attest.Claims{
		TEE:         attest.TEESNP,
		Measurement: bytes.Clone(r.GetMeasurement()),
		Debug:       pol.Debug,
		ReportData:  bytes.Clone(r.GetReportData()),
		TCBStatus:   attest.TCBNotApplicable,
		Platform:    attest.Platform{ChipID: bytes.Clone(r.GetChipId())},
		SNP: &attest.SNPClaims{
			Measurement:       bytes.Clone(r.GetMeasurement()),
			Policy:            r.GetPolicy(),
			VMPL:              r.GetVmpl(),
			GuestSVN:          r.GetGuestSvn(),
			HostData:          bytes.Clone(r.GetHostData()),
			FamilyID:          bytes.Clone(r.GetFamilyId()),
			ImageID:           bytes.Clone(r.GetImageId()),
			ReportedTCB:       r.GetReportedTcb(),
			LaunchTCB:         r.GetLaunchTcb(),
			CommittedTCB:      r.GetCommittedTcb(),
			CurrentTCB:        r.GetCurrentTcb(),
			RevocationChecked: v.o.CheckRevocations,
		},
	}, nil
}

// noNetwork refuses every fetch: a CRL must come from the trusted roots.
type noNetwork struct{}

func (noNetwork) Get(url string) ([]byte, error) {
	return nil, fmt.Errorf("fetching %s: network access is off (snp.Options.AllowNetwork)", url)
}

// NewIssuer returns an issuer of SEV-SNP reports (with the host's
// certificate table) through the kernel's configfs-tsm interface.
func NewIssuer() (*tsm.Issuer, error) { return tsm.NewLinuxIssuer(attest.TEESNP) }
