package fusefs

import (
	"bytes"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/veil-tee/veil/seal"
)

// TestSealedMountWriteBehind: with the default segment size, aligned 4 KiB
// writes (whole segments), unaligned small writes and 1 MiB runs read back
// through the server (O_DIRECT, past the kernel's cache) before any
// commit; fsync(2) leaves a committed sealed file on the host; close and a
// fresh mount give the same content.
func TestSealedMountWriteBehind(t *testing.T) {
	k := newKey(t)
	src := t.TempDir()
	m := mountSealed(t, src, SealedOptions{Keys: k, WriteKeys: []seal.KeyWrapper{k}})
	p := filepath.Join(m.dir, "f")
	f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	model := rnd(4 << 20)
	for off := 0; off < len(model); off += 1 << 20 {
		if _, err := f.WriteAt(model[off:off+1<<20], int64(off)); err != nil {
			t.Fatal(err)
		}
	}
	direct, err := os.OpenFile(p, os.O_RDONLY|syscall.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	rng := mrand.New(mrand.NewPCG(5, 6))
	for step := 0; step < 200; step++ {
		var off int64
		var data []byte
		if step%2 == 0 {
			off, data = rng.Int64N(int64(len(model))/4096)*4096, rnd(4096)
		} else {
			off, data = rng.Int64N(int64(len(model))-100), rnd(1+rng.IntN(100))
		}
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], data)
		// Read back a page around the write and one elsewhere, through
		// the server: the segment written is in the write-behind or the
		// cache.
		for _, at := range []int64{off &^ 4095, rng.Int64N(int64(len(model))/4096) * 4096} {
			got := make([]byte, 4096)
			if _, err := direct.ReadAt(got, at); err != nil {
				t.Fatalf("step %d: reading at %d: %v", step, at, err)
			}
			if !bytes.Equal(got, model[at:at+4096]) {
				t.Fatalf("step %d: read at %d differs from what was written", step, at)
			}
		}
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// After fsync the host file is a complete sealed file with the
	// content written, even though the file is still open.
	host, err := os.Open(filepath.Join(src, "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	sf, err := seal.Open(host, k, nil)
	if err != nil {
		t.Fatalf("host file after fsync: %v", err)
	}
	if sf.Header().SegmentSize != DefaultSealedSegmentSize {
		t.Fatalf("segment size %d, want %d", sf.Header().SegmentSize, DefaultSealedSegmentSize)
	}
	got := make([]byte, len(model))
	if _, err := sf.ReadAt(got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("host file after fsync: %v (equal %v)", err, bytes.Equal(got, model))
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	direct.Close()
	m.unmount()
	m2 := mountSealed(t, src, SealedOptions{Keys: k})
	if got, err := os.ReadFile(filepath.Join(m2.dir, "f")); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after remount: %v (equal %v)", err, bytes.Equal(got, model))
	}
}
