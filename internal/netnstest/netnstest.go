// Package netnstest gives tests several "hosts" on one machine: network
// namespaces, each with an address of its own on a private /24, joined by
// a bridge that lives in a switch namespace of its own. The root
// namespace has no link to them, so nothing a host runs reaches any
// address outside the network the test made, and the test's own traffic
// to the hosts goes through Host.Command or Host.Dial.
//
// Every name is unique per network (namespaces veil-<6 hex>-<host>, the
// subnet 10.<160..223>.<0..255>.0/24 drawn at random), so tests of
// several packages run in parallel without meeting. Cleanup stops the
// processes started with Host.Start (SIGTERM, then SIGKILL after a bound)
// and deletes the namespaces; the veth pairs go with them. A process that
// `ip netns exec` starts gets a mount namespace of its own (iproute2 makes
// one to remount /sys), so what it mounts is gone when it and its children
// have exited, even after SIGKILL.
//
// It needs root and the ip command (iproute2).
package netnstest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/internal/veiltest"
)

// Net is one test's network of hosts.
type Net struct {
	t      testing.TB
	id     string // 6 hex digits
	subnet string // "10.a.b"
	hosts  map[string]*Host
	order  []string

	mu    sync.Mutex
	procs []*Proc
}

// Host is one network namespace with one address.
type Host struct {
	net  *Net
	Name string // as the test named it
	NS   string // the namespace's name (ip netns)
	IP   string // its IPv4 address
}

var hostName = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)

// New creates the hosts named (lower-case letters and digits, at most 10,
// up to 200 of them) and registers their removal with t.Cleanup. It skips
// the test (veiltest.Skip) without root or iproute2.
func New(t testing.TB, names ...string) *Net {
	t.Helper()
	veiltest.NeedRoot(t)
	veiltest.NeedCommand(t, "ip")
	if len(names) == 0 || len(names) > 200 {
		t.Fatalf("netnstest: %d hosts, want 1 to 200", len(names))
	}
	var r [3]byte
	if _, err := rand.Read(r[:]); err != nil {
		t.Fatal(err)
	}
	n := &Net{
		t:      t,
		id:     hex.EncodeToString(r[:]),
		subnet: fmt.Sprintf("10.%d.%d", 160+int(r[0])%64, r[1]),
		hosts:  map[string]*Host{},
	}
	t.Cleanup(n.close)
	sw := n.nsName("switch")
	n.ip("netns", "add", sw)
	n.ip("-n", sw, "link", "add", "br0", "type", "bridge")
	n.ip("-n", sw, "link", "set", "br0", "up")
	for i, name := range names {
		if !hostName.MatchString(name) || name == "switch" {
			t.Fatalf("netnstest: bad host name %q", name)
		}
		if n.hosts[name] != nil {
			t.Fatalf("netnstest: host %q twice", name)
		}
		h := &Host{net: n, Name: name, NS: n.nsName(name), IP: fmt.Sprintf("%s.%d", n.subnet, i+2)}
		port := fmt.Sprintf("p%d", i+2)
		n.ip("netns", "add", h.NS)
		n.hosts[name] = h
		n.order = append(n.order, name)
		n.ip("link", "add", "eth0", "netns", h.NS, "type", "veth", "peer", "name", port, "netns", sw)
		n.ip("-n", sw, "link", "set", port, "master", "br0", "up")
		n.ip("-n", h.NS, "addr", "add", h.IP+"/24", "dev", "eth0")
		n.ip("-n", h.NS, "link", "set", "eth0", "up")
		n.ip("-n", h.NS, "link", "set", "lo", "up")
	}
	return n
}

func (n *Net) nsName(host string) string { return "veil-" + n.id + "-" + host }

// ip runs ip(8), failing the test on error.
func (n *Net) ip(args ...string) {
	n.t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		n.t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// Host returns the host named name; the test fails if there is none.
func (n *Net) Host(name string) *Host {
	h := n.hosts[name]
	if h == nil {
		n.t.Fatalf("netnstest: no host %q", name)
	}
	return h
}

// Subnet is the network's /24, such as "10.171.4.0/24".
func (n *Net) Subnet() string { return n.subnet + ".0/24" }

// HostsFile is an /etc/hosts of every host, in the order created.
func (n *Net) HostsFile() string {
	var b strings.Builder
	b.WriteString("127.0.0.1\tlocalhost\n")
	for _, name := range n.order {
		fmt.Fprintf(&b, "%s\t%s\n", n.hosts[name].IP, name)
	}
	return b.String()
}

// Command is an exec.Cmd running name with args on the host (ip netns
// exec, which execs it: the command's process is the program itself).
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", h.NS, name}, args...)...)
	cmd.WaitDelay = 10 * time.Second
	return cmd
}

// Proc is a process started on a host with Start.
type Proc struct {
	Host *Host
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Start starts cmd (from Host.Command) in a process group of its own;
// Cleanup stops it if it still runs.
func (h *Host) Start(cmd *exec.Cmd) *Proc {
	h.net.t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		h.net.t.Fatalf("starting %v on %s: %v", cmd.Args, h.Name, err)
	}
	p := &Proc{Host: h, Cmd: cmd, done: make(chan struct{})}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	h.net.mu.Lock()
	h.net.procs = append(h.net.procs, p)
	h.net.mu.Unlock()
	return p
}

// Done is closed once the process has ended; Err is then its Wait error.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Err is the process's Wait error, once Done is closed.
func (p *Proc) Err() error { <-p.done; return p.err }

// Running reports whether the process has not ended yet.
func (p *Proc) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Kill sends SIGKILL to the process alone (not its group) and waits up to
// wait for it to end, reporting whether it did.
func (p *Proc) Kill(wait time.Duration) bool {
	p.Cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
		return true
	case <-time.After(wait):
		return false
	}
}

// Stop ends the process: SIGTERM to its group, SIGKILL to the group after
// grace. It returns once the process has ended.
func (p *Proc) Stop(grace time.Duration) {
	pgid := p.Cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	// What the group left (a child that outlived its leader).
	syscall.Kill(-pgid, syscall.SIGKILL)
}

// close stops every process started on the network, then deletes the
// namespaces (their veth ends go with them).
func (n *Net) close() {
	n.mu.Lock()
	procs := n.procs
	n.procs = nil
	n.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() { defer wg.Done(); p.Stop(15 * time.Second) }()
	}
	wg.Wait()
	for _, name := range append(append([]string(nil), n.order...), "switch") {
		ns := n.nsName(name)
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			n.t.Errorf("ip netns del %s: %v\n%s", ns, err, out)
		}
	}
}

// inNS runs f on a thread switched into h's network namespace. Sockets
// f creates stay in that namespace after it returns. The thread is not
// given back to the scheduler: it ends with the goroutine.
func (h *Host) inNS(f func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		ns, err := os.Open("/run/netns/" + h.NS)
		if err != nil {
			ch <- err
			return
		}
		defer ns.Close()
		if err := unix.Unshare(unix.CLONE_FS); err != nil {
			ch <- fmt.Errorf("unsharing the thread's file system attributes: %w", err)
			return
		}
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("entering %s: %w", h.NS, err)
			return
		}
		ch <- f()
	}()
	return <-ch
}

// Dial connects to addr (host:port) from inside h's namespace.
func (h *Host) Dial(addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := h.inNS(func() (err error) {
		c, err = net.DialTimeout("tcp", addr, timeout)
		return err
	})
	return c, err
}

// Listen listens on TCP addr (host:port) inside h's namespace.
func (h *Host) Listen(addr string) (net.Listener, error) {
	var l net.Listener
	err := h.inNS(func() (err error) {
		l, err = net.Listen("tcp", addr)
		return err
	})
	return l, err
}

// WaitTCP waits up to timeout until addr accepts a TCP connection from
// h, polling every 100 ms; it stops early when stop is closed (e.g. the
// server's Proc.Done()).
func (h *Host) WaitTCP(addr string, timeout time.Duration, stop <-chan struct{}) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := h.Dial(addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s from %s: %w", addr, h.Name, err)
		}
		select {
		case <-stop:
			return fmt.Errorf("waiting for %s from %s: the server ended", addr, h.Name)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
