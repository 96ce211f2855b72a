package sandbox

import (
	"errors"
	"fmt"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

// deniedSyscalls fail with EPERM in the sandbox: system calls that act on
// the kernel or the machine rather than on the program, close to the
// default deny list of common container runtimes. The program has no
// capabilities, so most would fail anyway; the filter keeps their kernel
// code out of reach. Architecture-specific ones are in archDenied.
var deniedSyscalls = []uintptr{
	// kernel code and the running kernel
	unix.SYS_INIT_MODULE, unix.SYS_FINIT_MODULE, unix.SYS_DELETE_MODULE,
	unix.SYS_KEXEC_LOAD, unix.SYS_KEXEC_FILE_LOAD, unix.SYS_REBOOT,
	unix.SYS_BPF, unix.SYS_PERF_EVENT_OPEN, unix.SYS_SYSLOG,
	// mounts and namespaces
	unix.SYS_MOUNT, unix.SYS_UMOUNT2, unix.SYS_PIVOT_ROOT, unix.SYS_CHROOT,
	unix.SYS_OPEN_TREE, unix.SYS_MOVE_MOUNT, unix.SYS_FSOPEN, unix.SYS_FSCONFIG,
	unix.SYS_FSMOUNT, unix.SYS_FSPICK, unix.SYS_MOUNT_SETATTR,
	unix.SYS_UNSHARE, unix.SYS_SETNS,
	// kernel keyrings
	unix.SYS_KEYCTL, unix.SYS_ADD_KEY, unix.SYS_REQUEST_KEY,
	// swap, quotas, accounting, clocks
	unix.SYS_SWAPON, unix.SYS_SWAPOFF, unix.SYS_QUOTACTL, unix.SYS_QUOTACTL_FD,
	unix.SYS_ACCT, unix.SYS_SETTIMEOFDAY, unix.SYS_CLOCK_SETTIME, unix.SYS_CLOCK_ADJTIME,
	unix.SYS_ADJTIMEX,
	// file handles bypass the mount tree
	unix.SYS_OPEN_BY_HANDLE_AT, unix.SYS_NAME_TO_HANDLE_AT,
	// memory of other processes and kernel paging
	unix.SYS_USERFAULTFD, unix.SYS_MOVE_PAGES, unix.SYS_MBIND,
	unix.SYS_SET_MEMPOLICY, unix.SYS_GET_MEMPOLICY,
	// terminals and fanotify (whole-mount monitoring)
	unix.SYS_VHANGUP, unix.SYS_FANOTIFY_INIT, unix.SYS_LOOKUP_DCOOKIE,
}

// errSeccomp wraps failures to install the filter.
var errSeccomp = errors.New("installing the seccomp filter")

// seccompProgram assembles the filter: a foreign architecture kills the
// process (its numbers mean other calls), a denied call returns EPERM,
// everything else is allowed.
func seccompProgram() ([]unix.SockFilter, error) {
	denied := append(append([]uintptr{}, deniedSyscalls...), archDenied...)
	// struct seccomp_data: int nr; __u32 arch; ...
	prog := []bpf.Instruction{
		bpf.LoadAbsolute{Off: 4, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: auditArch, SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_KILL_PROCESS},
		bpf.LoadAbsolute{Off: 0, Size: 4},
	}
	prog = append(prog, archPrologue...)
	for i, nr := range denied {
		// On a match, skip the remaining tests and the "allow".
		prog = append(prog, bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(nr), SkipTrue: uint8(len(denied) - i)})
	}
	prog = append(prog,
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
	)
	raw, err := bpf.Assemble(prog)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errSeccomp, err)
	}
	out := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		out[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	return out, nil
}

// installSeccomp applies the filter to every thread of this process (and
// so to everything it starts). no_new_privs must be set.
func installSeccomp() error {
	f, err := seccompProgram()
	if err != nil {
		return err
	}
	fp := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if _, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fp))); e != 0 {
		return fmt.Errorf("%w: %w", errSeccomp, e)
	}
	return nil
}
