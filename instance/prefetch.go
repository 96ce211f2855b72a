package instance

import (
	"debug/elf"
	"errors"
	"io"
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

// libDirs are where the dynamic loader looks for libraries by default.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib",
	"/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu"}

// Prefetch reads the program at prog (a path inside the image), its ELF
// interpreter and the libraries it needs, through the image mount, while
// the sandbox is still being set up: every block is verified (and
// decompressed) by the mount now, and the program's loader then finds it
// in the kernel's page cache instead of waiting for the mount. It returns
// at once; Close stops and waits for it.
func (in *Instance) Prefetch(prog string) {
	in.prefetchWG.Add(1)
	go func() {
		defer in.prefetchWG.Done()
		p := &prefetcher{root: in.root, stop: &in.prefetchStop, seen: map[string]bool{}}
		p.file(prog, 0)
		timing.Mark("veil", "program and libraries read ahead")
	}()
}

type prefetcher struct {
	root  string
	stop  *atomic.Bool
	seen  map[string]bool
	bytes int64
	buf   []byte
}

// file reads the file at p (inside the image) and, if it is a dynamic
// ELF object, what it loads.
func (p *prefetcher) file(name string, depth int) {
	if p.stop.Load() || len(p.seen) >= prefetchMaxFiles || p.bytes >= prefetchMaxBytes || depth > 8 {
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
	var interp string
	var needed []string
	if ef, err := elf.NewFile(f); err == nil {
		for _, pr := range ef.Progs {
			if pr.Type == elf.PT_INTERP {
				if b, err := io.ReadAll(io.LimitReader(pr.Open(), 4096)); err == nil {
					interp = strings.TrimRight(string(b), "\x00")
				}
			}
		}
		needed, _ = ef.ImportedLibraries()
	}
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
	if interp != "" {
		p.file(interp, depth+1)
	}
	for _, lib := range needed {
		if strings.Contains(lib, "/") {
			continue
		}
		for _, d := range libDirs {
			if _, err := resolveIn(p.root, path.Join(d, lib)); err == nil {
				p.file(path.Join(d, lib), depth+1)
				break
			}
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
