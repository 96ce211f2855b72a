package runtest

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBoundFilesInRun: the owner seals two files with `veil encrypt
// --bind-mount /data --bind-path NAME`; the instance's sealed /data reads
// each at its own name, and refuses it after the host swaps the two
// (program sees EIO, the run fails). The run's output, sealed by the
// mount, decrypts with `veil decrypt`, which does not know its place.
func TestBoundFilesInRun(t *testing.T) {
	need(t)
	w := newWorld(t)
	w.startKMS()
	keyID := w.owner("bob")
	data, work := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(work, "people.csv"), []byte(peopleCSV), 0o600)
	os.WriteFile(filepath.Join(work, "decoy.csv"), []byte("name,job\neve,engineer\n"), 0o600)
	for _, n := range []string{"people.csv", "decoy.csv"} {
		w.must("encrypt", "--key", "kms:bob-cmk", "-i", filepath.Join(work, n), "-o", filepath.Join(data, n), "--bind-mount", "/data", "--bind-path", n)
	}
	app := w.app(keyID, data, job)
	w.must("kms", "policy", "create", "--from-instance", app, "--key", "bob-cmk", "--allow-sim")

	if r := w.run("", "run", "-C", app, "/usr/bin/sh", "/app/job.sh"); r.code != 0 || !strings.Contains(r.out, "done") {
		t.Fatalf("run with bound files: exit %d\n%s%s", r.code, r.out, r.err)
	}
	w.must("decrypt", "-i", filepath.Join(data, "out.txt"), "-o", filepath.Join(work, "out.txt"))
	if b, _ := os.ReadFile(filepath.Join(work, "out.txt")); string(b) != "2\n" {
		t.Fatalf("result %q", b)
	}
	// The host swaps the two files.
	p, d := filepath.Join(data, "people.csv"), filepath.Join(data, "decoy.csv")
	os.Rename(p, p+".x")
	os.Rename(d, p)
	os.Rename(p+".x", d)
	r := w.run("", "run", "-C", app, "/usr/bin/sh", "-c", "cat /data/people.csv")
	if r.code == 0 || strings.Contains(r.out, "eve") {
		t.Fatalf("swapped file: exit %d, read %q; want a failure", r.code, r.out)
	}
	if !strings.Contains(r.err, "Input/output error") {
		t.Fatalf("swapped file: the program did not see EIO:\n%s", r.err)
	}
	// Unbound, the same file is accepted anywhere (as before binding).
	w.must("encrypt", "--key", "kms:bob-cmk", "-i", filepath.Join(work, "decoy.csv"), "-o", filepath.Join(data, "loose.csv"))
	if r := w.run("", "run", "-C", app, "/usr/bin/sh", "-c", "cat /data/loose.csv"); r.code != 0 || !strings.Contains(r.out, "eve") {
		t.Fatalf("unbound file: exit %d %q %s", r.code, r.out, r.err)
	}
	assertClean(t, app)
}
