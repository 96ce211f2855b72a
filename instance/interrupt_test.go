package instance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/trustimage"
)

// hangingKMS listens on loopback, accepts connections and never answers;
// stop closes the listener and every connection.
func hangingKMS(t *testing.T) (addr string, stop func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns []net.Conn
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			l.Close()
			<-done
			for _, c := range conns {
				c.Close()
			}
		})
	}
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

// hangingInstance builds an instance whose one key service is at addr.
func hangingInstance(t *testing.T, addr string) string {
	t.Helper()
	dir := t.TempDir()
	cfg := fmt.Sprintf(`{
  "entrypoints": ["/usr/bin/"],
  "mounts": [{"target": "/tmp", "type": "tmpfs", "size": "16M"}],
  "kms": [{"name": "main", "address": %q, "pin_sha256": %q}],
  "secrets": [{"name": "s", "from": "kms:s@main", "env": "S"}],
  "bom": {"copy": [{"from": "/usr/bin/dash", "to": "/usr/bin/sh"}]}
}`, addr, strings.Repeat("ab", 32))
	os.MkdirAll(filepath.Join(dir, "image"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "veil.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	sk, _ := trustimage.GenerateSignKey()
	if _, _, err := trustimage.Build(context.Background(), dir, trustimage.Options{SignKey: sk}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestRunInterruptedDuringSetup: Ctrl-C while the key service hangs (it
// accepts and never answers; without cancelling, set-up would wait three
// tries of ten seconds) ends the run within a second, with ErrInterrupted,
// nothing mounted and the program never started.
func TestRunInterruptedDuringSetup(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	addr, stop := hangingKMS(t)
	dir := hangingInstance(t, addr)
	sigs := make(chan os.Signal, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		sigs <- syscall.SIGINT
	}()
	start := time.Now()
	st, out, err := runIn(t, dir, simPlatform(t), sigs, "/usr/bin/sh", "-c", "echo started")
	took := time.Since(start)
	if !errors.Is(err, ErrInterrupted) || !errors.Is(err, context.Canceled) {
		t.Fatalf("status %d, err %v, want ErrInterrupted; output %q", st, err, out)
	}
	if took > 300*time.Millisecond+time.Second {
		t.Fatalf("interrupt took %v to end the set-up", took)
	}
	if strings.Contains(out, "started") {
		t.Fatal("the program ran")
	}
	assertNoMounts(t, dir)
	// The HTTP client may still hold the connection it was dialling in
	// the background: it ends when the service goes away.
	stop()
	for i := 0; i < 100 && hasSocket(); i++ {
		time.Sleep(20 * time.Millisecond)
	}
}

func hasSocket() bool {
	for _, l := range openFDs() {
		if strings.HasPrefix(l, "socket:") {
			return true
		}
	}
	return false
}

// TestRunIgnoresOtherSignalsDuringSetup: a signal that is not a
// termination (SIGUSR1) during set-up is not held for the program: the
// program, started later, does not get it.
func TestRunIgnoresOtherSignalsDuringSetup(t *testing.T) {
	needRootFUSE(t)
	dir, _, _ := instance(t)
	sigs := make(chan os.Signal, 1)
	sigs <- syscall.SIGUSR1 // arrives before the program runs
	st, out, err := runIn(t, dir, simPlatform(t), sigs, "/usr/bin/sh", "-c", "sleep 0.3; echo alive")
	if err != nil || st != 0 || !strings.Contains(out, "alive") {
		t.Fatalf("status %d, err %v, output %q", st, err, out)
	}
}
