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
type Reader struct {
	h    *Header
	k    *fileKeys
	lay  layout
	pool *bufPool
	pipe *pipeline
	quit chan struct{}
	prod chan struct{} // closed when the producer stopped reading the source

	cur     []byte // plaintext not yet returned
	curBuf  []byte // buffer backing cur, recycled when drained
	idx     int64  // segments authenticated so far
	table   []byte // nonce|tag of each authenticated segment
	err     error  // sticky: io.EOF at a verified end, or the failure
	stopped bool
	atEnd   bool // the whole file verified; cur holds the last segment
}

// NewReader parses the header from r, opens a key slot with u and checks
// the header. Concurrency in opts is honoured; other options are ignored.
func NewReader(r io.Reader, u KeyUnwrapper, opts *Options) (*Reader, error) {
	h, err := ParseHeader(r)
	if err != nil {
		return nil, err
	}
	k, err := openHeader(h, u)
	if err != nil {
		return nil, err
	}
	sr := &Reader{
		h: h, k: k,
		lay:  layout{headerLen: int64(h.Len()), segSize: int64(h.SegmentSize)},
		pool: newBufPool(h.SegmentSize + recordOverhead),
		quit: make(chan struct{}),
		prod: make(chan struct{}),
	}
	sr.pipe = newPipeline(opts.concurrency(), sr.openTask)
	go sr.produce(r)
	return sr, nil
}

// openHeader unwraps the DEK, derives the file's keys and checks the header MAC.
func openHeader(h *Header, u KeyUnwrapper) (*fileKeys, error) {
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
	return k, nil
}

// Header returns the parsed header.
func (r *Reader) Header() *Header { return r.h }

func (r *Reader) produce(src io.Reader) {
	defer close(r.prod)
	defer r.pipe.close()
	recLen := r.h.SegmentSize + recordOverhead
	for idx := uint64(0); ; idx++ {
		buf := r.pool.get()[:recLen]
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
	}
}

func (r *Reader) openTask(t *task) {
	var aad [FileIDLen + 8]byte
	buf := r.pool.get()
	out, err := r.k.seg.Open(buf, t.in[:nonceLen], t.in[nonceLen:], segAAD(aad[:0], &r.h.FileID, t.idx))
	if err != nil {
		r.pool.put(buf)
		t.err = errSegmentAuth
		return
	}
	t.out = out
}

var errSegmentAuth = errors.New("segment authentication failed")

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
	if len(r.cur) == 0 && r.curBuf != nil {
		r.pool.put(r.curBuf)
		r.curBuf = nil
	}
	return n, nil
}

// next takes the next task; it returns a sticky error or nil.
func (r *Reader) next() error {
	if r.atEnd {
		return io.EOF
	}
	t, ok := <-r.pipe.order
	if !ok {
		return r.stop(io.ErrUnexpectedEOF)
	}
	<-t.done
	switch {
	case t.err != nil && !errors.Is(t.err, errSegmentAuth):
		return r.stop(t.err)
	case t.tail:
		return r.finish(t.in, -1)
	case t.err != nil:
		// Either a damaged segment or the start of the trailer: collect
		// the rest of the stream and decide from the commit trailer.
		return r.finish(t.in, r.idx)
	}
	r.table = append(r.table, t.in[:nonceLen]...)
	r.table = append(r.table, t.in[len(t.in)-tagLen:]...)
	r.pool.put(t.in)
	r.idx++
	r.cur, r.curBuf = t.out, t.out
	return nil
}

func (r *Reader) stop(err error) error {
	if !r.stopped {
		r.stopped = true
		close(r.quit)
		go func() { // let the producer and workers finish
			for t := range r.pipe.order {
				<-t.done
			}
		}()
	}
	return err
}

// finish handles the end of the stream: tail holds the bytes after the last
// authenticated full record. failed is the index of a full record that did
// not authenticate, or -1.
func (r *Reader) finish(tail []byte, failed int64) error {
	consumed := r.lay.recordOff(r.idx) // stored bytes before tail
	segErr := func() error {
		if failed >= 0 {
			return integrityErr(r.lay.recordOff(failed), "segment %d failed authentication", failed)
		}
		return nil
	}
	// The legitimate rest is at most one short record, the table and the commit.
	limit := int64(r.h.SegmentSize+recordOverhead) + (r.idx+1)*tableEntryLen + commitLen
	buf := append([]byte(nil), tail...)
	for !r.stopped {
		t, ok := <-r.pipe.order
		if !ok {
			break
		}
		<-t.done
		if t.err != nil && !errors.Is(t.err, errSegmentAuth) {
			return r.stop(t.err)
		}
		buf = append(buf, t.in...)
		if t.out != nil {
			r.pool.put(t.out)
		}
		if int64(len(buf)) > limit {
			if err := segErr(); err != nil {
				return r.stop(err)
			}
			return r.stop(integrityErr(consumed, "unexpected data after the last segment"))
		}
		if t.tail {
			break
		}
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
		if err := segErr(); err != nil {
			return err
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
	if n > r.idx {
		// One last, possibly short, record remains.
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
		r.cur = out
	} else if err := segErr(); err != nil {
		return err
	}
	if err := checkTable(rest, r.table, c, r.lay, size); err != nil {
		r.cur = nil
		return err
	}
	if len(r.cur) > 0 {
		r.atEnd = true
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

// Close releases the reader's goroutines and waits until it no longer reads
// from the source (which may take one more read to return). It does not
// close the source.
func (r *Reader) Close() error {
	if r.err == nil {
		r.err = ErrClosed
	}
	r.stop(nil)
	<-r.prod
	return nil
}
