package instance

import (
	"errors"
	"fmt"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrStillMounted is wrapped by removeRunDir's error when a mount under
// the run directory could not be detached: it and the directories above
// it are left in place.
var ErrStillMounted = errors.New("still mounted")

// removeRunDir removes dir and everything under it on dir's own file
// system, never crossing a mount point: a mount that is still there (a
// FUSE mount whose unmount failed, say, because a program holds it busy)
// is skipped with what is under it, so teardown cannot unlink the owner's
// sealed files through it. Each directory is opened relative to its parent
// without following symbolic links and checked to be on dir's device and
// not a mount root before anything in it is removed.
func removeRunDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return err
	}
	if mountRoot(unix.AT_FDCWD, dir) {
		unix.Close(fd)
		return fmt.Errorf("removing %s: %w", dir, ErrStillMounted)
	}
	kept, err := removeUnder(fd, dir, st.Dev)
	unix.Close(fd)
	if err != nil {
		return err
	}
	if kept != "" {
		return fmt.Errorf("removing %s: %s is %w; left in place", dir, kept, ErrStillMounted)
	}
	if err := unix.Rmdir(dir); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

// mountRoot reports whether name (relative to dirfd) is the root of a
// mount, by statx's STATX_ATTR_MOUNT_ROOT (which also catches bind mounts
// of the same file system).
func mountRoot(dirfd int, name string) bool {
	var sx unix.Statx_t
	if err := unix.Statx(dirfd, name, unix.AT_SYMLINK_NOFOLLOW|unix.AT_NO_AUTOMOUNT, unix.STATX_BASIC_STATS, &sx); err != nil {
		return false
	}
	return sx.Attributes_mask&unix.STATX_ATTR_MOUNT_ROOT != 0 && sx.Attributes&unix.STATX_ATTR_MOUNT_ROOT != 0
}

// removeUnder empties the directory open as fd (at path, for messages),
// returning the first mount point it left in place.
func removeUnder(fd int, path string, dev uint64) (kept string, err error) {
	names, err := readDirNames(fd)
	if err != nil {
		return "", fmt.Errorf("removing %s: %w", path, err)
	}
	for _, name := range names {
		p := filepath.Join(path, name)
		var st unix.Stat_t
		if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if errors.Is(err, unix.ENOENT) {
				continue
			}
			// A FUSE mount whose server is gone or hangs: not ours to touch.
			if kept == "" {
				kept = p
			}
			continue
		}
		if st.Dev != dev || mountRoot(fd, name) {
			if kept == "" {
				kept = p
			}
			continue
		}
		if st.Mode&unix.S_IFMT != unix.S_IFDIR {
			if err := unix.Unlinkat(fd, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
				return kept, fmt.Errorf("removing %s: %w", p, err)
			}
			continue
		}
		sub, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return kept, fmt.Errorf("removing %s: %w", p, err)
		}
		// Checked again on the open directory: it may have been swapped.
		var sst unix.Stat_t
		if err := unix.Fstat(sub, &sst); err != nil || sst.Dev != dev || sst.Ino != st.Ino {
			unix.Close(sub)
			if kept == "" {
				kept = p
			}
			continue
		}
		k, err := removeUnder(sub, p, dev)
		unix.Close(sub)
		if err != nil {
			return kept, err
		}
		if k != "" {
			if kept == "" {
				kept = k
			}
			continue
		}
		if err := unix.Unlinkat(fd, name, unix.AT_REMOVEDIR); err != nil && !errors.Is(err, unix.ENOENT) {
			return kept, fmt.Errorf("removing %s: %w", p, err)
		}
	}
	return kept, nil
}

// readDirNames lists the directory open as fd (without . and ..).
func readDirNames(fd int) ([]string, error) {
	dup, err := unix.Dup(fd)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dup)
	var names []string
	buf := make([]byte, 16<<10)
	for {
		n, err := unix.Getdents(dup, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n <= 0 {
			return names, nil
		}
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
	}
}
