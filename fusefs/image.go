package fusefs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"

	"github.com/veil-tee/veil/trustimage"
)

// ImageOptions configure an image mount.
type ImageOptions struct {
	// Reader is the verified image (trustimage.LoadedBuild.Open). It must stay
	// open until the mount is unmounted; MountImage does not close it.
	Reader *trustimage.Reader
	// Logger receives integrity failures; nil means slog.Default().
	Logger *slog.Logger
	// AllowOther lets users other than the mounting one use the mount.
	AllowOther bool
	// UIDShift and GIDShift are added to every file's owner and group:
	// the host IDs a sandbox's user namespace shows as 0, so the image's
	// files are root's inside it as they are in the image.
	UIDShift, GIDShift uint32
	// OpenFiles is how many files are kept open between reads, each with
	// its last decompressed block; zero means DefaultOpenFiles.
	OpenFiles int
	// CacheSize is the memory for decompressed squashfs metadata and
	// fragment blocks; zero means DefaultImageCacheSize.
	CacheSize int
}

// DefaultImageCacheSize is the default decompressed-block cache of an
// image mount.
const DefaultImageCacheSize = 32 << 20

// imageTimeout is how long the kernel may cache entries and attributes:
// the image cannot change while it is mounted.
const imageTimeout = 24 * time.Hour

// imageFS is the state shared by every node of one image mount.
//
// Reads of the squashfs run in parallel under rw's read lock. go-diskfs
// keeps no error types, so a call that fails is run once more under the
// write lock with tracking on: the wrapping ReaderAt then records the
// Reader's error (the *trustimage.BlockError naming the block) in lastErr.
type imageFS struct {
	uidShift, gidShift uint32
	r                  *trustimage.Reader
	log                *slog.Logger
	sq                 *squashfs.FileSystem

	rw       sync.RWMutex
	tracking bool  // set only under rw.Lock
	lastErr  error // first error of the image Reader while tracking

	logMu  sync.Mutex
	logged map[uint64]bool // blocks already reported

	open openFiles // squashfs files kept open between reads
}

// openFiles keeps the squashfs files most recently read open, so a read
// that falls into the data block the previous read of that file
// decompressed (and verified) is served from it: a program's loader and
// the kernel's read-ahead often ask for neighbouring pieces of one block.
// Bounded: each open file holds at most one block.
type openFiles struct {
	max   int
	mu    sync.Mutex
	files map[*imageEntry]*openFile
	tick  uint64
}

// DefaultOpenFiles bounds openFiles: at the default 128 KiB squashfs
// block size, 8 MiB of decompressed data.
const DefaultOpenFiles = 64

type openFile struct {
	mu   sync.Mutex
	f    filesystem.File
	used uint64
}

// get returns the open file of e, opening it (and closing the least
// recently used one) if need be. The caller locks the result.
func (o *openFiles) get(e *imageEntry) (*openFile, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.tick++
	if of := o.files[e]; of != nil {
		of.used = o.tick
		return of, nil
	}
	f, err := e.entry.Open()
	if err != nil {
		return nil, err
	}
	if o.files == nil {
		o.files = map[*imageEntry]*openFile{}
	}
	if len(o.files) >= o.max {
		var oldest *imageEntry
		for k, v := range o.files {
			if oldest == nil || v.used < o.files[oldest].used {
				oldest = k
			}
		}
		delete(o.files, oldest) // its File is dropped; a reader holding it finishes first
	}
	of := &openFile{f: f, used: o.tick}
	o.files[e] = of
	return of, nil
}

// drop forgets the open file of e (after a failed read).
func (o *openFiles) drop(e *imageEntry) {
	o.mu.Lock()
	delete(o.files, e)
	o.mu.Unlock()
}

// imageNode is the FUSE node of an image entry. Entries outlive nodes: the
// kernel may forget a node and look its name up again, which makes a new
// node over the same entry.
type imageNode struct {
	gofs.Inode
	*imageEntry
}

// imageEntry is a directory, regular file or symlink of the image.
type imageEntry struct {
	ifs *imageFS

	path   string // absolute path inside the image
	mode   uint32 // S_IF* | permission bits
	size   uint64
	uid    uint32
	gid    uint32
	mtime  time.Time
	target string            // symlink target
	entry  squashfs.FileStat // nil for the root

	// Directories: the entries as stored, loaded on first use.
	dirOnce  sync.Once
	children []*imageEntry
	byName   map[string]*imageEntry
	subdirs  uint32
	dirErrno syscall.Errno
}

var (
	_ gofs.NodeLookuper      = (*imageNode)(nil)
	_ gofs.NodeReaddirer     = (*imageNode)(nil)
	_ gofs.NodeGetattrer     = (*imageNode)(nil)
	_ gofs.NodeReadlinker    = (*imageNode)(nil)
	_ gofs.NodeOpener        = (*imageNode)(nil)
	_ gofs.NodeStatfser      = (*imageNode)(nil)
	_ gofs.NodeSetattrer     = (*imageNode)(nil)
	_ gofs.NodeCreater       = (*imageNode)(nil)
	_ gofs.NodeMkdirer       = (*imageNode)(nil)
	_ gofs.NodeMknoder       = (*imageNode)(nil)
	_ gofs.NodeUnlinker      = (*imageNode)(nil)
	_ gofs.NodeRmdirer       = (*imageNode)(nil)
	_ gofs.NodeRenamer       = (*imageNode)(nil)
	_ gofs.NodeLinker        = (*imageNode)(nil)
	_ gofs.NodeSymlinker     = (*imageNode)(nil)
	_ gofs.NodeSetxattrer    = (*imageNode)(nil)
	_ gofs.NodeRemovexattrer = (*imageNode)(nil)
)

// MountImage mounts the file system of a verified image read-only at
// mountpoint. Every byte served comes through opts.Reader, which checks
// each 4 KiB block against the image's hash tree (and decrypts it); a block
// that fails is EIO to the program and one error log line naming the file,
// the offset and the block. The caller unmounts with the returned server's
// Unmount, then closes the Reader.
func MountImage(mountpoint string, opts ImageOptions) (*fuse.Server, error) {
	if opts.Reader == nil {
		return nil, errors.New("mounting image: no image reader")
	}
	ifs := &imageFS{r: opts.Reader, log: opts.Logger, logged: map[uint64]bool{}, uidShift: opts.UIDShift, gidShift: opts.GIDShift}
	ifs.open.max = opts.OpenFiles
	if ifs.open.max <= 0 {
		ifs.open.max = DefaultOpenFiles
	}
	if ifs.log == nil {
		ifs.log = slog.Default()
	}
	src := &trackedImage{ifs: ifs}
	src.SectionReader = io.NewSectionReader(src, 0, opts.Reader.Size())
	var sq *squashfs.FileSystem
	rerr, err := ifs.do(func() (err error) {
		sq, err = squashfs.Read(file.New(src, true), opts.Reader.Size(), 0, 0)
		return err
	})
	if err != nil {
		if rerr != nil {
			return nil, fmt.Errorf("mounting image: reading the squashfs tables: %w", rerr)
		}
		return nil, fmt.Errorf("mounting image: reading the squashfs tables: %v", err)
	}
	cache := opts.CacheSize
	if cache <= 0 {
		cache = DefaultImageCacheSize
	}
	sq.SetCacheSize(cache)
	ifs.sq = sq

	// The builder stores the root as 0755, owned by root, time zero
	// (mksquashfs -root-mode 0755 -all-root -all-time 0); go-diskfs does
	// not expose the root inode itself.
	root := &imageNode{imageEntry: &imageEntry{ifs: ifs, path: "/", mode: syscall.S_IFDIR | 0o755, mtime: time.Unix(0, 0)}}
	tmo := imageTimeout
	srv, err := gofs.Mount(mountpoint, root, &gofs.Options{
		MountOptions: fuse.MountOptions{
			FsName:               "veil-image:" + opts.Reader.RootHash()[:16],
			Name:                 "veil",
			AllowOther:           opts.AllowOther,
			Options:              []string{"ro", "nodev", "default_permissions"},
			MaxWrite:             1 << 20,
			MaxReadAhead:         1 << 20,
			EnableSymlinkCaching: true,
			DisableXAttrs:        true,
		},
		EntryTimeout:    &tmo,
		AttrTimeout:     &tmo,
		NegativeTimeout: &tmo,
	})
	if err != nil {
		return nil, mountError(err)
	}
	return srv, nil
}

// trackedImage is the io.ReaderAt go-diskfs reads the squashfs from: the
// verifying Reader, remembering the block error of a failed call.
type trackedImage struct {
	*io.SectionReader
	ifs *imageFS
}

func (t *trackedImage) ReadAt(p []byte, off int64) (int, error) {
	n, err := t.ifs.r.ReadAt(p, off)
	if err != nil && err != io.EOF && t.ifs.tracking && t.ifs.lastErr == nil {
		t.ifs.lastErr = err // rw.Lock is held by whoever called into go-diskfs
	}
	return n, err
}

func (t *trackedImage) Stat() (fs.FileInfo, error) { return imageSize(t.ifs.r.Size()), nil }
func (t *trackedImage) Close() error               { return nil }

type imageSize int64

func (s imageSize) Name() string       { return trustimage.ImageFile }
func (s imageSize) Size() int64        { return int64(s) }
func (s imageSize) Mode() fs.FileMode  { return 0o444 }
func (s imageSize) ModTime() time.Time { return time.Time{} }
func (s imageSize) IsDir() bool        { return false }
func (s imageSize) Sys() any           { return nil }

// do runs f, a call into go-diskfs that may be repeated. If it fails, it
// runs it again alone with tracking on, and returns the error the image
// Reader gave (go-diskfs flattens it into text), if any, besides f's.
func (ifs *imageFS) do(f func() error) (rerr, err error) {
	ifs.rw.RLock()
	err = f()
	ifs.rw.RUnlock()
	if err == nil {
		return nil, nil
	}
	ifs.rw.Lock()
	defer ifs.rw.Unlock()
	ifs.tracking, ifs.lastErr = true, nil
	err = f()
	rerr = ifs.lastErr
	ifs.tracking, ifs.lastErr = false, nil
	return rerr, err
}

// fail maps an error of a squashfs read to the errno a program sees and
// logs it: once per bad block, naming the file, the offset and the block.
func (ifs *imageFS) fail(p, op string, off int64, rerr, err error) syscall.Errno {
	var be *trustimage.BlockError
	if errors.As(rerr, &be) {
		ifs.logMu.Lock()
		seen := ifs.logged[be.Block]
		ifs.logged[be.Block] = true
		ifs.logMu.Unlock()
		if !seen {
			ifs.log.Error("image block failed verification", "file", p, "op", op, "offset", off,
				"block", be.Block, "area", be.Area, "reason", be.Reason)
		}
		return syscall.EIO
	}
	if rerr != nil {
		err = rerr
	}
	ifs.log.Error("reading image failed", "file", p, "op", op, "offset", off, "err", err)
	return syscall.EIO
}

// ino is the inode number of a path: stable across mounts of the same image.
func ino(p string) uint64 {
	if p == "/" {
		return 1
	}
	h := fnv.New64a()
	io.WriteString(h, p)
	n := h.Sum64()
	if n <= 1 || n == ^uint64(0) { // 0 is invalid, 1 the root, ^0 reserved by go-fuse
		n = 2
	}
	return n
}

// newChild describes a stored entry; ok is false for entries the mount
// does not serve (devices, fifos, sockets).
func (n *imageEntry) newChild(fi os.FileInfo) (*imageEntry, bool) {
	st, ok := fi.Sys().(squashfs.FileStat)
	if !ok {
		return nil, false
	}
	c := &imageEntry{
		ifs: n.ifs, path: path.Join(n.path, fi.Name()), entry: st,
		mode: uint32(fi.Mode().Perm()), uid: st.UID(), gid: st.GID(), mtime: fi.ModTime(),
	}
	switch fi.Mode().Type() {
	case fs.ModeDir:
		c.mode |= syscall.S_IFDIR
	case fs.ModeSymlink:
		c.mode |= syscall.S_IFLNK
		t, err := st.Readlink()
		if err != nil {
			return nil, false
		}
		c.target = t
		c.size = uint64(len(t))
	case 0:
		c.mode |= syscall.S_IFREG
		c.size = uint64(fi.Size())
	default:
		return nil, false
	}
	return c, true
}

// load reads the directory's entries once, in stored order.
func (n *imageEntry) load() syscall.Errno {
	n.dirOnce.Do(func() {
		var infos []os.FileInfo
		be, err := n.ifs.do(func() (err error) {
			infos, err = n.ifs.sq.ReadDir(n.path)
			return err
		})
		if err != nil {
			n.dirErrno = n.ifs.fail(n.path, "listing directory", 0, be, err)
			return
		}
		n.byName = make(map[string]*imageEntry, len(infos))
		for _, fi := range infos {
			c, ok := n.newChild(fi)
			if !ok {
				n.ifs.log.Debug("image entry not served", "file", path.Join(n.path, fi.Name()), "mode", fi.Mode().String())
				continue
			}
			if c.mode&syscall.S_IFMT == syscall.S_IFDIR {
				n.subdirs++
			}
			n.children = append(n.children, c)
			n.byName[fi.Name()] = c
		}
	})
	return n.dirErrno
}

// attr fills the attributes of the entry.
func (n *imageEntry) attr(out *fuse.Attr) syscall.Errno {
	out.Ino = ino(n.path)
	out.Mode = n.mode
	out.Size = n.size
	out.Blocks = (n.size + 511) / 512
	out.Blksize = 4096
	out.Nlink = 1
	out.Owner = fuse.Owner{Uid: n.uid + n.ifs.uidShift, Gid: n.gid + n.ifs.gidShift}
	t := n.mtime
	out.SetTimes(&t, &t, &t)
	if n.mode&syscall.S_IFMT == syscall.S_IFDIR {
		if errno := n.load(); errno != 0 {
			return errno
		}
		out.Nlink = 2 + n.subdirs
	}
	return 0
}

func (n *imageNode) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if errno := n.load(); errno != 0 {
		return nil, errno
	}
	c := n.byName[name]
	if c == nil {
		return nil, syscall.ENOENT
	}
	if errno := c.attr(&out.Attr); errno != 0 {
		return nil, errno
	}
	out.SetEntryTimeout(imageTimeout)
	out.SetAttrTimeout(imageTimeout)
	return n.NewInode(ctx, &imageNode{imageEntry: c}, gofs.StableAttr{Mode: c.mode & syscall.S_IFMT, Ino: ino(c.path)}), 0
}

func (n *imageNode) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	if errno := n.load(); errno != 0 {
		return nil, errno
	}
	ents := make([]fuse.DirEntry, 0, 2+len(n.children))
	ents = append(ents,
		fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: ino(n.path)},
		fuse.DirEntry{Name: "..", Mode: syscall.S_IFDIR, Ino: ino(path.Dir(n.path))})
	for _, c := range n.children {
		ents = append(ents, fuse.DirEntry{Name: path.Base(c.path), Mode: c.mode & syscall.S_IFMT, Ino: ino(c.path)})
	}
	return gofs.NewListDirStream(ents), 0
}

func (n *imageNode) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	if errno := n.attr(&out.Attr); errno != 0 {
		return errno
	}
	out.SetTimeout(imageTimeout)
	return 0
}

func (n *imageNode) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.mode&syscall.S_IFMT != syscall.S_IFLNK {
		return nil, syscall.EINVAL
	}
	return []byte(n.target), 0
}

func (n *imageNode) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	out.Bsize = trustimage.BlockSize
	out.Frsize = trustimage.BlockSize
	out.Blocks = uint64(n.ifs.r.Size()) / trustimage.BlockSize
	out.NameLen = 255
	return 0
}

// Open asks the kernel not to send opens (nor releases) for this mount:
// the node reads by itself (Read), and write opens never reach here on a
// mount the kernel knows is read-only.
func (n *imageNode) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&(syscall.O_WRONLY|syscall.O_RDWR|syscall.O_TRUNC|syscall.O_APPEND|syscall.O_CREAT) != 0 {
		return nil, 0, syscall.EROFS
	}
	if n.mode&syscall.S_IFMT != syscall.S_IFREG || n.entry == nil {
		return nil, 0, syscall.EISDIR
	}
	return nil, 0, syscall.ENOSYS
}

// Flush says the same for close(2): there is nothing to flush.
func (n *imageNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

// Read serves file content. Each call reads through a new go-diskfs file
// (a small struct), so reads of one file and of different files run in
// parallel; decompressed fragment and metadata blocks are shared through
// go-diskfs's cache. The kernel keeps what it read in its page cache (the
// image is immutable and those pages were verified when they were read).
func (n *imageNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.mode&syscall.S_IFMT != syscall.S_IFREG || n.entry == nil {
		return nil, syscall.EISDIR
	}
	if off >= int64(n.size) {
		return fuse.ReadResultData(nil), 0
	}
	dest = dest[:min(int64(len(dest)), int64(n.size)-off)]
	got := 0
	rerr, err := n.ifs.do(func() error {
		got = 0
		of, err := n.ifs.open.get(n.imageEntry)
		if err != nil {
			return err
		}
		of.mu.Lock()
		defer of.mu.Unlock()
		f := of.f
		if _, err := f.Seek(off, io.SeekStart); err != nil {
			return err
		}
		for got < len(dest) {
			m, err := f.Read(dest[got:])
			got += m
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			if m == 0 {
				return io.ErrNoProgress
			}
		}
		return nil
	})
	if err != nil {
		n.ifs.open.drop(n.imageEntry)
		return nil, n.ifs.fail(n.path, "reading", off+int64(got), rerr, err)
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// Every change is refused: the mount is also mounted ro, so the kernel
// normally answers EROFS before asking.

func (n *imageNode) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EROFS
}

func (n *imageNode) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EROFS
}

func (n *imageNode) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (n *imageNode) Mknod(ctx context.Context, name string, mode, rdev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (n *imageNode) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (n *imageNode) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EROFS }

func (n *imageNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (n *imageNode) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (n *imageNode) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EROFS
}

func (n *imageNode) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EROFS
}

func (n *imageNode) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.EROFS
}
