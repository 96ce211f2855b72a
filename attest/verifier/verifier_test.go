package verifier

import (
	"context"
	"crypto/x509"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/sim"
)

func TestDispatch(t *testing.T) {
	col, err := pcs.LoadDir("../testdata/sgx")
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := sim.Init(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	v := New(Options{Collateral: col, SimRoots: []*x509.Certificate{p.CA}, Now: func() time.Time { return time.Unix(1671497404, 0) }})
	q, _ := os.ReadFile("../testdata/sgx/quote_v3_ecdsa_p256_pck_chain.bin")
	c, err := VerifyRaw(ctx, v, q, nil)
	if err != nil || c.TEE != attest.TEESGX {
		t.Fatalf("sgx: %v", err)
	}
	ev, _ := p.Issuer(sim.Identity{}).Issue(ctx, attest.ReportData{})
	// The sim platform certificate is valid from now on; verify at now.
	v2 := New(Options{SimRoots: []*x509.Certificate{p.CA}})
	if c, err := VerifyRaw(ctx, v2, ev.Quote, nil); err != nil || c.TEE != attest.TEESim {
		t.Fatalf("sim: %v", err)
	}
	// No sim roots, no collateral: those TEE types have no backend.
	empty := New(Options{})
	if _, err := VerifyRaw(ctx, empty, ev.Quote, nil); !errors.Is(err, attest.ErrNoBackend) {
		t.Fatalf("sim without roots: %v", err)
	}
	if _, err := VerifyRaw(ctx, empty, q, nil); !errors.Is(err, attest.ErrNoBackend) {
		t.Fatalf("sgx without collateral: %v", err)
	}
	if _, err := VerifyRaw(ctx, empty, []byte("garbage!garbage!"), nil); !errors.Is(err, attest.ErrMalformed) {
		t.Fatalf("garbage: %v", err)
	}
}

func TestPlatformOf(t *testing.T) {
	for _, tc := range []struct{ file, tee, fmspc string }{
		{"../testdata/sgx/quote_v3_ecdsa_p256_pck_chain.bin", "sgx", "00606A000000"},
		{"../testdata/tdx/quote_v4_tdx_ecdsa_p256.bin", "tdx", "C0806F000000"},
	} {
		b, _ := os.ReadFile(tc.file)
		tee, fmspc, ca, err := PlatformOf(b)
		if err != nil || string(tee) != tc.tee || fmspc != tc.fmspc || (ca != "platform" && ca != "processor") {
			t.Fatalf("%s: %s %s %s %v", tc.file, tee, fmspc, ca, err)
		}
	}
	b, _ := os.ReadFile("../testdata/sgx/quote_v3_ecdsa_p256_eppid.bin")
	if _, _, _, err := PlatformOf(b); !errors.Is(err, attest.ErrUnsupported) {
		t.Fatalf("eppid: %v", err)
	}
}
