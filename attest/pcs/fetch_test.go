package pcs

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"testing"

	"github.com/veil-tee/veil/attest"
)

// A PCCS stand-in on 127.0.0.1 serving the SGX test collateral.
func TestFetch(t *testing.T) {
	read := func(n string) []byte {
		b, err := os.ReadFile("../testdata/sgx/" + n)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	chain := url.QueryEscape(string(read("tcb_info_v3_fmspc_00606A000000_certs.pem")))
	mux := http.NewServeMux()
	var fmspc string
	mux.HandleFunc("/sgx/certification/v4/tcb", func(w http.ResponseWriter, r *http.Request) {
		fmspc = r.URL.Query().Get("fmspc")
		w.Header().Set("TCB-Info-Issuer-Chain", chain)
		w.Write(read("tcb_info_v3_fmspc_00606A000000.json"))
	})
	mux.HandleFunc("/sgx/certification/v4/qe/identity", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("SGX-Enclave-Identity-Issuer-Chain", chain)
		w.Write(read("qe_identity_v2.json"))
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(mux)
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	defer srv.Close()

	c, err := Fetch(context.Background(), FetchOptions{BaseURL: srv.URL, FMSPC: "00606A000000"})
	if err != nil {
		t.Fatal(err)
	}
	if fmspc != "00606A000000" || len(c.TCBInfos) != 1 || len(c.QEIdentities) != 1 || len(c.SigningChain) != 2 {
		t.Fatalf("fetched %+v (fmspc %q)", c, fmspc)
	}
	// A missing endpoint (TDX here) is a collateral error.
	if _, err := Fetch(context.Background(), FetchOptions{BaseURL: srv.URL, TDX: true, FMSPC: "00606A000000"}); !errors.Is(err, attest.ErrCollateral) {
		t.Fatalf("missing endpoint: %v", err)
	}
}
