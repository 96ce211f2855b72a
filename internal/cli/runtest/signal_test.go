package runtest

import (
	"bufio"
	"encoding/json"
	"errors"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// interrupted starts veil with args, waits for the program to print
// "ready", sends SIGINT to veil (what Ctrl-C does to the foreground
// process) and returns veil's exit code and the program's output.
func (w *world) interrupted(args ...string) (int, string) {
	w.t.Helper()
	cmd := exec.Command(veil, args...)
	cmd.Env = w.env
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	var lines []string
	ready := make(chan bool, 1)
	go func() {
		for sc.Scan() {
			lines = append(lines, sc.Text())
			if sc.Text() == "ready" {
				ready <- true
			}
		}
		close(ready)
	}()
	select {
	case ok := <-ready:
		if !ok {
			cmd.Wait()
			w.t.Fatalf("veil %v ended before the program was ready: %v", args, lines)
		}
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		w.t.Fatalf("veil %v: the program did not get ready", args)
	}
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(20 * time.Second):
		cmd.Process.Kill()
		w.t.Fatalf("veil %v did not end after SIGINT", args)
	}
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		w.t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), strings.Join(lines, "\n")
}

// TestCtrlCReachesTheProgram: SIGINT to `veil run` or `veil exec` is
// delivered to the program in the sandbox, and veil exits with the status
// the program chose.
func TestCtrlCReachesTheProgram(t *testing.T) {
	need(t)
	w, app := bobsApp(t)
	script := `trap 'echo got-int; exit 9' INT; echo ready; while :; do sleep 0.1; done`

	code, out := w.interrupted("run", "-C", app, "/usr/bin/sh", "-c", script)
	if code != 9 || !strings.Contains(out, "got-int") {
		t.Fatalf("veil run after SIGINT: exit %d, output %q", code, out)
	}
	assertClean(t, app)

	w.must("start", "-C", app)
	t.Cleanup(func() { w.run("", "stop", "-C", app) }) // if the test fails while it runs
	code, out = w.interrupted("exec", "-C", app, "/usr/bin/sh", "-c", script)
	if code != 9 || !strings.Contains(out, "got-int") {
		w.run("", "stop", "-C", app)
		t.Fatalf("veil exec after SIGINT: exit %d, output %q", code, out)
	}
	// The instance goes on running other programs.
	if got := w.must("exec", "-C", app, "/usr/bin/sh", "-c", "echo still"); got != "still\n" {
		t.Fatalf("exec after an interrupted one: %q", got)
	}
	w.must("stop", "-C", app)
	assertClean(t, app)
}

// TestSupervisorStopsOnSIGTERM: a supervisor told to terminate (kill, a
// service manager, a shutdown) stops the instance as veil stop does:
// programs end, mounts go.
func TestSupervisorStopsOnSIGTERM(t *testing.T) {
	need(t)
	w, app := bobsApp(t)
	w.must("start", "-C", app)
	t.Cleanup(func() { w.run("", "stop", "-C", app) })
	var st struct {
		State      string `json:"state"`
		Supervisor int    `json:"supervisor_pid"`
	}
	if err := json.Unmarshal([]byte(w.must("status", "-C", app, "--json")), &st); err != nil || st.Supervisor == 0 {
		t.Fatalf("status --json: %v %+v", err, st)
	}
	if err := syscall.Kill(st.Supervisor, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for syscall.Kill(st.Supervisor, 0) == nil {
		if time.Now().After(deadline) {
			t.Fatal("the supervisor did not end after SIGTERM")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if out := w.must("status", "-C", app); !strings.Contains(out, "stopped") {
		t.Fatalf("status after SIGTERM:\n%s", out)
	}
	assertClean(t, app)
}

// bobsApp starts a key service, enrolls bob with a key, and makes an
// instance (job.sh, a sealed /data under bob's key) that may have it.
func bobsApp(t *testing.T) (*world, string) {
	t.Helper()
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	app := w.app(keyID, t.TempDir(), job)
	w.must("kms", "policy", "create", "--from-instance", app, "--key", "bob-cmk", "--allow-sim")
	return w, app
}
