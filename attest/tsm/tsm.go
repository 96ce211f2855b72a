// Package tsm issues TDX quotes and SEV-SNP reports through the Linux
// configfs-tsm interface (/sys/kernel/config/tsm/report), using
// github.com/google/go-configfs-tsm. The kernel picks the provider
// (tdx_guest or sev_guest); the issuer reports which TEE answered.
//
// What it protects against: evidence of the wrong TEE type being passed
// off (the provider is checked against the expected type).
//
// What it does not protect against: anything by itself — evidence is only as
// good as its verification by the relying party.
package tsm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/report"

	"github.com/veil-tee/veil/attest"
)

// ReportDir is where Linux exposes configfs-tsm reports.
const ReportDir = "/sys/kernel/config/tsm/report"

// ErrUnavailable: this machine offers no configfs-tsm report interface.
var ErrUnavailable = errors.New("configfs-tsm is not available (not a TDX or SEV-SNP guest, or configfs not mounted)")

// Available reports whether configfs-tsm reports can be requested here.
func Available() bool {
	st, err := os.Stat(ReportDir)
	return err == nil && st.IsDir()
}

// Issuer requests evidence from configfs-tsm.
type Issuer struct {
	client configfsi.Client
	want   attest.TEE // "" accepts whatever provider answers
	tee    attest.TEE
}

// NewIssuer returns an issuer over client that expects evidence of type
// want (TEETDX, TEESNP, or "" for either).
func NewIssuer(client configfsi.Client, want attest.TEE) *Issuer {
	return &Issuer{client: client, want: want, tee: want}
}

// NewLinuxIssuer is NewIssuer over the kernel's configfs.
func NewLinuxIssuer(want attest.TEE) (*Issuer, error) {
	if !Available() {
		return nil, ErrUnavailable
	}
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return nil, fmt.Errorf("opening configfs-tsm: %w", err)
	}
	return NewIssuer(c, want), nil
}

// TEE returns the expected TEE type, or the one that last answered.
func (i *Issuer) TEE() attest.TEE { return i.tee }

// providerTEE maps configfs-tsm provider names to TEE types.
func providerTEE(p string) (attest.TEE, bool) {
	switch strings.TrimSpace(p) {
	case "tdx_guest":
		return attest.TEETDX, true
	case "sev_guest":
		return attest.TEESNP, true
	}
	return "", false
}

// Issue requests a report binding rd.
func (i *Issuer) Issue(_ context.Context, rd attest.ReportData) (*attest.Evidence, error) {
	resp, err := report.Get(i.client, &report.Request{InBlob: rd[:], GetAuxBlob: true})
	if err != nil {
		return nil, fmt.Errorf("requesting configfs-tsm report: %w", err)
	}
	tee, ok := providerTEE(resp.Provider)
	if !ok {
		return nil, fmt.Errorf("configfs-tsm provider %q is not tdx_guest or sev_guest: %w", strings.TrimSpace(resp.Provider), attest.ErrUnsupported)
	}
	if i.want != "" && tee != i.want {
		return nil, fmt.Errorf("configfs-tsm provider is %s, want %s: %w", tee, i.want, attest.ErrUnsupported)
	}
	i.tee = tee
	ev := &attest.Evidence{TEE: tee, Quote: resp.OutBlob}
	if tee == attest.TEESNP {
		ev.Aux = resp.AuxBlob
	}
	return ev, nil
}
