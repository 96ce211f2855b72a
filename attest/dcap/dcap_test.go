package dcap_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	tdxdata "github.com/google/go-tdx-guest/testing/testdata"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/dcap"
	"github.com/veil-tee/veil/attest/pcs"
	"github.com/veil-tee/veil/attest/sgx"
	"github.com/veil-tee/veil/attest/tdx"
)

func read(t testing.TB, dir, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("../testdata", dir, name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func collateral(t testing.TB, dir string, names ...string) *pcs.Collateral {
	t.Helper()
	c := &pcs.Collateral{}
	for _, n := range names {
		if ok, err := c.Add(n, read(t, dir, n)); err != nil || !ok {
			t.Fatalf("%s: ok=%v err=%v", n, ok, err)
		}
	}
	return c
}

// backend is one TEE's sample quote, its collateral and its time.
type backend struct {
	tee   attest.TEE
	quote []byte
	col   func(t testing.TB) *pcs.Collateral
	now   int64
	// beforeTCBInfo is a time when the PCK certificate and QE identity
	// are valid but the TCB info is not issued yet.
	beforeTCBInfo int64
	// Offsets in the quote of the report data, the attestation key and
	// the QE report.
	reportData, attKey, qeReport int
}

const (
	sgxSigData = 48 + 384 + 4
	tdxSigData = 48 + 584 + 4
)

func backends(t testing.TB) []backend {
	return []backend{{
		tee: attest.TEESGX, quote: read(t, "sgx", "quote_v3_ecdsa_p256_pck_chain.bin"), now: 1671497404,
		beforeTCBInfo: 1671321600, // 2022-12-18
		col: func(t testing.TB) *pcs.Collateral {
			return collateral(t, "sgx", "tcb_info_v3_fmspc_00606A000000.json", "qe_identity_v2.json", "tcb_info_v3_fmspc_00606A000000_certs.pem")
		},
		reportData: 48 + 320, attKey: sgxSigData + 64, qeReport: sgxSigData + 128,
	}, {
		tee: attest.TEETDX, quote: read(t, "tdx", "quote_v4_tdx_ecdsa_p256.bin"), now: 1725263032,
		beforeTCBInfo: 1725261600, // 2024-09-02T07:20:00Z
		col: func(t testing.TB) *pcs.Collateral {
			return collateral(t, "tdx", "tcb_info_v3_tdx_fmspc_C0806F000000.json", "qe_identity_v2_tdx2.json", "tcb_info_v3_fmspc_00606A000000_certs.pem")
		},
		reportData: 48 + 520, attKey: tdxSigData + 64, qeReport: tdxSigData + 128 + 6,
	}}
}

func (b backend) verify(o pcs.VerifierOptions, quote []byte) (*attest.Claims, error) {
	var v attest.Verifier = sgx.NewVerifier(o)
	if b.tee == attest.TEETDX {
		v = tdx.NewVerifier(o)
	}
	return v.Verify(context.Background(), &attest.Evidence{TEE: b.tee, Quote: quote})
}

func at(unix int64) func() time.Time { return func() time.Time { return time.Unix(unix, 0) } }

func flip(b []byte, off int) []byte {
	b = bytes.Clone(b)
	b[off] ^= 0x01
	return b
}

// verdict is what a failure must be: a sentinel error and, for validity
// errors, what was outside its window.
type verdict struct {
	is      error
	what    string // ValidityError.What; "" if not a validity error
	expired bool
}

func (v verdict) check(err error) bool {
	if v.is == nil {
		return err == nil
	}
	if !errors.Is(err, v.is) {
		return false
	}
	if v.what == "" {
		return true
	}
	var ve *pcs.ValidityError
	return errors.As(err, &ve) && ve.What == v.what && ve.Expired == v.expired
}

// Every shared step gives SGX and TDX the same verdict: both backends run
// the one dcap verifier, so the same fault in either quote fails the same
// way.
func TestSameVerdicts(t *testing.T) {
	cases := []struct {
		name string
		// mutate returns the options and quote for a backend.
		mutate func(t *testing.T, b backend) (pcs.VerifierOptions, []byte)
		want   verdict
	}{
		{"genuine", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now)}, b.quote
		}, verdict{}},
		{"zero padding", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now)}, append(bytes.Clone(b.quote), make([]byte, 70)...)
		}, verdict{}},
		{"non-zero trailing byte", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now)}, append(bytes.Clone(b.quote), 0, 0, 1)
		}, verdict{is: attest.ErrMalformed}},
		{"PCK certificate expired", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(1990000000)}, b.quote
		}, verdict{attest.ErrChain, "PCK certificate", true}},
		{"PCK certificate not yet valid", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(1600000000)}, b.quote
		}, verdict{attest.ErrChain, "PCK certificate", false}},
		{"untrusted root", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			other, err := pcs.ParsePEMChain(read(t, "sgx", "tcb_info_v3_fmspc_00606A000000_certs.pem"))
			if err != nil {
				t.Fatal(err)
			}
			return pcs.VerifierOptions{Collateral: b.col(t), Roots: other[:1], Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrChain}},
		{"no collateral", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrCollateral}},
		{"QE report altered", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now)}, flip(b.quote, b.qeReport+100)
		}, verdict{is: attest.ErrSignature}},
		{"attestation key swapped", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now)}, flip(b.quote, b.attKey+5)
		}, verdict{is: attest.ErrBinding}},
		{"report data altered", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now)}, flip(b.quote, b.reportData)
		}, verdict{is: attest.ErrSignature}},
		{"wrong TCB signing chain", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			bad, err := pcs.ParsePEMChain(read(t, "sgx", "tcb_info_v3_fmspc_00606A000000_certs_bad.pem"))
			if err != nil {
				t.Fatal(err)
			}
			c := b.col(t)
			c.SigningChain = bad
			return pcs.VerifierOptions{Collateral: c, Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrSignature}},
		{"QE identity expired", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.now + 40*24*3600)}, b.quote
		}, verdict{attest.ErrCollateral, "QE identity", true}},
		{"TCB info issued later", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			return pcs.VerifierOptions{Collateral: b.col(t), Now: at(b.beforeTCBInfo)}, b.quote
		}, verdict{attest.ErrCollateral, "TCB info", false}},
		{"no TCB info for the platform", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			c := b.col(t)
			c.TCBInfos = nil
			return pcs.VerifierOptions{Collateral: c, Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrCollateral}},
		// Intel's CRLs shipped with go-tdx-guest were current in 2023:
		// before the SGX sample's time, after the TDX sample's. Both
		// backends check them, and refuse them as stale collateral.
		{"stale PCK CRL", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			c := b.col(t)
			if ok, err := c.Add("pckcrl", tdxdata.PckCrlBody); !ok || err != nil {
				t.Fatalf("PCK CRL: %v %v", ok, err)
			}
			return pcs.VerifierOptions{Collateral: c, Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrCollateral}},
		{"stale root CA CRL", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			c := b.col(t)
			if ok, err := c.Add("rootcrl", tdxdata.RootCrlBody); !ok || err != nil {
				t.Fatalf("root CRL: %v %v", ok, err)
			}
			return pcs.VerifierOptions{Collateral: c, Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrCollateral}},
		{"no QE identity", func(t *testing.T, b backend) (pcs.VerifierOptions, []byte) {
			c := b.col(t)
			c.QEIdentities = nil
			return pcs.VerifierOptions{Collateral: c, Now: at(b.now)}, b.quote
		}, verdict{is: attest.ErrCollateral}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, b := range backends(t) {
				o, q := tc.mutate(t, b)
				_, err := b.verify(o, q)
				if !tc.want.check(err) {
					t.Errorf("%s: got %v, want %+v", b.tee, err, tc.want)
				}
			}
		})
	}
}

// dcapQuotes are both sample quotes as the shared verifier sees them.
func dcapQuotes(t *testing.T) map[attest.TEE]*dcap.Quote {
	bs := backends(t)
	sq, err := sgx.ParseQuote(bs[0].quote)
	if err != nil {
		t.Fatal(err)
	}
	tq, err := tdx.ParseQuote(bs[1].quote)
	if err != nil {
		t.Fatal(err)
	}
	td, err := tdx.DCAP(tq)
	if err != nil {
		t.Fatal(err)
	}
	return map[attest.TEE]*dcap.Quote{attest.TEESGX: sq.DCAP(), attest.TEETDX: td}
}

// Certification data other than a PCK chain, and PCK chains that are not
// Intel's profile, are refused the same way for both TEEs.
func TestCertificationData(t *testing.T) {
	for tee, q := range dcapQuotes(t) {
		if _, err := dcap.PCKChain(q); err != nil {
			t.Fatalf("%s: %v", tee, err)
		}
		pems := bytes.SplitAfter(bytes.TrimRight(q.CertData, "\x00"), []byte("-----END CERTIFICATE-----\n"))
		if len(pems) != 4 || len(pems[3]) != 0 {
			t.Fatalf("%s: %d PEM parts", tee, len(pems))
		}
		cases := []struct {
			name     string
			certType uint16
			data     []byte
			want     error
		}{
			{"encrypted PPID", 3, q.CertData, attest.ErrUnsupported},
			{"two certificates", 5, bytes.Join(pems[:2], nil), attest.ErrMalformed},
			{"four certificates", 5, bytes.Join([][]byte{pems[0], pems[1], pems[2], pems[2]}, nil), attest.ErrMalformed},
			{"trailing text", 5, append(bytes.Join(pems[:3], nil), "x"...), attest.ErrMalformed},
			{"two NULs", 5, append(bytes.Join(pems[:3], nil), 0, 0), attest.ErrMalformed},
			{"CA and leaf swapped", 5, bytes.Join([][]byte{pems[1], pems[0], pems[2]}, nil), attest.ErrChain},
			{"root as leaf", 5, bytes.Join([][]byte{pems[2], pems[1], pems[2]}, nil), attest.ErrChain},
		}
		for _, tc := range cases {
			d := *q
			d.CertType, d.CertData = tc.certType, tc.data
			if _, err := dcap.PCKChain(&d); !errors.Is(err, tc.want) {
				t.Errorf("%s, %s: got %v, want %v", tee, tc.name, err, tc.want)
			}
			if _, err := dcap.NewVerifier(pcs.VerifierOptions{}).Verify(&d); !errors.Is(err, tc.want) {
				t.Errorf("%s, %s: Verify got %v, want %v", tee, tc.name, err, tc.want)
			}
		}
	}
}

// A TDX quote must carry its TD body's TCB input, and only SGX and TDX are
// DCAP TEEs.
func TestQuoteShape(t *testing.T) {
	qs := dcapQuotes(t)
	d := *qs[attest.TEETDX]
	d.TDX = nil
	if _, err := dcap.NewVerifier(pcs.VerifierOptions{}).Verify(&d); !errors.Is(err, attest.ErrMalformed) {
		t.Fatalf("TDX quote without TD body: %v", err)
	}
	d = *qs[attest.TEESGX]
	d.TEE = attest.TEESNP
	if _, err := dcap.NewVerifier(pcs.VerifierOptions{}).Verify(&d); !errors.Is(err, attest.ErrUnsupported) {
		t.Fatalf("SNP as DCAP: %v", err)
	}
}
