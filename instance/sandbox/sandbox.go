package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	goruntime "runtime"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/internal/timing"
)

// Options of Start.
type Options struct {
	// InitPath is the veil binary to run as the sandbox's init; empty
	// means this executable (/proc/self/exe).
	InitPath string
	// Stdin, Stdout and Stderr of the main program; nil means /dev/null.
	Stdin, Stdout, Stderr *os.File
}

// Sandbox is a running sandbox, seen from the supervisor.
type Sandbox struct {
	init *exec.Cmd
	ctl  *conn
	cg   *cgroup

	// MainPID is the main program's PID inside the sandbox.
	MainPID int
	// Applied and NotApplied name the limits of the spec that the kernel
	// did and did not let the sandbox enforce, with reasons.
	Applied, NotApplied []string

	mu      sync.Mutex
	nextID  int
	waiting map[int]chan *message // replies by request id
	exits   map[int]chan int      // exit status by PID
	done    chan struct{}
	ended   bool // the control socket closed: no more replies
	status  int
	err     error
}

// ErrDenied wraps failures to create namespaces or mounts for lack of privilege.
var ErrDenied = errors.New("not permitted to create a sandbox")

// Start creates the sandbox and starts spec.Main in it. It returns once
// the main program has started, or with the reason it could not.
func Start(spec *Spec, opts Options) (*Sandbox, error) {
	if err := spec.Check(); err != nil {
		return nil, err
	}
	spec.Timing = timing.Enabled()
	initPath := opts.InitPath
	if initPath == "" {
		initPath = "/proc/self/exe"
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("creating control socket: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "ctl")
	defer theirs.Close()
	specR, specW, err := os.Pipe()
	if err != nil {
		unix.Close(fds[0])
		return nil, err
	}
	defer specR.Close()
	cmd := &exec.Cmd{
		Path:       initPath,
		Args:       []string{initArg0},
		Env:        []string{},
		Stdin:      opts.Stdin,
		Stdout:     opts.Stdout,
		Stderr:     opts.Stderr,
		ExtraFiles: []*os.File{specR, theirs},
		SysProcAttr: &syscall.SysProcAttr{
			Cloneflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWPID | syscall.CLONE_NEWIPC | syscall.CLONE_NEWUTS,
			Pdeathsig:  syscall.SIGKILL,
		},
	}
	if !spec.HostNetwork {
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWNET
	}
	userNS := os.Geteuid() != 0
	if !userNS {
		// As root, init gets a user namespace whose IDs 0 to 65535 are an
		// unprivileged host range. It starts as the host's uid 0 (not
		// mapped inside, but the owner of the run directory and the
		// mount sources it must reach), with every capability in the new
		// namespace; once the root is switched it becomes the sandbox's
		// root (the range's first uid) and drops them all.
		if spec.IDs == nil {
			spec.IDs = hostIDs()
		}
		n := int(spec.IDs.Size)
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(spec.IDs.UID), Size: n}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(spec.IDs.GID), Size: n}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = true
		// The host's uid 0 is nobody inside: executing init would clear
		// the capabilities the new namespace gave, but for ambient ones.
		// What init needs to set up, and nothing else.
		cmd.SysProcAttr.AmbientCaps = []uintptr{unix.CAP_SYS_ADMIN, unix.CAP_NET_ADMIN, unix.CAP_SETUID, unix.CAP_SETGID, unix.CAP_SETPCAP}
	} else {
		spec.IDs = nil
		// Without root, a user namespace owns the others: init is root in
		// it (mapped to the caller, so it may mount and switch the root)
		// and drops every capability before any program starts. Only the
		// caller's own uid and gid exist inside.
		cmd.SysProcAttr.Cloneflags |= syscall.CLONE_NEWUSER
		cmd.SysProcAttr.UidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Geteuid(), Size: 1}}
		cmd.SysProcAttr.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getegid(), Size: 1}}
		cmd.SysProcAttr.GidMappingsEnableSetgroups = false
	}
	// Pdeathsig is tied to the thread that forks, not the process: start
	// init from a locked thread that lives until init ends, or the Go
	// runtime retiring that thread would kill the sandbox.
	started, waited := make(chan error, 1), make(chan error, 1)
	go func() {
		goruntime.LockOSThread()
		defer goruntime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		waited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		unix.Close(fds[0])
		specW.Close()
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EACCES) {
			return nil, fmt.Errorf("%w: creating a user namespace as uid %d: %v (%s)", ErrDenied, os.Geteuid(), err, userNSLimits())
		}
		return nil, fmt.Errorf("starting sandbox init: %w", err)
	}
	s := &Sandbox{
		init: cmd, ctl: &conn{fd: fds[0]},
		waiting: map[int]chan *message{}, exits: map[int]chan int{},
		done: make(chan struct{}),
	}
	// Init prepares the root while the limits are applied (moving a
	// process into a cgroup can take milliseconds), and starts no program
	// before the spec pipe's EOF says they are in place.
	timing.Mark("veil", "sandbox init forked")
	err = json.NewEncoder(specW).Encode(spec)
	s.cg, s.Applied, s.NotApplied = applyLimits(cmd.Process.Pid, spec.Limits)
	timing.Mark("veil", "limits applied")
	specW.Close()
	if err != nil {
		cmd.Process.Kill()
		<-waited
		s.cg.remove()
		return nil, fmt.Errorf("sending sandbox spec: %w", err)
	}
	timing.Mark("veil", "sandbox init started, spec sent")
	m, _, err := s.ctl.recv()
	timing.Mark("veil", "sandbox ready")
	if err == nil && m.Op != "ready" {
		err = errors.New(m.Error)
	}
	if err != nil {
		<-waited
		s.cg.remove()
		unix.Close(fds[0])
		if errors.Is(err, errClosed) {
			err = errors.New("sandbox init exited during setup")
		}
		return nil, fmt.Errorf("setting up sandbox: %w", err)
	}
	s.MainPID = m.PID
	if m.PID != 0 {
		s.exits[m.PID] = make(chan int, 1)
	}
	go s.readLoop()
	go func() {
		err := <-waited
		s.mu.Lock()
		s.status = cmd.ProcessState.ExitCode()
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			s.status = 128 + int(ws.Signal())
		}
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			s.err = err
		}
		s.mu.Unlock()
		s.cg.remove()
		close(s.done)
	}()
	return s, nil
}

// userNSLimits names the kernel settings that keep unprivileged users
// from creating user namespaces, as far as this process can read them.
func userNSLimits() string {
	var why []string
	for _, f := range []struct{ path, bad, say string }{
		{"/proc/sys/user/max_user_namespaces", "0", "user.max_user_namespaces is 0"},
		{"/proc/sys/kernel/unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0"},
		{"/proc/sys/kernel/apparmor_restrict_unprivileged_userns", "1", "kernel.apparmor_restrict_unprivileged_userns is 1"},
	} {
		if b, err := os.ReadFile(f.path); err == nil && strings.TrimSpace(string(b)) == f.bad {
			why = append(why, f.say)
		}
	}
	if len(why) == 0 {
		return "this kernel or a security module does not let unprivileged users create user namespaces"
	}
	return strings.Join(why, ", ")
}

func (s *Sandbox) readLoop() {
	defer unix.Close(s.ctl.fd)
	for {
		m, files, err := s.ctl.recv()
		for _, f := range files {
			f.Close()
		}
		if err != nil {
			s.mu.Lock()
			s.ended = true
			for id, ch := range s.waiting {
				ch <- &message{Op: "error", Error: "sandbox ended"}
				delete(s.waiting, id)
			}
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		if m.Op == "exit" {
			ch := s.exits[m.PID]
			if ch == nil {
				ch = make(chan int, 1)
				s.exits[m.PID] = ch
			}
			ch <- m.Status
		} else if ch := s.waiting[m.ID]; ch != nil {
			ch <- m
			delete(s.waiting, m.ID)
		}
		s.mu.Unlock()
	}
}

// request sends m (with files) and waits for init's reply.
func (s *Sandbox) request(m *message, files ...*os.File) (*message, error) {
	s.mu.Lock()
	s.nextID++
	m.ID = s.nextID
	if s.ended {
		s.mu.Unlock()
		return nil, errors.New("sandbox ended")
	}
	ch := make(chan *message, 1)
	s.waiting[m.ID] = ch
	s.mu.Unlock()
	if err := s.ctl.send(m, files...); err != nil {
		s.mu.Lock()
		delete(s.waiting, m.ID)
		s.mu.Unlock()
		return nil, fmt.Errorf("sandbox not reachable: %w", err)
	}
	// A reply sent just before init exited is still read: wait for the
	// reader to drain the socket, not for the process to end.
	r := <-ch
	if r.Op == "error" {
		return nil, errors.New(r.Error)
	}
	return r, nil
}

// Exec starts another program in the sandbox with the given stdio (nil:
// /dev/null) and returns its PID inside the sandbox.
func (s *Sandbox) Exec(c Command, stdin, stdout, stderr *os.File) (int, error) {
	if err := c.check("exec"); err != nil {
		return 0, err
	}
	stdio := []*os.File{stdin, stdout, stderr}
	for i, f := range stdio {
		if f == nil {
			null, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
			if err != nil {
				return 0, err
			}
			defer null.Close()
			stdio[i] = null
		}
	}
	r, err := s.request(&message{Op: "spawn", Cmd: &c}, stdio...)
	if err != nil {
		return 0, err
	}
	s.mu.Lock()
	if s.exits[r.PID] == nil {
		s.exits[r.PID] = make(chan int, 1)
	}
	s.mu.Unlock()
	return r.PID, nil
}

// WaitPID waits for a program the sandbox started and returns its status
// (exit code, or 128 + signal number).
func (s *Sandbox) WaitPID(pid int) (int, error) {
	s.mu.Lock()
	ch := s.exits[pid]
	s.mu.Unlock()
	if ch == nil {
		return 0, fmt.Errorf("no process %d in the sandbox", pid)
	}
	select {
	case st := <-ch:
		return st, nil
	case <-s.done:
		select {
		case st := <-ch:
			return st, nil
		default:
			return 137, errors.New("sandbox ended")
		}
	}
}

// Signal sends sig to a process of the sandbox (0: the main program).
func (s *Sandbox) Signal(pid int, sig syscall.Signal) error {
	_, err := s.request(&message{Op: "signal", PID: pid, Sig: int(sig)})
	return err
}

// Procs lists the processes that the sandbox's init started and that run.
func (s *Sandbox) Procs() ([]Proc, error) {
	r, err := s.request(&message{Op: "ps"})
	if err != nil {
		return nil, err
	}
	return r.Procs, nil
}

// Shutdown ends a sandbox that has no main program, with status; programs
// still running in it are killed.
func (s *Sandbox) Shutdown(status int) error {
	_, err := s.request(&message{Op: "shutdown", Status: status})
	if err != nil {
		select {
		case <-s.done:
			return nil
		default:
		}
	}
	return err
}

// Kill ends the whole sandbox at once.
func (s *Sandbox) Kill() error {
	err := s.init.Process.Kill()
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Done is closed when the sandbox has ended.
func (s *Sandbox) Done() <-chan struct{} { return s.done }

// Wait waits until the sandbox ends and returns the main program's status:
// its exit code, or 128 + the signal that killed it.
func (s *Sandbox) Wait() (int, error) {
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.status, s.err
}
