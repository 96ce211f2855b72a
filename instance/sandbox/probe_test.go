package sandbox

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// buildProbe builds testdata/probe (static, no cgo) into root as /probe.
func buildProbe(t *testing.T, root string) {
	t.Helper()
	cmd := exec.Command("go", "build", "-o", filepath.Join(root, "probe"), "./testdata/probe")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the probe: %v\n%s", err, out)
	}
}

// probe runs the probe in a sandbox over root with the attempts and
// returns the outcome of each attempt by attempt.
func probe(t *testing.T, spec *Spec, attempts ...string) map[string]string {
	t.Helper()
	spec.Main = Command{Path: "/probe", Args: append([]string{"probe"}, attempts...), Env: []string{}}
	_, out, _ := run(t, spec)
	res := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		a, rest, _ := strings.Cut(l, " ")
		res[a] = rest
	}
	t.Logf("probe output:\n%s", out)
	return res
}

func refused(t *testing.T, res map[string]string, name string) {
	t.Helper()
	if !strings.HasPrefix(res[name], "refused") {
		t.Errorf("%s: %q, want refused", name, res[name])
	}
}

// TestProbeKernelAttacks performs, from inside a sandbox started by root,
// the attacks of a hostile workload on the kernel and on init, and checks
// that each is refused: writing kernel settings, tracing init, loading a
// kernel module, using the kernel keyrings, mounting, writing /sys. Each
// of these worked in a sandbox without user namespace, read-only /proc and
// seccomp filter.
func TestProbeKernelAttacks(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	os.MkdirAll(filepath.Join(root, "sys"), 0o755)
	buildProbe(t, root)
	res := probe(t, &Spec{Root: root, Mounts: []Mount{{Type: Tmpfs, Target: "/tmp"}}},
		"sysctl=/proc/sys/kernel/core_pattern", "sysctl=/proc/sys/fs/file-max", "sysctl=/proc/sys/vm/overcommit_memory",
		"write=/proc/sysrq-trigger", "write=/sys/x", "read=/proc/kcore", "read=/proc/keys", "read=/proc/timer_list",
		"ptrace=1", "init_module", "finit_module", "keyctl", "mount=/tmp", "status=Seccomp", "status=CapEff", "status=Uid",
		"write=/tmp/ok")
	for _, a := range []string{"sysctl=/proc/sys/kernel/core_pattern", "sysctl=/proc/sys/fs/file-max", "sysctl=/proc/sys/vm/overcommit_memory",
		"write=/proc/sysrq-trigger", "write=/sys/x", "read=/proc/kcore", "read=/proc/keys", "read=/proc/timer_list",
		"ptrace=1", "init_module", "finit_module", "keyctl", "mount=/tmp"} {
		refused(t, res, a)
	}
	for a, want := range map[string]string{"status=Seccomp": "ok Seccomp: 2", "status=CapEff": "ok CapEff: 0000000000000000", "status=Uid": "ok Uid: 0 0 0 0", "write=/tmp/ok": "ok"} {
		if res[a] != want {
			t.Errorf("%s: %q, want %q", a, res[a], want)
		}
	}
	// The seccomp filter, not only the missing capability, refuses these:
	// without it, joining a keyring needs no privilege at all.
	if !strings.Contains(res["keyctl"], "operation not permitted") {
		t.Errorf("keyctl: %q, want EPERM from the filter", res["keyctl"])
	}
	for _, name := range []string{"init_module", "finit_module", "ptrace=1"} {
		if !strings.Contains(res[name], "operation not permitted") {
			t.Errorf("%s: %q, want EPERM", name, res[name])
		}
	}
}

// TestProbeWorkloadIDs checks that the workload's root is an unprivileged
// host uid from the sandbox's range, and has no capabilities.
func TestProbeWorkloadIDs(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	buildProbe(t, root)
	spec := &Spec{Root: root, Main: Command{Path: "/probe", Args: []string{"probe"}}}
	spec.Main.Args = append(spec.Main.Args, "status=CapEff", "status=CapBnd", "status=NoNewPrivs", "status=Seccomp")
	_, out, _ := run(t, spec)
	for _, want := range []string{"CapEff: 0000000000000000", "CapBnd: 0000000000000000", "NoNewPrivs: 1", "Seccomp: 2"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q:\n%s", want, out)
		}
	}
	// Seen from the host, init and the program run as the range's first
	// uid, not as root.
	ids := hostIDs()
	if ids.UID == 0 || ids.GID == 0 {
		t.Fatalf("the host range starts at 0: %+v", ids)
	}
	sb, err := Start(&Spec{Root: root, Main: Command{Path: "/bin/sleep", Args: []string{"sleep", "100"}}}, Options{InitPath: veilBin})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sb.Kill(); sb.Wait() }()
	pids := []string{fmt.Sprint(sb.init.Process.Pid)}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
		if len(f) > 1 && f[1] == pids[0] {
			pids = append(pids, e.Name())
		}
	}
	if len(pids) < 2 {
		t.Fatal("the program is not a child of init")
	}
	for _, pid := range pids {
		st, err := os.ReadFile("/proc/" + pid + "/status")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(st), "\n") {
			f := strings.Fields(l)
			if len(f) == 5 && (f[0] == "Uid:" || f[0] == "Gid:") {
				want := fmt.Sprint(ids.UID)
				if f[0] == "Gid:" {
					want = fmt.Sprint(ids.GID)
				}
				for _, v := range f[1:] {
					if v != want {
						t.Errorf("process %s on the host: %s", pid, l)
					}
				}
			}
		}
	}
}

// TestProbeNetwork checks that with the default network setting the
// workload sees no host interface and cannot reach a service on the host's
// loopback, and that both are there with HostNetwork (so the test bites).
func TestProbeNetwork(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	buildProbe(t, root)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	hostIfs, _ := net.Interfaces()
	var names []string
	for _, i := range hostIfs {
		names = append(names, i.Name)
	}
	sort.Strings(names)
	res := probe(t, &Spec{Root: root}, "interfaces", "connect="+l.Addr().String())
	if res["interfaces"] != "ok lo" {
		t.Errorf("interfaces in the sandbox: %q, want lo only", res["interfaces"])
	}
	refused(t, res, "connect="+l.Addr().String())
	res = probe(t, &Spec{Root: root, HostNetwork: true}, "interfaces", "connect="+l.Addr().String())
	got := strings.Split(strings.TrimPrefix(res["interfaces"], "ok "), ",")
	sort.Strings(got)
	if strings.Join(got, ",") != strings.Join(names, ",") {
		t.Errorf("host network: interfaces %q, want the host's %q", got, names)
	}
	if a := "connect=" + l.Addr().String(); res[a] != "ok" {
		t.Errorf("host network: connect %q", res[a])
	}
}
