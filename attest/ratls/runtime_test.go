package ratls

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/veil-tee/veil/attest"
)

// TestRuntimeCertificate: the runtime's certificate carries its instance
// measurement into the claims; a peer requiring runtime evidence refuses
// certificates without it, certificates whose evidence a workload asked
// for (attest.WorkloadIssuer, even with the runtime's claim copied), and a
// sim certificate naming another instance than the one measured.
func TestRuntimeCertificate(t *testing.T) {
	_, iss, v := setup(t)
	ctx := context.Background()
	var inst [attest.InstanceSize]byte
	inst[0] = 0x42 // the sim identity's measurement
	peer := &Peer{Verifier: v, DeferPolicy: true, RequireRuntime: true}

	c, err := NewCertificate(ctx, iss, Options{Instance: &inst})
	if err != nil {
		t.Fatal(err)
	}
	claims, err := peer.VerifyCertificate(ctx, c.Leaf)
	if err != nil {
		t.Fatalf("the runtime's certificate: %v", err)
	}
	if !bytes.Equal(claims.Instance, inst[:]) {
		t.Fatalf("claims.Instance = %x, want %x", claims.Instance, inst)
	}
	pol := &attest.Policy{AllowSim: true, InstanceMeasurements: []attest.Hex{inst[:]}}
	if err := pol.Enforce(claims, attest.Context{}); err != nil {
		t.Fatalf("instance_measurements naming the instance: %v", err)
	}
	other := &attest.Policy{AllowSim: true, InstanceMeasurements: []attest.Hex{make([]byte, 32)}}
	if err := other.Enforce(claims, attest.Context{}); !errors.Is(err, attest.ErrDenied) {
		t.Fatalf("instance_measurements naming another instance: %v, want denied", err)
	}

	plain, _ := NewCertificate(ctx, iss, Options{})
	if _, err := peer.VerifyCertificate(ctx, plain.Leaf); !errors.Is(err, attest.ErrBinding) {
		t.Fatalf("a certificate without the instance claim: %v, want ErrBinding", err)
	}
	if _, err := (&Peer{Verifier: v, DeferPolicy: true}).VerifyCertificate(ctx, plain.Leaf); err != nil {
		t.Fatalf("a plain certificate for a peer not requiring the runtime: %v", err)
	}
	wl := &attest.WorkloadIssuer{Issuer: iss, Instance: inst}
	for name, o := range map[string]Options{"plain": {}, "with the instance claim": {Instance: &inst}} {
		c, err := NewCertificate(ctx, wl, o)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := peer.VerifyCertificate(ctx, c.Leaf); !errors.Is(err, attest.ErrBinding) {
			t.Fatalf("workload evidence, %s: %v, want ErrBinding", name, err)
		}
	}
	var lie [attest.InstanceSize]byte
	lie[0] = 0x43
	c, _ = NewCertificate(ctx, iss, Options{Instance: &lie})
	if _, err := peer.VerifyCertificate(ctx, c.Leaf); !errors.Is(err, attest.ErrBinding) {
		t.Fatalf("sim certificate claiming another instance: %v, want ErrBinding", err)
	}
}
