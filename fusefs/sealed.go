package fusefs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/veil-tee/veil/seal"
)

// SealedOptions configure a sealed mount.
type SealedOptions struct {
	// Source is the backing directory on the host; it holds one sealed
	// file per file of the mount, under the same relative name.
	Source string
	// Keys open existing files (any slot they can open).
	Keys seal.KeyUnwrapper
	// WriteKeys wrap the data keys of new files. Without them new files
	// cannot be created (EACCES); existing files can still be changed.
	WriteKeys []seal.KeyWrapper
	// MountID identifies the mount (seal.MountID of its target in
	// veil.json). Every file created in the mount is bound to it and to
	// its path below the mount root; a bound file opened anywhere else
	// fails (EIO, logged with the path it is bound to), and a rename
	// through the mount re-binds it. Required.
	MountID []byte
	// ReadOnly refuses every change (EROFS).
	ReadOnly bool
	// SegmentSize of new files; zero means DefaultSealedSegmentSize.
	SegmentSize int
	// Logger receives integrity failures; nil means slog.Default().
	Logger *slog.Logger
	// AllowOther lets users other than the mounting one use the mount.
	AllowOther bool
	// WriteBackCache lets the kernel keep writes in its page cache and
	// hand them to the mount later, in large pieces: at its write-back,
	// fsync(2) and close(2) (close still commits everything written
	// through the descriptor, as without it). Small random writes then
	// cost a copy into the page cache instead of a round trip to the
	// mount each (2-3 times faster, measured), but large sequential writes
	// measured slower (docs/performance.md), and write errors surface at
	// fsync(2) and close(2), as on a local file system, rather than at
	// the write(2) that caused them. Sealing is the same either way.
	WriteBackCache bool
}

// DefaultSealedSegmentSize is the segment size of files created in a sealed
// mount: smaller than seal.DefaultSegmentSize because programs write files
// in place in small pieces and each write re-seals whole segments. 16 KiB
// rather than the page size: random 4 KiB writes cost about the same
// through the mount (the FUSE round trip dominates), sequential writes
// measured faster, each commit rewrites a quarter of the table (28 bytes
// per segment: 437 KiB for a 256 MiB file, not 1.75 MiB), records and
// table take 0.34 % of the file rather than 1.4 %, and the host sees
// changes at 16 KiB granularity (docs/performance.md).
const DefaultSealedSegmentSize = 16 << 10

// sealedFS is the state shared by every node of one mount.
type sealedFS struct {
	opts SealedOptions
	seal *seal.Options
	log  *slog.Logger
	root *fs.LoopbackRoot
}

// sealedNode is a file or directory of a sealed mount. Directory operations
// go to the backing directory as they are; file content goes through
// package seal. All open handles of a file share one seal.File.
type sealedNode struct {
	*fs.LoopbackNode
	sfs *sealedFS

	mu   sync.Mutex
	refs int
	osf  *os.File
	file *seal.File
}

var (
	_ fs.NodeWrapChilder    = (*sealedNode)(nil)
	_ fs.NodeLookuper       = (*sealedNode)(nil)
	_ fs.NodeGetattrer      = (*sealedNode)(nil)
	_ fs.NodeSetattrer      = (*sealedNode)(nil)
	_ fs.NodeOpener         = (*sealedNode)(nil)
	_ fs.NodeCreater        = (*sealedNode)(nil)
	_ fs.NodeMknoder        = (*sealedNode)(nil)
	_ fs.NodeLinker         = (*sealedNode)(nil)
	_ fs.NodeSymlinker      = (*sealedNode)(nil)
	_ fs.NodeCopyFileRanger = (*sealedNode)(nil)
	_ fs.NodeRenamer        = (*sealedNode)(nil)
)

// MountSealed mounts a sealed file system of opts.Source at mountpoint. The
// caller unmounts with the returned server's Unmount.
func MountSealed(mountpoint string, opts SealedOptions) (*fuse.Server, error) {
	src, err := filepath.Abs(opts.Source)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(src, &st); err != nil {
		return nil, fmt.Errorf("sealed mount source %s: %w", src, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("sealed mount source %s: not a directory", src)
	}
	if len(opts.MountID) == 0 || len(opts.MountID) > seal.MaxMountIDLen {
		return nil, fmt.Errorf("sealed mount of %s: want a mount id of 1 to %d bytes", src, seal.MaxMountIDLen)
	}
	if opts.SegmentSize == 0 {
		opts.SegmentSize = DefaultSealedSegmentSize
	}
	sfs := &sealedFS{opts: opts, seal: &seal.Options{SegmentSize: opts.SegmentSize}, log: opts.Logger}
	if sfs.log == nil {
		sfs.log = slog.Default()
	}
	sfs.root = &fs.LoopbackRoot{Path: src, Dev: uint64(st.Dev)}
	root := &sealedNode{LoopbackNode: &fs.LoopbackNode{RootData: sfs.root}, sfs: sfs}
	sfs.root.RootNode = root
	sec := time.Second
	mopts := fuse.MountOptions{
		FsName:     "veil-sealed:" + src,
		Name:       "veil",
		AllowOther: opts.AllowOther,
		MaxWrite:   1 << 20,
		// Extended attributes would reach the host's file as they are,
		// unsealed: they are not offered (ENOTSUP). It also spares the
		// kernel's security.capability lookup before every write.
		DisableXAttrs: true,
		// Every change of the files goes through this mount, so what the
		// kernel caches is current: it must not drop cached pages when
		// it sees a new size or time. Such a drop, while a write's
		// pages are in flight, lets a concurrent read put the data from
		// before the write back in the cache, and the writer then
		// reads back its old data.
		ExplicitDataCacheControl: true,
	}
	if opts.ReadOnly {
		mopts.Options = append(mopts.Options, "ro")
	} else if opts.WriteBackCache {
		mopts.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	srv, err := fs.Mount(mountpoint, root, &fs.Options{
		MountOptions: mopts,
		AttrTimeout:  &sec,
		EntryTimeout: &sec,
	})
	if err != nil {
		return nil, mountError(err)
	}
	return srv, nil
}

// WrapChild makes every node of the mount a sealedNode.
func (n *sealedNode) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &sealedNode{LoopbackNode: ln, sfs: n.sfs}
	}
	return ops
}

func (n *sealedNode) backingPath() string {
	return filepath.Join(n.sfs.root.Path, n.relPath())
}

// relPath is the node's path below the mount root ("" for the root).
func (n *sealedNode) relPath() string {
	return n.Path(n.sfs.root.RootNode.EmbeddedInode())
}

// sealOptions are the mount's options with the place of the file at rel.
func (sfs *sealedFS) sealOptions(rel string) *seal.Options {
	o := *sfs.seal
	o.Place = &seal.Place{Mount: sfs.opts.MountID, Path: rel}
	return &o
}

// Lookup reports plaintext sizes.
func (n *sealedNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno != 0 {
		return nil, errno
	}
	if out.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG {
		child, _ := ch.Operations().(*sealedNode)
		// go-fuse keeps the node it already has for this identity (an
		// open file's): the size comes from that node's seal.File, which
		// holds writes not yet committed to the backing file.
		if known := n.GetChild(name); known != nil && known.StableAttr() == ch.StableAttr() {
			if sn, ok := known.Operations().(*sealedNode); ok {
				child = sn
			}
		}
		if child != nil {
			out.Attr.Size = child.plainSize(filepath.Join(n.backingPath(), name), out.Attr.Size)
			out.Attr.Blocks = (out.Attr.Size + 511) / 512
		}
	}
	return ch, 0
}

// plainSize is the plaintext size of the file: from the open seal.File, or
// from the header and stored length.
func (n *sealedNode) plainSize(path string, stored uint64) uint64 {
	n.mu.Lock()
	f := n.file
	n.mu.Unlock()
	if f != nil {
		return uint64(f.Size())
	}
	osf, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer osf.Close()
	h, err := seal.ParseHeader(io.NewSectionReader(osf, 0, 1<<16))
	if err != nil {
		return 0
	}
	size, err := seal.SizeFromStored(h, int64(stored))
	if err != nil {
		return 0
	}
	return uint64(size)
}

func (n *sealedNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	if out.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG {
		out.Attr.Size = n.plainSize(n.backingPath(), out.Attr.Size)
		out.Attr.Blocks = (out.Attr.Size + 511) / 512
	}
	return 0
}

func (n *sealedNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if n.sfs.opts.ReadOnly {
			return syscall.EROFS
		}
		// Truncate through the sealed file, opening it if no handle is open.
		if errno := n.acquire(syscall.O_RDWR); errno != 0 {
			return errno
		}
		err := n.file.Truncate(int64(size))
		if err == nil {
			err = n.file.Sync()
		}
		n.release()
		if err != nil {
			return n.errno("truncating", err)
		}
		in.Valid &^= fuse.FATTR_SIZE
	}
	if in.Valid&(fuse.FATTR_MODE|fuse.FATTR_UID|fuse.FATTR_GID|fuse.FATTR_ATIME|fuse.FATTR_MTIME|fuse.FATTR_ATIME_NOW|fuse.FATTR_MTIME_NOW) != 0 {
		if errno := n.LoopbackNode.Setattr(ctx, nil, in, out); errno != 0 {
			return errno
		}
	}
	return n.Getattr(ctx, nil, out)
}

// acquire opens the node's seal.File (once for all handles).
func (n *sealedNode) acquire(flags uint32) syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.file != nil {
		n.refs++
		return 0
	}
	mode := os.O_RDWR
	if n.sfs.opts.ReadOnly {
		mode = os.O_RDONLY
	}
	path := n.backingPath()
	osf, err := os.OpenFile(path, mode|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	f, err := seal.Open(osf, n.sfs.opts.Keys, n.sfs.sealOptions(n.relPath()))
	if err != nil {
		osf.Close()
		return n.errno("opening", err)
	}
	n.osf, n.file, n.refs = osf, f, 1
	return 0
}

// release drops a reference and closes the file after the last one.
func (n *sealedNode) release() syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.refs--
	if n.refs > 0 || n.file == nil {
		return 0
	}
	err := n.file.Close()
	if cerr := n.osf.Close(); err == nil {
		err = cerr
	}
	n.file, n.osf = nil, nil
	if err != nil {
		return n.errno("closing", err)
	}
	return 0
}

// errno maps an error to the errno a program sees, logging integrity failures.
func (n *sealedNode) errno(op string, err error) syscall.Errno {
	rel := "/" + n.Path(n.sfs.root.RootNode.EmbeddedInode())
	var ie *seal.IntegrityError
	var en syscall.Errno
	switch {
	case errors.As(err, &ie):
		n.sfs.log.Error("sealed file failed its integrity check", "file", rel, "op", op, "offset", ie.Offset, "reason", ie.Reason)
		return syscall.EIO
	case errors.Is(err, seal.ErrWrongKey):
		n.sfs.log.Error("no key opens sealed file", "file", rel, "op", op, "err", err)
		return syscall.EACCES
	case errors.Is(err, seal.ErrNotSealed), errors.Is(err, seal.ErrMalformed), errors.Is(err, seal.ErrUnsupported):
		n.sfs.log.Error("not a readable sealed file", "file", rel, "op", op, "err", err)
		return syscall.EIO
	case errors.Is(err, seal.ErrTooLarge):
		return syscall.EFBIG
	case errors.As(err, &en):
		return en
	}
	n.sfs.log.Error("sealed file operation failed", "file", rel, "op", op, "err", err)
	return syscall.EIO
}

func (n *sealedNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.sfs.opts.ReadOnly && flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if errno := n.acquire(flags); errno != 0 {
		return nil, 0, errno
	}
	h, fl := n.sfs.newHandle(n, flags)
	if flags&syscall.O_TRUNC != 0 {
		if err := n.file.Truncate(0); err != nil {
			n.release()
			return nil, 0, n.errno("truncating", err)
		}
	}
	return h, fl, 0
}

// newHandle makes the handle of node n opened with flags, and the FOPEN
// flags of the reply. The kernel may keep pages across opens: every change
// goes through this mount, and what it caches was authenticated when read.
// A descriptor opened write-only (how shells, cp, Python's open(..., "w")
// and Java's FileOutputStream write their output) bypasses the page cache
// (direct I/O): the kernel hands the program's buffer to the mount without
// first copying it into cached pages, one copy per byte fewer for large
// sequential writes (docs/performance.md). Such a descriptor cannot be
// mapped (mmap needs read access), and cached pages of the range it writes
// are dropped (Write), so other descriptors read the new data.
func (sfs *sealedFS) newHandle(n *sealedNode, flags uint32) (*sealedHandle, uint32) {
	h := &sealedHandle{n: n, appendMode: sfs.appends(flags)}
	if flags&syscall.O_ACCMODE == syscall.O_WRONLY && !sfs.opts.WriteBackCache {
		h.direct = true
		return h, fuse.FOPEN_DIRECT_IO
	}
	return h, fuse.FOPEN_KEEP_CACHE
}

func (n *sealedNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.sfs.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	if len(n.sfs.opts.WriteKeys) == 0 {
		return nil, nil, 0, syscall.EACCES
	}
	p := filepath.Join(n.backingPath(), name)
	osf, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, os.FileMode(mode&0o7777))
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	f, err := seal.Create(osf, n.sfs.sealOptions(path.Join(n.relPath(), name)), n.sfs.opts.WriteKeys...)
	if err != nil {
		osf.Close()
		os.Remove(p)
		return nil, nil, 0, n.errno("creating", err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(osf.Fd()), &st); err != nil {
		f.Close()
		osf.Close()
		return nil, nil, 0, fs.ToErrno(err)
	}
	child := &sealedNode{LoopbackNode: &fs.LoopbackNode{RootData: n.sfs.root}, sfs: n.sfs, osf: osf, file: f, refs: 1}
	ino := n.NewInode(ctx, child, loopbackID(n.sfs.root, osf, &st))
	out.FromStat(&st)
	out.Attr.Size = 0
	out.Attr.Blocks = 0
	h, fl := n.sfs.newHandle(child, flags)
	return ino, h, fl, 0
}

// loopbackID is the identity that go-fuse's loopback Lookup gives the
// file (fs.LoopbackRoot's: the inode number mixed with the device numbers,
// and a generation from the birth time, 1 when there is none). A created
// node must carry the same identity, or a later lookup of the same name
// (after the kernel's entry timeout) makes a second node with its own
// seal.File over the backing file while the first is still open: readers
// then see uncommitted or torn states (EIO) and the two writers overwrite
// each other's commits.
func loopbackID(root *fs.LoopbackRoot, f *os.File, st *syscall.Stat_t) fs.StableAttr {
	gen := uint64(1)
	var x unix.Statx_t
	if err := unix.Statx(int(f.Fd()), "", unix.AT_EMPTY_PATH, unix.STATX_BTIME, &x); err == nil &&
		x.Mask&unix.STATX_BTIME != 0 && (x.Btime.Sec != 0 || x.Btime.Nsec != 0) {
		gen = uint64(x.Btime.Sec)*1e9 + uint64(x.Btime.Nsec)
	}
	swapped := (uint64(st.Dev) << 32) | (uint64(st.Dev) >> 32)
	swappedRootDev := (root.Dev << 32) | (root.Dev >> 32)
	return fs.StableAttr{Mode: st.Mode, Gen: gen, Ino: swapped ^ swappedRootDev ^ st.Ino}
}

// Special files, links and server-side copies would bypass sealing.

func (n *sealedNode) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (n *sealedNode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (n *sealedNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (n *sealedNode) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

// appends reports whether writes through a descriptor opened with flags
// go to the end of the file whatever their offset. With the write-back
// cache the kernel places them itself (from its own idea of the size, which
// includes writes not yet handed over) and writes back pages of any
// descriptor through any other, so the offsets it sends are final.
func (sfs *sealedFS) appends(flags uint32) bool {
	return flags&syscall.O_APPEND != 0 && !sfs.opts.WriteBackCache
}

// sealedHandle is one open file description.
type sealedHandle struct {
	n          *sealedNode
	appendMode bool
	direct     bool // opened write-only: direct I/O (newHandle)
}

var (
	_ fs.FileReader    = (*sealedHandle)(nil)
	_ fs.FileWriter    = (*sealedHandle)(nil)
	_ fs.FileFlusher   = (*sealedHandle)(nil)
	_ fs.FileFsyncer   = (*sealedHandle)(nil)
	_ fs.FileReleaser  = (*sealedHandle)(nil)
	_ fs.FileGetattrer = (*sealedHandle)(nil)
)

func (h *sealedHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.n.file.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, h.n.errno("reading", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *sealedHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.n.sfs.opts.ReadOnly {
		return 0, syscall.EROFS
	}
	if h.appendMode {
		off = h.n.file.Size()
	}
	n, err := h.n.file.WriteAt(data, off)
	if h.direct && n > 0 {
		// The kernel dropped the cached pages of the range before this
		// write, but a read through another descriptor served before it
		// may have put the old data back since: drop them again, now
		// that every later read gets the new data. (The kernel waits for
		// pages still being filled by such a read.)
		h.n.NotifyContent(off, int64(n))
	}
	if err != nil {
		return uint32(n), h.n.errno("writing", err)
	}
	return uint32(n), 0
}

// Flush runs at every close(2) of a descriptor: the file is committed then
// (table and trailer written), so what a program closed survives a crash
// of the mount. As on any file system, surviving a crash of the machine
// takes fsync(2).
func (h *sealedHandle) Flush(ctx context.Context) syscall.Errno {
	if h.n.sfs.opts.ReadOnly {
		return 0
	}
	if err := h.n.file.Commit(); err != nil {
		return h.n.errno("committing", err)
	}
	return 0
}

// Fsync commits the file and syncs it to the host's storage.
func (h *sealedHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if h.n.sfs.opts.ReadOnly {
		return 0
	}
	if err := h.n.file.Sync(); err != nil {
		return h.n.errno("syncing", err)
	}
	return 0
}

func (h *sealedHandle) Release(ctx context.Context) syscall.Errno {
	return h.n.release()
}

func (h *sealedHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if errno := h.n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	out.Attr.Size = uint64(h.n.file.Size())
	out.Attr.Blocks = (out.Attr.Size + 511) / 512
	return 0
}
