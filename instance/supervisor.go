package instance

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/instance/sandbox"
)

// SocketName is the supervisor's control socket in DIR/run.
const SocketName = "veil.sock"

// Request is a message to the supervisor (veil exec, kill, status, stop).
type Request struct {
	Op      string   `json:"op"` // exec, signal, kill, status, stop
	Path    string   `json:"path,omitempty"`
	Args    []string `json:"args,omitempty"`
	Env     []string `json:"env,omitempty"`
	PID     int      `json:"pid,omitempty"`
	Sig     int      `json:"sig,omitempty"`
	Timeout int64    `json:"timeout_ms,omitempty"`
}

// Reply is a message from the supervisor.
type Reply struct {
	Op     string  `json:"op"` // started, exit, ok, status, error
	PID    int     `json:"pid,omitempty"`
	Status int     `json:"status,omitempty"`
	Error  string  `json:"error,omitempty"`
	State  *Status `json:"state,omitempty"`
}

// Status describes a started instance.
type Status struct {
	State       string         `json:"state"`
	Dir         string         `json:"dir"`
	Measurement string         `json:"measurement"`
	Signer      string         `json:"signer"`
	Backend     string         `json:"backend"`
	KMSAttested []string       `json:"kms_attested,omitempty"`
	Supervisor  int            `json:"supervisor_pid"`
	Since       time.Time      `json:"since"`
	Mounts      []MountInfo    `json:"mounts"`
	Processes   []sandbox.Proc `json:"processes"`
	Limits      []string       `json:"limits_applied,omitempty"`
	NotApplied  []string       `json:"limits_not_applied,omitempty"`
}

// Supervisor holds a started instance: its attested session, its mounts
// and its sandbox, and serves the control socket.
type Supervisor struct {
	in    *Instance
	sb    *sandbox.Sandbox
	ln    *net.UnixListener
	since time.Time
	stop  chan struct{}
	once  sync.Once
}

// SocketPath is where an instance's supervisor listens.
func SocketPath(dir string) string { return filepath.Join(dir, "run", SocketName) }

// ErrRunning: the instance already has a live supervisor.
var ErrRunning = errors.New("instance is already started")

// ErrNotRunning: the instance has no live supervisor.
var ErrNotRunning = errors.New("instance is not started")

// Supervise opens the instance and an exec-only sandbox and listens on the
// control socket. It returns once ready; Serve then runs until stop.
func Supervise(ctx context.Context, o Options, initPath string) (*Supervisor, error) {
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, err
	}
	sock := SocketPath(dir)
	if c, err := net.Dial("unixpacket", sock); err == nil {
		c.Close()
		return nil, ErrRunning
	}
	o.RunDir = filepath.Join(dir, "run", fmt.Sprintf("s-%d", os.Getpid()))
	in, err := Open(ctx, o)
	if err != nil {
		return nil, err
	}
	spec, err := in.Spec(sandbox.Command{})
	if err != nil {
		in.Close()
		return nil, err
	}
	sb, err := sandbox.Start(spec, sandbox.Options{InitPath: initPath})
	if err != nil {
		in.Close()
		return nil, err
	}
	os.Remove(sock) // a stale socket of a dead supervisor
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: sock, Net: "unixpacket"})
	if err != nil {
		sb.Kill()
		sb.Wait()
		in.Close()
		return nil, fmt.Errorf("listening on %s: %w", sock, err)
	}
	os.Chmod(sock, 0o600)
	return &Supervisor{in: in, sb: sb, ln: ln, since: time.Now(), stop: make(chan struct{})}, nil
}

// Serve answers requests until a stop request or the sandbox's end, then
// cleans up everything.
func (s *Supervisor) Serve() error {
	go func() {
		for {
			c, err := s.ln.AcceptUnix()
			if err != nil {
				return
			}
			go s.handle(c)
		}
	}()
	select {
	case <-s.stop:
	case <-s.sb.Done():
	}
	sock := s.ln.Addr().String()
	s.ln.SetUnlinkOnClose(false)
	s.ln.Close()
	s.sb.Kill()
	s.sb.Wait()
	err := s.in.Close()
	// The socket goes last: `veil stop` waits for it, so when it returns
	// everything is unmounted.
	os.Remove(sock)
	return err
}

func send(c *net.UnixConn, r *Reply) error {
	b, _ := json.Marshal(r)
	_, _, err := c.WriteMsgUnix(b, nil, nil)
	return err
}

// recvRequest reads one request and the descriptors that came with it.
func recvRequest(c *net.UnixConn) (*Request, []*os.File, error) {
	buf := make([]byte, 1<<16)
	oob := make([]byte, unix.CmsgSpace(3*4))
	n, oobn, _, _, err := c.ReadMsgUnix(buf, oob)
	if err != nil {
		return nil, nil, err
	}
	if n == 0 {
		return nil, nil, errors.New("connection closed")
	}
	var files []*os.File
	if oobn > 0 {
		scms, _ := unix.ParseSocketControlMessage(oob[:oobn])
		for _, scm := range scms {
			fds, _ := unix.ParseUnixRights(&scm)
			for _, fd := range fds {
				unix.CloseOnExec(fd)
				files = append(files, os.NewFile(uintptr(fd), "passed"))
			}
		}
	}
	r := &Request{}
	if err := json.Unmarshal(buf[:n], r); err != nil {
		return nil, files, fmt.Errorf("decoding request: %w", err)
	}
	return r, files, nil
}

func (s *Supervisor) handle(c *net.UnixConn) {
	defer c.Close()
	// Only the instance's owner may talk to it (the socket is 0600 in a
	// 0700 directory; the peer's uid is checked as well).
	if cred, err := peerCred(c); err != nil || (cred.Uid != uint32(os.Geteuid()) && cred.Uid != 0) {
		send(c, &Reply{Op: "error", Error: "permission denied"})
		return
	}
	req, files, err := recvRequest(c)
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	if err != nil {
		send(c, &Reply{Op: "error", Error: err.Error()})
		return
	}
	switch req.Op {
	case "exec":
		s.exec(c, req, files)
	case "kill":
		sig := syscall.Signal(req.Sig)
		if sig == 0 {
			sig = syscall.SIGTERM
		}
		pid := req.PID
		if pid == 0 {
			// No PID: every process of the instance.
			procs, err := s.sb.Procs()
			if err != nil {
				send(c, &Reply{Op: "error", Error: err.Error()})
				return
			}
			for _, p := range procs {
				s.sb.Signal(p.PID, sig)
			}
			send(c, &Reply{Op: "ok"})
			return
		}
		if err := s.sb.Signal(pid, sig); err != nil {
			send(c, &Reply{Op: "error", Error: err.Error()})
			return
		}
		send(c, &Reply{Op: "ok"})
	case "status":
		st := s.status()
		send(c, &Reply{Op: "status", State: st})
	case "stop":
		s.Stop(time.Duration(req.Timeout) * time.Millisecond)
		send(c, &Reply{Op: "ok"})
	default:
		send(c, &Reply{Op: "error", Error: "unknown request " + req.Op})
	}
}

// Stop ends the instance as `veil stop` does: TERM to every process, KILL
// after timeout (zero: 10 s), then Serve unmounts everything and returns.
func (s *Supervisor) Stop(timeout time.Duration) {
	s.shutdown(timeout)
	s.once.Do(func() { close(s.stop) })
}

func (s *Supervisor) exec(c *net.UnixConn, req *Request, files []*os.File) {
	if len(files) != 3 {
		send(c, &Reply{Op: "error", Error: "exec needs the caller's stdin, stdout and stderr"})
		return
	}
	cmd, err := s.in.Command(req.Path, req.Args, req.Env)
	if err != nil {
		send(c, &Reply{Op: "error", Error: err.Error()})
		return
	}
	pid, err := s.sb.Exec(cmd, files[0], files[1], files[2])
	for _, f := range files {
		f.Close()
	}
	if err != nil {
		send(c, &Reply{Op: "error", Error: err.Error()})
		return
	}
	send(c, &Reply{Op: "started", PID: pid})
	// Signals from the caller (Ctrl-C) arrive on the same connection.
	go func() {
		for {
			r, fs, err := recvRequest(c)
			for _, f := range fs {
				f.Close()
			}
			if err != nil {
				return
			}
			if r.Op == "signal" {
				s.sb.Signal(pid, syscall.Signal(r.Sig))
			}
		}
	}()
	status, err := s.sb.WaitPID(pid)
	if err != nil {
		send(c, &Reply{Op: "error", Error: err.Error()})
		return
	}
	send(c, &Reply{Op: "exit", Status: status})
}

// shutdown sends TERM to every process, waits up to timeout, then KILL.
func (s *Supervisor) shutdown(timeout time.Duration) {
	if timeout <= 0 {
		timeout = 10 * time.Second
	}
	procs, _ := s.sb.Procs()
	for _, p := range procs {
		s.sb.Signal(p.PID, syscall.SIGTERM)
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if ps, err := s.sb.Procs(); err != nil || len(ps) == 0 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.sb.Shutdown(0) // kills whatever still runs
}

func (s *Supervisor) status() *Status {
	procs, _ := s.sb.Procs()
	return &Status{
		State: "running", Dir: s.in.Dir,
		Measurement: s.in.Build.MeasurementHex(), Signer: s.in.Build.MrSignerHex(),
		Backend: string(s.in.Backend), KMSAttested: s.in.KMSAttested, Supervisor: os.Getpid(), Since: s.since,
		Mounts: s.in.Mounts, Processes: procs, Limits: s.sb.Applied, NotApplied: s.sb.NotApplied,
	}
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	raw.Control(func(fd uintptr) { cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED) })
	return cred, cerr
}

// Dial connects to an instance's supervisor.
func Dial(dir string) (*net.UnixConn, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: SocketPath(abs), Net: "unixpacket"})
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%s: %w", abs, ErrNotRunning)
		}
		return nil, fmt.Errorf("%s: %w: %v", abs, ErrNotRunning, err)
	}
	return c, nil
}

// Call sends one request (with files) and returns the first reply.
func Call(c *net.UnixConn, req *Request, files ...*os.File) (*Reply, error) {
	if err := SendRequest(c, req, files...); err != nil {
		return nil, err
	}
	return ReadReply(c)
}

// SendRequest sends a request with optional descriptors.
func SendRequest(c *net.UnixConn, req *Request, files ...*os.File) error {
	b, _ := json.Marshal(req)
	var oob []byte
	if len(files) > 0 {
		fds := make([]int, len(files))
		for i, f := range files {
			fds[i] = int(f.Fd())
		}
		oob = unix.UnixRights(fds...)
	}
	_, _, err := c.WriteMsgUnix(b, oob, nil)
	return err
}

// ReadReply reads one reply.
func ReadReply(c *net.UnixConn) (*Reply, error) {
	buf := make([]byte, 1<<16)
	n, _, _, _, err := c.ReadMsgUnix(buf, nil)
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, errors.New("supervisor closed the connection")
	}
	r := &Reply{}
	if err := json.Unmarshal(buf[:n], r); err != nil {
		return nil, err
	}
	if r.Op == "error" {
		return r, errors.New(r.Error)
	}
	return r, nil
}
