// Package bom plans the contents of an instance image: the files of the
// instance's image/ directory plus the host files its bill of materials
// (the bom section of veil.json) names, with every ELF file's shared
// libraries resolved the way the dynamic loader would (DT_RPATH, DT_RUNPATH
// with $ORIGIN, $LIB and $PLATFORM expanded, ld.so.cache, default
// directories) and added. A dependency found in none of those but matching
// the soname of a library the image already holds resolves to it, as the
// loader reuses an object it has loaded: the JVM's launcher loads
// lib/server/libjvm.so by path before lib/libjava.so, which needs
// "libjvm.so" with only lib/ on its search path. It also returns, for each
// such file, every path the loader will open to run it (Result.Loads),
// which the build records so that the runtime never parses ELF.
//
// What it protects against: silently incomplete or surprising images — a
// missing BOM file, an unresolvable library, a symbolic link that escapes
// the image root, two sources claiming one path, special files: each is an
// error naming the path and where it came from. Host symbolic links on the
// way to a copied path are reproduced, so the image has the host's layout
// (for example Debian's /lib -> usr/lib).
//
// What it does not do: it does not copy anything (the image builder streams
// the planned files) and it trusts the host it runs on, which is the
// developer's trusted build machine; the sha256 pins of the BOM are checked
// by the builder as it reads each file.
package bom

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/veil-tee/veil/config"
)

// Plan errors.
var (
	ErrMissing        = errors.New("BOM file not found")
	ErrConflict       = errors.New("two sources for one image path")
	ErrEscape         = errors.New("symbolic link escapes the image root")
	ErrUnresolved     = errors.New("shared library not found")
	ErrUnsupported    = errors.New("unsupported file type")
	ErrUnknownInclude = errors.New("unknown BOM snippet")
)

// Options configure Plan.
type Options struct {
	// LDCache is the loader cache to consult; default /etc/ld.so.cache
	// (a missing cache is not an error).
	LDCache string
}

type planner struct {
	opts      Options
	entries   map[string]*Entry
	ldcache   []LDCacheEntry
	ldLoaded  bool
	elfSeen   map[string]bool
	elfQueue  []elfJob
	elfJobs   []elfJob          // every ELF file queued, in order
	sonames   map[string]string // host path -> DT_SONAME, read on demand
	parsed    map[string]*parsedELF
	parsing   chan struct{} // bounds the parses running at once
	elfKinds  map[string]elfKind
	needCache bool // a library is only found through ld.so.cache
	resolve   bool
	included  map[string]bool
	direct    map[string][]string // image path -> what the loader opens for it
	renames   []rename            // host directories copied to another image path
}

// rename is a host directory tree copied to another path of the image.
type rename struct{ host, ip string }

// renamedPath returns the image path of host file hp when a renamed
// directory copy placed it in the image (a wheel's bundled library found
// through $ORIGIN/../pkg.libs, say).
func (p *planner) renamedPath(hp string) (string, bool) {
	for _, r := range p.renames {
		if rest, ok := strings.CutPrefix(hp, r.host+"/"); ok {
			ip := path.Join(r.ip, rest)
			if e, ok := p.entries[ip]; ok && e.Kind == File && sameFile(e.Source, hp) {
				return ip, true
			}
		}
	}
	return "", false
}

// ErrNotPipTarget reports a python_packages directory that pip did not
// fill.
var ErrNotPipTarget = errors.New("not a pip target directory (no *.dist-info inside)")

// checkPipTarget checks that dir is a directory holding what pip install
// --target leaves: at least one *.dist-info directory.
func checkPipTarget(dir, origin string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s (%s): %w", dir, origin, ErrMissing)
		}
		return fmt.Errorf("reading %s (%s): %w", dir, origin, err)
	}
	for _, e := range ents {
		if e.IsDir() && strings.HasSuffix(e.Name(), ".dist-info") {
			return nil
		}
	}
	return fmt.Errorf("%s (%s): %w", dir, origin, ErrNotPipTarget)
}

// Result is a planned image.
type Result struct {
	// Entries are the image's paths, sorted, with "/" first.
	Entries []Entry
	// Loads maps the image path of every ELF file whose dependencies were
	// resolved (bom files, with resolve_elf) to every path the dynamic
	// loader opens to run it, as the loader names them: interpreter and
	// libraries, then theirs, breadth first. Nil when there is none.
	Loads map[string][]string
}

// elfJob is an ELF file to resolve: its host path, its image path.
type elfJob struct{ host, ip, origin string }

const ldCachePath = "/etc/ld.so.cache"

// Plan returns the entries of the image, sorted by path, with "/" first,
// and the dependency closure of its ELF files. imageDir may not exist (an
// empty image/).
func Plan(imageDir string, b config.BOM, opts Options) (*Result, error) {
	if opts.LDCache == "" {
		opts.LDCache = "/etc/ld.so.cache"
	}
	p := &planner{opts: opts, entries: map[string]*Entry{}, elfSeen: map[string]bool{}, elfKinds: map[string]elfKind{}, sonames: map[string]string{}, parsed: map[string]*parsedELF{}, resolve: b.ResolveELFEnabled(), included: map[string]bool{}, direct: map[string][]string{}}
	p.entries["/"] = &Entry{Path: "/", Kind: Dir, Mode: 0o755, Origin: "image/"}
	if err := p.walkImage(imageDir); err != nil {
		return nil, err
	}
	if err := p.applyBOM(b, "bom", nil); err != nil {
		return nil, err
	}
	for len(p.elfQueue) > 0 {
		j := p.elfQueue[0]
		p.elfQueue = p.elfQueue[1:]
		if err := p.resolveELF(j); err != nil {
			return nil, err
		}
	}
	if _, ok := p.entries[ldCachePath]; p.needCache && !ok {
		// Without the cache the loader would not find those libraries.
		if err := p.addHost(opts.LDCache, ldCachePath, "loader cache (libraries outside the default directories)", false); err != nil {
			return nil, err
		}
	}
	out := make([]Entry, 0, len(p.entries))
	for _, e := range p.entries {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return &Result{Entries: out, Loads: p.closures()}, nil
}

func (p *planner) walkImage(dir string) error {
	fi, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading image/: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s: %w: image/ must be a directory", dir, ErrUnsupported)
	}
	return filepath.WalkDir(dir, func(host string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("reading %s: %w", host, err)
		}
		rel, _ := filepath.Rel(dir, host)
		if rel == "." {
			return nil
		}
		ip := "/" + filepath.ToSlash(rel)
		return p.addHost(host, ip, "image/"+filepath.ToSlash(rel), false)
	})
}

// addHost adds the host file, directory or symlink at host as image path
// ip (not recursing into directories).
func (p *planner) addHost(host, ip, origin string, fromBOM bool) error {
	fi, err := os.Lstat(host)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s (%s): %w", host, origin, ErrMissing)
		}
		return fmt.Errorf("reading %s (%s): %w", host, origin, err)
	}
	switch {
	case fi.Mode()&fs.ModeSymlink != 0:
		t, err := os.Readlink(host)
		if err != nil {
			return fmt.Errorf("reading %s: %w", host, err)
		}
		return p.add(&Entry{Path: ip, Kind: Symlink, Mode: 0o777, Link: t, Origin: origin})
	case fi.IsDir():
		return p.add(&Entry{Path: ip, Kind: Dir, Mode: fi.Mode().Perm(), Origin: origin})
	case fi.Mode().IsRegular():
		e := &Entry{Path: ip, Kind: File, Mode: fi.Mode().Perm(), Source: host, Origin: origin, Size: fi.Size(), ModTime: fi.ModTime()}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			e.Inode = st.Ino
		}
		if err := p.add(e); err != nil {
			return err
		}
		if fromBOM && p.resolve && mayBeELF(host, fi.Mode()) {
			p.queueIfELF(host, ip, origin)
		}
		return nil
	}
	return fmt.Errorf("%s (%s): %w: %v (only files, directories and symbolic links)", host, origin, ErrUnsupported, fi.Mode().Type())
}

// add inserts e, merging directories and identical entries.
func (p *planner) add(e *Entry) error {
	if e.Kind == Symlink {
		if linkEscapes(e.Path, e.Link) {
			return fmt.Errorf("%s -> %s (%s): %w", e.Path, e.Link, e.Origin, ErrEscape)
		}
	}
	if old, ok := p.entries[e.Path]; ok {
		if old.Kind == Dir && e.Kind == Dir {
			return nil
		}
		if old.Kind == e.Kind && old.Link == e.Link && sameFile(old.Source, e.Source) {
			return nil
		}
		return fmt.Errorf("%s: %w: %s (%s) and %s (%s)", e.Path, ErrConflict, old.Origin, old.Kind, e.Origin, e.Kind)
	}
	if err := p.ensureParents(e.Path, e.Origin); err != nil {
		return err
	}
	p.entries[e.Path] = e
	return nil
}

func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

func (p *planner) ensureParents(ip, origin string) error {
	dir := path.Dir(ip)
	if dir == ip {
		return nil
	}
	if e, ok := p.entries[dir]; ok {
		if e.Kind != Dir {
			return fmt.Errorf("%s (%s): %w: its parent %s is a %s (%s)", ip, origin, ErrConflict, dir, e.Kind, e.Origin)
		}
		return nil
	}
	if err := p.ensureParents(dir, origin); err != nil {
		return err
	}
	p.entries[dir] = &Entry{Path: dir, Kind: Dir, Mode: 0o755, Origin: origin}
	return nil
}

// linkEscapes reports whether a relative symlink target climbs above the
// image root from the link's directory. Absolute targets are resolved in
// the workload's root, which is the image, so they cannot escape it.
func linkEscapes(link, target string) bool {
	if strings.HasPrefix(target, "/") {
		return false
	}
	depth := strings.Count(strings.Trim(path.Dir(link), "/"), "/") + 1
	if path.Dir(link) == "/" {
		depth = 0
	}
	for _, c := range strings.Split(target, "/") {
		switch c {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

// addHostPath adds host path hp at the same image path, reproducing every
// symbolic link met on the way (directories included), and returns the
// resolved real path and whether it is a directory.
func (p *planner) addHostPath(hp, origin string) (string, bool, error) {
	rest := splitPath(hp)
	cur := "/"
	for hops := 0; len(rest) > 0; {
		next := path.Join(cur, rest[0])
		rest = rest[1:]
		fi, err := os.Lstat(next)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return "", false, fmt.Errorf("%s (%s): %w", hp, origin, ErrMissing)
			}
			return "", false, fmt.Errorf("reading %s (%s): %w", next, origin, err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			if hops++; hops > 40 {
				return "", false, fmt.Errorf("%s (%s): too many levels of symbolic links", hp, origin)
			}
			if err := p.addHost(next, next, origin, true); err != nil {
				return "", false, err
			}
			t, _ := os.Readlink(next)
			if !strings.HasPrefix(t, "/") {
				t = path.Join(cur, t)
			}
			rest = append(splitPath(t), rest...)
			cur = "/"
		case fi.IsDir():
			if err := p.addHost(next, next, origin, true); err != nil {
				return "", false, err
			}
			cur = next
		default:
			if len(rest) > 0 {
				return "", false, fmt.Errorf("%s (%s): %w: %s is not a directory", hp, origin, ErrMissing, next)
			}
			if err := p.addHost(next, next, origin, true); err != nil {
				return "", false, err
			}
			return next, false, nil
		}
	}
	return cur, true, nil
}

func splitPath(p string) []string {
	var out []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			out = append(out, c)
		}
	}
	return out
}

func excluded(pats []string, ip string) bool {
	base := path.Base(ip)
	for _, pat := range pats {
		target := base
		if strings.Contains(pat, "/") {
			target = ip
		}
		if ok, _ := path.Match(pat, target); ok {
			return true
		}
	}
	return false
}

func (p *planner) applyBOM(b config.BOM, field string, inherited []string) error {
	if err := b.Validate(); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	for i, name := range b.Include {
		sn, err := Snippet(name)
		if err != nil {
			return fmt.Errorf("%s.include[%d]: %w", field, i, err)
		}
		if p.included[name] {
			continue
		}
		p.included[name] = true
		if err := p.applyBOM(sn, "snippet "+name, append(append([]string{}, inherited...), b.Exclude...)); err != nil {
			return err
		}
	}
	excl := append(append([]string{}, inherited...), b.Exclude...)
	for i, c := range b.Copy {
		origin := fmt.Sprintf("%s.copy[%d]", field, i)
		if err := p.applyCopy(c, origin, append(append([]string{}, excl...), c.Exclude...)); err != nil {
			return err
		}
	}
	for i, pp := range b.PythonPackages {
		origin := fmt.Sprintf("%s.python_packages[%d]", field, i)
		if err := checkPipTarget(pp.From, origin); err != nil {
			return err
		}
		to := pp.To
		if to == "" {
			to = config.DefaultPythonPackagesDir
		}
		x := append(append(append([]string{}, excl...), "__pycache__", "*.pyc"), pp.Exclude...)
		if err := p.applyCopy(config.Copy{From: pp.From, To: to}, origin, x); err != nil {
			return err
		}
	}
	for i, s := range b.Symlinks {
		if err := p.add(&Entry{Path: s.Link, Kind: Symlink, Mode: 0o777, Link: s.Target, Origin: fmt.Sprintf("%s.symlinks[%d]", field, i)}); err != nil {
			return err
		}
	}
	return nil
}

func (p *planner) applyCopy(c config.Copy, origin string, excl []string) error {
	to := c.To
	if to == "" {
		to = c.From
	}
	if strings.TrimSuffix(to, "/") == strings.TrimSuffix(c.From, "/") {
		real, isDir, err := p.addHostPath(strings.TrimSuffix(c.From, "/"), origin)
		if err != nil {
			return err
		}
		if isDir {
			if c.SHA256 != "" {
				return fmt.Errorf("%s: sha256 pins only apply to files, %s is a directory", origin, c.From)
			}
			return p.walkBOMDir(real, real, origin, excl)
		}
		if c.SHA256 != "" {
			p.entries[real].SHA256 = c.SHA256
		}
		if from := strings.TrimSuffix(c.From, "/"); p.resolve && from != real {
			// $ORIGIN is the real directory for a program but the
			// directory it was found in for a library: resolve both.
			p.queueIfELF(from, from, origin)
		}
		return nil
	}
	// Renamed: copy the dereferenced file or directory to its new path.
	fi, err := os.Stat(c.From)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s (%s): %w", c.From, origin, ErrMissing)
		}
		return fmt.Errorf("reading %s (%s): %w", c.From, origin, err)
	}
	real, err := filepath.EvalSymlinks(c.From)
	if err != nil {
		return fmt.Errorf("reading %s (%s): %w", c.From, origin, err)
	}
	to = strings.TrimSuffix(to, "/")
	if fi.IsDir() {
		if c.SHA256 != "" {
			return fmt.Errorf("%s: sha256 pins only apply to files, %s is a directory", origin, c.From)
		}
		if err := p.add(&Entry{Path: to, Kind: Dir, Mode: fi.Mode().Perm(), Origin: origin}); err != nil {
			return err
		}
		p.renames = append(p.renames, rename{host: real, ip: to})
		return p.walkBOMDir(real, to, origin, excl)
	}
	if err := p.addHost(real, to, origin, true); err != nil {
		return err
	}
	if c.SHA256 != "" {
		p.entries[to].SHA256 = c.SHA256
	}
	return nil
}

// walkBOMDir adds the tree under host directory hostDir at image path ip.
// Symbolic links are kept as links; when the tree is copied to its own
// path, the target of each link is added too so that it does not dangle.
func (p *planner) walkBOMDir(hostDir, ip, origin string, excl []string) error {
	same := hostDir == ip
	return filepath.WalkDir(hostDir, func(host string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("reading %s (%s): %w", host, origin, err)
		}
		rel, _ := filepath.Rel(hostDir, host)
		if rel == "." {
			return nil
		}
		target := path.Join(ip, filepath.ToSlash(rel))
		if excluded(excl, target) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if err := p.addHost(host, target, origin, true); err != nil {
			return err
		}
		if same && d.Type()&fs.ModeSymlink != 0 {
			t, _ := os.Readlink(host)
			if !strings.HasPrefix(t, "/") {
				t = path.Join(path.Dir(target), t)
			}
			if _, err := os.Stat(t); err == nil && !strings.HasPrefix(t, ip+"/") {
				if _, _, err := p.addHostPath(t, origin+" (link target)"); err != nil {
					return err
				}
			}
		}
		return nil
	})
}
