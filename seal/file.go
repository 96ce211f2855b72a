package seal

import (
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	goruntime "runtime"
	"sync"
)

// Storage is what a File keeps its sealed bytes in; *os.File is one. A File
// may call ReadAt and WriteAt from several goroutines at once, on ranges
// that do not overlap.
type Storage interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
	Sync() error
	Stat() (os.FileInfo, error)
}

// File is a sealed file open for random access: reads of any range cost one
// segment of work per segment touched, and writes at any offset (in place,
// past the end, or truncating) re-seal only the segments they touch with
// fresh nonces. Changes become durable and verifiable at Sync or Close,
// which write a new segment table and commit trailer. File is safe for
// concurrent use.
//
// A segment changed in part is sealed and written behind: when the write
// moves on to another segment, a goroutine seals and stores the changed one
// while the caller goes on (one segment at a time). An error of that
// background write is returned by the next call and by every call after
// it, Close included: what was written can no longer be committed whole.
type File struct {
	mu   sync.Mutex
	st   Storage
	h    *Header
	k    *fileKeys
	lay  layout
	rand io.Reader

	size     int64
	seq      uint64
	table    []byte // nonce|tag per segment, as committed or as written since
	dirty    bool   // the table and commit must be rewritten
	unsynced bool   // committed since the storage was last synced

	// A one-segment cache: plaintext of segment cIdx.
	cIdx   int64
	cBuf   []byte
	cDirty bool
	closed bool

	wb    *sealJob // the segment being sealed and written behind, or nil
	spare []byte   // a free segment buffer for the cache
	rbuf  []byte   // the record buffer of load

	spareRec []byte // a free record buffer for the write-behind
	err      error  // a failed write-behind: every later call fails
}

// sealJob is a write-behind, run in its own goroutine: either one segment
// to seal and write (buf set), or a run of n whole segments already sealed
// into rec, to write. The File applies the table entries when it waits for
// the job.
type sealJob struct {
	idx  int64   // first segment
	n    int64   // segments
	buf  []byte  // one segment: plaintext, owned by the job until done
	rec  []byte  // the record(s) (nonces drawn by the File)
	bp   *[]byte // a run: the pooled buffer of rec
	err  error
	done chan struct{}
}

func (j *sealJob) run(f *File) {
	defer close(j.done)
	if j.buf != nil {
		var aad [FileIDLen + 8]byte
		j.rec = f.k.seg.Seal(j.rec[:nonceLen], j.rec[:nonceLen], j.buf, segAAD(aad[:0], &f.h.FileID, uint64(j.idx)))
	}
	if _, err := f.st.WriteAt(j.rec, f.lay.recordOff(j.idx)); err != nil {
		j.err = fmt.Errorf("writing segments %d-%d: %w", j.idx, j.idx+j.n-1, err)
	}
}

// covers reports whether the write-behind, if any, holds segment i.
func (f *File) covers(i int64) bool {
	return f.wb != nil && i >= f.wb.idx && i < f.wb.idx+f.wb.n
}

// waitSeal waits for the write-behind, if any, and records its segment in
// the table. It returns the job's plaintext buffer (nil without a job),
// which the caller owns.
func (f *File) waitSeal() ([]byte, error) {
	j := f.wb
	if j == nil {
		return nil, f.err
	}
	<-j.done
	f.wb = nil
	if j.bp != nil {
		defer runBufs.Put(j.bp)
	}
	if j.err != nil {
		f.err = j.err
		return nil, f.err
	}
	if need := (j.idx + j.n) * tableEntryLen; int64(len(f.table)) < need {
		f.table = append(f.table, make([]byte, need-int64(len(f.table)))...)
	}
	rl := int64(len(j.rec)) / j.n // a run's records are all whole
	for k := int64(0); k < j.n; k++ {
		r := j.rec[k*rl : (k+1)*rl]
		e := f.table[(j.idx+k)*tableEntryLen:]
		copy(e, r[:nonceLen])
		copy(e[nonceLen:], r[len(r)-tagLen:])
	}
	if j.bp == nil {
		f.spareRec = j.rec
	}
	return j.buf, f.err
}

// settle waits for the write-behind and keeps its buffer as the spare.
func (f *File) settle() error {
	buf, err := f.waitSeal()
	if buf != nil {
		f.spare = buf[:0]
	}
	return err
}

// Create seals an empty file into st (which should be empty) and returns it
// open for reading and writing.
func Create(st Storage, opts *Options, wrappers ...KeyWrapper) (*File, error) {
	h, k, err := newSealedHeader(opts, wrappers)
	if err != nil {
		return nil, err
	}
	if _, err := st.WriteAt(h.raw, 0); err != nil {
		return nil, fmt.Errorf("writing header: %w", err)
	}
	f := newFile(st, h, k, opts)
	f.dirty = true
	if err := f.Sync(); err != nil {
		return nil, err
	}
	return f, nil
}

func newFile(st Storage, h *Header, k *fileKeys, opts *Options) *File {
	return &File{
		st: st, h: h, k: k, rand: opts.rand(),
		lay:  layout{headerLen: int64(h.Len()), segSize: int64(h.SegmentSize)},
		cIdx: -1, cBuf: make([]byte, 0, h.SegmentSize),
	}
}

// Open opens the sealed file in st with a key slot that u can unwrap. It
// authenticates the header, the commit trailer and the segment table (a
// read of about 1/2300 of the file); each segment is authenticated when it
// is read.
func Open(st Storage, u KeyUnwrapper, opts *Options) (*File, error) {
	h, err := ParseHeader(io.NewSectionReader(st, 0, maxHeaderLen))
	if err != nil {
		return nil, err
	}
	k, err := openHeader(h, u, opts.place())
	if err != nil {
		return nil, err
	}
	fi, err := st.Stat()
	if err != nil {
		return nil, err
	}
	f := newFile(st, h, k, opts)
	total := fi.Size()
	if total < f.lay.headerLen+commitLen {
		return nil, integrityErr(total, "file ends without its commit trailer (truncated)")
	}
	cb := make([]byte, commitLen)
	if _, err := st.ReadAt(cb, total-commitLen); err != nil {
		return nil, fmt.Errorf("reading commit trailer: %w", err)
	}
	c, ok := parseCommit(cb)
	if !ok || c.MAC != c.mac(k, h) {
		// Tell an extended file from a damaged one by the last 1 MiB.
		start := max(f.lay.headerLen, total-1<<20)
		end := make([]byte, total-start)
		if _, err := st.ReadAt(end, start); err == nil {
			if at, ok := findCommit(end, k, h); ok {
				return nil, integrityErr(start+int64(at), "%d unexpected bytes after the commit trailer (extended)", len(end)-at)
			}
		}
		return nil, integrityErr(total-commitLen, "commit trailer missing or failed authentication (truncated, extended, damaged, or torn by a crash)")
	}
	if c.Size > uint64(1)<<62 || f.lay.fileLen(int64(c.Size)) != total {
		want := f.lay.fileLen(int64(c.Size))
		return nil, integrityErr(min(want, total), "file is %d bytes but its commit says %d (truncated or extended)", total, want)
	}
	f.size, f.seq = int64(c.Size), c.Seq
	n := f.lay.segments(f.size)
	if n > maxSegments {
		return nil, ErrTooLarge
	}
	f.table = make([]byte, n*tableEntryLen)
	if _, err := st.ReadAt(f.table, f.lay.tableOff(f.size)); err != nil {
		return nil, fmt.Errorf("reading segment table: %w", err)
	}
	if sha256.Sum256(f.table) != c.TableHash {
		return nil, integrityErr(f.lay.tableOff(f.size), "segment table does not match its commit")
	}
	return f, nil
}

// Header returns the file's header.
func (f *File) Header() *Header { return f.h }

// Size returns the plaintext size, including unsynced writes.
func (f *File) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.size
}

// ReadAt implements io.ReaderAt over the plaintext.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, ErrClosed
	}
	if f.err != nil {
		return 0, f.err
	}
	if off < 0 {
		return 0, fmt.Errorf("seal: negative offset %d", off)
	}
	n := 0
	for len(p) > 0 && off < f.size {
		i := off / f.lay.segSize
		if off%f.lay.segSize == 0 {
			// A run of whole segments: read their records at once and
			// open them in parallel straight into p.
			k := min(int64(len(p))/f.lay.segSize, f.size/f.lay.segSize-i)
			if k >= 2 {
				if err := f.readRun(p[:k*f.lay.segSize], i); err != nil {
					return n, err
				}
				c := int(k * f.lay.segSize)
				p, off, n = p[c:], off+int64(c), n+c
				continue
			}
		}
		seg, err := f.load(i, false)
		if err != nil {
			return n, err
		}
		c := copy(p, seg[off-i*f.lay.segSize:])
		p, off, n = p[c:], off+int64(c), n+c
	}
	if len(p) > 0 {
		return n, io.EOF
	}
	return n, nil
}

// readRun opens the whole segments first, first+1, … into p (a multiple of
// the segment size), bypassing the cache.
func (f *File) readRun(p []byte, first int64) error {
	if err := f.flushCache(); err != nil {
		return err
	}
	if err := f.settle(); err != nil {
		return err
	}
	k := int64(len(p)) / f.lay.segSize
	rec := f.lay.segSize + recordOverhead
	recs := make([]byte, k*rec)
	if _, err := f.st.ReadAt(recs, f.lay.recordOff(first)); err != nil {
		return fmt.Errorf("reading segments %d-%d: %w", first, first+k-1, err)
	}
	errs := make([]error, k)
	var wg sync.WaitGroup
	workers := min(int(k), goruntime.GOMAXPROCS(0))
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			var aad [FileIDLen + 8]byte
			for j := int64(w); j < k; j += int64(workers) {
				i := first + j
				r := recs[j*rec : (j+1)*rec]
				want := f.table[i*tableEntryLen : (i+1)*tableEntryLen]
				if string(r[:nonceLen]) != string(want[:nonceLen]) || string(r[len(r)-tagLen:]) != string(want[nonceLen:]) {
					errs[j] = integrityErr(f.lay.recordOff(i), "segment %d is not the committed version (an older copy, or a write torn by a crash)", i)
					continue
				}
				dst := p[j*f.lay.segSize : j*f.lay.segSize]
				if _, err := f.k.seg.Open(dst, r[:nonceLen], r[nonceLen:], segAAD(aad[:0], &f.h.FileID, uint64(i))); err != nil {
					errs[j] = integrityErr(f.lay.recordOff(i), "segment %d failed authentication", i)
				}
			}
		}(w)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			clear(p) // no unauthenticated byte reaches the caller
			return err
		}
	}
	return nil
}

// load puts segment i's plaintext into the cache and returns it. With
// overwrite, the caller replaces all of it: the old content is not read,
// and the cache holds an empty segment.
func (f *File) load(i int64, overwrite bool) ([]byte, error) {
	if f.cIdx == i {
		return f.cBuf, nil
	}
	if err := f.flushCache(); err != nil {
		return nil, err
	}
	f.cIdx, f.cBuf = -1, f.cBuf[:0]
	if f.covers(i) && f.wb.buf == nil {
		// A run being written behind: wait for it.
		if err := f.settle(); err != nil {
			return nil, err
		}
	}
	if f.covers(i) {
		// The segment is being written behind: its plaintext is current.
		buf, err := f.waitSeal()
		if err != nil {
			return nil, err
		}
		f.spare = f.cBuf
		f.cIdx, f.cBuf = i, buf
		return buf, nil
	}
	if overwrite || i >= f.lay.segments(f.size) {
		f.cIdx = i // a new segment past the end, or one replaced whole
		return f.cBuf, nil
	}
	off := f.lay.recordOff(i)
	n := f.lay.segLen(i, f.size) + recordOverhead
	if int64(cap(f.rbuf)) < n {
		f.rbuf = make([]byte, f.lay.segSize+recordOverhead)
	}
	rec := f.rbuf[:n]
	if _, err := f.st.ReadAt(rec, off); err != nil {
		return nil, fmt.Errorf("reading segment %d: %w", i, err)
	}
	want := f.table[i*tableEntryLen : (i+1)*tableEntryLen]
	if string(rec[:nonceLen]) != string(want[:nonceLen]) || string(rec[len(rec)-tagLen:]) != string(want[nonceLen:]) {
		return nil, integrityErr(off, "segment %d is not the committed version (an older copy, or a write torn by a crash)", i)
	}
	var aad [FileIDLen + 8]byte
	out, err := f.k.seg.Open(f.cBuf[:0], rec[:nonceLen], rec[nonceLen:], segAAD(aad[:0], &f.h.FileID, uint64(i)))
	if err != nil {
		return nil, integrityErr(off, "segment %d failed authentication", i)
	}
	f.cIdx, f.cBuf = i, out
	return out, nil
}

// flushCache hands the cached segment, if it changed, to a write-behind
// (after the previous one is done) and empties the cache.
func (f *File) flushCache() error {
	if !f.cDirty {
		return nil
	}
	if err := f.settle(); err != nil {
		return err
	}
	rec := f.spareRec
	if int64(cap(rec)) < f.lay.segSize+recordOverhead {
		rec = make([]byte, f.lay.segSize+recordOverhead)
	}
	rec = rec[:nonceLen]
	if _, err := io.ReadFull(f.rand, rec); err != nil {
		return fmt.Errorf("generating nonce: %w", err)
	}
	j := &sealJob{idx: f.cIdx, n: 1, buf: f.cBuf, rec: rec, done: make(chan struct{})}
	go j.run(f)
	f.wb = j
	buf := f.spare
	if cap(buf) < int(f.lay.segSize) {
		buf = make([]byte, 0, f.lay.segSize)
	}
	f.spare = nil
	f.cIdx, f.cBuf, f.cDirty = -1, buf[:0], false
	f.dirty = true
	return nil
}

// writeRun seals whole segments first, first+1, … from p (a multiple of the
// segment size) in parallel, bypassing the cache (their old content is
// entirely replaced), and hands the records to a write-behind: the storage
// write of one run overlaps with the caller's next steps, such as receiving
// and sealing the next run.
func (f *File) writeRun(p []byte, first int64) error {
	k := int64(len(p)) / f.lay.segSize
	if f.cIdx >= first && f.cIdx < first+k {
		f.cIdx, f.cBuf, f.cDirty = -1, f.cBuf[:0], false // overwritten below
	} else if err := f.flushCache(); err != nil {
		return err
	}
	if f.err != nil {
		return f.err
	}
	rec := f.lay.segSize + recordOverhead
	// The records go into a pooled buffer (fresh memory for every write
	// costs page faults), and every nonce is drawn in one read.
	bp := runBufs.Get().(*[]byte)
	if need := k*rec + k*nonceLen; int64(cap(*bp)) < need {
		*bp = make([]byte, need)
	}
	recs := (*bp)[:k*rec]
	nonces := (*bp)[k*rec : k*rec+k*nonceLen]
	if _, err := io.ReadFull(f.rand, nonces); err != nil {
		runBufs.Put(bp)
		return fmt.Errorf("generating nonces: %w", err)
	}
	for j := int64(0); j < k; j++ {
		copy(recs[j*rec:j*rec+nonceLen], nonces[j*nonceLen:])
	}
	// Each worker seals a contiguous share of the run, while the previous
	// write-behind may still be writing (other records, other memory).
	var wg sync.WaitGroup
	workers := int64(min(int(k), goruntime.GOMAXPROCS(0)))
	share := (k + workers - 1) / workers
	for w := int64(0); w < workers; w++ {
		lo, hi := w*share, min(k, (w+1)*share)
		if lo >= hi {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			var aad [FileIDLen + 8]byte
			for j := lo; j < hi; j++ {
				r := recs[j*rec : (j+1)*rec]
				f.k.seg.Seal(r[nonceLen:nonceLen], r[:nonceLen], p[j*f.lay.segSize:(j+1)*f.lay.segSize], segAAD(aad[:0], &f.h.FileID, uint64(first+j)))
			}
		}()
	}
	wg.Wait()
	// One write-behind at a time, applied in order: a segment of this run
	// that the previous one also holds ends up with this run's record.
	if err := f.settle(); err != nil {
		runBufs.Put(bp)
		return err
	}
	j := &sealJob{idx: first, n: k, rec: recs, bp: bp, done: make(chan struct{})}
	go j.run(f)
	f.wb = j
	f.dirty = true
	return nil
}

var zeros = make([]byte, MaxSegmentSize)

// runBufs holds the buffers of writeRun.
var runBufs = sync.Pool{New: func() any { return new([]byte) }}

// WriteAt implements io.WriterAt over the plaintext. Writing past the end
// fills the gap with zeros.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, ErrClosed
	}
	if off < 0 {
		return 0, fmt.Errorf("seal: negative offset %d", off)
	}
	if off+int64(len(p)) > maxSegments*f.lay.segSize {
		return 0, ErrTooLarge
	}
	if f.err != nil {
		return 0, f.err
	}
	for f.size < off {
		if _, err := f.write(zeros[:min(off-f.size, f.lay.segSize)], f.size); err != nil {
			return 0, err
		}
	}
	return f.write(p, off)
}

func (f *File) write(p []byte, off int64) (int, error) {
	n := 0
	for len(p) > 0 {
		i := off / f.lay.segSize
		if off%f.lay.segSize == 0 {
			if k := int64(len(p)) / f.lay.segSize; k >= 2 {
				if err := f.writeRun(p[:k*f.lay.segSize], i); err != nil {
					return n, err
				}
				c := int(k * f.lay.segSize)
				p, off, n = p[c:], off+int64(c), n+c
				if off > f.size {
					f.size = off
				}
				continue
			}
		}
		// A write that covers the whole segment needs none of its old content.
		seg, err := f.load(i, off%f.lay.segSize == 0 && int64(len(p)) >= f.lay.segSize)
		if err != nil {
			return n, err
		}
		o := int(off - i*f.lay.segSize)
		end := min(o+len(p), int(f.lay.segSize))
		if end > len(seg) {
			seg = seg[:end]
		}
		c := copy(seg[o:end], p)
		f.cBuf, f.cDirty = seg, true
		p, off, n = p[c:], off+int64(c), n+c
		if off > f.size {
			f.size = off
		}
	}
	return n, nil
}

// Truncate changes the plaintext size; growing fills with zeros.
func (f *File) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	if size < 0 {
		return fmt.Errorf("seal: negative size %d", size)
	}
	// Seal what is pending first: a segment written behind after the
	// table is cut would reappear in it.
	if err := f.flushCache(); err != nil {
		return err
	}
	if err := f.settle(); err != nil {
		return err
	}
	if size > f.size {
		for f.size < size {
			if _, err := f.write(zeros[:min(size-f.size, f.lay.segSize)], f.size); err != nil {
				return err
			}
		}
		return nil
	}
	if size == f.size {
		return nil
	}
	n := f.lay.segments(size)
	if size%f.lay.segSize != 0 {
		last := n - 1
		seg, err := f.load(last, false)
		if err != nil {
			return err
		}
		f.cBuf, f.cDirty = seg[:size-last*f.lay.segSize], true
	} else if f.cIdx >= n {
		f.cIdx, f.cBuf, f.cDirty = -1, f.cBuf[:0], false
	}
	f.size = size
	f.table = f.table[:min(int64(len(f.table)), n*tableEntryLen)]
	f.dirty = true
	return nil
}

// Sync seals pending writes, writes the segment table and a new commit
// trailer, and syncs the storage.
func (f *File) Sync() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	return f.sync(true)
}

// Commit is Sync without syncing the storage: the file is complete and
// consistent in the storage's cache (it survives the end of this process,
// not necessarily a crash of the machine) — what close(2) gives on an
// ordinary file system.
func (f *File) Commit() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	return f.sync(false)
}

func (f *File) sync(durable bool) error {
	if err := f.flushCache(); err != nil {
		return err
	}
	if err := f.settle(); err != nil {
		return err
	}
	if !f.dirty {
		if durable && f.unsynced {
			if err := f.st.Sync(); err != nil {
				return fmt.Errorf("syncing: %w", err)
			}
			f.unsynced = false
		}
		return nil
	}
	f.seq++
	c := commit{Seq: f.seq, Size: uint64(f.size), TableHash: sha256.Sum256(f.table)}
	c.MAC = c.mac(f.k, f.h)
	end := f.lay.fileLen(f.size)
	if err := f.st.Truncate(end); err != nil {
		return fmt.Errorf("truncating: %w", err)
	}
	trailer := append(append(make([]byte, 0, len(f.table)+commitLen), f.table...), c.marshal()...)
	if _, err := f.st.WriteAt(trailer, f.lay.tableOff(f.size)); err != nil {
		return fmt.Errorf("writing commit trailer: %w", err)
	}
	f.dirty, f.unsynced = false, true
	if durable {
		if err := f.st.Sync(); err != nil {
			return fmt.Errorf("syncing: %w", err)
		}
		f.unsynced = false
	}
	return nil
}

// Close commits pending writes (Commit: call Sync before for them to be
// durable, as with an os.File). It does not close the storage.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return ErrClosed
	}
	err := f.sync(false)
	f.closed = true
	return err
}
