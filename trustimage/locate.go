package trustimage

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"sync"
	"time"

	"github.com/diskfs/go-diskfs/backend/file"
	"github.com/diskfs/go-diskfs/filesystem/squashfs"
)

// SquashFS opens the file system of the image through r: every byte it
// reads is verified (and decrypted) by r. This is what a FUSE mount of the
// image serves.
func (r *Reader) SquashFS() (*squashfs.FileSystem, error) {
	return r.squash(&failTracker{})
}

func (r *Reader) squash(ft *failTracker) (*squashfs.FileSystem, error) {
	sf := &squashFile{SectionReader: io.NewSectionReader(trackingReaderAt{r, ft}, 0, r.Size()), size: r.Size()}
	return squashfs.Read(file.New(sf, true), r.Size(), 0, 0)
}

// failTracker remembers the first block error seen through a reader, since
// the squashfs library does not keep error types.
type failTracker struct {
	mu  sync.Mutex
	err *BlockError
}

func (f *failTracker) get() *BlockError {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.err
}

type trackingReaderAt struct {
	r  *Reader
	ft *failTracker
}

func (t trackingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	n, err := t.r.ReadAt(p, off)
	var be *BlockError
	if errors.As(err, &be) {
		t.ft.mu.Lock()
		if t.ft.err == nil {
			t.ft.err = be
		}
		t.ft.mu.Unlock()
	}
	return n, err
}

// squashFile adapts a reader to the file interface go-diskfs reads from.
type squashFile struct {
	*io.SectionReader
	size int64
}

func (s *squashFile) Stat() (fs.FileInfo, error) { return imageInfo(s.size), nil }
func (s *squashFile) Close() error               { return nil }

type imageInfo int64

func (f imageInfo) Name() string       { return ImageFile }
func (f imageInfo) Size() int64        { return int64(f) }
func (f imageInfo) Mode() fs.FileMode  { return 0o444 }
func (f imageInfo) ModTime() time.Time { return time.Time{} }
func (f imageInfo) IsDir() bool        { return false }
func (f imageInfo) Sys() any           { return nil }

// Locate names what a bad data block belongs to, by walking the file
// system through r and reading every file until a read fails on that block.
// It returns the file's path, "squashfs metadata" if the block holds the
// file system's own tables, or "" if nothing read it. It needs the key of
// an encrypted image.
func (r *Reader) Locate(block uint64) string {
	if r.info.Encryption != nil && r.bc == nil {
		return ""
	}
	ft := &failTracker{}
	hit := func() bool { e := ft.get(); return e != nil && e.Block == block }
	sq, err := r.squash(ft)
	if err != nil {
		if hit() {
			return "squashfs metadata"
		}
		return ""
	}
	var walk func(dir string, depth int) string
	walk = func(dir string, depth int) string {
		if depth > 256 {
			return ""
		}
		ents, err := sq.ReadDir(dir)
		if err != nil {
			if hit() {
				return "squashfs metadata (directory " + dir + ")"
			}
			return ""
		}
		for _, e := range ents {
			p := path.Join(dir, e.Name())
			switch {
			case e.IsDir():
				if s := walk(p, depth+1); s != "" {
					return s
				}
			case e.Mode().IsRegular():
				f, err := sq.OpenFile(p, os.O_RDONLY)
				if err == nil {
					_, err = io.Copy(io.Discard, f)
				}
				if err != nil && hit() {
					return p
				}
			}
			if ft.get() != nil && !hit() {
				return "" // another bad block got in the way
			}
		}
		return ""
	}
	return walk("/", 0)
}
