package snp

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-sev-guest/verify/testdata"

	"github.com/veil-tee/veil/attest"
)

const sampleMeasurement = "b07af9620f3b839b47996422ddec6058338951d984e312115131ea82705eaf5b6bdf8a9ece31a5a608eb0cf2e4872b01"

func verifier() *Verifier {
	return NewVerifier(Options{VCEK: testdata.VcekBytes, Now: func() time.Time { return time.Date(2022, 9, 24, 1, 0, 0, 0, time.UTC) }})
}

// go-sev-guest's embedded Milan report with its VCEK, checked against the
// AMD roots embedded in go-sev-guest.
func TestVerifySample(t *testing.T) {
	c, err := verifier().Verify(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Quote: testdata.AttestationBytes})
	if err != nil {
		t.Fatal(err)
	}
	if c.Measurement.String() != sampleMeasurement || c.SNP.Policy != 0xb0000 || !c.Debug || c.TCBStatus != attest.TCBNotApplicable {
		t.Fatalf("claims %+v", c)
	}
	// The sample's guest policy has the DEBUG bit: the default policy refuses it.
	var def attest.Policy
	if ok, un := def.Evaluate(c); ok || un[0].Field != "allow_debug" {
		t.Fatalf("default policy: %v", un)
	}
	p := attest.Policy{AllowDebug: true, SNP: &attest.SNPPolicy{Measurements: []attest.Hex{c.Measurement}, PolicyMask: 1 << 19, PolicyValue: 1 << 19}}
	if ok, un := p.Evaluate(c); !ok {
		t.Fatal(un)
	}
	if tee, _ := attest.Detect(testdata.AttestationBytes); tee != attest.TEESNP {
		t.Fatalf("detected %s", tee)
	}
}

func TestTamperedAndMalformed(t *testing.T) {
	b := bytes.Clone(testdata.AttestationBytes)
	b[0x90] ^= 1 // measurement
	if _, err := verifier().Verify(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Quote: b}); !errors.Is(err, attest.ErrSignature) {
		t.Fatalf("tampered: %v", err)
	}
	for _, q := range [][]byte{nil, testdata.AttestationBytes[:100], append(bytes.Clone(testdata.AttestationBytes), 0)} {
		if _, err := verifier().Verify(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Quote: q}); !errors.Is(err, attest.ErrMalformed) {
			t.Fatalf("len %d: %v", len(q), err)
		}
	}
	// No VCEK and no network: refused.
	v := NewVerifier(Options{Now: func() time.Time { return time.Date(2022, 9, 24, 1, 0, 0, 0, time.UTC) }})
	if _, err := v.Verify(context.Background(), &attest.Evidence{TEE: attest.TEESNP, Quote: testdata.AttestationBytes}); err == nil {
		t.Fatal("verified without a VCEK")
	}
}

func FuzzParseReport(f *testing.F) {
	f.Add(testdata.AttestationBytes)
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = ParseReport(b)
	})
}
