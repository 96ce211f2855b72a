package seal

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

const testSeg = MinSegmentSize // small segments: many boundaries with little data

func testKey(t testing.TB) *FileKey {
	t.Helper()
	k, err := GenerateFileKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

func sealBytes(t testing.TB, plain []byte, opts *Options, keys ...KeyWrapper) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewWriter(&buf, opts, keys...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(plain); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func openBytes(sealed []byte, u KeyUnwrapper) ([]byte, error) {
	r, err := NewReader(bytes.NewReader(sealed), u, nil)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestRoundTripSizes(t *testing.T) {
	k := testKey(t)
	for _, n := range []int{0, 1, testSeg - 1, testSeg, testSeg + 1, 3*testSeg - 7, 3 * testSeg, 64*testSeg + 5} {
		plain := randBytes(n)
		sealed := sealBytes(t, plain, &Options{SegmentSize: testSeg}, k)
		got, err := openBytes(sealed, k)
		if err != nil {
			t.Fatalf("size %d: %v", n, err)
		}
		if !bytes.Equal(got, plain) {
			t.Fatalf("size %d: plaintext differs", n)
		}
		lay := layout{headerLen: int64(bytes.Index(sealed, sealed[:0]) + headerLenOf(t, sealed)), segSize: testSeg}
		if want := lay.fileLen(int64(n)); int64(len(sealed)) != want {
			t.Fatalf("size %d: sealed length %d, layout says %d", n, len(sealed), want)
		}
		// Random access agrees with streaming.
		f, err := Open(memStorage(sealed), k, nil)
		if err != nil {
			t.Fatalf("size %d: Open: %v", n, err)
		}
		if f.Size() != int64(n) {
			t.Fatalf("size %d: Size() = %d", n, f.Size())
		}
		all := make([]byte, n)
		if _, err := f.ReadAt(all, 0); err != nil && !(n == 0 && err == io.EOF) {
			t.Fatalf("size %d: ReadAt: %v", n, err)
		}
		if !bytes.Equal(all, plain) {
			t.Fatalf("size %d: ReadAt plaintext differs", n)
		}
	}
}

func headerLenOf(t testing.TB, sealed []byte) int {
	h, err := ParseHeader(bytes.NewReader(sealed))
	if err != nil {
		t.Fatal(err)
	}
	return h.Len()
}

func TestStreamingUnknownLength(t *testing.T) {
	k := testKey(t)
	plain := randBytes(10*testSeg + 123)
	pr, pw := io.Pipe()
	go func() {
		w, err := NewWriter(pw, &Options{SegmentSize: testSeg}, k)
		if err != nil {
			pw.CloseWithError(err)
			return
		}
		// Odd-sized writes, as from a pipe.
		for p := plain; len(p) > 0; {
			n := min(len(p), 777)
			w.Write(p[:n])
			p = p[n:]
		}
		pw.CloseWithError(w.Close())
	}()
	pr2, pw2 := io.Pipe()
	go func() {
		_, err := io.Copy(pw2, pr)
		pw2.CloseWithError(err)
	}()
	r, err := NewReader(pr2, k, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	buf := make([]byte, 1000)
	for {
		n, err := r.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), plain) {
		t.Fatal("plaintext differs")
	}
}

func TestWrongKeyAndSlots(t *testing.T) {
	alice, bob, eve := testKey(t), testKey(t), testKey(t)
	plain := []byte("two parties can each open this")
	sealed := sealBytes(t, plain, nil, alice, bob)
	for _, k := range []*FileKey{alice, bob} {
		got, err := openBytes(sealed, k)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("key %s: %v", k.ID(), err)
		}
	}
	if _, err := openBytes(sealed, eve); !errors.Is(err, ErrWrongKey) {
		t.Fatalf("wrong key: got %v, want ErrWrongKey", err)
	}
	got, err := openBytes(sealed, Keys{eve, bob})
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("Keys{eve, bob}: %v", err)
	}
	h, err := ParseHeader(bytes.NewReader(sealed))
	if err != nil {
		t.Fatal(err)
	}
	if len(h.Slots) != 2 || h.Slots[0].KeyID != alice.ID() || h.Slots[1].KeyID != bob.ID() {
		t.Fatalf("slots = %+v", h.Slots)
	}
}

func TestNotSealed(t *testing.T) {
	k := testKey(t)
	for _, in := range [][]byte{nil, []byte("name,age\nbob,30\n"), []byte("VEILSEA")} {
		if _, err := openBytes(in, k); !errors.Is(err, ErrNotSealed) {
			t.Errorf("%q: got %v, want ErrNotSealed", in, err)
		}
	}
}

func TestKeyFileText(t *testing.T) {
	k := testKey(t)
	txt, _ := k.MarshalText()
	k2, err := ParseFileKey(txt)
	if err != nil || k2.ID() != k.ID() {
		t.Fatalf("ParseFileKey: %v", err)
	}
	if _, err := ParseFileKey([]byte("VEIL-KEY-1-zz")); err == nil {
		t.Fatal("damaged key file accepted")
	}
	if _, err := ParseFileKey([]byte("hello")); err == nil {
		t.Fatal("non-key accepted")
	}
	raw := randBytes(32)
	if _, err := ParseFileKey(raw); err != nil {
		t.Fatalf("raw 32-byte key: %v", err)
	}
}

// memStorage is an in-memory Storage; like a file, it takes parallel
// writes.
type memFile struct {
	mu sync.Mutex
	b  []byte
}

func memStorage(b []byte) *memFile { return &memFile{b: append([]byte(nil), b...)} }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if need := off + int64(len(p)); need > int64(len(m.b)) {
		m.b = append(m.b, make([]byte, need-int64(len(m.b)))...)
	}
	return copy(m.b[off:], p), nil
}

func (m *memFile) Truncate(n int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if n < int64(len(m.b)) {
		m.b = m.b[:n]
	} else {
		m.b = append(m.b, make([]byte, n-int64(len(m.b)))...)
	}
	return nil
}

func (m *memFile) Sync() error { return nil }

func (m *memFile) Stat() (os.FileInfo, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return memInfo(len(m.b)), nil
}

type memInfo int64

func (s memInfo) Size() int64 { return int64(s) }
func (memInfo) Name() string  { return "mem" }
func (memInfo) Mode() os.FileMode {
	return 0o600
}
func (memInfo) ModTime() time.Time { return time.Time{} }
func (memInfo) IsDir() bool        { return false }
func (memInfo) Sys() any           { return nil }

func TestRandomWritesAgainstModel(t *testing.T) {
	k := testKey(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "f.sealed")
	osf, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer osf.Close()
	f, err := Create(osf, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	rng := mrand.New(mrand.NewPCG(1, 2))
	var model []byte
	for step := 0; step < 400; step++ {
		switch op := rng.IntN(10); {
		case op < 6: // write somewhere, sometimes past the end
			off := rng.Int64N(int64(len(model)) + 3*testSeg)
			p := randBytes(1 + rng.IntN(3*testSeg))
			if rng.IntN(3) == 0 { // whole segments at a boundary: the parallel path
				off -= off % testSeg
				p = randBytes((2 + rng.IntN(4)) * testSeg)
			}
			if _, err := f.WriteAt(p, off); err != nil {
				t.Fatal(err)
			}
			if need := off + int64(len(p)); need > int64(len(model)) {
				model = append(model, make([]byte, need-int64(len(model)))...)
			}
			copy(model[off:], p)
		case op < 7: // truncate
			n := rng.Int64N(int64(len(model)) + testSeg)
			if err := f.Truncate(n); err != nil {
				t.Fatal(err)
			}
			if n < int64(len(model)) {
				model = model[:n]
			} else {
				model = append(model, make([]byte, n-int64(len(model)))...)
			}
		case op < 8:
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
		default: // read a random range
			if len(model) == 0 {
				continue
			}
			off := rng.Int64N(int64(len(model)))
			p := make([]byte, 1+rng.IntN(2*testSeg))
			if rng.IntN(3) == 0 {
				off -= off % testSeg
				p = make([]byte, (2+rng.IntN(4))*testSeg)
			}
			n, err := f.ReadAt(p, off)
			if err != nil && err != io.EOF {
				t.Fatal(err)
			}
			if !bytes.Equal(p[:n], model[off:off+int64(n)]) {
				t.Fatalf("step %d: read at %d differs", step, off)
			}
		}
		if f.Size() != int64(len(model)) {
			t.Fatalf("step %d: size %d, model %d", step, f.Size(), len(model))
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	// The file on disk is a valid sealed file: stream it and reopen it.
	sealed, _ := os.ReadFile(path)
	got, err := openBytes(sealed, k)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, model) {
		t.Fatal("streamed content differs from model")
	}
	f2, err := Open(memStorage(sealed), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	all := make([]byte, len(model))
	if _, err := f2.ReadAt(all, 0); err != nil && err != io.EOF {
		t.Fatal(err)
	}
	if !bytes.Equal(all, model) {
		t.Fatal("reopened content differs from model")
	}
}

func TestNoNonceReuseUnderRewrites(t *testing.T) {
	k := testKey(t)
	st := memStorage(nil)
	f, err := Create(st, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i := 0; i < 200; i++ {
		if _, err := f.WriteAt([]byte{byte(i)}, 10); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		nonce := string(f.table[:nonceLen])
		if seen[nonce] {
			t.Fatalf("nonce reused after %d rewrites", i)
		}
		seen[nonce] = true
	}
}

func TestDefaultBatches(t *testing.T) {
	old := batchBytes
	batchBytes = 1 << 20
	defer func() { batchBytes = old }()
	k := testKey(t)
	for _, n := range []int{0, 100, 1 << 20, 1<<20 + 1, 5<<20 - 3} {
		plain := randBytes(n)
		got, err := openBytes(sealBytes(t, plain, nil, k), k)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d: %v", n, err)
		}
		got, err = openBytes(sealBytes(t, plain, &Options{SegmentSize: testSeg}, k), k)
		if err != nil || !bytes.Equal(got, plain) {
			t.Fatalf("size %d, small segments: %v", n, err)
		}
	}
}

func TestSizeFromStored(t *testing.T) {
	k := testKey(t)
	for _, n := range []int{0, 1, testSeg - 1, testSeg, testSeg + 1, 5*testSeg + 3} {
		sealed := sealBytes(t, randBytes(n), &Options{SegmentSize: testSeg}, k)
		h, _ := ParseHeader(bytes.NewReader(sealed))
		got, err := SizeFromStored(h, int64(len(sealed)))
		if err != nil || got != int64(n) {
			t.Fatalf("size %d: got %d, %v", n, got, err)
		}
		// Lengths that no plaintext size produces: a record without data.
		base := int64(h.Len()) + commitLen
		for _, bad := range []int64{base - 1, base + 1, base + recordOverhead + tableEntryLen} {
			if _, err := SizeFromStored(h, bad); !errors.Is(err, ErrIntegrity) {
				t.Fatalf("stored length %d accepted: %v", bad, err)
			}
		}
	}
}
