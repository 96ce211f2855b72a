package runtest

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

// nobody is the unprivileged user the non-root test runs veil as.
const nobody = 65534

// TestRunWithoutRoot runs, starts, execs in and stops an instance as an
// unprivileged user: the mounts go through fusermount3 and the sandbox
// through a user namespace. Where /dev/fuse is closed to other users, it
// first checks that veil says so, then opens it for the rest of the test.
func TestRunWithoutRoot(t *testing.T) {
	need(t)
	veiltest.NeedCommand(t, "fusermount3")
	base, err := os.MkdirTemp("", "veil-nonroot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		detachUnder(base)
		os.RemoveAll(base)
	})
	os.Chmod(base, 0o755)
	b, err := os.ReadFile(veil)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(base, "veil")
	os.WriteFile(bin, b, 0o755)
	for _, d := range []string{"home", "data", "work"} {
		os.Mkdir(filepath.Join(base, d), 0o700)
		os.Chown(filepath.Join(base, d), nobody, nobody)
	}
	app, data, key := filepath.Join(base, "work", "app"), filepath.Join(base, "data"), filepath.Join(base, "work", "key")

	w := &world{t: t, bin: bin, dir: base, cred: &syscall.Credential{Uid: nobody, Gid: nobody, Groups: []uint32{}},
		env: []string{"PATH=/usr/bin:/bin:/usr/sbin:/sbin", "HOME=" + base + "/home", "VEIL_HOME=" + base + "/home"}}
	as, must := w.run, w.must

	must("sim", "init")
	must("gen-key", key)
	must("new", app)
	cfg := map[string]any{
		"entrypoints": []string{"/usr/bin/"},
		"env":         map[string]any{"default": map[string]string{"PATH": "/usr/bin"}, "passthrough": []string{}},
		"args":        map[string]any{"passthrough": true},
		"mounts": []any{
			map[string]any{"target": "/data", "type": "sealed", "source": data, "key": "file:" + key},
			map[string]any{"target": "/tmp", "type": "tmpfs", "size": "16M"},
		},
		"resources": map[string]any{"max_processes": 64},
		"metadata":  map[string]any{"product_id": 0, "svn": 0, "debuggable": false},
		"kms":       []any{},
		"secrets":   []any{},
		"bom": map[string]any{"copy": []any{
			map[string]any{"from": "/usr/bin/dash", "to": "/usr/bin/sh"},
			map[string]any{"from": "/usr/bin/cat"},
		}},
	}
	js, _ := json.MarshalIndent(cfg, "", "  ")
	if err := os.WriteFile(filepath.Join(app, "veil.json"), js, 0o644); err != nil {
		t.Fatal(err)
	}
	must("build", "-C", app)

	script := `cat /proc/self/uid_map /proc/self/status; echo "the secret result" > /data/out.txt; exit 5`
	fi, err := os.Stat("/dev/fuse")
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o006 != 0o006 {
		r := as("", "run", "-C", app, "/usr/bin/sh", "-c", script)
		if r.code != 1 || !strings.Contains(r.err, "/dev/fuse (mode") || !strings.Contains(r.err, "not readable and writable by uid 65534") {
			t.Fatalf("run with /dev/fuse closed: exit %d, want 1 and an error naming /dev/fuse\n%s", r.code, r.err)
		}
		if m := mountsUnder(base); len(m) > 0 {
			t.Fatalf("a refused run left mounts: %v", m)
		}
		if err := os.Chmod("/dev/fuse", 0o666); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Chmod("/dev/fuse", perm) })
	} else {
		t.Log("/dev/fuse is already open to every user: the refusal is not checked")
	}

	r := as("", "run", "-C", app, "/usr/bin/sh", "-c", script)
	if r.code == 1 && strings.Contains(r.err, "creating a user namespace") {
		veiltest.Skip(t, "this kernel refuses user namespaces to unprivileged users:\n%s", r.err)
	}
	if r.code != 5 {
		t.Fatalf("run as uid %d: exit %d, want the program's 5\n%s%s", nobody, r.code, r.out, r.err)
	}
	for _, want := range []string{`(?m)^\s*0\s+65534\s+1$`, "(?m)^CapEff:\t0+$", "(?m)^CapBnd:\t0+$", "(?m)^NoNewPrivs:\t1$"} {
		if !regexp.MustCompile(want).MatchString(r.out) {
			t.Fatalf("the program's view does not match %q:\n%s", want, r.out)
		}
	}
	sealed, err := os.ReadFile(filepath.Join(data, "out.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(sealed, []byte("secret")) {
		t.Fatal("the output reached the host in plaintext")
	}
	if got := must("decrypt", "--key", "file:"+key, "-i", filepath.Join(data, "out.txt"), "-o", "-"); got != "the secret result\n" {
		t.Fatalf("decrypted output %q", got)
	}

	must("start", "-C", app)
	if got := must("exec", "-C", app, "/usr/bin/cat", "/data/out.txt"); got != "the secret result\n" {
		t.Fatalf("exec read %q", got)
	}
	if st := must("status", "-C", app); !strings.Contains(st, "running") {
		t.Fatalf("status:\n%s", st)
	}
	must("stop", "-C", app)
	assertClean(t, app)
}

// mountsUnder lists the mount points below dir.
func mountsUnder(dir string) []string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			out = append(out, f[4])
		}
	}
	return out
}

// detachUnder detaches whatever a failed test left mounted below dir.
func detachUnder(dir string) {
	for _, m := range mountsUnder(dir) {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}
