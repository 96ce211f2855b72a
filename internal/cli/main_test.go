package cli

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

// veilBin is the veil binary built once for the black-box tests.
var veilBin string

func TestMain(m *testing.M) { veiltest.Main(m, &veilBin) }

// result is what a run of the binary left behind.
type result struct {
	stdout, stderr []byte
	code           int
}

// veil runs the binary with args in dir (with VEIL_HOME inside the test's
// temp dir) and stdin.
func veil(t *testing.T, dir string, stdin []byte, args ...string) result {
	t.Helper()
	cmd := exec.Command(veilBin, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "VEIL_HOME="+filepath.Join(dir, ".veil-home"))
	cmd.Stdin = bytes.NewReader(stdin)
	return runVeil(t, cmd, args)
}

// runVeil runs cmd (the binary with args), returns what it left and
// checks its standard error's style.
func runVeil(t *testing.T, cmd *exec.Cmd, args []string) result {
	t.Helper()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.Bytes(), stderr: errb.Bytes()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("running veil %v: %v", args, err)
	}
	checkStderr(t, args, r)
	return r
}

// checkStderr enforces the error style: every line starts with "veil: ",
// errors are one line, and nothing looks like a panic.
func checkStderr(t *testing.T, args []string, r result) {
	t.Helper()
	s := string(r.stderr)
	if strings.Contains(s, "panic") || strings.Contains(s, "goroutine ") {
		t.Fatalf("veil %v panicked:\n%s", args, s)
	}
	if r.code != 0 {
		lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
		nerr := 0
		for _, l := range lines {
			if strings.HasPrefix(l, "veil: error: ") {
				nerr++
			}
		}
		if nerr != 1 {
			t.Fatalf("veil %v exited %d with %d error lines, want 1:\n%s", args, r.code, nerr, s)
		}
	}
}

// mustVeil runs veil and fails the test unless it exits 0.
func mustVeil(t *testing.T, dir string, stdin []byte, args ...string) result {
	t.Helper()
	r := veil(t, dir, stdin, args...)
	if r.code != 0 {
		t.Fatalf("veil %v: exit %d\n%s", args, r.code, r.stderr)
	}
	return r
}
