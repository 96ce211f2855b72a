package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/veil-tee/veil/internal/veiltest"
)

// gramineRefDir finds the protected files written by Gramine's own library
// (shared/testdata/gramine-pf beside the repository checkout).
func gramineRefDir(t *testing.T) string {
	t.Helper()
	dir, _ := filepath.Abs(".")
	for range 6 {
		dir = filepath.Dir(dir)
		p := filepath.Join(dir, "shared", "testdata", "gramine-pf")
		if _, err := os.Stat(filepath.Join(p, "wrap-key.bin")); err == nil {
			return p
		}
	}
	veiltest.Skip(t, "Gramine reference files not found: want ../shared/testdata/gramine-pf beside the repository checkout")
	return ""
}

func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestCLIDecryptGramineReference opens a file written by Gramine where it
// was bound, refuses it when moved, with a wrong key or modified, and opens
// it when moved with --pf-path.
func TestCLIDecryptGramineReference(t *testing.T) {
	ref := gramineRefDir(t)
	dir := t.TempDir()
	copyFile(t, filepath.Join(ref, "wrap-key.bin"), filepath.Join(dir, "wrap.key"))
	copyFile(t, filepath.Join(ref, "f00040000.pf"), filepath.Join(dir, "data", "f00040000.pf"))
	want, err := os.ReadFile(filepath.Join(ref, "f00040000.plain"))
	if err != nil {
		t.Fatal(err)
	}
	mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "data/f00040000.pf", "-o", "out")
	if got, _ := os.ReadFile(filepath.Join(dir, "out")); !bytes.Equal(got, want) {
		t.Fatal("decrypted plaintext differs from Gramine's")
	}
	r := mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "./data//f00040000.pf", "-o", "-")
	if !bytes.Equal(r.stdout, want) {
		t.Fatal("decrypted plaintext on stdout differs (normalized path)")
	}

	copyFile(t, filepath.Join(ref, "f00040000.pf"), filepath.Join(dir, "moved.pf"))
	r = veil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "moved.pf", "-o", "out2")
	if r.code != ExitIntegrity || !strings.Contains(string(r.stderr), "--pf-path data/f00040000.pf") {
		t.Fatalf("moved file: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out2")); err == nil {
		t.Fatal("a refused file left output behind")
	}
	mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "--pf-path", "data/f00040000.pf", "-i", "moved.pf", "-o", "out2")

	bad := bytes.Repeat([]byte{0x0f}, 16)
	os.WriteFile(filepath.Join(dir, "bad.key"), bad, 0o600)
	if r := veil(t, dir, nil, "decrypt", "--key", "file:bad.key", "-i", "data/f00040000.pf", "-o", "out3"); r.code != ExitIntegrity {
		t.Fatalf("wrong key: exit %d\n%s", r.code, r.stderr)
	}

	b, _ := os.ReadFile(filepath.Join(dir, "data", "f00040000.pf"))
	b[5*4096+7] ^= 1
	os.WriteFile(filepath.Join(dir, "data", "f00040000.pf"), b, 0o644)
	if r := veil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "data/f00040000.pf", "-o", "out4"); r.code != ExitIntegrity {
		t.Fatalf("modified data node: exit %d\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dir, "out4")); err == nil {
		t.Fatal("a modified file left plaintext behind")
	}
	assertNoTemps(t, dir)
}

// TestCLIEncryptGraminePF writes a protected file, opens it back, and checks
// the path binding and the key checks.
func TestCLIEncryptGraminePF(t *testing.T) {
	dir := t.TempDir()
	plain := writeRandom(t, filepath.Join(dir, "in"), 500000)
	os.WriteFile(filepath.Join(dir, "wrap.key"), []byte("000102030405060708090a0b0c0d0e0f\n"), 0o600)
	os.MkdirAll(filepath.Join(dir, "enc"), 0o755)
	r := mustVeil(t, dir, nil, "encrypt", "--format", "gramine-pf", "--key", "file:wrap.key", "-i", "in", "-o", "enc/in.pf")
	if !strings.Contains(string(r.stderr), `"enc/in.pf"`) {
		t.Fatalf("encrypt does not say which path it bound: %s", r.stderr)
	}
	b, _ := os.ReadFile(filepath.Join(dir, "enc", "in.pf"))
	if !bytes.HasPrefix(b, []byte("GRAFS_PF\x02\x00")) || len(b)%4096 != 0 {
		t.Fatalf("output does not look like a protected file: %q", b[:10])
	}
	if r := veil(t, dir, nil, "inspect", "enc/in.pf"); r.code == 0 || !strings.Contains(string(r.stderr), "Gramine protected file") {
		t.Fatalf("inspect of a protected file: exit %d\n%s", r.code, r.stderr)
	}
	mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "enc/in.pf", "-o", "out")
	if got, _ := os.ReadFile(filepath.Join(dir, "out")); !bytes.Equal(got, plain) {
		t.Fatal("round trip differs")
	}
	// --pf-path binds another path; from standard input too.
	mustVeil(t, dir, plain, "encrypt", "--format", "gramine-pf", "--key", "file:wrap.key", "--pf-path", "/srv/data/x.pf", "-i", "-", "-o", "x.pf")
	if r := veil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "x.pf", "-o", "o2"); r.code != ExitIntegrity {
		t.Fatalf("opened under a path it is not bound to: exit %d", r.code)
	}
	r = mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "--pf-path", "/srv/data/x.pf", "-i", "x.pf", "-o", "-")
	if !bytes.Equal(r.stdout, plain) {
		t.Fatal("stdin round trip differs")
	}
	// A veil key is not a Gramine wrap key; stdout is not a file.
	mustVeil(t, dir, nil, "gen-key", "veil.key")
	if r := veil(t, dir, nil, "encrypt", "--format", "gramine-pf", "--key", "file:veil.key", "-i", "in", "-o", "y.pf"); r.code == 0 || !strings.Contains(string(r.stderr), "hint:") {
		t.Fatalf("veil key as wrap key: exit %d\n%s", r.code, r.stderr)
	}
	if r := veil(t, dir, nil, "encrypt", "--format", "gramine-pf", "--key", "file:wrap.key", "-i", "in", "-o", "-"); r.code != ExitUsage {
		t.Fatalf("-o -: exit %d", r.code)
	}
	if r := veil(t, dir, nil, "encrypt", "--format", "nope", "--key", "file:wrap.key", "-i", "in", "-o", "z"); r.code != ExitUsage {
		t.Fatalf("--format nope: exit %d", r.code)
	}
	assertNoTemps(t, dir)
}

// TestCLIGraminePFTree writes a directory tree as a Gramine encrypted
// directory and opens it back, where it was written and after a move.
func TestCLIGraminePFTree(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "wrap.key"), bytes.Repeat([]byte{7}, 16), 0o600)
	os.MkdirAll(filepath.Join(dir, "plain", "sub"), 0o755)
	a := writeRandom(t, filepath.Join(dir, "plain", "a.bin"), 5000)
	b := writeRandom(t, filepath.Join(dir, "plain", "sub", "b.bin"), 400000)
	mustVeil(t, dir, nil, "encrypt", "--format", "gramine-pf", "--key", "file:wrap.key", "-i", "plain", "-o", "enc")
	mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "enc", "-o", "out")
	if got, _ := os.ReadFile(filepath.Join(dir, "out", "a.bin")); !bytes.Equal(got, a) {
		t.Fatal("a.bin differs")
	}
	if got, _ := os.ReadFile(filepath.Join(dir, "out", "sub", "b.bin")); !bytes.Equal(got, b) {
		t.Fatal("sub/b.bin differs")
	}
	// Each file is bound to enc/NAME, as in a Gramine mount of uri "file:enc".
	r := mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "--pf-path", "enc/sub/b.bin", "-i", "enc/sub/b.bin", "-o", "-")
	if !bytes.Equal(r.stdout, b) {
		t.Fatal("single file of the tree differs")
	}
	if err := os.Rename(filepath.Join(dir, "enc"), filepath.Join(dir, "moved")); err != nil {
		t.Fatal(err)
	}
	if r := veil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "-i", "moved", "-o", "out2"); r.code != ExitIntegrity || !strings.Contains(string(r.stderr), "enc/") {
		t.Fatalf("moved tree: exit %d\n%s", r.code, r.stderr)
	}
	mustVeil(t, dir, nil, "decrypt", "--key", "file:wrap.key", "--pf-path", "enc", "-i", "moved", "-o", "out3")
	if got, _ := os.ReadFile(filepath.Join(dir, "out3", "sub", "b.bin")); !bytes.Equal(got, b) {
		t.Fatal("moved tree with --pf-path differs")
	}
}
