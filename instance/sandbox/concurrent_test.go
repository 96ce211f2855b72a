package sandbox

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestConcurrentExecSignalProcs drives one sandbox from many goroutines at
// once, as the supervisor does for concurrent `veil exec`, `kill` and
// `status` calls: Exec, WaitPID, Procs and Signal overlap on the control
// socket. Each program's output and exit status reach the goroutine that
// started it (no reply is crossed), and a signalled program dies of that
// signal. Run it under -race: this is where the parent side of the
// control protocol is exercised concurrently in the test process.
func TestConcurrentExecSignalProcs(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	sb, err := Start(&Spec{Root: root, Hostname: "box"}, Options{InitPath: veilBin})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sb.Kill(); sb.Wait() }()

	const workers, rounds = 6, 5
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds*2+16)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				outR, outW, _ := os.Pipe()
				want := fmt.Sprintf("w%d-r%d", w, r)
				pid, err := sb.Exec(sh(`echo `+want+`; exit `+fmt.Sprint(10+w)), nil, outW, outW)
				outW.Close()
				if err != nil {
					outR.Close()
					errs <- fmt.Errorf("exec %s: %w", want, err)
					return
				}
				out, _ := io.ReadAll(outR)
				outR.Close()
				st, err := sb.WaitPID(pid)
				if err != nil || st != 10+w || strings.TrimSpace(string(out)) != want {
					errs <- fmt.Errorf("%s: status %d (want %d), output %q, %v", want, st, 10+w, out, err)
				}
			}
		})
	}
	// Long-running programs, killed by signal from other goroutines while
	// the execs above run.
	for i := range 3 {
		wg.Go(func() {
			pid, err := sb.Exec(Command{Path: "/bin/sleep", Args: []string{"sleep", "60"}}, nil, nil, nil)
			if err != nil {
				errs <- fmt.Errorf("exec sleep %d: %w", i, err)
				return
			}
			done := make(chan int, 1)
			go func() {
				st, err := sb.WaitPID(pid)
				if err != nil {
					errs <- err
				}
				done <- st
			}()
			deadline := time.Now().Add(10 * time.Second)
			for {
				ps, err := sb.Procs()
				if err != nil {
					errs <- fmt.Errorf("procs: %w", err)
					return
				}
				if containsPID(ps, pid) || time.Now().After(deadline) {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			if err := sb.Signal(pid, syscall.SIGKILL); err != nil {
				errs <- fmt.Errorf("signal %d: %w", pid, err)
				return
			}
			select {
			case st := <-done:
				if st != 128+int(syscall.SIGKILL) {
					errs <- fmt.Errorf("sleep %d ended with %d, want %d", pid, st, 128+int(syscall.SIGKILL))
				}
			case <-time.After(20 * time.Second):
				errs <- fmt.Errorf("sleep %d did not end after SIGKILL", pid)
			}
		})
	}
	// Status polling throughout.
	stop := make(chan struct{})
	var poll sync.WaitGroup
	poll.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := sb.Procs(); err != nil {
				errs <- fmt.Errorf("procs while busy: %w", err)
				return
			}
		}
	})
	wg.Wait()
	close(stop)
	poll.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if ps, err := sb.Procs(); err != nil || len(ps) != 0 {
		t.Fatalf("after every program ended: %+v %v", ps, err)
	}
	if err := sb.Shutdown(0); err != nil {
		t.Fatal(err)
	}
	if st, err := sb.Wait(); err != nil || st != 0 {
		t.Fatalf("shutdown: %d %v", st, err)
	}
}

func containsPID(ps []Proc, pid int) bool {
	for _, p := range ps {
		if p.PID == pid {
			return true
		}
	}
	return false
}
