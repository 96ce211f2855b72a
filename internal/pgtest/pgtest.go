// Package pgtest starts a private PostgreSQL cluster for a test: initdb in
// a temporary directory (as an unprivileged user when the test runs as
// root, since postgres refuses to run as root), a server on a free
// loopback port and a Unix socket in that directory, and teardown in
// t.Cleanup. Nothing is left running.
package pgtest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/veil-tee/veil/internal/veiltest"
)

// BinDir is where Debian's postgresql-15 installs its server binaries.
const BinDir = "/usr/lib/postgresql/15/bin"

// Server is a running test cluster.
type Server struct {
	Dir  string // cluster directory (data and socket)
	Port int
	data string
	cred *syscall.Credential
	cmd  *exec.Cmd
	done chan struct{}
}

// URL returns a connection URL for database db over loopback TCP.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://veil@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// NewDatabase creates a fresh, empty database and returns its URL.
func (s *Server) NewDatabase(t testing.TB) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, s.URL("postgres"))
	if err != nil {
		t.Fatalf("pgtest: connecting: %v", err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM pg_database").Scan(&n); err != nil {
		t.Fatalf("pgtest: %v", err)
	}
	name := fmt.Sprintf("t%d_%d", os.Getpid(), n)
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("pgtest: creating database: %v", err)
	}
	return s.URL(name)
}

// Stop stops the server (fast shutdown), waiting at most 30 s.
func (s *Server) Stop() {
	if s.cmd == nil || s.cmd.Process == nil {
		return
	}
	select {
	case <-s.done:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGINT) // fast shutdown
	select {
	case <-s.done:
	case <-time.After(30 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// credential returns the user the cluster runs as: the test's own when it
// is not root, else the postgres system user (or nobody).
func credential(t testing.TB) (*syscall.Credential, int, int) {
	if os.Geteuid() != 0 {
		return nil, -1, -1
	}
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			continue
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}, uid, gid
	}
	t.Fatalf("pgtest: running as root and neither the postgres nor the nobody user exists")
	return nil, -1, -1
}

// Start initializes and starts a cluster, stopped and removed by t.Cleanup.
// It skips the test when the PostgreSQL binaries are absent.
func Start(t testing.TB) *Server {
	t.Helper()
	for _, b := range []string{"initdb", "postgres"} {
		if _, err := os.Stat(filepath.Join(BinDir, b)); err != nil {
			veiltest.Skip(t, "PostgreSQL server binaries not found in %s (install postgresql-15)", BinDir)
		}
	}
	base, err := os.MkdirTemp("", "veil-pgtest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	cred, uid, gid := credential(t)
	if cred != nil {
		// The parents of a MkdirTemp directory are world-searchable (/tmp);
		// the cluster directory itself belongs to the cluster's user.
		if err := os.Chown(base, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	data := filepath.Join(base, "data")
	initdb := exec.Command(filepath.Join(BinDir, "initdb"), "-D", data, "-U", "veil", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
	initdb.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	initdb.Dir = base
	if out, err := initdb.CombinedOutput(); err != nil {
		t.Fatalf("pgtest: initdb: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Dir: base, Port: port, data: data, cred: cred}
	s.launch(t)
	t.Cleanup(s.Stop)
	s.waitReady(t)
	return s
}

// Restart stops the server with a fast shutdown (what `pg_ctl restart -m
// fast` does: open sessions are ended, in-progress transactions rolled
// back) and starts it again on the same port and data.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	s.launch(t)
	s.waitReady(t)
}

func (s *Server) launch(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(filepath.Join(s.Dir, "server.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.done = make(chan struct{})
	s.cmd = exec.Command(filepath.Join(BinDir, "postgres"), "-D", s.data, "-p", strconv.Itoa(s.Port),
		"-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories="+s.Dir,
		"-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
		"-c", "max_connections=200", "-c", "shared_buffers=16MB")
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: s.cred, Setpgid: true, Pdeathsig: syscall.SIGKILL}
	s.cmd.Dir = s.Dir
	s.cmd.Stdout, s.cmd.Stderr = logf, logf
	if err := s.cmd.Start(); err != nil {
		t.Fatalf("pgtest: starting postgres: %v", err)
	}
	cmd, done := s.cmd, s.done
	go func() { cmd.Wait(); close(done) }()
}

func (s *Server) waitReady(t testing.TB) {
	t.Helper()
	base := s.Dir
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		c, err := pgx.Connect(ctx, s.URL("postgres"))
		if err == nil {
			c.Close(ctx)
			cancel()
			return
		}
		cancel()
		select {
		case <-s.done:
			log, _ := os.ReadFile(filepath.Join(base, "server.log"))
			t.Fatalf("pgtest: postgres exited during start-up:\n%s", log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(base, "server.log"))
			t.Fatalf("pgtest: postgres not ready after 30 s: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// PIDs returns the process ids of the server and its children (backends,
// background workers), for CPU accounting.
func (s *Server) PIDs() []int {
	if s.cmd == nil || s.cmd.Process == nil {
		return nil
	}
	root := s.cmd.Process.Pid
	pids := []int{root}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		st := string(b)
		i := strings.LastIndexByte(st, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(st[i+1:])
		if len(f) > 1 && f[1] == strconv.Itoa(root) {
			pids = append(pids, pid)
		}
	}
	return pids
}
