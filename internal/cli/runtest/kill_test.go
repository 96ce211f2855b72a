package runtest

import (
	"bufio"
	"encoding/json"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

// bgExec is a `veil exec` running in the background.
type bgExec struct {
	cmd   *exec.Cmd
	lines chan string
	done  chan int // the exit code of veil exec
}

// execBackground runs `veil exec -C app /usr/bin/sh -c script` and waits
// until the program prints "ready".
func (w *world) execBackground(app, script string) *bgExec {
	w.t.Helper()
	cmd := exec.Command(veil, "exec", "-C", app, "/usr/bin/sh", "-c", script)
	cmd.Env = w.env
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	b := &bgExec{cmd: cmd, lines: make(chan string, 64), done: make(chan int, 1)}
	w.t.Cleanup(func() {
		select {
		case <-b.done:
		default:
			cmd.Process.Kill()
			<-b.done
		}
	})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			b.lines <- sc.Text()
		}
		close(b.lines)
		cmd.Wait()
		b.done <- cmd.ProcessState.ExitCode()
	}()
	b.expect(w.t, "ready")
	return b
}

// expect waits for the line want.
func (b *bgExec) expect(t *testing.T, want string) {
	t.Helper()
	timeout := time.After(20 * time.Second)
	for {
		select {
		case l, ok := <-b.lines:
			if !ok {
				t.Fatalf("the program ended without printing %q", want)
			}
			if l == want {
				return
			}
		case <-timeout:
			t.Fatalf("the program did not print %q in 20 s", want)
		}
	}
}

// exit waits for veil exec to end and returns its exit code.
func (b *bgExec) exit(t *testing.T) int {
	t.Helper()
	select {
	case c := <-b.done:
		b.done <- c
		return c
	case <-time.After(20 * time.Second):
		t.Fatal("veil exec did not end")
		return 0
	}
}

func (b *bgExec) running() bool {
	select {
	case c := <-b.done:
		b.done <- c
		return false
	default:
		return true
	}
}

// trapScript prints "got-SIG-tag" and exits with a code chosen per signal
// when it receives USR1 or TERM.
func trapScript(tag string) string {
	return `trap 'echo got-usr1-` + tag + `; exit 7' USR1; trap 'echo got-term-` + tag + `; exit 8' TERM; echo ready; i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit 99`
}

// TestKillDeliversSignals: `veil kill PID --signal USR1` delivers USR1 to
// that process of a started instance only (it runs its handler and exits
// with the handler's code; the other keeps running); `veil kill` without
// PID sends TERM to every process; bad PIDs, signals and a stopped
// instance are refused with the documented exit codes.
func TestKillDeliversSignals(t *testing.T) {
	need(t)
	w, app := bobsApp(t)
	w.must("start", "-C", app)
	t.Cleanup(func() { w.run("", "stop", "-C", app) })
	a := w.execBackground(app, trapScript("a"))
	b := w.execBackground(app, trapScript("b"))

	var st struct {
		Processes []struct {
			PID  int      `json:"pid"`
			Args []string `json:"args"`
		} `json:"processes"`
	}
	if err := json.Unmarshal([]byte(w.must("status", "-C", app, "--json")), &st); err != nil {
		t.Fatal(err)
	}
	pidOf := map[string]int{}
	for _, p := range st.Processes {
		for _, tag := range []string{"a", "b"} {
			if strings.Contains(strings.Join(p.Args, " "), "got-usr1-"+tag) {
				pidOf[tag] = p.PID
			}
		}
	}
	if pidOf["a"] == 0 || pidOf["b"] == 0 || pidOf["a"] == pidOf["b"] {
		t.Fatalf("status lists no distinct processes for the two programs: %+v", st.Processes)
	}

	w.must("kill", "-C", app, "--signal", "USR1", strconv.Itoa(pidOf["a"]))
	a.expect(t, "got-usr1-a")
	if code := a.exit(t); code != 7 {
		t.Fatalf("the program given USR1 exited %d, want 7 (its handler's)", code)
	}
	time.Sleep(300 * time.Millisecond)
	if !b.running() {
		t.Fatal("kill PID reached another process")
	}

	// Refusals: a PID that is not a process, a bad signal name, a
	// non-numeric PID.
	if r := w.run("", "kill", "-C", app, "999999"); r.code != 1 || !strings.HasPrefix(r.err, "veil: error: ") {
		t.Fatalf("kill of a PID that does not run: exit %d %s", r.code, r.err)
	}
	if r := w.run("", "kill", "-C", app, "--signal", "NOSUCH"); r.code != 2 {
		t.Fatalf("unknown signal: exit %d %s", r.code, r.err)
	}
	if r := w.run("", "kill", "-C", app, "one"); r.code != 2 {
		t.Fatalf("non-numeric PID: exit %d %s", r.code, r.err)
	}
	if !b.running() {
		t.Fatal("a refused kill reached a process")
	}

	// Without PID: TERM to every process.
	w.must("kill", "-C", app)
	b.expect(t, "got-term-b")
	if code := b.exit(t); code != 8 {
		t.Fatalf("the program given TERM exited %d, want 8", code)
	}

	w.must("stop", "-C", app)
	if r := w.run("", "kill", "-C", app); r.code == 0 || !strings.Contains(r.err, "veil: error: ") {
		t.Fatalf("kill of a stopped instance: exit %d %s", r.code, r.err)
	}
	assertClean(t, app)
}
