// Package imagetest runs the image verbs of the built veil binary as a
// black box: new, build, print, verify, gen-sign-key, gen-image-key.
package imagetest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

var veil string

func TestMain(m *testing.M) { veiltest.Main(m, &veil) }

type result = veiltest.Result

func run(t *testing.T, home string, args ...string) result {
	t.Helper()
	return veiltest.Run(t, veil, []string{"VEIL_HOME=" + home}, "", args...)
}

func mustRun(t *testing.T, home string, args ...string) result {
	t.Helper()
	r := run(t, home, args...)
	if r.Code != 0 {
		t.Fatalf("veil %s: exit %d: %s", strings.Join(args, " "), r.Code, r.Stderr)
	}
	return r
}

// setup makes an instance with a BOM holding /usr/bin/python3 and a script.
func setup(t *testing.T, home, dir string) {
	t.Helper()
	mustRun(t, home, "new", dir)
	cfgPath := filepath.Join(dir, "veil.json")
	var cfg map[string]any
	data, _ := os.ReadFile(cfgPath)
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatal(err)
	}
	cfg["bom"].(map[string]any)["copy"] = []any{map[string]any{"from": "/usr/bin/python3"}}
	data, _ = json.MarshalIndent(cfg, "", "  ")
	os.WriteFile(cfgPath, data, 0o644)
	os.MkdirAll(filepath.Join(dir, "image/app"), 0o755)
	os.WriteFile(filepath.Join(dir, "image/app/job.py"), []byte("print('hello from veil')\n"), 0o644)
}

var hexLine = regexp.MustCompile(`^[0-9a-f]{64}\n$`)

func TestAcceptance(t *testing.T) {
	for _, tool := range []string{"mksquashfs", "/usr/bin/python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			veiltest.Skip(t, "%s missing", tool)
		}
	}
	home := t.TempDir()
	a := filepath.Join(t.TempDir(), "app")
	b := filepath.Join(t.TempDir(), "app")
	setup(t, home, a)

	// new refuses an existing directory.
	if r := run(t, home, "new", a); r.Code == 0 || !strings.Contains(r.Stderr, "veil: error:") {
		t.Fatalf("new over an existing dir: %+v", r)
	}

	r := mustRun(t, home, "build", "-C", a)
	if !strings.Contains(r.Stderr, "development") {
		t.Errorf("the development key was not reported: %s", r.Stderr)
	}
	m1 := mustRun(t, home, "print", "-C", a, "mrenclave").Stdout
	if !hexLine.MatchString(m1) {
		t.Fatalf("print mrenclave: %q", m1)
	}
	s1 := mustRun(t, home, "print", "-C", a, "mrsigner").Stdout
	if !hexLine.MatchString(s1) || s1 == m1 {
		t.Fatalf("print mrsigner: %q", s1)
	}

	// Same inputs in another directory, later: same measurement.
	setup(t, home, b)
	mustRun(t, home, "build", "-C", b)
	if m2 := mustRun(t, home, "print", "-C", b, "mrenclave").Stdout; m2 != m1 {
		t.Fatalf("mrenclave differs across directories: %s vs %s", m1, m2)
	}

	// Rebuild with unchanged inputs reuses the verified image.
	if r := mustRun(t, home, "build", "-C", a); !strings.Contains(r.Stderr, "reused") {
		t.Errorf("rebuild did not reuse: %s", r.Stderr)
	}

	// job.py changes -> mrenclave changes.
	f, _ := os.OpenFile(filepath.Join(a, "image/app/job.py"), os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("x\n")
	f.Close()
	mustRun(t, home, "build", "-C", a)
	m3 := mustRun(t, home, "print", "-C", a, "mrenclave").Stdout
	if m3 == m1 {
		t.Fatal("mrenclave unchanged after job.py changed")
	}
	if r := mustRun(t, home, "verify", "-C", a); !strings.HasPrefix(r.Stdout, "ok:") {
		t.Fatalf("verify: %+v", r)
	}
	// An outside tool accepts the image: veritysetup verify.
	if _, err := exec.LookPath("veritysetup"); err == nil {
		var rec struct {
			Image struct {
				RootHash   string `json:"root_hash"`
				HashOffset int64  `json:"hash_offset"`
			} `json:"image"`
		}
		data, _ := os.ReadFile(filepath.Join(a, "build", "build.json"))
		if err := json.Unmarshal(data, &rec); err != nil {
			t.Fatal(err)
		}
		img := filepath.Join(a, "build", "rootfs.img")
		out, err := exec.Command("veritysetup", "verify", img, img, rec.Image.RootHash, "--hash-offset", fmt.Sprint(rec.Image.HashOffset)).CombinedOutput()
		if err != nil {
			t.Fatalf("veritysetup verify: %v: %s", err, out)
		}
	}

	// Corrupt one byte: verify fails with the integrity code, naming the block.
	img := filepath.Join(a, "build", "rootfs.img")
	fh, _ := os.OpenFile(img, os.O_RDWR, 0)
	buf := make([]byte, 1)
	fh.ReadAt(buf, 3*4096+17)
	buf[0] ^= 1
	fh.WriteAt(buf, 3*4096+17)
	fh.Close()
	r = run(t, home, "verify", "-C", a)
	if r.Code != 3 || !strings.Contains(r.Stderr, "image block 3 ") || !strings.Contains(r.Stderr, "(in /usr/") {
		t.Fatalf("verify of a corrupted image: %+v", r)
	}

	// veil.json changed after the build: print and verify refuse.
	cfgPath := filepath.Join(b, "veil.json")
	cfg, _ := os.ReadFile(cfgPath)
	os.WriteFile(cfgPath, bytes.Replace(cfg, []byte(`"passthrough": true`), []byte(`"passthrough": false`), 1), 0o644)
	if r := run(t, home, "verify", "-C", b); r.Code == 0 || !strings.Contains(r.Stderr, "veil: hint:") {
		t.Fatalf("verify after a veil.json change: %+v", r)
	}
	os.WriteFile(cfgPath, cfg, 0o644)

	// Bad input: a missing BOM file fails with one line and keeps the build.
	before, _ := os.ReadFile(filepath.Join(b, "build", "build.json"))
	os.WriteFile(cfgPath, bytes.Replace(cfg, []byte(`"/usr/bin/python3"`), []byte(`"/usr/bin/no-such-python"`), 1), 0o644)
	r = run(t, home, "build", "-C", b)
	if r.Code != 1 || strings.Count(r.Stderr, "veil: error:") != 1 || strings.Contains(r.Stderr, "goroutine") {
		t.Fatalf("build with a missing BOM file: %+v", r)
	}
	after, _ := os.ReadFile(filepath.Join(b, "build", "build.json"))
	if !bytes.Equal(before, after) {
		t.Fatal("failed build changed the previous build")
	}
	os.WriteFile(cfgPath, cfg, 0o644)
	mustRun(t, home, "verify", "-C", b)

	// Usage errors.
	if r := run(t, home, "print", "-C", b, "mrfoo"); r.Code != 2 {
		t.Errorf("print mrfoo: %+v", r)
	}
}

func TestKeysAndEncryptedBuild(t *testing.T) {
	if _, err := exec.LookPath("mksquashfs"); err != nil {
		veiltest.Skip(t, "mksquashfs missing")
	}
	home := t.TempDir()
	keys := t.TempDir()
	sk := filepath.Join(keys, "sign.pem")
	ik := filepath.Join(keys, "image.key")
	mrsigner := mustRun(t, home, "gen-sign-key", sk).Stdout
	if !hexLine.MatchString(mrsigner) {
		t.Fatalf("gen-sign-key printed %q", mrsigner)
	}
	if r := run(t, home, "gen-sign-key", sk); r.Code == 0 {
		t.Fatal("gen-sign-key overwrote a key")
	}
	mustRun(t, home, "gen-image-key", ik)
	if fi, _ := os.Stat(ik); fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("image key file: %v %d", fi.Mode(), fi.Size())
	}
	dir := filepath.Join(t.TempDir(), "app")
	mustRun(t, home, "new", dir)
	os.MkdirAll(filepath.Join(dir, "image/app"), 0o755)
	os.WriteFile(filepath.Join(dir, "image/app/very-secret-filename.py"), []byte(strings.Repeat("secret content ", 100)), 0o644)
	r := mustRun(t, home, "build", "-C", dir, "--sign-key", sk, "--image-key", ik, "--compression", "none")
	if strings.Contains(r.Stderr, "development") {
		t.Errorf("development key reported with --sign-key: %s", r.Stderr)
	}
	if got := mustRun(t, home, "print", "-C", dir, "mrsigner").Stdout; got != mrsigner {
		t.Fatalf("mrsigner %q, key's %q", got, mrsigner)
	}
	// Nothing in build/ (what is shipped to the host) reveals a name or
	// content: the image, the record, anything else.
	shipped, _ := os.ReadDir(filepath.Join(dir, "build"))
	if len(shipped) == 0 {
		t.Fatal("empty build directory")
	}
	for _, e := range shipped {
		data, _ := os.ReadFile(filepath.Join(dir, "build", e.Name()))
		for _, s := range []string{"very-secret-filename", "secret content"} {
			if bytes.Contains(data, []byte(s)) {
				t.Errorf("build/%s contains %q", e.Name(), s)
			}
		}
	}
	mustRun(t, home, "verify", "-C", dir)
	os.Chmod(ik, 0o644)
	if r := run(t, home, "build", "-C", dir, "--image-key", ik); r.Code == 0 {
		t.Fatal("a world-readable image key was accepted")
	}
}
