package cli

import (
	"bytes"
	"crypto/rand"
	"github.com/veil-tee/veil/internal/veiltest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

func writeRandom(t *testing.T, path string, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	rand.Read(b)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return b
}

func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Fatalf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestCLIGenKey(t *testing.T) {
	dir := t.TempDir()
	r := mustVeil(t, dir, nil, "gen-key", "k")
	if !bytes.HasPrefix(r.stdout, []byte("sha256:")) {
		t.Fatalf("gen-key printed %q, want the key id", r.stdout)
	}
	fi, err := os.Stat(filepath.Join(dir, "k"))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode: %v %v", fi.Mode(), err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, "k"))
	if r := veil(t, dir, nil, "gen-key", "k"); r.code != ExitFailure {
		t.Fatalf("gen-key over an existing key: exit %d", r.code)
	}
	after, _ := os.ReadFile(filepath.Join(dir, "k"))
	if !bytes.Equal(before, after) {
		t.Fatal("gen-key overwrote an existing key")
	}
}

func TestCLIRoundTripFileAndStreams(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	plain := writeRandom(t, filepath.Join(dir, "in"), 3<<20+17)
	mustVeil(t, dir, nil, "encrypt", "--key", "file:k", "-i", "in", "-o", "in.sealed")
	mustVeil(t, dir, nil, "decrypt", "--key", "file:k", "-i", "in.sealed", "-o", "out")
	got, _ := os.ReadFile(filepath.Join(dir, "out"))
	if !bytes.Equal(got, plain) {
		t.Fatal("file round trip differs")
	}
	if fi, _ := os.Stat(filepath.Join(dir, "out")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("decrypted file mode %v, want 0600", fi.Mode().Perm())
	}
	// Pipes of unknown length both ways.
	sealed := mustVeil(t, dir, plain, "encrypt", "--key", "file:k", "-i", "-", "-o", "-").stdout
	back := mustVeil(t, dir, sealed, "decrypt", "--key", "file:k", "-i", "-", "-o", "-").stdout
	if !bytes.Equal(back, plain) {
		t.Fatal("stream round trip differs")
	}
	assertNoTemps(t, dir)
}

func TestCLITwoKeySlots(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "alice")
	mustVeil(t, dir, nil, "gen-key", "bob")
	mustVeil(t, dir, nil, "gen-key", "eve")
	plain := writeRandom(t, filepath.Join(dir, "in"), 1000)
	mustVeil(t, dir, nil, "encrypt", "-k", "file:alice", "-k", "file:bob", "-i", "in", "-o", "s")
	for _, k := range []string{"alice", "bob"} {
		out := mustVeil(t, dir, nil, "decrypt", "-k", "file:"+k, "-i", "s", "-o", "-").stdout
		if !bytes.Equal(out, plain) {
			t.Fatalf("%s: plaintext differs", k)
		}
	}
	r := veil(t, dir, nil, "decrypt", "-k", "file:eve", "-i", "s", "-o", "x")
	if r.code != ExitIntegrity || !bytes.Contains(r.stderr, []byte("no key slot opens")) {
		t.Fatalf("wrong key: exit %d: %s", r.code, r.stderr)
	}
	insp := mustVeil(t, dir, nil, "inspect", "s").stdout
	for _, k := range []string{"alice", "bob"} {
		id := strings.TrimSpace(string(mustVeilKeyID(t, dir, k)))
		if !bytes.Contains(insp, []byte(id)) {
			t.Fatalf("inspect does not list %s's key id %s:\n%s", k, id, insp)
		}
	}
}

// mustVeilKeyID returns the key id of a key file by sealing with it and
// reading the slot back.
func mustVeilKeyID(t *testing.T, dir, key string) string {
	t.Helper()
	s := mustVeil(t, dir, []byte("x"), "encrypt", "-k", "file:"+key, "-i", "-", "-o", "-").stdout
	os.WriteFile(filepath.Join(dir, "probe"), s, 0o600)
	defer os.Remove(filepath.Join(dir, "probe"))
	out := mustVeil(t, dir, nil, "inspect", "--json", "probe").stdout
	i := bytes.Index(out, []byte(`"key_id": "`))
	rest := out[i+len(`"key_id": "`):]
	return string(rest[:bytes.IndexByte(rest, '"')])
}

func TestCLIDirectoryTree(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	files := map[string][]byte{}
	for _, rel := range []string{"a.csv", "sub/b.csv", "sub/deeper/c.bin", "empty"} {
		p := filepath.Join(dir, "tree", rel)
		os.MkdirAll(filepath.Dir(p), 0o755)
		n := 5000
		if rel == "empty" {
			n = 0
		}
		files[rel] = writeRandom(t, p, n)
	}
	os.Symlink("a.csv", filepath.Join(dir, "tree", "link"))
	r := mustVeil(t, dir, nil, "encrypt", "-k", "file:k", "-i", "tree", "-o", "sealed")
	if !bytes.Contains(r.stderr, []byte("skipping")) {
		t.Fatalf("symlink not reported as skipped: %s", r.stderr)
	}
	for rel := range files {
		b, err := os.ReadFile(filepath.Join(dir, "sealed", rel))
		if err != nil || !bytes.HasPrefix(b, []byte("VEILSEAL")) {
			t.Fatalf("%s not sealed: %v", rel, err)
		}
	}
	mustVeil(t, dir, nil, "decrypt", "-k", "file:k", "-i", "sealed", "-o", "plain")
	for rel, want := range files {
		got, err := os.ReadFile(filepath.Join(dir, "plain", rel))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s differs after the tree round trip: %v", rel, err)
		}
	}
}

func TestCLITamperedInputLeavesNoPlaintext(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	writeRandom(t, filepath.Join(dir, "in"), 1<<20+5)
	mustVeil(t, dir, nil, "encrypt", "-k", "file:k", "-i", "in", "-o", "in.sealed")
	sealed, _ := os.ReadFile(filepath.Join(dir, "in.sealed"))
	const rec = 64<<10 + 28
	attacks := map[string][]byte{
		"flip":     func() []byte { b := bytes.Clone(sealed); b[len(b)/2] ^= 1; return b }(),
		"truncate": sealed[:len(sealed)-rec],
		"extend":   append(bytes.Clone(sealed), "more"...),
	}
	for name, bad := range attacks {
		os.WriteFile(filepath.Join(dir, name), bad, 0o644)
		r := veil(t, dir, nil, "decrypt", "-k", "file:k", "-i", name, "-o", "out-"+name)
		if r.code != ExitIntegrity {
			t.Fatalf("%s: exit %d, want %d: %s", name, r.code, ExitIntegrity, r.stderr)
		}
		if !bytes.Contains(r.stderr, []byte("offset")) {
			t.Fatalf("%s: error does not name the offset: %s", name, r.stderr)
		}
		if _, err := os.Stat(filepath.Join(dir, "out-"+name)); !os.IsNotExist(err) {
			t.Fatalf("%s: output exists after a failed decrypt", name)
		}
	}
	// An existing output is not touched by a failed decrypt with --force.
	os.WriteFile(filepath.Join(dir, "keep"), []byte("precious"), 0o644)
	if r := veil(t, dir, nil, "decrypt", "-k", "file:k", "-i", "flip", "-o", "keep", "--force"); r.code != ExitIntegrity {
		t.Fatalf("flip --force: exit %d", r.code)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "keep")); string(b) != "precious" {
		t.Fatal("failed decrypt overwrote the existing output")
	}
	assertNoTemps(t, dir)
}

func TestCLIStdoutStopsAtFirstBadSegment(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	plain := writeRandom(t, filepath.Join(dir, "in"), 40*4096)
	mustVeil(t, dir, nil, "encrypt", "-k", "file:k", "--segment-size", "4096", "-i", "in", "-o", "s")
	b, _ := os.ReadFile(filepath.Join(dir, "s"))
	info := mustVeil(t, dir, nil, "inspect", "--json", "s").stdout
	var hlen int
	if i := bytes.Index(info, []byte(`"header_size": `)); i >= 0 {
		rest := info[i+len(`"header_size": `):]
		for _, c := range rest {
			if c < '0' || c > '9' {
				break
			}
			hlen = hlen*10 + int(c-'0')
		}
	}
	const bad = 30
	b[hlen+bad*(4096+28)+100] ^= 0x40
	r := veil(t, dir, b, "decrypt", "-k", "file:k", "-i", "-", "-o", "-")
	if r.code != ExitIntegrity {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if len(r.stdout) > bad*4096 || !bytes.Equal(r.stdout, plain[:len(r.stdout)]) {
		t.Fatalf("stdout carried %d bytes; only authenticated segments before %d may be written", len(r.stdout), bad)
	}
}

func TestCLIRefusesOverwrite(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	writeRandom(t, filepath.Join(dir, "in"), 100)
	os.WriteFile(filepath.Join(dir, "out"), []byte("old"), 0o644)
	r := veil(t, dir, nil, "encrypt", "-k", "file:k", "-i", "in", "-o", "out")
	if r.code != ExitFailure || !bytes.Contains(r.stderr, []byte("veil: hint: use --force")) {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "out")); string(b) != "old" {
		t.Fatal("existing output overwritten without --force")
	}
	mustVeil(t, dir, nil, "encrypt", "-k", "file:k", "-i", "in", "-o", "out", "--force")
	if b, _ := os.ReadFile(filepath.Join(dir, "out")); !bytes.HasPrefix(b, []byte("VEILSEAL")) {
		t.Fatal("--force did not replace the output")
	}
}

func TestCLIBadInput(t *testing.T) {
	dir := t.TempDir()
	mustVeil(t, dir, nil, "gen-key", "k")
	os.WriteFile(filepath.Join(dir, "plain.csv"), []byte("name,age\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "notakey"), []byte("hello"), 0o644)
	cases := []struct {
		args []string
		code int
		want string
	}{
		{[]string{"decrypt", "-k", "file:k", "-i", "plain.csv", "-o", "x"}, ExitFailure, "not a sealed file"},
		{[]string{"decrypt", "-k", "file:k", "-i", "missing", "-o", "x"}, ExitFailure, "no such file"},
		{[]string{"encrypt", "-k", "file:missing.key", "-i", "plain.csv", "-o", "x"}, ExitFailure, "missing.key"},
		{[]string{"encrypt", "-k", "file:notakey", "-i", "plain.csv", "-o", "x"}, ExitFailure, "not a veil key file"},
		{[]string{"encrypt", "-k", "k", "-i", "plain.csv", "-o", "x"}, ExitUsage, "want KIND:REF"},
		{[]string{"encrypt", "-i", "plain.csv", "-o", "x"}, ExitUsage, "no key given"},
		{[]string{"encrypt", "-k", "file:k", "-i", "plain.csv", "-o", "plain.csv"}, ExitUsage, "same path"},
		{[]string{"encrypt", "-k", "file:k", "--segment-size", "1000", "-i", "plain.csv", "-o", "x"}, ExitFailure, "segment size"},
		{[]string{"encrypt", "--bogus"}, ExitUsage, "unknown flag"},
		{[]string{"frobnicate"}, ExitUsage, "unknown command"},
		{[]string{"inspect", "plain.csv"}, ExitFailure, "not a sealed file"},
	}
	for _, c := range cases {
		r := veil(t, dir, nil, c.args...)
		if r.code != c.code || !bytes.Contains(r.stderr, []byte(c.want)) {
			t.Errorf("veil %v: exit %d, stderr %q; want exit %d mentioning %q", c.args, r.code, r.stderr, c.code, c.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "x")); !os.IsNotExist(err) {
		t.Fatal("a failed command left output behind")
	}
	assertNoTemps(t, dir)
}

func TestCLIDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		veiltest.Skip(t, "mounting a small tmpfs needs root")
	}
	dir := t.TempDir()
	small := filepath.Join(dir, "small")
	os.Mkdir(small, 0o755)
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", small).CombinedOutput(); err != nil {
		veiltest.Skip(t, "cannot mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { syscall.Unmount(small, 0) })
	mustVeil(t, dir, nil, "gen-key", "k")
	writeRandom(t, filepath.Join(dir, "big"), 3<<20)
	os.WriteFile(filepath.Join(small, "keep"), []byte("precious"), 0o644)
	r := veil(t, dir, nil, "encrypt", "-k", "file:k", "-i", "big", "-o", "small/big.sealed")
	if r.code != ExitFailure || !bytes.Contains(r.stderr, []byte("no space left")) {
		t.Fatalf("exit %d: %s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(small, "big.sealed")); !os.IsNotExist(err) {
		t.Fatal("partial output left on a full disk")
	}
	if b, _ := os.ReadFile(filepath.Join(small, "keep")); string(b) != "precious" {
		t.Fatal("existing file damaged")
	}
	assertNoTemps(t, small)
}

func TestCLIHelpAndVersion(t *testing.T) {
	dir := t.TempDir()
	help := mustVeil(t, dir, nil, "--help").stdout
	for _, want := range []string{"Data:", "encrypt", "decrypt", "inspect", "gen-key"} {
		if !bytes.Contains(help, []byte(want)) {
			t.Fatalf("--help lacks %q:\n%s", want, help)
		}
	}
	v := mustVeil(t, dir, nil, "version").stdout
	if !bytes.Contains(v, []byte("go1.")) || !bytes.Contains(v, []byte("commit")) {
		t.Fatalf("version output: %s", v)
	}
}
