package fusefs

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/seal"
)

// TestUnmountWithCopyInAnotherNamespace: a process that creates a mount
// namespace while a mount exists (unshare -m here; ip netns exec or
// another sandbox in production) holds a copy of the mount, which keeps
// the FUSE connection alive after our umount(2). Unmount must still
// return, and the stray copy must stop serving the files.
func TestUnmountWithCopyInAnotherNamespace(t *testing.T) {
	needFUSE(t)
	for _, tool := range []string{"unshare", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			veiltest.Skip(t, "needs %s (util-linux)", tool)
		}
	}
	src, dir := t.TempDir(), t.TempDir()
	k := newKey(t)
	srv, err := MountSealed(dir, SealedOptions{Source: src, Keys: k, WriteKeys: []seal.KeyWrapper{k}, MountID: seal.MountID("/data")})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "f"), []byte("secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	holder := exec.Command("unshare", "-m", "--propagation", "private", "sleep", "120")
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Process.Kill(); holder.Wait() })
	// The copy serves the file before the unmount.
	inCopy := func() ([]byte, error) {
		return exec.Command("nsenter", "-t", itoa(holder.Process.Pid), "-m", "cat", filepath.Join(dir, "f")).CombinedOutput()
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		out, err := inCopy()
		if err == nil && string(out) == "secret" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the namespace copy never served the file: %v %s", err, out)
		}
		time.Sleep(50 * time.Millisecond)
	}

	done := make(chan error, 1)
	go func() { done <- Unmount(srv, dir) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Unmount: %v", err)
		}
	case <-time.After(60 * time.Second):
		// Leave the copy's connection to the cleanup: killing the holder
		// ends it and lets the server stop.
		holder.Process.Kill()
		<-done
		t.Fatal("Unmount did not return while another mount namespace held a copy of the mount")
	}
	if mounted(dir) {
		t.Fatalf("%s still mounted", dir)
	}
	out, err := inCopy()
	if err == nil || !strings.Contains(strings.ToLower(string(out)), syscall.ENOTCONN.Error()) {
		t.Fatalf("the copy in the other namespace still answers after Unmount: err %v, output %q", err, out)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("nsenter: %v", err)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
