package fusefs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/seal"
)

// writeFiles writes name -> content through a mount.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for rel, data := range files {
		p := filepath.Join(dir, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

// wantRead reads rel through a mount and compares.
func wantRead(t *testing.T, dir, rel, want string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(dir, rel))
	if err != nil || string(got) != want {
		t.Fatalf("%s: read %q, %v; want %q", rel, got, err, want)
	}
}

// wantRefused reads rel through a fresh mount and wants EIO and a log
// line naming the path the file is bound to.
func wantRefused(t *testing.T, m *mount, rel, boundTo string) {
	t.Helper()
	got, err := os.ReadFile(filepath.Join(m.dir, rel))
	if !errors.Is(err, syscall.EIO) {
		t.Fatalf("%s: read %q, %v; want EIO (the host's substitution was accepted)", rel, got, err)
	}
	if log := m.log.String(); !strings.Contains(log, `bound to`) || !strings.Contains(log, `\"`+boundTo+`\"`) {
		t.Fatalf("%s: the log does not name the path %q the file is bound to:\n%s", rel, boundTo, log)
	}
}

// TestSealedMountHostSwapRefused: with the mount down, the host swaps two
// sealed files of the mount, moves one into a subdirectory, and copies in
// a file of another mount sealed under the same key at the same relative
// path. Each is refused when read, naming the path the file is bound to;
// the files left alone still read.
func TestSealedMountHostSwapRefused(t *testing.T) {
	k := newKey(t)
	src, other := t.TempDir(), t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	writeFiles(t, m.dir, map[string]string{"a.csv": "alice's salary", "b.csv": "bob's salary", "keep.csv": "untouched", "c.csv": "carol", "x.csv": "ours"})
	m.unmount()
	mo := mountSealed(t, other, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}, MountID: seal.MountID("/other")})
	writeFiles(t, mo.dir, map[string]string{"x.csv": "theirs"})
	mo.unmount()

	// The swap.
	a, b := filepath.Join(src, "a.csv"), filepath.Join(src, "b.csv")
	if err := os.Rename(a, a+".tmp"); err != nil {
		t.Fatal(err)
	}
	os.Rename(b, a)
	os.Rename(a+".tmp", b)
	// The move within the mount.
	os.MkdirAll(filepath.Join(src, "sub"), 0o755)
	if err := os.Rename(filepath.Join(src, "c.csv"), filepath.Join(src, "sub", "c.csv")); err != nil {
		t.Fatal(err)
	}
	// The move from another mount under the same key.
	theirs, _ := os.ReadFile(filepath.Join(other, "x.csv"))
	if err := os.WriteFile(filepath.Join(src, "x.csv"), theirs, 0o600); err != nil {
		t.Fatal(err)
	}

	m2 := mountSealed(t, src, SealedOptions{Keys: k})
	wantRefused(t, m2, "a.csv", "b.csv")
	wantRefused(t, m2, "b.csv", "a.csv")
	wantRefused(t, m2, "sub/c.csv", "c.csv")
	wantRefused(t, m2, "x.csv", "x.csv")
	if !strings.Contains(m2.log.String(), "another mount") {
		t.Fatalf("the file from another mount is not reported as such:\n%s", m2.log.String())
	}
	wantRead(t, m2.dir, "keep.csv", "untouched")
}

// TestSealedMountRenameRebinds: renames through the mount — of a file, and
// of a directory with files at two depths — re-bind every file, which then
// reads under its new name in this and a later mount; a host copy of the
// renamed file put back under its old name is refused.
func TestSealedMountRenameRebinds(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	writeFiles(t, m.dir, map[string]string{"a.csv": "A", "d/x": "X", "d/e/y": "Y"})
	stored, _ := os.ReadFile(filepath.Join(src, "a.csv"))
	if err := os.Rename(filepath.Join(m.dir, "a.csv"), filepath.Join(m.dir, "renamed.csv")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(m.dir, "d"), filepath.Join(m.dir, "moved")); err != nil {
		t.Fatal(err)
	}
	wantRead(t, m.dir, "renamed.csv", "A")
	// Re-binding rewrote the place block alone: same length, same data.
	after, _ := os.ReadFile(filepath.Join(src, "renamed.csv"))
	h, err := seal.ParseHeader(bytes.NewReader(after))
	if err != nil || len(after) != len(stored) || !bytes.Equal(after[h.Len():], stored[h.Len():]) || h.Place == nil || h.Place.Path != "renamed.csv" {
		t.Fatalf("the renamed file was not re-bound in place: %v %+v", err, h)
	}
	m.unmount()
	m2 := mountSealed(t, src, SealedOptions{Keys: k})
	wantRead(t, m2.dir, "renamed.csv", "A")
	wantRead(t, m2.dir, "moved/x", "X")
	wantRead(t, m2.dir, "moved/e/y", "Y")
	m2.unmount()
	// The host puts the renamed file back under its old name.
	if err := os.WriteFile(filepath.Join(src, "a.csv"), after, 0o600); err != nil {
		t.Fatal(err)
	}
	m3 := mountSealed(t, src, SealedOptions{Keys: k})
	wantRefused(t, m3, "a.csv", "renamed.csv")
}

// TestSealedMountRenameEdges: a file the host swapped in is not re-bound
// by a rename (it stays refused); a new path longer than the place block
// holds is EXDEV (mv copies instead) and leaves the file where it was; and
// a version 1 (unbound) file from before binding reads and renames as it
// always did.
func TestSealedMountRenameEdges(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	writeFiles(t, m.dir, map[string]string{"a": "A", "b": "B"})
	m.unmount()
	// The host copies b over a, then the workload renames a.
	bb, _ := os.ReadFile(filepath.Join(src, "b"))
	os.WriteFile(filepath.Join(src, "a"), bb, 0o600)
	var v1 bytes.Buffer
	w, _ := seal.NewWriter(&v1, nil, k)
	w.Write([]byte("old file"))
	w.Close()
	os.WriteFile(filepath.Join(src, "old"), v1.Bytes(), 0o600)

	m2 := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	if err := os.Rename(filepath.Join(m2.dir, "a"), filepath.Join(m2.dir, "c")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("renaming a swapped-in file: %v, want EIO", err)
	}
	wantRefused(t, m2, "c", "b")
	long := strings.Repeat("d", 200) + "/" + strings.Repeat("e", 200)
	os.MkdirAll(filepath.Join(m2.dir, filepath.Dir(long)), 0o755)
	if err := os.Rename(filepath.Join(m2.dir, "b"), filepath.Join(m2.dir, long)); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("rename to a %d-byte path: %v, want EXDEV", len(long), err)
	}
	wantRead(t, m2.dir, "b", "B")
	wantRead(t, m2.dir, "old", "old file")
	if err := os.Rename(filepath.Join(m2.dir, "old"), filepath.Join(m2.dir, "older")); err != nil {
		t.Fatal(err)
	}
	wantRead(t, m2.dir, "older", "old file")
}
