package trustimage

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
)

// dm-verity parameters used by veil (docs/formats/image.md).
const (
	BlockSize      = 4096
	hashSize       = sha256.Size
	hashesPerBlock = BlockSize / hashSize
	saltSize       = 32
	superblockSize = 512
	verityVersion  = 1 // "normal" format: salt prepended to each hashed block
)

var verityMagic = [8]byte{'v', 'e', 'r', 'i', 't', 'y', 0, 0}

// verityParams describe a hash tree over dataBlocks blocks of BlockSize.
type verityParams struct {
	dataBlocks uint64
	salt       []byte
	uuid       [16]byte
}

// levels returns the number of hash blocks on each tree level, from the
// level just above the data (index 0) to the top (one block).
// As in veritysetup, a single data block needs no hash block: its hash is
// the root hash.
func levelSizes(dataBlocks uint64) []uint64 {
	var sizes []uint64
	n := dataBlocks
	if n <= 1 {
		return nil
	}
	for {
		n = (n + hashesPerBlock - 1) / hashesPerBlock
		sizes = append(sizes, n)
		if n <= 1 {
			return sizes
		}
	}
}

// treeLayout gives, for each level (0 = lowest), the index of its first
// hash block counted from the start of the tree (after the superblock).
// As in veritysetup, the top level comes first on disk.
func treeLayout(dataBlocks uint64) (starts []uint64, total uint64) {
	sizes := levelSizes(dataBlocks)
	starts = make([]uint64, len(sizes))
	for i := len(sizes) - 1; i >= 0; i-- {
		starts[i] = total
		total += sizes[i]
	}
	return starts, total
}

// hashBlock returns SHA-256(salt || block), the dm-verity version 1 hash.
func hashBlock(salt, block []byte) [hashSize]byte {
	h := sha256.New()
	h.Write(salt)
	h.Write(block)
	var out [hashSize]byte
	h.Sum(out[:0])
	return out
}

// buildTree computes the hash tree over leaves (the hashes of the data
// blocks, in order). It returns the tree blocks laid out as on disk and the
// root hash.
func buildTree(leaves []byte, dataBlocks uint64, salt []byte) (tree []byte, root [hashSize]byte) {
	starts, total := treeLayout(dataBlocks)
	tree = make([]byte, total*BlockSize)
	cur := leaves // hashes of the level below, packed
	for lvl := range starts {
		nblocks := (uint64(len(cur)/hashSize) + hashesPerBlock - 1) / hashesPerBlock
		area := tree[starts[lvl]*BlockSize : (starts[lvl]+nblocks)*BlockSize]
		copy(area, cur) // zero padding is already there
		next := make([]byte, 0, nblocks*hashSize)
		for b := uint64(0); b < nblocks; b++ {
			h := hashBlock(salt, area[b*BlockSize:(b+1)*BlockSize])
			next = append(next, h[:]...)
		}
		cur = next
	}
	copy(root[:], cur)
	return tree, root
}

func (p verityParams) superblock() []byte {
	sb := make([]byte, BlockSize)
	copy(sb[0:8], verityMagic[:])
	le := binary.LittleEndian
	le.PutUint32(sb[8:], verityVersion)
	le.PutUint32(sb[12:], 1) // hash_type 1: normal
	copy(sb[16:32], p.uuid[:])
	copy(sb[32:64], "sha256")
	le.PutUint32(sb[64:], BlockSize)
	le.PutUint32(sb[68:], BlockSize)
	le.PutUint64(sb[72:], p.dataBlocks)
	le.PutUint16(sb[80:], uint16(len(p.salt)))
	copy(sb[88:88+256], p.salt)
	return sb
}

// ErrBadSuperblock reports a verity superblock veil cannot use.
var ErrBadSuperblock = errors.New("bad verity superblock")

func parseSuperblock(sb []byte) (verityParams, error) {
	var p verityParams
	if len(sb) < superblockSize {
		return p, fmt.Errorf("%w: short", ErrBadSuperblock)
	}
	le := binary.LittleEndian
	switch {
	case !bytes.Equal(sb[0:8], verityMagic[:]):
		return p, fmt.Errorf("%w: no verity signature", ErrBadSuperblock)
	case le.Uint32(sb[8:]) != verityVersion || le.Uint32(sb[12:]) != 1:
		return p, fmt.Errorf("%w: unsupported version or hash type", ErrBadSuperblock)
	case string(bytes.TrimRight(sb[32:64], "\x00")) != "sha256":
		return p, fmt.Errorf("%w: hash algorithm is not sha256", ErrBadSuperblock)
	case le.Uint32(sb[64:]) != BlockSize || le.Uint32(sb[68:]) != BlockSize:
		return p, fmt.Errorf("%w: block sizes are not %d", ErrBadSuperblock, BlockSize)
	}
	n := le.Uint16(sb[80:])
	if n > 256 {
		return p, fmt.Errorf("%w: salt too long", ErrBadSuperblock)
	}
	p.dataBlocks = le.Uint64(sb[72:])
	p.salt = append([]byte{}, sb[88:88+int(n)]...)
	copy(p.uuid[:], sb[16:32])
	return p, nil
}

// hashLeaves reads dataBlocks blocks from r starting at 0 and returns their
// packed hashes, on every processor (r must allow concurrent ReadAt, as
// *os.File does). progress, if not nil, is told about bytes read; calls to
// it are serialized.
func hashLeaves(r io.ReaderAt, dataBlocks uint64, salt []byte, progress func(int64)) ([]byte, error) {
	return leavesOf(dataBlocks, salt, progress, func(b uint64, p []byte) error {
		if _, err := r.ReadAt(p, int64(b*BlockSize)); err != nil {
			return fmt.Errorf("reading image block %d: %w", b, err)
		}
		return nil
	})
}

// leafChunk is how many blocks a worker of leavesOf handles at a time.
const leafChunk = 256

// leavesOf returns the packed hashes of dataBlocks blocks, which fill puts
// into p chunk by chunk (up to leafChunk blocks, the first at block b), on
// GOMAXPROCS workers. Chunks are disjoint, so fill may write its own part
// of a file. The first error stops the workers and is returned.
func leavesOf(dataBlocks uint64, salt []byte, progress func(int64), fill func(b uint64, p []byte) error) ([]byte, error) {
	leaves := make([]byte, dataBlocks*hashSize)
	chunks := (dataBlocks + leafChunk - 1) / leafChunk
	workers := uint64(max(1, runtime.GOMAXPROCS(0)))
	workers = min(workers, chunks)
	var (
		next   atomic.Uint64
		failed atomic.Bool
		mu     sync.Mutex
		first  error
		wg     sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			buf := make([]byte, leafChunk*BlockSize)
			h := &blockHasher{h: sha256.New(), salt: salt}
			for !failed.Load() {
				c := next.Add(1) - 1
				if c >= chunks {
					return
				}
				b := c * leafChunk
				n := min(leafChunk, dataBlocks-b)
				p := buf[:n*BlockSize]
				err := fill(b, p)
				if err == nil {
					h.hashInto(leaves[b*hashSize:], p)
				}
				mu.Lock()
				if err != nil && first == nil {
					first = err
					failed.Store(true)
				}
				if err == nil && progress != nil {
					progress(int64(len(p)))
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if first != nil {
		return nil, first
	}
	return leaves, nil
}

// blockHasher hashes blocks the dm-verity way with one reused SHA-256
// state.
type blockHasher struct {
	h    hash.Hash
	salt []byte
}

// hashInto writes the hash of each BlockSize block of p (hashBlock), packed,
// to dst.
func (bh *blockHasher) hashInto(dst, p []byte) {
	for i := 0; i*BlockSize < len(p); i++ {
		bh.h.Reset()
		bh.h.Write(bh.salt)
		bh.h.Write(p[i*BlockSize : (i+1)*BlockSize])
		bh.h.Sum(dst[i*hashSize : i*hashSize])
	}
}
