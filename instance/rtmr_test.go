package instance

import (
	"bytes"
	"crypto/sha512"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/google/go-configfs-tsm/configfs/fakertmr"
	"github.com/google/go-configfs-tsm/rtmr"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/tsm"
)

// TestExtendRTMR: on TDX the instance measurement goes into RTMR3 (through
// go-configfs-tsm's fake RTMR subsystem); where the kernel has no RTMR
// extension the start goes on with a log line saying so; another failure
// stops the start; other backends are left alone.
func TestExtendRTMR(t *testing.T) {
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	m := [32]byte{7}
	fake := fakertmr.CreateRtmrSubsystem(t.TempDir())
	if err := extendRTMR(attest.TEETDX, m, func(i [32]byte) error { return tsm.ExtendInstance(fake, i) }, log); err != nil {
		t.Fatal(err)
	}
	got, err := rtmr.GetDigest(fake, tsm.InstanceRTMR)
	ev := tsm.InstanceEvent(m)
	want := sha512.Sum384(append(make([]byte, 48), ev[:]...))
	if err != nil || !bytes.Equal(got.Digest, want[:]) {
		t.Fatalf("RTMR3 %x, %v; want %x", got.Digest, err, want)
	}
	if err := extendRTMR(attest.TEETDX, m, func([32]byte) error { return tsm.ErrNoRTMR }, log); err != nil {
		t.Fatalf("no RTMR extension: %v, want the start to go on", err)
	}
	if !strings.Contains(logs.String(), "RTMR3 not extended") {
		t.Fatalf("no log line for the missing RTMR extension:\n%s", logs.String())
	}
	boom := errors.New("boom")
	if err := extendRTMR(attest.TEETDX, m, func([32]byte) error { return boom }, log); !errors.Is(err, boom) {
		t.Fatalf("failed extension: %v", err)
	}
	if err := extendRTMR(attest.TEESim, m, func([32]byte) error { return boom }, log); err != nil {
		t.Fatalf("sim: %v", err)
	}
}
