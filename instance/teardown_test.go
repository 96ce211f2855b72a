package instance

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/internal/veiltest"
)

const teardownChildEnv = "VEIL_TEST_TEARDOWN_DIR"

// TestTeardownKeepsBusyMount: the run directory holds a mount that the
// process tearing down cannot detach (here: locked in its user namespace,
// as an unprivileged user's FUSE mount is when fusermount3 reports it
// busy) and that a program holds open, plus a bind mount of the same file
// system. Close must leave everything under both mounts alone and say so,
// and still remove the rest.
func TestTeardownKeepsBusyMount(t *testing.T) {
	if dir := os.Getenv(teardownChildEnv); dir != "" {
		in := &Instance{RunDir: dir}
		err := in.Close()
		if !errors.Is(err, ErrStillMounted) {
			t.Fatalf("Close: %v, want ErrStillMounted", err)
		}
		return
	}
	if os.Geteuid() != 0 {
		veiltest.Skip(t, "mounting needs root")
	}
	dir := filepath.Join(t.TempDir(), "r-1")
	owner := t.TempDir() // the owner's sealed files, on the run dir's file system
	for _, d := range []string{"root", "mnt0", "mnt1", "sub/deep"} {
		os.MkdirAll(filepath.Join(dir, d), 0o700)
	}
	os.WriteFile(filepath.Join(dir, "sub/deep/f"), []byte("x"), 0o600)
	if err := unix.Mount("tmpfs", filepath.Join(dir, "mnt0"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(dir, "mnt0"), unix.MNT_DETACH) })
	if err := unix.Mount(owner, filepath.Join(dir, "mnt1"), "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(filepath.Join(dir, "mnt1"), unix.MNT_DETACH) })
	for _, f := range []string{"mnt0/sealed", "mnt1/owner.sealed"} {
		if err := os.WriteFile(filepath.Join(dir, f), []byte("keep"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	busy, err := os.Open(filepath.Join(dir, "mnt0/sealed")) // held busy
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()

	cmd := exec.Command(os.Args[0], "-test.run=^TestTeardownKeepsBusyMount$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), teardownChildEnv+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:  syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}},
	}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child: %v\n%s", err, out)
	}
	for _, f := range []string{"mnt0/sealed", "mnt1/owner.sealed"} {
		if b, err := os.ReadFile(filepath.Join(dir, f)); string(b) != "keep" {
			t.Errorf("%s after teardown: %q, %v", f, b, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(owner, "owner.sealed")); string(b) != "keep" {
		t.Errorf("owner's file after teardown: %q, %v", b, err)
	}
	for _, gone := range []string{"root", "sub"} {
		if _, err := os.Lstat(filepath.Join(dir, gone)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s not removed: %v", gone, err)
		}
	}
	// Once the mounts are gone, teardown removes everything.
	unix.Unmount(filepath.Join(dir, "mnt1"), 0)
	busy.Close()
	unix.Unmount(filepath.Join(dir, "mnt0"), 0)
	if err := removeRunDir(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("run directory left: %v", err)
	}
}
