package seal

import (
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"sync"
)

// Options tune sealing. The zero value is valid.
type Options struct {
	// SegmentSize is the plaintext bytes per segment: a power of two from
	// MinSegmentSize to MaxSegmentSize. Zero means DefaultSegmentSize.
	SegmentSize int
	// Concurrency is the number of goroutines that encrypt or decrypt.
	// Zero means GOMAXPROCS.
	Concurrency int
	// Rand is the source of the DEK, file ID and nonces. Nil means
	// crypto/rand; tests set it to make test vectors.
	Rand io.Reader
	// Place, when sealing, binds the new file to a mount and path (format
	// version 2); when opening, is where the file is opened: a file bound
	// elsewhere is an integrity error. Nil seals an unbound version 1 file
	// and opens files without checking their place.
	Place *Place
}

func (o *Options) place() *Place {
	if o == nil {
		return nil
	}
	return o.Place
}

func (o *Options) rand() io.Reader {
	if o == nil || o.Rand == nil {
		return rand.Reader
	}
	return o.Rand
}

func (o *Options) segmentSize() int {
	if o == nil || o.SegmentSize == 0 {
		return DefaultSegmentSize
	}
	return o.SegmentSize
}

func (o *Options) concurrency() int {
	if o == nil {
		return 0
	}
	return o.Concurrency
}

// newSealedHeader makes a header with a fresh DEK wrapped by every wrapper.
func newSealedHeader(opts *Options, wrappers []KeyWrapper) (*Header, *fileKeys, error) {
	if len(wrappers) == 0 {
		return nil, nil, fmt.Errorf("%w: sealing needs at least one key", ErrWrongKey)
	}
	h := &Header{Version: Version1, Algorithm: AlgAES256GCM, SegmentSize: opts.segmentSize()}
	if p := opts.place(); p != nil {
		h.Version, h.Place, h.PlaceCapacity = Version2, &Place{Mount: p.Mount, Path: p.Path}, placeCapacity(p.Path)
	}
	if err := checkSegmentSize(h.SegmentSize); err != nil {
		return nil, nil, err
	}
	dek := make([]byte, KeySize)
	defer clear(dek)
	if _, err := io.ReadFull(opts.rand(), dek); err != nil {
		return nil, nil, fmt.Errorf("generating data key: %w", err)
	}
	if _, err := io.ReadFull(opts.rand(), h.FileID[:]); err != nil {
		return nil, nil, fmt.Errorf("generating file id: %w", err)
	}
	for _, w := range wrappers {
		s, err := w.WrapKey(dek, h.binding())
		if err != nil {
			return nil, nil, fmt.Errorf("wrapping data key: %w", err)
		}
		h.Slots = append(h.Slots, s)
	}
	k, err := deriveKeys(dek, &h.FileID)
	if err != nil {
		return nil, nil, err
	}
	if err := h.seal(k); err != nil {
		return nil, nil, err
	}
	return h, k, nil
}

// Writer seals a stream. Bytes written are sealed in segments on all cores
// and written to the underlying writer in order; Close writes the last
// segment and the commit trailer. The output is not valid until Close
// returns nil. Large writes are sealed straight from the caller's buffer.
//
// Goroutines: a Writer starts none until its first batch of plaintext is
// complete (Options.Concurrency workers and one goroutine that writes their
// output in order). Close stops them and returns only after all of them
// returned; call it also after a failed Write, or they keep running.
type Writer struct {
	opts  *Options
	w     io.Writer
	h     *Header
	k     *fileKeys
	rand  io.Reader
	pool  *bufPool
	pipe  *pipeline
	seg   int
	batch int // plaintext bytes per task

	cur   []byte // plaintext of the batch being filled
	idx   uint64
	size  int64
	table []byte

	mu     sync.Mutex
	err    error // first error of the consumer
	done   chan struct{}
	closed bool
}

// NewWriter writes a sealed header to w and returns a Writer for the
// plaintext. Each wrapper adds a key slot that can open the file. It starts
// no goroutine (see Writer).
func NewWriter(w io.Writer, opts *Options, wrappers ...KeyWrapper) (*Writer, error) {
	h, k, err := newSealedHeader(opts, wrappers)
	if err != nil {
		return nil, err
	}
	if _, err := w.Write(h.raw); err != nil {
		return nil, fmt.Errorf("writing header: %w", err)
	}
	per := segmentsPerBatch(h.SegmentSize)
	sw := &Writer{
		w: w, h: h, k: k, rand: opts.rand(), seg: h.SegmentSize,
		batch: per * h.SegmentSize,
		pool:  newBufPool(per * (h.SegmentSize + recordOverhead)),
		opts:  opts,
	}
	sw.cur = sw.pool.get()
	return sw, nil
}

// start starts the workers and the consumer, on the first submit.
func (w *Writer) start() {
	w.done = make(chan struct{})
	w.pipe = newPipeline(w.opts.concurrency(), w.sealTask)
	go w.consume()
}

// Header returns the header written at the start of the output.
func (w *Writer) Header() *Header { return w.h }

func (w *Writer) sealTask(t *task) {
	out := w.pool.get()
	var aad [FileIDLen + 8]byte
	for j, in := 0, t.in; len(in) > 0; j++ {
		n := min(len(in), w.seg)
		nonce := t.nonces[j*nonceLen : (j+1)*nonceLen]
		out = append(out, nonce...)
		out = w.k.seg.Seal(out, nonce, in[:n], segAAD(aad[:0], &w.h.FileID, t.idx+uint64(j)))
		in = in[n:]
	}
	if t.pooled {
		w.pool.put(t.in)
	}
	t.in = nil
	t.out = out
}

func (w *Writer) consume() {
	defer close(w.done)
	for t := range w.pipe.order {
		<-t.done
		for rec := t.out; len(rec) > 0; {
			n := min(len(rec), w.seg+recordOverhead)
			w.table = append(w.table, rec[:nonceLen]...)
			w.table = append(w.table, rec[n-tagLen:n]...)
			rec = rec[n:]
		}
		if w.firstErr() == nil {
			if _, err := w.w.Write(t.out); err != nil {
				w.setErr(fmt.Errorf("writing segment %d: %w", t.idx, err))
			}
		}
		w.pool.put(t.out)
	}
}

func (w *Writer) setErr(err error) {
	w.mu.Lock()
	if w.err == nil {
		w.err = err
	}
	w.mu.Unlock()
}

func (w *Writer) firstErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Write seals p. It returns an error if an earlier write to the
// underlying writer failed.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, ErrClosed
	}
	if err := w.firstErr(); err != nil {
		return 0, err
	}
	n := 0
	var borrowed []*task
	defer func() {
		for _, t := range borrowed {
			<-t.done
		}
	}()
	for len(p) > 0 {
		if len(w.cur) == 0 && len(p) >= w.batch {
			// Seal whole batches from p itself; wait for them before returning.
			t, err := w.submit(p[:w.batch], false)
			if err != nil {
				return n, err
			}
			borrowed = append(borrowed, t)
			p, n = p[w.batch:], n+w.batch
			continue
		}
		c := copy(w.cur[len(w.cur):w.batch], p)
		w.cur = w.cur[:len(w.cur)+c]
		p, n = p[c:], n+c
		if len(w.cur) == w.batch {
			if _, err := w.submit(w.cur, true); err != nil {
				return n, err
			}
			w.cur = w.pool.get()
		}
	}
	return n, nil
}

// submit sends plaintext in (whole segments but for the last) to be sealed.
func (w *Writer) submit(in []byte, pooled bool) (*task, error) {
	segs := (len(in) + w.seg - 1) / w.seg
	if w.idx+uint64(segs) > maxSegments {
		return nil, ErrTooLarge
	}
	t := &task{idx: w.idx, in: in, pooled: pooled, nonces: make([]byte, segs*nonceLen)}
	if _, err := io.ReadFull(w.rand, t.nonces); err != nil {
		return nil, fmt.Errorf("generating nonces: %w", err)
	}
	w.size += int64(len(in))
	w.idx += uint64(segs)
	if w.pipe == nil {
		w.start()
	}
	w.pipe.submit(t)
	return t, nil
}

// Close seals the last segment, writes the table and commit trailer, and
// returns the first error seen. It stops the Writer's goroutines and
// returns after they all returned. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return ErrClosed
	}
	w.closed = true
	var err error
	if len(w.cur) > 0 {
		_, err = w.submit(w.cur, true)
	}
	if w.pipe != nil {
		w.pipe.close()
		<-w.done
		w.pipe.wait()
	}
	if err != nil {
		return err
	}
	if err := w.firstErr(); err != nil {
		return err
	}
	c := commit{Seq: 1, Size: uint64(w.size), TableHash: sha256.Sum256(w.table)}
	c.MAC = c.mac(w.k, w.h)
	if _, err := w.w.Write(append(w.table, c.marshal()...)); err != nil {
		return fmt.Errorf("writing commit trailer: %w", err)
	}
	return nil
}
