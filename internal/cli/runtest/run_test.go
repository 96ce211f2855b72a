// Package runtest drives `veil run`, `start`, `exec`, `stop` and the key
// service as a black box: the built binary, a real KMS on 127.0.0.1, real
// FUSE mounts and sandboxes. It needs root, /dev/fuse and mksquashfs.
package runtest

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

func need(t *testing.T) {
	t.Helper()
	veiltest.NeedFUSE(t)
	veiltest.NeedCommand(t, "mksquashfs")
}

// world is one test's environment: VEIL_HOME, and the KMS exports.
type world struct {
	t   *testing.T
	env []string
	kms *exec.Cmd
	// bin, dir and cred, when set, run another copy of veil, in another
	// directory, as another user.
	bin, dir string
	cred     *syscall.Credential
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, env: append(os.Environ(), "VEIL_HOME="+t.TempDir())}
	return w
}

type res struct {
	out, err string
	code     int
}

func (w *world) run(stdin string, args ...string) res {
	w.t.Helper()
	bin := veil
	if w.bin != "" {
		bin = w.bin
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = w.env
	cmd.Dir = w.dir
	if w.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: w.cred}
	}
	cmd.Stdin = strings.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	r := res{o.String(), e.String(), 0}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		w.t.Fatal(err)
	}
	if strings.Contains(r.err, "goroutine ") || strings.Contains(r.err, "panic:") {
		w.t.Fatalf("veil %v panicked:\n%s", args, r.err)
	}
	return r
}

func (w *world) must(args ...string) string {
	w.t.Helper()
	r := w.run("", args...)
	if r.code != 0 {
		w.t.Fatalf("veil %s: exit %d\n%s", strings.Join(args, " "), r.code, r.err)
	}
	return r.out
}

// startKMS starts a dev key service and adds its exports to the env.
func (w *world) startKMS(extra ...string) {
	w.t.Helper()
	cmd := exec.Command(veil, append([]string{"kms", "serve", "--dev", "--data", w.t.TempDir(), "--listen", "127.0.0.1:0"}, extra...)...)
	cmd.Env = w.env
	out, _ := cmd.StdoutPipe()
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.kms = cmd
	w.t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	sc := bufio.NewScanner(out)
	deadline := time.Now().Add(20 * time.Second)
	lines := 3 // VEIL_KMS_URL, VEIL_KMS_CA, VEIL_ADMIN_TOKEN
	if slices.Contains(extra, "--attest") {
		lines++ // VEIL_KMS_MEASUREMENT
	}
	for n := 0; n < lines && sc.Scan(); n++ {
		if time.Now().After(deadline) {
			w.t.Fatal("key service not ready")
		}
		w.env = append(w.env, strings.TrimPrefix(sc.Text(), "export "))
	}
	go func() {
		for sc.Scan() {
		}
	}()
}

func (w *world) getenv(k string) string {
	for i := len(w.env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(w.env[i], k+"="); ok {
			return v
		}
	}
	return ""
}

// owner enrolls an app, creates a key and returns its id.
func (w *world) owner(name string) string {
	w.t.Helper()
	var enr struct{ AppID, APIKey string }
	var raw map[string]string
	json.Unmarshal([]byte(w.must("kms", "enroll", "--name", name, "--json")), &raw)
	enr.AppID, enr.APIKey = raw["app_id"], raw["api_key"]
	w.env = append(w.env, "VEIL_APP_ID="+enr.AppID, "VEIL_API_KEY="+enr.APIKey)
	var key map[string]any
	json.Unmarshal([]byte(w.must("kms", "key", "create", "--name", name+"-cmk", "--json")), &key)
	id, _ := key["id"].(string)
	if !strings.HasPrefix(id, "k_") {
		w.t.Fatalf("key create --json: %v", key)
	}
	return id
}

// app makes an instance whose /app/job.sh runs under dash, with a sealed
// /data mount opened through the key service.
// peopleCSV is the owner's plaintext of the run tests.
const peopleCSV = "name,job\nbob,engineer\nann,doctor\ncid,engineer\n"

// sealPeople writes peopleCSV to work/people.csv and seals it for the
// key bob-cmk into data/people.csv, as the owner does.
func (w *world) sealPeople(work, data string) {
	w.t.Helper()
	if err := os.WriteFile(filepath.Join(work, "people.csv"), []byte(peopleCSV), 0o600); err != nil {
		w.t.Fatal(err)
	}
	w.must("encrypt", "--key", "kms:bob-cmk", "-i", filepath.Join(work, "people.csv"), "-o", filepath.Join(data, "people.csv"))
}

func (w *world) app(keyID, data, job string) string {
	w.t.Helper()
	dir := filepath.Join(w.t.TempDir(), "app")
	w.must("new", dir)
	// Whatever a failing test leaves mounted is detached, so the temporary
	// directory can go and the next test starts clean.
	w.t.Cleanup(func() { detachUnder(filepath.Join(dir, "run")) })
	ca, _ := os.ReadFile(w.getenv("VEIL_KMS_CA"))
	cfg := map[string]any{
		"entrypoints": []string{"/usr/bin/", "/app/"},
		"env":         map[string]any{"default": map[string]string{"PATH": "/usr/bin"}, "passthrough": []string{}},
		"args":        map[string]any{"passthrough": true},
		"mounts": []any{
			map[string]any{"target": "/data", "type": "sealed", "source": data, "key": "kms:" + keyID + "@owner"},
			map[string]any{"target": "/tmp", "type": "tmpfs", "size": "16M"},
		},
		"resources": map[string]any{"max_processes": 64},
		"metadata":  map[string]any{"product_id": 0, "svn": 0, "debuggable": false},
		"kms":       []any{map[string]any{"name": "owner", "address": strings.TrimPrefix(w.getenv("VEIL_KMS_URL"), "https://"), "ca_cert": string(ca)}},
		"secrets":   []any{},
		"bom": map[string]any{"copy": []any{
			map[string]any{"from": "/usr/bin/dash", "to": "/usr/bin/sh"},
			map[string]any{"from": "/usr/bin/cat"}, map[string]any{"from": "/usr/bin/sleep"}, map[string]any{"from": "/usr/bin/grep"},
		}},
	}
	b, _ := json.MarshalIndent(cfg, "", "  ")
	os.WriteFile(filepath.Join(dir, "veil.json"), b, 0o644)
	os.MkdirAll(filepath.Join(dir, "image", "app"), 0o755)
	os.WriteFile(filepath.Join(dir, "image", "app", "job.sh"), []byte(job), 0o755)
	w.must("build", "-C", dir)
	return dir
}

const job = `#!/usr/bin/sh
grep -c engineer /data/people.csv > /data/out.txt
echo done
`

func TestRunWithKMSAndDenial(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	data := t.TempDir()
	work := t.TempDir()
	w.sealPeople(work, data)
	app := w.app(keyID, data, job)
	w.must("kms", "policy", "create", "--from-instance", app, "--key", "bob-cmk", "--allow-sim")

	r := w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh")
	if r.code != 0 || !strings.Contains(r.out, "done") {
		t.Fatalf("run: exit %d\n%s%s", r.code, r.out, r.err)
	}
	w.must("decrypt", "-i", filepath.Join(data, "out.txt"), "-o", filepath.Join(work, "out.txt"))
	if b, _ := os.ReadFile(filepath.Join(work, "out.txt")); string(b) != "2\n" {
		t.Fatalf("result %q", b)
	}
	// Exit codes pass through; a program outside the entrypoints is refused.
	if r := w.run("", "run", "-C", app, "/usr/bin/sh", "-c", "exit 7"); r.code != 7 {
		t.Fatalf("exit status: %d %s", r.code, r.err)
	}
	if r := w.run("", "run", "-C", app, "/etc/passwd"); r.code == 0 || !strings.Contains(r.err, "entrypoint") {
		t.Fatalf("non-entrypoint: %d %s", r.code, r.err)
	}

	// One byte of the program changed: a new measurement, denied its keys.
	os.WriteFile(filepath.Join(app, "image", "app", "job.sh"), []byte(strings.Replace(job, "engineer", "Engineer", 1)), 0o755)
	w.must("build", "-C", app)
	os.Remove(filepath.Join(data, "out.txt"))
	r = w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh")
	if r.code != 4 || !strings.Contains(r.err, "measurement") {
		t.Fatalf("changed program: exit %d, want 4 naming the measurement\n%s", r.code, r.err)
	}
	if strings.Contains(r.out, "done") {
		t.Fatal("the denied program ran")
	}
	if _, err := os.Stat(filepath.Join(data, "out.txt")); err == nil {
		t.Fatal("the denied program wrote output")
	}
	assertClean(t, app)
}

// assertClean fails the test if a mount or a process of the instance
// outlived it.
func assertClean(t *testing.T, app string) {
	t.Helper()
	if m := mountsUnder(app); len(m) > 0 {
		t.Fatalf("mounts left under %s: %v", app, m)
	}
	if p := procsOf(app); len(p) > 0 {
		t.Fatalf("processes of %s left running: %v", app, p)
	}
}

// procsOf lists the processes whose command line names dir: supervisors
// and sandbox programs of that instance.
func procsOf(dir string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || len(b) == 0 {
			continue
		}
		if cmd := strings.ReplaceAll(string(bytes.TrimRight(b, "\x00")), "\x00", " "); strings.Contains(cmd, dir) {
			if st, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "stat")); bytes.Contains(st, []byte(") Z ")) {
				continue // a zombie: ended, its parent has not reaped it yet
			}
			out = append(out, e.Name()+": "+cmd)
		}
	}
	return out
}

func TestStartExecStopAndCrash(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	data := t.TempDir()
	app := w.app(keyID, data, job)
	w.must("kms", "policy", "create", "--from-instance", app, "--key", "bob-cmk", "--allow-sim")

	w.must("start", "-C", app)
	if r := w.run("", "start", "-C", app); r.code == 0 || !strings.Contains(r.err, "already") {
		t.Fatalf("second start: %d %s", r.code, r.err)
	}
	r := w.run("hello\n", "exec", "-C", app, "/usr/bin/sh", "-c", "read x; echo got=$x; exit 3")
	if r.code != 3 || !strings.Contains(r.out, "got=hello") {
		t.Fatalf("exec: %d %q %s", r.code, r.out, r.err)
	}
	st := w.must("status", "-C", app)
	for _, want := range []string{"state:        running", "backend:      sim", "/data sealed"} {
		if !strings.Contains(st, want) {
			t.Fatalf("status lacks %q:\n%s", want, st)
		}
	}
	w.must("stop", "-C", app)
	if st := w.must("status", "-C", app); !strings.Contains(st, "stopped") {
		t.Fatalf("after stop:\n%s", st)
	}
	assertClean(t, app)

	// kill -9 of the supervisor in the middle of writes to the sealed mount.
	w.must("start", "-C", app)
	writer := exec.Command(veil, "exec", "-C", app, "/usr/bin/sh", "-c",
		`i=0; while [ $i -lt 100000 ]; do echo "version $i" > /data/f$((i % 4)); i=$((i+1)); done`)
	writer.Env = w.env
	writer.Start()
	time.Sleep(700 * time.Millisecond)
	pid := supervisorPID(t, app)
	t.Logf("killing supervisor %d", pid)
	syscall.Kill(pid, syscall.SIGKILL)
	writer.Wait()
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil && !zombie(pid); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	// Every file holds a state the program wrote — a whole version, or
	// empty between the shell's O_TRUNC and its write — or is reported
	// damaged; none is silently wrong.
	re := regexp.MustCompile(`^(version [0-9]+\n)?$`)
	ok, damaged := 0, 0
	for i := 0; i < 4; i++ {
		f := filepath.Join(data, fmt.Sprintf("f%d", i))
		if _, err := os.Stat(f); err != nil {
			continue
		}
		r := w.run("", "decrypt", "-i", f, "-o", "-")
		switch {
		case r.code == 0 && re.MatchString(r.out):
			ok++
		case r.code == 3:
			damaged++
		default:
			t.Fatalf("f%d after the crash: exit %d, content %q: %s", i, r.code, r.out, r.err)
		}
	}
	t.Logf("after kill -9: %d files whole, %d reported damaged", ok, damaged)
	// The writer had gone round all four files and writes one at a time:
	// only the one it was writing at the kill may be damaged.
	if ok+damaged != 4 {
		t.Fatalf("%d of the 4 files exist after the kill", ok+damaged)
	}
	if damaged > 1 {
		t.Fatalf("%d files damaged by the kill; at most the one being written may be", damaged)
	}
	// The next start cleans up what the killed supervisor left.
	w.must("start", "-C", app)
	w.must("stop", "-C", app)
	assertClean(t, app)
}

func supervisorPID(t *testing.T, app string) int {
	t.Helper()
	ents, _ := os.ReadDir(filepath.Join(app, "run"))
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscanf(e.Name(), "s-%d", &pid); err == nil {
			return pid
		}
	}
	t.Fatal("no supervisor run directory")
	return 0
}

func TestKMSUnreachable(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	app := w.app(keyID, t.TempDir(), job)
	// Point the instance at a port where nothing listens (the address is
	// not measured, so the build stays valid).
	cfg, _ := os.ReadFile(filepath.Join(app, "veil.json"))
	addr := strings.TrimPrefix(w.getenv("VEIL_KMS_URL"), "https://")
	os.WriteFile(filepath.Join(app, "veil.json"), bytes.Replace(cfg, []byte(addr), []byte("127.0.0.1:1"), 1), 0o644)
	start := time.Now()
	r := w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh")
	if r.code != 1 || !strings.Contains(r.err, "unreachable") || !strings.Contains(r.err, "veil: hint:") {
		t.Fatalf("exit %d:\n%s", r.code, r.err)
	}
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("gave up only after %v", d)
	}
	assertClean(t, app)
}

func zombie(pid int) bool {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	i := bytes.LastIndexByte(b, ')')
	return i >= 0 && i+2 < len(b) && b[i+2] == 'Z'
}
