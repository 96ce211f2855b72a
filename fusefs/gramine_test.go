package fusefs

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/gramine/pf"
	"github.com/veil-tee/veil/internal/veiltest"
)

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

func mountGramine(t *testing.T, src string, opts GraminePFOptions) *mount {
	t.Helper()
	needFUSE(t)
	dir := t.TempDir()
	lb := &logBuf{}
	opts.Source = src
	opts.Logger = slog.New(slog.NewTextHandler(lb, nil))
	srv, err := MountGraminePF(dir, opts)
	if err != nil {
		t.Fatal(err)
	}
	once := sync.Once{}
	m := &mount{dir: dir, src: src, log: lb}
	m.unmount = func() {
		once.Do(func() {
			if err := srv.Unmount(); err != nil {
				t.Errorf("unmount: %v", err)
			}
			srv.Wait()
			if mounted(dir) {
				t.Errorf("%s still mounted", dir)
			}
		})
	}
	t.Cleanup(m.unmount)
	return m
}

// openBacking opens a backing file with package pf, as Gramine would.
func openBacking(t *testing.T, p string, key pf.Key, bound string) ([]byte, error) {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	f, err := pf.Open(bytes.NewReader(b), int64(len(b)), key, bound, nil)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make([]byte, f.Size())
	if _, err := f.ReadAt(out, 0); err != nil && f.Size() > 0 {
		return nil, err
	}
	return out, nil
}

// TestGraminePFMount mounts a directory of files written by Gramine, as a
// Gramine encrypted mount with uri "file:data" would see it: reads them,
// changes one, creates and renames files that stay readable under Gramine's
// path binding, and refuses files moved or modified on the host.
func TestGraminePFMount(t *testing.T) {
	ref := gramineRefDir(t)
	kb, err := os.ReadFile(filepath.Join(ref, "wrap-key.bin"))
	if err != nil {
		t.Fatal(err)
	}
	key, err := pf.ParseKey(kb)
	if err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	names := []string{"f00000000", "f00000001", "f00004096", "f00397312", "f01200000"}
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(ref, n+".pf"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src, n+".pf"), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m := mountGramine(t, src, GraminePFOptions{Key: key, PFPath: "data"})

	for _, n := range names {
		want, _ := os.ReadFile(filepath.Join(ref, n+".plain"))
		got, err := os.ReadFile(filepath.Join(m.dir, n+".pf"))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("%s through the mount: %v (%d bytes, want %d)", n, err, len(got), len(want))
		}
		if fi, err := os.Stat(filepath.Join(m.dir, n+".pf")); err != nil || fi.Size() != int64(len(want)) {
			t.Fatalf("%s: stat size %v %v", n, fi.Size(), err)
		}
	}

	// Change a Gramine-written file in place, across a node boundary.
	want, _ := os.ReadFile(filepath.Join(ref, "f01200000.plain"))
	f, err := os.OpenFile(filepath.Join(m.dir, "f01200000.pf"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	patch := bytes.Repeat([]byte("veil!"), 2000)
	copy(want[400000:], patch)
	if _, err := f.WriteAt(patch, 400000); err != nil {
		t.Fatal(err)
	}
	f.Close()

	// Create a file: Gramine must find it bound to data/out/result.csv.
	os.Mkdir(filepath.Join(m.dir, "out"), 0o755)
	result := bytes.Repeat([]byte("id,score\n1,0.5\n"), 30000)
	if err := os.WriteFile(filepath.Join(m.dir, "out", "result.csv"), result, 0o644); err != nil {
		t.Fatal(err)
	}
	// Rename a file: it is rebound to its new path.
	if err := os.Rename(filepath.Join(m.dir, "f00004096.pf"), filepath.Join(m.dir, "out", "moved.pf")); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(m.dir, "out"), filepath.Join(m.dir, "out2")); !errors.Is(err, syscall.EXDEV) {
		t.Fatalf("renaming a directory: %v, want EXDEV", err)
	}
	m.unmount()

	if got, err := openBacking(t, filepath.Join(src, "f01200000.pf"), key, "data/f01200000.pf"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("changed file read outside the mount: %v", err)
	}
	if got, err := openBacking(t, filepath.Join(src, "out", "result.csv"), key, "data/out/result.csv"); err != nil || !bytes.Equal(got, result) {
		t.Fatalf("created file read outside the mount: %v", err)
	}
	moved, _ := os.ReadFile(filepath.Join(ref, "f00004096.plain"))
	if got, err := openBacking(t, filepath.Join(src, "out", "moved.pf"), key, "data/out/moved.pf"); err != nil || !bytes.Equal(got, moved) {
		t.Fatalf("renamed file under its new path: %v", err)
	}
	if _, err := openBacking(t, filepath.Join(src, "out", "moved.pf"), key, "data/f00004096.pf"); !errors.Is(err, pf.ErrIntegrity) {
		t.Fatalf("renamed file under its old path: %v", err)
	}

	// The host moves one file over another and modifies a third.
	if err := os.Rename(filepath.Join(src, "f00000001.pf"), filepath.Join(src, "swapped.pf")); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(filepath.Join(src, "f00397312.pf"))
	b[50*4096+9] ^= 1
	os.WriteFile(filepath.Join(src, "f00397312.pf"), b, 0o600)
	m = mountGramine(t, src, GraminePFOptions{Key: key, PFPath: "data"})
	if _, err := os.ReadFile(filepath.Join(m.dir, "swapped.pf")); !errors.Is(err, syscall.EACCES) {
		t.Fatalf("file moved on the host: %v, want EACCES", err)
	}
	if _, err := os.ReadFile(filepath.Join(m.dir, "f00397312.pf")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("file modified on the host: %v, want EIO", err)
	}
	if got, err := os.ReadFile(filepath.Join(m.dir, "f00000000.pf")); err != nil || len(got) != 0 {
		t.Fatalf("untouched file: %v", err)
	}
	m.unmount()
	if log := m.log.String(); !strings.Contains(log, "bound to another path") || !strings.Contains(log, "integrity") {
		t.Fatalf("refusals not logged:\n%s", log)
	}
}

// TestGraminePFMountReadOnlyAndWrongKey: a read-only mount refuses writes;
// a wrong key opens nothing.
func TestGraminePFMountReadOnlyAndWrongKey(t *testing.T) {
	src := t.TempDir()
	key := pf.Key{9}
	of, _ := os.Create(filepath.Join(src, "a.txt"))
	f, err := pf.Create(of, key, "enc/a.txt", nil)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("hello"), 0)
	f.Close()
	of.Close()
	m := mountGramine(t, src, GraminePFOptions{Key: key, PFPath: "enc", ReadOnly: true})
	if got, err := os.ReadFile(filepath.Join(m.dir, "a.txt")); err != nil || string(got) != "hello" {
		t.Fatalf("read: %q %v", got, err)
	}
	if err := os.WriteFile(filepath.Join(m.dir, "b.txt"), []byte("x"), 0o644); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write to a read-only mount: %v", err)
	}
	m.unmount()
	m = mountGramine(t, src, GraminePFOptions{Key: pf.Key{8}, PFPath: "enc"})
	if _, err := os.ReadFile(filepath.Join(m.dir, "a.txt")); !errors.Is(err, syscall.EIO) {
		t.Fatalf("wrong key: %v, want EIO", err)
	}
}
