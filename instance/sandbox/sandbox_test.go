package sandbox

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veilBin string

func TestMain(m *testing.M) { veiltest.Main(m, &veilBin) }

func needRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		veiltest.Skip(t, "sandbox tests need root")
	}
}

// makeRoot builds a tiny root file system: dash, sleep and their libraries.
func makeRoot(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"bin", "proc", "dev", "tmp", "data"} {
		os.MkdirAll(filepath.Join(root, d), 0o755)
	}
	copyFile := func(src string) {
		dst := filepath.Join(root, src)
		os.MkdirAll(filepath.Dir(dst), 0o755)
		b, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, bin := range []string{"/bin/dash", "/bin/sleep", "/bin/cat"} {
		copyFile(bin)
		out, err := exec.Command("ldd", bin).Output()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(out), "\n") {
			for _, f := range strings.Fields(line) {
				if strings.HasPrefix(f, "/") {
					copyFile(f)
				}
			}
		}
	}
	os.Symlink("dash", filepath.Join(root, "bin", "sh"))
	return root
}

func sh(script string) Command {
	return Command{Path: "/bin/sh", Args: []string{"sh", "-c", script}, Env: []string{"PATH=/bin"}}
}

func run(t *testing.T, spec *Spec) (status int, stdout string, sb *Sandbox) {
	t.Helper()
	r, w, _ := os.Pipe()
	sb, err := Start(spec, Options{InitPath: veilBin, Stdout: w, Stderr: w})
	w.Close()
	if err != nil {
		r.Close()
		t.Fatal(err)
	}
	out, _ := io.ReadAll(r)
	r.Close()
	status, err = sb.Wait()
	if err != nil {
		t.Fatal(err)
	}
	return status, string(out), sb
}

func TestExitStatusAndIsolation(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	host := t.TempDir()
	// Started by root, the workload's root is an unprivileged host uid:
	// a host directory it writes to must be its.
	ids := hostIDs()
	if err := os.Chown(host, int(ids.UID), int(ids.GID)); err != nil {
		t.Fatal(err)
	}
	spec := &Spec{
		Root:     root,
		Hostname: "veil-test",
		Mounts: []Mount{
			{Type: Bind, Source: host, Target: "/data"},
			{Type: Tmpfs, Target: "/tmp"},
		},
		Main: sh(`echo pid=$$; read h < /proc/sys/kernel/hostname; echo host=$h
for f in /*; do echo root=$f; done
while read k v; do case $k in CapEff:|CapBnd:|NoNewPrivs:) echo $k$v;; esac; done < /proc/self/status
echo sealed > /data/out.txt; echo scratch > /tmp/x
exit 7`),
	}
	status, out, sb := run(t, spec)
	if status != 7 {
		t.Fatalf("status %d, want 7; output:\n%s", status, out)
	}
	for _, want := range []string{fmt.Sprintf("pid=%d\n", sb.MainPID), "host=veil-test", "CapEff:0000000000000000", "CapBnd:0000000000000000", "NoNewPrivs:1", "root=/data"} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in sandbox output:\n%s", want, out)
		}
	}
	for _, hostOnly := range []string{"root=/home", "root=/usr", "root=/etc", "root=/root"} {
		if strings.Contains(out, hostOnly) {
			t.Errorf("host directory visible in the sandbox: %s", hostOnly)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(host, "out.txt")); string(b) != "sealed\n" {
		t.Fatalf("bind mount write: %q", b)
	}
	if _, err := os.Stat(filepath.Join(root, "tmp", "x")); err == nil {
		t.Fatal("tmpfs write reached the root directory")
	}
}

func TestSignalsAndKill(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	sb, err := Start(&Spec{Root: root, Main: Command{Path: "/bin/sleep", Args: []string{"sleep", "100"}}}, Options{InitPath: veilBin})
	if err != nil {
		t.Fatal(err)
	}
	if err := sb.Signal(0, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if st, _ := sb.Wait(); st != 128+int(syscall.SIGTERM) {
		t.Fatalf("SIGTERM: status %d, want %d", st, 128+int(syscall.SIGTERM))
	}

	sb, err = Start(&Spec{Root: root, Main: Command{Path: "/bin/sleep", Args: []string{"sleep", "100"}}}, Options{InitPath: veilBin})
	if err != nil {
		t.Fatal(err)
	}
	initPID := sb.init.Process.Pid
	sb.Kill()
	if st, _ := sb.Wait(); st != 137 {
		t.Fatalf("kill: status %d, want 137", st)
	}
	// Nothing of the sandbox survives: its processes were in its PID namespace.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if !hasChildOf(initPID) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("processes of a killed sandbox still run")
}

// hasChildOf reports whether any process has ppid as parent.
func hasChildOf(ppid int) bool {
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == fmt.Sprint(ppid) {
			return true
		}
	}
	return false
}

func TestExecInRunningSandbox(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	sb, err := Start(&Spec{Root: root, Hostname: "box", Main: Command{Path: "/bin/sleep", Args: []string{"sleep", "100"}}}, Options{InitPath: veilBin})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { sb.Kill(); sb.Wait() }()
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	pid, err := sb.Exec(sh(`read line; echo got=$line; read h < /proc/sys/kernel/hostname; echo host=$h; exit 3`), inR, outW, outW)
	inR.Close()
	outW.Close()
	if err != nil {
		t.Fatal(err)
	}
	inW.Write([]byte("hello\n"))
	inW.Close()
	out, _ := io.ReadAll(outR)
	st, err := sb.WaitPID(pid)
	if err != nil || st != 3 {
		t.Fatalf("exec status %d, %v", st, err)
	}
	if !strings.Contains(string(out), "got=hello") || !strings.Contains(string(out), "host=box") {
		t.Fatalf("exec output: %s", out)
	}
	procs, err := sb.Procs()
	if err != nil || len(procs) != 1 || !procs[0].Main {
		t.Fatalf("procs: %+v %v", procs, err)
	}
	if _, err := sb.Exec(Command{Path: "/bin/nonexistent", Args: []string{"x"}}, inR, outW, outW); err == nil {
		t.Fatal("exec of a missing program succeeded")
	}
}

func TestSetupErrors(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	os.Symlink("/etc", filepath.Join(root, "escape"))
	_, err := Start(&Spec{Root: root, Mounts: []Mount{{Type: Tmpfs, Target: "/escape/x"}}, Main: sh("true")}, Options{InitPath: veilBin})
	if err == nil || !strings.Contains(err.Error(), "symbolic link") {
		t.Fatalf("mount through a symlink: %v", err)
	}
	_, err = Start(&Spec{Root: root, Main: Command{Path: "/bin/missing", Args: []string{"missing"}}}, Options{InitPath: veilBin})
	if err == nil || !strings.Contains(err.Error(), "/bin/missing") {
		t.Fatalf("missing program: %v", err)
	}
	if err := (&Spec{Root: "rel", Main: sh("true")}).Check(); err == nil {
		t.Fatal("relative root accepted")
	}
}

func TestLimits(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	forks := sh(`i=0; while [ $i -lt 60 ]; do i=$((i+1)); sleep 1 & done; wait; echo all-started`)
	// Control: without limits all 60 processes start.
	status, out, _ := run(t, &Spec{Root: root, Main: forks})
	if status != 0 || !strings.Contains(out, "all-started") {
		t.Fatalf("without limits: status %d, output %q", status, out)
	}
	status, out, sb := run(t, &Spec{Root: root, Limits: Limits{MaxProcs: 4, MemoryBytes: 64 << 20}, Main: forks})
	t.Logf("applied %v, not applied %v; status %d, output %q", sb.Applied, sb.NotApplied, status, out)
	if len(sb.Applied)+len(sb.NotApplied) != 2 {
		t.Fatalf("limits not all reported: %v %v", sb.Applied, sb.NotApplied)
	}
	for _, a := range sb.Applied {
		if strings.HasPrefix(a, "process limit") && (status == 0 || strings.Contains(out, "all-started")) {
			t.Fatalf("process limit applied but 60 processes started")
		}
	}
}

func TestFilesAndNoMainProgram(t *testing.T) {
	needRoot(t)
	root := makeRoot(t)
	// The image has the mount point (the sandbox's root may not create
	// it in a directory of the host's root).
	os.MkdirAll(filepath.Join(root, "run", "secrets"), 0o755)
	sb, err := Start(&Spec{Root: root,
		Mounts: []Mount{{Type: Tmpfs, Target: "/run/secrets", Options: "mode=0700"}},
		Files:  []File{{Path: "/run/secrets/db", Data: []byte("s3cret")}},
	}, Options{InitPath: veilBin})
	if err != nil {
		t.Fatal(err)
	}
	outR, outW, _ := os.Pipe()
	pid, err := sb.Exec(sh(`read s < /run/secrets/db; echo secret=$s`), nil, outW, outW)
	outW.Close()
	if err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(outR)
	if st, _ := sb.WaitPID(pid); st != 0 || !strings.Contains(string(out), "secret=s3cret") {
		t.Fatalf("status %d, output %q", st, out)
	}
	if _, err := os.Stat(filepath.Join(root, "run", "secrets", "db")); err == nil {
		t.Fatal("the secret reached the host directory")
	}
	// A long-running exec'd program is killed when the sandbox shuts down.
	if _, err := sb.Exec(Command{Path: "/bin/sleep", Args: []string{"sleep", "100"}}, nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := sb.Shutdown(0); err != nil {
		t.Fatal(err)
	}
	select {
	case <-sb.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("sandbox did not end at Shutdown")
	}
	if st, _ := sb.Wait(); st != 0 {
		t.Fatalf("shutdown status %d", st)
	}
}
