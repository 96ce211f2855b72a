package snp

import (
	"context"
	"errors"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/google/go-sev-guest/kds"
	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/veil-tee/veil/attest"
)

// TestTCBPartsAsGoSevGuest: veil splits TCB_VERSION as go-sev-guest does.
func TestTCBPartsAsGoSevGuest(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for range 1000 {
		v := r.Uint64()
		k := kds.DecomposeTCBVersion(kds.TCBVersion(v))
		got := attest.DecomposeSNPTCB(v)
		if got.BootLoader != k.BlSpl || got.TEE != k.TeeSpl || got.SNP != k.SnpSpl || got.Microcode != k.UcodeSpl {
			t.Fatalf("%#x: %+v, go-sev-guest %+v", v, got, k)
		}
	}
}

// TestSNPPolicyChecks: the sample report's TCB values, VMPL and guest SVN
// reach the claims, and each policy bound on them decides: met, and not
// met by one step.
func TestSNPPolicyChecks(t *testing.T) {
	c, err := verifier().Verify(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Quote: testdata.AttestationBytes})
	if err != nil {
		t.Fatal(err)
	}
	rep, launch := attest.DecomposeSNPTCB(c.SNP.ReportedTCB), attest.DecomposeSNPTCB(c.SNP.LaunchTCB)
	vmpl, svn := c.SNP.VMPL, c.SNP.GuestSVN
	ok := attest.Policy{AllowDebug: true, SNP: &attest.SNPPolicy{MinReportedTCB: &rep, MinLaunchTCB: &launch, VMPL: &vmpl, MinGuestSVN: &svn}}
	if good, un := ok.Evaluate(c); !good {
		t.Fatalf("the report's own values: %v", un)
	}
	higher := rep
	higher.SNP++
	otherVMPL := vmpl + 1
	if otherVMPL > 3 {
		otherVMPL = 0
	}
	moreSVN := svn + 1
	launchUp := launch
	launchUp.Microcode++
	for field, p := range map[string]*attest.SNPPolicy{
		"snp.min_reported_tcb":         {MinReportedTCB: &higher},
		"snp.min_launch_tcb":           {MinLaunchTCB: &launchUp},
		"snp.vmpl":                     {VMPL: &otherVMPL},
		"snp.min_guest_svn":            {MinGuestSVN: &moreSVN},
		"snp.require_revocation_check": {RequireRevocationCheck: true},
	} {
		pol := attest.Policy{AllowDebug: true, SNP: p}
		good, un := pol.Evaluate(c)
		if good || len(un) != 1 || un[0].Field != field {
			t.Fatalf("%s: %v %v", field, good, un)
		}
	}
	doc := `{"snp": {"min_reported_tcb": {"bl_spl": 3, "tee_spl": 0, "snp_spl": 8, "ucode_spl": 115}, "vmpl": 0, "require_revocation_check": true}}`
	p, err := attest.ParsePolicy(strings.NewReader(doc))
	if err != nil || p.SNP.MinReportedTCB.Microcode != 115 || *p.SNP.VMPL != 0 {
		t.Fatalf("parsing %s: %v", doc, err)
	}
	for _, bad := range []string{`{"snp": {"vmpl": 4}}`, `{"snp": {"min_launch_tcb": {"fmc_spl": 1}}}`} {
		if _, err := attest.ParsePolicy(strings.NewReader(bad)); !errors.Is(err, attest.ErrPolicy) {
			t.Fatalf("%s: %v", bad, err)
		}
	}
}

// TestCheckRevocationsOffline: with CheckRevocations and neither a CRL in
// the trusted roots nor network access, a report does not verify (the
// check is not skipped silently).
func TestCheckRevocationsOffline(t *testing.T) {
	v := NewVerifier(Options{VCEK: testdata.VcekBytes, CheckRevocations: true, Now: func() time.Time { return time.Date(2022, 9, 24, 1, 0, 0, 0, time.UTC) }})
	if _, err := v.Verify(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Quote: testdata.AttestationBytes}); err == nil {
		t.Fatal("verified with a revocation check and no CRL")
	}
}
