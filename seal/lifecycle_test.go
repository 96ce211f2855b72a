package seal

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"strings"
	"testing"
	"time"
)

// streamGoroutines returns the stacks of the goroutines that a Writer or
// Reader started (pipeline workers, the writer's consumer, the reader's
// producer and drain).
func streamGoroutines() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var out []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		for _, f := range []string{"seal.newPipeline", "seal.(*Writer).consume", "seal.(*Reader).produce", "seal.(*Reader).stop"} {
			if strings.Contains(g, f) {
				out = append(out, g)
				break
			}
		}
	}
	return out
}

// noStreamGoroutines fails unless every stream goroutine has returned. A
// goroutine that signalled its end may take a moment to leave the
// scheduler, so it retries for a bounded time.
func noStreamGoroutines(t *testing.T, when string) {
	t.Helper()
	var left []string
	for i := 0; i < 200; i++ {
		if left = streamGoroutines(); len(left) == 0 {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: %d stream goroutines still running:\n%s", when, len(left), strings.Join(left, "\n\n"))
}

func someStreamGoroutines(t *testing.T, when string) {
	t.Helper()
	if len(streamGoroutines()) == 0 {
		t.Fatalf("%s: no stream goroutine running (the check would not see a leak)", when)
	}
}

func TestWriterGoroutinesEndAtClose(t *testing.T) {
	noStreamGoroutines(t, "before")
	k := testKey(t)
	var buf bytes.Buffer
	w, err := NewWriter(&buf, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	noStreamGoroutines(t, "after NewWriter")
	if _, err := w.Write(randBytes(64 * testSeg)); err != nil {
		t.Fatal(err)
	}
	someStreamGoroutines(t, "after Write")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(streamGoroutines()); n != 0 {
		t.Fatalf("%d stream goroutines still running when Close returned", n)
	}

	// A small file never starts them.
	w, err = NewWriter(io.Discard, &Options{SegmentSize: testSeg}, k)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("small")); err != nil {
		t.Fatal(err)
	}
	noStreamGoroutines(t, "after a small Write")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	noStreamGoroutines(t, "after Close")
}

type failingWriter struct{ n int }

var errSink = errors.New("sink failed")

func (f *failingWriter) Write(p []byte) (int, error) {
	if f.n -= len(p); f.n < 0 {
		return 0, errSink
	}
	return len(p), nil
}

// The underlying writer fails in the middle: Write reports it, and Close
// still stops every goroutine.
func TestWriterGoroutinesEndAfterWriteError(t *testing.T) {
	w, err := NewWriter(&failingWriter{n: 4 * testSeg}, &Options{SegmentSize: testSeg}, testKey(t))
	if err != nil {
		t.Fatal(err)
	}
	chunk := randBytes(4 * testSeg)
	var werr error
	for i := 0; i < 256 && werr == nil; i++ {
		_, werr = w.Write(chunk)
	}
	if cerr := w.Close(); !errors.Is(werr, errSink) && !errors.Is(cerr, errSink) {
		t.Fatalf("write error not reported: Write %v, Close %v", werr, cerr)
	}
	noStreamGoroutines(t, "after Close")
}

func TestReaderGoroutinesEndAtClose(t *testing.T) {
	k := testKey(t)
	plain := randBytes(256 * testSeg)
	sealed := sealBytes(t, plain, &Options{SegmentSize: testSeg}, k)
	noStreamGoroutines(t, "after sealing")

	// Closed without reading: nothing was started.
	r, err := NewReader(bytes.NewReader(sealed), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	noStreamGoroutines(t, "after NewReader")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Read(make([]byte, 1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}

	// Closed after a partial read: the producer is blocked on a full
	// pipeline and the workers wait for work.
	r, err = NewReader(bytes.NewReader(sealed), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 10)
	if _, err := io.ReadFull(r, got); err != nil || !bytes.Equal(got, plain[:10]) {
		t.Fatalf("partial read: %v", err)
	}
	someStreamGoroutines(t, "after a partial Read")
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if n := len(streamGoroutines()); n != 0 {
		t.Fatalf("%d stream goroutines still running when Close returned", n)
	}

	// Read to io.EOF without Close: they end by themselves.
	r, err = NewReader(bytes.NewReader(sealed), k, nil)
	if err != nil {
		t.Fatal(err)
	}
	if all, err := io.ReadAll(r); err != nil || !bytes.Equal(all, plain) {
		t.Fatalf("read all: %v", err)
	}
	noStreamGoroutines(t, "at io.EOF")
	r.Close()
}

type failingReader struct {
	r io.Reader
	n int
}

var errSource = errors.New("source failed")

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n <= 0 {
		return 0, errSource
	}
	p = p[:min(len(p), f.n)]
	n, err := f.r.Read(p)
	f.n -= n
	return n, err
}

// Damage or a failing source in the middle of the stream: the error is
// reported, and Close stops every goroutine.
func TestReaderGoroutinesEndAfterError(t *testing.T) {
	k := testKey(t)
	sealed := sealBytes(t, randBytes(256*testSeg), &Options{SegmentSize: testSeg}, k)
	damaged := bytes.Clone(sealed)
	damaged[len(damaged)/2] ^= 1
	for name, src := range map[string]func() io.Reader{
		"damaged":        func() io.Reader { return bytes.NewReader(damaged) },
		"failing source": func() io.Reader { return &failingReader{r: bytes.NewReader(sealed), n: len(sealed) / 2} },
	} {
		r, err := NewReader(src(), k, nil)
		if err != nil {
			t.Fatal(err)
		}
		_, err = io.Copy(io.Discard, r)
		if !errors.Is(err, ErrIntegrity) && !errors.Is(err, errSource) {
			t.Fatalf("%s: %v", name, err)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		noStreamGoroutines(t, name+": after Close")
	}
}
