package kmsload

import (
	"context"
	"testing"
	"time"
)

// TestRunSmoke drives a real key service (bbolt store, TLS on loopback)
// with the load client for a second: every operation must succeed and the
// figures must be consistent. It asserts no throughput: that depends on
// the machine (scripts/kms-load.sh measures it).
func TestRunSmoke(t *testing.T) {
	tg := startKMS(t, 0)
	for _, lean := range []bool{false, true} {
		r, err := Run(context.Background(), Config{URL: tg.url, CAPEM: tg.ca,
			AdminToken: tg.adminToken, Clients: 4, Duration: time.Second, MixCreate: 10, Lean: lean})
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

// TestRunOpenLoop: with a rate the clients offer that many operations per
// second in all and no more, whatever the server could take.
func TestRunOpenLoop(t *testing.T) {
	tg := startKMS(t, 0)
	const rate, clients = 50.0, 4
	r, err := Run(context.Background(), Config{URL: tg.url, CAPEM: tg.ca, AdminToken: tg.adminToken,
		Clients: clients, Duration: time.Second, Rate: rate, Lean: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s", r)
	if r.Errors != 0 || r.Ops == 0 {
		t.Fatalf("%d errors (%s), %d operations", r.Errors, r.FirstError, r.Ops)
	}
	if max := int64(rate*r.Elapsed.Seconds()) + clients; r.Ops > max {
		t.Fatalf("%d operations in %s at %v per second offered: more than the %d offered", r.Ops, r.Elapsed, rate, max)
	}
}
