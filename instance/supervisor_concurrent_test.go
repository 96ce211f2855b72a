package instance

import (
	"bufio"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/veil-tee/veil/fusefs"
	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/trustimage"
)

// fuseRoot mounts the verified image with the FUSE server veil uses (not
// extracted), so that the programs below read their binaries through it.
func fuseRoot(mountpoint string, r *trustimage.Reader, log *slog.Logger) (Unmounter, error) {
	o := fusefs.ImageOptions{Reader: r, Logger: log}
	if ids := sandbox.HostIDs(); ids != nil {
		o.AllowOther, o.UIDShift, o.GIDShift = true, ids.UID, ids.GID
	}
	srv, err := fusefs.MountImage(mountpoint, o)
	if err != nil {
		return nil, err
	}
	return imageUnmounter{srv, mountpoint, r}, nil
}

type imageUnmounter struct {
	srv *fuse.Server
	mp  string
	r   *trustimage.Reader
}

func (u imageUnmounter) Unmount() error {
	err := fusefs.Unmount(u.srv, u.mp)
	if cerr := u.r.Close(); err == nil {
		err = cerr
	}
	return err
}

// execAt starts a program through the supervisor on its own connection and
// returns the connection, the program's pid and its output.
func execAt(dir string, args ...string) (conn interface {
	Close() error
}, pid int, out *os.File, wait func() (int, error), err error) {
	c, err := Dial(dir)
	if err != nil {
		return nil, 0, nil, nil, err
	}
	devnull, _ := os.Open(os.DevNull)
	outR, outW, _ := os.Pipe()
	r, err := Call(c, &Request{Op: "exec", Path: args[0], Args: args[1:]}, devnull, outW, outW)
	devnull.Close()
	outW.Close()
	if err != nil {
		c.Close()
		outR.Close()
		return nil, 0, nil, nil, err
	}
	if r.Op != "started" || r.PID == 0 {
		c.Close()
		outR.Close()
		return nil, 0, nil, nil, fmt.Errorf("exec answered %+v", r)
	}
	wait = func() (int, error) {
		r, err := ReadReply(c)
		if err != nil {
			return 0, err
		}
		if r.Op != "exit" {
			return 0, fmt.Errorf("reply %+v, want exit", r)
		}
		return r.Status, nil
	}
	return c, r.PID, outR, wait, nil
}

func callOnce(dir string, req *Request) (*Reply, error) {
	c, err := Dial(dir)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return Call(c, req)
}

// TestSupervisorConcurrentClients runs one supervisor in the test process
// (so under -race with the image and sealed FUSE servers it mounts) and
// talks to it from many clients at once: programs that each append to
// their own file in the sealed /data while reading binaries from the
// image, status calls throughout, a kill by PID from another connection,
// a signal on the exec connection itself, and two stop calls at once
// while a program still runs. Every program gets its own output and exit
// status; the files hold exactly what was written; after stop nothing is
// mounted and no process or descriptor is left.
func TestSupervisorConcurrentClients(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	dir, data, _ := instance(t)
	sup, err := Supervise(context.Background(), Options{Dir: dir, MountRoot: fuseRoot, MountSealed: sealedFUSE, SimDir: simPlatform(t)}, veilBin)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- sup.Serve() }()
	stopped := false
	defer func() {
		if !stopped {
			sup.Stop(time.Second)
			<-served
		}
	}()

	const writers, lines = 5, 30
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := range writers {
		wg.Go(func() {
			script := fmt.Sprintf(`i=0; while [ $i -lt %d ]; do echo "w%d line $i" >> /data/f%d; cat /usr/bin/cat > /tmp/copy%d; i=$((i+1)); done; cat /data/f%d; exit %d`, lines, w, w, w, w, 20+w)
			c, _, out, wait, err := execAt(dir, "/usr/bin/sh", "-c", script)
			if err != nil {
				errs <- fmt.Errorf("writer %d: %w", w, err)
				return
			}
			defer c.Close()
			var got []string
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				got = append(got, sc.Text())
			}
			out.Close()
			st, err := wait()
			if err != nil || st != 20+w {
				errs <- fmt.Errorf("writer %d: status %d, want %d: %v", w, st, 20+w, err)
				return
			}
			if len(got) != lines {
				errs <- fmt.Errorf("writer %d read back %d lines, want %d: %q", w, len(got), lines, got)
				return
			}
			for i, l := range got {
				if l != fmt.Sprintf("w%d line %d", w, i) {
					errs <- fmt.Errorf("writer %d line %d: %q", w, i, l)
					return
				}
			}
		})
	}
	// A program killed by PID from another connection.
	wg.Go(func() {
		c, pid, out, wait, err := execAt(dir, "/usr/bin/sleep", "60")
		if err != nil {
			errs <- fmt.Errorf("sleep to kill: %w", err)
			return
		}
		defer c.Close()
		out.Close()
		if _, err := callOnce(dir, &Request{Op: "kill", PID: pid, Sig: int(syscall.SIGKILL)}); err != nil {
			errs <- fmt.Errorf("kill %d: %w", pid, err)
		}
		if st, err := wait(); err != nil || st != 128+int(syscall.SIGKILL) {
			errs <- fmt.Errorf("killed sleep: status %d, %v", st, err)
		}
	})
	// A program signalled over its own exec connection (what Ctrl-C on
	// veil exec does).
	wg.Go(func() {
		cc, err := Dial(dir)
		if err != nil {
			errs <- err
			return
		}
		defer cc.Close()
		devnull, _ := os.Open(os.DevNull)
		r, err := Call(cc, &Request{Op: "exec", Path: "/usr/bin/sleep", Args: []string{"60"}}, devnull, devnull, devnull)
		devnull.Close()
		if err != nil || r.Op != "started" {
			errs <- fmt.Errorf("sleep to signal: %+v %v", r, err)
			return
		}
		if err := SendRequest(cc, &Request{Op: "signal", Sig: int(syscall.SIGINT)}); err != nil {
			errs <- err
			return
		}
		if r, err := ReadReply(cc); err != nil || r.Status != 128+int(syscall.SIGINT) {
			errs <- fmt.Errorf("signalled sleep: %+v %v", r, err)
		}
	})
	stopPoll := make(chan struct{})
	var poll sync.WaitGroup
	for range 2 {
		poll.Go(func() {
			for {
				select {
				case <-stopPoll:
					return
				default:
				}
				r, err := callOnce(dir, &Request{Op: "status"})
				if err != nil || r.State == nil || r.State.State != "running" || len(r.State.Mounts) != 2 {
					errs <- fmt.Errorf("status while busy: %+v %v", r, err)
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	close(stopPoll)
	poll.Wait()

	// Stop twice at once while a program runs: it gets TERM, both stop
	// calls are answered, Serve returns once.
	c, _, out, wait, err := execAt(dir, "/usr/bin/sleep", "60")
	if err != nil {
		t.Fatal(err)
	}
	out.Close()
	var stops sync.WaitGroup
	for range 2 {
		stops.Go(func() {
			if r, err := callOnce(dir, &Request{Op: "stop", Timeout: 5000}); err != nil || r.Op != "ok" {
				errs <- fmt.Errorf("stop: %+v %v", r, err)
			}
		})
	}
	if st, err := wait(); err != nil || st != 128+int(syscall.SIGTERM) {
		t.Errorf("a program running at stop: %d %v", st, err)
	}
	c.Close()
	stops.Wait()
	select {
	case err := <-served:
		stopped = true
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Serve did not return after stop")
	}
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if _, err := Dial(dir); err == nil {
		t.Fatal("the supervisor still answers after stop")
	}
	assertNoMounts(t, dir)
	// What the programs wrote is sealed on the host side.
	for w := range writers {
		b, err := os.ReadFile(filepath.Join(data, fmt.Sprintf("f%d", w)))
		if err != nil || len(b) == 0 || strings.Contains(string(b), "line") {
			t.Fatalf("backing file f%d: %d bytes, %v, plaintext: %v", w, len(b), err, strings.Contains(string(b), "line"))
		}
	}
}
