package tsm

import (
	"bytes"
	"crypto/sha512"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/fakertmr"
	"github.com/google/go-configfs-tsm/rtmr"
)

// TestExtendInstance extends RTMR3 of go-configfs-tsm's fake TDX RTMR
// subsystem for two instances and checks the register is the hash chain
// of their events, in order (what a verifier replays from a log).
func TestExtendInstance(t *testing.T) {
	fake := fakertmr.CreateRtmrSubsystem(t.TempDir())
	a, b := [32]byte{1}, [32]byte{2}
	for _, m := range [][32]byte{a, b} {
		if err := ExtendInstance(fake, m); err != nil {
			t.Fatal(err)
		}
	}
	got, err := rtmr.GetDigest(fake, InstanceRTMR)
	if err != nil {
		t.Fatal(err)
	}
	var want [48]byte
	for _, m := range [][32]byte{a, b} {
		ev := InstanceEvent(m)
		want = sha512.Sum384(append(want[:], ev[:]...))
	}
	if !bytes.Equal(got.Digest, want[:]) {
		t.Fatalf("RTMR3 = %x, want %x", got.Digest, want)
	}
	if ev := InstanceEvent(a); ev == InstanceEvent(b) {
		t.Fatal("two instances give one event")
	}
}
