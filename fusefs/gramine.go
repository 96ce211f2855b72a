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

	"github.com/veil-tee/veil/gramine/pf"
)

// GraminePFOptions configure a mount of a Gramine encrypted directory: every
// file is a Gramine protected file under one wrap key, bound to its path.
type GraminePFOptions struct {
	// Source is the backing directory on the host.
	Source string
	// Key is the 16-byte Gramine wrap key.
	Key pf.Key
	// PFPath is the directory as Gramine names it (the path of the
	// encrypted mount's uri): the file NAME of the mount is bound to
	// PFPath/NAME, so files move between Gramine and veil unchanged.
	PFPath string
	// ReadOnly refuses every change (EROFS).
	ReadOnly bool
	// Logger receives integrity failures; nil means slog.Default().
	Logger *slog.Logger
	// AllowOther lets users other than the mounting one use the mount.
	AllowOther bool
}

type pfFS struct {
	opts GraminePFOptions
	log  *slog.Logger
	root *fs.LoopbackRoot
}

// pfNode is a file or directory of a Gramine mount. All open handles of a
// file share one pf.File.
type pfNode struct {
	*fs.LoopbackNode
	pfs *pfFS

	mu   sync.Mutex
	refs int
	osf  *os.File
	file *pf.File
}

var (
	_ fs.NodeWrapChilder    = (*pfNode)(nil)
	_ fs.NodeLookuper       = (*pfNode)(nil)
	_ fs.NodeGetattrer      = (*pfNode)(nil)
	_ fs.NodeSetattrer      = (*pfNode)(nil)
	_ fs.NodeOpener         = (*pfNode)(nil)
	_ fs.NodeCreater        = (*pfNode)(nil)
	_ fs.NodeRenamer        = (*pfNode)(nil)
	_ fs.NodeMknoder        = (*pfNode)(nil)
	_ fs.NodeLinker         = (*pfNode)(nil)
	_ fs.NodeSymlinker      = (*pfNode)(nil)
	_ fs.NodeCopyFileRanger = (*pfNode)(nil)
)

// MountGraminePF mounts the Gramine encrypted directory opts.Source at
// mountpoint. The caller unmounts with the returned server's Unmount.
func MountGraminePF(mountpoint string, opts GraminePFOptions) (*fuse.Server, error) {
	src, err := filepath.Abs(opts.Source)
	if err != nil {
		return nil, err
	}
	var st syscall.Stat_t
	if err := syscall.Stat(src, &st); err != nil {
		return nil, fmt.Errorf("gramine-pf mount source %s: %w", src, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		return nil, fmt.Errorf("gramine-pf mount source %s: not a directory", src)
	}
	p := &pfFS{opts: opts, log: opts.Logger}
	if p.log == nil {
		p.log = slog.Default()
	}
	p.root = &fs.LoopbackRoot{Path: src, Dev: uint64(st.Dev)}
	root := &pfNode{LoopbackNode: &fs.LoopbackNode{RootData: p.root}, pfs: p}
	p.root.RootNode = root
	sec := time.Second
	mopts := fuse.MountOptions{
		FsName:        "veil-gramine-pf:" + src,
		Name:          "veil",
		AllowOther:    opts.AllowOther,
		MaxWrite:      1 << 20,
		DisableXAttrs: true,
	}
	if opts.ReadOnly {
		mopts.Options = append(mopts.Options, "ro")
	}
	srv, err := fs.Mount(mountpoint, root, &fs.Options{MountOptions: mopts, AttrTimeout: &sec, EntryTimeout: &sec})
	if err != nil {
		return nil, mountError(err)
	}
	return srv, nil
}

func (n *pfNode) WrapChild(ctx context.Context, ops fs.InodeEmbedder) fs.InodeEmbedder {
	if ln, ok := ops.(*fs.LoopbackNode); ok {
		return &pfNode{LoopbackNode: ln, pfs: n.pfs}
	}
	return ops
}

func (n *pfNode) rel() string { return n.Path(n.pfs.root.RootNode.EmbeddedInode()) }

func (n *pfNode) backingPath() string { return filepath.Join(n.pfs.root.Path, n.rel()) }

// boundPath is the path Gramine binds the file rel of the mount to.
func (p *pfFS) boundPath(rel string) string {
	return pf.NormPath(path.Join(p.opts.PFPath, rel))
}

func (n *pfNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	ch, errno := n.LoopbackNode.Lookup(ctx, name, out)
	if errno != 0 {
		return nil, errno
	}
	if out.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG {
		if child, ok := ch.Operations().(*pfNode); ok {
			out.Attr.Size = child.plainSize(path.Join(n.rel(), name))
			out.Attr.Blocks = (out.Attr.Size + 511) / 512
		}
	}
	return ch, 0
}

// plainSize is the plaintext size of the file at rel: from the open
// pf.File, or from its authenticated metadata (0 if it does not open).
func (n *pfNode) plainSize(rel string) uint64 {
	n.mu.Lock()
	f := n.file
	n.mu.Unlock()
	if f != nil {
		return uint64(f.Size())
	}
	osf, err := os.Open(filepath.Join(n.pfs.root.Path, rel))
	if err != nil {
		return 0
	}
	defer osf.Close()
	fi, err := osf.Stat()
	if err != nil {
		return 0
	}
	pff, err := pf.Open(osf, fi.Size(), n.pfs.opts.Key, n.pfs.boundPath(rel), nil)
	if err != nil {
		return 0
	}
	defer pff.Close()
	return uint64(pff.Size())
}

func (n *pfNode) Getattr(ctx context.Context, fh fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	if out.Attr.Mode&syscall.S_IFMT == syscall.S_IFREG {
		out.Attr.Size = n.plainSize(n.rel())
		out.Attr.Blocks = (out.Attr.Size + 511) / 512
	}
	return 0
}

func (n *pfNode) Setattr(ctx context.Context, fh fs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if size, ok := in.GetSize(); ok {
		if n.pfs.opts.ReadOnly {
			return syscall.EROFS
		}
		if errno := n.acquire(); errno != 0 {
			return errno
		}
		err := n.file.Truncate(int64(size))
		if err == nil {
			err = n.file.Flush()
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

// acquire opens the node's pf.File (once for all handles).
func (n *pfNode) acquire() syscall.Errno {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.file != nil {
		n.refs++
		return 0
	}
	mode := os.O_RDWR
	if n.pfs.opts.ReadOnly {
		mode = os.O_RDONLY
	}
	osf, err := os.OpenFile(n.backingPath(), mode|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fs.ToErrno(err)
	}
	fi, err := osf.Stat()
	if err != nil {
		osf.Close()
		return fs.ToErrno(err)
	}
	var f *pf.File
	if n.pfs.opts.ReadOnly {
		f, err = pf.Open(osf, fi.Size(), n.pfs.opts.Key, n.pfs.boundPath(n.rel()), nil)
	} else {
		f, err = pf.OpenFile(osf, fi.Size(), n.pfs.opts.Key, n.pfs.boundPath(n.rel()), nil)
	}
	if err != nil {
		osf.Close()
		return n.errno("opening", err)
	}
	n.osf, n.file, n.refs = osf, f, 1
	return 0
}

func (n *pfNode) release() syscall.Errno {
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

// errno maps an error to the errno a program sees (Gramine answers EACCES
// to a file that does not open), logging integrity failures.
func (n *pfNode) errno(op string, err error) syscall.Errno {
	rel := "/" + n.rel()
	var pe *pf.PathError
	var en syscall.Errno
	switch {
	case errors.As(err, &pe):
		n.pfs.log.Error("protected file is bound to another path", "file", rel, "op", op, "bound", pe.Bound, "want", pe.Want)
		return syscall.EACCES
	case errors.Is(err, pf.ErrIntegrity), errors.Is(err, pf.ErrNotPF), errors.Is(err, pf.ErrUnsupported):
		n.pfs.log.Error("protected file failed its integrity check", "file", rel, "op", op, "err", err)
		return syscall.EIO
	case errors.As(err, &en):
		return en
	}
	n.pfs.log.Error("protected file operation failed", "file", rel, "op", op, "err", err)
	return syscall.EIO
}

func (n *pfNode) Open(ctx context.Context, flags uint32) (fs.FileHandle, uint32, syscall.Errno) {
	if n.pfs.opts.ReadOnly && flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC) != 0 {
		return nil, 0, syscall.EROFS
	}
	if errno := n.acquire(); errno != 0 {
		return nil, 0, errno
	}
	h := &pfHandle{n: n, appendMode: flags&syscall.O_APPEND != 0}
	if flags&syscall.O_TRUNC != 0 {
		if err := n.file.Truncate(0); err != nil {
			n.release()
			return nil, 0, n.errno("truncating", err)
		}
	}
	return h, fuse.FOPEN_KEEP_CACHE, 0
}

func (n *pfNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*fs.Inode, fs.FileHandle, uint32, syscall.Errno) {
	if n.pfs.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	rel := path.Join(n.rel(), name)
	p := filepath.Join(n.pfs.root.Path, rel)
	osf, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, os.FileMode(mode&0o7777))
	if err != nil {
		return nil, nil, 0, fs.ToErrno(err)
	}
	f, err := pf.Create(osf, n.pfs.opts.Key, n.pfs.boundPath(rel), nil)
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
	child := &pfNode{LoopbackNode: &fs.LoopbackNode{RootData: n.pfs.root}, pfs: n.pfs, osf: osf, file: f, refs: 1}
	ino := n.NewInode(ctx, child, fs.StableAttr{Mode: st.Mode, Ino: st.Ino ^ ((uint64(st.Dev) << 32) | (uint64(st.Dev) >> 32)) ^ ((n.pfs.root.Dev << 32) | (n.pfs.root.Dev >> 32))})
	out.FromStat(&st)
	out.Attr.Size = 0
	out.Attr.Blocks = 0
	return ino, &pfHandle{n: child, appendMode: flags&syscall.O_APPEND != 0}, fuse.FOPEN_KEEP_CACHE, 0
}

// Rename rebinds a file to its new path before moving it, as Gramine does.
// Directories would need every file below them rebound: they are refused
// with EXDEV, so programs such as mv fall back to copying.
func (n *pfNode) Rename(ctx context.Context, name string, newParent fs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.pfs.opts.ReadOnly {
		return syscall.EROFS
	}
	np, ok := newParent.(*pfNode)
	if !ok || flags != 0 {
		return syscall.EXDEV
	}
	oldRel, newRel := path.Join(n.rel(), name), path.Join(np.rel(), newName)
	var st syscall.Stat_t
	if err := syscall.Lstat(filepath.Join(n.pfs.root.Path, oldRel), &st); err != nil {
		return fs.ToErrno(err)
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		return syscall.EXDEV
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return n.LoopbackNode.Rename(ctx, name, newParent, newName, flags)
	}
	var child *pfNode
	if ch := n.GetChild(name); ch != nil {
		child, _ = ch.Operations().(*pfNode)
	}
	if child == nil {
		return n.renameUnlooked(ctx, oldRel, newRel, name, newParent, newName)
	}
	rebind := func(to string) error {
		if errno := child.acquire(); errno != 0 {
			return errno
		}
		defer child.release()
		return child.file.Rename(n.pfs.boundPath(to))
	}
	if err := rebind(newRel); err != nil {
		return child.errno("renaming", err)
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		if err := rebind(oldRel); err != nil {
			n.pfs.log.Error("protected file left bound to a path it was not moved to", "file", "/"+oldRel, "err", err)
		}
		return errno
	}
	return 0
}

// renameUnlooked rebinds and moves a file the kernel has no node for.
func (n *pfNode) renameUnlooked(ctx context.Context, oldRel, newRel, name string, newParent fs.InodeEmbedder, newName string) syscall.Errno {
	rebind := func(from, to string) error {
		osf, err := os.OpenFile(filepath.Join(n.pfs.root.Path, oldRel), os.O_RDWR|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return err
		}
		defer osf.Close()
		fi, err := osf.Stat()
		if err != nil {
			return err
		}
		f, err := pf.OpenFile(osf, fi.Size(), n.pfs.opts.Key, n.pfs.boundPath(from), nil)
		if err != nil {
			return err
		}
		if err := f.Rename(n.pfs.boundPath(to)); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
	if err := rebind(oldRel, newRel); err != nil {
		return n.errno("renaming", err)
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, 0); errno != 0 {
		if err := rebind(newRel, oldRel); err != nil {
			n.pfs.log.Error("protected file left bound to a path it was not moved to", "file", "/"+oldRel, "err", err)
		}
		return errno
	}
	return 0
}

// Special files, links and server-side copies would bypass the format.

func (n *pfNode) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (n *pfNode) Link(ctx context.Context, target fs.InodeEmbedder, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (n *pfNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (n *pfNode) CopyFileRange(ctx context.Context, fhIn fs.FileHandle, offIn uint64, out *fs.Inode, fhOut fs.FileHandle, offOut uint64, len uint64, flags uint64) (uint32, syscall.Errno) {
	return 0, syscall.EOPNOTSUPP
}

type pfHandle struct {
	n          *pfNode
	appendMode bool
}

var (
	_ fs.FileReader    = (*pfHandle)(nil)
	_ fs.FileWriter    = (*pfHandle)(nil)
	_ fs.FileFlusher   = (*pfHandle)(nil)
	_ fs.FileFsyncer   = (*pfHandle)(nil)
	_ fs.FileReleaser  = (*pfHandle)(nil)
	_ fs.FileGetattrer = (*pfHandle)(nil)
)

func (h *pfHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.n.file.ReadAt(dest, off)
	if err != nil && err != io.EOF {
		return nil, h.n.errno("reading", err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *pfHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	if h.n.pfs.opts.ReadOnly {
		return 0, syscall.EROFS
	}
	if h.appendMode {
		off = h.n.file.Size()
	}
	n, err := h.n.file.WriteAt(data, off)
	if err != nil {
		return uint32(n), h.n.errno("writing", err)
	}
	return uint32(n), 0
}

// Flush runs at every close(2): the file's nodes and metadata are written.
func (h *pfHandle) Flush(ctx context.Context) syscall.Errno {
	if h.n.pfs.opts.ReadOnly {
		return 0
	}
	if err := h.n.file.Flush(); err != nil {
		return h.n.errno("flushing", err)
	}
	return 0
}

func (h *pfHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno {
	if h.n.pfs.opts.ReadOnly {
		return 0
	}
	if err := h.n.file.Flush(); err != nil {
		return h.n.errno("flushing", err)
	}
	h.n.mu.Lock()
	osf := h.n.osf
	h.n.mu.Unlock()
	if osf != nil {
		if err := osf.Sync(); err != nil {
			return fs.ToErrno(err)
		}
	}
	return 0
}

func (h *pfHandle) Release(ctx context.Context) syscall.Errno { return h.n.release() }

func (h *pfHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	if errno := h.n.LoopbackNode.Getattr(ctx, nil, out); errno != 0 {
		return errno
	}
	out.Attr.Size = uint64(h.n.file.Size())
	out.Attr.Blocks = (out.Attr.Size + 511) / 512
	return 0
}
