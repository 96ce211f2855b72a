// Package fsutil holds the few file-system habits every veil writer shares:
// write to a temporary file beside the target, sync, and rename only when the
// content is complete, so a failure never leaves a half-written target or
// destroys the previous one.
package fsutil

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

// ErrExists is returned when a target exists and overwriting was not asked for.
var ErrExists = errors.New("already exists")

// AtomicFile is a temporary file that becomes Path on Commit.
type AtomicFile struct {
	*os.File
	Path      string
	overwrite bool
	done      bool
}

// CreateAtomic opens a temporary file in path's directory. Unless overwrite
// is set, it fails with ErrExists if path exists (checked again at Commit).
func CreateAtomic(path string, perm fs.FileMode, overwrite bool) (*AtomicFile, error) {
	if !overwrite {
		if _, err := os.Lstat(path); err == nil {
			return nil, fmt.Errorf("%s: %w", path, ErrExists)
		}
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", path, bare(err))
	}
	if err := f.Chmod(perm); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("creating %s: %w", path, bare(err))
	}
	return &AtomicFile{File: f, Path: path, overwrite: overwrite}, nil
}

// Commit syncs the temporary file and renames it to Path.
func (a *AtomicFile) Commit() error {
	if a.done {
		return errors.New("fsutil: file already committed or aborted")
	}
	a.done = true
	tmp := a.Name()
	if err := a.Sync(); err != nil {
		a.File.Close()
		os.Remove(tmp)
		return fmt.Errorf("syncing %s: %w", a.Path, bare(err))
	}
	if err := a.File.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", a.Path, bare(err))
	}
	if a.overwrite {
		err := os.Rename(tmp, a.Path)
		if err != nil {
			os.Remove(tmp)
			return fmt.Errorf("writing %s: %w", a.Path, bare(err))
		}
	} else {
		// Link fails if the target appeared meanwhile: never clobber.
		if err := os.Link(tmp, a.Path); err != nil {
			os.Remove(tmp)
			if errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("%s: %w", a.Path, ErrExists)
			}
			return fmt.Errorf("writing %s: %w", a.Path, bare(err))
		}
		os.Remove(tmp)
	}
	return SyncDir(filepath.Dir(a.Path))
}

// Write writes to the temporary file; its errors name Path, never the
// temporary file.
func (a *AtomicFile) Write(p []byte) (int, error) {
	n, err := a.File.Write(p)
	if err != nil {
		err = fmt.Errorf("writing %s: %w", a.Path, bare(err))
	}
	return n, err
}

// bare drops the operation and file name of *fs.PathError and
// *os.LinkError, which would name the temporary file.
func bare(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	var le *os.LinkError
	if errors.As(err, &le) {
		return le.Err
	}
	return err
}

// Abort removes the temporary file. It is safe to call after Commit.
func (a *AtomicFile) Abort() {
	if a.done {
		return
	}
	a.done = true
	a.File.Close()
	os.Remove(a.Name())
}

// WriteFile writes data to path atomically with perm.
func WriteFile(path string, data []byte, perm fs.FileMode, overwrite bool) error {
	f, err := CreateAtomic(path, perm, overwrite)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Abort()
		return err
	}
	return f.Commit()
}

// SyncDir fsyncs a directory so a rename in it is durable.
func SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("syncing directory %s: %w", dir, err)
	}
	return nil
}
