package tdx

import (
	"bytes"
	"context"
	"crypto/sha3"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tdx-guest/abi"
	tdxdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/pcs"
)

const (
	dataDir  = "../testdata/tdx"
	goodTime = 1725263032
	// The shared README names 63d522d9... as the MRTD; it is the identity the
	// original project derives: TupleHash256 over MRTD and RTMR0-3 with the
	// customisation string below. The raw MRTD is 91eb2b44...
	oasisIdentity = "63d522d975f7de879a8f3368b4f32dd1e8db635f5a24b651ce8ff81705028813"
	oasisContext  = "oasis-core/tdx: TD enclave identity"
	mrtd          = "91eb2b44d141d4ece09f0c75c2c53d247a3c68edd7fafe8a3520c942a604a407de03ae6dc5f87f27428b2538873118b7"
)

func read(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func col(t testing.TB, names ...string) *pcs.Collateral {
	t.Helper()
	c := &pcs.Collateral{}
	for _, n := range names {
		if ok, err := c.Add(n, read(t, n)); err != nil || !ok {
			t.Fatalf("%s: ok=%v err=%v", n, ok, err)
		}
	}
	return c
}

func goodCollateral(t testing.TB) *pcs.Collateral {
	return col(t, "tcb_info_v3_tdx_fmspc_C0806F000000.json", "qe_identity_v2_tdx2.json", "tcb_info_v3_fmspc_00606A000000_certs.pem")
}

func verifyAt(c *pcs.Collateral, unix int64, quote []byte) (*attest.Claims, error) {
	v := NewVerifier(Options{Collateral: c, Now: func() time.Time { return time.Unix(unix, 0) }})
	return v.Verify(context.Background(), &attest.Evidence{TEE: attest.TEETDX, Quote: quote})
}

func TestVerifySample(t *testing.T) {
	c, err := verifyAt(goodCollateral(t), goodTime, read(t, "quote_v4_tdx_ecdsa_p256.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if c.Measurement.String() != mrtd || c.TDX == nil || !bytes.Equal(c.TDX.MRTD, c.Measurement) {
		t.Fatalf("MRTD %s", c.Measurement)
	}
	// Cross-check every measured field against the value the original
	// project's tests assert (a hash over MRTD and the four RTMRs).
	if got := tupleHash256(oasisContext, 32, c.TDX.MRTD, c.TDX.RTMR[0], c.TDX.RTMR[1], c.TDX.RTMR[2], c.TDX.RTMR[3]); hex.EncodeToString(got) != oasisIdentity {
		t.Fatalf("TupleHash(MRTD, RTMR0-3) = %x, want %s", got, oasisIdentity)
	}
	if len(c.Signer) != 0 || c.TEE != attest.TEETDX || c.Platform.FMSPC != "C0806F000000" {
		t.Fatalf("claims %+v", c)
	}
	var def attest.Policy
	if ok, un := def.Evaluate(c); !ok {
		t.Fatalf("default policy refused (status %s): %v", c.TCBStatus, un)
	}
	t.Logf("TCB status %s, advisories %v, debug %v", c.TCBStatus, c.AdvisoryIDs, c.Debug)
}

func TestOutOfDate(t *testing.T) {
	c, err := verifyAt(col(t, "tcb_info_v3_tdx_fmspc_50806F000000.json", "qe_identity_v2_tdx.json", "tcb_info_v3_fmspc_00606A000000_certs.pem"),
		1687091776, read(t, "quote_v4_tdx_ecdsa_p256_out_of_date.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if c.TCBStatus != attest.TCBOutOfDate {
		t.Fatalf("status %s", c.TCBStatus)
	}
	var def attest.Policy
	ok, un := def.Evaluate(c)
	if ok || len(un) != 1 || un[0].Field != "tcb_statuses" || !strings.Contains(un[0].Reason, "OutOfDate") {
		t.Fatalf("default policy: %v", un)
	}
}

// Quote buffers from DCAP get-quote APIs and TDX guest stacks carry zero
// padding after the signature data: it is accepted and changes nothing; a
// non-zero byte there is refused, since nothing signed covers it.
func TestZeroPadding(t *testing.T) {
	// The captured quote with 70 zero bytes parses and round-trips; it is
	// another platform's quote whose PCK certificate was issued after the
	// collateral's time, which is then the only reason it fails.
	trailing := read(t, "quote_v4_tdx_ecdsa_p256_trailing.bin")
	q, err := ParseQuote(trailing)
	if err != nil {
		t.Fatal(err)
	}
	if n := len(q.GetExtraBytes()); n != 70 {
		t.Fatalf("%d padding bytes, want 70", n)
	}
	if b, err := abi.QuoteToAbiBytes(q); err != nil || !bytes.Equal(b, trailing) {
		t.Fatalf("parse -> marshal not byte-identical: %v", err)
	}
	var ve *pcs.ValidityError
	if _, err := verifyAt(goodCollateral(t), goodTime, trailing); !errors.As(err, &ve) || ve.What != "PCK certificate" || ve.Expired {
		t.Fatalf("trailing sample: %v, want PCK certificate not yet valid", err)
	}

	// The current quote with zero padding verifies as without.
	quote := read(t, "quote_v4_tdx_ecdsa_p256.bin")
	want, err := verifyAt(goodCollateral(t), goodTime, quote)
	if err != nil {
		t.Fatal(err)
	}
	padded := append(bytes.Clone(quote), make([]byte, 70)...)
	got, err := verifyAt(goodCollateral(t), goodTime, padded)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Measurement, want.Measurement) || got.TCBStatus != want.TCBStatus {
		t.Fatalf("padded quote gives other claims: %+v", got)
	}
	for _, i := range []int{0, 35, 69} {
		b := bytes.Clone(padded)
		b[len(quote)+i] = 0x80
		if _, err := verifyAt(goodCollateral(t), goodTime, b); !errors.Is(err, attest.ErrMalformed) || !strings.Contains(err.Error(), "non-zero") {
			t.Fatalf("non-zero byte %d after the signature data: %v", i, err)
		}
	}
	if _, err := ParseQuote(append(bytes.Clone(quote), 1)); !errors.Is(err, attest.ErrMalformed) {
		t.Fatalf("one non-zero trailing byte: %v", err)
	}
}

func TestBoundariesAndTamper(t *testing.T) {
	q := read(t, "quote_v4_tdx_ecdsa_p256.bin")
	var ve *pcs.ValidityError
	// Collateral expired a month after issue.
	if _, err := verifyAt(goodCollateral(t), goodTime+40*24*3600, q); !errors.As(err, &ve) || !ve.Expired {
		t.Fatalf("expired collateral: %v", err)
	}
	// Report data changed: quote signature fails.
	b := bytes.Clone(q)
	b[48+520] ^= 1
	if _, err := verifyAt(goodCollateral(t), goodTime, b); !errors.Is(err, attest.ErrSignature) {
		t.Fatalf("tampered: %v", err)
	}
	// Wrong collateral: SGX TCB info for another platform.
	wrong := col(t, "tcb_info_v3_tdx_fmspc_50806F000000.json", "qe_identity_v2_tdx2.json", "tcb_info_v3_fmspc_00606A000000_certs.pem")
	if _, err := verifyAt(wrong, goodTime, q); !errors.Is(err, attest.ErrCollateral) {
		t.Fatalf("wrong FMSPC: %v", err)
	}
	for _, n := range []int{0, 10, 100, 1000, len(q) - 1} {
		if _, err := ParseQuote(q[:n]); err == nil {
			t.Fatalf("truncated to %d accepted", n)
		}
	}
}

// go-tdx-guest's own embedded sample (SPR E4 production quote) with its
// sample PCS responses and CRLs.
func TestGoTDXGuestSample(t *testing.T) {
	c := &pcs.Collateral{}
	items := map[string][]byte{
		"tcbInfo": tdxdata.TcbInfoBody, "qeIdentity": tdxdata.QeIdentityBody,
		"pckcrl": tdxdata.PckCrlBody, "rootcrl": tdxdata.RootCrlBody,
		"chain": read(t, "tcb_info_v3_fmspc_00606A000000_certs.pem"),
	}
	for n, b := range items {
		if ok, err := c.Add(n, b); err != nil || !ok {
			t.Fatalf("%s: ok=%v err=%v", n, ok, err)
		}
	}
	if c.RootCRL == nil || len(c.PCKCRLs) != 1 {
		t.Fatalf("CRLs not recognised: root %v, pck %d", c.RootCRL != nil, len(c.PCKCRLs))
	}
	at := time.Date(2023, time.July, 1, 1, 0, 0, 0, time.UTC).Unix()
	// The embedded quote ends with a test-only text trailer after the
	// signature data; the strict parser refuses it as it stands...
	if _, err := verifyAt(c, at, tdxdata.RawQuote); !errors.Is(err, attest.ErrMalformed) {
		t.Fatalf("sample with trailer: %v", err)
	}
	// ...and the signed quote without the trailer verifies.
	trailer := []byte("\nextra bytes(only for testing purpose)\n")
	if !bytes.HasSuffix(tdxdata.RawQuote, trailer) {
		t.Fatal("the embedded sample's trailer changed")
	}
	cl, err := verifyAt(c, at, tdxdata.RawQuote[:len(tdxdata.RawQuote)-len(trailer)])
	if err != nil {
		t.Fatal(err)
	}
	if cl.TEE != attest.TEETDX || len(cl.Measurement) != 48 {
		t.Fatalf("claims %+v", cl)
	}
	t.Logf("go-tdx-guest sample: MRTD %s, status %s", cl.Measurement, cl.TCBStatus)
}

// tupleHash256 is NIST SP 800-185 TupleHash256 with output length outLen.
func tupleHash256(custom string, outLen int, items ...[]byte) []byte {
	h := sha3.NewCSHAKE256([]byte("TupleHash"), []byte(custom))
	for _, it := range items {
		h.Write(leftEncode(uint64(len(it)) * 8))
		h.Write(it)
	}
	h.Write(rightEncode(uint64(outLen) * 8))
	out := make([]byte, outLen)
	h.Read(out)
	return out
}

func encodeInt(x uint64) []byte {
	var b []byte
	for x > 0 || len(b) == 0 {
		b = append([]byte{byte(x)}, b...)
		x >>= 8
	}
	return b
}

func leftEncode(x uint64) []byte  { b := encodeInt(x); return append([]byte{byte(len(b))}, b...) }
func rightEncode(x uint64) []byte { b := encodeInt(x); return append(b, byte(len(b))) }

func FuzzParseQuote(f *testing.F) {
	f.Add(read(f, "quote_v4_tdx_ecdsa_p256.bin"))
	f.Add(read(f, "quote_v4_tdx_ecdsa_p256_trailing.bin"))
	f.Add(tdxdata.RawQuote)
	f.Fuzz(func(t *testing.T, b []byte) {
		q, err := ParseQuote(b)
		if err != nil {
			return
		}
		out, err := abi.QuoteToAbiBytes(q)
		if err != nil || !bytes.Equal(out, b) {
			t.Fatalf("parse -> marshal not byte-identical: %v", err)
		}
		_, _ = PCKChain(q)
	})
}

func BenchmarkVerifyV4(b *testing.B) {
	c := goodCollateral(b)
	q := read(b, "quote_v4_tdx_ecdsa_p256.bin")
	v := NewVerifier(Options{Collateral: c, Now: func() time.Time { return time.Unix(goodTime, 0) }})
	ev := &attest.Evidence{TEE: attest.TEETDX, Quote: q}
	b.SetBytes(int64(len(q)))
	for b.Loop() {
		if _, err := v.Verify(context.Background(), ev); err != nil {
			b.Fatal(err)
		}
	}
}

// The shared directory holds two TD_QE identities and two TDX TCB infos;
// the verifier picks the ones for the platform and time.
func TestWholeDirectory(t *testing.T) {
	c, err := pcs.LoadDir(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	if cl, err := verifyAt(c, goodTime, read(t, "quote_v4_tdx_ecdsa_p256.bin")); err != nil || cl.TCBStatus != attest.TCBUpToDate {
		t.Fatalf("current quote: %v", err)
	}
	if cl, err := verifyAt(c, 1687091776, read(t, "quote_v4_tdx_ecdsa_p256_out_of_date.bin")); err != nil || cl.TCBStatus != attest.TCBOutOfDate {
		t.Fatalf("out-of-date quote: %v", err)
	}
}
