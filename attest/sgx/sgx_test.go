package sgx

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
)

const (
	dataDir      = "../testdata/sgx"
	goodTime     = 1671497404
	mrEnclave    = "68823bc62f409ee33a32ea270cfe45d4b19a6fb3c8570d7bc186cbe062398e8f"
	mrSigner     = "9affcfae47b848ec2caf1c49b4b283531e1cc425f93582b36806e52a43d78d1a"
	eppidEnclave = "9479d8eddfd7b1b700319419551dc340f688c2ef519a5e18657ecf32981dbd9e"
	eppidSigner  = "4025dab7ebda1fbecc4e3637606e021214d0f41c6d0422fd378b2a8b88818459"
)

func read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func collateral(t testing.TB) *pcs.Collateral {
	t.Helper()
	c, err := pcs.LoadDir(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func verifyAt(t testing.TB, col *pcs.Collateral, unix int64, window time.Duration, quote []byte) (*attest.Claims, error) {
	v := NewVerifier(Options{Collateral: col, Now: func() time.Time { return time.Unix(unix, 0) }, CollateralWindow: window})
	return v.Verify(context.Background(), &attest.Evidence{TEE: attest.TEESGX, Quote: quote})
}

func TestParseSample(t *testing.T) {
	q, err := ParseQuote(read(t, "quote_v3_ecdsa_p256_pck_chain.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if q.Header.Version != 3 || q.Header.QESVN != 9 || q.Header.PCESVN != 13 {
		t.Fatalf("header %+v", q.Header)
	}
	if hex.EncodeToString(q.Header.QEVendorID[:]) != "939a7233f79c4ca9940a0db3957f0607" {
		t.Errorf("QE vendor %x is not Intel", q.Header.QEVendorID)
	}
	if q.Body.Flags() != 0x5 || q.Body.Debug() || hex.EncodeToString(q.Body.Attributes[8:]) != "0300000000000000" {
		t.Errorf("attributes %x", q.Body.Attributes)
	}
	chain, err := PCKChain(q)
	if err != nil || len(chain) != 3 {
		t.Fatalf("chain: %v", err)
	}
	if !bytes.Equal(q.Marshal(), read(t, "quote_v3_ecdsa_p256_pck_chain.bin")) {
		t.Fatal("parse/marshal not byte-identical")
	}
}

func TestVerifySample(t *testing.T) {
	col := collateral(t)
	if len(col.TCBInfos) != 1 || len(col.QEIdentities) != 1 || col.SigningChain == nil {
		t.Fatalf("collateral recognised: %d tcb infos, %d QE identities, chain %v, skipped %v", len(col.TCBInfos), len(col.QEIdentities), col.SigningChain != nil, col.Skipped)
	}
	c, err := verifyAt(t, col, goodTime, 0, read(t, "quote_v3_ecdsa_p256_pck_chain.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Measurement.String() != mrEnclave || c.Signer.String() != mrSigner || c.ProductID != 0 || c.SVN != 0 || c.Debug {
		t.Fatalf("claims %+v", c)
	}
	if c.Platform.FMSPC != "00606A000000" || c.TEE != attest.TEESGX {
		t.Fatalf("platform %+v", c.Platform)
	}
	if c.TCBStatus != attest.TCBSWHardeningNeeded || len(c.AdvisoryIDs) != 2 || c.AdvisoryIDs[0] != "INTEL-SA-00615" {
		t.Fatalf("TCB %s %v", c.TCBStatus, c.AdvisoryIDs)
	}
	var def attest.Policy
	if ok, un := def.Evaluate(c); !ok {
		t.Fatalf("default policy: %v", un)
	}
	strict := attest.Policy{TCBStatuses: []attest.TCBStatus{attest.TCBUpToDate}}
	if ok, un := strict.Evaluate(c); ok || un[0].Field != "tcb_statuses" {
		t.Fatalf("UpToDate-only policy: %v", un)
	}
}

func TestBoundaries(t *testing.T) {
	col := collateral(t)
	quote := read(t, "quote_v3_ecdsa_p256_pck_chain.bin")
	cases := []struct {
		name    string
		unix    int64
		window  time.Duration
		what    string
		expired bool
	}{
		{"PCK expired", 1891163522, 0, "PCK certificate", true},
		{"PCK not yet valid", 1670238720, 0, "PCK certificate", false},
		{"QE identity issued in the future", 1671194735, 0, "QE identity", false},
		{"QE identity expired, 30-day window", 1673786737, 30 * 24 * time.Hour, "QE identity", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := verifyAt(t, col, tc.unix, tc.window, quote)
			var ve *pcs.ValidityError
			if !errors.As(err, &ve) || ve.What != tc.what || ve.Expired != tc.expired {
				t.Fatalf("got %v, want %s expired=%v", err, tc.what, tc.expired)
			}
		})
	}
	if _, err := verifyAt(t, col, 1673786737, 90*24*time.Hour, quote); err != nil {
		t.Fatalf("90-day window: %v", err)
	}
}

func TestBadIssuerChain(t *testing.T) {
	col := collateral(t)
	bad, err := pcs.ParsePEMChain(read(t, "tcb_info_v3_fmspc_00606A000000_certs_bad.pem"))
	if err != nil {
		t.Fatal(err)
	}
	col.SigningChain = bad
	_, err = verifyAt(t, col, goodTime, 0, read(t, "quote_v3_ecdsa_p256_pck_chain.bin"))
	if !errors.Is(err, attest.ErrSignature) {
		t.Fatalf("bad chain: %v", err)
	}
	// Also through the directory loader: a dir with only the bad chain has no signing chain.
	dir := t.TempDir()
	for _, n := range []string{"tcb_info_v3_fmspc_00606A000000.json", "qe_identity_v2.json", "tcb_info_v3_fmspc_00606A000000_certs_bad.pem"} {
		os.WriteFile(filepath.Join(dir, n), read(t, n), 0o644)
	}
	col2, err := pcs.LoadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifyAt(t, col2, goodTime, 0, read(t, "quote_v3_ecdsa_p256_pck_chain.bin")); !errors.Is(err, attest.ErrCollateral) {
		t.Fatalf("no good chain: %v", err)
	}
}

func TestEPPIDRejected(t *testing.T) {
	b := read(t, "quote_v3_ecdsa_p256_eppid.bin")
	q, err := ParseQuote(b)
	if err != nil {
		t.Fatal(err)
	}
	if hex.EncodeToString(q.Body.MREnclave[:]) != eppidEnclave || hex.EncodeToString(q.Body.MRSigner[:]) != eppidSigner {
		t.Fatalf("eppid quote body %x %x", q.Body.MREnclave, q.Body.MRSigner)
	}
	_, err = verifyAt(t, collateral(t), goodTime, 0, b)
	if !errors.Is(err, attest.ErrUnsupported) {
		t.Fatalf("EPPID quote: %v", err)
	}
}

func TestTamperAndTruncate(t *testing.T) {
	col := collateral(t)
	quote := read(t, "quote_v3_ecdsa_p256_pck_chain.bin")
	// Non-zero trailing bytes, truncation at every length class.
	for _, b := range [][]byte{append(bytes.Clone(quote), 1), append(bytes.Clone(quote), 0, 0, 7, 0), quote[:len(quote)-1], quote[:HeaderSize+10], quote[:5], nil} {
		if _, err := ParseQuote(b); !errors.Is(err, attest.ErrMalformed) {
			t.Fatalf("len %d: %v", len(b), err)
		}
	}
	flip := func(off int) error {
		b := bytes.Clone(quote)
		b[off] ^= 0x01
		_, err := verifyAt(t, col, goodTime, 0, b)
		return err
	}
	// Report body fields (MRENCLAVE, report data) -> quote signature.
	for _, off := range []int{HeaderSize + 64, HeaderSize + 320, HeaderSize + 383} {
		if err := flip(off); !errors.Is(err, attest.ErrSignature) {
			t.Fatalf("body byte %d: %v", off, err)
		}
	}
	sd := HeaderSize + ReportBodySize + 4
	// Attestation key -> QE report data binding; QE report -> QE signature.
	if err := flip(sd + 64 + 5); err == nil || !(errors.Is(err, attest.ErrBinding) || errors.Is(err, attest.ErrMalformed)) {
		t.Fatalf("attestation key: %v", err)
	}
	if err := flip(sd + 128 + 64); !errors.Is(err, attest.ErrSignature) {
		t.Fatalf("QE report: %v", err)
	}
}

// Quote buffers from DCAP get-quote APIs carry zero padding after the
// signature data: it is accepted and changes nothing; any non-zero byte
// there is refused, since nothing signed covers it.
func TestZeroPadding(t *testing.T) {
	col := collateral(t)
	quote := read(t, "quote_v3_ecdsa_p256_pck_chain.bin")
	want, err := verifyAt(t, col, goodTime, 0, quote)
	if err != nil {
		t.Fatal(err)
	}
	padded := append(bytes.Clone(quote), make([]byte, 70)...)
	q, err := ParseQuote(padded)
	if err != nil {
		t.Fatal(err)
	}
	if q.Padding != 70 || !bytes.Equal(q.Marshal(), padded) {
		t.Fatalf("padding %d, marshal identical %v", q.Padding, bytes.Equal(q.Marshal(), padded))
	}
	got, err := verifyAt(t, col, goodTime, 0, padded)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Measurement, want.Measurement) || got.TCBStatus != want.TCBStatus {
		t.Fatalf("padded quote gives other claims: %+v", got)
	}
	for _, i := range []int{0, 35, 69} {
		b := bytes.Clone(padded)
		b[len(quote)+i] = 0x80
		if _, err := verifyAt(t, col, goodTime, 0, b); !errors.Is(err, attest.ErrMalformed) {
			t.Fatalf("non-zero byte %d after the signature data: %v", i, err)
		}
	}
}

func TestUntrustedRoot(t *testing.T) {
	// A verifier whose trusted root is another CA must refuse the chain.
	otherRoot, err := pcs.ParsePEMChain(read(t, "tcb_info_v3_fmspc_00606A000000_certs.pem"))
	if err != nil {
		t.Fatal(err)
	}
	v := NewVerifier(Options{Collateral: collateral(t), Roots: otherRoot[:1], Now: func() time.Time { return time.Unix(goodTime, 0) }})
	_, err = v.Verify(context.Background(), &attest.Evidence{TEE: attest.TEESGX, Quote: read(t, "quote_v3_ecdsa_p256_pck_chain.bin")})
	if !errors.Is(err, attest.ErrChain) {
		t.Fatalf("got %v", err)
	}
}

func FuzzParseQuote(f *testing.F) {
	for _, n := range []string{"quote_v3_ecdsa_p256_pck_chain.bin", "quote_v3_ecdsa_p256_eppid.bin"} {
		f.Add(read(f, n))
	}
	// Zero padding after the signature data, as get-quote buffers carry.
	f.Add(append(read(f, "quote_v3_ecdsa_p256_pck_chain.bin"), make([]byte, 70)...))
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			return
		}
		if !bytes.Equal(q.Marshal(), b) {
			t.Fatal("parse -> marshal not byte-identical")
		}
		_, _ = PCKChain(q)
	})
}

func BenchmarkVerifyV3(b *testing.B) {
	col := collateral(b)
	quote := read(b, "quote_v3_ecdsa_p256_pck_chain.bin")
	v := NewVerifier(Options{Collateral: col, Now: func() time.Time { return time.Unix(goodTime, 0) }})
	ev := &attest.Evidence{TEE: attest.TEESGX, Quote: quote}
	b.SetBytes(int64(len(quote)))
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}

// Cached chain and signature checks must never outlive validity windows.
func TestCacheKeepsTimeChecks(t *testing.T) {
	col := collateral(t)
	quote := read(t, "quote_v3_ecdsa_p256_pck_chain.bin")
	for i := 0; i < 2; i++ {
		if _, err := verifyAt(t, col, goodTime, 0, quote); err != nil {
			t.Fatal(err)
		}
	}
	var ve *pcs.ValidityError
	if _, err := verifyAt(t, col, 1891163522, 0, quote); !errors.As(err, &ve) || ve.What != "PCK certificate" {
		t.Fatalf("expired after cached success: %v", err)
	}
	if _, err := verifyAt(t, col, goodTime+40*24*3600, 0, quote); !errors.As(err, &ve) || !ve.Expired {
		t.Fatalf("collateral expired after cached success: %v", err)
	}
}
