// Package veiltest holds what veil's black-box tests share: the veil
// binary, built once per test binary, and skips for what a test needs of
// the machine. It is imported by tests only.
package veiltest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Main builds veil into a temporary directory, stores its path in *bin,
// runs the tests and removes the directory. The binary is built without
// cgo, as released: the sandbox needs that to drop privileges.
func Main(m *testing.M, bin *string) {
	dir, err := os.MkdirTemp("", "veil-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	*bin = filepath.Join(dir, "veil")
	build := exec.Command("go", "build", "-o", *bin, "github.com/veil-tee/veil/cmd/veil")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building veil: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// RequireEnv is the environment variable that turns environment skips
// into failures: with VEIL_TEST_REQUIRE=all (set by .ci/run), a test that
// would skip because the machine lacks root, /dev/fuse, a command, a
// Python package or user namespaces fails instead, so a run can never pass
// by skipping.
const RequireEnv = "VEIL_TEST_REQUIRE"

// Skip skips the test because the machine lacks something it needs, or
// fails it when VEIL_TEST_REQUIRE=all. Skips that are not about the
// machine (-short) call t.Skip directly.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireEnv) == "all" {
		t.Fatalf("%s (%s=all: environment skips are failures)", msg, RequireEnv)
	}
	t.Skip(msg)
}

// NeedRoot skips the test unless it runs as root.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Skip(t, "needs root")
	}
}

// NeedFUSE skips the test unless it can mount FUSE file systems.
func NeedFUSE(t testing.TB) {
	t.Helper()
	NeedRoot(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Skip(t, "needs /dev/fuse")
	}
}

// NeedCommand skips the test unless name is on PATH.
func NeedCommand(t testing.TB, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		Skip(t, "needs %s", name)
	}
}

// Result is what one run of the binary left behind.
type Result struct {
	Stdout, Stderr string
	Code           int
}

// Run runs bin with args, the environment env appended to this process's,
// and stdin; it fails the test if veil could not be started or panicked.
func Run(t testing.TB, bin string, env []string, stdin string, args ...string) Result {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := Result{Stdout: o.String(), Stderr: e.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.Code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running veil %v: %v", args, err)
	}
	if strings.Contains(r.Stderr, "panic") || strings.Contains(r.Stderr, "goroutine ") {
		t.Fatalf("veil %v panicked:\n%s", args, r.Stderr)
	}
	return r
}
