package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-tee/veil/config"
)

// TestCLINewFromGramineAndOcclum imports the real-shaped configurations of
// the migrate package's tests through veil new and checks the instance.
func TestCLINewFromGramineAndOcclum(t *testing.T) {
	dir := t.TempDir()
	src, _ := filepath.Abs("../../migrate/testdata")
	r := mustVeil(t, dir, nil, "new", "--from-gramine", filepath.Join(src, "python.manifest.toml"), "--gramine-key", "default=file:wrap.key", "g")
	c, err := config.Load(filepath.Join(dir, "g", "veil.json"))
	if err != nil {
		t.Fatalf("imported veil.json: %v", err)
	}
	if len(c.Entrypoints) != 1 || c.Entrypoints[0] != "/usr/bin/python3.11" {
		t.Fatalf("entrypoints %v", c.Entrypoints)
	}
	var pfMount bool
	for _, m := range c.Mounts {
		pfMount = pfMount || (m.Target == "/data" && m.Format == config.FormatGraminePF && m.Key == "file:wrap.key")
	}
	if !pfMount {
		t.Fatalf("no gramine-pf mount at /data: %+v", c.Mounts)
	}
	if !strings.Contains(string(r.stderr), "veil: not mapped: sgx.edmm_enable: ") {
		t.Fatalf("unmapped fields not listed:\n%s", r.stderr)
	}
	notes, err := os.ReadFile(filepath.Join(dir, "g", "MIGRATION.txt"))
	if err != nil || !strings.Contains(string(notes), "fs.insecure__keys.default") || !strings.Contains(string(notes), "libos.entrypoint -> entrypoints") {
		t.Fatalf("MIGRATION.txt: %v\n%s", err, notes)
	}
	if fi, err := os.Stat(filepath.Join(dir, "g", "image")); err != nil || !fi.IsDir() {
		t.Fatal("no image/ directory")
	}

	r = mustVeil(t, dir, nil, "new", "--from-occlum", filepath.Join(src, "Occlum.json"), "--sealed-key", "file:data.key", "o")
	c, err = config.Load(filepath.Join(dir, "o", "veil.json"))
	if err != nil {
		t.Fatalf("imported veil.json: %v", err)
	}
	if c.Metadata.ProductID != 12 || c.Resources.MaxProcesses != 32 {
		t.Fatalf("metadata %+v resources %+v", c.Metadata, c.Resources)
	}
	if !strings.Contains(string(r.stderr), "veil: not mapped: feature.enable_edmm: ") {
		t.Fatalf("unmapped fields not listed:\n%s", r.stderr)
	}

	// Errors leave no directory behind.
	os.WriteFile(filepath.Join(dir, "t.toml"), []byte(`libos.entrypoint = "{{ e }}"`), 0o644)
	if r := veil(t, dir, nil, "new", "--from-gramine", "t.toml", "x"); r.code == 0 || !strings.Contains(string(r.stderr), "gramine-manifest") {
		t.Fatalf("template manifest: exit %d\n%s", r.code, r.stderr)
	}
	if r := veil(t, dir, nil, "new", "--from-gramine", "t.toml", "--from-occlum", "o.json", "x"); r.code != ExitUsage {
		t.Fatalf("both imports: exit %d", r.code)
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); err == nil {
		t.Fatal("a failed import created the instance directory")
	}
}
