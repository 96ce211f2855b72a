package squashfs

import (
	"container/list"
	"fmt"
	"io"
	"sync"
)

// ReadAt reads file content of in at off into p. It returns io.EOF when
// it reached the end of the file, as io.ReaderAt does.
//
// Every data and fragment block is decoded once into the cache and copied
// from there: concurrent readers of one block (the kernel's parallel
// read-ahead requests and a reader going through the file ahead of them)
// wait for one decoding instead of each decoding it.
func (f *FS) ReadAt(in *Inode, p []byte, off int64) (int, error) {
	if in.Type != File {
		return 0, formatErr("not a regular file")
	}
	if off < 0 {
		return 0, fmt.Errorf("squashfs: negative offset %d", off)
	}
	size := int64(in.Size)
	if off >= size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > size-off {
		p = p[:size-off]
	}
	bs := int64(f.blockSize)
	n := 0
	for n < len(p) {
		pos := off + int64(n)
		bi := pos / bs
		inBlock := pos - bi*bs
		var blk []byte
		var err error
		if bi >= int64(len(in.blockSizes)) { // the tail in a fragment
			blk, err = f.fragment(in)
		} else {
			blk, err = f.block(in, int(bi), min(bs, size-bi*bs))
		}
		if err != nil {
			return n, err
		}
		if inBlock >= int64(len(blk)) {
			return n, formatErr("block shorter than the file")
		}
		n += copy(p[n:], blk[inBlock:])
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// blockPos is where block i of in is stored.
func (in *Inode) blockPos(i int) int64 {
	pos := in.blocksStart
	for _, s := range in.blockSizes[:i] {
		pos += int64(s &^ uncompressed)
	}
	return pos
}

// readRun decodes blocks [first, first+k) of in, all whole, into p, with
// one read of their stored bytes.
func (f *FS) readRun(in *Inode, first, k int, p []byte) (int, error) {
	bs := int64(f.blockSize)
	size := int64(in.Size)
	pos := in.blockPos(first)
	stored := int64(0)
	for _, s := range in.blockSizes[first : first+k] {
		stored += int64(s &^ uncompressed)
	}
	if pos+stored > f.size {
		return 0, formatErr("data blocks outside the image")
	}
	pooled := f.bufs.Get().(*[]byte)
	defer f.bufs.Put(pooled)
	if int64(cap(*pooled)) < stored {
		*pooled = make([]byte, stored)
	}
	raw := (*pooled)[:stored]
	if _, err := readFull(f.r, raw, pos); err != nil {
		return 0, fmt.Errorf("reading data blocks at %d: %w", pos, err)
	}
	n := 0
	for i := first; i < first+k; i++ {
		s := in.blockSizes[i]
		blockLen := int(min(bs, size-int64(i)*bs))
		dst := p[n : n+blockLen]
		sn := int(s &^ uncompressed)
		src := raw[:sn]
		raw = raw[sn:]
		switch {
		case sn == 0: // sparse
			clear(dst)
		case s&uncompressed != 0:
			if sn != blockLen {
				return n, formatErr("stored block of %d bytes, want %d", sn, blockLen)
			}
			copy(dst, src)
		default:
			// Room for the decoder's over-long copies past the block
			// (its fast path), when p has it: the next block's place,
			// decoded after this one, or p's spare capacity.
			room := dst[:0:min(blockLen+overAlloc, cap(p)-n)]
			out, err := f.decompress(src, room, blockLen)
			if err != nil {
				return n, err
			}
			if len(out) != blockLen {
				return n, formatErr("block decompresses to %d bytes, want %d", len(out), blockLen)
			}
			if &out[0] != &dst[0] {
				copy(dst, out)
			}
		}
		n += blockLen
	}
	return n, nil
}

// block returns block i of in (blockLen bytes), from the cache or decoded
// into it.
func (f *FS) block(in *Inode, i int, blockLen int64) ([]byte, error) {
	if in.blockSizes[i]&^uncompressed == 0 {
		return make([]byte, blockLen), nil // sparse: not cached, keyed by a shared position
	}
	return f.cache.do(in.blockPos(i), func() ([]byte, error) {
		b := make([]byte, blockLen, blockLen+overAlloc)
		if _, err := f.readRun(in, i, 1, b); err != nil {
			return nil, err
		}
		return b, nil
	})
}

// fragment returns the tail of in, kept in its fragment block.
func (f *FS) fragment(in *Inode) ([]byte, error) {
	if in.fragIndex == noFragment {
		return nil, formatErr("file has no fragment")
	}
	fr := f.frags[in.fragIndex]
	tail := int64(in.Size % uint64(f.blockSize))
	blk, err := f.cache.do(fr.start, func() ([]byte, error) {
		stored := int64(fr.size &^ uncompressed)
		if stored > int64(f.blockSize) || fr.start < 0 || fr.start+stored > f.size {
			return nil, formatErr("fragment block %d at %d of %d bytes", in.fragIndex, fr.start, stored)
		}
		raw := make([]byte, stored)
		if _, err := readFull(f.r, raw, fr.start); err != nil {
			return nil, fmt.Errorf("reading fragment block %d: %w", in.fragIndex, err)
		}
		if fr.size&uncompressed != 0 {
			return raw, nil
		}
		blk, err := f.decompress(raw, make([]byte, 0, f.blockSize+overAlloc), int(f.blockSize))
		if err != nil {
			return nil, fmt.Errorf("fragment block %d: %w", in.fragIndex, err)
		}
		return blk, nil
	})
	if err != nil {
		return nil, err
	}
	end := int64(in.fragOffset) + tail
	if end > int64(len(blk)) {
		return nil, formatErr("file tail beyond its fragment block")
	}
	return blk[in.fragOffset:end], nil
}

// blockCache keeps decompressed blocks by stored position, least
// recently used dropped first, up to max bytes.
type blockCache struct {
	mu      sync.Mutex
	max     int
	bytes   int
	lru     list.List // of *cached, front = most recent
	byPos   map[int64]*list.Element
	flights map[int64]*flight // blocks being decoded
}

// flight is one decoding of a block that other readers of it wait for.
type flight struct {
	done chan struct{}
	data []byte
	err  error
}

// do returns the block at pos: cached, being decoded by another caller
// (waited for), or decoded by decode now and cached.
func (c *blockCache) do(pos int64, decode func() ([]byte, error)) ([]byte, error) {
	c.mu.Lock()
	if e := c.byPos[pos]; e != nil {
		c.lru.MoveToFront(e)
		c.mu.Unlock()
		return e.Value.(*cached).data, nil
	}
	if fl := c.flights[pos]; fl != nil {
		c.mu.Unlock()
		<-fl.done
		return fl.data, fl.err
	}
	fl := &flight{done: make(chan struct{})}
	c.flights[pos] = fl
	c.mu.Unlock()
	fl.data, fl.err = decode()
	c.mu.Lock()
	delete(c.flights, pos)
	if fl.err == nil {
		c.putLocked(pos, fl.data)
	}
	c.mu.Unlock()
	close(fl.done)
	return fl.data, fl.err
}

type cached struct {
	pos  int64
	data []byte
}

// DefaultCacheBytes is the block cache of an FS opened with CacheBytes 0.
const DefaultCacheBytes = 16 << 20

func (c *blockCache) init(max int) {
	if max <= 0 {
		max = DefaultCacheBytes
	}
	c.max = max
	c.byPos = map[int64]*list.Element{}
	c.flights = map[int64]*flight{}
}

func (c *blockCache) putLocked(pos int64, data []byte) {
	if c.byPos[pos] != nil || len(data) > c.max {
		return
	}
	c.byPos[pos] = c.lru.PushFront(&cached{pos: pos, data: data})
	c.bytes += len(data)
	for c.bytes > c.max {
		e := c.lru.Back()
		v := c.lru.Remove(e).(*cached)
		delete(c.byPos, v.pos)
		c.bytes -= len(v.data)
	}
}
