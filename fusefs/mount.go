package fusefs

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"time"

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
//
// A mount namespace created while the mount existed (unshare -m, ip netns
// exec, another sandbox) holds a copy of it, and that copy keeps the FUSE
// connection open after our umount(2): the server would wait forever for
// the end of a connection nobody here uses any more. So when the server has
// not stopped within unmountGrace of the unmount, root ends the connection
// through the kernel's fusectl (/sys/fs/fuse/connections/N/abort); the
// stray copies then answer ENOTCONN.
func Unmount(srv *fuse.Server, mountpoint string) error {
	if os.Geteuid() == 0 {
		var st unix.Stat_t
		statErr := unix.Stat(mountpoint, &st)
		if err := unix.Unmount(mountpoint, 0); err == nil {
			if statErr == nil {
				waitOrAbort(srv, unix.Minor(st.Dev))
			} else {
				srv.Wait()
			}
			return nil
		}
	}
	return srv.Unmount()
}

// unmountGrace is how long a server may take to see the end of its
// connection after a successful unmount before the connection is aborted.
var unmountGrace = 2 * time.Second

// waitOrAbort waits for srv to stop, aborting its connection (fusectl
// minor number conn) if it has not stopped within unmountGrace.
func waitOrAbort(srv *fuse.Server, conn uint32) {
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
		return
	case <-time.After(unmountGrace):
	}
	if err := AbortConnection(conn); err != nil {
		slog.Warn("ending a FUSE connection still held by another mount namespace", "connection", conn, "err", err)
	}
	<-done
}

// AbortConnection ends the FUSE connection with fusectl number conn (the
// minor device number of its mount): pending and later requests fail with
// ENOTCONN, and its server's reads end. It writes the connection's abort
// file in /sys/fs/fuse/connections; where fusectl is not mounted there (no
// systemd), it mounts fusectl in a mount namespace private to one thread,
// so the host's mounts do not change. Only root can do either.
func AbortConnection(conn uint32) error {
	abort := fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", conn)
	if err := os.WriteFile(abort, []byte("1"), 0); err == nil || !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	errc := make(chan error, 1)
	go func() {
		// The thread's mount namespace is its own from here on, and the
		// thread ends with this goroutine (no UnlockOSThread).
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
			errc <- fmt.Errorf("unsharing the mount namespace: %w", err)
			return
		}
		if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
			errc <- fmt.Errorf("making mounts private: %w", err)
			return
		}
		if err := unix.Mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, ""); err != nil {
			errc <- fmt.Errorf("mounting fusectl: %w", err)
			return
		}
		err := os.WriteFile(abort, []byte("1"), 0)
		if errors.Is(err, fs.ErrNotExist) {
			err = nil // the connection ended meanwhile
		}
		errc <- err
	}()
	return <-errc
}
