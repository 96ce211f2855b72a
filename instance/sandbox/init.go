package sandbox

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/internal/timing"
)

// initArg0 is argv[0] of veil re-executed as a sandbox's init.
const initArg0 = "veil-sandbox-init"

// IsInit reports whether this process is a sandbox's init; the program's
// entry point must then call Init before doing anything else.
func IsInit() bool { return len(os.Args) > 0 && os.Args[0] == initArg0 }

// Init runs a sandbox's init: it never returns to normal program flow; its
// result is the process's exit code (the main program's status).
func Init() int {
	ctl := &conn{fd: 4}
	fail := func(err error) int {
		ctl.send(&message{Op: "error", Error: err.Error()})
		return 125
	}
	spec := &Spec{}
	specFile := os.NewFile(3, "spec")
	if err := json.NewDecoder(specFile).Decode(spec); err != nil {
		return fail(fmt.Errorf("reading sandbox spec: %w", err))
	}
	if spec.Timing {
		timing.Enable()
	}
	timing.Mark("init", "spec read")
	if err := setupRoot(spec); err != nil {
		return fail(err)
	}
	timing.Mark("init", "root switched")
	if !spec.HostNetwork {
		if err := loopbackUp(); err != nil {
			return fail(err)
		}
	}
	if err := dropPrivileges(); err != nil {
		return fail(err)
	}
	if err := installSeccomp(); err != nil {
		return fail(err)
	}
	// Undumpable: no program of the sandbox may ptrace init (which holds
	// the control socket) or read its memory through /proc.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fail(fmt.Errorf("making init undumpable: %w", err))
	}
	timing.Mark("init", "privileges dropped")
	// The supervisor closes the spec pipe once the limits are in place;
	// nothing runs in the sandbox before that.
	io.Copy(io.Discard, specFile)
	specFile.Close()
	timing.Mark("init", "limits in place")
	in := &initProc{ctl: ctl, procs: map[int]*Proc{}, spawned: make(chan struct{}, 1), shutdown: make(chan int, 1)}
	// Programs start with these signals at their default action whatever
	// init inherited: a signal ignored here would stay ignored in them.
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	if spec.Main.Path == "" {
		ctl.send(&message{Op: "ready"})
		go in.serve()
		go in.reap()
		return <-in.shutdown
	}
	pid, err := in.spawn(&spec.Main, []*os.File{os.Stdin, os.Stdout, os.Stderr}, true)
	if err != nil {
		return fail(fmt.Errorf("starting %s: %w", spec.Main.Path, err))
	}
	in.mainPID = pid
	timing.Mark("init", "program started")
	ctl.send(&message{Op: "ready", PID: pid})
	go in.forwardSignals(sigs)
	go in.serve()
	return in.reap()
}

type initProc struct {
	shutdown chan int // a sandbox without a main program ends with this status
	ctl      *conn
	mu       sync.Mutex
	procs    map[int]*Proc
	mainPID  int
	spawned  chan struct{}
}

func (in *initProc) spawn(c *Command, stdio []*os.File, main bool) (int, error) {
	dir := c.Dir
	if dir == "" {
		dir = "/"
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	p, err := os.StartProcess(c.Path, c.Args, &os.ProcAttr{Dir: dir, Env: c.Env, Files: stdio})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	in.procs[pid] = &Proc{PID: pid, Args: c.Args, Main: main}
	p.Release() // reaped by reap, not by os.Process
	select {
	case in.spawned <- struct{}{}:
	default:
	}
	return pid, nil
}

// reap waits for every child (and every orphan the kernel hands to PID 1)
// and returns the main program's status once it ended.
func (in *initProc) reap() int {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, 0, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if errors.Is(err, unix.ECHILD) {
			<-in.spawned
			continue
		}
		if err != nil {
			return 125
		}
		status := ws.ExitStatus()
		if ws.Signaled() {
			status = 128 + int(ws.Signal())
		}
		// The exit is reported before the process leaves the list, under
		// the lock "ps" takes: a supervisor that sees it gone (and may shut
		// the sandbox down) has its status already.
		in.mu.Lock()
		if _, known := in.procs[pid]; known {
			in.ctl.send(&message{Op: "exit", PID: pid, Status: status})
		}
		delete(in.procs, pid)
		in.mu.Unlock()
		if pid == in.mainPID {
			return status
		}
	}
}

// serve handles the supervisor's requests until the socket closes.
func (in *initProc) serve() {
	for {
		m, files, err := in.ctl.recv()
		if err != nil {
			// The supervisor is gone: end the sandbox (PID namespace
			// teardown kills whatever still runs).
			in.shutdown <- 137
			in.signal(in.mainPID, syscall.SIGKILL)
			return
		}
		switch m.Op {
		case "spawn":
			if m.Cmd == nil || len(files) != 3 {
				in.ctl.send(&message{Op: "error", ID: m.ID, Error: "spawn needs a command and three descriptors"})
			} else if err := m.Cmd.check("exec"); err != nil {
				in.ctl.send(&message{Op: "error", ID: m.ID, Error: err.Error()})
			} else if pid, err := in.spawn(m.Cmd, files, false); err != nil {
				in.ctl.send(&message{Op: "error", ID: m.ID, Error: fmt.Sprintf("starting %s: %v", m.Cmd.Path, err)})
			} else {
				in.ctl.send(&message{Op: "spawned", ID: m.ID, PID: pid})
			}
		case "signal":
			pid := m.PID
			if pid == 0 {
				pid = in.mainPID
			}
			if err := in.signal(pid, syscall.Signal(m.Sig)); err != nil {
				in.ctl.send(&message{Op: "error", ID: m.ID, Error: err.Error()})
			} else {
				in.ctl.send(&message{Op: "signaled", ID: m.ID, PID: pid})
			}
		case "shutdown":
			in.ctl.send(&message{Op: "bye", ID: m.ID})
			in.shutdown <- m.Status
		case "ps":
			in.mu.Lock()
			procs := make([]Proc, 0, len(in.procs))
			for _, p := range in.procs {
				procs = append(procs, *p)
			}
			in.mu.Unlock()
			in.ctl.send(&message{Op: "procs", ID: m.ID, Procs: procs})
		default:
			in.ctl.send(&message{Op: "error", ID: m.ID, Error: "unknown request " + m.Op})
		}
		for _, f := range files {
			f.Close()
		}
	}
}

// signal sends sig to a process that init started.
func (in *initProc) signal(pid int, sig syscall.Signal) error {
	in.mu.Lock()
	_, ok := in.procs[pid]
	in.mu.Unlock()
	if !ok {
		return fmt.Errorf("no process %d in the sandbox", pid)
	}
	return unix.Kill(pid, sig)
}

// forwarded are the signals init passes on to the main program.
var forwarded = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// forwardSignals passes termination signals sent to init on to the main program.
func (in *initProc) forwardSignals(ch chan os.Signal) {
	for s := range ch {
		unix.Kill(in.mainPID, s.(syscall.Signal))
	}
}

// setupRoot makes spec.Root the root of the new mount namespace with the
// declared mounts, /proc and a minimal /dev.
func setupRoot(spec *Spec) error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("making mounts private: %w", err)
	}
	root := spec.Root
	if err := unix.Mount(root, root, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return fmt.Errorf("binding root %s: %w", root, err)
	}
	if err := unix.Chdir(root); err != nil {
		return err
	}
	// Every bind source is opened now, by the user that reaches host
	// paths, and mounted later through its descriptor. Mounts under /dev
	// go on top of the fresh /dev, after it exists.
	var devMounts, mounts []Mount
	for _, m := range spec.Mounts {
		if m.Type == Bind {
			fd, err := unix.Open(m.Source, unix.O_PATH|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("mounting %s at %s: %w", m.Source, m.Target, err)
			}
			defer unix.Close(fd)
			m.via = fmt.Sprintf("/proc/self/fd/%d", fd)
		}
		if strings.HasPrefix(m.Target, "/dev/") {
			devMounts = append(devMounts, m)
		} else {
			mounts = append(mounts, m)
		}
	}
	if spec.IDs != nil {
		// Started by root, init was the host's uid 0 so far (nobody here,
		// but the owner of the run directory and the mount sources); from
		// now on it is the sandbox's root, the range's first uid on the
		// host, with no supplementary groups, and creates what it mounts
		// and writes as that user. Its capabilities in the namespace stay
		// until dropPrivileges.
		if err := syscall.Setgroups(nil); err != nil {
			return fmt.Errorf("dropping supplementary groups: %w", err)
		}
		if err := syscall.Setresgid(0, 0, 0); err != nil {
			return fmt.Errorf("becoming the sandbox's root group: %w", err)
		}
		if err := syscall.Setresuid(0, 0, 0); err != nil {
			return fmt.Errorf("becoming the sandbox's root: %w", err)
		}
	}
	// The root is the working directory: every path below is relative.
	if err := applyMounts(".", mounts); err != nil {
		return err
	}
	if fi, err := os.Lstat("proc"); err == nil && fi.IsDir() {
		if err := unix.Mount("proc", "proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mounting /proc: %w", err)
		}
		if err := hardenProc("proc"); err != nil {
			return err
		}
	}
	if err := hideSys("."); err != nil {
		return err
	}
	if fi, err := os.Lstat("dev"); err == nil && fi.IsDir() {
		if err := setupDev("dev", spec.DevFiles); err != nil {
			return err
		}
	}
	if err := applyMounts(".", devMounts); err != nil {
		return err
	}
	// pivot_root(".", ".") stacks the old root under the new one, which
	// then is detached: no directory for the old root is needed in a
	// read-only image.
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("switching root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detaching the host root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return err
	}
	if spec.Hostname != "" {
		if err := unix.Sethostname([]byte(spec.Hostname)); err != nil {
			return fmt.Errorf("setting hostname: %w", err)
		}
	}
	for _, f := range spec.Files {
		dir, err := insideRoot("/", filepath.Dir(f.Path))
		if err != nil {
			return err
		}
		mode := os.FileMode(f.Mode & 0o777)
		if mode == 0 {
			mode = 0o400
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(f.Path)), f.Data, mode); err != nil {
			return fmt.Errorf("writing %s: %w", f.Path, err)
		}
	}
	return nil
}

// applyMounts makes the bind and tmpfs mounts under root.
func applyMounts(root string, mounts []Mount) error {
	for _, m := range mounts {
		target, err := insideRoot(root, m.Target)
		if err != nil {
			return err
		}
		switch m.Type {
		case Bind:
			src := m.Source
			if m.via != "" {
				src = m.via
			}
			if err := unix.Mount(src, target, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				return fmt.Errorf("mounting %s at %s: %w", m.Source, m.Target, err)
			}
			if m.ReadOnly {
				if err := unix.Mount("", target, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
					return fmt.Errorf("making %s read-only: %w", m.Target, err)
				}
			}
		case Tmpfs:
			flags := uintptr(unix.MS_NOSUID | unix.MS_NODEV)
			if m.ReadOnly {
				flags |= unix.MS_RDONLY
			}
			if err := unix.Mount("tmpfs", target, "tmpfs", flags, m.Options); err != nil {
				return fmt.Errorf("mounting tmpfs at %s: %w", m.Target, err)
			}
		}
	}
	return nil
}

// insideRoot resolves target under root, refusing symbolic links on the
// way (they could point a mount outside the root), and creates missing
// directories where the root is writable.
func insideRoot(root, target string) (string, error) {
	p := root
	for _, part := range strings.Split(strings.TrimPrefix(target, "/"), "/") {
		p = filepath.Join(p, part)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, os.ErrNotExist):
			if err := os.Mkdir(p, 0o755); err != nil {
				return "", fmt.Errorf("mount target %s does not exist in the image and cannot be created: %w", target, err)
			}
		case err != nil:
			return "", fmt.Errorf("mount target %s: %w", target, err)
		case fi.Mode()&os.ModeSymlink != 0:
			return "", fmt.Errorf("mount target %s: %s is a symbolic link", target, strings.TrimPrefix(p, root))
		}
	}
	return p, nil
}

func setupDev(dev string, files []string) error {
	if files == nil {
		files = DefaultDevFiles()
	}
	if err := unix.Mount("tmpfs", dev, "tmpfs", unix.MS_NOSUID|unix.MS_NOEXEC, "mode=755,size=64k"); err != nil {
		return fmt.Errorf("mounting /dev: %w", err)
	}
	for _, f := range files {
		if _, err := os.Stat(f); err != nil {
			continue // e.g. no /dev/tty on a headless host
		}
		t := filepath.Join(dev, filepath.Base(f))
		if err := os.WriteFile(t, nil, 0o666); err != nil {
			return err
		}
		if err := unix.Mount(f, t, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("binding %s: %w", f, err)
		}
	}
	for name, target := range map[string]string{"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1", "stderr": "/proc/self/fd/2"} {
		os.Symlink(target, filepath.Join(dev, name))
	}
	shm := filepath.Join(dev, "shm")
	if err := os.Mkdir(shm, 0o1777); err == nil {
		unix.Mount("tmpfs", shm, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=1777")
	}
	return nil
}

// dropPrivileges sets no_new_privs and drops every capability from the
// bounding, ambient, effective, permitted and inheritable sets of every
// thread, so neither init nor anything it starts can regain them. It needs
// a binary built without cgo (syscall.AllThreadsSyscall).
func dropPrivileges() error {
	all := func(what string, trap, a1, a2, a3 uintptr) error {
		if _, _, e := syscall.AllThreadsSyscall(trap, a1, a2, a3); e != 0 {
			if e == syscall.ENOTSUP {
				return fmt.Errorf("%s: this veil binary was built with cgo; the sandbox needs CGO_ENABLED=0", what)
			}
			return fmt.Errorf("%s: %w", what, e)
		}
		return nil
	}
	if err := all("setting no_new_privs", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return err
	}
	for c := 0; c <= unix.CAP_LAST_CAP; c++ {
		if err := all("dropping capabilities", unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, uintptr(c), 0); err != nil && !errors.Is(err, syscall.EINVAL) {
			return err
		}
	}
	if err := all("clearing ambient capabilities", unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	return all("clearing capabilities", unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0)
}
