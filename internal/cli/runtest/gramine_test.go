package runtest

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

// TestRunGramineWorkload migrates a Gramine workload: its manifest is
// imported with veil new --from-gramine, and its encrypted directory
// (holding a file written by Gramine) is mounted unchanged; the program
// reads that file and writes a new one, which opens as Gramine would open
// it, bound to its path.
func TestRunGramineWorkload(t *testing.T) {
	need(t)
	ref := ""
	for dir, _ := filepath.Abs("."); ref == "" && dir != "/"; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "shared", "testdata", "gramine-pf", "wrap-key.bin")); err == nil {
			ref = filepath.Join(dir, "shared", "testdata", "gramine-pf")
		}
	}
	if ref == "" {
		veiltest.Skip(t, "Gramine reference files not found: want ../shared/testdata/gramine-pf beside the repository checkout")
	}
	w := newWorld(t)
	work := t.TempDir()
	w.dir = work
	for src, dst := range map[string]string{"wrap-key.bin": "wrap.key", "f00040000.pf": "data/f00040000.pf"} {
		b, err := os.ReadFile(filepath.Join(ref, src))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(filepath.Join(work, dst)), 0o700)
		if err := os.WriteFile(filepath.Join(work, dst), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	manifest := `
libos.entrypoint = "/usr/bin/dash"
loader.entrypoint.uri = "file:/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
loader.insecure__use_cmdline_argv = true
loader.env.PATH = "/usr/bin"
fs.mounts = [
  { path = "/usr", uri = "file:/usr" },
  { type = "encrypted", path = "/data", uri = "file:data" },
  { type = "tmpfs", path = "/tmp" },
]
sgx.debug = true
sgx.trusted_files = [ "file:/usr/bin/dash", "file:/usr/bin/cat" ]
`
	os.WriteFile(filepath.Join(work, "app.manifest"), []byte(manifest), 0o644)
	w.must("sim", "init")
	w.must("new", "--from-gramine", "app.manifest", "--gramine-key", "default=file:"+filepath.Join(work, "wrap.key"), "app")
	app := filepath.Join(work, "app")
	t.Cleanup(func() { detachUnder(filepath.Join(app, "run")) })
	w.must("build", "-C", app)

	out := w.must("run", "-C", app, "/usr/bin/dash", "-c", `cat /data/f00040000.pf && echo "from veil" > /data/result.txt`)
	want, _ := os.ReadFile(filepath.Join(ref, "f00040000.plain"))
	if !bytes.Equal([]byte(out), want) {
		t.Fatalf("the program read %d bytes, not Gramine's plaintext (%d bytes)", len(out), len(want))
	}
	stored, err := os.ReadFile(filepath.Join(work, "data", "result.txt"))
	if err != nil || !bytes.HasPrefix(stored, []byte("GRAFS_PF")) || bytes.Contains(stored, []byte("from veil")) {
		t.Fatalf("output on the host is not a protected file: %v", err)
	}
	// Opened the way Gramine opens it: bound to data/result.txt.
	if got := w.must("decrypt", "--key", "file:wrap.key", "-i", "data/result.txt", "-o", "-"); got != "from veil\n" {
		t.Fatalf("decrypted output %q", got)
	}
	assertClean(t, app)
}
