// Command probe tries, from inside a sandbox, what a hostile workload
// would: each argument names one attempt (NAME or NAME=ARG), and one line
// per attempt says "ATTEMPT ok" (it worked), "ATTEMPT ok VALUE" (what it
// saw) or "ATTEMPT refused: REASON".
package main

import (
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

func main() {
	for _, a := range os.Args[1:] {
		name, arg, _ := strings.Cut(a, "=")
		var err error
		var value string
		switch name {
		case "sysctl": // write a kernel setting back with its own value
			var b []byte
			if b, err = os.ReadFile(arg); err == nil {
				err = os.WriteFile(arg, b, 0)
			}
		case "write": // create a file
			err = os.WriteFile(arg, []byte("x"), 0o644)
		case "read":
			var b []byte
			b, err = os.ReadFile(arg)
			if err == nil && len(b) == 0 {
				err = fmt.Errorf("empty")
			}
		case "ptrace": // attach to PID arg
			var pid int
			fmt.Sscan(arg, &pid)
			err = unix.PtraceAttach(pid)
			if err == nil {
				unix.PtraceDetach(pid)
			}
		case "interfaces": // list the network interfaces but loopback
			var ifs []net.Interface
			ifs, err = net.Interfaces()
			var names []string
			for _, i := range ifs {
				names = append(names, i.Name)
			}
			value = strings.Join(names, ",")
		case "connect":
			var c net.Conn
			if c, err = net.DialTimeout("tcp", arg, time.Second); err == nil {
				c.Close()
			}
		case "init_module":
			_, _, e := unix.Syscall(unix.SYS_INIT_MODULE, 0, 0, uintptr(unsafe.Pointer(&[]byte{0}[0])))
			err = errnoErr(e)
		case "finit_module":
			var f *os.File
			if f, err = os.Open("/proc/self/exe"); err == nil {
				_, _, e := unix.Syscall(unix.SYS_FINIT_MODULE, f.Fd(), uintptr(unsafe.Pointer(&[]byte{0}[0])), 0)
				err = errnoErr(e)
			}
		case "keyctl": // join a new session keyring (allowed to anyone by the kernel)
			_, err = unix.KeyctlJoinSessionKeyring("veil-probe")
		case "mount":
			err = unix.Mount("tmpfs", arg, "tmpfs", 0, "")
		case "status": // print a line of /proc/self/status
			var b []byte
			b, err = os.ReadFile("/proc/self/status")
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, arg+":") {
					value = strings.Join(strings.Fields(l), " ")
				}
			}
		default:
			err = fmt.Errorf("unknown probe")
		}
		if err != nil {
			fmt.Printf("%s refused: %v\n", a, err)
		} else {
			fmt.Println(strings.TrimSpace(a + " ok " + value))
		}
	}
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}
