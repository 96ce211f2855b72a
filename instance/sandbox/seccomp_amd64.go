package sandbox

import (
	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"
)

const auditArch = unix.AUDIT_ARCH_X86_64

// archPrologue refuses the x32 ABI (numbers with bit 30 set), whose calls
// would otherwise bypass the list of x86-64 numbers. It runs with the
// number loaded and jumps over nothing on the x86-64 path.
var archPrologue = []bpf.Instruction{
	bpf.JumpIf{Cond: bpf.JumpLessThan, Val: 0x40000000, SkipTrue: 1},
	bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
}

// archDenied are x86-64 only calls refused as well.
var archDenied = []uintptr{
	unix.SYS_IOPL, unix.SYS_IOPERM, unix.SYS_USELIB, unix.SYS__SYSCTL,
	unix.SYS_CREATE_MODULE, unix.SYS_GET_KERNEL_SYMS, unix.SYS_QUERY_MODULE,
	unix.SYS_NFSSERVCTL, unix.SYS_USTAT, unix.SYS_SYSFS,
}
