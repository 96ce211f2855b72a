package trustimage

import (
	"bytes"
	"context"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
)

// Reader errors.
var (
	// ErrCorrupt is wrapped by every *BlockError: stored bytes do not match
	// the hash tree (tampering, truncation or disk corruption).
	ErrCorrupt = errors.New("image does not match its hash tree")
	// ErrWrongKey reports an image key that is not the one the image was
	// encrypted with.
	ErrWrongKey = errors.New("wrong image key")
	// ErrNoKey reports a read of an encrypted image opened without its key.
	ErrNoKey = errors.New("image is encrypted and no image key was given")
)

// BlockError names the first block of the image file that failed
// verification.
type BlockError struct {
	Area   string // "data", "hash tree" or "verity superblock"
	Block  uint64 // index of the 4096-byte block within the image file
	Offset int64  // byte offset of that block in the image file
	Reason string
}

func (e *BlockError) Error() string {
	return fmt.Sprintf("image block %d (%s, bytes %d-%d): %s", e.Block, e.Area, e.Offset, e.Offset+BlockSize-1, e.Reason)
}

// Unwrap makes a BlockError match ErrCorrupt.
func (e *BlockError) Unwrap() error { return ErrCorrupt }

// Reader reads the plaintext squashfs of an image, verifying every block
// it returns against the hash tree (and decrypting it if the image is
// encrypted). The whole tree is read and checked against the root hash when
// the Reader is opened. It is an io.ReaderAt, safe for concurrent use.
type Reader struct {
	f      *os.File
	info   ImageInfo
	salt   []byte
	leaves []byte // level-0 hashes, one per data block
	bc     *blockCipher
}

// OpenFile opens the image at path described by info. key is the image
// key for an encrypted image; it may be nil, in which case only Verify
// works.
func OpenFile(path string, info ImageInfo, key []byte) (*Reader, error) {
	salt, err := decodeHex(info.Salt, saltSize)
	if err != nil {
		return nil, fmt.Errorf("%w: salt: %v", ErrBadRecord, err)
	}
	root, err := decodeHex(info.RootHash, hashSize)
	if err != nil {
		return nil, fmt.Errorf("%w: root hash: %v", ErrBadRecord, err)
	}
	r := &Reader{info: info, salt: salt}
	if e := info.Encryption; e != nil && key != nil {
		if subtle.ConstantTimeCompare([]byte(KeyID(key)), []byte(e.KeyID)) != 1 {
			return nil, ErrWrongKey
		}
		ks, err := decodeHex(e.KeySalt, 32)
		if err != nil {
			return nil, fmt.Errorf("%w: key salt: %v", ErrBadRecord, err)
		}
		if r.bc, err = newBlockCipher(key, ks); err != nil {
			return nil, err
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening image: %w", err)
	}
	r.f = f
	if err := r.loadTree(root); err != nil {
		f.Close()
		return nil, err
	}
	return r, nil
}

func (r *Reader) loadTree(root []byte) error {
	fi, err := r.f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != r.info.Size {
		return &BlockError{Area: "data", Block: uint64(min(fi.Size(), r.info.Size) / BlockSize), Offset: min(fi.Size(), r.info.Size) / BlockSize * BlockSize,
			Reason: fmt.Sprintf("image file is %d bytes, the build record says %d", fi.Size(), r.info.Size)}
	}
	sbOff := r.info.HashOffset
	sbBlock := uint64(sbOff / BlockSize)
	sb := make([]byte, BlockSize)
	if _, err := r.f.ReadAt(sb, sbOff); err != nil {
		return fmt.Errorf("reading verity superblock: %w", err)
	}
	p, err := parseSuperblock(sb)
	if err != nil || p.dataBlocks != r.info.DataBlocks || !bytes.Equal(p.salt, r.salt) {
		reason := "does not match the build record"
		if err != nil {
			reason = err.Error()
		}
		return &BlockError{Area: "verity superblock", Block: sbBlock, Offset: sbOff, Reason: reason}
	}
	starts, total := treeLayout(r.info.DataBlocks)
	tree := make([]byte, total*BlockSize)
	treeOff := sbOff + BlockSize
	if _, err := r.f.ReadAt(tree, treeOff); err != nil {
		return fmt.Errorf("reading hash tree: %w", err)
	}
	sizes := levelSizes(r.info.DataBlocks)
	if len(sizes) == 0 { // one data block: its hash is the root hash
		r.leaves = root
		return nil
	}
	// Check from the top: the single top block against the root hash, then
	// every block of each level against the hashes in the level above.
	top := len(sizes) - 1
	h := hashBlock(r.salt, tree[starts[top]*BlockSize:(starts[top]+1)*BlockSize])
	if subtle.ConstantTimeCompare(h[:], root) != 1 {
		return &BlockError{Area: "hash tree", Block: uint64(treeOff/BlockSize) + starts[top], Offset: treeOff + int64(starts[top]*BlockSize), Reason: "does not match the root hash"}
	}
	for lvl := top - 1; lvl >= 0; lvl-- {
		parent := tree[starts[lvl+1]*BlockSize:]
		for b := uint64(0); b < sizes[lvl]; b++ {
			blk := tree[(starts[lvl]+b)*BlockSize : (starts[lvl]+b+1)*BlockSize]
			h := hashBlock(r.salt, blk)
			if subtle.ConstantTimeCompare(h[:], parent[b*hashSize:(b+1)*hashSize]) != 1 {
				idx := starts[lvl] + b
				return &BlockError{Area: "hash tree", Block: uint64(treeOff/BlockSize) + idx, Offset: treeOff + int64(idx*BlockSize), Reason: "does not match its parent hash"}
			}
		}
	}
	r.leaves = tree[starts[0]*BlockSize : starts[0]*BlockSize+r.info.DataBlocks*hashSize]
	return nil
}

// Size is the size of the plaintext squashfs the Reader serves.
func (r *Reader) Size() int64 { return int64(r.info.DataBlocks) * BlockSize }

// Encrypted reports whether the image is encrypted.
func (r *Reader) Encrypted() bool { return r.info.Encryption != nil }

// RootHash returns the hex root hash the Reader verifies against.
func (r *Reader) RootHash() string { return r.info.RootHash }

// Close closes the image file.
func (r *Reader) Close() error { return r.f.Close() }

// ReadAt reads verified (and decrypted) bytes of the squashfs. A block that
// does not match the tree yields a *BlockError and no data from it.
func (r *Reader) ReadAt(p []byte, off int64) (int, error) {
	if r.info.Encryption != nil && r.bc == nil {
		return 0, ErrNoKey
	}
	if off < 0 {
		return 0, errors.New("image: negative offset")
	}
	size := r.Size()
	if off >= size {
		return 0, io.EOF
	}
	want := len(p)
	if int64(want) > size-off {
		p = p[:size-off]
	}
	first := uint64(off / BlockSize)
	last := uint64((off + int64(len(p)) - 1) / BlockSize)
	bp := readBufs.Get().(*[]byte)
	defer readBufs.Put(bp)
	buf := *bp
	n := 0
	for b := first; b <= last; b += readChunk {
		cnt := min(readChunk, last-b+1)
		blk := buf[:cnt*BlockSize]
		if err := r.readBlocks(blk, b); err != nil {
			return n, err
		}
		start := int64(0)
		if b == first {
			start = off - int64(first*BlockSize)
		}
		n += copy(p[n:], blk[start:])
	}
	if n < want {
		return n, io.EOF
	}
	return n, nil
}

// readChunk is how many blocks ReadAt reads, verifies and decrypts at a
// time, into a pooled buffer.
const readChunk = 64

var readBufs = sync.Pool{New: func() any { b := make([]byte, readChunk*BlockSize); return &b }}

// readBlocks reads, verifies and decrypts blocks [first, first+len/BlockSize).
func (r *Reader) readBlocks(buf []byte, first uint64) error {
	if _, err := r.f.ReadAt(buf, int64(first*BlockSize)); err != nil {
		return fmt.Errorf("reading image block %d: %w", first, err)
	}
	if err := r.checkBlocks(buf, first); err != nil {
		return err
	}
	if r.bc != nil {
		r.bc.xor(buf, first)
	}
	return nil
}

func (r *Reader) checkBlocks(buf []byte, first uint64) error {
	for i := uint64(0); i < uint64(len(buf)/BlockSize); i++ {
		b := first + i
		h := hashBlock(r.salt, buf[i*BlockSize:(i+1)*BlockSize])
		if subtle.ConstantTimeCompare(h[:], r.leaves[b*hashSize:(b+1)*hashSize]) != 1 {
			return &BlockError{Area: "data", Block: b, Offset: int64(b * BlockSize), Reason: "does not match the hash tree"}
		}
	}
	return nil
}

// Verify checks every data block against the tree (the tree itself was
// checked by Open). It needs no key. progress, if set, gets bytes done.
func (r *Reader) Verify(ctx context.Context, progress func(int64)) error {
	const chunk = 256
	buf := make([]byte, chunk*BlockSize)
	for b := uint64(0); b < r.info.DataBlocks; b += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(chunk, r.info.DataBlocks-b)
		p := buf[:n*BlockSize]
		if _, err := r.f.ReadAt(p, int64(b*BlockSize)); err != nil {
			return fmt.Errorf("reading image block %d: %w", b, err)
		}
		if err := r.checkBlocks(p, b); err != nil {
			return err
		}
		if progress != nil {
			progress(int64(len(p)))
		}
	}
	return nil
}

// FormatRoot returns the hex form of a 32-byte hash.
func FormatRoot(h [32]byte) string { return hex.EncodeToString(h[:]) }
