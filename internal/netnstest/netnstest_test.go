package netnstest

import (
	"context"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// TestHosts makes three hosts: they reach each other by address, the
// root namespace reaches none of them, processes started on a host run
// in its namespace, and cleanup removes the namespaces and stops the
// processes.
func TestHosts(t *testing.T) {
	var nsNames []string
	var sleeper *Proc
	t.Run("net", func(t *testing.T) {
		n := New(t, "a", "b", "c")
		a, b := n.Host("a"), n.Host("b")
		for _, h := range []*Host{a, b, n.Host("c")} {
			nsNames = append(nsNames, h.NS)
			if !strings.HasPrefix(h.IP, strings.TrimSuffix(n.Subnet(), "0/24")) {
				t.Fatalf("host %s has %s, outside %s", h.Name, h.IP, n.Subnet())
			}
		}
		if !strings.Contains(n.HostsFile(), b.IP+"\tb\n") {
			t.Errorf("hosts file lacks b:\n%s", n.HostsFile())
		}

		l, err := a.Listen(a.IP + ":0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		go func() {
			if c, err := l.Accept(); err == nil {
				io.WriteString(c, "hello from a")
				c.Close()
			}
		}()
		c, err := b.Dial(l.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatalf("b cannot reach a: %v", err)
		}
		got, _ := io.ReadAll(c)
		c.Close()
		if string(got) != "hello from a" {
			t.Fatalf("b read %q from a", got)
		}
		// The root namespace has no route to the hosts.
		if c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
			c.Close()
			t.Fatalf("the root namespace reached %s", l.Addr())
		}
		// A host has only its own address and loopback.
		out, err := b.Command(context.Background(), "ip", "-4", "-o", "addr").CombinedOutput()
		if err != nil {
			t.Fatalf("ip addr on b: %v\n%s", err, out)
		}
		if !strings.Contains(string(out), b.IP+"/24") || strings.Contains(string(out), a.IP) || strings.Count(string(out), "\n") != 2 {
			t.Errorf("addresses on b:\n%s", out)
		}
		if err := b.WaitTCP(l.Addr().String(), 5*time.Second, nil); err != nil {
			t.Error(err)
		}
		if err := b.WaitTCP(a.IP+":1", 300*time.Millisecond, nil); err == nil {
			t.Error("WaitTCP succeeded on a closed port")
		}
		sleeper = startSleep(t, n)
	})
	for _, ns := range nsNames {
		if _, err := os.Stat("/run/netns/" + ns); err == nil {
			t.Errorf("namespace %s left after cleanup", ns)
		}
	}
	if sleeper == nil || sleeper.Running() {
		t.Error("a process started on a host still runs after cleanup")
	}
}

// startSleep starts a long sleep on host c, left for cleanup to stop.
func startSleep(t *testing.T, n *Net) *Proc {
	p := n.Host("c").Start(n.Host("c").Command(context.Background(), "sleep", "600"))
	if !p.Running() {
		t.Fatal("sleep ended at once")
	}
	return p
}
