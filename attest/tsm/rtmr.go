package tsm

import (
	"crypto/sha512"
	"errors"
	"fmt"
	"os"

	"github.com/google/go-configfs-tsm/configfs/configfsi"
	"github.com/google/go-configfs-tsm/configfs/linuxtsm"
	"github.com/google/go-configfs-tsm/rtmr"

	"github.com/veil-tee/veil/attest"
)

// RTMRDir is where Linux exposes configfs-tsm RTMR extension (TDX guests
// whose kernel has it).
const RTMRDir = "/sys/kernel/config/tsm/rtmrs"

// InstanceRTMR is the TDX runtime measurement register veil extends with
// the instance measurement: RTMR 3, the one left to the guest's
// applications (0 to 2 hold firmware, boot loader and kernel events).
const InstanceRTMR = 3

// ErrNoRTMR: this machine offers no configfs-tsm RTMR extension.
var ErrNoRTMR = errors.New("configfs-tsm RTMR extension is not available (not a TDX guest, or a kernel without configfs-tsm rtmrs)")

// RTMRAvailable reports whether RTMRs can be extended here.
func RTMRAvailable() bool {
	st, err := os.Stat(RTMRDir)
	return err == nil && st.IsDir()
}

// InstanceEvent is the digest extended into InstanceRTMR for an instance:
// SHA-384("veil/rtmr/instance/v1" · 0x00 · instance measurement).
func InstanceEvent(instance [attest.InstanceSize]byte) [48]byte {
	return sha512.Sum384(append([]byte("veil/rtmr/instance/v1\x00"), instance[:]...))
}

// ExtendInstance extends InstanceRTMR through client with InstanceEvent:
// from then on every quote of the VM records that this instance started
// (RTMR3 = SHA-384(RTMR3 · event) for each instance, in start order).
func ExtendInstance(client configfsi.Client, instance [attest.InstanceSize]byte) error {
	ev := InstanceEvent(instance)
	if err := rtmr.ExtendDigest(client, InstanceRTMR, ev[:]); err != nil {
		return fmt.Errorf("extending RTMR%d with the instance measurement: %w", InstanceRTMR, err)
	}
	return nil
}

// ExtendLinuxInstance is ExtendInstance over the kernel's configfs; it
// returns ErrNoRTMR where the kernel offers no RTMR extension.
func ExtendLinuxInstance(instance [attest.InstanceSize]byte) error {
	if !RTMRAvailable() {
		return ErrNoRTMR
	}
	c, err := linuxtsm.MakeClient()
	if err != nil {
		return fmt.Errorf("opening configfs-tsm: %w", err)
	}
	return ExtendInstance(c, instance)
}
