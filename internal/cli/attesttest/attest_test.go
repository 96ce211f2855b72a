package attesttest

import (
	"bytes"
	"encoding/json"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	sevdata "github.com/google/go-sev-guest/verify/testdata"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

type result = veiltest.Result

func run(t *testing.T, home string, args ...string) result {
	t.Helper()
	return veiltest.Run(t, veil, []string{"VEIL_HOME=" + home}, "", args...)
}

const (
	exitDenied = 4
	exitUsage  = 2
	testdata   = "../../../attest/testdata"
)

func write(t *testing.T, name, content string) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

var meas = strings.Repeat("ab", 32)

func TestSimQuoteVerify(t *testing.T) {
	home := t.TempDir()
	r := run(t, home, "sim", "init")
	if r.Code != 0 || !strings.Contains(r.Stdout, filepath.Join(home, "sim", "platform.key")) || !strings.Contains(r.Stdout, "created") {
		t.Fatalf("sim init: %+v", r)
	}
	key1, _ := os.ReadFile(filepath.Join(home, "sim", "platform.key"))
	r = run(t, home, "sim", "init")
	key2, _ := os.ReadFile(filepath.Join(home, "sim", "platform.key"))
	if r.Code != 0 || !strings.Contains(r.Stdout, "already present") || !bytes.Equal(key1, key2) {
		t.Fatalf("second sim init: %+v", r)
	}

	q := filepath.Join(t.TempDir(), "q.bin")
	r = run(t, home, "attest", "quote", "--report-data", "00ff", "-o", q, "--measurement", meas)
	if r.Code != 0 || !strings.Contains(r.Stderr, "warning") {
		t.Fatalf("quote: %+v", r)
	}
	// Default policy: refused, and the reason is allow_sim.
	r = run(t, home, "attest", "verify", q)
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "allow_sim") || !strings.Contains(r.Stdout, "measurement:  "+meas) {
		t.Fatalf("verify without allow_sim: %+v", r)
	}
	// The smallest accepting policy.
	r = run(t, home, "attest", "verify", q, "--policy", write(t, "p.json", `{"allow_sim": true}`))
	if r.Code != 0 || !strings.Contains(r.Stdout, "verdict:      accepted") {
		t.Fatalf("verify with allow_sim: %+v", r)
	}
	// A wrong measurement is named.
	wrong := strings.Repeat("cd", 32)
	r = run(t, home, "attest", "verify", q, "--json", "--policy", write(t, "p.json", `{"allow_sim": true, "measurements": ["`+wrong+`"]}`))
	var out struct {
		Claims  struct{ Measurement string }
		Verdict string
		Unmet   []struct{ Field, Reason string }
	}
	if err := json.Unmarshal([]byte(r.Stdout), &out); err != nil {
		t.Fatalf("json: %v\n%s", err, r.Stdout)
	}
	if r.Code != exitDenied || out.Verdict != "denied" || len(out.Unmet) != 1 || out.Unmet[0].Field != "measurements" ||
		!strings.Contains(out.Unmet[0].Reason, meas) || out.Claims.Measurement != meas || !strings.Contains(r.Stderr, "measurement") {
		t.Fatalf("wrong measurement: %+v %+v", r, out)
	}
	// A bad policy file names the field.
	r = run(t, home, "attest", "verify", q, "--policy", write(t, "p.json", `{"allow_sims": true}`))
	if r.Code == 0 || !strings.Contains(r.Stderr, `"allow_sims"`) {
		t.Fatalf("bad policy: %+v", r)
	}
	// Another machine verifies with the platform's CA given explicitly; a
	// different CA is refused.
	other := t.TempDir()
	r = run(t, other, "attest", "verify", q, "--sim-ca", filepath.Join(home, "sim", "ca.pem"), "--policy", write(t, "p.json", `{"allow_sim": true}`))
	if r.Code != 0 {
		t.Fatalf("--sim-ca: %+v", r)
	}
	run(t, other, "sim", "init")
	r = run(t, other, "attest", "verify", q, "--policy", write(t, "p.json", `{"allow_sim": true}`))
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "certificate") {
		t.Fatalf("foreign sim platform: %+v", r)
	}
	// Tampered evidence.
	b, _ := os.ReadFile(q)
	b[20] ^= 1
	tq := write(t, "t.bin", string(b))
	r = run(t, home, "attest", "verify", tq, "--policy", write(t, "p.json", `{"allow_sim": true}`))
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "signature") {
		t.Fatalf("tampered: %+v", r)
	}
}

func TestQuoteWithoutPlatform(t *testing.T) {
	r := run(t, t.TempDir(), "attest", "quote", "--report-data", "00")
	if r.Code == 0 || !strings.Contains(r.Stderr, "veil sim init") {
		t.Fatalf("%+v", r)
	}
}

func TestSGXAndTDXSamples(t *testing.T) {
	home := t.TempDir()
	sgx, tdx := filepath.Join(testdata, "sgx"), filepath.Join(testdata, "tdx")
	r := run(t, home, "attest", "verify", filepath.Join(sgx, "quote_v3_ecdsa_p256_pck_chain.bin"), "--collateral", sgx, "--at", "@1671497404")
	if r.Code != 0 || !strings.Contains(r.Stdout, "68823bc62f409ee33a32ea270cfe45d4b19a6fb3c8570d7bc186cbe062398e8f") || !strings.Contains(r.Stdout, "SWHardeningNeeded") {
		t.Fatalf("sgx: %+v", r)
	}
	r = run(t, home, "attest", "verify", filepath.Join(sgx, "quote_v3_ecdsa_p256_pck_chain.bin"), "--collateral", sgx, "--at", "@1891163522")
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "PCK certificate expired") {
		t.Fatalf("sgx expired: %+v", r)
	}
	r = run(t, home, "attest", "verify", filepath.Join(sgx, "quote_v3_ecdsa_p256_eppid.bin"), "--collateral", sgx, "--at", "@1671497404")
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "not a PCK certificate chain") {
		t.Fatalf("eppid: %+v", r)
	}
	r = run(t, home, "attest", "verify", filepath.Join(tdx, "quote_v4_tdx_ecdsa_p256_out_of_date.bin"), "--collateral", tdx, "--at", "@1687091776")
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "OutOfDate") {
		t.Fatalf("tdx out of date: %+v", r)
	}
	r = run(t, home, "attest", "verify", filepath.Join(tdx, "quote_v4_tdx_ecdsa_p256_trailing.bin"), "--collateral", tdx, "--at", "@1725263032")
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "trailing") {
		t.Fatalf("tdx trailing: %+v", r)
	}
	r = run(t, home, "attest", "verify", filepath.Join(tdx, "quote_v4_tdx_ecdsa_p256.bin"), "--collateral", tdx, "--at", "2024-09-02T07:43:52Z")
	if r.Code != 0 || !strings.Contains(r.Stdout, "UpToDate") {
		t.Fatalf("tdx: %+v", r)
	}
	// Garbage evidence and garbage collateral: one clear line, no panic.
	r = run(t, home, "attest", "verify", write(t, "g.bin", "hello, world"))
	if r.Code != exitDenied || strings.Count(r.Stderr, "\n") != 1 {
		t.Fatalf("garbage evidence: %+v", r)
	}
	gc := t.TempDir()
	os.WriteFile(filepath.Join(gc, "x.json"), []byte(`{"tcbInfo": 5, "signature": "00"}`), 0o644)
	r = run(t, home, "attest", "verify", filepath.Join(sgx, "quote_v3_ecdsa_p256_pck_chain.bin"), "--collateral", gc)
	if r.Code == 0 || !strings.Contains(r.Stderr, "x.json") {
		t.Fatalf("garbage collateral: %+v", r)
	}
	r = run(t, home, "attest", "verify", "a", "b")
	if r.Code != exitUsage {
		t.Fatalf("usage: %+v", r)
	}
}

func TestRATLSCert(t *testing.T) {
	home := t.TempDir()
	run(t, home, "sim", "init")
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	r := run(t, home, "attest", "ratls-cert", "-o", cert, "-k", key, "--measurement", meas)
	if r.Code != 0 {
		t.Fatalf("ratls-cert: %+v", r)
	}
	if st, err := os.Stat(key); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode: %v %v", st, err)
	}
	r = run(t, home, "attest", "ratls-cert", "-o", cert, "-k", key)
	if r.Code == 0 || !strings.Contains(r.Stderr, "exists") {
		t.Fatalf("overwrite: %+v", r)
	}
	r = run(t, home, "attest", "verify-cert", cert)
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "allow_sim") {
		t.Fatalf("verify-cert default: %+v", r)
	}
	r = run(t, home, "attest", "verify-cert", cert, "--policy", write(t, "p.json", `{"allow_sim": true, "measurements": ["`+meas+`"]}`))
	if r.Code != 0 || !strings.Contains(r.Stdout, "accepted") {
		t.Fatalf("verify-cert: %+v", r)
	}
	r = run(t, home, "attest", "verify-cert", key)
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "not a certificate") {
		t.Fatalf("key as cert: %+v", r)
	}
}

func TestSNPSample(t *testing.T) {
	home := t.TempDir()
	rep := write(t, "report.bin", string(sevdata.AttestationBytes))
	vcek := write(t, "vcek.der", string(sevdata.VcekBytes))
	r := run(t, home, "attest", "verify", rep, "--certs", vcek, "--at", "2022-09-24T01:00:00Z")
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "allow_debug") || !strings.Contains(r.Stdout, "tee:          snp") {
		t.Fatalf("snp default policy: %+v", r)
	}
	r = run(t, home, "attest", "verify", rep, "--certs", vcek, "--at", "2022-09-24T01:00:00Z", "--policy", write(t, "p.json", `{"allow_debug": true, "tee": ["snp"]}`))
	if r.Code != 0 {
		t.Fatalf("snp: %+v", r)
	}
	r = run(t, home, "attest", "verify", rep, "--at", "2022-09-24T01:00:00Z")
	if r.Code != exitDenied {
		t.Fatalf("snp without VCEK: %+v", r)
	}
}

func TestBadInputs(t *testing.T) {
	home := t.TempDir()
	run(t, home, "sim", "init")
	big := write(t, "big.bin", strings.Repeat("A", 2<<20))
	r := run(t, home, "attest", "verify", big)
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "larger than") {
		t.Fatalf("oversized: %+v", r)
	}
	// An ordinary certificate (the sim CA) is not an RA-TLS certificate.
	r = run(t, home, "attest", "verify-cert", filepath.Join(home, "sim", "ca.pem"))
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "not an RA-TLS certificate") {
		t.Fatalf("plain certificate: %+v", r)
	}
	// The TRUSTED CERTIFICATE label is accepted.
	dir := t.TempDir()
	cert, key := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if r = run(t, home, "attest", "ratls-cert", "-o", cert, "-k", key); r.Code != 0 {
		t.Fatal(r)
	}
	b, _ := os.ReadFile(cert)
	trusted := strings.ReplaceAll(string(b), "CERTIFICATE", "TRUSTED CERTIFICATE")
	r = run(t, home, "attest", "verify-cert", write(t, "t.pem", trusted), "--policy", write(t, "p.json", `{"allow_sim": true}`))
	if r.Code != 0 {
		t.Fatalf("TRUSTED CERTIFICATE: %+v", r)
	}
	r = run(t, home, "attest", "quote", "--report-data", strings.Repeat("00", 65))
	if r.Code != exitUsage {
		t.Fatalf("long report data: %+v", r)
	}
	r = run(t, home, "attest", "verify", filepath.Join(testdata, "sgx", "quote_v3_ecdsa_p256_pck_chain.bin"), "--at", "yesterday")
	if r.Code != exitUsage || !strings.Contains(r.Stderr, "--at") {
		t.Fatalf("bad --at: %+v", r)
	}
}

// --pccs fetches collateral from a PCS/PCCS (here a stand-in on 127.0.0.1).
func TestPCCS(t *testing.T) {
	dir := filepath.Join(testdata, "sgx")
	read := func(n string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	chain := url.QueryEscape(string(read("tcb_info_v3_fmspc_00606A000000_certs.pem")))
	mux := http.NewServeMux()
	mux.HandleFunc("/sgx/certification/v4/tcb", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("fmspc") != "00606A000000" {
			http.NotFound(w, r)
			return
		}
		w.Header().Set("TCB-Info-Issuer-Chain", chain)
		w.Write(read("tcb_info_v3_fmspc_00606A000000.json"))
	})
	mux.HandleFunc("/sgx/certification/v4/qe/identity", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("SGX-Enclave-Identity-Issuer-Chain", chain)
		w.Write(read("qe_identity_v2.json"))
	})
	mux.HandleFunc("/sgx/certification/v4/pckcrl", func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "no CRL here", http.StatusNotFound)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	defer srv.Close()
	r := run(t, t.TempDir(), "attest", "verify", filepath.Join(dir, "quote_v3_ecdsa_p256_pck_chain.bin"), "--pccs", "http://"+ln.Addr().String(), "--at", "@1671497404")
	// The stand-in has no PCK CRL: fetching fails clearly.
	if r.Code != exitDenied || !strings.Contains(r.Stderr, "pckcrl") {
		t.Fatalf("pccs without CRL: %+v", r)
	}
	r = run(t, t.TempDir(), "attest", "verify", filepath.Join(dir, "quote_v3_ecdsa_p256_pck_chain.bin"), "--pccs", "http://"+ln.Addr().String(), "--no-crl", "--at", "@1671497404")
	if r.Code != 0 || !strings.Contains(r.Stdout, "SWHardeningNeeded") {
		t.Fatalf("pccs: %+v", r)
	}
}
