package seal

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
)

// Reader opens a sealed stream, such as a pipe of unknown length. Segments
// are authenticated on all cores and returned in order; plaintext is
// returned only after its segment authenticated. Whole-file checks
// (truncation, extension, a segment replaced by an older version of itself)
// complete when the trailer is reached: Read returns io.EOF only after they
// pass, so a consumer must treat the data as valid only at io.EOF.
//
// Goroutines: a Reader starts none until the first Read or WriteTo; then
// one goroutine reads the source ahead (a bounded number of batches) and
// Options.Concurrency workers authenticate. Close stops them and returns
// only after all of them returned; call it also after an error or when
// stopping before io.EOF, or they keep running.
type Reader struct {
	src     io.Reader
	conc    int
	h       *Header
	k       *fileKeys
	lay     layout
	rec     int // stored bytes of a full record
	pool    *bufPool
	opool   *bufPool
	pipe    *pipeline
	quit    chan struct{}
	prod    chan struct{} // closed when the producer stopped reading the source
	drained chan struct{} // closed when stop's drain of the pipeline ended

	cur     []byte // plaintext not yet returned
	curBuf  []byte // buffer backing cur, recycled when drained
	idx     int64  // segments authenticated so far
	table   []byte // nonce|tag of each authenticated segment
	pend    *pending
	err     error // sticky: io.EOF at a verified end, or the failure
	stopped bool
	atEnd   bool // the whole file verified; cur holds the last segment
}

// pending is the end of the stream, to be checked once cur is drained.
type pending struct {
	tail   []byte // bytes after the last authenticated record
	failed int64  // index of a full-size record that failed, or -1
	more   bool   // the source has more bytes after tail
}

// NewReader parses the header from r, opens a key slot with u and checks
// the header. Concurrency in opts is honoured; other options are ignored.
// It starts no goroutine (see Reader).
func NewReader(r io.Reader, u KeyUnwrapper, opts *Options) (*Reader, error) {
	h, err := ParseHeader(r)
	if err != nil {
		return nil, err
	}
	k, err := openHeader(h, u, opts.place())
	if err != nil {
		return nil, err
	}
	per := segmentsPerBatch(h.SegmentSize)
	sr := &Reader{
		h: h, k: k,
		lay:   layout{headerLen: int64(h.Len()), segSize: int64(h.SegmentSize)},
		rec:   h.SegmentSize + recordOverhead,
		pool:  newBufPool(per * (h.SegmentSize + recordOverhead)),
		opool: newBufPool(per * h.SegmentSize),
		src:   r,
		conc:  opts.concurrency(),
	}
	return sr, nil
}

// start starts the producer and the workers, on the first read.
func (r *Reader) start() {
	r.quit = make(chan struct{})
	r.prod = make(chan struct{})
	r.pipe = newPipeline(r.conc, r.openTask)
	go r.produce(r.src)
}

// openHeader unwraps the DEK, derives the file's keys, checks the header
// MAC (and place MAC) and that the file belongs at want (nil: anywhere).
func openHeader(h *Header, u KeyUnwrapper, want *Place) (*fileKeys, error) {
	dek, err := unwrapDEK(h, u)
	if err != nil {
		return nil, err
	}
	defer clear(dek)
	k, err := deriveKeys(dek, &h.FileID)
	if err != nil {
		return nil, err
	}
	if err := h.verify(k); err != nil {
		return nil, err
	}
	if err := h.checkPlace(want); err != nil {
		return nil, err
	}
	return k, nil
}

// Header returns the parsed header.
func (r *Reader) Header() *Header { return r.h }

func (r *Reader) produce(src io.Reader) {
	defer close(r.prod)
	defer r.pipe.close()
	batch := segmentsPerBatch(r.h.SegmentSize) * r.rec
	for idx := uint64(0); ; {
		buf := r.pool.get()[:batch]
		n, err := io.ReadFull(src, buf)
		t := &task{idx: idx, in: buf[:n]}
		switch {
		case err == nil:
		case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
			t.tail = true
		default:
			t.err = fmt.Errorf("reading sealed input: %w", err)
		}
		select {
		case <-r.quit:
			return
		default:
		}
		last := t.tail || t.err != nil // t belongs to the workers once submitted
		r.pipe.submit(t)
		if last {
			return
		}
		idx += uint64(n / r.rec)
	}
}

// openTask authenticates the leading full-size records of a batch and stops
// at the first that fails: that is either damage or the end of the data.
func (r *Reader) openTask(t *task) {
	var aad [FileIDLen + 8]byte
	out := r.opool.get()
	for j := 0; (j+1)*r.rec <= len(t.in); j++ {
		rec := t.in[j*r.rec : (j+1)*r.rec]
		o, err := r.k.seg.Open(out, rec[:nonceLen], rec[nonceLen:], segAAD(aad[:0], &r.h.FileID, t.idx+uint64(j)))
		if err != nil {
			t.failed = true
			break
		}
		out = o
		t.nOK++
	}
	t.out = out
}

// Read returns authenticated plaintext.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		if r.err != nil {
			return 0, r.err
		}
		r.err = r.next()
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	r.recycle()
	return n, nil
}

// WriteTo writes the authenticated plaintext to w without an extra copy. It
// returns nil only if the whole file verified.
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		for len(r.cur) == 0 {
			if r.err == io.EOF {
				return total, nil
			}
			if r.err != nil {
				return total, r.err
			}
			r.err = r.next()
		}
		n, err := w.Write(r.cur)
		total += int64(n)
		r.cur = r.cur[n:]
		r.recycle()
		if err != nil {
			return total, err
		}
	}
}

func (r *Reader) recycle() {
	if len(r.cur) == 0 && r.curBuf != nil {
		r.opool.put(r.curBuf)
		r.curBuf = nil
	}
}

// next takes the next batch; it returns a sticky error or nil (possibly
// with nothing in cur, in which case it is called again).
func (r *Reader) next() error {
	if r.atEnd {
		return io.EOF
	}
	if p := r.pend; p != nil {
		r.pend = nil
		return r.finish(p)
	}
	if r.pipe == nil {
		r.start()
	}
	t, ok := <-r.pipe.order
	if !ok {
		return r.stop(io.ErrUnexpectedEOF)
	}
	<-t.done
	if t.err != nil {
		return r.stop(t.err)
	}
	for j := 0; j < t.nOK; j++ {
		rec := t.in[j*r.rec : (j+1)*r.rec]
		r.table = append(r.table, rec[:nonceLen]...)
		r.table = append(r.table, rec[len(rec)-tagLen:]...)
	}
	r.idx += int64(t.nOK)
	r.cur, r.curBuf = t.out, t.out
	if t.failed || t.tail {
		p := &pending{tail: t.in[t.nOK*r.rec:], failed: -1, more: !t.tail}
		if t.failed {
			p.failed = r.idx
		}
		r.pend = p
	} else {
		r.pool.put(t.in)
	}
	return nil
}

func (r *Reader) stop(err error) error {
	if !r.stopped {
		r.stopped = true
		if r.pipe == nil {
			return err // never started
		}
		close(r.quit)
		r.drained = make(chan struct{})
		go func() { // let the producer and workers finish
			defer close(r.drained)
			for t := range r.pipe.order {
				<-t.done
			}
		}()
	}
	return err
}

// finish handles the end of the stream: p.tail holds the bytes after the
// last authenticated full record, and the source may hold more.
func (r *Reader) finish(p *pending) error {
	consumed := r.lay.recordOff(r.idx) // stored bytes before the tail
	segErr := func() error {
		if p.failed >= 0 {
			return integrityErr(r.lay.recordOff(p.failed), "segment %d failed authentication", p.failed)
		}
		return nil
	}
	// The legitimate rest is at most one short record, the table and the commit.
	limit := int64(r.rec) + (r.idx+1)*tableEntryLen + commitLen
	buf := append([]byte(nil), p.tail...)
	for more := p.more; more && !r.stopped; {
		t, ok := <-r.pipe.order
		if !ok {
			break
		}
		<-t.done
		if t.err != nil {
			return r.stop(t.err)
		}
		buf = append(buf, t.in...)
		if t.out != nil {
			r.opool.put(t.out)
		}
		if int64(len(buf)) > limit {
			if err := segErr(); err != nil {
				return r.stop(err)
			}
			return r.stop(integrityErr(consumed, "unexpected data after the last segment"))
		}
		more = !t.tail
	}
	r.stop(nil)
	total := consumed + int64(len(buf))
	if len(buf) < commitLen {
		if err := segErr(); err != nil {
			return err
		}
		return integrityErr(total, "file ends without its commit trailer (truncated)")
	}
	c, ok := parseCommit(buf[len(buf)-commitLen:])
	if !ok || c.MAC != c.mac(r.k, r.h) {
		if end, ok := findCommit(buf, r.k, r.h); ok {
			return integrityErr(consumed+int64(end), "%d unexpected bytes after the commit trailer (extended)", len(buf)-end)
		}
		if p.failed >= 0 {
			return integrityErr(r.lay.recordOff(p.failed), "segment %d or the commit trailer after it failed authentication (damaged, truncated or extended)", p.failed)
		}
		return integrityErr(total-commitLen, "commit trailer missing or failed authentication (truncated, extended or damaged)")
	}
	if c.Size > uint64(1)<<62 || r.lay.fileLen(int64(c.Size)) != total {
		if err := segErr(); err != nil {
			return err
		}
		want := r.lay.fileLen(int64(c.Size))
		return integrityErr(min(want, total), "file is %d bytes but its commit says %d (truncated or extended)", total, want)
	}
	size := int64(c.Size)
	n := r.lay.segments(size)
	rest := buf[:len(buf)-commitLen]
	var last []byte
	if n > r.idx {
		// One last, short record remains.
		if n != r.idx+1 {
			return integrityErr(consumed, "segment %d failed authentication", r.idx)
		}
		recLen := r.lay.segLen(r.idx, size) + recordOverhead
		rec := rest[:recLen]
		var aad [FileIDLen + 8]byte
		out, err := r.k.seg.Open(nil, rec[:nonceLen], rec[nonceLen:], segAAD(aad[:0], &r.h.FileID, uint64(r.idx)))
		if err != nil {
			return integrityErr(consumed, "segment %d failed authentication", r.idx)
		}
		r.table = append(r.table, rec[:nonceLen]...)
		r.table = append(r.table, rec[len(rec)-tagLen:]...)
		r.idx++
		rest = rest[recLen:]
		last = out
	}
	// Otherwise every committed segment authenticated, and a failed
	// full-size chunk (p.failed) was the trailer itself.
	if err := checkTable(rest, r.table, c, r.lay, size); err != nil {
		return err
	}
	r.atEnd = true
	if len(last) > 0 {
		r.cur = last
		return nil // return the last segment, then io.EOF
	}
	return io.EOF
}

// checkTable compares the stored table with the committed hash and with the
// records actually read, naming the first segment that differs.
func checkTable(stored, seen []byte, c commit, lay layout, size int64) error {
	off := lay.tableOff(size)
	if sha256.Sum256(stored) != c.TableHash {
		return integrityErr(off, "segment table does not match its commit")
	}
	for i := 0; i+tableEntryLen <= len(stored) && i+tableEntryLen <= len(seen); i += tableEntryLen {
		if !bytes.Equal(stored[i:i+tableEntryLen], seen[i:i+tableEntryLen]) {
			seg := int64(i / tableEntryLen)
			return integrityErr(lay.recordOff(seg), "segment %d is not the committed version (an older copy, or a write torn by a crash)", seg)
		}
	}
	if len(stored) != len(seen) {
		return integrityErr(off, "segment table has %d entries, file has %d segments", len(stored)/tableEntryLen, len(seen)/tableEntryLen)
	}
	return nil
}

// Close stops the reader's goroutines and returns after they all returned,
// so it no longer reads from the source (this may take one more read of the
// source to return). It does not close the source.
func (r *Reader) Close() error {
	if r.err == nil {
		r.err = ErrClosed
	}
	r.stop(nil)
	if r.pipe != nil {
		<-r.prod
		<-r.drained
		r.pipe.wait()
	}
	return nil
}
