// Package sandbox starts programs isolated from the host: new user, mount,
// PID, IPC, UTS and (unless asked otherwise) network namespaces, the root
// switched to the instance's image, only the declared mounts visible, /proc
// with its kernel-wide knobs read-only and its kernel-state files masked,
// no_new_privs set, every capability dropped, a seccomp filter refusing the
// system calls that act on the kernel rather than on the program (modules,
// mounts, keyrings, BPF, perf, kexec, reboot, ...), and memory and process
// limits applied through cgroups where the kernel allows.
//
// The workload never runs as a host user that owns anything: as root, veil
// maps the sandbox's IDs 0-65535 to an unprivileged host range (IDRange);
// without root, to the caller's own uid and gid.
//
// The sandbox's first process (init) is veil itself, re-executed inside the
// new namespaces: it opens the mount sources (as root, it is still the
// host's uid 0 then, unmapped inside), becomes the sandbox's root, prepares
// the mounts, switches the root, drops its privileges, installs the
// seccomp filter, makes itself undumpable (no ptrace of init, which holds
// the control socket), and then starts programs on request — the main
// program and any later `veil exec` — reaping every process and forwarding
// signals.
//
// What it protects against: the workload seeing or changing host files
// other than its mounts, signalling or tracing host processes or its own
// init, changing kernel settings, loading kernel code, reaching host
// network interfaces (network "none"), or regaining privileges through
// set-uid binaries or file capabilities. What it does not: it is not a
// security boundary against the host (the host is the adversary veil
// guards data from by sealing and attestation, not by this sandbox); it
// does not stop kernel exploits through the system calls it allows; with
// network "host" the workload shares the host's interfaces and loopback.
package sandbox

import (
	"errors"
	"fmt"
	"path"
	"strings"
)

// Mount types.
const (
	Bind  = "bind"
	Tmpfs = "tmpfs"
)

// Mount is one file system made visible inside the sandbox.
type Mount struct {
	Type     string `json:"type"`             // Bind or Tmpfs
	Source   string `json:"source,omitempty"` // host path, for Bind
	Target   string `json:"target"`           // absolute path inside the root
	ReadOnly bool   `json:"read_only,omitempty"`
	Options  string `json:"options,omitempty"` // tmpfs options, e.g. "size=64m"

	via string // for Bind inside init: the descriptor Source was opened as
}

// Limits of the sandbox as a whole. Zero means no limit.
type Limits struct {
	MemoryBytes int64 `json:"memory_bytes,omitempty"`
	MaxProcs    int64 `json:"max_procs,omitempty"`
}

// Command is a program to start inside the sandbox.
type Command struct {
	Path string   `json:"path"` // absolute path inside the root
	Args []string `json:"args"` // argv, argv[0] included
	Env  []string `json:"env"`
	Dir  string   `json:"dir,omitempty"` // working directory; "/" if empty
}

// Spec describes a sandbox.
type Spec struct {
	Root     string  `json:"root"` // host directory that becomes "/"
	Mounts   []Mount `json:"mounts,omitempty"`
	Hostname string  `json:"hostname,omitempty"`
	Limits   Limits  `json:"limits,omitempty"`
	// Main is the program the sandbox runs; its end ends the sandbox. With
	// an empty Path the sandbox runs no program until Exec is called, and
	// ends at Shutdown.
	Main Command `json:"main"`
	// Files are written into the sandbox (under a Tmpfs mount) before any
	// program starts: provisioned secrets, which so never touch host disk.
	Files []File `json:"files,omitempty"`
	// DevFiles are host device nodes bind-mounted into a fresh /dev.
	DevFiles []string `json:"dev_files,omitempty"`
	// HostNetwork keeps the sandbox in the host's network namespace; by
	// default it gets a namespace of its own with only a loopback interface.
	HostNetwork bool `json:"host_network,omitempty"`
	// IDs is the host range the sandbox's user and group IDs 0 to
	// IDs.Size-1 map to when veil runs as root; Start fills it in
	// (DefaultIDs(), or the range /etc/subuid and /etc/subgid give the user
	// "veil"). Without root the caller's own IDs are mapped, to 0.
	IDs *IDRange `json:"ids,omitempty"`
	// Timing makes init print where its start-up time goes (VEIL_TIMING).
	Timing bool `json:"timing,omitempty"`
}

// DefaultDevFiles returns the devices a sandbox gets unless Spec.DevFiles
// says otherwise (a new slice on every call).
func DefaultDevFiles() []string {
	return []string{"/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"}
}

// File is a file the sandbox's init writes before starting programs.
type File struct {
	Path string `json:"path"` // absolute path inside the root, under a Tmpfs mount
	Data []byte `json:"data"`
	Mode uint32 `json:"mode"` // permission bits; 0 means 0400
}

// ErrSpec is wrapped by every error about an invalid Spec.
var ErrSpec = errors.New("invalid sandbox spec")

// Check validates the spec before anything is started.
func (s *Spec) Check() error {
	if s.Root == "" || !path.IsAbs(s.Root) {
		return fmt.Errorf("%w: root %q must be an absolute host path", ErrSpec, s.Root)
	}
	for i, m := range s.Mounts {
		if !path.IsAbs(m.Target) || path.Clean(m.Target) != m.Target || m.Target == "/" {
			return fmt.Errorf("%w: mounts[%d].target %q must be a clean absolute path other than /", ErrSpec, i, m.Target)
		}
		switch m.Type {
		case Bind:
			if !path.IsAbs(m.Source) {
				return fmt.Errorf("%w: mounts[%d].source %q must be an absolute host path", ErrSpec, i, m.Source)
			}
		case Tmpfs:
			if strings.ContainsAny(m.Options, " \n") {
				return fmt.Errorf("%w: mounts[%d].options %q", ErrSpec, i, m.Options)
			}
		default:
			return fmt.Errorf("%w: mounts[%d].type %q (want bind or tmpfs)", ErrSpec, i, m.Type)
		}
	}
	for i, f := range s.Files {
		if !path.IsAbs(f.Path) || path.Clean(f.Path) != f.Path {
			return fmt.Errorf("%w: files[%d].path %q must be a clean absolute path", ErrSpec, i, f.Path)
		}
	}
	if s.Main.Path == "" {
		return nil
	}
	return s.Main.check("main")
}

func (c *Command) check(what string) error {
	if !path.IsAbs(c.Path) {
		return fmt.Errorf("%w: %s.path %q must be absolute inside the sandbox", ErrSpec, what, c.Path)
	}
	if len(c.Args) == 0 {
		return fmt.Errorf("%w: %s.args must hold argv[0]", ErrSpec, what)
	}
	if c.Dir != "" && !path.IsAbs(c.Dir) {
		return fmt.Errorf("%w: %s.dir %q must be absolute", ErrSpec, what, c.Dir)
	}
	return nil
}
