package fusefs

import (
	"fmt"
	"os"
	"os/exec"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// mountError explains the usual reasons a FUSE mount fails.
func mountError(err error) error {
	if _, statErr := os.Stat("/dev/fuse"); statErr != nil {
		return fmt.Errorf("mounting: %w: /dev/fuse is missing (load the fuse module, or pass --device /dev/fuse to the container)", err)
	}
	if os.Geteuid() != 0 {
		// Without root, go-fuse mounts through the set-uid fusermount3,
		// which needs /dev/fuse open to the caller.
		if unix.Access("/dev/fuse", unix.R_OK|unix.W_OK) != nil {
			mode := "?"
			if fi, err := os.Stat("/dev/fuse"); err == nil {
				mode = fmt.Sprintf("%04o", fi.Mode().Perm())
			}
			return fmt.Errorf("mounting: %w: /dev/fuse (mode %s) is not readable and writable by uid %d: most distributions make it 0666; else run veil as root", err, mode, os.Geteuid())
		}
		if _, err3 := exec.LookPath("fusermount3"); err3 != nil {
			if _, err2 := exec.LookPath("fusermount"); err2 != nil {
				return fmt.Errorf("mounting: %w: mounting without root needs fusermount3 on PATH (Debian and Ubuntu: apt install fuse3)", err)
			}
		}
	}
	return fmt.Errorf("mounting: %w", err)
}

// Unmount detaches a mount of this package and waits until its server has
// stopped. Root unmounts directly with umount(2), sparing the fusermount3
// process go-fuse would start; others, or a direct unmount the kernel
// refuses, go through the server's own Unmount.
func Unmount(srv *fuse.Server, mountpoint string) error {
	if os.Geteuid() == 0 {
		if err := unix.Unmount(mountpoint, 0); err == nil {
			srv.Wait()
			return nil
		}
	}
	return srv.Unmount()
}
