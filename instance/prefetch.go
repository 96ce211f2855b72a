package instance

import (
	"errors"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync/atomic"

	"github.com/veil-tee/veil/internal/timing"
)

// Prefetch limits: what a start-up is worth reading ahead.
const (
	prefetchMaxBytes = 64 << 20
	prefetchMaxFiles = 64
)

// Prefetch reads the program at prog (a path inside the image) and what
// the dynamic loader will open for it — the closure the build recorded
// (trustimage.ImageInfo.Loads, measured with the image) — through the image
// mount, while the sandbox is still being set up: every block is verified
// (and decompressed) by the mount now, and the program's loader then finds
// it in the kernel's page cache instead of waiting for the mount. A program
// the build recorded nothing for is read alone. It returns at once; Close
// stops and waits for it.
func (in *Instance) Prefetch(prog string) {
	var loads map[string][]string
	if in.Build != nil && in.Build.Record != nil {
		loads = in.Build.Record.Image.Loads
	}
	in.prefetchWG.Add(1)
	go func() {
		defer in.prefetchWG.Done()
		p := &prefetcher{root: in.root, stop: &in.prefetchStop, seen: map[string]bool{}}
		p.run(prog, loads)
		timing.Mark("veil", "program and libraries read ahead")
	}()
}

type prefetcher struct {
	root  string
	stop  *atomic.Bool
	seen  map[string]bool // host paths read
	bytes int64
	buf   []byte
}

// run reads prog, then what loads records for it (under its own path or,
// for a symbolic link, the path of the file it leads to), in order.
func (p *prefetcher) run(prog string, loads map[string][]string) {
	list, ok := loads[prog]
	if !ok {
		if host, err := resolveIn(p.root, prog); err == nil {
			if rel, err := filepath.Rel(p.root, host); err == nil {
				list = loads[path.Join("/", filepath.ToSlash(rel))]
			}
		}
	}
	p.file(prog)
	for _, name := range list {
		p.file(name)
	}
}

// file reads the file at name (inside the image) within the limits.
func (p *prefetcher) file(name string) {
	if p.stop.Load() || len(p.seen) >= prefetchMaxFiles || p.bytes >= prefetchMaxBytes {
		return
	}
	host, err := resolveIn(p.root, name)
	if err != nil || p.seen[host] {
		return
	}
	p.seen[host] = true
	f, err := os.Open(host)
	if err != nil {
		return
	}
	defer f.Close()
	if p.buf == nil {
		p.buf = make([]byte, 1<<20)
	}
	for off := int64(0); !p.stop.Load() && p.bytes < prefetchMaxBytes; {
		n, err := f.ReadAt(p.buf, off)
		off += int64(n)
		p.bytes += int64(n)
		if err != nil || n == 0 {
			break
		}
	}
}

// resolveIn maps the absolute path name inside the image to its host path
// under root, following symbolic links as the sandbox would see them
// (absolute targets are relative to root), never leaving root.
func resolveIn(root, name string) (string, error) {
	parts := strings.Split(strings.TrimPrefix(path.Clean("/"+name), "/"), "/")
	cur := "/"
	for hops := 0; len(parts) > 0; {
		part := parts[0]
		parts = parts[1:]
		if part == "" || part == "." {
			continue
		}
		if part == ".." {
			cur = path.Dir(cur)
			continue
		}
		next := path.Join(cur, part)
		fi, err := os.Lstat(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", errors.New("too many symbolic links")
		}
		target, err := os.Readlink(filepath.Join(root, next))
		if err != nil {
			return "", err
		}
		if !path.IsAbs(target) {
			target = path.Join(cur, target)
		}
		parts = append(strings.Split(strings.TrimPrefix(path.Clean(target), "/"), "/"), parts...)
		cur = "/"
	}
	return filepath.Join(root, cur), nil
}
