package seal

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// One test per attack on the stored bytes. Each tampered file must be
// rejected both by the streaming Reader and by random access (Open + reads).

// detected reports whether both ways of opening sealed reject it, and the
// streaming error.
func checkDetected(t *testing.T, what string, sealed []byte, u KeyUnwrapper) error {
	t.Helper()
	_, serr := openBytes(sealed, u)
	if serr == nil {
		t.Fatalf("%s: streaming open accepted tampered file", what)
	}
	var rerr error
	f, err := Open(memStorage(sealed), u, nil)
	if err != nil {
		rerr = err
	} else {
		buf := make([]byte, f.Size())
		_, rerr = f.ReadAt(buf, 0)
		if rerr == io.EOF && f.Size() == 0 {
			rerr = nil
		}
	}
	if rerr == nil {
		t.Fatalf("%s: random access accepted tampered file", what)
	}
	for _, e := range []error{serr, rerr} {
		if !(errors.Is(e, ErrIntegrity) || errors.Is(e, ErrMalformed) || errors.Is(e, ErrUnsupported) || errors.Is(e, ErrNotSealed) || errors.Is(e, ErrWrongKey)) {
			t.Fatalf("%s: unexpected error kind: %v", what, e)
		}
	}
	return serr
}

// wantIntegrityAt checks err is an IntegrityError; it returns its offset.
func wantIntegrity(t *testing.T, what string, err error) int64 {
	t.Helper()
	var ie *IntegrityError
	if !errors.As(err, &ie) {
		t.Fatalf("%s: got %v, want an IntegrityError", what, err)
	}
	return ie.Offset
}

func fixture(t *testing.T, segs float64) (*FileKey, []byte, []byte, layout) {
	k := testKey(t)
	plain := randBytes(int(segs * testSeg))
	sealed := sealBytes(t, plain, &Options{SegmentSize: testSeg}, k)
	return k, plain, sealed, layout{headerLen: int64(headerLenOf(t, sealed)), segSize: testSeg}
}

func TestAttackBitFlips(t *testing.T) {
	k, _, sealed, lay := fixture(t, 2.5)
	step := 1
	if testing.Short() {
		step = 13
	}
	for pos := 0; pos < len(sealed); pos += step {
		for _, bit := range []byte{0x01, 0x80} {
			bad := append([]byte(nil), sealed...)
			bad[pos] ^= bit
			err := checkDetected(t, "flip", bad, k)
			if int64(pos) >= lay.headerLen {
				off := wantIntegrity(t, "flip", err)
				if off > int64(pos) {
					t.Fatalf("flip at %d reported at later offset %d", pos, off)
				}
			}
		}
	}
}

func TestAttackTruncation(t *testing.T) {
	k, _, sealed, lay := fixture(t, 3.5)
	cuts := []int64{int64(len(sealed)) - 1, int64(len(sealed)) - commitLen, lay.tableOff(int64(3.5 * testSeg)), lay.headerLen, lay.headerLen + 5}
	for i := int64(1); i <= 3; i++ { // exactly at each segment boundary
		cuts = append(cuts, lay.recordOff(i))
	}
	for _, c := range cuts {
		err := checkDetected(t, "truncate", sealed[:c], k)
		wantIntegrity(t, "truncate", err)
	}
}

func TestAttackTruncateWholeSegmentsAndFixTrailer(t *testing.T) {
	// Drop the last full segment but keep a trailer: the commit binds the size.
	k, _, sealed, lay := fixture(t, 3)
	trailer := sealed[lay.tableOff(3*testSeg):]
	bad := append(append([]byte(nil), sealed[:lay.recordOff(2)]...), trailer...)
	wantIntegrity(t, "drop segment", checkDetected(t, "drop segment", bad, k))
}

func TestAttackExtension(t *testing.T) {
	k, _, sealed, lay := fixture(t, 2)
	for _, extra := range [][]byte{{0}, randBytes(100), sealed[lay.recordOff(0):lay.recordOff(1)]} {
		bad := append(append([]byte(nil), sealed...), extra...)
		wantIntegrity(t, "extend", checkDetected(t, "extend", bad, k))
	}
	// Extension inserted before the trailer (a full extra record).
	end := lay.tableOff(2 * testSeg)
	bad := append(append(append([]byte(nil), sealed[:end]...), sealed[lay.recordOff(0):lay.recordOff(1)]...), sealed[end:]...)
	wantIntegrity(t, "insert record", checkDetected(t, "insert record", bad, k))
}

func TestAttackReorderSegments(t *testing.T) {
	k, _, sealed, lay := fixture(t, 3)
	bad := append([]byte(nil), sealed...)
	r0 := append([]byte(nil), sealed[lay.recordOff(0):lay.recordOff(1)]...)
	r1 := append([]byte(nil), sealed[lay.recordOff(1):lay.recordOff(2)]...)
	copy(bad[lay.recordOff(0):], r1)
	copy(bad[lay.recordOff(1):], r0)
	off := wantIntegrity(t, "reorder", checkDetected(t, "reorder", bad, k))
	if off != lay.recordOff(0) {
		t.Fatalf("reorder reported at %d, want %d", off, lay.recordOff(0))
	}
}

func TestAttackSpliceSegmentFromOtherFile(t *testing.T) {
	k, _, a, lay := fixture(t, 3)
	b := sealBytes(t, randBytes(3*testSeg), &Options{SegmentSize: testSeg}, k) // same key, same layout
	bad := append([]byte(nil), a...)
	copy(bad[lay.recordOff(1):lay.recordOff(2)], b[lay.recordOff(1):lay.recordOff(2)])
	off := wantIntegrity(t, "splice segment", checkDetected(t, "splice segment", bad, k))
	if off != lay.recordOff(1) {
		t.Fatalf("splice reported at %d, want %d", off, lay.recordOff(1))
	}
	// The other file's whole table and trailer too.
	copy(bad[lay.tableOff(3*testSeg):], b[lay.tableOff(3*testSeg):])
	wantIntegrity(t, "splice trailer", checkDetected(t, "splice trailer", bad, k))
}

func TestAttackSpliceHeaderFromOtherFile(t *testing.T) {
	k, _, a, lay := fixture(t, 2)
	b := sealBytes(t, randBytes(2*testSeg), &Options{SegmentSize: testSeg}, k)
	bad := append(append([]byte(nil), b[:lay.headerLen]...), a[lay.headerLen:]...)
	wantIntegrity(t, "splice header", checkDetected(t, "splice header", bad, k))
}

func TestAttackSegmentRollback(t *testing.T) {
	k := testKey(t)
	st := memStorage(nil)
	f, err := Create(st, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(bytes.Repeat([]byte("old!"), testSeg), 0) // 4 segments
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	lay := f.lay
	oldRec := append([]byte(nil), st.b[lay.recordOff(1):lay.recordOff(2)]...)
	f.WriteAt(bytes.Repeat([]byte("new!"), 10), testSeg+100)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), st.b...)
	copy(bad[lay.recordOff(1):], oldRec) // a valid, older version of segment 1
	off := wantIntegrity(t, "rollback", checkDetected(t, "rollback", bad, k))
	if off != lay.recordOff(1) {
		t.Fatalf("rollback reported at %d, want %d", off, lay.recordOff(1))
	}
}

func TestTornWriteDetected(t *testing.T) {
	k := testKey(t)
	st := memStorage(nil)
	f, err := Create(st, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt(randBytes(3*testSeg), 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	// An in-place write reaches the storage (the cache moves on) but the
	// process dies before Sync: the stored bytes are what a crash leaves.
	f.WriteAt([]byte("torn"), 10)
	f.ReadAt(make([]byte, 1), 2*testSeg)
	writtenBehind(t, f)
	crashed := append([]byte(nil), st.b...)
	wantIntegrity(t, "torn in-place", checkDetected(t, "torn in-place", crashed, k))

	// A torn append: records past the old end, no new trailer.
	f.WriteAt(randBytes(2*testSeg), 3*testSeg)
	f.ReadAt(make([]byte, 1), 0)
	writtenBehind(t, f)
	crashed = append([]byte(nil), st.b...)
	wantIntegrity(t, "torn append", checkDetected(t, "torn append", crashed, k))

	// After Sync the file is whole again.
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := openBytes(st.b, k); err != nil {
		t.Fatalf("after sync: %v", err)
	}
}

// writtenBehind waits until the segment being written behind, if any, is in
// the storage, as it is a moment after a crash would have left it.
func writtenBehind(t *testing.T, f *File) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.settle(); err != nil {
		t.Fatal(err)
	}
}
