package sandbox

import (
	"errors"
	"fmt"
	"github.com/veil-tee/veil/internal/veiltest"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// The tests below run this test binary again as an unprivileged user
// inside a user namespace the test makes (root, uid 65534 and gid 65534
// mapped), so that one child can turn the kernel's user-namespace limit off
// for itself and then create a sandbox as a non-root user.
const usernsChildEnv = "VEIL_SANDBOX_TEST_USERNS_CHILD"

// usernsChild runs test in a child process as described above, with
// maxUserNS written to the child namespace's user.max_user_namespaces
// (-1: left alone), and returns the child's combined output.
func usernsChild(t *testing.T, test string, maxUserNS int, env ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), append(env, fmt.Sprintf("%s=%d", usernsChildEnv, maxUserNS))...)
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: 65534, HostID: 65534, Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: 0, Size: 1}, {ContainerID: 65534, HostID: 65534, Size: 1}},
		GidMappingsEnableSetgroups: true,
	}
	out, err := cmd.CombinedOutput()
	if err == nil && strings.Contains(string(out), "--- SKIP: "+test) {
		veiltest.Skip(t, "in the child: %s", out)
	}
	return string(out), err
}

// becomeNobody is run in the child: it applies the namespace limit and
// drops to uid and gid 65534 on every thread.
func becomeNobody(t *testing.T) {
	t.Helper()
	if v := os.Getenv(usernsChildEnv); v != "-1" {
		if err := os.WriteFile("/proc/sys/user/max_user_namespaces", []byte(v), 0); err != nil {
			veiltest.Skip(t, "this kernel does not let a user namespace limit its own: %v", err)
		}
	}
	if err := syscall.Setgroups(nil); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setresgid(65534, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Setresuid(65534, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	// Changing uids made this process undumpable, which would leave the
	// /proc files of its children (uid_map among them) to root: a user
	// who logged in as 65534 is dumpable.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0); err != nil {
		t.Fatal(err)
	}
}

func TestUserNamespaceRefused(t *testing.T) {
	if os.Getenv(usernsChildEnv) != "" {
		becomeNobody(t)
		_, err := Start(&Spec{Root: "/", Main: sh("true")}, Options{})
		if err == nil {
			t.Fatal("a sandbox started although user namespaces are disabled")
		}
		if !errors.Is(err, ErrDenied) {
			t.Fatalf("error does not match ErrDenied: %v", err)
		}
		for _, want := range []string{"creating a user namespace as uid 65534", "user.max_user_namespaces is 0"} {
			if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not say %q", err, want)
			}
		}
		return
	}
	needRoot(t)
	out, err := usernsChild(t, "TestUserNamespaceRefused", 0)
	if err != nil || !strings.Contains(out, "--- PASS: "+t.Name()) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}

// TestUserNamespaceSandbox starts a sandbox as uid 65534: init is root in
// its own user namespace only, and the program has no capabilities, no
// host files and no way back.
func TestUserNamespaceSandbox(t *testing.T) {
	if os.Getenv(usernsChildEnv) != "" {
		root, bin := os.Getenv("VEIL_TEST_ROOT"), os.Getenv("VEIL_TEST_BIN")
		becomeNobody(t)
		r, w, _ := os.Pipe()
		sb, err := Start(&Spec{
			Root:   root,
			Mounts: []Mount{{Type: Tmpfs, Target: "/tmp"}},
			Main:   sh(`cat /proc/self/uid_map /proc/self/status; for f in /*; do echo "entry $f"; done; echo x > /tmp/f && cat /tmp/f; exit 7`),
		}, Options{InitPath: bin, Stdout: w, Stderr: w})
		w.Close()
		if errors.Is(err, ErrDenied) {
			veiltest.Skip(t, "this kernel refuses user namespaces to unprivileged users: %v", err)
		}
		if err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(r)
		status, err := sb.Wait()
		if err != nil || status != 7 {
			t.Fatalf("status %d, %v\n%s", status, err, out)
		}
		for _, want := range []string{`(?m)^\s*0\s+65534\s+1$`, "(?m)^CapEff:\t0+$", "(?m)^CapBnd:\t0+$", "(?m)^NoNewPrivs:\t1$", "(?m)^entry /bin$", "(?m)^x$"} {
			if !regexp.MustCompile(want).Match(out) {
				t.Fatalf("sandbox output does not match %q:\n%s", want, out)
			}
		}
		if regexp.MustCompile(`(?m)^entry /(root|home|etc|usr)$`).Match(out) {
			t.Fatalf("host directories visible:\n%s", out)
		}
		// The workload is the same user as init here: only init being
		// undumpable keeps it from tracing init.
		veilBin = bin
		res := probe(t, &Spec{Root: root}, "ptrace=1", "sysctl=/proc/sys/kernel/core_pattern", "keyctl", "interfaces", "status=Seccomp")
		for _, a := range []string{"ptrace=1", "sysctl=/proc/sys/kernel/core_pattern", "keyctl"} {
			refused(t, res, a)
		}
		if res["interfaces"] != "ok lo" || res["status=Seccomp"] != "ok Seccomp: 2" {
			t.Fatalf("probe: %q", res)
		}
		return
	}
	needRoot(t)
	// Everything the child needs must be open to uid 65534.
	base, err := os.MkdirTemp("", "veil-userns-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	root := makeRoot(t)
	buildProbe(t, root)
	bin := filepath.Join(base, "veil")
	b, err := os.ReadFile(veilBin)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(bin, b, 0o755)
	for _, d := range []string{base, filepath.Dir(root), filepath.Dir(filepath.Dir(root))} {
		os.Chmod(d, 0o755)
	}
	filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err == nil {
			os.Lchown(p, 65534, 65534)
		}
		return nil
	})
	out, err := usernsChild(t, "TestUserNamespaceSandbox", -1, "VEIL_TEST_ROOT="+root, "VEIL_TEST_BIN="+bin)
	if err != nil || !strings.Contains(out, "--- PASS: "+t.Name()) {
		t.Fatalf("child: %v\n%s", err, out)
	}
}
