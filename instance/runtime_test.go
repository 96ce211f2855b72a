package instance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/hanwen/go-fuse/v2/splice"

	"github.com/veil-tee/veil/attest"
	"github.com/veil-tee/veil/attest/sim"
	"github.com/veil-tee/veil/fusefs"
	"github.com/veil-tee/veil/instance/sandbox"
	"github.com/veil-tee/veil/internal/veiltest"
	"github.com/veil-tee/veil/seal"
	"github.com/veil-tee/veil/trustimage"
)

var veilBin string

func TestMain(m *testing.M) { veiltest.Main(m, &veilBin) }

func needRootFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		veiltest.Skip(t, "needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		veiltest.Skip(t, "needs /dev/fuse")
	}
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		veiltest.Skip(t, "needs mksquashfs")
	}
}

// extracted is a test root mounter: the image's squashfs unpacked into
// the mount point. It stands in for the verified FUSE image mount, which
// has tests of its own; here the subject is the rest of the runtime.
type extracted string

func (e extracted) Unmount() error {
	ents, _ := os.ReadDir(string(e))
	for _, d := range ents {
		os.RemoveAll(filepath.Join(string(e), d.Name()))
	}
	return nil
}

func extractRoot(mountpoint string, r *trustimage.Reader, _ *slog.Logger) (Unmounter, error) {
	defer r.Close() // the mounter owns the reader; this one is done with it once copied
	f, err := os.CreateTemp("", "veil-img-")
	if err != nil {
		return nil, err
	}
	defer os.Remove(f.Name())
	if _, err := io.Copy(f, io.NewSectionReader(r, 0, r.Size())); err != nil {
		return nil, err
	}
	f.Close()
	if out, err := exec.Command("unsquashfs", "-f", "-no-xattrs", "-d", mountpoint, f.Name()).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("unsquashfs: %v %s", err, out)
	}
	return extracted(mountpoint), nil
}

func sealedFUSE(mountpoint string, o SealedMount, log *slog.Logger) (Unmounter, error) {
	srv, err := fusefs.MountSealed(mountpoint, fusefs.SealedOptions{Source: o.Source, Keys: o.Keys, WriteKeys: o.WriteKeys, ReadOnly: o.ReadOnly, MountID: o.MountID, Logger: log, AllowOther: sandbox.HostIDs() != nil})
	if err != nil {
		return nil, err
	}
	return serverUnmounter{srv}, nil
}

type serverUnmounter struct{ *fuse.Server }

func attFUSE(mountpoint string, iss *attest.WorkloadIssuer, log *slog.Logger) (Unmounter, error) {
	srv, err := fusefs.MountAttestation(mountpoint, fusefs.AttestationOptions{Issuer: iss, Logger: log, AllowOther: sandbox.HostIDs() != nil})
	if err != nil {
		return nil, err
	}
	return serverUnmounter{srv}, nil
}

// instance builds an instance with dash, cat and sleep and a sealed mount
// at /data opened with a key file.
func instance(t *testing.T) (dir, data string, key *seal.FileKey) {
	t.Helper()
	return instanceWith(t, "")
}

// instanceWith adds mountExtra (JSON members) to the sealed mount.
func instanceWith(t *testing.T, mountExtra string) (dir, data string, key *seal.FileKey) {
	t.Helper()
	dir = t.TempDir()
	data = t.TempDir()
	keyPath := filepath.Join(t.TempDir(), "k")
	k, _ := seal.GenerateFileKey()
	txt, _ := k.MarshalText()
	os.WriteFile(keyPath, txt, 0o600)
	cfg := fmt.Sprintf(`{
  "entrypoints": ["/usr/bin/"],
  "env": {"default": {"PATH": "/usr/bin", "GREETING": "hi"}, "passthrough": ["HOST_VAR"]},
  "args": {"passthrough": true},
  "mounts": [
    {"target": "/data", "type": "sealed", "source": %q, "key": "file:%s"%s},
    {"target": "/tmp", "type": "tmpfs", "size": "16M"}
  ],
  "resources": {"max_processes": 32},
  "metadata": {"product_id": 1, "svn": 2, "debuggable": false},
  "kms": [], "secrets": [],
  "bom": {"copy": [{"from": "/usr/bin/dash", "to": "/usr/bin/sh"}, {"from": "/usr/bin/cat"}, {"from": "/usr/bin/sleep"}]}
}`, data, keyPath, mountExtra)
	os.MkdirAll(filepath.Join(dir, "image"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "veil.json"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	sk, _ := trustimage.GenerateSignKey()
	if _, _, err := trustimage.Build(context.Background(), dir, trustimage.Options{SignKey: sk}); err != nil {
		t.Fatal(err)
	}
	return dir, data, k
}

func runIn(t *testing.T, dir, simDir string, sigs chan os.Signal, path string, args ...string) (int, string, error) {
	t.Helper()
	r, w, _ := os.Pipe()
	var out bytes.Buffer
	done := make(chan struct{})
	go func() { io.Copy(&out, r); close(done) }()
	st, err := Run(context.Background(), RunOptions{
		Options: Options{Dir: dir, MountRoot: extractRoot, MountSealed: sealedFUSE, MountAttestation: attFUSE, SimDir: simDir},
		Path:    path, Args: args, Env: []string{"HOST_VAR=from-host", "NOT_PASSED=no"},
		Stdout: w, Stderr: w, InitPath: veilBin, Signals: sigs,
	})
	w.Close()
	<-done
	r.Close()
	return st, out.String(), err
}

func simPlatform(t *testing.T) string {
	d := t.TempDir()
	if _, _, err := sim.Init(d); err != nil {
		t.Fatal(err)
	}
	return d
}

// openFDs lists what this process's descriptors point to, leaving out the
// Go runtime's own poller descriptors (made once, on first use).
func openFDs() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		l, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err != nil || l == "anon_inode:[eventpoll]" || l == "anon_inode:[eventfd]" || l == "anon_inode:[pidfd]" {
			continue
		}
		out = append(out, l)
	}
	return out
}

// checkLeaks makes the test fail if it ends with more descriptors open than
// it started with (FUSE connections, image files, sockets, pipes), or with
// child processes still running.
func checkLeaks(t *testing.T) {
	t.Helper()
	// go-fuse keeps a process-wide pool of splice pipes and, once used,
	// a descriptor of /dev/null to empty them: open that one now and
	// empty the pool before both counts.
	if p, err := splice.Get(); err == nil {
		splice.Done(p) // empties the pipe into /dev/null
	}
	splice.ClearSplicePool()
	before := map[string]int{}
	for _, l := range openFDs() {
		before[l]++
	}
	t.Cleanup(func() {
		splice.ClearSplicePool()
		for _, l := range openFDs() {
			if before[l] > 0 {
				before[l]--
				continue
			}
			t.Errorf("descriptor left open: %s", l)
		}
		if c := children(); len(c) > 0 {
			t.Errorf("processes left running: %v", c)
		}
	})
}

// children lists the live child processes of this process (a sandbox's
// init, a program it started that escaped, an unreaped helper).
func children() []string {
	tasks, _ := os.ReadDir("/proc/self/task")
	var out []string
	for _, task := range tasks {
		b, _ := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "children"))
		for _, pid := range strings.Fields(string(b)) {
			if st, _ := os.ReadFile(filepath.Join("/proc", pid, "stat")); bytes.Contains(st, []byte(") Z ")) {
				continue
			}
			cmd, _ := os.ReadFile(filepath.Join("/proc", pid, "cmdline"))
			out = append(out, pid+" "+strings.ReplaceAll(string(cmd), "\x00", " "))
		}
	}
	return out
}

func assertNoMounts(t *testing.T, dir string) {
	t.Helper()
	if m := mountsUnder(filepath.Join(dir, "run")); len(m) > 0 {
		t.Fatalf("mounts left behind: %v", m)
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "run"))
	if len(ents) > 0 {
		t.Fatalf("run directory not cleaned: %v", ents)
	}
}

func TestRunSealedMount(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	dir, data, k := instance(t)
	var buf bytes.Buffer
	w, _ := seal.NewWriter(&buf, nil, k)
	w.Write([]byte("name,age\nbob,30\n"))
	w.Close()
	os.WriteFile(filepath.Join(data, "in.csv"), buf.Bytes(), 0o600)

	st, out, err := runIn(t, dir, simPlatform(t), nil, "/usr/bin/sh", "-c",
		`cat /data/in.csv > /data/out.csv && echo "$GREETING $HOST_VAR [$NOT_PASSED] $0" && echo "tee=$(cat /dev/attestation/attestation_type)" && exit 3`, "arg0")
	if err != nil {
		t.Fatal(err)
	}
	if st != 3 || !strings.Contains(out, "hi from-host [] arg0") || !strings.Contains(out, "tee=sim") {
		t.Fatalf("status %d, output %q", st, out)
	}
	raw, err := os.ReadFile(filepath.Join(data, "out.csv"))
	if err != nil || !bytes.HasPrefix(raw, []byte(seal.Magic)) || bytes.Contains(raw, []byte("bob,30")) {
		t.Fatalf("output is not sealed on the host: %v", err)
	}
	r, err := seal.NewReader(bytes.NewReader(raw), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "name,age\nbob,30\n" {
		t.Fatalf("output decrypts to %q, %v", got, err)
	}
	assertNoMounts(t, dir)
}

func TestRunRefusals(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	dir, _, _ := instance(t)
	// Not an entrypoint: refused before anything is attested (no platform here).
	if _, _, err := runIn(t, dir, t.TempDir(), nil, "/opt/tool"); !errors.Is(err, ErrNotEntrypoint) {
		t.Fatalf("not an entrypoint: %v", err)
	}
	// No TEE and no sim platform.
	if _, _, err := runIn(t, dir, t.TempDir(), nil, "/usr/bin/sh", "-c", "true"); !errors.Is(err, ErrNoPlatform) {
		t.Fatalf("without a platform: %v", err)
	}
	// An entrypoint directory, but no such program in the image.
	plat := simPlatform(t)
	if _, _, err := runIn(t, dir, plat, nil, "/usr/bin/nonexistent"); !errors.Is(err, ErrNoProgram) {
		t.Fatalf("missing program: %v", err)
	}
	assertNoMounts(t, dir)
	// veil.json changed after the build: the measurement no longer matches.
	cfg, _ := os.ReadFile(filepath.Join(dir, "veil.json"))
	os.WriteFile(filepath.Join(dir, "veil.json"), bytes.Replace(cfg, []byte(`"svn": 2`), []byte(`"svn": 3`), 1), 0o644)
	if _, _, err := runIn(t, dir, simPlatform(t), nil, "/usr/bin/sh", "-c", "true"); err == nil {
		t.Fatal("an instance whose veil.json changed after the build ran")
	}
	assertNoMounts(t, dir)
}

func TestRunSignalAndStaleCleanup(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	dir, dataDir, _ := instance(t)
	plat := simPlatform(t)
	// SIGTERM once the program runs (it says so on the sealed mount)
	// reaches it; before that it would cancel the set-up.
	sigs := make(chan os.Signal, 1)
	go func() {
		for i := 0; i < 400; i++ {
			if _, err := os.Stat(filepath.Join(dataDir, "ready")); err == nil {
				break
			}
			time.Sleep(25 * time.Millisecond)
		}
		sigs <- syscall.SIGTERM
	}()
	st, _, err := runIn(t, dir, plat, sigs, "/usr/bin/sh", "-c", "echo > /data/ready; exec sleep 100")
	if err != nil || st != 128+int(syscall.SIGTERM) {
		t.Fatalf("status %d, %v; want %d", st, err, 128+int(syscall.SIGTERM))
	}
	// A run killed with -9 leaves its mounts: the next run cleans them up.
	stale := filepath.Join(dir, "run", "r-999999", "mnt0")
	os.MkdirAll(stale, 0o700)
	if err := syscall.Mount("tmpfs", stale, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	if st, _, err := runIn(t, dir, plat, nil, "/usr/bin/sh", "-c", "exit 0"); err != nil || st != 0 {
		t.Fatalf("run after a crashed one: %d %v", st, err)
	}
	assertNoMounts(t, dir)
}

func TestSupervisorExecStatusStop(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	dir, _, _ := instance(t)
	sup, err := Supervise(context.Background(), Options{Dir: dir, MountRoot: extractRoot, MountSealed: sealedFUSE, SimDir: simPlatform(t)}, veilBin)
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error)
	go func() { served <- sup.Serve() }()
	if _, err := Supervise(context.Background(), Options{Dir: dir}, veilBin); !errors.Is(err, ErrRunning) {
		t.Fatalf("second supervisor: %v", err)
	}
	conn, err := Dial(dir)
	if err != nil {
		t.Fatal(err)
	}
	inR, inW, _ := os.Pipe()
	outR, outW, _ := os.Pipe()
	if _, err := Call(conn, &Request{Op: "exec", Path: "/usr/bin/sh", Args: []string{"-c", "read x; echo got=$x; exit 5"}}, inR, outW, outW); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	outW.Close()
	inW.Write([]byte("hello\n"))
	inW.Close()
	out, _ := io.ReadAll(outR)
	outR.Close()
	r, err := ReadReply(conn)
	conn.Close()
	if err != nil || r.Status != 5 || !strings.Contains(string(out), "got=hello") {
		t.Fatalf("exec: %+v %v %q", r, err, out)
	}
	conn, _ = Dial(dir)
	r, err = Call(conn, &Request{Op: "status"})
	conn.Close()
	if err != nil || r.State.State != "running" || r.State.Backend != "sim" || len(r.State.Mounts) != 2 {
		t.Fatalf("status: %+v %v", r.State, err)
	}
	conn, _ = Dial(dir)
	if _, err := Call(conn, &Request{Op: "exec", Path: "/usr/bin/sleep", Args: []string{"100"}}, os.Stdin, os.Stdout, os.Stderr); err != nil {
		t.Fatal(err)
	}
	c2, _ := Dial(dir)
	if _, err := Call(c2, &Request{Op: "stop", Timeout: 2000}); err != nil {
		t.Fatal(err)
	}
	c2.Close()
	if r, err := ReadReply(conn); err != nil || r.Status != 128+int(syscall.SIGTERM) {
		t.Fatalf("a program running at stop: %+v %v", r, err)
	}
	conn.Close()
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(dir); !errors.Is(err, ErrNotRunning) {
		t.Fatalf("after stop: %v", err)
	}
	assertNoMounts(t, dir)
}

func TestSealedOutputForTwoParties(t *testing.T) {
	needRootFUSE(t)
	checkLeaks(t)
	k2, _ := seal.GenerateFileKey()
	txt, _ := k2.MarshalText()
	k2Path := filepath.Join(t.TempDir(), "k2")
	os.WriteFile(k2Path, txt, 0o600)
	dir, data, k := instanceWith(t, fmt.Sprintf(`, "also_write_keys": ["file:%s"]`, k2Path))
	st, out, err := runIn(t, dir, simPlatform(t), nil, "/usr/bin/sh", "-c", `echo joined > /data/out.csv`)
	if err != nil || st != 0 {
		t.Fatalf("%d %v %s", st, err, out)
	}
	raw, _ := os.ReadFile(filepath.Join(data, "out.csv"))
	for _, key := range []*seal.FileKey{k, k2} {
		r, err := seal.NewReader(bytes.NewReader(raw), key, nil)
		if err != nil {
			t.Fatalf("key %s cannot open the output: %v", key.ID(), err)
		}
		got, err := io.ReadAll(r)
		if err != nil || string(got) != "joined\n" {
			t.Fatalf("key %s: %q %v", key.ID(), got, err)
		}
	}
}
