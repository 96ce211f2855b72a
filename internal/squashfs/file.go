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
// The blocks p covers whole are decoded straight into p; a block p covers
// only in part (the kernel's reads are page-aligned, not block-aligned)
// and the fragment block holding a file's tail are decoded into the
// cache, where the next read of the rest of them finds them.
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
		if bi >= int64(len(in.blockSizes)) { // the tail in a fragment
			frag, err := f.fragment(in)
			if err != nil {
				return n, err
			}
			if inBlock >= int64(len(frag)) {
				return n, formatErr("fragment shorter than the file")
			}
			n += copy(p[n:], frag[inBlock:])
			continue
		}
		blockLen := min(bs, size-bi*bs) // plaintext length of block bi
		if inBlock == 0 && int64(len(p)-n) >= blockLen {
			// A run of whole blocks: one read of their stored bytes,
			// decoded straight into p.
			k := 1
			for int(bi)+k < len(in.blockSizes) && int64(len(p)-n) >= min(bs*int64(k+1), size-bi*bs) {
				k++
			}
			m, err := f.readRun(in, int(bi), k, p[n:])
			n += m
			if err != nil {
				return n, err
			}
			continue
		}
		blk, err := f.block(in, int(bi), blockLen)
		if err != nil {
			return n, err
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

// readRun decodes blocks [first, first+k) of in, all whole, into p.
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
	pos := in.blockPos(i)
	if in.blockSizes[i]&^uncompressed == 0 {
		return make([]byte, blockLen), nil // sparse: not cached, keyed by a shared position
	}
	if b := f.cache.get(pos); b != nil {
		return b, nil
	}
	b := make([]byte, blockLen, blockLen+overAlloc)
	if _, err := f.readRun(in, i, 1, b); err != nil {
		return nil, err
	}
	f.cache.put(pos, b)
	return b, nil
}

// fragment returns the tail of in, kept in its fragment block.
func (f *FS) fragment(in *Inode) ([]byte, error) {
	if in.fragIndex == noFragment {
		return nil, formatErr("file has no fragment")
	}
	fr := f.frags[in.fragIndex]
	tail := int64(in.Size % uint64(f.blockSize))
	blk := f.cache.get(fr.start)
	if blk == nil {
		stored := int64(fr.size &^ uncompressed)
		if stored > int64(f.blockSize) || fr.start < 0 || fr.start+stored > f.size {
			return nil, formatErr("fragment block %d at %d of %d bytes", in.fragIndex, fr.start, stored)
		}
		raw := make([]byte, stored)
		if _, err := readFull(f.r, raw, fr.start); err != nil {
			return nil, fmt.Errorf("reading fragment block %d: %w", in.fragIndex, err)
		}
		blk = raw
		if fr.size&uncompressed == 0 {
			var err error
			if blk, err = f.decompress(raw, make([]byte, 0, f.blockSize+overAlloc), int(f.blockSize)); err != nil {
				return nil, fmt.Errorf("fragment block %d: %w", in.fragIndex, err)
			}
		}
		f.cache.put(fr.start, blk)
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
	mu    sync.Mutex
	max   int
	bytes int
	lru   list.List // of *cached, front = most recent
	byPos map[int64]*list.Element
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
}

func (c *blockCache) get(pos int64) []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.byPos[pos]; e != nil {
		c.lru.MoveToFront(e)
		return e.Value.(*cached).data
	}
	return nil
}

func (c *blockCache) put(pos int64, data []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
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
