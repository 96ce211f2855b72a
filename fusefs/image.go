package fusefs

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"log/slog"
	"path"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/veil-tee/veil/internal/squashfs"
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
	// CacheSize is the memory for decompressed data and fragment blocks
	// kept between reads; zero means DefaultImageCacheSize. (Metadata
	// blocks, a small part of an image, are kept for the life of the
	// mount.)
	CacheSize int
}

// DefaultImageCacheSize is the default decompressed-block cache of an
// image mount.
const DefaultImageCacheSize = 16 << 20

// imageTimeout is how long the kernel may cache entries and attributes:
// the image cannot change while it is mounted.
const imageTimeout = 24 * time.Hour

// imageFS is the state shared by every node of one image mount. The
// squashfs reader reads through the verifying trustimage.Reader and is
// safe for concurrent use: reads of one file and of different files run
// in parallel.
type imageFS struct {
	uidShift, gidShift uint32
	r                  *trustimage.Reader
	log                *slog.Logger
	sq                 *squashfs.FS

	logMu  sync.Mutex
	logged map[uint64]bool // blocks already reported

	ahead chan aheadJob // files to read ahead (readAhead)
	stop  chan struct{} // closed when the mount ends
}

// aheadJob is a file being read through.
type aheadJob struct {
	n    *imageNode
	from int64 // where the read that queued it ended
}

// Read-ahead limits: files queued at once and the largest file read
// ahead whole.
const (
	aheadQueue   = 256
	aheadMaxFile = 8 << 20
	aheadPiece   = 128 << 10 // aheadMaxFile / aheadPiece <= 64: one bit each in served
)

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
	target string // symlink target
	inode  *squashfs.Inode

	// Directories: the entries as stored, loaded on first use.
	dirOnce  sync.Once
	children []*imageEntry
	byName   map[string]*imageEntry
	subdirs  uint32
	dirErrno syscall.Errno

	// Regular files: set when a read of the file queued its read-ahead,
	// the aheadPiece pieces the kernel has (served by a read or stored
	// by read-ahead), one bit each, for files up to aheadMaxFile.
	queued  atomic.Bool
	served  atomic.Uint64
	lastEnd atomic.Int64 // where the last read ended
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
	if ifs.log == nil {
		ifs.log = slog.Default()
	}
	cache := opts.CacheSize
	if cache <= 0 {
		cache = DefaultImageCacheSize
	}
	sq, err := squashfs.Open(opts.Reader, opts.Reader.Size(), squashfs.Options{CacheBytes: cache})
	if err != nil {
		return nil, fmt.Errorf("mounting image: reading the squashfs tables: %w", err)
	}
	ifs.sq = sq
	ifs.ahead, ifs.stop = make(chan aheadJob, aheadQueue), make(chan struct{})
	rootInode, err := sq.Root()
	if err != nil {
		sq.Close()
		return nil, fmt.Errorf("mounting image: reading the root directory: %w", err)
	}
	if rootInode.Type != squashfs.Dir {
		sq.Close()
		return nil, fmt.Errorf("mounting image: %w: the root is not a directory", squashfs.ErrFormat)
	}
	// The builder stores the root as 0755, owned by root, time zero
	// (mksquashfs -root-mode 0755 -all-root -all-time 0).
	root := &imageNode{imageEntry: ifs.entry("/", rootInode)}
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
		sq.Close()
		return nil, mountError(err)
	}
	go ifs.readAhead()
	go func() { srv.Wait(); close(ifs.stop); sq.Close() }()
	return srv, nil
}

// fail maps an error of a squashfs read to the errno a program sees and
// logs it: once per bad block, naming the file, the offset and the block.
func (ifs *imageFS) fail(p, op string, off int64, err error) syscall.Errno {
	var be *trustimage.BlockError
	if errors.As(err, &be) {
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

// entry describes a stored inode at path p; nil for the kinds the mount
// does not serve (devices, fifos, sockets).
func (ifs *imageFS) entry(p string, in *squashfs.Inode) *imageEntry {
	c := &imageEntry{
		ifs: ifs, path: p, inode: in,
		// Permission bits only: setuid, setgid and sticky are not served.
		mode: uint32(in.Perm & 0o777), uid: in.UID, gid: in.GID, mtime: time.Unix(in.Mtime, 0),
	}
	switch in.Type {
	case squashfs.Dir:
		c.mode |= syscall.S_IFDIR
	case squashfs.Symlink:
		c.mode |= syscall.S_IFLNK
		c.target = in.Target
		c.size = uint64(len(in.Target))
	case squashfs.File:
		c.mode |= syscall.S_IFREG
		c.size = in.Size
	default:
		return nil
	}
	return c
}

// load reads the directory's entries once, in stored order.
func (n *imageEntry) load() syscall.Errno {
	n.dirOnce.Do(func() {
		ents, err := n.ifs.sq.ReadDir(n.inode)
		if err != nil {
			n.dirErrno = n.ifs.fail(n.path, "listing directory", 0, err)
			return
		}
		n.byName = make(map[string]*imageEntry, len(ents))
		for _, e := range ents {
			c := n.ifs.entry(path.Join(n.path, e.Name), e.Inode)
			if c == nil {
				n.ifs.log.Debug("image entry not served", "file", path.Join(n.path, e.Name))
				continue
			}
			if c.mode&syscall.S_IFMT == syscall.S_IFDIR {
				n.subdirs++
			}
			n.children = append(n.children, c)
			n.byName[e.Name] = c
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
	if n.mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, 0, syscall.EISDIR
	}
	return nil, 0, syscall.ENOSYS
}

// Flush says the same for close(2): there is nothing to flush.
func (n *imageNode) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	return syscall.ENOSYS
}

// Read serves file content, read, verified and decompressed by the
// squashfs reader; reads of one file and of different files run in
// parallel. The kernel keeps what it read in its page cache (the image is
// immutable and those pages were verified when they were read).
func (n *imageNode) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if n.mode&syscall.S_IFMT != syscall.S_IFREG {
		return nil, syscall.EISDIR
	}
	got, err := n.ifs.sq.ReadAt(n.inode, dest, off)
	if err != nil && err != io.EOF {
		return nil, n.ifs.fail(n.path, "reading", off+int64(got), err)
	}
	end := off + int64(got)
	n.markServed(off, end)
	// A read that starts where the previous one ended (a program reading
	// the file through, or the kernel's read-ahead of it) queues the rest
	// of the file; scattered reads (a mapped library's page faults) do not.
	prev := n.lastEnd.Swap(end)
	if off > 0 && off == prev && end < int64(n.size) && n.size <= aheadMaxFile && !n.queued.Swap(true) {
		select {
		case n.ifs.ahead <- aheadJob{n: n, from: end}:
		default: // the queue is full: the kernel asks for the rest itself
		}
	}
	return fuse.ReadResultData(dest[:got]), 0
}

// readAhead reads the rest of each queued file, through the same
// verifying reader as Read, and stores it in the kernel's page cache
// (FUSE_NOTIFY_STORE): the program's later reads and page faults of that
// file are then served by the kernel without a round trip to the mount,
// and the decoding runs beside the program instead of between its reads.
// One goroutine: on two cores the other is the program's. Nothing it
// stores was not verified first; a read that fails stops that file (the
// program's own read of the block then fails and is logged).
func (ifs *imageFS) readAhead() {
	buf := make([]byte, aheadPiece)
	for {
		var job aheadJob
		select {
		case <-ifs.stop:
			return
		case job = <-ifs.ahead:
		}
		n := job.n
		pieces := (int64(n.size) + aheadPiece - 1) / aheadPiece
		// From where the first read ended to the end, then the start;
		// pieces the kernel already has are skipped.
		for k := int64(0); k < pieces; k++ {
			i := (job.from/aheadPiece + k) % pieces
			if n.served.Load()&(1<<i) != 0 {
				continue
			}
			select {
			case <-ifs.stop:
				return
			default:
			}
			off := i * aheadPiece
			got, err := ifs.sq.ReadAt(n.inode, buf, off)
			if (err != nil && err != io.EOF) || got == 0 || n.WriteCache(off, buf[:got]) != 0 {
				break
			}
			n.markServed(off, off+int64(got))
		}
	}
}

// markServed records the read-ahead pieces that [off, end) covers whole
// (the last one up to the end of the file).
func (n *imageEntry) markServed(off, end int64) {
	if n.size > aheadMaxFile {
		return
	}
	first, last := (off+aheadPiece-1)/aheadPiece, end/aheadPiece
	if end >= int64(n.size) {
		last = (int64(n.size) + aheadPiece - 1) / aheadPiece
	}
	var m uint64
	for i := first; i < last; i++ {
		m |= 1 << i
	}
	if m != 0 {
		n.served.Or(m)
	}
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
