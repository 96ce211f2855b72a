package readmetest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veilBin string

func TestMain(m *testing.M) { veiltest.Main(m, &veilBin) }

const repo = "../../.."

// needMachine skips unless the documents' sessions can run here: they
// build images, mount FUSE file systems and run sandboxes, each in a
// network namespace of its own (so 127.0.0.1:8443 is free).
func needMachine(t *testing.T) {
	t.Helper()
	veiltest.NeedFUSE(t)
	for _, c := range []string{"bash", "unshare", "ip", "mksquashfs"} {
		veiltest.NeedCommand(t, c)
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		veiltest.Skip(t, "needs the Debian package python3")
	}
}

// runDoc runs the first console block of the document doc (relative to
// the repository) in a fresh directory, prepared by setup, with only
// veil on PATH and a fresh HOME, and checks every output line the block
// shows. Nothing may be left running or mounted.
func runDoc(t *testing.T, doc string, setup func(dir string)) {
	t.Helper()
	md, err := os.ReadFile(filepath.Join(repo, doc))
	if err != nil {
		t.Fatal(err)
	}
	runSession(t, doc, md, setup)
}

// runSession runs the first console block of md (named doc in messages).
func runSession(t *testing.T, doc string, md []byte, setup func(dir string)) {
	t.Helper()
	steps, err := parseConsole(md)
	if err != nil {
		t.Fatalf("%s: %v", doc, err)
	}
	if len(steps) < 3 {
		t.Fatalf("%s: %d commands in its console block; want a session", doc, len(steps))
	}
	base := t.TempDir()
	// Whatever happens, leave nothing behind: this runs before the
	// temporary directory is removed (the checks below still fail the
	// test for anything the session left).
	t.Cleanup(func() { sweep(base) })
	work, home, outDir := filepath.Join(base, "work"), filepath.Join(base, "home"), filepath.Join(base, "out")
	for _, d := range []string{work, home, outDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if setup != nil {
		setup(work)
	}
	scriptPath := filepath.Join(base, "session.sh")
	body := "ip link set lo up\ncd " + shellQuote(work) + "\n" + script(steps, outDir)
	if err := os.WriteFile(scriptPath, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "bash", scriptPath)
	cmd.Dir = work
	cmd.Env = []string{
		"PATH=" + filepath.Dir(veilBin) + ":/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
		"HOME=" + home, "LANG=C.UTF-8", "TMPDIR=" + base,
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	err = cmd.Run()
	t.Logf("%s, run in %s:\n%s", doc, work, log.String())
	pgid := cmd.Process.Pid
	defer syscall.Kill(-pgid, syscall.SIGKILL)
	if err != nil {
		t.Fatalf("%s: the session failed (%v); the last command above is the one that failed", doc, err)
	}
	for i, s := range steps {
		if len(s.Out) == 0 {
			continue
		}
		got, err := os.ReadFile(filepath.Join(outDir, fmt.Sprint(i)))
		if err != nil {
			t.Fatal(err)
		}
		want := strings.Join(s.Out, "\n") + "\n"
		if string(got) != want {
			t.Errorf("%s:%d: $ %s\nprinted:\n%s\nthe document shows:\n%s", doc, s.Line, s.Cmd, got, want)
		}
	}
	// Nothing left behind: no process of the session, no mount under it.
	if err := syscall.Kill(-pgid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("%s: processes of the session are still running", doc)
	}
	// A process that is ending may take a moment to go: wait up to 5 s.
	p := processesNaming(base)
	for i := 0; i < 50 && len(p) > 0; i++ {
		time.Sleep(100 * time.Millisecond)
		p = processesNaming(base)
	}
	if len(p) > 0 {
		t.Errorf("%s: left running: %v", doc, p)
	}
	if m := mountsUnder(t, base); len(m) > 0 {
		t.Errorf("%s: left mounted: %v", doc, m)
	}
}

// sweep ends the processes whose command line names dir (a supervisor
// of a session that failed before veil stop) and detaches every mount
// under dir, deepest first.
func sweep(dir string) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGKILL} {
		p := processesNaming(dir)
		for _, e := range p {
			pid, _, _ := strings.Cut(e, ":")
			if n, err := strconv.Atoi(pid); err == nil {
				syscall.Kill(n, sig)
			}
		}
		for i := 0; i < 30 && len(processesNaming(dir)) > 0; i++ {
			time.Sleep(100 * time.Millisecond)
		}
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return
	}
	var ms []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fields := strings.Fields(sc.Text()); len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			ms = append(ms, fields[4])
		}
	}
	f.Close()
	sort.Sort(sort.Reverse(sort.StringSlice(ms)))
	for _, m := range ms {
		syscall.Unmount(m, syscall.MNT_DETACH)
	}
}

// processesNaming lists the processes whose command line names dir (a
// detached supervisor is in no process group of the session).
func processesNaming(dir string) []string {
	ents, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range ents {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && bytes.Contains(b, []byte(dir)) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

func mountsUnder(t *testing.T, dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && strings.HasPrefix(fields[4], dir) {
			out = append(out, fields[4])
		}
	}
	return out
}

// copyFiles copies the named files of the repository directory from into
// the directory to.
func copyFiles(t *testing.T, from, to string, names ...string) {
	t.Helper()
	if err := os.MkdirAll(to, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(repo, from, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, n), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestREADME runs the README's walkthrough from a copy of what a checkout
// holds for it (examples/quickstart).
func TestREADME(t *testing.T) {
	needMachine(t)
	runDoc(t, "README.md", quickstart(t))
}

// TestKMSDoc runs the session at the top of docs/kms.md.
func TestKMSDoc(t *testing.T) {
	needMachine(t)
	runDoc(t, "docs/kms.md", nil)
}

// TestRuntimeDoc runs the session at the top of docs/runtime.md.
func TestRuntimeDoc(t *testing.T) {
	needMachine(t)
	runDoc(t, "docs/runtime.md", nil)
}

// quickstart copies what the README's walkthrough starts from.
func quickstart(t *testing.T) func(string) {
	return func(dir string) {
		copyFiles(t, "examples/quickstart", filepath.Join(dir, "examples", "quickstart"), "people.csv", "job.py")
	}
}

// TestRebuildNeedsReplace follows the README and goes on as users do: a
// changed program is refused its key, with a hint that names the
// command that registers the new measurement, which then works; and a
// run under another sim platform is told to give the key service that
// platform's CA.
func TestRebuildNeedsReplace(t *testing.T) {
	needMachine(t)
	session := "```console\n" + `$ cd examples/quickstart
$ veil kms serve --dev --data kms >kms.log 2>&1 &
$ eval "$(veil kms env --data kms)"
$ eval "$(veil kms enroll --name bob)"
$ veil kms key create --name bob-cmk
$ veil encrypt --key kms:bob-cmk -i people.csv -o data/people.csv
$ veil new app --bom debian/python3 --kms main --mount /data=data,key=kms:bob-cmk@main
$ mkdir app/image/app && cp job.py app/image/app/
$ veil build -C app
$ veil kms policy create --from-instance app --key bob-cmk --allow-sim
$ veil run -C app /usr/bin/python3 /app/job.py
$ echo '# changed' >>app/image/app/job.py && veil build -C app
$ veil run -C app /usr/bin/python3 /app/job.py 2>err || echo "exit $?"
exit 4
$ sed -n 's/^veil: hint: //p' err
no release policy of the key accepts this build; after a rebuild the key's owner runs: veil kms policy create --from-instance DIR --key KEY --replace (with --allow-sim for the sim backend)
$ veil kms policy create --from-instance app --key bob-cmk --allow-sim --replace
$ veil kms key describe bob-cmk --json | grep -c '"p_'
1
$ veil run -C app /usr/bin/python3 /app/job.py
$ HOME=$PWD/elsewhere veil sim init >/dev/null
$ HOME=$PWD/elsewhere veil run -C app /usr/bin/python3 /app/job.py 2>err || echo "exit $?"
exit 4
$ grep -c 'hint: the key service does not trust this machine.s sim platform: start it with --sim-ca /.*/elsewhere/.*ca.pem' err
1
` + "```\n"
	runSession(t, "rebuild session", []byte(session), quickstart(t))
}
