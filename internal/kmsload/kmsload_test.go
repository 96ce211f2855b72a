package kmsload

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/veil-tee/veil/kms"
	devkms "github.com/veil-tee/veil/kms/dev"
	"github.com/veil-tee/veil/kms/store"
)

// TestRunSmoke drives a real key service (bbolt store, TLS on loopback)
// with the load client for a second: every operation must succeed and the
// figures must be consistent. It asserts no throughput: that depends on
// the machine (scripts/kms-load.sh measures it).
func TestRunSmoke(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	dir := t.TempDir()
	st, err := store.OpenBolt(dir, store.BoltOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	// A --dev service, as `veil kms serve --dev` sets it up.
	ds, err := devkms.Setup(ctx, st, filepath.Join(dir, "dev"), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	ca, err := os.ReadFile(filepath.Join(dir, "dev", devkms.CAFile))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := kms.New(ctx, kms.Options{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	if err := svc.UnsealWithRootKey(ds.RootKey); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- svc.Serve(ctx, ln, ds.Cert) }()
	t.Cleanup(func() {
		cancel()
		<-done
		svc.Close()
	})
	for _, lean := range []bool{false, true} {
		r, err := Run(context.Background(), Config{URL: "https://" + ln.Addr().String(), CAPEM: ca,
			AdminToken: ds.AdminToken, Clients: 4, Duration: time.Second, MixCreate: 10, Lean: lean})
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
