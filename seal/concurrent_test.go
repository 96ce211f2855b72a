package seal

import (
	"bytes"
	"crypto/rand"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// TestFileConcurrentReadAfterWrite: one File shared by a writer, which
// reads back every range right after writing it, and readers reading the
// whole file at the same time (as the sealed mount shares one File between
// all handles of a file). Every read-back returns what was just written,
// no read fails, and after Close the file opens to the writer's model.
// Run under -race.
func TestFileConcurrentReadAfterWrite(t *testing.T) {
	k, err := GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "f")
	osf, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Create(osf, &Options{SegmentSize: 16 << 10}, k)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	errs := make(chan error, 16)
	var readers sync.WaitGroup
	for range 4 {
		readers.Go(func() {
			buf := make([]byte, 30_000)
			for {
				select {
				case <-done:
					return
				default:
				}
				// The writer only extends the file: a range within the size
				// seen before reading must read whole.
				size := f.Size()
				for off := int64(0); off < size; off += int64(len(buf)) {
					if _, err := f.ReadAt(buf, off); err != nil && off+int64(len(buf)) <= size {
						errs <- fmt.Errorf("read at %d: %w", off, err)
						return
					}
				}
			}
		})
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	var model []byte
	for step := range 400 {
		off := rng.Int64N(int64(len(model)) + 40_000)
		data := make([]byte, 1+rng.IntN(24_000))
		rand.Read(data)
		if _, err := f.WriteAt(data, off); err != nil {
			t.Fatal(err)
		}
		if need := off + int64(len(data)); need > int64(len(model)) {
			model = append(model, make([]byte, need-int64(len(model)))...)
		}
		copy(model[off:], data)
		back := make([]byte, len(data))
		if _, err := f.ReadAt(back, off); err != nil || !bytes.Equal(back, data) {
			t.Fatalf("step %d: read-back of [%d,+%d) differs: %v", step, off, len(data), err)
		}
	}
	close(done)
	readers.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	osf.Close()
	osf, _ = os.Open(p)
	defer osf.Close()
	g, err := Open(osf, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, g.Size())
	if _, err := g.ReadAt(got, 0); err != nil || !bytes.Equal(got, model) {
		t.Fatalf("reopened: %d bytes, %v", len(got), err)
	}
}
