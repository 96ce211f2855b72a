package bom

import (
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
)

// mayBeELF limits the files opened to look for the ELF magic: the loader
// only maps executables and shared objects, which have an execute bit or
// ".so" in their name (Python extension modules are "*.so").
func mayBeELF(host string, mode fs.FileMode) bool {
	return mode&0o111 != 0 || strings.Contains(path.Base(host), ".so")
}

// queueIfELF queues host, found at image path ip, for dependency
// resolution if it is an ELF file.
func (p *planner) queueIfELF(host, ip, origin string) {
	key := host + "\x00" + ip
	if p.elfSeen[key] {
		return
	}
	f, err := os.Open(host)
	if err != nil {
		return // reported when the file is read
	}
	var magic [4]byte
	_, err = io.ReadFull(f, magic[:])
	f.Close()
	if err != nil || string(magic[:]) != elf.ELFMAG {
		return
	}
	p.elfSeen[key] = true
	p.elfQueue = append(p.elfQueue, elfJob{host: host, ip: ip, origin: origin})
}

// elfDeps lists what the loader needs to run the ELF file at host.
type elfDeps struct {
	class   elf.Class
	machine elf.Machine
	interp  string
	needed  []string
	rpath   []string
	runpath []string
}

func readELFDeps(host string) (*elfDeps, error) {
	f, err := elf.Open(host)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	d := &elfDeps{class: f.Class, machine: f.Machine}
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_INTERP {
			b, err := io.ReadAll(io.LimitReader(pr.Open(), 4096))
			if err != nil {
				return nil, err
			}
			d.interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if f.Section(".dynamic") == nil && dynProg(f) == nil {
		return d, nil // static
	}
	if d.needed, err = f.ImportedLibraries(); err != nil {
		return nil, err
	}
	origin := path.Dir(host)
	expand := func(list []string) []string {
		var out []string
		for _, s := range list {
			for _, dir := range strings.Split(s, ":") {
				dir = strings.ReplaceAll(strings.ReplaceAll(dir, "${ORIGIN}", origin), "$ORIGIN", origin)
				if dir != "" {
					out = append(out, dir)
				}
			}
		}
		return out
	}
	rp, _ := f.DynString(elf.DT_RPATH)
	run, _ := f.DynString(elf.DT_RUNPATH)
	d.rpath, d.runpath = expand(rp), expand(run)
	return d, nil
}

func dynProg(f *elf.File) *elf.Prog {
	for _, pr := range f.Progs {
		if pr.Type == elf.PT_DYNAMIC {
			return pr
		}
	}
	return nil
}

// defaultLibDirs are the loader's built-in directories (Debian multiarch
// first).
func defaultLibDirs(class elf.Class, machine elf.Machine) []string {
	var dirs []string
	switch machine {
	case elf.EM_X86_64:
		dirs = append(dirs, "/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu")
	case elf.EM_AARCH64:
		dirs = append(dirs, "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu")
	}
	if class == elf.ELFCLASS64 {
		dirs = append(dirs, "/lib64", "/usr/lib64")
	}
	return append(dirs, "/lib", "/usr/lib")
}

func (p *planner) cacheEntries() []LDCacheEntry {
	if !p.ldLoaded {
		p.ldLoaded = true
		if data, err := os.ReadFile(p.opts.LDCache); err == nil {
			p.ldcache, _ = ParseLDCache(data)
		}
	}
	return p.ldcache
}

type elfKind struct {
	ok      bool
	class   elf.Class
	machine elf.Machine
}

// matches reports whether host is an ELF object for class and machine.
func (p *planner) matches(host string, class elf.Class, machine elf.Machine) bool {
	k, seen := p.elfKinds[host]
	if !seen {
		if f, err := elf.Open(host); err == nil {
			k = elfKind{ok: true, class: f.Class, machine: f.Machine}
			f.Close()
		}
		p.elfKinds[host] = k
	}
	return k.ok && k.class == class && k.machine == machine
}

// findLib finds a DT_NEEDED library the way the loader does. viaCache
// reports a library found only through ld.so.cache in a directory the
// loader does not search by default.
func (p *planner) findLib(name string, d *elfDeps) (lib string, viaCache, ok bool) {
	if strings.Contains(name, "/") {
		return name, false, p.matches(name, d.class, d.machine)
	}
	var cands []string
	if len(d.runpath) == 0 {
		for _, dir := range d.rpath {
			cands = append(cands, path.Join(dir, name))
		}
	}
	for _, dir := range d.runpath {
		cands = append(cands, path.Join(dir, name))
	}
	nSearch := len(cands)
	for _, e := range p.cacheEntries() {
		if e.Name == name {
			cands = append(cands, e.Path)
		}
	}
	nCache := len(cands)
	defaults := defaultLibDirs(d.class, d.machine)
	for _, dir := range defaults {
		cands = append(cands, path.Join(dir, name))
	}
	for i, c := range cands {
		if p.matches(c, d.class, d.machine) {
			inDefault := false
			for _, dir := range defaults {
				inDefault = inDefault || path.Dir(c) == dir
			}
			return c, i >= nSearch && i < nCache && !inDefault, true
		}
	}
	return "", false, false
}

func (p *planner) resolveELF(j elfJob) error {
	d, err := readELFDeps(j.host)
	if err != nil {
		return nil // not an ELF object the loader would load either
	}
	var loads []string
	if d.interp != "" {
		if _, _, err := p.addHostPath(d.interp, "ELF interpreter of "+j.host); err != nil {
			return err
		}
		loads = append(loads, d.interp)
	}
	for _, name := range d.needed {
		lib, viaCache, ok := p.findLib(name, d)
		if !ok {
			return fmt.Errorf("%s (needed by %s, %s): %w in its RPATH/RUNPATH, ld.so.cache or the default directories", name, j.host, j.origin, ErrUnresolved)
		}
		p.needCache = p.needCache || viaCache
		if _, _, err := p.addHostPath(lib, "ELF dependency of "+j.host); err != nil {
			return err
		}
		// The loader sets $ORIGIN from the path it found the library
		// by, symbolic links unresolved: keep that path.
		p.queueIfELF(lib, lib, "ELF dependency of "+j.host)
		loads = append(loads, lib)
	}
	if len(loads) > 0 {
		p.direct[j.ip] = loads
	}
	return nil
}

// closures returns, for every ELF file whose dependencies were resolved,
// every path the loader opens to run it: its interpreter and libraries,
// then theirs, breadth first, each once.
func (p *planner) closures() map[string][]string {
	if len(p.direct) == 0 {
		return nil
	}
	out := make(map[string][]string, len(p.direct))
	for ip := range p.direct {
		seen := map[string]bool{ip: true}
		var list []string
		for queue := []string{ip}; len(queue) > 0; queue = queue[1:] {
			for _, dep := range p.direct[queue[0]] {
				if !seen[dep] {
					seen[dep] = true
					list = append(list, dep)
					queue = append(queue, dep)
				}
			}
		}
		out[ip] = list
	}
	return out
}
