package runtest

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestCtrlCDuringSetup: with a key service that accepts connections and
// never answers, `veil run` and `veil start` hang in set-up (three tries
// of ten seconds before the fix); Ctrl-C must end them within a second,
// with exit code 130, nothing mounted and no process left.
func TestCtrlCDuringSetup(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	app := w.app(keyID, t.TempDir(), job)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn // accepted, never answered
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	// The address is not measured: the build stays valid.
	cfg, _ := os.ReadFile(filepath.Join(app, "veil.json"))
	addr := strings.TrimPrefix(w.getenv("VEIL_KMS_URL"), "https://")
	os.WriteFile(filepath.Join(app, "veil.json"), bytes.Replace(cfg, []byte(addr), []byte(l.Addr().String()), 1), 0o644)

	for _, args := range [][]string{{"run", "-C", app, "/usr/bin/sh", "/app/job.sh"}, {"start", "-C", app}} {
		cmd := exec.Command(veil, args...)
		cmd.Env = w.env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(700 * time.Millisecond) // in set-up, waiting for the key service
		sent := time.Now()
		cmd.Process.Signal(syscall.SIGINT)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Fatalf("veil %s did not end after SIGINT", args[0])
		}
		took := time.Since(sent)
		if code := cmd.ProcessState.ExitCode(); code != 130 {
			t.Errorf("veil %s: exit %d, want 130: %s", args[0], code, stderr.String())
		}
		if took > time.Second {
			t.Errorf("veil %s took %v to end after SIGINT", args[0], took)
		}
		t.Logf("veil %s: ended %v after SIGINT: %s", args[0], took, strings.TrimSpace(stderr.String()))
		for i := 0; i < 40 && len(procsOf(app)) > 0; i++ {
			time.Sleep(50 * time.Millisecond) // the supervisor's last steps
		}
		assertClean(t, app)
	}
}
