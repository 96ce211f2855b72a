package pf

import (
	"cmp"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
)

// Backing is the storage of a writable protected file; *os.File is one.
type Backing interface {
	io.ReaderAt
	io.WriterAt
	Truncate(size int64) error
}

// Options tunes a File. The zero value is ready to use.
type Options struct {
	// Rand is the source of node keys and metadata nonces (default
	// crypto/rand). A fixed source makes the writer deterministic, for
	// golden files only.
	Rand io.Reader
	// CacheNodes bounds the decrypted nodes kept in memory (default 256,
	// 1 MiB); dirty nodes are flushed when it is exceeded.
	CacheNodes int
}

// File is an open protected file: random-access reads and, if opened
// writable, writes. Data reaches the backing store on Flush and Close. It is
// safe for concurrent use.
type File struct {
	mu    sync.Mutex
	r     io.ReaderAt
	w     Backing // nil when read-only
	key   Key
	hdr   header
	md    metadata
	root  node
	cache map[uint64]*node // by physical node number, root excluded
	rand  io.Reader
	limit int
	dirty bool  // metadata must be rewritten
	err   error // sticky: set once the file failed authentication
	buf   [NodeSize + macSize]byte
}

type node struct {
	mht      bool
	logical  uint64
	physical uint64
	parent   *node
	dirty    bool
	plain    [NodeSize]byte
}

// entry returns the key and MAC slot of n in its parent MHT node.
func (n *node) entry() []byte {
	var i uint64
	if n.mht {
		i = dataPerMHT + (n.logical-1)%childrenPerMHT
	} else {
		i = n.logical % dataPerMHT
	}
	return n.parent.plain[i*entrySize : (i+1)*entrySize]
}

func (o *Options) rand() io.Reader {
	if o == nil || o.Rand == nil {
		return rand.Reader
	}
	return o.Rand
}

func (o *Options) limit() int {
	if o == nil || o.CacheNodes < 8 {
		return 256
	}
	return o.CacheNodes
}

// Open opens the protected file in r (of size bytes) read-only under the
// wrap key, checking that it is bound to path (normalized with NormPath).
func Open(r io.ReaderAt, size int64, key Key, path string, opts *Options) (*File, error) {
	return open(r, nil, size, key, path, opts)
}

// OpenFile opens the protected file in b (of size bytes) for reading and
// writing.
func OpenFile(b Backing, size int64, key Key, path string, opts *Options) (*File, error) {
	return open(b, b, size, key, path, opts)
}

// Create starts an empty protected file bound to path in b (which should be
// empty) and writes its metadata node.
func Create(b Backing, key Key, path string, opts *Options) (*File, error) {
	p := NormPath(path)
	if len(p) >= pathMaxSize {
		return nil, fmt.Errorf("path %q is longer than the format's %d bytes", p, pathMaxSize-1)
	}
	f := newFile(b, b, key, opts)
	copy(f.md.path[:], p)
	f.dirty = true
	if err := f.Flush(); err != nil {
		return nil, err
	}
	return f, nil
}

func newFile(r io.ReaderAt, w Backing, key Key, opts *Options) *File {
	f := &File{r: r, w: w, key: key, cache: map[uint64]*node{}, rand: opts.rand(), limit: opts.limit()}
	f.root = node{mht: true, physical: 1}
	return f
}

func open(r io.ReaderAt, w Backing, size int64, key Key, path string, opts *Options) (*File, error) {
	if size < NodeSize {
		var b [8]byte
		if n, _ := r.ReadAt(b[:], 0); n < len(b) || !IsPF(b[:]) {
			return nil, ErrNotPF
		}
		return nil, integrityf("file is %d bytes, shorter than its metadata node", size)
	}
	f := newFile(r, w, key, opts)
	nodeBuf := make([]byte, NodeSize)
	if _, err := r.ReadAt(nodeBuf, 0); err != nil {
		return nil, fmt.Errorf("reading metadata node: %w", err)
	}
	h, enc, err := parseMetadataNode(nodeBuf)
	if err != nil {
		return nil, err
	}
	if size%NodeSize != 0 {
		return nil, integrityf("file size %d is not a multiple of %d", size, NodeSize)
	}
	mk := metadataKey(&key, &h.nonce)
	in := append(slices.Clip(enc), h.mac[:]...)
	plain, err := newGCM(mk[:]).Open(nil, zeroIV[:], in, nil)
	clear(mk[:])
	if err != nil {
		return nil, integrityf("metadata MAC mismatch: wrong key, or the header was modified")
	}
	f.hdr = h
	f.md.unmarshal(plain)
	clear(plain)
	if want := NormPath(path); f.md.boundPath() != want {
		return nil, &PathError{Bound: f.md.boundPath(), Want: want}
	}
	if uint64(size) != physicalSize(f.md.size) {
		return nil, integrityf("file is %d bytes on disk but its metadata records %d bytes of plaintext (%d on disk): truncated or extended", size, f.md.size, physicalSize(f.md.size))
	}
	if f.md.size > mdDataSize {
		if err := f.readNode(&f.root, f.md.rootKey[:], f.md.rootMAC[:]); err != nil {
			return nil, err
		}
	}
	if h.major == versionMajor1 {
		f.dirty = w != nil // rewritten as version 2 on the first flush
	}
	return f, nil
}

// readNode reads n's ciphertext and decrypts it under key, checking mac.
func (f *File) readNode(n *node, key, mac []byte) error {
	ct := f.buf[:NodeSize]
	if k, err := f.r.ReadAt(ct, int64(n.physical)*NodeSize); k < NodeSize {
		if err == nil || errors.Is(err, io.EOF) {
			return integrityf("node %d is missing: file truncated", n.physical)
		}
		return fmt.Errorf("reading node %d: %w", n.physical, err)
	}
	copy(f.buf[NodeSize:], mac)
	if _, err := newGCM(key).Open(n.plain[:0], zeroIV[:], f.buf[:], nil); err != nil {
		kind := "data"
		if n.mht {
			kind = "MHT"
		}
		return integrityf("%s node %d MAC mismatch", kind, n.physical)
	}
	return nil
}

// Path returns the path the file is bound to.
func (f *File) Path() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.md.boundPath()
}

// Size returns the plaintext size.
func (f *File) Size() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return int64(f.md.size)
}

// exists reports whether the node covering plaintext offset off is on disk
// (files are dense: every node below the size exists).
func (f *File) exists(off uint64) bool { return f.md.size > off }

func (f *File) mhtNode(m uint64) (*node, error) {
	if m == 0 {
		return &f.root, nil
	}
	phys := mhtPhys(m)
	if n := f.cache[phys]; n != nil {
		return n, nil
	}
	parent, err := f.mhtNode((m - 1) / childrenPerMHT)
	if err != nil {
		return nil, err
	}
	n := &node{mht: true, logical: m, physical: phys, parent: parent}
	if f.exists(mdDataSize + m*dataPerMHT*NodeSize) {
		e := n.entry()
		if err := f.readNode(n, e[:KeySize], e[KeySize:]); err != nil {
			return nil, err
		}
	}
	f.cache[phys] = n
	return n, nil
}

func (f *File) dataNode(d uint64) (*node, error) {
	phys := dataPhys(d)
	if n := f.cache[phys]; n != nil {
		return n, nil
	}
	parent, err := f.mhtNode(d / dataPerMHT)
	if err != nil {
		return nil, err
	}
	n := &node{logical: d, physical: phys, parent: parent}
	if f.exists(mdDataSize + d*NodeSize) {
		e := n.entry()
		if err := f.readNode(n, e[:KeySize], e[KeySize:]); err != nil {
			return nil, err
		}
	}
	f.cache[phys] = n
	return n, nil
}

func (f *File) check() error {
	if f.err != nil {
		return f.err
	}
	if f.r == nil {
		return ErrClosed
	}
	return nil
}

func (f *File) fail(err error) error {
	if errors.Is(err, ErrIntegrity) {
		f.err = err
	}
	return err
}

// ReadAt implements io.ReaderAt over the plaintext. Every node is
// authenticated before its bytes are returned.
func (f *File) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	size := f.md.size
	if uint64(off) >= size {
		return 0, io.EOF
	}
	want := len(p)
	if rem := size - uint64(off); uint64(want) > rem {
		p = p[:rem]
	}
	n := 0
	o := uint64(off)
	if o < mdDataSize {
		n = copy(p, f.md.data[o:])
		o += uint64(n)
	}
	for n < len(p) {
		d := (o - mdDataSize) / NodeSize
		dn, err := f.dataNode(d)
		if err != nil {
			return n, f.fail(err)
		}
		k := copy(p[n:], dn.plain[(o-mdDataSize)%NodeSize:])
		n += k
		o += uint64(k)
		if err := f.trim(); err != nil {
			return n, err
		}
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt implements io.WriterAt; writing past the end fills the gap with
// zeros, as Gramine does.
func (f *File) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return 0, err
	}
	if f.w == nil {
		return 0, ErrReadOnly
	}
	if off < 0 {
		return 0, errors.New("negative offset")
	}
	if uint64(off) > f.md.size {
		if _, err := f.write(nil, f.md.size, uint64(off)-f.md.size); err != nil {
			return 0, err
		}
	}
	return f.write(p, uint64(off), uint64(len(p)))
}

// write copies n bytes of p (zeros if p is nil) to plaintext offset off.
func (f *File) write(p []byte, off, n uint64) (int, error) {
	done := uint64(0)
	put := func(dst []byte) uint64 {
		k := min(uint64(len(dst)), n-done)
		if p == nil {
			clear(dst[:k])
		} else {
			copy(dst, p[done:done+k])
		}
		return k
	}
	if off < mdDataSize && n > 0 {
		k := put(f.md.data[off:])
		done += k
		off += k
		f.md.size = max(f.md.size, off)
		f.dirty = true
	}
	for done < n {
		d := (off - mdDataSize) / NodeSize
		dn, err := f.dataNode(d)
		if err != nil {
			return int(done), f.fail(err)
		}
		k := put(dn.plain[(off-mdDataSize)%NodeSize:])
		done += k
		off += k
		f.md.size = max(f.md.size, off)
		if !dn.dirty {
			dn.dirty = true
			for m := dn.parent; m != nil; m = m.parent {
				m.dirty = true
			}
		}
		f.dirty = true
		if err := f.trim(); err != nil {
			return int(done), err
		}
	}
	return int(done), nil
}

// trim keeps the cache within its bound, flushing first if it holds dirty
// nodes.
func (f *File) trim() error {
	if len(f.cache) <= f.limit {
		return nil
	}
	if f.dirty {
		if err := f.flush(); err != nil {
			return err
		}
	}
	clear(f.cache) // keys and plaintext go with the nodes
	return nil
}

// Truncate sets the plaintext size, as Gramine does: growing writes zeros,
// shrinking cuts the backing file after the last node still in use.
func (f *File) Truncate(size int64) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return err
	}
	if f.w == nil {
		return ErrReadOnly
	}
	if size < 0 {
		return errors.New("negative size")
	}
	s := uint64(size)
	if s == f.md.size {
		return nil
	}
	if s > f.md.size {
		_, err := f.write(nil, f.md.size, s-f.md.size)
		return err
	}
	if err := f.flush(); err != nil {
		return err
	}
	clear(f.cache)
	if err := f.w.Truncate(int64(physicalSize(s))); err != nil {
		return fmt.Errorf("truncating: %w", err)
	}
	f.md.size = s
	f.dirty = true
	return f.flush()
}

// Flush encrypts every changed node under a fresh key, bottom-up, and
// writes the nodes, the root and then the metadata node.
func (f *File) Flush() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return err
	}
	return f.flush()
}

func (f *File) newKey(k []byte) error {
	if _, err := io.ReadFull(f.rand, k); err != nil {
		return fmt.Errorf("reading randomness: %w", err)
	}
	return nil
}

// sealed is a node encrypted by a flush, waiting to be written.
type sealed struct {
	physical uint64
	ct       []byte
}

// seal encrypts n under a fresh key, records key and MAC in dst, and
// queues the ciphertext in *out.
func (f *File) seal(n *node, dst []byte, out *[]sealed, slab []byte) error {
	var key [KeySize]byte
	if err := f.newKey(key[:]); err != nil {
		return err
	}
	ct := newGCM(key[:]).Seal(slab[:0], zeroIV[:], n.plain[:], nil)
	copy(dst[:KeySize], key[:])
	copy(dst[KeySize:entrySize], ct[NodeSize:])
	clear(key[:])
	*out = append(*out, sealed{n.physical, ct[:NodeSize]})
	n.dirty = false
	return nil
}

// writeNodes writes queued nodes in physical order, one write per run of
// adjacent nodes.
func (f *File) writeNodes(q []sealed) error {
	slices.SortFunc(q, func(a, b sealed) int { return cmp.Compare(a.physical, b.physical) })
	var run []byte
	for i := 0; i < len(q); {
		j := i + 1
		for j < len(q) && q[j].physical == q[j-1].physical+1 {
			j++
		}
		b := q[i].ct
		if j-i > 1 {
			run = run[:0]
			for _, s := range q[i:j] {
				run = append(run, s.ct...)
			}
			b = run
		}
		if _, err := f.w.WriteAt(b, int64(q[i].physical)*NodeSize); err != nil {
			return fmt.Errorf("writing node %d: %w", q[i].physical, err)
		}
		i = j
	}
	return nil
}

func (f *File) flush() error {
	if !f.dirty || f.w == nil {
		return nil
	}
	if f.md.size > mdDataSize && f.root.dirty {
		var datas, mhts []*node
		for _, n := range f.cache {
			switch {
			case !n.dirty:
			case n.mht:
				mhts = append(mhts, n)
			default:
				datas = append(datas, n)
			}
		}
		count := len(datas) + len(mhts) + 1
		slab := make([]byte, count*(NodeSize+macSize))
		q := make([]sealed, 0, count)
		next := func() []byte {
			b := slab[:NodeSize+macSize]
			slab = slab[NodeSize+macSize:]
			return b
		}
		// In node order, so that a fixed Options.Rand gives fixed bytes.
		slices.SortFunc(datas, func(a, b *node) int { return cmp.Compare(a.logical, b.logical) })
		for _, n := range datas {
			if err := f.seal(n, n.entry(), &q, next()); err != nil {
				return err
			}
		}
		// Children before parents: a parent's entries hold its children's
		// new keys and MACs.
		slices.SortFunc(mhts, func(a, b *node) int { return cmp.Compare(b.logical, a.logical) })
		for _, n := range mhts {
			if err := f.seal(n, n.entry(), &q, next()); err != nil {
				return err
			}
		}
		var rk [entrySize]byte
		if err := f.seal(&f.root, rk[:], &q, next()); err != nil {
			return err
		}
		copy(f.md.rootKey[:], rk[:KeySize])
		copy(f.md.rootMAC[:], rk[KeySize:])
		clear(rk[:])
		// Nodes and root first, the metadata that authenticates them last.
		if err := f.writeNodes(q); err != nil {
			return err
		}
	}
	if err := f.newKey(f.hdr.nonce[:]); err != nil {
		return err
	}
	mk := metadataKey(&f.key, &f.hdr.nonce)
	plain := make([]byte, encSize)
	f.md.marshal(plain)
	out := newGCM(mk[:]).Seal(nil, zeroIV[:], plain, nil)
	clear(mk[:])
	clear(plain)
	f.hdr.major, f.hdr.minor, f.hdr.flags = versionMajor, versionMinor, 0
	copy(f.hdr.mac[:], out[encSize:])
	node0 := make([]byte, NodeSize)
	f.hdr.marshal(node0)
	copy(node0[plainSize:], out[:encSize])
	if _, err := f.w.WriteAt(node0, 0); err != nil {
		return fmt.Errorf("writing metadata node: %w", err)
	}
	f.dirty = false
	return nil
}

// Close flushes a writable file and forgets its keys and plaintext.
func (f *File) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.r == nil {
		return ErrClosed
	}
	var err error
	if f.err == nil {
		err = f.flush()
	}
	clear(f.cache)
	clear(f.key[:])
	f.md = metadata{}
	f.root = node{}
	f.r, f.w = nil, nil
	return err
}

// Rename binds the file to a new path (normalized with NormPath) and
// rewrites its metadata, as Gramine does when a program renames a file.
// Moving the backing file is the caller's.
func (f *File) Rename(path string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.check(); err != nil {
		return err
	}
	if f.w == nil {
		return ErrReadOnly
	}
	p := NormPath(path)
	if len(p) >= pathMaxSize {
		return fmt.Errorf("path %q is longer than the format's %d bytes", p, pathMaxSize-1)
	}
	clear(f.md.path[:])
	copy(f.md.path[:], p)
	f.dirty = true
	return f.flush()
}
