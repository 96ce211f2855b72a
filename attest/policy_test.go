package attest

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"
)

func hw() *Claims {
	return &Claims{
		TEE:         TEESGX,
		Measurement: bytes.Repeat([]byte{0xaa}, 32),
		Signer:      bytes.Repeat([]byte{0xbb}, 32),
		ProductID:   3,
		SVN:         5,
		ReportData:  make([]byte, 64),
		TCBStatus:   TCBUpToDate,
	}
}

func fields(un []Unmet) []string {
	var f []string
	for _, u := range un {
		f = append(f, u.Field)
	}
	return f
}

func TestDefaultPolicy(t *testing.T) {
	var p Policy
	if ok, un := p.Evaluate(hw()); !ok {
		t.Fatalf("default policy refused good claims: %v", un)
	}
	c := hw()
	c.TCBStatus = TCBSWHardeningNeeded
	if ok, _ := p.Evaluate(c); !ok {
		t.Fatal("SWHardeningNeeded refused by default")
	}
	for _, st := range []TCBStatus{TCBOutOfDate, TCBConfigurationNeeded, TCBRevoked, TCBOutOfDateConfigurationNeeded, TCBConfigurationAndSWHardeningNeeded, ""} {
		c.TCBStatus = st
		ok, un := p.Evaluate(c)
		if ok || len(un) != 1 || un[0].Field != "tcb_statuses" {
			t.Errorf("status %q: ok=%v unmet=%v", st, ok, un)
		}
		if st != "" && !strings.Contains(un[0].Reason, string(st)) {
			t.Errorf("reason %q does not name %s", un[0].Reason, st)
		}
	}
	c = hw()
	c.Debug = true
	if ok, un := p.Evaluate(c); ok || fields(un)[0] != "allow_debug" {
		t.Fatalf("debug accepted by default: %v", un)
	}
}

func TestSimNeedsAllowSim(t *testing.T) {
	c := hw()
	c.TEE, c.Debug, c.TCBStatus = TEESim, true, TCBNotApplicable
	var p Policy
	ok, un := p.Evaluate(c)
	if ok {
		t.Fatal("sim accepted without allow_sim")
	}
	if un[0].Field != "allow_sim" || !strings.Contains(un[0].Reason, "allow_sim") {
		t.Fatalf("rejection does not say allow_sim: %v", un)
	}
	p2, err := ParsePolicy(strings.NewReader(`{"allow_sim": true}`))
	if err != nil {
		t.Fatal(err)
	}
	if ok, un := p2.Evaluate(c); !ok {
		t.Fatalf(`{"allow_sim": true} refused sim evidence: %v`, un)
	}
}

func TestEveryUnmetNamed(t *testing.T) {
	doc := `{
	  "tee": ["tdx"],
	  "measurements": ["` + strings.Repeat("11", 32) + `"],
	  "signer": "` + strings.Repeat("22", 32) + `",
	  "product_id": 4,
	  "min_svn": 6,
	  "tcb_statuses": ["UpToDate"],
	  "advisory_ids": ["INTEL-SA-00615"],
	  "tdx": {"mrtd": ["` + strings.Repeat("33", 48) + `"]},
	  "report_data": "beef",
	  "max_evidence_age": "1m"
	}`
	p, err := ParsePolicy(strings.NewReader(doc))
	if err != nil {
		t.Fatal(err)
	}
	c := hw()
	c.Debug = true
	c.TCBStatus = TCBSWHardeningNeeded
	c.AdvisoryIDs = []string{"INTEL-SA-00615", "INTEL-SA-00657"}
	ok, un := p.Evaluate(c)
	if ok {
		t.Fatal("accepted")
	}
	want := []string{"tee", "measurements", "signer", "product_id", "min_svn", "allow_debug", "tcb_statuses", "advisory_ids", "tdx", "report_data", "max_evidence_age"}
	got := fields(un)
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("unmet fields\n got %v\nwant %v", got, want)
	}
	err = p.Enforce(c, Context{})
	var de *DeniedError
	if !errors.Is(err, ErrDenied) || !errors.As(err, &de) || len(de.Unmet) != len(want) {
		t.Fatalf("Enforce: %v", err)
	}
	if !strings.Contains(err.Error(), strings.Repeat("aa", 32)) {
		t.Errorf("measurement not named: %v", err)
	}
}

func TestMatchingPolicy(t *testing.T) {
	c := hw()
	c.IssuedAt = time.Unix(1000, 0)
	c.ReportData[0], c.ReportData[1] = 0xbe, 0xef
	c.AdvisoryIDs = []string{"INTEL-SA-00615"}
	pid, svn := uint16(3), uint16(5)
	p := Policy{
		TEE:            []TEE{TEESGX},
		Measurements:   []Hex{bytes.Repeat([]byte{1}, 32), c.Measurement},
		Signer:         c.Signer,
		ProductID:      &pid,
		MinSVN:         &svn,
		AdvisoryIDs:    []string{"INTEL-SA-00615"},
		ReportData:     Hex{0xbe, 0xef},
		MaxEvidenceAge: Duration(time.Minute),
	}
	if ok, un := p.EvaluateContext(c, Context{Now: time.Unix(1030, 0), ReportData: c.ReportData}); !ok {
		t.Fatalf("refused: %v", un)
	}
	if ok, un := p.EvaluateContext(c, Context{Now: time.Unix(1061, 0)}); ok || fields(un)[0] != "max_evidence_age" {
		t.Fatalf("stale evidence: %v", un)
	}
	other := bytes.Repeat([]byte{9}, 64)
	if ok, un := p.EvaluateContext(c, Context{Now: time.Unix(1030, 0), ReportData: other}); ok || fields(un)[0] != "report_data" {
		t.Fatalf("unbound report data: %v", un)
	}
}

func TestTDXAndSNPPolicy(t *testing.T) {
	mrtd := bytes.Repeat([]byte{7}, 48)
	c := &Claims{TEE: TEETDX, Measurement: mrtd, TCBStatus: TCBUpToDate, TDX: &TDXClaims{MRTD: mrtd}}
	for i := range c.TDX.RTMR {
		c.TDX.RTMR[i] = make([]byte, 48)
	}
	p := Policy{TDX: &TDXPolicy{MRTD: []Hex{mrtd}}}
	p.TDX.RTMR[2] = bytes.Repeat([]byte{1}, 48)
	ok, un := p.Evaluate(c)
	if ok || len(un) != 1 || un[0].Field != "tdx.rtmr[2]" {
		t.Fatalf("rtmr: %v", un)
	}
	s := &Claims{TEE: TEESNP, TCBStatus: TCBNotApplicable, SNP: &SNPClaims{Policy: 1 << 19}}
	sp := Policy{SNP: &SNPPolicy{PolicyMask: 1 << 19, PolicyValue: 0}}
	if ok, un := sp.Evaluate(s); ok || un[0].Field != "snp.policy_mask" {
		t.Fatalf("snp policy bits: %v", un)
	}
}

func TestParsePolicyStrict(t *testing.T) {
	cases := map[string]string{
		`{"allow_sims": true}`:                   "allow_sims",
		`{"allow_sim": "yes"}`:                   "allow_sim",
		`{"measurements": ["zz"]}`:               "measurements",
		`{"measurements": ["aabb"]}`:             "measurements[0]",
		`{"tee": ["sgx", "pdp11"]}`:              "tee",
		`{"tcb_statuses": ["Fine"]}`:             "tcb_statuses",
		`{"tdx": {"mrtdx": []}}`:                 "tdx.mrtdx",
		`{"tdx": {"mrtd": ["00"]}}`:              "tdx.mrtd[0]",
		`{"max_evidence_age": "soon"}`:           "max_evidence_age",
		`{"signer": "00"}`:                       "signer",
		`{"allow_sim": true, "allow_sim": true}`: "",
		`{"allow_sim": true} {}`:                 "",
		`[]`:                                     "",
		`null`:                                   "",
	}
	for doc, field := range cases {
		_, err := ParsePolicy(strings.NewReader(doc))
		var pe *PolicyError
		if !errors.As(err, &pe) || !errors.Is(err, ErrPolicy) {
			t.Errorf("%s: err = %v, want a PolicyError", doc, err)
			continue
		}
		if pe.Field != field {
			t.Errorf("%s: field %q, want %q (%v)", doc, pe.Field, field, err)
		}
	}
}

func FuzzParsePolicy(f *testing.F) {
	f.Add([]byte(`{"allow_sim": true}`))
	f.Add([]byte(`{"tdx": {"rtmr": ["", "", "` + strings.Repeat("00", 48) + `"]}, "snp": {"policy_mask": 1}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := ParsePolicy(bytes.NewReader(b))
		if err != nil {
			return
		}
		p.Evaluate(hw())
	})
}

func TestPolicyRoundTrip(t *testing.T) {
	pid, svn := uint16(1), uint16(2)
	p := Policy{
		AllowSim: true, TEE: []TEE{TEESGX, TEETDX}, Measurements: []Hex{bytes.Repeat([]byte{1}, 32)},
		Signer: bytes.Repeat([]byte{2}, 32), ProductID: &pid, MinSVN: &svn, AllowDebug: true,
		TCBStatuses: []TCBStatus{TCBUpToDate}, AdvisoryIDs: []string{"INTEL-SA-00615"},
		TDX:        &TDXPolicy{MRTD: []Hex{bytes.Repeat([]byte{3}, 48)}, RTMR: RTMRs{nil, bytes.Repeat([]byte{4}, 48)}},
		SNP:        &SNPPolicy{PolicyMask: 1 << 19},
		ReportData: Hex{9}, MaxEvidenceAge: Duration(time.Minute),
	}
	b1, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	q, err := ParsePolicy(bytes.NewReader(b1))
	if err != nil {
		t.Fatalf("%s: %v", b1, err)
	}
	b2, _ := json.Marshal(q)
	if !bytes.Equal(b1, b2) {
		t.Fatalf("round trip\n%s\n%s", b1, b2)
	}
}

// The default TCB statuses cannot be changed by a caller: each call returns
// a new slice, and a policy without tcb_statuses keeps its defaults.
func TestDefaultTCBStatusesNotShared(t *testing.T) {
	d := DefaultTCBStatuses()
	if len(d) != 2 || d[0] != TCBUpToDate || d[1] != TCBSWHardeningNeeded {
		t.Fatalf("defaults %v", d)
	}
	d[0], d[1] = TCBRevoked, TCBOutOfDate
	var p Policy
	if ok, un := p.Evaluate(&Claims{TEE: TEESGX, TCBStatus: TCBUpToDate}); !ok {
		t.Fatalf("UpToDate refused after a caller changed its copy: %v", un)
	}
	if ok, _ := p.Evaluate(&Claims{TEE: TEESGX, TCBStatus: TCBOutOfDate}); ok {
		t.Fatal("OutOfDate accepted after a caller changed its copy")
	}
}
