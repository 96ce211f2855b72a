package kmsload

import (
	"context"
	"crypto/tls"
	"net"

	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	"github.com/veil-tee/veil/kms/store"
)

// TestRunSmoke drives a real key service (bbolt store, TLS on loopback)
// with the load client for a second: every operation must succeed and the
// figures must be consistent. It asserts no throughput: that depends on
// the machine (scripts/kms-load.sh measures it).
func TestRunSmoke(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	st, err := store.OpenBolt(t.TempDir(), store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ini, err := kms.Initialize(ctx, st, kms.ModeDev, 0, 0, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kms.New(ctx, kms.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.UnsealWithRootKey(ini.RootKey); err != nil {
		t.Fatal(err)
	}
	certs, err := kms.NewDevCertificates([]string{"127.0.0.1"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(certs.CertPEM, certs.KeyPEM)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln, cert) }()
	t.Cleanup(func() {
		cancel()
		<-done
		svc.Close()
	})
	for _, lean := range []bool{false, true} {
		r, err := Run(context.Background(), Config{URL: "https://" + ln.Addr().String(), CAPEM: certs.CAPEM,
			AdminToken: ini.AdminToken, Clients: 4, Duration: time.Second, MixCreate: 10, Lean: lean})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("lean %v: %s", lean, r)
		if r.Errors != 0 || r.Ops == 0 {
			t.Fatalf("lean %v: %d errors (%s), %d operations", lean, r.Errors, r.FirstError, r.Ops)
		}
		if r.P50 <= 0 || r.P50 > r.P99 || r.P99 > r.Max || r.Elapsed < time.Second {
			t.Fatalf("lean %v: inconsistent figures: %+v", lean, r)
		}
	}
}
