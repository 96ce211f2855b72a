package seal

import (
	"bytes"
	"errors"
	"sync/atomic"
	"testing"
)

// failingStorage fails every WriteAt once armed.
type failingStorage struct {
	memFile
	armed atomic.Bool
}

var errInjected = errors.New("injected write failure")

func (s *failingStorage) WriteAt(p []byte, off int64) (int, error) {
	if s.armed.Load() {
		return 0, errInjected
	}
	return s.memFile.WriteAt(p, off)
}

// TestWriteBehindReadBack: a segment handed to the write-behind reads back
// at once with its new content, takes further writes, and is committed.
func TestWriteBehindReadBack(t *testing.T) {
	k := testKey(t)
	st := memStorage(nil)
	f, err := Create(st, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	model := randBytes(4 * testSeg)
	if _, err := f.WriteAt(model, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 50; i++ {
		off := int64((i*7)%4)*testSeg + int64(i*13)
		p := randBytes(100 + i)
		if _, err := f.WriteAt(p, off); err != nil {
			t.Fatal(err)
		}
		copy(model[off:], p)
		// Move on to another segment: the changed one goes behind ...
		if _, err := f.ReadAt(make([]byte, 1), ((off/testSeg)+1)%4*testSeg); err != nil {
			t.Fatal(err)
		}
		// ... and reads back at once: the range written (from the
		// write-behind's buffer), then the whole file.
		part := make([]byte, len(p))
		if _, err := f.ReadAt(part, off); err != nil || !bytes.Equal(part, p) {
			t.Fatalf("step %d: range read back: %v (equal %v)", i, err, bytes.Equal(part, p))
		}
		got := make([]byte, len(model))
		if _, err := f.ReadAt(got, 0); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, model) {
			t.Fatalf("step %d: read back differs from what was written", i)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := openBytes(st.b, k)
	if err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after close: %v (equal %v)", err, bytes.Equal(got, model))
	}
}

// TestWriteBehindFailureIsSticky: a write-behind that fails makes every
// later call fail, Close included, and nothing of the failed state is
// committed: the stored file still opens to what was last committed.
func TestWriteBehindFailureIsSticky(t *testing.T) {
	k := testKey(t)
	st := &failingStorage{}
	f, err := Create(st, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	old := randBytes(3 * testSeg)
	if _, err := f.WriteAt(old, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Commit(); err != nil {
		t.Fatal(err)
	}
	st.armed.Store(true)
	if _, err := f.WriteAt([]byte("lost"), 10); err != nil {
		t.Fatalf("a write into the cache: %v", err)
	}
	// Moving to segment 2 hands segment 0 to the write-behind, which fails.
	f.WriteAt([]byte("next"), 2*testSeg+10)
	_, werr := f.WriteAt([]byte("more"), testSeg)
	_, rerr := f.ReadAt(make([]byte, 10), 0)
	cerr := f.Commit()
	clerr := f.Close()
	for name, err := range map[string]error{"write": werr, "read": rerr, "commit": cerr, "close": clerr} {
		if !errors.Is(err, errInjected) {
			t.Errorf("%s after a failed write-behind: %v, want the write error", name, err)
		}
	}
	got, err := openBytes(st.b, k)
	if err != nil || !bytes.Equal(got, old) {
		t.Fatalf("stored file: %v (equal to the last commit: %v)", err, bytes.Equal(got, old))
	}
}

// TestWholeSegmentOverwrite: a write that covers a whole segment replaces it
// without reading it, so a damaged segment can be overwritten; a partial
// write to it still reports the damage, and a read of the result gives the
// new content only.
func TestWholeSegmentOverwrite(t *testing.T) {
	k := testKey(t)
	st := memStorage(nil)
	f, err := Create(st, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	model := randBytes(3 * testSeg)
	if _, err := f.WriteAt(model, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	st.b[f.lay.recordOff(1)+nonceLen+5] ^= 1 // damage segment 1
	g, err := Open(st, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.WriteAt([]byte("x"), testSeg+7); err == nil {
		t.Fatal("a partial write over a damaged segment succeeded")
	} else {
		wantIntegrity(t, "partial write", err)
	}
	p := randBytes(testSeg)
	if _, err := g.WriteAt(p, testSeg); err != nil {
		t.Fatalf("overwriting the damaged segment whole: %v", err)
	}
	copy(model[testSeg:], p)
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := openBytes(st.b, k)
	if err != nil || !bytes.Equal(got, model) {
		t.Fatalf("after overwrite: %v (equal %v)", err, bytes.Equal(got, model))
	}
}
