package fusefs

import (
	"context"
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"

	"github.com/veil-tee/veil/seal"
)

// move is one bound file a rename moves, by its paths below the mount root.
type move struct{ from, to string }

// Rename renames in the backing directory and re-binds every sealed file
// it moves (the file, or every file beneath a directory) to its new path:
// a rewrite of each file's place block, nothing re-encrypted. A path too
// long for a file's place block gives EXDEV before anything is renamed, so
// mv(1) and the like fall back to copying, which seals new files. Files of
// format version 1 are unbound and move as they are.
func (n *sealedNode) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if n.sfs.opts.ReadOnly {
		return syscall.EROFS
	}
	np, ok := newParent.(*sealedNode)
	if !ok || np.sfs != n.sfs {
		return syscall.EXDEV
	}
	if flags&gofs.RENAME_EXCHANGE != 0 {
		// Both sides would need re-binding at once.
		return syscall.EINVAL
	}
	from, to := path.Join(n.relPath(), name), path.Join(np.relPath(), newName)
	moves, errno := n.sfs.boundFiles(from, to)
	if errno != 0 {
		return errno
	}
	if errno := n.LoopbackNode.Rename(ctx, name, newParent, newName, flags); errno != 0 {
		return errno
	}
	var failed syscall.Errno
	for _, m := range moves {
		if err := n.sfs.rebind(m); err != nil {
			n.sfs.log.Error("re-binding a renamed sealed file failed; it stays bound to its old path", "file", "/"+m.to, "from", "/"+m.from, "err", err)
			failed = syscall.EIO
		}
	}
	return failed
}

// boundFiles lists the bound sealed files under from (a file or a
// directory) with their paths below to, checking without a key that each
// new path fits the file's place block (EXDEV if one does not).
func (sfs *sealedFS) boundFiles(from, to string) ([]move, syscall.Errno) {
	root := filepath.Join(sfs.root.Path, from)
	var moves []move
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		m := move{from: path.Join(from, filepath.ToSlash(rel)), to: path.Join(to, filepath.ToSlash(rel))}
		h, err := readHeader(p)
		if err != nil {
			return nil // not a readable sealed file: nothing to re-bind
		}
		switch err := h.CanRebind(m.to); {
		case errors.Is(err, seal.ErrUnbound):
		case err != nil:
			sfs.log.Info("renaming a sealed file by copy: its new path does not fit its place block", "file", "/"+m.from, "to", "/"+m.to)
			return syscall.EXDEV
		default:
			moves = append(moves, m)
		}
		return nil
	})
	if err != nil {
		return nil, gofs.ToErrno(err)
	}
	return moves, 0
}

func readHeader(p string) (*seal.Header, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return seal.ParseHeader(io.NewSectionReader(f, 0, 1<<16))
}

// rebind moves the binding of the file now at m.to from m.from.
func (sfs *sealedFS) rebind(m move) error {
	f, err := os.OpenFile(filepath.Join(sfs.root.Path, m.to), os.O_RDWR|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	err = seal.Rebind(f, sfs.opts.Keys, seal.Place{Mount: sfs.opts.MountID, Path: m.from}, seal.Place{Mount: sfs.opts.MountID, Path: m.to})
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if errors.Is(err, seal.ErrUnbound) {
		return nil
	}
	return err
}
