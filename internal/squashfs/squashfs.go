// Package squashfs reads the squashfs file systems veil's image builder
// writes (mksquashfs 4.x, zstd or uncompressed, no extended attributes)
// from an io.ReaderAt: superblock, inodes, directories, fragments, the ID
// table and file data.
//
// It exists because the image mount reads every byte of a program's
// start-up through it: it decompresses with one shared zstd decoder
// instead of a new one per block, decodes each block once into a
// byte-bounded cache (concurrent readers of a block wait for the one
// decoding), and returns the ReaderAt's errors wrapped (%w), so a caller
// can tell which verified block failed.
// It trusts nothing it reads beyond bounds checks: a malformed table is
// an error wrapping ErrFormat, never a panic.
package squashfs

import (
	"bytes"
	"compress/zlib"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// ErrFormat is wrapped by every error about a malformed or unsupported
// file system.
var ErrFormat = errors.New("malformed squashfs")

func formatErr(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrFormat}, args...)...)
}

const (
	magic         = 0x73717368
	superSize     = 96
	metaSize      = 8192
	noFragment    = 0xffffffff
	uncompressed  = 1 << 24 // data block and fragment size flag
	metaUncompBit = 1 << 15
	compGzip      = 1
	compZstd      = 6
	maxBlockSize  = 1 << 20
	maxNameLen    = 256
	maxLinkLen    = 4096
	// overAlloc is the spare capacity past a block's end that lets the
	// zstd decoder take its fast path (it may copy up to 16 bytes beyond
	// the output it produces; the decoded length is checked).
	overAlloc = 16
)

// Type is the kind of an inode.
type Type uint8

// Inode kinds. Devices, fifos and sockets are Other.
const (
	Dir Type = iota + 1
	File
	Symlink
	Other
)

// Inode is one stored file, directory or link.
type Inode struct {
	Type  Type
	Perm  uint16 // permission bits (and setuid, setgid, sticky)
	UID   uint32
	GID   uint32
	Mtime int64  // seconds since the epoch
	Size  uint64 // file content size, symlink target length
	Nlink uint32

	Target string // symlink target

	// directories
	dirBlock  uint32
	dirOffset uint16
	dirSize   uint32
	// regular files
	blocksStart int64
	blockSizes  []uint32
	fragIndex   uint32
	fragOffset  uint32
}

// DirEntry is one name in a directory.
type DirEntry struct {
	Name  string
	Inode *Inode
}

type fragment struct {
	start int64
	size  uint32
}

// FS is an opened squashfs. It is safe for concurrent use.
type FS struct {
	r         io.ReaderAt
	size      int64
	blockSize uint32
	comp      uint16
	inodeTab  int64
	dirTab    int64
	root      uint64
	ids       []uint32
	frags     []fragment

	zstd *zstd.Decoder

	metaMu sync.RWMutex
	meta   map[int64]*metaBlock

	cache blockCache
	bufs  sync.Pool // *[]byte: stored bytes of data blocks being read
}

type metaBlock struct {
	data []byte
	next int64 // position of the following metadata block
}

// Options tune an FS.
type Options struct {
	// CacheBytes bounds the memory for decompressed data blocks kept
	// between reads (partially read blocks and fragment blocks).
	CacheBytes int
}

// Open reads the superblock, the ID table and the fragment table of the
// squashfs of the given size in r.
func Open(r io.ReaderAt, size int64, opts Options) (*FS, error) {
	var sb [superSize]byte
	if _, err := readFull(r, sb[:], 0); err != nil {
		return nil, fmt.Errorf("reading the superblock: %w", err)
	}
	le := binary.LittleEndian
	if le.Uint32(sb[0:]) != magic {
		return nil, formatErr("no squashfs magic")
	}
	if maj := le.Uint16(sb[28:]); maj != 4 {
		return nil, formatErr("version %d is not 4", maj)
	}
	f := &FS{
		r:         r,
		size:      size,
		blockSize: le.Uint32(sb[12:]),
		comp:      le.Uint16(sb[20:]),
		root:      le.Uint64(sb[32:]),
		inodeTab:  int64(le.Uint64(sb[64:])),
		dirTab:    int64(le.Uint64(sb[72:])),
		meta:      map[int64]*metaBlock{},
	}
	if f.blockSize < 4096 || f.blockSize > maxBlockSize || f.blockSize&(f.blockSize-1) != 0 {
		return nil, formatErr("block size %d", f.blockSize)
	}
	if used := int64(le.Uint64(sb[40:])); used > size {
		return nil, formatErr("%d bytes used, image has %d", used, size)
	}
	switch f.comp {
	case compZstd:
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(runtime.GOMAXPROCS(0)),
			zstd.WithDecoderMaxMemory(maxBlockSize), zstd.WithDecoderMaxWindow(maxBlockSize),
			zstd.WithDecodeAllCapLimit(true))
		if err != nil {
			return nil, fmt.Errorf("creating the zstd decoder: %w", err)
		}
		f.zstd = d
	case compGzip:
	default:
		return nil, formatErr("compression %d is not supported (zstd or gzip)", f.comp)
	}
	f.bufs.New = func() any { b := []byte(nil); return &b }
	f.cache.init(opts.CacheBytes)

	idCount := int(le.Uint16(sb[26:]))
	ids, err := f.table(int64(le.Uint64(sb[48:])), idCount, 4)
	if err != nil {
		return nil, fmt.Errorf("reading the ID table: %w", err)
	}
	f.ids = make([]uint32, idCount)
	for i := range f.ids {
		f.ids[i] = le.Uint32(ids[4*i:])
	}
	fragCount := int(le.Uint32(sb[16:]))
	if fragCount > 0 {
		ft, err := f.table(int64(le.Uint64(sb[80:])), fragCount, 16)
		if err != nil {
			return nil, fmt.Errorf("reading the fragment table: %w", err)
		}
		f.frags = make([]fragment, fragCount)
		for i := range f.frags {
			e := ft[16*i:]
			f.frags[i] = fragment{start: int64(le.Uint64(e)), size: le.Uint32(e[8:])}
		}
	}
	return f, nil
}

// Close releases the decoder.
func (f *FS) Close() {
	if f.zstd != nil {
		f.zstd.Close()
	}
}

// BlockSize is the file system's data block size.
func (f *FS) BlockSize() int { return int(f.blockSize) }

// table reads count entries of size bytes of an indexed table: at start,
// one 8-byte pointer per metadata block of entries.
func (f *FS) table(start int64, count, size int) ([]byte, error) {
	if count == 0 {
		return nil, nil
	}
	total := count * size
	nblocks := (total + metaSize - 1) / metaSize
	if start < 0 || start+int64(nblocks)*8 > f.size {
		return nil, formatErr("table at %d outside the image", start)
	}
	ptrs := make([]byte, nblocks*8)
	if _, err := readFull(f.r, ptrs, start); err != nil {
		return nil, err
	}
	out := make([]byte, 0, total)
	for i := range nblocks {
		mb, err := f.metaBlock(int64(binary.LittleEndian.Uint64(ptrs[8*i:])))
		if err != nil {
			return nil, err
		}
		out = append(out, mb.data...)
	}
	if len(out) < total {
		return nil, formatErr("table at %d: %d bytes, want %d", start, len(out), total)
	}
	return out[:total], nil
}

// metaBlock reads (or finds cached) the metadata block at pos.
func (f *FS) metaBlock(pos int64) (*metaBlock, error) {
	f.metaMu.RLock()
	mb := f.meta[pos]
	f.metaMu.RUnlock()
	if mb != nil {
		return mb, nil
	}
	if pos < 0 || pos+2 > f.size {
		return nil, formatErr("metadata block at %d outside the image", pos)
	}
	var hdr [2]byte
	if _, err := readFull(f.r, hdr[:], pos); err != nil {
		return nil, err
	}
	h := binary.LittleEndian.Uint16(hdr[:])
	n := int64(h &^ metaUncompBit)
	if n == 0 || n > metaSize || pos+2+n > f.size {
		return nil, formatErr("metadata block at %d: size %d", pos, n)
	}
	raw := make([]byte, n)
	if _, err := readFull(f.r, raw, pos+2); err != nil {
		return nil, err
	}
	data := raw
	if h&metaUncompBit == 0 {
		var err error
		if data, err = f.decompress(raw, make([]byte, 0, metaSize+overAlloc), metaSize); err != nil {
			return nil, fmt.Errorf("metadata block at %d: %w", pos, err)
		}
	}
	mb = &metaBlock{data: data, next: pos + 2 + n}
	f.metaMu.Lock()
	f.meta[pos] = mb
	f.metaMu.Unlock()
	return mb, nil
}

// metaReader reads a byte stream of metadata blocks from one position on.
type metaReader struct {
	f   *FS
	pos int64 // current block
	off int   // within its data
	mb  *metaBlock
}

func (f *FS) metaAt(tableStart int64, block uint64, off uint16) *metaReader {
	return &metaReader{f: f, pos: tableStart + int64(block), off: int(off)}
}

// read appends n bytes of the stream to dst.
func (m *metaReader) read(dst []byte, n int) ([]byte, error) {
	for n > 0 {
		if m.mb == nil {
			mb, err := m.f.metaBlock(m.pos)
			if err != nil {
				return dst, err
			}
			m.mb = mb
		}
		if m.off >= len(m.mb.data) {
			if m.off > len(m.mb.data) {
				return dst, formatErr("offset %d beyond metadata block at %d", m.off, m.pos)
			}
			m.pos, m.off, m.mb = m.mb.next, 0, nil
			continue
		}
		k := min(n, len(m.mb.data)-m.off)
		dst = append(dst, m.mb.data[m.off:m.off+k]...)
		m.off += k
		n -= k
	}
	return dst, nil
}

// Root returns the root directory's inode.
func (f *FS) Root() (*Inode, error) { return f.inode(f.root) }

// inode reads the inode of a reference: (block << 16) | offset.
func (f *FS) inode(ref uint64) (*Inode, error) {
	m := f.metaAt(f.inodeTab, ref>>16, uint16(ref))
	var buf [64]byte
	b, err := m.read(buf[:0], 16)
	if err != nil {
		return nil, fmt.Errorf("reading inode %#x: %w", ref, err)
	}
	le := binary.LittleEndian
	typ := le.Uint16(b[0:])
	in := &Inode{Perm: le.Uint16(b[2:]) & 0o7777, Mtime: int64(le.Uint32(b[8:]))}
	uidx, gidx := int(le.Uint16(b[4:])), int(le.Uint16(b[6:]))
	if uidx >= len(f.ids) || gidx >= len(f.ids) {
		return nil, formatErr("inode %#x: owner index out of range", ref)
	}
	in.UID, in.GID = f.ids[uidx], f.ids[gidx]
	rd := func(n int) ([]byte, error) {
		b, err := m.read(buf[:0], n)
		if err != nil {
			return nil, fmt.Errorf("reading inode %#x: %w", ref, err)
		}
		return b, nil
	}
	switch typ {
	case 1: // basic directory
		b, err := rd(16)
		if err != nil {
			return nil, err
		}
		in.Type, in.dirBlock, in.Nlink = Dir, le.Uint32(b[0:]), le.Uint32(b[4:])
		in.dirSize, in.dirOffset = uint32(le.Uint16(b[8:])), le.Uint16(b[10:])
	case 8: // extended directory
		b, err := rd(24)
		if err != nil {
			return nil, err
		}
		in.Type, in.Nlink, in.dirSize, in.dirBlock = Dir, le.Uint32(b[0:]), le.Uint32(b[4:]), le.Uint32(b[8:])
		in.dirOffset = le.Uint16(b[18:])
	case 2: // basic file
		b, err := rd(16)
		if err != nil {
			return nil, err
		}
		in.Type, in.Nlink = File, 1
		in.blocksStart, in.fragIndex, in.fragOffset, in.Size = int64(le.Uint32(b[0:])), le.Uint32(b[4:]), le.Uint32(b[8:]), uint64(le.Uint32(b[12:]))
	case 9: // extended file
		b, err := rd(40)
		if err != nil {
			return nil, err
		}
		in.Type = File
		in.blocksStart, in.Size = int64(le.Uint64(b[0:])), le.Uint64(b[8:])
		in.Nlink, in.fragIndex, in.fragOffset = le.Uint32(b[24:]), le.Uint32(b[28:]), le.Uint32(b[32:])
	case 3, 10: // symlink
		b, err := rd(8)
		if err != nil {
			return nil, err
		}
		in.Type, in.Nlink, in.Size = Symlink, le.Uint32(b[0:]), uint64(le.Uint32(b[4:]))
		if in.Size > maxLinkLen {
			return nil, formatErr("inode %#x: symlink target of %d bytes", ref, in.Size)
		}
		t, err := m.read(nil, int(in.Size))
		if err != nil {
			return nil, fmt.Errorf("reading inode %#x: %w", ref, err)
		}
		in.Target = string(t)
	case 4, 5, 6, 7, 11, 12, 13, 14:
		in.Type = Other
	default:
		return nil, formatErr("inode %#x: type %d", ref, typ)
	}
	if in.Type == File {
		if in.blocksStart < 0 || in.blocksStart > f.size {
			return nil, formatErr("inode %#x: data outside the image", ref)
		}
		n := in.Size / uint64(f.blockSize)
		if in.fragIndex == noFragment && in.Size%uint64(f.blockSize) != 0 {
			n++
		}
		if in.fragIndex != noFragment && int(in.fragIndex) >= len(f.frags) {
			return nil, formatErr("inode %#x: fragment %d of %d", ref, in.fragIndex, len(f.frags))
		}
		if 4*n > uint64(f.size) {
			return nil, formatErr("inode %#x: %d blocks", ref, n)
		}
		if n > 0 {
			b, err := m.read(make([]byte, 0, 4*n), int(4*n))
			if err != nil {
				return nil, fmt.Errorf("reading inode %#x: %w", ref, err)
			}
			in.blockSizes = make([]uint32, n)
			for i := range in.blockSizes {
				s := le.Uint32(b[4*i:])
				if s&^uncompressed > f.blockSize {
					return nil, formatErr("inode %#x: block %d of %d bytes", ref, i, s&^uncompressed)
				}
				in.blockSizes[i] = s
			}
		}
	}
	return in, nil
}

// ReadDir returns the entries of a directory in stored (sorted) order.
func (f *FS) ReadDir(dir *Inode) ([]DirEntry, error) {
	if dir.Type != Dir {
		return nil, formatErr("not a directory")
	}
	if dir.dirSize <= 3 {
		return nil, nil
	}
	left := int(dir.dirSize) - 3
	m := f.metaAt(f.dirTab, uint64(dir.dirBlock), dir.dirOffset)
	le := binary.LittleEndian
	var out []DirEntry
	var buf [maxNameLen + 8]byte
	for left > 0 {
		h, err := m.read(buf[:0], 12)
		if err != nil {
			return nil, fmt.Errorf("reading a directory: %w", err)
		}
		left -= 12
		count, start := int(le.Uint32(h[0:]))+1, uint64(le.Uint32(h[4:]))
		if count > 256 {
			return nil, formatErr("directory header of %d entries", count)
		}
		for range count {
			e, err := m.read(buf[:0], 8)
			if err != nil {
				return nil, fmt.Errorf("reading a directory: %w", err)
			}
			off, nameLen := le.Uint16(e[0:]), int(le.Uint16(e[6:]))+1
			if nameLen > maxNameLen {
				return nil, formatErr("directory entry name of %d bytes", nameLen)
			}
			name, err := m.read(buf[:0], nameLen)
			if err != nil {
				return nil, fmt.Errorf("reading a directory: %w", err)
			}
			left -= 8 + nameLen
			s := string(name)
			if s == "." || s == ".." || bytes.IndexByte(name, '/') >= 0 || bytes.IndexByte(name, 0) >= 0 {
				return nil, formatErr("directory entry name %q", s)
			}
			in, err := f.inode(start<<16 | uint64(off))
			if err != nil {
				return nil, err
			}
			out = append(out, DirEntry{Name: s, Inode: in})
		}
	}
	if left < 0 {
		return nil, formatErr("directory listing overruns its size")
	}
	return out, nil
}

// decompress decodes src into dst[:0] (its capacity is used when it
// suffices) and checks the result is at most max bytes.
func (f *FS) decompress(src, dst []byte, max int) ([]byte, error) {
	var out []byte
	var err error
	switch f.comp {
	case compZstd:
		out, err = f.zstd.DecodeAll(src, dst[:0])
	case compGzip:
		var zr io.ReadCloser
		if zr, err = zlib.NewReader(bytes.NewReader(src)); err == nil {
			buf := bytes.NewBuffer(dst[:0])
			_, err = io.Copy(buf, io.LimitReader(zr, int64(max)+1))
			out = buf.Bytes()
		}
	}
	if err != nil {
		return nil, formatErr("decompressing: %v", err)
	}
	if len(out) > max {
		return nil, formatErr("block decompresses to more than %d bytes", max)
	}
	return out, nil
}

// readFull is ReadAt that treats a short read as an error.
func readFull(r io.ReaderAt, p []byte, off int64) (int, error) {
	n, err := r.ReadAt(p, off)
	if n == len(p) {
		return n, nil
	}
	if err == nil || err == io.EOF {
		err = io.ErrUnexpectedEOF
	}
	return n, err
}
