package fusefs

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/seal"
)

// hostPlain opens the host's copy of a mount file with seal.Open, as a
// later mount would: it must be committed, whole and authentic.
func hostPlain(t *testing.T, path string, k *seal.FileKey) []byte {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	f, err := seal.Open(memFile(raw), k, nil)
	if err != nil {
		t.Fatalf("host copy of %s: %v", path, err)
	}
	got := make([]byte, f.Size())
	if _, err := f.ReadAt(got, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	return got
}

// With the kernel's write-back cache, writes reach the mount later and in
// other pieces than the program wrote them: close(2) must still leave the
// file committed on the host, appends must land at the end, and what the
// mount wrote back must be as protected as before (a replayed record, a cut
// trailer and a record of another file are all errors).
func TestSealedMountWriteBackCache(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	opts := SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}, WriteBackCache: true}
	m := mountSealed(t, src, opts)
	seg := DefaultSealedSegmentSize

	// Random 4 KiB writes into a file, then close: committed on the host
	// without an unmount or fsync.
	v1 := rnd(8 * seg)
	p := filepath.Join(m.dir, "f")
	if err := os.WriteFile(p, v1, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	want := bytes.Clone(v1)
	for i, off := range []int{5 * 4096, 0, 17 * 4096, 3*4096 + 100, 31 * 4096} {
		piece := rnd(4096 - i)
		if _, err := f.WriteAt(piece, int64(off)); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], piece)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hostPlain(t, filepath.Join(src, "f"), k), want) {
		t.Fatal("after close(2), the host copy does not hold every write")
	}
	if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back through the mount differs: %v", err)
	}

	// O_APPEND through two descriptors, and a positioned write between.
	a := filepath.Join(m.dir, "log")
	var wantLog []byte
	for i := 0; i < 3; i++ {
		fa, err := os.OpenFile(a, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		line := append(bytes.Repeat([]byte{'a' + byte(i)}, 5000+i), '\n')
		if _, err := fa.Write(line); err != nil {
			t.Fatal(err)
		}
		wantLog = append(wantLog, line...)
		if i == 1 {
			fb, err := os.OpenFile(a, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := fb.WriteAt([]byte("XY"), 10); err != nil {
				t.Fatal(err)
			}
			copy(wantLog[10:], "XY")
			fb.Close()
		}
		if err := fa.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if got := hostPlain(t, filepath.Join(src, "log"), k); !bytes.Equal(got, wantLog) {
		t.Fatalf("appended file on the host: %d bytes, want %d (or content differs)", len(got), len(wantLog))
	}

	// Attacks on what the write-back wrote, read by a fresh mount (no
	// page cache): an older version of record 0 put back, the trailer cut,
	// and a record of another file of the same key.
	old, err := os.ReadFile(filepath.Join(src, "f"))
	if err != nil {
		t.Fatal(err)
	}
	f, err = os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(rnd(4096), 0); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.WriteFile(filepath.Join(m.dir, "g"), rnd(8*seg), 0o600); err != nil {
		t.Fatal(err)
	}
	m.unmount()
	cur, _ := os.ReadFile(filepath.Join(src, "f"))
	g, _ := os.ReadFile(filepath.Join(src, "g"))
	h, err := seal.ParseHeader(bytes.NewReader(cur))
	if err != nil {
		t.Fatal(err)
	}
	rec0, rec := h.Len(), seg+28
	replayed := bytes.Clone(cur)
	copy(replayed[rec0:rec0+rec], old[rec0:rec0+rec])
	spliced := bytes.Clone(cur)
	gh, _ := seal.ParseHeader(bytes.NewReader(g))
	copy(spliced[rec0+rec:rec0+2*rec], g[gh.Len()+rec:gh.Len()+2*rec])
	for name, data := range map[string][]byte{
		"replayed": replayed,
		"cut":      cur[:len(cur)-88],
		"spliced":  spliced,
	} {
		os.WriteFile(filepath.Join(src, "f"), data, 0o600)
		m2 := mountSealed(t, src, opts)
		_, err := os.ReadFile(filepath.Join(m2.dir, "f"))
		if !errors.Is(err, syscall.EIO) {
			t.Errorf("%s record of a written-back file: %v, want EIO", name, err)
		}
		m2.unmount()
	}
}

// A write-only descriptor writes around the page cache (direct I/O): a
// reader that has the old data cached must see the new data afterwards,
// mapped or read; and what reached the host is sealed and authentic.
func TestSealedMountWriteOnlyIsCoherent(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	p := filepath.Join(m.dir, "f")
	v1 := rnd(300_000)
	if err := os.WriteFile(p, v1, 0o600); err != nil { // os.WriteFile opens O_WRONLY
		t.Fatal(err)
	}
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make([]byte, len(v1))
	if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, v1) {
		t.Fatalf("first read: %v", err)
	}
	mapped, err := syscall.Mmap(int(r.Fd()), 0, len(v1), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Munmap(mapped)
	if !bytes.Equal(mapped, v1) {
		t.Fatal("mapped file differs")
	}
	want := bytes.Clone(v1)
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, off := range []int{0, 4096, 70_000, 299_000} {
		piece := rnd(1000)
		if _, err := w.WriteAt(piece, int64(off)); err != nil {
			t.Fatal(err)
		}
		copy(want[off:], piece)
		if _, err := r.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("after a write-only write at %d, a reader sees old data (%v)", off, err)
		}
		if !bytes.Equal(mapped, want) {
			t.Fatalf("after a write-only write at %d, the mapping shows old data", off)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(hostPlain(t, filepath.Join(src, "f"), k), want) {
		t.Fatal("host copy differs after close")
	}
}
